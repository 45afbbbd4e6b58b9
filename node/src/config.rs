//! The daemon's configuration file (TOML). Relative paths are resolved against the file's
//! directory, so a node directory can be moved as a whole.
//!
//! ```toml
//! data_dir = "data"                 # sled store, control socket and token
//! key = "node.key"                  # from `patchmesh node keygen`
//! genesis = "genesis.pm"            # from `patchmesh init`
//! admission = "admission.pm"        # from `patchmesh admit`
//! listen = ["/ip4/0.0.0.0/udp/7946/quic-v1", "/ip4/0.0.0.0/tcp/7946"]
//! bootstrap = ["/ip4/192.0.2.10/udp/7946/quic-v1/p2p/12D3KooW…"]
//! mdns = true
//! # psk_file = "mesh.psk"           # 64 hex chars; strangers cannot even handshake
//! ```

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Log output format.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// The configuration of one node.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Directory for the store, control socket and token.
    pub data_dir: PathBuf,
    /// The node key file.
    pub key: PathBuf,
    /// The mesh genesis file.
    pub genesis: PathBuf,
    /// This node's admission certificate.
    pub admission: PathBuf,
    /// Addresses to listen on.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Peers to dial at start (with `/p2p/<peer id>`).
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// Discover peers on the LAN by mDNS (multicast).
    #[serde(default = "yes")]
    pub mdns: bool,
    /// Act as a relay for nodes behind NAT.
    #[serde(default)]
    pub relay_server: bool,
    /// Relays to listen through when this node is behind a NAT (multiaddrs with
    /// `/p2p/<peer id>` of nodes with `relay_server = true`). Peers reach it relayed, and
    /// hole punching upgrades the connection to a direct one where the NATs allow.
    #[serde(default)]
    pub relays: Vec<String>,
    /// Addresses other nodes can reach this one at (its public address behind a port
    /// forward, say). A relay announces these to the nodes it serves; a relay that lists none
    /// announces the addresses it listens on.
    #[serde(default)]
    pub external_addresses: Vec<String>,
    /// The mesh pre-shared key file (64 hex characters); TCP only when set.
    pub psk_file: Option<PathBuf>,
    /// The control socket (default: `<data_dir>/control.sock`).
    pub control_socket: Option<PathBuf>,
    /// Log format.
    #[serde(default)]
    pub log: LogFormat,
    /// Mean anti-entropy period.
    #[serde(default = "default_anti_entropy")]
    pub anti_entropy_interval_ms: u64,
    /// Minimum time between site summaries this node publishes.
    #[serde(default = "default_summary")]
    pub summary_interval_ms: u64,
    /// Relay batching period.
    #[serde(default = "default_flush")]
    pub gossip_flush_ms: u64,
    /// How often the inventory is read again.
    #[serde(default = "default_inventory")]
    pub inventory_interval_ms: u64,
    /// How often the machine's activity is sampled for its quiet hours (`--window auto`).
    #[serde(default = "default_activity")]
    pub activity_interval_ms: u64,
    /// Root of the file system the inventory is read from (tests point it at a fixture).
    #[serde(default = "default_root")]
    pub inventory_root: PathBuf,
    /// Most established connections.
    #[serde(default = "default_connections")]
    pub connections_max: u32,
    /// Connections this node tries to keep (it dials peers the DHT finds until it has them;
    /// below it, DHT bootstraps back off and stop once one finds nobody new: see
    /// `daemon::discovery`).
    #[serde(default = "default_peers_target")]
    pub peers_target: usize,
    /// Fetch the payload of every patch in the catalog as soon as it is published.
    #[serde(default = "yes")]
    pub prefetch: bool,
    /// Largest payload this node stores.
    #[serde(default = "default_payload_max")]
    pub payload_bytes_max: u64,
    /// All payloads together.
    #[serde(default = "default_store_max")]
    pub store_bytes_max: u64,
    /// The secrets of this node's integration sinks (a TOML table per sink name: `bearer`,
    /// `basic`, `hmac_secret`, `routing_key`); must be mode 0600. The policy in the catalog
    /// names sinks, never secrets.
    #[serde(default)]
    pub integration_credentials: Option<PathBuf>,
    /// Size at which the audit log's current file rotates (the log keeps nine files at most).
    #[serde(default = "default_audit_rotate")]
    pub audit_rotate_bytes: u64,
    /// Cap on payload bytes this node receives and serves per second (0: none).
    #[serde(default)]
    pub rate_bytes_per_s: u64,
    /// Cap on payload bytes per second fetched from other sites (0: none). Only the site's
    /// elected node fetches across the WAN, so this is the site's WAN cap; set it on every node.
    #[serde(default)]
    pub wan_rate_bytes_per_s: u64,
    /// A payload source slower than this (after a grace period) is dropped.
    #[serde(default = "default_min_rate")]
    pub min_rate_bytes_per_s: u64,
    /// IANA time zone maintenance windows are read in (default: the system's).
    #[serde(default)]
    pub time_zone: Option<String>,
    /// `dpkg` patches install into this root (`--root`/`--admindir`/`--instdir`) instead of
    /// the system; for sandboxes and tests.
    #[serde(default)]
    pub dpkg_root: Option<PathBuf>,
    /// Added to the system clock: simulates a node whose clock is wrong (tests).
    #[serde(default)]
    pub clock_offset_ms: i64,
    /// How often rollouts are re-evaluated when nothing else triggers it.
    #[serde(default = "default_rollout_eval")]
    pub rollout_eval_ms: u64,
    /// The browser dashboard (off unless this section is present).
    #[serde(default)]
    pub dashboard: Option<DashboardConfig>,
    /// The Prometheus endpoint (off unless this section is present).
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// Advance notice to the people logged in before an install (off unless present; the
    /// Debian package's configuration turns it on).
    #[serde(default)]
    pub notice: Option<NoticeConfig>,
}

