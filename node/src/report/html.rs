//! A compliance report as one self-contained HTML file: no scripts run, no external resources
//! (styles inline, charts as inline SVG), and the signed JSON embedded in a
//! `<script type="application/json" id="patchmesh-report">` element so the file an auditor
//! reads is also the file they verify (`patchmesh report verify report.html`). Above
//! [`EMBED_PLAIN_MAX`] the JSON is embedded gzip-compressed and base64-encoded
//! (`data-encoding="gzip+base64"`), so a big fleet's report stays a file a browser opens.

use super::{date, datetime, ComplianceReport, Sla};
use std::fmt::Write;

/// Findings listed in the HTML (all of them are in the JSON and CSV).
pub const FINDINGS_SHOWN_MAX: usize = 5_000;
/// The id of the element holding the signed JSON.
pub const EMBED_ID: &str = "patchmesh-report";
/// Largest signed JSON embedded as plain text.
pub const EMBED_PLAIN_MAX: usize = 1024 * 1024;

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |p| format!("{p:.1}%"))
}

const STYLE: &str = "body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#1d2330;padding:0 1em}\
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;border-bottom:2px solid #dfe3ea;padding-bottom:.2em;margin-top:2em}\
.meta{color:#5b6475}.cards{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}\
.card{border:1px solid #dfe3ea;border-radius:6px;padding:.7em 1em;min-width:9em}.card b{display:block;font-size:1.6em}\
.card span{color:#5b6475;font-size:.85em}.bad b{color:#b42318}.good b{color:#067647}\
table{border-collapse:collapse;width:100%;font-size:.85em;margin:.5em 0}th,td{border-bottom:1px solid #eceff4;padding:.3em .5em;text-align:left;vertical-align:top}\
th{background:#f5f7fa}td.num,th.num{text-align:right}.tag{border-radius:3px;padding:0 .35em;font-size:.85em}\
.open{background:#fee4e2}.closed{background:#dcfae6}.excepted{background:#fef0c7}.kev{background:#b42318;color:#fff}\
.verify{background:#f5f7fa;border-left:4px solid #2e5aac;padding:.6em 1em}code{font-size:.9em}.note{color:#5b6475;font-size:.85em}\
svg text{font-size:11px;fill:#1d2330}";

fn card(out: &mut String, value: &str, label: &str, class: &str) {
    let _ = write!(
        out,
        "<div class=\"card {class}\"><b>{}</b><span>{}</span></div>",
        esc(value),
        esc(label)
    );
}

/// A bar chart of labelled series (inline SVG).
fn bars(title: &str, labels: &[String], series: &[(&str, &str, Vec<u32>)]) -> String {
    let n = labels.len().max(1);
    let max = series.iter().flat_map(|s| s.2.iter()).copied().max().unwrap_or(0).max(1);
    let (w, h, left, bottom) = (760.0, 180.0, 40.0, 36.0);
    let slot = (w - left) / n as f64;
    let bw = (slot * 0.8 / series.len().max(1) as f64).clamp(1.0, 36.0);
    let mut s = format!("<figure><figcaption><b>{}</b> ", esc(title));
    for (name, color, _) in series {
        let _ = write!(s, "<span style=\"color:{color}\">■</span> {} ", esc(name));
    }
    let _ = write!(
        s,
        "</figcaption><svg width=\"{w}\" height=\"{}\" role=\"img\" aria-label=\"{}\">",
        h + bottom,
        esc(title)
    );
    let _ = write!(s, "<line x1=\"{left}\" y1=\"{h}\" x2=\"{w}\" y2=\"{h}\" stroke=\"#999\"/>");
    let _ = write!(s, "<text x=\"0\" y=\"12\">{max}</text><text x=\"0\" y=\"{h}\">0</text>");
    let every = (n / 12).max(1);
    for (i, label) in labels.iter().enumerate() {
        let x0 = left + i as f64 * slot;
        for (k, (_, color, values)) in series.iter().enumerate() {
            let v = values.get(i).copied().unwrap_or(0);
            let bh = h * v as f64 / max as f64;
            let _ = write!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{bh:.1}\" fill=\"{color}\"><title>{}: {v}</title></rect>",
                x0 + slot * 0.1 + k as f64 * bw,
                h - bh,
                esc(label)
            );
        }
        if i % every == 0 {
            let _ = write!(
                s,
                "<text x=\"{:.1}\" y=\"{}\">{}</text>",
                x0 + slot * 0.1,
                h + 14.0,
                esc(label)
            );
        }
    }
    s.push_str("</svg></figure>");
    s
}

