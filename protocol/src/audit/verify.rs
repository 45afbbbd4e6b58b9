//! Reading an audit log back: parsing its lines, following the hash chain and its signed
//! checkpoints, verifying an export end to end, and checking it against a held head.

use super::*;

/// One parsed line.
#[derive(Debug)]
pub enum Line<'a> {
    /// An entry: its exact JSON bytes, the parsed fields and the hash written beside it.
    Entry {
        /// The exact bytes of the `entry` object.
        raw: &'a str,
        /// Parsed.
        entry: LooseEntry,
        /// The hash written beside it.
        hash: Hash32,
    },
    /// A signed checkpoint.
    Checkpoint(SignedCheckpoint),
    /// An export header.
    Header(SignedHeader),
}

#[derive(Deserialize)]
pub(super) struct RawLine<'a> {
    #[serde(borrow)]
    entry: Option<&'a RawValue>,
    hash: Option<Hash32>,
    checkpoint: Option<Checkpoint>,
    export: Option<ExportHeader>,
    signature: Option<SigHex>,
}

/// Parses one line (without its newline). `n` is its 1-based number, for errors.
pub fn parse_line(text: &str, n: usize) -> Result<Line<'_>, AuditError> {
    let bad = |reason: String| AuditError::Malformed { line: n, reason };
    if text.len() > LINE_BYTES_MAX {
        return Err(bad(format!("{} bytes, limit {LINE_BYTES_MAX}", text.len())));
    }
    let raw: RawLine<'_> = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    match raw {
        RawLine {
            entry: Some(e),
            hash: Some(hash),
            checkpoint: None,
            export: None,
            signature: None,
        } => {
            let entry: LooseEntry =
                serde_json::from_str(e.get()).map_err(|e| bad(format!("entry: {e}")))?;
            Ok(Line::Entry { raw: e.get(), entry, hash })
        }
        RawLine {
            checkpoint: Some(checkpoint),
            signature: Some(signature),
            entry: None,
            hash: None,
            export: None,
        } => Ok(Line::Checkpoint(SignedCheckpoint { checkpoint, signature })),
        RawLine {
            export: Some(export),
            signature: Some(signature),
            entry: None,
            hash: None,
            checkpoint: None,
        } => Ok(Line::Header(SignedHeader { export, signature })),
        _ => Err(bad("neither an entry, a checkpoint nor an export header".into())),
    }
}

/// Walks a chain line by line. Used by the writer (to find where a log ends after a crash) and
/// by the verifier.
#[derive(Debug, Clone)]
pub struct Chain {
    /// The node whose checkpoints are expected.
    pub node: Option<Hash32>,
    /// The last sequence number seen.
    pub seq: u64,
    /// Its hash.
    pub head: Hash32,
    /// The first sequence number of this chain (its first entry).
    pub first_seq: Option<u64>,
    /// The last checkpoint seen.
    pub last_checkpoint: Option<SignedCheckpoint>,
    /// Entries read.
    pub entries: u64,
    /// Checkpoints read.
    pub checkpoints: u64,
    started: bool,
}

impl Chain {
    /// A chain from the first entry.
    pub fn new(node: Option<Hash32>) -> Chain {
        Chain {
            node,
            seq: 0,
            head: Hash32::ZERO,
            first_seq: None,
            last_checkpoint: None,
            entries: 0,
            checkpoints: 0,
            started: false,
        }
    }

