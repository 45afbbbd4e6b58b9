//! Executors against real files, real processes and a throwaway dpkg root.

use patchmesh_node::executor::{
    DpkgRoot, ExecError, ExecKind, ExecSpec, Executor, StepReport, Workspace, DETAIL_BYTES_MAX,
    OUTPUT_BYTES_MAX,
};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn spec(kind: ExecKind, install: Option<&str>, timeout_ms: u64) -> ExecSpec {
    ExecSpec {
        kind,
        install: install.map(str::to_string),
        verify: None,
        rollback: None,
        timeout_ms,
    }
}

/// A payload file with these bytes and a workspace for it under `base`.
fn workspace(base: &Path, name: &str, payload: &[u8]) -> Workspace {
    let p = base.join(format!("{name}.payload"));
    fs::write(&p, payload).unwrap();
    Workspace {
        dir: base.join("installs").join(name),
        payload: p,
        content_id: *blake3::hash(payload).as_bytes(),
        previous_payload: None,
        dpkg: DpkgRoot::default(),
    }
}

fn file_executor(base: &Path, name: &str, target: &Path, payload: &[u8]) -> Executor {
    let s = spec(ExecKind::File, Some(target.to_str().unwrap()), 10_000);
    Executor::new(s, workspace(base, name, payload)).unwrap()
}

fn assert_ok(r: &StepReport) {
    assert!(r.ok, "step failed: {} / {}", r.detail, r.output);
    assert!(r.detail.len() <= DETAIL_BYTES_MAX);
}

/// Bytes that are not text, so a round trip that mangles them shows.
fn binary(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[tokio::test]
async fn file_install_verify_rollback_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("app.bin");
    let old = binary(1, 300_000);
    let new = binary(2, 123_457);
    fs::write(&target, &old).unwrap();
    let ex = file_executor(d.path(), "r1", &target, &new);

    assert_ok(&ex.stage().await.unwrap());
    assert_eq!(fs::read(&target).unwrap(), old, "stage must not touch the target");
    assert_ok(&ex.install().await.unwrap());
    assert_eq!(fs::read(&target).unwrap(), new);
    assert_ok(&ex.verify().await.unwrap());
    // Install is idempotent: a re-run after a crash lands on the same bytes.
    assert_ok(&ex.install().await.unwrap());
    assert_eq!(fs::read(&target).unwrap(), new);

    let r = ex.rollback().await.unwrap();
    assert_ok(&r);
    assert_eq!(fs::read(&target).unwrap(), old, "old content restored byte for byte");
    assert!(!ex.verify().await.unwrap().ok, "verify after rollback sees the old content");
    assert_ok(&ex.rollback().await.unwrap());
    assert_eq!(fs::read(&target).unwrap(), old);
    assert!(!d.path().join("app.bin.patchmesh-tmp").exists());

    ex.cleanup().unwrap();
    assert!(!ex.workspace().dir.exists());
    ex.cleanup().unwrap();
}

#[tokio::test]
async fn file_absent_target_is_removed_on_rollback() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("new.conf");
    let ex = file_executor(d.path(), "r1", &target, b"key = 1\n");
    assert_ok(&ex.stage().await.unwrap());
    assert!(!target.exists());
    assert_ok(&ex.install().await.unwrap());
    assert_eq!(fs::read(&target).unwrap(), b"key = 1\n");
    assert_ok(&ex.verify().await.unwrap());
    assert_ok(&ex.rollback().await.unwrap());
    assert!(!target.exists());
    // Again, as after a crash during the first rollback.
    let r = ex.rollback().await.unwrap();
    assert_ok(&r);
    assert!(!target.exists());
}

#[tokio::test]
async fn restage_after_install_keeps_the_backup() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("motd");
    fs::write(&target, b"old").unwrap();
    let ex = file_executor(d.path(), "r1", &target, b"new");
    assert_ok(&ex.stage().await.unwrap());
    assert_ok(&ex.install().await.unwrap());
    // The journal re-runs stage after a crash it could not place: the backup must stay "old".
    let r = ex.stage().await.unwrap();
    assert_ok(&r);
    assert!(r.detail.contains("kept"), "{}", r.detail);
    // A crash in the middle of install left a torn temporary beside the target.
    fs::write(d.path().join("motd.patchmesh-tmp"), b"ne").unwrap();
    assert_ok(&ex.install().await.unwrap());
    assert_eq!(fs::read(&target).unwrap(), b"new");
    assert!(!d.path().join("motd.patchmesh-tmp").exists());
    assert_ok(&ex.rollback().await.unwrap());
    assert_eq!(fs::read(&target).unwrap(), b"old");
}

