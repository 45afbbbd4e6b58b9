//! The trust chain: genesis → root-signed admin key sets → admin-signed admission certificates.
//!
//! A mesh starts from a [`Genesis`]: its name, the root keys and the root threshold k-of-n. The
//! mesh id is the BLAKE3 of the genesis body, so a genesis cannot be swapped without changing
//! every id derived from it. Root keys sign [`AdminSet`]s: versioned, sequential, each one signed
//! by a threshold of the previous version's root keys *and* of its own (so rotating the root
//! needs both the old and the new holders). A revoked admin is listed with the last change
//! sequence of each of its catalog actors that stays accepted; anything it signs later is refused.
//! Admins sign [`AdmissionCert`]s binding a node key to a site and labels, with an expiry.
//!
//! Every check counts each key once (an envelope with a key twice is refused outright) and
//! refuses versions below the persisted floor as replays.

use crate::crypto::{DecodeError, Domain, Envelope, SignatureCheck, SignatureError};
use crate::ids::{KeyId, MeshId, Millis, NodeId, SiteId};
use crate::limits;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Why a trust object was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// A signature failed, a key was malformed, or a key signed twice.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The body could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The envelope's domain is not the one this object needs (a signature made for another kind).
    #[error("wrong signature domain: expected {expected:?}, got {got:?}")]
    WrongDomain {
        /// The domain this object must carry.
        expected: Domain,
        /// The domain it carried.
        got: Domain,
    },
    /// The object belongs to another mesh.
    #[error("object is for mesh {got:?}, this is {ours:?}")]
    WrongMesh {
        /// Our mesh.
        ours: MeshId,
        /// The mesh the object names.
        got: MeshId,
    },
    /// A signer is not in the key set that must sign this object.
    #[error("key {0:?} is not authorised for this object")]
    UnknownKey(KeyId),
    /// Too few distinct authorised keys signed.
    #[error("{have} of {need} required signatures")]
    BelowThreshold {
        /// Distinct authorised signers.
        have: usize,
        /// The threshold.
        need: usize,
    },
    /// The signer is a revoked admin.
    #[error("key {0:?} is revoked")]
    Revoked(KeyId),
    /// A version at or below the persisted floor with different content: a replay.
    #[error("replay: version {got} is not above floor {floor}")]
    Replay {
        /// The highest version accepted so far.
        floor: u64,
        /// The version offered.
        got: u64,
    },
    /// A version that skips ahead; the versions between must be verified first.
    #[error("version {got} skips ahead of {floor}")]
    Gap {
        /// The highest version accepted so far.
        floor: u64,
        /// The version offered.
        got: u64,
    },
    /// The certificate has expired (or is not yet valid).
    #[error("certificate for {node:?} valid {from:?}..{until:?}, now {now:?}")]
    Expired {
        /// The node named.
        node: NodeId,
        /// Issued at.
        from: Millis,
        /// Expires at.
        until: Millis,
        /// The node's clock.
        now: Millis,
    },
    /// The key's roles do not grant this action (or not where it acts).
    #[error("key {key:?} has no role granting {permission}")]
    NotPermitted {
        /// The signer.
        key: KeyId,
        /// What it tried.
        permission: &'static str,
    },
    /// A field is out of range (empty key set, threshold of zero, oversized label, ...).
    #[error("invalid field: {0}")]
    Invalid(&'static str),
}

/// The root of a mesh's trust.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    /// Human name of the mesh.
    pub mesh_name: String,
    /// Root keys.
    pub root_keys: Vec<KeyId>,
    /// How many root keys must sign an admin set.
    pub root_threshold: u8,
    /// The first admin keys (admin set version 1 is implied by these).
    pub admins: Vec<KeyId>,
    /// Admin signatures a large rollout needs before any node installs it.
    pub approval_threshold: u8,
    /// A rollout that may reach more nodes than this is large (needs `approval_threshold`
    /// distinct admins); smaller ones need only their author.
    pub approval_above_nodes: u32,
    /// When the mesh was made.
    pub created_at: Millis,
}

