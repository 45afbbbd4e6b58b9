//! Proposals: a change to signed state that the dashboard prepares and an admin signs with the
//! CLI (`patchmesh proposal sign ID --digest D`). The digest covers the canonical encoding of
//! the change, so the CLI refuses a proposal other than the one the admin read on the page.

use patchmesh_protocol::catalog::{AdminCommand, CatalogEntry, CommandAction, Override};
use patchmesh_protocol::ids::{KeyId, Millis, RolloutId};
use serde::{Deserialize, Serialize};

/// Domain separation of the digest.
const DIGEST_CONTEXT: &str = "patchmesh proposal v1";

/// What a proposal changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProposalChange {
    /// An admin command on a rollout; the signing admin's key id is filled in when signed.
    Command {
        /// The rollout.
        rollout: RolloutId,
        /// Pause, resume (optionally lifting a halt), abort or approve.
        action: CommandAction,
        /// Its issue time.
        issued_at: Millis,
    },
    /// A catalog entry to add as it is (a rollout or an exception).
    Entry {
        /// The entry.
        entry: CatalogEntry,
    },
}

/// A proposal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Random id.
    pub id: String,
    /// The node whose dashboard made it (hex).
    pub node: String,
    /// When it was made.
    pub created_at: Millis,
    /// The changes, in order.
    pub changes: Vec<ProposalChange>,
}

/// A proposal with its digest and summary, as the page and the CLI show it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProposalView {
    /// The proposal.
    pub proposal: Proposal,
    /// BLAKE3 of its canonical encoding (hex).
    pub digest: String,
    /// What it does, one line per change.
    pub summary: Vec<String>,
}

impl Proposal {
    /// BLAKE3 (keyed by context) over the postcard encoding of the proposal.
    pub fn digest(&self) -> String {
        let bytes = patchmesh_protocol::crypto::encode(self);
        let mut h = blake3::Hasher::new_derive_key(DIGEST_CONTEXT);
        h.update(&bytes);
        h.finalize().to_hex().to_string()
    }

    /// One line per change, in words.
    pub fn summary(&self) -> Vec<String> {
        self.changes.iter().map(describe).collect()
    }

    /// Its view.
    pub fn view(self) -> ProposalView {
        ProposalView { digest: self.digest(), summary: self.summary(), proposal: self }
    }

    /// The catalog edits an admin with key `admin` signs.
    pub fn edits(&self, admin: KeyId) -> Vec<(String, Option<CatalogEntry>)> {
        self.changes
            .iter()
            .map(|c| {
                let entry = match c {
                    ProposalChange::Command { rollout, action, issued_at } => {
                        CatalogEntry::Command(AdminCommand {
                            rollout: *rollout,
                            action: action.clone(),
                            issued_at: *issued_at,
                            admin,
                        })
                    }
                    ProposalChange::Entry { entry } => entry.clone(),
                };
                (entry.key(), Some(entry))
            })
            .collect()
    }
}

fn describe(c: &ProposalChange) -> String {
    match c {
        ProposalChange::Command { rollout, action, .. } => {
            let r = rollout.to_string();
            let r = &r[..r.len().min(12)];
            match action {
                CommandAction::Pause => format!("pause rollout {r} (installs under way finish)"),
                CommandAction::Abort => {
                    format!("abort rollout {r} for good and roll back every install of it")
                }
                CommandAction::Approve { .. } => format!("approve rollout {r}"),
                CommandAction::Resume { overrides: None } => format!("resume rollout {r}"),
                CommandAction::Resume { overrides: Some(Override::Halt { ring, failures }) } => {
                    format!(
                        "resume rollout {r}, accepting the {failures} failure(s) that halted \
                         ring {ring} (further failures halt it again)"
                    )
                }
                CommandAction::Resume { overrides: Some(Override::Abort(key)) } => {
                    format!("resume rollout {r}, lifting the abort {key}")
                }
            }
        }
        ProposalChange::Entry { entry: CatalogEntry::Exception(e) } => format!(
            "add a {:?} exception for {} until {} ({}): {}",
            e.kind,
            e.cve,
            crate::report::date(e.expires_at.0),
            scope(&e.target),
            e.justification
        ),
        ProposalChange::Entry { entry: CatalogEntry::Rollout(r) } => format!(
            "create rollout {} of payload {} through rings {}",
            &r.id.to_string()[..12],
            &r.content_id.to_string()[..12],
            r.rings
                .iter()
                .map(|g| format!("{} {}%", g.name, g.percent))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        ProposalChange::Entry { entry } => format!("set catalog entry {}", entry.key()),
    }
}

fn scope(s: &patchmesh_protocol::catalog::Selector) -> String {
    let mut parts = Vec::new();
    if !s.sites.is_empty() {
        parts.push(format!(
            "sites {}",
            s.sites.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
        ));
    }
    for (k, v) in &s.labels {
        parts.push(format!("{k}={v}"));
    }
    if parts.is_empty() {
        "every node".into()
    } else {
        parts.join(", ")
    }
}
