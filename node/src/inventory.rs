//! Inventory: what a machine is and what it has installed, read from the files the OS keeps.
//!
//! Packages come from the dpkg status database (`/var/lib/dpkg/status`): RFC 822-style stanzas
//! separated by blank lines, of which we keep `Package`, `Version`, `Architecture`, `Source` and
//! `Status`.
//! The signed node record carries only an [`InventorySummary`] (OS, kernel, package count and a
//! digest of the sorted list); the full list is served on request. Every file read is bounded.

use patchmesh_protocol::intel::Installed;
use patchmesh_protocol::site::InventorySummary;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Largest dpkg status file read (a desktop with ~5,000 packages has ~10 MB).
pub const DPKG_STATUS_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Largest small system file read (os-release, meminfo, hostname).
pub const SYSTEM_FILE_BYTES_MAX: u64 = 64 * 1024;
/// Packages kept from one status file.
pub const PACKAGES_MAX: usize = 100_000;
/// Bytes of any one field value kept.
pub const FIELD_BYTES_MAX: usize = 256;

/// Why the inventory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A file exceeds its size limit.
    #[error("{path} is {size_bytes} bytes, limit {limit_bytes}")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        size_bytes: u64,
        /// The limit.
        limit_bytes: u64,
    },
    /// The status database holds more packages than the limit.
    #[error("more than {0} packages in the dpkg status database")]
    TooManyPackages(usize),
}

/// One installed (or partly installed) package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Version string as dpkg prints it.
    pub version: String,
    /// Architecture (`amd64`, `all`, ...).
    pub arch: String,
    /// The status triple's last word (`installed`, `half-configured`, `config-files`, ...).
    pub status: String,
    /// dpkg's `Source:` field when present (`util-linux (2.38.1-5)`): vulnerability data is
    /// keyed by source package and source version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Package {
    /// The package as vulnerability matching sees it (source name and version resolved).
    pub fn installed(&self) -> Installed {
        Installed::from_dpkg(&self.name, &self.arch, &self.version, self.source.as_deref())
    }
}

/// The machine's inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Host name.
    pub hostname: String,
    /// OS pretty name from os-release.
    pub os: String,
    /// Release codename from os-release (`bookworm`); scopes vulnerability look-ups.
    #[serde(default)]
    pub codename: String,
    /// Kernel release.
    pub kernel: String,
    /// CPU architecture of this build.
    pub arch: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// Total memory.
    pub memory_bytes: u64,
    /// Packages, sorted by name then architecture.
    pub packages: Vec<Package>,
}

impl Inventory {
    /// The installed packages (status `installed`) as vulnerability matching sees them.
    pub fn installed(&self) -> Vec<Installed> {
        self.packages.iter().filter(|p| p.status == "installed").map(Package::installed).collect()
    }

    /// The summary a node record carries.
    pub fn summary(&self) -> InventorySummary {
        let mut h = blake3::Hasher::new();
        for p in self.packages.iter().filter(|p| p.status == "installed") {
            for field in [&p.name, &p.version, &p.arch] {
                h.update(&(field.len() as u64).to_le_bytes());
                h.update(field.as_bytes());
            }
        }
        InventorySummary {
            os: truncate(&self.os),
            kernel: truncate(&self.kernel),
            package_count: self.packages.iter().filter(|p| p.status == "installed").count() as u32,
            packages_digest: *h.finalize().as_bytes(),
            // Filled in by the protocol core from the node's facts.
            zone: String::new(),
            quiet: None,
            // Measured by the daemon where it keeps payloads.
            free_disk_bytes: None,
        }
    }
}

fn truncate(s: &str) -> String {
    let mut end = s.len().min(FIELD_BYTES_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn read_bounded(path: &Path, limit_bytes: u64) -> Result<String, InventoryError> {
    let io = |source| InventoryError::Io { path: path.display().to_string(), source };
    let size_bytes = std::fs::metadata(path).map_err(io)?.len();
    if size_bytes > limit_bytes {
        return Err(InventoryError::TooLarge {
            path: path.display().to_string(),
            size_bytes,
            limit_bytes,
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Parses a dpkg status database. Stanzas without a package name are skipped; unknown fields
/// and continuation lines are ignored.
pub fn parse_dpkg_status(text: &str) -> Result<Vec<Package>, InventoryError> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let (mut name, mut version, mut arch, mut status, mut source) =
            (None, None, None, None, None);
        for line in stanza.lines() {
            if line.starts_with([' ', '\t']) {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else { continue };
            let value = truncate(value.trim());
            match key {
                "Package" => name = Some(value),
                "Version" => version = Some(value),
                "Architecture" => arch = Some(value),
                "Source" => source = Some(value),
                "Status" => status = value.split_whitespace().last().map(str::to_string),
                _ => {}
            }
        }
        let Some(name) = name.filter(|n| !n.is_empty()) else { continue };
        if out.len() >= PACKAGES_MAX {
            return Err(InventoryError::TooManyPackages(PACKAGES_MAX));
        }
        out.push(Package {
            name,
            version: version.unwrap_or_default(),
            arch: arch.unwrap_or_default(),
            status: status.unwrap_or_else(|| "unknown".into()),
            source,
        });
    }
    out.sort();
    Ok(out)
}

/// The `PRETTY_NAME` of an os-release file (falling back to `NAME`).
pub fn parse_os_release(text: &str) -> String {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_string())
    };
    field("PRETTY_NAME").or_else(|| field("NAME")).unwrap_or_else(|| "unknown".into())
}

/// `VERSION_CODENAME` of an os-release file (empty when absent).
pub fn parse_os_codename(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| truncate(v.trim().trim_matches('"')))
        .unwrap_or_default()
}

/// `MemTotal` of a /proc/meminfo text, in bytes.
pub fn parse_meminfo_total(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb.saturating_mul(1024))
}

/// Where [`collect`] reads from; tests point it at a fixture root.
#[derive(Debug, Clone)]
pub struct Sources<'a> {
    /// Prefix for every path (`/` on a real machine).
    pub root: &'a Path,
}