impl Genesis {
    /// The mesh id: BLAKE3 of the canonical genesis body.
    pub fn mesh_id(&self) -> MeshId {
        MeshId(*blake3::hash(&crate::crypto::encode(self)).as_bytes())
    }

    fn validate(&self) -> Result<(), TrustError> {
        validate_key_set(&self.root_keys, self.root_threshold)?;
        validate_key_set(&self.admins, 1)?;
        if self.mesh_name.len() > limits::TEXT_BYTES_MAX {
            return Err(TrustError::Invalid("mesh name too long"));
        }
        Ok(())
    }

    /// The admin set implied by the genesis (version 1).
    pub fn initial_admin_set(&self) -> AdminSet {
        AdminSet {
            mesh: self.mesh_id(),
            version: 1,
            root_keys: self.root_keys.clone(),
            root_threshold: self.root_threshold,
            admins: self.admins.clone(),
            approval_threshold: self.approval_threshold,
            approval_above_nodes: self.approval_above_nodes,
            revoked: Vec::new(),
            roles: Vec::new(),
        }
    }

    /// Verifies a genesis envelope: root-threshold self-signed.
    pub fn verify(env: &Envelope, check: &dyn SignatureCheck) -> Result<Genesis, TrustError> {
        expect_domain(env, Domain::Genesis)?;
        let signers = env.verify_all(check)?;
        let genesis: Genesis = env.open("genesis")?;
        genesis.validate()?;
        count_threshold(&signers, &genesis.root_keys, genesis.root_threshold)?;
        Ok(genesis)
    }
}

/// A revoked admin key and the catalog history of it that stays valid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The revoked key.
    pub key: KeyId,
    /// For each catalog actor of this key (actor id bytes), the last change sequence number that
    /// stays accepted. Changes past it, or by actors not listed, are refused.
    pub kept_seq: BTreeMap<Vec<u8>, u64>,
}

/// What an admin role may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    /// Publish patches and rollouts.
    Publish,
    /// Approve rollouts (counts toward approval thresholds).
    Approve,
    /// Pause, resume (and lift halts) and abort rollouts.
    Control,
    /// Sign admission certificates.
    Admit,
    /// Add and withdraw exceptions.
    Exceptions,
    /// Publish intel bundles.
    Intel,
    /// Set the integration policy.
    Integrations,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Permission; 7] = [
        Permission::Publish,
        Permission::Approve,
        Permission::Control,
        Permission::Admit,
        Permission::Exceptions,
        Permission::Intel,
        Permission::Integrations,
    ];

    /// Its name on the command line and in views.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Publish => "publish",
            Permission::Approve => "approve",
            Permission::Control => "control",
            Permission::Admit => "admit",
            Permission::Exceptions => "exceptions",
            Permission::Intel => "intel",
            Permission::Integrations => "integrations",
        }
    }
}

impl std::str::FromStr for Permission {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Permission::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Permission::ALL.iter().map(|p| p.name()).collect();
            format!("unknown permission {s:?} (one of {})", names.join(", "))
        })
    }
}

/// Where a role may act: nodes admitted to one of `sites` (empty: any site) whose certificate
/// carries every label in `labels`. Site and labels are always the admitted ones (from the
/// admin-signed certificate), never what a node reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// Sites (any of them); empty: every site.
    pub sites: Vec<SiteId>,
    /// Labels (all of them).
    pub labels: BTreeMap<String, String>,
}

impl Scope {
    /// True if the scope reaches every node.
    pub fn is_unlimited(&self) -> bool {
        self.sites.is_empty() && self.labels.is_empty()
    }