fn sla_row(out: &mut String, name: &str, s: &Sla) {
    let _ = write!(
        out,
        "<tr><td>{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td></tr>",
        esc(name),
        s.counted,
        s.met,
        pct(s.percent)
    );
}

/// Renders the report; `signed_json` is the signed file, embedded as is.
pub fn render(r: &ComplianceReport, signed_json: &str) -> String {
    let s = &r.summary;
    let mut o = String::with_capacity(
        64 * 1024 + r.findings.len().min(FINDINGS_SHOWN_MAX) * 600 + signed_json.len(),
    );
    let framework = r.framework.map_or("all frameworks".to_string(), |f| f.name().to_string());
    let _ = write!(
        o,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Patch compliance report – {}</title>\
         <meta name=\"viewport\" content=\"width=device-width\"><style>{STYLE}</style></head><body>",
        esc(&r.mesh_name)
    );
    let _ = write!(
        o,
        "<h1>Patch compliance report – {}</h1><p class=meta>Period {} to {} · {} · generated {} by node <code>{}</code> (site {})</p>",
        esc(&r.mesh_name),
        date(r.since_ms),
        date(r.until_ms),
        esc(&framework),
        datetime(r.generated_at_ms),
        esc(short(&r.generated_by)),
        esc(&r.generated_site)
    );
    let _ = write!(
        o,
        "<div class=verify><b>This report is signed.</b> Check it with <code>patchmesh report verify {{this file}}</code>: \
         the signatures cover the JSON embedded in this file, and every figure below is recomputed from its rows. \
         It was computed from catalog state <code>{}</code>, intel bundle <code>{}</code> and the audit checkpoints of {} nodes \
         (listed at the end), against which each node's audit log can be checked with <code>patchmesh audit verify</code>.</div>",
        esc(short(&r.basis.catalog_state)),
        esc(r.basis.bundle.as_deref().map_or("none", short)),
        r.basis.audit_checkpoints.len()
    );

    o.push_str("<h2 id=summary>Summary</h2><div class=cards>");
    card(
        &mut o,
        &pct(s.coverage_percent),
        &format!(
            "coverage: {} of {} listed nodes reported in 24 h",
            s.assets_reporting_24h, s.assets_listed
        ),
        if s.coverage_percent.unwrap_or(0.0) >= 95.0 { "good" } else { "bad" },
    );
    card(&mut o, &s.open.to_string(), "open findings", if s.open == 0 { "good" } else { "" });
    card(&mut o, &s.overdue.to_string(), "overdue", if s.overdue == 0 { "good" } else { "bad" });
    card(
        &mut o,
        &s.kev_open.to_string(),
        "open on the KEV catalog",
        if s.kev_open == 0 { "good" } else { "bad" },
    );
    card(
        &mut o,
        &pct(s.sla_all.percent),
        &format!("within SLA ({} of {})", s.sla_all.met, s.sla_all.counted),
        if s.sla_all.percent.unwrap_or(100.0) >= 95.0 { "good" } else { "bad" },
    );
    card(&mut o, &s.closed_in_period.to_string(), "remediated in period", "");
    card(
        &mut o,
        &s.mttr_days_mean.map_or("–".into(), |d| format!("{d:.1} d")),
        &format!(
            "mean time to remediate (p90 {})",
            s.mttr_days_p90.map_or("–".into(), |d| format!("{d:.1} d"))
        ),
        "",
    );
    card(&mut o, &s.exceptions_active.to_string(), "exceptions in force", "");
    card(&mut o, &format!("{} / {}", s.rollouts, s.rollouts_halted), "rollouts / halted", "");
    card(&mut o, &s.rolled_back.to_string(), "installs rolled back", "");
    card(&mut o, &s.assets_admitted.to_string(), "nodes in the fleet", "");
    o.push_str("</div>");
    if s.assets_admitted > s.assets_listed {
        let _ = write!(
            o,
            "<p class=note>{} nodes of site {} are listed one by one; the other {} are counted from their sites' signed summaries (section Sites). \
             Run the report on a node of another site for its nodes one by one.</p>",
            s.assets_listed,
            esc(&r.generated_site),
            s.assets_admitted - s.assets_listed
        );
    }

    let weeks: Vec<String> = r.trend.iter().map(|t| date(t.week_ms)[5..].to_string()).collect();
    o.push_str(&bars(
        "Findings remediated per week, and how many within SLA",
        &weeks,
        &[
            ("opened", "#98a2b3", r.trend.iter().map(|t| t.opened).collect()),
            ("remediated", "#2e5aac", r.trend.iter().map(|t| t.closed).collect()),
            ("within SLA", "#067647", r.trend.iter().map(|t| t.within_sla).collect()),
        ],
    ));
    o.push_str(&bars(
        "Open findings by age (days since first seen)",
        &["0–7".into(), "8–30".into(), "31–90".into(), ">90".into()],
        &[("open", "#b42318", s.ageing.to_vec())],
    ));

    o.push_str("<h2 id=sla>SLA by severity</h2><table><tr><th>Severity</th><th class=num>With a due date</th><th class=num>Met</th><th class=num>Percent</th></tr>");
    for (name, sla) in &s.sla_by_severity {
        sla_row(&mut o, name, sla);
    }
    sla_row(&mut o, "all", &s.sla_all);
    o.push_str("</table><p class=note>A finding counts when it was remediated in the period or is still open; it meets its SLA when remediated by its due date (open ones: not yet past it). Due dates follow the due class of each finding (BOD 22-01 / 26-04 style: KEV and critical first).</p>");
    let due: std::collections::BTreeMap<String, u32> =
        s.open_by_due.iter().map(|(k, v)| (super::due_words(k).to_string(), *v)).collect();
    let _ = write!(
        o,
        "<p>Open by severity: {}. Open by due class: {}.</p>",
        esc(&kv(&s.open_by_severity)),
        esc(&kv(&due))
    );

    o.push_str("<h2 id=controls>Control mapping</h2><table><tr><th>Framework</th><th>Clause</th><th>Requirement</th><th>Evidence in this report</th></tr>");
    for c in &r.controls {
        let ev: Vec<String> =
            c.evidence.iter().map(|e| format!("<a href=\"#{0}\">{0}</a>", esc(e))).collect();
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.framework),
            esc(&c.clause),
            esc(&c.title),
            ev.join(", ")
        );
    }
    o.push_str("</table>");

    let _ = write!(o, "<h2 id=assets>Assets ({})</h2><table><tr><th>Node</th><th>Host</th><th>Site</th><th>OS</th><th>Ring</th><th>Last inventory</th><th>Bundle age</th><th class=num>Open</th><th>By due class</th><th>Oldest overdue</th><th>Last patch</th></tr>", r.assets.len());
    for a in &r.assets {
        let _ = write!(
            o,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td class=num>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(short(&a.node)),
            esc(&a.hostname),
            esc(&a.site),
            esc(&a.os),
            esc(a.ring.as_deref().unwrap_or("")),
            datetime(a.last_inventory_ms),
            if a.reporting { "" } else { " <span class=\"tag open\">silent &gt;24 h</span>" },
            a.bundle_age_days.map_or("no bundle".into(), |d| format!("{d} d")),
            a.open,
            esc(&kv(&a.open_by_due)),
            a.oldest_overdue_days.map_or("–".into(), |d| format!("{d} d")),
            a.last_patch.as_ref().map_or("–".into(), |(_, p)| esc(p)),
        );
        if let Some(note) = &a.findings_note {
            let _ = write!(o, "<tr><td></td><td colspan=10 class=note>Findings not listed one by one: {}</td></tr>", esc(note));
        }
    }
    o.push_str("</table>");

    let _ = write!(o, "<h2 id=findings>Findings ({})</h2>", r.findings.len());
    if r.findings.len() > FINDINGS_SHOWN_MAX {
        let _ = write!(o, "<p class=note>The first {FINDINGS_SHOWN_MAX} are listed (open first); all {} are in the embedded JSON and the CSV.</p>", r.findings.len());
    }
    o.push_str("<table><tr><th>CVE</th><th>Host</th><th>Package</th><th>Installed</th><th>Fixed in</th><th>Status</th><th>Severity</th><th>Due class</th><th>First seen</th><th>Fix since</th><th>Due</th><th>Remediated</th><th class=num>Days</th><th>SLA</th></tr>");
    for f in r.findings.iter().take(FINDINGS_SHOWN_MAX) {
        let _ = write!(
            o,
            "<tr><td>{}{}</td><td>{}</td><td>{}<br><span class=note>{}</span></td><td>{}</td><td>{}</td><td><span class=\"tag {}\">{}</span>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=num>{}</td><td>{}</td></tr>",
            esc(&f.cve),
            if f.kev { " <span class=\"tag kev\">KEV</span>" } else { "" },
            esc(if f.hostname.is_empty() { short(&f.node) } else { &f.hostname }),
            esc(&f.source),
            esc(&f.binaries.join(", ")),
            esc(&f.installed),
            esc(f.fixed_version.as_deref().unwrap_or("–")),
            esc(&f.status),
            esc(&f.status),
            f.exception.as_ref().map_or(String::new(), |e| format!("<br><span class=note>{}</span>", esc(e))),
            esc(&f.severity),
            esc(super::due_words(&f.due_class)),
            date(f.first_seen_ms),
            f.fix_available_since_ms.map_or("–".into(), date),
            f.due_at_ms.map_or("–".into(), date),
            f.remediated_at_ms.map_or("–".into(), date),
            f.remediation_days.map_or("–".into(), |d| format!("{d:.1}")),
            match f.sla_met {
                Some(true) => "met",
                Some(false) => "<b>missed</b>",
                None => "–",
            },
        );
    }
    o.push_str("</table>");

    let _ = write!(o, "<h2 id=exceptions>Exceptions ({})</h2><table><tr><th>CVE</th><th>Scope</th><th>Kind</th><th>Justification</th><th>Compensating control</th><th>Approved by</th><th>Created</th><th>Expires</th></tr>", r.exceptions.len());
    for e in &r.exceptions {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}{}</td></tr>",
            esc(&e.cve),
            esc(&e.scope),
            esc(&e.kind),
            esc(&e.justification),
            esc(e.compensating_control.as_deref().unwrap_or("–")),
            esc(short(&e.approver)),
            date(e.created_ms),
            date(e.expires_ms),
            if e.active { "" } else { " (expired)" }
        );
    }
    o.push_str("</table>");

    let _ = write!(o, "<h2 id=coverage>Sites ({})</h2><table><tr><th>Site</th><th class=num>Members</th><th class=num>Assessed</th><th>Open by due class</th><th class=num>KEV</th></tr>", r.sites.len() + 1);
    let _ = write!(o, "<tr><td>{} (this report's site)</td><td class=num>{}</td><td class=num>{}</td><td>{}</td><td class=num>{}</td></tr>", esc(&r.generated_site), r.assets.len(), r.assets.iter().filter(|a| a.bundle.is_some()).count(), esc(&kv(&s.open_by_due)), s.kev_open);
    for site in &r.sites {
        let _ = write!(o, "<tr><td>{}</td><td class=num>{}</td><td class=num>{}</td><td>{}</td><td class=num>{}</td></tr>", esc(&site.site), site.members, site.assessed, esc(&kv(&site.open_by_due)), site.kev);
    }
    o.push_str("</table>");

    let _ = write!(o, "<h2 id=rollouts>Rollouts ({})</h2><table><tr><th>Rollout</th><th>Patch</th><th>Created</th><th>State</th><th>Rings (targeted / succeeded / failed / rolled back)</th><th>Admin commands</th></tr>", r.rollouts.len());
    for ro in &r.rollouts {
        let rings: Vec<String> = ro
            .rings
            .iter()
            .map(|(n, t, s, f, b)| format!("{}: {t} / {s} / {f} / {b}", esc(n)))
            .collect();
        let cmds: Vec<String> = ro
            .commands
            .iter()
            .map(|(a, who, at)| format!("{} by {} at {}", esc(a), esc(short(who)), datetime(*at)))
            .collect();
        let _ = write!(
            o,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(short(&ro.id)),
            esc(&ro.patch),
            datetime(ro.created_ms),
            esc(&ro.state),
            rings.join("<br>"),
            if cmds.is_empty() { "–".into() } else { cmds.join("<br>") }
        );
    }
    o.push_str("</table>");

    o.push_str("<h2 id=basis>What this report was computed from</h2>");
    let _ = write!(
        o,
        "<p>Catalog state <code>{}</code>; records root of site {} <code>{}</code>; intel bundle <code>{}</code> (made {}).</p>",
        esc(&r.basis.catalog_state),
        esc(&r.generated_site),
        esc(&r.basis.records_root),
        esc(r.basis.bundle.as_deref().unwrap_or("none")),
        if r.basis.bundle_created_at_ms > 0 { datetime(r.basis.bundle_created_at_ms) } else { "–".into() }
    );
    o.push_str("<table><tr><th>Node</th><th class=num>Audit entry</th><th>Head</th><th>Signed</th><th>Check with</th></tr>");
    for c in &r.basis.audit_checkpoints {
        let _ = write!(
            o,
            "<tr><td><code>{}</code></td><td class=num>{}</td><td><code>{}</code></td><td>{}</td><td><code>patchmesh audit verify LOG --checkpoint {}:{}</code></td></tr>",
            esc(short(&c.node)),
            c.seq,
            esc(short(&c.head)),
            datetime(c.at_ms),
            c.seq,
            esc(&c.head)
        );
    }
    o.push_str("</table>");
    o.push_str(&embed(signed_json));
    o.push_str("</body></html>\n");
    o
}

