//! The fleet dashboard every node can serve: server-rendered pages and their JSON twins under
//! `/api/v1/`, built from the same typed views the CLI reads over the control socket.
//!
//! Security model (the node holds no admin key, and neither does the browser session):
//! - Loopback only unless `[dashboard] allow_remote` with TLS is configured; every request's
//!   `Host` must be one this node answers to (DNS rebinding).
//! - Login is a single-use nonce minted over the control socket (`patchmesh dashboard`), valid
//!   [`NONCE_TTL`], exchanged for a random session id in an `HttpOnly; SameSite=Strict` cookie.
//! - Cross-site POSTs are refused on Fetch Metadata and `Origin` (tower-http's CSRF layer);
//!   every response carries a strict CSP and no-sniff/no-referrer/no-frame headers.
//! - A session can read, and can *propose* a signed-state change; only an admin key, in the
//!   CLI, turns a proposal into a signed catalog change. `POST /api/v1/submit` takes signed
//!   envelopes only and verifies them as the node verifies a peer's.

mod model;
mod pages;
pub mod proposal;
mod server;

pub use model::*;
pub use proposal::{Proposal, ProposalChange, ProposalView};
pub use server::{bind, serve, Bound};

use crate::config::DashboardConfig;
use crate::control::{self, Request};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How long a login URL works.
pub const NONCE_TTL: Duration = Duration::from_secs(60);
/// Login URLs outstanding at once (older ones are dropped).
const NONCES_MAX: usize = 16;
/// Sessions at once (the oldest is ended first).
const SESSIONS_MAX: usize = 64;
/// Proposals kept (the oldest is dropped first).
const PROPOSALS_MAX: usize = 256;

/// What the control socket answers for `Request::DashboardLogin`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LoginView {
    /// The one-time login URL.
    pub url: String,
    /// Seconds it stays valid.
    pub valid_s: u64,
}

struct Session {
    created: Instant,
    last: Instant,
}

/// State shared by the dashboard server and the daemon (which mints login nonces and answers
/// proposal lookups from the CLI).
pub struct Shared {
    ctl: mpsc::Sender<(Request, oneshot::Sender<serde_json::Value>)>,
    cfg: DashboardConfig,
    base_url: String,
    nonces: Mutex<HashMap<String, Instant>>,
    sessions: Mutex<HashMap<String, Session>>,
    proposals: Mutex<VecDeque<ProposalView>>,
    bucket: Mutex<(f64, Instant)>,
    csp_violations: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Requests per second the server serves on average, and its burst.
const RATE_PER_S: f64 = 100.0;
const RATE_BURST: f64 = 400.0;

impl Shared {
    /// State for a dashboard at `addr` that asks the daemon through `ctl`.
    pub fn new(
        cfg: DashboardConfig,
        addr: std::net::SocketAddr,
        ctl: mpsc::Sender<(Request, oneshot::Sender<serde_json::Value>)>,
    ) -> Shared {
        let scheme = if cfg.tls_cert.is_some() { "https" } else { "http" };
        Shared {
            ctl,
            base_url: format!("{scheme}://{addr}"),
            cfg,
            nonces: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            proposals: Mutex::new(VecDeque::new()),
            bucket: Mutex::new((RATE_BURST, Instant::now())),
            csp_violations: Default::default(),
        }
    }

    /// Mints a single-use login URL.
    pub fn login(&self) -> LoginView {
        let nonce = random_hex();
        let mut n = self.nonces.lock().unwrap();
        n.retain(|_, t| t.elapsed() < NONCE_TTL);
        while n.len() >= NONCES_MAX {
            let Some(oldest) = n.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone()) else {
                break;
            };
            n.remove(&oldest);
        }
        n.insert(nonce.clone(), Instant::now());
        LoginView { url: format!("{}/login?nonce={nonce}", self.base_url), valid_s: NONCE_TTL.as_secs() }
    }

    /// Spends a nonce: a new session id, or none if the nonce is unknown, used or expired.
    fn redeem(&self, nonce: &str) -> Option<String> {
        let minted = self.nonces.lock().unwrap().remove(nonce)?;
        if minted.elapsed() >= NONCE_TTL {
            return None;
        }
        let id = random_hex();
        let mut s = self.sessions.lock().unwrap();
        self.expire(&mut s);
        while s.len() >= SESSIONS_MAX {
            let Some(oldest) = s.iter().min_by_key(|(_, v)| v.created).map(|(k, _)| k.clone())
            else {
                break;
            };
            s.remove(&oldest);
        }
        let now = Instant::now();
        s.insert(id.clone(), Session { created: now, last: now });
        Some(id)
    }

    fn expire(&self, s: &mut HashMap<String, Session>) {
        let idle = Duration::from_secs(self.cfg.session_idle_s);
        let max = Duration::from_secs(self.cfg.session_max_s);
        s.retain(|_, v| v.last.elapsed() < idle && v.created.elapsed() < max);
    }

    /// Whether `id` names a live session (and marks it used).
    fn touch(&self, id: &str) -> bool {
        let mut s = self.sessions.lock().unwrap();
        self.expire(&mut s);
        match s.get_mut(id) {
            Some(v) => {
                v.last = Instant::now();
                true
            }
            None => false,
        }
    }

    fn logout(&self, id: &str) {
        self.sessions.lock().unwrap().remove(id);
    }

    /// Takes one request from the rate bucket.
    fn admit_request(&self) -> bool {
        let mut b = self.bucket.lock().unwrap();
        let now = Instant::now();
        b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * RATE_PER_S).min(RATE_BURST);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// Keeps a proposal for the CLI to fetch.
    fn keep_proposal(&self, p: ProposalView) {
        let mut q = self.proposals.lock().unwrap();
        if q.len() >= PROPOSALS_MAX {
            q.pop_front();
        }
        q.push_back(p);
    }

    /// A proposal by id.
    pub fn proposal(&self, id: &str) -> Option<ProposalView> {
        self.proposals.lock().unwrap().iter().find(|p| p.proposal.id == id).cloned()
    }

    /// Asks the daemon one control request.
    async fn ask<T: serde::de::DeserializeOwned>(&self, req: Request) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        self.ctl.send((req, tx)).await.map_err(|_| "the node is shutting down".to_string())?;
        let v = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .map_err(|_| "the node did not answer in time".to_string())?
            .map_err(|_| "the node dropped the request".to_string())?;
        if v["ok"].as_bool() != Some(true) {
            return Err(v["error"].as_str().unwrap_or("the node refused the request").to_string());
        }
        serde_json::from_value(v["result"].clone()).map_err(|e| format!("bad answer: {e}"))
    }
}

/// A control answer for `Request::Proposal`.
pub fn proposal_answer(shared: Option<&Shared>, id: &str) -> serde_json::Value {
    match shared.and_then(|s| s.proposal(id)) {
        Some(p) => control::ok_view(&p),
        None => control::refused(format!(
            "no proposal {id:?} on this node (proposals live in the memory of the node whose \
             dashboard made them, and go when it restarts)"
        )),
    }
}