    /// True if a node admitted to `site` with `labels` is inside.
    pub fn contains(&self, site: &SiteId, labels: &BTreeMap<String, String>) -> bool {
        (self.sites.is_empty() || self.sites.contains(site))
            && self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// True if every node a selector naming `sites` (empty: any) and `labels` can pick is
    /// inside: the selector narrows into the scope.
    pub fn narrows(&self, sites: &[SiteId], labels: &BTreeMap<String, String>) -> bool {
        (self.sites.is_empty()
            || (!sites.is_empty() && sites.iter().all(|s| self.sites.contains(s))))
            && self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// A named group of admin keys with the permissions they hold and where. Roles only ever grant
/// (there is no deny, no order and no terminating delegation): a key's authority is the union
/// of its roles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Its name (unique in the set).
    pub name: String,
    /// Its keys (each must be an active admin of the set).
    pub keys: Vec<KeyId>,
    /// What it may do.
    pub permissions: Vec<Permission>,
    /// Where.
    pub scope: Scope,
    /// The publish threshold: distinct approving keys a rollout this role publishes needs
    /// before any node installs it (0: the mesh's rule). Approve and control act alone.
    pub publish_approvals: u8,
}

/// The admin set as it was encoded before roles (domain [`Domain::AdminSet`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct AdminSetV1 {
    mesh: MeshId,
    version: u64,
    root_keys: Vec<KeyId>,
    root_threshold: u8,
    admins: Vec<KeyId>,
    approval_threshold: u8,
    approval_above_nodes: u32,
    revoked: Vec<Revocation>,
}

/// A versioned admin key set, signed by root keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminSet {
    /// The mesh.
    pub mesh: MeshId,
    /// Version; sequential from 1 (the genesis).
    pub version: u64,
    /// Root keys from this version on.
    pub root_keys: Vec<KeyId>,
    /// Root threshold from this version on.
    pub root_threshold: u8,
    /// Active admin keys.
    pub admins: Vec<KeyId>,
    /// Admin signatures a large rollout needs.
    pub approval_threshold: u8,
    /// Rollouts that may reach more nodes than this are large.
    pub approval_above_nodes: u32,
    /// Revoked admins.
    pub revoked: Vec<Revocation>,
    /// Roles; empty: every admin holds every permission everywhere (meshes made before roles).
    pub roles: Vec<Role>,
}

impl AdminSet {
    /// True if `key` is an active admin.
    pub fn is_admin(&self, key: &KeyId) -> bool {
        self.admins.contains(key)
    }

    /// The roles of `key` that grant `perm` (a set without roles grants every admin everything
    /// everywhere; a revoked or unknown key gets nothing).
    pub fn scopes_for(&self, key: &KeyId, perm: Permission) -> Vec<&Scope> {
        static UNLIMITED: Scope = Scope { sites: Vec::new(), labels: BTreeMap::new() };
        if !self.is_admin(key) {
            return Vec::new();
        }
        if self.roles.is_empty() {
            return vec![&UNLIMITED];
        }
        self.roles
            .iter()
            .filter(|r| r.keys.contains(key) && r.permissions.contains(&perm))
            .map(|r| &r.scope)
            .collect()
    }

    /// True if `key` may do `perm` somewhere.
    pub fn grants(&self, key: &KeyId, perm: Permission) -> bool {
        !self.scopes_for(key, perm).is_empty()
    }

    /// True if `key` may do `perm` everywhere (fleet-wide objects: intel, integrations).
    pub fn grants_everywhere(&self, key: &KeyId, perm: Permission) -> bool {
        self.scopes_for(key, perm).iter().any(|s| s.is_unlimited())
    }

    /// True if `key` may do `perm` on a node admitted to `site` with `labels`.
    pub fn grants_on(
        &self,
        key: &KeyId,
        perm: Permission,
        site: &SiteId,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        self.scopes_for(key, perm).iter().any(|s| s.contains(site, labels))
    }

