//! The `dpkg` executor: the payload is a Debian package, installed with `dpkg -i`.
//!
//! Stage reads the package name and version from the payload (`dpkg-deb -f`) and records, once,
//! what the machine had before in `<workspace>/previous.json`: that version, nothing, or only
//! the package's configuration files. A stage repeated after the install keeps the first record,
//! which is what rollback returns to:
//!
//! - an earlier version: `dpkg -i` of its .deb (the caller passes it as `previous_payload` when
//!   the content store still has it; without it rollback reports failure rather than guess);
//! - nothing: `dpkg --purge`;
//! - configuration files only: `dpkg --remove`.
//!
//! Rollback then asks dpkg whether the recorded state is back. dpkg's own journal makes each of
//! its runs resumable: a `dpkg -i` killed half-way leaves the package half-installed, and running
//! the same step again completes it. Runs are unattended: stdin is null, debconf is told so, and
//! changed configuration files keep the local version (`--force-confdef --force-confold`).
//!
//! With a throwaway [`DpkgRoot`], every dpkg call is pointed at the tree (`--root`,
//! `--admindir`, `--instdir`, its own `--log`) and maintainer scripts run without chroot
//! (`--force-script-chrootless`, the DPKG_ROOT convention), so the tree needs no shell of its
//! own; it is meant for tests and sandboxes, never for packages whose scripts ignore DPKG_ROOT.

use super::{
    blocking, file, run::Program, with_command, DpkgRoot, ExecError, Executor, Step, StepCtx,
};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

/// The record of what was installed before.
const RECORD: &str = "previous.json";
/// Largest record read back.
const RECORD_BYTES_MAX: u64 = 64 * 1024;
/// Marks our lines in `dpkg-query` output, which shares a pipe with its warnings.
const QUERY_MARK: &str = "PATCHMESH-DPKG";
/// The status dpkg reports for a fully installed package.
const INSTALLED: &str = "install ok installed";

impl DpkgRoot {
    /// The dpkg database directory.
    pub fn admindir(&self) -> PathBuf {
        match &self.root {
            Some(r) => r.join("var/lib/dpkg"),
            None => PathBuf::from("/var/lib/dpkg"),
        }
    }

    /// Creates the skeleton dpkg needs in a throwaway root (database files, log directory);
    /// keeps whatever exists. Does nothing for the real system.
    pub fn prepare(&self) -> io::Result<()> {
        let Some(root) = &self.root else { return Ok(()) };
        let admin = self.admindir();
        for d in ["info", "updates", "triggers"] {
            fs::create_dir_all(admin.join(d))?;
        }
        fs::create_dir_all(root.join("var/log"))?;
        for f in ["status", "available"] {
            fs::OpenOptions::new().create(true).append(true).open(admin.join(f))?;
        }
        Ok(())
    }

    /// Options that point `dpkg` at this root.
    fn dpkg_args(&self) -> Vec<OsString> {
        let Some(r) = &self.root else { return Vec::new() };
        let opt = |name: &str, p: &Path| {
            let mut s = OsString::from(name);
            s.push(p);
            s
        };
        vec![
            opt("--root=", r),
            opt("--admindir=", &self.admindir()),
            opt("--instdir=", r),
            opt("--log=", &r.join("var/log/dpkg.log")),
            "--force-script-chrootless".into(),
            "--force-not-root".into(),
        ]
    }

    /// Options that point `dpkg-query` at this root.
    fn query_args(&self) -> Vec<OsString> {
        match &self.root {
            Some(_) => {
                let mut s = OsString::from("--admindir=");
                s.push(self.admindir());
                vec![s]
            }
            None => Vec::new(),
        }
    }
}

/// What the machine had before the install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Previous {
    /// Not installed (or never known to dpkg).
    Absent,
    /// Removed, configuration files kept.
    ConfigFiles,
    /// This version was installed (possibly half-configured; reinstalling it repairs that).
    Installed { version: String },
}

/// The stage record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    package: String,
    arch: String,
    previous: Previous,
}

/// Identity of a .deb.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DebInfo {
    package: String,
    version: String,
    arch: String,
}

/// What dpkg's database says about a package.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Query {
    Absent,
    Present { status: String, version: String },
}

