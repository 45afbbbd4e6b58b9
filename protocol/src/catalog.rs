//! The catalog: the admin-written, multi-writer part of the replicated state, an automerge
//! document.
//!
//! ## Shape
//! The document is one flat root map from keys (`patch/<content id>`, `rollout/<id>`,
//! `command/<id>`, `intel/<content id>`, `exception/<id>`) to byte values holding the canonical encoding of a [`CatalogEntry`]. A flat
//! map of immutable-ish entries avoids automerge's classic pitfall of two admins concurrently
//! creating the same nested map (where one map would hide the other's entries).
//!
//! ## Authority
//! Automerge changes carry no author. Every change travels inside an [`Envelope`] with domain
//! `patchmesh/v1/catalog-change`, signed by exactly one admin key, and the change's actor id must
//! be that key followed by an 8-byte session tag ([`actor_for`]). A node applies a change only
//! after verifying all of this, so a valid signature cannot be reused to smuggle another actor's
//! change. Changes by a revoked admin are accepted only up to the sequence numbers its
//! revocation keeps.
//!
//! ## Sync
//! New changes are pushed by gossip as envelopes. Anti-entropy uses automerge's own sync protocol
//! per peer (heads, needs and bloom filters), with one difference: the protocol is held to its
//! per-change (V1) message format and the raw changes it would send are replaced by our signed
//! envelopes of the same change hashes, which the receiver verifies before applying anything.

use crate::crypto::{decode, encode, DecodeError, Domain, Envelope, SecretKey, SignatureCheck};
use crate::ids::{ContentId, KeyId, MeshId, Millis, ObjectId, StateHash};
use crate::limits;
use crate::trust::{expect_domain, Trust, TrustError};
use automerge::sync::{Capability, SyncDoc};
use automerge::{ActorId, Automerge, Change, ChangeHash, ReadDoc, ScalarValue, Value, ROOT};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Checks, op by op, that the signer's roles grant what a change writes: every op a put or
/// delete of a root-map key; each value a catalog entry stored under its own key; a patch needs
/// `publish`, a rollout `publish` in a scope its target narrows into, an approval `approve`,
/// other commands `control` (their scope is judged where they are used, against the rollout),
/// an exception `exceptions` within its target, intel and the integration policy their
/// permission everywhere, and a delete the permission of its key's kind everywhere.
fn authorize(
    change: &Change,
    signer: &KeyId,
    admins: &crate::trust::AdminSet,
) -> Result<(), CatalogError> {
    use crate::trust::Permission as P;
    use automerge::legacy::{Key, ObjectId as Obj, OpType};
    let refuse = |perm: &'static str| TrustError::NotPermitted { key: *signer, permission: perm };
    for op in change.decode().operations {
        let key = match (&op.obj, &op.key) {
            (Obj::Root, Key::Map(k)) => k.to_string(),
            _ => return Err(CatalogError::Edit("an op outside the catalog's root map".into())),
        };
        match op.action {
            OpType::Put(ScalarValue::Bytes(bytes)) => {
                let entry: CatalogEntry =
                    decode("catalog entry", &bytes, limits::CATALOG_VALUE_BYTES_MAX)?;
                if entry.key() != key {
                    return Err(CatalogError::Edit(format!(
                        "entry stored under {key}, not its own key"
                    )));
                }
                let ok = match &entry {
                    CatalogEntry::Patch(_) => admins.grants(signer, P::Publish),
                    CatalogEntry::Rollout(r) => {
                        admins.grants_within(signer, P::Publish, &r.target.sites, &r.target.labels)
                    }
                    CatalogEntry::Command(c) => match c.action {
                        crate::rollout::policy::CommandAction::Approve { .. } => {
                            admins.grants(signer, P::Approve)
                        }
                        _ => admins.grants(signer, P::Control),
                    },
                    CatalogEntry::Intel(_) => admins.grants_everywhere(signer, P::Intel),
                    CatalogEntry::Exception(e) => admins.grants_within(
                        signer,
                        P::Exceptions,
                        &e.target.sites,
                        &e.target.labels,
                    ),
                    CatalogEntry::Integrations(_) => {
                        admins.grants_everywhere(signer, P::Integrations)
                    }
                    CatalogEntry::NodeRevocation(r) => {
                        r.validate().is_ok()
                            && admins.grants_within(
                                signer,
                                P::Admit,
                                std::slice::from_ref(&r.site),
                                &BTreeMap::new(),
                            )
                    }
                    CatalogEntry::Deferrals(d) => {
                        d.validate().is_ok() && admins.grants(signer, P::Publish)
                    }
                    CatalogEntry::ReservedLabels(r) => {
                        r.validate().is_ok() && admins.grants_everywhere(signer, P::Admit)
                    }
                    CatalogEntry::Voucher(v) => v.voucher().is_ok_and(|voucher| {
                        admins.grants_within(
                            signer,
                            P::Admit,
                            std::slice::from_ref(&voucher.site),
                            &voucher.labels,
                        )
                    }),
                };
                if !ok {
                    return Err(refuse(entry_permission(&entry)).into());
                }
            }
            OpType::Delete => {
                let perm = [
                    ("patch/", P::Publish),
                    ("rollout/", P::Publish),
                    ("command/", P::Control),
                    ("intel/", P::Intel),
                    ("exception/", P::Exceptions),
                    ("voucher/", P::Admit),
                    ("policy/", P::Admit),
                    ("deferrals/", P::Publish),
                    ("revoked/", P::Admit),
                ]
                .into_iter()
                .find(|(prefix, _)| key.starts_with(prefix))
                .map(|(_, p)| p)
                .unwrap_or(P::Integrations);
                if !admins.grants_everywhere(signer, perm) {
                    return Err(refuse("deleting entries (needs the permission everywhere)").into());
                }
            }
            _ => {
                return Err(CatalogError::Edit(
                    "an op other than a put of bytes or a delete".into(),
                ))
            }
        }
    }
    Ok(())
}

