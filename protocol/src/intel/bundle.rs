//! The intel bundle's format: `PMINTEL1`, then a gzip stream of frames, each a little-endian
//! `u32` length and a postcard-encoded [`Frame`]. Frames come in kind order — one
//! [`Frame::Header`], then [`Frame::Source`]s sorted by (release, source), then
//! [`Frame::Cve`]s, then [`Frame::Index`]es — so a node can stream the bundle once and keep only
//! what applies to it (the CVEs its own sources reference are known before the CVE frames).
//!
//! Reading is bounded three ways before anything is decoded: the compressed size
//! ([`crate::limits::INTEL_BUNDLE_BYTES_MAX`], checked by the caller against the file or the
//! catalog entry), the decompressed size ([`crate::limits::INTEL_BUNDLE_RAW_BYTES_MAX`], against
//! a gzip bomb) and each frame ([`crate::limits::INTEL_FRAME_BYTES_MAX`]).

use super::{Advisory, CveInfo};
use crate::ids::Millis;
use crate::limits;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};

/// The first bytes of every bundle.
pub const MAGIC: &[u8; 8] = b"PMINTEL1";
/// The frame format this code writes and reads.
pub const FORMAT: u32 = 1;

/// Which kind of source an import read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SourceKind {
    /// Debian Security Tracker JSON.
    DebianTracker,
    /// OSV records.
    Osv,
    /// CISA KEV catalog.
    Kev,
    /// FIRST EPSS scores.
    Epss,
    /// An apt `Packages` index.
    AptIndex,
}

/// One input file of a bundle: what it was, its hash, and what was kept and skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// Its kind.
    pub kind: SourceKind,
    /// File name as given to the import.
    pub name: String,
    /// BLAKE3 of the file's bytes as read.
    pub blake3: [u8; 32],
    /// The date the source states for itself (KEV `dateReleased`, EPSS `score_date`, an
    /// index's `Date:`), if it states one.
    pub date: Option<String>,
    /// Records kept.
    pub records: u64,
    /// Records skipped, by reason.
    pub skipped: BTreeMap<String, u64>,
}

/// The bundle's first frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// [`FORMAT`].
    pub format: u32,
    /// When the admin built it.
    pub created_at: Millis,
    /// Its inputs.
    pub sources: Vec<SourceInfo>,
}

/// Binary packages one apt index offers (one chunk of it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexChunk {
    /// The base release (`bookworm` for `bookworm-security`).
    pub release: String,
    /// The suite's codename (`bookworm-security`).
    pub suite: String,
    /// The suite is a security suite.
    pub security: bool,
    /// apt's default pin priority for the suite: 500, or from its Release file 1 for
    /// `NotAutomatic: yes` and 100 with `ButAutomaticUpgrades: yes` too (backports).
    pub priority: u16,
    /// (name, arch, version).
    pub packages: Vec<(String, String, String)>,
}

/// One frame of a bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// The header.
    Header(Header),
    /// Every advisory on one source package of one release.
    Source {
        /// Release codename.
        release: String,
        /// Source package.
        source: String,
        /// Its advisories.
        advisories: Vec<Advisory>,
    },
    /// Facts about one CVE.
    Cve(CveInfo),
    /// Part of an apt index.
    Index(IndexChunk),
}

impl Frame {
    fn rank(&self) -> u8 {
        match self {
            Frame::Header(_) => 0,
            Frame::Source { .. } => 1,
            Frame::Cve(_) => 2,
            Frame::Index(_) => 3,
        }
    }
}

/// What a frame's first fields say, before it is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek<'a> {
    /// The header.
    Header,
    /// Advisories on `source` in `release`.
    Source {
        /// Release codename.
        release: &'a str,
        /// Source package.
        source: &'a str,
    },
    /// Facts about `cve`.
    Cve {
        /// The CVE.
        cve: &'a str,
    },
    /// Index packages of `release`.
    Index {
        /// The base release (or `*`).
        release: &'a str,
    },
}

impl Peek<'_> {
    fn rank(&self) -> u8 {
        match self {
            Peek::Header => 0,
            Peek::Source { .. } => 1,
            Peek::Cve { .. } => 2,
            Peek::Index { .. } => 3,
        }
    }
}