    /// True if `key` may do `perm` on every node a selector of `sites` and `labels` picks.
    pub fn grants_within(
        &self,
        key: &KeyId,
        perm: Permission,
        sites: &[SiteId],
        labels: &BTreeMap<String, String>,
    ) -> bool {
        self.scopes_for(key, perm).iter().any(|s| s.narrows(sites, labels))
    }

    /// The most approvals a rollout by `author` needs under its roles' publish thresholds.
    pub fn publish_approvals(&self, author: &KeyId) -> u8 {
        self.roles
            .iter()
            .filter(|r| r.keys.contains(author) && r.permissions.contains(&Permission::Publish))
            .map(|r| r.publish_approvals)
            .max()
            .unwrap_or(0)
    }

    /// Signs this set with `signers` in the encoding its content needs.
    pub fn seal(&self, signers: &[&crate::crypto::SecretKey]) -> Envelope {
        if self.roles.is_empty() {
            Envelope::seal(Domain::AdminSet, &self.to_v1(), signers)
        } else {
            Envelope::seal(Domain::AdminSetRoles, self, signers)
        }
    }

    /// The unsigned envelope of this set (for signers outside this process to sign in turn).
    pub fn unsigned(&self) -> Envelope {
        self.seal(&[])
    }

    /// Decodes an admin-set envelope of either encoding (signatures are not checked here).
    pub fn open(env: &Envelope) -> Result<AdminSet, TrustError> {
        match env.domain {
            Domain::AdminSet => Ok(env.open::<AdminSetV1>("admin set")?.into()),
            Domain::AdminSetRoles => {
                let set: AdminSet = env.open("admin set")?;
                if set.roles.is_empty() {
                    return Err(TrustError::Invalid("an admin set with roles lists none"));
                }
                Ok(set)
            }
            got => Err(TrustError::WrongDomain { expected: Domain::AdminSet, got }),
        }
    }

    fn to_v1(&self) -> AdminSetV1 {
        AdminSetV1 {
            mesh: self.mesh,
            version: self.version,
            root_keys: self.root_keys.clone(),
            root_threshold: self.root_threshold,
            admins: self.admins.clone(),
            approval_threshold: self.approval_threshold,
            approval_above_nodes: self.approval_above_nodes,
            revoked: self.revoked.clone(),
        }
    }

    /// The revocation entry of `key`, if revoked.
    pub fn revocation(&self, key: &KeyId) -> Option<&Revocation> {
        self.revoked.iter().find(|r| r.key == *key)
    }

    fn validate(&self) -> Result<(), TrustError> {
        validate_key_set(&self.root_keys, self.root_threshold)?;
        validate_key_set(&self.admins, 1)?;
        if self.revoked.len() > limits::KEYS_PER_SET_MAX {
            return Err(TrustError::Invalid("too many revocations"));
        }
        if self.revoked.iter().any(|r| self.admins.contains(&r.key)) {
            return Err(TrustError::Invalid("a key is both admin and revoked"));
        }
        if self.roles.len() > limits::ROLES_MAX {
            return Err(TrustError::Invalid("too many roles"));
        }
        let names: BTreeSet<&str> = self.roles.iter().map(|r| r.name.as_str()).collect();
        if names.len() != self.roles.len() {
            return Err(TrustError::Invalid("two roles share a name"));
        }
        for r in &self.roles {
            if r.name.is_empty() || r.name.len() > limits::LABEL_BYTES_MAX {
                return Err(TrustError::Invalid("role name empty or too long"));
            }
            if r.keys.is_empty() || r.keys.len() > limits::KEYS_PER_SET_MAX {
                return Err(TrustError::Invalid("role key list empty or too large"));
            }
            if r.keys.iter().any(|k| !self.admins.contains(k)) {
                return Err(TrustError::Invalid("a role names a key that is not an active admin"));
            }
            let perms: BTreeSet<&Permission> = r.permissions.iter().collect();
            if perms.is_empty() || perms.len() != r.permissions.len() {
                return Err(TrustError::Invalid("role permissions empty or repeated"));
            }
            if r.scope.sites.len() > limits::ROLES_MAX
                || r.scope.labels.len() > limits::LABELS_PER_NODE_MAX
                || r.scope
                    .sites
                    .iter()
                    .any(|s| s.0.is_empty() || s.0.len() > limits::SITE_NAME_BYTES_MAX)
                || r.scope.labels.iter().any(|(k, v)| {
                    k.len() > limits::LABEL_BYTES_MAX || v.len() > limits::LABEL_BYTES_MAX
                })
            {
                return Err(TrustError::Invalid("role scope out of range"));
            }
            if r.publish_approvals != 0 && !r.permissions.contains(&Permission::Publish) {
                return Err(TrustError::Invalid(
                    "a publish threshold on a role that cannot publish",
                ));
            }
        }
        Ok(())
    }
}

