//! `patchmesh remediate`: the exposed CVEs grouped into one rollout per fix, each targeting
//! exactly the nodes exposed.

use super::*;

/// `patchmesh remediate`.
#[derive(Args)]
pub struct RemediateArgs {
    /// CVEs to remediate (or select them with --kev / --due).
    pub cves: Vec<String>,
    /// Every exposed CVE in the KEV catalog.
    #[arg(long)]
    pub kev: bool,
    /// Every exposed CVE due in this class or sooner.
    #[arg(long = "due", value_parser = ["3d", "14d", "60d", "window"])]
    pub due_class: Option<String>,
    /// .deb files with the fix: each is added as a dpkg patch and rolled out.
    #[arg(long = "deb")]
    pub debs: Vec<PathBuf>,
    /// The source package to remediate, when a CVE is found in several.
    #[arg(long)]
    pub source: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub rollout: crate::rollout::CreateArgs,
}

/// One rollout `patchmesh remediate` published (`--json` prints a list of these).
#[derive(Serialize, serde::Deserialize)]
pub struct RemediationOut {
    /// The rollout's id.
    pub rollout: String,
    /// The patch it rolls out.
    pub patch: String,
    /// The CVEs it fixes.
    pub cves: Vec<String>,
    /// The package predicate that targets the exposed nodes.
    pub predicate: String,
    /// Nodes exposed when it was published.
    pub nodes_exposed: u32,
    /// Its deadline, as given.
    pub deadline: Option<String>,
}

