//! The CISA Known Exploited Vulnerabilities catalog JSON: `{catalogVersion, dateReleased,
//! vulnerabilities: [{cveID, dateAdded, dueDate, knownRansomwareCampaignUse, …}]}`.

use super::{finish, input, Import, ImportError, Tally};
use patchmesh_protocol::intel::bundle::{SourceInfo, SourceKind};
use patchmesh_protocol::intel::Kev;
use serde::Deserialize;
use std::path::Path;

#[derive(Deserialize)]
struct Catalog {
    #[serde(rename = "dateReleased")]
    date_released: Option<String>,
    vulnerabilities: Vec<serde_json::Value>,
}

/// Reads a KEV catalog into the import.
pub fn read(import: &mut Import, path: &Path) -> Result<SourceInfo, ImportError> {
    let mut input = input::open(path)?;
    let bytes = input::read_record(&mut input.reader, path, "KEV catalog")?;
    let catalog: Catalog =
        serde_json::from_slice(&bytes).map_err(|e| ImportError::json(path, e))?;
    let mut tally = Tally::default();
    for v in &catalog.vulnerabilities {
        let text = |k: &str| v.get(k).and_then(serde_json::Value::as_str);
        let (Some(cve), Some(added)) = (text("cveID"), text("dateAdded")) else {
            tally.skip("entry without cveID or dateAdded");
            continue;
        };
        if !cve.starts_with("CVE-") {
            tally.skip("cveID is not a CVE id");
            continue;
        }
        tally.kept();
        import.cve(cve).kev = Some(Kev {
            date_added: added.to_string(),
            due_date: text("dueDate").unwrap_or("").to_string(),
            ransomware: text("knownRansomwareCampaignUse") == Some("Known"),
        });
    }
    Ok(finish(SourceKind::Kev, path, input.hash(), catalog.date_released, tally))
}
