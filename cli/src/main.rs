//! `patchmesh`: the admin's command-line tool.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use patchmesh_node::files;
use patchmesh_protocol::crypto::SecretKey;
use patchmesh_protocol::ids::Millis;
use patchmesh_protocol::mesh;
use rand::rngs::OsRng;
use std::path::PathBuf;

/// patchmesh: peer-to-peer patch management with signed policy, canary rings and no server.
#[derive(Parser)]
#[command(name = "patchmesh", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new mesh: a root key, a first admin key and the signed genesis.
    ///
    /// Writes DIR/root.key and DIR/admin.key (mode 0600; keep the root key offline) and
    /// DIR/genesis.pm, which every node of the mesh needs. Refuses to overwrite anything.
    Init {
        /// Name of the mesh (shown in status output).
        #[arg(long)]
        mesh: String,
        /// Directory to write the keys and genesis into (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Admin signatures a large rollout needs before any node installs it.
        #[arg(long, default_value_t = 1)]
        approval_threshold: u8,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("patchmesh: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Init { mesh: name, dir, approval_threshold, json } => {
            if name.is_empty() || name.len() > patchmesh_protocol::limits::TEXT_BYTES_MAX {
                bail!("mesh name must be 1..={} bytes", patchmesh_protocol::limits::TEXT_BYTES_MAX);
            }
            if approval_threshold == 0 {
                bail!("--approval-threshold must be at least 1");
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let root = SecretKey::generate(&mut OsRng);
            let admin = SecretKey::generate(&mut OsRng);
            let now = Millis(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis()
                    as u64,
            );
            let genesis =
                mesh::genesis(&name, &[&root], 1, &[admin.public()], approval_threshold, now);
            let g: patchmesh_protocol::trust::Genesis = genesis.open("genesis")?;
            files::write_key(&dir.join("root.key"), &root)?;
            files::write_key(&dir.join("admin.key"), &admin)?;
            files::write_envelope(&dir.join("genesis.pm"), &genesis)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"mesh": name, "mesh_id": g.mesh_id().to_hex(), "dir": dir, "admin": admin.public().to_hex(), "root": root.public().to_hex()})
                );
            } else {
                println!("mesh {name} created: id {}", g.mesh_id());
                println!("  root key   {}  (keep offline)", dir.join("root.key").display());
                println!("  admin key  {}", dir.join("admin.key").display());
                println!("  genesis    {}", dir.join("genesis.pm").display());
            }
            Ok(())
        }
    }
}
