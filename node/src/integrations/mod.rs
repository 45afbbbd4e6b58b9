//! Delivering events to the sinks of the admin-signed integration policy: a durable outbox on
//! disk, an election of the one node that sends each event (with fail-over), retries with
//! backoff, a dead-letter list, and the wire formats (Standard Webhooks, ServiceNow,
//! PagerDuty Events v2, RFC 5424 syslog over TCP, JSON lines).
//!
//! ## Delivery
//! Every node allowed to emit an event keeps it in its outbox. Before each attempt it checks
//! the election (rendezvous hashing over the live allowed members of its site; for fleet-wide
//! events, first over sites): only the winner sends; the others keep the event on standby and
//! send it if the winner leaves (its connection drops), until [`STANDBY_MS`]. Delivery is at
//! least once: after a fail-over the new emitter does not know what the old one sent, and
//! sends again with the same event id (`webhook-id`, `dedup_key`, `correlation_id`), which
//! receivers use to drop the duplicate.
//!
//! Retries: 5xx, 429, timeouts and connection errors back off (1 s doubling to 5 min, or the
//! `Retry-After` the receiver asks for); 410 disables the sink until the policy changes; other
//! 4xx and redirects go to the dead-letter list at once; after [`GIVE_UP_MS`] an event goes to
//! the dead-letter list. `patchmesh integrations dlq replay` puts it back.

pub mod deliver;

use patchmesh_protocol::integrations::{Event, IntegrationPolicy, Sink};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A standby copy is kept this long for fail-over, then dropped.
pub const STANDBY_MS: u64 = 24 * 3600 * 1000;
/// An event not delivered after this long goes to the dead-letter list.
pub const GIVE_UP_MS: u64 = 24 * 3600 * 1000;
/// First retry delay.
pub const BACKOFF_FIRST_MS: u64 = 1_000;
/// Longest retry delay.
pub const BACKOFF_MAX_MS: u64 = 300_000;
/// Items the outbox holds; beyond it the oldest standby copies go first, then new events are
/// refused (and counted).
pub const OUTBOX_ITEMS_MAX: usize = 100_000;
/// Largest credentials file read.
const CREDENTIALS_BYTES_MAX: u64 = 64 * 1024;

/// A sink's secrets, from the node's credentials file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// `Authorization: Bearer …`.
    pub bearer: Option<String>,
    /// `user:password` for HTTP basic authentication (ServiceNow).
    pub basic: Option<String>,
    /// The Standard Webhooks secret (`whsec_` + base64) for HMAC signatures.
    pub hmac_secret: Option<String>,
    /// PagerDuty integration (routing) key.
    pub routing_key: Option<String>,
}

/// Reads the credentials file: a TOML table per sink name. Refused unless only its owner can
/// read it (mode 0600 or stricter).
pub fn load_credentials(path: &Path) -> Result<BTreeMap<String, Credential>, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} is readable by others (mode {:o}): chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    let bytes =
        crate::files::read_limited(path, CREDENTIALS_BYTES_MAX).map_err(|e| e.to_string())?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// One event for one sink, as kept on disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// The event.
    pub event: Event,
    /// The sink's name.
    pub sink: String,
    /// Attempts made by this node.
    pub attempts: u32,
    /// When it entered this outbox.
    pub queued_at_ms: u64,
    /// Not before.
    pub next_at_ms: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// Delivered at (kept as a marker against re-queueing the same event).
    pub delivered_at_ms: Option<u64>,
}

impl Item {
    fn file(&self) -> String {
        format!("{}.{}.json", self.event.id, self.sink)
    }
}

