//! Executors: how a node performs the steps of one install -- stage, install, verify, roll back.
//!
//! The protocol core decides *when* a machine installs; an [`Executor`] performs one step at a
//! time when asked. The node's install journal persists "about to run step X" before each call
//! and, after a crash (kill -9, power loss), runs the same step again. Every step is therefore
//! written to be **idempotent**, and to change the machine **atomically where the OS allows**,
//! so that any sequence of interrupted and repeated steps ends in the old state or the new one,
//! never a mix:
//!
//! - state the rollback needs is recorded once, during stage, and never overwritten by a later
//!   stage (which, after an install, would record the *new* version as the "old" one);
//! - files are replaced by writing a sibling temporary file, flushing it, and renaming it over
//!   the target, then flushing the directory;
//! - a step that finds its work already done does it again harmlessly.
//!
//! Kinds (see [`ExecKind`]): `file` replaces one file with the payload (`file.rs`); `command`
//! runs admin-signed shell commands (`command.rs`); `dpkg` installs the payload as a Debian
//! package (`dpkg.rs`). Every external program runs in its own process group with the step's
//! deadline and a bounded output tail (`run.rs`), with `PATCHMESH_PAYLOAD`,
//! `PATCHMESH_CONTENT_ID` (hex), `PATCHMESH_WORKDIR`, `PATCHMESH_STEP` and, for `file`,
//! `PATCHMESH_TARGET` in its environment, the workspace as its directory and a null stdin.
//!
//! Outcomes: a step that ran and failed -- non-zero exit, timeout, hash mismatch -- returns
//! `Ok(StepReport { ok: false, .. })`; `Err` means the step could not even be attempted.

mod command;
mod dpkg;
mod file;
mod run;

use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use tokio::time::Instant;

/// Step timeout used when the spec says 0.
pub const TIMEOUT_MS_DEFAULT: u64 = 300_000;
/// Longest step timeout a spec may ask for (a day: long enough for any package, short enough
/// that a typo does not park a rollout forever).
pub const TIMEOUT_MS_MAX: u64 = 24 * 3600 * 1000;
/// Bytes of program output kept in a [`StepReport`].
pub const OUTPUT_BYTES_MAX: usize = 16 * 1024;
/// Bytes of a [`StepReport`]'s one-line detail.
pub const DETAIL_BYTES_MAX: usize = 512;
/// Longest shell command a spec may carry.
pub const COMMAND_BYTES_MAX: usize = 64 * 1024;

/// Which executor performs an install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecKind {
    /// Replace one file with the payload.
    File,
    /// Run admin-signed shell commands.
    Command,
    /// Install the payload as a Debian package.
    Dpkg,
}

impl ExecKind {
    /// The name used in patch manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecKind::File => "file",
            ExecKind::Command => "command",
            ExecKind::Dpkg => "dpkg",
        }
    }
}

impl fmt::Display for ExecKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExecKind {
    type Err = ExecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "file" => Ok(ExecKind::File),
            "command" => Ok(ExecKind::Command),
            "dpkg" => Ok(ExecKind::Dpkg),
            other => Err(ExecError::UnknownKind(one_line(other, 64))),
        }
    }
}

/// What the admin-signed patch says about installing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// The executor.
    pub kind: ExecKind,
    /// `file`: the absolute path to replace; `command`: the install command; `dpkg`: must be
    /// absent.
    pub install: Option<String>,
    /// A shell command that checks the install (all kinds); for `file` the content hash of the
    /// target is checked first.
    pub verify: Option<String>,
    /// `command`: the rollback command; `file` and `dpkg`: a command run after the built-in
    /// rollback succeeded.
    pub rollback: Option<String>,
    /// Limit for each step; 0 means [`TIMEOUT_MS_DEFAULT`].
    pub timeout_ms: u64,
}

