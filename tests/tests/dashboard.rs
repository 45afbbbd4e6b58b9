//! The dashboard in a real browser (Debian's chromium driven through chromedriver) against a
//! loopback mesh of real nodes, and its HTTP guards and metrics endpoint without one.
//!
//! Screenshots of every view are written to `target/dashboard-screenshots/`.

use fantoccini::{Client, ClientBuilder, Locator};
use patchmesh_node::control::{
    PatchAddOutput, RolloutCreateOutput, RolloutStatusOutput, RolloutView, VoucherView,
};
use patchmesh_node::dashboard::NodesPage;
use patchmesh_tests::{ensure_tools, serial, wait_for, Mesh};
use serde::Deserialize;
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(90);
/// How soon a change anywhere in the mesh must show on an open page.
const LIVE: Duration = Duration::from_secs(5);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// chromedriver on a free loopback port, killed on drop.
struct Driver(Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromedriver() -> Driver {
    ensure_tools(&["chromium", "chromedriver"]);
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromedriver");
    let up = wait_for(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    assert!(up.is_some(), "chromedriver did not listen on {port}");
    Driver(child, port)
}

async fn browser(driver: &Driver, width: u32, height: u32) -> Client {
    let caps = json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     format!("--window-size={width},{height}")],
        },
        "goog:loggingPrefs": {"browser": "ALL"},
    });
    let caps = caps.as_object().unwrap().clone();
    // The webdriver client's TLS stack (unused on loopback http) needs a provider chosen.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    ClientBuilder::rustls()
        .expect("webdriver client")
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.1))
        .await
        .expect("connecting to chromedriver")
}

/// chromedriver's browser log (console messages and CSP reports the page raised).
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

/// One entry of chromedriver's browser log (the fields read here).
#[derive(Debug, Deserialize)]
struct LogEntry {
    #[serde(default)]
    level: String,
    #[serde(default)]
    message: String,
}

/// Console errors logged since the last call.
async fn console_errors(c: &Client) -> Vec<String> {
    let v = c.issue_cmd(BrowserLog).await.expect("reading the browser log");
    let entries: Option<Vec<LogEntry>> = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("the browser log is not a list of entries ({e}): {v}"));
    entries
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.level == "SEVERE" || e.level == "ERROR")
        .map(|e| e.message)
        .collect()
}

/// What the dashboard's `/api/v1/dashboard` says of itself (the fields asserted here).
#[derive(Debug, Deserialize)]
struct DashboardState {
    csp_violations: u64,
    proposals: u64,
}

/// The rendered text of the first element matching `css`, read in one script
/// call: a live update may replace the element between a WebDriver `find` and
/// its `text`, which would read as an empty page.
async fn text(c: &Client, css: &str) -> String {
    let script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';";
    match c.execute(script, vec![json!(css)]).await {
        Ok(v) => v.as_str().unwrap_or_default().to_string(),
        Err(_) => String::new(),
    }
}

