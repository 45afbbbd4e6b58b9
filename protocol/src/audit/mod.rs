//! The tamper-evident audit log: what each node did, as a hash chain it signs.
//!
//! ## Format
//! One JSON object per line, so a person can read it with `less` and a tool with `jq`:
//!
//! - an **entry**: `{"entry":{"seq":N,"prev":"<hex>","at_ms":T,"event":{"type":...}},"hash":"<hex>"}`.
//!   `hash` is BLAKE3 over [`ENTRY_TAG`] and the exact bytes of the `entry` object as written;
//!   `prev` is the previous entry's hash (all zeros before the first entry, sequence 1). The
//!   verifier hashes the bytes it read, so an entry verifies even when a newer node wrote an
//!   event type this build does not know.
//! - a **checkpoint**: `{"checkpoint":{"node":..,"seq":N,"head":"<hex>","at_ms":T},"signature":"<hex>"}`,
//!   the node's ed25519 signature over the checkpoint's canonical encoding. It commits to every
//!   entry up to `seq`. The node writes one at least every [`CHECKPOINT_EVERY_ENTRIES`] entries
//!   and [`CHECKPOINT_EVERY_MS`], and its latest checkpoint rides in its signed record, so the
//!   members of its site hold a commitment to its log: a node that rewrites its past contradicts
//!   a checkpoint someone else holds.
//! - an **export header** (first line of an exported log only):
//!   `{"export":{..},"signature":"<hex>"}`, signed by the node, naming the node, its admission
//!   certificate and the admin sets that vouch for it, and the range exported. With it,
//!   [`verify_export`] needs nothing but the mesh's genesis.
//!
//! A log starts at sequence 1 or, after rotation or for an export that starts later, at a
//! checkpoint: the chain continues from the checkpoint's head.

use crate::crypto::{self, Domain, Envelope, Sig, SignatureCheck, SignatureEntry};
use crate::ids::{KeyId, Millis};
use crate::trust::{self, Trust};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;

mod verify;

pub use verify::*;

/// Prefix of every entry hash.
pub const ENTRY_TAG: &[u8] = b"patchmesh/v1/audit-entry\0";
/// Longest line a log may hold (an entry with its output tail fits well inside).
pub const LINE_BYTES_MAX: usize = 64 * 1024;
/// Bytes of program output an install entry keeps.
pub const OUTPUT_TAIL_BYTES_MAX: usize = 8 * 1024;
/// Bytes of any other text field of an event.
pub const TEXT_BYTES_MAX: usize = 1024;
/// A checkpoint is signed at least this often (entries)...
pub const CHECKPOINT_EVERY_ENTRIES: u64 = 256;
/// ...and this often (milliseconds) while entries keep coming.
pub const CHECKPOINT_EVERY_MS: u64 = 5 * 60 * 1000;
/// Admin-set envelopes an export header may carry.
pub const ADMIN_SETS_MAX: usize = 64;

/// A 32-byte hash written as 64 hex digits in every encoding.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash32(pub [u8; 32]);

impl Hash32 {
    /// The hash before the first entry.
    pub const ZERO: Hash32 = Hash32([0; 32]);
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Hash32> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Hash32(out))
    }
}

impl fmt::Debug for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}
impl fmt::Display for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl Serialize for Hash32 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}
impl<'de> Deserialize<'de> for Hash32 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Hash32::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