#[tokio::test]
async fn rollback_before_install_leaves_the_target_alone() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("motd");
    fs::write(&target, b"old").unwrap();
    let ex = file_executor(d.path(), "r1", &target, b"new");
    // Never staged: nothing recorded, nothing changed.
    let r = ex.rollback().await.unwrap();
    assert_ok(&r);
    assert!(r.detail.contains("never staged"), "{}", r.detail);
    assert_eq!(fs::read(&target).unwrap(), b"old");
    // Staged but not installed: the backup equals the target.
    assert_ok(&ex.stage().await.unwrap());
    assert_ok(&ex.rollback().await.unwrap());
    assert_eq!(fs::read(&target).unwrap(), b"old");
}

#[tokio::test]
async fn verify_fails_on_a_tampered_target() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("tool");
    let ex = file_executor(d.path(), "r1", &target, b"genuine");
    assert_ok(&ex.stage().await.unwrap());
    assert_ok(&ex.install().await.unwrap());
    assert_ok(&ex.verify().await.unwrap());
    fs::write(&target, b"genuinf").unwrap();
    let r = ex.verify().await.unwrap();
    assert!(!r.ok);
    assert!(r.detail.contains("not the content id"), "{}", r.detail);
    fs::remove_file(&target).unwrap();
    let r = ex.verify().await.unwrap();
    assert!(!r.ok);
    assert!(r.detail.contains("missing"), "{}", r.detail);
}

#[tokio::test]
async fn file_verify_command_sees_the_environment_and_can_fail() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("tool");
    let ws = workspace(d.path(), "r1", b"payload");
    let id = hex::encode(ws.content_id);
    let mut s = spec(ExecKind::File, Some(target.to_str().unwrap()), 10_000);
    s.verify = Some(format!(
        "test \"$PATCHMESH_CONTENT_ID\" = {id} && cmp \"$PATCHMESH_PAYLOAD\" \"$PATCHMESH_TARGET\" \
         && test \"$(pwd)\" = \"$PATCHMESH_WORKDIR\" && test \"$PATCHMESH_STEP\" = verify \
         && test ! -e marker"
    ));
    let ex = Executor::new(s, ws).unwrap();
    assert_ok(&ex.stage().await.unwrap());
    assert_ok(&ex.install().await.unwrap());
    let r = ex.verify().await.unwrap();
    assert_ok(&r);
    assert_eq!(r.exit_code, Some(0));
    // The command runs in the workspace; a file there makes it fail.
    fs::write(ex.workspace().dir.join("marker"), b"").unwrap();
    let r = ex.verify().await.unwrap();
    assert!(!r.ok);
    assert_eq!(r.exit_code, Some(1));
    assert!(r.detail.contains("verify command: exit 1"), "{}", r.detail);
}

#[tokio::test]
async fn a_payload_that_does_not_match_its_id_is_not_staged() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("tool");
    fs::write(&target, b"old").unwrap();
    let mut ws = workspace(d.path(), "r1", b"payload");
    ws.content_id = *blake3::hash(b"something else").as_bytes();
    let ex = Executor::new(spec(ExecKind::File, Some(target.to_str().unwrap()), 0), ws).unwrap();
    let r = ex.stage().await.unwrap();
    assert!(!r.ok);
    assert!(r.detail.contains("not the content id"), "{}", r.detail);
    assert!(matches!(ex.install().await, Err(ExecError::NotStaged(_))));
    assert_eq!(fs::read(&target).unwrap(), b"old");
}

#[tokio::test]
async fn command_steps_run_their_commands() {
    let d = tempfile::tempdir().unwrap();
    let flag = d.path().join("installed");
    let ws = workspace(d.path(), "r1", b"payload");
    let mut s = spec(
        ExecKind::Command,
        Some(&format!("cp \"$PATCHMESH_PAYLOAD\" {}", flag.display())),
        10_000,
    );
    let ex = Executor::new(s.clone(), ws.clone()).unwrap();
    assert_ok(&ex.stage().await.unwrap());
    assert!(ex.workspace().dir.is_dir());
    assert_ok(&ex.install().await.unwrap());
    assert_eq!(fs::read(&flag).unwrap(), b"payload");
    let r = ex.verify().await.unwrap();
    assert_ok(&r);
    assert_eq!(r.detail, "command verify: no verify command");
    let r = ex.rollback().await.unwrap();
    assert_ok(&r);
    assert!(r.detail.contains("no rollback command"), "{}", r.detail);

    s.verify = Some(format!("test -f {}", flag.display()));
    s.rollback = Some(format!("rm -f {}", flag.display()));
    let ex = Executor::new(s.clone(), ws.clone()).unwrap();
    assert_ok(&ex.verify().await.unwrap());
    assert_ok(&ex.rollback().await.unwrap());
    assert!(!flag.exists());
    assert!(!ex.verify().await.unwrap().ok);

    s.install = Some("echo broken >&2; exit 7".into());
    let r = Executor::new(s, ws).unwrap().install().await.unwrap();
    assert!(!r.ok);
    assert_eq!(r.exit_code, Some(7));
    assert!(!r.timed_out);
    assert!(r.output.contains("broken"), "{}", r.output);
}