/// Adds a .deb as a dpkg patch (name and version read with `dpkg-deb`); returns its content id.
pub(super) fn add_deb(
    node: &crate::NodeArgs,
    admin_key: &crate::keys::AdminKey,
    deb: &Path,
) -> anyhow::Result<String> {
    let out = std::process::Command::new("dpkg-deb")
        .args(["--field", &deb.display().to_string(), "Package", "Version"])
        .output()
        .context("running dpkg-deb")?;
    if !out.status.success() {
        anyhow::bail!(
            "{}: not a .deb dpkg-deb reads: {}",
            deb.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let fields = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |k: &str| {
        fields
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    };
    let (Some(name), Some(version)) = (field("Package"), field("Version")) else {
        anyhow::bail!("{}: no Package or Version field", deb.display());
    };
    let (content_id, size_bytes) = crate::import(node, deb)?;
    let entry = CatalogEntry::Patch(patchmesh_protocol::catalog::PatchEntry {
        content_id,
        size_bytes,
        name,
        version,
        executor: patchmesh_protocol::catalog::ExecutorSpec {
            kind: "dpkg".into(),
            install: None,
            verify: None,
            rollback: None,
            timeout_ms: 600_000,
        },
    });
    crate::publish(node, admin_key, vec![(entry.key(), Some(entry))])?;
    Ok(content_id.to_string())
}

/// Picks the CVEs to remediate and groups them by the (source, fixed version) one rollout
/// fixes.
pub(super) fn remediation_plan<'a>(
    a: &RemediateArgs,
    rows: &'a BTreeMap<String, FleetRow>,
) -> anyhow::Result<BTreeMap<(String, String), Vec<&'a FleetRow>>> {
    let due_limit = a.due_class.as_deref().and_then(Due::parse);
    let chosen: Vec<&FleetRow> = if a.cves.is_empty() {
        if !a.kev && due_limit.is_none() {
            anyhow::bail!("name the CVEs to remediate, or select them with --kev or --due");
        }
        rows.values()
            .filter(|r| (!a.kev || r.kev) && due_limit.is_none_or(|d| r.due <= d))
            .collect()
    } else {
        a.cves
            .iter()
            .map(|c| {
                rows.get(c)
                    .with_context(|| format!("{c}: no node reports it (see `patchmesh vulns`)"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    if chosen.is_empty() {
        anyhow::bail!("no exposed CVE matches");
    }
    let mut groups: BTreeMap<(String, String), Vec<&FleetRow>> = BTreeMap::new();
    for r in chosen {
        let Some(fixed) = &r.fixed_version else {
            anyhow::bail!("{}: no fix exists yet; record an exception instead", r.cve);
        };
        let source = match (&a.source, r.sources.len()) {
            (Some(s), _) if r.sources.contains(s) => s.clone(),
            (Some(s), _) => anyhow::bail!(
                "{}: not found in source package {s} (found in {})",
                r.cve,
                r.sources.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
            (None, 1) => r.sources.iter().next().cloned().unwrap_or_default(),
            (None, _) => anyhow::bail!(
                "{} is found in several source packages ({}): pick one with --source",
                r.cve,
                r.sources.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        };
        groups.entry((source, fixed.clone())).or_default().push(r);
    }
    Ok(groups)
}

/// `patchmesh remediate`: a rollout of the fix to exactly the exposed nodes.
pub fn remediate(mut a: RemediateArgs, now: Millis) -> anyhow::Result<()> {
    let node = a.rollout.sign.node.clone();
    let v: ExposureView = crate::call(&node, Request::Exposure)?;
    let sites: Vec<&SiteExposureView> = v.sites.iter().collect();
    let rows = fleet_rows(&sites);
    let groups = remediation_plan(&a, &rows)?;
    if groups.len() > 1 && (!a.debs.is_empty() || a.rollout.patch.is_some()) {
        anyhow::bail!(
            "the CVEs need {} different fixes ({}): remediate one fix at a time",
            groups.len(),
            groups.keys().map(|(s, f)| format!("{s} {f}")).collect::<Vec<_>>().join(", ")
        );
    }
    if a.debs.is_empty() && a.rollout.patch.is_none() {
        anyhow::bail!("give the fix: --deb FILE (added as a dpkg patch) or --patch CONTENT_ID (a catalog patch)");
    }
    let ((source, fixed), cves) = groups.into_iter().next().context("nothing to remediate")?;
    let predicate = format!("src:{source} < {fixed}");
    let exposed: u32 = cves.iter().map(|r| r.nodes).max().unwrap_or(0);
    let due = cves.iter().map(|r| r.due).min().unwrap_or(Due::NextWindow);
    let days = match due {
        Due::Days3 => Some(3),
        Due::Days14 => Some(14),
        Due::Days60 => Some(60),
        _ => None,
    };
    if a.rollout.deadline.is_none() {
        if let Some(d) = days {
            let at = jiff::Timestamp::from_millisecond((now.0 + d * 86_400_000) as i64)?;
            a.rollout.deadline = Some(at.to_string());
        }
    }
    let names: Vec<String> = cves.iter().map(|r| r.cve.clone()).collect();
    let quiet = a.rollout.sign.json;
    if !quiet {
        outln!("remediate {} in source package {source}: fixed in {fixed}", names.join(", "));
        for r in &cves {
            let by_site: Vec<String> = r.sites.iter().map(|(s, n)| format!("{s} {n}")).collect();
            outln!(
                "  {}  score {:.1}, due {}, {} exposed nodes ({})",
                r.cve,
                r.score,
                r.due.label(),
                r.nodes,
                by_site.join(", ")
            );
        }
        outln!(
            "  targets nodes where `{predicate}`; rings {}; deadline {}",
            a.rollout_rings(),
            a.rollout.deadline.as_deref().unwrap_or("none (due at the next window)")
        );
    }
    crate::confirm(a.yes, "publish this remediation")?;
    let admin = crate::keys::AdminKey::resolve(a.rollout.sign.admin_key.as_deref())?;
    let patches: Vec<String> = if a.debs.is_empty() {
        vec![a.rollout.patch.clone().unwrap_or_default()]
    } else {
        a.debs.iter().map(|d| add_deb(&node, &admin, d)).collect::<anyhow::Result<_>>()?
    };
    a.rollout.target_packages.push(predicate.clone());
    let mut out = Vec::new();
    for p in patches {
        a.rollout.patch = Some(p.clone());
        let (rollout, _) = crate::rollout::create(&a.rollout, &admin, now)?;
        out.push(RemediationOut {
            rollout: rollout.id.to_string(),
            patch: p,
            cves: names.clone(),
            predicate: predicate.clone(),
            nodes_exposed: exposed,
            deadline: a.rollout.deadline.clone(),
        });
    }
    if quiet {
        outln!("{}", crate::output::json(&out));
    } else {
        for o in &out {
            outln!("rollout {} published for patch {}", o.rollout, &o.patch[..16]);
        }
    }
    Ok(())
}

impl RemediateArgs {
    fn rollout_rings(&self) -> String {
        self.rollout.rings().join(", ")
    }
}