/// What a node records. Text fields are cut to [`TEXT_BYTES_MAX`] (output tails to
/// [`OUTPUT_TAIL_BYTES_MAX`]) by [`Event::bounded`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The node started.
    NodeStarted {
        /// The node's software version.
        version: String,
        /// How many bytes of a torn tail were dropped when the log was reopened (a crash
        /// while writing); 0 normally.
        torn_tail_bytes: u64,
    },
    /// The node is stopping.
    NodeStopping {
        /// Why.
        reason: String,
    },
    /// The install journal reached a step (flushed before the step runs).
    InstallStep {
        /// Rollout id (hex).
        rollout: String,
        /// The node's ring in it.
        ring: u32,
        /// The step.
        step: String,
    },
    /// The people logged in were told an install is coming (its time after `deferred`
    /// deferrals; a deferral records a new notice).
    UserNotice {
        /// Rollout id (hex).
        rollout: String,
        /// When the install starts (ms since the epoch).
        install_at_ms: u64,
        /// Deferrals used so far.
        deferrals_used: u32,
        /// Deferrals the rollout allows.
        deferrals_allowed: u32,
        /// Who was logged in.
        users: Vec<String>,
    },
    /// An executor step finished.
    StepResult {
        /// Rollout id (hex).
        rollout: String,
        /// stage, install, verify, rollback or fetch.
        action: String,
        /// It succeeded.
        ok: bool,
        /// The program's exit code, when one ran and exited.
        exit_code: Option<i32>,
        /// It hit its deadline.
        timed_out: bool,
        /// How long it ran.
        duration_ms: u64,
        /// One line.
        detail: String,
        /// The last bytes of its output.
        output_tail: String,
    },
    /// A rollout's verdict as this node first saw it (halted, paused, aborted...).
    RolloutStopped {
        /// Rollout id (hex).
        rollout: String,
        /// The control that stopped it.
        control: String,
    },
    /// An admin-signed object the node applied: a catalog change or an admin set.
    AdminObjectApplied {
        /// catalog-change, admin-set...
        kind: String,
        /// Object id (hex).
        object: String,
        /// Signing admin keys (hex).
        signers: Vec<String>,
        /// What it says, in one line.
        summary: String,
    },
    /// A vulnerability exception took effect on this node.
    ExceptionApplied {
        /// The CVE.
        cve: String,
        /// Findings it covers here.
        findings: u32,
        /// Until when.
        expires_at_ms: u64,
        /// The approving admin key (hex).
        approver: String,
    },
    /// The node adopted an intel bundle.
    IntelAdopted {
        /// Bundle content id (hex).
        bundle: String,
        /// When the admin published it.
        published_at_ms: u64,
        /// Source packages of this node's release it holds advisories for.
        sources: u32,
    },
    /// A finding opened on this node (a CVE now affects an installed source package).
    FindingOpened {
        /// The CVE.
        cve: String,
        /// The source package.
        source: String,
        /// Its installed version.
        installed: String,
        /// When it is due, if its due class has a date.
        due_at_ms: Option<u64>,
    },
    /// A finding closed (the fix is installed, or the package is gone).
    FindingClosed {
        /// The CVE.
        cve: String,
        /// The source package.
        source: String,
        /// Its version now (none: removed).
        installed: Option<String>,
    },
    /// The node refused an object or command.
    Refused {
        /// What was refused.
        what: String,
        /// Why.
        reason: String,
        /// The peer it came from, if any (hex).
        from: Option<String>,
    },
    /// The wall clock moved against the monotonic clock by more than the tolerance.
    ClockJump {
        /// Wall clock expected from the monotonic clock.
        expected_ms: u64,
        /// Wall clock read.
        read_ms: u64,
    },
    /// A member of the site signed two checkpoints that contradict each other.
    Equivocation {
        /// The member (hex).
        node: String,
        /// What contradicts what.
        detail: String,
    },
}

fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}

/// The last `max` bytes of `s` (on a character boundary).
pub fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut at = s.len() - max;
    while !s.is_char_boundary(at) {
        at += 1;
    }
    s[at..].to_string()
}

impl Event {
    /// The event with every text field within its bound.
    pub fn bounded(mut self) -> Event {
        let t = TEXT_BYTES_MAX;
        match &mut self {
            Event::NodeStarted { version, .. } => cut(version, t),
            Event::NodeStopping { reason } => cut(reason, t),
            Event::InstallStep { rollout, step, .. } => {
                cut(rollout, t);
                cut(step, t)
            }
            Event::StepResult { rollout, action, detail, output_tail, .. } => {
                cut(rollout, t);
                cut(action, t);
                cut(detail, t);
                *output_tail = tail(output_tail, OUTPUT_TAIL_BYTES_MAX);
            }
            Event::RolloutStopped { rollout, control } => {
                cut(rollout, t);
                cut(control, t)
            }
            Event::AdminObjectApplied { kind, object, signers, summary } => {
                cut(kind, t);
                cut(object, t);
                signers.truncate(16);
                signers.iter_mut().for_each(|s| cut(s, 128));
                cut(summary, t)
            }
            Event::ExceptionApplied { cve, approver, .. } => {
                cut(cve, t);
                cut(approver, t)
            }
            Event::IntelAdopted { bundle, .. } => cut(bundle, t),
            Event::FindingOpened { cve, source, installed, .. } => {
                cut(cve, t);
                cut(source, t);
                cut(installed, t)
            }
            Event::FindingClosed { cve, source, installed } => {
                cut(cve, t);
                cut(source, t);
                if let Some(i) = installed {
                    cut(i, t)
                }
            }
            Event::Refused { what, reason, from } => {
                cut(what, t);
                cut(reason, t);
                if let Some(f) = from {
                    cut(f, t)
                }
            }
            Event::ClockJump { .. } => {}
            Event::UserNotice { rollout, users, .. } => {
                cut(rollout, t);
                users.truncate(16);
                users.iter_mut().for_each(|u| cut(u, 64));
            }
            Event::Equivocation { node, detail } => {
                cut(node, t);
                cut(detail, t)
            }
        }
        self
    }

