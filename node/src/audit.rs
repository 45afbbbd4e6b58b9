//! The node's audit log on disk: `<data_dir>/audit/current.log` plus rotated files, in the
//! hash-chained format of [`patchmesh_protocol::audit`].
//!
//! ## Crashes
//! Each entry is one `write` of one complete line to a file opened for appending; checkpoints
//! are followed by `fdatasync`. A kill -9 can leave at most a torn last line: on open the log is
//! read back, the chain checked, and anything after the last good line cut off (and kept in
//! `damaged-<ms>.log` when it held complete lines, so nothing is silently thrown away). The log
//! therefore always ends in the old tail or the new one, never in a torn one. Power loss can lose
//! the entries after the last checkpoint's `fdatasync`, never corrupt the ones before it.
//!
//! ## Rotation
//! When `current.log` passes its size bound the node signs a checkpoint, closes the file as
//! `log-<first seq>.log`, and starts the next file with that checkpoint, so each file verifies
//! on its own. The oldest rotated files beyond [`KEEP_FILES`] are deleted: the log is bounded.

use patchmesh_protocol::audit::{self, Event, ExportHeader, Head, Line, Writer};
use patchmesh_protocol::crypto::SecretKey;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Default size at which `current.log` rotates.
pub const ROTATE_BYTES_DEFAULT: u64 = 16 * 1024 * 1024;
/// Rotated files kept (with the current one, the log stays under `(KEEP_FILES + 1) × rotate`).
pub const KEEP_FILES: usize = 8;

/// What the export needs to name the node (its header).
#[derive(Clone, Debug)]
pub struct Identity {
    /// The mesh (hex of its id bytes).
    pub mesh: [u8; 32],
    /// The site.
    pub site: String,
    /// The admission envelope, hex.
    pub admission: String,
    /// Admin-set envelopes after the genesis, hex.
    pub admin_sets: Vec<String>,
}

/// A node's audit log.
pub struct AuditLog {
    dir: PathBuf,
    file: File,
    bytes: u64,
    writer: Writer,
    rotate_bytes: u64,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditLog({}, seq {})", self.dir.display(), self.writer.seq())
    }
}

fn current(dir: &Path) -> PathBuf {
    dir.join("current.log")
}

impl AuditLog {
    /// Opens (or starts) the log in `dir`, cutting a torn tail. Returns the log and how many
    /// bytes were cut.
    pub fn open(dir: &Path, key: SecretKey, rotate_bytes: u64) -> io::Result<(AuditLog, u64)> {
        std::fs::create_dir_all(dir)?;
        let path = current(dir);
        let tmp = dir.join("current.tmp");
        if !path.exists() && tmp.exists() {
            // A crash between the two renames of a rotation.
            std::fs::rename(&tmp, &path)?;
        }
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let text = match std::str::from_utf8(&bytes) {
            Ok(t) => t,
            Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).expect("valid prefix"),
        };
        let (writer, good) = Writer::resume(key, text);
        let cut = (bytes.len() - good) as u64;
        if cut > 0 {
            let rest = &bytes[good..];
            if rest.contains(&b'\n') {
                // Complete lines that do not chain: keep them beside the log for inspection.
                let aside = dir.join(format!("damaged-{}.log", crate::clock::now_ms().0));
                crate::files::write_synced(&aside, rest)?;
                tracing::error!(bytes = cut, path = %aside.display(), "audit log: lines that do not chain were moved aside");
            } else {
                tracing::warn!(
                    bytes = cut,
                    "audit log: a torn last line was cut (crash while writing)"
                );
            }
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(good as u64)?;
            f.sync_all()?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok((
            AuditLog { dir: dir.to_path_buf(), file, bytes: good as u64, writer, rotate_bytes },
            cut,
        ))
    }

    /// Appends an event; signs a checkpoint when one is due, and rotates when the file is full.
    pub fn record(&mut self, event: Event, now_ms: u64) -> io::Result<()> {
        let line = self.writer.append(event, now_ms);
        self.write(line.as_bytes())?;
        if self.writer.checkpoint_due(now_ms) {
            self.checkpoint(now_ms)?;
        }
        if self.bytes >= self.rotate_bytes {
            self.rotate(now_ms)?;
        }
        Ok(())
    }

