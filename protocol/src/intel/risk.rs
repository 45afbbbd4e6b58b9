//! Risk: a due class and a 0–100 rank score for each finding, with the arithmetic kept.
//!
//! ## Due class
//! The due class follows Table 1 ("Remediation Timelines") of CISA's Binding Operational
//! Directive 26-04, *Prioritizing Security Updates Based on Risk* (10 June 2026,
//! <https://www.cisa.gov/news-events/directives/bod-26-04-prioritizing-security-updates-based-risk>),
//! which maps four inputs to a deadline. The directive publishes the table as an image; the rows
//! below were checked against two independent transcriptions that agree row for row (CERT/CC's
//! SSVC decision table `cisa/bod_2604_dt.py`, and a transcription made from the image), since the
//! image itself could not be read here.
//!
//! | exposed | KEV | automatable | total impact | due |
//! |---|---|---|---|---|
//! | yes | yes | yes | yes | 3 days + forensic triage |
//! | yes | yes | yes | no  | 3 days |
//! | yes | yes | no  | yes | 3 days + forensic triage |
//! | yes | yes | no  | no  | 14 days |
//! | yes | no  | yes | yes | 3 days |
//! | yes | no  | yes | no  | 14 days |
//! | yes | no  | no  | yes | 14 days |
//! | yes | no  | no  | no  | 60 days |
//! | no  | yes | yes | yes | 3 days + forensic triage |
//! | no  | yes | yes | no  | 14 days |
//! | no  | yes | no  | yes | 14 days |
//! | no  | yes | no  | no  | 14 days |
//! | no  | no  | yes | yes | 60 days |
//! | no  | no  | yes | no  | 60 days |
//! | no  | no  | no  | *   | at the next system upgrade (here: the next maintenance window) |
//!
//! *exposed* is the admission label `exposure=internet`; *KEV* is an entry in the imported
//! catalog; *automatable* and *total impact* are CISA's SSVC decision points, derived here from
//! the CVSS vector when no better data is imported (network attack vector, no privileges, no user
//! interaction, and for v4.0 no attack requirements; confidentiality and integrity both high).
//!
//! The due date runs from when the fix became available — the first bundle that carried it —
//! the way PCI DSS 6.3.3 counts its month from a patch's release. A finding with no fix has no
//! date: it needs an exception ([`Due::ExceptionNeeded`]).
//!
//! ## Rank score
//! `score = 100 × likelihood × impact × asset`, each factor in [0, 1]:
//! - **likelihood**: 1.0 for a KEV entry, else by EPSS probability band (≥ 0.5 → 0.9, ≥ 0.1 →
//!   0.6, ≥ 0.01 → 0.3, below → 0.1; no EPSS score → 0.2);
//! - **impact**: the CVSS base score / 10 (v4.0 preferred over v3.x, scored by the `cvss`
//!   crate), else from the tracker's urgency (high 0.8, medium 0.5, low 0.3, unimportant 0.1,
//!   unassigned 0.5);
//! - **asset**: the node's admission label `criticality=1..4` (default 2) / 4 × exposure
//!   (`exposure=internet` 1.0, `internal` 0.7 — the default — `isolated` 0.4).
//!
//! Findings the tracker marks unimportant sort after every other finding whatever their score.

use super::matching::{Finding, Verdict};
use super::{CveInfo, Urgency};
use crate::ids::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::str::FromStr;

const DAY_MS: u64 = 86_400_000;

/// Where a node sits, from its admission labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Exposure {
    /// Reachable from the internet.
    Internet,
    /// Reachable only inside the organisation (the default).
    Internal,
    /// No network path in.
    Isolated,
}

/// The asset side of risk, from the admission labels `exposure` and `criticality`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Asset {
    /// Exposure.
    pub exposure: Exposure,
    /// Criticality 1 (least) to 4.
    pub criticality: u8,
}

impl Asset {
    /// From admission labels; missing or unknown values take the defaults.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Asset {
        let exposure = match labels.get("exposure").map(String::as_str) {
            Some("internet") => Exposure::Internet,
            Some("isolated") => Exposure::Isolated,
            _ => Exposure::Internal,
        };
        let criticality = labels
            .get("criticality")
            .and_then(|c| c.parse::<u8>().ok())
            .filter(|c| (1..=4).contains(c))
            .unwrap_or(2);
        Asset { exposure, criticality }
    }
}

impl Asset {
    /// The exposure part of the asset factor.
    pub fn exposure_factor(&self) -> f64 {
        match self.exposure {
            Exposure::Internet => 1.0,
            Exposure::Internal => 0.7,
            Exposure::Isolated => 0.4,
        }
    }

