//! `patchmesh admin role add|set|remove` and `patchmesh admin show`: scoped admin roles in the
//! root-signed admin set.

use crate::{call, keys, parse_hex32, parse_label, AdminSigning, NodeArgs};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use patchmesh_node::control::{self, Request};
use patchmesh_protocol::crypto::{decode, encode, Envelope};
use patchmesh_protocol::ids::{KeyId, SiteId};
use patchmesh_protocol::mesh;
use patchmesh_protocol::trust::{AdminSet, Genesis, Permission, Role, Scope};

/// The role every admin holds when a mesh that had none gets its first role.
pub const DEFAULT_ROLE: &str = "admins";

/// `patchmesh admin role …`
#[derive(Subcommand)]
pub enum RoleCmd {
    /// Add a role. Its keys become admins if they are not yet. The first role of a mesh also
    /// makes a role `admins` with every permission everywhere for the other current admins (so
    /// nothing they could do before is lost).
    Add(RoleArgs),
    /// Replace a role's keys, permissions, scope and threshold.
    Set(RoleArgs),
    /// Remove a role (its keys stay admins with whatever other roles give them).
    Remove {
        /// The role.
        name: String,
        #[command(flatten)]
        signing: AdminSigning,
    },
}

/// A role as given on the command line.
#[derive(Args)]
pub struct RoleArgs {
    /// Its name.
    name: String,
    /// A public key in the role (repeatable).
    #[arg(long = "key", required = true)]
    keys: Vec<String>,
    /// A permission: publish, approve, control, admit, exceptions, intel, integrations
    /// (repeatable; `all` for every one).
    #[arg(long = "permission", required = true)]
    permissions: Vec<String>,
    /// A site the role may act in (repeatable; none: every site).
    #[arg(long = "site")]
    sites: Vec<String>,
    /// A label the nodes it acts on must carry (repeatable), e.g. `--label ring=canary`.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Distinct approving keys a rollout this role publishes needs (0: the mesh's rule).
    #[arg(long, default_value_t = 0)]
    publish_approvals: u8,
    #[command(flatten)]
    signing: AdminSigning,
}

