//! `patchmesh defer`: what the people at a machine may do about an install they were told of.

use anyhow::Context;
use clap::Args;
use patchmesh_node::control::{NoticeView, UserRequest};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

/// Where the Debian package's configuration puts the user socket.
const PACKAGED_SOCKET: &str = "/run/patchmesh/user.sock";
/// The packaged configuration, read for `[notice] user_socket` when no socket is given.
const PACKAGED_CONFIG: &str = "/etc/patchmesh/node.toml";

/// `patchmesh defer`.
#[derive(Args)]
pub struct DeferArgs {
    /// Only show the installs waiting to start, and the deferrals left.
    #[arg(long)]
    list: bool,
    /// The rollout to defer (id or prefix), when several installs are waiting.
    #[arg(long)]
    rollout: Option<String>,
    /// The node's user socket (default: the configuration's `[notice] user_socket`, else
    /// /run/patchmesh/user.sock).
    #[arg(long, env = "PATCHMESH_USER_SOCKET")]
    socket: Option<PathBuf>,
    /// The node configuration to read the socket from (default /etc/patchmesh/node.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn socket(a: &DeferArgs) -> PathBuf {
    if let Some(s) = &a.socket {
        return s.clone();
    }
    let config = a.config.clone().unwrap_or_else(|| PathBuf::from(PACKAGED_CONFIG));
    patchmesh_node::config::NodeConfig::load(&config)
        .ok()
        .and_then(|c| c.user_socket())
        .unwrap_or_else(|| PathBuf::from(PACKAGED_SOCKET))
}

fn ask(socket: &PathBuf, req: &UserRequest) -> anyhow::Result<serde_json::Value> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "reaching the node at {} (is it running with [notice] in its configuration?)",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(40)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(s.take(1 << 20)).read_line(&mut answer)?;
    let answer: patchmesh_node::control::Answer =
        serde_json::from_str(&answer).context("the node's answer is not a control answer")?;
    answer.into_result().map_err(|e| anyhow::anyhow!(e))
}

fn when(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| t.to_zoned(jiff::tz::TimeZone::system()).strftime("%a %H:%M %Z").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// Runs `patchmesh defer`.
pub fn run(a: DeferArgs) -> anyhow::Result<()> {
    let socket = socket(&a);
    if a.list {
        let list: Vec<NoticeView> = serde_json::from_value(ask(&socket, &UserRequest::Notices)?)?;
        if a.json {
            outln!("{}", crate::output::json(&list));
        } else if list.is_empty() {
            outln!("no install is waiting to start on this machine");
        }
        for n in list.iter().filter(|_| !a.json) {
            outln!(
                "{} {} starts {}  ({} of {} deferrals left; rollout {})",
                n.patch,
                n.version,
                when(n.install_at_ms),
                n.deferrals_allowed.saturating_sub(n.deferrals_used),
                n.deferrals_allowed,
                &n.rollout[..12.min(n.rollout.len())]
            );
        }
        return Ok(());
    }
    let v: NoticeView =
        serde_json::from_value(ask(&socket, &UserRequest::Defer { rollout: a.rollout.clone() })?)?;
    if a.json {
        outln!("{}", crate::output::json(&v));
    } else {
        let left = v.deferrals_allowed.saturating_sub(v.deferrals_used);
        outln!(
            "{} {} now starts {} ({left} deferral{} left{})",
            v.patch,
            v.version,
            when(v.install_at_ms),
            if left == 1 { "" } else { "s" },
            v.deadline_ms.map(|d| format!("; due by {}", when(d))).unwrap_or_default()
        );
    }
    Ok(())
}
