//! The content store: patch payloads as plain files, verified 16 KiB group by group.
//!
//! Layout under `<data_dir>/content/`:
//! - `<id>`: the payload (sparse while partial; the bytes `b3sum` hashes to `<id>`),
//! - `<id>.obao`: the outboard, 32 bytes of BLAKE3 chaining value per 16 KiB group, checked
//!   against the id before it is written ([`transfer::check_outboard`]),
//! - `<id>.part`: present while the payload is partial; holds its signed size.
//!
//! A group is written only after it verified against its chaining value, and a payload is
//! complete only when every group verified: the `.part` marker is removed after the data is
//! flushed, so a crash leaves either a partial payload or a complete one. On open, a partial
//! payload is re-verified group by group against its outboard, which finds every group written
//! before a kill -9 (the page cache survives a process crash) and nothing else: a resumed
//! download asks only for the groups that are really missing, and a torn or zero-filled group
//! is simply missing.
//!
//! Limits: a payload larger than `payload_bytes_max` is refused before a byte is stored, and
//! the sum of all payloads (partial ones at full size) stays under `store_bytes_max`. A write
//! that fails because the disk is full returns [`StoreError::DiskFull`] and keeps every verified
//! group.
//!
//! Flushing: a download hands every [`WRITEBACK_BYTES`] written to a background flush
//! ([`ContentStore::writeback_due`]), so the disk writes while the network delivers and the
//! flush that completes a payload waits only for the tail. Without it a 1 GiB payload left the
//! page cache all at once in `finish` (about 0.7 s on this project's test machine, with the
//! network idle), and the node's payload rate counted that wait.
//!
//! Direct writes: a partial payload's file is also opened with `O_DIRECT`, and a batch of
//! verified groups whose buffer, offset and length are [`DIRECT_ALIGN`]ed (every batch a
//! download writes, but the one holding a short last group) goes straight to the disk. A
//! payload of a few GiB then does not push the machine's working set out of the page cache
//! as it arrives, and the node does not spend CPU filling cache pages it will not read soon.
//! On this project's 2-core test machine the page-cache copy took about a quarter of the
//! receiving node's CPU in `scripts/bench-transfer.sh`. Where the file system refuses direct
//! I/O (tmpfs, some network file systems) the store uses the page cache, as before. Reads
//! (serving peers, installing) go through the page cache; a kill -9 loses nothing either way.

use patchmesh_protocol::ids::ContentId;
use patchmesh_protocol::transfer::{
    self, check_outboard, group_count, group_cv, group_span, root_of, Availability, Bitfield,
    GROUP_BYTES,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Limits of one store.
#[derive(Clone, Copy, Debug)]
pub struct StoreLimits {
    /// Largest single payload.
    pub payload_bytes_max: u64,
    /// All payloads together.
    pub store_bytes_max: u64,
}

/// What can go wrong in the content store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The payload is larger than this node accepts.
    #[error("payload of {size_bytes} bytes exceeds this node's limit of {limit_bytes}")]
    PayloadTooLarge {
        /// Its size.
        size_bytes: u64,
        /// The limit.
        limit_bytes: u64,
    },
    /// Storing it would pass the store's limit.
    #[error(
        "store would hold {needed_bytes} bytes, limit {limit_bytes}; run `patchmesh content gc`"
    )]
    StoreFull {
        /// Bytes the store would hold.
        needed_bytes: u64,
        /// The limit.
        limit_bytes: u64,
    },
    /// The file system ran out of space; verified groups are kept.
    #[error("disk full while writing {0}; verified groups are kept and the download resumes when space is freed")]
    DiskFull(ContentId),
    /// A group did not match its chaining value.
    #[error("group {group} of {content} failed verification")]
    Corrupt {
        /// The content.
        content: ContentId,
        /// The group.
        group: u64,
    },
    /// The outboard did not verify.
    #[error("outboard of {content}: {source}")]
    Outboard {
        /// The content.
        content: ContentId,
        /// Why.
        source: transfer::TransferError,
    },
    /// The content is not in the store (or not the groups asked for).
    #[error("{0} is not held")]
    NotHeld(ContentId),
    /// The same id with another size.
    #[error("{content} is held with size {held}, not {asked}")]
    SizeMismatch {
        /// The content.
        content: ContentId,
        /// Held size.
        held: u64,
        /// Asked size.
        asked: u64,
    },
    /// Any other I/O error.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// One payload in the store.