fn entry_permission(entry: &CatalogEntry) -> &'static str {
    match entry {
        CatalogEntry::Patch(_) => "publish",
        CatalogEntry::Rollout(_) => "publish (within the rollout's target)",
        CatalogEntry::Command(c) => match c.action {
            crate::rollout::policy::CommandAction::Approve { .. } => "approve",
            _ => "control",
        },
        CatalogEntry::Intel(_) => "intel (everywhere)",
        CatalogEntry::Exception(_) => "exceptions (within the exception's target)",
        CatalogEntry::Integrations(_) => "integrations (everywhere)",
        CatalogEntry::Voucher(_) => "admit (for the voucher's site and labels)",
        CatalogEntry::ReservedLabels(_) => "admit (everywhere)",
        CatalogEntry::Deferrals(_) => "publish",
        CatalogEntry::NodeRevocation(_) => "admit (for the node's site)",
    }
}

/// Why a catalog change or sync message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// The signer, signature or domain failed the trust checks.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// Bytes could not be decoded within limits.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The change bytes are not a valid automerge change.
    #[error("invalid automerge change: {0}")]
    BadChange(String),
    /// The change's actor is not bound to the key that signed it.
    #[error("change actor is not bound to signer {0:?}")]
    ActorMismatch(KeyId),
    /// A revoked admin's change beyond what its revocation keeps.
    #[error("change seq {seq} by revoked key {key:?} is past the kept history")]
    RevokedHistory {
        /// The revoked key.
        key: KeyId,
        /// The change's sequence number.
        seq: u64,
    },
    /// The catalog is full.
    #[error("catalog holds {0} changes, the limit")]
    Full(usize),
    /// An automerge sync message was malformed or carried unsigned changes.
    #[error("bad sync message: {0}")]
    BadSync(String),
    /// Too many envelopes in one sync message.
    #[error("{0} changes in one sync message exceed the limit")]
    TooManyChanges(usize),
    /// The local edit could not be made.
    #[error("edit failed: {0}")]
    Edit(String),
}

/// How a patch is installed; executors interpret it (see the node's executors).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorSpec {
    /// `file`, `command` or `dpkg`.
    pub kind: String,
    /// Install command or target path, by kind.
    pub install: Option<String>,
    /// Verification command.
    pub verify: Option<String>,
    /// Rollback command.
    pub rollback: Option<String>,
    /// Timeout of each step.
    pub timeout_ms: u64,
}

/// A patch: a payload by content id, with how to install it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchEntry {
    /// BLAKE3 of the payload.
    pub content_id: ContentId,
    /// Exact payload size; bytes past it are refused.
    pub size_bytes: u64,
    /// Human name.
    pub name: String,
    /// Vendor version string.
    pub version: String,
    /// How to install, verify and roll back.
    pub executor: ExecutorSpec,
}

