//! The node's durable store: everything the protocol core asks to persist, in sled.
//!
//! The core emits [`Persist`] outputs; the driver hands each to [`Store::persist`] before it
//! acts on anything that depends on it. On start the driver loads everything back and hands it
//! to `protocol::Node::restore`, which verifies every object again: a store that was edited,
//! truncated or half-written by a kill -9 is no more trusted than a peer.
//!
//! ## Layout (one sled tree, keys prefixed by kind)
//! - `meta/genesis` — the genesis envelope the store belongs to; opening it with another mesh's
//!   genesis is refused.
//! - `meta/node` — the node key's public half; opening it with another key is refused.
//! - `admin/<version, 8 bytes BE>` — admin sets.
//! - `catalog/<automerge change hash>` — signed catalog changes.
//! - `record/<node id>` — the newest record of each node (older ones are overwritten).
//! - `evidence/<object id>` — evidence (grow-only).
//! - `summary/<site>` — the newest summary of each site.
//! - `floor/record` — the highest record version this node signed.
//!
//! ## Durability points
//! Version floors and admin sets are flushed before `persist` returns: a floor that went back
//! after a crash would let this node sign two records with one version, and an admin set that
//! went back would re-open a replay window. Everything else is replicated and can be fetched
//! again, so it is flushed [`FLUSH_AFTER`] after it was written, by the store's own flush
//! thread. (sled's periodic flusher, which that thread replaces, fsynced the store every 500 ms
//! whether or not anything had been written: an idle node woke itself and its disk twice a
//! second for nothing.)
//!
//! ## A damaged store
//! sled checks its files as it opens them, but damage inside its log can also end in a store
//! that opens and silently holds less than was written. The record floor is therefore also
//! kept beside the store, in `<store>.floor` (written to a temporary file, synced, renamed):
//! on load the higher of the two wins, and a store that came back lower says so (the node
//! then re-fetches the rest from its peers, and the core signs above any record of its own a
//! peer still holds). A store sled cannot open stops the node with what to do about it.

use patchmesh_protocol::catalog::change_hash;
use patchmesh_protocol::crypto::{decode, encode, DecodeError, Envelope};
use patchmesh_protocol::ids::KeyId;
use patchmesh_protocol::limits;
use patchmesh_protocol::node::Persist;
use patchmesh_protocol::site::Bundle;
use patchmesh_protocol::trust::AdminSet;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

/// Largest value the store will decode.
const VALUE_BYTES_MAX: usize = 2 * limits::ENVELOPE_BODY_BYTES_MAX + 16 * 1024;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (disk, permissions, corruption it detected).
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    /// The store belongs to another mesh.
    #[error("the store at this path belongs to another mesh")]
    OtherMesh,
    /// The store belongs to another node key.
    #[error("the store at this path belongs to node {0}, not this key")]
    OtherNode(KeyId),
    /// A stored value does not decode (reported per entry by [`Store::load`]; fatal only in
    /// the metadata).
    #[error("stored value {key}: {source}")]
    Decode {
        /// The key.
        key: String,
        /// Why.
        source: DecodeError,
    },
    /// An object the store cannot key.
    #[error("cannot store {0}")]
    Unkeyable(&'static str),
    /// The record floor's copy beside the store could not be written.
    #[error("writing the record floor to {path}: {source}")]
    Floor {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What a store holds: everything to hand to `Node::restore`, and what was unreadable.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Objects in store order (admin sets first).
    pub persisted: Vec<Persist>,
    /// Keys of entries that did not decode (they are removed).
    pub unreadable: Vec<String>,
    /// The store's record floor was below the copy kept beside it: the store lost writes.
    pub lost_writes: Option<LostWrites>,
}

/// A store that came back with a lower record floor than the copy beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostWrites {
    /// The floor the store held (0: none).
    pub store_floor: u64,
    /// The floor kept beside it, which is used.
    pub kept_floor: u64,
}

/// Durable storage for one node.
pub trait Store {
    /// Everything stored.
    fn load(&self) -> Result<Loaded, StoreError>;
    /// Stores one object (flushing at durability points).
    fn persist(&self, p: &Persist) -> Result<(), StoreError>;
    /// Flushes everything written so far.
    fn flush(&self) -> Result<(), StoreError>;
}