impl From<AdminSetV1> for AdminSet {
    fn from(v: AdminSetV1) -> AdminSet {
        AdminSet {
            mesh: v.mesh,
            version: v.version,
            root_keys: v.root_keys,
            root_threshold: v.root_threshold,
            admins: v.admins,
            approval_threshold: v.approval_threshold,
            approval_above_nodes: v.approval_above_nodes,
            revoked: v.revoked,
            roles: Vec::new(),
        }
    }
}

/// A node admission certificate: an admin vouches that this node key belongs to the mesh, at
/// this site, with these labels, until the expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionCert {
    /// The mesh.
    pub mesh: MeshId,
    /// The node's public key.
    pub node: NodeId,
    /// The node's site.
    pub site: SiteId,
    /// Labels (e.g. `ring=canary`, `role=pos`).
    pub labels: BTreeMap<String, String>,
    /// Valid from.
    pub issued_at: Millis,
    /// Valid until.
    pub expires_at: Millis,
}

impl AdmissionCert {
    fn validate(&self) -> Result<(), TrustError> {
        if self.site.0.is_empty() || self.site.0.len() > limits::SITE_NAME_BYTES_MAX {
            return Err(TrustError::Invalid("site name empty or too long"));
        }
        if self.labels.len() > limits::LABELS_PER_NODE_MAX {
            return Err(TrustError::Invalid("too many labels"));
        }
        if self
            .labels
            .iter()
            .any(|(k, v)| k.len() > limits::LABEL_BYTES_MAX || v.len() > limits::LABEL_BYTES_MAX)
        {
            return Err(TrustError::Invalid("label too long"));
        }
        if self.expires_at <= self.issued_at {
            return Err(TrustError::Invalid("expiry before issue"));
        }
        Ok(())
    }
}

/// A verified admission certificate with the envelope it came in (for relaying).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// The certificate.
    pub cert: AdmissionCert,
    /// The admin who signed it.
    pub signer: KeyId,
    /// The signed envelope.
    pub envelope: Envelope,
    /// For an enrolment: the voucher and the enrolment (judged against held state by
    /// [`crate::enrol::Gate`]).
    pub enrolled: Option<crate::enrol::Enrolled>,
}

/// The trust state a node holds: genesis, the current admin set, and every admin set version
/// (the chain is short and a newcomer needs all of it to verify the current one).
#[derive(Clone, Debug)]
pub struct Trust {
    genesis: Genesis,
    genesis_envelope: Envelope,
    mesh: MeshId,
    chain: Vec<Envelope>,
    current: AdminSet,
}

impl Trust {
    /// Trust rooted at a verified genesis.
    pub fn new(
        genesis_envelope: Envelope,
        check: &dyn SignatureCheck,
    ) -> Result<Trust, TrustError> {
        let genesis = Genesis::verify(&genesis_envelope, check)?;
        let current = genesis.initial_admin_set();
        Ok(Trust { mesh: genesis.mesh_id(), genesis, genesis_envelope, chain: Vec::new(), current })
    }

