//! The HTTP side: listener, middleware (Host allowlist, rate, session, security headers, CSRF,
//! body limit) and routes.

use super::pages::{self, Page};
use super::{model, proposal, Shared};
use crate::control::{self, Request};
use axum::extract::{Form, Path, Query, Request as HttpRequest, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

mod changes;

use changes::*;

/// Largest request body.
const BODY_BYTES_MAX: usize = 64 * 1024;
/// Requests served at once.
const CONCURRENCY_MAX: usize = 64;
const COOKIE: &str = "pm_session";

/// A bound listener (bound before the daemon starts, so a taken port fails the start).
pub struct Bound {
    listener: std::net::TcpListener,
    /// The address bound.
    pub addr: std::net::SocketAddr,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bound({})", self.addr)
    }
}

/// Binds the dashboard's address.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<Bound> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    Ok(Bound { listener, addr })
}

/// Serves the dashboard until the process ends.
pub async fn serve(bound: Bound, shared: Arc<Shared>) -> std::io::Result<()> {
    let app = router(shared.clone());
    match (&shared.cfg.tls_cert, &shared.cfg.tls_key) {
        (Some(cert), Some(key)) => {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let certs = read_pem_certs(cert)?;
            let key = read_pem_key(key)?;
            let tls = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(std::io::Error::other)?
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .map_err(std::io::Error::other)?;
            let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
            axum_server::from_tcp_rustls(bound.listener, config)?
                .serve(app.into_make_service())
                .await
        }
        _ => {
            let listener = tokio::net::TcpListener::from_std(bound.listener)?;
            axum::serve(listener, app).await
        }
    }
}

fn read_pem_certs(
    path: &std::path::Path,
) -> std::io::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))
}

fn read_pem_key(
    path: &std::path::Path,
) -> std::io::Result<rustls::pki_types::PrivateKeyDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_file(path)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))
}

fn router(shared: Arc<Shared>) -> Router {
    let authed = Router::new()
        .route("/", get(overview))
        .route("/api/v1/overview", get(overview))
        .route("/nodes", get(nodes))
        .route("/api/v1/nodes", get(nodes))
        .route("/nodes.csv", get(nodes_csv))
        .route("/nodes/{id}", get(node_detail))
        .route("/api/v1/nodes/{id}", get(node_detail))
        .route("/vulns", get(vulns))
        .route("/api/v1/vulns", get(vulns))
        .route("/patches", get(patches))
        .route("/api/v1/patches", get(patches))
        .route("/rollouts", get(rollouts))
        .route("/api/v1/rollouts", get(rollouts))
        .route("/rollouts/{id}", get(rollout_detail))
        .route("/api/v1/rollouts/{id}", get(rollout_detail))
        .route("/audit", get(audit))
        .route("/api/v1/audit", get(audit))
        .route("/reports", get(reports))
        .route("/reports/compliance", post(report_compliance))
        .route("/admin", get(admin))
        .route("/api/v1/admin", get(admin))
        .route("/sites", get(sites))
        .route("/api/v1/sites", get(sites))
        .route("/proposals", post(propose))
        .route("/api/v1/proposals", post(propose))
        .route("/proposals/{id}", get(proposal_page))
        .route("/api/v1/proposals/{id}", get(proposal_page))
        .route("/api/v1/submit", post(submit))
        .route("/events", get(events))
        .route("/api/v1/dashboard", get(dashboard_state))
        .route("/logout", post(logout))
        .layer(middleware::from_fn_with_state(shared.clone(), require_session));
    Router::new()
        .route("/login", get(login))
        .route("/assets/{name}", get(asset))
        .route("/csp-report", post(csp_report))
        .merge(authed)
        .fallback(not_found)
        // Violation reports only raise a counter and a log line: they need no CSRF check.
        .layer(tower_http::csrf::CsrfLayer::new().with_insecure_bypass(|m, u| {
            m == axum::http::Method::POST && u.path() == "/csp-report"
        }))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(BODY_BYTES_MAX))
        .layer(tower::limit::ConcurrencyLimitLayer::new(CONCURRENCY_MAX))
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// Host allowlist, rate limit and security headers, around everything.
async fn guard(State(s): State<Arc<Shared>>, req: HttpRequest, next: Next) -> Response {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let mut resp = if !host_allowed(&s, host) {
        (StatusCode::FORBIDDEN, "this dashboard does not answer to that host name\n")
            .into_response()
    } else if !s.admit_request() {
        (StatusCode::TOO_MANY_REQUESTS, "too many requests; slow down\n").into_response()
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'; \
             report-uri /csp-report",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

fn host_allowed(s: &Shared, host: &str) -> bool {
    let port = s.base_port();
    let name = |h: &str| h.eq_ignore_ascii_case(host);
    let with_port = [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        s.base_host(),
    ];
    with_port.iter().any(|h| name(h))
        || s.cfg.hosts.iter().any(|h| name(h) || name(&format!("{h}:{port}")))
}

impl Shared {
    fn base_port(&self) -> u16 {
        self.base_url.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0)
    }
    fn base_host(&self) -> String {
        self.base_url.split("://").nth(1).unwrap_or("").to_string()
    }
}

fn session_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn wants_json(uri: &Uri) -> bool {
    uri.path().starts_with("/api/")
}

async fn require_session(State(s): State<Arc<Shared>>, req: HttpRequest, next: Next) -> Response {
    if session_of(req.headers()).is_some_and(|id| s.touch(&id)) {
        return next.run(req).await;
    }
    if wants_json(req.uri()) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(
                serde_json::json!({"error": "log in: run `patchmesh dashboard` on the node"}),
            ),
        )
            .into_response();
    }
    (StatusCode::UNAUTHORIZED, Page::html(pages::login_needed())).into_response()
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    nonce: String,
}

