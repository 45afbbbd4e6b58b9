//! Scoped admin roles: which signed changes every node accepts, for each role × action ×
//! target, and how approvals and commands count.

mod common;

use common::{key, Keys, T0};
use patchmesh_protocol::catalog::{Catalog, CatalogEntry, ChangeBody, IntelEntry};
use patchmesh_protocol::crypto::{Domain, Ed25519, Envelope, SecretKey};
use patchmesh_protocol::ids::{ContentId, KeyId, Millis, RolloutId, SiteId};
use patchmesh_protocol::intel::exception::{ExceptionEntry, ExceptionKind};
use patchmesh_protocol::mesh;
use patchmesh_protocol::rollout::policy::{
    AdminCommand, CommandAction, Gate, RingSpec, RolloutEntry, Selector,
};
use patchmesh_protocol::rollout::verdict::{judge, rollout_hash, Authored, Control, RingStats};
use patchmesh_protocol::trust::{AdminSet, Permission, Role, Scope, Trust, TrustError};
use std::collections::BTreeMap;

fn sites(s: &[&str]) -> Vec<SiteId> {
    s.iter().map(|s| SiteId::from(*s)).collect()
}

fn role(name: &str, keys: &[&SecretKey], perms: &[Permission], scope: &[&str]) -> Role {
    Role {
        name: name.into(),
        keys: keys.iter().map(|k| k.public()).collect(),
        permissions: perms.to_vec(),
        scope: Scope { sites: sites(scope), labels: BTreeMap::new() },
        publish_approvals: 0,
    }
}

/// The mesh of the tests: `fleet` (admin 0) may do everything everywhere; `paris` (key 20)
/// publishes and controls in paris; `approver` (key 21) only approves; `feed` (key 22) only
/// publishes intel. Returns the trust with roles and one without (to prepare changes any key
/// could then sign).
struct Mesh {
    keys: Keys,
    paris: SecretKey,
    approver: SecretKey,
    feed: SecretKey,
    trust: Trust,
    plain: Trust,
}

fn mesh() -> Mesh {
    let keys = Keys::new();
    let (paris, approver, feed) = (key(20), key(21), key(22));
    let admins: Vec<KeyId> = [&keys.admins[0], &keys.admins[1], &paris, &approver, &feed]
        .iter()
        .map(|k| k.public())
        .collect();
    let roots = [&keys.roots[0], &keys.roots[1]];
    let mut trust = Trust::new(keys.genesis.clone(), &Ed25519).unwrap();
    let mut plain = trust.clone();
    let roles = vec![
        role("fleet", &[&keys.admins[0], &keys.admins[1]], &Permission::ALL, &[]),
        role(
            "paris",
            &[&paris],
            &[Permission::Publish, Permission::Control, Permission::Exceptions, Permission::Admit],
            &["paris"],
        ),
        role("approver", &[&approver], &[Permission::Approve], &[]),
        role("feed", &[&feed], &[Permission::Intel], &[]),
    ];
    let with_roles = mesh::next_admin_set_with(trust.admins(), admins.clone(), vec![], roles);
    assert!(trust.apply_admin_set(&with_roles.seal(&roots), &Ed25519).unwrap());
    let without = mesh::next_admin_set_with(plain.admins(), admins, vec![], vec![]);
    assert!(plain.apply_admin_set(&without.seal(&roots), &Ed25519).unwrap());
    Mesh { keys, paris, approver, feed, trust, plain }
}

fn rollout(target_sites: &[&str]) -> RolloutEntry {
    let gate = Gate {
        min_success_permille: 1000,
        max_failures: 0,
        max_failure_permille: 0,
        min_soak_ms: 0,
        min_reports: 1,
    };
    RolloutEntry {
        id: RolloutId(*blake3::hash(target_sites.join(",").as_bytes()).as_bytes()),
        content_id: ContentId([9; 32]),
        target: Selector { sites: sites(target_sites), ..Selector::default() },
        rings: vec![RingSpec { name: "all".into(), percent: 100, labels: BTreeMap::new(), gate }],
        windows: vec![],
        deadline: None,
        max_concurrent_per_site: 4,
        max_targets: 10,
        rollback_on_halt: true,
        recheck_ms: 500,
        created_at: T0,
        auto_window: false,
    }
}

fn patch() -> CatalogEntry {
    CatalogEntry::Patch(common::patch())
}

