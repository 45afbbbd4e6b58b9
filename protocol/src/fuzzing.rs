//! Fuzz target bodies: one function per decoder a peer or a file can reach, and a sequence of
//! inputs to a [`Node`]. `fuzz/` runs them under libFuzzer (`scripts/fuzz.sh`), and
//! `protocol/tests/fuzz_corpus.rs` runs them on the committed seeds and every crash found so
//! far (`fuzz/regressions/`) with the normal test suite. Each must never panic, whatever the
//! bytes.

use crate::crypto::{decode, Ed25519, Envelope, SecretKey};
use crate::ids::{Millis, NodeId, SiteId};
use crate::node::{Config, Input, Node, PeerId, RelayMode};
use std::sync::Arc;

/// The targets by name (what `fuzz/fuzz_targets/<name>.rs` runs).
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("wire", wire),
    ("envelope", envelope),
    ("transfer", transfer),
    ("audit", audit),
    ("intel_bundle", intel_bundle),
    ("node_inputs", node_inputs),
];

/// Runs `body` over every file in `fuzz/seeds/<name>/` and `fuzz/regressions/<name>/` under
/// `root` (the `fuzz/` directory), in name order, plus the edge cases every decoder must take;
/// panics naming the file whose input panicked. Returns how many files ran. The stable test
/// suites replay each crate's targets through it.
pub fn replay(root: &std::path::Path, name: &str, body: fn(&[u8])) -> usize {
    let mut ran = 0;
    for kind in ["seeds", "regressions"] {
        let Ok(dir) = std::fs::read_dir(root.join(kind).join(name)) else { continue };
        let mut files: Vec<std::path::PathBuf> = dir.filter_map(|e| Some(e.ok()?.path())).collect();
        files.sort();
        for f in files {
            let bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let r = std::panic::catch_unwind(|| body(&bytes));
            assert!(r.is_ok(), "{name}: {} panicked", f.display());
            ran += 1;
        }
    }
    for bytes in [&[][..], &[0u8; 1][..], &[0xff; 64][..]] {
        body(bytes);
    }
    ran
}

/// A wire message, and the objects inside it checked as a node would.
pub fn wire(data: &[u8]) {
    if let Ok(msg) = crate::wire::Message::from_bytes(data) {
        let _ = msg.wire_bytes();
        let _ = msg.kind();
    }
}

/// An envelope, opened as every signed object kind.
pub fn envelope(data: &[u8]) {
    let max = crate::limits::ENVELOPE_BODY_BYTES_MAX * 2;
    let Ok(env) = decode::<Envelope>("envelope", data, max) else {
        return;
    };
    let _ = env.verify_all(&Ed25519);
    let _ = crate::trust::Genesis::verify(&env, &Ed25519);
    let _ = crate::trust::AdminSet::open(&env);
    let _ = crate::enrol::open(&env, &Ed25519);
    let _ = crate::catalog::change_hash(&env);
}

/// Transfer frames: bitfields, range requests and replies.
pub fn transfer(data: &[u8]) {
    let _ = crate::transfer::Bitfield::from_bytes(data);
    let _ = crate::transfer::DataRequest::from_bytes(data);
    let _ = crate::transfer::DataReply::from_bytes(data);
}

/// An exported audit log, line by line and whole.
pub fn audit(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for (n, line) in text.lines().enumerate().take(64) {
        let _ = crate::audit::parse_line(line, n + 1);
    }
    let _ = crate::audit::verify_export(text, &fuzz_mesh().genesis, &Ed25519);
}

/// An intel bundle, read as a node loads it.
pub fn intel_bundle(data: &[u8]) {
    let _ = crate::intel::matching::NodeIndex::load_release(data, "bookworm");
}

struct FuzzMesh {
    genesis: Envelope,
    admin: SecretKey,
    body: crate::trust::Genesis,
}

fn fuzz_mesh() -> &'static FuzzMesh {
    static MESH: std::sync::OnceLock<FuzzMesh> = std::sync::OnceLock::new();
    MESH.get_or_init(make_mesh)
}

fn make_mesh() -> FuzzMesh {
    let root = SecretKey::from_seed([1; 32]);
    let admin = SecretKey::from_seed([2; 32]);
    let genesis = crate::mesh::genesis(
        "fuzz",
        &[&root],
        1,
        &[admin.public()],
        crate::mesh::Approval::always(1),
        T0,
    );
    let body = genesis.open("genesis").expect("own genesis");
    FuzzMesh { genesis, admin, body }
}

const T0: Millis = Millis(1_800_000_000_000);

/// A node fed a sequence of inputs: an admitted peer's hello, then the fuzz bytes cut into
/// messages (a two-byte length before each), with a timer tick and 100 ms between them. The
/// node must not panic, and must not grow past its bounds.
pub fn node_inputs(data: &[u8]) {
    // Keys and certificates are made once per process: every iteration starts the same node.
    static CERTS: std::sync::OnceLock<(Envelope, Envelope)> = std::sync::OnceLock::new();
    let m = fuzz_mesh();
    let me = SecretKey::from_seed([3; 32]);
    let peer_key = SecretKey::from_seed([4; 32]);
    let (mine, theirs) = CERTS.get_or_init(|| {
        let cert = |k: &SecretKey| {
            crate::mesh::admit(
                &m.admin,
                &m.body,
                NodeId(k.public().0),
                &SiteId::from("s"),
                Default::default(),
                T0,
                86_400_000,
            )
        };
        (cert(&me), cert(&peer_key))
    });
    let config = Config {
        admission: mine.clone(),
        key: me,
        genesis: m.genesis.clone(),
        anti_entropy_interval_ms: 1000,
        summary_interval_ms: 2000,
        gossip_flush_ms: 50,
        summary_fanout: 2,
        seed: 1,
        record_version_floor: 0,
        check: Arc::new(Ed25519),
        relay: RelayMode::Direct,
        rollout_eval_ms: 1000,
    };
    let Ok(mut node) = Node::new(config, T0) else { return };
    let mut now = T0;
    let peer = PeerId(1);
    let feed = |node: &mut Node, now: Millis, input: Input| {
        node.handle_input(now, input);
        while node.poll_output().is_some() {}
    };
    feed(&mut node, now, Input::Start);
    feed(&mut node, now, Input::Connected { peer, node: NodeId(peer_key.public().0) });
    let hello = crate::wire::Message::Hello {
        mesh: m.body.mesh_id(),
        admission: theirs.clone(),
        trust_version: 1,
    };
    feed(&mut node, now, Input::Message { peer, msg: Arc::new(hello) });
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
        let (msg, tail) = rest.split_at(len.min(rest.len()));
        rest = tail;
        feed(&mut node, now, Input::Bytes { peer, bytes: msg.to_vec() });
        now = now.plus(100);
        feed(&mut node, now, Input::Timer);
    }
    assert!(node.site().records().len() <= crate::limits::RECORDS_MAX);
    assert!(node.summaries().all().len() <= crate::limits::SITES_MAX);
}