async fn login(State(s): State<Arc<Shared>>, Query(q): Query<LoginQuery>) -> Response {
    let Some(id) = s.redeem(&q.nonce) else {
        return (StatusCode::FORBIDDEN, Page::html(pages::login_refused())).into_response();
    };
    let secure = if s.cfg.tls_cert.is_some() { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        s.cfg.session_max_s
    );
    let mut resp = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

async fn logout(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(id) = session_of(&headers) {
        s.logout(&id);
    }
    let mut resp = Redirect::to("/").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("pm_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    resp
}

async fn asset(Path(name): Path<String>) -> Response {
    let (body, ty): (&'static [u8], &str) = match name.as_str() {
        "htmx.min.js" => (include_bytes!("assets/htmx.min.js"), "text/javascript"),
        "sse.js" => (include_bytes!("assets/sse.js"), "text/javascript"),
        "app.js" => (include_bytes!("assets/app.js"), "text/javascript"),
        "app.css" => (include_bytes!("assets/app.css"), "text/css"),
        "favicon.svg" => (include_bytes!("assets/favicon.svg"), "image/svg+xml"),
        _ => return not_found().await,
    };
    ([(header::CONTENT_TYPE, ty), (header::CACHE_CONTROL, "private, max-age=3600")], body)
        .into_response()
}

/// A browser's CSP violation report: counted and logged (a violation means a page or an asset
/// tried something the policy forbids: a defect, or an injection attempt).
async fn csp_report(State(s): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    s.csp_violations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let text = String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned();
    tracing::warn!(report = %text, "dashboard: content security policy violation");
    StatusCode::NO_CONTENT.into_response()
}

/// The dashboard's own state: CSP violations reported, sessions, proposals kept.
async fn dashboard_state(State(s): State<Arc<Shared>>) -> Response {
    axum::Json(serde_json::json!({
        "csp_violations": s.csp_violations.load(std::sync::atomic::Ordering::Relaxed),
        "sessions": s.sessions.lock().unwrap().len(),
        "proposals": s.proposals.lock().unwrap().len(),
    }))
    .into_response()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// Why a page could not be built.
struct Failure(StatusCode, String);

impl From<String> for Failure {
    fn from(e: String) -> Failure {
        Failure(StatusCode::BAD_GATEWAY, e)
    }
}

type Answer = Result<Response, Failure>;

fn finish(uri: &Uri, a: Answer) -> Response {
    match a {
        Ok(r) => r,
        Err(Failure(code, e)) if wants_json(uri) => {
            (code, axum::Json(serde_json::json!({"error": e}))).into_response()
        }
        Err(Failure(code, e)) => (code, Page::html(pages::error_page(&e))).into_response(),
    }
}

/// The page, or its JSON twin under `/api/`.
async fn respond<M: serde::Serialize>(
    s: &Shared,
    uri: &Uri,
    model: &M,
    html: impl FnOnce(&M, &str) -> String,
) -> Answer {
    if wants_json(uri) {
        Ok(axum::Json(model).into_response())
    } else {
        let live = fingerprint(s).await.unwrap_or_default();
        Ok(Page::html(html(model, &live)).into_response())
    }
}

/// What the live stream watches: the replicated state hash, the payloads held and the
/// catalog (a change to any of them changes what some page shows).
async fn fingerprint(s: &Shared) -> Result<String, String> {
    let st = s.ask::<control::StatusView>(Request::Status).await?;
    let h = blake3::hash(
        format!(
            "{}:{}:{}:{}",
            st.state_hash, st.payloads_held, st.payload_bytes_held, st.catalog_changes
        )
        .as_bytes(),
    );
    Ok(h.to_hex()[..16].to_string())
}

/// Every payload this node holds or fetches, with where its bytes came from (at most 64):
/// (bytes held in all, each payload's view).
async fn payloads(s: &Shared) -> Result<(u64, Vec<control::ContentView>), String> {
    let list: control::ContentListView = s.ask(Request::ContentList).await?;
    let mut out = Vec::new();
    for c in list.contents.iter().take(64) {
        if let Ok(v) = s.ask(Request::Content { content: c.content_id.clone() }).await {
            out.push(v);
        }
    }
    Ok((list.held_bytes, out))
}

/// Payload bytes this node received from its own site and from other sites.
async fn lan_wan(s: &Shared) -> (u64, u64) {
    let (_, views) = payloads(s).await.unwrap_or_default();
    views.iter().fold((0, 0), |acc, v| (acc.0 + v.lan_bytes, acc.1 + v.wan_bytes))
}

async fn overview(State(s): State<Arc<Shared>>, uri: Uri) -> Response {
    let a = async {
        let status: control::StatusView = s.ask(Request::Status).await?;
        let basis = s.basis().await?;
        let exposure: control::ExposureView = s.ask(Request::Exposure).await?;
        let rollouts: control::RolloutsView = s.ask(Request::Rollouts).await?;
        let m = model::overview(&status, &basis, &exposure, &rollouts, lan_wan(&s).await);
        respond(&s, &uri, &m, pages::overview).await
    };
    finish(&uri, a.await)
}

async fn nodes(
    State(s): State<Arc<Shared>>,
    uri: Uri,
    Query(f): Query<model::NodeFilter>,
) -> Response {
    let a = async {
        let basis = s.basis().await?;
        let m = model::nodes_page(&basis, f, wants_json(&uri));
        respond(&s, &uri, &m, pages::nodes).await
    };
    finish(&uri, a.await)
}

async fn nodes_csv(
    State(s): State<Arc<Shared>>,
    uri: Uri,
    Query(f): Query<model::NodeFilter>,
) -> Response {
    let a = async {
        let basis = s.basis().await?;
        let m = model::nodes_page(&basis, f, true);
        let mut w = csv::Writer::from_writer(Vec::new());
        let _ = w.write_record([
            "node",
            "host",
            "site",
            "labels",
            "os",
            "ring",
            "last_seen",
            "open_findings",
            "kev",
            "excepted",
            "pending_updates",
            "status",
        ]);
        for r in &m.rows {
            let cells = [
                r.node.clone(),
                r.host.clone(),
                r.site.clone(),
                r.labels.clone(),
                r.os.clone(),
                r.ring.map(|x| x.to_string()).unwrap_or_default(),
                crate::report::datetime(r.last_seen_ms),
                r.open_findings.to_string(),
                r.kev.to_string(),
                r.excepted.to_string(),
                r.pending_updates.to_string(),
                r.compliance.label().to_string(),
            ];
            let _ = w.write_record(cells.iter().map(|c| crate::report::csv::cell(c)));
        }
        let body = w.into_inner().map_err(|e| e.to_string())?;
        Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (header::CONTENT_DISPOSITION, "attachment; filename=\"nodes.csv\""),
            ],
            body,
        )
            .into_response())
    };
    finish(&uri, a.await)
}