/// The state letter of a process, `None` once it is gone.
fn process_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the parenthesised command name.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Waits up to two seconds for a process to die (a zombie whose parent we killed counts).
fn wait_gone(pid: i32) -> bool {
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        match process_state(pid) {
            None | Some('Z') | Some('X') => return true,
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}

fn read_pid(dir: &Path) -> i32 {
    fs::read_to_string(dir.join("bg.pid")).unwrap().trim().parse().unwrap()
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let d = tempfile::tempdir().unwrap();
    let ws = workspace(d.path(), "r1", b"payload");
    let s = spec(ExecKind::Command, Some("sleep 30 & echo $! > bg.pid; sleep 30"), 300);
    let ex = Executor::new(s, ws).unwrap();
    let started = Instant::now();
    let r = ex.install().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(r.timed_out);
    assert!(!r.ok);
    assert_eq!(r.exit_code, None);
    assert!(r.duration_ms >= 300);
    assert!(r.detail.contains("timed out"), "{}", r.detail);
    let pid = read_pid(&ex.workspace().dir);
    assert!(wait_gone(pid), "background child {pid} survived the timeout");
}

#[tokio::test]
async fn dropping_a_running_step_kills_its_processes() {
    let d = tempfile::tempdir().unwrap();
    let ws = workspace(d.path(), "r1", b"payload");
    let s = spec(ExecKind::Command, Some("sleep 30 & echo $! > bg.pid; sleep 30"), 20_000);
    let ex = Executor::new(s, ws).unwrap();
    // The caller gives up (daemon shutdown, its own deadline): the step future is dropped.
    let r = tokio::time::timeout(Duration::from_millis(500), ex.install()).await;
    assert!(r.is_err());
    let pid = read_pid(&ex.workspace().dir);
    assert!(wait_gone(pid), "background child {pid} outlived the dropped step");
}

#[tokio::test]
async fn a_background_child_holding_the_output_does_not_hold_the_step() {
    let d = tempfile::tempdir().unwrap();
    let ws = workspace(d.path(), "r1", b"payload");
    // In the group: killed once the shell is done and the grace period passed.
    let s = spec(ExecKind::Command, Some("sleep 30 & echo $! > bg.pid; echo done"), 20_000);
    let ex = Executor::new(s, ws.clone()).unwrap();
    let started = Instant::now();
    let r = ex.install().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_ok(&r);
    assert!(r.output.contains("done"), "{}", r.output);
    assert!(r.detail.contains("background"), "{}", r.detail);
    assert!(wait_gone(read_pid(&ex.workspace().dir)));

    // Out of the group (setsid): out of reach, but we stop waiting for it.
    let s = spec(ExecKind::Command, Some("setsid sleep 30 & echo $! > bg.pid; echo done"), 20_000);
    let ex = Executor::new(s, ws).unwrap();
    let started = Instant::now();
    let r = ex.install().await.unwrap();
    let pid = read_pid(&ex.workspace().dir);
    let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_ok(&r);
}

#[tokio::test]
async fn output_is_bounded() {
    let d = tempfile::tempdir().unwrap();
    let ws = workspace(d.path(), "r1", b"payload");
    let s = spec(ExecKind::Command, Some("yes | head -c 10000000; echo; echo last line"), 60_000);
    let r = Executor::new(s, ws).unwrap().install().await.unwrap();
    assert_ok(&r);
    assert!(r.output.len() <= OUTPUT_BYTES_MAX, "{} bytes", r.output.len());
    assert!(r.output.contains("earlier bytes omitted"));
    assert!(r.output.ends_with("y\n\nlast line\n"), "{:?}", &r.output[r.output.len() - 40..]);
}

#[test]
fn bad_specs_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let ws = workspace(d.path(), "r1", b"payload");
    let refused =
        |s: ExecSpec, ws: Workspace| matches!(Executor::new(s, ws), Err(ExecError::BadSpec(_)));
    assert!(refused(spec(ExecKind::File, None, 0), ws.clone()));
    assert!(refused(spec(ExecKind::File, Some("etc/motd"), 0), ws.clone()));
    assert!(refused(spec(ExecKind::File, Some("/etc/../motd"), 0), ws.clone()));
    assert!(refused(spec(ExecKind::File, Some("/"), 0), ws.clone()));
    assert!(refused(spec(ExecKind::Command, None, 0), ws.clone()));
    assert!(refused(spec(ExecKind::Command, Some("  "), 0), ws.clone()));
    assert!(refused(spec(ExecKind::Dpkg, Some("--force-all"), 0), ws.clone()));
    assert!(refused(spec(ExecKind::Command, Some("true"), u64::MAX), ws.clone()));
    let mut s = spec(ExecKind::Command, Some("true"), 0);
    s.verify = Some(String::new());
    assert!(refused(s, ws.clone()));
    let mut s = spec(ExecKind::Command, Some("true"), 0);
    s.rollback = Some("x".repeat(100_000));
    assert!(refused(s, ws.clone()));
    let mut rel = ws.clone();
    rel.dir = PathBuf::from("installs/r1");
    assert!(refused(spec(ExecKind::Command, Some("true"), 0), rel));
    let mut rel = ws.clone();
    rel.dpkg.root = Some(PathBuf::from("root"));
    assert!(refused(spec(ExecKind::Dpkg, None, 0), rel));

    assert!(matches!("rpm".parse::<ExecKind>(), Err(ExecError::UnknownKind(_))));
    assert_eq!("dpkg".parse::<ExecKind>().unwrap(), ExecKind::Dpkg);
    assert!(Executor::new(spec(ExecKind::Dpkg, None, 0), ws).is_ok());
}

