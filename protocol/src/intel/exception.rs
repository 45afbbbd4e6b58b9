//! Exceptions: admin-signed decisions that a finding is accepted for a while (risk acceptance,
//! with an optional compensating control) or does not apply (a VEX "not affected"
//! statement). Each names one CVE and a selector of nodes, a justification and an expiry at
//! most [`limits::EXCEPTION_DAYS_MAX`] days after it was made; an expired exception reopens the
//! finding by itself. Excepted findings stay listed, marked, and out of the due counts.

use super::report::Assessed;
use crate::catalog::Selector;
use crate::ids::{KeyId, Millis};
use crate::limits;
use serde::{Deserialize, Serialize};

const DAY_MS: u64 = 86_400_000;

/// What an exception says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExceptionKind {
    /// The risk is accepted until the expiry.
    #[serde(rename = "risk-accepted")]
    RiskAccepted,
    /// The nodes are not affected (VEX), for the stated reason.
    #[serde(rename = "not-affected")]
    NotAffected,
}

/// An exception as the catalog holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionEntry {
    /// The CVE.
    pub cve: String,
    /// The nodes it covers.
    pub target: Selector,
    /// Risk accepted or not affected.
    pub kind: ExceptionKind,
    /// Why.
    pub justification: String,
    /// What stands in for the fix meanwhile, if anything.
    pub compensating_control: Option<String>,
    /// When the admin made it.
    pub created_at: Millis,
    /// When it lapses (at most 90 days after `created_at`).
    pub expires_at: Millis,
}

impl ExceptionEntry {
    /// Checks the bounds: a CVE id, texts within limits, a justification, and an expiry after
    /// creation and at most [`limits::EXCEPTION_DAYS_MAX`] days later.
    pub fn validate(&self) -> Result<(), String> {
        let text = |s: &str| s.len() <= limits::TEXT_BYTES_MAX;
        if !self.cve.starts_with("CVE-") || self.cve.len() > limits::EXPOSURE_FIELD_BYTES_MAX {
            return Err(format!("{:?} is not a CVE id", self.cve));
        }
        if self.justification.trim().is_empty() {
            return Err("an exception needs a justification".into());
        }
        if !text(&self.justification) || !self.compensating_control.as_deref().is_none_or(text) {
            return Err(format!(
                "justification and compensating control are at most {} bytes",
                limits::TEXT_BYTES_MAX
            ));
        }
        if self.expires_at <= self.created_at {
            return Err("the expiry must be after the exception is made".into());
        }
        if self.expires_at.0 - self.created_at.0 > limits::EXCEPTION_DAYS_MAX * DAY_MS {
            return Err(format!(
                "an exception runs at most {} days; renew it when it lapses",
                limits::EXCEPTION_DAYS_MAX
            ));
        }
        if self.target.labels.len() > limits::LABELS_PER_NODE_MAX
            || self.target.sites.len() > limits::SITES_PER_SELECTOR_MAX
            || self.target.packages.len() > limits::PREDICATES_PER_SELECTOR_MAX
        {
            return Err("the selector is over its limits".into());
        }
        Ok(())
    }

    /// Its catalog key: a hash of the whole entry, so two exceptions never collide.
    pub fn key(&self) -> String {
        let h =
            crate::crypto::hash_parts(&[b"patchmesh/v1/exception", &crate::crypto::encode(self)]);
        format!("exception/{}", hex::encode(&h[..16]))
    }
}

/// The exception that applies to a finding, as the finding carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionRef {
    /// Catalog key.
    pub key: String,
    /// Risk accepted or not affected.
    pub kind: ExceptionKind,
    /// Why.
    pub justification: String,
    /// The compensating control, if any.
    pub compensating_control: Option<String>,
    /// When it lapses.
    pub expires_at: Millis,
    /// The admin who signed it.
    pub approved_by: KeyId,
}

/// Marks every finding a valid, unexpired exception covers (`covers` says whether this node
/// is in an exception's selector). Findings without one are unmarked, so an expired
/// exception reopens its finding on the next assessment.
pub fn apply(
    findings: &mut [Assessed],
    exceptions: &[(String, ExceptionEntry, KeyId)],
    covers: impl Fn(&Selector) -> bool,
    now: Millis,
) {
    for a in findings.iter_mut() {
        a.finding.excepted = exceptions
            .iter()
            .filter(|(_, e, _)| {
                e.cve == a.finding.cve
                    && now < e.expires_at
                    && e.validate().is_ok()
                    && covers(&e.target)
            })
            .max_by_key(|(_, e, _)| e.expires_at)
            .map(|(key, e, admin)| ExceptionRef {
                key: key.clone(),
                kind: e.kind,
                justification: e.justification.clone(),
                compensating_control: e.compensating_control.clone(),
                expires_at: e.expires_at,
                approved_by: *admin,
            });
    }
    findings.sort_by(super::report::rank_order);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(days: u64) -> ExceptionEntry {
        ExceptionEntry {
            cve: "CVE-2024-1".into(),
            target: Selector::default(),
            kind: ExceptionKind::RiskAccepted,
            justification: "service not exposed; WAF rule 12".into(),
            compensating_control: Some("WAF rule 12".into()),
            created_at: Millis(1_000),
            expires_at: Millis(1_000 + days * DAY_MS),
        }
    }

    #[test]
    fn an_exception_needs_an_expiry_within_ninety_days_and_a_reason() {
        assert!(entry(90).validate().is_ok());
        assert!(entry(91).validate().unwrap_err().contains("at most 90 days"));
        assert!(entry(0).validate().unwrap_err().contains("after"));
        let mut e = entry(30);
        e.justification = " ".into();
        assert!(e.validate().is_err());
        e = entry(30);
        e.cve = "not-a-cve".into();
        assert!(e.validate().is_err());
    }
}