/// `[notice]`: before an install on a machine where someone is logged in, tell them and wait.
///
/// ```toml
/// [notice]
/// lead_s = 300                          # notice this long before the install starts
/// # hook = ["/usr/local/bin/tell-users"] # default: `wall`, and `notify-send` where present
/// # users_command = ["who"]             # one line per logged-in session; none: no notice
/// user_socket = "/run/patchmesh/user.sock"  # where `patchmesh defer` reaches the node
/// ```
///
/// The hook gets `PATCHMESH_NOTICE` (one sentence), `PATCHMESH_PATCH`, `PATCHMESH_VERSION`,
/// `PATCHMESH_INSTALL_AT` (RFC 3339), `PATCHMESH_IN_S` and `PATCHMESH_DEFERRALS_LEFT`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoticeConfig {
    /// How long before the install the notice goes out.
    #[serde(default = "default_notice_lead")]
    pub lead_s: u64,
    /// The program (and arguments) that tells the users; default `wall` + `notify-send`.
    #[serde(default)]
    pub hook: Option<Vec<String>>,
    /// Lists logged-in sessions, one per line (default `who`).
    #[serde(default = "default_users_command")]
    pub users_command: Vec<String>,
    /// The socket end users reach with `patchmesh defer` (default `<data_dir>/user.sock`);
    /// world-accessible, it answers only "what is coming" and "defer".
    pub user_socket: Option<PathBuf>,
}

fn default_notice_lead() -> u64 {
    300
}
fn default_users_command() -> Vec<String> {
    vec!["who".into()]
}

/// `[dashboard]`: the fleet console this node serves from its replicated state.
///
/// ```toml
/// [dashboard]
/// listen = "127.0.0.1:7947"       # loopback by default; use an SSH tunnel for remote access
/// # Beyond loopback, all three are required:
/// # allow_remote = true
/// # tls_cert = "dashboard.crt"
/// # tls_key = "dashboard.key"
/// # hosts = ["patch01.example.net"] # Host names accepted besides the listen address
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    /// Address and port.
    #[serde(default = "default_dashboard_listen")]
    pub listen: std::net::SocketAddr,
    /// Must be set to listen on anything but loopback.
    #[serde(default)]
    pub allow_remote: bool,
    /// PEM certificate chain (required beyond loopback).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (required beyond loopback).
    pub tls_key: Option<PathBuf>,
    /// Host names (with or without port) accepted in the `Host` header besides the listen
    /// address, `localhost` and the loopback addresses.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// A session ends after this long without a request.
    #[serde(default = "default_session_idle")]
    pub session_idle_s: u64,
    /// A session ends this long after login whatever its use.
    #[serde(default = "default_session_max")]
    pub session_max_s: u64,
}

/// `[metrics]`: OpenMetrics for Prometheus, on its own listener with a bearer token.
///
/// ```toml
/// [metrics]
/// listen = "127.0.0.1:9947"
/// token_file = "metrics.token"     # created (random, 0600) when missing
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address and port.
    #[serde(default = "default_metrics_listen")]
    pub listen: std::net::SocketAddr,
    /// The bearer token file (default `<data_dir>/metrics.token`).
    pub token_file: Option<PathBuf>,
}

fn default_dashboard_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 7947))
}
fn default_metrics_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 9947))
}
fn default_session_idle() -> u64 {
    3600
}
fn default_session_max() -> u64 {
    12 * 3600
}

fn default_rollout_eval() -> u64 {
    1_000
}