    /// The asset factor of the rank score: criticality / 4 × exposure.
    pub fn factor(&self) -> f64 {
        f64::from(self.criticality) / 4.0 * self.exposure_factor()
    }
}

impl Default for Asset {
    fn default() -> Self {
        Asset { exposure: Exposure::Internal, criticality: 2 }
    }
}

/// How soon a finding must be fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Due {
    /// Within 3 days.
    #[serde(rename = "3d")]
    Days3,
    /// Within 14 days.
    #[serde(rename = "14d")]
    Days14,
    /// Within 60 days.
    #[serde(rename = "60d")]
    Days60,
    /// At the next maintenance window.
    #[serde(rename = "window")]
    NextWindow,
    /// No fix exists: needs a recorded exception.
    #[serde(rename = "exception")]
    ExceptionNeeded,
}

impl Due {
    /// The CLI's spelling (`3d`, `14d`, `60d`, `window`, `exception`).
    pub fn label(self) -> &'static str {
        match self {
            Due::Days3 => "3d",
            Due::Days14 => "14d",
            Due::Days60 => "60d",
            Due::NextWindow => "window",
            Due::ExceptionNeeded => "exception",
        }
    }

    /// Parses [`Due::label`].
    pub fn parse(s: &str) -> Option<Due> {
        [Due::Days3, Due::Days14, Due::Days60, Due::NextWindow, Due::ExceptionNeeded]
            .into_iter()
            .find(|d| d.label() == s)
    }

    fn days(self) -> Option<u64> {
        match self {
            Due::Days3 => Some(3),
            Due::Days14 => Some(14),
            Due::Days60 => Some(60),
            Due::NextWindow | Due::ExceptionNeeded => None,
        }
    }
}

/// The four inputs of the due class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DueInputs {
    /// The asset is reachable from the internet.
    pub exposed: bool,
    /// The CVE is in the KEV catalog.
    pub kev: bool,
    /// Exploitation can be automated (from the CVSS vector: network attack vector, no
    /// privileges, no user interaction, and in v4.0 no attack requirements).
    pub automatable: bool,
    /// Exploitation gives total control (CVSS confidentiality and integrity impact both high).
    pub total_impact: bool,
}

/// The due class of four inputs (see the module docs for the table and its source).
pub fn due_class(i: DueInputs) -> Due {
    let row = (i.exposed, i.kev, i.automatable, i.total_impact);
    match row {
        (true, true, true, _)
        | (true, true, false, true)
        | (true, false, true, true)
        | (false, true, true, true) => Due::Days3,
        (true, true, false, false)
        | (true, false, true, false)
        | (true, false, false, true)
        | (false, true, true, false)
        | (false, true, false, _) => Due::Days14,
        (true, false, false, false) | (false, false, true, _) => Due::Days60,
        (false, false, false, _) => Due::NextWindow,
    }
}

/// The directive also asks for forensic triage of the asset (KEV, total impact, and exposed or
/// automatable).
pub fn needs_forensic_triage(i: DueInputs) -> bool {
    i.kev && i.total_impact && (i.exposed || i.automatable)
}

/// A finding's risk, with every factor and the reason for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Risk {
    /// The due class.
    pub due: Due,
    /// The due date, when the due class has one and the fix's first sighting is known.
    pub due_at: Option<Millis>,
    /// Its inputs.
    pub inputs: DueInputs,
    /// 0–100, one decimal.
    pub score: f64,
    /// Likelihood factor and why.
    pub likelihood: (f64, String),
    /// Impact factor and why.
    pub impact: (f64, String),
    /// Asset factor and why.
    pub asset: (f64, String),
    /// Unimportant per the tracker (ranked last).
    pub unimportant: bool,
    /// The CVSS base score, when the bundle has a vector that parses.
    #[serde(default)]
    pub cvss: Option<f64>,
}

/// CVSS qualitative severity of a finding (the FIRST rating scale), `Unscored` without a
/// vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    /// 9.0–10.0.
    #[serde(rename = "critical")]
    Critical,
    /// 7.0–8.9.
    #[serde(rename = "high")]
    High,
    /// 4.0–6.9.
    #[serde(rename = "medium")]
    Medium,
    /// 0.1–3.9 (and 0.0).
    #[serde(rename = "low")]
    Low,
    /// No CVSS vector in the bundle.
    #[serde(rename = "unscored")]
    Unscored,
}