/// Why a bundle could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The first bytes are not [`MAGIC`].
    #[error("not an intel bundle (bad magic)")]
    BadMagic,
    /// Reading or decompressing failed (truncated or corrupt gzip stream).
    #[error("bundle stream at frame {frame}: {source}")]
    Io {
        /// Frames read before the failure.
        frame: u64,
        /// The cause.
        source: std::io::Error,
    },
    /// A frame's length is over the limit.
    #[error("frame {frame} is {len} bytes, limit {limit}")]
    FrameTooLarge {
        /// Its index.
        frame: u64,
        /// Its stated length.
        len: u64,
        /// The limit.
        limit: usize,
    },
    /// The bundle decompresses to more than the limit.
    #[error("bundle decompresses to more than {0} bytes")]
    TooLarge(u64),
    /// A frame did not decode.
    #[error("frame {frame} does not decode: {reason}")]
    BadFrame {
        /// Its index.
        frame: u64,
        /// Why.
        reason: String,
    },
    /// Frames out of kind order, or no header first.
    #[error("frame {0} is out of order")]
    OutOfOrder(u64),
    /// A format this code does not read.
    #[error("bundle format {0}, this node reads {FORMAT}")]
    Format(u32),
}

/// Writes a bundle.
pub struct BundleWriter<W: Write> {
    out: flate2::write::GzEncoder<W>,
    last_rank: Option<u8>,
}

impl<W: Write> BundleWriter<W> {
    /// Starts a bundle on `out`.
    pub fn new(mut out: W) -> std::io::Result<Self> {
        out.write_all(MAGIC)?;
        Ok(BundleWriter {
            out: flate2::write::GzEncoder::new(out, flate2::Compression::best()),
            last_rank: None,
        })
    }

    /// Appends a frame. Frames must come in kind order and each must fit its limit.
    pub fn write(&mut self, frame: &Frame) -> std::io::Result<()> {
        let rank = frame.rank();
        if !in_order(self.last_rank, rank) {
            return Err(std::io::Error::other(format!("intel frame of kind {rank} out of order")));
        }
        self.last_rank = Some(rank);
        let bytes = crate::crypto::encode(frame);
        if bytes.len() > limits::INTEL_FRAME_BYTES_MAX {
            return Err(std::io::Error::other(format!(
                "intel frame of {} bytes over the limit {}",
                bytes.len(),
                limits::INTEL_FRAME_BYTES_MAX
            )));
        }
        self.out.write_all(&(bytes.len() as u32).to_le_bytes())?;
        self.out.write_all(&bytes)
    }

    /// Ends the stream and returns the writer.
    pub fn finish(self) -> std::io::Result<W> {
        self.out.finish()
    }
}

/// Reads a bundle frame by frame.
pub struct BundleReader<R: Read> {
    input: std::io::Take<flate2::read::GzDecoder<R>>,
    frame: u64,
    last_rank: Option<u8>,
    buf: Vec<u8>,
}