#[tokio::test]
async fn unusable_targets_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let missing_dir = d.path().join("no/such/dir/file");
    let ex = file_executor(d.path(), "r1", &missing_dir, b"x");
    assert!(matches!(ex.stage().await, Err(ExecError::Target { .. })));
    let dir_target = d.path().join("adir");
    fs::create_dir(&dir_target).unwrap();
    let ex = file_executor(d.path(), "r2", &dir_target, b"x");
    assert!(matches!(ex.stage().await, Err(ExecError::Target { .. })));
    assert!(matches!(ex.install().await, Err(ExecError::NotStaged(_))));
    let mut ws = workspace(d.path(), "r3", b"x");
    ws.payload = d.path().join("gone");
    let s = spec(ExecKind::File, Some(d.path().join("t").to_str().unwrap()), 0);
    let ex = Executor::new(s, ws).unwrap();
    assert!(matches!(ex.stage().await, Err(ExecError::Payload { .. })));
}

// ---- dpkg, always in a throwaway root ----

/// Builds `pm-test_<version>.deb` installing `/opt/pm-test/version`.
fn build_deb(base: &Path, version: &str) -> PathBuf {
    let tree = base.join(format!("pkg-{version}"));
    fs::create_dir_all(tree.join("DEBIAN")).unwrap();
    fs::create_dir_all(tree.join("opt/pm-test")).unwrap();
    fs::write(
        tree.join("DEBIAN/control"),
        format!(
            "Package: pm-test\nVersion: {version}\nArchitecture: all\n\
             Maintainer: Test <test@example.org>\nDescription: executor test package\n"
        ),
    )
    .unwrap();
    fs::write(tree.join("opt/pm-test/version"), format!("{version}\n")).unwrap();
    let deb = base.join(format!("pm-test_{version}.deb"));
    let out = Command::new("dpkg-deb")
        .arg("--root-owner-group")
        .arg("--build")
        .arg(&tree)
        .arg(&deb)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    deb
}

fn throwaway_root(base: &Path) -> DpkgRoot {
    let root = DpkgRoot { root: Some(base.join("root")) };
    root.prepare().unwrap();
    root
}

