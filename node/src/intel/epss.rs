//! FIRST EPSS scores: CSV, optionally gzipped, a `#model_version:…,score_date:…` line, a
//! `cve,epss,percentile` header, then one row per CVE. Streamed line by line.

use super::{finish, input, Import, ImportError, Tally};
use patchmesh_protocol::intel::bundle::{SourceInfo, SourceKind};
use std::io::{BufRead, Read};
use std::path::Path;

/// Longest line read.
const LINE_BYTES_MAX: u64 = 4096;

/// Reads an EPSS CSV into the import.
pub fn read(import: &mut Import, path: &Path) -> Result<SourceInfo, ImportError> {
    let mut input = input::open(path)?;
    let mut tally = Tally::default();
    let mut date = None;
    let mut header_seen = false;
    let mut line = Vec::new();
    let mut n = 0u64;
    loop {
        line.clear();
        let read = Read::take(&mut input.reader, LINE_BYTES_MAX)
            .read_until(b'\n', &mut line)
            .map_err(|e| ImportError::io(path, e))?;
        if read == 0 {
            break;
        }
        n += 1;
        if read as u64 == LINE_BYTES_MAX && line.last() != Some(&b'\n') {
            return Err(ImportError::at(
                path,
                Some(format!("line {n}")),
                "line too long for an EPSS row",
            ));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if let Some(meta) = text.strip_prefix('#') {
            date = meta
                .split(',')
                .find_map(|kv| kv.strip_prefix("score_date:"))
                .map(|d| d.chars().take(10).collect());
            continue;
        }
        if !header_seen {
            if text != "cve,epss,percentile" {
                return Err(ImportError::at(
                    path,
                    Some(format!("line {n}")),
                    format!(
                        "expected the header `cve,epss,percentile`, found `{}`",
                        super::short(text)
                    ),
                ));
            }
            header_seen = true;
            continue;
        }
        if text.is_empty() {
            continue;
        }
        let mut cols = text.split(',');
        let (Some(cve), Some(p), Some(pct)) = (cols.next(), cols.next(), cols.next()) else {
            tally.skip("row without three columns");
            continue;
        };
        let (Ok(p), Ok(pct)) = (p.parse::<f32>(), pct.parse::<f32>()) else {
            tally.skip("score is not a number");
            continue;
        };
        if !cve.starts_with("CVE-") || !(0.0..=1.0).contains(&p) || !(0.0..=1.0).contains(&pct) {
            tally.skip("not a CVE id or a score outside [0, 1]");
            continue;
        }
        tally.kept();
        import.cve(cve).epss = Some((p, pct));
    }
    if !header_seen {
        return Err(ImportError::at(
            path,
            None,
            "no `cve,epss,percentile` header: not an EPSS file",
        ));
    }
    Ok(finish(SourceKind::Epss, path, input.hash(), date, tally))
}
