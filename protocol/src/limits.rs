//! Every bound in the protocol core, in one place. Each queue, map, message and decode is limited
//! by a constant here, and each has a test that exceeds it.

/// Audit equivocations a site state keeps as evidence.
pub const EQUIVOCATIONS_MAX: usize = 64;

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
/// Member kinds (time zone, OS, labels) a site summary's shape lists; members of other kinds
/// are counted together.
pub const SITE_SHAPE_KINDS_MAX: usize = 16;
/// Bytes of the strings of the kinds a site summary's shape lists.
pub const SITE_SHAPE_BYTES_MAX: usize = 4096;
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
pub const PAYLOAD_GROUPS_MAX: u64 = PAYLOAD_BYTES_MAX / GROUP_BYTES;
/// Bytes of one verification group (16 BLAKE3 chunks); `transfer::GROUP_BYTES` is this.
pub const GROUP_BYTES: u64 = 16 * 1024;
/// Groups one range request may ask for (16 MiB).
pub const RANGE_GROUPS_MAX: u64 = 1024;
/// One data-stream request or reply header (a `Have` reply carries a bitfield).
pub const DATA_FRAME_BYTES_MAX: usize = (PAYLOAD_GROUPS_MAX / 8) as usize + 1024;
/// Sources one download tracks.
pub const SOURCES_PER_DOWNLOAD_MAX: usize = 64;
/// Provider records of one content a DHT node keeps (libp2p keeps 20 by default and ignores
/// later announcements): the first holders are then all the origin site, which a fleet of
/// branch offices must not all pull from. Partial holders announce themselves, so the records
/// spread over the sites that are fetching.
pub const DHT_PROVIDERS_PER_KEY: usize = 256;
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
/// How often a download measures its sources' rates and judges slowness.
pub const FETCH_CHECK_MS: u64 = 250;
/// First rest of a source whose stream broke or that was slow; each strike doubles it.
pub const FETCH_REST_MS: u64 = 1_000;
/// First rest of a source that lied or sent corrupt data; each strike doubles it.
pub const FETCH_OFFENCE_REST_MS: u64 = 30_000;
/// Longest rest of a source: every rest ends, so a download never runs out of sources for good.
pub const FETCH_REST_MAX_MS: u64 = 600_000;
/// How soon a site's WAN fetcher with no source holding anything looks up providers again;
/// each lookup that finds no holder doubles it, up to [`FETCH_LOOKUP_MAX_MS`].
pub const FETCH_LOOKUP_MS: u64 = 5_000;
/// Longest wait between provider lookups while nothing holds the payload.
pub const FETCH_LOOKUP_MAX_MS: u64 = 60_000;
/// Longest wait before asking the site's elected fetcher again while it holds nothing (the
/// wait doubles with each "nothing"): the payload reaches a site through it, and once it holds
/// a part every member that held nothing is asked each second anyway.
pub const FETCH_NOTHING_ASK_LEAD_MAX_MS: u64 = 10_000;
/// Longest wait before asking any other peer that held nothing again, site member or not,
/// while nothing holds the payload anywhere the node looks: a fleet waiting for a payload
/// nobody holds yet asks each peer about once a minute, not every few seconds.
pub const FETCH_NOTHING_ASK_MAX_MS: u64 = 60_000;
/// How often a site's WAN fetcher that has sources looks up providers again.
pub const FETCH_RELOOKUP_MS: u64 = 15_000;
/// First wait between lookups of a WAN fetcher that has free WAN slots (doubling up to
/// [`FETCH_RELOOKUP_MS`]): the sites fetching a payload are found within seconds.
pub const FETCH_LOOKUP_FILL_MS: u64 = 1_000;
/// A download with no source holding anything for this long fails (visibly, with a reason).
pub const FETCH_NO_SOURCE_MS: u64 = 600_000;
/// Sources in other sites a WAN fetcher uses at once. Each is a flow into the site's own WAN
/// downlink, and on a slow link every extra flow adds contention, not rate: congestion control
/// keeps each flow's window at a share of the link's queue, so many small windows overflow it
/// more often (retransmissions) and draw an ACK every couple of packets. In
/// `scripts/bench-wan.sh` with `SITES=5 NODES_PER_SITE=3 WAN_MBIT=4 PAYLOAD_MIB=20`, 8 sources
/// (2 per site) against 4 (1 per site): datagrams into a site 24,400-26,100 -> 21,400-22,600,
/// shaper drops 500-690 -> 320-560, busiest site 1.148-1.163 -> 1.113-1.147 payload sizes;
/// in the default run 1.067-1.070 -> 1.064-1.066, and done 27.2-27.3 s -> 25.3-26.0 s.
pub const FETCH_WAN_SOURCES_MAX: usize = 4;
/// WAN sources of one download in any one other site. One flow's congestion control already
/// finds what the path to that site gives; a second shares the same uplink, so it splits the
/// rate instead of adding to it, and crowds the site that held the payload first.
pub const FETCH_WAN_SOURCES_PER_SITE: usize = 1;
/// How often a WAN fetcher with more candidates than slots retires its slowest WAN source to
/// try another (sites that already hold parts feed each other instead of all pulling from the
/// origin).
pub const FETCH_ROTATE_MS: u64 = 10_000;
/// A member pending in a running rollout (it will want an install slot) re-signs its record
/// this often, so that every member of its site counts it when ranking for slots.
pub const PENDING_HEARTBEAT_MS: u64 = 30_000;
/// A site member counts as live for install-slot ranking while connected, or for this long
/// after anything it signed last reached this node (three missed heartbeats).
pub const MEMBER_LIVE_MS: u64 = 3 * PENDING_HEARTBEAT_MS;
/// Strikes remembered per download (sources that were rested).
pub const FETCH_STRIKES_MAX: usize = 256;
/// Largest intel bundle (compressed) a node fetches or opens.
pub const INTEL_BUNDLE_BYTES_MAX: u64 = 64 << 20;
/// Largest decompressed intel bundle (a bomb stops here).
pub const INTEL_BUNDLE_RAW_BYTES_MAX: u64 = 1 << 30;
/// One frame of an intel bundle.
pub const INTEL_FRAME_BYTES_MAX: usize = 1 << 20;
/// Largest input file `intel import` reads (checked on the file's size before reading it).
pub const INTEL_INPUT_BYTES_MAX: u64 = 1 << 30;
/// Largest decompressed input (`.gz`, `.xz`, `.lz4`, a zip member).
pub const INTEL_INPUT_RAW_BYTES_MAX: u64 = 4 << 30;
/// Largest single JSON record (one tracker source package, one OSV record, the KEV catalog).
pub const INTEL_RECORD_BYTES_MAX: u64 = 64 << 20;
/// Bytes of a CVE description kept in a bundle.
pub const INTEL_DESCRIPTION_BYTES_MAX: usize = 240;
/// Files one OSV directory or zip may hold.
pub const INTEL_OSV_FILES_MAX: usize = 1_000_000;
/// Top findings one node record carries in its exposure summary.
pub const EXPOSURE_TOP_PER_RECORD_MAX: usize = 16;
/// Top CVEs one site summary carries.
pub const EXPOSURE_TOP_PER_SITE_MAX: usize = 32;
/// Distinct intel bundles one site summary counts nodes on.
pub const EXPOSURE_BUNDLES_PER_SITE_MAX: usize = 8;
/// Bytes of a CVE id, a source package name or a version inside an exposure summary.
pub const EXPOSURE_FIELD_BYTES_MAX: usize = 128;
/// Longest an exception (risk acceptance or "not affected") may run before it must be renewed.
pub const EXCEPTION_DAYS_MAX: u64 = 90;

