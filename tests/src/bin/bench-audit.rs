//! `scripts/bench-audit.sh`: the audit log's cost.
//!
//! Appends `BENCH_AUDIT_ENTRIES` (1,000,000) install-step entries to a real log on disk (the
//! node's writer: one `write` per entry, a signed checkpoint with `fdatasync` every 256
//! entries), then exports it whole and verifies the export as an auditor would (every hash,
//! link and checkpoint signature, the admission from the genesis). Prints `append_us` (mean
//! per entry, checkpoints included), `checkpoint_ms` (mean, signature and fdatasync),
//! `verify_entries_per_s`, the log's size, and one JSON line last.

use patchmesh_node::audit::{AuditLog, Identity};
use patchmesh_protocol::audit::{self, Event};
use patchmesh_protocol::crypto::{encode, Ed25519, SecretKey};
use patchmesh_protocol::ids::{Millis, NodeId, SiteId};
use patchmesh_protocol::mesh;
use std::time::Instant;

fn main() {
    let n: u64 =
        std::env::var("BENCH_AUDIT_ENTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let dir = std::env::temp_dir().join(format!("pm-bench-audit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let root = SecretKey::from_seed([1; 32]);
    let admin = SecretKey::from_seed([2; 32]);
    let node = SecretKey::from_seed([3; 32]);
    let t0 = Millis(1_800_000_000_000);
    let genesis =
        mesh::genesis("bench", &[&root], 1, &[admin.public()], mesh::Approval::always(1), t0);
    let g: patchmesh_protocol::trust::Genesis = genesis.open("genesis").unwrap();
    let site = SiteId::from("branch-1");
    let admission = mesh::admit(
        &admin,
        &g,
        NodeId(node.public().0),
        &site,
        Default::default(),
        t0,
        365 * 86_400_000,
    );
    let id = Identity {
        mesh: g.mesh_id().0,
        site: "branch-1".into(),
        admission: hex::encode(encode(&admission)),
        admin_sets: Vec::new(),
    };

    let (mut log, _) = AuditLog::open(&dir, node, u64::MAX).unwrap();
    let started = Instant::now();
    for i in 0..n {
        let ev = Event::StepResult {
            rollout: format!("{:064x}", i / 4),
            action: ["stage", "install", "verify", "rollback"][(i % 4) as usize].into(),
            ok: i % 50 != 0,
            exit_code: Some((i % 50 == 0) as i32),
            timed_out: false,
            duration_ms: 1200 + i % 300,
            detail: "exit status 0".into(),
            output_tail: "Preparing to unpack .../openssl_3.0.15-1~deb12u1_amd64.deb ...\nSetting up openssl (3.0.15-1~deb12u1) ...\n".into(),
        };
        log.record(ev, t0.0 + i * 10).unwrap();
    }
    let append = started.elapsed();
    let checkpoints = n / audit::CHECKPOINT_EVERY_ENTRIES + 1;

    // One checkpoint alone, for its cost.
    let c = Instant::now();
    let rounds = 200;
    for i in 0..rounds {
        log.record(Event::NodeStopping { reason: "bench".into() }, t0.0 + n * 10 + i).unwrap();
        log.checkpoint(t0.0 + n * 10 + i).unwrap();
    }
    let checkpoint_ms = c.elapsed().as_secs_f64() * 1000.0 / rounds as f64;

    let e = Instant::now();
    let text = log.export(&id, None, usize::MAX, t0.0 + n * 20).unwrap();
    let export_ms = e.elapsed().as_millis();
    let v = Instant::now();
    let verified = audit::verify_export(&text, &genesis, &Ed25519).expect("the export verifies");
    let verify_s = v.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);

    let append_us = append.as_secs_f64() * 1e6 / n as f64;
    let rate = verified.entries as f64 / verify_s;
    println!("entries              {n}");
    println!(
        "log_bytes            {} ({:.0} B/entry)",
        text.len(),
        text.len() as f64 / verified.entries as f64
    );
    println!("append_us            {append_us:.2} mean per entry ({checkpoints} signed checkpoints with fdatasync included)");
    println!("checkpoint_ms        {checkpoint_ms:.3} (sign + fdatasync, mean of {rounds})");
    println!("export_ms            {export_ms}");
    println!(
        "verify_entries_per_s {rate:.0} ({:.2} s for {} entries, {} checkpoints)",
        verify_s, verified.entries, verified.checkpoints
    );
    println!(
        "{}",
        serde_json::json!({
            "entries": n, "log_bytes": text.len(), "append_us": (append_us * 100.0).round() / 100.0,
            "checkpoint_ms": (checkpoint_ms * 1000.0).round() / 1000.0, "export_ms": export_ms,
            "verify_entries_per_s": rate.round(), "verified_entries": verified.entries,
        })
    );
}
