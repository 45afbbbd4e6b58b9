//! `patchmesh intel import`: normalising the admin's vulnerability sources into one intel
//! bundle ([`patchmesh_protocol::intel::bundle`]).
//!
//! Inputs, detected by name and first bytes:
//! - the Debian Security Tracker JSON (`{source: {CVE: {releases: {codename: {…}}}}}`), streamed
//!   one source package at a time ([`tracker`]);
//! - OSV records: a directory of `.json` files, a `.zip` of them, or JSON lines ([`osv`]);
//! - the CISA KEV catalog JSON ([`kev`]);
//! - FIRST EPSS CSV, optionally gzipped ([`epss`]);
//! - apt `Packages` indexes (plain, `.gz`, `.xz`, `.lz4`) with their `Release`/`InRelease` when
//!   given or lying beside them ([`apt`]).
//!
//! A malformed record is skipped and counted with its reason in the bundle's header; a
//! malformed file is refused with an error naming the file and the position. Every file is
//! refused by its size before it is read ([`patchmesh_protocol::limits::INTEL_INPUT_BYTES_MAX`]).

pub mod apt;
pub mod epss;
mod input;
pub mod kev;
pub mod osv;
pub mod tracker;

use patchmesh_protocol::ids::Millis;
use patchmesh_protocol::intel::bundle::{
    BundleReader, BundleWriter, Frame, Header, IndexChunk, SourceInfo, SourceKind, FORMAT,
};
use patchmesh_protocol::intel::{Advisory, CveInfo, Statement, TrackerStatus};
use patchmesh_protocol::limits;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

/// Advisories per source frame (a frame stays far below its 1 MiB limit).
const ADVISORIES_PER_FRAME: usize = 4_000;
/// Index packages per frame.
const PACKAGES_PER_FRAME: usize = 8_000;

/// Why an input was refused.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {reason}", position.as_ref().map(|p| format!(" at {p}")).unwrap_or_default())]
pub struct ImportError {
    /// The file.
    pub file: String,
    /// Where in it (line and column, byte offset, record), when known.
    pub position: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl ImportError {
    pub(crate) fn at(path: &Path, position: Option<String>, reason: impl Into<String>) -> Self {
        ImportError { file: path.display().to_string(), position, reason: reason.into() }
    }

    pub(crate) fn io(path: &Path, e: std::io::Error) -> Self {
        ImportError::at(path, None, e.to_string())
    }

    pub(crate) fn json(path: &Path, e: serde_json::Error) -> Self {
        ImportError::at(
            path,
            Some(format!("line {} column {}", e.line(), e.column())),
            e.to_string(),
        )
    }
}

/// What one input contributed, while it is read.
#[derive(Default)]
pub(crate) struct Tally {
    records: u64,
    skipped: BTreeMap<String, u64>,
}

impl Tally {
    pub(crate) fn kept(&mut self) {
        self.records += 1;
    }

    pub(crate) fn skip(&mut self, reason: &str) {
        *self.skipped.entry(reason.to_string()).or_default() += 1;
    }
}

/// A bundle being built.
pub struct Import {
    created_at: Millis,
    sources: Vec<SourceInfo>,
    advisories: BTreeMap<(String, String), Vec<Advisory>>,
    cves: BTreeMap<String, CveInfo>,
    indexes: Vec<IndexChunk>,
    seen_fixes: HashMap<(String, String, String, String), Millis>,
}

/// What a finished import wrote.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Written {
    /// Its inputs, with records kept and skipped.
    pub sources: Vec<SourceInfo>,
    /// (release, source package, CVE) statements.
    pub advisories: u64,
    /// CVEs with facts (those some advisory names).
    pub cves: u64,
    /// Index entries (binary package versions).
    pub index_packages: u64,
    /// Frames written.
    pub frames: u64,
}

