//! Wire messages between nodes and their bounded decoding.

use crate::catalog::CatalogSync;
use crate::crypto::{decode, encode, DecodeError, Envelope};
use crate::ids::{MeshId, SiteId, StateHash};
use crate::limits;
use crate::site::{Bundle, SiteKey};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Rank of a site summary: (version sum, evidence count, body hash).
pub type Rank = (u64, u32, [u8; 32]);

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

    /// Encoded size without allocating the encoding.
    pub fn wire_bytes(&self) -> usize {
        postcard::serialize_with_flavor(self, postcard::ser_flavors::Size::default()).unwrap_or(0)
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
        }
    }

    /// True for messages that carry catalog state.
    pub fn is_catalog(&self) -> bool {
        matches!(self, Message::CatalogChange(_) | Message::CatalogSync(_))
    }
}
