//! `patchmesh report compliance|rollout|verify`.

use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};
use patchmesh_node::control::{
    AuditExportView, IntelView, RemoteFindingsView, ReportBasisView, ReportSignature, Request,
    RolloutsView,
};
use patchmesh_node::files;
use patchmesh_node::report::{self, html, ComplianceReport, FetchedFindings, Framework, ReportSig};
use patchmesh_protocol::crypto::Ed25519;
use patchmesh_protocol::ids::Millis;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One self-contained HTML file (the signed JSON embedded).
    Html,
    /// PDF (the signed JSON attached).
    Pdf,
    /// The findings as CSV.
    Csv,
    /// The signed JSON.
    Json,
    /// All four into the directory given by --out.
    All,
}

/// `patchmesh report …`
#[derive(Subcommand)]
pub enum ReportCmd {
    /// A signed compliance report from the replicated state this node holds: its site's nodes
    /// one by one (findings fetched from each and checked against its signed digest), other
    /// sites from their signed summaries; SLA, time to remediate, ageing, exceptions,
    /// rollouts, mapped to the framework's clauses.
    Compliance {
        /// Period start: RFC 3339, a date, or an age (30d). Default: 30 days ago.
        #[arg(long)]
        since: Option<String>,
        /// Period end. Default: now.
        #[arg(long)]
        until: Option<String>,
        /// pci-dss, soc2, iso27001, hipaa or cis (default: all of them).
        #[arg(long)]
        framework: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Html)]
        format: Format,
        /// Output file (a directory for --format all). Default: compliance-<date>.<ext> here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also sign as this admin (the node signs in any case).
        #[arg(long)]
        admin_key: Option<PathBuf>,
        #[command(flatten)]
        node: crate::NodeArgs,
    },
    /// One rollout's story: rings and their counts, gates, who approved or halted it, every
    /// failed step with its output tail (from the audit logs of this site's nodes), rollbacks.
    Rollout {
        /// The rollout id (or a unique prefix).
        id: String,
        /// html or json.
        #[arg(long, value_enum, default_value_t = Format::Html)]
        format: Format,
        /// Output file. Default: rollout-<id>.<ext> here.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        node: crate::NodeArgs,
    },
    /// Check a report offline (JSON, HTML or PDF): every signature over its exact bytes, and
    /// every figure recomputed from its rows. Exits 1 when anything is off.
    Verify {
        /// The report file.
        file: PathBuf,
        /// The mesh genesis: also check that admin signers are admins of the mesh.
        #[arg(long)]
        genesis: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `patchmesh report …`; returns the files written.
pub fn run(cmd: ReportCmd, now: Millis) -> anyhow::Result<()> {
    match cmd {
        ReportCmd::Compliance { since, until, framework, format, out, admin_key, node } => {
            let paths = compliance(
                &node,
                since.as_deref(),
                until.as_deref(),
                framework.as_deref(),
                format,
                out,
                admin_key.as_deref(),
                now,
            )?;
            for p in paths {
                println!("{}", p.display());
            }
            Ok(())
        }
        ReportCmd::Rollout { id, format, out, node } => {
            let p = rollout(&node, &id, format, out)?;
            println!("{}", p.display());
            Ok(())
        }
        ReportCmd::Verify { file, genesis, json } => verify(&file, genesis.as_deref(), json),
    }
}

/// Builds, signs and writes a compliance report; returns the paths written.
#[allow(clippy::too_many_arguments)]
pub fn compliance(
    node: &crate::NodeArgs,
    since: Option<&str>,
    until: Option<&str>,
    framework: Option<&str>,
    format: Format,
    out: Option<PathBuf>,
    admin_key: Option<&Path>,
    now: Millis,
) -> anyhow::Result<Vec<PathBuf>> {
    let framework = framework
        .map(|f| {
            Framework::parse(f).with_context(|| {
                format!("--framework {f:?}: use pci-dss, soc2, iso27001, hipaa or cis")
            })
        })
        .transpose()?;
    let until_ms = until.map(|u| crate::audit::parse_past(u, now)).transpose()?.unwrap_or(now).0;
    let since_ms = since
        .map(|s| crate::audit::parse_past(s, Millis(until_ms)))
        .transpose()?
        .unwrap_or(Millis(until_ms.saturating_sub(30 * 86_400_000)))
        .0;
    if since_ms >= until_ms {
        bail!("the period is empty: --since is not before --until");
    }
    let admin = admin_key
        .map(|p| crate::keys::AdminKey::load(p).with_context(|| format!("loading {}", p.display())))
        .transpose()?;
    let basis: ReportBasisView = crate::call(node, Request::ReportBasis)?;
    let mut findings = BTreeMap::new();
    for a in &basis.assets {
        let got = if a.node == basis.node {
            crate::call::<IntelView>(node, Request::Intel)
                .map(|v| FetchedFindings {
                    hostname: v.hostname,
                    findings: v.findings,
                    history: v.history,
                })
                .map_err(|e| e.to_string())
        } else if a.exposure.is_none() {
            Err("it has no intel bundle yet".to_string())
        } else {
            crate::call::<RemoteFindingsView>(node, Request::Findings { node: a.node.clone() })
                .map(|v| FetchedFindings {
                    hostname: v.hostname,
                    findings: v.findings,
                    history: v.history,
                })
                .map_err(|e| e.to_string())
        };
        if let Err(e) = &got {
            eprintln!("patchmesh: findings of {} not listed one by one: {e}", &a.node[..12]);
        }
        findings.insert(a.node.clone(), got);
    }
    let rollouts: RolloutsView = crate::call(node, Request::Rollouts)?;
    let report = report::build(&report::Input {
        basis: &basis,
        findings: &findings,
        rollouts: &rollouts,
        since_ms,
        until_ms,
        framework,
    });
    let (signed, report) = sign(node, report, admin.as_ref())?;
    let day = report::date(until_ms);
    let default = |ext: &str| PathBuf::from(format!("compliance-{day}.{ext}"));
    write_outputs(&report, &signed, format, out, default)
}

/// Signs the report body by the node (and the admin): the signed file text.
fn sign(
    node: &crate::NodeArgs,
    report: ComplianceReport,
    admin: Option<&crate::keys::AdminKey>,
) -> anyhow::Result<(String, ComplianceReport)> {
    let body = report.body();
    let hash = report::body_hash(body.as_bytes());
    let node_sig: ReportSignature =
        crate::call(node, Request::SignReport { body_hash: hex::encode(hash) })?;
    let mut sigs =
        vec![ReportSig { role: "node".into(), key: node_sig.key, signature: node_sig.signature }];
    if let Some(k) = admin {
        let e = k.sign(patchmesh_protocol::crypto::Domain::Report, &hash)?;
        sigs.push(ReportSig {
            role: "admin".into(),
            key: e.key.to_string(),
            signature: hex::encode(e.signature.0),
        });
    }
    Ok((report::file_text(&body, &sigs), report))
}

fn write_outputs(
    report: &ComplianceReport,
    signed: &str,
    format: Format,
    out: Option<PathBuf>,
    default: impl Fn(&str) -> PathBuf,
) -> anyhow::Result<Vec<PathBuf>> {
    let write = |path: &Path, bytes: &[u8]| -> anyhow::Result<PathBuf> {
        files::write_synced(path, bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok(path.to_path_buf())
    };
    let one = |f: Format, path: &Path| -> anyhow::Result<PathBuf> {
        match f {
            Format::Json => write(path, signed.as_bytes()),
            Format::Html => write(path, html::render(report, signed).as_bytes()),
            Format::Pdf => write(path, &report::pdf::render(report, signed)),
            Format::Csv => write(path, &report::csv::render(report)),
            Format::All => unreachable!("handled by the caller"),
        }
    };
    let ext = |f: Format| match f {
        Format::Json => "json",
        Format::Html => "html",
        Format::Pdf => "pdf",
        Format::Csv => "csv",
        Format::All => "",
    };
    if format == Format::All {
        let dir = out.unwrap_or_else(|| PathBuf::from("."));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let stem = default("x");
        let stem = stem
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "report".into());
        return [Format::Json, Format::Html, Format::Pdf, Format::Csv]
            .into_iter()
            .map(|f| one(f, &dir.join(format!("{stem}.{}", ext(f)))))
            .collect();
    }
    let path = out.unwrap_or_else(|| default(ext(format)));
    Ok(vec![one(format, &path)?])
}

/// The signed JSON inside a report file of any format.
fn signed_text(bytes: &[u8], file: &Path) -> anyhow::Result<String> {
    if bytes.starts_with(b"%PDF") {
        return report::pdf::extract(bytes, report::REPORT_BYTES_MAX).with_context(|| {
            format!("{}: no readable report.json attached to this PDF", file.display())
        });
    }
    let text = std::str::from_utf8(bytes)
        .with_context(|| format!("{} is neither a PDF nor text", file.display()))?;
    if text.trim_start().starts_with('<') {
        return html::extract(text, report::REPORT_BYTES_MAX).with_context(|| {
            format!("{}: no signed report embedded in this HTML", file.display())
        });
    }
    if !text.trim_start().starts_with('{') {
        bail!(
            "{} is not a signed report (a CSV export carries no signature: verify the JSON, HTML or PDF written with it)",
            file.display()
        );
    }
    Ok(text.to_string())
}

fn verify(file: &Path, genesis: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let bytes = files::read_limited(file, report::REPORT_BYTES_MAX)
        .with_context(|| format!("reading {}", file.display()))?;
    let text = signed_text(&bytes, file)?;
    let outcome = report::verify_signatures(&text, &Ed25519).and_then(|(body, sigs)| {
        let kind = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(String::from))
            .unwrap_or_default();
        if kind == "compliance" {
            let r = report::check_consistent(body)?;
            Ok((sigs, Some(r)))
        } else {
            Ok((sigs, None))
        }
    });
    let (sigs, report) = match outcome {
        Ok(x) => x,
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({"ok": false, "error": e.to_string()}));
                std::process::exit(1);
            }
            bail!("{} does not verify: {e}", file.display());
        }
    };
    let mut admin_known = Vec::new();
    if let Some(g) = genesis {
        let env = files::read_envelope(g).context("reading the genesis")?;
        let g = patchmesh_protocol::trust::Genesis::verify(&env, &Ed25519)
            .context("the genesis does not verify")?;
        for s in sigs.iter().filter(|s| s.role == "admin") {
            let known = g.admins.iter().any(|k| k.to_string() == s.key);
            if !known {
                bail!(
                    "{}: the admin signature is by {}, not an admin of this mesh's genesis",
                    file.display(),
                    s.key
                );
            }
            admin_known.push(s.key.clone());
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"ok": true, "signatures": sigs, "summary": report.as_ref().map(|r| &r.summary)})
        );
        return Ok(());
    }
    println!("OK: {} verifies", file.display());
    for s in &sigs {
        let mark = if admin_known.contains(&s.key) { " (a genesis admin)" } else { "" };
        println!("   signed by {} {}{mark}", s.role, s.key);
    }
    if let Some(r) = report {
        let s = &r.summary;
        println!(
            "   {} of mesh {}, {} to {}: {} nodes listed ({} in the fleet), {} open findings, {} overdue, SLA met {}, every figure recomputed from the rows",
            r.kind,
            r.mesh_name,
            report::date(r.since_ms),
            report::date(r.until_ms),
            s.assets_listed,
            s.assets_admitted,
            s.open,
            s.overdue,
            s.sla_all.percent.map_or("-".into(), |p| format!("{p:.1}%"))
        );
        println!(
            "   computed by node {}; audit checkpoints of {} nodes named",
            r.generated_by,
            r.basis.audit_checkpoints.len()
        );
    }
    Ok(())
}

