//! Bundles: a site object with its author's admission certificate, the pure part of its check
//! memoised, and the checks every node makes against its own trust state and clock.

use super::*;

/// A signed site object with its author's admission certificate, as it travels and is stored.
/// Shared by reference count: relaying or storing one never copies it.
///
/// The bundle memoises the pure parts of checking it — signature validity and decoding, both
/// functions of its bytes alone — so a bundle relayed through many hands is verified once per
/// process. Everything that depends on a node's trust state or clock (admin membership,
/// revocation, expiry, site) is checked by every node every time (but by nodes that restore
/// one store through a [`crate::node::RestoreMemo`], which share one node's verdicts).
#[derive(Serialize, Deserialize)]
pub struct Bundle {
    object: Envelope,
    admission: Envelope,
    #[serde(skip)]
    cache: BundleCache,
}

#[derive(Default)]
struct BundleCache {
    pure: std::sync::OnceLock<Result<Checked, SiteError>>,
    id: std::sync::OnceLock<ObjectId>,
    wire_bytes: std::sync::OnceLock<usize>,
    lanes: std::sync::OnceLock<[u64; 4]>,
}

/// What the pure checks of a bundle establish.
#[derive(Debug)]
struct Checked {
    body_hash: [u8; 32],
    cert: crate::trust::AdmissionCert,
    cert_signer: crate::ids::KeyId,
    signer: NodeId,
    body: Body,
}

/// The decoded body of a site object.
#[derive(Debug)]
enum Body {
    Record(NodeRecord),
    Evidence(Evidence),
    Summary(SiteSummary),
    /// An endorsement and the checked summary inside it.
    Endorsed(Box<(Endorsement, Checked)>),
    Beacon(Beacon),
}

impl Clone for Bundle {
    fn clone(&self) -> Self {
        Bundle::new(self.object.clone(), self.admission.clone())
    }
}

impl PartialEq for Bundle {
    fn eq(&self, other: &Self) -> bool {
        self.object == other.object && self.admission == other.admission
    }
}

impl Eq for Bundle {}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Bundle({:?} by {:?})",
            self.object.domain,
            self.object.signatures.first().map(|s| s.key)
        )
    }
}

impl Bundle {
    /// A held (verified) summary's body hash as four 64-bit lanes, memoised: its entry in the
    /// digest of held summaries ([`Summaries`]).
    pub(super) fn summary_lanes(&self) -> [u64; 4] {
        *self.cache.lanes.get_or_init(|| {
            super::state::lanes(&self.summary_body_hash().expect("held summaries are verified"))
        })
    }

    /// A bundle of a signed object and its author's admission certificate.
    pub fn new(object: Envelope, admission: Envelope) -> Bundle {
        Bundle { object, admission, cache: BundleCache::default() }
    }
    /// The signed object.
    pub fn object(&self) -> &Envelope {
        &self.object
    }
    /// The author's admission certificate.
    pub fn admission(&self) -> &Envelope {
        &self.admission
    }
    /// Content id of the signed object.
    pub fn id(&self) -> ObjectId {
        *self.cache.id.get_or_init(|| self.object.id())
    }
    /// Exact size of its encoding on the wire.
    pub fn wire_bytes(&self) -> usize {
        *self.cache.wire_bytes.get_or_init(|| {
            postcard::serialize_with_flavor(self, postcard::ser_flavors::Size::default())
                .unwrap_or(0)
        })
    }

    fn pure(&self, check: &dyn SignatureCheck) -> Result<&Checked, SiteError> {
        self.cache.pure.get_or_init(|| self.check_pure(check)).as_ref().map_err(Clone::clone)
    }

    fn check_pure(&self, check: &dyn SignatureCheck) -> Result<Checked, SiteError> {
        let domain = self.object.domain;
        if !matches!(
            domain,
            Domain::NodeRecord
                | Domain::Evidence
                | Domain::SiteSummary
                | Domain::SummaryEndorsement
                | Domain::Beacon
        ) {
            return Err(
                TrustError::WrongDomain { expected: Domain::NodeRecord, got: domain }.into()
            );
        }
        if self.object.signatures.len() != 1 {
            return Err(SiteError::Invalid("site objects carry exactly one signature"));
        }
        self.object.verify_all(check).map_err(TrustError::from)?;
        let signer = NodeId(self.object.signatures[0].key.0);
        let (cert, cert_signer) = crate::trust::verify_admission_signature(&self.admission, check)?;
        let body = match domain {
            Domain::NodeRecord => Body::Record(self.object.open("node record")?),
            Domain::Evidence => Body::Evidence(self.object.open("evidence")?),
            Domain::SiteSummary => Body::Summary(self.object.open("site summary")?),
            Domain::Beacon => Body::Beacon(self.object.open("beacon")?),
            _ => {
                let e: Endorsement = self.object.open("summary endorsement")?;
                if e.summary.domain != Domain::SiteSummary {
                    return Err(TrustError::WrongDomain {
                        expected: Domain::SiteSummary,
                        got: e.summary.domain,
                    }
                    .into());
                }
                let inner =
                    Bundle::new(e.summary.clone(), e.admission.clone()).check_pure(check)?;
                Body::Endorsed(Box::new((e, inner)))
            }
        };
        Ok(Checked { body_hash: self.object.body_hash(), cert, cert_signer, signer, body })
    }

