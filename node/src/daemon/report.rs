//! What a compliance report is built from, and the node's signature on a report.

use super::Daemon;
use crate::control::{self, AssetBasis, ExceptionBasis, ReportBasisView, SiteBasis};
use patchmesh_protocol::catalog::{newest_intel, CatalogEntry};
use patchmesh_protocol::crypto::Domain;

impl Daemon {
    /// `Request::ReportBasis`.
    pub(super) fn report_basis(&mut self) -> ReportBasisView {
        let me = self.node.id();
        let mesh = self.node.trust().mesh();
        let own = self.node.site().summarise(mesh, me);
        let mut assets: Vec<AssetBasis> = self
            .node
            .site()
            .records()
            .values()
            .map(|held| {
                let r = held.record();
                let labels = held.bundle.admission();
                let labels = patchmesh_protocol::trust::admission_cert(labels)
                    .map(|c| c.labels)
                    .unwrap_or_default();
                AssetBasis {
                    node: r.node.to_string(),
                    site: r.site.to_string(),
                    labels,
                    os: r.inventory.os.clone(),
                    kernel: r.inventory.kernel.clone(),
                    package_count: r.inventory.package_count,
                    record_written_at_ms: r.written_at.0,
                    exposure: r.exposure.clone(),
                    audit: r.audit.map(|h| (h.seq, hex::encode(h.head), h.at.0)),
                    standings: r
                        .rollouts
                        .iter()
                        .map(|(id, s)| {
                            (id.to_string(), s.ring, format!("{:?}", s.status).to_lowercase())
                        })
                        .collect(),
                }
            })
            .collect();
        assets.sort_by(|a, b| a.node.cmp(&b.node));
        let mut sites: Vec<SiteBasis> = self
            .node
            .summaries()
            .all()
            .iter()
            .filter(|(site, _)| **site != self.cert.site)
            .map(|(site, held)| {
                let s = held.summary();
                SiteBasis {
                    site: site.to_string(),
                    members: s.record_count,
                    author: s.author.to_string(),
                    exposure: s.exposure.clone(),
                }
            })
            .collect();
        sites.sort_by(|a, b| a.site.cmp(&b.site));
        let exceptions = self
            .node
            .catalog()
            .entries_authored()
            .into_iter()
            .filter_map(|(key, (entry, author))| match entry {
                CatalogEntry::Exception(e) if key == e.key() => Some(ExceptionBasis {
                    key,
                    scope: super::requests::describe_selector(&e.target),
                    entry: e,
                    approver: author.to_string(),
                }),
                _ => None,
            })
            .collect();
        let entries = self.node.catalog().entries();
        let newest = newest_intel(&entries);
        ReportBasisView {
            mesh_name: self.mesh_name.clone(),
            mesh: mesh.to_string(),
            node: me.to_string(),
            site: self.cert.site.to_string(),
            now_ms: crate::clock::now_ms().0,
            catalog_state: self.node.catalog().state_hash().to_string(),
            records_root: hex::encode(own.records_root),
            bundle: newest.map(|e| e.content_id.to_string()),
            bundle_created_at_ms: newest.map_or(0, |e| e.created_at.0),
            assets,
            sites,
            exceptions,
        }
    }

    /// `Request::SignReport`: the node signs a report body's hash in the report domain (a
    /// signature no other kind of object accepts).
    pub(super) fn sign_report(&self, body_hash: &str) -> serde_json::Value {
        let mut hash = [0u8; 32];
        if hex::decode_to_slice(body_hash, &mut hash).is_err() {
            return control::refused("body_hash must be 64 hex digits");
        }
        let key = match crate::files::read_key(&self.cfg.key) {
            Ok(k) => k,
            Err(e) => return control::refused(format!("reading the node key: {e}")),
        };
        let sig = key.sign(Domain::Report, &hash);
        control::ok_view(&control::ReportSignature {
            key: sig.key.to_string(),
            signature: hex::encode(sig.signature.0),
        })
    }
}
