//! Contexts: one workstation, many meshes (an MSP's tenants). A context names the node
//! configuration the CLI talks to and, optionally, the admin key that signs there, like
//! kubectl's contexts. They live in `$XDG_CONFIG_HOME/patchmesh/contexts.toml` (default
//! `~/.config/patchmesh/contexts.toml`).
//!
//! Precedence, for the node configuration: `--config` > `PATCHMESH_CONFIG` > the context's >
//! `/etc/patchmesh/node.toml`; for the admin key: `--admin-key` > `PATCHMESH_ADMIN_KEY` > the
//! context's. The context itself: `--context` > `PATCHMESH_CONTEXT` > the current one (`context
//! use`). `patchmesh config view --show-origin` prints each value and where it came from.
//!
//! `--all-contexts` runs a read-only command once per context, each in its own process (so one
//! tenant's slow or dead node cannot stall or crash the others), and prints one result per
//! tenant.

use anyhow::{bail, Context as _};
use clap::Subcommand;
use patchmesh_node::control::{AllContextsOutput, ConfigSetting, ConfigViewOutput, TenantResult};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The node configuration used when nothing else names one.
pub const DEFAULT_CONFIG: &str = "/etc/patchmesh/node.toml";
const CONTEXTS_BYTES_MAX: u64 = 1 << 20;
/// Exit code of `--all-contexts` when some tenants answered and some did not.
pub const EXIT_PARTIAL: i32 = 5;

/// The `--context` flag, set once after parsing.
static FLAG: OnceLock<Option<String>> = OnceLock::new();

/// Records the global `--context` flag.
pub fn set_flag(name: Option<String>) {
    let _ = FLAG.set(name);
}

/// `patchmesh context …`
#[derive(Subcommand)]
pub enum ContextCmd {
    /// Add (or replace, with --force) a context.
    Add {
        /// Its name (letters, digits, `.`, `_`, `-`).
        name: String,
        /// The node configuration this context talks to.
        #[arg(long)]
        config: PathBuf,
        /// The admin key that signs in this context (a file or `agent:SHA256:…`).
        #[arg(long)]
        admin_key: Option<PathBuf>,
        /// Replace a context of the same name.
        #[arg(long)]
        force: bool,
    },
    /// Every context; the current one is marked.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a context the current one.
    Use {
        /// Its name.
        name: String,
    },
    /// Remove a context.
    Remove {
        /// Its name.
        name: String,
    },
}

/// `patchmesh config …`
#[derive(Subcommand)]
pub enum ConfigCmd {
    /// The effective settings: context, node configuration, admin key.
    View {
        /// Say where each value came from (flag, environment, context, default).
        #[arg(long)]
        show_origin: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// One context.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// The node configuration.
    pub config: PathBuf,
    /// The admin key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_key: Option<PathBuf>,
}

/// The contexts file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contexts {
    /// The current context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Contexts by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// Where the contexts file is.
pub fn file() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/etc"));
    base.join("patchmesh").join("contexts.toml")
}

impl Contexts {
    /// Reads the file (absent: no contexts).
    pub fn load() -> anyhow::Result<Contexts> {
        let path = file();
        if !path.exists() {
            return Ok(Contexts::default());
        }
        let bytes = patchmesh_node::files::read_limited(&path, CONTEXTS_BYTES_MAX)?;
        let text =
            String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", path.display()))?;
        toml::from_str(&text).with_context(|| format!("reading {}", path.display()))
    }

