//! Integrations: the admin-signed policy that names where events go, the events themselves
//! (each with an id derived from its content, so every node that sees the same event names it
//! the same way), and the election of the one node that sends it.
//!
//! Secrets never enter the catalog: a sink names a credential, and the emitting node reads it
//! from its own credentials file (mode 0600).

use crate::catalog::Selector;
use crate::ids::NodeId;
use crate::limits;
use serde::{Deserialize, Serialize};

/// Sinks one policy may name.
pub const SINKS_MAX: usize = 32;
/// The catalog key of the policy.
pub const POLICY_KEY: &str = "integrations/policy";

/// How a sink receives events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkKind {
    /// Standard Webhooks: POST JSON with `webhook-id`, `webhook-timestamp`,
    /// `webhook-signature` (ed25519 `v1a` by the emitting node's key, or HMAC `v1` with the
    /// credential).
    Webhook,
    /// ServiceNow Table API incidents (looked up by correlation id, updated, not duplicated).
    Servicenow,
    /// PagerDuty Events API v2 (dedup key = event id).
    Pagerduty,
    /// RFC 5424 syslog over TCP (octet-counted frames).
    Syslog,
    /// JSON lines appended to a file on the emitting node.
    Jsonl,
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A rollout halted.
    RolloutHalted,
    /// An install step failed on a node.
    InstallFailed,
    /// A node rolled a patch back.
    RollbackDone,
    /// A rollback failed.
    RollbackFailed,
    /// A finding is due within a day.
    SlaDueSoon,
    /// A finding passed its due date.
    SlaBreached,
    /// A node became exposed to a CVE on the KEV catalog.
    KevExposure,
    /// An exception expires within a week.
    ExceptionExpiring,
    /// A member of the site stopped reporting.
    NodeSilent,
    /// The admin set changed.
    AdminSetChanged,
    /// A node refused many objects in a minute.
    RefusalsHigh,
}

/// One destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sink {
    /// Its name (the credentials file refers to it).
    pub name: String,
    /// How it receives.
    pub kind: SinkKind,
    /// URL (webhook, servicenow, pagerduty), `host:port` (syslog) or an absolute path (jsonl).
    pub target: String,
    /// Events it wants (empty: all).
    #[serde(default)]
    pub events: Vec<EventKind>,
    /// Which nodes may send to it (default: any).
    #[serde(default)]
    pub emitters: Selector,
    /// Webhooks: sign with HMAC (`v1`, the credential is the `whsec_` secret) instead of the
    /// emitting node's ed25519 key (`v1a`).
    #[serde(default)]
    pub hmac: bool,
    /// Allow private, link-local and metadata addresses (off: refused).
    #[serde(default)]
    pub allow_private: bool,
}

/// The policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntegrationPolicy {
    /// Sinks.
    pub sinks: Vec<Sink>,
    /// A member is silent after this long without a new record (ms; 0: never reported).
    #[serde(default)]
    pub silent_after_ms: u64,
}

impl IntegrationPolicy {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), String> {
        if self.sinks.len() > SINKS_MAX {
            return Err(format!("{} sinks, at most {SINKS_MAX}", self.sinks.len()));
        }
        let mut names = std::collections::BTreeSet::new();
        for s in &self.sinks {
            if s.name.is_empty()
                || s.name.len() > 64
                || !s.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!("sink name {:?}: 1-64 letters, digits, - or _", s.name));
            }
            if !names.insert(&s.name) {
                return Err(format!("sink {:?} named twice", s.name));
            }
            if s.target.is_empty() || s.target.len() > limits::TEXT_BYTES_MAX {
                return Err(format!("sink {:?}: target empty or too long", s.name));
            }
            let ok = match s.kind {
                SinkKind::Webhook | SinkKind::Servicenow | SinkKind::Pagerduty => {
                    s.target.starts_with("https://") || s.target.starts_with("http://")
                }
                SinkKind::Syslog => {
                    s.target.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                }
                SinkKind::Jsonl => s.target.starts_with('/'),
            };
            if !ok {
                return Err(format!(
                    "sink {:?}: target {:?} does not suit a {:?} sink",
                    s.name, s.target, s.kind
                ));
            }
            if s.events.len() > 32 {
                return Err(format!("sink {:?}: too many event kinds", s.name));
            }
        }
        Ok(())
    }
}

/// An event to deliver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// BLAKE3 of the kind and subject (hex): equal wherever the same event is seen.
    pub id: String,
    /// What happened.
    pub kind: EventKind,
    /// The node it is about, if one (hex).
    pub node: Option<String>,
    /// The site it is about.
    pub site: Option<String>,
    /// One line for people.
    pub summary: String,
    /// critical, error, warning or info.
    pub severity: String,
    /// When it happened (the observing node's clock).
    pub at_ms: u64,
    /// Details (bounded JSON).
    pub details: serde_json::Value,
    /// Fleet-wide (every node sees it) or about one node (its site sends it).
    pub fleet_wide: bool,
}

/// The id of an event: its kind and what it is about, so every node names it the same way.
pub fn event_id(kind: EventKind, subject: &[&str]) -> String {
    let kind = serde_json::to_string(&kind).unwrap_or_default();
    let mut parts: Vec<&[u8]> = vec![kind.as_bytes()];
    parts.extend(subject.iter().map(|s| s.as_bytes()));
    hex::encode(&crate::crypto::hash_parts(&parts)[..16])
}

/// Rendezvous hashing: the candidate that scores highest for this event. Every node holding
/// the same candidate list elects the same one; when it leaves the list, the next takes over.
pub fn elect<'a>(
    event_id: &str,
    candidates: impl IntoIterator<Item = &'a NodeId>,
) -> Option<&'a NodeId> {
    candidates.into_iter().max_by_key(|n| crate::crypto::hash_parts(&[event_id.as_bytes(), &n.0]))
}

/// Rendezvous over sites, for fleet-wide events: one site sends.
pub fn elect_site<'a>(event_id: &str, sites: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    sites
        .into_iter()
        .max_by_key(|s| crate::crypto::hash_parts(&[event_id.as_bytes(), s.as_bytes()]))
}
