//! The audit log format: an honest export verifies with the genesis alone; every kind of
//! tampering is refused with the first bad sequence number.

mod common;

use common::{key, Keys, T0};
use patchmesh_protocol::audit::{self, AuditError, Event, ExportHeader, Hash32, Writer};
use patchmesh_protocol::crypto::{encode, Ed25519};

const ENTRIES: u64 = 600;

/// An export of `ENTRIES` entries by node key 40 of `keys`' mesh, checkpointed by the cadence
/// and once at the end.
fn export(keys: &Keys) -> String {
    let node = key(40);
    let mut w = Writer::new(node.clone());
    let mut body = String::new();
    for i in 0..ENTRIES {
        body.push_str(&w.append(
            Event::StepResult {
                rollout: format!("{i:064x}"),
                action: "install".into(),
                ok: i % 7 != 0,
                exit_code: Some((i % 7 == 0) as i32),
                timed_out: false,
                duration_ms: i,
                detail: "exit 0".into(),
                output_tail: "Setting up openssl ...\n".into(),
            },
            T0.0 + i * 1000,
        ));
        if w.checkpoint_due(T0.0 + i * 1000) {
            body.push_str(&w.checkpoint(T0.0 + i * 1000).line());
        }
    }
    body.push_str(&w.checkpoint(T0.0 + ENTRIES * 1000).line());
    let header = ExportHeader {
        format: 1,
        mesh: Hash32(keys.genesis_body.mesh_id().0),
        node: Hash32(node.public().0),
        site: "branch-1".into(),
        admission: hex::encode(encode(&keys.admit(&node, "branch-1"))),
        admin_sets: Vec::new(),
        from_seq: 1,
        through_seq: w.seq(),
        exported_at_ms: T0.0 + ENTRIES * 1000,
    };
    serde_json::to_string(&w.sign_header(&header)).unwrap() + "\n" + &body
}

fn verify(keys: &Keys, text: &str) -> Result<audit::Verified, AuditError> {
    audit::verify_export(text, &keys.genesis, &Ed25519)
}

/// The line holding entry `seq` (0-based line index in the export).
fn line_of(text: &str, seq: u64) -> usize {
    text.lines().position(|l| l.starts_with(&format!("{{\"entry\":{{\"seq\":{seq},"))).unwrap()
}

#[test]
fn an_honest_export_verifies() {
    let keys = Keys::new();
    let text = export(&keys);
    let v = verify(&keys, &text).unwrap();
    assert_eq!((v.from_seq, v.through_seq, v.entries), (1, ENTRIES, ENTRIES));
    // After the first entry (none before it), every 256 entries, and at export.
    assert_eq!(v.checkpoints, 4);
}

#[test]
fn a_flipped_byte_names_its_entry() {
    let keys = Keys::new();
    let text = export(&keys);
    let at = text.find("\"duration_ms\":321,").unwrap();
    let mut bytes = text.into_bytes();
    bytes[at + "\"duration_ms\":".len()] = b'9'; // 321 -> 921
    let err = verify(&keys, std::str::from_utf8(&bytes).unwrap()).unwrap_err();
    assert_eq!(err, AuditError::HashMismatch { seq: 322 }, "{err}");
}

#[test]
fn a_rehashed_edit_breaks_the_link_after_it() {
    // An editor who recomputes the edited entry's hash still breaks the next entry's `prev`.
    let keys = Keys::new();
    let text = export(&keys);
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let i = line_of(&text, 100);
    let raw = lines[i].strip_prefix("{\"entry\":").unwrap().rsplit_once(",\"hash\":").unwrap().0;
    let edited = raw.replace("\"ok\":true", "\"ok\":false");
    assert_ne!(edited, raw);
    lines[i] =
        format!("{{\"entry\":{edited},\"hash\":\"{}\"}}", audit::entry_hash(edited.as_bytes()));
    let err = verify(&keys, &(lines.join("\n") + "\n")).unwrap_err();
    assert_eq!(err.seq(), Some(101), "{err}");
}