    /// The event's type name.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::NodeStarted { .. } => "node_started",
            Event::NodeStopping { .. } => "node_stopping",
            Event::InstallStep { .. } => "install_step",
            Event::StepResult { .. } => "step_result",
            Event::RolloutStopped { .. } => "rollout_stopped",
            Event::AdminObjectApplied { .. } => "admin_object_applied",
            Event::ExceptionApplied { .. } => "exception_applied",
            Event::IntelAdopted { .. } => "intel_adopted",
            Event::Refused { .. } => "refused",
            Event::FindingOpened { .. } => "finding_opened",
            Event::FindingClosed { .. } => "finding_closed",
            Event::ClockJump { .. } => "clock_jump",
            Event::UserNotice { .. } => "user_notice",
            Event::Equivocation { .. } => "equivocation",
        }
    }
}

/// One entry of the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Sequence number, from 1, without gaps.
    pub seq: u64,
    /// The previous entry's hash.
    pub prev: Hash32,
    /// When (the node's wall clock).
    pub at_ms: u64,
    /// What happened.
    pub event: Event,
}

/// An entry as read back, the event left as JSON (it may be a type this build does not know).
#[derive(Clone, Debug, Deserialize)]
pub struct LooseEntry {
    /// Sequence number.
    pub seq: u64,
    /// The previous entry's hash.
    pub prev: Hash32,
    /// When.
    pub at_ms: u64,
    /// The event, as written (parse it with [`LooseEntry::event`]).
    pub event: Box<RawValue>,
}

impl LooseEntry {
    /// The event as JSON.
    pub fn event(&self) -> serde_json::Value {
        serde_json::from_str(self.event.get()).unwrap_or(serde_json::Value::Null)
    }
}

/// The hash of an entry's exact JSON bytes.
pub fn entry_hash(entry_json: &[u8]) -> Hash32 {
    let mut h = blake3::Hasher::new();
    h.update(ENTRY_TAG);
    h.update(entry_json);
    Hash32(*h.finalize().as_bytes())
}

/// Encodes an entry as one line (with the newline) and returns its hash.
pub fn entry_line(entry: &Entry) -> (String, Hash32) {
    let json = serde_json::to_string(entry).expect("entries serialize");
    let hash = entry_hash(json.as_bytes());
    (format!("{{\"entry\":{json},\"hash\":\"{hash}\"}}\n"), hash)
}

/// A node's signed statement that its log holds entries 1..=`seq` ending in `head`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The node (hex).
    pub node: Hash32,
    /// The last entry covered.
    pub seq: u64,
    /// That entry's hash.
    pub head: Hash32,
    /// When it was signed.
    pub at_ms: u64,
}

impl Checkpoint {
    /// Signs it with the node's key.
    pub fn sign(&self, key: &crypto::SecretKey) -> SignedCheckpoint {
        let entry = key.sign(Domain::AuditCheckpoint, &crypto::encode(self));
        SignedCheckpoint { checkpoint: self.clone(), signature: SigHex(entry.signature) }
    }
}

/// A checkpoint and the node's signature over it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCheckpoint {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// ed25519 by the node's key over [`Domain::AuditCheckpoint`] and its encoding.
    pub signature: SigHex,
}

impl SignedCheckpoint {
    /// Checks the signature against the node named in the checkpoint.
    pub fn verify(&self, check: &dyn SignatureCheck) -> Result<(), AuditError> {
        let entry =
            SignatureEntry { key: KeyId(self.checkpoint.node.0), signature: self.signature.0 };
        check
            .check(Domain::AuditCheckpoint, &crypto::encode(&self.checkpoint), &entry)
            .map_err(|_| AuditError::BadSignature("checkpoint"))
    }