fn fix_key(release: &str, source: &str, a: &Advisory) -> Option<(String, String, String, String)> {
    let fixed =
        match &a.statement {
            Statement::Tracker {
                status: TrackerStatus::Resolved, fixed_version: Some(f), ..
            } if f != "0" => f.clone(),
            Statement::Osv { ranges, .. } => ranges.iter().flatten().find_map(|e| match e {
                patchmesh_protocol::intel::Event::Fixed(f) => Some(f.clone()),
                _ => None,
            })?,
            _ => return None,
        };
    Some((release.to_string(), source.to_string(), a.cve.clone(), fixed))
}

impl Import {
    /// A new bundle dated `created_at`.
    pub fn new(created_at: Millis) -> Import {
        Import {
            created_at,
            sources: Vec::new(),
            advisories: BTreeMap::new(),
            cves: BTreeMap::new(),
            indexes: Vec::new(),
            seen_fixes: HashMap::new(),
        }
    }

    /// Carries forward when each fix was first seen from the bundle this one replaces, so due
    /// dates keep running from the fix's first appearance, not from this import.
    pub fn previous(&mut self, path: &Path) -> Result<(), ImportError> {
        input::check_size(path)?;
        let file = std::fs::File::open(path).map_err(|e| ImportError::io(path, e))?;
        let (_, mut reader) = BundleReader::open(std::io::BufReader::new(file))
            .map_err(|e| ImportError::at(path, None, e.to_string()))?;
        while let Some(frame) =
            reader.next_frame().map_err(|e| ImportError::at(path, None, e.to_string()))?
        {
            let Frame::Source { release, source, advisories } = frame else { continue };
            for a in &advisories {
                if let (Some(key), Some(at)) = (fix_key(&release, &source, a), a.fix_seen_at) {
                    self.seen_fixes.entry(key).or_insert(at);
                }
            }
        }
        Ok(())
    }

    /// Reads one input (a file, or a directory of OSV records), detecting its kind.
    pub fn add(&mut self, path: &Path) -> Result<&SourceInfo, ImportError> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let info = if path.is_dir() {
            osv::read_dir(self, path)?
        } else if name.contains("Packages") {
            apt::read_index(self, path)?
        } else if name.ends_with(".zip") {
            osv::read_zip(self, path)?
        } else if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
            osv::read_lines(self, path)?
        } else if name.ends_with(".csv") || name.ends_with(".csv.gz") {
            epss::read(self, path)?
        } else {
            match sniff_json(path)? {
                JsonKind::Kev => kev::read(self, path)?,
                JsonKind::Osv => osv::read_file(self, path)?,
                JsonKind::Tracker => tracker::read(self, path)?,
            }
        };
        self.sources.push(info);
        Ok(self.sources.last().expect("just pushed"))
    }

    pub(crate) fn advisory(&mut self, release: &str, source: &str, mut a: Advisory) {
        if let Some(key) = fix_key(release, source, &a) {
            a.fix_seen_at = Some(self.seen_fixes.get(&key).copied().unwrap_or(self.created_at));
        }
        self.advisories.entry((release.to_string(), source.to_string())).or_default().push(a);
    }

    pub(crate) fn cve(&mut self, cve: &str) -> &mut CveInfo {
        self.cves
            .entry(cve.to_string())
            .or_insert_with(|| CveInfo { cve: cve.to_string(), ..Default::default() })
    }

    pub(crate) fn index(&mut self, chunk: IndexChunk) {
        self.indexes.push(chunk);
    }

    /// Writes the bundle: header, advisories by (release, source), facts of the CVEs they
    /// name, then the indexes.
    pub fn write(self, out: impl Write) -> std::io::Result<Written> {
        let mut w = BundleWriter::new(out)?;
        let mut frames = 1;
        w.write(&Frame::Header(Header {
            format: FORMAT,
            created_at: self.created_at,
            sources: self.sources.clone(),
        }))?;
        let mut named = std::collections::BTreeSet::new();
        let mut advisories = 0;
        for ((release, source), list) in &self.advisories {
            advisories += list.len() as u64;
            for part in list.chunks(ADVISORIES_PER_FRAME) {
                named.extend(part.iter().map(|a| a.cve.as_str()));
                w.write(&Frame::Source {
                    release: release.clone(),
                    source: source.clone(),
                    advisories: part.to_vec(),
                })?;
                frames += 1;
            }
        }
        let mut cves = 0;
        for (id, info) in &self.cves {
            if named.contains(id.as_str()) {
                w.write(&Frame::Cve(info.clone()))?;
                cves += 1;
                frames += 1;
            }
        }
        let mut index_packages = 0;
        for chunk in self.indexes {
            index_packages += chunk.packages.len() as u64;
            for part in chunk.packages.chunks(PACKAGES_PER_FRAME) {
                w.write(&Frame::Index(IndexChunk {
                    packages: part.to_vec(),
                    ..chunk.clone_empty()
                }))?;
                frames += 1;
            }
        }
        w.finish()?.flush()?;
        Ok(Written { sources: self.sources, advisories, cves, index_packages, frames })
    }
}