/// `/nodes/{id}`.
#[derive(serde::Serialize)]
pub struct NodeDetail {
    pub row: Option<model::NodeRow>,
    pub node: String,
    pub is_self: bool,
    pub inventory: Result<control::InventoryView, String>,
    pub findings: Result<Vec<patchmesh_protocol::intel::report::Assessed>, String>,
    pub updates: Vec<patchmesh_protocol::intel::apt::Update>,
    pub audit: Result<Vec<serde_json::Value>, String>,
    pub audit_total: u64,
    pub peers: Vec<control::PeerView>,
    pub rollouts: Vec<(String, u8, String)>,
    pub local: Vec<(String, control::LocalView)>,
    pub now_ms: u64,
}

async fn node_detail(State(s): State<Arc<Shared>>, uri: Uri, Path(id): Path<String>) -> Response {
    let a = async {
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Failure(StatusCode::BAD_REQUEST, "a node id is 64 hex characters".into()));
        }
        let basis = s.basis().await?;
        let is_self = basis.node == id;
        let asset = basis.assets.iter().find(|a| a.node == id);
        let inventory = s.ask(Request::Inventory { node: (!is_self).then(|| id.clone()) }).await;
        let (findings, updates) = if is_self {
            match s.ask::<control::IntelView>(Request::Intel).await {
                Ok(v) => (Ok(v.findings), v.updates),
                Err(e) => (Err(e), Vec::new()),
            }
        } else {
            match s.ask::<control::RemoteFindingsView>(Request::Findings { node: id.clone() }).await
            {
                Ok(v) => (Ok(v.findings), v.updates),
                Err(e) => (Err(e), Vec::new()),
            }
        };
        let mut audit_total = 0;
        let audit = s
            .ask::<control::AuditExportView>(Request::AuditExport {
                node: Some(id.clone()),
                since_ms: Some(basis.now_ms.saturating_sub(86_400_000)),
            })
            .await
            .map(|v| {
                audit_total = v.verified.entries;
                pages::audit_entries(&v.text, 50)
            });
        let peers =
            if is_self { s.ask(Request::Peers).await.unwrap_or_default() } else { Vec::new() };
        let local = if is_self {
            s.ask::<control::RolloutsView>(Request::Rollouts)
                .await
                .map(|v| v.rollouts.into_iter().filter_map(|r| Some((r.id, r.local?))).collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let m = NodeDetail {
            row: asset.map(|a| model::node_row(a, basis.now_ms)),
            rollouts: asset.map(|a| a.standings.clone()).unwrap_or_default(),
            node: id.clone(),
            is_self,
            inventory,
            findings,
            updates,
            audit,
            audit_total,
            peers,
            local,
            now_ms: basis.now_ms,
        };
        respond(&s, &uri, &m, pages::node_detail).await
    };
    finish(&uri, a.await)
}

