//! Making a mesh: genesis, admin sets and admission certificates from keys the caller holds.
//! Used by `patchmesh init`/`admit`, by the simulator and by tests, so all three build meshes
//! the same way.

use crate::crypto::{Domain, Envelope, SecretKey};
use crate::ids::{KeyId, Millis, NodeId, SiteId};
use crate::trust::{AdminSet, AdmissionCert, Genesis, Revocation};
use std::collections::BTreeMap;

/// How many admins must sign a rollout before nodes install it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Approval {
    /// Distinct admins a large rollout needs (its author counts).
    pub threshold: u8,
    /// Rollouts that may reach more nodes than this are large; smaller ones need only their
    /// author.
    pub above_nodes: u32,
}

impl Approval {
    /// Every rollout needs `threshold` admins.
    pub fn always(threshold: u8) -> Approval {
        Approval { threshold, above_nodes: 0 }
    }
}

/// Signs a genesis with every root key given (they must meet the threshold to verify).
pub fn genesis(
    mesh_name: &str,
    roots: &[&SecretKey],
    root_threshold: u8,
    admins: &[KeyId],
    approval: Approval,
    now: Millis,
) -> Envelope {
    let g = Genesis {
        mesh_name: mesh_name.to_string(),
        root_keys: roots.iter().map(|k| k.public()).collect(),
        root_threshold,
        admins: admins.to_vec(),
        approval_threshold: approval.threshold,
        approval_above_nodes: approval.above_nodes,
        created_at: now,
    };
    Envelope::seal(Domain::Genesis, &g, roots)
}

/// Signs an admission certificate as `admin`.
pub fn admit(
    admin: &SecretKey,
    genesis: &Genesis,
    node: NodeId,
    site: &SiteId,
    labels: BTreeMap<String, String>,
    issued_at: Millis,
    valid_for_ms: u64,
) -> Envelope {
    let cert = AdmissionCert {
        mesh: genesis.mesh_id(),
        node,
        site: site.clone(),
        labels,
        issued_at,
        expires_at: issued_at.plus(valid_for_ms),
    };
    Envelope::seal(Domain::Admission, &cert, &[admin])
}

/// The next admin set after `current`: `admins` become the active set, `revoked` are revoked
/// keeping the listed history, and roles keep only keys that stay admins (a role left with no
/// key is dropped). Sign it with [`Envelope::cosign`] by enough old and new roots.
pub fn next_admin_set(
    current: &AdminSet,
    admins: Vec<KeyId>,
    revoked: Vec<Revocation>,
    signers: &[&SecretKey],
) -> Envelope {
    let mut roles = current.roles.clone();
    for r in &mut roles {
        r.keys.retain(|k| admins.contains(k));
    }
    roles.retain(|r| !r.keys.is_empty());
    next_admin_set_with(current, admins, revoked, roles).seal(signers)
}

/// The next admin set after `current` with these admins, revocations (added to the current
/// ones) and roles; unsigned.
pub fn next_admin_set_with(
    current: &AdminSet,
    admins: Vec<KeyId>,
    revoked: Vec<Revocation>,
    roles: Vec<crate::trust::Role>,
) -> AdminSet {
    let mut all_revoked = current.revoked.clone();
    all_revoked.extend(revoked);
    AdminSet {
        mesh: current.mesh,
        version: current.version + 1,
        root_keys: current.root_keys.clone(),
        root_threshold: current.root_threshold,
        admins,
        approval_threshold: current.approval_threshold,
        approval_above_nodes: current.approval_above_nodes,
        revoked: all_revoked,
        roles,
    }
}
