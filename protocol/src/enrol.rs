//! Enrolment by voucher: joining a machine without a round trip to an admin per machine.
//!
//! An admin signs a [`Voucher`] once: up to `max_nodes` machines may join `site` with `labels`
//! until `expires_at`. A new machine makes its own key and signs an [`Enrolment`]: the voucher,
//! its node id and when it enrolled. That enrolment *is* its admission: every node derives the
//! certificate from it ([`open`]) and checks the voucher's signer exactly as it checks a
//! certificate's (an active admin whose roles grant `admit` for the voucher's site and labels).
//!
//! What a pure check cannot know, each node checks against what it holds ([`Gate`]): the voucher
//! is not revoked (a `voucher/<id>` catalog entry says so), an enrolment that needs approval has
//! it (the same entry lists approved nodes), and the enrolment is among the first `max_nodes`
//! of its voucher in a deterministic order — (enrolment time, node id) — among the enrolments
//! the node has seen. Enrolments travel with every record a member signs, so the members of
//! the voucher's site hold all of them and converge on the same first `max_nodes`.
//!
//! **The window.** A node that has not yet seen an earlier enrolment may admit a later one:
//! until records converge (one anti-entropy round within the site, a few seconds on a LAN),
//! more than `max_nodes` may briefly be admitted; once a node sees the earlier ones it refuses
//! the extra and disconnects them. Across a partition, each side admits up to `max_nodes` of
//! what it sees; when the partition heals both sides refuse the same extras. A leaked voucher
//! lets its holder claim an early enrolment time (no earlier than the voucher's issue), so it
//! can take slots from honest machines: revoke it, and use `require_approval` where a voucher
//! may leak. Nodes of other sites do not hold the site's records and check everything but the
//! count.

use crate::crypto::{DecodeError, Domain, Envelope, SignatureCheck};
use crate::ids::{MeshId, Millis, NodeId, SiteId};
use crate::limits;
use crate::trust::{AdmissionCert, TrustError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Text tokens start with this (then base64url of the voucher envelope and the genesis).
pub const TOKEN_PREFIX: &str = "pmv1.";

/// An admin's promise: up to `max_nodes` machines may join `site` with `labels` until
/// `expires_at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voucher {
    /// The mesh.
    pub mesh: MeshId,
    /// Random id (names the voucher in the catalog and in revocations).
    pub id: [u8; 16],
    /// The site the machines join.
    pub site: SiteId,
    /// Labels their certificates carry.
    pub labels: BTreeMap<String, String>,
    /// The most machines it admits.
    pub max_nodes: u32,
    /// Signed at.
    pub issued_at: Millis,
    /// No enrolment after this.
    pub expires_at: Millis,
    /// How long the admission of a machine lasts after it enrolled.
    pub valid_for_ms: u64,
    /// Each machine waits for an admin's approval (`patchmesh admit --pending`).
    pub require_approval: bool,
}

impl Voucher {
    /// Its id in hex.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }

    fn validate(&self) -> Result<(), TrustError> {
        if self.site.0.is_empty() || self.site.0.len() > limits::SITE_NAME_BYTES_MAX {
            return Err(TrustError::Invalid("voucher site empty or too long"));
        }
        if self.labels.len() > limits::LABELS_PER_NODE_MAX
            || self.labels.iter().any(|(k, v)| {
                k.len() > limits::LABEL_BYTES_MAX || v.len() > limits::LABEL_BYTES_MAX
            })
        {
            return Err(TrustError::Invalid("voucher labels out of range"));
        }
        if self.max_nodes == 0 || self.max_nodes > limits::VOUCHER_NODES_MAX {
            return Err(TrustError::Invalid("voucher node count out of range"));
        }
        if self.expires_at <= self.issued_at || self.valid_for_ms == 0 {
            return Err(TrustError::Invalid("voucher expiry or validity out of range"));
        }
        Ok(())
    }
}

