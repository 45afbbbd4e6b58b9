//! Restoring a node from its store, and sharing what one restore verified with nodes that
//! restore the same store ([`RestoreMemo`]).

use super::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Site records and summaries verified by one restore, shared with later restores of the same
/// store under the same trust state.
///
/// A simulated fleet starts with every member of a site restoring the same store: at 100,000
/// nodes in 500 sites, 200 records and 500 summaries each, 70 million verifications and
/// 100,000 copies of the same tables. What a restore makes of those objects depends only on
/// the objects, the trust state and the clock, and on the clock only through certificate
/// expiry. So the first node to restore a store verifies every object as usual, and a later
/// node whose store holds the very same bundles (by identity), whose trust state is the same
/// and whose clock is before every certificate's expiry gets the same tables, shared until its
/// first write copies them. A store in which anything was refused, or which holds evidence, is
/// not shared. Everything else in the store (admin sets, catalog, alarms, journal) is restored
/// by every node. A real node restores once, from its own store, and passes no memo.
#[derive(Default)]
pub struct RestoreMemo {
    entries: Mutex<HashMap<[u8; 32], Arc<Shared>>>,
    hits: AtomicU64,
}

/// One shared restore.
struct Shared {
    /// The site objects and summaries it was built from, in store order.
    from: Vec<Arc<Bundle>>,
    records: site::RecordsTable,
    summaries: Summaries,
    /// The earliest expiry of any certificate the store's site objects and summaries rest on.
    expires_at: Millis,
}

impl RestoreMemo {
    /// How many restores took shared tables instead of verifying their own.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

/// The site objects and summaries of a store, in order: what a shared restore must match.
fn shared_objects(persisted: &[Persist]) -> impl Iterator<Item = &Arc<Bundle>> {
    persisted.iter().filter_map(|p| match p {
        Persist::SiteObject(b) | Persist::Summary(b) => Some(b),
        _ => None,
    })
}

/// What a shared restore is looked up by: the trust state, the site and the identity of every
/// site object and summary. A match is confirmed object by object ([`Shared::from`]).
fn memo_key(trust: &Trust, site: &SiteId, persisted: &[Persist]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(&trust.mesh().0);
    h.update(&trust.version().to_le_bytes());
    h.update(&trust.chain().last().map(Envelope::body_hash).unwrap_or_default());
    h.update(&(site.as_str().len() as u64).to_le_bytes());
    h.update(site.as_str().as_bytes());
    for b in shared_objects(persisted) {
        h.update(&(Arc::as_ptr(b) as usize).to_le_bytes());
    }
    *h.finalize().as_bytes()
}

impl Node {
    /// Restores verified state from the driver's store. Every object is verified again: a
    /// store is no more trusted than a peer.
    pub fn restore(&mut self, persisted: &[Persist]) -> usize {
        self.restore_shared(persisted, None)
    }