impl Risk {
    /// The CVSS severity band.
    pub fn severity(&self) -> Severity {
        match self.cvss {
            Some(s) if s >= 9.0 => Severity::Critical,
            Some(s) if s >= 7.0 => Severity::High,
            Some(s) if s >= 4.0 => Severity::Medium,
            Some(_) => Severity::Low,
            None => Severity::Unscored,
        }
    }
}

impl Risk {
    /// The score and due class the same finding has on another asset: the likelihood, impact
    /// and CVE-side due inputs do not depend on the asset, so a fleet view assesses a finding
    /// once and rescores it per node.
    pub fn on(&self, asset: &Asset, fix_available: bool) -> (f64, Due) {
        let inputs = DueInputs { exposed: asset.exposure == Exposure::Internet, ..self.inputs };
        let due = if fix_available { due_class(inputs) } else { Due::ExceptionNeeded };
        ((1000.0 * self.likelihood.0 * self.impact.0 * asset.factor()).round() / 10.0, due)
    }
}

/// The value of metric `key` in a validated CVSS vector string.
fn metric<'a>(vector: &'a str, key: &str) -> Option<&'a str> {
    vector.split('/').find_map(|part| part.strip_prefix(key)?.strip_prefix(':'))
}

/// The CVSS base score of a vector, scored by the `cvss` crate; `None` when it does not parse.
pub fn cvss_score(vector: &str) -> Option<f64> {
    if vector.starts_with("CVSS:4.0/") {
        cvss::v4::Vector::from_str(vector).ok().map(|v| v.score().value())
    } else if vector.starts_with("CVSS:3.") {
        cvss::v3::Base::from_str(vector).ok().map(|v| v.score().value())
    } else {
        None
    }
}

/// The preferred vector of a CVE (v4.0 over v3.x) and its score.
fn best_vector(info: Option<&CveInfo>) -> Option<(&str, f64)> {
    let info = info?;
    [info.cvss4.as_deref(), info.cvss3.as_deref()]
        .into_iter()
        .flatten()
        .find_map(|v| cvss_score(v).map(|s| (v, s)))
}

