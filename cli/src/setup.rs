//! Setting a mesh up: `patchmesh init` (the mesh's root and first admin), key generation,
//! admitting a machine, and changes to the admin set.

use crate::*;

pub(crate) fn init(
    name: &str,
    dir: &Path,
    root_dir: &Path,
    unencrypted: bool,
    approval: mesh::Approval,
    json: bool,
) -> anyhow::Result<()> {
    let approval_threshold = approval.threshold;
    if name.is_empty() || name.len() > patchmesh_protocol::limits::TEXT_BYTES_MAX {
        bail!("mesh name must be 1..={} bytes", patchmesh_protocol::limits::TEXT_BYTES_MAX);
    }
    if approval_threshold == 0 {
        bail!("--approval-threshold must be at least 1");
    }
    let (root_path, admin_path) = (root_dir.join("root.key"), dir.join("admin.key"));
    for p in [&root_path, &admin_path, &dir.join("genesis.pm")] {
        if p.exists() {
            bail!("{} exists; refusing to overwrite a key or trust file", p.display());
        }
    }
    let (root_pass, admin_pass) = if unencrypted {
        (None, None)
    } else if std::env::var_os(keys::PASSPHRASE_ENV).is_some() {
        let p = keys::new_passphrase("passphrase for both keys")?;
        (Some(p.clone()), Some(p))
    } else {
        (
            Some(keys::new_passphrase("passphrase for the ROOT key (kept offline)")?),
            Some(keys::new_passphrase("passphrase for the admin key")?),
        )
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root_dir)
            .with_context(|| format!("creating {}", root_dir.display()))?;
    }
    let root = keys::generate();
    let admin = keys::generate();
    let genesis = mesh::genesis(name, &[&root], 1, &[admin.public()], approval, now_ms());
    let g: Genesis = genesis.open("genesis")?;
    if unencrypted {
        keys::warn_unencrypted(&root_path);
        keys::warn_unencrypted(&admin_path);
    }
    keys::write_new(&root_path, &root, root_pass.as_deref())?;
    keys::write_new(&admin_path, &admin, admin_pass.as_deref())?;
    files::write_envelope(&dir.join("genesis.pm"), &genesis)?;
    if json {
        outln!(
            "{}",
            output::json(&control::InitOutput {
                mesh: name.to_string(),
                mesh_id: g.mesh_id().to_hex(),
                dir: dir.to_path_buf(),
                root_key_file: root_path.clone(),
                admin_key_file: admin_path.clone(),
                encrypted: !unencrypted,
                admin: admin.public().to_hex(),
                root: root.public().to_hex(),
            })
        );
    } else {
        outln!("mesh {name} created: id {}", g.mesh_id());
        let how = if unencrypted { "plain" } else { "encrypted" };
        outln!("  root key   {}  ({how})", root_path.display());
        outln!("  admin key  {}  ({how})", admin_path.display());
        outln!("  genesis    {}", dir.join("genesis.pm").display());
        outln!("");
        outln!(
            "Take the root key offline now: copy {} to removable media kept",
            root_dir.display()
        );
        outln!("somewhere safe (two copies), then delete it here (shred -u). It is needed only to");
        outln!("add, rotate or revoke admins (`patchmesh admin … --root-key FILE`).");
    }
    Ok(())
}

pub(crate) fn keygen(out: &Path, json: bool, what: &str) -> anyhow::Result<()> {
    let key = SecretKey::generate(&mut OsRng);
    files::write_key(out, &key)?;
    print_keygen(out, &key, json, what)
}