    /// The line it is written as (with the newline).
    pub fn line(&self) -> String {
        serde_json::to_string(self).expect("checkpoints serialize") + "\n"
    }
}

/// A signature written as 128 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SigHex(pub Sig);

impl Serialize for SigHex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0 .0))
    }
}
impl<'de> Deserialize<'de> for SigHex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut out = [0u8; 64];
        hex::decode_to_slice(&*s, &mut out)
            .map_err(|_| serde::de::Error::custom("expected 128 hex digits"))?;
        Ok(SigHex(Sig(out)))
    }
}

/// The first line of an exported log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportHeader {
    /// Format version (1).
    pub format: u32,
    /// The mesh (hex).
    pub mesh: Hash32,
    /// The node (hex).
    pub node: Hash32,
    /// Its site.
    pub site: String,
    /// The node's admission certificate (hex of its envelope).
    pub admission: String,
    /// Admin-set envelopes after the genesis, in order (hex), so the admission's signer can be
    /// checked against the genesis alone.
    pub admin_sets: Vec<String>,
    /// The first entry exported (the chain continues from the checkpoint before it, if > 1).
    pub from_seq: u64,
    /// The last entry exported; the file ends with a checkpoint covering it.
    pub through_seq: u64,
    /// When it was exported (the node's clock).
    pub exported_at_ms: u64,
}

/// The header and the node's signature over it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHeader {
    /// The header.
    pub export: ExportHeader,
    /// ed25519 by the node over [`Domain::AuditExport`] and its encoding.
    pub signature: SigHex,
}

impl ExportHeader {
    /// Signs it.
    pub fn sign(&self, key: &crypto::SecretKey) -> SignedHeader {
        let entry = key.sign(Domain::AuditExport, &crypto::encode(self));
        SignedHeader { export: self.clone(), signature: SigHex(entry.signature) }
    }
}

/// Why a log does not verify. `seq` is the first sequence number that is wrong or missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// A line could not be read.
    #[error("line {line}: {reason}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A signature does not verify.
    #[error("bad signature on the {0}")]
    BadSignature(&'static str),
    /// The node is not vouched for by the mesh.
    #[error("the node's admission does not verify: {0}")]
    NotAdmitted(String),
    /// An entry's bytes do not match its hash.
    #[error("entry {seq}: its bytes do not match its hash (changed after it was written)")]
    HashMismatch {
        /// The entry.
        seq: u64,
    },
    /// The chain breaks at `seq`.
    #[error("entry {seq}: {reason}")]
    Broken {
        /// The first bad sequence number.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint disagrees with the chain.
    #[error("checkpoint at {seq}: {reason}")]
    Checkpoint {
        /// The checkpoint's sequence number.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// Entries are missing at the end.
    #[error(
        "truncated: entries from {seq} on are missing (the export says it runs through {through})"
    )]
    Truncated {
        /// The first missing sequence number.
        seq: u64,
        /// The last one the header promises.
        through: u64,
    },
    /// Entries after the last signed checkpoint.
    #[error("entries from {seq} on are covered by no signed checkpoint")]
    Unsigned {
        /// The first uncovered sequence number.
        seq: u64,
    },
}

impl AuditError {
    /// The first bad sequence number, when the failure is tied to one.
    pub fn seq(&self) -> Option<u64> {
        match self {
            AuditError::HashMismatch { seq }
            | AuditError::Broken { seq, .. }
            | AuditError::Checkpoint { seq, .. }
            | AuditError::Truncated { seq, .. }
            | AuditError::Unsigned { seq } => Some(*seq),
            _ => None,
        }
    }
}

/// The part of a checkpoint a node's signed record carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The last entry covered.
    pub seq: u64,
    /// Its hash.
    pub head: [u8; 32],
    /// When the checkpoint was signed.
    pub at: Millis,
}

impl Head {
    /// Whether a later record's head can follow this one: it may not go back, and at the same
    /// sequence number it must name the same entry. (A head further on cannot be checked
    /// without the log; [`verify_export`] checks those.)
    pub fn contradicts(&self, later: &Head) -> Option<String> {
        if later.seq < self.seq {
            Some(format!("audit log went back from entry {} to {}", self.seq, later.seq))
        } else if later.seq == self.seq && later.head != self.head {
            Some(format!("two different entries {} signed", self.seq))
        } else {
            None
        }
    }
}