/// Assesses one finding on one asset.
pub fn assess(finding: &Finding, info: Option<&CveInfo>, asset: &Asset) -> Risk {
    let vector = best_vector(info);
    let v4 = vector.is_some_and(|(v, _)| v.starts_with("CVSS:4.0/"));
    let automatable = vector.is_some_and(|(v, _)| {
        metric(v, "AV") == Some("N")
            && metric(v, "PR") == Some("N")
            && metric(v, "UI") == Some("N")
            && (!v4 || metric(v, "AT") == Some("N"))
    });
    let (c, i) = if v4 { ("VC", "VI") } else { ("C", "I") };
    let total_impact =
        vector.is_some_and(|(v, _)| metric(v, c) == Some("H") && metric(v, i) == Some("H"));
    let kev = info.and_then(|i| i.kev.as_ref());
    let inputs = DueInputs {
        exposed: asset.exposure == Exposure::Internet,
        kev: kev.is_some(),
        automatable,
        total_impact,
    };
    let due = match finding.verdict {
        Verdict::Open { .. } | Verdict::Undetermined => Due::ExceptionNeeded,
        _ => due_class(inputs),
    };
    let due_at = due.days().zip(finding.fix_seen_at).map(|(d, at)| at.plus(d * DAY_MS));
    let likelihood = match (kev, info.and_then(|i| i.epss)) {
        (Some(k), _) => (1.0, format!("in KEV since {}", k.date_added)),
        (None, Some((p, pct))) => {
            let band = if p >= 0.5 {
                0.9
            } else if p >= 0.1 {
                0.6
            } else if p >= 0.01 {
                0.3
            } else {
                0.1
            };
            (band, format!("EPSS {p:.4} (percentile {pct:.2})"))
        }
        (None, None) => (0.2, "no KEV entry or EPSS score".to_string()),
    };
    let impact = match vector {
        Some((v, s)) => (s / 10.0, format!("CVSS {s:.1} from {v}")),
        None => {
            let f = match finding.urgency {
                Urgency::High => 0.8,
                Urgency::Medium | Urgency::Unassigned => 0.5,
                Urgency::Low => 0.3,
                Urgency::Unimportant => 0.1,
            };
            (f, format!("no CVSS vector; tracker urgency {:?}", finding.urgency))
        }
    };
    let exposure_factor = asset.exposure_factor();
    let asset_factor = asset.factor();
    let asset_why = format!(
        "criticality {}/4 × exposure {} {exposure_factor:.1}",
        asset.criticality,
        format!("{:?}", asset.exposure).to_lowercase()
    );
    let score = (1000.0 * likelihood.0 * impact.0 * asset_factor).round() / 10.0;
    Risk {
        due,
        due_at,
        inputs,
        score,
        likelihood,
        impact,
        asset: (asset_factor, asset_why),
        unimportant: finding.urgency == Urgency::Unimportant,
        cvss: vector.map(|(_, s)| s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intel::{Kev, Origin};

    fn finding(verdict: Verdict) -> Finding {
        Finding {
            cve: "CVE-2024-6387".into(),
            source: "openssh".into(),
            source_version: "1:9.2p1-2+deb12u2".into(),
            binaries: vec!["openssh-server".into()],
            verdict,
            origin: Origin::Tracker,
            urgency: Urgency::High,
            fix_seen_at: Some(Millis(1_000)),
            disagreements: vec![],
            excepted: None,
        }
    }

    fn fixable() -> Verdict {
        Verdict::Affected { fixed_version: "1:9.2p1-2+deb12u3".into(), in_security: true }
    }

    #[test]
    fn the_score_shows_its_arithmetic() {
        let info = CveInfo {
            cve: "CVE-2024-6387".into(),
            cvss3: Some("CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:H/A:H".into()),
            kev: Some(Kev {
                date_added: "2024-07-01".into(),
                due_date: "2024-07-22".into(),
                ransomware: false,
            }),
            ..Default::default()
        };
        let asset = Asset { exposure: Exposure::Internet, criticality: 4 };
        let r = assess(&finding(fixable()), Some(&info), &asset);
        assert!((r.impact.0 - 0.81).abs() < 1e-9, "CVSS 8.1 from the crate");
        assert_eq!(r.score, 81.0);
        assert!(r.inputs.automatable && r.inputs.total_impact && r.inputs.kev && r.inputs.exposed);
        assert_eq!(r.due, Due::Days3);
        assert_eq!(r.due_at, Some(Millis(1_000 + 3 * DAY_MS)));
        let r = assess(&finding(fixable()), Some(&info), &Asset::default());
        assert!(!r.inputs.exposed);
        assert!(r.score < 81.0);
    }

    #[test]
    fn a_vector_that_does_not_parse_falls_back_to_urgency() {
        let info = CveInfo { cvss3: Some("CVSS:3.1/AV:X/garbage".into()), ..Default::default() };
        let r = assess(&finding(fixable()), Some(&info), &Asset::default());
        assert_eq!(r.impact.0, 0.8);
        assert!(!r.inputs.automatable);
    }

    #[test]
    fn cvss_v4_is_preferred_and_reads_its_own_metrics() {
        let info = CveInfo {
            cvss3: Some("CVSS:3.1/AV:L/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N".into()),
            cvss4: Some("CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N".into()),
            ..Default::default()
        };
        let r = assess(&finding(fixable()), Some(&info), &Asset::default());
        assert!(r.impact.1.contains("CVSS:4.0"));
        assert!(r.inputs.automatable && r.inputs.total_impact);
    }

    #[test]
    fn the_due_table_has_every_row_of_the_directive() {
        let rows = [
            ((true, true, true, true), Due::Days3),
            ((true, true, true, false), Due::Days3),
            ((true, true, false, true), Due::Days3),
            ((true, true, false, false), Due::Days14),
            ((true, false, true, true), Due::Days3),
            ((true, false, true, false), Due::Days14),
            ((true, false, false, true), Due::Days14),
            ((true, false, false, false), Due::Days60),
            ((false, true, true, true), Due::Days3),
            ((false, true, true, false), Due::Days14),
            ((false, true, false, true), Due::Days14),
            ((false, true, false, false), Due::Days14),
            ((false, false, true, true), Due::Days60),
            ((false, false, true, false), Due::Days60),
            ((false, false, false, true), Due::NextWindow),
            ((false, false, false, false), Due::NextWindow),
        ];
        for ((exposed, kev, automatable, total_impact), due) in rows {
            let i = DueInputs { exposed, kev, automatable, total_impact };
            assert_eq!(due_class(i), due, "{i:?}");
        }
        let triage = rows
            .iter()
            .filter(|((e, k, a, t), _)| {
                needs_forensic_triage(DueInputs {
                    exposed: *e,
                    kev: *k,
                    automatable: *a,
                    total_impact: *t,
                })
            })
            .count();
        assert_eq!(triage, 3);
    }

    #[test]
    fn no_fix_means_an_exception_is_needed() {
        let r = assess(
            &finding(Verdict::Open { reason: Some("postponed".into()) }),
            None,
            &Asset::default(),
        );
        assert_eq!(r.due, Due::ExceptionNeeded);
        assert_eq!(r.due_at, None);
    }
}
