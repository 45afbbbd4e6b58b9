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

/// `patchmesh --all-contexts dashboard`: a tenant switcher for an MSP workstation. Serves, on
/// loopback under a random 256-bit path, one page listing every context with its node's
/// status (mesh, site, peers; or why it is unreachable); a tenant's button asks that tenant's
/// node for a one-time login link (as `patchmesh --context NAME dashboard` does) and sends the
/// browser there. Each tenant's dashboard stays its own origin with its own session; the
/// switcher holds no token and no session, and runs until interrupted.
pub fn switcher(open: bool, json: bool) -> anyhow::Result<i32> {
    use rand::RngCore;
    let all = crate::context::Contexts::load()?;
    if all.contexts.is_empty() {
        bail!("no contexts; add them with `patchmesh context add`");
    }
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let state = std::sync::Arc::new(Switcher {
        tenants: all.contexts.keys().cloned().collect(),
        secret: hex::encode(secret),
        exe: std::env::current_exe()?,
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = format!("http://{}/{}/", listener.local_addr()?, state.secret);
        if json {
            let v = patchmesh_node::control::SwitcherOutput {
                url: url.clone(),
                tenants: state.tenants.clone(),
            };
            outln!("{}", crate::output::json_sorted(&v));
        } else {
            outln!("{url}");
            eprintln!(
                "patchmesh: tenant switcher for {} tenants on this link (keep it to yourself); Ctrl-C stops it",
                state.tenants.len()
            );
        }
        if open {
            let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
            if let Err(e) = std::process::Command::new(opener).arg(&url).status() {
                eprintln!("patchmesh: could not start {opener} ({e}); open the link yourself");
            }
        }
        use axum::routing::{get, post};
        let app = axum::Router::new()
            .route("/{secret}/", get(switcher_page))
            .route("/{secret}/style.css", get(switcher_css))
            .route("/{secret}/open/{tenant}", post(switcher_open))
            .with_state(state);
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok::<_, anyhow::Error>(0)
    })
}

struct Switcher {
    tenants: Vec<String>,
    secret: String,
    exe: PathBuf,
}

type SwitcherState = axum::extract::State<std::sync::Arc<Switcher>>;

const SWITCHER_CSS: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#1b1f24}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.45rem .6rem;border-bottom:1px solid #d0d7de}\
th{background:#f6f8fa}.bad{color:#a40e26;font-weight:600}.ok{color:#116329;font-weight:600}\
button{font:inherit;padding:.3rem .8rem;cursor:pointer}button:focus{outline:3px solid #0969da}p.note{color:#57606a}";

fn page(status: axum::http::StatusCode, body: String) -> axum::response::Response {
    use axum::http::header;
    use axum::response::IntoResponse;
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'self'; base-uri 'none'; frame-ancestors 'none'",
            ),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn not_found() -> axum::response::Response {
    page(axum::http::StatusCode::NOT_FOUND, "<h1>Not found</h1>".into())
}

async fn switcher_css(
    state: SwitcherState,
    axum::extract::Path(secret): axum::extract::Path<String>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if secret != state.secret {
        return not_found();
    }
    ([(axum::http::header::CONTENT_TYPE, "text/css")], SWITCHER_CSS).into_response()
}

/// Every tenant's status, asked in parallel.
async fn switcher_page(
    state: SwitcherState,
    axum::extract::Path(secret): axum::extract::Path<String>,
) -> axum::response::Response {
    if secret != state.secret {
        return not_found();
    }
    let asks: Vec<_> = state
        .tenants
        .iter()
        .map(|name| {
            let (exe, name) = (state.exe.clone(), name.clone());
            tokio::task::spawn_blocking(move || {
                let args = ["status".to_string(), "--json".to_string()];
                crate::context::one_tenant(&exe, &name, &args, std::time::Duration::from_secs(15))
            })
        })
        .collect();
    let mut rows = String::new();
    let mut down = 0;
    for ask in asks {
        let Ok(r) = ask.await else { continue };
        let name = esc(&r.context);
        match (&r.result, r.ok) {
            (Some(s), true) => {
                let f =
                    |k: &str| esc(&s[k].as_str().map_or_else(|| s[k].to_string(), str::to_string));
                rows.push_str(&format!(
                    "<tr><td><strong>{name}</strong></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                     <td class=\"ok\">reachable</td><td><form method=\"post\" action=\"open/{name}\">\
                     <button type=\"submit\">Open {name}'s dashboard</button></form></td></tr>",
                    f("mesh"),
                    f("site"),
                    f("peers_admitted"),
                    f("trust_version"),
                ));
            }
            _ => {
                down += 1;
                let why = esc(r.error.as_deref().unwrap_or("no answer"));
                rows.push_str(&format!(
                    "<tr><td><strong>{name}</strong></td><td colspan=\"4\">{why}</td>\
                     <td class=\"bad\">UNREACHABLE</td><td></td></tr>"
                ));
            }
        }
    }
    let n = state.tenants.len();
    let summary = if down == 0 {
        format!("{n} tenants, all reachable.")
    } else {
        format!("{n} tenants; {down} unreachable.")
    };
    page(
        axum::http::StatusCode::OK,
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width\"><title>patchmesh tenants</title>\
             <link rel=\"stylesheet\" href=\"style.css\"></head><body><main>\
             <h1>patchmesh tenants</h1><p>{summary}</p>\
             <table><thead><tr><th scope=\"col\">Context</th><th scope=\"col\">Mesh</th>\
             <th scope=\"col\">Node's site</th><th scope=\"col\">Peers</th><th scope=\"col\">Trust version</th>\
             <th scope=\"col\">State</th><th scope=\"col\"></th></tr></thead><tbody>{rows}</tbody></table>\
             <p class=\"note\">Each button logs this browser into that tenant's node with a one-time \
             link (its own session, on its own address). Reload for fresh status.</p></main></body></html>"
        ),
    )
}

/// Logs the browser into one tenant's dashboard: a fresh one-time link, then a redirect.
async fn switcher_open(
    state: SwitcherState,
    axum::extract::Path((secret, tenant)): axum::extract::Path<(String, String)>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if secret != state.secret || !state.tenants.contains(&tenant) {
        return not_found();
    }
    let exe = state.exe.clone();
    let name = tenant.clone();
    let r = tokio::task::spawn_blocking(move || {
        let args = ["dashboard".to_string(), "--json".to_string()];
        crate::context::one_tenant(&exe, &name, &args, std::time::Duration::from_secs(15))
    })
    .await;
    let url = r.as_ref().ok().and_then(|r| {
        let v = serde_json::from_value::<LoginView>(r.result.clone()?).ok()?;
        Some(v.url)
    });
    match url {
        Some(url) => axum::response::Redirect::to(&url).into_response(),
        None => {
            let why = r.ok().and_then(|r| r.error).unwrap_or_else(|| "no answer".into());
            page(
                axum::http::StatusCode::BAD_GATEWAY,
                format!(
                    "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>patchmesh tenants</title>\
                     <link rel=\"stylesheet\" href=\"../style.css\"></head><body><main><h1>{}</h1>\
                     <p class=\"bad\">Its node gave no login link: {}</p><p><a href=\"../\">Back to the tenants</a></p>\
                     </main></body></html>",
                    esc(&tenant),
                    esc(&why)
                ),
            )
        }
    }
}
