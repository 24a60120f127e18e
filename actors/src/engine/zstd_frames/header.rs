//! A zstd data frame's header: its flags, window and content size.

use super::{FLAG_CHECKSUM, FLAG_CONTENT_SIZE, ZSTD_MAGIC};
use crate::engine::recompress::NotExact;

/// What a data frame's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub checksum: bool,
    pub content_size: Option<u64>,
    /// log2 of the window size (None for single-segment frames, whose window is their size).
    pub window_log: Option<u32>,
    /// Bytes of the header (magic included): where the first block starts.
    pub len: usize,
}

impl FrameHeader {
    pub fn flags(&self) -> u8 {
        let mut f = 0;
        if self.checksum {
            f |= FLAG_CHECKSUM;
        }
        if self.content_size.is_some() {
            f |= FLAG_CONTENT_SIZE;
        }
        f
    }

    /// "window 8 MiB, checksum, content size unknown": for a raw reason (a metric label, so
    /// from a small set).
    pub(super) fn describe(&self) -> String {
        let window = match self.window_log {
            Some(w) if w >= 20 => format!("window {} MiB", 1u64 << (w - 20)),
            Some(w) => format!("window {} KiB", 1u64 << (w - 10)),
            None => "single segment".to_string(),
        };
        let check = if self.checksum {
            "checksum"
        } else {
            "no checksum"
        };
        let size = match self.content_size {
            Some(_) => "content size in the header",
            None => "content size unknown",
        };
        format!("{window}, {check}, {size}")
    }
}

/// Parse a data frame header at the start of `b`; `Ok(None)` if more bytes are needed.
pub fn parse_header(b: &[u8]) -> Result<Option<FrameHeader>, NotExact> {
    if b.len() < 5 {
        return Ok(None);
    }
    if b[..4] != ZSTD_MAGIC {
        return Err(NotExact::Corrupt("zstd frame"));
    }
    let fhd = b[4];
    let fcs_flag = fhd >> 6;
    let single = fhd & 0x20 != 0;
    if fhd & 0x08 != 0 {
        return Err(NotExact::Corrupt("zstd frame header (reserved bit set)"));
    }
    if fhd & 0x03 != 0 {
        return Err(NotExact::Unsupported("zstd frame with a dictionary"));
    }
    let mut i = 5;
    let window_log = if single {
        None
    } else {
        let Some(&wd) = b.get(5) else {
            return Ok(None);
        };
        i += 1;
        Some(10 + u32::from(wd >> 3))
    };
    let fcs_len = match (fcs_flag, single) {
        (0, true) => 1,
        (0, false) => 0,
        (1, _) => 2,
        (2, _) => 4,
        _ => 8,
    };
    if b.len() < i + fcs_len {
        return Ok(None);
    }
    let content_size = (fcs_len > 0).then(|| {
        let mut v = [0u8; 8];
        v[..fcs_len].copy_from_slice(&b[i..i + fcs_len]);
        u64::from_le_bytes(v) + if fcs_len == 2 { 256 } else { 0 }
    });
    Ok(Some(FrameHeader {
        checksum: fhd & 0x04 != 0,
        content_size,
        window_log,
        len: i + fcs_len,
    }))
}