    fn save(&self) -> anyhow::Result<()> {
        let path = file();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = toml::to_string(self).context("encoding the contexts")?;
        patchmesh_node::files::write_synced(&path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Where a setting came from.
pub use patchmesh_node::control::SettingOrigin as Origin;

/// How `config view --show-origin` and errors name an origin.
fn origin_text(o: &Origin) -> String {
    match o {
        Origin::Flag => "flag".into(),
        Origin::Env(v) => format!("environment ({v})"),
        Origin::Context(n) => format!("context {n} ({})", file().display()),
        Origin::Current => format!("current context ({})", file().display()),
        Origin::Default => "default".into(),
        Origin::Unset => "not set".into(),
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The selected context's name and where the choice came from.
pub fn selected() -> (Option<String>, Origin) {
    if let Some(Some(n)) = FLAG.get() {
        return (Some(n.clone()), Origin::Flag);
    }
    if let Some(n) = env_nonempty("PATCHMESH_CONTEXT") {
        return (Some(n), Origin::Env("PATCHMESH_CONTEXT".into()));
    }
    match Contexts::load().ok().and_then(|c| c.current) {
        Some(n) => (Some(n), Origin::Current),
        None => (None, Origin::Unset),
    }
}

/// The selected context, if any; naming one that does not exist is an error.
fn selected_context() -> anyhow::Result<Option<(String, Context)>> {
    let (name, origin) = selected();
    let Some(name) = name else { return Ok(None) };
    let all = Contexts::load()?;
    match all.contexts.get(&name) {
        Some(c) => Ok(Some((name, c.clone()))),
        None => {
            bail!(
                "no context {name:?} (chosen by {}); `patchmesh context list` shows them",
                origin_text(&origin)
            )
        }
    }
}

/// The node configuration to use, and where it came from.
pub fn node_config(flag: Option<&Path>) -> anyhow::Result<(PathBuf, Origin)> {
    if let Some(p) = flag {
        return Ok((p.to_path_buf(), Origin::Flag));
    }
    if let Some(p) = env_nonempty("PATCHMESH_CONFIG") {
        return Ok((PathBuf::from(p), Origin::Env("PATCHMESH_CONFIG".into())));
    }
    if let Some((name, c)) = selected_context()? {
        return Ok((c.config, Origin::Context(name)));
    }
    Ok((PathBuf::from(DEFAULT_CONFIG), Origin::Default))
}

/// The admin key to sign with, and where it came from.
pub fn admin_key_origin(flag: Option<&Path>) -> anyhow::Result<(Option<PathBuf>, Origin)> {
    if let Some(p) = flag {
        return Ok((Some(p.to_path_buf()), Origin::Flag));
    }
    if let Some(p) = env_nonempty("PATCHMESH_ADMIN_KEY") {
        return Ok((Some(PathBuf::from(p)), Origin::Env("PATCHMESH_ADMIN_KEY".into())));
    }
    if let Some((name, c)) = selected_context()? {
        if let Some(k) = c.admin_key {
            return Ok((Some(k), Origin::Context(name)));
        }
    }
    Ok((None, Origin::Unset))
}

/// The admin key to sign with; an error naming every way to give one when none is set.
pub fn admin_key(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    match admin_key_origin(flag)? {
        (Some(k), _) => Ok(k),
        (None, _) => bail!(
            "no admin key: give --admin-key FILE (or agent:SHA256:…), set PATCHMESH_ADMIN_KEY, or add one to the context (patchmesh context add NAME --config … --admin-key …)"
        ),
    }
}

fn valid_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        bail!("context names are 1..=64 letters, digits, '.', '_' or '-': {name:?}");
    }
    Ok(())
}

#[derive(Serialize)]
struct ContextRow {
    name: String,
    current: bool,
    config: PathBuf,
    admin_key: Option<PathBuf>,
}

pub fn run(cmd: ContextCmd) -> anyhow::Result<()> {
    let mut all = Contexts::load()?;
    match cmd {
        ContextCmd::Add { name, config, admin_key, force } => {
            valid_name(&name)?;
            if all.contexts.contains_key(&name) && !force {
                bail!("context {name:?} exists; --force replaces it");
            }
            let config = std::path::absolute(&config)
                .with_context(|| format!("resolving {}", config.display()))?;
            if let Err(e) = patchmesh_node::config::NodeConfig::load(&config) {
                eprintln!("patchmesh: warning: {} does not load now: {e}", config.display());
            }
            let admin_key = admin_key
                .map(|k| {
                    if k.to_string_lossy().starts_with("agent:") {
                        Ok(k)
                    } else {
                        std::path::absolute(&k)
                    }
                })
                .transpose()?;
            all.contexts.insert(name.clone(), Context { config, admin_key });
            if all.current.is_none() {
                all.current = Some(name.clone());
            }
            all.save()?;
            outln!("context {name} saved in {}", file().display());
        }
        ContextCmd::List { json } => {
            let rows: Vec<ContextRow> = all
                .contexts
                .iter()
                .map(|(n, c)| ContextRow {
                    name: n.clone(),
                    current: all.current.as_deref() == Some(n),
                    config: c.config.clone(),
                    admin_key: c.admin_key.clone(),
                })
                .collect();
            if json {
                outln!("{}", crate::output::json(&rows));
            } else if rows.is_empty() {
                outln!("no contexts ({}); add one with `patchmesh context add`", file().display());
            } else {
                for r in rows {
                    let key = r.admin_key.map(|k| k.display().to_string()).unwrap_or("-".into());
                    outln!(
                        "{} {:<20} {}  admin key {key}",
                        if r.current { "*" } else { " " },
                        r.name,
                        r.config.display()
                    );
                }
            }
        }
        ContextCmd::Use { name } => {
            if !all.contexts.contains_key(&name) {
                bail!("no context {name:?}; `patchmesh context list` shows them");
            }
            all.current = Some(name.clone());
            all.save()?;
            outln!("current context: {name}");
        }
        ContextCmd::Remove { name } => {
            if all.contexts.remove(&name).is_none() {
                bail!("no context {name:?}");
            }
            if all.current.as_deref() == Some(name.as_str()) {
                all.current = None;
            }
            all.save()?;
            outln!("context {name} removed");
        }
    }
    Ok(())
}

pub fn config(cmd: ConfigCmd) -> anyhow::Result<()> {
    let ConfigCmd::View { show_origin, json } = cmd;
    let (context, context_origin) = selected();
    let (config, config_origin) = node_config(None)?;
    let (key, key_origin) = admin_key_origin(None)?;
    let v = ConfigViewOutput {
        contexts_file: file(),
        context: ConfigSetting { value: context, origin: context_origin },
        config: ConfigSetting { value: Some(config.display().to_string()), origin: config_origin },
        admin_key: ConfigSetting {
            value: key.map(|k| k.display().to_string()),
            origin: key_origin,
        },
    };
    if json {
        outln!("{}", crate::output::json(&v));
        return Ok(());
    }
    let line = |name: &str, s: &ConfigSetting| {
        let value = s.value.as_deref().unwrap_or("-");
        if show_origin {
            outln!("{name:<10} {value:<48} {}", origin_text(&s.origin));
        } else {
            outln!("{name:<10} {value}");
        }
    };
    line("context", &v.context);
    line("config", &v.config);
    line("admin key", &v.admin_key);
    if show_origin {
        outln!("contexts   {}", v.contexts_file.display());
    }
    Ok(())
}

/// Read-only commands `--all-contexts` may run (first words after the global flags).
const ALL_CONTEXTS_COMMANDS: &[&[&str]] = &[
    &["status"],
    &["peers"],
    &["vulns"],
    &["rollout", "status"],
    &["report", "compliance"],
    &["intel", "status"],
    &["catalog", "show"],
    // Not run per tenant: serves the tenant switcher (see `dashboard::switcher`).
    &["dashboard"],
];

/// Runs the command in `args` (argv without the program and without `--all-contexts`) once per
/// context, in parallel, each with `--context NAME`; prints one result per tenant. Exit code: 0
/// when every tenant answered, [`EXIT_PARTIAL`] when some did, otherwise the first failure's.
pub fn run_all(args: &[String], timeout: Duration) -> anyhow::Result<i32> {
    let words: Vec<&str> =
        args.iter().map(String::as_str).filter(|a| !a.starts_with('-')).collect();
    let allowed =
        ALL_CONTEXTS_COMMANDS.iter().any(|c| words.len() >= c.len() && words[..c.len()] == **c);
    if !allowed {
        let list: Vec<String> = ALL_CONTEXTS_COMMANDS.iter().map(|c| c.join(" ")).collect();
        bail!("--all-contexts runs read-only commands only: {}", list.join(", "));
    }
    let flag = |a: &String, f: &str| a == f || a.starts_with(&format!("{f}="));
    if args.iter().any(|a| flag(a, "--config") || flag(a, "--context")) {
        bail!("--all-contexts takes each tenant's configuration from its context; drop --config/--context");
    }
    let json = args.iter().any(|a| a == "--json");
    if words == ["dashboard"] {
        return crate::dashboard::switcher(args.iter().any(|a| a == "--open"), json);
    }
    let all = Contexts::load()?;
    if all.contexts.is_empty() {
        bail!("no contexts ({}); add them with `patchmesh context add`", file().display());
    }
    let exe = std::env::current_exe().context("finding this program")?;
    let handles: Vec<_> = all
        .contexts
        .keys()
        .map(|name| {
            let (exe, name, args) = (exe.clone(), name.clone(), args.to_vec());
            std::thread::spawn(move || one_tenant(&exe, &name, &args, timeout))
        })
        .collect();
    let out = AllContextsOutput {
        tenants: handles.into_iter().map(|h| h.join().expect("tenant thread")).collect(),
    };
    let results = &out.tenants;
    let failed = results.iter().filter(|r| !r.ok).count();
    if json {
        outln!("{}", crate::output::json_sorted(&out));
    } else {
        for r in results {
            outln!("== {} ({}) ==", r.context, if r.ok { "ok" } else { "FAILED" });
            if let Some(e) = &r.error {
                outln!("{e}");
            }
            if let Some(serde_json::Value::String(text)) = &r.result {
                outln!("{}", text.trim_end());
            }
        }
    }
    if failed > 0 {
        eprintln!("patchmesh: {failed} of {} tenants failed", results.len());
    }
    Ok(match failed {
        0 => 0,
        n if n < results.len() => EXIT_PARTIAL,
        _ => results.iter().find_map(|r| r.exit_code).filter(|c| *c != 0).unwrap_or(1),
    })
}

/// Runs `patchmesh --context NAME ARGS…` and collects its answer.
pub(crate) fn one_tenant(
    exe: &Path,
    name: &str,
    args: &[String],
    timeout: Duration,
) -> TenantResult {
    let start = Instant::now();
    let json = args.iter().any(|a| a == "--json");
    let mut r = TenantResult {
        context: name.to_string(),
        ok: false,
        exit_code: None,
        elapsed_ms: 0,
        result: None,
        error: None,
    };
    let child = Command::new(exe)
        .arg("--context")
        .arg(name)
        .args(args)
        .env_remove("PATCHMESH_CONFIG")
        .env_remove("PATCHMESH_CONTEXT")
        .env_remove("PATCHMESH_ADMIN_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            r.error = Some(format!("starting patchmesh: {e}"));
            return r;
        }
    };
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let (stdout, stderr) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    r.elapsed_ms = start.elapsed().as_millis() as u64;
    let Some(status) = status else {
        r.error = Some(format!("no answer within {} s", timeout.as_secs()));
        return r;
    };
    r.exit_code = status.code();
    r.ok = status.success();
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    if r.ok {
        r.result = Some(if json {
            serde_json::from_str(&stdout).unwrap_or(serde_json::Value::String(stdout))
        } else {
            serde_json::Value::String(stdout)
        });
    } else {
        let e = String::from_utf8_lossy(&stderr);
        let e = e.trim();
        r.error = Some(e.strip_prefix("patchmesh: error: ").unwrap_or(e).to_string());
    }
    r
}
