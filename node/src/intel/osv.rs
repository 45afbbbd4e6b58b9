//! OSV records (<https://ossf.github.io/osv-schema/>) for the `Debian:N` and `Ubuntu:N`
//! ecosystems: a directory of `.json` files, a `.zip` of them (OSV's bulk download), or JSON
//! lines. Affected package names are source packages in these ecosystems. Withdrawn records,
//! other ecosystems and non-ECOSYSTEM ranges are skipped and counted.

use super::{finish, input, short, Import, ImportError, Tally};
use patchmesh_protocol::intel::bundle::{SourceInfo, SourceKind};
use patchmesh_protocol::intel::risk::cvss_score;
use patchmesh_protocol::intel::{release_of_ecosystem, Advisory, Event, Origin, Statement};
use patchmesh_protocol::limits;
use patchmesh_protocol::rollout::target::valid_version;
use serde::Deserialize;
use std::io::{BufRead, Read};
use std::path::Path;

#[derive(Deserialize)]
struct Record {
    id: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    upstream: Vec<String>,
    withdrawn: Option<String>,
    #[serde(default)]
    summary: String,
    #[serde(default)]
    details: String,
    #[serde(default)]
    severity: Vec<Severity>,
    #[serde(default)]
    affected: Vec<Affected>,
}

#[derive(Deserialize)]
struct Severity {
    #[serde(rename = "type")]
    kind: String,
    score: String,
}

#[derive(Deserialize)]
struct Affected {
    package: Option<Package>,
    #[serde(default)]
    ranges: Vec<Range>,
    #[serde(default)]
    versions: Vec<String>,
}

#[derive(Deserialize)]
struct Package {
    ecosystem: String,
    name: String,
}

#[derive(Deserialize)]
struct Range {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    events: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// One record's bytes into the import; a record that does not parse is skipped and counted.
fn record(import: &mut Import, tally: &mut Tally, bytes: &[u8]) {
    let r: Record = match serde_json::from_slice(bytes) {
        Ok(r) => r,
        Err(_) => return tally.skip("record does not parse as an OSV record"),
    };
    if r.withdrawn.is_some() {
        return tally.skip("withdrawn");
    }
    let cve = if r.id.starts_with("CVE-") {
        r.id.clone()
    } else {
        match r.aliases.iter().chain(&r.upstream).find(|a| a.starts_with("CVE-")) {
            Some(c) => c.clone(),
            None => r.id.clone(),
        }
    };
    let mut kept_any = false;
    for a in &r.affected {
        let Some(pkg) = &a.package else { continue };
        let Some(release) = release_of_ecosystem(&pkg.ecosystem) else {
            tally.skip("ecosystem is not a Debian or Ubuntu release");
            continue;
        };
        let mut ranges = Vec::new();
        for range in &a.ranges {
            if range.kind != "ECOSYSTEM" {
                tally.skip("range type is not ECOSYSTEM");
                continue;
            }
            match events(&range.events) {
                Some(ev) => ranges.push(ev),
                None => tally.skip("invalid version string"),
            }
        }
        let versions: Vec<String> =
            a.versions.iter().filter(|v| valid_version(v)).cloned().collect();
        if ranges.is_empty() && versions.is_empty() {
            continue;
        }
        kept_any = true;
        let statement = Statement::Osv { ranges, versions };
        import.advisory(
            release,
            &pkg.name,
            Advisory {
                cve: cve.clone(),
                origin: Origin::Osv(r.id.clone()),
                statement,
                fix_seen_at: None,
            },
        );
    }
    if !kept_any {
        return;
    }
    tally.kept();
    let info = import.cve(&cve);
    if info.description.is_empty() {
        info.description = short(if r.summary.is_empty() { &r.details } else { &r.summary });
    }
    for s in &r.severity {
        let slot = match s.kind.as_str() {
            "CVSS_V3" => &mut info.cvss3,
            "CVSS_V4" => &mut info.cvss4,
            _ => continue,
        };
        if cvss_score(&s.score).is_some() {
            slot.get_or_insert_with(|| s.score.clone());
        } else {
            tally.skip("CVSS vector does not parse (record kept without it)");
        }
    }
}

fn events(raw: &[serde_json::Map<String, serde_json::Value>]) -> Option<Vec<Event>> {
    let mut out = Vec::new();
    for e in raw {
        for (k, v) in e {
            let v = v.as_str()?.to_string();
            if !(valid_version(&v) || (v == "0" && k == "introduced")) {
                return None;
            }
            out.push(match k.as_str() {
                "introduced" => Event::Introduced(v),
                "fixed" => Event::Fixed(v),
                "last_affected" => Event::LastAffected(v),
                _ => continue,
            });
        }
    }
    Some(out)
}

/// One OSV record file.
pub fn read_file(import: &mut Import, path: &Path) -> Result<SourceInfo, ImportError> {
    let mut input = input::open(path)?;
    let bytes = read_record(&mut input.reader, path)?;
    let mut tally = Tally::default();
    serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| ImportError::json(path, e))?;
    record(import, &mut tally, &bytes);
    Ok(finish(SourceKind::Osv, path, input.hash(), None, tally))
}

