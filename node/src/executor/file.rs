//! The `file` executor: replace one file with the payload, atomically, and put it back.
//!
//! Workspace layout:
//! - `staged`: the payload, copied and checked against the content id;
//! - `backup`: the target as it was before the first stage (content, mode, owner), or
//! - `backup.absent`: a marker saying the target did not exist.
//!
//! Each is written under a temporary name, flushed, renamed into place and its directory
//! flushed, so it exists complete or not at all. The backup is taken only when neither `backup`
//! nor `backup.absent` exists: a stage repeated after an install would otherwise back up the
//! *new* version and make rollback a no-op.
//!
//! Install and rollback write `<target>.patchmesh-tmp` next to the target (same filesystem, so
//! the rename is atomic), flush it, rename it over the target and flush the directory. A crash
//! leaves the old file or the new one, at worst beside a stray temporary that the next attempt
//! overwrites. Every copy is hashed as it is written, so install refuses a staged copy that
//! changed since stage.
//!
//! Mode and owner of the target are kept across install and rollback; timestamps, extended
//! attributes, ACLs and security labels are not. Symbolic links are refused as targets: renaming
//! over one would replace the link, not the file it names.

use super::{
    blocking, check_absolute, short_hex, with_command, ExecError, Executor, Step, StepCtx,
};
use std::ffi::OsString;
use std::fs::{self, File, Metadata, OpenOptions, Permissions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const STAGED: &str = "staged";
const BACKUP: &str = "backup";
const BACKUP_ABSENT: &str = "backup.absent";
/// Suffix of the temporary file written next to the target.
pub const TMP_SUFFIX: &str = ".patchmesh-tmp";
/// Longest target path accepted (Linux's PATH_MAX).
const TARGET_BYTES_MAX: usize = 4096;
/// Copy buffer.
const COPY_CHUNK_BYTES: usize = 256 * 1024;
/// Mode of a target that did not exist before the install.
const NEW_FILE_MODE: u32 = 0o644;
/// Mode of files in the private workspace.
const PRIVATE_MODE: u32 = 0o600;

/// Mode and owner to give a written file.
#[derive(Debug, Clone, Copy)]
struct Perms {
    mode: u32,
    owner: Option<(u32, u32)>,
}

impl Perms {
    fn of(meta: &Metadata) -> Perms {
        Perms { mode: meta.mode() & 0o7777, owner: Some((meta.uid(), meta.gid())) }
    }

    fn private() -> Perms {
        Perms { mode: PRIVATE_MODE, owner: None }
    }
}

/// Checks a target path from a spec and returns it normalised.
pub(super) fn check_target(t: &str) -> Result<PathBuf, ExecError> {
    let bad = |why: &str| ExecError::BadSpec(format!("file target {t:?}: {why}"));
    if t.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    if t.len() > TARGET_BYTES_MAX {
        return Err(bad("path too long"));
    }
    let p = Path::new(t);
    check_absolute("file target", p)?;
    let normal: PathBuf = p.components().collect();
    if normal.file_name().is_none() || normal.parent().is_none() {
        return Err(bad("names no file"));
    }
    if t.ends_with('/') {
        return Err(bad("names a directory"));
    }
    Ok(normal)
}

/// Performs one step.
pub(super) async fn step(ex: &Executor, ctx: &mut StepCtx) -> Result<(bool, String), ExecError> {
    let Some(target) = ex.target.clone() else {
        return Err(ExecError::BadSpec("file kind needs a target path".into()));
    };
    let dir = ex.ws.dir.clone();
    let id = ex.ws.content_id;
    match ctx.step {
        Step::Stage => {
            let payload = ex.ws.payload.clone();
            blocking(move || stage(&target, &dir, &payload, &id)).await
        }
        Step::Install => blocking(move || install(&target, &dir, &id)).await,
        Step::Verify => {
            let r = blocking(move || verify_hash(&target, &id)).await?;
            if !r.0 {
                return Ok(r);
            }
            let out = ctx.exec_optional(ex.spec.verify.as_deref()).await?;
            Ok(with_command(r, "verify", out))
        }
        Step::Rollback => {
            let r = blocking(move || rollback(&target, &dir)).await?;
            let out = ctx.exec_optional(ex.spec.rollback.as_deref()).await?;
            Ok(with_command(r, "rollback", out))
        }
    }
}

/// Stage: back up the target once, then copy and check the payload.
fn stage(
    target: &Path,
    dir: &Path,
    payload: &Path,
    id: &[u8; 32],
) -> Result<(bool, String), ExecError> {
    let parent = parent_of(target);
    match fs::metadata(parent) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(target_err(target, "its parent is not a directory")),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(target_err(target, "its directory does not exist"))
        }
        Err(source) => return Err(ExecError::Io { what: "reading", path: parent.into(), source }),
    }
    let backup = dir.join(BACKUP);
    let absent = dir.join(BACKUP_ABSENT);
    let note = if exists(&backup)? || exists(&absent)? {
        "backup from an earlier stage kept".to_string()
    } else if let Some(meta) = target_meta(target)? {
        let tmp = dir.join("backup.tmp");
        let input = File::open(target).map_err(io_err("reading", target))?;
        let (n, _) = copy_synced(input, target, &tmp, Perms::of(&meta))?;
        rename_synced(&tmp, &backup)?;
        format!("backed up {n} bytes of {}", target.display())
    } else {
        let tmp = dir.join("backup.absent.tmp");
        let f = File::create(&tmp).map_err(io_err("writing", &tmp))?;
        f.sync_all().map_err(io_err("flushing", &tmp))?;
        rename_synced(&tmp, &absent)?;
        format!("{} absent; rollback removes it", target.display())
    };

    // After the backup, so that a staged copy implies a backup (install checks for both).
    let input = File::open(payload)
        .map_err(|source| ExecError::Payload { path: payload.into(), source })?;
    let tmp = dir.join("staged.tmp");
    let (size_bytes, hash) = copy_synced(input, payload, &tmp, Perms::private())?;
    if &hash != id {
        remove_if_present(&tmp)?;
        return Ok((
            false,
            format!(
                "payload hashes to {}, not the content id {}; {note}",
                short_hex(&hash),
                short_hex(id)
            ),
        ));
    }
    rename_synced(&tmp, &dir.join(STAGED))?;
    Ok((true, format!("staged {size_bytes} bytes; {note}")))
}

