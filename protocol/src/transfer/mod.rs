//! Payload transfer: verified streaming, availability, site election and the download planner.
//!
//! ## Verified streaming
//! A payload is named by its BLAKE3 hash (what `b3sum` prints). BLAKE3 is a tree over 1 KiB
//! chunks; we cut it at **groups** of 16 chunks (16 KiB). The chaining values of the groups —
//! the *outboard*, 32 bytes per group, 0.2 % of the payload — are fetched from any peer and
//! checked once by folding them up the BLAKE3 tree to the content id ([`root_of`]). After that
//! every 16 KiB group is checked on arrival against its own chaining value ([`group_cv`]), so a
//! corrupt byte is caught within the group that carries it, and nothing unverified is ever
//! written as held. This is the same cut the `bao-tree` crate makes at `BlockSize` 16 KiB; we
//! keep only the leaf layer of the tree, because a receiver that holds the whole layer can
//! check any group alone and resume anywhere without the parents.
//!
//! ## Who fetches what from whom
//! - [`elect`]: for each content, the live members of a site rank themselves by a rendezvous
//!   hash of (content id, node id); the first is the one node that fetches across the WAN. Every
//!   member computes the same answer from the same membership; when the elected node leaves, the
//!   next in rank takes over ([`Role`]).
//! - [`plan::Download`]: one download's state. It asks sources what they hold, splits missing
//!   groups over several sources at once, pipelines requests, and drops (and reports for
//!   penalty) a source that is slow, lies about what it holds, sends too much, or sends a group
//!   that fails verification. Non-elected nodes use LAN sources only, so they stream from the
//!   elected node while it is still receiving.
//!
//! The real node and the simulator both drive [`plan::Download`]; only the bytes differ.
//!
//! ## Wire
//! A data stream carries one [`DataRequest`] (length-prefixed, bounded) and one
//! [`DataReply`] header, followed for `Range` by exactly the requested bytes and for
//! `Outboard` by the chaining values.

pub mod fetch;
pub mod plan;

use crate::crypto::{decode, encode, DecodeError};
use crate::ids::{ContentId, NodeId};
use crate::limits;
use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode};
use serde::{Deserialize, Serialize};

/// Bytes of one verification group: 16 BLAKE3 chunks.
pub const GROUP_BYTES: u64 = limits::GROUP_BYTES;

/// Groups of a payload of `size_bytes` (an empty payload has one empty group).
pub fn group_count(size_bytes: u64) -> u64 {
    size_bytes.div_ceil(GROUP_BYTES).max(1)
}

/// Byte range `(offset, len)` of group `index` in a payload of `size_bytes`.
pub fn group_span(size_bytes: u64, index: u64) -> (u64, u64) {
    let offset = index * GROUP_BYTES;
    (offset, size_bytes.saturating_sub(offset).min(GROUP_BYTES))
}

/// Chaining value of group `index` holding `data`, in a payload of `size_bytes`. A payload of
/// one group is its own root, so its "chaining value" is the content id itself.
pub fn group_cv(size_bytes: u64, index: u64, data: &[u8]) -> [u8; 32] {
    if size_bytes <= GROUP_BYTES {
        return *blake3::hash(data).as_bytes();
    }
    let mut h = blake3::Hasher::new();
    h.set_input_offset(index * GROUP_BYTES);
    h.update(data);
    h.finalize_non_root()
}

/// Folds the group chaining values of a payload up the BLAKE3 tree; equals the content id iff
/// the outboard is genuine. `None` when the number of values does not fit the size.
pub fn root_of(size_bytes: u64, cvs: &[[u8; 32]]) -> Option<ContentId> {
    if cvs.len() as u64 != group_count(size_bytes) {
        return None;
    }
    if size_bytes <= GROUP_BYTES {
        return Some(ContentId(cvs[0]));
    }
    let (left, right) = split(size_bytes);
    let l = subtree(0, left, cvs);
    let r = subtree(left, right, cvs);
    Some(ContentId(*merge_subtrees_root(&l, &r, Mode::Hash).as_bytes()))
}

/// BLAKE3's split of a subtree of `len` bytes (> one chunk): the left side is the largest power
/// of two chunks strictly smaller than the whole. For `len` > 16 KiB both sides are whole groups
/// or end at the payload's end, so groups never straddle the split.
fn split(len: u64) -> (u64, u64) {
    let left = blake3::hazmat::left_subtree_len(len);
    (left, len - left)
}

fn subtree(start: u64, len: u64, cvs: &[[u8; 32]]) -> [u8; 32] {
    if len <= GROUP_BYTES {
        return cvs[(start / GROUP_BYTES) as usize];
    }
    let (left, right) = split(len);
    let l = subtree(start, left, cvs);
    let r = subtree(start + left, right, cvs);
    merge_subtrees_non_root(&l, &r, Mode::Hash)
}