/// Where one install happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    /// Private per-install directory (e.g. `<data>/installs/<rollout id>`), created if missing.
    pub dir: PathBuf,
    /// The verified payload, read only.
    pub payload: PathBuf,
    /// BLAKE3 of the payload.
    pub content_id: [u8; 32],
    /// `dpkg`: the previously installed package's .deb, if the content store still has it.
    pub previous_payload: Option<PathBuf>,
    /// Where dpkg operates.
    pub dpkg: DpkgRoot,
}

/// The dpkg database and file tree the `dpkg` executor works on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DpkgRoot {
    /// `None`: the real system. `Some(r)`: a throwaway tree at `r` with its database at
    /// `r/var/lib/dpkg` (tests, sandboxes); see [`DpkgRoot::prepare`].
    pub root: Option<PathBuf>,
}

/// What one step did, for the journal and the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReport {
    /// The step reached its goal.
    pub ok: bool,
    /// Exit code of the step's last program, if one ran and exited.
    pub exit_code: Option<i32>,
    /// A program ran past the step's deadline and was killed.
    pub timed_out: bool,
    /// Wall time of the step.
    pub duration_ms: u64,
    /// Tail of the programs' stdout and stderr, at most [`OUTPUT_BYTES_MAX`] bytes.
    pub output: String,
    /// One-line summary, at most [`DETAIL_BYTES_MAX`] bytes.
    pub detail: String,
}

/// Why a step could not be attempted.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A file or directory of the step could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The spec names an executor this node does not have.
    #[error("unknown executor kind {0:?} (known: file, command, dpkg)")]
    UnknownKind(String),
    /// The spec or workspace cannot work as given (missing target, relative path, ...).
    #[error("bad executor spec: {0}")]
    BadSpec(String),
    /// The payload could not be read.
    #[error("payload {}: {source}", path.display())]
    Payload {
        /// The payload file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Install was asked for before stage completed.
    #[error("nothing staged in {}; stage first", .0.display())]
    NotStaged(PathBuf),
    /// The `file` target is not a regular file we can replace atomically.
    #[error("target {}: {reason}", path.display())]
    Target {
        /// The target.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A record the step wrote earlier is unreadable.
    #[error("record {}: {reason}", path.display())]
    Record {
        /// The record file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A program could not be started.
    #[error("could not run {program}: {source}")]
    Spawn {
        /// The program and its arguments.
        program: String,
        /// The cause.
        source: io::Error,
    },
    /// A background file task ended abnormally.
    #[error("file task ended abnormally: {0}")]
    Aborted(String),
}

/// The four steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Stage,
    Install,
    Verify,
    Rollback,
}

impl Step {
    fn as_str(self) -> &'static str {
        match self {
            Step::Stage => "stage",
            Step::Install => "install",
            Step::Verify => "verify",
            Step::Rollback => "rollback",
        }
    }
}

/// Performs the steps of one install.
#[derive(Debug, Clone)]
pub struct Executor {
    spec: ExecSpec,
    ws: Workspace,
    /// The `file` target, normalised.
    target: Option<PathBuf>,
    timeout: Duration,
}

impl Executor {
    /// Checks the spec and workspace; nothing on disk is touched.
    pub fn new(spec: ExecSpec, ws: Workspace) -> Result<Executor, ExecError> {
        let timeout_ms = match spec.timeout_ms {
            0 => TIMEOUT_MS_DEFAULT,
            t if t > TIMEOUT_MS_MAX => {
                return Err(bad(format!("timeout_ms {t} exceeds the limit {TIMEOUT_MS_MAX}")))
            }
            t => t,
        };
        for (name, cmd) in [("verify", &spec.verify), ("rollback", &spec.rollback)] {
            if let Some(c) = cmd {
                check_command(name, c)?;
            }
        }
        check_absolute("workspace dir", &ws.dir)?;
        check_absolute("payload", &ws.payload)?;
        if let Some(p) = &ws.previous_payload {
            check_absolute("previous payload", p)?;
        }
        if let Some(r) = &ws.dpkg.root {
            check_absolute("dpkg root", r)?;
        }
        let target = match spec.kind {
            ExecKind::File => {
                let t =
                    spec.install.as_deref().ok_or_else(|| bad("file kind needs a target path"))?;
                Some(file::check_target(t)?)
            }
            ExecKind::Command => {
                let c = spec
                    .install
                    .as_deref()
                    .ok_or_else(|| bad("command kind needs an install command"))?;
                check_command("install", c)?;
                None
            }
            ExecKind::Dpkg => {
                if spec.install.is_some() {
                    return Err(bad(
                        "dpkg kind takes no install field; the payload is the package",
                    ));
                }
                None
            }
        };
        Ok(Executor { spec, ws, target, timeout: Duration::from_millis(timeout_ms) })
    }