/// A machine's enrolment, signed by its own node key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolment {
    /// The admin-signed voucher.
    pub voucher: Envelope,
    /// The machine's node id (the key that signs this).
    pub node: NodeId,
    /// When it enrolled (its clock).
    pub enrolled_at: Millis,
}

/// What the checks that need held state read from a verified enrolment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrolled {
    /// The voucher.
    pub voucher: Voucher,
    /// The enrolled node.
    pub node: NodeId,
    /// When it enrolled.
    pub enrolled_at: Millis,
}

impl Enrolled {
    /// The order enrolments of one voucher are ranked in.
    pub fn rank_key(&self) -> (Millis, NodeId) {
        (self.enrolled_at, self.node)
    }
}

/// Signs an enrolment with the machine's key.
pub fn enrol(voucher: Envelope, key: &crate::crypto::SecretKey, now: Millis) -> Envelope {
    let e = Enrolment { voucher, node: NodeId(key.public().0), enrolled_at: now };
    Envelope::seal(Domain::Enrolment, &e, &[key])
}

/// Verifies an enrolment's signatures and fields and derives the admission certificate it
/// stands for, with the voucher's signer (whose authority [`crate::trust::Trust::authorize_admission`]
/// checks like any certificate signer's).
pub fn open(
    env: &Envelope,
    check: &dyn SignatureCheck,
) -> Result<(AdmissionCert, crate::ids::KeyId, Enrolled), TrustError> {
    crate::trust::expect_domain(env, Domain::Enrolment)?;
    if env.signatures.len() != 1 {
        return Err(TrustError::Invalid("an enrolment carries exactly its node's signature"));
    }
    env.verify_all(check)?;
    let e: Enrolment = env.open("enrolment")?;
    if env.signatures[0].key.0 != e.node.0 {
        return Err(TrustError::Invalid("an enrolment is signed by another key than its node's"));
    }
    crate::trust::expect_domain(&e.voucher, Domain::Voucher)?;
    if e.voucher.signatures.len() != 1 {
        return Err(TrustError::Invalid("a voucher carries exactly one admin signature"));
    }
    e.voucher.verify_all(check)?;
    let v: Voucher = e.voucher.open("voucher")?;
    v.validate()?;
    if e.enrolled_at < v.issued_at || e.enrolled_at >= v.expires_at {
        return Err(TrustError::Invalid("enrolled outside the voucher's validity"));
    }
    let cert = AdmissionCert {
        mesh: v.mesh,
        node: e.node,
        site: v.site.clone(),
        labels: v.labels.clone(),
        issued_at: e.enrolled_at,
        expires_at: e.enrolled_at.plus(v.valid_for_ms),
    };
    let signer = e.voucher.signatures[0].key;
    Ok((cert, signer, Enrolled { voucher: v, node: e.node, enrolled_at: e.enrolled_at }))
}

/// The catalog's entry for a voucher (under `voucher/<id hex>`): what `voucher list` shows,
/// its revocation, and the nodes an admin approved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoucherEntry {
    /// The voucher, as signed.
    pub voucher: Envelope,
    /// Revoked: no enrolment by it is admitted any more.
    pub revoked: bool,
    /// Nodes an admin approved (for vouchers that require approval).
    pub approved: Vec<NodeId>,
}

impl VoucherEntry {
    /// The voucher inside (signature checked by [`crate::catalog`] when the entry is used).
    pub fn voucher(&self) -> Result<Voucher, DecodeError> {
        self.voucher.open("voucher")
    }

    /// Its catalog key.
    pub fn key_of(id: &[u8; 16]) -> String {
        format!("voucher/{}", hex::encode(id))
    }
}

/// Labels no voucher may grant (the catalog entry under [`ReservedLabels::KEY`], which needs
/// `admit` everywhere): a voucher is a bearer token that can leak, so the labels that decide
/// who installs first (`ring=canary`) or who is trusted more are kept for certificates an
/// admin signs per machine. Each key maps to its reserved values; no values: every value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservedLabels {
    /// Reserved values per label key (empty: any value of the key).
    pub labels: BTreeMap<String, Vec<String>>,
}

