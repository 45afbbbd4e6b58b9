//! Advance notice to the people at the machine, and their deferrals.
//!
//! With `[notice]` in the configuration, an install step first asks `users_command` who is
//! logged in. Nobody: the install runs at once. Someone: the node runs the notice hook
//! (default `wall`, and `notify-send` where present), records a `user_notice` audit event and
//! waits `lead_s` before it installs. Meanwhile anyone at the machine may run `patchmesh
//! defer`, which reaches the node over the user socket (world-accessible, it answers only
//! "what is coming" and "defer"): each deferral puts the install off by the rollout's
//! `each_ms`, up to its `max` (published by the rollout's author, see
//! [`patchmesh_protocol::rollout::policy::Deferrals`]), and never past the rollout's deadline.
//! Deferrals used are kept in `<data_dir>/deferrals.json`, so a restart does not hand out
//! more. The install keeps its site slot while it waits: it is an install that has begun.

use crate::config::NoticeConfig;
use crate::control::{self, NoticeView, UserRequest};
use patchmesh_protocol::audit::Event;
use patchmesh_protocol::ids::{Millis, RolloutId};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The most bytes `users_command` may print that are read.
const USERS_OUTPUT_MAX: usize = 64 * 1024;
/// How long `users_command` and the hook may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// User-socket connections served at once (more are closed at once).
const USER_CONNECTIONS_MAX: usize = 16;
/// A user-socket request is far smaller than this.
pub(super) const USER_REQUEST_MAX: u64 = 1024;

/// What the install is, for the notice.
#[derive(Clone, Debug)]
pub(super) struct Install {
    /// The rollout.
    pub rollout: RolloutId,
    /// Patch name and version.
    pub patch: String,
    /// Its version.
    pub version: String,
    /// Deferrals the rollout allows, and how long each lasts.
    pub allowed: u8,
    /// How long one deferral puts the install off.
    pub each_ms: u64,
    /// The rollout's deadline.
    pub deadline: Option<Millis>,
}

/// An install waiting on its notice.
#[derive(Clone, Debug)]
struct Pending {
    install: Install,
    install_at: Millis,
    used: u8,
    users: Vec<String>,
}

/// Why a deferral is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeferError {
    /// The rollout allows none.
    #[error("this install cannot be deferred: its rollout allows no deferrals")]
    NotAllowed,
    /// All used.
    #[error("no deferrals left: all {0} this rollout allows are used")]
    NoneLeft(u8),
    /// The install is already at the deadline.
    #[error("the install is due by the rollout's deadline ({0}) and cannot move past it")]
    AtDeadline(String),
}

/// When the install starts after one more deferral from `install_at` (by `each_ms`, from now
/// if the install was already due), clamped to the deadline.
pub fn defer(
    now: Millis,
    install_at: Millis,
    used: u8,
    allowed: u8,
    each_ms: u64,
    deadline: Option<Millis>,
) -> Result<Millis, DeferError> {
    if allowed == 0 {
        return Err(DeferError::NotAllowed);
    }
    if used >= allowed {
        return Err(DeferError::NoneLeft(allowed));
    }
    let next = install_at.max(now).plus(each_ms);
    match deadline {
        Some(d) if install_at >= d => Err(DeferError::AtDeadline(rfc3339(d))),
        Some(d) => Ok(next.min(d)),
        None => Ok(next),
    }
}

fn rfc3339(t: Millis) -> String {
    jiff::Timestamp::from_millisecond(t.0 as i64)
        .map_or_else(|_| t.0.to_string(), |ts| ts.to_string())
}

/// The notices of one node, shared by the install tasks and the control handler.
pub(super) struct Notices {
    cfg: NoticeConfig,
    used_path: PathBuf,
    pending: Mutex<BTreeMap<RolloutId, Pending>>,
    audit: super::audit::SharedLog,
}

impl Notices {
    pub(super) fn new(cfg: NoticeConfig, data_dir: &Path, audit: super::audit::SharedLog) -> Self {
        Notices {
            cfg,
            used_path: data_dir.join("deferrals.json"),
            pending: Mutex::new(BTreeMap::new()),
            audit,
        }
    }

