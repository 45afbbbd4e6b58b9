//! Running one external program for a step: its own process group, a deadline, and a bounded
//! tail of its merged output.
//!
//! Why a process group: an install command is a shell that may start children (`make`, a
//! `sleep` in the background, a daemon that forgot to detach). Killing only the shell on timeout
//! would leave those running and, worse, holding the output pipe open so the step never sees end
//! of file. Every program therefore starts as the leader of a new group, and when the program is
//! done with -- by timeout, by the caller dropping the step, or normally -- the whole group gets
//! SIGKILL: nothing a step started outlives it, so a re-run after a crash does not race a
//! leftover of the previous attempt. (A process that left the group with `setsid` is out of
//! reach; we stop waiting for it rather than hang.)
//!
//! Output: stdout and stderr share one pipe, so the tail reads in the order it was written, as on
//! a terminal. Only the last [`OUTPUT_BYTES_MAX`] bytes are kept while reading, so a program that
//! prints 100 MB costs the node 16 KiB.

use super::{ExecError, OUTPUT_BYTES_MAX};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::time::{sleep_until, timeout, Instant};

/// How long processes left in the group may keep the output open after the leader exited:
/// long enough for a child to flush its last lines, short enough that a forgotten background
/// job does not hold the step.
pub(crate) const STRAGGLER_GRACE_MS: u64 = 1_000;
/// How long we keep reading after the group was killed: the pipe only holds what was already
/// written, unless a process that escaped the group still has it open.
const DRAIN_AFTER_KILL_MS: u64 = 200;
/// How long we wait to reap a leader after SIGKILL; a process stuck in uninterruptible I/O may
/// take a while, and tokio reaps it in the background if we give up.
const REAP_AFTER_KILL_MS: u64 = 5_000;
/// Read buffer for the output pipe.
const READ_CHUNK_BYTES: usize = 8 * 1024;

/// The last bytes of a stream, and how many came before them.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tail {
    bytes: VecDeque<u8>,
    dropped_bytes: u64,
}

impl Tail {
    /// Appends bytes, forgetting the oldest beyond [`OUTPUT_BYTES_MAX`].
    pub(crate) fn push(&mut self, data: &[u8]) {
        let keep = if data.len() > OUTPUT_BYTES_MAX {
            let skip = data.len() - OUTPUT_BYTES_MAX;
            self.dropped_bytes += (self.bytes.len() + skip) as u64;
            self.bytes.clear();
            &data[skip..]
        } else {
            data
        };
        let overflow = (self.bytes.len() + keep.len()).saturating_sub(OUTPUT_BYTES_MAX);
        if overflow > 0 {
            self.bytes.drain(..overflow);
            self.dropped_bytes += overflow as u64;
        }
        self.bytes.extend(keep);
    }

    /// Appends another tail, noting what it had already dropped.
    pub(crate) fn append(&mut self, other: &Tail) {
        if other.dropped_bytes > 0 {
            self.push(format!("[{} earlier bytes omitted]\n", other.dropped_bytes).as_bytes());
        }
        let (a, b) = other.bytes.as_slices();
        self.push(a);
        self.push(b);
    }

    /// The kept bytes as one slice (for parsing small outputs).
    pub(crate) fn bytes(&self) -> Vec<u8> {
        self.bytes.iter().copied().collect()
    }

