//! The daemon's side of payload transfer: it tells the transfer service who is admitted, starts
//! downloads for catalog patches, runs DHT provider records and penalties for it, and answers
//! the content control requests.

use super::{control, parse_id, Daemon};
use crate::transfer::{PeerView, ToDaemon};
use libp2p::{kad, PeerId};
use patchmesh_protocol::catalog::CatalogEntry;
use patchmesh_protocol::ids::{ContentId, NodeId};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

fn key_of(content: &ContentId) -> kad::RecordKey {
    kad::RecordKey::new(&content.0)
}

impl Daemon {
    /// Publishes the admitted, connected peers to the transfer service.
    pub(super) fn publish_view(&mut self) {
        let peers: BTreeMap<NodeId, (PeerId, patchmesh_protocol::ids::SiteId)> = self
            .node
            .admitted_peers()
            .filter_map(|(p, n, s)| self.peers.get(&p.0).map(|peer| (n, (*peer, s.clone()))))
            .collect();
        self.view_tx.send_replace(PeerView { peers });
    }

    /// Dials members of this node's site it is not connected to. Site election assumes the
    /// members of a site see each other (they share a LAN); this keeps that true beyond what
    /// mDNS or the DHT's random walk happen to connect.
    pub(super) fn connect_site(&mut self) {
        let me = self.node.id();
        let members: Vec<NodeId> =
            self.node.site().records().keys().filter(|n| **n != me).copied().collect();
        for n in members {
            if self.ids.len() >= self.cfg.connections_max as usize {
                break;
            }
            if let Some(peer) = crate::net::peer_of(&n) {
                if !self.ids.contains_key(&peer) {
                    let _ = self.swarm.dial(peer);
                }
            }
        }
    }

    /// Patches in the catalog: content id → signed size.
    pub(super) fn catalog_payloads(&self) -> BTreeMap<ContentId, u64> {
        self.node
            .catalog()
            .entries()
            .into_values()
            .filter_map(|e| match e {
                CatalogEntry::Patch(p) => Some((p.content_id, p.size_bytes)),
                _ => None,
            })
            .collect()
    }

    /// After a catalog change: fetch new payloads (when prefetching) and collect unreferenced
    /// ones.
    pub(super) fn on_catalog(&mut self) {
        self.refresh_integrations();
        self.check_intel(false);
        self.reassess_if_exceptions_changed();
        let payloads = self.catalog_payloads();
        if self.cfg.prefetch {
            for (content, size) in &payloads {
                if self.transfers.want(*content, *size) {
                    tracing::info!(%content, size_bytes = size, "fetching payload");
                }
            }
        }
    }

    /// What garbage collection must keep: every catalog payload, and every payload an install
    /// journal names (what a rollback reinstalls must never need the WAN).
    fn gc_keep(&self) -> BTreeSet<ContentId> {
        let mut keep: BTreeSet<ContentId> = self.catalog_payloads().into_keys().collect();
        keep.extend(self.node.rollouts().journal().values().map(|e| e.content_id));
        keep.extend(self.intel_content());
        keep
    }