impl Sources<'_> {
    fn read(&self, rel: &str, limit: u64) -> Result<String, InventoryError> {
        read_bounded(&self.root.join(rel), limit)
    }
}

/// Collects the inventory. A missing dpkg database means no packages (not a Debian system);
/// an oversized or unreadable one is an error.
pub fn collect(src: &Sources<'_>) -> Result<Inventory, InventoryError> {
    let small = |rel| src.read(rel, SYSTEM_FILE_BYTES_MAX).ok();
    let packages = match src.read("var/lib/dpkg/status", DPKG_STATUS_BYTES_MAX) {
        Ok(text) => parse_dpkg_status(&text)?,
        Err(InventoryError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    Ok(Inventory {
        hostname: small("proc/sys/kernel/hostname")
            .or_else(|| small("etc/hostname"))
            .map_or_else(|| "unknown".into(), |s| truncate(s.trim())),
        os: small("etc/os-release").map_or_else(|| "unknown".into(), |s| parse_os_release(&s)),
        codename: small("etc/os-release").map(|s| parse_os_codename(&s)).unwrap_or_default(),
        kernel: small("proc/sys/kernel/osrelease")
            .map_or_else(|| "unknown".into(), |s| truncate(s.trim())),
        arch: std::env::consts::ARCH.to_string(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_bytes: small("proc/meminfo").map_or(0, |s| parse_meminfo_total(&s)),
        packages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Package: openssl\nStatus: install ok installed\nSource: openssl-src (3.0.11-1~deb12u2)\nArchitecture: amd64\nVersion: 3.0.11-1~deb12u2\nDescription: tools\n long text\n .\n more\n\nPackage: old-lib\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1.0\n\nStatus: install ok installed\nVersion: 9\n\nPackage: adduser\nStatus: install ok installed\nArchitecture: all\nVersion: 3.134\n";

    #[test]
    fn dpkg_status_is_parsed_sorted_and_summarised() {
        let pkgs = parse_dpkg_status(STATUS).unwrap();
        let names: Vec<_> = pkgs.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["adduser", "old-lib", "openssl"]);
        assert_eq!(pkgs[2].version, "3.0.11-1~deb12u2");
        assert_eq!(pkgs[1].status, "config-files");
        assert_eq!(pkgs[2].installed().source, "openssl-src");
        assert_eq!(pkgs[0].installed().source, "adduser");
        let inv = Inventory {
            hostname: "h".into(),
            os: "Debian".into(),
            codename: "bookworm".into(),
            kernel: "6.1".into(),
            arch: "x86_64".into(),
            cpus: 2,
            memory_bytes: 1,
            packages: pkgs.clone(),
        };
        let s = inv.summary();
        assert_eq!(s.package_count, 2, "config-files only is not installed");
        let mut changed = inv.clone();
        changed.packages[2].version = "3.0.12".into();
        assert_ne!(changed.summary().packages_digest, s.packages_digest);
    }

    #[test]
    fn garbage_and_limits() {
        assert!(parse_dpkg_status("\u{0}\u{1}garbage without colons\n\n::::\n")
            .unwrap()
            .is_empty());
        let long = format!("Package: {}\n", "x".repeat(10_000));
        assert_eq!(parse_dpkg_status(&long).unwrap()[0].name.len(), FIELD_BYTES_MAX);
        let many = "Package: p\n\n".repeat(PACKAGES_MAX + 1);
        assert!(matches!(parse_dpkg_status(&many), Err(InventoryError::TooManyPackages(_))));
    }

    #[test]
    fn collects_from_a_fixture_root_and_the_real_machine() {
        let root = std::env::temp_dir().join(format!("pm-inv-{}", std::process::id()));
        std::fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("var/lib/dpkg/status"), STATUS).unwrap();
        std::fs::write(
            root.join("etc/os-release"),
            "NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/hostname"), "branch-7\n").unwrap();
        let inv = collect(&Sources { root: &root }).unwrap();
        assert_eq!(inv.os, "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(inv.hostname, "branch-7");
        assert_eq!(inv.codename, "bookworm");
        assert_eq!(inv.packages.len(), 3);
        // An oversized status database is refused, not truncated silently.
        let f =
            std::fs::File::options().write(true).open(root.join("var/lib/dpkg/status")).unwrap();
        f.set_len(DPKG_STATUS_BYTES_MAX + 1).unwrap();
        assert!(matches!(collect(&Sources { root: &root }), Err(InventoryError::TooLarge { .. })));
        std::fs::remove_dir_all(&root).unwrap();
        // The machine running the tests: whatever it is, collection works and is consistent.
        let real = collect(&Sources { root: Path::new("/") }).unwrap();
        assert!(real.cpus >= 1);
        assert_eq!(
            real.summary().package_count as usize,
            real.packages.iter().filter(|p| p.status == "installed").count()
        );
        assert_eq!(parse_meminfo_total("MemTotal:       24000 kB\n"), 24000 * 1024);
    }
}