/// Parses an outboard (concatenated 32-byte chaining values) and checks it against the id.
pub fn check_outboard(
    content: &ContentId,
    size_bytes: u64,
    bytes: &[u8],
) -> Result<Vec<[u8; 32]>, TransferError> {
    let expected = group_count(size_bytes) * 32;
    if bytes.len() as u64 != expected {
        return Err(TransferError::OutboardSize { got: bytes.len() as u64, expected });
    }
    let cvs: Vec<[u8; 32]> =
        bytes.chunks_exact(32).map(|c| c.try_into().expect("32-byte chunk")).collect();
    match root_of(size_bytes, &cvs) {
        Some(root) if root == *content => Ok(cvs),
        _ => Err(TransferError::OutboardMismatch),
    }
}

/// Errors of payload transfer that a peer can cause.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransferError {
    /// The outboard has the wrong length for the payload size.
    #[error("outboard is {got} bytes, expected {expected}")]
    OutboardSize {
        /// Bytes received.
        got: u64,
        /// Bytes a genuine outboard has.
        expected: u64,
    },
    /// The outboard does not hash to the content id.
    #[error("outboard does not hash to the content id")]
    OutboardMismatch,
    /// A payload larger than the protocol accepts.
    #[error("payload of {size_bytes} bytes exceeds the limit of {limit_bytes}")]
    TooLarge {
        /// Signed size.
        size_bytes: u64,
        /// The limit.
        limit_bytes: u64,
    },
    /// A range outside the payload or longer than one request may be.
    #[error("range of {count} groups at {first} is invalid for {groups} groups (max {max})")]
    BadRange {
        /// First group asked for.
        first: u64,
        /// Groups asked for.
        count: u64,
        /// Groups in the payload.
        groups: u64,
        /// Largest range one request may ask for.
        max: u64,
    },
    /// A frame that does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// A set of groups, one bit each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Bitfield {
    len: u64,
    words: Vec<u64>,
}

impl Bitfield {
    /// An empty set over `len` groups.
    pub fn new(len: u64) -> Bitfield {
        Bitfield { len, words: vec![0; len.div_ceil(64) as usize] }
    }
    /// A full set over `len` groups.
    pub fn full(len: u64) -> Bitfield {
        let mut b = Bitfield::new(len);
        b.words.iter_mut().for_each(|w| *w = u64::MAX);
        if !len.is_multiple_of(64) {
            if let Some(last) = b.words.last_mut() {
                *last = (1u64 << (len % 64)) - 1;
            }
        }
        b
    }
    /// Groups the set ranges over.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Whether it ranges over nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Whether group `i` is in the set.
    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    /// Adds group `i`; returns whether it was new.
    pub fn set(&mut self, i: u64) -> bool {
        if i >= self.len {
            return false;
        }
        let w = &mut self.words[(i / 64) as usize];
        let new = *w & (1 << (i % 64)) == 0;
        *w |= 1 << (i % 64);
        new
    }
    /// Removes group `i`.
    pub fn clear(&mut self, i: u64) {
        if i < self.len {
            self.words[(i / 64) as usize] &= !(1 << (i % 64));
        }
    }
    /// Groups in the set.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }
    /// Whether every group is in the set.
    pub fn is_full(&self) -> bool {
        self.count() == self.len
    }
    /// The bits, 64 groups a word (group `i` is bit `i % 64` of word `i / 64`).
    pub fn words(&self) -> &[u64] {
        &self.words
    }
    /// Encodes for disk or wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }
    /// Decodes, refusing a set larger than the largest payload or with stray bits.
    pub fn from_bytes(bytes: &[u8]) -> Result<Bitfield, DecodeError> {
        let limit = (limits::PAYLOAD_GROUPS_MAX / 8 + 64) as usize;
        let b: Bitfield = decode("bitfield", bytes, limit)?;
        let bad = b.len > limits::PAYLOAD_GROUPS_MAX
            || b.words.len() as u64 != b.len.div_ceil(64)
            || (!b.len.is_multiple_of(64)
                && b.words.last().is_some_and(|w| w >> (b.len % 64) != 0));
        if bad {
            return Err(DecodeError::Malformed {
                what: "bitfield",
                reason: "length and words disagree".into(),
            });
        }
        Ok(b)
    }
}

/// What a source says it holds of a content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Availability {
    /// Nothing.
    Nothing,
    /// All of it.
    Complete,
    /// These groups (a download in progress).
    Partial(Bitfield),
}

impl Availability {
    /// Whether the source claims group `i`.
    pub fn has(&self, i: u64) -> bool {
        match self {
            Availability::Nothing => false,
            Availability::Complete => true,
            Availability::Partial(b) => b.get(i),
        }
    }
}

