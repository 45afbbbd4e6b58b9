//! Multi-process tests of the real `patchmesh` binary on loopback.
//!
//! [`Mesh`] makes a mesh in a temporary directory the way an admin would — `patchmesh init`,
//! `node keygen`, `admit` — writes one configuration per node (QUIC on 127.0.0.1 with an OS-chosen
//! port, mDNS off so nothing leaves loopback), and starts `patchmesh node run` processes. Node 0
//! starts first; the others bootstrap from its address and find the rest through Kademlia.
//!
//! The binary is the one cargo built beside the test (`target/<profile>/patchmesh`), or
//! `PATCHMESH_BIN`. Tests talk to nodes only through the CLI, as an admin would.
//!
//! Mesh tests take a process-wide lock so they run one at a time: each starts several daemons,
//! and on a two-core machine running them side by side would only make every one slower.

use patchmesh_node::control::{
    CatalogEntryView, CatalogView, ContentItemView, KeygenOutput, PeerView, StatusView,
};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the lock that keeps mesh tests from running side by side.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `patchmesh` binary under test.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("PATCHMESH_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test> or target/<profile>/<bin> → target/<profile>/patchmesh
    let exe = std::env::current_exe().expect("test executable path");
    let here = exe.parent().expect("target directory");
    let bin = [here, here.parent().unwrap_or(here)]
        .iter()
        .map(|d| d.join("patchmesh"))
        .find(|p| p.exists())
        .unwrap_or_else(|| here.join("patchmesh"));
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p patchmesh` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// Makes sure the system tools the tests use are installed (`scripts/test-deps.sh` installs
/// them when missing), so a fresh machine needs nothing but `cargo test --workspace`.
pub fn ensure_tools(tools: &[&str]) {
    let missing = |t: &&str| {
        !Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if tools.iter().any(missing) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-deps.sh");
        let ok = Command::new("bash").arg(&script).status().is_ok_and(|s| s.success());
        assert!(
            ok && !tools.iter().any(missing),
            "{} could not install {tools:?}",
            script.display()
        );
    }
}

/// Runs the CLI and returns its output.
pub fn cli(args: &[&str]) -> Output {
    Command::new(binary()).args(args).stdin(Stdio::null()).output().expect("running patchmesh")
}

/// Runs the CLI, requires success and parses its JSON output as `T`.
pub fn cli_json<T: DeserializeOwned>(args: &[&str]) -> T {
    let out = cli(args);
    assert!(
        out.status.success(),
        "patchmesh {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("patchmesh {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A temporary directory removed on drop (kept if `PATCHMESH_KEEP` is set, for debugging).
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory named after `tag`.
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p =
            std::env::temp_dir().join(format!("patchmesh-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("creating a temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("PATCHMESH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// One node of a test mesh.
#[derive(Debug)]
pub struct TestNode {
    /// Its directory (key, certificate, config, data, log).
    pub dir: PathBuf,
    /// Its public key.
    pub key: String,
    /// Its site.
    pub site: String,
    /// The running process.
    pub child: Option<Child>,
}

impl TestNode {
    /// The config path, as the CLI's `--config` wants it.
    pub fn config(&self) -> String {
        self.dir.join("node.toml").display().to_string()
    }
}

/// A mesh of real node processes.
#[derive(Debug)]
pub struct Mesh {
    /// Everything lives here.
    pub root: TempDir,
    /// The nodes.
    pub nodes: Vec<TestNode>,
    /// Node 0's address, once it runs.
    pub bootstrap: Option<String>,
    /// Configuration lines for every node that replace the test defaults (fast anti-entropy).
    pub extra_config: String,
    /// Configuration lines added for one node (index → lines).
    pub node_config: std::collections::BTreeMap<usize, String>,
    /// TOML tables appended to node `i`'s configuration (after every top-level key).
    pub node_tables: std::collections::BTreeMap<usize, String>,
    /// Extra environment for node `i`'s process (e.g. fault injection).
    pub node_env: std::collections::BTreeMap<usize, Vec<(String, String)>>,
    /// Run mDNS (off by default: tests find each other through node 0).
    pub mdns: bool,
    /// Run the nodes inside this network namespace (see [`Netns`]).
    pub netns: Option<String>,
}

/// A network namespace with its loopback up, deleted on drop: a test's private 127.0.0.1,
/// whose traffic it may filter with nftables without touching the host's.
#[derive(Debug)]
pub struct Netns(pub String);

impl Netns {
    /// Creates `patchmesh-<tag>-<pid>`.
    pub fn new(tag: &str) -> Netns {
        let name = format!("patchmesh-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        let ns = Netns(name);
        ns.ip(&["netns", "add", &ns.0]);
        ns.ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("ip (iproute2) runs");
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Runs `nft -f -` inside the namespace with `rules` on stdin.
    pub fn nft(&self, rules: &str) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft runs");
        child.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft: {}
{rules}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

impl Mesh {
    /// Creates keys, certificates and configs for `n` nodes spread over `sites` sites.
    pub fn new(tag: &str, n: usize, sites: usize) -> Mesh {
        let root = TempDir::new(tag);
        let mesh_dir = root.0.join("mesh");
        let m = mesh_dir.display().to_string();
        // Throwaway keys, the root key beside the admin key (tests are not offline media).
        let out = cli(&["init", "--mesh", tag, "--dir", &m, "--root-dir", &m, "--unencrypted"]);
        assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
        let mut nodes = Vec::new();
        for i in 0..n {
            let dir = root.0.join(format!("node{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let keygen: KeygenOutput = cli_json(&[
                "node",
                "keygen",
                "--out",
                &dir.join("node.key").display().to_string(),
                "--json",
            ]);
            let key = keygen.public_key;
            let site = format!("site{}", i % sites.max(1));
            let ring = if i == 1 { "canary" } else { "main" };
            let _: patchmesh_node::control::AdmitOutput = cli_json(&[
                "admit",
                "--node-key",
                &key,
                "--site",
                &site,
                "--label",
                &format!("ring={ring}"),
                "--admin-key",
                &mesh_dir.join("admin.key").display().to_string(),
                "--genesis",
                &mesh_dir.join("genesis.pm").display().to_string(),
                "--out",
                &dir.join("admission.pm").display().to_string(),
                "--json",
            ]);
            nodes.push(TestNode { dir, key, site, child: None });
        }
        Mesh {
            root,
            nodes,
            bootstrap: None,
            extra_config: String::new(),
            node_config: Default::default(),
            node_tables: Default::default(),
            node_env: Default::default(),
            mdns: false,
            netns: None,
        }
    }

    /// The mesh directory (root.key, admin.key, genesis.pm).
    pub fn mesh_dir(&self) -> PathBuf {
        self.root.0.join("mesh")
    }

    /// The admin key file.
    pub fn admin_key(&self) -> String {
        self.mesh_dir().join("admin.key").display().to_string()
    }

    fn write_config(&self, i: usize) {
        let bootstrap = match (&self.bootstrap, i) {
            (Some(b), i) if i != 0 => format!("bootstrap = [\"{b}\"]\n"),
            _ => String::new(),
        };
        let genesis = self.mesh_dir().join("genesis.pm");
        let cfg = format!(
            "data_dir = \"data\"\nkey = \"node.key\"\ngenesis = \"{}\"\nadmission = \"admission.pm\"\n\
             {bootstrap}mdns = {}\n{}{}{}",
            genesis.display(),
            self.mdns,
            self.node_config.get(&i).map_or("", String::as_str),
            if self.extra_config.is_empty() {
                "listen = [\"/ip4/127.0.0.1/udp/0/quic-v1\"]\nanti_entropy_interval_ms = 1000\n\
                 summary_interval_ms = 2000\npeers_target = 6\n"
            } else {
                &self.extra_config
            },
            self.node_tables.get(&i).map_or("", String::as_str),
        );
        std::fs::write(self.nodes[i].dir.join("node.toml"), cfg).unwrap();
    }

    /// Starts node `i` and waits until its control socket answers.
    pub fn start(&mut self, i: usize) {
        self.write_config(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.nodes[i].dir.join("node.log"))
            .unwrap();
        let mut cmd = match &self.netns {
            // `ip netns exec` enters the namespace and execs the node: same process id.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        let child = cmd
            .args(["node", "run", "--config", &self.nodes[i].config()])
            .env(
                "PATCHMESH_LOG",
                std::env::var("PATCHMESH_TEST_LOG").unwrap_or_else(|_| "info,libp2p=warn".into()),
            )
            .envs(self.node_env.get(&i).cloned().unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning a node");
        self.nodes[i].child = Some(child);
        let status = wait_for(Duration::from_secs(30), || self.try_status(i));
        let status = status.unwrap_or_else(|| panic!("node {i} did not start:\n{}", self.log(i)));
        if i == 0 {
            self.bootstrap = status.listen.first().cloned();
        }
    }

    /// Starts every node (node 0 first, the others bootstrapping from it).
    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i);
        }
    }

    /// Node `i`'s log.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].dir.join("node.log")).unwrap_or_default()
    }

    /// `patchmesh status --json` of node `i`, if it answers.
    pub fn try_status(&self, i: usize) -> Option<StatusView> {
        let out = cli(&["status", "--json", "--config", &self.nodes[i].config()]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `patchmesh status --json` of node `i`.
    pub fn status(&self, i: usize) -> StatusView {
        self.try_status(i).unwrap_or_else(|| panic!("node {i} does not answer:\n{}", self.log(i)))
    }

    /// Runs a CLI command against node `i` (appends `--config`).
    pub fn cli_at(&self, i: usize, args: &[&str]) -> Output {
        let config = self.nodes[i].config();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", config.as_str()]);
        cli(&all)
    }

    /// Publishes a metadata-only patch named `name` as the mesh admin at node `i`.
    pub fn publish(&self, i: usize, name: &str) -> Output {
        self.publish_as(i, name, &self.admin_key())
    }

    /// Publishes a metadata-only patch named `name` at node `i`, signed with `admin_key`.
    pub fn publish_as(&self, i: usize, name: &str, admin_key: &str) -> Output {
        let id = blake3::hash(name.as_bytes()).to_hex().to_string();
        let args = ["patch", "add", "--name", name, "--content-id", &id, "--size-bytes", "1"];
        let mut all = args.to_vec();
        all.extend(["--admin-key", admin_key, "--json"]);
        self.cli_at(i, &all)
    }

    /// Imports `file` at node `i` and publishes it as patch `name`; returns the content id.
    pub fn publish_file(&self, i: usize, name: &str, file: &Path) -> String {
        let out = self.cli_at(
            i,
            &[
                "patch",
                "add",
                &file.display().to_string(),
                "--name",
                name,
                "--admin-key",
                &self.admin_key(),
                "--json",
            ],
        );
        assert!(out.status.success(), "patch add: {}", String::from_utf8_lossy(&out.stderr));
        let v: patchmesh_node::control::PatchAddOutput =
            serde_json::from_slice(&out.stdout).unwrap();
        v.content_id
    }

    /// `patchmesh content list --json` of node `i`: content id → its entry.
    pub fn contents(&self, i: usize) -> std::collections::BTreeMap<String, ContentItemView> {
        let out = self.cli_at(i, &["content", "list", "--json"]);
        if !out.status.success() {
            return Default::default();
        }
        let v: patchmesh_node::control::ContentListView =
            serde_json::from_slice(&out.stdout).expect("content list --json parses");
        v.contents.into_iter().map(|c| (c.content_id.clone(), c)).collect()
    }

    /// `patchmesh peers --json` of node `i`.
    pub fn peers(&self, i: usize) -> Vec<PeerView> {
        cli_json(&["peers", "--json", "--config", &self.nodes[i].config()])
    }

    /// Waits until every running node holds `content` complete.
    pub fn await_payload(&self, content: &str, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        let mut missing = Vec::new();
        wait_for(timeout, || {
            missing = (0..self.nodes.len())
                .filter(|i| self.nodes[*i].child.is_some())
                .filter(|i| self.contents(*i).get(content).is_none_or(|c| !c.complete))
                .collect();
            missing.is_empty().then_some(())
        })
        .map(|()| start.elapsed())
        .ok_or_else(|| {
            let detail: Vec<String> = missing
                .iter()
                .map(|i| {
                    let out = self.cli_at(*i, &["fetch", content, "--json", "--timeout-s", "1"]);
                    format!("node {i}: {}", String::from_utf8_lossy(&out.stdout))
                })
                .collect();
            format!("nodes {missing:?} never completed {content}:\n{}", detail.join("\n"))
        })
    }

    /// Names of the patches in node `i`'s catalog (`patchmesh catalog show --json`).
    pub fn catalog_names(&self, i: usize) -> Vec<String> {
        let catalog: CatalogView =
            cli_json(&["catalog", "show", "--json", "--config", &self.nodes[i].config()]);
        catalog
            .entries
            .into_iter()
            .filter_map(|e| match e.entry {
                CatalogEntryView::Patch { name, .. } => Some(name),
                _ => None,
            })
            .collect()
    }

    /// SIGKILL (kill -9) node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM node `i` and wait for it to exit.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let exited = wait_for(Duration::from_secs(20), || c.try_wait().ok().flatten());
            if exited.is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// A node key and admission certificate for an extra (test-driven) peer in `site`:
    /// (key file, certificate file).
    pub fn extra_identity(&self, name: &str, site: &str) -> (String, String) {
        let dir = self.root.0.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let key_path = dir.join("node.key").display().to_string();
        let keygen: patchmesh_node::control::KeygenOutput =
            cli_json(&["node", "keygen", "--out", &key_path, "--json"]);
        let cert = dir.join("admission.pm").display().to_string();
        let genesis = self.mesh_dir().join("genesis.pm").display().to_string();
        let admin = self.admin_key();
        let args = ["admit", "--node-key", &keygen.public_key, "--site", site, "--admin-key"];
        let mut all = args.to_vec();
        all.extend([admin.as_str(), "--genesis", &genesis, "--out", &cert, "--json"]);
        let _: patchmesh_node::control::AdmitOutput = cli_json(&all);
        (key_path, cert)
    }

    /// Node `i`'s dialable address with its peer id (`ADDR/p2p/PEER_ID`).
    pub fn dial_addr(&self, i: usize) -> String {
        let s = self.status(i);
        format!("{}/p2p/{}", s.listen[0], s.peer_id)
    }

    /// Waits until every running node holds the same catalog with `changes` changes, and nodes
    /// of one site agree on the state hash. Returns the time it took, or the statuses seen.
    pub fn converge(
        &self,
        changes: usize,
        timeout: Duration,
    ) -> Result<Duration, Vec<Option<StatusView>>> {
        let start = Instant::now();
        let running: Vec<usize> =
            (0..self.nodes.len()).filter(|i| self.nodes[*i].child.is_some()).collect();
        let mut last: Vec<Option<StatusView>> = Vec::new();
        let done = wait_for(timeout, || {
            last = running.iter().map(|i| self.try_status(*i)).collect();
            let all: Vec<&StatusView> = last.iter().flatten().collect();
            let first = all.first()?;
            let catalog_same = all.len() == last.len()
                && all.iter().all(|s| {
                    s.catalog_changes == changes && s.catalog_state == first.catalog_state
                });
            let sites_agree = all.iter().all(|a| {
                all.iter().filter(|b| b.site == a.site).all(|b| b.state_hash == a.state_hash)
            });
            (catalog_same && sites_agree).then_some(())
        });
        done.map(|_| start.elapsed()).ok_or(last)
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// A well-formed catalog change for `genesis`'s mesh adding the patch `name` (installing with
/// `install`), authored in a throwaway mesh where `key` is an admin and re-wrapped for the real
/// mesh: the body decodes, only the signature (by a key that is not an admin) tells it apart.
/// For the test peers that try to get a change in (`rogue`, `attacker`).
pub fn foreign_change_body(
    genesis: &patchmesh_protocol::trust::Genesis,
    key: &patchmesh_protocol::crypto::SecretKey,
    name: &str,
    install: &str,
) -> patchmesh_protocol::catalog::ChangeBody {
    use patchmesh_protocol::catalog::{
        Catalog, CatalogEntry, ChangeBody, ExecutorSpec, PatchEntry,
    };
    use patchmesh_protocol::ids::{ContentId, Millis};
    use patchmesh_protocol::{crypto::Ed25519, mesh, trust::Trust};
    let fake =
        mesh::genesis("fake", &[key], 1, &[key.public()], mesh::Approval::always(1), Millis(0));
    let trust = Trust::new(fake, &Ed25519).expect("fake genesis");
    let mut catalog = Catalog::new(trust.mesh());
    let entry = CatalogEntry::Patch(PatchEntry {
        content_id: ContentId([7; 32]),
        size_bytes: 1,
        name: name.into(),
        version: "1".into(),
        executor: ExecutorSpec {
            kind: "command".into(),
            install: Some(install.into()),
            verify: None,
            rollback: None,
            timeout_ms: 1000,
        },
    });
    let env = catalog
        .author(key, [9; 8], Millis(0), &trust, &[(entry.key(), Some(entry))])
        .expect("authoring in the fake mesh");
    let body: ChangeBody = env.open("change").expect("own change");
    ChangeBody { mesh: genesis.mesh_id(), change: body.change }
}

/// True when the tests run as root (the namespace scripts need it).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a namespace benchmark script (`scripts/bench-wan.sh`, `scripts/bench-nat.sh`) with
/// `env` against the binary under test; returns its last stdout line decoded, and everything
/// it printed. Fails (never skips) when not root.
pub fn run_root_script<T: DeserializeOwned>(script: &str, env: &[(&str, &str)]) -> (T, String) {
    assert!(
        is_root(),
        "this test must run as root: {script} builds network namespaces (run `cargo test` as \
         root, e.g. in the CI container)"
    );
    let bin = binary();
    let bin = std::fs::canonicalize(&bin).unwrap_or(bin);
    let out = Command::new("bash")
        .arg(script)
        .env("PATCHMESH_BIN", bin)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(out.status.success(), "{script} failed ({}):\n{report}", out.status);
    let last = stdout.lines().last().unwrap_or_default();
    let v: T = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!("the last line is not the JSON expected ({e}): {last}\n{report}")
    });
    (v, report)
}

/// What `scripts/bench-nat.sh` ends with.
#[derive(Debug, serde::Deserialize)]
pub struct NatReport {
    /// `cone` or `symmetric`.
    pub nat: String,
    /// The path between the two offices after the payload: `direct` or `relayed`.
    pub path: String,
    /// When the first direct connection between the offices came up (ms after start).
    pub first_direct_ms: Option<u64>,
    /// Relayed connections upgraded by hole punching, over both offices.
    pub hole_punches_ok: u64,
    /// Hole punching attempts that failed.
    pub hole_punches_failed: u64,
    /// Whether office 2 fetched office 1's payload.
    pub payload_ok: bool,
    /// How long the fetch took.
    pub payload_ms: u64,
    /// Bytes the relay node sent and received while the payload moved.
    pub relay_bytes_during_payload: u64,
    /// The payload's size.
    pub payload_bytes: u64,
    /// `relay_bytes_during_payload / payload_bytes`.
    pub relay_ratio: f64,
    /// Whether the rollout committed on both offices.
    pub rollout_ok: bool,
}

/// A swarm speaking a mesh's real protocols with `key`, for the test peers (`rogue`, `attacker`):
/// no mDNS, no relay, a few connections.
pub fn test_swarm(
    mesh: patchmesh_protocol::ids::MeshId,
    key: &patchmesh_protocol::crypto::SecretKey,
) -> anyhow::Result<libp2p::Swarm<patchmesh_node::net::Behaviour>> {
    let cfg = patchmesh_node::net::NetConfig {
        mesh,
        mdns: false,
        relay_server: false,
        connections_max: 8,
        psk: None,
        idle_timeout_ms: 60_000,
    };
    let mut registry = libp2p::metrics::Registry::default();
    Ok(patchmesh_node::net::build(patchmesh_node::net::keypair_of(key), &cfg, &mut registry)?)
}

/// What the `rogue` test peer (no valid certificate) prints when it ends.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct RogueReport {
    /// Its peer id.
    pub peer_id: String,
    /// When its connection to the target came up.
    pub connected_ms: Option<u64>,
    /// When the target dropped it.
    pub disconnected_ms: Option<u64>,
    /// Whether it was still connected at the end.
    pub connected_at_end: bool,
    /// Connections it held at the end.
    pub connections_at_end: usize,
    /// Mesh messages it received by pubsub.
    pub gossip_received: u32,
    /// Messages it published.
    pub gossip_published: u32,
    /// Whether it sent its self-signed hello.
    pub hello_sent: bool,
}

/// What the `attacker` test peer (an admitted node that misbehaves) prints when it ends.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct AttackReport {
    /// Its peer id.
    pub peer_id: String,
    /// Its node id (hex).
    pub node: String,
    /// How it misbehaved.
    pub mode: String,
    /// "What do you hold" questions it answered.
    pub have_asked: u32,
    /// Outboard requests it answered.
    pub outboards_asked: u32,
    /// Range requests it answered.
    pub ranges_asked: u32,
    /// When the first target dropped it.
    pub disconnected_ms: Option<u64>,
    /// The target's answer to an oversized range request, if it made one.
    pub big_range_reply: Option<String>,
    /// Attack messages sent (all targets, request-response and gossipsub).
    pub sent: u64,
    /// `replay`: admin sets, records, summaries and catalog changes it kept to replay.
    pub captured: [usize; 4],
    /// `streams`: data streams opened and left half-open, and opens that failed.
    pub streams_opened: u32,
    /// Stream opens that failed or timed out.
    pub streams_refused: u32,
    /// `streams`: range requests for content the target lacks, and how many were answered.
    pub missing_asked: u32,
    /// Of those, answered.
    pub missing_answered: u32,
    /// Per target.
    pub targets: Vec<TargetReport>,
}

/// One target of the `attacker`.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct TargetReport {
    /// The target's peer id.
    pub peer_id: String,
    /// When the first connection came up.
    pub connected_ms: Option<u64>,
    /// When the target first dropped it.
    pub disconnected_ms: Option<u64>,
    /// Times the target dropped it.
    pub disconnects: u32,
    /// Redials after a drop, connections that came up again, and dials that failed.
    pub redials: u32,
    /// Connections that came up again after a drop.
    pub reconnects: u32,
    /// Dials that failed.
    pub dials_failed: u32,
    /// Attack messages sent to it over request-response.
    pub sent: u64,
}

/// The JSON line `scripts/bench-wan.sh` ends with.
#[derive(Debug, serde::Deserialize)]
pub struct WanReport {
    /// Sites.
    pub sites: usize,
    /// Nodes.
    pub nodes: usize,
    /// Penalties the nodes gave (all peers are honest).
    pub penalties: u64,
    /// Payload size.
    pub payload_bytes: u64,
    /// Largest bytes into a site over its WAN link ÷ payload.
    pub wan_ratio_max: f64,
    /// Publication → every node holds it.
    pub all_complete_ms: u64,
    /// Per site.
    pub per_site: std::collections::BTreeMap<String, WanSite>,
}

/// One site of a [`WanReport`].
#[derive(Debug, serde::Deserialize)]
pub struct WanSite {
    /// Bytes into the site over its WAN link ÷ payload (kernel counters).
    pub wan_rx_ratio: f64,
    /// Bytes the site's nodes fetched from other sites ÷ payload (their own counters).
    pub node_wan_ratio: f64,
}