#[test]
fn a_removed_entry_is_named() {
    let keys = Keys::new();
    let text = export(&keys);
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(line_of(&text, 77));
    let err = verify(&keys, &(lines.join("\n") + "\n")).unwrap_err();
    assert_eq!(err.seq(), Some(77), "{err}");
    assert!(matches!(err, AuditError::Broken { .. }), "{err}");
}

#[test]
fn a_reordered_pair_is_named() {
    let keys = Keys::new();
    let text = export(&keys);
    let mut lines: Vec<&str> = text.lines().collect();
    let i = line_of(&text, 50);
    lines.swap(i, i + 1);
    let err = verify(&keys, &(lines.join("\n") + "\n")).unwrap_err();
    assert_eq!(err.seq(), Some(50), "{err}");
}

#[test]
fn a_truncated_tail_is_named() {
    let keys = Keys::new();
    let text = export(&keys);
    // Cut after entry 400: the header promises 600.
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines[..=line_of(&text, 400)].join("\n") + "\n";
    assert_eq!(
        verify(&keys, &cut).unwrap_err(),
        AuditError::Truncated { seq: 401, through: ENTRIES }
    );
    // A torn last line.
    let torn = &text[..text.len() - 10];
    assert!(matches!(verify(&keys, torn).unwrap_err(), AuditError::Truncated { .. }));
    // Cutting the header's promise too needs the node's key: the signature fails.
    let forged = text.replacen("\"through_seq\":600", "\"through_seq\":400", 1);
    assert_eq!(verify(&keys, &forged).unwrap_err(), AuditError::BadSignature("export header"));
}

#[test]
fn a_forged_checkpoint_is_refused() {
    let keys = Keys::new();
    let text = export(&keys);
    // A checkpoint whose signature was changed.
    let i = text
        .lines()
        .position(|l| l.starts_with("{\"checkpoint\"") && l.contains("\"seq\":257,"))
        .unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let sig_at = lines[i].find("\"signature\":\"").unwrap() + "\"signature\":\"".len();
    let flipped = if &lines[i][sig_at..sig_at + 1] == "0" { "1" } else { "0" };
    lines[i].replace_range(sig_at..sig_at + 1, flipped);
    let err = verify(&keys, &(lines.join("\n") + "\n")).unwrap_err();
    assert_eq!(err.seq(), Some(257), "{err}");
}

#[test]
fn a_node_of_another_mesh_is_refused() {
    let keys = Keys::new();
    let text = export(&keys);
    // The same export checked against another mesh's genesis.
    let mut other = Keys::new();
    other.genesis = patchmesh_protocol::mesh::genesis(
        "other",
        &[&key(90)],
        1,
        &[key(91).public()],
        patchmesh_protocol::mesh::Approval::always(1),
        T0,
    );
    assert!(matches!(verify(&other, &text).unwrap_err(), AuditError::NotAdmitted(_)));
}

#[test]
fn a_rewritten_log_contradicts_a_held_checkpoint() {
    // A node that rewrites its whole log from entry 300 on, re-signing everything, verifies on
    // its own, but not against the checkpoint its site already holds.
    let keys = Keys::new();
    let honest = export(&keys);
    let held_at = 257;
    let held =
        audit::Head { seq: held_at, head: audit::hash_at(&honest, held_at).unwrap().0, at: T0 };
    let v = verify(&keys, &honest).unwrap();
    audit::check_against(&honest, &v, &held).unwrap();
    let node = key(40);
    let mut w = Writer::new(node.clone());
    let mut body = String::new();
    for i in 0..300u64 {
        body.push_str(
            &w.append(Event::NodeStopping { reason: format!("rewritten {i}") }, T0.0 + i),
        );
    }
    body.push_str(&w.checkpoint(T0.0 + 1000).line());
    let header = ExportHeader {
        format: 1,
        mesh: Hash32(keys.genesis_body.mesh_id().0),
        node: Hash32(node.public().0),
        site: "branch-1".into(),
        admission: hex::encode(encode(&keys.admit(&node, "branch-1"))),
        admin_sets: Vec::new(),
        from_seq: 1,
        through_seq: 300,
        exported_at_ms: T0.0 + 1000,
    };
    let forged = serde_json::to_string(&w.sign_header(&header)).unwrap() + "\n" + &body;
    let v = verify(&keys, &forged).unwrap();
    let err = audit::check_against(&forged, &v, &held).unwrap_err();
    assert_eq!(err.seq(), Some(held_at), "{err}");
    // And a log cut short of the held checkpoint.
    let short = audit::Head { seq: 500, ..held };
    assert!(matches!(
        audit::check_against(&forged, &v, &short),
        Err(AuditError::Truncated { seq: 301, .. })
    ));
}