/// One input of an intel bundle, as the catalog names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntelSourceBrief {
    /// Its kind.
    pub kind: crate::intel::bundle::SourceKind,
    /// File name.
    pub name: String,
    /// BLAKE3 of the file.
    pub blake3: [u8; 32],
    /// The date the source states for itself.
    pub date: Option<String>,
    /// Records kept.
    pub records: u64,
    /// Records skipped.
    pub skipped: u64,
}

/// An intel bundle: vulnerability data every node matches against its own inventory. The
/// newest (by `created_at`, then content id) is the one nodes use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntelEntry {
    /// BLAKE3 of the bundle.
    pub content_id: ContentId,
    /// Its exact size (at most [`limits::INTEL_BUNDLE_BYTES_MAX`]).
    pub size_bytes: u64,
    /// When the admin built it.
    pub created_at: Millis,
    /// Its inputs.
    pub sources: Vec<IntelSourceBrief>,
}

/// The intel bundle nodes use: the newest within the size limit whose key names its content.
pub fn newest_intel(entries: &BTreeMap<String, CatalogEntry>) -> Option<&IntelEntry> {
    entries
        .iter()
        .filter_map(|(key, e)| match e {
            CatalogEntry::Intel(i)
                if i.size_bytes <= limits::INTEL_BUNDLE_BYTES_MAX
                    && *key == format!("intel/{}", i.content_id) =>
            {
                Some(i)
            }
            _ => None,
        })
        .max_by(|a, b| a.created_at.cmp(&b.created_at).then(a.content_id.cmp(&b.content_id)))
}

pub use crate::rollout::policy::{
    AdminCommand, CommandAction, Gate, Override, RingSpec, RolloutEntry, Selector, Window,
};

/// One entry of the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogEntry {
    /// A patch.
    Patch(PatchEntry),
    /// A rollout.
    Rollout(RolloutEntry),
    /// An admin command.
    Command(AdminCommand),
    /// An intel bundle.
    Intel(IntelEntry),
    /// An exception to a finding.
    Exception(crate::intel::exception::ExceptionEntry),
    /// Where events go (one per mesh, under [`crate::integrations::POLICY_KEY`]).
    Integrations(crate::integrations::IntegrationPolicy),
    /// An enrolment voucher's state: revoked, and the nodes approved by an admin.
    Voucher(crate::enrol::VoucherEntry),
    /// Labels no voucher may grant (one per mesh, under [`crate::enrol::ReservedLabels::KEY`]).
    ReservedLabels(crate::enrol::ReservedLabels),
    /// The deferrals a rollout allows the people at its machines.
    Deferrals(crate::rollout::policy::Deferrals),
    /// One machine's admission revoked.
    NodeRevocation(crate::enrol::NodeRevocation),
}

impl CatalogEntry {
    /// The key this entry is stored under.
    pub fn key(&self) -> String {
        match self {
            CatalogEntry::Patch(p) => format!("patch/{}", p.content_id),
            CatalogEntry::Rollout(r) => format!("rollout/{}", r.id),
            CatalogEntry::Intel(i) => format!("intel/{}", i.content_id),
            CatalogEntry::Exception(e) => e.key(),
            CatalogEntry::Integrations(_) => crate::integrations::POLICY_KEY.to_string(),
            CatalogEntry::ReservedLabels(_) => crate::enrol::ReservedLabels::KEY.to_string(),
            CatalogEntry::Deferrals(d) => d.key(),
            CatalogEntry::NodeRevocation(r) => crate::enrol::NodeRevocation::key_of(&r.node),
            CatalogEntry::Voucher(v) => match v.voucher() {
                Ok(voucher) => crate::enrol::VoucherEntry::key_of(&voucher.id),
                Err(_) => "voucher/undecodable".to_string(),
            },
            CatalogEntry::Command(c) => {
                // 128 bits of the command's hash: unique among admin-issued commands and half
                // the bytes on the wire of a full hash.
                let id = crate::crypto::hash_parts(&[&encode(c)]);
                format!("command/{}", hex::encode(&id[..16]))
            }
        }
    }
}

/// The body of a catalog-change envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeBody {
    /// The mesh, so a change cannot be replayed into another mesh.
    pub mesh: MeshId,
    /// The raw automerge change.
    pub change: Vec<u8>,
}

