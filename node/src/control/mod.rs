//! The local control API: how the CLI talks to a running node.
//!
//! A Unix socket (`<data_dir>/control.sock`, mode 0600, in a 0700 directory) carrying one JSON
//! request line and one JSON response line per connection. Every request also carries the
//! token from `<data_dir>/control.token` (mode 0600), so reaching the socket is not enough by
//! itself: both file modes must let the caller read. The API never listens on a network
//! interface.
//!
//! Admin keys never travel over this socket: to publish, the CLI asks the node to *prepare* an
//! unsigned catalog change against its replica, signs it itself, and *submits* the envelope,
//! which the node verifies exactly as it would a peer's.

mod outputs;
mod views;

pub use outputs::*;
pub use views::*;

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;

/// Largest request line accepted.
pub const REQUEST_BYTES_MAX: usize = 1024 * 1024;
/// Largest response line the client reads.
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// A control request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Node, mesh, trust, catalog and traffic summary.
    Status,
    /// Connected peers.
    Peers,
    /// The fleet as this node knows it, for a rollout rehearsal (`patchmesh rollout plan`).
    Fleet,
    /// The full inventory of this node, or of another node by id (fetched from it and checked
    /// against the digest in its signed record when this node holds that record).
    Inventory {
        /// Node id (hex), or none for this node.
        node: Option<String>,
    },
    /// This node's findings against the intel bundle in use, and its available updates.
    Intel,
    /// An export of a node's audit log (this node's, or another's fetched from it and checked
    /// against the mesh and the audit checkpoint in its signed record).
    AuditExport {
        /// Node id (hex), or none for this node.
        node: Option<String>,
        /// Start at the last checkpoint signed at or before this time (ms); none: from the
        /// oldest entry kept.
        since_ms: Option<u64>,
    },
    /// The integration policy, this node's outbox and the election per sink.
    IntegrationsStatus,
    /// Dead-lettered events of this node's outbox.
    DlqList,
    /// Put dead-lettered events back in the outbox (all, or those whose id starts with `id`).
    DlqReplay {
        /// Event id prefix.
        id: Option<String>,
    },
    /// What a compliance report starts from: this site's signed records, other sites'
    /// summaries, exceptions, and the state hashes they come from.
    ReportBasis,
    /// Sign a report: the node signs BLAKE3 of the report body (hex) in the report domain.
    SignReport {
        /// BLAKE3 of the report body, hex.
        body_hash: String,
    },
    /// Another node's findings, fetched from it and checked against the digest in its signed
    /// record.
    Findings {
        /// Node id (hex).
        node: String,
    },
    /// The fleet's exposure as this node sees it: its site's records and every site summary.
    Exposure,
    /// What the intel bundle in use says about one CVE for this node's release: every
    /// advisory on an installed source package, as (source, advisory).
    Advisories {
        /// The CVE id.
        cve: String,
        /// Another node of this node's site to ask instead (hex id).
        #[serde(default)]
        node: Option<String>,
    },
    /// The catalog entries.
    Catalog,
    /// The current admin set (and genesis), for building the next one.
    AdminState,
    /// An unsigned catalog change for `admin` making `edits` (postcard, hex).
    Prepare {
        /// The admin key id (hex).
        admin: String,
        /// `Vec<(String, Option<CatalogEntry>)>`, postcard-encoded, hex.
        edits: String,
    },
    /// A signed catalog change envelope (postcard, hex) to verify, apply and spread.
    Submit {
        /// The envelope.
        envelope: String,
    },
    /// A root-signed admin set envelope (postcard, hex) to verify, apply and spread.
    AdminSet {
        /// The envelope.
        envelope: String,
    },
    /// Import a local file into the content store (the node reads it).
    Import {
        /// Absolute path.
        path: String,
    },
    /// Fetch the payload of a catalog patch from the mesh.
    Fetch {
        /// Content id (hex).
        content: String,
    },
    /// Where one payload stands.
    Content {
        /// Content id (hex).
        content: String,
    },
    /// Every payload held and every download of this run.
    ContentList,
    /// Rollouts as this node sees them: verdicts, ring counts, its own journal.
    Rollouts,
    /// One rollout's signed entry as held (what `patchmesh rollout plan --rollout` rehearses).
    RolloutEntry {
        /// Rollout id (hex).
        rollout: String,
    },
    /// The node's metrics (OpenMetrics text).
    Metrics,
    /// A one-time login URL for this node's dashboard (refused when it has none).
    DashboardLogin,
    /// Installs waiting on their advance notice (also on the user socket).
    Notices,
    /// Put a waiting install off by one of its rollout's deferrals (also on the user socket).
    Defer {
        /// Rollout id prefix (none: the only install waiting).
        rollout: Option<String>,
    },
    /// A proposal made in this node's dashboard, for an admin to sign.
    Proposal {
        /// Its id.
        id: String,
    },
    /// Remove payloads no catalog patch references (nor an install pins).
    ContentGc {
        /// Only say what would go.
        dry_run: bool,
    },
}