/// The outbox: `pending/`, `done/` (delivery markers) and `dlq/` under one directory, one
/// small file per item, each written whole (temporary file, flush, rename).
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    /// Opens (creates) the outbox in `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Outbox> {
        for sub in ["pending", "done", "dlq"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        Ok(Outbox { dir: dir.to_path_buf() })
    }

    fn path(&self, sub: &str, item: &Item) -> PathBuf {
        self.dir.join(sub).join(item.file())
    }

    /// Queues an event for a sink unless it is already pending, delivered or dead. Returns
    /// whether it was new.
    pub fn offer(&self, event: &Event, sink: &str, now_ms: u64) -> std::io::Result<bool> {
        let item = Item {
            event: event.clone(),
            sink: sink.to_string(),
            attempts: 0,
            queued_at_ms: now_ms,
            next_at_ms: now_ms,
            last_error: None,
            delivered_at_ms: None,
        };
        if ["pending", "done", "dlq"].iter().any(|s| self.path(s, &item).exists()) {
            return Ok(false);
        }
        if self.count("pending") >= OUTBOX_ITEMS_MAX {
            return Err(std::io::Error::other("the outbox is full"));
        }
        self.put("pending", &item)?;
        Ok(true)
    }

    fn put(&self, sub: &str, item: &Item) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(item).map_err(std::io::Error::other)?;
        crate::files::write_synced(&self.path(sub, item), &bytes)
    }

    fn count(&self, sub: &str) -> usize {
        std::fs::read_dir(self.dir.join(sub)).map(|d| d.count()).unwrap_or(0)
    }

    /// Items in `pending`, `done` or `dlq`.
    pub fn list(&self, sub: &str) -> Vec<Item> {
        let Ok(dir) = std::fs::read_dir(self.dir.join(sub)) else { return Vec::new() };
        let mut v: Vec<Item> = dir
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| crate::files::read_limited(&e.path(), 1 << 20).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        v.sort_by_key(|i: &Item| (i.next_at_ms, i.queued_at_ms));
        v
    }

    /// Records a failed attempt.
    pub fn retry(
        &self,
        mut item: Item,
        why: String,
        after_ms: u64,
        now_ms: u64,
    ) -> std::io::Result<()> {
        item.last_error = Some(why);
        item.next_at_ms = now_ms + after_ms;
        self.put("pending", &item)
    }

    /// Marks an item delivered.
    pub fn delivered(&self, mut item: Item, now_ms: u64) -> std::io::Result<()> {
        item.delivered_at_ms = Some(now_ms);
        self.put("done", &item)?;
        std::fs::remove_file(self.path("pending", &item))
    }

    /// The pending item for an event and sink, if any.
    pub fn pending(&self, id: &str, sink: &str) -> Option<Item> {
        if !valid_pair(id, sink) {
            return None;
        }
        let p = self.dir.join("pending").join(format!("{id}.{sink}.json"));
        let bytes = crate::files::read_limited(&p, 1 << 20).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Drops a standby copy (another node delivered it, or it aged out).
    pub fn drop_standby(&self, item: &Item) -> std::io::Result<()> {
        std::fs::remove_file(self.path("pending", item))
    }

    /// Moves an item to the dead-letter list.
    pub fn dead(&self, mut item: Item, why: String) -> std::io::Result<()> {
        item.last_error = Some(why);
        self.put("dlq", &item)?;
        let _ = std::fs::remove_file(self.path("pending", &item));
        Ok(())
    }

    /// Puts dead items back in `pending` (all, or those whose event id starts with `id`).
    pub fn replay(&self, id: Option<&str>, now_ms: u64) -> std::io::Result<usize> {
        let mut n = 0;
        for mut item in self.list("dlq") {
            if id.is_some_and(|p| !item.event.id.starts_with(p)) {
                continue;
            }
            std::fs::remove_file(self.path("dlq", &item))?;
            item.attempts = 0;
            item.next_at_ms = now_ms;
            item.queued_at_ms = now_ms;
            self.put("pending", &item)?;
            n += 1;
        }
        Ok(n)
    }

    /// Removes delivery markers older than `age_ms`.
    pub fn prune_done(&self, now_ms: u64, age_ms: u64) {
        for item in self.list("done") {
            if item.delivered_at_ms.is_some_and(|d| now_ms.saturating_sub(d) > age_ms) {
                let _ = std::fs::remove_file(self.path("done", &item));
            }
        }
    }
}

/// Who may send what, as the node sees its site right now.
#[derive(Clone, Debug, Default)]
pub struct Election {
    /// This node.
    pub me: patchmesh_protocol::ids::NodeId,
    /// Its site.
    pub site: String,
    /// Per sink: the live members of this site the sink's selector allows (this node among
    /// them when it is allowed).
    pub emitters: BTreeMap<String, Vec<patchmesh_protocol::ids::NodeId>>,
    /// Sites that can send fleet-wide events (fresh summaries, allowed by the selector's site
    /// list), this one included.
    pub sites: BTreeMap<String, Vec<String>>,
}

impl Election {
    /// The member of this site that sends `event` to `sink` now (none when another site does).
    pub fn winner(&self, event: &Event, sink: &str) -> Option<patchmesh_protocol::ids::NodeId> {
        let members = self.emitters.get(sink)?;
        if event.fleet_wide {
            let sites = self.sites.get(sink).map(Vec::as_slice).unwrap_or(&[]);
            let site = patchmesh_protocol::integrations::elect_site(
                &event.id,
                sites.iter().map(String::as_str),
            );
            if site != Some(self.site.as_str()) {
                return None;
            }
        }
        patchmesh_protocol::integrations::elect(&event.id, members).copied()
    }

