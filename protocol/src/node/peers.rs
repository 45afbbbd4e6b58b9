//! Membership: the connections, which of them showed a valid admission certificate, and the
//! per-peer catalog sync state. It decides nothing about objects; it answers who is who.

use super::PeerId;
use crate::catalog::PeerSync;
use crate::ids::{Millis, NodeId, SiteId};
use crate::limits;
use crate::trust::Admitted;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};

/// One connection.
#[derive(Debug)]
pub(crate) struct Peer {
    /// The node key the transport authenticated.
    pub(crate) node: NodeId,
    /// Its certificate, once its hello verified.
    pub(crate) admitted: Option<Admitted>,
    /// Where the catalog sync with it stands.
    pub(crate) catalog: PeerSync,
    connected_at: Millis,
    /// Admitted to this node's own site (worked out once, at admission: the site's name is
    /// compared on every message otherwise).
    local: bool,
}

impl Peer {
    /// Its site, once admitted.
    pub(crate) fn site(&self) -> Option<&SiteId> {
        self.admitted.as_ref().map(|a| &a.cert.site)
    }
}

/// What a hello did to a peer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hello {
    /// First valid hello: the peer is admitted now.
    Admitted,
    /// Already admitted: the peer began a new session while this node's went on (a restart,
    /// or a handover between connections); its certificate replaced the one held.
    Renewed,
    /// Not connected (it went away).
    Unknown,
}

/// The connections of one node.
#[derive(Debug, Default)]
pub(crate) struct Peers {
    /// Boxed: a node holds a handful of peers of several hundred bytes each, and a B-tree leaf
    /// reserves room for eleven entries inline (6.6 KB per node, 660 MB across a simulated
    /// fleet of 100,000).
    map: BTreeMap<PeerId, Box<Peer>>,
}

impl Peers {
    /// A new connection; `false` when the node holds [`limits::PEERS_MAX`] already.
    pub(crate) fn connect(&mut self, peer: PeerId, node: NodeId, now: Millis) -> bool {
        if self.map.len() >= limits::PEERS_MAX && !self.map.contains_key(&peer) {
            return false;
        }
        self.map.insert(
            peer,
            Box::new(Peer {
                node,
                admitted: None,
                catalog: PeerSync::default(),
                connected_at: now,
                local: false,
            }),
        );
        true
    }

    /// The connection closed (or was dropped).
    pub(crate) fn remove(&mut self, peer: PeerId) {
        self.map.remove(&peer);
    }

    /// A connection.
    pub(crate) fn get(&self, peer: PeerId) -> Option<&Peer> {
        self.map.get(&peer).map(|p| &**p)
    }

    /// A connection, to update its sync state.
    /// The connections of the node `node` (the transport authenticated its key).
    pub(crate) fn of_node(&self, node: &NodeId) -> Vec<PeerId> {
        self.map.iter().filter(|(_, p)| p.node == *node).map(|(id, _)| *id).collect()
    }

    pub(crate) fn get_mut(&mut self, peer: PeerId) -> Option<&mut Peer> {
        self.map.get_mut(&peer).map(|p| &mut **p)
    }

    /// Records a verified certificate; `own` is this node's site.
    pub(crate) fn admit(&mut self, peer: PeerId, admitted: Admitted, own: &SiteId) -> Hello {
        match self.map.get_mut(&peer) {
            Some(p) => {
                let first = p.admitted.is_none();
                p.local = admitted.cert.site == *own;
                p.admitted = Some(admitted);
                if first {
                    Hello::Admitted
                } else {
                    Hello::Renewed
                }
            }
            None => Hello::Unknown,
        }
    }

    /// Admitted peers whose certificate expired by `now`, with the error that says so.
    pub(crate) fn expired(&self, now: Millis) -> Vec<(PeerId, crate::trust::TrustError)> {
        self.map
            .iter()
            .filter_map(|(id, p)| {
                let cert = &p.admitted.as_ref()?.cert;
                (now >= cert.expires_at).then(|| {
                    let e = crate::trust::TrustError::Expired {
                        node: cert.node,
                        from: cert.issued_at,
                        until: cert.expires_at,
                        now,
                    };
                    (*id, e)
                })
            })
            .collect()
    }

    /// Admitted peers whose admission is an enrolment, with it.
    pub(crate) fn enrolled(&self) -> Vec<(PeerId, crate::enrol::Enrolled)> {
        self.map
            .iter()
            .filter_map(|(id, p)| Some((*id, p.admitted.as_ref()?.enrolled.clone()?)))
            .collect()
    }

    /// Whether the peer showed a valid certificate.
    pub(crate) fn is_admitted(&self, peer: PeerId) -> bool {
        self.map.get(&peer).is_some_and(|p| p.admitted.is_some())
    }

    /// Admitted peers with their node and site.
    pub(crate) fn admitted(&self) -> impl Iterator<Item = (PeerId, NodeId, &SiteId)> {
        self.map.iter().filter_map(|(p, peer)| peer.site().map(|s| (*p, peer.node, s)))
    }