impl ReservedLabels {
    /// Where the mesh's reserved labels live in the catalog.
    pub const KEY: &'static str = "policy/reserved-labels";

    /// The first label of `labels` this policy reserves, if any.
    pub fn hit(&self, labels: &BTreeMap<String, String>) -> Option<(String, String)> {
        labels
            .iter()
            .find(|(k, v)| {
                self.labels.get(*k).is_some_and(|vals| vals.is_empty() || vals.contains(v))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
    }

    /// Sizes within limits.
    pub fn validate(&self) -> Result<(), TrustError> {
        let values: usize = self.labels.values().map(Vec::len).sum();
        if self.labels.len() > limits::LABELS_PER_NODE_MAX * 4
            || values > limits::LABELS_PER_NODE_MAX * 16
            || self.labels.iter().any(|(k, vs)| {
                k.is_empty()
                    || k.len() > limits::LABEL_BYTES_MAX
                    || vs.iter().any(|v| v.len() > limits::LABEL_BYTES_MAX)
            })
        {
            return Err(TrustError::Invalid("reserved labels out of range"));
        }
        Ok(())
    }
}

/// An admin's revocation of one machine's admission, certificate or enrolment alike (under
/// `revoked/<node id hex>`; needs `admit` for the node's site). A node refuses the machine
/// only when the revocation names the site the machine's own admission carries, so a
/// site-scoped admin cannot reach another site's machines by naming the wrong site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRevocation {
    /// The machine.
    pub node: NodeId,
    /// Its admitted site.
    pub site: SiteId,
    /// Why (for the audit trail).
    pub reason: String,
    /// When (the admin's clock).
    pub revoked_at: Millis,
}

impl NodeRevocation {
    /// The catalog key of a node's revocation.
    pub fn key_of(node: &NodeId) -> String {
        format!("revoked/{}", hex::encode(node.0))
    }

    /// Fields within bounds.
    pub fn validate(&self) -> Result<(), TrustError> {
        if self.site.0.is_empty()
            || self.site.0.len() > limits::SITE_NAME_BYTES_MAX
            || self.reason.len() > 512
        {
            return Err(TrustError::Invalid("node revocation site or reason out of range"));
        }
        Ok(())
    }
}

/// Why a verified enrolment is not admitted here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    /// An admin revoked the voucher.
    #[error("voucher {0} is revoked")]
    Revoked(String),
    /// The voucher grants a label the mesh reserves for admin-signed certificates.
    #[error("voucher {voucher} grants {key}={value}, a label the mesh reserves for certificates an admin signs")]
    ReservedLabel {
        /// The voucher.
        voucher: String,
        /// Label key.
        key: String,
        /// Label value.
        value: String,
    },
    /// An admin revoked this machine's admission.
    #[error("the admission of {0} is revoked")]
    NodeRevoked(NodeId),
    /// The voucher requires approval and no admin approved this node (yet).
    #[error("enrolment of {0} awaits an admin's approval")]
    AwaitingApproval(NodeId),
    /// The voucher's slots are taken by earlier enrolments.
    #[error("voucher {voucher} admits {max} nodes; {node} enrolled after them")]
    OverLimit {
        /// The voucher.
        voucher: String,
        /// Its limit.
        max: u32,
        /// The node refused.
        node: NodeId,
    },
}

/// Judges enrolments against what a node holds: catalog entries of vouchers, and every
/// enrolment it has seen per voucher.
#[derive(Clone, Debug, Default)]
pub struct Gate {
    /// Voucher entries by voucher id.
    pub entries: BTreeMap<[u8; 16], VoucherEntry>,
    /// The mesh's reserved labels (from the catalog).
    pub reserved: ReservedLabels,
    /// Machines whose admission an admin revoked, with the site the revocation names.
    pub revoked_nodes: BTreeMap<NodeId, SiteId>,
    /// Enrolments seen, per voucher, by rank key.
    pub seen: BTreeMap<[u8; 16], BTreeMap<(Millis, NodeId), ()>>,
    /// Per voucher, its limit and the rank key of the last enrolment inside it (the
    /// `max_nodes`-th seen), kept by [`Gate::saw`] so a judgement is a lookup, not a count.
    cutoffs: BTreeMap<[u8; 16], (u32, Option<(Millis, NodeId)>)>,
}