async fn vulns(State(s): State<Arc<Shared>>, uri: Uri) -> Response {
    let a = async {
        let exposure: control::ExposureView = s.ask(Request::Exposure).await?;
        let basis = s.basis().await?;
        let intel = s.ask::<control::IntelView>(Request::Intel).await.ok();
        let m = model::vulns(&exposure, &basis, intel.as_ref());
        respond(&s, &uri, &m, pages::vulns).await
    };
    finish(&uri, a.await)
}

/// `/patches`.
#[derive(serde::Serialize)]
pub struct PatchesPage {
    pub catalog: control::CatalogView,
    pub contents: Vec<control::ContentView>,
    pub held_bytes: u64,
}

async fn patches(State(s): State<Arc<Shared>>, uri: Uri) -> Response {
    let a = async {
        let catalog: control::CatalogView = s.ask(Request::Catalog).await?;
        let (held_bytes, contents) = payloads(&s).await?;
        let m = PatchesPage { catalog, contents, held_bytes };
        respond(&s, &uri, &m, pages::patches).await
    };
    finish(&uri, a.await)
}

#[derive(serde::Deserialize, Default)]
struct RolloutQuery {
    #[serde(default)]
    sort: String,
}

async fn rollouts(
    State(s): State<Arc<Shared>>,
    uri: Uri,
    Query(q): Query<RolloutQuery>,
) -> Response {
    let a = async {
        let v: control::RolloutsView = s.ask(Request::Rollouts).await?;
        let mut rows: Vec<model::RolloutRow> = v.rollouts.iter().map(model::rollout_row).collect();
        match q.sort.as_str() {
            "state" => rows.sort_by(|a, b| a.state.cmp(&b.state)),
            "progress" => rows.sort_by_key(|r| std::cmp::Reverse(r.percent)),
            "patch" => rows.sort_by(|a, b| a.patch.cmp(&b.patch)),
            _ => rows.sort_by_key(|r| std::cmp::Reverse(r.created_at_ms)),
        }
        respond(&s, &uri, &rows, pages::rollouts).await
    };
    finish(&uri, a.await)
}