    /// Runs the pure checks (signatures, decoding) now and caches the result; any thread may
    /// do this ahead of time. The trust-dependent checks still run at each node.
    pub fn precheck(&self, check: &dyn SignatureCheck) -> Result<(), SiteError> {
        self.pure(check).map(|_| ())
    }

    /// The decoded record, once verified by [`verify_record`].
    pub fn record(&self) -> Option<&NodeRecord> {
        match self.cache.pure.get()?.as_ref().ok()?.body {
            Body::Record(ref r) => Some(r),
            _ => None,
        }
    }

    /// The decoded evidence, once verified by [`verify_evidence`].
    pub fn evidence(&self) -> Option<&Evidence> {
        match self.cache.pure.get()?.as_ref().ok()?.body {
            Body::Evidence(ref e) => Some(e),
            _ => None,
        }
    }

    /// The decoded summary (the endorsed one, for an endorsement), once verified by
    /// [`verify_summary`].
    pub fn summary(&self) -> Option<&SiteSummary> {
        match self.cache.pure.get()?.as_ref().ok()?.body {
            Body::Summary(ref s) => Some(s),
            Body::Endorsed(ref e) => match e.1.body {
                Body::Summary(ref s) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    /// The author's admission certificate, once the bundle is verified.
    pub fn admission_cert(&self) -> Option<&crate::trust::AdmissionCert> {
        Some(&self.cache.pure.get()?.as_ref().ok()?.cert)
    }

    /// The endorsing node, for a verified endorsement.
    pub fn endorser(&self) -> Option<NodeId> {
        match self.cache.pure.get()?.as_ref().ok()?.body {
            Body::Endorsed(ref e) => Some(e.0.endorser),
            _ => None,
        }
    }

    /// BLAKE3 of the summary's signed body: the bundle's own for a summary, the endorsed
    /// summary's for an endorsement (so both name the same summary alike).
    pub fn summary_body_hash(&self) -> Option<[u8; 32]> {
        match self.cache.pure.get()?.as_ref().ok()? {
            Checked { body: Body::Endorsed(ref e), .. } => Some(e.1.body_hash),
            Checked { body: Body::Summary(_), body_hash, .. } => Some(*body_hash),
            _ => None,
        }
    }

    /// When the first of the admission certificates a verified bundle rests on expires: its
    /// author's, and for an endorsement the summary author's too.
    pub(crate) fn certs_expire_at(&self) -> Option<Millis> {
        let checked = self.cache.pure.get()?.as_ref().ok()?;
        Some(match &checked.body {
            Body::Endorsed(e) => checked.cert.expires_at.min(e.1.cert.expires_at),
            _ => checked.cert.expires_at,
        })
    }

    /// BLAKE3 of the signed body, once verified.
    pub fn body_hash(&self) -> Option<[u8; 32]> {
        Some(self.cache.pure.get()?.as_ref().ok()?.body_hash)
    }

    /// BLAKE3 of the signed body, verified or not: what a copy off the wire is compared by
    /// before anyone spends a signature check on it (taken from the verification if there
    /// was one).
    pub fn signed_body_hash(&self) -> [u8; 32] {
        self.body_hash().unwrap_or_else(|| self.object.body_hash())
    }

    /// Checks authorship against a node's trust state and clock: the object is signed by the
    /// node it names, that node's certificate is from a current admin of our mesh and has not
    /// expired, and the object's site is the certificate's site.
    fn authorize(
        &self,
        checked: &Checked,
        named: NodeId,
        site: &SiteId,
        trust: &Trust,
        now: Millis,
    ) -> Result<(), SiteError> {
        if checked.signer != named {
            return Err(SiteError::WrongSigner { claimed: named, signer: checked.signer });
        }
        trust.authorize_admission(&checked.cert, &checked.cert_signer, now)?;
        if checked.cert.node != named {
            return Err(SiteError::WrongSigner { claimed: named, signer: checked.cert.node });
        }
        if checked.cert.site != *site {
            return Err(SiteError::WrongSite {
                claimed: site.clone(),
                admitted: checked.cert.site.clone(),
            });
        }
        Ok(())
    }
}

/// A verified record as held: its version and the bundle (decoded record inside).
#[derive(Clone, Debug)]
pub struct HeldRecord {
    /// The record's version.
    pub version: u64,
    /// The bundle it came in (relayed as is).
    pub bundle: Arc<Bundle>,
}

impl HeldRecord {
    /// The record.
    pub fn record(&self) -> &NodeRecord {
        self.bundle.record().expect("held records are verified")
    }
    /// BLAKE3 of the signed body.
    pub fn body_hash(&self) -> [u8; 32] {
        self.bundle.body_hash().expect("held records are verified")
    }
    /// The first 8 bytes of the body hash, as site keys carry it.
    pub fn tag(&self) -> [u8; 8] {
        let h = self.body_hash();
        [h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]
    }
}

/// A verified summary as held.
#[derive(Clone, Debug)]
pub struct HeldSummary {
    /// The bundle it came in (decoded summary inside). One pointer: a node holds one of these
    /// per site of the fleet.
    pub bundle: Arc<Bundle>,
}

impl HeldSummary {
    /// Its rank among summaries of the same site.
    pub fn rank(&self) -> SummaryRank {
        let hash = self.bundle.summary_body_hash().expect("held summaries are verified");
        self.summary().rank(self.endorsed(), hash)
    }
    /// Whether another member of the site endorsed it.
    pub fn endorsed(&self) -> bool {
        self.bundle.endorser().is_some()
    }
    /// Whether other sites may count it: endorsed, or about at most one record.
    pub fn countable(&self) -> bool {
        self.endorsed() || self.summary().record_count <= 1
    }
    /// The summary.
    pub fn summary(&self) -> &SiteSummary {
        self.bundle.summary().expect("held summaries are verified")
    }
}

/// Verifies a record bundle completely. Stores nothing.
pub fn verify_record(
    bundle: &Arc<Bundle>,
    trust: &Trust,
    now: Millis,
    check: &dyn SignatureCheck,
) -> Result<HeldRecord, SiteError> {
    let checked = bundle.pure(check)?;
    let Body::Record(record) = &checked.body else {
        return Err(TrustError::WrongDomain {
            expected: Domain::NodeRecord,
            got: bundle.object.domain,
        }
        .into());
    };
    if record.mesh != trust.mesh() {
        return Err(TrustError::WrongMesh { ours: trust.mesh(), got: record.mesh }.into());
    }
    if record.exposure.as_ref().is_some_and(|e| !e.within_limits())
        || record.rollouts.len() > limits::ROLLOUT_STATUS_PER_RECORD_MAX
        || record.inventory.os.len() > limits::TEXT_BYTES_MAX
        || record.inventory.kernel.len() > limits::TEXT_BYTES_MAX
    {
        return Err(SiteError::Invalid("record field too large"));
    }
    // A time zone is an IANA name (what a rehearsal and `patchmesh fleet` show of it).
    let zone = &record.inventory.zone;
    if zone.len() > limits::LABEL_BYTES_MAX
        || !zone.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b))
    {
        return Err(SiteError::Invalid("record zone is not a time zone name"));
    }
    bundle.authorize(checked, record.node, &record.site, trust, now)?;
    Ok(HeldRecord { version: record.version, bundle: bundle.clone() })
}

/// Verifies an evidence bundle completely. Stores nothing.
pub fn verify_evidence(
    bundle: &Arc<Bundle>,
    trust: &Trust,
    now: Millis,
    check: &dyn SignatureCheck,
) -> Result<Evidence, SiteError> {
    let checked = bundle.pure(check)?;
    let Body::Evidence(ev) = &checked.body else {
        return Err(TrustError::WrongDomain {
            expected: Domain::Evidence,
            got: bundle.object.domain,
        }
        .into());
    };
    if ev.mesh != trust.mesh() {
        return Err(TrustError::WrongMesh { ours: trust.mesh(), got: ev.mesh }.into());
    }
    if ev.detail.len() > limits::TEXT_BYTES_MAX {
        return Err(SiteError::Invalid("evidence detail too long"));
    }
    bundle.authorize(checked, ev.node, &ev.site, trust, now)?;
    Ok(ev.clone())
}

/// Verifies an evidence bundle like [`verify_evidence`] and also returns the labels of its
/// author's admission certificate (which rollout rings are computed from).
pub fn verify_evidence_labels(
    bundle: &Arc<Bundle>,
    trust: &Trust,
    now: Millis,
    check: &dyn SignatureCheck,
) -> Result<(Evidence, BTreeMap<String, String>), SiteError> {
    let ev = verify_evidence(bundle, trust, now, check)?;
    let checked = bundle.pure(check)?;
    Ok((ev, checked.cert.labels.clone()))
}

/// Verifies a beacon bundle: signed by the node it names, admitted by a current admin to the
/// site it names, in this mesh. Stores nothing; whether it is newer than what the node holds
/// of that site is [`crate::node::Reach`]'s to judge.
pub fn verify_beacon(
    bundle: &Arc<Bundle>,
    trust: &Trust,
    now: Millis,
    check: &dyn SignatureCheck,
) -> Result<Beacon, SiteError> {
    let checked = bundle.pure(check)?;
    let Body::Beacon(beacon) = &checked.body else {
        return Err(TrustError::WrongDomain {
            expected: Domain::Beacon,
            got: bundle.object.domain,
        }
        .into());
    };
    if beacon.mesh != trust.mesh() {
        return Err(TrustError::WrongMesh { ours: trust.mesh(), got: beacon.mesh }.into());
    }
    bundle.authorize(checked, beacon.node, &beacon.site, trust, now)?;
    Ok(beacon.clone())
}

/// Verifies a summary bundle. Stores nothing.
pub fn verify_summary(
    bundle: &Arc<Bundle>,
    trust: &Trust,
    now: Millis,
    check: &dyn SignatureCheck,
) -> Result<HeldSummary, SiteError> {
    let checked = bundle.pure(check)?;
    let (inner, endorsement) = match &checked.body {
        Body::Summary(_) => (checked, None),
        Body::Endorsed(e) => (&e.1, Some((&e.0, checked))),
        _ => {
            return Err(TrustError::WrongDomain {
                expected: Domain::SiteSummary,
                got: bundle.object.domain,
            }
            .into())
        }
    };
    let Body::Summary(summary) = &inner.body else {
        return Err(SiteError::Invalid("an endorsement must carry a summary"));
    };
    if summary.mesh != trust.mesh() {
        return Err(TrustError::WrongMesh { ours: trust.mesh(), got: summary.mesh }.into());
    }
    let soak_entries: usize = summary.soaking.values().map(Vec::len).sum();
    if summary.counts.len() + summary.evidence.len() + soak_entries > limits::SUMMARY_COUNTERS_MAX
        || !summary.exposure.within_limits()
    {
        return Err(SiteError::Invalid("too many summary counters"));
    }
    if !summary.counts_consistent() {
        return Err(SiteError::Invalid("summary counts more members than records"));
    }
    bundle.authorize(inner, summary.author, &summary.site, trust, now)?;
    if let Some((e, outer)) = endorsement {
        if e.mesh != summary.mesh || e.site != summary.site {
            return Err(SiteError::Invalid("endorsement names another site than its summary"));
        }
        if e.endorser == summary.author {
            return Err(SiteError::Invalid("a summary endorsed by its own author"));
        }
        bundle.authorize(outer, e.endorser, &summary.site, trust, now)?;
    }
    Ok(HeldSummary { bundle: bundle.clone() })
}

/// The site and rank of a summary bundle from its pure checks alone (signature, decoding), so a
/// stale copy can be dropped before any further work.
pub fn summary_rank<'a>(
    bundle: &'a Bundle,
    check: &dyn SignatureCheck,
) -> Result<(&'a SiteId, SummaryRank), SiteError> {
    let checked = bundle.pure(check)?;
    match &checked.body {
        Body::Summary(s) => Ok((&s.site, s.rank(false, checked.body_hash))),
        Body::Endorsed(e) => match &e.1.body {
            Body::Summary(s) => Ok((&s.site, s.rank(true, e.1.body_hash))),
            _ => Err(SiteError::Invalid("an endorsement must carry a summary")),
        },
        _ => Err(TrustError::WrongDomain {
            expected: Domain::SiteSummary,
            got: bundle.object.domain,
        }
        .into()),
    }
}

/// The score by which a site elects its summary reporter: the member with the lowest score.
pub fn reporter_score(site: &SiteId, node: &NodeId) -> [u8; 32] {
    crate::crypto::hash_parts(&[site.0.as_bytes(), &node.0])
}