    /// The tail as text of at most [`OUTPUT_BYTES_MAX`] bytes: invalid UTF-8 becomes U+FFFD
    /// (which is longer than the byte it replaces, hence the second cut).
    pub(crate) fn text(&self) -> String {
        let mut bytes = self.bytes();
        let mut dropped = self.dropped_bytes;
        if dropped > 0 {
            // The cut may have split a character; its continuation bytes are noise.
            let lead = bytes.iter().take_while(|b| (**b & 0xC0) == 0x80).count().min(3);
            bytes.drain(..lead);
            dropped += lead as u64;
        }
        let body = String::from_utf8_lossy(&bytes);
        let note = if dropped > 0 {
            format!("[{dropped} earlier bytes omitted]\n")
        } else {
            String::new()
        };
        let room = OUTPUT_BYTES_MAX.saturating_sub(note.len());
        let mut start = body.len().saturating_sub(room);
        while !body.is_char_boundary(start) {
            start += 1;
        }
        format!("{note}{}", &body[start..])
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub(crate) enum Program {
    /// A shell command line, run as `sh -c <line>`.
    Shell(String),
    /// A program and its arguments, run without a shell.
    Argv(Vec<OsString>),
}

impl Program {
    /// A one-line description for the transcript; long command lines are cut.
    pub(crate) fn display(&self) -> String {
        let line = match self {
            Program::Shell(s) => format!("sh -c {s}"),
            Program::Argv(v) => {
                v.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
            }
        };
        super::one_line(&line, 300)
    }
}

/// How a run ended.
#[derive(Debug)]
pub(crate) struct RunOutcome {
    /// The leader's exit code, if it exited on its own.
    pub exit_code: Option<i32>,
    /// The signal that ended the leader, if one did.
    pub signal: Option<i32>,
    /// The deadline passed while the leader was running.
    pub timed_out: bool,
    /// After the leader exited, some process still held the output open past the grace period.
    pub stragglers: bool,
    /// The merged output's tail.
    pub output: Tail,
}

impl RunOutcome {
    /// The program ran to completion and reported success.
    pub(crate) fn success(&self) -> bool {
        !self.timed_out && self.exit_code == Some(0)
    }

    /// A few words for a step's detail line.
    pub(crate) fn describe(&self) -> String {
        let mut s = if self.timed_out {
            "timed out, process group killed".to_string()
        } else if let Some(code) = self.exit_code {
            format!("exit {code}")
        } else if let Some(sig) = self.signal {
            format!("killed by signal {sig}")
        } else {
            "ended without status".to_string()
        };
        if self.stragglers {
            s.push_str(" (background processes held the output; group killed)");
        }
        s
    }

    fn timed_out_before_start() -> RunOutcome {
        RunOutcome {
            exit_code: None,
            signal: None,
            timed_out: true,
            stragglers: false,
            output: Tail::default(),
        }
    }
}

/// Kills a process group when dropped, so a step future dropped mid-run (daemon shutdown, a
/// caller's own timeout) still takes its processes with it.
struct GroupGuard {
    pgid: Option<i32>,
}

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // ESRCH means the group is already empty, which is what we want.
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `program` in `cwd` with `env` added to ours, until it ends or `deadline` passes.
pub(crate) async fn run(
    program: &Program,
    cwd: &Path,
    env: &[(String, OsString)],
    deadline: Instant,
) -> Result<RunOutcome, ExecError> {
    if Instant::now() >= deadline {
        return Ok(RunOutcome::timed_out_before_start());
    }
    let spawn_err = |source| ExecError::Spawn { program: program.display(), source };
    let (reader, writer) = std::io::pipe().map_err(spawn_err)?;
    let writer_err = writer.try_clone().map_err(spawn_err)?;
    let mut cmd = match program {
        Program::Shell(line) => {
            let mut c = tokio::process::Command::new("sh");
            c.arg("-c").arg(line);
            c
        }
        Program::Argv(argv) => {
            let Some((first, rest)) = argv.split_first() else {
                return Err(ExecError::BadSpec("empty program".into()));
            };
            let mut c = tokio::process::Command::new(first);
            c.args(rest);
            c
        }
    };
    cmd.current_dir(cwd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer_err))
        .process_group(0)
        .kill_on_drop(true);
    let spawned = cmd.spawn();
    // The command holds our copies of the pipe's write end; until they close, the reader would
    // never see end of file.
    drop(cmd);
    let mut child = spawned.map_err(spawn_err)?;
    let mut guard = GroupGuard { pgid: child.id().and_then(|p| i32::try_from(p).ok()) };
    let mut rx = pipe::Receiver::from_owned_fd(OwnedFd::from(reader)).map_err(spawn_err)?;

    let mut output = Tail::default();
    let mut status: Option<ExitStatus> = None;
    let mut timed_out = false;
    let mut stragglers = false;
    let mut eof = false;
    {
        let pump = pump(&mut rx, &mut output);
        tokio::pin!(pump);
        let mut exited_at: Option<Instant> = None;
        while !(eof && status.is_some()) {
            let until = match exited_at {
                Some(t) => deadline.min(t + Duration::from_millis(STRAGGLER_GRACE_MS)),
                None => deadline,
            };
            tokio::select! {
                r = child.wait(), if status.is_none() => {
                    status = Some(r.map_err(spawn_err)?);
                    exited_at = Some(Instant::now());
                }
                // A read error ends the reading like end of file; the exit status still counts.
                _ = &mut pump, if !eof => eof = true,
                _ = sleep_until(until) => {
                    if status.is_none() {
                        timed_out = true;
                    } else {
                        stragglers = true;
                    }
                    break;
                }
            }
        }
        // Kill the group while the leader is unreaped (on timeout), so its id cannot have been
        // reused; after a normal exit this clears anything the program left behind.
        guard.kill();
        if status.is_none() {
            if let Ok(r) = timeout(Duration::from_millis(REAP_AFTER_KILL_MS), child.wait()).await {
                status = Some(r.map_err(spawn_err)?);
            }
        }
        if !eof {
            let _ = timeout(Duration::from_millis(DRAIN_AFTER_KILL_MS), &mut pump).await;
        }
    }
    Ok(RunOutcome {
        exit_code: if timed_out { None } else { status.and_then(|s| s.code()) },
        signal: status.and_then(|s| s.signal()),
        timed_out,
        stragglers,
        output,
    })
}

/// Reads the pipe to end of file into `tail`.
async fn pump(rx: &mut pipe::Receiver, tail: &mut Tail) -> std::io::Result<()> {
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let n = rx.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        tail.push(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail::default();
        t.push(&vec![b'a'; OUTPUT_BYTES_MAX]);
        t.push(b"xyz");
        assert_eq!(t.dropped_bytes, 3);
        let b = t.bytes();
        assert_eq!(b.len(), OUTPUT_BYTES_MAX);
        assert!(b.ends_with(b"axyz"));
        t.push(&vec![b'b'; OUTPUT_BYTES_MAX * 2 + 1]);
        assert_eq!(t.dropped_bytes, 3 + OUTPUT_BYTES_MAX as u64 + OUTPUT_BYTES_MAX as u64 + 1);
        assert!(t.bytes().iter().all(|b| *b == b'b'));
    }

    #[test]
    fn tail_text_is_bounded_even_when_invalid_utf8_expands() {
        let mut t = Tail::default();
        t.push(&vec![0xFFu8; OUTPUT_BYTES_MAX * 2]);
        let s = t.text();
        assert!(s.len() <= OUTPUT_BYTES_MAX, "{}", s.len());
        assert!(s.starts_with('['));
        // A cut through a multi-byte character does not leave half of it at the front.
        let mut t = Tail::default();
        t.push(&"é".repeat(OUTPUT_BYTES_MAX).into_bytes());
        let s = t.text();
        assert!(s.len() <= OUTPUT_BYTES_MAX);
        assert!(!s.contains('\u{FFFD}'));
    }

    #[tokio::test]
    async fn exit_code_and_merged_output() {
        let dir = std::env::temp_dir();
        let deadline = Instant::now() + Duration::from_secs(10);
        let p = Program::Shell("echo out; echo err >&2; exit 3".into());
        let r = run(&p, &dir, &[], deadline).await.unwrap();
        assert_eq!(r.exit_code, Some(3));
        assert!(!r.success());
        assert_eq!(String::from_utf8(r.output.bytes()).unwrap(), "out\nerr\n");
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let deadline = Instant::now() + Duration::from_secs(10);
        let p = Program::Argv(vec!["/nonexistent/patchmesh-no-such-program".into()]);
        let r = run(&p, &std::env::temp_dir(), &[], deadline).await;
        assert!(matches!(r, Err(ExecError::Spawn { .. })), "{r:?}");
    }

    #[tokio::test]
    async fn past_deadline_does_not_start() {
        let dir = tempfile::tempdir().unwrap();
        let p = Program::Shell("touch started".into());
        let r = run(&p, dir.path(), &[], Instant::now()).await.unwrap();
        assert!(r.timed_out);
        assert!(!dir.path().join("started").exists());
    }
}
