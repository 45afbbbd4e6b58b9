//! Changes an admin proposes from the dashboard: the form becomes a proposal the node keeps,
//! signed off the node (by the admin's own key) and submitted back.

use super::*;

/// A proposal request from a page form or JSON.
#[derive(serde::Deserialize)]
pub(super) struct ProposeForm {
    action: String,
    #[serde(default)]
    rollout: String,
    #[serde(default)]
    cve: String,
    #[serde(default)]
    justification: String,
    #[serde(default)]
    control: String,
    #[serde(default)]
    days: Option<u64>,
    #[serde(default)]
    site: String,
    #[serde(default)]
    not_affected: Option<String>,
}

pub(super) async fn propose(
    State(s): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let a = async {
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let f: ProposeForm = if is_json {
            serde_json::from_slice(&body)
                .map_err(|e| Failure(StatusCode::BAD_REQUEST, e.to_string()))?
        } else {
            serde_urlencoded::from_bytes(&body)
                .map_err(|e| Failure(StatusCode::BAD_REQUEST, e.to_string()))?
        };
        let status: control::StatusView = s.ask(Request::Status).await?;
        let now = crate::clock::now_ms();
        let change = build_change(&s, &f, now).await?;
        let p = proposal::Proposal {
            id: hex::encode(rand::random::<[u8; 8]>()),
            node: status.node,
            created_at: now,
            changes: vec![change],
        }
        .view();
        s.keep_proposal(p.clone());
        if wants_json(&uri) {
            Ok((StatusCode::CREATED, axum::Json(p)).into_response())
        } else {
            Ok(Redirect::to(&format!("/proposals/{}", p.proposal.id)).into_response())
        }
    };
    finish(&uri, a.await)
}

pub(super) async fn build_change(
    s: &Shared,
    f: &ProposeForm,
    now: patchmesh_protocol::ids::Millis,
) -> Result<proposal::ProposalChange, Failure> {
    use patchmesh_protocol::catalog::{CatalogEntry, CommandAction, Override, Selector};
    use patchmesh_protocol::rollout::Control;
    let bad = |e: String| Failure(StatusCode::BAD_REQUEST, e);
    if f.action == "exception" {
        let days = f.days.unwrap_or(30);
        let mut target = Selector::default();
        if !f.site.trim().is_empty() {
            target.sites.push(patchmesh_protocol::ids::SiteId::from(f.site.trim()));
        }
        let entry = patchmesh_protocol::intel::exception::ExceptionEntry {
            cve: f.cve.trim().to_string(),
            target,
            kind: if f.not_affected.is_some() {
                patchmesh_protocol::intel::exception::ExceptionKind::NotAffected
            } else {
                patchmesh_protocol::intel::exception::ExceptionKind::RiskAccepted
            },
            justification: f.justification.trim().to_string(),
            compensating_control: Some(f.control.trim().to_string()).filter(|c| !c.is_empty()),
            created_at: now,
            expires_at: patchmesh_protocol::ids::Millis(now.0 + days.min(3650) * 86_400_000),
        };
        entry.validate().map_err(|e| bad(format!("exception refused: {e}")))?;
        return Ok(proposal::ProposalChange::Entry { entry: CatalogEntry::Exception(entry) });
    }
    let v: control::RolloutsView = s.ask(Request::Rollouts).await?;
    let r = v
        .rollouts
        .iter()
        .find(|r| r.id == f.rollout)
        .ok_or_else(|| bad(format!("no rollout {:?} on this node", f.rollout)))?;
    let rollout = patchmesh_protocol::ids::RolloutId::from_hex(&r.id)
        .ok_or_else(|| bad(format!("bad rollout id {:?}", r.id)))?;
    let action = match f.action.as_str() {
        "pause" => CommandAction::Pause,
        "abort" => CommandAction::Abort,
        "resume" => CommandAction::Resume { overrides: None },
        "lift_halt" => match r.control {
            Some(Control::Halted { ring, failures }) => {
                CommandAction::Resume { overrides: Some(Override::Halt { ring, failures }) }
            }
            _ => return Err(bad("the rollout is not halted here".into())),
        },
        "approve" => {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&r.hash, &mut hash).map_err(|e| bad(e.to_string()))?;
            CommandAction::Approve { rollout_hash: hash }
        }
        x => return Err(bad(format!("unknown action {x:?}"))),
    };
    Ok(proposal::ProposalChange::Command { rollout, action, issued_at: now })
}

pub(super) async fn proposal_page(
    State(s): State<Arc<Shared>>,
    uri: Uri,
    Path(id): Path<String>,
) -> Response {
    let a = async {
        let p = s
            .proposal(&id)
            .ok_or_else(|| Failure(StatusCode::NOT_FOUND, format!("no proposal {id}")))?;
        respond(&s, &uri, &p, pages::proposal).await
    };
    finish(&uri, a.await)
}

/// A signed envelope from a browser or tool: verified exactly as a peer's would be.
#[derive(serde::Deserialize)]
pub(super) struct SubmitBody {
    envelope: String,
}

pub(super) async fn submit(
    State(s): State<Arc<Shared>>,
    uri: Uri,
    body: axum::body::Bytes,
) -> Response {
    let a = async {
        let b: SubmitBody = serde_json::from_slice(&body).map_err(|e| {
            Failure(StatusCode::BAD_REQUEST, format!("expected {{\"envelope\": hex}}: {e}"))
        })?;
        let v: control::SubmittedView = s
            .ask(Request::Submit { envelope: b.envelope })
            .await
            .map_err(|e| Failure(StatusCode::FORBIDDEN, format!("refused: {e}")))?;
        Ok(axum::Json(v).into_response())
    };
    finish(&uri, a.await)
}
