//! Keys, canonical encoding and domain-separated signatures.
//!
//! Canonical encoding is postcard over types whose iteration order is fixed (structs, `Vec`,
//! `BTreeMap`). Signatures never cover a re-encoding: an [`Envelope`] carries the exact body
//! bytes that were signed, and the body is decoded from those bytes only after the signatures
//! verify. Every signature covers `"patchmesh/v1/<kind>" || 0x00 || body`, so a signature made
//! for one kind of object can never be replayed as another.

use crate::ids::{KeyId, ObjectId};
use crate::limits;
use ed25519_dalek::Signer;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeSet;

/// What a signature is for. Its name is part of every signed message.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum Domain {
    /// A mesh genesis, signed by its root keys.
    Genesis,
    /// An admin key set, signed by root keys.
    AdminSet,
    /// A node admission certificate, signed by an admin.
    Admission,
    /// One automerge change to the catalog, signed by an admin.
    CatalogChange,
    /// A node's own record, signed by the node.
    NodeRecord,
    /// An install or health report, signed by the node.
    Evidence,
    /// A per-site summary, signed by a node of that site.
    SiteSummary,
    /// A checkpoint of a node's audit log, signed by the node.
    AuditCheckpoint,
    /// The header of an exported audit log, signed by the node.
    AuditExport,
    /// A compliance or rollout report, signed by the node that computed it (and admins).
    Report,
    /// An admin key set with scoped roles, signed by root keys (an [`AdminSet`] whose `roles`
    /// are not empty; sets without roles keep the [`Domain::AdminSet`] encoding, so meshes
    /// made before roles verify unchanged).
    ///
    /// [`AdminSet`]: crate::trust::AdminSet
    AdminSetRoles,
    /// An enrolment voucher, signed by an admin.
    Voucher,
    /// A machine's enrolment (a voucher and its node id), signed by the machine's node key.
    Enrolment,
    /// A site member's endorsement of a summary of its site, signed by the endorsing node.
    SummaryEndorsement,
    /// A site reporter's periodic word to the other sites (how much it holds, and when), signed
    /// by the reporting node.
    Beacon,
}

impl Domain {
    /// The domain string, `patchmesh/v1/<kind>`.
    pub fn tag(self) -> &'static str {
        match self {
            Domain::Genesis => "patchmesh/v1/genesis",
            Domain::AdminSet => "patchmesh/v1/admin-set",
            Domain::Admission => "patchmesh/v1/admission",
            Domain::CatalogChange => "patchmesh/v1/catalog-change",
            Domain::NodeRecord => "patchmesh/v1/node-record",
            Domain::Evidence => "patchmesh/v1/evidence",
            Domain::SiteSummary => "patchmesh/v1/site-summary",
            Domain::AuditCheckpoint => "patchmesh/v1/audit-checkpoint",
            Domain::AuditExport => "patchmesh/v1/audit-export",
            Domain::Report => "patchmesh/v1/report",
            Domain::AdminSetRoles => "patchmesh/v1/admin-set-roles",
            Domain::Voucher => "patchmesh/v1/voucher",
            Domain::Enrolment => "patchmesh/v1/enrolment",
            Domain::SummaryEndorsement => "patchmesh/v1/summary-endorsement",
            Domain::Beacon => "patchmesh/v1/beacon",
        }
    }
}

/// Why decoding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input is larger than the limit for its kind; nothing was decoded.
    #[error("{what} is {size_bytes} bytes, limit {limit_bytes}")]
    TooLarge {
        /// What was being decoded.
        what: &'static str,
        /// The size of the input.
        size_bytes: usize,
        /// The limit it exceeded.
        limit_bytes: usize,
    },
    /// The bytes are not a valid encoding (truncated, garbage or trailing bytes).
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's explanation.
        reason: String,
    },
}

