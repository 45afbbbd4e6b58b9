//! A compliance report as PDF, written in process with `pdf-writer`: A4 landscape pages, the
//! summary page first, charts drawn as vector bars, tables after, and the signed JSON attached
//! as `report.json` (so the PDF carries what `report verify` checks).
//!
//! Text uses the standard Helvetica fonts every PDF reader has (WinAnsi encoding), so no font
//! file is bundled; characters outside Latin-1 print as `?`. That also means the file is not
//! PDF/A (which requires embedded fonts).

use super::{date, datetime, ComplianceReport};
use pdf_writer::{Content, Filter, Finish, Name, Pdf, Rect, Ref, Str, TextStr};

const W: f32 = 842.0;
const H: f32 = 595.0;
const MARGIN: f32 = 36.0;
/// Findings listed in the PDF (all are in the attached JSON).
pub const FINDINGS_SHOWN_MAX: usize = 2_000;

/// Text as WinAnsi bytes (Latin-1 here; anything else becomes `?`).
fn win(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| match c {
            '–' | '—' => b'-',
            '·' => 0xB7,
            '≥' => b'>',
            '’' => b'\'',
            c if (c as u32) >= 0x20 && (c as u32) < 0x7F => c as u8,
            c if (c as u32) >= 0xA0 && (c as u32) <= 0xFF => c as u32 as u8,
            _ => b'?',
        })
        .collect()
}

/// Cuts text to about `width` points at `size` (Helvetica averages about half its size).
fn fit(s: &str, width: f32, size: f32) -> String {
    let max = ((width / (size * 0.5)) as usize).max(3);
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 2).collect();
        t.push_str("..");
        t
    }
}

struct Doc {
    pages: Vec<Content>,
    y: f32,
}