    /// [`Node::restore`], sharing verified site records and summaries through `memo` with
    /// other nodes that restore the same store (see [`RestoreMemo`]).
    pub fn restore_shared(&mut self, persisted: &[Persist], memo: Option<&RestoreMemo>) -> usize {
        let mut refused = 0;
        let check = self.config.check.clone();
        let now = self.now;
        // Trust first: later objects are judged by the admin set the store reached.
        for p in persisted {
            if let Persist::AdminSet(env) = p {
                if self.state.trust.apply_admin_set(env, check.as_ref()).is_err() {
                    refused += 1;
                }
            }
        }
        let fresh = self.state.site.records().is_empty() && self.state.summaries.all().is_empty();
        let key = memo
            .filter(|_| fresh)
            .map(|_| memo_key(&self.state.trust, self.state.site.site(), persisted));
        let shared = match (memo, key) {
            (Some(memo), Some(key)) => {
                let entry = memo.entries.lock().expect("restore memo").get(&key).cloned();
                entry.filter(|e| {
                    now < e.expires_at
                        && e.from.len() == shared_objects(persisted).count()
                        && e.from
                            .iter()
                            .zip(shared_objects(persisted))
                            .all(|(a, b)| Arc::ptr_eq(a, b))
                })
            }
            _ => None,
        };
        let (mut records, mut summaries) = (Vec::new(), Vec::new());
        let (mut site_refused, mut evidence) = (0, false);
        for p in persisted {
            let s = &mut self.state;
            let ok = match p {
                Persist::AdminSet(_) => true,
                Persist::SiteObject(_) | Persist::Summary(_) if shared.is_some() => true,
                Persist::CatalogChange(env) => {
                    s.catalog.offer(env, &s.trust, check.as_ref()).is_ok()
                }
                Persist::SiteObject(b) if b.object().domain == Domain::NodeRecord => {
                    let ok = site::verify_record(b, &s.trust, now, check.as_ref())
                        .map(|h| records.push(h))
                        .is_ok();
                    site_refused += usize::from(!ok);
                    ok
                }
                Persist::SiteObject(b) => {
                    evidence = true;
                    self.accept_site_object(b).is_ok()
                }
                // (An unendorsed summary of several records, from a store written before
                // summaries were endorsed, is dropped: no one else counts it.)
                Persist::Summary(b) => {
                    let ok =
                        site::verify_summary(b, &s.trust, now, check.as_ref()).is_ok_and(|h| {
                            h.countable() && {
                                summaries.push(h);
                                true
                            }
                        });
                    site_refused += usize::from(!ok);
                    ok
                }
                Persist::RecordVersionFloor(v) => {
                    self.publisher.raise_floor(*v);
                    true
                }
                Persist::Alarm(b) => Alarms::verify(b, &s.trust, now, check.as_ref())
                    .is_ok_and(|a| s.alarms.merge(a).is_ok()),
                Persist::Journal(entry) => {
                    self.engine.restore(entry.clone());
                    true
                }
            };
            if !ok {
                refused += 1;
            }
        }
        if let Some(shared) = &shared {
            self.state.site.adopt_records(&shared.records);
            self.state.summaries = shared.summaries.clone();
            if let Some(memo) = memo {
                memo.hits.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            // Superseded versions in a store are expected, not refusals.
            self.state.site.merge_records(records);
            self.state.summaries.merge_all(summaries);
            if let (Some(memo), Some(key), 0, false) = (memo, key, site_refused, evidence) {
                // Over every object verified, held or superseded: a later clock must find each
                // of them as this one did, or the count of refusals would differ.
                let expires_at = shared_objects(persisted)
                    .filter_map(|b| b.certs_expire_at())
                    .min()
                    .unwrap_or(Millis(u64::MAX));
                let entry = Shared {
                    from: shared_objects(persisted).cloned().collect(),
                    records: self.state.site.records_table(),
                    summaries: self.state.summaries.clone(),
                    expires_at,
                };
                memo.entries.lock().expect("restore memo").insert(key, Arc::new(entry));
            }
        }
        // Our own newest record bounds the floor too (a floor write lost with a damaged store),
        // and is known as ours: a peer sending it back is no sign of an earlier life.
        if let Some(held) = self.state.site.records().get(&self.id) {
            self.publisher.raise_floor(held.version);
            self.publisher.adopt_record(held.body_hash());
            self.publisher.inventory = held.record().inventory.clone();
            self.publisher.exposure = held.record().exposure.clone();
        }
        // The enrolments the restored records carry, and the vouchers' catalog state: a restart
        // must not forget which machines took a voucher's slots or that a voucher was revoked.
        let enrolled: Vec<crate::enrol::Enrolled> = self
            .state
            .site
            .records()
            .values()
            .filter(|h| h.bundle.admission().domain == Domain::Enrolment)
            .filter_map(|h| crate::enrol::open(h.bundle.admission(), check.as_ref()).ok())
            .map(|(_, _, e)| e)
            .collect();
        for e in enrolled {
            self.gate.saw(&e);
            self.enrolled_members.insert(e.node, e);
        }
        self.refresh_vouchers();
        self.rejudge_enrolled();
        // Restoring queued nothing worth sending: drop it all, with its capacity.
        self.out.clear();
        self.relay.clear();
        self.timers.clear(Timer::Flush);
        refused
    }
}