/// An automerge sync exchange carrying signed changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogSync {
    /// The encoded automerge sync message with its change list emptied.
    pub sync: Vec<u8>,
    /// Signed envelopes of the changes the sync protocol chose to send.
    pub changes: Vec<Envelope>,
}

/// The actor id an admin uses: its public key followed by a session tag, so one admin may sign
/// from several nodes without two writers sharing one actor.
pub fn actor_for(admin: &KeyId, session: [u8; 8]) -> ActorId {
    let mut bytes = admin.0.to_vec();
    bytes.extend_from_slice(&session);
    ActorId::from(bytes)
}

/// Outcome of offering a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// New and valid: stored, and worth relaying.
    New,
    /// Already held.
    Duplicate,
}

/// A node's catalog replica.
pub struct Catalog {
    mesh: MeshId,
    doc: Automerge,
    /// Signed envelopes by automerge change hash: what we can prove and relay.
    signed: BTreeMap<[u8; 32], Envelope>,
    /// BLAKE3 of each held envelope's body: a copy we already hold is recognised without
    /// parsing or verifying it again (gossip delivers most changes several times).
    bodies: std::collections::BTreeSet<[u8; 32]>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Catalog({} changes)", self.signed.len())
    }
}

/// Per-peer catalog sync state.
#[derive(Debug, Default)]
pub struct PeerSync(automerge::sync::State);

impl Catalog {
    /// An empty catalog for a mesh.
    pub fn new(mesh: MeshId) -> Catalog {
        // The local actor only matters for local edits, which always set an admin actor first.
        let doc = Automerge::new().with_actor(ActorId::from(mesh.0.to_vec()));
        Catalog { mesh, doc, signed: BTreeMap::new(), bodies: Default::default() }
    }

    /// Number of signed changes held.
    pub fn len(&self) -> usize {
        self.signed.len()
    }
    /// True when no change is held.
    pub fn is_empty(&self) -> bool {
        self.signed.is_empty()
    }

    /// All signed envelopes held, in change-hash order (for persistence and full sync).
    pub fn envelopes(&self) -> impl Iterator<Item = &Envelope> {
        self.signed.values()
    }

    /// True if an envelope with exactly this signed body is held (its signature was verified
    /// when it was first stored; the body names the change, so no other check is needed to
    /// recognise a duplicate).
    pub fn holds_body(&self, env: &Envelope) -> bool {
        self.bodies.contains(&env.body_hash())
    }

    /// True if a change with this automerge hash is held.
    pub fn has(&self, change_hash: &[u8; 32]) -> bool {
        self.signed.contains_key(change_hash)
    }

    /// Hash over the sorted heads: equal on two replicas iff they hold the same history.
    pub fn state_hash(&self) -> StateHash {
        let mut heads: Vec<[u8; 32]> = self.doc.get_heads().iter().map(|h| h.0).collect();
        heads.sort_unstable();
        let mut h = blake3::Hasher::new();
        h.update(b"catalog");
        for head in &heads {
            h.update(head);
        }
        h.update(&(self.signed.len() as u64).to_le_bytes());
        StateHash(*h.finalize().as_bytes())
    }

    /// Verifies a change envelope: domain, one admin signature, actor bound to the signer,
    /// revocation history, mesh. Returns the parsed change; stores nothing.
    pub fn verify(
        &self,
        env: &Envelope,
        trust: &Trust,
        check: &dyn SignatureCheck,
    ) -> Result<Change, CatalogError> {
        expect_domain(env, Domain::CatalogChange)?;
        if env.signatures.len() != 1 {
            return Err(TrustError::Invalid("a catalog change needs exactly one signature").into());
        }
        let signer = env.signatures[0].key;
        let revoked = trust.admins().revocation(&signer).cloned();
        if revoked.is_none() {
            trust.check_admin(&signer)?;
        }
        env.verify_all(check).map_err(TrustError::from)?;
        let body: ChangeBody = env.open("catalog change")?;
        if body.mesh != self.mesh {
            return Err(TrustError::WrongMesh { ours: self.mesh, got: body.mesh }.into());
        }
        if body.change.len() > limits::CATALOG_CHANGE_BYTES_MAX {
            return Err(DecodeError::TooLarge {
                what: "automerge change",
                size_bytes: body.change.len(),
                limit_bytes: limits::CATALOG_CHANGE_BYTES_MAX,
            }
            .into());
        }
        let change =
            Change::from_bytes(body.change).map_err(|e| CatalogError::BadChange(e.to_string()))?;
        let actor = change.actor_id().to_bytes();
        if actor.len() != 40 || actor[..32] != signer.0 {
            return Err(CatalogError::ActorMismatch(signer));
        }
        // A revoked admin's kept history was judged when it was signed; it has no role now.
        if !trust.admins().roles.is_empty() && revoked.is_none() {
            authorize(&change, &signer, trust.admins())?;
        }
        if let Some(rev) = revoked {
            let kept = rev.kept_seq.get(actor).copied().unwrap_or(0);
            if change.seq() > kept {
                return Err(CatalogError::RevokedHistory { key: signer, seq: change.seq() });
            }
        }
        Ok(change)
    }