    fn used_counts(&self) -> BTreeMap<String, u8> {
        std::fs::read(&self.used_path)
            .ok()
            .filter(|b| b.len() < 1 << 20)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save_used(&self, rollout: &RolloutId, used: u8) {
        let mut all = self.used_counts();
        all.insert(rollout.to_string(), used);
        let tmp = self.used_path.with_extension("json.tmp");
        let ok = serde_json::to_vec(&all).ok().is_some_and(|b| std::fs::write(&tmp, b).is_ok())
            && std::fs::rename(&tmp, &self.used_path).is_ok();
        if !ok {
            tracing::error!(path = %self.used_path.display(), "could not record a deferral");
        }
    }

    /// Before an install: tells whoever is logged in and waits until the (possibly deferred)
    /// install time. Returns at once when nobody is.
    pub(super) async fn before_install(self: Arc<Self>, install: Install) {
        let users = logged_in(&self.cfg.users_command).await;
        if users.is_empty() {
            return;
        }
        let now = crate::clock::now_ms();
        let mut install_at = now.plus(self.cfg.lead_s * 1000);
        if let Some(d) = install.deadline {
            install_at = install_at.min(d.max(now));
        }
        let used = self.used_counts().get(&install.rollout.to_string()).copied().unwrap_or(0);
        let rollout = install.rollout;
        let p = Pending { install, install_at, used, users };
        self.tell(&p).await;
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(rollout, p);
        loop {
            let at = match self.pending.lock().unwrap_or_else(|e| e.into_inner()).get(&rollout) {
                Some(p) => p.install_at,
                None => break,
            };
            let now = crate::clock::now_ms();
            if now >= at {
                break;
            }
            tokio::time::sleep(Duration::from_millis((at.0 - now.0).min(1000))).await;
        }
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&rollout);
    }

    /// Runs the hook and records the notice.
    async fn tell(&self, p: &Pending) {
        let now = crate::clock::now_ms();
        let in_s = p.install_at.0.saturating_sub(now.0) / 1000;
        let left = p.install.allowed.saturating_sub(p.used);
        let when = jiff::Timestamp::from_millisecond(p.install_at.0 as i64)
            .map(|t| t.strftime("%H:%M UTC").to_string())
            .unwrap_or_default();
        let mut msg = format!(
            "patchmesh will install {} {} on this machine at {when} (in {} min); save your work.",
            p.install.patch,
            p.install.version,
            in_s.div_ceil(60)
        );
        if left > 0 {
            msg.push_str(&format!(
                " Run `patchmesh defer` to put it off by {} min ({left} deferral{} left).",
                p.install.each_ms / 60_000,
                if left == 1 { "" } else { "s" }
            ));
        }
        let env = [
            ("PATCHMESH_NOTICE", msg.clone()),
            ("PATCHMESH_PATCH", p.install.patch.clone()),
            ("PATCHMESH_VERSION", p.install.version.clone()),
            ("PATCHMESH_INSTALL_AT", rfc3339(p.install_at)),
            ("PATCHMESH_IN_S", in_s.to_string()),
            ("PATCHMESH_DEFERRALS_LEFT", left.to_string()),
        ];
        let hooks: Vec<Vec<String>> = match &self.cfg.hook {
            Some(h) => vec![h.clone()],
            None => {
                let mut v = vec![vec!["wall".to_string(), msg.clone()]];
                if which("notify-send") {
                    v.push(vec!["notify-send".into(), "Update coming".into(), msg.clone()]);
                }
                v
            }
        };
        for argv in hooks {
            let mut cmd = tokio::process::Command::new(&argv[0]);
            cmd.args(&argv[1..]).envs(env.iter().map(|(k, v)| (*k, v.as_str())));
            cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
            match tokio::time::timeout(COMMAND_TIMEOUT, cmd.output()).await {
                Ok(Ok(o)) if o.status.success() => {}
                Ok(Ok(o)) => {
                    tracing::warn!(hook = %argv[0], status = %o.status, "notice hook failed")
                }
                Ok(Err(e)) => {
                    tracing::warn!(hook = %argv[0], error = %e, "notice hook did not run")
                }
                Err(_) => tracing::warn!(hook = %argv[0], "notice hook timed out"),
            }
        }
        tracing::info!(rollout = %p.install.rollout, users = p.users.len(), install_at = %rfc3339(p.install_at), "users told of the coming install");
        super::audit::record(
            &self.audit,
            Event::UserNotice {
                rollout: p.install.rollout.to_string(),
                install_at_ms: p.install_at.0,
                deferrals_used: u32::from(p.used),
                deferrals_allowed: u32::from(p.install.allowed),
                users: p.users.clone(),
            },
        );
    }