fn kv(m: &std::collections::BTreeMap<String, u32>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
}

/// The element carrying the signed JSON: plain (with `</` written `<\/`, the same string to a
/// JSON parser, so it cannot close the element) or, when large, gzip + base64.
pub fn embed(json: &str) -> String {
    let json = json.trim_end();
    if json.len() <= EMBED_PLAIN_MAX {
        return format!(
            "<script type=\"application/json\" id=\"{EMBED_ID}\">{}</script>",
            json.replace("</", "<\\/")
        );
    }
    use base64::Engine;
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = gz.write_all(json.as_bytes());
    let packed = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap_or_default());
    format!("<script type=\"application/octet-stream\" id=\"{EMBED_ID}\" data-encoding=\"gzip+base64\">{packed}</script>")
}

/// The signed JSON embedded in an HTML report, as it was signed (`limit`: largest JSON
/// unpacked).
pub fn extract(html: &str, limit: u64) -> Option<String> {
    let marker = format!("id=\"{EMBED_ID}\"");
    let at = html.rfind(&marker)?;
    let tag_start = html[..at].rfind("<script")?;
    let tag_end = at + html[at..].find('>')?;
    let start = tag_end + 1;
    let end = start + html[start..].find("</script>")?;
    let body = &html[start..end];
    if !html[tag_start..tag_end].contains("data-encoding=\"gzip+base64\"") {
        return Some(body.replace("<\\/", "</"));
    }
    use base64::Engine;
    use std::io::Read as _;
    let packed = base64::engine::general_purpose::STANDARD.decode(body.trim()).ok()?;
    let mut out = String::new();
    flate2::read::GzDecoder::new(&packed[..]).take(limit).read_to_string(&mut out).ok()?;
    Some(out)
}
