//! Vouchers and enrolments: which peers this node admits as the catalog's vouchers and the
//! enrolments it has seen change, and the peers it drops when they no longer pass.

use super::*;

impl Node {
    /// The gate a node starts with: its own enrolment, if it joined by one.
    pub(super) fn own_gate(own: &crate::trust::Admitted) -> crate::enrol::Gate {
        let mut gate = crate::enrol::Gate::default();
        if let Some(e) = &own.enrolled {
            gate.saw(e);
        }
        gate
    }

    /// Re-reads the vouchers' catalog entries (revocations, approvals) and re-judges peers.
    pub(super) fn refresh_vouchers(&mut self) {
        let mut entries = BTreeMap::new();
        let mut reserved = crate::enrol::ReservedLabels::default();
        let mut revoked_nodes = BTreeMap::new();
        for (key, entry) in self.state.catalog.entries() {
            match entry {
                crate::catalog::CatalogEntry::Voucher(v) => {
                    if let Ok(voucher) = v.voucher() {
                        entries.insert(voucher.id, v);
                    }
                }
                crate::catalog::CatalogEntry::NodeRevocation(r)
                    if key == crate::enrol::NodeRevocation::key_of(&r.node)
                        && r.validate().is_ok() =>
                {
                    revoked_nodes.insert(r.node, r.site);
                }
                crate::catalog::CatalogEntry::ReservedLabels(r)
                    if key == crate::enrol::ReservedLabels::KEY && r.validate().is_ok() =>
                {
                    reserved = r
                }
                _ => {}
            }
        }
        if entries != self.gate.entries
            || reserved != self.gate.reserved
            || revoked_nodes != self.gate.revoked_nodes
        {
            self.gate.entries = entries;
            self.gate.reserved = reserved;
            self.gate.revoked_nodes = revoked_nodes;
            self.rejudge_enrolled();
        }
    }

    /// Disconnects peers this node no longer admits (a voucher revoked, an earlier enrolment
    /// seen that takes their slot, the machine's admission revoked), and drops their records: a
    /// machine refused is no member of the site (its summary does not count it). Anti-entropy
    /// cannot bring a dropped record back, since accepting one passes the same gate.
    pub(super) fn rejudge_enrolled(&mut self) {
        for (peer, e) in self.peers.enrolled() {
            if let Err(g) = self.gate.judge(&e) {
                self.refuse(Some(peer), g.into());
                self.peers.remove(peer);
                self.out.push(Output::Disconnect { peer });
            }
        }
        let out: Vec<NodeId> = self
            .enrolled_members
            .iter()
            .filter(|(node, e)| **node != self.id && self.gate.judge(e).is_err())
            .map(|(node, _)| *node)
            .collect();
        for node in out {
            self.enrolled_members.remove(&node);
            self.state.site.remove_record(&node);
            self.member_heard.remove(&node);
        }
        if self.gate.revoked_nodes.is_empty() {
            return;
        }
        // Machines whose admission an admin revoked, however they were admitted.
        let peers: Vec<(PeerId, NodeId, SiteId)> =
            self.peers.admitted().map(|(p, n, s)| (p, n, s.clone())).collect();
        for (peer, node, site) in peers {
            if let Err(g) = self.gate.judge_node(&node, &site) {
                self.refuse(Some(peer), g.into());
                self.peers.remove(peer);
                self.out.push(Output::Disconnect { peer });
            }
        }
        let own = self.state.site.site().clone();
        let gone: Vec<NodeId> = self
            .gate
            .revoked_nodes
            .iter()
            .filter(|(node, site)| **site == own && **node != self.id)
            .map(|(node, _)| *node)
            .collect();
        for node in gone {
            self.enrolled_members.remove(&node);
            self.state.site.remove_record(&node);
            self.member_heard.remove(&node);
        }
    }

    /// The vouchers this node knows and the enrolments it has seen.
    pub fn enrolments(&self) -> &crate::enrol::Gate {
        &self.gate
    }
}