impl Doc {
    fn new() -> Doc {
        let mut d = Doc { pages: Vec::new(), y: 0.0 };
        d.page();
        d
    }
    fn page(&mut self) {
        self.pages.push(Content::new());
        self.y = H - MARGIN;
    }
    fn room(&mut self, h: f32) {
        if self.y - h < MARGIN {
            self.page();
        }
    }
    fn c(&mut self) -> &mut Content {
        self.pages.last_mut().expect("a page")
    }
    fn text_at(&mut self, x: f32, y: f32, font: &[u8], size: f32, s: &str) {
        let bytes = win(s);
        let c = self.c();
        c.begin_text();
        c.set_font(Name(font), size);
        c.next_line(x, y);
        c.show(Str(&bytes));
        c.end_text();
    }
    fn line(&mut self, font: &[u8], size: f32, s: &str) {
        self.room(size * 1.5);
        self.y -= size * 1.4;
        let y = self.y;
        self.text_at(MARGIN, y, font, size, s);
    }
    fn heading(&mut self, s: &str) {
        self.room(60.0);
        self.y -= 10.0;
        self.line(b"F2", 14.0, s);
        self.y -= 4.0;
    }
    fn para(&mut self, s: &str) {
        // Wrap at about the page width.
        let max = ((W - 2.0 * MARGIN) / (9.0 * 0.5)) as usize;
        let mut cur = String::new();
        for word in s.split_whitespace() {
            if cur.len() + word.len() + 1 > max && !cur.is_empty() {
                self.line(b"F1", 9.0, &cur);
                cur.clear();
            }
            if !cur.is_empty() {
                cur.push(' ');
            }
            cur.push_str(word);
        }
        if !cur.is_empty() {
            self.line(b"F1", 9.0, &cur);
        }
    }
    /// A table: column widths (points), a header, rows.
    fn table(&mut self, widths: &[f32], header: &[&str], rows: impl Iterator<Item = Vec<String>>) {
        let size = 7.5;
        let head = |d: &mut Doc| {
            d.room(size * 3.0);
            d.y -= size * 1.6;
            let y = d.y;
            let mut x = MARGIN;
            for (w, h) in widths.iter().zip(header) {
                d.text_at(x, y, b"F2", size, &fit(h, *w - 4.0, size));
                x += w;
            }
        };
        head(self);
        for row in rows {
            if self.y - size * 1.5 < MARGIN {
                self.page();
                head(self);
            }
            self.y -= size * 1.45;
            let y = self.y;
            let mut x = MARGIN;
            for (w, cell) in widths.iter().zip(&row) {
                self.text_at(x, y, b"F1", size, &fit(cell, *w - 4.0, size));
                x += w;
            }
        }
        self.y -= 4.0;
    }
    /// Bars for labelled series.
    fn bars(
        &mut self,
        title: &str,
        labels: &[String],
        series: &[(&str, (f32, f32, f32), Vec<u32>)],
    ) {
        let h = 110.0;
        self.room(h + 50.0);
        self.line(b"F2", 9.0, title);
        let mut x = MARGIN + 200.0;
        for (name, (r, g, b), _) in series {
            let y = self.y;
            let c = self.c();
            c.set_fill_rgb(*r, *g, *b);
            c.rect(x, y, 7.0, 7.0);
            c.fill_nonzero();
            c.set_fill_rgb(0.0, 0.0, 0.0);
            self.text_at(x + 10.0, y, b"F1", 8.0, name);
            x += 90.0;
        }
        self.y -= h + 8.0;
        let base = self.y;
        let n = labels.len().max(1) as f32;
        let width = W - 2.0 * MARGIN - 30.0;
        let slot = width / n;
        let max = series.iter().flat_map(|s| s.2.iter()).copied().max().unwrap_or(0).max(1) as f32;
        let bw = (slot * 0.8 / series.len().max(1) as f32).clamp(0.5, 30.0);
        self.text_at(MARGIN, base + h - 6.0, b"F1", 7.0, &format!("{max}"));
        self.text_at(MARGIN, base, b"F1", 7.0, "0");
        let every = ((n as usize) / 12).max(1);
        for (i, label) in labels.iter().enumerate() {
            let x0 = MARGIN + 30.0 + i as f32 * slot;
            for (k, (_, (r, g, b), values)) in series.iter().enumerate() {
                let v = values.get(i).copied().unwrap_or(0) as f32;
                let c = self.c();
                c.set_fill_rgb(*r, *g, *b);
                c.rect(x0 + slot * 0.1 + k as f32 * bw, base, bw, h * v / max);
                c.fill_nonzero();
            }
            self.c().set_fill_rgb(0.0, 0.0, 0.0);
            if i % every == 0 {
                self.text_at(x0 + slot * 0.1, base - 10.0, b"F1", 7.0, label);
            }
        }
        self.y -= 16.0;
    }
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |p| format!("{p:.1}%"))
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The attached `report.json` of a PDF this module wrote (compressed, in the stream after the
/// `/EmbeddedFile` dictionary), at most `limit` bytes unpacked.
pub fn extract(pdf: &[u8], limit: u64) -> Option<String> {
    use std::io::Read;
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let ty = find(pdf, b"/Type /EmbeddedFile")?;
    let start = ty + find(&pdf[ty..], b"stream\n")? + b"stream\n".len();
    let end = start + find(&pdf[start..], b"\nendstream")?;
    let mut out = String::new();
    flate2::read::ZlibDecoder::new(&pdf[start..end]).take(limit).read_to_string(&mut out).ok()?;
    Some(out)
}

/// Renders the report; `signed_json` is attached as `report.json`.
pub fn render(r: &ComplianceReport, signed_json: &str) -> Vec<u8> {
    let s = &r.summary;
    let mut d = Doc::new();
    let framework = r.framework.map_or("all frameworks".to_string(), |f| f.name().to_string());
    d.line(b"F2", 18.0, &format!("Patch compliance report - {}", r.mesh_name));
    d.line(
        b"F1",
        9.0,
        &format!(
            "Period {} to {} · {} · generated {} by node {} (site {})",
            date(r.since_ms),
            date(r.until_ms),
            framework,
            datetime(r.generated_at_ms),
            short(&r.generated_by),
            r.generated_site
        ),
    );
    d.y -= 6.0;
    d.para(&format!(
        "This report is signed; the signed JSON is attached to this PDF as report.json. Check it with: patchmesh report verify FILE. \
         Computed from catalog state {}, intel bundle {} and the audit checkpoints of {} nodes.",
        short(&r.basis.catalog_state),
        r.basis.bundle.as_deref().map_or("none", short),
        r.basis.audit_checkpoints.len()
    ));
    d.heading("Summary");
    let lines = [
        format!(
            "Coverage: {} ({} of {} listed nodes reported within 24 h; {} nodes in the fleet)",
            pct(s.coverage_percent),
            s.assets_reporting_24h,
            s.assets_listed,
            s.assets_admitted
        ),
        format!(
            "Open findings: {}   Overdue: {}   Open on the KEV catalog: {}   Excepted: {}",
            s.open, s.overdue, s.kev_open, s.excepted
        ),
        format!(
            "Within SLA: {} ({} of {})   Remediated in period: {}",
            pct(s.sla_all.percent),
            s.sla_all.met,
            s.sla_all.counted,
            s.closed_in_period
        ),
        format!(
            "Mean time to remediate: {}   p90: {}",
            s.mttr_days_mean.map_or("-".into(), |x| format!("{x:.1} days")),
            s.mttr_days_p90.map_or("-".into(), |x| format!("{x:.1} days"))
        ),
        format!(
            "Exceptions in force: {}   Rollouts: {} (halted {}; installs rolled back {})",
            s.exceptions_active, s.rollouts, s.rollouts_halted, s.rolled_back
        ),
    ];
    for l in &lines {
        d.line(b"F1", 10.0, l);
    }
    d.y -= 6.0;
    d.table(
        &[120.0, 110.0, 80.0, 80.0],
        &["SLA by severity", "With a due date", "Met", "Percent"],
        s.sla_by_severity.iter().map(|(k, v)| (k.as_str(), v)).chain([("all", &s.sla_all)]).map(
            |(k, v)| vec![k.to_string(), v.counted.to_string(), v.met.to_string(), pct(v.percent)],
        ),
    );
    let weeks: Vec<String> = r.trend.iter().map(|t| date(t.week_ms)[5..].to_string()).collect();
    d.bars(
        "Findings remediated per week, and how many within SLA",
        &weeks,
        &[
            ("opened", (0.6, 0.64, 0.7), r.trend.iter().map(|t| t.opened).collect()),
            ("remediated", (0.18, 0.35, 0.67), r.trend.iter().map(|t| t.closed).collect()),
            ("within SLA", (0.03, 0.46, 0.28), r.trend.iter().map(|t| t.within_sla).collect()),
        ],
    );
    d.bars(
        "Open findings by age (days since first seen)",
        &["0-7".into(), "8-30".into(), "31-90".into(), ">90".into()],
        &[("open", (0.7, 0.14, 0.1), s.ageing.to_vec())],
    );

    d.heading("Control mapping");
    d.table(
        &[110.0, 110.0, 380.0, 170.0],
        &["Framework", "Clause", "Requirement", "Evidence (sections)"],
        r.controls.iter().map(|c| {
            vec![c.framework.clone(), c.clause.clone(), c.title.clone(), c.evidence.join(", ")]
        }),
    );

    d.heading(&format!("Assets ({})", r.assets.len()));
    d.table(
        &[70.0, 80.0, 60.0, 130.0, 45.0, 95.0, 45.0, 35.0, 95.0, 50.0, 65.0],
        &[
            "Node",
            "Host",
            "Site",
            "OS",
            "Ring",
            "Last inventory",
            "Bundle",
            "Open",
            "By due class",
            "Overdue",
            "Last patch",
        ],
        r.assets.iter().map(|a| {
            vec![
                short(&a.node).to_string(),
                a.hostname.clone(),
                a.site.clone(),
                a.os.clone(),
                a.ring.clone().unwrap_or_default(),
                datetime(a.last_inventory_ms) + if a.reporting { "" } else { " (silent)" },
                a.bundle_age_days.map_or("none".into(), |x| format!("{x} d")),
                a.open.to_string(),
                a.open_by_due.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(" "),
                a.oldest_overdue_days.map_or("-".into(), |x| format!("{x} d")),
                a.last_patch.as_ref().map_or("-".into(), |(_, p)| p.clone()),
            ]
        }),
    );

    d.heading(&format!("Findings ({})", r.findings.len()));
    if r.findings.len() > FINDINGS_SHOWN_MAX {
        d.para(&format!("The first {FINDINGS_SHOWN_MAX} are listed (open first); all {} are in the attached JSON.", r.findings.len()));
    }
    d.table(
        &[85.0, 70.0, 75.0, 75.0, 75.0, 45.0, 45.0, 35.0, 55.0, 55.0, 55.0, 55.0, 30.0, 35.0],
        &[
            "CVE",
            "Host",
            "Package",
            "Installed",
            "Fixed in",
            "Status",
            "Severity",
            "Due",
            "First seen",
            "Fix since",
            "Due date",
            "Remediated",
            "Days",
            "SLA",
        ],
        r.findings.iter().take(FINDINGS_SHOWN_MAX).map(|f| {
            vec![
                format!("{}{}", f.cve, if f.kev { " KEV" } else { "" }),
                if f.hostname.is_empty() { short(&f.node).to_string() } else { f.hostname.clone() },
                f.source.clone(),
                f.installed.clone(),
                f.fixed_version.clone().unwrap_or_else(|| "-".into()),
                f.status.clone(),
                f.severity.clone(),
                f.due_class.clone(),
                date(f.first_seen_ms),
                f.fix_available_since_ms.map_or("-".into(), date),
                f.due_at_ms.map_or("-".into(), date),
                f.remediated_at_ms.map_or("-".into(), date),
                f.remediation_days.map_or("-".into(), |x| format!("{x:.1}")),
                match f.sla_met {
                    Some(true) => "met".into(),
                    Some(false) => "MISSED".into(),
                    None => "-".into(),
                },
            ]
        }),
    );

    d.heading(&format!("Exceptions ({})", r.exceptions.len()));
    d.table(
        &[85.0, 110.0, 70.0, 190.0, 130.0, 70.0, 55.0, 60.0],
        &[
            "CVE",
            "Scope",
            "Kind",
            "Justification",
            "Compensating control",
            "Approved by",
            "Created",
            "Expires",
        ],
        r.exceptions.iter().map(|e| {
            vec![
                e.cve.clone(),
                e.scope.clone(),
                e.kind.clone(),
                e.justification.clone(),
                e.compensating_control.clone().unwrap_or_else(|| "-".into()),
                short(&e.approver).to_string(),
                date(e.created_ms),
                date(e.expires_ms) + if e.active { "" } else { " (expired)" },
            ]
        }),
    );

    d.heading(&format!("Rollouts ({})", r.rollouts.len()));
    d.table(
        &[70.0, 110.0, 90.0, 150.0, 200.0, 150.0],
        &[
            "Rollout",
            "Patch",
            "Created",
            "State",
            "Rings: targeted/succeeded/failed/rolled back",
            "Admin commands",
        ],
        r.rollouts.iter().map(|ro| {
            vec![
                short(&ro.id).to_string(),
                ro.patch.clone(),
                datetime(ro.created_ms),
                ro.state.clone(),
                ro.rings
                    .iter()
                    .map(|(n, t, s, f, b)| format!("{n} {t}/{s}/{f}/{b}"))
                    .collect::<Vec<_>>()
                    .join("; "),
                ro.commands
                    .iter()
                    .map(|(a, who, _)| format!("{a} by {}", short(who)))
                    .collect::<Vec<_>>()
                    .join("; "),
            ]
        }),
    );

    if !r.sites.is_empty() {
        d.heading(&format!("Other sites ({})", r.sites.len()));
        d.table(
            &[150.0, 80.0, 80.0, 200.0, 60.0],
            &["Site", "Members", "Assessed", "Open by due class", "KEV"],
            r.sites.iter().map(|x| {
                vec![
                    x.site.clone(),
                    x.members.to_string(),
                    x.assessed.to_string(),
                    x.open_by_due
                        .iter()
                        .map(|(k, v)| format!("{k}:{v}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                    x.kev.to_string(),
                ]
            }),
        );
    }

    d.heading("What this report was computed from");
    d.para(&format!(
        "Catalog state {}. Records root of site {}: {}. Intel bundle {}.",
        r.basis.catalog_state,
        r.generated_site,
        r.basis.records_root,
        r.basis.bundle.as_deref().unwrap_or("none")
    ));
    d.table(
        &[100.0, 60.0, 420.0, 110.0],
        &["Node", "Audit entry", "Head", "Signed"],
        r.basis.audit_checkpoints.iter().map(|c| {
            vec![short(&c.node).to_string(), c.seq.to_string(), c.head.clone(), datetime(c.at_ms)]
        }),
    );

    assemble(d, r, signed_json)
}

fn assemble(d: Doc, r: &ComplianceReport, signed_json: &str) -> Vec<u8> {
    let mut pdf = Pdf::new();
    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let (regular, bold) = (Ref::new(3), Ref::new(4));
    let (file, spec, info) = (Ref::new(5), Ref::new(6), Ref::new(7));
    let first_page = 10;
    let n = d.pages.len() as i32;
    let page_ids: Vec<Ref> = (0..n).map(|i| Ref::new(first_page + 2 * i)).collect();
    {
        let mut c = pdf.catalog(catalog);
        c.pages(tree);
        c.names().embedded_files().names().insert(Str(b"report.json"), spec);
    }
    pdf.pages(tree).kids(page_ids.iter().copied()).count(n);
    pdf.type1_font(regular)
        .base_font(Name(b"Helvetica"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.type1_font(bold)
        .base_font(Name(b"Helvetica-Bold"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    let json = deflate(signed_json.as_bytes());
    {
        let mut ef = pdf.embedded_file(file, &json);
        ef.subtype(Name(b"application/json"));
        ef.filter(Filter::FlateDecode);
    }
    pdf.file_spec(spec)
        .path(Str(b"report.json"))
        .description(TextStr("The signed report (check with patchmesh report verify)"))
        .embedded_file(file);
    pdf.document_info(info)
        .title(TextStr(&format!("Patch compliance report - {}", r.mesh_name)))
        .creator(TextStr("patchmesh"))
        .producer(TextStr("patchmesh"));
    for (i, mut content) in d.pages.into_iter().enumerate() {
        let page_id = page_ids[i];
        let content_id = Ref::new(page_id.get() + 1);
        // Page number.
        let label = win(&format!("{} - page {} of {n}", r.mesh_name, i + 1));
        content.begin_text();
        content.set_font(Name(b"F1"), 7.0);
        content.next_line(MARGIN, 16.0);
        content.show(Str(&label));
        content.end_text();
        let bytes = content.finish();
        let compressed = deflate(&bytes);
        let mut page = pdf.page(page_id);
        page.media_box(Rect::new(0.0, 0.0, W, H));
        page.parent(tree);
        page.contents(content_id);
        {
            let mut res = page.resources();
            let mut fonts = res.fonts();
            fonts.pair(Name(b"F1"), regular);
            fonts.pair(Name(b"F2"), bold);
        }
        page.finish();
        pdf.stream(content_id, &compressed).filter(Filter::FlateDecode);
    }
    pdf.finish()
}

fn deflate(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = e.write_all(bytes);
    e.finish().unwrap_or_default()
}