/// Install: the staged copy replaces the target in one rename.
fn install(target: &Path, dir: &Path, id: &[u8; 32]) -> Result<(bool, String), ExecError> {
    let staged = dir.join(STAGED);
    if !exists(&dir.join(BACKUP))? && !exists(&dir.join(BACKUP_ABSENT))? {
        return Err(ExecError::NotStaged(dir.into()));
    }
    let input = match File::open(&staged) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(ExecError::NotStaged(dir.into())),
        Err(source) => return Err(ExecError::Io { what: "reading", path: staged, source }),
    };
    // A repeated install sees the new file here, whose mode and owner came from the old one.
    let perms = match target_meta(target)? {
        Some(meta) => Perms::of(&meta),
        None => Perms { mode: NEW_FILE_MODE, owner: None },
    };
    let tmp = tmp_path(target);
    let (size_bytes, hash) = copy_synced(input, &staged, &tmp, perms)?;
    if &hash != id {
        remove_if_present(&tmp)?;
        return Ok((
            false,
            format!(
                "staged copy hashes to {}, not the content id {}; stage again",
                short_hex(&hash),
                short_hex(id)
            ),
        ));
    }
    rename_synced(&tmp, target)?;
    Ok((true, format!("installed {size_bytes} bytes at {}", target.display())))
}

