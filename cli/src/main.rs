//! `patchmesh`: the admin's command-line tool and the node daemon.
//!
//! Exit codes: 0 success, 1 failure, 2 bad usage, 3 the node could not be reached, 4 the node
//! refused the request (for example a signature that does not verify).

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use patchmesh_node::config::NodeConfig;
use patchmesh_node::control::{self, ControlError, Request};
use patchmesh_node::files;
use patchmesh_protocol::catalog::{CatalogEntry, ChangeBody, ExecutorSpec, PatchEntry};
use patchmesh_protocol::crypto::{decode, encode, Domain, SecretKey};
use patchmesh_protocol::ids::{ContentId, KeyId, Millis, NodeId, SiteId};
use patchmesh_protocol::mesh;
use patchmesh_protocol::trust::{Genesis, Revocation};
use rand::rngs::OsRng;
use setup::{admin, admit, init, keygen};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Set when the command line asked for `--dry-run` (clap accepts it only on commands that
/// publish, and on `content gc`, which handles it itself): [`publish`] and admin-set changes
/// print what they would sign and stop.
pub(crate) static DRY_RUN: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// `--dry-run` on a command that publishes; read through [`DRY_RUN`].
#[derive(Args, Clone, Default)]
pub(crate) struct DryRun {
    /// Print what would be signed and published, as JSON, and stop (nothing is signed).
    #[arg(long = "dry-run")]
    #[allow(dead_code)]
    dry_run: bool,
}

/// Asks before a destructive command: `--yes` goes ahead; on a terminal the user answers; with
/// no terminal (scripts) the command is refused.
pub(crate) fn confirm(yes: bool, what: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("{what}: not confirmed, and no terminal to ask on; pass --yes to go ahead");
    }
    eprint!("{what}. Go ahead? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if !matches!(line.trim(), "y" | "Y" | "yes") {
        bail!("not confirmed; nothing was done");
    }
    Ok(())
}

/// Prints a line to stdout; a closed pipe (`patchmesh … | head`) ends the program quietly.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}

mod audit;
mod context;
mod dashboard;
mod demo;
mod demo_hook;
mod demo_intel;
mod doctor;
mod integrations;
mod intel;
mod keys;
mod notice;
mod output;
mod plan;
mod report;
mod roles;
mod rollout;
mod setup;
mod voucher;