fn yes() -> bool {
    true
}
fn default_listen() -> Vec<String> {
    vec!["/ip4/0.0.0.0/udp/7946/quic-v1".into(), "/ip4/0.0.0.0/tcp/7946".into()]
}
fn default_anti_entropy() -> u64 {
    10_000
}
fn default_summary() -> u64 {
    30_000
}
fn default_flush() -> u64 {
    50
}
fn default_inventory() -> u64 {
    3_600_000
}
fn default_activity() -> u64 {
    300_000
}
fn default_root() -> PathBuf {
    PathBuf::from("/")
}
fn default_connections() -> u32 {
    128
}
fn default_peers_target() -> usize {
    8
}
fn default_payload_max() -> u64 {
    4 << 30
}
fn default_audit_rotate() -> u64 {
    crate::audit::ROTATE_BYTES_DEFAULT
}
fn default_store_max() -> u64 {
    64 << 30
}
fn default_min_rate() -> u64 {
    16 * 1024
}

/// Why a configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Largest configuration file read.
pub const CONFIG_BYTES_MAX: u64 = 256 * 1024;

impl NodeConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let io = |source| ConfigError::Io { path: path.display().to_string(), source };
        let invalid =
            |message: String| ConfigError::Invalid { path: path.display().to_string(), message };
        let size = std::fs::metadata(path).map_err(io)?.len();
        if size > CONFIG_BYTES_MAX {
            return Err(invalid(format!("{size} bytes, limit {CONFIG_BYTES_MAX}")));
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        NodeConfig::parse(&text, path)
    }

    /// Parses and checks the text of the configuration file at `path` (relative paths in it
    /// are made absolute against the file's directory).
    pub fn parse(text: &str, path: &Path) -> Result<NodeConfig, ConfigError> {
        let io = |source| ConfigError::Io { path: path.display().to_string(), source };
        let invalid =
            |message: String| ConfigError::Invalid { path: path.display().to_string(), message };
        let mut cfg: NodeConfig = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        // Every path is made absolute here, against the config file's own directory, so that
        // nothing later depends on the working directory the node was started from (installs
        // run in workspaces that must be absolute paths).
        let absolute = std::path::absolute(path).map_err(io)?;
        let base = absolute.parent().unwrap_or(Path::new("/")).to_path_buf();
        for p in [&mut cfg.data_dir, &mut cfg.key, &mut cfg.genesis, &mut cfg.admission] {
            *p = base.join(&*p);
        }
        if let Some(p) = cfg.psk_file.as_mut() {
            *p = base.join(&*p);
        }
        if let Some(p) = cfg.integration_credentials.as_mut() {
            *p = base.join(&*p);
        }
        if let Some(p) = cfg.control_socket.as_mut() {
            *p = base.join(&*p);
        }
        cfg.inventory_root = base.join(&cfg.inventory_root);
        if let Some(p) = cfg.dpkg_root.as_mut() {
            *p = base.join(&*p);
        }
        if let Some(d) = cfg.dashboard.as_mut() {
            for p in [&mut d.tls_cert, &mut d.tls_key].into_iter().flatten() {
                *p = base.join(&*p);
            }
            if !d.listen.ip().is_loopback() {
                if !d.allow_remote {
                    return Err(invalid(format!(
                        "[dashboard] listen = {} is not a loopback address: set \
                         allow_remote = true with tls_cert and tls_key, or reach it through \
                         an SSH tunnel",
                        d.listen
                    )));
                }
                if d.tls_cert.is_none() || d.tls_key.is_none() {
                    return Err(invalid(
                        "[dashboard] listening beyond loopback needs tls_cert and tls_key".into(),
                    ));
                }
            }
            if d.session_idle_s == 0 || d.session_max_s == 0 {
                return Err(invalid("[dashboard] session times must be above zero".into()));
            }
        }
        if let Some(m) = cfg.metrics.as_mut() {
            if let Some(p) = m.token_file.as_mut() {
                *p = base.join(&*p);
            }
        }
        if let Some(n) = cfg.notice.as_mut() {
            if let Some(p) = n.user_socket.as_mut() {
                *p = base.join(&*p);
            }
            if n.users_command.is_empty() || n.hook.as_ref().is_some_and(Vec::is_empty) {
                return Err(invalid("[notice] users_command and hook need a program".into()));
            }
            if n.lead_s > 7 * 86_400 {
                return Err(invalid("[notice] lead_s is at most 7 days".into()));
            }
        }
        for addr in cfg.listen.iter().chain(&cfg.bootstrap).chain(&cfg.external_addresses) {
            addr.parse::<libp2p::Multiaddr>()
                .map_err(|e| invalid(format!("address {addr:?}: {e}")))?;
        }
        for addr in &cfg.relays {
            let relay = addr
                .parse::<libp2p::Multiaddr>()
                .map_err(|e| invalid(format!("relay {addr:?}: {e}")))?;
            if !matches!(relay.iter().last(), Some(libp2p::multiaddr::Protocol::P2p(_))) {
                return Err(invalid(format!("relay {addr:?} does not end in /p2p/<peer id>")));
            }
        }
        if cfg.anti_entropy_interval_ms < 100 {
            return Err(invalid("anti_entropy_interval_ms must be at least 100".into()));
        }
        Ok(cfg)
    }

    /// The control socket path.
    pub fn control_socket(&self) -> PathBuf {
        self.control_socket.clone().unwrap_or_else(|| self.data_dir.join("control.sock"))
    }

    /// The socket `patchmesh defer` reaches, when notices are on.
    pub fn user_socket(&self) -> Option<PathBuf> {
        let n = self.notice.as_ref()?;
        Some(n.user_socket.clone().unwrap_or_else(|| self.data_dir.join("user.sock")))
    }

    /// The control token path (always beside the socket's data dir).
    pub fn token_path(&self) -> PathBuf {
        self.data_dir.join("control.token")
    }

    /// Reads the pre-shared key, if configured.
    pub fn psk(&self) -> Result<Option<[u8; 32]>, ConfigError> {
        let Some(path) = &self.psk_file else { return Ok(None) };
        let io = |source| ConfigError::Io { path: path.display().to_string(), source };
        let size = std::fs::metadata(path).map_err(io)?.len();
        if size > 1024 {
            return Err(ConfigError::Invalid {
                path: path.display().to_string(),
                message: "a PSK file is 64 hex characters".into(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let mut key = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut key).map_err(|e| ConfigError::Invalid {
            path: path.display().to_string(),
            message: format!("a PSK file is 64 hex characters: {e}"),
        })?;
        Ok(Some(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_made_absolute_against_the_config_file() {
        // A config reached by a relative path (`--config n2/node.toml` from the mesh folder)
        // whose paths are relative too: every path comes out absolute, inside that folder,
        // whatever the working directory does later.
        let dir = tempfile::tempdir_in(".").unwrap();
        let name = dir.path().file_name().unwrap().to_string_lossy().into_owned();
        let text = "data_dir = \"data\"\nkey = \"node.key\"\ngenesis = \"../genesis.pm\"\n\
                    admission = \"admission.pm\"\ndpkg_root = \"root\"\n";
        std::fs::write(dir.path().join("node.toml"), text).unwrap();
        let cfg = NodeConfig::load(Path::new(&format!("{name}/node.toml"))).unwrap();
        let here = std::env::current_dir().unwrap().join(&name);
        for p in [&cfg.data_dir, &cfg.key, &cfg.admission] {
            assert!(p.is_absolute(), "{} is relative", p.display());
            assert!(p.starts_with(&here), "{} is outside {}", p.display(), here.display());
        }
        assert_eq!(cfg.data_dir, here.join("data"));
        assert_eq!(cfg.dpkg_root, Some(here.join("root")));
        assert!(cfg.genesis.is_absolute());
        assert!(cfg.control_socket().is_absolute());
    }

    #[test]
    fn a_dashboard_beyond_loopback_needs_the_flag_and_tls() {
        let dir = tempfile::tempdir().unwrap();
        let base = "data_dir = \"data\"\nkey = \"k\"\ngenesis = \"g\"\nadmission = \"a\"\n";
        let load = |table: &str| {
            let p = dir.path().join("node.toml");
            std::fs::write(&p, format!("{base}{table}")).unwrap();
            NodeConfig::load(&p)
        };
        let cfg = load("[dashboard]\n").unwrap();
        assert_eq!(cfg.dashboard.unwrap().listen.to_string(), "127.0.0.1:7947");
        assert!(load("").unwrap().dashboard.is_none(), "the dashboard is off by default");
        let err = load("[dashboard]\nlisten = \"0.0.0.0:7947\"\n").unwrap_err().to_string();
        assert!(err.contains("allow_remote") && err.contains("SSH tunnel"), "{err}");
        let err = load("[dashboard]\nlisten = \"0.0.0.0:7947\"\nallow_remote = true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls_cert"), "{err}");
        let cfg = load(
            "[dashboard]\nlisten = \"0.0.0.0:7947\"\nallow_remote = true\n\
             tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n",
        )
        .unwrap();
        assert!(cfg.dashboard.unwrap().tls_cert.unwrap().is_absolute());
        assert!(load("[dashboard]\nlisten = \"nonsense\"\n").is_err());
        assert!(load("[dashboard]\nbogus = 1\n").is_err(), "unknown keys are refused");
    }
}