    /// Feeds one parsed line. Checkpoint signatures are checked with `check` when given (the
    /// writer re-reading its own log passes none).
    pub fn feed(
        &mut self,
        line: &Line<'_>,
        check: Option<&dyn SignatureCheck>,
    ) -> Result<(), AuditError> {
        match line {
            Line::Header(_) => Err(AuditError::Malformed {
                line: 0,
                reason: "an export header after the first line".into(),
            }),
            Line::Checkpoint(cp) => {
                let c = &cp.checkpoint;
                if let Some(node) = self.node {
                    if c.node != node {
                        return Err(AuditError::Checkpoint {
                            seq: c.seq,
                            reason: "signed for another node".into(),
                        });
                    }
                }
                if let Some(check) = check {
                    cp.verify(check).map_err(|_| AuditError::Checkpoint {
                        seq: c.seq,
                        reason: "its signature does not verify".into(),
                    })?;
                }
                if !self.started && self.entries == 0 {
                    // A log (or export) starting at a checkpoint continues from its head.
                    self.seq = c.seq;
                    self.head = c.head;
                } else if c.seq != self.seq || c.head != self.head {
                    return Err(AuditError::Checkpoint {
                        seq: c.seq,
                        reason: format!(
                            "says entry {} has hash {}, the chain has entry {} with hash {}",
                            c.seq, c.head, self.seq, self.head
                        ),
                    });
                }
                if let Some(last) = &self.last_checkpoint {
                    if c.at_ms < last.checkpoint.at_ms {
                        return Err(AuditError::Checkpoint {
                            seq: c.seq,
                            reason: "signed earlier than the checkpoint before it".into(),
                        });
                    }
                }
                self.started = true;
                self.checkpoints += 1;
                self.last_checkpoint = Some(cp.clone());
                Ok(())
            }
            Line::Entry { raw, entry, hash } => {
                let want = self.seq + 1;
                if entry.seq != want {
                    let seq = want.min(entry.seq.max(1));
                    let reason = if entry.seq > want {
                        format!("missing: the next entry read is {}", entry.seq)
                    } else {
                        format!("out of order: entry {} follows entry {}", entry.seq, self.seq)
                    };
                    return Err(AuditError::Broken { seq, reason });
                }
                if entry_hash(raw.as_bytes()) != *hash {
                    return Err(AuditError::HashMismatch { seq: entry.seq });
                }
                if entry.prev != self.head {
                    return Err(AuditError::Broken {
                        seq: entry.seq,
                        reason: "does not link to the entry before it".into(),
                    });
                }
                self.started = true;
                self.first_seq.get_or_insert(entry.seq);
                self.seq = entry.seq;
                self.head = *hash;
                self.entries += 1;
                Ok(())
            }
        }
    }
}

/// What [`verify_export`] found in a valid export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// The node.
    pub node: Hash32,
    /// Its site.
    pub site: String,
    /// First and last entries.
    pub from_seq: u64,
    /// Last entry.
    pub through_seq: u64,
    /// Entries checked.
    pub entries: u64,
    /// Signed checkpoints checked.
    pub checkpoints: u64,
    /// The final head.
    pub head: Hash32,
    /// When it was exported.
    pub exported_at_ms: u64,
}

/// Checks an exported log with nothing but the mesh's genesis: the admin sets and admission in
/// the header, the header's signature, every entry's hash and link, every checkpoint's
/// signature and agreement with the chain, and that a signed checkpoint covers the last entry
/// the header promises. Returns the first failure.
pub fn verify_export(
    text: &str,
    genesis: &Envelope,
    check: &dyn SignatureCheck,
) -> Result<Verified, AuditError> {
    let mut lines = text.split_inclusive('\n').enumerate();
    let Some((_, first)) = lines.next() else {
        return Err(AuditError::Malformed { line: 1, reason: "empty file".into() });
    };
    let Line::Header(header) = parse_line(first.trim_end_matches('\n'), 1)? else {
        return Err(AuditError::Malformed {
            line: 1,
            reason: "the first line is not an export header".into(),
        });
    };
    let h = &header.export;
    let node = KeyId(h.node.0);
    check
        .check(
            Domain::AuditExport,
            &crypto::encode(h),
            &SignatureEntry { key: node, signature: header.signature.0 },
        )
        .map_err(|_| AuditError::BadSignature("export header"))?;
    admitted(h, genesis, check)?;
    let mut chain = Chain::new(Some(h.node));
    for (i, text) in lines {
        let n = i + 1;
        let Some(body) = text.strip_suffix('\n') else {
            // A last line without its newline was cut while being written or copied.
            return Err(AuditError::Truncated { seq: chain.seq + 1, through: h.through_seq });
        };
        let line = parse_line(body, n)?;
        match chain.feed(&line, Some(check)) {
            Err(AuditError::Malformed { reason, .. }) => {
                return Err(AuditError::Malformed { line: n, reason })
            }
            r => r?,
        }
    }
    let start = chain.first_seq.unwrap_or(chain.seq + 1);
    if start != h.from_seq {
        return Err(AuditError::Broken {
            seq: start.min(h.from_seq),
            reason: format!(
                "the export says it starts at {}, its first entry is {start}",
                h.from_seq
            ),
        });
    }
    if chain.seq < h.through_seq {
        return Err(AuditError::Truncated { seq: chain.seq + 1, through: h.through_seq });
    }
    if chain.seq > h.through_seq {
        return Err(AuditError::Broken {
            seq: h.through_seq + 1,
            reason: format!("entries past {} that the export header does not cover", h.through_seq),
        });
    }
    let covered = chain.last_checkpoint.as_ref().map(|c| c.checkpoint.seq).unwrap_or(0);
    if covered < chain.seq {
        return Err(AuditError::Unsigned { seq: covered + 1 });
    }
    Ok(Verified {
        node: h.node,
        site: h.site.clone(),
        from_seq: h.from_seq,
        through_seq: h.through_seq,
        entries: chain.entries,
        checkpoints: chain.checkpoints,
        head: chain.head,
        exported_at_ms: h.exported_at_ms,
    })
}