#[test]
fn oversized_and_garbage_lines_get_typed_errors() {
    let keys = Keys::new();
    let text = export(&keys);
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines.insert(5, "x".repeat(audit::LINE_BYTES_MAX + 1));
    let err = verify(&keys, &(lines.join("\n") + "\n")).unwrap_err();
    assert!(matches!(err, AuditError::Malformed { line: 6, .. }), "{err}");
    lines[5] = "{\"entry\":[1,2,3],\"hash\":\"00\"}".into();
    assert!(matches!(
        verify(&keys, &(lines.join("\n") + "\n")).unwrap_err(),
        AuditError::Malformed { line: 6, .. }
    ));
    assert!(matches!(verify(&keys, "").unwrap_err(), AuditError::Malformed { line: 1, .. }));
}

/// A member whose signed records carry audit checkpoints that cannot both be true (its log went
/// back, or two different entries at one sequence number) is kept as equivocation evidence by
/// every site replica that sees both records; an honest progression is not.
#[test]
fn contradicting_checkpoints_in_records_are_kept_as_evidence() {
    use patchmesh_protocol::ids::{NodeId, SiteId};
    use patchmesh_protocol::site::{self, Bundle, NodeRecord, SiteState};
    use patchmesh_protocol::trust::Trust;
    use std::sync::Arc;
    let keys = Keys::new();
    let trust = Trust::new(keys.genesis.clone(), &Ed25519).unwrap();
    let k = key(40);
    let admission = keys.admit(&k, "s");
    let record = |version: u64, seq: u64, head: u8| {
        let rec = NodeRecord {
            mesh: trust.mesh(),
            node: NodeId(k.public().0),
            site: SiteId::from("s"),
            version,
            written_at: patchmesh_protocol::ids::Millis(T0.0 + version),
            inventory: Default::default(),
            rollouts: Default::default(),
            exposure: None,
            audit: Some(audit::Head { seq, head: [head; 32], at: T0 }),
        };
        let b = Arc::new(Bundle::new(
            patchmesh_protocol::crypto::Envelope::seal(
                patchmesh_protocol::crypto::Domain::NodeRecord,
                &rec,
                &[&k],
            ),
            admission.clone(),
        ));
        site::verify_record(&b, &trust, T0, &Ed25519).unwrap()
    };
    let mut state = SiteState::new(SiteId::from("s"));
    state.merge_record(record(1, 10, 1)).unwrap();
    state.merge_record(record(2, 300, 2)).unwrap();
    assert!(state.equivocations().is_empty(), "a log that grew is honest");
    state.merge_record(record(3, 120, 3)).unwrap();
    assert_eq!(state.equivocations().len(), 1);
    assert!(
        state.equivocations()[0].detail.contains("went back from entry 300 to 120"),
        "{}",
        state.equivocations()[0].detail
    );
    state.merge_record(record(4, 120, 4)).unwrap();
    assert_eq!(state.equivocations().len(), 2);
    assert!(state.equivocations()[1].detail.contains("two different entries 120"));
    // Two different records signed at one version: kept as evidence in either arrival order,
    // and both replicas keep the same one.
    let (a, b) = (record(5, 130, 5), record(5, 131, 6));
    let mut other = state.clone();
    state.merge_record(a.clone()).unwrap();
    state.merge_record(b.clone()).unwrap();
    other.merge_record(b).unwrap();
    other.merge_record(a).unwrap();
    for s in [&state, &other] {
        assert_eq!(s.equivocations().len(), 3);
        assert!(s.equivocations()[2].detail.contains("two different records signed at version 5"));
    }
    let node = NodeId(k.public().0);
    assert_eq!(state.records()[&node].body_hash(), other.records()[&node].body_hash());
}
