//! `patchmesh integrations set|status|dlq`.

use anyhow::Context;
use clap::Subcommand;
use patchmesh_node::control::{IntegrationsView, Request};
use patchmesh_node::integrations::Item;
use patchmesh_protocol::catalog::CatalogEntry;
use patchmesh_protocol::integrations::{IntegrationPolicy, POLICY_KEY};
use std::path::PathBuf;

/// `patchmesh integrations …`
#[derive(Subcommand)]
pub enum IntegrationsCmd {
    /// Sign and publish the integration policy (a TOML file naming sinks: kind, target,
    /// events, which nodes may emit; never secrets, which stay in each emitting node's
    /// `integration_credentials` file).
    Set {
        /// The policy file.
        file: PathBuf,
        /// The admin key that signs it.
        #[arg(long)]
        admin_key: Option<PathBuf>,
        #[command(flatten)]
        node: crate::NodeArgs,
        #[command(flatten)]
        dry_run: crate::DryRun,
    },
    /// The policy, the election per sink, and this node's outbox.
    Status {
        #[command(flatten)]
        node: crate::NodeArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The dead-letter list.
    #[command(subcommand)]
    Dlq(DlqCmd),
}

/// `patchmesh integrations dlq …`
#[derive(Subcommand)]
pub enum DlqCmd {
    /// Events this node gave up on, and why.
    List {
        #[command(flatten)]
        node: crate::NodeArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Queue them again (all, or one by event id prefix).
    Replay {
        /// Event id (or prefix).
        id: Option<String>,
        #[command(flatten)]
        node: crate::NodeArgs,
    },
}

/// Runs `patchmesh integrations …`.
pub fn run(cmd: IntegrationsCmd) -> anyhow::Result<()> {
    match cmd {
        IntegrationsCmd::Set { file, admin_key, node, .. } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let policy: IntegrationPolicy = toml::from_str(&text)
                .with_context(|| format!("{} is not an integration policy", file.display()))?;
            policy
                .validate()
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("{}", file.display()))?;
            let sinks = policy.sinks.len();
            let admin = crate::keys::AdminKey::resolve(admin_key.as_deref())?;
            let v = crate::publish(
                &node,
                &admin,
                vec![(POLICY_KEY.to_string(), Some(CatalogEntry::Integrations(policy)))],
            )?;
            println!("integration policy published ({sinks} sinks): change {}", v.id);
            Ok(())
        }
        IntegrationsCmd::Status { node, json } => {
            let v: IntegrationsView = crate::call(&node, Request::IntegrationsStatus)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            if v.policy.is_none() {
                println!("no integration policy in the catalog");
            }
            for s in &v.sinks {
                println!(
                    "sink {:<16} {} emitter(s) live here{}; fleet-wide events from site(s) {}{}",
                    s.name,
                    s.emitters.len(),
                    if s.this_node_emits { " (this node is one)" } else { "" },
                    s.sites.join(", "),
                    s.disabled.as_ref().map_or(String::new(), |d| format!("; DISABLED: {d}"))
                );
            }
            println!(
                "outbox: {} pending (elected here or on standby), {} delivered, {} dead-lettered",
                v.pending.len(),
                v.delivered,
                v.dead
            );
            for i in v.pending.iter().take(20) {
                print_item(i);
            }
            Ok(())
        }
        IntegrationsCmd::Dlq(DlqCmd::List { node, json }) => {
            let v: Vec<Item> = crate::call(&node, Request::DlqList)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if v.is_empty() {
                println!("the dead-letter list is empty");
            } else {
                v.iter().for_each(print_item);
            }
            Ok(())
        }
        IntegrationsCmd::Dlq(DlqCmd::Replay { id, node }) => {
            let v: patchmesh_node::control::ReplayView =
                crate::call(&node, Request::DlqReplay { id })?;
            println!("{} event(s) queued again", v.replayed);
            Ok(())
        }
    }
}

fn print_item(i: &Item) {
    println!(
        "  {} → {:<12} {:<18} attempts {}{}  {}",
        &i.event.id[..12.min(i.event.id.len())],
        i.sink,
        format!("{:?}", i.event.kind),
        i.attempts,
        i.last_error.as_ref().map_or(String::new(), |e| format!("  last error: {e}")),
        i.event.summary
    );
}