/// One rollout's report.
#[derive(serde::Serialize)]
struct RolloutReport {
    format: u32,
    kind: &'static str,
    mesh_site: String,
    generated_by: String,
    generated_at_ms: u64,
    rollout: patchmesh_node::control::RolloutView,
    summary: report::RolloutRow,
    /// Failed steps and rollbacks from this site's nodes' audit logs: (node, at, action, exit
    /// code, detail, output tail).
    failures: Vec<(String, u64, String, Option<i64>, String, String)>,
    /// Install steps seen per node: (node, at, step).
    steps: Vec<(String, u64, String)>,
    /// Nodes whose audit log could not be read, and why.
    unread: Vec<(String, String)>,
}

/// The HTML report of one rollout into `dir` (for the demo).
pub fn rollout_report(node: &crate::NodeArgs, id: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    rollout(
        node,
        id,
        Format::Html,
        Some(dir.join(format!("rollout-{}.html", &id[..12.min(id.len())]))),
    )
}

fn rollout(
    node: &crate::NodeArgs,
    id: &str,
    format: Format,
    out: Option<PathBuf>,
) -> anyhow::Result<PathBuf> {
    let v: RolloutsView = crate::call(node, Request::Rollouts)?;
    let matches: Vec<_> = v.rollouts.iter().filter(|r| r.id.starts_with(id)).collect();
    let r = match matches.as_slice() {
        [one] => (*one).clone(),
        [] => bail!("no rollout {id} in the catalog"),
        _ => bail!("{id} matches {} rollouts: give more of the id", matches.len()),
    };
    let basis: ReportBasisView = crate::call(node, Request::ReportBasis)?;
    let (mut failures, mut steps, mut unread) = (Vec::new(), Vec::new(), Vec::new());
    for a in &basis.assets {
        let ask = Request::AuditExport {
            node: (a.node != basis.node).then(|| a.node.clone()),
            since_ms: Some(r.created_at_ms),
        };
        match crate::call::<AuditExportView>(node, ask) {
            Ok(x) => {
                for line in x.text.lines() {
                    let Ok(patchmesh_protocol::audit::Line::Entry { entry, .. }) =
                        patchmesh_protocol::audit::parse_line(line, 0)
                    else {
                        continue;
                    };
                    let ev = entry.event();
                    if ev.get("rollout").and_then(|x| x.as_str()) != Some(r.id.as_str()) {
                        continue;
                    }
                    let s = |k: &str| {
                        ev.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string()
                    };
                    match ev.get("type").and_then(|t| t.as_str()) {
                        Some("step_result")
                            if ev.get("ok") == Some(&serde_json::Value::Bool(false))
                                || s("action") == "rollback" =>
                        {
                            failures.push((
                                a.node.clone(),
                                entry.at_ms,
                                s("action"),
                                ev.get("exit_code").and_then(|c| c.as_i64()),
                                s("detail"),
                                s("output_tail"),
                            ))
                        }
                        Some("install_step") => {
                            steps.push((a.node.clone(), entry.at_ms, s("step")))
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => unread.push((a.node.clone(), e.to_string())),
        }
    }
    failures.sort_by_key(|f| f.1);
    steps.sort_by_key(|s| s.1);
    let rep = RolloutReport {
        format: 1,
        kind: "rollout",
        mesh_site: basis.site.clone(),
        generated_by: basis.node.clone(),
        generated_at_ms: basis.now_ms,
        summary: report::rollout_row(&r),
        rollout: r,
        failures,
        steps,
        unread,
    };
    let body = serde_json::to_string(&rep)?;
    let hash = report::body_hash(body.as_bytes());
    let sig: ReportSignature =
        crate::call(node, Request::SignReport { body_hash: hex::encode(hash) })?;
    let signed = report::file_text(
        &body,
        &[ReportSig { role: "node".into(), key: sig.key, signature: sig.signature }],
    );
    let short = &rep.rollout.id[..12];
    let (bytes, ext) = match format {
        Format::Json => (signed.into_bytes(), "json"),
        Format::Html => (rollout_html(&rep, &signed).into_bytes(), "html"),
        other => bail!("--format {other:?}: a rollout report is html or json"),
    };
    let path = out.unwrap_or_else(|| PathBuf::from(format!("rollout-{short}.{ext}")));
    files::write_synced(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn rollout_html(r: &RolloutReport, signed: &str) -> String {
    use html::esc;
    use std::fmt::Write;
    let s = &r.summary;
    let mut o = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Rollout {}</title><style>body{{font-family:Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}table{{border-collapse:collapse;width:100%;font-size:.85em}}td,th{{border-bottom:1px solid #eee;padding:.3em;text-align:left;vertical-align:top}}pre{{background:#f5f7fa;padding:.5em;white-space:pre-wrap;font-size:.8em}}</style></head><body>",
        esc(&s.id[..12])
    );
    let _ = write!(
        o,
        "<h1>Rollout {} – {}</h1><p>Created {} by <code>{}</code>. State: <b>{}</b>. Approvals: {}.</p><p>Signed by node <code>{}</code>; check with <code>patchmesh report verify</code>.</p>",
        esc(&s.id[..12]),
        esc(&s.patch),
        report::datetime(s.created_ms),
        esc(&s.author[..12.min(s.author.len())]),
        esc(&s.state),
        s.approvals.map_or("-".into(), |a| a.to_string()),
        esc(&r.generated_by[..12])
    );
    o.push_str("<h2>Rings</h2><table><tr><th>Ring</th><th>Gate</th><th>Targeted</th><th>Succeeded</th><th>Failed</th><th>Rolled back</th></tr>");
    for (g, ring) in r.rollout.rings.iter().zip(&s.rings) {
        let gate = &g.gate;
        let words = format!(
            "≥ {:.1}% succeeded, ≤ {} failures (≤ {:.1}%), soak {} s, ≥ {} reports",
            gate.min_success_permille as f64 / 10.0,
            gate.max_failures,
            gate.max_failure_permille as f64 / 10.0,
            gate.min_soak_ms / 1000,
            gate.min_reports
        );
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&ring.0),
            esc(&words),
            ring.1,
            ring.2,
            ring.3,
            ring.4
        );
    }
    o.push_str("</table><h2>Admin commands</h2><ul>");
    for (a, who, at) in &s.commands {
        let _ = write!(
            o,
            "<li>{} by <code>{}</code> at {}</li>",
            esc(a),
            esc(&who[..12.min(who.len())]),
            report::datetime(*at)
        );
    }
    if s.commands.is_empty() {
        o.push_str("<li>none</li>");
    }
    let _ = write!(
        o,
        "</ul><h2>Failures and rollbacks ({}), from the audit logs of site {}</h2><p>Nodes of other sites are counted in the rings above; their output is in their site's audit logs (run this report on a node there).</p>",
        r.failures.len(),
        esc(&r.mesh_site)
    );
    for (node, at, action, code, detail, tail) in &r.failures {
        let _ = write!(
            o,
            "<h3>{} on <code>{}</code> at {}{}</h3><p>{}</p>",
            esc(action),
            esc(&node[..12]),
            report::datetime(*at),
            code.map_or(String::new(), |c| format!(" (exit {c})")),
            esc(detail)
        );
        if !tail.trim().is_empty() {
            let _ = write!(o, "<pre>{}</pre>", esc(tail));
        }
    }
    let _ = write!(
        o,
        "<h2>Install steps ({})</h2><table><tr><th>At</th><th>Node</th><th>Step</th></tr>",
        r.steps.len()
    );
    for (node, at, step) in &r.steps {
        let _ = write!(
            o,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            report::datetime(*at),
            esc(&node[..12]),
            esc(step)
        );
    }
    o.push_str("</table>");
    if !r.unread.is_empty() {
        o.push_str("<h2>Audit logs not read</h2><ul>");
        for (n, why) in &r.unread {
            let _ = write!(o, "<li><code>{}</code>: {}</li>", esc(&n[..12]), esc(why));
        }
        o.push_str("</ul>");
    }
    o.push_str(&html::embed(signed));
    o.push_str("</body></html>\n");
    o
}