/// The pure half of a node's log writer: sequence, head and checkpoint cadence. The node wraps
/// it with files (`node/src/audit.rs`); the simulator and tests use it alone.
#[derive(Debug)]
pub struct Writer {
    key: crypto::SecretKey,
    node: Hash32,
    seq: u64,
    head: Hash32,
    since_checkpoint: u64,
    last_checkpoint: Option<SignedCheckpoint>,
}

impl Writer {
    /// A writer for an empty log.
    pub fn new(key: crypto::SecretKey) -> Writer {
        Writer {
            node: Hash32(key.public().0),
            key,
            seq: 0,
            head: Hash32::ZERO,
            since_checkpoint: 0,
            last_checkpoint: None,
        }
    }

    /// A writer continuing the log `text` (this node's own). Reads up to the first line that is
    /// incomplete, unreadable or does not chain (a crash while writing leaves at most a torn last
    /// line) and returns the writer and how many bytes of `text` are good; the caller truncates
    /// the rest.
    pub fn resume(key: crypto::SecretKey, text: &str) -> (Writer, usize) {
        let mut w = Writer::new(key);
        let mut chain = Chain::new(Some(w.node));
        let mut good = 0;
        for (i, line) in text.split_inclusive('\n').enumerate() {
            let Some(body) = line.strip_suffix('\n') else { break };
            let Ok(parsed) = parse_line(body, i + 1) else { break };
            if chain.feed(&parsed, None).is_err() {
                break;
            }
            match parsed {
                Line::Entry { .. } => w.since_checkpoint += 1,
                Line::Checkpoint(cp) => {
                    w.since_checkpoint = 0;
                    w.last_checkpoint = Some(cp);
                }
                Line::Header(_) => break,
            }
            good += line.len();
        }
        w.seq = chain.seq;
        w.head = chain.head;
        (w, good)
    }

    /// Appends an event: the line to write (with its newline).
    pub fn append(&mut self, event: Event, at_ms: u64) -> String {
        let entry = Entry { seq: self.seq + 1, prev: self.head, at_ms, event: event.bounded() };
        let (line, hash) = entry_line(&entry);
        self.seq = entry.seq;
        self.head = hash;
        self.since_checkpoint += 1;
        line
    }

    /// Whether a checkpoint is due at `now_ms`: entries since the last one, and either
    /// [`CHECKPOINT_EVERY_ENTRIES`] of them or [`CHECKPOINT_EVERY_MS`] since it.
    pub fn checkpoint_due(&self, now_ms: u64) -> bool {
        if self.since_checkpoint == 0 {
            return false;
        }
        self.since_checkpoint >= CHECKPOINT_EVERY_ENTRIES
            || self
                .last_checkpoint
                .as_ref()
                .is_none_or(|c| now_ms.saturating_sub(c.checkpoint.at_ms) >= CHECKPOINT_EVERY_MS)
    }

    /// Signs a checkpoint of the log as it stands (even with no entries since the last one):
    /// the line to write.
    pub fn checkpoint(&mut self, at_ms: u64) -> SignedCheckpoint {
        // Never earlier than the last one, whatever the wall clock did.
        let at_ms = at_ms.max(self.last_checkpoint.as_ref().map_or(0, |c| c.checkpoint.at_ms));
        let cp =
            Checkpoint { node: self.node, seq: self.seq, head: self.head, at_ms }.sign(&self.key);
        self.since_checkpoint = 0;
        self.last_checkpoint = Some(cp.clone());
        cp
    }

    /// The last entry written.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The last checkpoint signed, as a record carries it.
    pub fn head(&self) -> Option<Head> {
        self.last_checkpoint.as_ref().map(|c| Head {
            seq: c.checkpoint.seq,
            head: c.checkpoint.head.0,
            at: Millis(c.checkpoint.at_ms),
        })
    }

    /// The last checkpoint signed.
    pub fn last_checkpoint(&self) -> Option<&SignedCheckpoint> {
        self.last_checkpoint.as_ref()
    }

    /// Signs an export header.
    pub fn sign_header(&self, header: &ExportHeader) -> SignedHeader {
        header.sign(&self.key)
    }
}