async fn rollout_detail(
    State(s): State<Arc<Shared>>,
    uri: Uri,
    Path(id): Path<String>,
) -> Response {
    let a = async {
        let v: control::RolloutsView = s.ask(Request::Rollouts).await?;
        let Some(r) = v.rollouts.iter().find(|r| r.id == id) else {
            return Err(Failure(StatusCode::NOT_FOUND, format!("no rollout {id} on this node")));
        };
        let basis = s.basis().await?;
        let m = model::rollout_detail(r, &basis, &v);
        respond(&s, &uri, &m, pages::rollout_detail).await
    };
    finish(&uri, a.await)
}

#[derive(serde::Deserialize, Default)]
struct AuditQuery {
    #[serde(default)]
    node: Option<String>,
}

/// `/audit`.
#[derive(serde::Serialize)]
pub struct AuditPage {
    pub node: String,
    pub members: Vec<(String, String)>,
    pub export: control::AuditExportView,
    pub entries: Vec<serde_json::Value>,
}

async fn audit(State(s): State<Arc<Shared>>, uri: Uri, Query(q): Query<AuditQuery>) -> Response {
    let a = async {
        let basis = s.basis().await?;
        let node = q.node.filter(|n| !n.is_empty()).unwrap_or_else(|| basis.node.clone());
        let export: control::AuditExportView = s
            .ask(Request::AuditExport {
                node: Some(node.clone()),
                since_ms: Some(basis.now_ms.saturating_sub(7 * 86_400_000)),
            })
            .await?;
        let members = basis
            .assets
            .iter()
            .map(|a| (a.node.clone(), model::node_row(a, basis.now_ms).host))
            .collect();
        let entries = pages::audit_entries(&export.text, 500);
        let m = AuditPage { node, members, entries, export };
        respond(&s, &uri, &m, pages::audit).await
    };
    finish(&uri, a.await)
}

async fn reports(State(s): State<Arc<Shared>>, uri: Uri) -> Response {
    let a = async {
        let basis = s.basis().await?;
        Ok(Page::html(pages::reports(&basis)).into_response())
    };
    finish(&uri, a.await)
}

#[derive(serde::Deserialize)]
struct ReportForm {
    days: u64,
    #[serde(default)]
    framework: String,
    #[serde(default)]
    format: String,
}