    /// Admitted peers and whether each is in this node's site, in peer order.
    pub(crate) fn admitted_local(&self) -> Vec<(PeerId, bool)> {
        self.map
            .iter()
            .filter(|(_, p)| p.admitted.is_some())
            .map(|(id, p)| (*id, p.local))
            .collect()
    }

    /// Admitted peers of this node's site, with their nodes.
    pub(crate) fn local(&self) -> impl Iterator<Item = (PeerId, NodeId)> + '_ {
        self.map
            .iter()
            .filter(|(_, p)| p.local && p.admitted.is_some())
            .map(|(id, p)| (*id, p.node))
    }

    /// Whether `peer` is admitted to this node's site.
    pub(crate) fn is_local(&self, peer: PeerId) -> bool {
        self.map.get(&peer).is_some_and(|p| p.local && p.admitted.is_some())
    }

    /// Nodes of this node's site it is connected to (what rollouts count as live).
    pub(crate) fn live_members(&self) -> BTreeSet<NodeId> {
        self.local().map(|(_, n)| n).collect()
    }

    /// One admitted peer drawn from `rng`.
    pub(crate) fn random_admitted(&self, rng: &mut impl Rng) -> Option<PeerId> {
        let admitted: Vec<PeerId> = self.admitted().map(|(p, _, _)| p).collect();
        (!admitted.is_empty()).then(|| admitted[rng.gen_range(0..admitted.len())])
    }

    /// Connections with no valid hello after [`limits::HELLO_TIMEOUT_MS`].
    pub(crate) fn late(&self, now: Millis) -> Vec<PeerId> {
        self.map
            .iter()
            .filter(|(_, p)| {
                p.admitted.is_none() && now.since(p.connected_at) >= limits::HELLO_TIMEOUT_MS
            })
            .map(|(id, _)| *id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Domain, Envelope, SecretKey};
    use crate::trust::AdmissionCert;

    fn admitted(node: NodeId, site: &str) -> Admitted {
        let cert = AdmissionCert {
            mesh: Default::default(),
            node,
            site: SiteId::from(site),
            labels: BTreeMap::new(),
            issued_at: Millis(0),
            expires_at: Millis(u64::MAX),
        };
        let admin = SecretKey::from_seed([7; 32]);
        let envelope = Envelope::seal(Domain::Admission, &cert, &[&admin]);
        Admitted { cert, signer: admin.public(), envelope, enrolled: None }
    }

    #[test]
    fn connections_are_bounded_and_late_hellos_are_found() {
        let mut peers = Peers::default();
        for i in 0..limits::PEERS_MAX as u64 {
            assert!(peers.connect(PeerId(i), NodeId([i as u8; 32]), Millis(0)));
        }
        assert!(!peers.connect(PeerId(u64::MAX), NodeId([9; 32]), Millis(0)), "full");
        assert!(peers.connect(PeerId(0), NodeId([0; 32]), Millis(10)), "a reconnect takes no slot");
        assert_eq!(peers.late(Millis(limits::HELLO_TIMEOUT_MS)).len(), limits::PEERS_MAX - 1);
        assert_eq!(peers.late(Millis(limits::HELLO_TIMEOUT_MS + 10)).len(), limits::PEERS_MAX);
    }

    #[test]
    fn admission_gives_peers_a_site_and_counts_them_live() {
        let mut peers = Peers::default();
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
        peers.connect(PeerId(1), NodeId([1; 32]), Millis(0));
        peers.connect(PeerId(2), NodeId([2; 32]), Millis(0));
        assert_eq!(peers.random_admitted(&mut rng), None);
        let a = SiteId::from("a");
        assert_eq!(peers.admit(PeerId(1), admitted(NodeId([1; 32]), "a"), &a), Hello::Admitted);
        assert_eq!(peers.admit(PeerId(1), admitted(NodeId([1; 32]), "a"), &a), Hello::Renewed);
        assert_eq!(peers.admit(PeerId(3), admitted(NodeId([3; 32]), "a"), &a), Hello::Unknown);
        peers.admit(PeerId(2), admitted(NodeId([2; 32]), "b"), &a);
        let site_of_2 =
            peers.admitted().find(|(p, _, _)| *p == PeerId(2)).map(|(_, _, s)| s.clone());
        assert_eq!(site_of_2, Some(SiteId::from("b")));
        assert_eq!(peers.live_members(), [NodeId([1; 32])].into());
        assert_eq!(peers.admitted_local(), vec![(PeerId(1), true), (PeerId(2), false)]);
        assert!(peers.is_local(PeerId(1)) && !peers.is_local(PeerId(2)));
        // A renewed certificate naming another site moves the peer out of this one.
        peers.admit(PeerId(1), admitted(NodeId([1; 32]), "b"), &a);
        assert!(!peers.is_local(PeerId(1)));
        assert!(peers.live_members().is_empty());
        peers.admit(PeerId(1), admitted(NodeId([1; 32]), "a"), &a);
        assert!(peers.random_admitted(&mut rng).is_some());
        assert!(peers.late(Millis(limits::HELLO_TIMEOUT_MS * 2)).is_empty());
        peers.remove(PeerId(1));
        assert!(!peers.is_admitted(PeerId(1)));
    }
}