/// Why a signature check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The key bytes are not a valid ed25519 point.
    #[error("key {0:?} is not a valid ed25519 public key")]
    BadKey(KeyId),
    /// The signature does not verify for this key, domain and body.
    #[error("signature by {0:?} does not verify")]
    Invalid(KeyId),
    /// The envelope carries more signatures than allowed.
    #[error("{0} signatures exceed the limit")]
    TooMany(usize),
    /// The same key signed twice; each key counts once, so this is refused outright.
    #[error("key {0:?} signed twice")]
    Duplicate(KeyId),
}

/// Encodes a value canonically.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard only fails on types we never use (unsized sequences); a failure is our bug.
    postcard::to_allocvec(value).expect("canonical encoding of protocol types cannot fail")
}

/// Decodes a value, checking the size limit first and refusing trailing bytes.
pub fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
    limit_bytes: usize,
) -> Result<T, DecodeError> {
    if bytes.len() > limit_bytes {
        return Err(DecodeError::TooLarge { what, size_bytes: bytes.len(), limit_bytes });
    }
    let (value, rest) = postcard::take_from_bytes::<T>(bytes)
        .map_err(|e| DecodeError::Malformed { what, reason: e.to_string() })?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed {
            what,
            reason: format!("{} trailing bytes", rest.len()),
        });
    }
    Ok(value)
}

/// An ed25519 signing key. The protocol core never generates one from OS randomness: the
/// caller passes 32 seed bytes (from its own RNG, a key file, or a simulation seed).
#[derive(Clone)]
pub struct SecretKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({:?})", self.public())
    }
}

impl SecretKey {
    /// A key from 32 seed bytes.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SecretKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }
    /// A key drawn from an RNG the caller owns.
    pub fn generate<R: rand::RngCore + rand::CryptoRng>(rng: &mut R) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Self::from_seed(seed)
    }
    /// The 32 seed bytes (for key files).
    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }
    /// The public key.
    pub fn public(&self) -> KeyId {
        KeyId(self.0.verifying_key().to_bytes())
    }
    /// Signs a message whose format an outside standard defines (Standard Webhooks `v1a`:
    /// `id.timestamp.body`, which cannot be mistaken for a domain-tagged mesh message: those
    /// start with `patchmesh/`). Never used for mesh objects.
    pub fn sign_external(&self, message: &[u8]) -> [u8; 64] {
        assert!(
            !message.starts_with(b"patchmesh/"),
            "external messages cannot look like mesh messages"
        );
        self.0.sign(message).to_bytes()
    }

    /// Signs `body` for `domain`.
    pub fn sign(&self, domain: Domain, body: &[u8]) -> SignatureEntry {
        let sig = self.0.sign(&signed_message(domain, body));
        SignatureEntry { key: self.public(), signature: Sig(sig.to_bytes()) }
    }
}

/// Checks a signature made by [`SecretKey::sign_external`].
pub fn verify_external(key: &KeyId, message: &[u8], signature: &[u8; 64]) -> bool {
    let Ok(k) = ed25519_dalek::VerifyingKey::from_bytes(&key.0) else { return false };
    k.verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature)).is_ok()
}

/// The exact bytes an ed25519 signature for `domain` covers: the domain tag, a zero byte, the
/// body. Signers outside this process (ssh-agent) sign these bytes.
pub fn signed_message(domain: Domain, body: &[u8]) -> Vec<u8> {
    let tag = domain.tag().as_bytes();
    let mut msg = Vec::with_capacity(tag.len() + 1 + body.len());
    msg.extend_from_slice(tag);
    msg.push(0);
    msg.extend_from_slice(body);
    msg
}

/// 64 signature bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sig(pub [u8; 64]);

impl std::fmt::Debug for Sig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sig({})", hex::encode(&self.0[..4]))
    }
}

impl Serialize for Sig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&serde_bytes_array(&self.0), s)
    }
}

fn serde_bytes_array(b: &[u8; 64]) -> ([u8; 32], [u8; 32]) {
    let mut lo = [0u8; 32];
    let mut hi = [0u8; 32];
    lo.copy_from_slice(&b[..32]);
    hi.copy_from_slice(&b[32..]);
    (lo, hi)
}