trait CloneEmpty {
    fn clone_empty(&self) -> Self;
}

impl CloneEmpty for IndexChunk {
    fn clone_empty(&self) -> Self {
        IndexChunk {
            release: self.release.clone(),
            suite: self.suite.clone(),
            security: self.security,
            priority: self.priority,
            packages: Vec::new(),
        }
    }
}

enum JsonKind {
    Kev,
    Osv,
    Tracker,
}

/// Tells the JSON inputs apart by their first kilobytes.
fn sniff_json(path: &Path) -> Result<JsonKind, ImportError> {
    use std::io::Read;
    input::check_size(path)?;
    let mut head = vec![0u8; 8192];
    let mut f = std::fs::File::open(path).map_err(|e| ImportError::io(path, e))?;
    let n = f.read(&mut head).map_err(|e| ImportError::io(path, e))?;
    let head = String::from_utf8_lossy(&head[..n]);
    if !head.trim_start().starts_with('{') {
        return Err(ImportError::at(
            path,
            Some("byte 0".into()),
            "not a JSON object; expected tracker JSON, KEV JSON, an OSV record, or a Packages, .csv, .zip or .jsonl file",
        ));
    }
    Ok(if head.contains("\"catalogVersion\"") || head.contains("\"vulnerabilities\"") {
        JsonKind::Kev
    } else if head.contains("\"affected\"")
        || head.contains("\"schema_version\"")
        || head.contains("\"modified\"")
    {
        JsonKind::Osv
    } else {
        JsonKind::Tracker
    })
}