    /// The mesh id.
    pub fn mesh(&self) -> MeshId {
        self.mesh
    }
    /// The genesis.
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }
    /// The signed genesis.
    pub fn genesis_envelope(&self) -> &Envelope {
        &self.genesis_envelope
    }
    /// The current admin set.
    pub fn admins(&self) -> &AdminSet {
        &self.current
    }
    /// Admin set envelopes after the genesis, in version order.
    pub fn chain(&self) -> &[Envelope] {
        &self.chain
    }
    /// The admin-set version floor.
    pub fn version(&self) -> u64 {
        self.current.version
    }

    /// Verifies an admin set without applying it. `Ok(None)` means it is the version we hold.
    pub fn check_admin_set(
        &self,
        env: &Envelope,
        check: &dyn SignatureCheck,
    ) -> Result<Option<AdminSet>, TrustError> {
        let signers = env.verify_all(check)?;
        let next = AdminSet::open(env)?;
        if next.mesh != self.mesh {
            return Err(TrustError::WrongMesh { ours: self.mesh, got: next.mesh });
        }
        if next.version <= self.current.version {
            if next == self.current {
                return Ok(None);
            }
            return Err(TrustError::Replay { floor: self.current.version, got: next.version });
        }
        if next.version != self.current.version + 1 {
            return Err(TrustError::Gap { floor: self.current.version, got: next.version });
        }
        next.validate()?;
        // Both the old and the new root must agree, so neither a stolen old root nor a
        // self-appointed new one can move the mesh alone.
        count_threshold(&signers, &self.current.root_keys, self.current.root_threshold)?;
        count_threshold(&signers, &next.root_keys, next.root_threshold)?;
        Ok(Some(next))
    }

    /// Verifies and applies an admin set. Returns true if it advanced the version.
    pub fn apply_admin_set(
        &mut self,
        env: &Envelope,
        check: &dyn SignatureCheck,
    ) -> Result<bool, TrustError> {
        match self.check_admin_set(env, check)? {
            None => Ok(false),
            Some(next) => {
                self.current = next;
                self.chain.push(env.clone());
                Ok(true)
            }
        }
    }

    /// Verifies that `key` may do `perm` somewhere now (an active admin whose roles grant it).
    pub fn check_permission(&self, key: &KeyId, perm: Permission) -> Result<(), TrustError> {
        self.check_admin(key)?;
        if self.current.grants(key, perm) {
            Ok(())
        } else {
            Err(TrustError::NotPermitted { key: *key, permission: perm.name() })
        }
    }

    /// Verifies that `key` may sign admin objects now.
    pub fn check_admin(&self, key: &KeyId) -> Result<(), TrustError> {
        if self.current.is_admin(key) {
            Ok(())
        } else if self.current.revocation(key).is_some() {
            Err(TrustError::Revoked(*key))
        } else {
            Err(TrustError::UnknownKey(*key))
        }
    }

    /// Verifies an admission certificate at time `now`: signature, then authority.
    pub fn check_admission(
        &self,
        env: &Envelope,
        now: Millis,
        check: &dyn SignatureCheck,
    ) -> Result<Admitted, TrustError> {
        let (cert, signer, enrolled) = if env.domain == Domain::Enrolment {
            let (cert, signer, e) = crate::enrol::open(env, check)?;
            (cert, signer, Some(e))
        } else {
            let (cert, signer) = verify_admission_signature(env, check)?;
            (cert, signer, None)
        };
        self.authorize_admission(&cert, &signer, now)?;
        Ok(Admitted { cert, signer, envelope: env.clone(), enrolled })
    }

    /// The trust-dependent half of admission: the signer is an admin now, the mesh is ours and
    /// the certificate has not expired. [`verify_admission_signature`] is the other half.
    pub fn authorize_admission(
        &self,
        cert: &AdmissionCert,
        signer: &KeyId,
        now: Millis,
    ) -> Result<(), TrustError> {
        self.check_admin(signer)?;
        if !self.current.grants_on(signer, Permission::Admit, &cert.site, &cert.labels) {
            return Err(TrustError::NotPermitted {
                key: *signer,
                permission: "admit (to this site and labels)",
            });
        }
        if cert.mesh != self.mesh {
            return Err(TrustError::WrongMesh { ours: self.mesh, got: cert.mesh });
        }
        // Only expiry is enforced: a node whose clock runs behind must still accept a
        // certificate issued "in its future"; trusting a slow clock past expiry is the risk.
        if now >= cert.expires_at {
            return Err(TrustError::Expired {
                node: cert.node,
                from: cert.issued_at,
                until: cert.expires_at,
                now,
            });
        }
        Ok(())
    }
}

