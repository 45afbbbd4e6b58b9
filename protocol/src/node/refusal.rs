//! Why an object was refused, and what the refusal costs its sender.

use crate::catalog::CatalogError;
use crate::crypto::DecodeError;
use crate::ids::NodeId;
use crate::site::SiteError;
use crate::trust::TrustError;

/// Why an object from a peer (or a local command) was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Trust: an unknown or superseded admin set, a bad signature or admission.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The catalog: a change that does not verify or apply.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Site state: a record, summary or evidence that does not verify.
    #[error(transparent)]
    Site(#[from] SiteError),
    /// Bytes that do not decode within the limits.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A hello that names another key than the transport authenticated.
    #[error("hello names node {0:?} but the transport authenticated another key")]
    HelloMismatch(NodeId),
    /// A message kind that may not travel by pubsub.
    #[error("this message kind may not travel by pubsub")]
    NotGossip,
    /// No valid hello within the admission timeout.
    #[error("no valid hello within the admission timeout")]
    HelloTimeout,
    /// A valid enrolment this node does not admit (revoked voucher, awaiting approval, over
    /// the voucher's limit).
    #[error(transparent)]
    Enrolment(#[from] crate::enrol::GateError),
}

/// What a refusal says about its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offence {
    /// Nothing an honest peer cannot cause: a version we already passed or one ahead of a
    /// version we lack (a gossip race), or a hello that did not arrive in time (a slow or
    /// congested link; the connection is dropped anyway). Not forwarded, but no penalty and
    /// no rejection of the message.
    Blameless,
    /// Invalid: the sender is penalised and a pubsub message carrying it is rejected.
    Invalid,
}

impl Refusal {
    /// The kind [`super::Stats`] counts it under.
    pub fn kind(&self) -> &'static str {
        use crate::crypto::SignatureError as S;
        let trust_kind = |t: &TrustError| match t {
            TrustError::Signature(S::Duplicate(_)) => "duplicate_signer",
            TrustError::Signature(_) => "bad_signature",
            TrustError::Decode(_) => "malformed",
            TrustError::WrongDomain { .. } => "wrong_domain",
            TrustError::WrongMesh { .. } => "wrong_mesh",
            TrustError::UnknownKey(_) => "unknown_key",
            TrustError::BelowThreshold { .. } => "below_threshold",
            TrustError::Revoked(_) => "revoked",
            TrustError::Replay { .. } => "replay",
            TrustError::Gap { .. } => "gap",
            TrustError::Expired { .. } => "expired",
            TrustError::Invalid(_) => "invalid",
            TrustError::NotPermitted { .. } => "not_permitted",
        };
        match self {
            Refusal::Trust(t) => trust_kind(t),
            Refusal::Catalog(CatalogError::Trust(t)) => trust_kind(t),
            Refusal::Catalog(CatalogError::RevokedHistory { .. }) => "revoked",
            Refusal::Catalog(CatalogError::Decode(_)) => "malformed",
            Refusal::Catalog(_) => "bad_catalog",
            Refusal::Site(SiteError::Trust(t)) => trust_kind(t),
            Refusal::Site(SiteError::Replay { .. }) => "replay",
            Refusal::Site(SiteError::Decode(_)) => "malformed",
            Refusal::Site(SiteError::Unendorsed(_)) => "unendorsed_summary",
            Refusal::Site(_) => "bad_site_object",
            Refusal::Decode(DecodeError::TooLarge { .. }) => "oversized",
            Refusal::Decode(_) => "malformed",
            Refusal::HelloMismatch(_) => "hello_mismatch",
            Refusal::NotGossip => "not_gossip",
            Refusal::HelloTimeout => "hello_timeout",
            Refusal::Enrolment(crate::enrol::GateError::Revoked(_)) => "voucher_revoked",
            Refusal::Enrolment(crate::enrol::GateError::NodeRevoked(_)) => "node_revoked",
            Refusal::Enrolment(crate::enrol::GateError::ReservedLabel { .. }) => {
                "voucher_reserved_label"
            }
            Refusal::Enrolment(crate::enrol::GateError::AwaitingApproval(_)) => "awaiting_approval",
            Refusal::Enrolment(crate::enrol::GateError::OverLimit { .. }) => "voucher_over_limit",
        }
    }

    /// Whether the sender is to blame.
    pub fn offence(&self) -> Offence {
        // A stale version is a gossip race; an expired certificate is an honest node's too.
        let stale = |t: &TrustError| {
            matches!(
                t,
                TrustError::Replay { .. } | TrustError::Gap { .. } | TrustError::Expired { .. }
            )
        };
        match self {
            Refusal::Trust(t) | Refusal::Catalog(CatalogError::Trust(t)) => {
                if stale(t) {
                    Offence::Blameless
                } else {
                    Offence::Invalid
                }
            }
            Refusal::Site(SiteError::Trust(t)) if stale(t) => Offence::Blameless,
            Refusal::Site(SiteError::Replay { .. }) => Offence::Blameless,
            Refusal::HelloTimeout => Offence::Blameless,
            // An honest machine may enrol after the slots filled, or before its approval.
            Refusal::Enrolment(_) => Offence::Blameless,
            _ => Offence::Invalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stale_versions_and_late_hellos_are_no_offence() {
        let replay = Refusal::Trust(TrustError::Replay { floor: 3, got: 2 });
        assert_eq!((replay.kind(), replay.offence()), ("replay", Offence::Blameless));
        let gap = Refusal::Catalog(CatalogError::Trust(TrustError::Gap { floor: 1, got: 3 }));
        assert_eq!((gap.kind(), gap.offence()), ("gap", Offence::Blameless));
        let too_big = Refusal::Decode(DecodeError::TooLarge {
            what: "message",
            size_bytes: 10,
            limit_bytes: 1,
        });
        assert_eq!((too_big.kind(), too_big.offence()), ("oversized", Offence::Invalid));
        assert_eq!(Refusal::NotGossip.offence(), Offence::Invalid);
        let site_replay = Refusal::Site(SiteError::Replay { floor: 4, got: 4 });
        assert_eq!((site_replay.kind(), site_replay.offence()), ("replay", Offence::Blameless));
        assert_eq!(Refusal::HelloTimeout.kind(), "hello_timeout");
        assert_eq!(
            Refusal::HelloTimeout.offence(),
            Offence::Blameless,
            "a slow link is no offence"
        );
    }
}