fn read_record(r: &mut impl Read, path: &Path) -> Result<Vec<u8>, ImportError> {
    input::read_record(r, path, "record")
}

/// JSON lines: one record per line.
pub fn read_lines(import: &mut Import, path: &Path) -> Result<SourceInfo, ImportError> {
    let mut input = input::open(path)?;
    let mut tally = Tally::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut input.reader)
            .take(limits::INTEL_RECORD_BYTES_MAX + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| ImportError::io(path, e))?;
        if n == 0 {
            break;
        }
        if n as u64 > limits::INTEL_RECORD_BYTES_MAX {
            return Err(ImportError::at(path, None, "a line over the record limit"));
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            record(import, &mut tally, &line);
        }
    }
    Ok(finish(SourceKind::Osv, path, input.hash(), None, tally))
}

/// A directory of `.json` records (not recursive).
pub fn read_dir(import: &mut Import, path: &Path) -> Result<SourceInfo, ImportError> {
    let mut names: Vec<_> = std::fs::read_dir(path)
        .map_err(|e| ImportError::io(path, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .take(limits::INTEL_OSV_FILES_MAX + 1)
        .collect();
    if names.len() > limits::INTEL_OSV_FILES_MAX {
        return Err(ImportError::at(
            path,
            None,
            format!("more than {} records", limits::INTEL_OSV_FILES_MAX),
        ));
    }
    names.sort();
    let mut tally = Tally::default();
    let mut h = blake3::Hasher::new();
    for p in &names {
        let mut input = input::open(p)?;
        let bytes = read_record(&mut input.reader, p)?;
        h.update(&input.hash());
        record(import, &mut tally, &bytes);
    }
    Ok(finish(SourceKind::Osv, path, *h.finalize().as_bytes(), None, tally))
}

/// A zip of `.json` records, as OSV's bulk download serves them.
pub fn read_zip(import: &mut Import, path: &Path) -> Result<SourceInfo, ImportError> {
    input::check_size(path)?;
    let file = std::fs::File::open(path).map_err(|e| ImportError::io(path, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| ImportError::at(path, None, format!("not a readable zip: {e}")))?;
    if zip.len() > limits::INTEL_OSV_FILES_MAX {
        return Err(ImportError::at(
            path,
            None,
            format!("more than {} records", limits::INTEL_OSV_FILES_MAX),
        ));
    }
    let mut tally = Tally::default();
    for i in 0..zip.len() {
        let mut member = zip
            .by_index(i)
            .map_err(|e| ImportError::at(path, Some(format!("member {i}")), e.to_string()))?;
        if !member.name().ends_with(".json") {
            continue;
        }
        let name = member.name().to_string();
        let bytes = read_record(&mut member, path)
            .map_err(|e| ImportError { position: Some(name), ..e })?;
        record(import, &mut tally, &bytes);
    }
    let hash = *blake3::Hasher::new()
        .update_reader(std::fs::File::open(path).map_err(|e| ImportError::io(path, e))?)
        .map_err(|e| ImportError::io(path, e))?
        .finalize()
        .as_bytes();
    Ok(finish(SourceKind::Osv, path, hash, None, tally))
}