impl Query {
    fn previous(&self) -> Previous {
        match self {
            Query::Absent => Previous::Absent,
            Query::Present { status, .. } if status.ends_with("config-files") => {
                Previous::ConfigFiles
            }
            Query::Present { version, .. } => Previous::Installed { version: version.clone() },
        }
    }

    fn describe(&self) -> String {
        match self {
            Query::Absent => "not installed".into(),
            Query::Present { status, version } => format!("{version} ({status})"),
        }
    }
}

impl Previous {
    fn describe(&self) -> String {
        match self {
            Previous::Absent => "nothing".into(),
            Previous::ConfigFiles => "configuration files only".into(),
            Previous::Installed { version } => format!("version {version}"),
        }
    }
}

/// Performs one step.
pub(super) async fn step(ex: &Executor, ctx: &mut StepCtx) -> Result<(bool, String), ExecError> {
    // A throwaway root named in the configuration works without a separate setup step.
    if let Some(root) = &ex.ws.dpkg.root {
        ex.ws.dpkg.prepare().map_err(|source| ExecError::Io {
            what: "preparing dpkg root",
            path: root.clone(),
            source,
        })?;
    }
    match ctx.step {
        Step::Stage => stage(ex, ctx).await,
        Step::Install => {
            let Some(rec) = read_record(&ex.ws.dir).await? else {
                return Err(ExecError::NotStaged(ex.ws.dir.clone()));
            };
            let out = dpkg(ex, ctx, &["-i".into(), ex.ws.payload.clone().into()]).await?;
            Ok((out.0, format!("dpkg -i {}: {}", rec.package, out.1)))
        }
        Step::Verify => {
            let r = verify(ex, ctx).await?;
            if !r.0 {
                return Ok(r);
            }
            let out = ctx.exec_optional(ex.spec.verify.as_deref()).await?;
            Ok(with_command(r, "verify", out))
        }
        Step::Rollback => {
            let r = rollback(ex, ctx).await?;
            if !r.0 {
                return Ok(r);
            }
            let out = ctx.exec_optional(ex.spec.rollback.as_deref()).await?;
            Ok(with_command(r, "rollback", out))
        }
    }
}

async fn stage(ex: &Executor, ctx: &mut StepCtx) -> Result<(bool, String), ExecError> {
    let checked = file::check_payload(ex).await?;
    if !checked.0 {
        return Ok(checked);
    }
    let info = match read_deb(ctx, &ex.ws.payload).await? {
        Ok(i) => i,
        Err(why) => return Ok((false, why)),
    };
    let what = format!("{} {} staged", info.package, info.version);
    if let Some(rec) = read_record(&ex.ws.dir).await? {
        if rec.package != info.package {
            return Err(ExecError::Record {
                path: ex.ws.dir.join(RECORD),
                reason: format!("records package {}, the payload is {}", rec.package, info.package),
            });
        }
        return Ok((
            true,
            format!("{what}; before: {} (recorded earlier)", rec.previous.describe()),
        ));
    }
    let q = match query(ex, ctx, &info.package, &info.arch).await? {
        Ok(q) => q,
        Err(why) => return Ok((false, why)),
    };
    let rec = Record { package: info.package, arch: info.arch, previous: q.previous() };
    write_record(&ex.ws.dir, &rec).await?;
    Ok((true, format!("{what}; before: {}", rec.previous.describe())))
}

async fn verify(ex: &Executor, ctx: &mut StepCtx) -> Result<(bool, String), ExecError> {
    let info = match read_deb(ctx, &ex.ws.payload).await? {
        Ok(i) => i,
        Err(why) => return Ok((false, why)),
    };
    let q = match query(ex, ctx, &info.package, &info.arch).await? {
        Ok(q) => q,
        Err(why) => return Ok((false, why)),
    };
    let ok = matches!(&q, Query::Present { status, version } if status == INSTALLED && *version == info.version);
    let detail = if ok {
        format!("{} {} installed", info.package, info.version)
    } else {
        format!("{} is {}, expected {} installed", info.package, q.describe(), info.version)
    };
    Ok((ok, detail))
}