/// Polls the open page (without reloading it) until `css`'s text satisfies `f`.
async fn wait_text(c: &Client, css: &str, within: Duration, f: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let t = text(c, css).await;
        if f(&t) {
            return t;
        }
        assert!(
            start.elapsed() < within,
            "{css} did not change as expected within {within:?}; it says {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// Marks the page so that a reload (which would clear the mark) is detected.
async fn mark(c: &Client) {
    c.execute("window.__pm_mark = 42; return true;", vec![]).await.unwrap();
}

async fn still_marked(c: &Client) -> bool {
    c.execute("return window.__pm_mark === 42;", vec![]).await.unwrap() == json!(true)
}

/// `fetch` from the page (same origin, its session cookie): (status, body).
async fn page_fetch(c: &Client, method: &str, path: &str, body: Option<&str>) -> (u64, String) {
    let script = r#"
        const [method, path, body, done] = arguments;
        const init = {method, credentials: 'same-origin'};
        if (body !== null) { init.body = body; init.headers = {'content-type': 'application/x-www-form-urlencoded'}; }
        fetch(path, init).then(async r => done([r.status, await r.text()])).catch(e => done([0, String(e)]));
    "#;
    let v = c
        .execute_async(script, vec![json!(method), json!(path), json!(body)])
        .await
        .expect("fetch in the page");
    serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("the page's fetch did not answer [status, body] ({e}): {v}"))
}

fn add_patch(m: &Mesh, body: &[u8], version: &str, extra: &[&str]) -> String {
    let file = m.root.0.join(format!("payload-{version}.bin"));
    std::fs::write(&file, body).unwrap();
    let admin = m.admin_key();
    let mut args = vec![
        "patch",
        "add",
        file.to_str().unwrap(),
        "--name",
        "app",
        "--version",
        version,
        "--install",
        "{data_dir}/app/app.bin",
    ];
    args.extend_from_slice(extra);
    args.extend(["--admin-key", admin.as_str(), "--json"]);
    let out = m.cli_at(0, &args);
    assert!(out.status.success(), "patch add: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<PatchAddOutput>(&out.stdout).unwrap().content_id
}

fn create_rollout(m: &Mesh, content: &str, extra: &[&str]) -> String {
    let admin = m.admin_key();
    let mut args = vec![
        "rollout",
        "create",
        "--patch",
        content,
        "--soak-s",
        "1",
        "--recheck-s",
        "1",
        "--min-success",
        "1.0",
        "--ring",
        "canary:0:ring=canary",
        "--ring",
        "all:100",
    ];
    args.extend_from_slice(extra);
    args.extend(["--admin-key", admin.as_str(), "--json"]);
    let out = m.cli_at(0, &args);
    assert!(out.status.success(), "rollout create: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<RolloutCreateOutput>(&out.stdout).unwrap().rollout
}

fn rollout_at(m: &Mesh, i: usize, id: &str) -> Option<RolloutView> {
    let out = m.cli_at(i, &["rollout", "status", "--json"]);
    let v: RolloutStatusOutput = serde_json::from_slice(&out.stdout).ok()?;
    v.rollouts.into_iter().find(|r| r.id == id)
}

fn login_url(m: &Mesh) -> String {
    let out = m.cli_at(0, &["dashboard"]);
    assert!(out.status.success(), "dashboard: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A mesh of three nodes in one site; node 0 serves the dashboard (and metrics).
fn mesh(tag: &str) -> (Mesh, u16, u16) {
    let mut m = Mesh::new(tag, 3, 1);
    let (port, metrics) = (free_port(), free_port());
    m.node_tables.insert(
        0,
        format!(
            "[dashboard]\nlisten = \"127.0.0.1:{port}\"\n\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"
        ),
    );
    m.start_all();
    for n in &m.nodes {
        std::fs::create_dir_all(n.dir.join("data/app")).unwrap();
        std::fs::write(n.dir.join("data/app/app.bin"), b"app version 1\n").unwrap();
    }
    let converged = wait_for(WAIT, || (m.status(0).site_records >= 3).then_some(()));
    assert!(converged.is_some(), "node 0 did not get every record");
    (m, port, metrics)
}

fn catalog_states(m: &Mesh) -> Vec<String> {
    (0..m.nodes.len()).map(|i| m.status(i).catalog_state).collect()
}

#[test]
fn the_dashboard_logs_in_once_shows_every_view_live_and_only_an_admin_signature_changes_state() {
    let _guard = serial();
    let driver = chromedriver();
    let (m, port, _) = mesh("dash");
    let base = format!("http://127.0.0.1:{port}");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = browser(&driver, 1280, 800).await;

        // Login: a one-time link, then a cookie; the same link again is refused.
        let url = login_url(&m);
        assert!(url.starts_with(&base) && url.contains("/login?nonce="), "{url}");
        c.goto(&url).await.unwrap();
        let here = c.current_url().await.unwrap();
        assert_eq!(here.path(), "/", "the login redirects to the overview, dropping the nonce");
        assert!(here.query().is_none(), "{here}");
        assert_eq!(text(&c, "h1").await, "Overview");
        let cookies = c.get_all_cookies().await.unwrap();
        let session = cookies.iter().find(|k| k.name() == "pm_session").expect("session cookie");
        assert_eq!(session.http_only(), Some(true));
        assert!(!session.value().contains(&url[url.find('=').unwrap() + 1..]), "nonce in cookie");
        c.goto(&url).await.unwrap();
        assert!(text(&c, "h1").await.contains("used or has expired"), "a reused link logs in");
        // The refused link's 403 is the only console message so far.
        let errors = console_errors(&c).await;
        assert!(
            errors.iter().all(|e| e.contains("/login?nonce=") && e.contains("403")),
            "{errors:#?}"
        );

        // A patch and a rollout that takes every node, watched from the open rollouts page.
        c.goto(&format!("{base}/rollouts")).await.unwrap();
        assert!(text(&c, "main").await.contains("No rollout yet"));
        mark(&c).await;
        let good = add_patch(&m, b"app version 2\n", "2", &[]);
        let created = Instant::now();
        let good_rollout = create_rollout(&m, &good, &[]);
        wait_text(&c, "#rollouts-table", LIVE + Duration::from_secs(2), |t| t.contains("app 2"))
            .await;
        eprintln!("new rollout on the open page after {:?}", created.elapsed());
        assert!(still_marked(&c).await, "the page reloaded instead of updating in place");

        // Its detail page advances to 3 of 3 succeeded without a reload.
        c.goto(&format!("{base}/rollouts/{good_rollout}")).await.unwrap();
        mark(&c).await;
        wait_text(&c, "#members-table", WAIT, |t| t.matches("succeeded").count() == 3).await;
        eprintln!("good rollout done on every node after {:?}", created.elapsed());
        assert!(still_marked(&c).await, "the rollout page reloaded");
        shot(&c, "rollout-detail").await;

        // A bad patch halts in its canary ring: the overview shows the halt live.
        c.goto(&format!("{base}/")).await.unwrap();
        mark(&c).await;
        let bad = add_patch(&m, b"bad build\n", "3", &["--verify", "exit 1"]);
        let bad_rollout = create_rollout(&m, &bad, &[]);
        let halted =
            wait_for(WAIT, || rollout_at(&m, 0, &bad_rollout).filter(|v| v.state() == "halted"));
        assert!(halted.is_some(), "the bad rollout did not halt");
        eprintln!("bad rollout halted after {:?}", created.elapsed());
        let seen = Instant::now();
        wait_text(&c, "#halts", LIVE, |t| t.contains("halted")).await;
        eprintln!("halt on the open overview {:?} after node 0 saw it", seen.elapsed());
        assert!(still_marked(&c).await, "the overview reloaded");

        // A voucher and a reserved label, for the admin page.
        let admin = m.admin_key();
        for args in [
            &["voucher", "create", "--site", "site0", "--max-nodes", "5", "--admin-key", &admin][..],
            &["voucher", "reserved", "--set", "ring=canary", "--admin-key", &admin][..],
        ] {
            let out = m.cli_at(0, args);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        let vouchered = wait_for(WAIT, || {
            let v: Vec<VoucherView> =
                serde_json::from_slice(&m.cli_at(0, &["voucher", "list", "--json"]).stdout).ok()?;
            (v.len() == 1).then_some(())
        });
        assert!(vouchered.is_some(), "the voucher never reached the catalog");

        // Every view renders with the mesh's data, without console errors.
        let node1 = m.nodes[1].key.clone();
        let views: Vec<(&str, String, &str)> = vec![
            ("overview", "/".into(), "Compliance"),
            ("nodes", "/nodes".into(), "3 of 3 nodes"),
            ("node-detail", format!("/nodes/{node1}"), "Install journal"),
            ("vulnerabilities", "/vulns".into(), "Exceptions"),
            ("patches", "/patches".into(), "app 2"),
            ("rollouts", "/rollouts".into(), "halted"),
            ("rollout-halted", format!("/rollouts/{bad_rollout}"), "halted in ring 0"),
            ("sites", "/sites".into(), "site0"),
            ("audit", "/audit".into(), "install step — "),
            ("reports", "/reports".into(), "Generate and download"),
            ("admin", "/admin".into(), "0 / 5"),
        ];
        for (name, path, expect) in &views {
            let t = Instant::now();
            c.goto(&format!("{base}{path}")).await.unwrap();
            eprintln!("{name}: {:?}", t.elapsed());
            // The page is server-rendered; a live update landing right after the
            // load may swap a region, so the text is read until it settles.
            let main = wait_text(&c, "main", LIVE, |t| t.contains(expect)).await;
            assert!(!main.contains("could not be built"), "{path}: {main}");
            shot(&c, name).await;
        }
        // The nodes table at a phone's width.
        c.set_window_size(390, 844).await.unwrap();
        c.goto(&format!("{base}/nodes")).await.unwrap();
        shot(&c, "nodes-phone").await;
        c.set_window_size(1280, 800).await.unwrap();

        // The nodes table filters (the filter stays in the URL) and exports what it shows.
        c.goto(&format!("{base}/nodes")).await.unwrap();
        let host1 = &node1[..12];
        let form = c.form(Locator::Css("form.filters")).await.unwrap();
        form.set_by_name("q", host1).await.unwrap();
        form.submit().await.unwrap();
        wait_text(&c, "#nodes-count", LIVE, |t| t.starts_with("1 of 3")).await;
        let filtered = c.current_url().await.unwrap();
        assert!(filtered.query().unwrap_or("").contains(host1), "{filtered}");
        let rows = text(&c, "#nodes-table tbody").await;
        assert!(rows.contains(host1) && rows.lines().count() == 1, "{rows}");
        let (code, csv) = page_fetch(&c, "GET", &format!("/nodes.csv?q={host1}"), None).await;
        assert_eq!(code, 200);
        assert_eq!(csv.lines().count(), 2, "header and one node:\n{csv}");
        assert!(csv.contains(&node1));
        let (code, all) = page_fetch(&c, "GET", "/api/v1/nodes", None).await;
        assert_eq!(code, 200);
        let all: NodesPage = serde_json::from_str(&all).unwrap();
        assert_eq!(all.rows.len(), 3, "{all:?}");

        // No console error and no CSP violation on any page so far.
        let errors = console_errors(&c).await;
        assert!(errors.is_empty(), "console errors: {errors:#?}");

        // A POST that would change state without an admin's signed envelope is refused, and no
        // node applies anything.
        let before = catalog_states(&m);
        let (code, body) =
            page_fetch(&c, "POST", "/api/v1/submit", Some(r#"{"envelope":"00"}"#)).await;
        assert!(code == 400 || code == 403, "{code} {body}");
        let (code, body) = page_fetch(&c, "POST", "/api/v1/submit", Some("envelope=00")).await;
        assert!(code == 400 || code == 403, "{code} {body}");
        let errors = console_errors(&c).await;
        assert!(errors.iter().all(|e| e.contains("/api/v1/submit")), "{errors:#?}");

        // Pause from the page: a proposal, with its digest and the CLI command to sign it.
        c.goto(&format!("{base}/rollouts/{good_rollout}")).await.unwrap();
        c.find(Locator::Css("#propose-pause")).await.unwrap().click().await.unwrap();
        let digest = wait_text(&c, "#proposal-digest", LIVE, |t| t.len() == 64).await;
        let summary = text(&c, "#proposal-summary").await;
        assert!(summary.contains("pause rollout"), "{summary}");
        let id =
            c.current_url().await.unwrap().path().trim_start_matches("/proposals/").to_string();
        shot(&c, "proposal").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(catalog_states(&m), before, "a proposal or a refused POST changed the catalog");

        // The CLI refuses a digest other than the page's, then signs the right one.
        let admin = m.admin_key();
        let wrong = m.cli_at(
            0,
            &["proposal", "sign", &id, "--digest", &"0".repeat(64), "--admin-key", &admin],
        );
        assert!(!wrong.status.success());
        assert!(String::from_utf8_lossy(&wrong.stderr).contains("not the proposal"));
        let out =
            m.cli_at(0, &["proposal", "sign", &id, "--digest", &digest, "--admin-key", &admin]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let paused = wait_for(WAIT, || {
            (0..3)
                .all(|i| rollout_at(&m, i, &good_rollout).is_some_and(|v| v.state() == "paused"))
                .then_some(())
        });
        assert!(paused.is_some(), "the signed proposal did not pause the rollout on every node");
        eprintln!("paused everywhere after {:?}", created.elapsed());

        // Nor on the proposal page; and the browser reported no CSP violation at all.
        let errors = console_errors(&c).await;
        assert!(errors.is_empty(), "console errors: {errors:#?}");
        let (_, state) = page_fetch(&c, "GET", "/api/v1/dashboard", None).await;
        let state: DashboardState = serde_json::from_str(&state).unwrap();
        assert_eq!(state.csp_violations, 0, "{state:?}");

        // Logout ends the session.
        c.goto(&format!("{base}/")).await.unwrap();
        c.find(Locator::Css("header form button")).await.unwrap().click().await.unwrap();
        wait_text(&c, "h1", LIVE, |t| t.contains("Log in")).await;
        let (code, _) = page_fetch(&c, "GET", "/api/v1/overview", None).await;
        assert_eq!(code, 401);
        c.close().await.unwrap();
    });
}

#[test]
fn cross_site_posts_wrong_hosts_and_missing_sessions_are_refused_and_metrics_need_the_token() {
    let _guard = serial();
    let (m, port, metrics) = mesh("dash-guard");
    let base = format!("http://127.0.0.1:{port}");
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();

    // A session from a one-time link; the link works once.
    let url = login_url(&m);
    let r = agent.get(&url).call().unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers().get("set-cookie").unwrap().to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_string();
    assert_eq!(agent.get(&url).call().unwrap().status(), 403, "a reused nonce logs in");

    // Security headers on a page.
    let r = agent.get(&format!("{base}/")).header("cookie", &session).call().unwrap();
    assert_eq!(r.status(), 200);
    let h =
        |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert!(h("content-security-policy").contains("default-src 'none'"));
    assert!(h("content-security-policy").contains("frame-ancestors 'none'"));
    assert_eq!(h("x-content-type-options"), "nosniff");
    assert_eq!(h("referrer-policy"), "no-referrer");
    assert_eq!(h("cache-control"), "no-store");

    // No session: no data.
    assert_eq!(agent.get(&format!("{base}/api/v1/overview")).call().unwrap().status(), 401);
    assert_eq!(agent.get(&format!("{base}/nodes")).call().unwrap().status(), 401);

    // DNS rebinding: a page served as evil.example that reaches this port.
    let r = agent
        .get(&format!("{base}/"))
        .header("host", &format!("evil.example:{port}"))
        .header("cookie", &session)
        .call()
        .unwrap();
    assert_eq!(r.status(), 403);

    // A cross-site form POST, with the session cookie even, is refused before it is read.
    let before = catalog_states(&m);
    for (site, origin) in
        [("cross-site", "http://evil.example"), ("same-site", "http://127.0.0.2:1")]
    {
        let r = agent
            .post(&format!("{base}/proposals"))
            .header("cookie", &session)
            .header("sec-fetch-site", site)
            .header("origin", origin)
            .content_type("application/x-www-form-urlencoded")
            .send("action=exception&cve=CVE-2024-1&justification=x")
            .unwrap();
        assert_eq!(r.status(), 403, "{site} POST accepted");
    }
    let r =
        agent.get(&format!("{base}/api/v1/dashboard")).header("cookie", &session).call().unwrap();
    let state: DashboardState =
        serde_json::from_str(&r.into_body().read_to_string().unwrap()).unwrap();
    assert_eq!(state.proposals, 0, "a refused POST made a proposal: {state:?}");

    // A same-origin unsigned envelope is refused by the node's verification.
    let r = agent
        .post(&format!("{base}/api/v1/submit"))
        .header("cookie", &session)
        .header("sec-fetch-site", "same-origin")
        .content_type("application/json")
        .send(r#"{"envelope":"0011"}"#)
        .unwrap();
    assert_eq!(r.status(), 403);
    // An oversized body is refused from its declared length, before any of it is read (sent
    // by hand: a client still writing the body would see the early answer as a broken pipe).
    let answer = {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            tcp,
            "POST /api/v1/proposals HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {session}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{{",
            200 * 1024
        )
        .unwrap();
        let mut buf = [0u8; 64];
        let n = tcp.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(catalog_states(&m), before);

    // Metrics: the token file's bearer token, OpenMetrics, libp2p's own families too, bounded
    // labels (no node ids).
    let murl = format!("http://127.0.0.1:{metrics}/metrics");
    assert_eq!(agent.get(&murl).call().unwrap().status(), 401);
    assert_eq!(
        agent.get(&murl).header("authorization", "Bearer nope").call().unwrap().status(),
        401
    );
    let token = std::fs::read_to_string(m.nodes[0].dir.join("data/metrics.token")).unwrap();
    let r = agent
        .get(&murl)
        .header("authorization", &format!("Bearer {}", token.trim()))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = r.into_body().read_to_string().unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    for family in [
        "patchmesh_build_info{version=",
        "patchmesh_peers{kind=\"admitted\"}",
        "patchmesh_objects_received_total{verdict=\"accepted\"}",
        "patchmesh_audit_checkpoint_age_seconds",
        "patchmesh_integration_events{outcome=\"dead\"}",
        "libp2p_",
    ] {
        assert!(text.contains(family), "no {family} in:\n{text}");
    }
    let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
    assert!(series.len() < 2_000, "{} series", series.len());
    for node in &m.nodes {
        assert!(!text.contains(&node.key[..16]), "a node id is a label value:\n{text}");
    }
    eprintln!("metrics: {} series, {} bytes", series.len(), text.len());
}
