//! Key and trust files. Secret keys are 64 hex digits of seed in a file of mode 0600; trust
//! objects (genesis, certificates) are the canonical envelope encoding. Every read checks the
//! size first.

use patchmesh_protocol::crypto::{decode, encode, DecodeError, Envelope, SecretKey};
use patchmesh_protocol::limits;
use std::io::Write;
use std::path::Path;

/// Why a key or trust file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file exists already; keys are never overwritten.
    #[error("{0} exists; refusing to overwrite a key or trust file")]
    Exists(String),
    /// The file is not a valid key (64 hex digits).
    #[error("{0} is not a patchmesh secret key (64 hex digits expected)")]
    BadKey(String),
    /// The file is larger than any valid one.
    #[error("{path} is {size_bytes} bytes, limit {limit_bytes}")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        size_bytes: u64,
        /// The limit.
        limit_bytes: u64,
    },
    /// The envelope did not decode.
    #[error("{path}: {source}")]
    Decode {
        /// The file.
        path: String,
        /// The cause.
        source: DecodeError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io { path: path.display().to_string(), source }
}

fn create_new(path: &Path, mode: u32, bytes: &[u8]) -> Result<(), FileError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(
            |e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    FileError::Exists(path.display().to_string())
                } else {
                    FileError::Io { path: path.display().to_string(), source: e }
                }
            },
        )?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Reads a file of at most `limit_bytes` (the size is checked before reading).
pub fn read_limited(path: &Path, limit_bytes: u64) -> Result<Vec<u8>, FileError> {
    let size_bytes = std::fs::metadata(path).map_err(io(path))?.len();
    if size_bytes > limit_bytes {
        return Err(FileError::TooLarge {
            path: path.display().to_string(),
            size_bytes,
            limit_bytes,
        });
    }
    std::fs::read(path).map_err(io(path))
}

/// Replaces `path` with `bytes` durably: a temporary file beside it is written and synced,
/// renamed over `path`, and the directory synced; a crash leaves the old or the new content.
pub fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("w.tmp");
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Writes a new secret key file with mode 0600.
pub fn write_key(path: &Path, key: &SecretKey) -> Result<(), FileError> {
    create_new(path, 0o600, format!("{}\n", hex::encode(key.seed())).as_bytes())
}

/// Reads a secret key file.
pub fn read_key(path: &Path) -> Result<SecretKey, FileError> {
    let bytes = read_limited(path, 256)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed)
        .map_err(|_| FileError::BadKey(path.display().to_string()))?;
    Ok(SecretKey::from_seed(seed))
}

/// Writes a new envelope file (mode 0644: trust objects are public).
pub fn write_envelope(path: &Path, env: &Envelope) -> Result<(), FileError> {
    create_new(path, 0o644, &encode(env))
}

/// Reads an envelope file, size-checked.
pub fn read_envelope(path: &Path) -> Result<Envelope, FileError> {
    let bytes = read_limited(path, limits::MESSAGE_BYTES_MAX as u64)?;
    decode("envelope file", &bytes, limits::MESSAGE_BYTES_MAX)
        .map_err(|source| FileError::Decode { path: path.display().to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_round_trip_with_mode_0600_and_are_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("pm-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k.key");
        let _ = std::fs::remove_file(&path);
        let key = SecretKey::from_seed([3; 32]);
        write_key(&path, &key).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read_key(&path).unwrap().public(), key.public());
        assert!(matches!(write_key(&path, &key), Err(FileError::Exists(_))));
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(read_key(&path), Err(FileError::BadKey(_))));
        std::fs::write(&path, vec![b'a'; 1000]).unwrap();
        assert!(matches!(read_key(&path), Err(FileError::TooLarge { .. })));
        let env_path = dir.join("g.env");
        let _ = std::fs::remove_file(&env_path);
        std::fs::write(&env_path, [0xffu8; 10]).unwrap();
        assert!(matches!(read_envelope(&env_path), Err(FileError::Decode { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
