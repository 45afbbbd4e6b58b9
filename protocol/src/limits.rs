//! Every bound in the protocol core, in one place. Each queue, map, message and decode is limited
//! by a constant here, and each has a test that exceeds it.

/// Largest encoded wire message a node decodes. Checked before any decoding starts.
pub const MESSAGE_BYTES_MAX: usize = 256 * 1024;
/// Largest signed-envelope body.
pub const ENVELOPE_BODY_BYTES_MAX: usize = 64 * 1024;
/// Signatures on one envelope (root threshold sets are small).
pub const SIGNATURES_PER_ENVELOPE_MAX: usize = 16;
/// Keys in a genesis root set or an admin set.
pub const KEYS_PER_SET_MAX: usize = 64;
/// Site and label strings.
pub const SITE_NAME_BYTES_MAX: usize = 64;
/// Labels on one admission certificate.
pub const LABELS_PER_NODE_MAX: usize = 32;
/// Bytes of one label key or value.
pub const LABEL_BYTES_MAX: usize = 64;
/// One automerge change inside a signed catalog envelope.
pub const CATALOG_CHANGE_BYTES_MAX: usize = 32 * 1024;
/// Changes a node holds in its catalog (the catalog is admin-written and small).
pub const CATALOG_CHANGES_MAX: usize = 100_000;
/// Catalog envelopes carried in one sync message.
pub const CATALOG_CHANGES_PER_SYNC_MAX: usize = 256;
/// One encoded automerge sync message (heads, needs, bloom filters).
pub const CATALOG_SYNC_BYTES_MAX: usize = 64 * 1024;
/// Catalog values (one patch, rollout or command entry, JSON).
pub const CATALOG_VALUE_BYTES_MAX: usize = 16 * 1024;
/// Node records (and admission certificates) one node holds: its site in full.
pub const RECORDS_MAX: usize = 20_000;
/// Records or evidence carried in one anti-entropy message.
pub const OBJECTS_PER_SYNC_MAX: usize = 512;
/// Entries in one digest message.
pub const DIGEST_ENTRIES_MAX: usize = 20_000;
/// Evidence reports held (site-local, grow-only).
pub const EVIDENCE_MAX: usize = 200_000;
/// Per-site summaries held (one per site).
pub const SITES_MAX: usize = 4_096;
/// (rollout, status) counters inside one summary.
pub const SUMMARY_COUNTERS_MAX: usize = 1_024;
/// Rollout status entries in one node record.
pub const ROLLOUT_STATUS_PER_RECORD_MAX: usize = 256;
/// Connected peers a node tracks.
pub const PEERS_MAX: usize = 256;
/// Queued outputs before the driver must drain.
pub const OUTPUT_QUEUE_MAX: usize = 100_000;
/// Message ids remembered for gossip de-duplication.
pub const SEEN_IDS_MAX: usize = 65_536;
/// Rejections remembered for diagnostics.
pub const REJECTIONS_LOGGED_MAX: usize = 256;
/// Free-text fields (names, descriptions, inventory summaries).
pub const TEXT_BYTES_MAX: usize = 256;
/// A connected peer that has not presented a valid admission certificate by then is dropped.
pub const HELLO_TIMEOUT_MS: u64 = 10_000;
/// Largest payload the protocol transfers (a node's configured limit may be lower).
pub const PAYLOAD_BYTES_MAX: u64 = 16 << 30;
/// Verification groups of the largest payload.
pub const PAYLOAD_GROUPS_MAX: u64 = PAYLOAD_BYTES_MAX / crate::transfer::GROUP_BYTES;
/// Groups one range request may ask for (16 MiB).
pub const RANGE_GROUPS_MAX: u64 = 1024;
/// One data-stream request or reply header (a `Have` reply carries a bitfield).
pub const DATA_FRAME_BYTES_MAX: usize = (PAYLOAD_GROUPS_MAX / 8) as usize + 1024;
/// Sources one download tracks.
pub const SOURCES_PER_DOWNLOAD_MAX: usize = 64;
/// Rings of one rollout.
pub const RINGS_PER_ROLLOUT_MAX: usize = 16;
/// Maintenance windows of one rollout.
pub const WINDOWS_PER_ROLLOUT_MAX: usize = 32;
/// Sites one selector may name.
pub const SITES_PER_SELECTOR_MAX: usize = 256;
/// Package predicates of one selector.
pub const PREDICATES_PER_SELECTOR_MAX: usize = 32;
/// Failure reports held per rollout from the whole fleet (a halt needs far fewer).
pub const ALARMS_PER_ROLLOUT_MAX: usize = 256;
/// Rollouts failure reports are held for.
pub const ALARM_ROLLOUTS_MAX: usize = 256;
/// Install journal entries (one per rollout) a node keeps.
pub const JOURNAL_ENTRIES_MAX: usize = 256;
/// Shortest re-verification period during soak.
pub const RECHECK_MS_MIN: u64 = 100;