    /// The spec this executor runs.
    pub fn spec(&self) -> &ExecSpec {
        &self.spec
    }

    /// The workspace this executor uses.
    pub fn workspace(&self) -> &Workspace {
        &self.ws
    }

    /// Prepares the install and records what rollback needs (once: a repeated stage keeps the
    /// first record).
    pub async fn stage(&self) -> Result<StepReport, ExecError> {
        self.step(Step::Stage).await
    }

    /// Makes the change.
    pub async fn install(&self) -> Result<StepReport, ExecError> {
        self.step(Step::Install).await
    }

    /// Checks the change is in place; also used for periodic re-checks while soaking.
    pub async fn verify(&self) -> Result<StepReport, ExecError> {
        self.step(Step::Verify).await
    }

    /// Returns the machine to the state recorded by stage. Safe when install never ran.
    pub async fn rollback(&self) -> Result<StepReport, ExecError> {
        self.step(Step::Rollback).await
    }

    /// Removes the workspace directory once the install reached a terminal state.
    pub fn cleanup(&self) -> io::Result<()> {
        match std::fs::remove_dir_all(&self.ws.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    async fn step(&self, step: Step) -> Result<StepReport, ExecError> {
        let mut ctx = StepCtx::new(self, step);
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.ws.dir).map_err(
            |source| ExecError::Io { what: "creating", path: self.ws.dir.clone(), source },
        )?;
        let (ok, detail) = match self.spec.kind {
            ExecKind::File => file::step(self, &mut ctx).await?,
            ExecKind::Command => command::step(self, &mut ctx).await?,
            ExecKind::Dpkg => dpkg::step(self, &mut ctx).await?,
        };
        Ok(ctx.report(ok, &detail))
    }
}

/// The running state of one step: its deadline, environment and transcript.
struct StepCtx {
    step: Step,
    kind: ExecKind,
    started: Instant,
    deadline: Instant,
    cwd: PathBuf,
    env: Vec<(String, OsString)>,
    transcript: run::Tail,
    exit_code: Option<i32>,
    timed_out: bool,
}

impl StepCtx {
    fn new(ex: &Executor, step: Step) -> StepCtx {
        let started = Instant::now();
        let mut env = vec![
            ("PATCHMESH_PAYLOAD".to_string(), ex.ws.payload.clone().into_os_string()),
            ("PATCHMESH_CONTENT_ID".to_string(), hex::encode(ex.ws.content_id).into()),
            ("PATCHMESH_WORKDIR".to_string(), ex.ws.dir.clone().into_os_string()),
            ("PATCHMESH_STEP".to_string(), step.as_str().into()),
        ];
        if let Some(t) = &ex.target {
            env.push(("PATCHMESH_TARGET".to_string(), t.clone().into_os_string()));
        }
        StepCtx {
            step,
            kind: ex.spec.kind,
            started,
            deadline: started + ex.timeout,
            cwd: ex.ws.dir.clone(),
            env,
            transcript: run::Tail::default(),
            exit_code: None,
            timed_out: false,
        }
    }

