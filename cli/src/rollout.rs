//! `patchmesh rollout …`: create, approve, pause, resume, abort and watch rollouts.
//!
//! Every command is a catalog change the admin signs here (keys never reach the node); the
//! node verifies it like a peer's and spreads it. `status` reads the node's own view: its
//! verdict and per-ring counts (its site from records, other sites from signed summaries,
//! failures from the fleet-wide reports).

use crate::{call, publish, NodeArgs};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use patchmesh_node::control::{
    Request, RolloutCreateOutput, RolloutStatusOutput, RolloutView, RolloutsView,
};
use patchmesh_protocol::catalog::{
    AdminCommand, CatalogEntry, CommandAction, Gate, Override, RingSpec, RolloutEntry, Selector,
};
use patchmesh_protocol::ids::{ContentId, KeyId, Millis, RolloutId, SiteId};
use patchmesh_protocol::rollout::{parse_predicate, parse_window, Control};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand)]
pub enum RolloutCmd {
    /// Sign and publish a rollout of a patch through rings.
    Create(Box<CreateArgs>),
    /// Approve a rollout (counts towards the mesh's k-of-n approval threshold).
    Approve(CommandArgs),
    /// Stop starting new installs of a rollout (installs under way finish).
    Pause(CommandArgs),
    /// Undo a pause; with --lift-halt or --lift-abort also lift a halt or an abort.
    Resume {
        #[command(flatten)]
        cmd: CommandArgs,
        /// Accept the failures that halted the rollout (the current halt's ring and count);
        /// further failures halt it again.
        #[arg(long)]
        lift_halt: bool,
        /// Lift every abort of this rollout issued so far.
        #[arg(long)]
        lift_abort: bool,
    },
    /// Stop a rollout for good and roll back every install of it.
    Abort(CommandArgs),
    /// Rehearse a rollout before creating it: the same options as `create`, run by the
    /// simulator on the fleet this node knows (per-ring timings, window waits, WAN bytes, and
    /// with --fail-fraction the halt), after the checks `create` runs. Signs nothing.
    Plan(Box<crate::plan::PlanArgs>),
    /// Show rollouts as this node sees them: per-ring counts, gates, halts, its own install.
    Status {
        /// Only this rollout (id or unique prefix).
        id: Option<String>,
        #[command(flatten)]
        node: NodeArgs,
        /// Print JSON once.
        #[arg(long)]
        json: bool,
        /// Refresh until every ring is done, the rollout stops, or Ctrl-C (default on a terminal).
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    /// Content id of the patch (from `patchmesh patch add`).
    #[arg(long)]
    pub patch: Option<String>,
    /// A ring: NAME:PERCENT or NAME:PERCENT:KEY=VALUE (label ring), in order; the first is the
    /// canary ring. PERCENT is cumulative.
    #[arg(long = "ring")]
    pub rings: Vec<String>,
    /// Succeeded members a ring needs before the next starts, as a fraction of its targeted.
    #[arg(long, default_value_t = 0.9)]
    min_success: f64,
    /// More failed members than this in a ring halts the rollout.
    #[arg(long, default_value_t = 0)]
    max_failures: u32,
    /// Failed fraction of a ring that blocks promotion (and halts once all have reported).
    #[arg(long, default_value_t = 0.0)]
    max_failure_fraction: f64,
    /// Soak after a member's install verified, re-verifying, before it counts as succeeded.
    #[arg(long, default_value_t = 60)]
    soak_s: u64,
    /// Re-verification period during the soak.
    #[arg(long, default_value_t = 15)]
    recheck_s: u64,
    /// Succeeded members a ring needs at least.
    #[arg(long, default_value_t = 1)]
    min_reports: u32,
    /// Maintenance window in each node's own time zone, e.g. "mon-fri 22:00-04:00" (repeat).
    /// "auto": each node installs in its own quiet hours, learnt from its activity (within
    /// any other windows given); a node with under a week of history uses the other windows,
    /// or with none, 01:00-05:00 local.
    #[arg(long = "window")]
    pub windows: Vec<String>,
    /// After this time (RFC 3339) windows no longer hold installs back.
    #[arg(long)]
    pub deadline: Option<String>,
    /// Installs running at once in one site.
    #[arg(long, default_value_t = 1)]
    max_concurrent_per_site: u32,
    /// The most nodes the rollout may reach (above the mesh's limit it needs approvals).
    #[arg(long)]
    max_targets: Option<u32>,
    /// Leave installs in place when the rollout halts (aborts still roll back).
    #[arg(long)]
    no_rollback_on_halt: bool,
    /// Let the people at a machine put its install off this many times (`patchmesh defer`),
    /// never past --deadline. Machines tell logged-in users before installing when their
    /// configuration has `[notice]`.
    #[arg(long, default_value_t = 0)]
    allow_deferrals: u8,
    /// How long one deferral puts the install off (90m, 4h, 1d).
    #[arg(long, default_value = "1h", value_parser = parse_span_ms)]
    defer_each: u64,
    /// Target only nodes with this certificate label KEY=VALUE (repeat).
    #[arg(long = "target-label")]
    target_labels: Vec<String>,
    /// Target only these sites (repeat).
    #[arg(long = "target-site")]
    target_sites: Vec<String>,
    /// Target only nodes whose OS name contains this.
    #[arg(long)]
    target_os: Option<String>,
    /// Target only nodes where a package predicate holds, e.g. "openssl < 3.0.11" (repeat).
    #[arg(long = "target-package")]
    pub target_packages: Vec<String>,
    /// Refuse when a site's WAN link would carry more than this many bytes for the payload.
    #[arg(long)]
    pub max_site_wan_bytes: Option<u64>,
    /// Go ahead despite problems the checks before signing find (no node targeted, a ring
    /// whose gate can never pass, a window that never opens, a WAN budget overrun).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub sign: Signer,
}

/// Who signs a rollout change, and where it is published.
#[derive(Args)]
pub struct Signer {
    #[command(flatten)]
    pub dry_run: crate::DryRun,
    /// Admin key to sign with (default: PATCHMESH_ADMIN_KEY, else the context's).
    #[arg(long)]
    pub admin_key: Option<PathBuf>,
    #[command(flatten)]
    pub node: NodeArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct CommandArgs {
    /// Rollout id (or unique prefix).
    id: String,
    /// Go ahead without asking (abort asks on a terminal, and is refused without one unless
    /// this is given).
    #[arg(long)]
    yes: bool,
    #[command(flatten)]
    sign: Signer,
}

fn permille(f: f64, what: &str) -> anyhow::Result<u16> {
    if !(0.0..=1.0).contains(&f) {
        bail!("{what} must be a fraction between 0 and 1, got {f}");
    }
    Ok((f * 1000.0).round() as u16)
}

fn label(s: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s.split_once('=').with_context(|| format!("{s:?} is not KEY=VALUE"))?;
    Ok((k.to_string(), v.to_string()))
}

/// Builds a rollout entry from the command line; every bound is checked before signing.
pub fn build(a: &CreateArgs, now: Millis) -> anyhow::Result<RolloutEntry> {
    let patch = a.patch.as_deref().context("--patch is required")?;
    let content = ContentId::from_hex(patch.trim()).context("--patch is not a content id")?;
    if a.rings.is_empty() {
        bail!("give at least one --ring NAME:PERCENT (the first is the canary ring)");
    }
    let gate = Gate {
        min_success_permille: permille(a.min_success, "--min-success")?,
        max_failures: a.max_failures,
        max_failure_permille: permille(a.max_failure_fraction, "--max-failure-fraction")?,
        min_soak_ms: a.soak_s * 1000,
        min_reports: a.min_reports,
    };
    let mut rings = Vec::new();
    for r in &a.rings {
        let mut parts = r.splitn(3, ':');
        let name = parts.next().unwrap_or_default().to_string();
        let percent: u8 = parts
            .next()
            .with_context(|| format!("ring {r:?} is not NAME:PERCENT[:KEY=VALUE]"))?
            .parse()
            .with_context(|| format!("ring {r:?}: percent is 0..=100"))?;
        let labels = match parts.next() {
            Some(l) => [label(l)?].into_iter().collect(),
            None => BTreeMap::new(),
        };
        rings.push(RingSpec { name, percent, labels, gate: gate.clone() });
    }
    let deadline = match &a.deadline {
        Some(d) => {
            let ts: jiff::Timestamp =
                d.parse().with_context(|| format!("--deadline {d:?} is not RFC 3339"))?;
            Some(Millis(ts.as_millisecond().max(0) as u64))
        }
        None => None,
    };
    let mut id = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
    let rollout = RolloutEntry {
        id: RolloutId(id),
        content_id: content,
        target: Selector {
            labels: a.target_labels.iter().map(|l| label(l)).collect::<anyhow::Result<_>>()?,
            sites: a.target_sites.iter().map(|s| SiteId::from(s.as_str())).collect(),
            os: a.target_os.clone(),
            packages: a
                .target_packages
                .iter()
                .map(|p| parse_predicate(p))
                .collect::<Result<_, _>>()?,
        },
        rings,
        windows: a
            .windows
            .iter()
            .filter(|w| w.trim() != "auto")
            .map(|w| parse_window(w))
            .collect::<Result<_, _>>()?,
        deadline,
        max_concurrent_per_site: a.max_concurrent_per_site,
        max_targets: a.max_targets.unwrap_or(u32::MAX),
        rollback_on_halt: !a.no_rollback_on_halt,
        recheck_ms: a.recheck_s.max(1) * 1000,
        created_at: now,
        auto_window: a.windows.iter().any(|w| w.trim() == "auto"),
    };
    rollout.validate()?;
    Ok(rollout)
}

impl CreateArgs {
    /// The rings as given.
    pub fn rings(&self) -> &[String] {
        &self.rings
    }
}

/// Builds, checks and publishes a rollout.
pub fn create(
    a: &CreateArgs,
    admin: &crate::keys::AdminKey,
    now: Millis,
) -> anyhow::Result<(RolloutEntry, patchmesh_node::control::SubmittedView)> {
    let rollout = build(a, now)?;
    // The checks a rehearsal runs, before anything is signed (`rollout plan` for the rest).
    let (fleet, size) = crate::plan::fleet_and_size(&a.sign.node, &rollout)?;
    let findings = crate::plan::checks(&fleet, &rollout, size, a.max_site_wan_bytes, now);
    crate::plan::enforce(&findings, a.force)?;
    let entry = CatalogEntry::Rollout(rollout.clone());
    let mut edits = vec![(entry.key(), Some(entry))];
    if a.allow_deferrals > 0 {
        let d = patchmesh_protocol::rollout::policy::Deferrals {
            rollout: rollout.id,
            max: a.allow_deferrals,
            each_ms: a.defer_each,
        };
        d.validate()?;
        edits.push((d.key(), Some(CatalogEntry::Deferrals(d))));
    }
    let result = publish(&a.sign.node, admin, edits)?;
    Ok((rollout, result))
}

/// Finds one rollout in the node's view by id or unique prefix.
fn find(node: &NodeArgs, id: &str) -> anyhow::Result<RolloutView> {
    let v: RolloutsView = call(node, Request::Rollouts)?;
    let mut matches: Vec<RolloutView> =
        v.rollouts.into_iter().filter(|r| r.id.starts_with(id.trim())).collect();
    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 => bail!("no rollout {id:?} in this node's catalog (yet)"),
        n => bail!("{id:?} matches {n} rollouts; give more of the id"),
    }
}

fn command(c: &CommandArgs, action: CommandAction, now: Millis) -> anyhow::Result<()> {
    let r = find(&c.sign.node, &c.id)?;
    let rollout = RolloutId::from_hex(&r.id).context("rollout id")?;
    let admin = crate::keys::AdminKey::resolve(c.sign.admin_key.as_deref())?;
    let cmd = AdminCommand { rollout, action, issued_at: now, admin: KeyId(admin.public().0) };
    let entry = CatalogEntry::Command(cmd);
    let result = publish(&c.sign.node, &admin, vec![(entry.key(), Some(entry))])?;
    if c.sign.json {
        outln!("{}", crate::output::json(&result));
    } else {
        outln!("signed and published; spreading to the mesh");
    }
    Ok(())
}

pub fn run(cmd: RolloutCmd, now: Millis) -> anyhow::Result<()> {
    match cmd {
        RolloutCmd::Create(a) => {
            let admin = crate::keys::AdminKey::resolve(a.sign.admin_key.as_deref())?;
            let (rollout, result) = create(&a, &admin, now)?;
            if a.sign.json {
                let v = RolloutCreateOutput { rollout: rollout.id.to_string(), published: result };
                outln!("{}", crate::output::json(&v));
            } else {
                outln!("rollout {} published", rollout.id);
            }
            Ok(())
        }
        RolloutCmd::Plan(a) => crate::plan::run(*a, now),
        RolloutCmd::Approve(c) => {
            let r = find(&c.sign.node, &c.id)?;
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&r.hash, &mut hash).context("the node gave no rollout hash")?;
            command(&c, CommandAction::Approve { rollout_hash: hash }, now)
        }
        RolloutCmd::Pause(c) => command(&c, CommandAction::Pause, now),
        RolloutCmd::Abort(c) => {
            crate::confirm(
                c.yes,
                &format!("abort rollout {}: every node that installed it rolls back", c.id),
            )?;
            command(&c, CommandAction::Abort, now)
        }
        RolloutCmd::Resume { cmd: c, lift_halt, lift_abort } => {
            let r = find(&c.sign.node, &c.id)?;
            let mut overrides = Vec::new();
            if lift_halt {
                let Some(Control::Halted { ring, failures }) = r.control else {
                    bail!("rollout is not halted here (state {})", r.state());
                };
                overrides.push(Override::Halt { ring, failures });
            }
            if lift_abort {
                for c in &r.commands {
                    if c.action == CommandAction::Abort {
                        overrides.push(Override::Abort(c.key.clone()));
                    }
                }
            }
            if overrides.is_empty() {
                return command(&c, CommandAction::Resume { overrides: None }, now);
            }
            for (i, o) in overrides.into_iter().enumerate() {
                // Distinct issue times keep each resume a distinct signed command.
                command(
                    &c,
                    CommandAction::Resume { overrides: Some(o) },
                    Millis(now.0 + i as u64),
                )?;
            }
            Ok(())
        }
        RolloutCmd::Status { id, node, json, watch } => status(&node, id.as_deref(), json, watch),
    }
}

