//! The findings of a compliance report as CSV (one row per finding), for spreadsheets and GRC
//! tools. Cells that a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR) are
//! prefixed with `'`: package names and justifications come from the mesh, not from us.

use super::{date, ComplianceReport};

/// A cell a spreadsheet will not run as a formula.
pub fn cell(s: &str) -> String {
    match s.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{s}"),
        _ => s.to_string(),
    }
}

/// Renders the findings table.
pub fn render(r: &ComplianceReport) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let header = [
        "node",
        "hostname",
        "cve",
        "source_package",
        "binary_packages",
        "installed_version",
        "fixed_version",
        "status",
        "severity",
        "kev",
        "due_class",
        "first_seen",
        "fix_available_since",
        "due_date",
        "remediated_at",
        "remediated_version",
        "days_to_remediate",
        "sla_met",
        "exception",
    ];
    let _ = w.write_record(header);
    let opt_date = |m: Option<u64>| m.map(date).unwrap_or_default();
    for f in &r.findings {
        let row = [
            f.node.clone(),
            f.hostname.clone(),
            f.cve.clone(),
            f.source.clone(),
            f.binaries.join(" "),
            f.installed.clone(),
            f.fixed_version.clone().unwrap_or_default(),
            f.status.clone(),
            f.severity.clone(),
            f.kev.to_string(),
            f.due_class.clone(),
            date(f.first_seen_ms),
            opt_date(f.fix_available_since_ms),
            opt_date(f.due_at_ms),
            opt_date(f.remediated_at_ms),
            f.remediated_version.clone().unwrap_or_default(),
            f.remediation_days.map(|d| d.to_string()).unwrap_or_default(),
            f.sla_met.map(|m| if m { "yes" } else { "no" }.to_string()).unwrap_or_default(),
            f.exception.clone().unwrap_or_default(),
        ];
        let _ = w.write_record(row.iter().map(|c| cell(c)));
    }
    w.into_inner().unwrap_or_default()
}