    /// Runs one program with the step's deadline, adding its output to the transcript.
    async fn exec(
        &mut self,
        program: run::Program,
        extra_env: &[(&str, &str)],
    ) -> Result<run::RunOutcome, ExecError> {
        let mut env = self.env.clone();
        env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), OsString::from(v))));
        self.transcript.push(format!("$ {}\n", program.display()).as_bytes());
        let out = run::run(&program, &self.cwd, &env, self.deadline).await?;
        self.transcript.append(&out.output);
        if out.timed_out {
            self.transcript.push(b"[timed out; process group killed]\n");
        }
        self.exit_code = out.exit_code;
        self.timed_out |= out.timed_out;
        Ok(out)
    }

    /// Runs an optional admin command; `None` when there is none.
    async fn exec_optional(
        &mut self,
        command: Option<&str>,
    ) -> Result<Option<run::RunOutcome>, ExecError> {
        match command {
            Some(c) => Ok(Some(self.exec(run::Program::Shell(c.to_string()), &[]).await?)),
            None => Ok(None),
        }
    }

    fn report(self, ok: bool, detail: &str) -> StepReport {
        let detail =
            one_line(&format!("{} {}: {detail}", self.kind, self.step.as_str()), DETAIL_BYTES_MAX);
        StepReport {
            ok: ok && !self.timed_out,
            exit_code: self.exit_code,
            timed_out: self.timed_out,
            duration_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            output: self.transcript.text(),
            detail,
        }
    }
}

/// Appends an optional command's result to a built-in step's outcome: the step is ok only if
/// both are.
fn with_command(
    (ok, mut detail): (bool, String),
    name: &str,
    out: Option<run::RunOutcome>,
) -> (bool, String) {
    match out {
        None => (ok, detail),
        Some(o) => {
            detail.push_str(&format!("; {name} command: {}", o.describe()));
            (ok && o.success(), detail)
        }
    }
}

/// Runs blocking file work off the async threads: payloads can be hundreds of megabytes.
async fn blocking<T, F>(f: F) -> Result<T, ExecError>
where
    F: FnOnce() -> Result<T, ExecError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| ExecError::Aborted(e.to_string()))?
}

fn bad(msg: impl Into<String>) -> ExecError {
    ExecError::BadSpec(msg.into())
}

fn check_command(name: &str, cmd: &str) -> Result<(), ExecError> {
    if cmd.trim().is_empty() {
        return Err(bad(format!("empty {name} command")));
    }
    if cmd.len() > COMMAND_BYTES_MAX {
        return Err(bad(format!(
            "{name} command is {} bytes, limit {COMMAND_BYTES_MAX}",
            cmd.len()
        )));
    }
    if cmd.contains('\0') {
        return Err(bad(format!("{name} command contains a NUL byte")));
    }
    Ok(())
}

fn check_absolute(name: &str, p: &Path) -> Result<(), ExecError> {
    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        return Err(bad(format!("{name} must be an absolute path without '..': {}", p.display())));
    }
    Ok(())
}

/// `s` on one line (control characters become spaces), cut to `max_bytes` at a character
/// boundary.
fn one_line(s: &str, max_bytes: usize) -> String {
    let flat: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.len() <= max_bytes {
        return flat;
    }
    let mut end = max_bytes.saturating_sub(3);
    while !flat.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &flat[..end])
}

/// Short hex of a hash for detail lines.
fn short_hex(h: &[u8; 32]) -> String {
    hex::encode(&h[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_print() {
        for k in [ExecKind::File, ExecKind::Command, ExecKind::Dpkg] {
            assert_eq!(k.as_str().parse::<ExecKind>().unwrap(), k);
        }
        assert!(matches!("rpm".parse::<ExecKind>(), Err(ExecError::UnknownKind(s)) if s == "rpm"));
        assert!(matches!("File".parse::<ExecKind>(), Err(ExecError::UnknownKind(_))));
    }

    #[test]
    fn one_line_flattens_and_cuts() {
        assert_eq!(one_line("a\nb\tc", 100), "a b c");
        let s = one_line(&"é".repeat(400), DETAIL_BYTES_MAX);
        assert!(s.len() <= DETAIL_BYTES_MAX);
        assert!(s.ends_with("..."));
    }
}
