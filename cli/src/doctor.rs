//! `patchmesh node doctor`: checks a node's configuration, key, trust files, certificate, store,
//! clock, bootstrap peers and disk, and says what to fix. Works whether or not the node runs
//! (what needs the running node says so when it is down).

use patchmesh_node::config::NodeConfig;
use patchmesh_node::control::{
    self, DoctorCheck as Check, DoctorLevel as Level, DoctorOutput, Request,
};
use patchmesh_node::files;
use patchmesh_protocol::crypto::Ed25519;
use patchmesh_protocol::ids::Millis;
use patchmesh_protocol::trust::{verify_admission_signature, Genesis};
use std::path::Path;
use std::time::Duration;

/// A certificate closer than this to its expiry is a warning.
const EXPIRY_WARN_MS: u64 = 30 * 86_400_000;
/// Peer records dated further ahead of this clock than this point at a clock that is behind.
const CLOCK_AHEAD_WARN_MS: u64 = 120_000;
/// Below this much free space the store cannot take even a small payload.
const DISK_FAIL_BYTES: u64 = 100 << 20;

#[derive(Default)]
struct Report(Vec<Check>);

impl Report {
    fn ok(&mut self, check: &'static str, detail: impl Into<String>) {
        self.0.push(Check {
            check: check.into(),
            level: Level::Ok,
            detail: detail.into(),
            fix: None,
        });
    }
    fn warn(&mut self, check: &'static str, detail: impl Into<String>, fix: impl Into<String>) {
        self.0.push(Check {
            check: check.into(),
            level: Level::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        });
    }
    fn fail(&mut self, check: &'static str, detail: impl Into<String>, fix: impl Into<String>) {
        self.0.push(Check {
            check: check.into(),
            level: Level::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        });
    }
}

/// Whether the kernel lets the node's QUIC socket have the UDP buffers it asks for
/// ([`patchmesh_node::net::UDP_BUFFER_BYTES`]); the Debian package's sysctl file allows them.
fn udp_buffers(r: &mut Report) {
    let want = patchmesh_node::net::UDP_BUFFER_BYTES;
    let read = |key: &str| -> Option<usize> {
        std::fs::read_to_string(format!("/proc/sys/net/core/{key}")).ok()?.trim().parse().ok()
    };
    let (Some(rmem), Some(wmem)) = (read("rmem_max"), read("wmem_max")) else {
        r.ok("udp buffers", "not checked (no /proc/sys/net/core here)");
        return;
    };
    if rmem.min(wmem) < want {
        r.warn(
            "udp buffers",
            format!(
                "net.core.rmem_max {rmem} and wmem_max {wmem} bytes: the node asks for {want} \
                 ({} MiB) each way; with less, a fast LAN download drops datagrams and slows \
                 down",
                want >> 20
            ),
            format!(
                "sysctl -w net.core.rmem_max={want} net.core.wmem_max={want} (the Debian \
                 package installs this as /usr/lib/sysctl.d/60-patchmesh.conf)"
            ),
        );
    } else {
        r.ok(
            "udp buffers",
            format!("the kernel allows the {} MiB socket buffers the node asks for", want >> 20),
        );
    }
}

/// Runs every check on the node configured at `config`; exit code 1 if any failed.
pub fn run(config: &Path, json: bool, now: Millis) -> anyhow::Result<i32> {
    let mut r = Report::default();
    let cfg = match NodeConfig::load(config) {
        Ok(c) => {
            r.ok("config", format!("{} loads", config.display()));
            Some(c)
        }
        Err(e) => {
            r.fail(
                "config",
                format!("{}: {e}", config.display()),
                "fix the file (README, \"Running a mesh\", lists every setting) or name another with --config",
            );
            None
        }
    };
    if let Some(cfg) = &cfg {
        checks(&mut r, cfg, now);
    }
    let worst = r.0.iter().map(|c| c.level).max().unwrap_or(Level::Ok);
    if json {
        outln!("{}", crate::output::json_sorted(&DoctorOutput { checks: r.0, result: worst }));
    } else {
        for c in &r.0 {
            let mark = match c.level {
                Level::Ok => "ok  ",
                Level::Warn => "WARN",
                Level::Fail => "FAIL",
            };
            outln!("{mark}  {:<12} {}", c.check, c.detail);
            if let Some(f) = &c.fix {
                outln!("      {:<12} fix: {f}", "");
            }
        }
        let (w, f) = (
            r.0.iter().filter(|c| c.level == Level::Warn).count(),
            r.0.iter().filter(|c| c.level == Level::Fail).count(),
        );
        outln!("{} checks: {} ok, {w} warnings, {f} failures", r.0.len(), r.0.len() - w - f);
    }
    Ok(if worst == Level::Fail { 1 } else { 0 })
}