async fn rollback(ex: &Executor, ctx: &mut StepCtx) -> Result<(bool, String), ExecError> {
    // Stage records before install can run, so without a record nothing was changed.
    let Some(rec) = read_record(&ex.ws.dir).await? else {
        return Ok((true, "never staged; nothing to roll back".into()));
    };
    let pkg = rec.package.clone();
    let (ran, how) = match &rec.previous {
        Previous::Installed { version } => {
            let Some(prev) = ex.ws.previous_payload.clone() else {
                return Ok((false, format!(
                    "{pkg} {version} was installed before, but its .deb is not available; cannot roll back"
                )));
            };
            let info = match read_deb(ctx, &prev).await? {
                Ok(i) => i,
                Err(why) => return Ok((false, why)),
            };
            if info.package != pkg || info.version != *version {
                return Ok((
                    false,
                    format!(
                        "previous payload is {} {}, expected {pkg} {version}",
                        info.package, info.version
                    ),
                ));
            }
            let args = ["--force-downgrade".into(), "-i".into(), prev.into_os_string()];
            dpkg(ex, ctx, &args).await?
        }
        Previous::Absent => dpkg(ex, ctx, &["--purge".into(), pkg.clone().into()]).await?,
        Previous::ConfigFiles => dpkg(ex, ctx, &["--remove".into(), pkg.clone().into()]).await?,
    };
    if !ran {
        return Ok((false, format!("returning {pkg} to {}: {how}", rec.previous.describe())));
    }
    let q = match query(ex, ctx, &pkg, &rec.arch).await? {
        Ok(q) => q,
        Err(why) => return Ok((false, why)),
    };
    let back = match (&rec.previous, &q) {
        (Previous::Installed { version }, Query::Present { status, version: now }) => {
            status == INSTALLED && now == version
        }
        (Previous::Installed { .. }, Query::Absent) => false,
        (Previous::Absent, Query::Absent) => true,
        (Previous::Absent, Query::Present { status, .. }) => status.ends_with("not-installed"),
        (Previous::ConfigFiles, Query::Absent) => true,
        (Previous::ConfigFiles, Query::Present { status, .. }) => {
            status.ends_with("config-files") || status.ends_with("not-installed")
        }
    };
    let detail = format!("{pkg} returned to {}: now {}", rec.previous.describe(), q.describe());
    Ok((back, if back { detail } else { format!("{detail}; rollback incomplete") }))
}

/// Runs dpkg on the workspace's root; returns success and a description.
async fn dpkg(
    ex: &Executor,
    ctx: &mut StepCtx,
    args: &[OsString],
) -> Result<(bool, String), ExecError> {
    let mut argv: Vec<OsString> = vec!["dpkg".into()];
    argv.extend(ex.ws.dpkg.dpkg_args());
    // Unattended: a conffile prompt would read end of file from the null stdin and fail.
    argv.extend(["--force-confdef".into(), "--force-confold".into()]);
    argv.extend(args.iter().cloned());
    let out = ctx.exec(Program::Argv(argv), &[("DEBIAN_FRONTEND", "noninteractive")]).await?;
    Ok((out.success(), out.describe()))
}

/// Package, version and architecture of a .deb; `Err` explains why it could not be read.
async fn read_deb(ctx: &mut StepCtx, deb: &Path) -> Result<Result<DebInfo, String>, ExecError> {
    let argv = vec![
        "dpkg-deb".into(),
        "-f".into(),
        deb.as_os_str().to_owned(),
        "Package".into(),
        "Version".into(),
        "Architecture".into(),
    ];
    let out = ctx.exec(Program::Argv(argv), &[]).await?;
    if !out.success() {
        return Ok(Err(format!("dpkg-deb could not read {}: {}", deb.display(), out.describe())));
    }
    let text = String::from_utf8_lossy(&out.output.bytes()).into_owned();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(": ")))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    match (field("Package"), field("Version")) {
        (Some(package), Some(version)) => {
            Ok(Ok(DebInfo { package, version, arch: field("Architecture").unwrap_or_default() }))
        }
        _ => Ok(Err(format!("{} has no Package or Version field", deb.display()))),
    }
}

