//! Opening an import input: the size limit on the file before anything is read, transparent
//! decompression by extension (`.gz`, `.xz`, `.lz4`) with a limit on what it expands to, and
//! the BLAKE3 of the bytes read, for the bundle's record of its sources.

use super::ImportError;
use patchmesh_protocol::limits;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Hashes every byte read through it.
pub(super) struct Hashing<R> {
    inner: R,
    hasher: Arc<Mutex<blake3::Hasher>>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.lock().unwrap_or_else(|e| e.into_inner()).update(&buf[..n]);
        Ok(n)
    }
}

/// An opened input: its decompressed reader and the hash of the raw bytes read so far.
pub(super) struct Input {
    pub reader: Box<dyn BufRead>,
    hasher: Arc<Mutex<blake3::Hasher>>,
}

impl Input {
    /// BLAKE3 of the raw bytes read (call after reading to the end).
    pub fn hash(&self) -> [u8; 32] {
        *self.hasher.lock().unwrap_or_else(|e| e.into_inner()).finalize().as_bytes()
    }
}

/// Refuses a file over the limit by its size, before reading it.
pub(super) fn check_size(path: &Path) -> Result<u64, ImportError> {
    let size = std::fs::metadata(path).map_err(|e| ImportError::io(path, e))?.len();
    if size > limits::INTEL_INPUT_BYTES_MAX {
        return Err(ImportError::at(
            path,
            None,
            format!(
                "{size} bytes, over the limit of {} bytes; nothing was read",
                limits::INTEL_INPUT_BYTES_MAX
            ),
        ));
    }
    Ok(size)
}

/// Opens `path`, decompressing by its extension.
pub(super) fn open(path: &Path) -> Result<Input, ImportError> {
    check_size(path)?;
    let file = std::fs::File::open(path).map_err(|e| ImportError::io(path, e))?;
    let hasher = Arc::new(Mutex::new(blake3::Hasher::new()));
    let raw = BufReader::new(Hashing { inner: file, hasher: hasher.clone() });
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let decoded: Box<dyn Read> = if name.ends_with(".gz") {
        Box::new(flate2::bufread::MultiGzDecoder::new(raw))
    } else if name.ends_with(".xz") {
        Box::new(xz2::bufread::XzDecoder::new_multi_decoder(raw))
    } else if name.ends_with(".lz4") {
        Box::new(lz4_flex::frame::FrameDecoder::new(raw))
    } else {
        Box::new(raw)
    };
    let limited = decoded.take(limits::INTEL_INPUT_RAW_BYTES_MAX);
    Ok(Input { reader: Box::new(BufReader::with_capacity(256 * 1024, limited)), hasher })
}

/// Reads a whole JSON record (an OSV record, the KEV catalog) of at most
/// [`limits::INTEL_RECORD_BYTES_MAX`] bytes; `what` names it in the error.
pub(super) fn read_record(
    r: &mut impl Read,
    path: &Path,
    what: &str,
) -> Result<Vec<u8>, ImportError> {
    let mut bytes = Vec::new();
    r.take(limits::INTEL_RECORD_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ImportError::io(path, e))?;
    if bytes.len() as u64 > limits::INTEL_RECORD_BYTES_MAX {
        return Err(ImportError::at(
            path,
            None,
            format!("{what} over {} bytes", limits::INTEL_RECORD_BYTES_MAX),
        ));
    }
    Ok(bytes)
}