/// Verify: the target's content hash is the content id.
fn verify_hash(target: &Path, id: &[u8; 32]) -> Result<(bool, String), ExecError> {
    match target_meta(target) {
        Ok(Some(_)) => {}
        Ok(None) => return Ok((false, format!("{} is missing", target.display()))),
        Err(ExecError::Target { reason, .. }) => return Ok((false, reason)),
        Err(e) => return Err(e),
    }
    let (_, hash) = hash_file(target).map_err(io_err("reading", target))?;
    Ok(if &hash == id {
        (true, format!("{} matches content id {}", target.display(), short_hex(id)))
    } else {
        (
            false,
            format!(
                "{} hashes to {}, not the content id {}",
                target.display(),
                short_hex(&hash),
                short_hex(id)
            ),
        )
    })
}

/// Rollback: put the backup back, or remove a target that did not exist.
fn rollback(target: &Path, dir: &Path) -> Result<(bool, String), ExecError> {
    let backup = dir.join(BACKUP);
    let tmp = tmp_path(target);
    if exists(&backup)? {
        let meta = fs::metadata(&backup).map_err(io_err("reading", &backup))?;
        let input = File::open(&backup).map_err(io_err("reading", &backup))?;
        let (n, _) = copy_synced(input, &backup, &tmp, Perms::of(&meta))?;
        rename_synced(&tmp, target)?;
        return Ok((true, format!("restored {n} bytes of {}", target.display())));
    }
    if exists(&dir.join(BACKUP_ABSENT))? {
        // A crash during install may have left the temporary behind.
        remove_if_present(&tmp)?;
        let removed = remove_if_present(target)?;
        sync_dir(parent_of(target))?;
        let what = if removed { "removed" } else { "already absent:" };
        return Ok((true, format!("{what} {}, which did not exist before", target.display())));
    }
    // Stage records the backup before install can run, so without one nothing was changed.
    Ok((true, "never staged; nothing to roll back".to_string()))
}

/// Checks the payload against the content id without copying it (for kinds that read it in
/// place).
pub(super) async fn check_payload(ex: &Executor) -> Result<(bool, String), ExecError> {
    let payload = ex.ws.payload.clone();
    let id = ex.ws.content_id;
    blocking(move || {
        let (n, hash) = hash_file(&payload)
            .map_err(|source| ExecError::Payload { path: payload.clone(), source })?;
        Ok(if hash == id {
            (true, format!("payload of {n} bytes matches content id {}", short_hex(&id)))
        } else {
            (
                false,
                format!(
                    "payload hashes to {}, not the content id {}",
                    short_hex(&hash),
                    short_hex(&id)
                ),
            )
        })
    })
    .await
}

/// BLAKE3 and size of a file, read in bounded chunks.
pub(super) fn hash_file(path: &Path) -> io::Result<(u64, [u8; 32])> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(File::open(path)?)?;
    Ok((hasher.count(), *hasher.finalize().as_bytes()))
}

/// Copies `input` (read from `src`) to a fresh `dst` with `perms`, flushed; returns its size and
/// BLAKE3.
fn copy_synced(
    mut input: File,
    src: &Path,
    dst: &Path,
    perms: Perms,
) -> Result<(u64, [u8; 32]), ExecError> {
    // A fresh file, private until complete, whatever an earlier attempt left under this name.
    remove_if_present(dst)?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_MODE)
        .open(dst)
        .map_err(io_err("creating", dst))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; COPY_CHUNK_BYTES];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(source) => return Err(ExecError::Io { what: "reading", path: src.into(), source }),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io_err("writing", dst))?;
    }
    if let Some((uid, gid)) = perms.owner {
        let meta = out.metadata().map_err(io_err("reading", dst))?;
        // Only when it differs: an unprivileged node may not chown, even to itself.
        if (meta.uid(), meta.gid()) != (uid, gid) {
            std::os::unix::fs::fchown(&out, Some(uid), Some(gid)).map_err(io_err("chown", dst))?;
        }
    }
    // After chown, which clears set-id bits.
    out.set_permissions(Permissions::from_mode(perms.mode)).map_err(io_err("chmod", dst))?;
    out.sync_all().map_err(io_err("flushing", dst))?;
    Ok((hasher.count(), *hasher.finalize().as_bytes()))
}