pub(crate) fn print_keygen(
    out: &Path,
    key: &SecretKey,
    json: bool,
    what: &str,
) -> anyhow::Result<()> {
    if json {
        let v = control::KeygenOutput {
            key_file: out.to_path_buf(),
            public_key: key.public().to_hex(),
        };
        outln!("{}", output::json(&v));
    } else {
        outln!("{what} key written to {} (mode 0600)", out.display());
        outln!("public key: {}", key.public());
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn admit(
    node_key: &str,
    site: &str,
    labels: Vec<(String, String)>,
    admin_key: Option<&Path>,
    genesis: &Path,
    valid_days: u64,
    out: &Path,
    json: bool,
) -> anyhow::Result<()> {
    let node = NodeId(parse_hex32(node_key).context("--node-key")?);
    if site.is_empty() || site.len() > patchmesh_protocol::limits::SITE_NAME_BYTES_MAX {
        bail!("--site must be 1..={} bytes", patchmesh_protocol::limits::SITE_NAME_BYTES_MAX);
    }
    if labels.len() > patchmesh_protocol::limits::LABELS_PER_NODE_MAX {
        bail!("at most {} labels", patchmesh_protocol::limits::LABELS_PER_NODE_MAX);
    }
    let admin = keys::AdminKey::resolve(admin_key)?;
    let genesis_env = files::read_envelope(genesis).context("reading the genesis")?;
    let g = Genesis::verify(&genesis_env, &patchmesh_protocol::crypto::Ed25519)
        .context("the genesis does not verify")?;
    if !g.admins.contains(&admin.public()) {
        eprintln!(
            "patchmesh: warning: {} is not a genesis admin; nodes accept the certificate only if a later admin set made it one",
            admin.public()
        );
    }
    let labels: BTreeMap<String, String> = labels.into_iter().collect();
    let issued_at = now_ms();
    let cert = admin.seal(
        Domain::Admission,
        &patchmesh_protocol::trust::AdmissionCert {
            mesh: g.mesh_id(),
            node,
            site: SiteId::from(site),
            labels,
            issued_at,
            expires_at: issued_at.plus(valid_days.saturating_mul(86_400_000)),
        },
    )?;
    files::write_envelope(out, &cert)?;
    if json {
        outln!(
            "{}",
            output::json(&control::AdmitOutput {
                node: node.to_hex(),
                site: site.to_string(),
                out: out.to_path_buf(),
                valid_days,
            })
        );
    } else {
        outln!("admitted {node} to site {site}; certificate written to {}", out.display());
    }
    Ok(())
}

pub(crate) fn admin(cmd: AdminCmd) -> anyhow::Result<()> {
    let (AdminSigning { roots, node, json, yes, .. }, change) = match cmd {
        AdminCmd::Keygen { out, unencrypted, json } => {
            let pass = if unencrypted {
                keys::warn_unencrypted(&out);
                None
            } else {
                Some(keys::new_passphrase(&format!("passphrase for {}", out.display()))?)
            };
            let key = keys::generate();
            keys::write_new(&out, &key, pass.as_deref())?;
            return print_keygen(&out, &key, json, "admin");
        }
        AdminCmd::Role(cmd) => return roles::run(cmd),
        AdminCmd::Show { node, json } => return roles::show(&node, json),
        AdminCmd::Add { key, signing } => (signing, AdminChange::Add(KeyId(parse_hex32(&key)?))),
        AdminCmd::Rotate { old, new, signing } => {
            (signing, AdminChange::Rotate(KeyId(parse_hex32(&old)?), KeyId(parse_hex32(&new)?)))
        }
        AdminCmd::Revoke { key, signing } => {
            (signing, AdminChange::Revoke(KeyId(parse_hex32(&key)?)))
        }
    };
    let roots = keys::AdminKey::load_all(&roots.root_keys)?;
    let (current, state) = roles::current(&node)?;
    let mut admins = current.admins.clone();
    let mut roles = current.roles.clone();
    let mut revoked = Vec::new();
    match &change {
        AdminChange::Add(k) => {
            if admins.contains(k) {
                bail!("{k} is already an admin");
            }
            admins.push(*k);
        }
        AdminChange::Rotate(old, new) => {
            let Some(pos) = admins.iter().position(|a| a == old) else {
                bail!("{old} is not an active admin");
            };
            admins[pos] = *new;
            // The new key takes the old one's roles.
            for r in &mut roles {
                for k in &mut r.keys {
                    if k == old {
                        *k = *new;
                    }
                }
            }
        }
        AdminChange::Revoke(k) => {
            if !admins.contains(k) {
                bail!("{k} is not an active admin");
            }
            admins.retain(|a| a != k);
            let mut kept: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
            for (actor, seq) in state.history.get(&k.to_hex()).into_iter().flatten() {
                kept.insert(hex::decode(actor).context("the node gave a bad actor id")?, *seq);
            }
            revoked.push(Revocation { key: *k, kept_seq: kept });
        }
    }
    if admins.is_empty() {
        bail!("the mesh must keep at least one admin");
    }
    for r in &mut roles {
        r.keys.retain(|k| admins.contains(k));
    }
    roles.retain(|r| !r.keys.is_empty());
    if let AdminChange::Add(k) = &change {
        if !roles.is_empty() {
            eprintln!(
                "patchmesh: note: this mesh has roles; {k} may do nothing until a role names it (patchmesh admin role add|set)"
            );
        }
    }
    let next = mesh::next_admin_set_with(&current, admins, revoked, roles);
    if dry_run_print(&next) {
        return Ok(());
    }
    if let AdminChange::Revoke(k) = &change {
        confirm(
            yes,
            &format!("revoke admin {k}: what it signs from now on is refused everywhere"),
        )?;
    }
    let mut env = next.unsigned();
    for r in &roots {
        r.cosign(&mut env)?;
    }
    let result: control::SubmittedView =
        call(&node, Request::AdminSet { envelope: hex::encode(encode(&env)) })?;
    if json {
        outln!("{}", output::json(&result));
    } else {
        outln!("admin set version {} applied and spreading", result.trust_version);
    }
    Ok(())
}

pub(crate) enum AdminChange {
    Add(KeyId),
    Rotate(KeyId, KeyId),
    Revoke(KeyId),
}

/// With `--dry-run`, prints the admin set that would be signed and returns true.
pub(crate) fn dry_run_print(next: &patchmesh_protocol::trust::AdminSet) -> bool {
    if !DRY_RUN.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    outln!("{}", output::json(&serde_json::json!({ "dry_run": true, "admin_set": next })));
    true
}
