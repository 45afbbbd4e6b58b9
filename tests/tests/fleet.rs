//! Running patchmesh on real fleets: an MSP's tenants on one LAN, managed from one workstation.

use patchmesh_node::control::{
    AllContextsOutput, ConfigViewOutput, DoctorLevel, DoctorOutput, EnrollOutput, SettingOrigin,
    StatusView, SwitcherOutput, VoucherCreateOutput, VoucherView,
};
use patchmesh_tests::{serial, wait_for, Mesh};
use serde::de::DeserializeOwned;
use std::process::Command;
use std::time::Duration;

/// Runs the CLI with the test's contexts file.
fn cli_env(xdg: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(patchmesh_tests::binary());
    c.args(args).env("XDG_CONFIG_HOME", xdg).env_remove("PATCHMESH_CONFIG");
    c.env_remove("PATCHMESH_CONTEXT").env_remove("PATCHMESH_ADMIN_KEY");
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(std::process::Stdio::null()).output().expect("running patchmesh")
}

fn ok<T: DeserializeOwned>(out: &std::process::Output) -> T {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("not the JSON expected ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

/// Two meshes (own genesis, own keys) on one loopback LAN with mDNS on, and a node of one
/// pointed straight at the other: no connection, object or payload byte crosses, the stray
/// node is refused in the transport handshake, and one workstation reads both (and a dead
/// third tenant) with `--all-contexts`.
#[test]
fn tenants_on_one_lan_stay_apart_and_one_workstation_reads_them_all() {
    let _serial = serial();
    let mut a = Mesh::new("tenant-a", 2, 1);
    let mut b = Mesh::new("tenant-b", 3, 1);
    a.mdns = true;
    b.mdns = true;
    // Tenant a's first node serves a dashboard, for the workstation's tenant switcher.
    a.node_tables.insert(0, "[dashboard]\nlisten = \"127.0.0.1:0\"\n".into());
    a.start_all();
    b.start(0);
    b.start(1);
    // Node 2 of tenant b is pointed at tenant a's first node only.
    b.bootstrap = a.bootstrap.clone();
    b.start(2);

    let payload = a.root.0.join("a-only.bin");
    std::fs::write(&payload, vec![7u8; 300_000]).unwrap();
    let a_content = a.publish_file(0, "a-only", &payload);
    assert!(b.publish(0, "b-only").status.success());
    // Tenant a's payload reaches its other node; the stray b node has tried a by then.
    a.await_payload(&a_content, Duration::from_secs(60)).expect("a's payload spreads in a");
    let refused = wait_for(Duration::from_secs(30), || {
        let n = a.status(0).handshakes_refused;
        (n > 0).then_some(n)
    });
    assert!(refused.is_some(), "tenant a's node saw no refused handshake from b's node");

    let a_nodes: Vec<&str> = a.nodes.iter().map(|n| n.key.as_str()).collect();
    let b_nodes: Vec<&str> = b.nodes.iter().map(|n| n.key.as_str()).collect();
    for (mesh, own, name, other_patch) in
        [(&a, &a_nodes, "a", "b-only"), (&b, &b_nodes, "b", "a-only")]
    {
        for i in 0..mesh.nodes.len() {
            for p in mesh.peers(i) {
                let node = p.node.clone().unwrap_or_default();
                assert!(
                    own.contains(&node.as_str()),
                    "tenant {name} node {i} is connected to {node}"
                );
            }
            let names = mesh.catalog_names(i);
            assert!(
                !names.iter().any(|n| n == other_patch),
                "tenant {name} node {i} holds {names:?}"
            );
            let s = mesh.status(i);
            assert_eq!(s.mesh, format!("tenant-{name}"));
            // Stale versions are honest gossip races inside a mesh; anything else was an object
            // this node refused, which could only have come from the other tenant.
            let refused: u64 = s
                .rejected
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "replay" | "gap"))
                .map(|(_, n)| n)
                .sum();
            assert_eq!(refused, 0, "tenant {name} node {i} refused objects: {:?}", s.rejected);
        }
    }
    for i in 0..b.nodes.len() {
        assert!(!b.contents(i).contains_key(&a_content), "tenant b node {i} holds a's payload");
    }
    assert!(b.peers(2).is_empty(), "the stray node connected to someone");

    // One workstation, three contexts: a, b and a tenant whose node is down.
    let xdg = a.root.0.join("xdg");
    let dead = a.root.0.join("dead.toml");
    std::fs::write(
        &dead,
        "data_dir = \"nowhere\"\nkey = \"k\"\ngenesis = \"g\"\nadmission = \"a\"\n",
    )
    .unwrap();
    for (name, cfg) in [
        ("acme", a.nodes[0].config()),
        ("globex", b.nodes[0].config()),
        ("initech", dead.display().to_string()),
    ] {
        let out = cli_env(&xdg, &["context", "add", name, "--config", &cfg], &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let all = cli_env(&xdg, &["--all-contexts", "status", "--json"], &[]);
    assert_eq!(all.status.code(), Some(5), "{}", String::from_utf8_lossy(&all.stderr));
    let v: AllContextsOutput<StatusView> = serde_json::from_slice(&all.stdout).unwrap();
    let tenants = &v.tenants;
    assert_eq!(tenants.len(), 3);
    let by = |n: &str| tenants.iter().find(|t| t.context == n).unwrap().clone();
    assert_eq!(by("acme").result.unwrap().mesh, "tenant-a");
    assert_eq!(by("globex").result.unwrap().mesh, "tenant-b");
    assert!(!by("initech").ok);
    assert_eq!(by("initech").exit_code, Some(3));
    let why = by("initech").error.unwrap();
    assert!(why.contains("nowhere") || why.contains("dead.toml"), "{v:?}");

    // Writing commands are refused across contexts.
    let refused = cli_env(&xdg, &["--all-contexts", "rollout", "abort", "x"], &[]);
    assert_eq!(refused.status.code(), Some(2));

    // Precedence: flag > environment > context > default, and each origin is reported.
    let current: StatusView = ok(&cli_env(&xdg, &["status", "--json"], &[]));
    assert_eq!(current.mesh, "tenant-a", "the first context added is the current one");
    let by_flag: StatusView = ok(&cli_env(&xdg, &["--context", "globex", "status", "--json"], &[]));
    assert_eq!(by_flag.mesh, "tenant-b");
    let env = [("PATCHMESH_CONTEXT", "globex")];
    assert_eq!(ok::<StatusView>(&cli_env(&xdg, &["status", "--json"], &env)).mesh, "tenant-b");
    let a0 = a.nodes[0].config();
    let flag_wins: StatusView = ok(&cli_env(&xdg, &["status", "--json", "--config", &a0], &env));
    assert_eq!(flag_wins.mesh, "tenant-a");
    let view: ConfigViewOutput =
        ok(&cli_env(&xdg, &["config", "view", "--show-origin", "--json"], &env));
    assert_eq!(view.context.value.as_deref(), Some("globex"));
    assert_eq!(view.context.origin, SettingOrigin::Env("PATCHMESH_CONTEXT".into()));
    assert_eq!(view.config.value, Some(b.nodes[0].config()));
    assert_eq!(view.config.origin, SettingOrigin::Context("globex".into()));
    let unknown = cli_env(&xdg, &["--context", "nope", "status"], &[]);
    assert_eq!(unknown.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no context \"nope\""));

    // The tenant switcher: one page listing every tenant, each button a fresh one-time login
    // into that tenant's own dashboard.
    let mut switcher = Command::new(patchmesh_tests::binary())
        .args(["--all-contexts", "dashboard", "--json"])
        .env("XDG_CONFIG_HOME", &xdg)
        .env_remove("PATCHMESH_CONTEXT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(switcher.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let started: SwitcherOutput = serde_json::from_str(&line).expect("switcher prints its URL");
    let url = started.url;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
    let mut r = agent.get(&url).call().unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers().get("content-security-policy").unwrap().to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = r.body_mut().read_to_string().unwrap();
    for want in [
        "acme",
        "globex",
        "initech",
        "tenant-a",
        "tenant-b",
        "UNREACHABLE",
        "3 tenants; 1 unreachable",
    ] {
        assert!(html.contains(want), "the switcher page lacks {want:?}: {html}");
    }
    // Without the secret path, nothing.
    let root = url.trim_end_matches('/').rsplit_once('/').unwrap().0.to_string();
    assert_eq!(agent.get(&format!("{root}/")).call().unwrap().status(), 404);
    // acme: a redirect to a one-time login on tenant a's dashboard, which logs the browser in.
    let r = agent.post(&format!("{url}open/acme")).send_empty().unwrap();
    assert_eq!(r.status(), 303);
    let login = r.headers().get("location").unwrap().to_str().unwrap().to_string();
    assert!(login.contains("/login"), "{login}");
    let r = agent.get(&login).call().unwrap();
    assert_eq!(r.status(), 303, "the one-time link did not log in");
    assert!(r.headers().get("set-cookie").is_some());
    // globex has no dashboard, initech no node: each says why.
    for (tenant, why) in [("globex", "dashboard"), ("initech", "nowhere")] {
        let mut r = agent.post(&format!("{url}open/{tenant}")).send_empty().unwrap();
        assert_eq!(r.status(), 502, "{tenant}");
        let body = r.body_mut().read_to_string().unwrap();
        assert!(body.contains(why), "{tenant}: {body}");
    }
    assert_eq!(agent.post(&format!("{url}open/unknown")).send_empty().unwrap().status(), 404);
    let _ = switcher.kill();
    let _ = switcher.wait();
}

/// The Debian package (built by `scripts/package-deb.sh` with cargo-deb from the debug binary)
/// unpacks into a throwaway dpkg root with every file where Debian expects it, the default
/// configuration as a conffile, the maintainer scripts, and a unit `systemd-analyze verify`
/// accepts without a warning.
#[test]
fn the_debian_package_unpacks_into_a_throwaway_root_and_its_unit_verifies() {
    patchmesh_tests::ensure_tools(&["dpkg-deb", "systemd-analyze", "cargo-deb"]);
    let tmp = patchmesh_tests::TempDir::new("deb");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tmp.0.join("out");
    let built = Command::new("bash")
        .arg(repo.join("scripts/package-deb.sh"))
        .args(["--profile", "dev", "--out"])
        .arg(&out)
        .output()
        .expect("running package-deb.sh");
    let log = String::from_utf8_lossy(&built.stderr);
    assert!(built.status.success(), "package-deb.sh failed:\n{log}");
    let deb = String::from_utf8_lossy(&built.stdout).lines().last().unwrap_or("").to_string();
    assert!(deb.ends_with("_amd64.deb") || deb.ends_with(".deb"), "no .deb named: {deb}");

    // A throwaway dpkg database; unpack only (configuring would run the systemd steps on this
    // machine).
    let root = tmp.0.join("root");
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let dpkg = |args: &[&str]| {
        let mut c = Command::new("dpkg");
        c.arg(format!("--root={}", root.display())).arg("--log=/dev/null").args(args);
        let o = c.output().expect("running dpkg");
        assert!(o.status.success(), "dpkg {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    dpkg(&["--unpack", &deb]);
    let listed = dpkg(&["-L", "patchmesh"]);
    for f in [
        "/usr/bin/patchmesh",
        "/usr/lib/systemd/system/patchmesh.service",
        "/etc/patchmesh/node.toml",
        "/usr/lib/sysctl.d/60-patchmesh.conf",
        "/usr/share/man/man1/patchmesh.1.gz",
        "/usr/share/man/man1/patchmesh-node-doctor.1.gz",
        "/usr/share/bash-completion/completions/patchmesh",
        "/usr/share/zsh/vendor-completions/_patchmesh",
        "/usr/share/fish/vendor_completions.d/patchmesh.fish",
        "/usr/share/doc/patchmesh/copyright",
    ] {
        assert!(listed.lines().any(|l| l == f), "{f} is not in the package:\n{listed}");
        // Conffiles wait as NAME.dpkg-new until the package is configured.
        let new = root.join(format!("{}.dpkg-new", &f[1..]));
        assert!(root.join(&f[1..]).exists() || new.exists(), "{f} was not unpacked");
    }
    let status = dpkg(&["-s", "patchmesh"]);
    assert!(status.contains("Conffiles:\n /etc/patchmesh/node.toml"), "{status}");
    let info = root.join("var/lib/dpkg/info");
    for script in ["postinst", "prerm", "postrm"] {
        let text = std::fs::read_to_string(info.join(format!("patchmesh.{script}"))).unwrap();
        assert!(text.contains("patchmesh.service"), "{script} does not handle the unit");
    }
    let postinst = std::fs::read_to_string(info.join("patchmesh.postinst")).unwrap();
    assert!(postinst.contains("node keygen"), "the postinst makes no node key");

    // The unpacked binary runs and is the one whose completions were packed.
    let bin = root.join("usr/bin/patchmesh");
    let version = Command::new(&bin).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("patchmesh "));
    let completion = Command::new(&bin).args(["completion", "bash"]).output().unwrap();
    let packed =
        std::fs::read(root.join("usr/share/bash-completion/completions/patchmesh")).unwrap();
    assert_eq!(completion.stdout, packed);
    let man = std::fs::read(root.join("usr/share/man/man1/patchmesh.1.gz")).unwrap();
    assert_eq!(&man[..2], &[0x1f, 0x8b], "man pages are gzipped");
    let config = std::fs::read_to_string(root.join("etc/patchmesh/node.toml.dpkg-new")).unwrap();
    assert!(config.contains("data_dir = \"/var/lib/patchmesh\""), "{config}");

    // systemd-analyze verify, against the unpacked root with the targets the unit names.
    let units = root.join("usr/lib/systemd/system");
    for t in [
        "sysinit.target",
        "basic.target",
        "multi-user.target",
        "network-online.target",
        "network.target",
        "shutdown.target",
        "paths.target",
        "sockets.target",
        "timers.target",
        "slices.target",
        "local-fs.target",
        "swap.target",
    ] {
        let host = std::path::Path::new("/usr/lib/systemd/system").join(t);
        if host.exists() {
            std::fs::copy(&host, units.join(t)).unwrap();
        }
    }
    let unit = std::fs::read_to_string(units.join("patchmesh.service")).unwrap();
    for hardening in [
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "StateDirectory=patchmesh",
    ] {
        assert!(unit.contains(hardening), "the unit lacks {hardening}");
    }
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.display()))
        .arg("patchmesh.service")
        .output()
        .expect("running systemd-analyze");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify:\n{said}");
}

/// Enrolment by voucher on real nodes: three machines enrol with a voucher for two; the first
/// two are admitted everywhere and the third is refused everywhere; `voucher list` says so;
/// revoking the voucher disconnects its machines.
#[test]
fn a_voucher_admits_up_to_its_count_and_a_revoked_one_admits_no_one() {
    let _serial = serial();
    let mut m = Mesh::new("voucher", 2, 1);
    m.start_all();
    let admin = m.admin_key();
    let created: VoucherCreateOutput = ok(&m.cli_at(
        0,
        &[
            "voucher",
            "create",
            "--site",
            "site0",
            "--label",
            "ring=main",
            "--max-nodes",
            "2",
            "--expires",
            "1h",
            "--admin-key",
            &admin,
            "--json",
        ],
    ));
    let token = created.token.clone();
    assert!(token.starts_with("pmv1."), "{created:?}");
    let mut enrolled = Vec::new();
    for j in 0..3 {
        let dir = m.root.0.join(format!("enrolled{j}"));
        let config = dir.join("enrolled.toml").display().to_string();
        let data = dir.join("data").display().to_string();
        let out = patchmesh_tests::cli(&[
            "node",
            "enroll",
            "--voucher",
            &token,
            "--config-out",
            &config,
            "--data-dir",
            &data,
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--no-mdns",
            "--json",
        ]);
        let v: EnrollOutput = ok(&out);
        let node = v.node;
        // The configuration it wrote loads and names what it made.
        let doctor = patchmesh_tests::cli(&["node", "doctor", "--config", &config, "--json"]);
        let checks: DoctorOutput = serde_json::from_slice(&doctor.stdout).unwrap();
        let cert = checks.checks.iter().find(|c| c.check == "certificate");
        assert_eq!(cert.unwrap().level, DoctorLevel::Ok, "{checks:?}");
        m.nodes.push(patchmesh_tests::TestNode {
            dir,
            key: node.clone(),
            site: "site0".into(),
            child: None,
        });
        enrolled.push(node);
        std::thread::sleep(Duration::from_millis(5));
    }
    for i in 2..5 {
        m.start(i);
    }
    let admitted_by = |i: usize| -> Vec<String> {
        m.peers(i).into_iter().filter(|p| p.admitted).filter_map(|p| p.node).collect()
    };
    let first_two = wait_for(Duration::from_secs(60), || {
        (0..2).all(|i| enrolled[..2].iter().all(|e| admitted_by(i).contains(e))).then_some(())
    });
    assert!(
        first_two.is_some(),
        "the first two enrolled machines were not admitted: {:?}",
        admitted_by(0)
    );
    // The doctor of a running, admitted machine reads its node's status, peers and clock.
    let config = m.root.0.join("enrolled0").join("enrolled.toml").display().to_string();
    let doctor = patchmesh_tests::cli(&["node", "doctor", "--config", &config]);
    let text = String::from_utf8_lossy(&doctor.stdout);
    let running = text.lines().find(|l| l.contains("running")).unwrap_or_default();
    assert!(running.contains("pid ") && running.contains("admitted), up "), "{text}");
    assert!(text.lines().any(|l| l.contains("clock")), "{text}");
    let over = wait_for(Duration::from_secs(30), || {
        (m.status(0).rejected.get("voucher_over_limit").copied().unwrap_or(0) > 0).then_some(())
    });
    assert!(over.is_some(), "node 0 never refused the third enrolment");
    for i in 0..4 {
        assert!(!admitted_by(i).contains(&enrolled[2]), "node {i} admitted the third machine");
    }
    let list: Vec<VoucherView> = ok(&m.cli_at(0, &["voucher", "list", "--json"]));
    let seen: Vec<&str> = list[0].enrolments.iter().map(|(node, _)| node.as_str()).collect();
    assert_eq!(seen, enrolled.iter().map(String::as_str).collect::<Vec<_>>(), "{list:?}");

    // One machine revoked on its own (a stolen laptop): gone everywhere, the other stays.
    let mut revoke = vec![
        "node",
        "revoke",
        &enrolled[1],
        "--site",
        "site0",
        "--reason",
        "stolen",
        "--admin-key",
        &admin,
    ];
    let out = m.cli_at(0, &revoke);
    assert!(!out.status.success(), "revoking without --yes and without a terminal went ahead");
    revoke.push("--yes");
    let out = m.cli_at(0, &revoke);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let one_gone = wait_for(Duration::from_secs(60), || {
        (0..2).all(|i| !admitted_by(i).contains(&enrolled[1])).then_some(())
    });
    assert!(one_gone.is_some(), "the revoked machine stayed admitted: {:?}", admitted_by(0));
    assert!((0..2).all(|i| admitted_by(i).contains(&enrolled[0])), "{:?}", admitted_by(0));
    assert!(m.status(0).rejected.get("node_revoked").copied().unwrap_or(0) > 0);

    // Revoked: its machines are disconnected and refused.
    let id = &created.id;
    let out = m.cli_at(0, &["voucher", "revoke", &id[..8], "--admin-key", &admin, "--yes"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let gone = wait_for(Duration::from_secs(60), || {
        (0..2).all(|i| enrolled.iter().all(|e| !admitted_by(i).contains(e))).then_some(())
    });
    assert!(gone.is_some(), "the revoked voucher's machines stayed admitted: {:?}", admitted_by(0));
    assert!(m.status(0).rejected.get("voucher_revoked").copied().unwrap_or(0) > 0);
}