/// Renames `from` over `to` and flushes `to`'s directory so the rename survives a power loss.
fn rename_synced(from: &Path, to: &Path) -> Result<(), ExecError> {
    fs::rename(from, to).map_err(io_err("renaming into place", to))?;
    sync_dir(parent_of(to))
}

fn sync_dir(dir: &Path) -> Result<(), ExecError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("flushing", dir))
}

/// The target's metadata if it is a regular file, `None` if it does not exist.
fn target_meta(target: &Path) -> Result<Option<Metadata>, ExecError> {
    match fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_file() => Ok(Some(m)),
        Ok(m) if m.file_type().is_symlink() => {
            Err(target_err(target, "is a symbolic link; name the file it points to"))
        }
        Ok(_) => Err(target_err(target, "is not a regular file")),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ExecError::Io { what: "reading", path: target.into(), source }),
    }
}

fn exists(p: &Path) -> Result<bool, ExecError> {
    match fs::symlink_metadata(p) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(source) => Err(ExecError::Io { what: "reading", path: p.into(), source }),
    }
}

/// Removes a file; `false` if it was not there.
fn remove_if_present(p: &Path) -> Result<bool, ExecError> {
    match fs::remove_file(p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(source) => Err(ExecError::Io { what: "removing", path: p.into(), source }),
    }
}

/// `<target>.patchmesh-tmp`, in the target's directory.
pub(super) fn tmp_path(target: &Path) -> PathBuf {
    let mut name = OsString::from(target.file_name().unwrap_or_default());
    name.push(TMP_SUFFIX);
    parent_of(target).join(name)
}

/// A checked target always has a parent; `/` stands in for the impossible case.
fn parent_of(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new("/"))
}

fn target_err(target: &Path, reason: &str) -> ExecError {
    ExecError::Target { path: target.into(), reason: format!("{} {reason}", target.display()) }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ExecError + 'a {
    move |source| ExecError::Io { what, path: path.into(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked() {
        assert_eq!(check_target("/etc//motd").unwrap(), PathBuf::from("/etc/motd"));
        for t in ["etc/motd", "/", "/etc/../motd", "/etc/", "/etc/mo\0td", ""] {
            assert!(matches!(check_target(t), Err(ExecError::BadSpec(_))), "{t:?}");
        }
        assert!(check_target(&format!("/{}", "a".repeat(TARGET_BYTES_MAX))).is_err());
    }

    #[test]
    fn tmp_is_a_sibling() {
        assert_eq!(tmp_path(Path::new("/etc/motd")), PathBuf::from("/etc/motd.patchmesh-tmp"));
    }

    #[test]
    fn install_keeps_mode_and_refuses_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path().join("ws");
        fs::create_dir(&ws).unwrap();
        let payload = d.path().join("payload");
        fs::write(&payload, b"new").unwrap();
        let id = *blake3::hash(b"new").as_bytes();
        let target = d.path().join("tool");
        fs::write(&target, b"old").unwrap();
        fs::set_permissions(&target, Permissions::from_mode(0o750)).unwrap();
        assert!(stage(&target, &ws, &payload, &id).unwrap().0);
        assert!(install(&target, &ws, &id).unwrap().0);
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o7777, 0o750);
        assert!(rollback(&target, &ws).unwrap().0);
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o7777, 0o750);

        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let ws2 = d.path().join("ws2");
        fs::create_dir(&ws2).unwrap();
        assert!(matches!(stage(&link, &ws2, &payload, &id), Err(ExecError::Target { .. })));
        assert_eq!(fs::read(&target).unwrap(), b"old");
    }
}