/// How soon after a write that is not a durability point the store is flushed.
pub const FLUSH_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// The sled-backed store.
pub struct SledStore {
    db: sled::Db,
    /// The record floor's copy beside the store.
    floor_file: std::path::PathBuf,
    flusher: Flusher,
}

/// Flushes the store [`FLUSH_AFTER`] after the first write since the last flush, on a thread
/// of its own, and sleeps while nothing is written. Dropping it flushes what is left.
struct Flusher {
    state: Arc<(Mutex<FlushState>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct FlushState {
    dirty: bool,
    stop: bool,
}

fn lock_state(m: &Mutex<FlushState>) -> std::sync::MutexGuard<'_, FlushState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Flusher {
    fn start(db: sled::Db) -> std::io::Result<Flusher> {
        let state = Arc::new((Mutex::new(FlushState::default()), Condvar::new()));
        let shared = state.clone();
        let thread = std::thread::Builder::new().name("store flush".into()).spawn(move || {
            let (m, cv) = &*shared;
            let mut st = lock_state(m);
            loop {
                while !st.dirty && !st.stop {
                    st = cv.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                if st.dirty && !st.stop {
                    st = cv
                        .wait_timeout_while(st, FLUSH_AFTER, |s| !s.stop)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
                let (dirty, stop) = (st.dirty, st.stop);
                st.dirty = false;
                drop(st);
                if dirty {
                    if let Err(e) = db.flush() {
                        tracing::error!(error = %e, "flushing the store failed");
                    }
                }
                if stop {
                    return;
                }
                st = lock_state(m);
            }
        })?;
        Ok(Flusher { state, thread: Some(thread) })
    }

    /// Something was written: flush it soon.
    fn written(&self) {
        let (m, cv) = &*self.state;
        let mut st = lock_state(m);
        if !st.dirty {
            st.dirty = true;
            cv.notify_one();
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        let (m, cv) = &*self.state;
        lock_state(m).stop = true;
        cv.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SledStore")
    }
}

impl SledStore {
    /// Opens (or creates) the store at `path` for this genesis and node key.
    pub fn open(path: &Path, genesis: &Envelope, node: KeyId) -> Result<SledStore, StoreError> {
        let db = sled::Config::new().path(path).flush_every_ms(None).open()?;
        let genesis_bytes = encode(genesis);
        match db.get("meta/genesis")? {
            Some(held) if held.as_ref() != genesis_bytes.as_slice() => {
                return Err(StoreError::OtherMesh)
            }
            Some(_) => {}
            None => {
                db.insert("meta/genesis", genesis_bytes)?;
            }
        }
        match db.get("meta/node")? {
            Some(held) if held.as_ref() != node.0.as_slice() => {
                let mut key = [0u8; 32];
                if held.len() == 32 {
                    key.copy_from_slice(&held);
                }
                return Err(StoreError::OtherNode(KeyId(key)));
            }
            Some(_) => {}
            None => {
                db.insert("meta/node", node.0.to_vec())?;
            }
        }
        db.flush()?;
        let mut floor_file = path.as_os_str().to_owned();
        floor_file.push(".floor");
        let flusher =
            Flusher::start(db.clone()).map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        Ok(SledStore { db, floor_file: floor_file.into(), flusher })
    }

    /// The floor kept beside the store, if any (a missing or unreadable copy counts as none:
    /// it only ever raises the store's own).
    fn kept_floor(&self) -> u64 {
        let Ok(text) = crate::files::read_limited(&self.floor_file, 64) else { return 0 };
        String::from_utf8_lossy(&text).trim().parse().unwrap_or(0)
    }

    fn keep_floor(&self, v: u64) -> Result<(), StoreError> {
        crate::files::write_synced(&self.floor_file, format!("{v}\n").as_bytes()).map_err(
            |source| StoreError::Floor { path: self.floor_file.display().to_string(), source },
        )
    }

    fn key_of(p: &Persist) -> Result<Vec<u8>, StoreError> {
        let mut key = Vec::with_capacity(48);
        match p {
            Persist::AdminSet(env) => {
                let set = AdminSet::open(env).map_err(|e| {
                    StoreError::Unkeyable(match e {
                        patchmesh_protocol::trust::TrustError::Decode(_) => {
                            "admin set (undecodable)"
                        }
                        _ => "admin set (not an admin set)",
                    })
                })?;
                key.extend_from_slice(b"admin/");
                key.extend_from_slice(&set.version.to_be_bytes());
            }
            Persist::CatalogChange(env) => {
                let hash = change_hash(env).ok_or(StoreError::Unkeyable("catalog change"))?;
                key.extend_from_slice(b"catalog/");
                key.extend_from_slice(&hash);
            }
            Persist::SiteObject(b)
                if b.object().domain == patchmesh_protocol::crypto::Domain::NodeRecord =>
            {
                let signer =
                    b.object().signatures.first().ok_or(StoreError::Unkeyable("record"))?;
                key.extend_from_slice(b"record/");
                key.extend_from_slice(&signer.key.0);
            }
            Persist::SiteObject(b) => {
                key.extend_from_slice(b"evidence/");
                key.extend_from_slice(&b.id().0);
            }
            Persist::Summary(b) => {
                // (Verified bundles carry their decoded summary; the fallbacks decode it.)
                let site = b.summary().map(|s| s.site.to_string()).or_else(|| {
                    use patchmesh_protocol::site::{Endorsement, SiteSummary};
                    let summary = b.object().open::<SiteSummary>("summary");
                    let endorsed = || b.object().open::<Endorsement>("endorsement").ok();
                    summary
                        .ok()
                        .map(|s| s.site)
                        .or_else(|| endorsed().map(|e| e.site))
                        .map(|s| s.to_string())
                });
                let site = site.ok_or(StoreError::Unkeyable("summary"))?;
                key.extend_from_slice(b"summary/");
                key.extend_from_slice(site.as_bytes());
            }
            Persist::RecordVersionFloor(_) => key.extend_from_slice(b"floor/record"),
            Persist::Alarm(b) => {
                key.extend_from_slice(b"alarm/");
                key.extend_from_slice(&b.id().0);
            }
            Persist::Journal(j) => {
                key.extend_from_slice(b"journal/");
                key.extend_from_slice(&j.rollout.0);
            }
        }
        Ok(key)
    }
}

impl Store for SledStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let mut out = Loaded::default();
        let mut bad = Vec::new();
        for prefix in [
            "admin/",
            "floor/",
            "catalog/",
            "record/",
            "evidence/",
            "summary/",
            "alarm/",
            "journal/",
        ] {
            for item in self.db.scan_prefix(prefix) {
                let (key, value) = item?;
                let parsed = parse(prefix, &value);
                match parsed {
                    Ok(p) => out.persisted.push(p),
                    Err(source) => {
                        let name = String::from_utf8_lossy(&key[..prefix.len()]).into_owned()
                            + &hex::encode(&key[prefix.len()..]);
                        tracing::warn!(key = %name, error = %source, "unreadable store entry removed");
                        out.unreadable.push(name);
                        bad.push(key);
                    }
                }
            }
        }
        for key in bad {
            self.db.remove(key)?;
            self.flusher.written();
        }
        let store_floor = out
            .persisted
            .iter()
            .filter_map(|p| match p {
                Persist::RecordVersionFloor(v) => Some(*v),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let kept_floor = self.kept_floor();
        if kept_floor > store_floor {
            tracing::warn!(
                store_floor,
                kept_floor,
                "the store came back with less than was written (its record floor is below the \
                 copy kept beside it); using the higher floor, the rest is fetched from peers"
            );
            out.persisted.push(Persist::RecordVersionFloor(kept_floor));
            out.lost_writes = Some(LostWrites { store_floor, kept_floor });
        }
        Ok(out)
    }

    fn persist(&self, p: &Persist) -> Result<(), StoreError> {
        let key = Self::key_of(p)?;
        let value = match p {
            Persist::AdminSet(env) | Persist::CatalogChange(env) => encode(env),
            Persist::SiteObject(b) | Persist::Summary(b) | Persist::Alarm(b) => encode(b.as_ref()),
            Persist::Journal(j) => encode(j),
            Persist::RecordVersionFloor(v) => {
                // Floors never go down, whatever order writes arrive in.
                let held = self.db.get(&key)?.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok());
                let held = held.map_or(0, u64::from_be_bytes);
                (*v.max(&held)).to_be_bytes().to_vec()
            }
        };
        self.db.insert(key, value)?;
        // The journal is flushed before the step it names runs: after a crash the node must
        // find the step it was in, never an older one.
        if matches!(p, Persist::RecordVersionFloor(_) | Persist::AdminSet(_) | Persist::Journal(_))
        {
            self.db.flush()?;
        } else {
            self.flusher.written();
        }
        if let Persist::RecordVersionFloor(v) = p {
            if *v > self.kept_floor() {
                self.keep_floor(*v)?;
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

fn parse(prefix: &str, value: &[u8]) -> Result<Persist, DecodeError> {
    Ok(match prefix {
        "admin/" => Persist::AdminSet(decode("stored admin set", value, VALUE_BYTES_MAX)?),
        "catalog/" => Persist::CatalogChange(decode("stored change", value, VALUE_BYTES_MAX)?),
        "record/" | "evidence/" => Persist::SiteObject(Arc::new(decode::<Bundle>(
            "stored site object",
            value,
            VALUE_BYTES_MAX,
        )?)),
        "summary/" => {
            Persist::Summary(Arc::new(decode::<Bundle>("stored summary", value, VALUE_BYTES_MAX)?))
        }
        "alarm/" => {
            Persist::Alarm(Arc::new(decode::<Bundle>("stored alarm", value, VALUE_BYTES_MAX)?))
        }
        "journal/" => Persist::Journal(decode("stored journal entry", value, VALUE_BYTES_MAX)?),
        _ => {
            let bytes: [u8; 8] = value.try_into().map_err(|_| DecodeError::TooLarge {
                what: "record floor",
                size_bytes: value.len(),
                limit_bytes: 8,
            })?;
            Persist::RecordVersionFloor(u64::from_be_bytes(bytes))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchmesh_protocol::crypto::SecretKey;
    use patchmesh_protocol::ids::Millis;
    use patchmesh_protocol::mesh;

    #[test]
    fn floors_never_go_down_and_foreign_meshes_are_refused() {
        let dir = std::env::temp_dir().join(format!("pm-store-{}", std::process::id()));
        let root = SecretKey::from_seed([1; 32]);
        let admin = SecretKey::from_seed([2; 32]);
        let node = SecretKey::from_seed([3; 32]);
        let g = mesh::genesis(
            "m",
            &[&root],
            1,
            &[admin.public()],
            mesh::Approval::always(1),
            Millis(0),
        );
        {
            let s = SledStore::open(&dir, &g, node.public()).unwrap();
            s.persist(&Persist::RecordVersionFloor(7)).unwrap();
            s.persist(&Persist::RecordVersionFloor(3)).unwrap();
            let loaded = s.load().unwrap();
            assert!(matches!(loaded.persisted[..], [Persist::RecordVersionFloor(7)]));
        }
        let other = mesh::genesis(
            "other",
            &[&root],
            1,
            &[admin.public()],
            mesh::Approval::always(1),
            Millis(0),
        );
        assert!(matches!(SledStore::open(&dir, &other, node.public()), Err(StoreError::OtherMesh)));
        let stranger = SecretKey::from_seed([4; 32]);
        assert!(matches!(
            SledStore::open(&dir, &g, stranger.public()),
            Err(StoreError::OtherNode(k)) if k == node.public()
        ));
        std::fs::remove_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.with_extension("floor"));
    }

    #[test]
    fn a_store_whose_log_is_damaged_refuses_to_open_or_never_comes_back_with_a_lower_floor() {
        let dir = std::env::temp_dir().join(format!("pm-store-torn-{}", std::process::id()));
        let root = SecretKey::from_seed([1; 32]);
        let node = SecretKey::from_seed([3; 32]);
        let g = mesh::genesis("m", &[&root], 1, &[], mesh::Approval::always(1), Millis(0));
        {
            let s = SledStore::open(&dir, &g, node.public()).unwrap();
            for v in 1..=200 {
                s.persist(&Persist::RecordVersionFloor(v)).unwrap();
            }
            s.flush().unwrap();
        }
        // Damage inside sled's log: every 97th byte flipped, past its first 64 bytes.
        let log = dir.join("db");
        let mut bytes = std::fs::read(&log).unwrap();
        assert!(bytes.len() > 4096, "the log holds the writes ({} bytes)", bytes.len());
        for i in (64..bytes.len()).step_by(97) {
            bytes[i] ^= 0xA5;
        }
        std::fs::write(&log, bytes).unwrap();
        match SledStore::open(&dir, &g, node.public()) {
            // sled noticed: the node stops with what to do (tests/tests/mesh.rs covers the
            // message).
            Err(e) => eprintln!("open refused: {e}"),
            Ok(s) => match s.load() {
                Err(e) => eprintln!("load refused: {e}"),
                Ok(loaded) => {
                    eprintln!(
                        "loaded {} objects, lost writes {:?}",
                        loaded.persisted.len(),
                        loaded.lost_writes
                    );
                    let floor = loaded.persisted.iter().find_map(|p| match p {
                        Persist::RecordVersionFloor(v) => Some(*v),
                        _ => None,
                    });
                    assert_eq!(floor, Some(200), "the floor came back lower: {loaded:?}");
                }
            },
        }
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_file(std::path::PathBuf::from(format!("{}.floor", dir.display()))).unwrap();
    }

    #[test]
    fn a_write_between_durability_points_is_flushed_by_the_store_thread() {
        let dir = std::env::temp_dir().join(format!("pm-store-flush-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = sled::Config::new().path(&dir).flush_every_ms(None).open().unwrap();
        db.insert("a", vec![1u8; 100]).unwrap();
        db.flush().unwrap();
        let flushed = db.size_on_disk().unwrap();
        let flusher = Flusher::start(db.clone()).unwrap();
        // Nothing written: nothing flushed (sled's own flusher is off).
        db.insert("b", vec![2u8; 4000]).unwrap();
        std::thread::sleep(FLUSH_AFTER * 2);
        assert_eq!(db.size_on_disk().unwrap(), flushed, "flushed without being told");
        // Told: flushed within a moment.
        flusher.written();
        let t = std::time::Instant::now();
        while db.size_on_disk().unwrap() == flushed && t.elapsed().as_secs() < 30 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(db.size_on_disk().unwrap() > flushed, "the write never reached the disk");
        // Dropping it stops its thread.
        drop(flusher);
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_store_that_lost_its_floor_gets_the_copy_kept_beside_it() {
        let dir = std::env::temp_dir().join(format!("pm-store-lost-{}", std::process::id()));
        let root = SecretKey::from_seed([1; 32]);
        let node = SecretKey::from_seed([3; 32]);
        let g = mesh::genesis("m", &[&root], 1, &[], mesh::Approval::always(1), Millis(0));
        {
            let s = SledStore::open(&dir, &g, node.public()).unwrap();
            s.persist(&Persist::RecordVersionFloor(9)).unwrap();
            assert!(s.load().unwrap().lost_writes.is_none());
        }
        // The store loses its floor (as sled's log cut at damage would); the copy stays.
        {
            let db = sled::open(&dir).unwrap();
            db.remove("floor/record").unwrap();
            db.flush().unwrap();
        }
        let s = SledStore::open(&dir, &g, node.public()).unwrap();
        let loaded = s.load().unwrap();
        assert_eq!(loaded.lost_writes, Some(LostWrites { store_floor: 0, kept_floor: 9 }));
        assert!(matches!(loaded.persisted[..], [Persist::RecordVersionFloor(9)]));
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_file(std::path::PathBuf::from(format!("{}.floor", dir.display()))).unwrap();
    }
}