/// The most machines one enrolment voucher may admit.
pub const VOUCHER_NODES_MAX: u32 = 10_000;

/// A step of the driver's clock between two inputs longer than this (or three rollout
/// evaluation periods) is a skip, not time that passed for a soak (see the node's "Time").
pub const CLOCK_GAP_MS: u64 = 30_000;

/// Roles in one admin set (and sites in one role's scope).
pub const ROLES_MAX: usize = 64;

/// A soaking member counts toward its ring's gate this long after its soak's end, by the
/// evaluating node's clock (see [`crate::rollout::verdict`]): time for a failure report raised
/// in the soak's last moment to flood the mesh, and for clocks that disagree. Members' clocks
/// are assumed to agree within this (NTP keeps them within milliseconds); a member whose clock
/// runs further behind the evaluator's counts early by the difference. Its own soak is timed
/// by its own clock either way.
pub const SOAK_COUNT_GRACE_MS: u64 = 2_000;

/// Soak starts in a site summary are rounded up to this step (see
/// [`crate::site::SoakStarts`]): members that began their soaks within one step share an entry.
pub const SOAK_START_STEP_MS: u64 = 250;

/// How far a site beacon's signed time may run ahead of this node's clock (further is
/// ignored), and how much older than the listening window it may be and still count as fresh
/// (clocks across a mesh differ by this much at most before it reports them wrong).
pub const BEACON_SKEW_MS: u64 = 300_000;

/// Beacons a node sends in answer to one `BeaconsAsk` (the freshest it holds), and at most one
/// answer per peer per anti-entropy period.
pub const BEACONS_ANSWERED_MAX: usize = 16;