/// What dpkg's database says about `package`; `Err` explains why it could not be asked.
async fn query(
    ex: &Executor,
    ctx: &mut StepCtx,
    package: &str,
    arch: &str,
) -> Result<Result<Query, String>, ExecError> {
    let mut argv: Vec<OsString> = vec!["dpkg-query".into()];
    argv.extend(ex.ws.dpkg.query_args());
    argv.push("-W".into());
    argv.push(format!("-f={QUERY_MARK}\t${{Status}}\t${{Version}}\t${{Architecture}}\n").into());
    argv.push(package.into());
    let out = ctx.exec(Program::Argv(argv), &[]).await?;
    let text = String::from_utf8_lossy(&out.output.bytes()).into_owned();
    // Several lines when a package is installed for more than one architecture.
    let lines: Vec<(&str, &str, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.strip_prefix(QUERY_MARK)?.strip_prefix('\t')?.split('\t');
            Some((f.next()?, f.next()?, f.next().unwrap_or("")))
        })
        .collect();
    // dpkg-query exits 1 when it knows no such package.
    if out.timed_out || !matches!(out.exit_code, Some(0) | Some(1)) {
        return Ok(Err(format!("dpkg-query {package}: {}", out.describe())));
    }
    let pick = lines.iter().find(|(_, _, a)| *a == arch).or(lines.first());
    Ok(Ok(match pick {
        None => Query::Absent,
        Some((status, _, _)) if status.ends_with("not-installed") => Query::Absent,
        Some((status, version, _)) => {
            Query::Present { status: status.to_string(), version: version.to_string() }
        }
    }))
}

/// The stage record, if stage wrote one.
async fn read_record(dir: &Path) -> Result<Option<Record>, ExecError> {
    let path = dir.join(RECORD);
    blocking(move || {
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ExecError::Io { what: "reading", path, source }),
        };
        let mut text = String::new();
        f.take(RECORD_BYTES_MAX).read_to_string(&mut text).map_err(|source| ExecError::Io {
            what: "reading",
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| ExecError::Record { path, reason: e.to_string() })
    })
    .await
}

/// Writes the stage record atomically: temporary file, flush, rename, flush directory.
async fn write_record(dir: &Path, rec: &Record) -> Result<(), ExecError> {
    let dir = dir.to_path_buf();
    let text = serde_json::to_vec_pretty(rec)
        .map_err(|e| ExecError::Record { path: dir.join(RECORD), reason: e.to_string() })?;
    blocking(move || {
        let tmp = dir.join(format!("{RECORD}.tmp"));
        let path = dir.join(RECORD);
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| ExecError::Io { what, path, source }
        };
        let mut f = File::create(&tmp).map_err(io("writing", &tmp))?;
        f.write_all(&text).and_then(|()| f.sync_all()).map_err(io("writing", &tmp))?;
        fs::rename(&tmp, &path).map_err(io("renaming into place", &path))?;
        File::open(&dir).and_then(|d| d.sync_all()).map_err(io("flushing", &dir))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let rec = Record {
            package: "pm-test".into(),
            arch: "all".into(),
            previous: Previous::Installed { version: "1.0".into() },
        };
        let text = serde_json::to_string(&rec).unwrap();
        assert!(text.contains("\"state\":\"installed\""), "{text}");
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), rec);
    }

    #[test]
    fn query_states_map_to_previous() {
        let q = |s: &str| Query::Present { status: s.into(), version: "1.0".into() };
        assert_eq!(q(INSTALLED).previous(), Previous::Installed { version: "1.0".into() });
        assert_eq!(
            q("install ok half-configured").previous(),
            Previous::Installed { version: "1.0".into() }
        );
        assert_eq!(q("deinstall ok config-files").previous(), Previous::ConfigFiles);
        assert_eq!(Query::Absent.previous(), Previous::Absent);
    }

    #[test]
    fn throwaway_root_options() {
        let r = DpkgRoot { root: Some("/tmp/r".into()) };
        let args: Vec<String> =
            r.dpkg_args().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(args.contains(&"--admindir=/tmp/r/var/lib/dpkg".to_string()));
        assert!(args.contains(&"--instdir=/tmp/r".to_string()));
        assert!(DpkgRoot::default().dpkg_args().is_empty());
        assert!(DpkgRoot::default().query_args().is_empty());
    }
}