async fn report_compliance(
    State(s): State<Arc<Shared>>,
    uri: Uri,
    Form(f): Form<ReportForm>,
) -> Response {
    let a = async {
        if !(1..=3650).contains(&f.days) {
            return Err(Failure(StatusCode::BAD_REQUEST, "the period is 1 to 3650 days".into()));
        }
        let framework = match f.framework.as_str() {
            "" => None,
            x => Some(crate::report::Framework::parse(x).ok_or_else(|| {
                Failure(StatusCode::BAD_REQUEST, format!("unknown framework {x:?}"))
            })?),
        };
        let basis = s.basis().await?;
        let mut findings = BTreeMap::new();
        for a in &basis.assets {
            let got = if a.node == basis.node {
                s.ask::<control::IntelView>(Request::Intel).await.map(|v| {
                    crate::report::FetchedFindings {
                        hostname: v.hostname,
                        findings: v.findings,
                        history: v.history,
                    }
                })
            } else if a.exposure.is_none() {
                Err("it has no intel bundle yet".to_string())
            } else {
                s.ask::<control::RemoteFindingsView>(Request::Findings { node: a.node.clone() })
                    .await
                    .map(|v| crate::report::FetchedFindings {
                        hostname: v.hostname,
                        findings: v.findings,
                        history: v.history,
                    })
            };
            findings.insert(a.node.clone(), got);
        }
        let rollouts: control::RolloutsView = s.ask(Request::Rollouts).await?;
        let until_ms = basis.now_ms;
        let report = crate::report::build(&crate::report::Input {
            basis: &basis,
            findings: &findings,
            rollouts: &rollouts,
            since_ms: until_ms.saturating_sub(f.days * 86_400_000),
            until_ms,
            framework,
        });
        let body = report.body();
        let hash = crate::report::body_hash(body.as_bytes());
        let sig: control::ReportSignature =
            s.ask(Request::SignReport { body_hash: hex::encode(hash) }).await?;
        let sigs = vec![crate::report::ReportSig {
            role: "node".into(),
            key: sig.key,
            signature: sig.signature,
        }];
        let signed = crate::report::file_text(&body, &sigs);
        let day = crate::report::date(until_ms);
        let (bytes, ty, ext) = if f.format == "json" {
            (signed.into_bytes(), "application/json", "json")
        } else {
            (
                crate::report::html::render(&report, &signed).into_bytes(),
                "text/html; charset=utf-8",
                "html",
            )
        };
        let disposition = format!("attachment; filename=\"compliance-{day}.{ext}\"");
        Ok((
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(ty)),
                (
                    header::CONTENT_DISPOSITION,
                    HeaderValue::from_str(&disposition)
                        .unwrap_or(HeaderValue::from_static("attachment")),
                ),
            ],
            bytes,
        )
            .into_response())
    };
    finish(&uri, a.await)
}

/// `/admin`.
#[derive(serde::Serialize)]
pub struct AdminPage {
    pub admins: Vec<String>,
    pub trust_version: u64,
    /// Roles of the admin set (empty: every admin may do everything everywhere).
    pub roles: Vec<RoleRow>,
    /// Enrolment vouchers in the catalog, with the enrolments this node has seen.
    pub vouchers: Vec<control::VoucherView>,
    /// Labels no voucher may grant (`key=value`, `key=*`).
    pub reserved_labels: Vec<String>,
    /// This node's clock when the page was made (for voucher expiry).
    pub now_ms: u64,
    pub integrations: control::IntegrationsView,
    pub dlq: serde_json::Value,
}

/// One role of the admin set, as the admin page shows it.
#[derive(serde::Serialize)]
pub struct RoleRow {
    pub name: String,
    pub keys: Vec<String>,
    pub permissions: Vec<&'static str>,
    /// "everywhere", or the sites and labels it is limited to.
    pub scope: String,
    /// Approving keys its rollouts need (0: the mesh's rule).
    pub publish_approvals: u8,
}