fn checks(r: &mut Report, cfg: &NodeConfig, now: Millis) {
    use std::os::unix::fs::PermissionsExt;
    // Node key.
    let key = match files::read_key(&cfg.key) {
        Ok(k) => {
            let mode =
                std::fs::metadata(&cfg.key).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
            if mode & 0o077 != 0 {
                r.warn(
                    "node key",
                    format!(
                        "{} is mode {mode:o}: others can read the node's secret",
                        cfg.key.display()
                    ),
                    format!("chmod 600 {}", cfg.key.display()),
                );
            } else {
                r.ok("node key", format!("{} (public {})", cfg.key.display(), k.public()));
            }
            Some(k)
        }
        Err(e) => {
            r.fail(
                "node key",
                e.to_string(),
                "make one with `patchmesh node keygen --out FILE` and have it admitted",
            );
            None
        }
    };
    // Genesis.
    let genesis =
        match files::read_envelope(&cfg.genesis).map_err(|e| e.to_string()).and_then(|env| {
            Genesis::verify(&env, &Ed25519).map_err(|e| format!("does not verify: {e}"))
        }) {
            Ok(g) => {
                r.ok("genesis", format!("mesh {} ({})", g.mesh_name, g.mesh_id()));
                Some(g)
            }
            Err(e) => {
                r.fail(
                    "genesis",
                    format!("{}: {e}", cfg.genesis.display()),
                    "copy the mesh's genesis.pm from an admin",
                );
                None
            }
        };
    // Admission certificate.
    match files::read_envelope(&cfg.admission)
        .map_err(|e| e.to_string())
        .and_then(|env| verify_admission_signature(&env, &Ed25519).map_err(|e| e.to_string()))
    {
        Err(e) => r.fail(
            "certificate",
            format!("{}: {e}", cfg.admission.display()),
            "ask an admin for one: patchmesh admit --node-key <this node's public key> …",
        ),
        Ok((cert, signer)) => {
            let mut problems = Vec::new();
            if let Some(k) = &key {
                if cert.node.0 != k.public().0 {
                    problems.push("it admits another node key".to_string());
                }
            }
            if let Some(g) = &genesis {
                if cert.mesh != g.mesh_id() {
                    problems.push("it is for another mesh".to_string());
                }
            }
            let left = cert.expires_at.0.saturating_sub(now.0);
            if now >= cert.expires_at {
                problems.push(format!(
                    "it expired {}",
                    format!("{} ago", span(now.0 - cert.expires_at.0))
                ));
            }
            if !problems.is_empty() {
                r.fail(
                    "certificate",
                    format!("{}: {}", cfg.admission.display(), problems.join("; ")),
                    "ask an admin for a new one: patchmesh admit --node-key <public key> --site … --out admission.pm",
                );
            } else if left < EXPIRY_WARN_MS {
                r.warn(
                    "certificate",
                    format!("site {}, expires in {} days", cert.site, left / 86_400_000),
                    "ask an admin to renew it before then (patchmesh admit … --valid-days 365)",
                );
            } else {
                let not_genesis = genesis.as_ref().is_some_and(|g| !g.admins.contains(&signer));
                r.ok(
                    "certificate",
                    format!(
                        "site {}, {} labels, expires in {} days{}",
                        cert.site,
                        cert.labels.len(),
                        left / 86_400_000,
                        if not_genesis { " (signed by an admin added after genesis)" } else { "" }
                    ),
                );
            }
        }
    }
    // Store directory.
    let probe = cfg.data_dir.join(".doctor-probe");
    match std::fs::create_dir_all(&cfg.data_dir).and_then(|_| std::fs::write(&probe, b"x")) {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            r.ok("store", format!("{} is writable", cfg.data_dir.display()));
        }
        Err(e) => r.fail(
            "store",
            format!("{}: {e}", cfg.data_dir.display()),
            "run as the node's user, or fix the directory's owner and mode",
        ),
    }
    // Disk.
    match nix::sys::statvfs::statvfs(&cfg.data_dir) {
        Ok(s) => {
            let free = s.blocks_available() as u64 * s.fragment_size() as u64;
            let gib = |b: u64| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
            if free < DISK_FAIL_BYTES {
                r.fail(
                    "disk",
                    format!("{} free under {}", gib(free), cfg.data_dir.display()),
                    "free space: patchmesh content gc, or a larger volume",
                );
            } else if free < cfg.payload_bytes_max {
                r.warn(
                    "disk",
                    format!(
                        "{} free, less than the largest payload allowed ({})",
                        gib(free),
                        gib(cfg.payload_bytes_max)
                    ),
                    "free space, or lower payload_bytes_max",
                );
            } else {
                r.ok("disk", format!("{} free for payloads", gib(free)));
            }
        }
        Err(e) => {
            r.warn("disk", format!("cannot read free space: {e}"), "check the data_dir volume")
        }
    }
    udp_buffers(r);
    // The running node: store health, peers, clock.
    let socket = cfg.control_socket();
    fn ask<T: serde::de::DeserializeOwned>(
        cfg: &NodeConfig,
        socket: &std::path::Path,
        req: Request,
    ) -> Result<T, String> {
        let token = control::read_token(&cfg.token_path()).map_err(|e| e.to_string())?;
        control::call_view(socket, &token, req, Duration::from_secs(20)).map_err(|e| e.to_string())
    }
    let status = match ask::<control::StatusView>(cfg, &socket, Request::Status) {
        Ok(s) => {
            let refused = s.restore_refused;
            if refused > 0 {
                r.warn(
                    "running",
                    format!(
                        "pid {}, but {refused} stored objects failed re-verification at start",
                        s.pid
                    ),
                    "look at the node's log for what was refused; the mesh re-sends good copies",
                );
            } else {
                r.ok(
                    "running",
                    format!(
                        "pid {}, {} peers ({} admitted), up {}",
                        s.pid,
                        s.peers_connected,
                        s.peers_admitted,
                        span(s.uptime_ms)
                    ),
                );
            }
            Some(s)
        }
        Err(e) => {
            r.warn(
                "running",
                format!("the node does not answer: {e}"),
                "start it: systemctl start patchmesh (or patchmesh node run --config …)",
            );
            None
        }
    };
    let running = status.is_some();
    clock(r, running.then(|| ask(cfg, &socket, Request::ReportBasis).ok()).flatten());
    bootstrap(r, cfg, running.then(|| ask(cfg, &socket, Request::Peers).ok()).flatten());
}