/// The header's node is admitted to the genesis' mesh, through the admin sets it carries.
pub(super) fn admitted(
    h: &ExportHeader,
    genesis: &Envelope,
    check: &dyn SignatureCheck,
) -> Result<(), AuditError> {
    let not = |e: String| AuditError::NotAdmitted(e);
    let mut trust = Trust::new(genesis.clone(), check).map_err(|e| not(format!("genesis: {e}")))?;
    if trust.mesh().0 != h.mesh.0 {
        return Err(not("the export is from another mesh".into()));
    }
    if h.admin_sets.len() > ADMIN_SETS_MAX {
        return Err(not("too many admin sets".into()));
    }
    let envelope = |s: &str| -> Result<Envelope, AuditError> {
        let bytes = hex::decode(s).map_err(|_| not("not hex".into()))?;
        crypto::decode("envelope", &bytes, crate::limits::MESSAGE_BYTES_MAX)
            .map_err(|e| not(e.to_string()))
    };
    for set in &h.admin_sets {
        trust
            .apply_admin_set(&envelope(set)?, check)
            .map_err(|e| not(format!("admin set: {e}")))?;
    }
    let (cert, signer) = trust::verify_admission_signature(&envelope(&h.admission)?, check)
        .map_err(|e| not(e.to_string()))?;
    if cert.node.0 != h.node.0 || *cert.site.0 != *h.site {
        return Err(not("the admission names another node or site".into()));
    }
    // Admitted when it exported: a certificate that expired later does not void the history.
    trust
        .authorize_admission(&cert, &signer, Millis(h.exported_at_ms))
        .map_err(|e| not(e.to_string()))?;
    Ok(())
}

/// The hash of entry `seq` in a log or export (from the entry itself, or a checkpoint naming
/// it), if the text holds it. Lines that do not parse are skipped: verify first.
pub fn hash_at(text: &str, seq: u64) -> Option<Hash32> {
    text.lines().enumerate().find_map(|(i, l)| match parse_line(l, i + 1).ok()? {
        Line::Entry { entry, hash, .. } if entry.seq == seq => Some(hash),
        Line::Checkpoint(cp) if cp.checkpoint.seq == seq => Some(cp.checkpoint.head),
        _ => None,
    })
}

/// Checks an export against a checkpoint held from elsewhere (a node's signed record, a
/// report): the export must reach it and agree with it.
pub fn check_against(text: &str, v: &Verified, held: &Head) -> Result<(), AuditError> {
    if held.seq > v.through_seq {
        return Err(AuditError::Truncated { seq: v.through_seq + 1, through: held.seq });
    }
    if held.seq + 1 < v.from_seq {
        return Ok(()); // before the export starts: nothing to compare
    }
    match hash_at(text, held.seq) {
        Some(h) if h.0 == held.head => Ok(()),
        Some(_) => Err(AuditError::Checkpoint {
            seq: held.seq,
            reason: "the export's entry differs from the one the node signed earlier (its log was rewritten)".into(),
        }),
        None => Ok(()),
    }
}