/// The roles of the admin set the node holds (decoded from its latest signed set).
fn admin_roles(st: &control::AdminStateView) -> Vec<RoleRow> {
    let Some(set) = st
        .latest_admin_set
        .as_ref()
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| patchmesh_protocol::crypto::decode("admin set", &b, 1 << 20).ok())
        .and_then(|env| patchmesh_protocol::trust::AdminSet::open(&env).ok())
    else {
        return Vec::new();
    };
    set.roles
        .iter()
        .map(|r| {
            let mut parts = Vec::new();
            if !r.scope.sites.is_empty() {
                let s: Vec<&str> = r.scope.sites.iter().map(|s| s.0.as_ref()).collect();
                parts.push(format!("sites {}", s.join(", ")));
            }
            if !r.scope.labels.is_empty() {
                let l: Vec<String> =
                    r.scope.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                parts.push(format!("labels {}", l.join(", ")));
            }
            RoleRow {
                name: r.name.clone(),
                keys: r.keys.iter().map(|k| k.to_hex()).collect(),
                permissions: r.permissions.iter().map(|p| p.name()).collect(),
                scope: if parts.is_empty() { "everywhere".into() } else { parts.join("; ") },
                publish_approvals: r.publish_approvals,
            }
        })
        .collect()
}

async fn admin(State(s): State<Arc<Shared>>, uri: Uri) -> Response {
    let a = async {
        let st: control::AdminStateView = s.ask(Request::AdminState).await?;
        let integrations: control::IntegrationsView = s.ask(Request::IntegrationsStatus).await?;
        let dlq: serde_json::Value = s.ask(Request::DlqList).await?;
        let catalog: control::CatalogView = s.ask(Request::Catalog).await?;
        let roles = admin_roles(&st);
        let mut vouchers = Vec::new();
        let mut reserved = Vec::new();
        for e in catalog.entries {
            match e.entry {
                control::CatalogEntryView::Voucher(v) => vouchers.push(v),
                control::CatalogEntryView::ReservedLabels { labels } => {
                    for (k, vals) in labels {
                        if vals.is_empty() {
                            reserved.push(format!("{k}=*"));
                        }
                        reserved.extend(vals.iter().map(|v| format!("{k}={v}")));
                    }
                }
                _ => {}
            }
        }
        let m = AdminPage {
            admins: st.admins,
            trust_version: st.version,
            roles,
            vouchers,
            reserved_labels: reserved,
            now_ms: crate::clock::now_ms().0,
            integrations,
            dlq,
        };
        respond(&s, &uri, &m, pages::admin).await
    };
    finish(&uri, a.await)
}

async fn sites(State(s): State<Arc<Shared>>, uri: Uri) -> Response {
    let a = async {
        let status: control::StatusView = s.ask(Request::Status).await?;
        let basis = s.basis().await?;
        let exposure: control::ExposureView = s.ask(Request::Exposure).await?;
        let rollouts: control::RolloutsView = s.ask(Request::Rollouts).await?;
        let ov = model::overview(&status, &basis, &exposure, &rollouts, (0, 0));
        let peers: Vec<control::PeerView> = s.ask(Request::Peers).await?;
        let (_, views) = payloads(&s).await?;
        let transfers =
            views.into_iter().map(|v| (v.content, v.role, v.lan_bytes, v.wan_bytes)).collect();
        let m = model::SitesPage { sites: ov.sites, peers, transfers };
        respond(&s, &uri, &m, pages::sites).await
    };
    finish(&uri, a.await)
}

/// Server-sent events: `change` whenever the node's state fingerprint differs from the one
/// the page was built at (`since`), checked each second while a page is open; nothing runs
/// when no page is.
#[derive(serde::Deserialize)]
struct EventsQuery {
    #[serde(default)]
    since: String,
}

async fn events(State(s): State<Arc<Shared>>, Query(q): Query<EventsQuery>) -> Response {
    let since = q.since.chars().filter(char::is_ascii_hexdigit).take(16).collect::<String>();
    let stream = futures::stream::unfold((s, since, true), |(s, last, first)| async move {
        loop {
            if !first || last.is_empty() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let Ok(now) = fingerprint(&s).await else { return None };
            if last.is_empty() {
                let ev = Event::default().event("hello").data(now.as_str());
                return Some((Ok::<_, std::convert::Infallible>(ev), (s, now, false)));
            }
            if now != last {
                let ev = Event::default().event("change").data(now.as_str());
                return Some((Ok(ev), (s, now, false)));
            }
            if first {
                // Unchanged since the page was built: go on polling.
                return Some((
                    Ok(Event::default().event("hello").data(now.as_str())),
                    (s, now, false),
                ));
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}