impl<R: Read> BundleReader<R> {
    /// Checks the magic and the header, and returns it with the reader positioned after it.
    pub fn open(mut input: R) -> Result<(Header, Self), BundleError> {
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic).map_err(|_| BundleError::BadMagic)?;
        if &magic != MAGIC {
            return Err(BundleError::BadMagic);
        }
        let mut reader = BundleReader {
            input: flate2::read::GzDecoder::new(input).take(limits::INTEL_BUNDLE_RAW_BYTES_MAX + 1),
            frame: 0,
            last_rank: None,
            buf: Vec::new(),
        };
        match reader.next_frame()? {
            Some(Frame::Header(h)) if h.format == FORMAT => Ok((h, reader)),
            Some(Frame::Header(h)) => Err(BundleError::Format(h.format)),
            _ => Err(BundleError::OutOfOrder(0)),
        }
    }

    /// The next frame, or `None` at the end of a complete bundle.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, BundleError> {
        Ok(self.next_frame_where(|_| true)?.map(|f| f.expect("every frame is wanted")))
    }

    /// The next frame, decoded in full only when `want` accepts what its first fields say
    /// (its kind and the release, source or CVE it is about): a node reading a fleet-wide
    /// bundle decodes only its own part, and allocates nothing for the rest. `Some(None)` is a
    /// frame passed over; its length and kind order were still checked.
    pub fn next_frame_where(
        &mut self,
        want: impl Fn(&Peek<'_>) -> bool,
    ) -> Result<Option<Option<Frame>>, BundleError> {
        let frame = self.frame;
        let mut len = [0u8; 4];
        match read_full(&mut self.input, &mut len) {
            Ok(0) => return Ok(None),
            Ok(4) => {}
            Ok(_) => return Err(self.io(std::io::ErrorKind::UnexpectedEof.into())),
            Err(e) => return Err(self.io(e)),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > limits::INTEL_FRAME_BYTES_MAX {
            return Err(BundleError::FrameTooLarge {
                frame,
                len: len as u64,
                limit: limits::INTEL_FRAME_BYTES_MAX,
            });
        }
        self.buf.resize(len, 0);
        if let Err(e) = self.input.read_exact(&mut self.buf) {
            return Err(self.io(e));
        }
        if self.input.limit() == 0 {
            return Err(BundleError::TooLarge(limits::INTEL_BUNDLE_RAW_BYTES_MAX));
        }
        let bad = |e: postcard::Error| BundleError::BadFrame { frame, reason: e.to_string() };
        let peek = match self.buf.first() {
            Some(0) => Peek::Header,
            Some(1) => {
                let ((release, source), _) =
                    postcard::take_from_bytes::<(&str, &str)>(&self.buf[1..]).map_err(bad)?;
                Peek::Source { release, source }
            }
            Some(2) => {
                Peek::Cve { cve: postcard::take_from_bytes::<&str>(&self.buf[1..]).map_err(bad)?.0 }
            }
            Some(3) => Peek::Index {
                release: postcard::take_from_bytes::<&str>(&self.buf[1..]).map_err(bad)?.0,
            },
            _ => return Err(BundleError::BadFrame { frame, reason: "unknown frame kind".into() }),
        };
        let rank = peek.rank();
        if !in_order(self.last_rank, rank) {
            return Err(BundleError::OutOfOrder(frame));
        }
        let f = if want(&peek) {
            Some(postcard::from_bytes::<Frame>(&self.buf).map_err(bad)?)
        } else {
            None
        };
        self.last_rank = Some(rank);
        self.frame += 1;
        Ok(Some(f))
    }

    fn io(&self, source: std::io::Error) -> BundleError {
        if self.input.limit() == 0 {
            return BundleError::TooLarge(limits::INTEL_BUNDLE_RAW_BYTES_MAX);
        }
        BundleError::Io { frame: self.frame, source }
    }
}

/// One header first, then kinds in non-decreasing order.
fn in_order(last: Option<u8>, rank: u8) -> bool {
    match last {
        None => rank == 0,
        Some(r) => rank >= r && rank != 0,
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intel::{Origin, Statement, TrackerStatus, Urgency};

    fn sample() -> Vec<u8> {
        let mut w = BundleWriter::new(Vec::new()).unwrap();
        w.write(&Frame::Header(Header { format: FORMAT, created_at: Millis(5), sources: vec![] }))
            .unwrap();
        w.write(&Frame::Source {
            release: "bookworm".into(),
            source: "curl".into(),
            advisories: vec![Advisory {
                cve: "CVE-2024-1".into(),
                origin: Origin::Tracker,
                statement: Statement::Tracker {
                    status: TrackerStatus::Resolved,
                    fixed_version: Some("7.88.1-10+deb12u5".into()),
                    urgency: Urgency::Medium,
                    nodsa: None,
                    fixed_in_security: true,
                },
                fix_seen_at: None,
            }],
        })
        .unwrap();
        w.write(&Frame::Cve(CveInfo { cve: "CVE-2024-1".into(), ..Default::default() })).unwrap();
        w.finish().unwrap()
    }

    fn frames(bytes: &[u8]) -> Result<usize, BundleError> {
        let (_, mut r) = BundleReader::open(bytes)?;
        let mut n = 0;
        while r.next_frame()?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    #[test]
    fn a_bundle_reads_back_frame_by_frame() {
        assert_eq!(frames(&sample()).unwrap(), 2);
    }

    #[test]
    fn truncated_or_garbage_bundles_are_refused_with_a_typed_error() {
        let b = sample();
        for cut in [4, 12, b.len() / 2, b.len() - 3] {
            assert!(frames(&b[..cut]).is_err(), "cut at {cut} was accepted");
        }
        assert!(matches!(frames(b"PMINTEL1garbage!garbage!"), Err(BundleError::Io { .. })));
        assert!(matches!(frames(b"hello"), Err(BundleError::BadMagic)));
    }

    #[test]
    fn frames_out_of_kind_order_are_refused_by_writer_and_reader() {
        let mut w = BundleWriter::new(Vec::new()).unwrap();
        w.write(&Frame::Header(Header { format: FORMAT, created_at: Millis(5), sources: vec![] }))
            .unwrap();
        w.write(&Frame::Cve(CveInfo::default())).unwrap();
        assert!(w
            .write(&Frame::Source { release: "b".into(), source: "s".into(), advisories: vec![] })
            .is_err());
    }

    #[test]
    fn a_frame_over_its_limit_is_refused_before_it_is_read() {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(limits::INTEL_FRAME_BYTES_MAX as u32 + 1).to_le_bytes());
        let mut out = MAGIC.to_vec();
        let mut gz = flate2::write::GzEncoder::new(&mut out, flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        gz.finish().unwrap();
        assert!(matches!(BundleReader::open(&out[..]), Err(BundleError::FrameTooLarge { .. })));
    }
}