/// The certificate an admission envelope (a certificate, or an enrolment) stands for, decoded
/// without checking signatures: for showing objects that were verified when they arrived.
pub fn admission_cert(env: &Envelope) -> Result<AdmissionCert, DecodeError> {
    if env.domain != Domain::Enrolment {
        return env.open("admission certificate");
    }
    let e: crate::enrol::Enrolment = env.open("enrolment")?;
    let v: crate::enrol::Voucher = e.voucher.open("voucher")?;
    Ok(AdmissionCert {
        mesh: v.mesh,
        node: e.node,
        site: v.site,
        labels: v.labels,
        issued_at: e.enrolled_at,
        expires_at: e.enrolled_at.plus(v.valid_for_ms),
    })
}

/// The pure half of admission checking (no trust state): domain, exactly one signature, the
/// signature verifies, the body decodes and its fields are in range. Returns the certificate
/// and its signer, whose authority [`Trust::authorize_admission`] checks. An enrolment
/// (voucher + the machine's own signature, see [`crate::enrol`]) stands for the certificate its
/// voucher promises, signed by the voucher's admin.
pub fn verify_admission_signature(
    env: &Envelope,
    check: &dyn SignatureCheck,
) -> Result<(AdmissionCert, KeyId), TrustError> {
    if env.domain == Domain::Enrolment {
        return crate::enrol::open(env, check).map(|(cert, signer, _)| (cert, signer));
    }
    expect_domain(env, Domain::Admission)?;
    if env.signatures.len() != 1 {
        return Err(TrustError::Invalid("admission needs exactly one admin signature"));
    }
    env.verify_all(check)?;
    let cert: AdmissionCert = env.open("admission")?;
    cert.validate()?;
    Ok((cert, env.signatures[0].key))
}

/// Refuses an envelope signed for another kind of object.
pub fn expect_domain(env: &Envelope, expected: Domain) -> Result<(), TrustError> {
    if env.domain != expected {
        return Err(TrustError::WrongDomain { expected, got: env.domain });
    }
    Ok(())
}

fn validate_key_set(keys: &[KeyId], threshold: u8) -> Result<(), TrustError> {
    if keys.is_empty() || keys.len() > limits::KEYS_PER_SET_MAX {
        return Err(TrustError::Invalid("key set empty or too large"));
    }
    let distinct: BTreeSet<_> = keys.iter().collect();
    if distinct.len() != keys.len() {
        return Err(TrustError::Invalid("key listed twice"));
    }
    if threshold == 0 || usize::from(threshold) > keys.len() {
        return Err(TrustError::Invalid("threshold out of range"));
    }
    Ok(())
}

/// Counts distinct signers that are in `authorised`; each key counts once by construction of the
/// signer set.
fn count_threshold(
    signers: &BTreeSet<KeyId>,
    authorised: &[KeyId],
    threshold: u8,
) -> Result<(), TrustError> {
    let have = signers.iter().filter(|k| authorised.contains(k)).count();
    let need = usize::from(threshold);
    if have < need {
        return Err(TrustError::BelowThreshold { have, need });
    }
    Ok(())
}
