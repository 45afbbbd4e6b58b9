//! apt `Packages` indexes (plain, `.gz`, `.xz`, `.lz4`) and the `Release`/`InRelease` file of
//! their suite, for available-update detection.
//!
//! The Release file is found beside the index the way apt lays out its lists
//! (`…_dists_bookworm-security_InRelease` for `…_dists_bookworm-security_main_binary-amd64_Packages`)
//! or a mirror does (`dists/bookworm/InRelease` above `dists/bookworm/main/binary-amd64/`). It
//! gives the suite's codename and apt's default priority (`NotAutomatic`,
//! `ButAutomaticUpgrades`). Its PGP signature is not checked here: the admin vouches for the
//! indexes by signing the bundle. Without a Release file the codename comes from the path and
//! the priority is 500. A suite that is not a Debian or Ubuntu release (`nodistro`,
//! `cloud-sdk-bookworm`) applies to nodes of every release, as apt uses it wherever it is
//! listed.

use super::{finish, input, Import, ImportError, Tally};
use patchmesh_protocol::intel::bundle::{IndexChunk, SourceInfo, SourceKind};
use patchmesh_protocol::intel::{base_release, known_release, ANY_RELEASE};
use patchmesh_protocol::rollout::target::valid_version;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// What a suite's Release file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// `Codename:` (`bookworm-security`).
    pub codename: String,
    /// `Date:`.
    pub date: Option<String>,
    /// apt's default priority for the suite.
    pub priority: u16,
}

/// Parses a Release or InRelease text (the clear-signed body of InRelease).
pub fn parse_release(text: &str) -> Release {
    let field = |k: &str| {
        text.lines()
            .take_while(|l| !l.starts_with("-----BEGIN PGP SIGNATURE"))
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    };
    let yes = |k: &str| field(k).is_some_and(|v| v.eq_ignore_ascii_case("yes"));
    let priority = match (yes("NotAutomatic"), yes("ButAutomaticUpgrades")) {
        (false, _) => 500,
        (true, true) => 100,
        (true, false) => 1,
    };
    Release { codename: field("Codename").unwrap_or_default(), date: field("Date"), priority }
}

/// The Release file of an index, if one lies where apt or a mirror keeps it.
fn release_file(index: &Path) -> Option<PathBuf> {
    let name = index.file_name()?.to_string_lossy().into_owned();
    let dir = index.parent()?;
    if let Some(at) = name.find("_dists_") {
        let rest = &name[at + "_dists_".len()..];
        let suite = rest.split('_').next()?;
        let prefix = format!("{}_dists_{suite}_", &name[..at]);
        return ["InRelease", "Release"]
            .iter()
            .map(|f| dir.join(format!("{prefix}{f}")))
            .find(|p| p.is_file());
    }
    let mut up = dir;
    for _ in 0..4 {
        for f in ["InRelease", "Release"] {
            if up.join(f).is_file() {
                return Some(up.join(f));
            }
        }
        up = up.parent()?;
    }
    None
}

/// The suite codename a path names (`dists/<suite>/` or `_dists_<suite>_`).
fn suite_from_path(index: &Path) -> Option<String> {
    let s = index.to_string_lossy();
    let at = s.find("dists")? + "dists".len() + 1;
    Some(s[at..].split(['/', '_']).next()?.to_string()).filter(|x| !x.is_empty())
}

/// Reads one `Packages` index into the import.
pub fn read_index(import: &mut Import, path: &Path) -> Result<SourceInfo, ImportError> {
    let release = match release_file(path) {
        Some(r) => {
            super::input::check_size(&r)?;
            let text = std::fs::read(&r).map_err(|e| ImportError::io(&r, e))?;
            Some(parse_release(&String::from_utf8_lossy(&text)))
        }
        None => None,
    };
    let suite = match release.as_ref().map(|r| r.codename.clone()).filter(|c| !c.is_empty()).or_else(|| suite_from_path(path)) {
        Some(s) => s,
        None => return Err(ImportError::at(path, None, "no Release file beside it and no dists/<suite> in its path: cannot tell which release it belongs to")),
    };
    let mut input = input::open(path)?;
    let mut tally = Tally::default();
    if release.is_none() {
        tally.skip("no Release file found (codename from the path, priority 500)");
    }
    let mut packages = Vec::new();
    let (mut name, mut version, mut arch) = (None::<String>, None::<String>, None::<String>);
    let mut line = String::new();
    let mut n = 0u64;
    loop {
        line.clear();
        let read = input
            .reader
            .read_line(&mut line)
            .map_err(|e| ImportError::at(path, Some(format!("line {}", n + 1)), e.to_string()))?;
        n += 1;
        let l = line.trim_end();
        if read == 0 || l.is_empty() {
            if let Some(nm) = name.take() {
                match (version.take(), arch.take()) {
                    (Some(v), Some(a)) if valid_version(&v) => {
                        tally.kept();
                        packages.push((nm, a, v));
                    }
                    (Some(_), Some(_)) => tally.skip("invalid version string"),
                    _ => tally.skip("stanza without Version or Architecture"),
                }
            }
            version = None;
            arch = None;
            if read == 0 {
                break;
            }
            continue;
        }
        if let Some(v) = l.strip_prefix("Package:") {
            name = Some(v.trim().to_string());
        } else if let Some(v) = l.strip_prefix("Version:") {
            version = Some(v.trim().to_string());
        } else if let Some(v) = l.strip_prefix("Architecture:") {
            arch = Some(v.trim().to_string());
        }
    }
    let base = match base_release(&suite) {
        b if known_release(b) => b.to_string(),
        _ => ANY_RELEASE.to_string(),
    };
    import.index(IndexChunk {
        release: base,
        security: suite.ends_with("-security"),
        suite,
        priority: release.as_ref().map_or(500, |r| r.priority),
        packages,
    });
    Ok(finish(SourceKind::AptIndex, path, input.hash(), release.and_then(|r| r.date), tally))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_priority_follows_not_automatic() {
        let r = parse_release("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: Debian Backports\nCodename: bookworm-backports\nNotAutomatic: yes\nButAutomaticUpgrades: yes\nDate: Sat, 16 May 2026 08:00:00 UTC\n");
        assert_eq!((r.codename.as_str(), r.priority), ("bookworm-backports", 100));
        assert_eq!(parse_release("Codename: experimental\nNotAutomatic: yes\n").priority, 1);
        assert_eq!(parse_release("Codename: bookworm\n").priority, 500);
    }

    #[test]
    fn the_suite_comes_from_apt_list_names_and_mirror_paths() {
        assert_eq!(suite_from_path(Path::new("/var/lib/apt/lists/deb.debian.org_debian_dists_bookworm-security_main_binary-amd64_Packages")).as_deref(), Some("bookworm-security"));
        assert_eq!(
            suite_from_path(Path::new("/m/dists/trixie/main/binary-amd64/Packages.xz")).as_deref(),
            Some("trixie")
        );
    }
}