    /// Installs waiting on their notice.
    pub(super) fn list(&self) -> Vec<NoticeView> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).values().map(view).collect()
    }

    /// One deferral of the waiting install whose rollout id starts with `prefix` (or the only
    /// one waiting).
    pub(super) async fn defer(&self, prefix: Option<&str>) -> Result<NoticeView, String> {
        let p = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let ids: Vec<RolloutId> = pending
                .keys()
                .filter(|id| prefix.is_none_or(|x| id.to_string().starts_with(x.trim())))
                .copied()
                .collect();
            let id = match ids.as_slice() {
                [id] => *id,
                [] if pending.is_empty() => {
                    return Err("no install is waiting to start here".into())
                }
                [] => return Err(format!("no waiting install's rollout starts with {prefix:?}")),
                _ => return Err("several installs are waiting: name one with --rollout".into()),
            };
            let Some(p) = pending.get_mut(&id) else {
                return Err("the install just started".into());
            };
            let now = crate::clock::now_ms();
            let i = &p.install;
            let at = defer(now, p.install_at, p.used, i.allowed, i.each_ms, i.deadline)
                .map_err(|e| e.to_string())?;
            p.install_at = at;
            p.used += 1;
            self.save_used(&id, p.used);
            p.clone()
        };
        tracing::info!(rollout = %p.install.rollout, used = p.used, "install deferred by a user");
        self.tell(&p).await;
        Ok(view(&p))
    }
}

fn view(p: &Pending) -> NoticeView {
    NoticeView {
        rollout: p.install.rollout.to_string(),
        patch: p.install.patch.clone(),
        version: p.install.version.clone(),
        install_at_ms: p.install_at.0,
        deferrals_used: p.used,
        deferrals_allowed: p.install.allowed,
        defer_each_ms: p.install.each_ms,
        deadline_ms: p.install.deadline.map(|d| d.0),
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Logged-in sessions: the non-empty lines `users_command` prints (none if it fails).
async fn logged_in(argv: &[String]) -> Vec<String> {
    let Some((prog, args)) = argv.split_first() else { return Vec::new() };
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args).stdin(std::process::Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(COMMAND_TIMEOUT, cmd.output()).await {
        Ok(Ok(o)) if o.status.success() => {
            let out = &o.stdout[..o.stdout.len().min(USERS_OUTPUT_MAX)];
            String::from_utf8_lossy(out)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .take(64)
                .map(|l| l.split_whitespace().next().unwrap_or(l).to_string())
                .collect()
        }
        _ => {
            tracing::warn!(command = %prog, "could not list logged-in users; installing without notice");
            Vec::new()
        }
    }
}

/// Binds the user socket, world-accessible (it answers only [`UserRequest`]s).
pub(super) fn bind_user(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is served by a running node", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(l)
}

/// Serves the user socket: one JSON [`UserRequest`] per connection, answered by the node.
pub(super) async fn serve_user(
    listener: tokio::net::UnixListener,
    tx: tokio::sync::mpsc::Sender<(control::Request, super::Reply)>,
) {
    // Anyone on the machine may connect: a few at a time, each with a read deadline.
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(USER_CONNECTIONS_MAX));
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
            let (read, mut write) = stream.into_split();
            let mut reader = tokio::io::BufReader::new(read.take(USER_REQUEST_MAX));
            let mut line = String::new();
            let read = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line));
            let answer = match read.await {
                Ok(Ok(_)) => match serde_json::from_str::<UserRequest>(&line) {
                    Ok(req) => {
                        let req = match req {
                            UserRequest::Notices => control::Request::Notices,
                            UserRequest::Defer { rollout } => control::Request::Defer { rollout },
                        };
                        let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
                        if tx.send((req, reply_tx)).await.is_err() {
                            control::refused("the node is shutting down")
                        } else {
                            match tokio::time::timeout(Duration::from_secs(30), reply_rx).await {
                                Ok(Ok(v)) => v,
                                _ => control::refused("the node did not answer in time"),
                            }
                        }
                    }
                    Err(e) => control::refused(format!("bad request: {e}")),
                },
                _ => control::refused("no request read"),
            };
            let mut out = answer.to_string().into_bytes();
            out.push(b'\n');
            let _ = write.write_all(&out).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferrals_are_bounded_by_count_and_never_pass_the_deadline() {
        let (now, at) = (Millis(1_000), Millis(61_000));
        assert_eq!(defer(now, at, 0, 2, 60_000, None), Ok(Millis(121_000)));
        assert_eq!(defer(now, at, 2, 2, 60_000, None), Err(DeferError::NoneLeft(2)));
        assert_eq!(defer(now, at, 0, 0, 60_000, None), Err(DeferError::NotAllowed));
        // Clamped to the deadline, then refused once there.
        assert_eq!(defer(now, at, 0, 5, 60_000, Some(Millis(90_000))), Ok(Millis(90_000)));
        assert!(matches!(
            defer(now, Millis(90_000), 1, 5, 60_000, Some(Millis(90_000))),
            Err(DeferError::AtDeadline(_))
        ));
        // An install already due is put off from now.
        assert_eq!(defer(Millis(200_000), at, 0, 1, 60_000, None), Ok(Millis(260_000)));
    }
}