/// patchmesh: peer-to-peer patch management with signed policy, canary rings and no server.
///
/// A mesh starts with `patchmesh init` (root and admin keys, genesis). Each machine gets a node
/// key (`patchmesh node keygen`) and an admission certificate an admin signs (`patchmesh
/// admit`), then runs `patchmesh node run --config FILE`. Admins publish signed policy from any
/// node; every node checks every signature itself.
#[derive(Parser)]
#[command(name = "patchmesh", version)]
struct Cli {
    /// Use this context (a mesh this workstation manages; see `patchmesh context`). Overrides
    /// PATCHMESH_CONTEXT and the current context.
    #[arg(long, global = true, value_name = "NAME")]
    context: Option<String>,
    /// Run a read-only command (status, peers, vulns, rollout status, report compliance,
    /// intel status, catalog show) once per context, side by side, and print one result per
    /// tenant. Exit 0 if all answered, 5 if some did not. With `dashboard`: serve the tenant
    /// switcher.
    #[arg(long, global = true)]
    all_contexts: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new mesh: a root key, a first admin key and the signed genesis.
    ///
    /// Writes DIR/admin.key and DIR/genesis.pm (which every node of the mesh needs), and the
    /// root key in its own directory (--root-dir, default DIR/root) to be taken offline. Both
    /// keys are encrypted with passphrases asked on the terminal (or read from the file named by
    /// PATCHMESH_PASSPHRASE_FILE). Refuses to overwrite anything.
    Init {
        /// Name of the mesh (shown in status output).
        #[arg(long)]
        mesh: String,
        /// Directory to write the admin key and genesis into (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Directory for the root key (created mode 0700; default DIR/root). Move it to
        /// offline media: it is needed only to change the admin set.
        #[arg(long)]
        root_dir: Option<PathBuf>,
        /// Write both keys as plain hex (throwaway meshes only).
        #[arg(long)]
        unencrypted: bool,
        /// Admin signatures a large rollout needs before any node installs it.
        #[arg(long, default_value_t = 1)]
        approval_threshold: u8,
        /// Rollouts that may reach more nodes than this (their --max-targets) are large and
        /// need --approval-threshold admins; smaller ones need only their author.
        #[arg(long, default_value_t = 0)]
        approval_above_nodes: u32,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change the admin key set (signed by root keys up to the threshold).
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Contexts: the meshes this workstation manages (an MSP's tenants), like kubectl's.
    #[command(subcommand)]
    Context(context::ContextCmd),
    /// The effective settings and where each came from.
    #[command(subcommand)]
    Config(context::ConfigCmd),
    /// Admin and root key files: passphrases, public keys, moving a key into ssh-agent.
    ///
    /// Every --admin-key and --root-key takes a key file (encrypted or plain) or
    /// `agent:SHA256:…`, a key held by ssh-agent.
    #[command(subcommand)]
    Key(keys::KeyCmd),
    /// Node keys and the node daemon.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Enrolment vouchers: one signed token lets up to N machines join a site.
    #[command(subcommand)]
    Voucher(voucher::VoucherCmd),
    /// Sign an admission certificate that lets a node key join the mesh; or, with --pending,
    /// list and approve enrolments that wait for an admin.
    ///
    /// Runs offline: needs only the admin key and the genesis. Hand the certificate to the
    /// node's machine and name it in its configuration (`admission = …`). For many machines,
    /// a voucher (`patchmesh voucher create`) saves the round trip per machine.
    Admit {
        /// List enrolments awaiting approval (with --approve or --all: approve them).
        #[arg(long)]
        pending: bool,
        /// With --pending: approve this node (id or prefix; repeatable).
        #[arg(long, requires = "pending")]
        approve: Vec<String>,
        /// With --pending: approve every enrolment awaiting approval.
        #[arg(long, requires = "pending")]
        all: bool,
        #[command(flatten)]
        node: NodeArgs,
        /// The node's public key, as `patchmesh node keygen` printed it.
        #[arg(long, required_unless_present = "pending")]
        node_key: Option<String>,
        /// The site (branch office, data centre) the node belongs to.
        #[arg(long, required_unless_present = "pending")]
        site: Option<String>,
        /// Labels as key=value (repeatable), e.g. `--label ring=canary`.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// The admin key that signs.
        #[arg(long)]
        admin_key: Option<PathBuf>,
        /// The mesh genesis.
        #[arg(long, required_unless_present = "pending")]
        genesis: Option<PathBuf>,
        /// Days the certificate stays valid.
        #[arg(long, default_value_t = 365)]
        valid_days: u64,
        /// Where to write the certificate.
        #[arg(long, required_unless_present = "pending")]
        out: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// This node: identity, mesh, trust version, catalog, peers and traffic.
    Status {
        #[command(flatten)]
        node: NodeArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The fleet as this node knows it: every site, its members by time zone, OS and labels
    /// (this node's site from its members' records, the others from their summaries).
    Fleet {
        #[command(flatten)]
        node: NodeArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Peers this node is connected to, and whether each showed a valid certificate.
    Peers {
        #[command(flatten)]
        node: NodeArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Installed packages of this node, or of another node by id (checked against the digest
    /// in its signed record when this node holds that record).
    Inventory {
        /// The node id (default: this node).
        node_id: Option<String>,
        #[command(flatten)]
        node: NodeArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The signed catalog: patches, rollouts and admin commands.
    #[command(subcommand)]
    Catalog(CatalogCmd),
    /// Patches in the catalog.
    #[command(subcommand)]
    Patch(PatchCmd),
    /// Fetch the payload of a catalog patch from the mesh, with a progress bar.
    ///
    /// The node fetches it (from its own site when another member has it, across the WAN when
    /// it is the site's elected fetcher), verifying every 16 KiB group. Interrupted fetches
    /// resume where they stopped. Exits 0 once the payload is complete and verified.
    Fetch {
        /// Content id (64 hex, the patch's `content_id`).
        id: String,
        #[command(flatten)]
        node: NodeArgs,
        /// Print one JSON object when done instead of a progress bar.
        #[arg(long)]
        json: bool,
        /// Give up after this many seconds (0: never).
        #[arg(long, default_value_t = 0)]
        timeout_s: u64,
    },
    /// The payloads this node holds.
    #[command(subcommand)]
    Content(ContentCmd),
    /// Roll a patch out through canary rings, with gates, windows, halts and rollback.
    #[command(subcommand)]
    Rollout(rollout::RolloutCmd),
    /// Vulnerability intelligence: build intel bundles and see what they hold.
    #[command(subcommand)]
    Intel(intel::IntelCmd),
    /// CVEs ranked by risk, with due dates, exposed nodes and the fixing version: the fleet as
    /// this node sees it (default), one site (--site), one node (--node), or a bundle file read
    /// here (--bundle, against this machine or a --fleet of exported inventories).
    Vulns {
        #[command(flatten)]
        local: intel::LocalArgs,
        #[command(flatten)]
        filter: intel::VulnFilter,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Packages apt would upgrade, from the bundle's indexes (same answer as `apt list
    /// --upgradable` given the same index files).
    Updates {
        #[command(flatten)]
        local: intel::LocalArgs,
        /// Only updates from a security suite.
        #[arg(long)]
        security: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Why a CVE is (or is not) a finding here: the bundle, each source's record, both
    /// versions, the comparison, the due class and the score's arithmetic. Offline.
    Explain {
        /// The CVE id.
        cve: String,
        #[command(flatten)]
        local: intel::LocalArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Exceptions: risk accepted for a while, or "not affected" (VEX), per CVE and nodes.
    #[command(subcommand)]
    Exception(intel::ExceptionCmd),
    /// The tamper-evident audit log: export a node's log, verify an export offline.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Signed reports: compliance (SLA, remediation, exceptions, rollouts, mapped to PCI DSS,
    /// SOC 2, ISO 27001, HIPAA, CIS) and one rollout's story; verify either offline.
    #[command(subcommand)]
    Report(report::ReportCmd),
    /// Integrations: where events go (webhooks, ServiceNow, PagerDuty, syslog, JSON lines),
    /// the election of the node that sends each event, the outbox and dead letters.
    #[command(subcommand)]
    Integrations(integrations::IntegrationsCmd),
    /// Roll the fix of exposed CVEs out to exactly the nodes exposed to them.
    ///
    /// Selects CVEs by id (or --kev / --due) from the fleet view, adds the fix (--deb, a
    /// dpkg patch; or --patch, a catalog patch) and creates a rollout with the rollout options
    /// given, targeting nodes whose source package is older than the fix (`src:NAME < FIX`),
    /// with a deadline from the due class. Asks for confirmation on a terminal (--yes for
    /// scripts).
    Remediate(Box<intel::RemediateArgs>),
    /// Print a one-time link that logs a browser into this node's dashboard.
    ///
    /// The node must have a `[dashboard]` section in its configuration. The link works once,
    /// within a minute; the browser then holds a session cookie (no password, no token in it).
    Dashboard {
        #[command(flatten)]
        node: NodeArgs,
        /// Open the link with the desktop's browser.
        #[arg(long)]
        open: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Changes prepared in a dashboard, for an admin to check and sign.
    #[command(subcommand)]
    Proposal(dashboard::ProposalCmd),
    /// Put off an install that is about to start on this machine (for the people using it).
    ///
    /// When a node tells its logged-in users that an install is coming, anyone at the machine
    /// may defer it as often as the rollout allows, never past its deadline. Needs no admin
    /// rights: it talks to the node's user socket (`[notice] user_socket`, by default
    /// /run/patchmesh/user.sock as the Debian package configures it).
    Defer(notice::DeferArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    ///
    /// bash: `patchmesh completion bash > /etc/bash_completion.d/patchmesh`; the Debian package
    /// installs all three for bash, zsh and fish.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages for patchmesh and every subcommand into DIR (the package ships them).
    #[command(hide = true)]
    Man {
        /// Where to write them.
        #[arg(long)]
        out: PathBuf,
    },
    /// Start a local mesh of real nodes on loopback, roll a good patch through its rings and a
    /// bad one into an automatic halt and rollback, and print what happened.
    Demo(demo::DemoArgs),
}

#[derive(Subcommand)]
enum ContentCmd {
    /// Payloads held (complete and partial) and downloads of this run.
    List {
        #[command(flatten)]
        node: NodeArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove payloads that no catalog patch references and no install journal pins (a dpkg
    /// rollback reinstalls the previous version's .deb from this store, never from the network).
    Gc {
        #[command(flatten)]
        node: NodeArgs,
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Remove without asking (asks on a terminal; refused without one unless given).
        #[arg(long)]
        yes: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Make a new admin key, encrypted with a passphrase (mode 0600), and print its public key.
    Keygen {
        /// Where to write the key.
        #[arg(long)]
        out: PathBuf,
        /// Write it as plain hex (throwaway meshes only).
        #[arg(long)]
        unencrypted: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add an admin key to the active set.
    Add {
        /// The public key to add.
        #[arg(long)]
        key: String,
        #[command(flatten)]
        signing: AdminSigning,
    },
    /// Replace an admin key with another; changes the old key signed stay valid.
    Rotate {
        /// The public key to retire.
        #[arg(long)]
        old: String,
        /// The public key that takes its place.
        #[arg(long)]
        new: String,
        #[command(flatten)]
        signing: AdminSigning,
    },
    /// Scoped roles: which admin keys may do what (publish, approve, control, admit,
    /// exceptions, intel, integrations), in which sites and labels. Enforced by every node.
    #[command(subcommand)]
    Role(roles::RoleCmd),
    /// The admin set this node holds: admins, revoked keys, roots, approval rule and roles.
    Show {
        #[command(flatten)]
        node: NodeArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an admin key: changes it signed after what this node holds now are refused
    /// everywhere.
    Revoke {
        /// The public key to revoke.
        #[arg(long)]
        key: String,
        #[command(flatten)]
        signing: AdminSigning,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Make a node key (mode 0600) and print the public key an admin admits.
    Keygen {
        /// Where to write the key.
        #[arg(long)]
        out: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Join a mesh with a voucher: makes this machine's node key (keeps one that exists),
    /// writes the genesis, the enrolment (its admission) and a ready configuration.
    Enroll(Box<voucher::EnrollArgs>),
    /// Check this node: configuration, key, genesis, certificate (and its expiry), store, disk
    /// for payloads, whether it runs, its clock against peers' records, and bootstrap peers;
    /// prints what to fix. Exit 1 if any check failed.
    Doctor {
        #[command(flatten)]
        node: NodeArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke one machine's admission (a lost or stolen laptop): every node disconnects it,
    /// refuses it from then on and drops its record. Works for certificates and enrolments
    /// alike; needs `admit` for the machine's site.
    Revoke {
        /// The machine's node id (64 hex characters).
        node_id: String,
        /// The site its admission names.
        #[arg(long)]
        site: String,
        /// Why (kept in the catalog and the audit trail).
        #[arg(long, default_value = "revoked by an admin")]
        reason: String,
        /// Admin key to sign with (default: PATCHMESH_ADMIN_KEY, else the context's).
        #[arg(long)]
        admin_key: Option<PathBuf>,
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        dry_run: DryRun,
        /// Go ahead without asking (asks on a terminal; refused without one unless given).
        #[arg(long)]
        yes: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the node daemon in the foreground until SIGINT or SIGTERM.
    Run {
        /// The node configuration file (TOML; see the README).
        #[arg(long, env = "PATCHMESH_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum CatalogCmd {
    /// Every catalog entry this node holds.
    Show {
        #[command(flatten)]
        node: NodeArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PatchCmd {
    /// Publish a signed patch entry from this node.
    ///
    /// Give the payload FILE: the node imports it into its content store (its BLAKE3 content
    /// id, the value `b3sum` prints, and its size come from there) and serves it to the mesh.
    /// Or give `--content-id` and `--size-bytes` of a payload some node already holds. The
    /// admin key signs here; it never leaves this process.
    Add {
        /// The payload file.
        file: Option<PathBuf>,
        /// Name shown to admins.
        #[arg(long)]
        name: String,
        /// Vendor version.
        #[arg(long, default_value = "")]
        version: String,
        /// BLAKE3 of the payload (64 hex), instead of FILE.
        #[arg(long, conflicts_with = "file", requires = "size_bytes")]
        content_id: Option<String>,
        /// Payload size, with --content-id.
        #[arg(long)]
        size_bytes: Option<u64>,
        /// How it is installed: file, command or dpkg.
        #[arg(long, default_value = "file", value_parser = ["file", "command", "dpkg"])]
        executor: String,
        /// Install command, or target path for the file executor.
        #[arg(long)]
        install: Option<String>,
        /// Verification command.
        #[arg(long)]
        verify: Option<String>,
        /// Rollback command.
        #[arg(long)]
        rollback: Option<String>,
        /// Timeout of each step.
        #[arg(long, default_value_t = 300_000)]
        timeout_ms: u64,
        /// The admin key that signs.
        #[arg(long)]
        admin_key: Option<PathBuf>,
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        dry_run: DryRun,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Which node to talk to.
#[derive(Args, Clone)]
struct NodeArgs {
    /// The node's configuration file (its control socket and token are found from it).
    /// Default: PATCHMESH_CONFIG, else the context's, else /etc/patchmesh/node.toml.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// Who signs an admin-set change, which node applies it, and how to print the result.
#[derive(Args, Clone)]
struct AdminSigning {
    #[command(flatten)]
    roots: RootArgs,
    #[command(flatten)]
    dry_run: DryRun,
    /// Go ahead without asking (revocations and role removals ask on a terminal, and are
    /// refused without one unless this is given).
    #[arg(long)]
    yes: bool,
    #[command(flatten)]
    node: NodeArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Root keys that sign an admin-set change.
#[derive(Args, Clone)]
struct RootArgs {
    /// A root key file (repeat until the root threshold is met).
    #[arg(long = "root-key", required = true)]
    root_keys: Vec<PathBuf>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not key=value"))?;
    if k.is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn main() {
    let cli = Cli::parse();
    context::set_flag(cli.context.clone());
    if std::env::args().any(|a| a == "--dry-run") {
        DRY_RUN.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    if cli.all_contexts {
        let args: Vec<String> =
            std::env::args().skip(1).filter(|a| a != "--all-contexts").collect();
        match context::run_all(&args, Duration::from_secs(120)) {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("patchmesh: error: {e:#}");
                std::process::exit(2);
            }
        }
    }
    if let Err(e) = run(cli) {
        eprintln!("patchmesh: error: {e:#}");
        let code = match e.downcast_ref::<ControlError>() {
            Some(ControlError::Connect { .. } | ControlError::Token { .. }) => 3,
            Some(ControlError::Refused(_)) => 4,
            _ => 1,
        };
        std::process::exit(code);
    }
}

pub(crate) fn now_ms() -> Millis {
    patchmesh_node::clock::now_ms()
}

/// Runs one command. (Long: one arm per command, each a few lines handing off to its module.)
fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Init {
            mesh,
            dir,
            root_dir,
            unencrypted,
            approval_threshold,
            approval_above_nodes,
            json,
        } => {
            let approval =
                mesh::Approval { threshold: approval_threshold, above_nodes: approval_above_nodes };
            let root_dir = root_dir.unwrap_or_else(|| dir.join("root"));
            init(&mesh, &dir, &root_dir, unencrypted, approval, json)
        }
        Cmd::Admin(cmd) => admin(cmd),
        Cmd::Key(cmd) => keys::run(cmd),
        Cmd::Context(cmd) => context::run(cmd),
        Cmd::Defer(a) => notice::run(a),
        Cmd::Completion { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "patchmesh", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Man { out } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            clap_mangen::generate_to(Cli::command(), &out)
                .with_context(|| format!("writing man pages into {}", out.display()))?;
            Ok(())
        }
        Cmd::Config(cmd) => context::config(cmd),
        Cmd::Intel(intel::IntelCmd::Import { files, out, previous, admin_key, node, json }) => {
            intel::import(&files, &out, previous.as_deref(), admin_key.as_deref(), &node, json)
        }
        Cmd::Intel(intel::IntelCmd::Status { node, json }) => intel::status(&node, json),
        Cmd::Intel(intel::IntelCmd::Publish { bundle, admin_key, node, .. }) => {
            intel::publish_file(&bundle, admin_key.as_deref(), &node)
        }
        Cmd::Intel(intel::IntelCmd::Show { bundle, json }) => intel::show(&bundle, json),
        Cmd::Vulns { local, filter, json } => intel::vulns(&local, &filter, json),
        Cmd::Remediate(a) => intel::remediate(*a, now_ms()),
        Cmd::Exception(cmd) => intel::exception(cmd, now_ms()),
        Cmd::Audit(cmd) => audit::run(cmd, now_ms()),
        Cmd::Report(cmd) => report::run(cmd, now_ms()),
        Cmd::Integrations(cmd) => integrations::run(cmd),
        Cmd::Dashboard { node, open, json } => dashboard::login(&node, open, json),
        Cmd::Proposal(cmd) => dashboard::run(cmd),
        Cmd::Updates { local, security, json } => intel::updates_cmd(&local, security, json),
        Cmd::Explain { cve, local, json } => intel::explain(&cve, &local, json),
        Cmd::Node(NodeCmd::Keygen { out, json }) => keygen(&out, json, "node"),
        Cmd::Node(NodeCmd::Doctor { node, json }) => {
            let (config, _) = context::node_config(node.config.as_deref())?;
            let code = doctor::run(&config, json, now_ms())?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Cmd::Node(NodeCmd::Revoke {
            node_id, site, reason, admin_key, node, yes, json, ..
        }) => {
            let id = NodeId(parse_hex32(&node_id)?);
            if site.is_empty() || site.len() > patchmesh_protocol::limits::SITE_NAME_BYTES_MAX {
                bail!(
                    "--site must be 1..={} bytes",
                    patchmesh_protocol::limits::SITE_NAME_BYTES_MAX
                );
            }
            let r = patchmesh_protocol::enrol::NodeRevocation {
                node: id,
                site: SiteId::from(site.as_str()),
                reason,
                revoked_at: now_ms(),
            };
            r.validate()?;
            confirm(yes, &format!("revoke node {id} of site {site}: it is refused everywhere"))?;
            let admin = keys::AdminKey::resolve(admin_key.as_deref())?;
            let key = patchmesh_protocol::enrol::NodeRevocation::key_of(&id);
            let v = publish(&node, &admin, vec![(key, Some(CatalogEntry::NodeRevocation(r)))])?;
            if json {
                outln!("{}", output::json(&v));
            } else {
                outln!("node {id} revoked; spreading to the mesh");
            }
            Ok(())
        }
        Cmd::Node(NodeCmd::Run { config }) => {
            let cfg = NodeConfig::load(&config)?;
            patchmesh_node::daemon::init_logging(cfg.log);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the runtime")?;
            Ok(rt.block_on(patchmesh_node::daemon::run(cfg))?)
        }
        Cmd::Admit { pending: true, approve, all, node, admin_key, json, .. } => {
            voucher::pending(&node, &approve, all, admin_key.as_deref(), json)
        }
        Cmd::Admit {
            node_key: Some(node_key),
            site: Some(site),
            labels,
            admin_key,
            genesis: Some(genesis),
            valid_days,
            out: Some(out),
            json,
            ..
        } => {
            admit(&node_key, &site, labels, admin_key.as_deref(), &genesis, valid_days, &out, json)
        }
        Cmd::Admit { .. } => bail!("give --node-key, --site, --genesis and --out (or --pending)"),
        Cmd::Voucher(cmd) => voucher::run(cmd, now_ms()),
        Cmd::Node(NodeCmd::Enroll(a)) => voucher::enroll(*a, now_ms()),
        Cmd::Status { node, json } => {
            output::status(&call(&node, Request::Status)?, json);
            Ok(())
        }
        Cmd::Fleet { node, json } => {
            output::fleet(&call(&node, Request::Fleet)?, json);
            Ok(())
        }
        Cmd::Peers { node, json } => {
            let v: Vec<control::PeerView> = call(&node, Request::Peers)?;
            output::peers(&v, json);
            Ok(())
        }
        Cmd::Inventory { node_id, node, json } => {
            output::inventory(&call(&node, Request::Inventory { node: node_id })?, json);
            Ok(())
        }
        Cmd::Catalog(CatalogCmd::Show { node, json }) => {
            output::catalog(&call(&node, Request::Catalog)?, json);
            Ok(())
        }
        Cmd::Patch(PatchCmd::Add {
            file,
            name,
            version,
            content_id,
            size_bytes,
            executor,
            install,
            verify,
            rollback,
            timeout_ms,
            admin_key,
            node,
            json,
            ..
        }) => {
            let (content_id, size_bytes) = match (file, content_id, size_bytes) {
                (Some(f), _, _) => import(&node, &f)?,
                (None, Some(id), Some(size)) => (ContentId(parse_hex32(&id)?), size),
                _ => bail!("give the payload FILE, or --content-id with --size-bytes"),
            };
            if name.is_empty() || name.len() > patchmesh_protocol::limits::TEXT_BYTES_MAX {
                bail!("--name must be 1..={} bytes", patchmesh_protocol::limits::TEXT_BYTES_MAX);
            }
            let entry = CatalogEntry::Patch(PatchEntry {
                content_id,
                size_bytes,
                name,
                version,
                executor: ExecutorSpec { kind: executor, install, verify, rollback, timeout_ms },
            });
            let key = entry.key();
            let admin = keys::AdminKey::resolve(admin_key.as_deref())?;
            let result = publish(&node, &admin, vec![(key.clone(), Some(entry))])?;
            if json {
                outln!(
                    "{}",
                    output::json(&control::PatchAddOutput {
                        key: key.clone(),
                        content_id: content_id.to_string(),
                        size_bytes,
                        change: result.clone(),
                    })
                );
            } else {
                outln!("published {key}");
                outln!("  content id  {content_id}");
                outln!("  size        {size_bytes} bytes");
                outln!("  change      {}", result.id);
            }
            Ok(())
        }
        Cmd::Fetch { id, node, json, timeout_s } => {
            parse_hex32(&id)?;
            let _: control::ContentView = call(&node, Request::Fetch { content: id.clone() })?;
            output::fetch_progress(
                || Ok(call(&node, Request::Content { content: id.clone() })?),
                json,
                timeout_s,
            )
        }
        Cmd::Rollout(cmd) => rollout::run(cmd, now_ms()),
        Cmd::Demo(args) => demo::run(args),
        Cmd::Content(ContentCmd::List { node, json }) => {
            output::content_list(&call(&node, Request::ContentList)?, json);
            Ok(())
        }
        Cmd::Content(ContentCmd::Gc { node, dry_run, yes, json }) => {
            if !dry_run {
                confirm(yes, "remove every payload no patch references or journal pins")?;
            }
            output::content_gc(&call(&node, Request::ContentGc { dry_run })?, json);
            Ok(())
        }
    }
}

/// Prepares a change at the node, signs it here and submits it.
fn publish(
    node: &NodeArgs,
    admin: &keys::AdminKey,
    edits: Vec<(String, Option<CatalogEntry>)>,
) -> anyhow::Result<control::SubmittedView> {
    if DRY_RUN.load(std::sync::atomic::Ordering::Relaxed) {
        let v = control::DryRunOutput {
            dry_run: true,
            signer: admin.public().to_hex(),
            edits: edits.into_iter().map(|(key, put)| control::DryRunEdit { key, put }).collect(),
        };
        outln!("{}", output::json_sorted(&v));
        std::process::exit(0);
    }
    let prepared: control::PreparedView = call(
        node,
        Request::Prepare { admin: admin.public().to_hex(), edits: hex::encode(encode(&edits)) },
    )?;
    let body: ChangeBody =
        decode("prepared change", &hex::decode(&prepared.body)?, control::REQUEST_BYTES_MAX)?;
    let env = admin.seal(Domain::CatalogChange, &body)?;
    Ok(call(node, Request::Submit { envelope: hex::encode(encode(&env)) })?)
}

/// One control request to the node of `node`, its answer parsed as the view `T`.
fn call<T: serde::de::DeserializeOwned>(
    node: &NodeArgs,
    request: Request,
) -> Result<T, ControlError> {
    let config = match context::node_config(node.config.as_deref()) {
        Ok((path, _)) => path,
        Err(e) => {
            return Err(ControlError::Connect {
                path: "(no node configuration)".into(),
                source: std::io::Error::other(format!("{e:#}")),
            })
        }
    };
    let (socket, token_path) = match NodeConfig::load(&config) {
        Ok(cfg) => (cfg.control_socket(), cfg.token_path()),
        Err(e) => {
            return Err(ControlError::Connect {
                path: config.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            })
        }
    };
    let token = control::read_token(&token_path)?;
    control::call_view(&socket, &token, request, Duration::from_secs(60))
}

fn parse_hex32(s: &str) -> anyhow::Result<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out)
        .with_context(|| format!("{s:?} is not a 64-character hex key or id"))?;
    Ok(out)
}

/// Has the node import a payload file; returns its content id and size.
fn import(node: &NodeArgs, path: &Path) -> anyhow::Result<(ContentId, u64)> {
    let abs = std::fs::canonicalize(path).with_context(|| format!("opening {}", path.display()))?;
    let v: control::ContentBrief =
        call(node, Request::Import { path: abs.to_string_lossy().into_owned() })?;
    Ok((ContentId(parse_hex32(&v.content_id)?), v.size_bytes))
}