/// `Some((status, version))` of pm-test in the root, `None` if dpkg does not know it.
fn installed(root: &DpkgRoot) -> Option<(String, String)> {
    let out = Command::new("dpkg-query")
        .arg(format!("--admindir={}", root.admindir().display()))
        .args(["-W", "-f=${Status}\t${Version}", "pm-test"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, version) = text.split_once('\t')?;
    (!status.ends_with("not-installed")).then(|| (status.to_string(), version.to_string()))
}

fn deb_executor(
    base: &Path,
    name: &str,
    deb: &Path,
    root: &DpkgRoot,
    prev: Option<&Path>,
) -> Executor {
    let bytes = fs::read(deb).unwrap();
    let ws = Workspace {
        dir: base.join("installs").join(name),
        payload: deb.to_path_buf(),
        content_id: *blake3::hash(&bytes).as_bytes(),
        previous_payload: prev.map(Path::to_path_buf),
        dpkg: root.clone(),
    };
    Executor::new(spec(ExecKind::Dpkg, None, 60_000), ws).unwrap()
}

fn version_file(root: &DpkgRoot) -> Option<String> {
    fs::read_to_string(root.root.as_ref().unwrap().join("opt/pm-test/version")).ok()
}

#[tokio::test]
async fn dpkg_upgrade_then_rollback_to_the_previous_version() {
    let d = tempfile::tempdir().unwrap();
    let v1 = build_deb(d.path(), "1.0");
    let v2 = build_deb(d.path(), "2.0");
    let root = throwaway_root(d.path());

    let first = deb_executor(d.path(), "r1", &v1, &root, None);
    assert_ok(&first.stage().await.unwrap());
    assert_ok(&first.install().await.unwrap());
    assert_ok(&first.verify().await.unwrap());
    assert_eq!(installed(&root), Some(("install ok installed".into(), "1.0".into())));

    let up = deb_executor(d.path(), "r2", &v2, &root, Some(&v1));
    let r = up.stage().await.unwrap();
    assert_ok(&r);
    assert!(r.detail.contains("before: version 1.0"), "{}", r.detail);
    assert!(!up.verify().await.unwrap().ok, "2.0 is not installed yet");
    assert_ok(&up.install().await.unwrap());
    assert_ok(&up.verify().await.unwrap());
    assert_eq!(version_file(&root).as_deref(), Some("2.0\n"));
    // A stage repeated after the install keeps 1.0 as the version to return to.
    let r = up.stage().await.unwrap();
    assert_ok(&r);
    assert!(r.detail.contains("before: version 1.0"), "{}", r.detail);

    // Without the old .deb, rollback says so and changes nothing.
    let blind = deb_executor(d.path(), "r2", &v2, &root, None);
    let r = blind.rollback().await.unwrap();
    assert!(!r.ok);
    assert!(r.detail.contains("not available"), "{}", r.detail);
    assert_eq!(installed(&root).unwrap().1, "2.0");
    // The wrong old .deb is refused too.
    let wrong = deb_executor(d.path(), "r2", &v2, &root, Some(&v2));
    assert!(!wrong.rollback().await.unwrap().ok);

    let r = up.rollback().await.unwrap();
    assert_ok(&r);
    assert_eq!(installed(&root), Some(("install ok installed".into(), "1.0".into())));
    assert_eq!(version_file(&root).as_deref(), Some("1.0\n"));
    assert!(!up.verify().await.unwrap().ok);
    assert_ok(&up.rollback().await.unwrap());
    assert_eq!(installed(&root).unwrap().1, "1.0");
}

#[tokio::test]
async fn dpkg_rollback_without_a_previous_version_purges() {
    let d = tempfile::tempdir().unwrap();
    let v2 = build_deb(d.path(), "2.0");
    let root = throwaway_root(d.path());
    let ex = deb_executor(d.path(), "r1", &v2, &root, None);
    let r = ex.stage().await.unwrap();
    assert_ok(&r);
    assert!(r.detail.contains("before: nothing"), "{}", r.detail);
    assert!(matches!(
        deb_executor(d.path(), "other", &v2, &root, None).install().await,
        Err(ExecError::NotStaged(_))
    ));
    assert_ok(&ex.install().await.unwrap());
    assert_ok(&ex.verify().await.unwrap());
    assert_eq!(version_file(&root).as_deref(), Some("2.0\n"));
    assert_ok(&ex.rollback().await.unwrap());
    assert_eq!(installed(&root), None);
    assert_eq!(version_file(&root), None);
    // Again, as after a crash during the first rollback.
    assert_ok(&ex.rollback().await.unwrap());
}

#[tokio::test]
async fn dpkg_stage_refuses_a_payload_that_is_not_a_package() {
    let d = tempfile::tempdir().unwrap();
    let not_deb = d.path().join("junk.deb");
    fs::write(&not_deb, b"not an archive").unwrap();
    let root = throwaway_root(d.path());
    let ex = deb_executor(d.path(), "r1", &not_deb, &root, None);
    let r = ex.stage().await.unwrap();
    assert!(!r.ok);
    assert!(r.detail.contains("dpkg-deb could not read"), "{}", r.detail);
    assert!(r.output.contains("dpkg-deb"), "{}", r.output);
}
