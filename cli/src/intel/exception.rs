//! `patchmesh exception`: signed risk acceptances (a finding excused until a date, with why).

use super::*;

/// `patchmesh exception …`.
#[derive(clap::Subcommand)]
pub enum ExceptionCmd {
    /// Record an exception: a risk accepted for a while, or a VEX "not affected" statement.
    ///
    /// Names one CVE and the nodes it covers (every node unless --target-… narrows it), with
    /// a justification and an expiry at most 90 days away. Covered findings stay listed,
    /// marked excepted, and leave the due counts until the expiry reopens them.
    Add {
        /// The CVE.
        #[arg(long)]
        cve: String,
        /// The nodes are not affected (a VEX statement) rather than the risk being accepted.
        #[arg(long)]
        not_affected: bool,
        /// Why.
        #[arg(long)]
        justification: String,
        /// What stands in for the fix meanwhile.
        #[arg(long)]
        control: Option<String>,
        /// When it lapses: `30d`, `12h` or `90s` from now, or an RFC 3339 time (at most 90
        /// days away).
        #[arg(long)]
        expires: String,
        /// Only nodes with this admission label (repeatable).
        #[arg(long = "target-label")]
        target_labels: Vec<String>,
        /// Only nodes of this site (repeatable).
        #[arg(long = "target-site")]
        target_sites: Vec<String>,
        /// Only nodes whose package matches (`NAME OP VERSION`, `src:NAME < VERSION`).
        #[arg(long = "target-package")]
        target_packages: Vec<String>,
        /// Admin key to sign with (default: PATCHMESH_ADMIN_KEY, else the context's).
        #[arg(long)]
        admin_key: Option<PathBuf>,
        #[command(flatten)]
        node: crate::NodeArgs,
        #[command(flatten)]
        dry_run: crate::DryRun,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Exceptions in the catalog, lapsed ones marked.
    List {
        #[command(flatten)]
        node: crate::NodeArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Withdraw an exception before it lapses.
    Revoke {
        /// Its key (`exception/…`, or a unique prefix of the hex part).
        key: String,
        /// Admin key to sign with (default: PATCHMESH_ADMIN_KEY, else the context's).
        #[arg(long)]
        admin_key: Option<PathBuf>,
        #[command(flatten)]
        node: crate::NodeArgs,
        #[command(flatten)]
        dry_run: crate::DryRun,
        /// Go ahead without asking (asks on a terminal; refused without one unless given).
        #[arg(long)]
        yes: bool,
    },
}

/// `30d`, `12h`, `90s` from now, or an RFC 3339 time.
pub(crate) fn parse_expiry(text: &str, now: Millis) -> anyhow::Result<Millis> {
    let bad = || {
        format!(
            "--expires {text:?}: expected a duration from now (30d, 12h, 90s) or an RFC 3339 time"
        )
    };
    for (suffix, unit_ms) in [("d", 86_400_000u64), ("h", 3_600_000), ("s", 1_000)] {
        if let Some(n) = text
            .strip_suffix(suffix)
            .filter(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
        {
            let n: u64 = n.parse().with_context(bad)?;
            return Ok(Millis(now.0.saturating_add(n.saturating_mul(unit_ms))));
        }
    }
    let ts: jiff::Timestamp = text.parse().with_context(bad)?;
    Ok(Millis(ts.as_millisecond().max(0) as u64))
}

pub(super) fn exception_entries(
    node: &crate::NodeArgs,
) -> anyhow::Result<Vec<(String, patchmesh_node::control::CatalogEntryView)>> {
    let cat: patchmesh_node::control::CatalogView = crate::call(node, Request::Catalog)?;
    Ok(cat
        .entries
        .into_iter()
        .filter(|e| e.key.starts_with("exception/"))
        .map(|e| (e.key, e.entry))
        .collect())
}

/// Runs `patchmesh exception …`.
pub fn exception(cmd: ExceptionCmd, now: Millis) -> anyhow::Result<()> {
    use patchmesh_node::control::CatalogEntryView as E;
    use patchmesh_protocol::intel::exception::{ExceptionEntry, ExceptionKind};
    match cmd {
        ExceptionCmd::Add {
            cve,
            not_affected,
            justification,
            control,
            expires,
            target_labels,
            target_sites,
            target_packages,
            admin_key,
            node,
            json,
            ..
        } => {
            let labels = target_labels
                .iter()
                .map(|l| crate::parse_label(l).map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<_>>()?;
            let entry = ExceptionEntry {
                cve,
                target: patchmesh_protocol::catalog::Selector {
                    labels,
                    sites: target_sites
                        .iter()
                        .map(|s| patchmesh_protocol::ids::SiteId::from(s.as_str()))
                        .collect(),
                    os: None,
                    packages: target_packages
                        .iter()
                        .map(|p| patchmesh_protocol::rollout::parse_predicate(p))
                        .collect::<Result<_, _>>()?,
                },
                kind: if not_affected {
                    ExceptionKind::NotAffected
                } else {
                    ExceptionKind::RiskAccepted
                },
                justification,
                compensating_control: control,
                created_at: now,
                expires_at: parse_expiry(&expires, now)?,
            };
            entry.validate().map_err(|e| anyhow::anyhow!("exception refused: {e}"))?;
            let key = entry.key();
            let entry = CatalogEntry::Exception(entry);
            let admin = crate::keys::AdminKey::resolve(admin_key.as_deref())?;
            let result = crate::publish(&node, &admin, vec![(key.clone(), Some(entry))])?;
            if json {
                outln!(
                    "{}",
                    crate::output::json(&serde_json::json!({"key": key, "change": result}))
                );
            } else {
                outln!("published {key}; covered findings are marked excepted on every node it selects");
            }
            Ok(())
        }
        ExceptionCmd::List { node, json } => {
            let list = exception_entries(&node)?;
            if json {
                let v: Vec<serde_json::Value> =
                    list.iter().map(|(k, e)| serde_json::json!({"key": k, "entry": e})).collect();
                outln!("{}", crate::output::json(&v));
                return Ok(());
            }
            if list.is_empty() {
                outln!("no exceptions");
            }
            for (key, e) in &list {
                if let E::Exception {
                    cve,
                    exception,
                    justification,
                    compensating_control,
                    target,
                    expires_at_ms,
                    ..
                } = e
                {
                    let state = if *expires_at_ms <= now.0 { "LAPSED" } else { "in force" };
                    outln!(
                        "{key}  {exception} {cve} for {target}, until {} ({state})",
                        date(*expires_at_ms)
                    );
                    outln!(
                        "    {justification}{}",
                        compensating_control
                            .as_deref()
                            .map(|c| format!(" (control: {c})"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
        ExceptionCmd::Revoke { key, admin_key, node, yes, .. } => {
            crate::confirm(yes, &format!("withdraw exception {key}: its findings reopen"))?;
            let want = key.trim_start_matches("exception/");
            let matches: Vec<String> = exception_entries(&node)?
                .into_iter()
                .map(|(k, _)| k)
                .filter(|k| k.trim_start_matches("exception/").starts_with(want))
                .collect();
            let key = match matches.as_slice() {
                [one] => one.clone(),
                [] => anyhow::bail!("no exception {key:?} in this node's catalog"),
                _ => anyhow::bail!(
                    "{key:?} matches {} exceptions; give more of the key",
                    matches.len()
                ),
            };
            let admin = crate::keys::AdminKey::resolve(admin_key.as_deref())?;
            crate::publish(&node, &admin, vec![(key.clone(), None)])?;
            outln!("revoked {key}; its findings reopen on the next assessment");
            Ok(())
        }
    }
}