    /// Verifies and applies one signed change.
    pub fn offer(
        &mut self,
        env: &Envelope,
        trust: &Trust,
        check: &dyn SignatureCheck,
    ) -> Result<Offer, CatalogError> {
        if self.holds_body(env) {
            return Ok(Offer::Duplicate);
        }
        let change = self.verify(env, trust, check)?;
        self.insert(change, env.clone())
    }

    fn insert(&mut self, change: Change, env: Envelope) -> Result<Offer, CatalogError> {
        let hash = change.hash().0;
        if self.signed.contains_key(&hash) {
            return Ok(Offer::Duplicate);
        }
        if self.signed.len() >= limits::CATALOG_CHANGES_MAX {
            return Err(CatalogError::Full(self.signed.len()));
        }
        // Changes whose dependencies have not arrived wait in automerge's queue; they are
        // signed and held, and become visible once their dependencies are applied.
        self.doc.apply_changes([change]).map_err(|e| CatalogError::BadChange(e.to_string()))?;
        self.bodies.insert(env.body_hash());
        self.signed.insert(hash, env);
        Ok(Offer::New)
    }

    /// Drops every held change that `trust` no longer accepts: changes by a revoked admin past
    /// the history its revocation keeps. Returns how many went; on an error (a held change
    /// that no longer applies, which verification makes impossible) nothing changes.
    ///
    /// A node that applied such a change before it heard of the revocation would otherwise
    /// keep it while every node that heard in the other order refuses it, and the replicas
    /// would never agree again. Automerge cannot un-apply a change, so the document is rebuilt
    /// from the changes that stay (rare: only when a revocation arrives and finds something).
    /// Changes that depended on a dropped one stay held but wait for it, as they do on a node
    /// that never had it, so both orders end with the same heads and the same state hash.
    pub fn drop_revoked(&mut self, trust: &Trust) -> Result<usize, CatalogError> {
        let admins = trust.admins();
        let doomed: Vec<[u8; 32]> = self
            .signed
            .iter()
            .filter(|(_, env)| {
                let Some(rev) = env.signatures.first().and_then(|s| admins.revocation(&s.key))
                else {
                    return false;
                };
                let Ok(body) = env.open::<ChangeBody>("catalog change") else { return true };
                let Ok(change) = Change::from_bytes(body.change) else { return true };
                let kept = rev.kept_seq.get(change.actor_id().to_bytes()).copied().unwrap_or(0);
                change.seq() > kept
            })
            .map(|(hash, _)| *hash)
            .collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        let changes: Vec<Change> = self
            .signed
            .iter()
            .filter(|(hash, _)| !doomed.contains(hash))
            .filter_map(|(_, env)| env.open::<ChangeBody>("catalog change").ok())
            .filter_map(|body| Change::from_bytes(body.change).ok())
            .collect();
        let mut doc = Automerge::new().with_actor(ActorId::from(self.mesh.0.to_vec()));
        doc.apply_changes(changes).map_err(|e| CatalogError::BadChange(e.to_string()))?;
        for hash in &doomed {
            if let Some(env) = self.signed.remove(hash) {
                self.bodies.remove(&env.body_hash());
            }
        }
        self.doc = doc;
        Ok(doomed.len())
    }