fn command(signer: &SecretKey, action: CommandAction) -> CatalogEntry {
    CatalogEntry::Command(AdminCommand {
        rollout: rollout(&["paris"]).id,
        action,
        issued_at: T0,
        admin: signer.public(),
    })
}

fn exception(target_sites: &[&str]) -> CatalogEntry {
    CatalogEntry::Exception(ExceptionEntry {
        cve: "CVE-2026-0001".into(),
        target: Selector { sites: sites(target_sites), ..Selector::default() },
        kind: ExceptionKind::RiskAccepted,
        justification: "vendor fix pending".into(),
        compensating_control: None,
        created_at: T0,
        expires_at: Millis(T0.0 + 86_400_000),
    })
}

/// A change putting (or deleting) entries, signed by `signer`: prepared on a catalog under
/// the role-less trust (where any admin may prepare anything), so only verification judges it.
fn signed(m: &Mesh, signer: &SecretKey, edits: Vec<(String, Option<CatalogEntry>)>) -> Envelope {
    let mut scratch = Catalog::new(m.trust.mesh());
    if edits.iter().any(|(_, e)| e.is_none()) {
        // Something to delete.
        let held: Vec<_> = edits.iter().filter(|(_, e)| e.is_none()).map(|(k, _)| k).collect();
        let mut prior = put(patch());
        if held.iter().any(|k| k.starts_with("policy/")) {
            prior = put(CatalogEntry::ReservedLabels(Default::default()));
        }
        scratch.author(&m.keys.admins[0], [6; 8], T0, &m.plain, &prior).unwrap();
    }
    let body: ChangeBody = scratch.prepare(&signer.public(), [7; 8], T0, &m.plain, &edits).unwrap();
    Envelope::seal(Domain::CatalogChange, &body, &[signer])
}

fn put(e: CatalogEntry) -> Vec<(String, Option<CatalogEntry>)> {
    vec![(e.key(), Some(e))]
}

