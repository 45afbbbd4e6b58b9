//! Enrolment vouchers: `patchmesh voucher create|list|revoke`, `patchmesh node enroll` on a new
//! machine, and `patchmesh admit --pending` for vouchers that need an admin's approval.

use crate::{call, keys, parse_label, publish, NodeArgs};
use anyhow::{bail, Context};
use base64::Engine as _;
use clap::{Args, Subcommand};
use patchmesh_node::control::{self, CatalogEntryView, Request, VoucherView};
use patchmesh_node::files;
use patchmesh_protocol::catalog::CatalogEntry;
use patchmesh_protocol::crypto::{decode, encode, Domain, Ed25519, Envelope};
use patchmesh_protocol::enrol::{ReservedLabels, Voucher, VoucherEntry, TOKEN_PREFIX};
use patchmesh_protocol::ids::{Millis, NodeId, SiteId};
use patchmesh_protocol::trust::Genesis;
use rand::RngCore;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A token is far smaller than this.
const TOKEN_BYTES_MAX: usize = 16 * 1024;

/// `patchmesh voucher …`
#[derive(Subcommand)]
pub enum VoucherCmd {
    /// Sign a voucher that lets up to N machines join a site, and publish its record.
    ///
    /// Prints the token (`pmv1.…`; it holds the voucher and the mesh genesis) to hand to the
    /// machines, e.g. in an imaging script: `patchmesh node enroll --voucher TOKEN …`. Anyone
    /// holding it can enrol a machine until it expires or is revoked, within its site, labels
    /// and count: keep it like a password.
    Create(CreateArgs),
    /// Vouchers in the catalog with the enrolments this node has seen.
    List {
        #[command(flatten)]
        node: NodeArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a voucher: machines enrolled by it are refused everywhere from now on.
    Revoke {
        /// Voucher id (or a unique prefix).
        id: String,
        /// Admin key to sign with (default: PATCHMESH_ADMIN_KEY, else the context's).
        #[arg(long)]
        admin_key: Option<PathBuf>,
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        dry_run: crate::DryRun,
        /// Go ahead without asking (asks on a terminal; refused without one unless given).
        #[arg(long)]
        yes: bool,
    },
    /// Labels no voucher may grant: shows them, or replaces them with --set or --clear.
    ///
    /// A voucher is a bearer token that can leak, so labels that decide who installs first
    /// (ring=canary) or who is trusted more are best kept for certificates an admin signs per
    /// machine (`patchmesh admit`). Every node refuses an enrolment whose voucher grants one,
    /// including machines that enrolled before the label was reserved. Needs `admit`
    /// everywhere.
    Reserved {
        /// The new list: KEY=VALUE, or KEY=* for every value of KEY (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_label)]
        set: Vec<(String, String)>,
        /// Reserve no label.
        #[arg(long, conflicts_with = "set")]
        clear: bool,
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
}

/// `voucher create`.
#[derive(Args)]
pub struct CreateArgs {
    /// The site the machines join.
    #[arg(long)]
    site: String,
    /// Labels their admission carries, KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// The most machines it admits.
    #[arg(long)]
    max_nodes: u32,
    /// No enrolment after this: a duration from now (7d, 12h) or an RFC 3339 time.
    #[arg(long, default_value = "7d")]
    expires: String,
    /// Days an enrolled machine's admission lasts.
    #[arg(long, default_value_t = 365)]
    valid_days: u64,
    /// Each machine waits until an admin approves it (`patchmesh admit --pending`).
    #[arg(long)]
    require_approval: bool,
    /// Also write the token to this file (mode 0600).
    #[arg(long)]
    out: Option<PathBuf>,
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
}

/// `patchmesh node enroll`.
#[derive(Args)]
pub struct EnrollArgs {
    /// The voucher token (`pmv1.…`), or a file holding it.
    #[arg(long)]
    voucher: String,
    /// A running node to join through (multiaddr with /p2p/…; repeatable).
    #[arg(long = "bootstrap")]
    bootstrap: Vec<String>,
    /// Where to write the node configuration.
    #[arg(long)]
    config_out: PathBuf,
    /// Directory for the key, genesis and enrolment (default: the configuration's).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The node's data directory.
    #[arg(long, default_value = "/var/lib/patchmesh")]
    data_dir: PathBuf,
    /// Addresses to listen on (repeatable; default QUIC and TCP on port 7946).
    #[arg(long = "listen")]
    listen: Vec<String>,
    /// Do not look for peers on the LAN by mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// The token: the voucher and the genesis, so one string is all a new machine needs.
pub fn token(voucher: &Envelope, genesis: &Envelope) -> String {
    let bytes = encode(&(voucher, genesis));
    format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Reads a token (or a file holding one): the voucher and genesis, both verified, and the
/// voucher's mesh checked against the genesis.
pub fn read_token(arg: &str) -> anyhow::Result<(Envelope, Voucher, Envelope, Genesis)> {
    let text = if arg.trim_start().starts_with(TOKEN_PREFIX) {
        arg.trim().to_string()
    } else {
        let bytes = files::read_limited(Path::new(arg), TOKEN_BYTES_MAX as u64)
            .with_context(|| format!("{arg} is neither a voucher token nor a readable file"))?;
        String::from_utf8(bytes).context("the voucher file is not text")?.trim().to_string()
    };
    let Some(b64) = text.strip_prefix(TOKEN_PREFIX) else {
        bail!("not a patchmesh voucher token (they start with {TOKEN_PREFIX})");
    };
    if b64.len() > TOKEN_BYTES_MAX {
        bail!("the voucher token is longer than any valid one");
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64)
        .context("the voucher token is damaged (not base64url)")?;
    let (voucher_env, genesis_env): (Envelope, Envelope) =
        decode("voucher token", &bytes, TOKEN_BYTES_MAX).context("the voucher token is damaged")?;
    let genesis =
        Genesis::verify(&genesis_env, &Ed25519).context("the token's genesis does not verify")?;
    if voucher_env.domain != Domain::Voucher || voucher_env.signatures.len() != 1 {
        bail!("the token does not hold a voucher");
    }
    voucher_env.verify_all(&Ed25519).context("the voucher's signature does not verify")?;
    let voucher: Voucher = voucher_env.open("voucher")?;
    if voucher.mesh != genesis.mesh_id() {
        bail!("the voucher is for another mesh than the token's genesis");
    }
    Ok((voucher_env, voucher, genesis_env, genesis))
}

pub fn run(cmd: VoucherCmd, now: Millis) -> anyhow::Result<()> {
    match cmd {
        VoucherCmd::Create(a) => create(a, now),
        VoucherCmd::List { node, json } => {
            let vouchers = list(&node)?;
            if json {
                outln!("{}", crate::output::json(&vouchers));
                return Ok(());
            }
            if vouchers.is_empty() {
                outln!("no vouchers; `patchmesh voucher create` makes one");
            }
            for v in &vouchers {
                let state = if v.revoked {
                    "REVOKED".to_string()
                } else if v.expires_at_ms <= now.0 {
                    "expired".to_string()
                } else {
                    format!("until {}", crate::intel::date(v.expires_at_ms))
                };
                outln!(
                    "{}  site {}  {}/{} enrolled  {state}{}",
                    v.id,
                    v.site,
                    v.enrolments.len().min(v.max_nodes as usize),
                    v.max_nodes,
                    if v.require_approval {
                        format!("  ({} approved)", v.approved.len())
                    } else {
                        String::new()
                    }
                );
                for (i, (node, at)) in v.enrolments.iter().enumerate() {
                    let status = if i >= v.max_nodes as usize {
                        "refused: over the limit"
                    } else if v.require_approval && !v.approved.contains(node) {
                        "awaiting approval"
                    } else {
                        "admitted"
                    };
                    outln!("  {node}  enrolled {}  {status}", crate::intel::date(*at));
                }
            }
            Ok(())
        }
        VoucherCmd::Reserved { set, clear, admin_key, node, json, .. } => {
            let mut policy = reserved(&node)?;
            if clear || !set.is_empty() {
                policy.labels.clear();
                for (k, v) in set {
                    let vals = policy.labels.entry(k).or_default();
                    if v == "*" {
                        vals.clear();
                    } else if !vals.contains(&v) {
                        vals.push(v);
                    }
                }
                policy.validate()?;
                let admin = keys::AdminKey::resolve(admin_key.as_deref())?;
                let key = ReservedLabels::KEY.to_string();
                publish(
                    &node,
                    &admin,
                    vec![(key, Some(CatalogEntry::ReservedLabels(policy.clone())))],
                )?;
                eprintln!("reserved labels published; spreading to the mesh");
            }
            if json {
                outln!("{}", crate::output::json(&policy.labels));
            } else if policy.labels.is_empty() {
                outln!(
                    "no reserved labels: a voucher may grant any label its signer's role covers"
                );
            } else {
                for (k, vals) in &policy.labels {
                    if vals.is_empty() {
                        outln!("{k}=*  (every value)");
                    } else {
                        for v in vals {
                            outln!("{k}={v}");
                        }
                    }
                }
            }
            Ok(())
        }
        VoucherCmd::Revoke { id, admin_key, node, yes, .. } => {
            let v = find(&node, &id)?;
            crate::confirm(
                yes,
                &format!(
                    "revoke voucher {}: its {} machines are refused everywhere",
                    v.0.id,
                    v.0.enrolments.len()
                ),
            )?;
            let mut entry = v.1;
            entry.revoked = true;
            let admin = keys::AdminKey::resolve(admin_key.as_deref())?;
            let key = VoucherEntry::key_of(&entry.voucher()?.id);
            publish(&node, &admin, vec![(key, Some(CatalogEntry::Voucher(entry)))])?;
            outln!("voucher {} revoked; spreading to the mesh", v.0.id);
            Ok(())
        }
    }
}

fn create(a: CreateArgs, now: Millis) -> anyhow::Result<()> {
    if a.site.is_empty() || a.site.len() > patchmesh_protocol::limits::SITE_NAME_BYTES_MAX {
        bail!("--site must be 1..={} bytes", patchmesh_protocol::limits::SITE_NAME_BYTES_MAX);
    }
    if a.max_nodes == 0 || a.max_nodes > patchmesh_protocol::limits::VOUCHER_NODES_MAX {
        bail!("--max-nodes must be 1..={}", patchmesh_protocol::limits::VOUCHER_NODES_MAX);
    }
    let expires_at = crate::intel::parse_expiry(&a.expires, now)?;
    if expires_at <= now {
        bail!("--expires {} is not in the future", a.expires);
    }
    let policy = reserved(&a.node)?;
    if let Some((k, v)) = policy.hit(&a.labels.iter().cloned().collect()) {
        bail!(
            "the mesh reserves {k}={v} for certificates an admin signs (`patchmesh voucher reserved`); \
             admit such machines one by one with `patchmesh admit`, or leave the label out"
        );
    }
    let state: control::AdminStateView = call(&a.node, Request::AdminState)?;
    let genesis_env: Envelope =
        decode("genesis", &hex::decode(&state.genesis)?, 1 << 20).context("the node's genesis")?;
    let genesis = Genesis::verify(&genesis_env, &Ed25519)?;
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let voucher = Voucher {
        mesh: genesis.mesh_id(),
        id,
        site: SiteId::from(a.site.as_str()),
        labels: a.labels.iter().cloned().collect(),
        max_nodes: a.max_nodes,
        issued_at: now,
        expires_at,
        valid_for_ms: a.valid_days.max(1).saturating_mul(86_400_000),
        require_approval: a.require_approval,
    };
    let admin = keys::AdminKey::resolve(a.admin_key.as_deref())?;
    let voucher_env = admin.seal(Domain::Voucher, &voucher)?;
    let entry = VoucherEntry { voucher: voucher_env.clone(), revoked: false, approved: vec![] };
    // The record first: a voucher the mesh has not heard of still admits, but could not be
    // listed or revoked by id.
    publish(
        &a.node,
        &admin,
        vec![(VoucherEntry::key_of(&id), Some(CatalogEntry::Voucher(entry)))],
    )?;
    let token = token(&voucher_env, &genesis_env);
    if let Some(out) = &a.out {
        keys::replace_private(out, format!("{token}\n").as_bytes())?;
    }
    let v = control::VoucherCreateOutput {
        id: hex::encode(id),
        site: a.site.clone(),
        max_nodes: a.max_nodes,
        expires_at_ms: expires_at.0,
        require_approval: a.require_approval,
        token: token.clone(),
    };
    if a.json {
        outln!("{}", crate::output::json(&v));
    } else {
        eprintln!(
            "voucher {} for site {}: up to {} machines until {}{}",
            v.id,
            v.site,
            v.max_nodes,
            crate::intel::date(expires_at.0),
            if a.require_approval { ", each approved by an admin" } else { "" }
        );
        eprintln!("on each machine: patchmesh node enroll --voucher <token> --bootstrap <node address> --config-out /etc/patchmesh/node.toml");
        outln!("{token}");
    }
    Ok(())
}

/// The mesh's reserved labels in the node's catalog (none if it holds no policy).
fn reserved(node: &NodeArgs) -> anyhow::Result<ReservedLabels> {
    let cat: control::CatalogView = call(node, Request::Catalog)?;
    Ok(cat
        .entries
        .into_iter()
        .find_map(|e| match e.entry {
            CatalogEntryView::ReservedLabels { labels } => Some(ReservedLabels { labels }),
            _ => None,
        })
        .unwrap_or_default())
}

/// The vouchers in the node's catalog, with what it has seen.
fn list(node: &NodeArgs) -> anyhow::Result<Vec<VoucherView>> {
    let cat: control::CatalogView = call(node, Request::Catalog)?;
    Ok(cat
        .entries
        .into_iter()
        .filter_map(|e| match e.entry {
            CatalogEntryView::Voucher(v) => Some(v),
            _ => None,
        })
        .collect())
}

/// The voucher with this id prefix and its catalog entry.
fn find(node: &NodeArgs, id: &str) -> anyhow::Result<(VoucherView, VoucherEntry)> {
    let mut matches: Vec<VoucherView> =
        list(node)?.into_iter().filter(|v| v.id.starts_with(id.trim())).collect();
    let v = match matches.len() {
        1 => matches.remove(0),
        0 => bail!("no voucher {id:?} in this node's catalog"),
        n => bail!("{id:?} matches {n} vouchers; give more of the id"),
    };
    let entry = VoucherEntry {
        voucher: decode("voucher", &hex::decode(&v.envelope)?, 1 << 16)?,
        revoked: v.revoked,
        approved: v
            .approved
            .iter()
            .map(|n| Ok(NodeId(crate::parse_hex32(n)?)))
            .collect::<anyhow::Result<_>>()?,
    };
    Ok((v, entry))
}

/// `patchmesh admit --pending`: lists enrolments awaiting approval; with `approve` (node id
/// prefixes, or every one with `all`), signs their approval.
pub fn pending(
    node: &NodeArgs,
    approve: &[String],
    all: bool,
    admin_key: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let vouchers = list(node)?;
    let mut waiting: Vec<(String, String, u64)> = Vec::new();
    for v in vouchers.iter().filter(|v| v.require_approval && !v.revoked) {
        for (n, at) in v.enrolments.iter().take(v.max_nodes as usize) {
            if !v.approved.contains(n) {
                waiting.push((v.id.clone(), n.clone(), *at));
            }
        }
    }
    if approve.is_empty() && !all {
        if json {
            #[derive(Serialize)]
            struct Pending<'a> {
                voucher: &'a str,
                node: &'a str,
                enrolled_at_ms: u64,
            }
            let v: Vec<Pending> = waiting
                .iter()
                .map(|(v, n, at)| Pending { voucher: v, node: n, enrolled_at_ms: *at })
                .collect();
            outln!("{}", crate::output::json(&v));
        } else if waiting.is_empty() {
            outln!("no enrolment awaits approval");
        } else {
            for (v, n, at) in &waiting {
                outln!("{n}  voucher {v}  enrolled {}", crate::intel::date(*at));
            }
            outln!("approve with: patchmesh admit --pending --approve NODE (or --all)");
        }
        return Ok(());
    }
    let chosen: Vec<&(String, String, u64)> = waiting
        .iter()
        .filter(|(_, n, _)| all || approve.iter().any(|a| n.starts_with(a.trim())))
        .collect();
    if chosen.is_empty() {
        bail!("none of the enrolments awaiting approval matches");
    }
    let admin = keys::AdminKey::resolve(admin_key)?;
    let mut edits = Vec::new();
    for v in vouchers.iter().filter(|v| chosen.iter().any(|(id, _, _)| *id == v.id)) {
        let (_, mut entry) = find(node, &v.id)?;
        for (_, n, _) in chosen.iter().filter(|(id, _, _)| *id == v.id) {
            let id = NodeId(crate::parse_hex32(n)?);
            if !entry.approved.contains(&id) {
                entry.approved.push(id);
            }
        }
        let key = VoucherEntry::key_of(&entry.voucher()?.id);
        edits.push((key, Some(CatalogEntry::Voucher(entry))));
    }
    publish(node, &admin, edits)?;
    for (v, n, _) in &chosen {
        outln!("approved {n} (voucher {v})");
    }
    Ok(())
}

/// `patchmesh node enroll`: key (kept if one exists), genesis, enrolment and configuration.
pub fn enroll(a: EnrollArgs, now: Millis) -> anyhow::Result<()> {
    let (voucher_env, voucher, genesis_env, genesis) = read_token(&a.voucher)?;
    if now >= voucher.expires_at {
        bail!("the voucher expired {}", crate::intel::date(voucher.expires_at.0));
    }
    if now < voucher.issued_at {
        bail!("this machine's clock is before the voucher was made; fix the clock (timedatectl)");
    }
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => a.config_out.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (key_path, genesis_path, admission_path) =
        (dir.join("node.key"), dir.join("genesis.pm"), dir.join("admission.pm"));
    for p in [&admission_path, &a.config_out] {
        if p.exists() && !is_packaged_default(p) {
            bail!(
                "{} exists; this machine looks enrolled already (remove it to enrol again)",
                p.display()
            );
        }
    }
    let key = if key_path.exists() {
        files::read_key(&key_path)?
    } else {
        let k = keys::generate();
        files::write_key(&key_path, &k)?;
        k
    };
    if genesis_path.exists() {
        let held = files::read_envelope(&genesis_path)?;
        if held != genesis_env {
            bail!("{} holds another mesh's genesis", genesis_path.display());
        }
    } else {
        files::write_envelope(&genesis_path, &genesis_env)?;
    }
    let enrolment = patchmesh_protocol::enrol::enrol(voucher_env, &key, now);
    files::write_envelope(&admission_path, &enrolment)?;
    let listen = if a.listen.is_empty() {
        vec!["/ip4/0.0.0.0/udp/7946/quic-v1".to_string(), "/ip4/0.0.0.0/tcp/7946".to_string()]
    } else {
        a.listen.clone()
    };
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    let list = |v: &[String]| v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ");
    let config = format!(
        "# Written by `patchmesh node enroll` (mesh {}, voucher {}).\n\
         data_dir = {}\nkey = {}\ngenesis = {}\nadmission = {}\nlisten = [{}]\nbootstrap = [{}]\nmdns = {}\n",
        genesis.mesh_name,
        voucher.id_hex(),
        q(&a.data_dir.display().to_string()),
        q(&key_path.display().to_string()),
        q(&genesis_path.display().to_string()),
        q(&admission_path.display().to_string()),
        list(&listen),
        list(&a.bootstrap),
        !a.no_mdns,
    );
    // Installed as the packaged service: tell logged-in users before installs, and let them
    // defer through the socket the unit's runtime directory holds.
    let config = if a.config_out == Path::new("/etc/patchmesh/node.toml") {
        format!("{config}\n[notice]\nlead_s = 300\nuser_socket = \"/run/patchmesh/user.sock\"\n")
    } else {
        config
    };
    let tmp = a.config_out.with_extension("enroll.tmp");
    std::fs::write(&tmp, &config).with_context(|| format!("writing {}", tmp.display()))?;
    patchmesh_node::config::NodeConfig::load(&tmp)
        .context("the written configuration does not load")?;
    std::fs::rename(&tmp, &a.config_out)?;
    let v = control::EnrollOutput {
        node: NodeId(key.public().0).to_hex(),
        site: voucher.site.to_string(),
        voucher: voucher.id_hex(),
        config: a.config_out.clone(),
        key: key_path,
        admission: admission_path,
        require_approval: voucher.require_approval,
    };
    if a.json {
        outln!("{}", crate::output::json(&v));
    } else {
        outln!("enrolled node {} into site {} of mesh {}", v.node, v.site, genesis.mesh_name);
        outln!("  configuration {}", v.config.display());
        if voucher.require_approval {
            outln!(
                "  an admin must approve it: patchmesh admit --pending --approve {}",
                &v.node[..16]
            );
        }
        outln!(
            "start it: systemctl start patchmesh  (or patchmesh node run --config {})",
            v.config.display()
        );
    }
    Ok(())
}

/// The configuration the Debian package installs may be replaced by enrolment.
fn is_packaged_default(p: &Path) -> bool {
    std::fs::read_to_string(p).is_ok_and(|t| {
        t.starts_with("# patchmesh node configuration (installed by the patchmesh package)")
    })
}