impl Gate {
    /// Records an enrolment seen (in a hello or a member's record). Bounded: a voucher keeps at
    /// most [`limits::VOUCHER_NODES_MAX`] + 1 enrolments (the earliest ones; later ones can only
    /// be refused).
    /// Returns true if it was new.
    pub fn saw(&mut self, e: &Enrolled) -> bool {
        let seen = self.seen.entry(e.voucher.id).or_default();
        let new = seen.insert(e.rank_key(), ()).is_none();
        while seen.len() > limits::VOUCHER_NODES_MAX as usize + 1 {
            seen.pop_last();
        }
        let max = e.voucher.max_nodes;
        let stale = self.cutoffs.get(&e.voucher.id).is_none_or(|(m, _)| *m != max);
        if new || stale {
            let cutoff = seen.keys().nth((max as usize).saturating_sub(1)).copied();
            self.cutoffs.insert(e.voucher.id, (max, cutoff));
        }
        new
    }

    /// Whether a machine admitted to `site` (by certificate or enrolment) was revoked.
    pub fn judge_node(&self, node: &NodeId, site: &SiteId) -> Result<(), GateError> {
        if self.revoked_nodes.get(node) == Some(site) {
            return Err(GateError::NodeRevoked(*node));
        }
        Ok(())
    }