#[test]
fn every_node_accepts_exactly_what_the_signers_role_grants_where_it_grants_it() {
    let m = mesh();
    let fleet = m.keys.admins[0].clone();
    let intel = CatalogEntry::Intel(IntelEntry {
        content_id: ContentId([3; 32]),
        size_bytes: 5,
        created_at: T0,
        sources: vec![],
    });
    let approve = |k: &SecretKey| {
        command(k, CommandAction::Approve { rollout_hash: rollout_hash(&rollout(&["paris"])) })
    };
    let reserved = CatalogEntry::ReservedLabels(patchmesh_protocol::enrol::ReservedLabels {
        labels: [("ring".to_string(), vec!["canary".to_string()])].into(),
    });
    let revoke = |site: &str| {
        CatalogEntry::NodeRevocation(patchmesh_protocol::enrol::NodeRevocation {
            node: patchmesh_protocol::ids::NodeId([9; 32]),
            site: SiteId::from(site),
            reason: "lost".into(),
            revoked_at: T0,
        })
    };
    // (signer, label, edits, accepted)
    let cases: Vec<(&SecretKey, &str, Vec<(String, Option<CatalogEntry>)>, bool)> = vec![
        (&fleet, "fleet: patch", put(patch()), true),
        (&fleet, "fleet: rollout to every site", put(CatalogEntry::Rollout(rollout(&[]))), true),
        (&fleet, "fleet: intel", put(intel.clone()), true),
        (&fleet, "fleet: delete", vec![(patch().key(), None)], true),
        (&m.paris, "paris: patch", put(patch()), true),
        (
            &m.paris,
            "paris: rollout to paris",
            put(CatalogEntry::Rollout(rollout(&["paris"]))),
            true,
        ),
        (
            &m.paris,
            "paris: rollout to berlin",
            put(CatalogEntry::Rollout(rollout(&["berlin"]))),
            false,
        ),
        (
            &m.paris,
            "paris: rollout to paris and berlin",
            put(CatalogEntry::Rollout(rollout(&["paris", "berlin"]))),
            false,
        ),
        (&m.paris, "paris: rollout to every site", put(CatalogEntry::Rollout(rollout(&[]))), false),
        (&m.paris, "paris: pause", put(command(&m.paris, CommandAction::Pause)), true),
        (&m.paris, "paris: approve", put(approve(&m.paris)), false),
        (&m.paris, "paris: exception in paris", put(exception(&["paris"])), true),
        (&m.paris, "paris: exception everywhere", put(exception(&[])), false),
        (&m.paris, "paris: intel", put(intel.clone()), false),
        (&m.paris, "paris: delete", vec![(patch().key(), None)], false),
        (&m.approver, "approver: approve", put(approve(&m.approver)), true),
        (&m.approver, "approver: pause", put(command(&m.approver, CommandAction::Pause)), false),
        (&m.approver, "approver: patch", put(patch()), false),
        (&m.feed, "feed: intel", put(intel.clone()), true),
        (&m.feed, "feed: patch", put(patch()), false),
        (&m.feed, "feed: rollout", put(CatalogEntry::Rollout(rollout(&["paris"]))), false),
        (&fleet, "fleet: reserve labels", put(reserved.clone()), true),
        (&fleet, "fleet: revoke a paris node", put(revoke("paris")), true),
        (&m.paris, "paris: revoke a paris node", put(revoke("paris")), true),
        (&m.paris, "paris: revoke a berlin node", put(revoke("berlin")), false),
        (&m.paris, "paris: reserve labels", put(reserved.clone()), false),
        (&m.paris, "paris: lift reserved labels", vec![(reserved.key(), None)], false),
    ];
    let catalog = Catalog::new(m.trust.mesh());
    let mut wrong = Vec::new();
    for (signer, label, edits, accepted) in cases {
        let env = signed(&m, signer, edits);
        let got = catalog.verify(&env, &m.trust, &Ed25519);
        if got.is_ok() != accepted {
            wrong.push(format!(
                "{label}: expected {}, got {got:?}",
                if accepted { "accepted" } else { "refused" }
            ));
        } else if let Err(e) = got {
            assert!(
                matches!(
                    e,
                    patchmesh_protocol::catalog::CatalogError::Trust(
                        TrustError::NotPermitted { .. }
                    )
                ),
                "{label}: refused for the wrong reason: {e:?}"
            );
        }
        // Without roles (meshes made before them) every admin may do everything.
        let env = signed(&m, signer, vec![(patch().key(), Some(patch()))]);
        assert!(catalog.verify(&env, &m.plain, &Ed25519).is_ok(), "{label} without roles");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_node_refuses_to_prepare_what_the_key_may_not_sign() {
    let m = mesh();
    let catalog = Catalog::new(m.trust.mesh());
    let edits = put(CatalogEntry::Rollout(rollout(&["berlin"])));
    let e = catalog.prepare(&m.paris.public(), [1; 8], T0, &m.trust, &edits).unwrap_err();
    assert!(e.to_string().contains("publish"), "{e}");
}

#[test]
fn approvals_count_only_from_roles_that_grant_approve_and_commands_only_within_scope() {
    let mut m = mesh();
    let r = rollout(&["paris"]);
    let hash = rollout_hash(&r);
    let authored = Authored { rollout: r.clone(), author: m.paris.public(), hash };
    let cmd = |k: &SecretKey, action: CommandAction, at: u64| {
        (
            format!("command/{at}"),
            AdminCommand { rollout: r.id, action, issued_at: Millis(T0.0 + at), admin: k.public() },
        )
    };
    let rings = vec![RingStats::default()];
    // The author's own role may publish but not approve: it waits for an approver.
    let v = judge(&authored, &[], &m.trust, rings.clone(), Millis(0));
    assert_eq!(
        (v.control.clone(), v.approvals, v.approvals_needed),
        (Control::AwaitingApproval, 0, 1)
    );
    let approved = [cmd(&m.approver, CommandAction::Approve { rollout_hash: hash }, 1)];
    assert_eq!(
        judge(&authored, &approved, &m.trust, rings.clone(), Millis(0)).control,
        Control::Running
    );
    // An approval from a key whose roles do not grant approve counts for nothing.
    let by_paris = [cmd(&m.paris, CommandAction::Approve { rollout_hash: hash }, 1)];
    assert_eq!(judge(&authored, &by_paris, &m.trust, rings.clone(), Millis(0)).approvals, 0);
    // Paris may pause its own rollout.
    let paused = [approved[0].clone(), cmd(&m.paris, CommandAction::Pause, 2)];
    assert_eq!(
        judge(&authored, &paused, &m.trust, rings.clone(), Millis(0)).control,
        Control::Paused
    );
    // A fleet-wide rollout: paris's pause is outside its scope and does not count.
    let wide = rollout(&[]);
    let wide_authored = Authored {
        rollout: wide.clone(),
        author: m.keys.admins[0].public(),
        hash: rollout_hash(&wide),
    };
    let pause_wide = [(
        String::from("command/x"),
        AdminCommand {
            rollout: wide.id,
            action: CommandAction::Pause,
            issued_at: T0,
            admin: m.paris.public(),
        },
    )];
    assert_eq!(
        judge(&wide_authored, &pause_wide, &m.trust, rings.clone(), Millis(0)).control,
        Control::Running
    );
    // A publish threshold on the paris role: its rollouts need two approving keys.
    let mut set: AdminSet = m.trust.admins().clone();
    set.roles[1].publish_approvals = 2;
    set.roles[2].keys.push(m.keys.admins[1].public());
    let next =
        mesh::next_admin_set_with(m.trust.admins(), set.admins.clone(), vec![], set.roles.clone());
    assert!(m
        .trust
        .apply_admin_set(&next.seal(&[&m.keys.roots[0], &m.keys.roots[1]]), &Ed25519)
        .unwrap());
    let v = judge(&authored, &approved, &m.trust, rings.clone(), Millis(0));
    assert_eq!((v.approvals, v.approvals_needed, v.control), (1, 2, Control::AwaitingApproval));
    let two = [
        approved[0].clone(),
        cmd(&m.keys.admins[1], CommandAction::Approve { rollout_hash: hash }, 3),
    ];
    assert_eq!(judge(&authored, &two, &m.trust, rings, Millis(0)).control, Control::Running);
}

#[test]
fn a_removed_role_takes_its_authority_and_admissions_need_admit_in_scope() {
    let mut m = mesh();
    let mut set = m.trust.admins().clone();
    set.roles.retain(|r| r.name != "paris");
    let next = mesh::next_admin_set_with(m.trust.admins(), set.admins.clone(), vec![], set.roles);
    assert!(m
        .trust
        .apply_admin_set(&next.seal(&[&m.keys.roots[0], &m.keys.roots[1]]), &Ed25519)
        .unwrap());
    let catalog = Catalog::new(m.trust.mesh());
    let env = signed(&m, &m.paris, put(CatalogEntry::Rollout(rollout(&["paris"]))));
    assert!(
        catalog.verify(&env, &m.trust, &Ed25519).is_err(),
        "a removed role's change is refused"
    );
    // The paris key still holds no admit: its certificates are refused; fleet's are not.
    let node = key(99);
    let cert = |admin: &SecretKey| {
        mesh::admit(
            admin,
            &m.keys.genesis_body,
            patchmesh_protocol::ids::NodeId(node.public().0),
            &SiteId::from("paris"),
            BTreeMap::new(),
            T0,
            86_400_000,
        )
    };
    assert!(matches!(
        m.trust.check_admission(&cert(&m.paris), T0, &Ed25519),
        Err(TrustError::NotPermitted { .. })
    ));
    assert!(m.trust.check_admission(&cert(&m.keys.admins[0]), T0, &Ed25519).is_ok());
}

#[test]
fn role_sets_are_validated_and_role_less_sets_keep_their_old_encoding() {
    let m = mesh();
    let roots = [&m.keys.roots[0], &m.keys.roots[1]];
    // A role naming a key that is not an admin is refused.
    let mut trust = Trust::new(m.keys.genesis.clone(), &Ed25519).unwrap();
    let stranger = key(77);
    let bad = mesh::next_admin_set_with(
        trust.admins(),
        vec![m.keys.admins[0].public()],
        vec![],
        vec![role("x", &[&stranger], &[Permission::Publish], &[])],
    );
    assert!(matches!(
        trust.apply_admin_set(&bad.seal(&roots), &Ed25519),
        Err(TrustError::Invalid(_))
    ));
    // Without roles the set is signed in the pre-role encoding and decodes the same.
    let plain =
        mesh::next_admin_set(trust.admins(), vec![m.keys.admins[0].public()], vec![], &roots);
    assert_eq!(plain.domain, Domain::AdminSet);
    assert_eq!(AdminSet::open(&plain).unwrap().roles, vec![]);
    assert!(trust.apply_admin_set(&plain, &Ed25519).unwrap());
    // A roles-domain envelope that lists no roles is malformed.
    let set =
        mesh::next_admin_set_with(trust.admins(), vec![m.keys.admins[0].public()], vec![], vec![]);
    let forged = Envelope::seal(Domain::AdminSetRoles, &set, &roots);
    assert!(trust.apply_admin_set(&forged, &Ed25519).is_err());
}
