//! `patchmesh audit export|verify`: a node's tamper-evident audit log, fetched and checked.

use anyhow::{bail, Context};
use clap::Subcommand;
use patchmesh_node::control::{AuditExportView, Request};
use patchmesh_node::files;
use patchmesh_protocol::audit::{self, Head};
use patchmesh_protocol::crypto::Ed25519;
use patchmesh_protocol::ids::Millis;
use std::path::{Path, PathBuf};

/// `patchmesh audit …`
#[derive(Subcommand)]
pub enum AuditCmd {
    /// Export a node's audit log (this node's, or another's fetched over the mesh). The node
    /// answering checks it first: signatures, the chain, the node's admission, and the
    /// checkpoint in the node's signed record when it holds it.
    Export {
        /// The node id (default: this node).
        #[arg(long = "node")]
        node_id: Option<String>,
        /// Start at the last checkpoint signed at or before this time: RFC 3339, a date
        /// (2026-11-01) or an age (7d, 24h). Default: the oldest entry kept.
        #[arg(long)]
        since: Option<String>,
        /// Write the export here (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        node: crate::NodeArgs,
    },
    /// Check an exported log offline with nothing but the mesh's genesis: every entry's hash
    /// and link, every checkpoint's signature, the node's admission, and that the export is
    /// complete. Exits 1 and names the first bad sequence number when it is not.
    Verify {
        /// The exported log.
        file: PathBuf,
        /// The mesh genesis.
        #[arg(long)]
        genesis: PathBuf,
        /// A checkpoint held from elsewhere (a report, a peer), as SEQ:HEAD-HEX: the export
        /// must reach it and agree with it.
        #[arg(long)]
        checkpoint: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `patchmesh audit …`.
pub fn run(cmd: AuditCmd, now: Millis) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Export { node_id, since, out, node } => {
            let since_ms = since.as_deref().map(|s| parse_past(s, now)).transpose()?.map(|m| m.0);
            let view: AuditExportView =
                crate::call(&node, Request::AuditExport { node: node_id, since_ms })?;
            match out {
                Some(path) => {
                    files::write_synced(&path, view.text.as_bytes())
                        .with_context(|| format!("writing {}", path.display()))?;
                    let v = &view.verified;
                    eprintln!(
                        "patchmesh: wrote {} ({} entries {}..={}, {} signed checkpoints, head {}){}",
                        path.display(),
                        v.entries,
                        v.from_seq,
                        v.through_seq,
                        v.checkpoints,
                        &v.head.to_hex()[..16],
                        match &view.record_checkpoint {
                            Some((seq, _)) => format!(
                                "; agrees with the checkpoint at entry {seq} in the node's signed record"
                            ),
                            None => String::new(),
                        }
                    );
                }
                None => print!("{}", view.text),
            }
            Ok(())
        }
        AuditCmd::Verify { file, genesis, checkpoint, json } => {
            verify(&file, &genesis, &checkpoint, json)
        }
    }
}

fn verify(file: &Path, genesis: &Path, checkpoints: &[String], json: bool) -> anyhow::Result<()> {
    let genesis = files::read_envelope(genesis).context("reading the genesis")?;
    let bytes = files::read_limited(file, 1 << 30)
        .with_context(|| format!("reading {}", file.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not UTF-8 at byte {}: not an audit export",
            file.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let held: Vec<Head> =
        checkpoints.iter().map(|c| parse_checkpoint(c)).collect::<anyhow::Result<_>>()?;
    let result = audit::verify_export(&text, &genesis, &Ed25519)
        .and_then(|v| held.iter().try_for_each(|h| audit::check_against(&text, &v, h)).map(|()| v));
    match result {
        Ok(v) => {
            if json {
                println!("{}", serde_json::json!({"ok": true, "verified": v}));
            } else {
                println!(
                    "OK: {} entries {}..={} of node {} (site {}), {} signed checkpoints, head {}, exported {}",
                    v.entries,
                    v.from_seq,
                    v.through_seq,
                    v.node,
                    v.site,
                    v.checkpoints,
                    v.head,
                    crate::intel::date(v.exported_at_ms)
                );
                for h in &held {
                    println!("   agrees with the checkpoint given for entry {}", h.seq);
                }
            }
            Ok(())
        }
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "first_bad_seq": e.seq(), "error": e.to_string()})
                );
                std::process::exit(1);
            }
            match e.seq() {
                Some(seq) => {
                    bail!("{} does not verify: first bad entry {seq}: {e}", file.display())
                }
                None => bail!("{} does not verify: {e}", file.display()),
            }
        }
    }
}

fn parse_checkpoint(s: &str) -> anyhow::Result<Head> {
    let (seq, head) =
        s.split_once(':').with_context(|| format!("--checkpoint {s:?}: expected SEQ:HEAD-HEX"))?;
    let seq: u64 =
        seq.parse().with_context(|| format!("--checkpoint {s:?}: {seq:?} is not a number"))?;
    let head = audit::Hash32::from_hex(head)
        .with_context(|| format!("--checkpoint {s:?}: the head is not 64 hex digits"))?;
    Ok(Head { seq, head: head.0, at: Millis(0) })
}

/// A moment in the past: RFC 3339, a date, or an age (`7d`, `24h`, `90s`).
pub fn parse_past(text: &str, now: Millis) -> anyhow::Result<Millis> {
    let bad =
        || format!("{text:?} is not a time: use RFC 3339, a date (2026-11-01) or an age (7d, 24h)");
    for (suffix, unit_ms) in [("d", 86_400_000u64), ("h", 3_600_000), ("s", 1_000)] {
        if let Some(n) = text
            .strip_suffix(suffix)
            .filter(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
        {
            let n: u64 = n.parse().with_context(bad)?;
            return Ok(Millis(now.0.saturating_sub(n.saturating_mul(unit_ms))));
        }
    }
    if let Ok(d) = text.parse::<jiff::civil::Date>() {
        let ts = d.to_zoned(jiff::tz::TimeZone::UTC).with_context(bad)?.timestamp();
        return Ok(Millis(ts.as_millisecond().max(0) as u64));
    }
    let ts: jiff::Timestamp = text.parse().with_context(bad)?;
    Ok(Millis(ts.as_millisecond().max(0) as u64))
}