impl RoleArgs {
    fn role(&self) -> anyhow::Result<Role> {
        let mut permissions = Vec::new();
        for p in &self.permissions {
            if p == "all" {
                permissions.extend(Permission::ALL);
            } else {
                permissions.push(p.parse::<Permission>().map_err(anyhow::Error::msg)?);
            }
        }
        permissions.sort();
        permissions.dedup();
        let keys = self
            .keys
            .iter()
            .map(|k| Ok(KeyId(parse_hex32(k).with_context(|| format!("--key {k}"))?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Role {
            name: self.name.clone(),
            keys,
            permissions,
            scope: Scope {
                sites: self.sites.iter().map(|s| SiteId::from(s.as_str())).collect(),
                labels: self.labels.iter().cloned().collect(),
            },
            publish_approvals: self.publish_approvals,
        })
    }
}

/// The admin set the node holds now.
pub fn current(node: &NodeArgs) -> anyhow::Result<(AdminSet, control::AdminStateView)> {
    let state: control::AdminStateView = call(node, Request::AdminState)?;
    let set = match &state.latest_admin_set {
        Some(h) => AdminSet::open(&decode::<Envelope>("admin set", &hex::decode(h)?, 1 << 20)?)?,
        None => {
            let g: Genesis = decode::<Envelope>("genesis", &hex::decode(&state.genesis)?, 1 << 20)?
                .open("genesis")?;
            g.initial_admin_set()
        }
    };
    Ok((set, state))
}

pub fn run(cmd: RoleCmd) -> anyhow::Result<()> {
    let (signing, edit): (&AdminSigning, Box<dyn Fn(&mut AdminSet) -> anyhow::Result<String>>) =
        match &cmd {
            RoleCmd::Add(a) => {
                let role = a.role()?;
                (
                    &a.signing,
                    Box::new(move |set: &mut AdminSet| {
                        if set.roles.iter().any(|r| r.name == role.name) {
                            bail!("role {} exists; `admin role set` changes it", role.name);
                        }
                        if set.roles.is_empty() {
                            let others: Vec<KeyId> = set
                                .admins
                                .iter()
                                .filter(|k| !role.keys.contains(k))
                                .copied()
                                .collect();
                            if !others.is_empty() {
                                if role.name == DEFAULT_ROLE {
                                    bail!("{DEFAULT_ROLE} is the name kept for the current admins");
                                }
                                set.roles.push(Role {
                                    name: DEFAULT_ROLE.into(),
                                    keys: others,
                                    permissions: Permission::ALL.to_vec(),
                                    scope: Scope::default(),
                                    publish_approvals: 0,
                                });
                            }
                        }
                        add_admins(set, &role.keys);
                        set.roles.push(role.clone());
                        Ok(format!("role {} added", role.name))
                    }),
                )
            }
            RoleCmd::Set(a) => {
                let role = a.role()?;
                (
                    &a.signing,
                    Box::new(move |set: &mut AdminSet| {
                        let Some(slot) = set.roles.iter_mut().find(|r| r.name == role.name) else {
                            bail!("no role {}; `admin role add` makes it", role.name);
                        };
                        *slot = role.clone();
                        add_admins(set, &role.keys);
                        Ok(format!("role {} changed", role.name))
                    }),
                )
            }
            RoleCmd::Remove { name, signing } => (
                signing,
                Box::new(move |set: &mut AdminSet| {
                    let before = set.roles.len();
                    set.roles.retain(|r| r.name != *name);
                    if set.roles.len() == before {
                        bail!("no role {name}");
                    }
                    if set.roles.is_empty() {
                        bail!("the last role cannot be removed (a mesh with roles keeps at least one)");
                    }
                    Ok(format!("role {name} removed"))
                }),
            ),
        };
    let (current, _) = current(&signing.node)?;
    let mut next = current.clone();
    let what = edit(&mut next)?;
    let next = mesh::next_admin_set_with(&current, next.admins, vec![], next.roles);
    if crate::setup::dry_run_print(&next) {
        return Ok(());
    }
    if let RoleCmd::Remove { name, .. } = &cmd {
        crate::confirm(
            signing.yes,
            &format!("remove role {name}: its keys lose what it granted, everywhere"),
        )?;
    }
    let roots = keys::AdminKey::load_all(&signing.roots.root_keys)?;
    let mut env = next.unsigned();
    for r in &roots {
        r.cosign(&mut env)?;
    }
    let result: control::SubmittedView =
        call(&signing.node, Request::AdminSet { envelope: hex::encode(encode(&env)) })?;
    if signing.json {
        outln!("{}", crate::output::json(&result));
    } else {
        outln!("{what}; admin set version {} applied and spreading", result.trust_version);
    }
    Ok(())
}

fn add_admins(set: &mut AdminSet, keys: &[KeyId]) {
    for k in keys {
        if !set.admins.contains(k) {
            set.admins.push(*k);
        }
    }
}

/// `patchmesh admin show`.
pub fn show(node: &NodeArgs, json: bool) -> anyhow::Result<()> {
    let (set, _) = current(node)?;
    let v = control::AdminShowOutput {
        version: set.version,
        admins: set.admins.iter().map(|k| k.to_hex()).collect(),
        revoked: set.revoked.iter().map(|r| r.key.to_hex()).collect(),
        root_threshold: set.root_threshold,
        root_keys: set.root_keys.iter().map(|k| k.to_hex()).collect(),
        approval_threshold: set.approval_threshold,
        approval_above_nodes: set.approval_above_nodes,
        roles: set
            .roles
            .iter()
            .map(|r| control::AdminRoleOutput {
                name: r.name.clone(),
                keys: r.keys.iter().map(|k| k.to_hex()).collect(),
                permissions: r.permissions.iter().map(|p| p.name().to_string()).collect(),
                sites: r.scope.sites.iter().map(|s| s.0.to_string()).collect(),
                labels: r.scope.labels.clone(),
                publish_approvals: r.publish_approvals,
            })
            .collect(),
    };
    if json {
        outln!("{}", crate::output::json(&v));
        return Ok(());
    }
    outln!(
        "admin set version {} (roots: {} of {})",
        v.version,
        v.root_threshold,
        v.root_keys.len()
    );
    outln!(
        "approvals: {} admins for rollouts that may reach more than {} nodes",
        v.approval_threshold,
        v.approval_above_nodes
    );
    for a in &v.admins {
        outln!("  admin   {a}");
    }
    for r in &v.revoked {
        outln!("  revoked {r}");
    }
    if v.roles.is_empty() {
        outln!("no roles: every admin may do everything everywhere");
    }
    for r in &v.roles {
        let scope = match (r.sites.is_empty(), r.labels.is_empty()) {
            (true, true) => "everywhere".to_string(),
            _ => {
                let mut parts = Vec::new();
                if !r.sites.is_empty() {
                    parts.push(format!("sites {}", r.sites.join(", ")));
                }
                if !r.labels.is_empty() {
                    let l: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    parts.push(format!("labels {}", l.join(", ")));
                }
                parts.join("; ")
            }
        };
        outln!("role {}: {} — {scope}", r.name, r.permissions.join(", "));
        if r.publish_approvals > 0 {
            outln!("  its rollouts need {} approving keys", r.publish_approvals);
        }
        for k in &r.keys {
            outln!("  key {k}");
        }
    }
    Ok(())
}
