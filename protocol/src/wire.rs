//! Wire messages between nodes and their bounded decoding.

use crate::catalog::CatalogSync;
use crate::crypto::{decode, encode, DecodeError, Envelope};
use crate::ids::{MeshId, SiteId, StateHash};
use crate::limits;
use crate::site::{Bundle, SiteKey};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Rank of a site summary (see [`crate::site::SummaryRank`]).
pub type Rank = crate::site::SummaryRank;

/// Everything one node says to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// First message on a connection: who we are, as an admin vouched.
    Hello {
        /// The mesh we belong to.
        mesh: MeshId,
        /// Our admission certificate.
        admission: Envelope,
        /// Our admin-set version.
        trust_version: u64,
    },
    /// Admin sets after the genesis, in version order.
    AdminSets(Vec<Envelope>),
    /// One new signed catalog change (gossip).
    CatalogChange(Arc<Envelope>),
    /// An automerge sync round with signed changes.
    CatalogSync(CatalogSync),
    /// Periodic anti-entropy: digests of everything replicated.
    Digest {
        /// Catalog state hash.
        catalog: StateHash,
        /// Our site's state digest.
        site: StateHash,
        /// Digest of the site summaries held.
        summaries: StateHash,
        /// Digest of the fleet-wide failure reports held.
        alarms: StateHash,
        /// Admin-set version.
        trust_version: u64,
    },
    /// The site objects the sender holds; `reply` asks for the receiver's keys in return.
    SiteKeys {
        /// Keys held.
        keys: Vec<SiteKey>,
        /// Whether the receiver should answer with its own keys.
        reply: bool,
    },
    /// Site objects (records and evidence) the receiver lacks, or new ones (gossip).
    SiteObjects(Vec<Arc<Bundle>>),
    /// The summary ranks the sender holds.
    SummaryRanks {
        /// (site, rank) held.
        ranks: Vec<(SiteId, Rank)>,
        /// Whether the receiver should answer with its own ranks.
        reply: bool,
    },
    /// Site summaries.
    Summaries(Vec<Arc<Bundle>>),
    /// Failure reports, flooded to every node; `reply` asks for the ones the sender lacks.
    Alarms {
        /// Evidence bundles of kind `InstallFailed`.
        bundles: Vec<Arc<Bundle>>,
        /// True in anti-entropy: answer with what the sender does not hold.
        reply: bool,
    },
    /// A site reporter's periodic beacon (see [`crate::site::Beacon`]), flooded to every node.
    Beacon(Arc<Bundle>),
    /// Asks for the freshest beacons the receiver holds (a node that just started, or that
    /// hears no other site); answered with up to [`limits::BEACONS_ANSWERED_MAX`] `Beacon`s.
    BeaconsAsk,
}

impl Message {
    /// Encodes for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes from the wire, size first, refusing trailing bytes and oversized collections.
    pub fn from_bytes(bytes: &[u8]) -> Result<Message, DecodeError> {
        let msg: Message = decode("message", bytes, limits::MESSAGE_BYTES_MAX)?;
        let count = match &msg {
            Message::AdminSets(v) => v.len(),
            Message::SiteKeys { keys, .. } => keys.len(),
            Message::SiteObjects(v) | Message::Summaries(v) => v.len(),
            Message::Alarms { bundles, .. } => bundles.len(),
            Message::SummaryRanks { ranks, .. } => ranks.len(),
            Message::CatalogSync(s) => s.changes.len(),
            _ => 0,
        };
        if count > limits::DIGEST_ENTRIES_MAX {
            return Err(DecodeError::TooLarge {
                what: "message entries",
                size_bytes: count,
                limit_bytes: limits::DIGEST_ENTRIES_MAX,
            });
        }
        Ok(msg)
    }

    /// Exact encoded size without allocating the encoding. Batches of bundles add up each
    /// bundle's cached size (variant tag and length prefix included).
    pub fn wire_bytes(&self) -> usize {
        match self {
            Message::SiteObjects(v) | Message::Summaries(v) => {
                1 + varint_len(v.len()) + v.iter().map(|b| b.wire_bytes()).sum::<usize>()
            }
            other => postcard::serialize_with_flavor(other, postcard::ser_flavors::Size::default())
                .unwrap_or(0),
        }
    }

    /// Short name for statistics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::AdminSets(_) => "admin_sets",
            Message::CatalogChange(_) => "catalog_change",
            Message::CatalogSync(_) => "catalog_sync",
            Message::Digest { .. } => "digest",
            Message::SiteKeys { .. } => "site_keys",
            Message::SiteObjects(_) => "site_objects",
            Message::SummaryRanks { .. } => "summary_ranks",
            Message::Summaries(_) => "summaries",
            Message::Alarms { .. } => "alarms",
            Message::Beacon(_) => "beacon",
            Message::BeaconsAsk => "beacons_ask",
        }
    }

    /// True for messages that carry catalog state.
    pub fn is_catalog(&self) -> bool {
        matches!(self, Message::CatalogChange(_) | Message::CatalogSync(_))
    }
}

/// Bytes of postcard's varint encoding of a length.
fn varint_len(n: usize) -> usize {
    let bits = usize::BITS - n.leading_zeros();
    (bits.max(1) as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Domain, SecretKey};

    #[test]
    fn batch_wire_size_matches_the_encoding() {
        let k = SecretKey::from_seed([1; 32]);
        let mk = |n: u8| {
            Arc::new(Bundle::new(
                Envelope::seal(Domain::Evidence, &vec![n; usize::from(n) * 3], &[&k]),
                Envelope::seal(Domain::Admission, &vec![n; 5], &[&k]),
            ))
        };
        for count in [0usize, 1, 5, 200] {
            let msg = Message::SiteObjects((0..count).map(|i| mk(i as u8)).collect());
            assert_eq!(msg.wire_bytes(), msg.to_bytes().len(), "{count} bundles");
        }
        let msg = Message::Digest {
            catalog: StateHash([1; 32]),
            site: StateHash([2; 32]),
            summaries: StateHash([3; 32]),
            alarms: StateHash([4; 32]),
            trust_version: 300,
        };
        assert_eq!(msg.wire_bytes(), msg.to_bytes().len());
    }

    #[test]
    fn oversized_and_overfull_messages_are_refused() {
        let big = vec![0u8; limits::MESSAGE_BYTES_MAX + 1];
        assert!(matches!(Message::from_bytes(&big), Err(DecodeError::TooLarge { .. })));
        let keys = Message::SiteKeys {
            keys: vec![
                crate::site::SiteKey::Evidence(crate::ids::ObjectId([0; 32]));
                limits::DIGEST_ENTRIES_MAX + 1
            ],
            reply: false,
        };
        // Too large in bytes already; a message under the byte limit but over the entry limit
        // is refused for its entry count.
        assert!(Message::from_bytes(&keys.to_bytes()).is_err());
        let few = Message::SiteKeys { keys: vec![], reply: true };
        assert_eq!(Message::from_bytes(&few.to_bytes()).unwrap(), few);
        let mut trailing = few.to_bytes();
        trailing.push(0);
        assert!(matches!(Message::from_bytes(&trailing), Err(DecodeError::Malformed { .. })));
    }
}