    /// Whether `e` is admitted by this node's view: not revoked, approved if required, and
    /// among the first `max_nodes` enrolments of its voucher seen here (counting `e`).
    pub fn judge(&self, e: &Enrolled) -> Result<(), GateError> {
        let id = e.voucher.id;
        let entry = self.entries.get(&id);
        if entry.is_some_and(|x| x.revoked) {
            return Err(GateError::Revoked(hex::encode(id)));
        }
        if let Some((key, value)) = self.reserved.hit(&e.voucher.labels) {
            return Err(GateError::ReservedLabel { voucher: hex::encode(id), key, value });
        }
        if e.voucher.require_approval && !entry.is_some_and(|x| x.approved.contains(&e.node)) {
            return Err(GateError::AwaitingApproval(e.node));
        }
        let over = match self.cutoffs.get(&id) {
            // The first `max_nodes` seen are in; a key after the last of them is not.
            Some((max, cutoff)) if *max == e.voucher.max_nodes => {
                cutoff.is_some_and(|c| e.rank_key() > c)
            }
            _ => {
                let earlier = self.seen.get(&id).map_or(0, |s| s.range(..e.rank_key()).count());
                earlier >= e.voucher.max_nodes as usize
            }
        };
        if over {
            return Err(GateError::OverLimit {
                voucher: hex::encode(id),
                max: e.voucher.max_nodes,
                node: e.node,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Ed25519, SecretKey};

    fn voucher(admin: &SecretKey, max: u32, approval: bool) -> Envelope {
        let v = Voucher {
            mesh: MeshId([1; 32]),
            id: [5; 16],
            site: SiteId::from("paris"),
            labels: [("ring".to_string(), "main".to_string())].into(),
            max_nodes: max,
            issued_at: Millis(1_000),
            expires_at: Millis(10_000),
            valid_for_ms: 5_000,
            require_approval: approval,
        };
        Envelope::seal(Domain::Voucher, &v, &[admin])
    }

    fn enrolled(v: &Envelope, n: u8, at: u64) -> Enrolled {
        let key = SecretKey::from_seed([n; 32]);
        open(&enrol(v.clone(), &key, Millis(at)), &Ed25519).unwrap().2
    }

    #[test]
    fn an_enrolment_stands_for_the_certificate_its_voucher_promises() {
        let admin = SecretKey::from_seed([9; 32]);
        let node = SecretKey::from_seed([3; 32]);
        let v = voucher(&admin, 2, false);
        let (cert, signer, e) = open(&enrol(v.clone(), &node, Millis(2_000)), &Ed25519).unwrap();
        assert_eq!(signer, admin.public());
        assert_eq!((cert.node.0, cert.site.to_string()), (node.public().0, "paris".to_string()));
        assert_eq!(cert.labels.get("ring").map(String::as_str), Some("main"));
        assert_eq!((cert.issued_at, cert.expires_at), (Millis(2_000), Millis(7_000)));
        assert_eq!(e.voucher.max_nodes, 2);
        // Enrolled after the voucher expired, or before it was made.
        for at in [10_000, 999] {
            let late = enrol(v.clone(), &node, Millis(at));
            assert!(matches!(open(&late, &Ed25519), Err(TrustError::Invalid(_))), "{at}");
        }
        // Signed by a key other than the one it enrols.
        let other = SecretKey::from_seed([4; 32]);
        let e = Enrolment {
            voucher: v.clone(),
            node: NodeId(node.public().0),
            enrolled_at: Millis(2_000),
        };
        let forged = Envelope::seal(Domain::Enrolment, &e, &[&other]);
        assert!(open(&forged, &Ed25519).is_err());
        // A voucher whose body was changed after signing.
        let mut tampered = v.clone();
        let mut body: Voucher = tampered.open("voucher").unwrap();
        body.max_nodes = 1_000;
        tampered.body = crate::crypto::encode(&body);
        assert!(open(&enrol(tampered, &node, Millis(2_000)), &Ed25519).is_err());
    }

    #[test]
    fn the_first_max_nodes_enrolments_win_in_any_order_of_arrival() {
        let admin = SecretKey::from_seed([9; 32]);
        let v = voucher(&admin, 2, false);
        let (a, b, c) = (enrolled(&v, 1, 2_000), enrolled(&v, 2, 3_000), enrolled(&v, 3, 4_000));
        // Seen latest first: each is admitted while the earlier ones are unknown…
        let mut gate = Gate::default();
        assert!(gate.saw(&c));
        assert_eq!(gate.judge(&c), Ok(()));
        gate.saw(&b);
        gate.saw(&a);
        assert!(!gate.saw(&a), "seen twice");
        // …and once all are seen, the same two win as anywhere else.
        assert_eq!(gate.judge(&a), Ok(()));
        assert_eq!(gate.judge(&b), Ok(()));
        assert!(matches!(gate.judge(&c), Err(GateError::OverLimit { max: 2, .. })));
        let mut other = Gate::default();
        for e in [&a, &c, &b] {
            other.saw(e);
        }
        assert_eq!(
            [&a, &b, &c].map(|e| gate.judge(e).is_ok()),
            [&a, &b, &c].map(|e| other.judge(e).is_ok())
        );
        // Revoked: nobody.
        gate.entries.insert(
            v.open::<Voucher>("v").unwrap().id,
            VoucherEntry { voucher: v.clone(), revoked: true, approved: vec![] },
        );
        assert!(matches!(gate.judge(&a), Err(GateError::Revoked(_))));
    }

    #[test]
    fn a_voucher_that_needs_approval_admits_only_approved_nodes() {
        let admin = SecretKey::from_seed([9; 32]);
        let v = voucher(&admin, 5, true);
        let a = enrolled(&v, 1, 2_000);
        let mut gate = Gate::default();
        gate.saw(&a);
        assert_eq!(gate.judge(&a), Err(GateError::AwaitingApproval(a.node)));
        let id = v.open::<Voucher>("v").unwrap().id;
        gate.entries.insert(
            id,
            VoucherEntry { voucher: v.clone(), revoked: false, approved: vec![a.node] },
        );
        assert_eq!(gate.judge(&a), Ok(()));
    }
}