    /// Prepares, on a fork of this replica, the unsigned change an admin key would make
    /// putting (or deleting, with `None`) entries. Nothing is applied here: the caller signs the
    /// body wherever the admin key lives and offers the envelope back like any peer's change, so
    /// the key never has to reach the node. `session` must be fresh for every change (the actor
    /// is key + session, and one actor may not make two different changes with one sequence).
    pub fn prepare(
        &self,
        admin: &KeyId,
        session: [u8; 8],
        now: Millis,
        trust: &Trust,
        edits: &[(String, Option<CatalogEntry>)],
    ) -> Result<ChangeBody, CatalogError> {
        trust.check_admin(admin)?;
        if edits.is_empty() {
            return Err(CatalogError::Edit("empty edit".into()));
        }
        let mut fork = self.doc.fork();
        fork.set_actor(actor_for(admin, session));
        let mut tx = fork.transaction();
        for (key, entry) in edits {
            let result = match entry {
                Some(entry) => {
                    let bytes = encode(entry);
                    if bytes.len() > limits::CATALOG_VALUE_BYTES_MAX {
                        return Err(CatalogError::Edit(format!("entry {key} is too large")));
                    }
                    automerge::transaction::Transactable::put(
                        &mut tx,
                        ROOT,
                        key.as_str(),
                        ScalarValue::Bytes(bytes),
                    )
                }
                None => automerge::transaction::Transactable::delete(&mut tx, ROOT, key.as_str()),
            };
            result.map_err(|e| CatalogError::Edit(e.to_string()))?;
        }
        let time_s = i64::try_from(now.0 / 1000).unwrap_or(i64::MAX);
        let (hash, _) =
            tx.commit_with(automerge::transaction::CommitOptions::default().with_time(time_s));
        let hash = hash.ok_or_else(|| CatalogError::Edit("empty edit".into()))?;
        let change = fork
            .get_change_by_hash(&hash)
            .ok_or_else(|| CatalogError::Edit("committed change vanished".into()))?;
        let change = change.raw_bytes().to_vec();
        if change.len() > limits::CATALOG_CHANGE_BYTES_MAX {
            return Err(CatalogError::Edit("change is too large".into()));
        }
        if !trust.admins().roles.is_empty() {
            let parsed = Change::from_bytes(change.clone())
                .map_err(|e| CatalogError::BadChange(e.to_string()))?;
            authorize(&parsed, admin, trust.admins())?;
        }
        Ok(ChangeBody { mesh: self.mesh, change })
    }

    /// Makes, signs and applies a change as `admin` (who must be an admin); returns the
    /// envelope for publication.
    pub fn author(
        &mut self,
        admin: &SecretKey,
        session: [u8; 8],
        now: Millis,
        trust: &Trust,
        edits: &[(String, Option<CatalogEntry>)],
    ) -> Result<Envelope, CatalogError> {
        let body = self.prepare(&admin.public(), session, now, trust, edits)?;
        let change = Change::from_bytes(body.change.clone())
            .map_err(|e| CatalogError::BadChange(e.to_string()))?;
        let env = Envelope::seal(Domain::CatalogChange, &body, &[admin]);
        self.insert(change, env.clone())?;
        Ok(env)
    }

    /// For each catalog actor of `admin` (actor id bytes), the highest change sequence held:
    /// what a revocation written from this view keeps.
    pub fn history_of(&self, admin: &KeyId) -> BTreeMap<Vec<u8>, u64> {
        let mut out = BTreeMap::new();
        for change in self.doc.get_changes(&[]) {
            let actor = change.actor_id().to_bytes();
            if actor.len() == 40 && actor[..32] == admin.0 {
                let seq = out.entry(actor.to_vec()).or_insert(0);
                *seq = change.seq().max(*seq);
            }
        }
        out
    }

    /// All decodable entries, by key.
    pub fn entries(&self) -> BTreeMap<String, CatalogEntry> {
        let mut out = BTreeMap::new();
        for key in self.doc.keys(ROOT) {
            if let Ok(Some((Value::Scalar(v), _))) = self.doc.get(ROOT, key.as_str()) {
                if let ScalarValue::Bytes(bytes) = v.as_ref() {
                    if let Ok(entry) = decode::<CatalogEntry>(
                        "catalog entry",
                        bytes,
                        limits::CATALOG_VALUE_BYTES_MAX,
                    ) {
                        out.insert(key, entry);
                    }
                }
            }
        }
        out
    }