    pub(super) fn on_transfer(&mut self, cmd: ToDaemon) {
        match cmd {
            ToDaemon::Penalize(peer, why) => {
                tracing::warn!(%peer, why, "payload source penalised");
                self.penalize_peer(peer);
            }
            ToDaemon::Provide(content) => {
                if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key_of(&content)) {
                    tracing::debug!(error = %e, "start providing");
                }
            }
            ToDaemon::FindProviders(content) => {
                let q = self.swarm.behaviour_mut().kad.get_providers(key_of(&content));
                self.provider_queries.insert(q, content);
            }
        }
    }

    pub(super) fn on_providers(&mut self, id: kad::QueryId, providers: BTreeSet<PeerId>) {
        let Some(content) = self.provider_queries.get(&id).copied() else { return };
        let nodes: Vec<NodeId> = providers.iter().filter_map(crate::net::node_of).collect();
        for p in providers {
            if !self.ids.contains_key(&p) && p != *self.swarm.local_peer_id() {
                let _ = self.swarm.dial(p);
            }
        }
        self.transfers.add_providers(content, nodes);
    }

    pub(super) fn query_done(&mut self, id: kad::QueryId) {
        self.provider_queries.remove(&id);
    }

    /// Announces every complete payload (after start).
    pub(super) fn provide_all(&mut self) {
        for c in self.transfers.store().list() {
            if c.complete {
                let _ = self.swarm.behaviour_mut().kad.start_providing(key_of(&c.content));
            }
        }
    }

    pub(super) fn content_control(&mut self, req: control::Request) -> Value {
        use control::Request as R;
        match req {
            R::Import { path } => {
                let store = self.transfers.store().clone();
                match store.import(std::path::Path::new(&path)) {
                    Ok((content, size)) => {
                        let _ = self.swarm.behaviour_mut().kad.start_providing(key_of(&content));
                        control::ok_view(&control::ContentBrief {
                            content_id: content.to_string(),
                            size_bytes: size,
                        })
                    }
                    Err(e) => control::refused(format!("importing {path}: {e}")),
                }
            }
            R::Fetch { content } => {
                let content = match parse_id(&content) {
                    Ok(c) => ContentId(c),
                    Err(e) => return control::refused(e),
                };
                let Some(size) = self.catalog_payloads().get(&content).copied() else {
                    return control::refused(format!(
                        "{content} is not the content id of any patch in the catalog"
                    ));
                };
                self.transfers.want(content, size);
                control::ok_view(&self.content_view(&content))
            }
            R::Content { content } => match parse_id(&content) {
                Ok(c) => control::ok_view(&self.content_view(&ContentId(c))),
                Err(e) => control::refused(e),
            },
            R::ContentList => {
                let progress = self.transfers.progress();
                let names: BTreeMap<ContentId, String> = self
                    .node
                    .catalog()
                    .entries()
                    .into_values()
                    .filter_map(|e| match e {
                        CatalogEntry::Patch(p) => {
                            Some((p.content_id, format!("{} {}", p.name, p.version)))
                        }
                        _ => None,
                    })
                    .collect();
                let contents = self
                    .transfers
                    .store()
                    .list()
                    .into_iter()
                    .map(|c| {
                        let p = progress.get(&c.content);
                        control::ContentItemView {
                            content_id: c.content.to_string(),
                            size_bytes: c.size_bytes,
                            have_bytes: c.have_bytes,
                            complete: c.complete,
                            patch: names.get(&c.content).cloned(),
                            state: p
                                .map_or(if c.complete { "complete" } else { "partial" }, |p| {
                                    p.state.as_str()
                                })
                                .to_string(),
                            error: p.and_then(|p| p.error.clone()),
                        }
                    })
                    .collect();
                control::ok_view(&control::ContentListView {
                    held_bytes: self.transfers.store().held_bytes_total(),
                    contents,
                })
            }
            R::ContentGc { dry_run } => {
                let keep = self.gc_keep();
                let store = self.transfers.store();
                let brief = |content: ContentId, size_bytes: u64| control::ContentBrief {
                    content_id: content.to_string(),
                    size_bytes,
                };
                let removed = if dry_run {
                    store
                        .list()
                        .into_iter()
                        .filter(|c| !keep.contains(&c.content))
                        .map(|c| brief(c.content, c.size_bytes))
                        .collect()
                } else {
                    store.gc(&keep).into_iter().map(|(c, s)| brief(c, s)).collect()
                };
                control::ok_view(&control::GcView { removed, dry_run })
            }
            _ => control::refused("not a content request"),
        }
    }

    fn content_view(&self, content: &ContentId) -> control::ContentView {
        let progress = self.transfers.progress().remove(content);
        let held = self.transfers.store().list().into_iter().find(|c| c.content == *content);
        match (progress, held) {
            (Some(p), _) => p,
            (None, Some(c)) => control::ContentView {
                content: c.content.to_string(),
                size_bytes: c.size_bytes,
                have_bytes: c.have_bytes,
                state: if c.complete { "complete" } else { "partial" }.to_string(),
                ..Default::default()
            },
            (None, None) => control::ContentView {
                content: content.to_string(),
                state: "absent".to_string(),
                ..Default::default()
            },
        }
    }
}