struct Entry {
    size_bytes: u64,
    have: Bitfield,
    cvs: Option<Arc<Vec<[u8; 32]>>>,
    file: Arc<File>,
    /// The same file opened for direct I/O while the payload is partial (see the module
    /// docs); `None` where the file system refuses it, and after a direct write failed.
    direct: Option<Arc<File>>,
    /// Bytes written since the last background flush began.
    unflushed: u64,
    /// A background flush of this file is running.
    flushing: Arc<AtomicBool>,
}

/// Bytes a download writes before it flushes them in the background (see the module docs).
pub const WRITEBACK_BYTES: u64 = 32 * 1024 * 1024;

impl Entry {
    fn new(size_bytes: u64, have: Bitfield, cvs: Option<Arc<Vec<[u8; 32]>>>, file: File) -> Entry {
        let flushing = Arc::new(AtomicBool::new(false));
        Entry { size_bytes, have, cvs, file: Arc::new(file), direct: None, unflushed: 0, flushing }
    }

    /// Opens the file at `path` for direct writes as well (a partial payload).
    fn with_direct(mut self, path: &Path) -> Entry {
        use std::os::unix::fs::OpenOptionsExt;
        let flag = nix::fcntl::OFlag::O_DIRECT.bits();
        match OpenOptions::new().write(true).custom_flags(flag).open(path) {
            Ok(f) => self.direct = Some(Arc::new(f)),
            Err(e) => tracing::debug!(error = %e, "no direct I/O for a payload; page cache used"),
        }
        self
    }
}

/// Alignment of a direct write's buffer, file offset and length: the largest logical block
/// size in common use, so one rule fits every disk.
pub const DIRECT_ALIGN: usize = 4096;

/// Whether `data`, written at `offset`, meets direct I/O's alignment.
fn direct_aligned(data: &[u8], offset: u64) -> bool {
    (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
        && data.len().is_multiple_of(DIRECT_ALIGN)
        && offset.is_multiple_of(DIRECT_ALIGN as u64)
}

/// A zeroed buffer of `len` bytes whose start is [`DIRECT_ALIGN`]ed, so that a download can
/// hand the store batches it may write directly: the vector and the offset of the aligned
/// start in it (`&v[at..at + len]`).
pub fn aligned_buffer(len: usize) -> (Vec<u8>, usize) {
    let v = vec![0u8; len + DIRECT_ALIGN];
    let at = v.as_ptr().align_offset(DIRECT_ALIGN);
    (v, at)
}

/// A summary of one payload, for listings.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ContentInfo {
    /// The id.
    pub content: ContentId,
    /// Signed size.
    pub size_bytes: u64,
    /// Verified bytes.
    pub have_bytes: u64,
    /// Every group verified.
    pub complete: bool,
}

/// The content store. Cheap to share: every method takes `&self`.
pub struct ContentStore {
    dir: PathBuf,
    limits: StoreLimits,
    entries: Mutex<BTreeMap<ContentId, Entry>>,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { what, path, source }
}

fn disk_full(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::StorageFull || e.raw_os_error() == Some(28)
}