/// Truncates a description to the bundle's limit, on a character boundary.
pub(crate) fn short(text: &str) -> String {
    let text = text.trim();
    let mut end = text.len().min(limits::INTEL_DESCRIPTION_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

pub(crate) fn finish(
    kind: SourceKind,
    path: &Path,
    hash: [u8; 32],
    date: Option<String>,
    t: Tally,
) -> SourceInfo {
    SourceInfo {
        kind,
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        blake3: hash,
        date,
        records: t.records,
        skipped: t.skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pm-intel-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const PACKAGES: &str = "Package: curl\nVersion: 7.88.1-10+deb12u8\nArchitecture: amd64\n\n\
        Package: tzdata\nVersion: 2025b-0+deb12u1\nArchitecture: all\n\n\
        Package: broken\nVersion: not a version!\nArchitecture: amd64\n";

    fn index_of(path: &Path) -> (IndexChunk, SourceInfo) {
        let mut imp = Import::new(Millis(1));
        let info = imp.add(path).unwrap().clone();
        (imp.indexes.pop().unwrap(), info)
    }

    #[test]
    fn packages_read_the_same_plain_gz_xz_and_lz4_with_their_release_file() {
        let d = tmp("apt");
        let prefix = "deb.debian.org_debian-security_dists_bookworm-security_";
        std::fs::write(
            d.join(format!("{prefix}InRelease")),
            "Origin: Debian\nCodename: bookworm-security\nDate: Sat, 28 Nov 2026 10:00:00 UTC\n",
        )
        .unwrap();
        let base = d.join(format!("{prefix}main_binary-amd64_Packages"));
        let with = |ext: &str| std::path::PathBuf::from(format!("{}.{ext}", base.display()));
        std::fs::write(&base, PACKAGES).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(PACKAGES.as_bytes()).unwrap();
        std::fs::write(with("gz"), gz.finish().unwrap()).unwrap();
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(PACKAGES.as_bytes()).unwrap();
        std::fs::write(with("xz"), xz.finish().unwrap()).unwrap();
        let mut lz = lz4_flex::frame::FrameEncoder::new(Vec::new());
        lz.write_all(PACKAGES.as_bytes()).unwrap();
        std::fs::write(with("lz4"), lz.finish().unwrap()).unwrap();
        let (plain, info) = index_of(&base);
        assert_eq!(
            (plain.release.as_str(), plain.suite.as_str(), plain.security, plain.priority),
            ("bookworm", "bookworm-security", true, 500)
        );
        assert_eq!(plain.packages.len(), 2);
        assert_eq!(info.skipped.get("invalid version string"), Some(&1));
        assert_eq!(info.date.as_deref(), Some("Sat, 28 Nov 2026 10:00:00 UTC"));
        for ext in ["gz", "xz", "lz4"] {
            assert_eq!(index_of(&with(ext)).0, plain, "{ext}");
        }
        // Garbage behind a compressed name is an error naming the file, not a silent empty index.
        std::fs::write(with("xz"), b"not xz at all").unwrap();
        let err = Import::new(Millis(1)).add(&with("xz")).unwrap_err();
        assert!(err.to_string().contains("Packages.xz"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn osv_reads_from_a_zip_and_from_json_lines_alike() {
        let d = tmp("osv");
        let rec = |id: &str, withdrawn: bool| {
            let mut v = serde_json::json!({"id": id, "modified": "2026-01-01T00:00:00Z", "aliases": ["CVE-2026-1"],
                "affected": [{"package": {"ecosystem": "Debian:12", "name": "curl"},
                    "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "7.88.1-10+deb12u9"}]}]}]});
            if withdrawn {
                v["withdrawn"] = "2026-02-01T00:00:00Z".into();
            }
            v.to_string()
        };
        let zip_path = d.join("all.zip");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        for (name, withdrawn) in [("DSA-1.json", false), ("DSA-2.json", true)] {
            z.start_file(name, zip::write::SimpleFileOptions::default()).unwrap();
            z.write_all(rec(&name[..5], withdrawn).as_bytes()).unwrap();
        }
        z.finish().unwrap();
        std::fs::write(
            d.join("osv.jsonl"),
            format!("{}\n{}\n\n", rec("DSA-1", false), rec("DSA-2", true)),
        )
        .unwrap();
        for path in [zip_path, d.join("osv.jsonl")] {
            let mut imp = Import::new(Millis(1));
            let info = imp.add(&path).unwrap().clone();
            assert_eq!(
                (info.records, info.skipped.get("withdrawn").copied()),
                (1, Some(1)),
                "{}",
                path.display()
            );
            let advisories = &imp.advisories[&("bookworm".to_string(), "curl".to_string())];
            assert_eq!(advisories.len(), 1);
            assert_eq!(advisories[0].cve, "CVE-2026-1", "filed under its CVE alias");
        }
        std::fs::write(d.join("bad.zip"), b"PK\x03\x04 truncated").unwrap();
        let err = Import::new(Millis(1)).add(&d.join("bad.zip")).unwrap_err();
        assert!(err.to_string().contains("not a readable zip"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