/// Rendezvous score of a node for a content: the highest fetches across the WAN.
pub fn rendezvous(content: &ContentId, node: &NodeId) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"patchmesh/v1/site-fetcher");
    h.update(&content.0);
    h.update(&node.0);
    *h.finalize().as_bytes()
}

/// The live site member that fetches `content` across the WAN.
pub fn elect<'a>(
    content: &ContentId,
    live: impl IntoIterator<Item = &'a NodeId>,
) -> Option<NodeId> {
    live.into_iter().max_by_key(|n| (rendezvous(content, n), **n)).copied()
}

/// A node's part in fetching one content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The elected node of its site: may fetch from other sites.
    Wan,
    /// Any other member: fetches from its own site only.
    Lan,
}

/// This node's role for `content`, given the live members of its site it knows (itself
/// included or not; it is added).
pub fn role_of<'a>(
    content: &ContentId,
    me: &'a NodeId,
    live: impl IntoIterator<Item = &'a NodeId>,
) -> Role {
    let winner = elect(content, live.into_iter().chain(std::iter::once(me)));
    if winner.as_ref() == Some(me) {
        Role::Wan
    } else {
        Role::Lan
    }
}

/// A request on a data stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataRequest {
    /// What do you hold of this content?
    Have {
        /// The content.
        content: ContentId,
    },
    /// Send the outboard (group chaining values).
    Outboard {
        /// The content.
        content: ContentId,
    },
    /// Send groups `first .. first + count`.
    Range {
        /// The content.
        content: ContentId,
        /// First group.
        first: u64,
        /// Number of groups, at most [`limits::RANGE_GROUPS_MAX`].
        count: u64,
    },
}

/// The header of an answer; `Range` and `Outboard` bodies follow it on the stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataReply {
    /// What the server holds; `size_bytes` is 0 when it holds nothing.
    Have {
        /// Payload size.
        size_bytes: u64,
        /// Held groups.
        availability: Availability,
    },
    /// The outboard follows: `groups * 32` bytes.
    Outboard {
        /// Payload size.
        size_bytes: u64,
    },
    /// The requested groups follow, exactly their bytes.
    Range {
        /// Payload size.
        size_bytes: u64,
    },
    /// The server does not hold (all of) what was asked.
    Missing,
    /// The request was invalid (range too large or outside the payload).
    Refused {
        /// Why, for the requester's log.
        reason: String,
    },
}

impl DataRequest {
    /// Encodes as one frame.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }
    /// Decodes one frame.
    pub fn from_bytes(bytes: &[u8]) -> Result<DataRequest, DecodeError> {
        decode("data request", bytes, limits::DATA_FRAME_BYTES_MAX)
    }
    /// The content it is about.
    pub fn content(&self) -> &ContentId {
        match self {
            DataRequest::Have { content }
            | DataRequest::Outboard { content }
            | DataRequest::Range { content, .. } => content,
        }
    }
}

impl DataReply {
    /// Encodes as one frame.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(self)
    }
    /// Decodes one frame.
    pub fn from_bytes(bytes: &[u8]) -> Result<DataReply, DecodeError> {
        decode("data reply", bytes, limits::DATA_FRAME_BYTES_MAX)
    }
}

/// Checks a range request against a payload size: what a server does before reading a byte.
pub fn check_range(size_bytes: u64, first: u64, count: u64) -> Result<(u64, u64), TransferError> {
    let groups = group_count(size_bytes);
    let max = limits::RANGE_GROUPS_MAX;
    if count == 0 || count > max || first >= groups || count > groups - first {
        return Err(TransferError::BadRange { first, count, groups, max });
    }
    let (offset, _) = group_span(size_bytes, first);
    let (last_off, last_len) = group_span(size_bytes, first + count - 1);
    Ok((offset, last_off + last_len - offset))
}