    /// Signs a checkpoint if the time cadence asks for one (called on the node's timer).
    pub fn tick(&mut self, now_ms: u64) -> io::Result<bool> {
        if self.writer.checkpoint_due(now_ms) {
            self.checkpoint(now_ms)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Signs and writes a checkpoint now, and makes the file durable.
    pub fn checkpoint(&mut self, now_ms: u64) -> io::Result<()> {
        let cp = self.writer.checkpoint(now_ms);
        self.write(cp.line().as_bytes())?;
        self.file.sync_data()
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self, now_ms: u64) -> io::Result<()> {
        self.checkpoint(now_ms)?;
        let cp = self.writer.last_checkpoint().expect("just signed").clone();
        let tmp = self.dir.join("current.tmp");
        crate::files::write_synced(&tmp, cp.line().as_bytes())?;
        let first = first_seq(&current(&self.dir)).unwrap_or(0);
        std::fs::rename(current(&self.dir), self.dir.join(format!("log-{first:020}.log")))?;
        std::fs::rename(&tmp, current(&self.dir))?;
        self.file = OpenOptions::new().append(true).open(current(&self.dir))?;
        self.bytes = cp.line().len() as u64;
        let mut old = self.rotated()?;
        while old.len() > KEEP_FILES {
            let gone = old.remove(0);
            std::fs::remove_file(&gone)?;
            tracing::info!(path = %gone.display(), "audit log: oldest rotated file removed");
        }
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Rotated files, oldest first.
    fn rotated(&self) -> io::Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("log-") && n.ends_with(".log"))
            })
            .collect();
        v.sort();
        Ok(v)
    }

    /// The last checkpoint, as the node's record carries it.
    pub fn head(&self) -> Option<Head> {
        self.writer.head()
    }

    /// The last entry written.
    pub fn seq(&self) -> u64 {
        self.writer.seq()
    }

    /// Exports the log: a signed checkpoint of the log as it stands, then a signed header and
    /// the lines from the last checkpoint at or before `since_ms` (from the start of the oldest
    /// file kept when `None`). When that is more than `max_bytes`, the export starts at a later
    /// checkpoint so that it fits, and the header's `from_seq` says where.
    pub fn export(
        &mut self,
        id: &Identity,
        since_ms: Option<u64>,
        max_bytes: usize,
        now_ms: u64,
    ) -> io::Result<String> {
        self.checkpoint(now_ms)?;
        let mut text = String::new();
        for p in self.rotated()?.into_iter().chain([current(&self.dir)]) {
            let bytes = std::fs::read(&p)?;
            let t = String::from_utf8(bytes).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{} is not UTF-8", p.display()))
            })?;
            text.push_str(&t);
        }
        // Where the export may start: the first line, or any checkpoint line.
        let mut starts: Vec<(usize, u64, u64)> = Vec::new(); // (offset, from_seq, at_ms)
        let mut off = 0;
        for (i, line) in text.split_inclusive('\n').enumerate() {
            if i > 0 && !line.starts_with("{\"checkpoint\"") {
                off += line.len();
                continue;
            }
            match audit::parse_line(line.trim_end_matches('\n'), i + 1) {
                Ok(Line::Checkpoint(cp)) => {
                    starts.push((off, cp.checkpoint.seq + 1, cp.checkpoint.at_ms))
                }
                Ok(Line::Entry { entry, .. }) if i == 0 => starts.push((off, entry.seq, 0)),
                _ => {}
            }
            off += line.len();
        }
        let mut pick = match since_ms {
            Some(since) => starts.iter().rposition(|s| s.2 <= since).unwrap_or(0),
            None => 0,
        };
        while pick + 1 < starts.len() && text.len() - starts[pick].0 > max_bytes {
            pick += 1;
        }
        let (start, from_seq, _) = starts.get(pick).copied().unwrap_or((0, 1, 0));
        let header = ExportHeader {
            format: 1,
            mesh: audit::Hash32(id.mesh),
            node: self.writer.last_checkpoint().expect("just signed").checkpoint.node,
            site: id.site.clone(),
            admission: id.admission.clone(),
            admin_sets: id.admin_sets.clone(),
            from_seq,
            through_seq: self.writer.seq(),
            exported_at_ms: now_ms,
        };
        let signed = self.writer.sign_header(&header);
        let mut out = serde_json::to_string(&signed).expect("headers serialize");
        out.push('\n');
        out.push_str(&text[start..]);
        Ok(out)
    }
}

/// The first entry's sequence number in a log file (after a leading checkpoint, its seq + 1).
fn first_seq(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().next()?;
    match audit::parse_line(line, 1).ok()? {
        Line::Entry { entry, .. } => Some(entry.seq),
        Line::Checkpoint(cp) => Some(cp.checkpoint.seq + 1),
        Line::Header(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchmesh_protocol::audit::Event;

    fn ev(n: u64) -> Event {
        Event::NodeStopping { reason: format!("test {n}") }
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_chain_continues() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::from_seed([7; 32]);
        let (mut log, cut) = AuditLog::open(dir.path(), key.clone(), 1 << 20).unwrap();
        assert_eq!(cut, 0);
        for i in 0..5 {
            log.record(ev(i), 1000 + i).unwrap();
        }
        drop(log);
        // A crash in the middle of the sixth line.
        let path = current(dir.path());
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"entry\":{\"seq\":6,\"prev\":\"00").unwrap();
        drop(f);
        let (mut log, cut) = AuditLog::open(dir.path(), key, 1 << 20).unwrap();
        assert_eq!(cut, 28, "the torn line's bytes");
        assert_eq!(log.seq(), 5);
        log.record(ev(6), 2000).unwrap();
        assert_eq!(log.seq(), 6);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut chain = audit::Chain::new(None);
        for (i, l) in text.lines().enumerate() {
            chain.feed(&audit::parse_line(l, i + 1).unwrap(), None).unwrap();
        }
        assert_eq!(chain.seq, 6);
    }

    #[test]
    fn rotation_keeps_the_chain_and_bounds_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::from_seed([7; 32]);
        let (mut log, _) = AuditLog::open(dir.path(), key, 4096).unwrap();
        for i in 0..2000 {
            log.record(ev(i), 1000 + i).unwrap();
        }
        let rotated = log.rotated().unwrap();
        assert_eq!(rotated.len(), KEEP_FILES, "older files were removed");
        // Each kept file starts with a checkpoint and continues the chain across files.
        let mut chain = audit::Chain::new(None);
        for p in rotated.iter().chain([&current(dir.path())]) {
            let text = std::fs::read_to_string(p).unwrap();
            assert!(
                text.starts_with("{\"checkpoint\""),
                "{} starts with a checkpoint",
                p.display()
            );
            for (i, l) in text.lines().enumerate() {
                chain.feed(&audit::parse_line(l, i + 1).unwrap(), None).unwrap();
            }
        }
        assert_eq!(chain.seq, 2000);
    }
}
