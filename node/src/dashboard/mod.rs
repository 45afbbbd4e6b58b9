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
pub mod pages;
pub mod proposal;
mod server;

pub use model::*;
pub use proposal::{Proposal, ProposalChange, ProposalView};
pub use server::{bind, serve, AdminPage, AuditPage, Bound, NodeDetail, PatchesPage};

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
/// A request for the site's signed records as a typed view, answered in process (the largest
/// view by far: at 10,000 members its JSON is ~16 MB, and a JSON round trip would cost more
/// than the whole page).
pub type BasisAsk = oneshot::Sender<std::sync::Arc<crate::control::ReportBasisView>>;

pub struct Shared {
    ctl: mpsc::Sender<(Request, oneshot::Sender<serde_json::Value>)>,
    basis_tx: mpsc::Sender<BasisAsk>,
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
        basis_tx: mpsc::Sender<BasisAsk>,
    ) -> Shared {
        let scheme = if cfg.tls_cert.is_some() { "https" } else { "http" };
        Shared {
            ctl,
            basis_tx,
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
        LoginView {
            url: format!("{}/login?nonce={nonce}", self.base_url),
            valid_s: NONCE_TTL.as_secs(),
        }
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

    /// This site's signed records and the other sites' summaries, typed.
    async fn basis(&self) -> Result<std::sync::Arc<crate::control::ReportBasisView>, String> {
        let (tx, rx) = oneshot::channel();
        self.basis_tx.send(tx).await.map_err(|_| "the node is shutting down".to_string())?;
        tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .map_err(|_| "the node did not answer in time".to_string())?
            .map_err(|_| "the node dropped the request".to_string())
    }

    /// Asks the daemon one control request.
    async fn ask<T: serde::de::DeserializeOwned>(&self, req: Request) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        self.ctl.send((req, tx)).await.map_err(|_| "the node is shutting down".to_string())?;
        let v = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .map_err(|_| "the node did not answer in time".to_string())?
            .map_err(|_| "the node dropped the request".to_string())?;
        let result = control::Answer::from_value(v)?.into_result()?;
        serde_json::from_value(result).map_err(|e| format!("bad answer: {e}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(idle_s: u64, max_s: u64) -> Shared {
        let cfg: DashboardConfig =
            toml::from_str(&format!("session_idle_s = {idle_s}\nsession_max_s = {max_s}\n"))
                .unwrap();
        let (tx, _rx) = mpsc::channel(1);
        let (btx, _brx) = mpsc::channel(1);
        Shared::new(cfg, "127.0.0.1:7947".parse().unwrap(), tx, btx)
    }

    fn nonce_of(url: &str) -> String {
        url.rsplit("nonce=").next().unwrap().to_string()
    }

    #[test]
    fn a_login_nonce_works_once_and_not_after_a_minute() {
        let s = shared(3600, 43200);
        let login = s.login();
        assert!(login.url.starts_with("http://127.0.0.1:7947/login?nonce="), "{}", login.url);
        let nonce = nonce_of(&login.url);
        assert_eq!(nonce.len(), 64);
        let session = s.redeem(&nonce).expect("a fresh nonce logs in");
        assert!(s.touch(&session));
        assert!(s.redeem(&nonce).is_none(), "a nonce works once");
        assert!(s.redeem("").is_none() && s.redeem(&"0".repeat(64)).is_none());

        let old = nonce_of(&s.login().url);
        let minted = Instant::now().checked_sub(NONCE_TTL + Duration::from_secs(1)).unwrap();
        s.nonces.lock().unwrap().insert(old.clone(), minted);
        assert!(s.redeem(&old).is_none(), "an expired nonce logs in");
    }

    #[test]
    fn sessions_end_when_idle_past_their_limit_or_logged_out() {
        let s = shared(60, 600);
        let a = s.redeem(&nonce_of(&s.login().url)).unwrap();
        let b = s.redeem(&nonce_of(&s.login().url)).unwrap();
        let c = s.redeem(&nonce_of(&s.login().url)).unwrap();
        assert_ne!(a, b);
        let past = |secs| Instant::now().checked_sub(Duration::from_secs(secs)).unwrap();
        s.sessions.lock().unwrap().get_mut(&a).unwrap().last = past(61);
        let created = past(601);
        {
            let mut m = s.sessions.lock().unwrap();
            let v = m.get_mut(&b).unwrap();
            v.created = created;
        }
        assert!(!s.touch(&a), "an idle session lives on");
        assert!(!s.touch(&b), "a session outlives its maximum");
        assert!(s.touch(&c));
        s.logout(&c);
        assert!(!s.touch(&c), "logout left the session");
    }

    #[test]
    fn outstanding_nonces_and_sessions_are_bounded() {
        let s = shared(3600, 43200);
        for _ in 0..100 {
            s.login();
        }
        assert!(s.nonces.lock().unwrap().len() <= NONCES_MAX);
        for _ in 0..100 {
            let n = nonce_of(&s.login().url);
            s.redeem(&n).unwrap();
        }
        assert!(s.sessions.lock().unwrap().len() <= SESSIONS_MAX);
    }

    #[test]
    fn the_digest_covers_every_field_of_a_proposal() {
        use patchmesh_protocol::catalog::CommandAction;
        use patchmesh_protocol::ids::{Millis, RolloutId};
        let p = Proposal {
            id: "ab".into(),
            node: "cd".into(),
            created_at: Millis(5),
            changes: vec![ProposalChange::Command {
                rollout: RolloutId([1; 32]),
                action: CommandAction::Pause,
                issued_at: Millis(5),
            }],
        };
        let d = p.digest();
        let mut q = p.clone();
        q.changes = vec![ProposalChange::Command {
            rollout: RolloutId([1; 32]),
            action: CommandAction::Abort,
            issued_at: Millis(5),
        }];
        assert_ne!(q.digest(), d, "pause and abort share a digest");
        let mut r = p.clone();
        r.id = "ac".into();
        assert_ne!(r.digest(), d);
        assert_eq!(
            p.view().summary,
            vec!["pause rollout 010101010101 (installs under way finish)"]
        );
    }
}