/// Checks a signed payload size against the protocol's limit.
pub fn check_size(size_bytes: u64) -> Result<(), TransferError> {
    if size_bytes > limits::PAYLOAD_BYTES_MAX {
        return Err(TransferError::TooLarge { size_bytes, limit_bytes: limits::PAYLOAD_BYTES_MAX });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn cvs_of(d: &[u8]) -> Vec<[u8; 32]> {
        let size = d.len() as u64;
        (0..group_count(size))
            .map(|g| {
                let (o, l) = group_span(size, g);
                group_cv(size, g, &d[o as usize..(o + l) as usize])
            })
            .collect()
    }

    #[test]
    fn outboard_folds_to_the_blake3_hash() {
        for len in [0, 1, 1024, 16384, 16385, 32768, 40000, 65536, 100_000, 1 << 20, 3 << 20] {
            let d = data(len);
            let cvs = cvs_of(&d);
            let id = ContentId(*blake3::hash(&d).as_bytes());
            assert_eq!(root_of(len as u64, &cvs), Some(id), "len {len}");
            let bytes: Vec<u8> = cvs.concat();
            assert!(check_outboard(&id, len as u64, &bytes).is_ok());
        }
    }

    #[test]
    fn a_flipped_byte_fails_only_its_group() {
        let d = data(200_000);
        let cvs = cvs_of(&d);
        let mut bad = d.clone();
        bad[70_000] ^= 1;
        let size = d.len() as u64;
        for g in 0..group_count(size) {
            let (o, l) = group_span(size, g);
            let ok = group_cv(size, g, &bad[o as usize..(o + l) as usize]) == cvs[g as usize];
            assert_eq!(ok, g != 70_000 / GROUP_BYTES, "group {g}");
        }
    }

    #[test]
    fn a_forged_outboard_is_refused() {
        let d = data(100_000);
        let id = ContentId(*blake3::hash(&d).as_bytes());
        let mut bytes = cvs_of(&d).concat();
        bytes[40] ^= 1;
        assert_eq!(check_outboard(&id, 100_000, &bytes), Err(TransferError::OutboardMismatch));
        assert!(matches!(
            check_outboard(&id, 100_000, &bytes[..32]),
            Err(TransferError::OutboardSize { .. })
        ));
        // A lying size can fold to the same root (the group count and tree shape are the same),
        // but then the last group can never verify: the size is checked by the data itself.
        let good = cvs_of(&d);
        let last = group_count(99_999) - 1;
        let (o, l) = group_span(99_999, last);
        assert_ne!(group_cv(99_999, last, &d[o as usize..(o + l) as usize]), good[last as usize]);
        // A size with another group count cannot fit the outboard at all.
        assert!(check_outboard(&id, 200_000, &good.concat()).is_err());
    }

    #[test]
    fn ranges_are_checked() {
        let size = 10 * GROUP_BYTES + 5;
        assert_eq!(check_range(size, 0, 11), Ok((0, size)));
        assert_eq!(check_range(size, 10, 1), Ok((10 * GROUP_BYTES, 5)));
        assert!(check_range(size, 10, 2).is_err());
        assert!(check_range(size, 11, 1).is_err());
        assert!(check_range(size, 0, 0).is_err());
        assert!(check_range(u64::MAX, 0, limits::RANGE_GROUPS_MAX + 1).is_err());
        assert!(check_range(size, u64::MAX, u64::MAX).is_err());
    }

    #[test]
    fn bitfields_round_trip_and_refuse_garbage() {
        let mut b = Bitfield::new(130);
        for i in [0, 63, 64, 129] {
            assert!(b.set(i));
        }
        assert!(!b.set(0));
        assert!(!b.set(130));
        assert_eq!(b.count(), 4);
        let back = Bitfield::from_bytes(&b.to_bytes()).unwrap();
        assert_eq!(back, b);
        let stray = Bitfield { len: 3, words: vec![0b1000] };
        assert!(Bitfield::from_bytes(&stray.to_bytes()).is_err());
        let huge = Bitfield { len: limits::PAYLOAD_GROUPS_MAX + 1, words: vec![] };
        assert!(Bitfield::from_bytes(&huge.to_bytes()).is_err());
        assert!(Bitfield::full(70).is_full());
    }

    #[test]
    fn election_is_the_same_from_every_view_and_fails_over() {
        let c = ContentId([7; 32]);
        let nodes: Vec<NodeId> = (0..8u8).map(|i| NodeId([i; 32])).collect();
        let winner = elect(&c, &nodes).unwrap();
        let mut reversed = nodes.clone();
        reversed.reverse();
        assert_eq!(elect(&c, &reversed), Some(winner));
        let wan: Vec<&NodeId> =
            nodes.iter().filter(|n| role_of(&c, n, &nodes) == Role::Wan).collect();
        assert_eq!(wan, vec![&winner]);
        let rest: Vec<NodeId> = nodes.iter().copied().filter(|n| *n != winner).collect();
        let next = elect(&c, &rest).unwrap();
        assert_ne!(next, winner);
        assert_eq!(role_of(&c, &next, &rest), Role::Wan);
        // Different contents spread over different members.
        let winners: std::collections::BTreeSet<NodeId> =
            (0..64u8).map(|i| elect(&ContentId([i; 32]), &nodes).unwrap()).collect();
        assert!(winners.len() > 4);
    }

    #[test]
    fn data_frames_are_bounded() {
        let r = DataRequest::Range { content: ContentId([1; 32]), first: 3, count: 4 };
        assert_eq!(DataRequest::from_bytes(&r.to_bytes()).unwrap(), r);
        assert!(DataRequest::from_bytes(&[0xff; 10]).is_err());
        assert!(DataReply::from_bytes(&vec![0; limits::DATA_FRAME_BYTES_MAX + 1]).is_err());
    }
}