impl ContentStore {
    /// Opens (creating) the store in `dir`, re-verifying partial payloads.
    pub fn open(dir: &Path, limits: StoreLimits) -> Result<ContentStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let store =
            ContentStore { dir: dir.to_path_buf(), limits, entries: Mutex::new(BTreeMap::new()) };
        let listing = std::fs::read_dir(dir).map_err(io("listing", dir))?;
        let mut ids = BTreeSet::new();
        for e in listing.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            // Temporary files of an interrupted import are garbage.
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            if let Some(id) = ContentId::from_hex(&name) {
                ids.insert(id);
            }
        }
        for id in ids {
            match store.load(&id) {
                Ok(entry) => {
                    store.entries.lock().expect("store lock").insert(id, entry);
                }
                Err(e) => {
                    tracing::warn!(content = %id, error = %e, "dropping unreadable content");
                    store.delete_files(&id);
                }
            }
        }
        Ok(store)
    }

    fn path(&self, id: &ContentId, ext: &str) -> PathBuf {
        self.dir.join(format!("{}{ext}", id.to_hex()))
    }

    fn load(&self, id: &ContentId) -> Result<Entry, StoreError> {
        let data = self.path(id, "");
        let file =
            OpenOptions::new().read(true).write(true).open(&data).map_err(io("opening", &data))?;
        let size_bytes = file.metadata().map_err(io("reading", &data))?.len();
        let obao = self.path(id, ".obao");
        let cvs = match std::fs::read(&obao) {
            Ok(bytes) => Some(Arc::new(
                check_outboard(id, size_bytes, &bytes)
                    .map_err(|source| StoreError::Outboard { content: *id, source })?,
            )),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(io("reading", &obao)(e)),
        };
        let partial = self.path(id, ".part").exists();
        let groups = group_count(size_bytes);
        let have = match (&cvs, partial) {
            (Some(_), false) => Bitfield::full(groups),
            (None, false) => {
                return Err(StoreError::Outboard {
                    content: *id,
                    source: transfer::TransferError::OutboardMismatch,
                })
            }
            (None, true) => Bitfield::new(groups),
            (Some(cvs), true) => verified_groups(&file, size_bytes, cvs),
        };
        let entry = Entry::new(size_bytes, have, cvs, file);
        Ok(if partial { entry.with_direct(&data) } else { entry })
    }

    fn delete_files(&self, id: &ContentId) {
        for ext in ["", ".obao", ".part"] {
            let _ = std::fs::remove_file(self.path(id, ext));
        }
    }

    fn held_bytes(entries: &BTreeMap<ContentId, Entry>) -> u64 {
        entries.values().map(|e| e.size_bytes).sum()
    }

    fn check_room(&self, size_bytes: u64) -> Result<(), StoreError> {
        if size_bytes > self.limits.payload_bytes_max {
            return Err(StoreError::PayloadTooLarge {
                size_bytes,
                limit_bytes: self.limits.payload_bytes_max,
            });
        }
        let held = Self::held_bytes(&self.entries.lock().expect("store lock"));
        if held + size_bytes > self.limits.store_bytes_max {
            return Err(StoreError::StoreFull {
                needed_bytes: held + size_bytes,
                limit_bytes: self.limits.store_bytes_max,
            });
        }
        Ok(())
    }

    /// Imports a local file: hashes it group by group (the root of those groups is its
    /// BLAKE3), copies it in and writes its outboard. Returns its id and size.
    pub fn import(&self, src: &Path) -> Result<(ContentId, u64), StoreError> {
        let mut input = File::open(src).map_err(io("opening", src))?;
        let size_bytes = input.metadata().map_err(io("reading", src))?.len();
        self.check_room(size_bytes)?;
        let tmp = self.dir.join(format!("import-{}.tmp", std::process::id()));
        let mut out = File::create(&tmp).map_err(io("creating", &tmp))?;
        let mut cvs = Vec::with_capacity(group_count(size_bytes) as usize);
        let mut buf = vec![0u8; GROUP_BYTES as usize];
        let result = (|| {
            for g in 0..group_count(size_bytes) {
                let (_, len) = group_span(size_bytes, g);
                let part = &mut buf[..len as usize];
                input.read_exact(part).map_err(io("reading", src))?;
                cvs.push(group_cv(size_bytes, g, part));
                out.write_all(part).map_err(|e| {
                    if disk_full(&e) {
                        StoreError::DiskFull(ContentId::default())
                    } else {
                        io("writing", &tmp)(e)
                    }
                })?;
            }
            out.sync_all().map_err(io("flushing", &tmp))
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let id = root_of(size_bytes, &cvs).expect("one value per group");
        if let Some(held) = self.entries.lock().expect("store lock").get(&id) {
            let _ = std::fs::remove_file(&tmp);
            if held.have.is_full() {
                return Ok((id, size_bytes));
            }
        }
        let obao = self.path(&id, ".obao");
        write_synced(&obao, &cvs.concat())?;
        let data = self.path(&id, "");
        std::fs::rename(&tmp, &data).map_err(io("renaming", &data))?;
        let _ = std::fs::remove_file(self.path(&id, ".part"));
        sync_dir(&self.dir);
        let file =
            OpenOptions::new().read(true).write(true).open(&data).map_err(io("opening", &data))?;
        self.entries.lock().expect("store lock").insert(
            id,
            Entry::new(
                size_bytes,
                Bitfield::full(group_count(size_bytes)),
                Some(Arc::new(cvs)),
                file,
            ),
        );
        Ok((id, size_bytes))
    }

    /// Starts (or continues) a partial payload of `size_bytes`. Returns the groups held.
    pub fn begin(&self, id: &ContentId, size_bytes: u64) -> Result<Bitfield, StoreError> {
        if let Some(e) = self.entries.lock().expect("store lock").get(id) {
            if e.size_bytes != size_bytes {
                return Err(StoreError::SizeMismatch {
                    content: *id,
                    held: e.size_bytes,
                    asked: size_bytes,
                });
            }
            return Ok(e.have.clone());
        }
        transfer::check_size(size_bytes)
            .map_err(|source| StoreError::Outboard { content: *id, source })?;
        self.check_room(size_bytes)?;
        write_synced(&self.path(id, ".part"), size_bytes.to_string().as_bytes())?;
        let data = self.path(id, "");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&data)
            .map_err(io("creating", &data))?;
        file.set_len(size_bytes).map_err(io("sizing", &data))?;
        sync_dir(&self.dir);
        let have = Bitfield::new(group_count(size_bytes));
        self.entries
            .lock()
            .expect("store lock")
            .insert(*id, Entry::new(size_bytes, have.clone(), None, file).with_direct(&data));
        Ok(have)
    }

    /// Whether the outboard of a partial payload is known.
    pub fn has_outboard(&self, id: &ContentId) -> bool {
        self.entries.lock().expect("store lock").get(id).is_some_and(|e| e.cvs.is_some())
    }

    /// Checks an outboard a peer sent against the id and keeps it.
    pub fn set_outboard(&self, id: &ContentId, bytes: &[u8]) -> Result<(), StoreError> {
        let size_bytes = self.size_of(id).ok_or(StoreError::NotHeld(*id))?;
        let cvs = check_outboard(id, size_bytes, bytes)
            .map_err(|source| StoreError::Outboard { content: *id, source })?;
        write_synced(&self.path(id, ".obao"), bytes).map_err(|e| match e {
            StoreError::Io { source, .. } if disk_full(&source) => StoreError::DiskFull(*id),
            other => other,
        })?;
        if let Some(e) = self.entries.lock().expect("store lock").get_mut(id) {
            e.cvs = Some(Arc::new(cvs));
        }
        Ok(())
    }

    /// The signed size of a held (or partial) payload.
    pub fn size_of(&self, id: &ContentId) -> Option<u64> {
        self.entries.lock().expect("store lock").get(id).map(|e| e.size_bytes)
    }

    /// Verifies group `g` and writes it. Returns whether it was new. Nothing is written if
    /// it does not verify.
    pub fn write_group(&self, id: &ContentId, g: u64, data: &[u8]) -> Result<bool, StoreError> {
        let (file, cvs, size_bytes) = {
            let entries = self.entries.lock().expect("store lock");
            let e = entries.get(id).ok_or(StoreError::NotHeld(*id))?;
            if e.have.get(g) {
                return Ok(false);
            }
            (e.file.clone(), e.cvs.clone().ok_or(StoreError::NotHeld(*id))?, e.size_bytes)
        };
        let (offset, len) = group_span(size_bytes, g);
        if data.len() as u64 != len || group_cv(size_bytes, g, data) != cvs[g as usize] {
            return Err(StoreError::Corrupt { content: *id, group: g });
        }
        file.write_all_at(data, offset).map_err(|e| {
            if disk_full(&e) {
                StoreError::DiskFull(*id)
            } else {
                io("writing", &self.path(id, ""))(e)
            }
        })?;
        let mut entries = self.entries.lock().expect("store lock");
        Ok(entries.get_mut(id).is_some_and(|e| e.have.set(g)))
    }

    /// Verifies the consecutive groups from `first` that `data` holds (it must end on a group
    /// boundary) and writes the verified prefix with one write. Returns how many groups were
    /// written, and the error that stopped it short, if any (the groups before a corrupt one
    /// are kept: bytes that crossed a slow link are never thrown away).
    pub fn write_groups(
        &self,
        id: &ContentId,
        first: u64,
        data: &[u8],
    ) -> (u64, Result<(), StoreError>) {
        let (file, direct, cvs, size_bytes) = {
            let entries = self.entries.lock().expect("store lock");
            let Some(e) = entries.get(id) else { return (0, Err(StoreError::NotHeld(*id))) };
            let Some(cvs) = e.cvs.clone() else { return (0, Err(StoreError::NotHeld(*id))) };
            (e.file.clone(), e.direct.clone(), cvs, e.size_bytes)
        };
        let (start, _) = group_span(size_bytes, first);
        let mut verified = 0u64;
        let mut end = 0usize;
        let mut stopped = Ok(());
        while end < data.len() {
            let g = first + verified;
            let (offset, len) = group_span(size_bytes, g);
            let at = (offset - start) as usize;
            let part = data.get(at..at + len as usize);
            match part {
                Some(part)
                    if g < cvs.len() as u64
                        && len > 0
                        && group_cv(size_bytes, g, part) == cvs[g as usize] =>
                {
                    verified += 1;
                    end = at + len as usize;
                }
                _ => {
                    stopped = Err(StoreError::Corrupt { content: *id, group: g });
                    break;
                }
            }
        }
        if verified == 0 {
            return (0, stopped);
        }
        let data = &data[..end];
        let direct = direct.filter(|_| direct_aligned(data, start));
        let mut written = match &direct {
            Some(d) => d.write_all_at(data, start),
            None => file.write_all_at(data, start),
        };
        if direct.is_some() && written.as_ref().is_err_and(|e| e.kind() == ErrorKind::InvalidInput)
        {
            // The file system turned the direct write away after all: the page cache from now.
            tracing::debug!("a direct write was refused; this payload goes through the page cache");
            if let Some(e) = self.entries.lock().expect("store lock").get_mut(id) {
                e.direct = None;
            }
            written = file.write_all_at(data, start);
        }
        if let Err(e) = written {
            let e = if disk_full(&e) {
                StoreError::DiskFull(*id)
            } else {
                io("writing", &self.path(id, ""))(e)
            };
            return (0, Err(e));
        }
        let mut entries = self.entries.lock().expect("store lock");
        if let Some(e) = entries.get_mut(id) {
            for g in first..first + verified {
                e.have.set(g);
            }
            e.unflushed += end as u64;
        }
        (verified, stopped)
    }

    /// A flush of the payload's written data, once [`WRITEBACK_BYTES`] have been written since
    /// the last one began and none is running: the caller runs it on a blocking thread. It
    /// only moves durability earlier; [`ContentStore::finish`] still flushes before a payload
    /// counts as complete, and reports any error.
    pub fn writeback_due(&self, id: &ContentId) -> Option<impl FnOnce() + Send + 'static> {
        let mut entries = self.entries.lock().expect("store lock");
        let e = entries.get_mut(id)?;
        if e.unflushed < WRITEBACK_BYTES || e.flushing.swap(true, Ordering::AcqRel) {
            return None;
        }
        e.unflushed = 0;
        let (file, flushing) = (e.file.clone(), e.flushing.clone());
        Some(move || {
            if let Err(e) = file.sync_data() {
                tracing::debug!(error = %e, "background flush of a payload failed");
            }
            flushing.store(false, Ordering::Release);
        })
    }

    /// Whether batches of `id` are written past the page cache now (tests).
    #[cfg(test)]
    fn writes_direct(&self, id: &ContentId) -> bool {
        self.entries.lock().expect("store lock").get(id).is_some_and(|e| e.direct.is_some())
    }

    /// Marks a payload whose every group verified as complete: flushes the data, then removes
    /// the partial marker. Returns false if groups are still missing.
    pub fn finish(&self, id: &ContentId) -> Result<bool, StoreError> {
        let file = {
            let entries = self.entries.lock().expect("store lock");
            let e = entries.get(id).ok_or(StoreError::NotHeld(*id))?;
            if !e.have.is_full() {
                return Ok(false);
            }
            e.file.clone()
        };
        if let Some(e) = self.entries.lock().expect("store lock").get_mut(id) {
            e.direct = None;
        }
        let data = self.path(id, "");
        file.sync_all().map_err(io("flushing", &data))?;
        match std::fs::remove_file(self.path(id, ".part")) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io("completing", &data)(e)),
        }
        Ok(true)
    }

    /// What the store holds of `id`.
    pub fn availability(&self, id: &ContentId) -> (u64, Availability) {
        let entries = self.entries.lock().expect("store lock");
        match entries.get(id) {
            Some(e) if e.cvs.is_some() && e.have.is_full() => {
                (e.size_bytes, Availability::Complete)
            }
            Some(e) if e.cvs.is_some() && e.have.count() > 0 => {
                (e.size_bytes, Availability::Partial(e.have.clone()))
            }
            _ => (0, Availability::Nothing),
        }
    }

    /// The outboard bytes, if known.
    pub fn outboard(&self, id: &ContentId) -> Option<(u64, Vec<u8>)> {
        let entries = self.entries.lock().expect("store lock");
        let e = entries.get(id)?;
        Some((e.size_bytes, e.cvs.as_ref()?.concat()))
    }

    /// Reads groups `first .. first + count` if every one of them is held; `None` otherwise.
    pub fn reader(&self, id: &ContentId, first: u64, count: u64) -> Option<(Arc<File>, u64)> {
        let entries = self.entries.lock().expect("store lock");
        let e = entries.get(id)?;
        e.cvs.as_ref()?;
        (first..first + count).all(|g| e.have.get(g)).then(|| (e.file.clone(), e.size_bytes))
    }

    /// The path of a complete payload (what an installer reads).
    pub fn complete_path(&self, id: &ContentId) -> Option<PathBuf> {
        let entries = self.entries.lock().expect("store lock");
        entries.get(id).filter(|e| e.cvs.is_some() && e.have.is_full()).map(|_| self.path(id, ""))
    }

    /// Every payload held.
    pub fn list(&self) -> Vec<ContentInfo> {
        let entries = self.entries.lock().expect("store lock");
        entries
            .iter()
            .map(|(id, e)| {
                let groups = e.have.len();
                let tail = e.size_bytes - (groups - 1) * GROUP_BYTES;
                let have_bytes = e.have.count() * GROUP_BYTES
                    - if e.have.get(groups - 1) { GROUP_BYTES - tail } else { 0 };
                ContentInfo {
                    content: *id,
                    size_bytes: e.size_bytes,
                    have_bytes: if e.cvs.is_some() { have_bytes } else { 0 },
                    complete: e.cvs.is_some() && e.have.is_full(),
                }
            })
            .collect()
    }

    /// Bytes the store holds (partial payloads at full size).
    pub fn held_bytes_total(&self) -> u64 {
        Self::held_bytes(&self.entries.lock().expect("store lock"))
    }

    /// Removes every payload not in `keep`. Returns what was removed.
    pub fn gc(&self, keep: &BTreeSet<ContentId>) -> Vec<(ContentId, u64)> {
        let doomed: Vec<(ContentId, u64)> = {
            let mut entries = self.entries.lock().expect("store lock");
            let ids: Vec<ContentId> =
                entries.keys().filter(|k| !keep.contains(k)).copied().collect();
            ids.into_iter()
                .filter_map(|id| entries.remove(&id).map(|e| (id, e.size_bytes)))
                .collect()
        };
        for (id, _) in &doomed {
            self.delete_files(id);
        }
        if !doomed.is_empty() {
            sync_dir(&self.dir);
        }
        doomed
    }
}