/// Peer records dated ahead of this clock mean this clock is behind (or theirs ahead); the
/// system's NTP state says which to suspect.
fn clock(r: &mut Report, basis: Option<control::ReportBasisView>) {
    let ntp = std::process::Command::new("timedatectl")
        .args(["show", "-p", "NTPSynchronized", "--value"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "yes");
    let Some(b) = basis else {
        match ntp {
            Some(false) => r.warn(
                "clock",
                "NTP is not synchronised",
                "enable time sync: timedatectl set-ntp true",
            ),
            _ => r.ok("clock", "not compared with peers (the node is not running)"),
        }
        return;
    };
    let now = b.now_ms;
    let ahead: Vec<u64> = b
        .assets
        .iter()
        .filter(|a| a.node != b.node)
        .map(|a| a.record_written_at_ms)
        .filter(|t| *t > now + CLOCK_AHEAD_WARN_MS)
        .map(|t| t - now)
        .collect();
    if let Some(max) = ahead.iter().max() {
        r.warn(
            "clock",
            format!(
                "{} peers signed records up to {} ahead of this clock",
                ahead.len(),
                span(*max)
            ),
            if ntp == Some(false) {
                "this clock is not NTP-synchronised: timedatectl set-ntp true"
            } else {
                "check time sync here and on those peers (timedatectl)"
            },
        );
    } else if ntp == Some(false) {
        r.warn(
            "clock",
            "no peer is ahead, but NTP is not synchronised",
            "timedatectl set-ntp true",
        );
    } else {
        r.ok("clock", "no peer's records are dated ahead of this clock");
    }
}

fn bootstrap(r: &mut Report, cfg: &NodeConfig, peers: Option<Vec<control::PeerView>>) {
    if cfg.bootstrap.is_empty() {
        if cfg.mdns {
            r.ok("bootstrap", "none configured; peers are found by mDNS on the LAN");
        } else {
            r.warn(
                "bootstrap",
                "no bootstrap peers and mDNS off: this node finds no one",
                "add bootstrap = [\"/ip4/…/udp/7946/quic-v1/p2p/…\"]",
            );
        }
        return;
    }
    let connected: Vec<String> = peers.iter().flatten().map(|p| p.peer_id.clone()).collect();
    for addr in &cfg.bootstrap {
        let parts: Vec<&str> = addr.split('/').collect();
        let peer = parts
            .iter()
            .position(|p| *p == "p2p")
            .and_then(|i| parts.get(i + 1))
            .map(|s| s.to_string());
        if peer.as_ref().is_some_and(|p| connected.contains(p)) {
            r.ok("bootstrap", format!("{addr}: connected"));
            continue;
        }
        // /ip4/H/tcp/P…: try a TCP connection; QUIC cannot be probed without the node.
        let tcp = match parts.as_slice() {
            ["", "ip4" | "ip6" | "dns" | "dns4" | "dns6", host, "tcp", port, ..] => {
                Some(format!("{host}:{port}"))
            }
            _ => None,
        };
        match tcp {
            Some(hp) => {
                let reach = std::net::ToSocketAddrs::to_socket_addrs(&hp)
                    .ok()
                    .and_then(|mut a| a.next())
                    .map(|a| {
                        std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok()
                    });
                match reach {
                    Some(true) => r.ok("bootstrap", format!("{addr}: reachable over TCP")),
                    _ => r.fail(
                        "bootstrap",
                        format!("{addr}: no TCP connection"),
                        "check the address, the peer's service and firewalls (UDP and TCP 7946)",
                    ),
                }
            }
            None if peers.is_some() => r.warn(
                "bootstrap",
                format!("{addr}: not connected"),
                "check the address, that the peer runs, and that UDP 7946 passes firewalls",
            ),
            None => r.warn(
                "bootstrap",
                format!("{addr}: not checked (QUIC needs the running node)"),
                "start the node and run doctor again",
            ),
        }
    }
}

/// A span of time for people: `40 s`, `12 min`, `5 h`, `3 d`.
fn span(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}