fn status(node: &NodeArgs, id: Option<&str>, json: bool, watch: bool) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let pick = |v: RolloutsView| -> Vec<RolloutView> {
        v.rollouts.into_iter().filter(|r| id.is_none_or(|p| r.id.starts_with(p))).collect()
    };
    let v: RolloutsView = call(node, Request::Rollouts)?;
    if json {
        let (node, site) = (v.node.clone(), v.site.clone());
        let out = RolloutStatusOutput { node, site, rollouts: pick(v) };
        outln!("{}", crate::output::json(&out));
        return Ok(());
    }
    let live = watch || std::io::stdout().is_terminal();
    if !live {
        for r in pick(v) {
            outln!("{}", crate::output::rollout_text(&r));
        }
        return Ok(());
    }
    let bars = crate::output::RolloutBars::new();
    let mut v = v;
    loop {
        let rs = pick(v);
        if rs.is_empty() {
            outln!("no rollouts in this node's catalog");
            return Ok(());
        }
        bars.update(&rs);
        if rs.iter().all(crate::output::rollout_settled) {
            bars.finish();
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(1000));
        v = call(node, Request::Rollouts)?;
    }
}

/// `90m`, `4h`, `1d`, `300s` in milliseconds.
pub(crate) fn parse_span_ms(text: &str) -> Result<u64, String> {
    for (suffix, unit_ms) in [("d", 86_400_000u64), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if let Some(n) = text.strip_suffix(suffix) {
            if let Ok(n) = n.parse::<u64>() {
                return Ok(n.saturating_mul(unit_ms));
            }
        }
    }
    Err(format!("{text:?}: expected a duration such as 90m, 4h or 1d"))
}