impl<'de> Deserialize<'de> for Sig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (lo, hi): ([u8; 32], [u8; 32]) = Deserialize::deserialize(d)?;
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&lo);
        out[32..].copy_from_slice(&hi);
        Ok(Sig(out))
    }
}

/// One signature and the key that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignatureEntry {
    /// The signer.
    pub key: KeyId,
    /// The signature over the domain-tagged body.
    pub signature: Sig,
}

/// Checks ed25519 signatures. The real node uses [`Ed25519`]; the simulator may wrap it in a
/// memo table shared by all simulated nodes (a pure function memoized gives the same answers, so
/// every decision is unchanged; only the CPU is saved).
pub trait SignatureCheck: Send + Sync {
    /// True iff `entry` is a valid signature by `entry.key` over `domain` and `body`.
    fn check(
        &self,
        domain: Domain,
        body: &[u8],
        entry: &SignatureEntry,
    ) -> Result<(), SignatureError>;
}

/// Plain ed25519 verification.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ed25519;

impl SignatureCheck for Ed25519 {
    fn check(
        &self,
        domain: Domain,
        body: &[u8],
        entry: &SignatureEntry,
    ) -> Result<(), SignatureError> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(&entry.key.0)
            .map_err(|_| SignatureError::BadKey(entry.key))?;
        let sig = ed25519_dalek::Signature::from_bytes(&entry.signature.0);
        key.verify_strict(&signed_message(domain, body), &sig)
            .map_err(|_| SignatureError::Invalid(entry.key))
    }
}

/// A signed object on the wire: the exact body bytes plus one or more signatures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// What the body is; part of every signed message.
    pub domain: Domain,
    /// Canonical encoding of the object, exactly as signed.
    pub body: Vec<u8>,
    /// Signatures over `domain || body`.
    pub signatures: Vec<SignatureEntry>,
}

impl Envelope {
    /// Encodes `value` and signs it with each key.
    pub fn seal<T: Serialize>(domain: Domain, value: &T, keys: &[&SecretKey]) -> Envelope {
        let body = encode(value);
        let signatures = keys.iter().map(|k| k.sign(domain, &body)).collect();
        Envelope { domain, body, signatures }
    }

    /// Adds one more signature (k-of-n objects are signed by several holders in turn).
    pub fn cosign(&mut self, key: &SecretKey) {
        if !self.signatures.iter().any(|s| s.key == key.public()) {
            self.signatures.push(key.sign(self.domain, &self.body));
        }
    }

    /// Content hash of the whole envelope: the gossip message id.
    pub fn id(&self) -> ObjectId {
        ObjectId(*blake3::hash(&encode(self)).as_bytes())
    }

    /// Hash of the body alone (what the signers committed to).
    pub fn body_hash(&self) -> [u8; 32] {
        *blake3::hash(&self.body).as_bytes()
    }

    /// Size on the wire.
    pub fn wire_bytes(&self) -> usize {
        self.body.len() + self.signatures.len() * 96 + 8
    }

    /// Verifies every signature and returns the set of distinct keys that signed. Any invalid
    /// signature fails the whole envelope: a valid object has no reason to carry a bad one.
    pub fn verify_all(
        &self,
        check: &dyn SignatureCheck,
    ) -> Result<BTreeSet<KeyId>, SignatureError> {
        if self.signatures.len() > limits::SIGNATURES_PER_ENVELOPE_MAX {
            return Err(SignatureError::TooMany(self.signatures.len()));
        }
        let mut keys = BTreeSet::new();
        for entry in &self.signatures {
            if !keys.insert(entry.key) {
                return Err(SignatureError::Duplicate(entry.key));
            }
            check.check(self.domain, &self.body, entry)?;
        }
        Ok(keys)
    }

    /// Decodes the body (size-checked) once signatures are verified.
    pub fn open<T: DeserializeOwned>(&self, what: &'static str) -> Result<T, DecodeError> {
        decode(what, &self.body, limits::ENVELOPE_BODY_BYTES_MAX)
    }
}

/// BLAKE3 over the concatenation of parts, each length-prefixed so boundaries cannot shift.
pub fn hash_parts(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    *h.finalize().as_bytes()
}