/// Every group of a partial file that matches its chaining value.
fn verified_groups(file: &File, size_bytes: u64, cvs: &[[u8; 32]]) -> Bitfield {
    let groups = group_count(size_bytes);
    let mut have = Bitfield::new(groups);
    let mut buf = vec![0u8; GROUP_BYTES as usize];
    for g in 0..groups {
        let (offset, len) = group_span(size_bytes, g);
        let part = &mut buf[..len as usize];
        if file.read_exact_at(part, offset).is_ok()
            && group_cv(size_bytes, g, part) == cvs[g as usize]
        {
            have.set(g);
        }
    }
    have
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    crate::files::write_synced(path, bytes).map_err(io("writing", path))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> StoreLimits {
        StoreLimits { payload_bytes_max: 1 << 30, store_bytes_max: 4 << 30 }
    }

    fn payload(len: usize, salt: u8) -> Vec<u8> {
        (0..len).map(|i| ((i * 7 + salt as usize) % 253) as u8).collect()
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pm-content-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn import_names_content_by_its_blake3() {
        let dir = tempdir("import");
        let data = payload(100_000, 1);
        std::fs::write(dir.join("in"), &data).unwrap();
        let store = ContentStore::open(&dir.join("store"), limits()).unwrap();
        let (id, size) = store.import(&dir.join("in")).unwrap();
        assert_eq!(id.0, *blake3::hash(&data).as_bytes());
        assert_eq!(size, 100_000);
        assert_eq!(std::fs::read(store.complete_path(&id).unwrap()).unwrap(), data);
        // Reopened, it is still complete.
        drop(store);
        let store = ContentStore::open(&dir.join("store"), limits()).unwrap();
        assert!(store.list()[0].complete);
        assert_eq!(store.list()[0].have_bytes, 100_000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `data` imported by a source store in `dir/a`; a second store in `dir/b` that has begun
    /// fetching it (no outboard yet). Returns that store, the id, the size and the outboard.
    fn fetching(dir: &Path, data: &[u8]) -> (ContentStore, ContentId, u64, Vec<u8>) {
        std::fs::write(dir.join("in"), data).unwrap();
        let source = ContentStore::open(&dir.join("a"), limits()).unwrap();
        let (id, size) = source.import(&dir.join("in")).unwrap();
        let (_, outboard) = source.outboard(&id).unwrap();
        let store = ContentStore::open(&dir.join("b"), limits()).unwrap();
        store.begin(&id, size).unwrap();
        (store, id, size, outboard)
    }

    #[test]
    fn a_run_of_groups_keeps_the_verified_ones_before_a_corrupt_one() {
        let dir = tempdir("run");
        let data = payload(6 * GROUP_BYTES as usize + 123, 3);
        let (store, id, size, outboard) = fetching(&dir, &data);
        store.set_outboard(&id, &outboard).unwrap();
        // Groups 1..5 with group 3 damaged: 1 and 2 are written, then it stops at 3.
        let (from, _) = group_span(size, 1);
        let mut run = data[from as usize..(5 * GROUP_BYTES) as usize].to_vec();
        run[(2 * GROUP_BYTES + 7) as usize] ^= 1;
        let (written, result) = store.write_groups(&id, 1, &run);
        assert_eq!(written, 2);
        assert!(matches!(result, Err(StoreError::Corrupt { group: 3, .. })));
        let Availability::Partial(b) = store.availability(&id).1 else { panic!("partial") };
        assert_eq!((0..7).filter(|g| b.get(*g)).collect::<Vec<_>>(), vec![1, 2]);
        // The rest in one run, ending with the short last group, completes it.
        let (from, _) = group_span(size, 3);
        let (written, result) = store.write_groups(&id, 3, &data[from as usize..]);
        assert_eq!((written, result.is_ok()), (4, true));
        let (written, result) = store.write_groups(&id, 0, &data[..GROUP_BYTES as usize]);
        assert_eq!((written, result.is_ok()), (1, true));
        assert!(store.finish(&id).unwrap());
        assert_eq!(std::fs::read(store.complete_path(&id).unwrap()).unwrap(), data);
        // A run that stops inside a group is refused at that group.
        let (written, result) = store.write_groups(&id, 0, &data[..100]);
        assert_eq!(written, 0);
        assert!(matches!(result, Err(StoreError::Corrupt { group: 0, .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_download_flushes_every_writeback_step_once_and_not_while_a_flush_runs() {
        let dir = tempdir("writeback");
        let step = WRITEBACK_BYTES as usize;
        let data = payload(step + 3 * GROUP_BYTES as usize, 4);
        let (store, id, _, outboard) = fetching(&dir, &data);
        store.set_outboard(&id, &outboard).unwrap();
        // One group short of a step: nothing to flush yet.
        let first = WRITEBACK_BYTES / GROUP_BYTES - 1;
        let (written, result) = store.write_groups(&id, 0, &data[..(first * GROUP_BYTES) as usize]);
        assert_eq!((written, result.is_ok()), (first, true));
        assert!(store.writeback_due(&id).is_none(), "a flush before a whole step was written");
        // The step completes: one flush, and no second one while it runs.
        let g = |n: u64| &data[(n * GROUP_BYTES) as usize..((n + 1) * GROUP_BYTES) as usize];
        assert_eq!(store.write_groups(&id, first, g(first)).0, 1);
        let flush = store.writeback_due(&id).expect("a flush once a step was written");
        assert!(store.writeback_due(&id).is_none(), "two flushes of one step");
        assert_eq!(store.write_groups(&id, first + 1, g(first + 1)).0, 1);
        assert!(store.writeback_due(&id).is_none(), "a flush while one runs");
        flush();
        assert!(store.writeback_due(&id).is_none(), "a flush with less than a step unflushed");
        // The rest completes the payload; it is flushed whole and reads back exactly.
        let rest = (first + 2) * GROUP_BYTES;
        let (written, result) = store.write_groups(&id, first + 2, &data[rest as usize..]);
        assert_eq!((written, result.is_ok()), (2, true));
        assert!(store.finish(&id).unwrap());
        assert_eq!(std::fs::read(store.complete_path(&id).unwrap()).unwrap(), data);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn aligned_batches_go_past_the_page_cache_and_read_back_exactly() {
        let dir = tempdir("direct");
        let data = payload(40 * GROUP_BYTES as usize + 777, 5);
        let (store, id, size, outboard) = fetching(&dir, &data);
        store.set_outboard(&id, &outboard).unwrap();
        // Whether this file system takes direct I/O at all (tmpfs before Linux 6.6 does not).
        let probe = dir.join("probe");
        std::fs::write(&probe, b"").unwrap();
        let direct_ok = {
            use std::os::unix::fs::OpenOptionsExt;
            let flag = nix::fcntl::OFlag::O_DIRECT.bits();
            OpenOptions::new().write(true).custom_flags(flag).open(&probe).is_ok()
        };
        assert_eq!(store.writes_direct(&id), direct_ok);
        // Batches of 16 groups from an aligned buffer, as a download hands them over; the
        // second batch has a damaged group 20, so it keeps only groups 16..20.
        let batch = |store: &ContentStore, first: u64, damage: Option<usize>| {
            let (from, _) = group_span(size, first);
            let to = (from as usize + 16 * GROUP_BYTES as usize).min(data.len());
            let (mut buf, at) = aligned_buffer(16 * GROUP_BYTES as usize);
            let len = to - from as usize;
            buf[at..at + len].copy_from_slice(&data[from as usize..to]);
            if let Some(i) = damage {
                buf[at + i] ^= 1;
            }
            store.write_groups(&id, first, &buf[at..at + len])
        };
        assert_eq!(batch(&store, 0, None).0, 16);
        let (written, result) = batch(&store, 16, Some(4 * GROUP_BYTES as usize + 9));
        assert_eq!(written, 4);
        assert!(matches!(result, Err(StoreError::Corrupt { group: 20, .. })));
        assert_eq!(store.writes_direct(&id), direct_ok, "a direct write fell back");
        // What went past the cache is on disk: a reopened store verifies exactly those groups.
        drop(store);
        let store = ContentStore::open(&dir.join("b"), limits()).unwrap();
        let Availability::Partial(b) = store.availability(&id).1 else { panic!("partial") };
        assert_eq!((0..41).filter(|g| b.get(*g)).collect::<Vec<_>>(), (0..20).collect::<Vec<_>>());
        // The rest: 20..36 (aligned) and the short tail 36..41 (written through the cache).
        assert_eq!(batch(&store, 20, None).0, 16);
        let (written, result) = batch(&store, 36, None);
        assert_eq!((written, result.is_ok()), (5, true));
        assert!(store.finish(&id).unwrap());
        assert!(!store.writes_direct(&id), "a complete payload keeps no direct handle");
        assert_eq!(std::fs::read(store.complete_path(&id).unwrap()).unwrap(), data);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn partial_payloads_take_only_verified_groups_and_survive_reopen() {
        let dir = tempdir("partial");
        let data = payload(5 * GROUP_BYTES as usize + 10, 2);
        let (store, id, size, outboard) = fetching(&dir, &data);
        assert!(
            store.write_group(&id, 0, &data[..GROUP_BYTES as usize]).is_err(),
            "no outboard yet"
        );
        let mut forged = outboard.clone();
        forged[0] ^= 1;
        assert!(store.set_outboard(&id, &forged).is_err());
        store.set_outboard(&id, &outboard).unwrap();
        let group = |g: u64| {
            let (o, l) = group_span(size, g);
            data[o as usize..(o + l) as usize].to_vec()
        };
        let mut bad = group(1);
        bad[5] ^= 0x80;
        assert!(matches!(
            store.write_group(&id, 1, &bad),
            Err(StoreError::Corrupt { group: 1, .. })
        ));
        assert!(store.write_group(&id, 1, &group(1)).unwrap());
        assert!(store.write_group(&id, 5, &group(5)).unwrap());
        assert!(!store.finish(&id).unwrap());
        assert!(store.complete_path(&id).is_none());
        assert!(store.reader(&id, 1, 1).is_some());
        assert!(store.reader(&id, 1, 2).is_none());
        drop(store);
        // Reopen: exactly groups 1 and 5 verify again.
        let store = ContentStore::open(&dir.join("b"), limits()).unwrap();
        let (_, avail) = store.availability(&id);
        let Availability::Partial(b) = avail else { panic!("{avail:?}") };
        assert_eq!((0..6).filter(|g| b.get(*g)).collect::<Vec<_>>(), vec![1, 5]);
        for g in [0, 2, 3, 4] {
            store.write_group(&id, g, &group(g)).unwrap();
        }
        assert!(store.finish(&id).unwrap());
        assert_eq!(std::fs::read(store.complete_path(&id).unwrap()).unwrap(), data);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn limits_refuse_before_storing() {
        let dir = tempdir("limits");
        let small = StoreLimits { payload_bytes_max: 50_000, store_bytes_max: 80_000 };
        std::fs::write(dir.join("big"), payload(60_000, 3)).unwrap();
        std::fs::write(dir.join("a"), payload(40_000, 4)).unwrap();
        std::fs::write(dir.join("b"), payload(45_000, 5)).unwrap();
        let store = ContentStore::open(&dir.join("s"), small).unwrap();
        assert!(matches!(store.import(&dir.join("big")), Err(StoreError::PayloadTooLarge { .. })));
        let (a, _) = store.import(&dir.join("a")).unwrap();
        assert!(matches!(store.import(&dir.join("b")), Err(StoreError::StoreFull { .. })));
        assert!(matches!(
            store.begin(&ContentId([9; 32]), 45_000),
            Err(StoreError::StoreFull { .. })
        ));
        assert_eq!(store.list().len(), 1);
        // GC frees it.
        assert_eq!(store.gc(&BTreeSet::new()), vec![(a, 40_000)]);
        assert!(store.import(&dir.join("b")).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