    /// Every decodable entry with the admin who wrote its current value: the key prefix of the
    /// automerge actor of the winning operation, which [`Catalog::verify`] bound to the key
    /// that signed the change. Rollout approvals count distinct authors from this.
    pub fn entries_authored(&self) -> BTreeMap<String, (CatalogEntry, KeyId)> {
        let mut out = BTreeMap::new();
        for key in self.doc.keys(ROOT) {
            let Ok(Some((Value::Scalar(v), automerge::ObjId::Id(_, actor, _)))) =
                self.doc.get(ROOT, key.as_str())
            else {
                continue;
            };
            let ScalarValue::Bytes(bytes) = v.as_ref() else { continue };
            let actor = actor.to_bytes();
            if actor.len() != 40 {
                continue;
            }
            let mut author = [0u8; 32];
            author.copy_from_slice(&actor[..32]);
            if let Ok(entry) =
                decode::<CatalogEntry>("catalog entry", bytes, limits::CATALOG_VALUE_BYTES_MAX)
            {
                out.insert(key, (entry, KeyId(author)));
            }
        }
        out
    }

    /// True once a change with this object id (envelope id) is applied.
    pub fn holds_envelope(&self, id: &ObjectId) -> bool {
        self.signed.values().any(|e| e.id() == *id)
    }

    /// Produces the next sync message for a peer, if any is due.
    pub fn sync_message(&mut self, peer: &mut PeerSync) -> Option<CatalogSync> {
        // Hold the protocol to per-change chunks so each maps to one signed envelope.
        peer.0.their_capabilities = Some(vec![Capability::MessageV1]);
        let mut msg = self.doc.generate_sync_message(&mut peer.0)?;
        let chunks = std::mem::replace(&mut msg.changes, automerge::sync::ChunkList::empty());
        let mut changes = Vec::new();
        for chunk in chunks.iter() {
            let Ok(change) = Change::from_bytes(chunk.to_vec()) else { continue };
            let hash = change.hash();
            match self.signed.get(&hash.0) {
                Some(env) if changes.len() < limits::CATALOG_CHANGES_PER_SYNC_MAX => {
                    changes.push(env.clone())
                }
                // Not sent this round: forget we "sent" it so a later round does.
                _ => {
                    peer.0.sent_hashes.remove(&hash);
                }
            }
        }
        let sync = msg.encode();
        Some(CatalogSync { sync, changes })
    }

    /// Handles a peer's sync message: verifies every envelope first, applies none if any fails.
    /// Returns the envelopes that were new.
    pub fn receive_sync(
        &mut self,
        peer: &mut PeerSync,
        msg: &CatalogSync,
        trust: &Trust,
        check: &dyn SignatureCheck,
    ) -> Result<Vec<Envelope>, CatalogError> {
        if msg.changes.len() > limits::CATALOG_CHANGES_PER_SYNC_MAX {
            return Err(CatalogError::TooManyChanges(msg.changes.len()));
        }
        if msg.sync.len() > limits::CATALOG_SYNC_BYTES_MAX {
            return Err(DecodeError::TooLarge {
                what: "catalog sync",
                size_bytes: msg.sync.len(),
                limit_bytes: limits::CATALOG_SYNC_BYTES_MAX,
            }
            .into());
        }
        let sync = automerge::sync::Message::decode(&msg.sync)
            .map_err(|e| CatalogError::BadSync(e.to_string()))?;
        if !sync.changes.is_empty() {
            return Err(CatalogError::BadSync("unsigned changes in sync message".into()));
        }
        let mut verified = Vec::with_capacity(msg.changes.len());
        for env in msg.changes.iter().filter(|e| !self.holds_body(e)) {
            verified.push((self.verify(env, trust, check)?, env));
        }
        let mut fresh = Vec::new();
        for (change, env) in verified {
            if self.insert(change, env.clone())? == Offer::New {
                fresh.push(env.clone());
            }
        }
        self.doc
            .receive_sync_message(&mut peer.0, sync)
            .map_err(|e| CatalogError::BadSync(e.to_string()))?;
        Ok(fresh)
    }

    /// Heads of the document (for persistence checks and tests).
    pub fn heads(&self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }
}

/// The automerge change hash inside a change envelope, if it decodes (unverified).
pub fn change_hash(env: &Envelope) -> Option<[u8; 32]> {
    let body: ChangeBody = env.open("catalog change").ok()?;
    Change::from_bytes(body.change).ok().map(|c| c.hash().0)
}
