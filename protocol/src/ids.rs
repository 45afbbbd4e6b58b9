//! Identifier newtypes. Every id that crosses the wire is a fixed-size byte array or a bounded
//! string, so decoding can never allocate without limit.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
        pub struct $name(pub [u8; 32]);
        hash_id_methods!($name);
    };
}

macro_rules! hash_id_methods {
    ($name:ident) => {
        impl $name {
            /// The id as lowercase hex.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// Parses 64 hex digits.
            pub fn from_hex(s: &str) -> Option<Self> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).ok()?;
                Some(Self(out))
            }
            /// The first eight hex digits, for logs and tables.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }

        /// The order of the bytes, as derived, but compared eight bytes at a time: ids key
        /// most maps, and a call to `memcmp` per comparison was a sixth of a 10,000-node
        /// simulation's time.
        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                id_words(&self.0).cmp(&id_words(&other.0))
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
    };
}

/// 32 bytes as four big-endian words: compared in order, they order as the bytes do.
#[inline]
fn id_words(b: &[u8; 32]) -> (u64, u64, u64, u64) {
    let w = |i: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[i * 8..i * 8 + 8]);
        u64::from_be_bytes(x)
    };
    (w(0), w(1), w(2), w(3))
}

hash_id!(
    /// A node's identity: its ed25519 public key. Transport identities (libp2p PeerIds) are
    /// separate; authority always comes from signatures by this key.
    NodeId
);
hash_id!(
    /// An admin or root public key.
    KeyId
);
/// BLAKE3 of a payload (a patch or an intel bundle): the value `b3sum` prints. In
/// human-readable formats (JSON views) it is that hex string; on the wire, 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ContentId(pub [u8; 32]);
hash_id_methods!(ContentId);

impl Serialize for ContentId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for ContentId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            ContentId::from_hex(&s)
                .ok_or_else(|| serde::de::Error::custom("a content id is 64 hex digits"))
        } else {
            <[u8; 32]>::deserialize(d).map(ContentId)
        }
    }
}
hash_id!(
    /// A mesh: BLAKE3 of the genesis' canonical encoding.
    MeshId
);
hash_id!(
    /// A rollout, chosen by the admin who creates it.
    RolloutId
);
hash_id!(
    /// Content hash of a signed object; gossip message ids are these.
    ObjectId
);
hash_id!(
    /// A hash committing to some replicated state.
    StateHash
);

/// A site (branch office) name. Bounded in length by [`crate::limits::SITE_NAME_BYTES_MAX`].
/// Shared, so the many copies a fleet-wide summary table holds cost a pointer each.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct SiteId(pub std::sync::Arc<str>);

impl SiteId {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Site({})", self.0)
    }
}

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for SiteId {
    fn from(s: &str) -> Self {
        SiteId(std::sync::Arc::from(s))
    }
}

/// Milliseconds since the Unix epoch, as told by the driver. The protocol core never reads a
/// clock: every input carries its time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Millis(pub u64);

impl Millis {
    /// `self + ms`, saturating.
    pub fn plus(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }
    /// `self - earlier` in milliseconds, zero if `earlier` is later.
    pub fn since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Debug for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn ids_order_as_their_bytes_do() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..10_000 {
            let a: [u8; 32] = rng.gen();
            let mut b = a;
            // Differ at one byte (any word, any place in it), or not at all.
            if rng.gen_bool(0.9) {
                b[rng.gen_range(0..32)] = rng.gen();
            }
            assert_eq!(NodeId(a).cmp(&NodeId(b)), a.cmp(&b), "{a:?} {b:?}");
            assert_eq!(ContentId(a).cmp(&ContentId(b)), a.cmp(&b));
            assert_eq!(RolloutId(a).partial_cmp(&RolloutId(b)), Some(a.cmp(&b)));
        }
    }
}