/// A request with its token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Call {
    /// The control token.
    pub token: String,
    /// The request.
    pub request: Request,
}

/// Why a control call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket or token could not be reached.
    #[error("cannot reach the node at {path} (is `patchmesh node run` running?): {source}")]
    Connect {
        /// The socket path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The token file could not be read.
    #[error("reading the control token {path}: {source}")]
    Token {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The exchange failed midway.
    #[error("control connection: {0}")]
    Io(#[from] std::io::Error),
    /// The node's answer was not valid.
    #[error("bad answer from the node: {0}")]
    BadAnswer(String),
    /// The node refused the request.
    #[error("{0}")]
    Refused(String),
}

/// Reads a token file (bounded).
pub fn read_token(path: &Path) -> Result<String, ControlError> {
    let err = |source| ControlError::Token { path: path.display().to_string(), source };
    let meta = std::fs::metadata(path).map_err(err)?;
    if meta.len() > 256 {
        return Err(err(std::io::Error::new(std::io::ErrorKind::InvalidData, "token too long")));
    }
    Ok(std::fs::read_to_string(path).map_err(err)?.trim().to_string())
}

/// Sends one request and returns the node's answer (its `result` field).
pub fn call(
    socket: &Path,
    token: &str,
    request: Request,
    timeout: Duration,
) -> Result<serde_json::Value, ControlError> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|source| ControlError::Connect { path: socket.display().to_string(), source })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(&Call { token: token.to_string(), request })
        .map_err(|e| ControlError::BadAnswer(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reader = BufReader::new(std::io::Read::take(stream, RESPONSE_BYTES_MAX as u64));
    let mut answer = String::new();
    reader.read_line(&mut answer)?;
    let answer: Answer =
        serde_json::from_str(&answer).map_err(|e| ControlError::BadAnswer(e.to_string()))?;
    answer.into_result().map_err(ControlError::Refused)
}

/// The envelope of every answer on the control and user sockets: `{"ok": true, "result": …}`
/// or `{"ok": false, "error": "…"}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Answer {
    /// Whether the node did what was asked.
    pub ok: bool,
    /// What it answers (a view), when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Why it refused, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Answer {
    /// The result (`null` when the answer carries none), or the node's reason for refusing.
    pub fn into_result(self) -> Result<serde_json::Value, String> {
        if self.ok {
            Ok(self.result.unwrap_or(serde_json::Value::Null))
        } else {
            Err(self.error.unwrap_or_else(|| "the node refused the request".to_string()))
        }
    }

    /// Reads an answer held as JSON.
    pub fn from_value(v: serde_json::Value) -> Result<Answer, String> {
        serde_json::from_value(v).map_err(|e| format!("bad answer: {e}"))
    }
}

/// A successful answer.
pub fn ok(result: serde_json::Value) -> serde_json::Value {
    serde_json::json!(Answer { ok: true, result: Some(result), error: None })
}

/// A successful answer carrying a typed view.
pub fn ok_view(view: &impl Serialize) -> serde_json::Value {
    match serde_json::to_value(view) {
        Ok(v) => ok(v),
        Err(e) => refused(format!("encoding the answer: {e}")),
    }
}

/// Sends one request and parses the answer as the view `T`.
pub fn call_view<T: serde::de::DeserializeOwned>(
    socket: &Path,
    token: &str,
    request: Request,
    timeout: Duration,
) -> Result<T, ControlError> {
    let v = call(socket, token, request, timeout)?;
    serde_json::from_value(v).map_err(|e| ControlError::BadAnswer(e.to_string()))
}

/// A refusal.
pub fn refused(error: impl std::fmt::Display) -> serde_json::Value {
    serde_json::json!(Answer { ok: false, result: None, error: Some(error.to_string()) })
}

/// What `patchmesh defer --list` shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NoticeView {
    /// Rollout id (hex).
    pub rollout: String,
    /// Patch name.
    pub patch: String,
    /// Patch version.
    pub version: String,
    /// When the install starts (ms since the epoch).
    pub install_at_ms: u64,
    /// Deferrals used.
    pub deferrals_used: u8,
    /// Deferrals the rollout allows.
    pub deferrals_allowed: u8,
    /// How long one deferral lasts.
    pub defer_each_ms: u64,
    /// The rollout's deadline, if any.
    pub deadline_ms: Option<u64>,
}

/// A request on the user socket.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UserRequest {
    /// Installs waiting on their notice.
    Notices,
    /// Put one off (the only one waiting, or the rollout with this id prefix).
    Defer {
        /// Rollout id prefix.
        rollout: Option<String>,
    },
}