    /// Whether this node sends `event` to `sink` now.
    pub fn mine(&self, event: &Event, sink: &str) -> bool {
        self.winner(event, sink) == Some(self.me)
    }
}

/// Delivery notices a node sends its site: (event id, sink) pairs it delivered.
pub type Notice = Vec<(String, String)>;
/// Pairs in one notice.
pub const NOTICE_PAIRS_MAX: usize = 64;

/// Whether a pair from a peer names a file this outbox could hold (hex id, sink charset).
pub fn valid_pair(id: &str, sink: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && !sink.is_empty()
        && sink.len() <= 64
        && sink.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The sinks that want an event.
pub fn sinks_for<'a>(
    policy: &'a IntegrationPolicy,
    event: &Event,
) -> impl Iterator<Item = &'a Sink> {
    let kind = event.kind;
    policy.sinks.iter().filter(move |s| s.events.is_empty() || s.events.contains(&kind))
}

/// The next backoff after `attempts` failures.
pub fn backoff_ms(attempts: u32) -> u64 {
    BACKOFF_FIRST_MS.saturating_mul(1u64 << attempts.min(20)).min(BACKOFF_MAX_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchmesh_protocol::ids::NodeId;
    use patchmesh_protocol::integrations::{event_id, EventKind};

    fn ev(i: u32, fleet_wide: bool) -> Event {
        Event {
            id: event_id(EventKind::InstallFailed, &[&i.to_string()]),
            kind: EventKind::InstallFailed,
            node: None,
            site: None,
            summary: format!("e{i}"),
            severity: "error".into(),
            at_ms: 1,
            details: serde_json::Value::Null,
            fleet_wide,
        }
    }

    #[test]
    fn the_outbox_queues_once_and_keeps_dead_letters_for_replay() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbox::open(dir.path()).unwrap();
        assert!(o.offer(&ev(1, false), "hook", 10).unwrap());
        assert!(!o.offer(&ev(1, false), "hook", 11).unwrap(), "the same event is queued once");
        assert!(o.offer(&ev(1, false), "pager", 11).unwrap(), "once per sink");
        let items = o.list("pending");
        assert_eq!(items.len(), 2);
        o.retry(items[0].clone(), "HTTP 503".into(), 1000, 20).unwrap();
        let again = o.list("pending").into_iter().find(|i| i.sink == items[0].sink).unwrap();
        assert_eq!((again.next_at_ms, again.last_error.as_deref()), (1020, Some("HTTP 503")));
        o.delivered(again, 30).unwrap();
        assert!(
            !o.offer(&ev(1, false), &items[0].sink, 40).unwrap(),
            "a delivered event is not queued again"
        );
        let other = o.list("pending").pop().unwrap();
        o.dead(other, "HTTP 400".into()).unwrap();
        assert_eq!((o.list("pending").len(), o.list("dlq").len()), (0, 1));
        assert_eq!(o.replay(None, 50).unwrap(), 1);
        assert_eq!((o.list("pending").len(), o.list("dlq").len()), (1, 0));
        o.prune_done(30 + 10, 5);
        assert!(o.list("done").is_empty());
    }

    #[test]
    fn one_live_member_is_elected_and_the_next_takes_over() {
        let nodes: Vec<NodeId> = (1..=3u8).map(|i| NodeId([i; 32])).collect();
        let mk = |me: NodeId, live: &[NodeId]| Election {
            me,
            site: "a".into(),
            emitters: [("hook".to_string(), live.to_vec())].into(),
            sites: [("hook".to_string(), vec!["a".to_string(), "b".to_string()])].into(),
        };
        let mut moved = 0;
        for i in 0..200 {
            let e = ev(i, false);
            let winners: Vec<&NodeId> =
                nodes.iter().filter(|n| mk(**n, &nodes).mine(&e, "hook")).collect();
            assert_eq!(winners.len(), 1, "exactly one sender");
            let w = *winners[0];
            let rest: Vec<NodeId> = nodes.iter().copied().filter(|n| *n != w).collect();
            let next: Vec<&NodeId> =
                rest.iter().filter(|n| mk(**n, &rest).mine(&e, "hook")).collect();
            assert_eq!(next.len(), 1, "one takes over when the winner leaves");
            moved += 1;
        }
        assert_eq!(moved, 200);
        // Fleet-wide events go to one site: the other site's members never send them.
        let fleet: Vec<Event> = (0..100).map(|i| ev(i, true)).collect();
        let from_a =
            fleet.iter().filter(|e| nodes.iter().any(|n| mk(*n, &nodes).mine(e, "hook"))).count();
        assert!(
            from_a > 20 && from_a < 80,
            "about half the fleet-wide events are site a's: {from_a}"
        );
    }
}
