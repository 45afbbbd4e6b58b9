//! `patchmesh dashboard` (a one-time login link to the node's dashboard) and `patchmesh
//! proposal sign` (an admin signs a change prepared in the dashboard).

use crate::{call, publish, NodeArgs};
use anyhow::bail;
use clap::Subcommand;
use patchmesh_node::control::Request;
use patchmesh_node::dashboard::{LoginView, ProposalView};
use patchmesh_protocol::ids::KeyId;
use std::path::PathBuf;

/// Prints a one-time login URL (and opens it with `--open`).
pub fn login(node: &NodeArgs, open: bool, json: bool) -> anyhow::Result<()> {
    let v: LoginView = call(node, Request::DashboardLogin)?;
    if json {
        outln!("{}", crate::output::json(&v));
    } else {
        outln!("{}", v.url);
        eprintln!(
            "patchmesh: this link logs one browser in; it works once, within {} s",
            v.valid_s
        );
    }
    if open {
        let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
        if let Err(e) = std::process::Command::new(opener).arg(&v.url).status() {
            eprintln!("patchmesh: could not start {opener} ({e}); open the link yourself");
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum ProposalCmd {
    /// Show a proposal made in a node's dashboard, check its digest, sign it and publish it.
    Sign {
        /// The proposal id (from the dashboard's proposal page).
        id: String,
        /// The digest the page shows: the command refuses a proposal whose digest differs.
        #[arg(long)]
        digest: String,
        /// Admin key to sign with (default: PATCHMESH_ADMIN_KEY, else the context's).
        #[arg(long)]
        admin_key: Option<PathBuf>,
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        dry_run: crate::DryRun,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a proposal without signing it.
    Show {
        /// The proposal id.
        id: String,
        #[command(flatten)]
        node: NodeArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Fetches a proposal and checks that its digest is the one computed here from its content.
fn fetch(node: &NodeArgs, id: &str) -> anyhow::Result<ProposalView> {
    let v: ProposalView = call(node, Request::Proposal { id: id.to_string() })?;
    let computed = v.proposal.digest();
    if computed != v.digest {
        bail!("the node's digest {} does not match the proposal's content ({computed})", v.digest);
    }
    if v.proposal.id != id {
        bail!("the node answered with proposal {} instead of {id}", v.proposal.id);
    }
    Ok(v)
}

pub fn run(cmd: ProposalCmd) -> anyhow::Result<()> {
    match cmd {
        ProposalCmd::Show { id, node, json } => {
            let v = fetch(&node, &id)?;
            if json {
                outln!("{}", crate::output::json(&v));
            } else {
                print_summary(&v);
            }
            Ok(())
        }
        ProposalCmd::Sign { id, digest, admin_key, node, json, .. } => {
            let v = fetch(&node, &id)?;
            if !v.digest.eq_ignore_ascii_case(digest.trim()) {
                bail!(
                    "proposal {id} has digest {} but --digest says {}: it is not the proposal \
                     you read; nothing signed",
                    v.digest,
                    digest.trim()
                );
            }
            if !json {
                print_summary(&v);
            }
            let admin = crate::keys::AdminKey::resolve(admin_key.as_deref())?;
            let edits = v.proposal.edits(KeyId(admin.public().0));
            let result = publish(&node, &admin, edits)?;
            if json {
                outln!("{}", crate::output::json(&result));
            } else {
                outln!(
                    "signed and published; spreading to the mesh (catalog {})",
                    &result.catalog_state[..16]
                );
            }
            Ok(())
        }
    }
}

fn print_summary(v: &ProposalView) {
    outln!("proposal {} (digest {})", v.proposal.id, v.digest);
    for line in &v.summary {
        outln!("  - {line}");
    }
}
