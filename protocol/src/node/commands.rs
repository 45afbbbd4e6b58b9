//! Commands from the driver (publish, submit, admin sets, records, facts, reports) and what
//! the node signs about itself in answer.

use super::*;

impl Node {
    pub(super) fn on_command(&mut self, cmd: Command) -> Result<Outcome, Refusal> {
        match cmd {
            Command::Publish { admin, edits } => {
                let mut session = [0u8; 8];
                session.copy_from_slice(&self.id.0[..8]);
                let s = &mut self.state;
                match s.catalog.author(&admin, session, self.now, &s.trust, &edits) {
                    Ok(env) => {
                        let id = env.id();
                        self.keep(Via::Local, vec![Fresh::CatalogChange(env)]);
                        Ok(Outcome::Applied(id))
                    }
                    Err(e) => self.refuse_command(e.into()),
                }
            }
            Command::Submit(env) => {
                let s = &mut self.state;
                match s.catalog.offer(&env, &s.trust, self.config.check.as_ref()) {
                    Ok(Offer::New) => {
                        self.stats.accepted += 1;
                        let id = env.id();
                        self.keep(Via::Local, vec![Fresh::CatalogChange(env)]);
                        Ok(Outcome::Applied(id))
                    }
                    Ok(Offer::Duplicate) => Ok(Outcome::Unchanged),
                    Err(e) => self.refuse_command(e.into()),
                }
            }
            Command::AdminSet(env) => {
                match self.state.trust.apply_admin_set(&env, self.config.check.as_ref()) {
                    Ok(true) => {
                        let id = env.id();
                        self.keep(Via::Local, vec![Fresh::AdminSet(env)]);
                        Ok(Outcome::Applied(id))
                    }
                    Ok(false) => Ok(Outcome::Unchanged),
                    Err(e) => self.refuse_command(e.into()),
                }
            }
            Command::UpdateRecord { mut inventory } => {
                // The zone the node's windows are read in and its quiet hours, from its facts.
                inventory.zone = self.publisher.inventory.zone.clone();
                inventory.quiet = self.publisher.inventory.quiet;
                self.publisher.inventory = inventory;
                self.update_record();
                Ok(Outcome::Done)
            }
            Command::SetExposure(exposure) => {
                if exposure.as_ref().is_some_and(|e| !e.within_limits()) {
                    return self.refuse_command(Refusal::Site(crate::site::SiteError::Invalid(
                        "exposure summary over its limits",
                    )));
                }
                if self.publisher.exposure != exposure {
                    self.publisher.exposure = exposure;
                    self.update_record();
                }
                Ok(Outcome::Done)
            }
            Command::SetAuditHead(head) => {
                if self.publisher.audit != Some(head) {
                    self.publisher.audit = Some(head);
                    self.update_record();
                }
                Ok(Outcome::Done)
            }
            Command::SetFacts(facts) => {
                // The zone goes in the node's record (a rehearsal reads it): re-signed now if
                // it changed after a record went out, else carried by the first.
                let zone: String =
                    facts.tz.iana_name().unwrap_or_default().chars().take(64).collect();
                let resign = (self.publisher.inventory.zone != zone
                    || self.publisher.inventory.quiet != facts.quiet)
                    && self.publisher.record_signed_at.is_some();
                self.publisher.inventory.zone = zone;
                self.publisher.inventory.quiet = facts.quiet;
                self.engine.facts = facts;
                if resign {
                    self.update_record();
                }
                self.rollouts_due = true;
                Ok(Outcome::Done)
            }
            Command::Report { rollout, kind, detail } => {
                self.report(rollout, kind, detail);
                Ok(Outcome::Done)
            }
        }
    }

    /// A refused command: counted and logged like any refusal, and returned to the caller.
    pub(super) fn refuse_command(&mut self, why: Refusal) -> Result<Outcome, Refusal> {
        self.refuse_ref(None, &why);
        Err(why)
    }

    /// Signs evidence; a failure report also floods fleet-wide as an alarm.
    pub(super) fn report(&mut self, rollout: RolloutId, kind: EvidenceKind, detail: String) {
        let bundle = self.publisher.evidence(rollout, kind, detail, self.now);
        self.publish_site_object(bundle.clone());
        if kind == EvidenceKind::InstallFailed {
            self.accept_alarms(Via::Local, &[bundle]);
        }
    }

    /// Signs and spreads this node's record (inventory and rollout standings).
    pub(super) fn update_record(&mut self) {
        let (floor, bundle) = self.publisher.record(self.engine.standings().clone(), self.now);
        self.out.push(Output::Persist(Persist::RecordVersionFloor(floor)));
        self.publish_site_object(bundle);
    }

    pub(super) fn publish_site_object(&mut self, bundle: Arc<Bundle>) {
        match self.accept_site_object(&bundle) {
            Ok(Merge::New) => {
                self.keep(Via::Local, vec![Fresh::SiteObject(bundle)]);
            }
            Ok(Merge::Duplicate) => {}
            Err(e) => {
                self.refuse(None, e);
            }
        }
    }
}
