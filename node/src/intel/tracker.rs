//! The Debian Security Tracker's JSON (`https://security-tracker.debian.org/tracker/data/json`):
//! `{source package: {CVE: {description, scope, releases: {codename: {status, fixed_version,
//! urgency, nodsa, nodsa_reason, repositories}}}}}`. Tens of megabytes: streamed, one source
//! package in memory at a time.

use super::{finish, input, short, Import, ImportError, Tally};
use patchmesh_protocol::intel::bundle::{SourceInfo, SourceKind};
use patchmesh_protocol::intel::{Advisory, Origin, Statement, TrackerStatus, Urgency};
use patchmesh_protocol::rollout::target::{compare_versions, valid_version};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use std::path::Path;

struct Packages<'a> {
    import: &'a mut Import,
    tally: &'a mut Tally,
}

impl<'de> Visitor<'de> for Packages<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object of source packages")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(source) = map.next_key::<String>()? {
            let cves: Value = map.next_value()?;
            package(self.import, self.tally, &source, cves);
        }
        Ok(())
    }
}

/// Reads a tracker JSON file into the import.
pub fn read(import: &mut Import, path: &Path) -> Result<SourceInfo, ImportError> {
    let mut input = input::open(path)?;
    let mut tally = Tally::default();
    let mut de = serde_json::Deserializer::from_reader(&mut input.reader);
    de.deserialize_map(Packages { import, tally: &mut tally })
        .map_err(|e| ImportError::json(path, e))?;
    de.end().map_err(|e| ImportError::json(path, e))?;
    drop(de);
    // Drain what the parser did not need, so the hash covers the whole file.
    std::io::copy(&mut input.reader, &mut std::io::sink()).map_err(|e| ImportError::io(path, e))?;
    Ok(finish(SourceKind::DebianTracker, path, input.hash(), None, tally))
}

fn package(import: &mut Import, tally: &mut Tally, source: &str, cves: Value) {
    let Value::Object(cves) = cves else {
        tally.skip("source package entry is not an object");
        return;
    };
    for (cve, entry) in cves {
        if !cve.starts_with("CVE-") {
            tally.skip("not a CVE id (tracker TEMP- entry)");
            continue;
        }
        let Some(releases) = entry.get("releases").and_then(Value::as_object) else {
            tally.skip("CVE entry without releases");
            continue;
        };
        if let Some(d) = entry.get("description").and_then(Value::as_str) {
            let info = import.cve(&cve);
            if info.description.is_empty() {
                info.description = short(d);
            }
        }
        for (release, r) in releases {
            match statement(release, r) {
                Ok(statement) => {
                    tally.kept();
                    import.advisory(
                        release,
                        source,
                        Advisory {
                            cve: cve.clone(),
                            origin: Origin::Tracker,
                            statement,
                            fix_seen_at: None,
                        },
                    );
                }
                Err(reason) => tally.skip(reason),
            }
        }
    }
}

fn statement(release: &str, r: &Value) -> Result<Statement, &'static str> {
    let text = |k: &str| r.get(k).and_then(Value::as_str);
    let status = match text("status") {
        Some("resolved") => TrackerStatus::Resolved,
        Some("open") => TrackerStatus::Open,
        Some("undetermined") => TrackerStatus::Undetermined,
        _ => return Err("unknown release status"),
    };
    let fixed_version = text("fixed_version").map(str::to_string);
    if status == TrackerStatus::Resolved {
        match fixed_version.as_deref() {
            None => return Err("resolved without a fixed version"),
            Some("0") => {}
            Some(v) if !valid_version(v) => return Err("invalid version string"),
            Some(_) => {}
        }
    }
    let nodsa = match (
        text("nodsa_reason").filter(|s| !s.is_empty()),
        text("nodsa").filter(|s| !s.is_empty()),
    ) {
        (Some(reason), Some(note)) => Some(short(&format!("{reason}: {note}"))),
        (Some(reason), None) => Some(reason.to_string()),
        (None, Some(note)) => Some(short(note)),
        (None, None) => None,
    };
    let security_suite = format!("{release}-security");
    let fixed_in_security = match (
        &fixed_version,
        r.get("repositories").and_then(|v| v.get(&security_suite)).and_then(Value::as_str),
    ) {
        (Some(f), Some(in_security)) if f != "0" => {
            compare_versions(in_security, f) != std::cmp::Ordering::Less
        }
        _ => false,
    };
    Ok(Statement::Tracker {
        status,
        fixed_version,
        urgency: Urgency::parse(text("urgency").unwrap_or("")),
        nodsa,
        fixed_in_security,
    })
}
