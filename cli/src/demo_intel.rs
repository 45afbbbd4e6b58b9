//! The demo's vulnerability data, written in the real formats: a Debian Security Tracker JSON,
//! an OSV record with a CVSS vector, a KEV catalog and an EPSS file, about the demo's
//! application package `demo-app`, which every demo machine has at 1.0-1.

use anyhow::Context;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The CVE the good patch fixes.
pub const CVE: &str = "CVE-2026-41234";
/// The version that fixes it.
pub const FIXED: &str = "2.0-1";

/// A demo machine's package database and release, under `{data_dir}/sysroot`.
pub fn write_machine(data_dir: &Path, hostname: &str) -> anyhow::Result<()> {
    let root = data_dir.join("sysroot");
    std::fs::create_dir_all(root.join("var/lib/dpkg"))?;
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::write(
        root.join("var/lib/dpkg/status"),
        "Package: demo-app\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0-1\n\
         Description: the demo's application\n\nPackage: libdemo-parser1\nStatus: install ok installed\n\
         Architecture: amd64\nSource: demo-app\nVersion: 1.0-1\n",
    )?;
    std::fs::write(root.join("etc/hostname"), format!("{hostname}\n"))?;
    std::fs::write(
        root.join("etc/os-release"),
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\n",
    )?;
    Ok(())
}

/// The install, verify and rollback commands of the good patch: it replaces the application
/// file and, as dpkg would, records demo-app 2.0-1 in the machine's package database.
pub fn good_patch_commands() -> (String, String, String) {
    let status = "{data_dir}/sysroot/var/lib/dpkg/status";
    (
        format!(
            "set -e; cp \"$PATCHMESH_PAYLOAD\" {{data_dir}}/app/app.bin.new; mv {{data_dir}}/app/app.bin.new {{data_dir}}/app/app.bin; sed -i 's/^Version: 1.0-1$/Version: {FIXED}/' {status}"
        ),
        format!("cmp -s \"$PATCHMESH_PAYLOAD\" {{data_dir}}/app/app.bin && grep -q '^Version: {FIXED}$' {status}"),
        format!("set -e; printf 'app version 1\\n' > {{data_dir}}/app/app.bin; sed -i 's/^Version: {FIXED}$/Version: 1.0-1/' {status}"),
    )
}

/// Writes the four inputs under `dir` and returns their paths.
pub fn write_inputs(dir: &Path, today: &str) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir.join("osv"))?;
    let tracker = json!({
        "demo-app": {
            CVE: {
                "description": "demo-app: the request parser writes past a buffer on a crafted header",
                "scope": "remote",
                "releases": {"bookworm": {"status": "resolved", "fixed_version": FIXED, "urgency": "high",
                    "repositories": {"bookworm": "1.0-1", "bookworm-security": FIXED}}}
            },
            "CVE-2026-41299": {
                "description": "demo-app: log lines can be forged by a local user",
                "scope": "local",
                "releases": {"bookworm": {"status": "open", "urgency": "low", "nodsa": "Minor issue",
                    "nodsa_reason": "postponed", "repositories": {"bookworm": "1.0-1"}}}
            }
        }
    });
    std::fs::write(dir.join("debian-security-tracker.json"), tracker.to_string())?;
    let osv = json!({
        "id": format!("DEBIAN-{CVE}"), "modified": format!("{today}T00:00:00Z"), "upstream": [CVE],
        "summary": "demo-app: heap overflow in the request parser",
        "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
        "affected": [{"package": {"ecosystem": "Debian:12", "name": "demo-app"},
                      "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": FIXED}]}]}]
    });
    std::fs::write(dir.join("osv").join(format!("DEBIAN-{CVE}.json")), osv.to_string())?;
    let kev = json!({
        "title": "CISA Catalog of Known Exploited Vulnerabilities", "catalogVersion": today,
        "dateReleased": format!("{today}T00:00:00.000Z"), "count": 1,
        "vulnerabilities": [{"cveID": CVE, "vendorProject": "Demo", "product": "demo-app",
            "vulnerabilityName": "demo-app Heap-Based Buffer Overflow", "dateAdded": today,
            "shortDescription": "A crafted header overflows the request parser.",
            "requiredAction": "Apply mitigations per vendor instructions.", "dueDate": today,
            "knownRansomwareCampaignUse": "Unknown", "notes": "", "cwes": ["CWE-122"]}]
    });
    std::fs::write(dir.join("known_exploited_vulnerabilities.json"), kev.to_string())?;
    let epss = dir.join("epss_scores.csv.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&epss)?,
        flate2::Compression::default(),
    );
    write!(gz, "#model_version:v2025.03.14,score_date:{today}T00:00:00+0000\ncve,epss,percentile\n{CVE},0.72000,0.98\nCVE-2026-41299,0.00040,0.10\n")?;
    gz.finish().context("writing the EPSS file")?;
    Ok(vec![
        dir.join("debian-security-tracker.json"),
        dir.join("osv"),
        dir.join("known_exploited_vulnerabilities.json"),
        epss,
    ])
}
