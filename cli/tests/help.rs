//! Every command's help renders and says what the command is for; bad usage exits 2 with a
//! reason. (This test also makes `cargo test --workspace` build the binary that the
//! multi-process tests in `tests/` run.)

use std::process::Command;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_patchmesh")).args(args).output().unwrap()
}

#[test]
fn every_command_has_help() {
    let commands: &[&[&str]] = &[
        &[],
        &["init"],
        &["admin"],
        &["admin", "keygen"],
        &["admin", "add"],
        &["admin", "rotate"],
        &["admin", "revoke"],
        &["node"],
        &["node", "keygen"],
        &["node", "run"],
        &["admit"],
        &["status"],
        &["peers"],
        &["inventory"],
        &["catalog", "show"],
        &["patch", "add"],
        &["defer"],
        &["voucher", "reserved"],
    ];
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = run(&args);
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Usage: patchmesh"), "{args:?}: {text}");
        assert!(text.lines().next().is_some_and(|l| l.len() > 10), "{args:?} has no summary");
    }
}

#[test]
fn bad_usage_exits_2_and_unreachable_node_exits_3() {
    let out = run(&["admit", "--site", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--node-key"));
    let out = run(&["status", "--config", "/nonexistent/node.toml"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the node"));
}

#[test]
fn admit_refuses_a_malformed_key() {
    let dir = std::env::temp_dir().join(format!("pm-help-{}", std::process::id()));
    let d = dir.display().to_string();
    assert!(run(&["init", "--mesh", "m", "--dir", &d, "--unencrypted"]).status.success());
    let out = run(&[
        "admit",
        "--node-key",
        "zz",
        "--site",
        "s",
        "--admin-key",
        &format!("{d}/admin.key"),
        "--genesis",
        &format!("{d}/genesis.pm"),
        "--out",
        &format!("{d}/a.pm"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a 64-character hex"));
    std::fs::remove_dir_all(&dir).unwrap();
}
