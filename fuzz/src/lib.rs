//! Helpers shared by the fuzz targets: hand-built records and zstd frames,
//! a lazily trained dictionary, and a counting allocator.
//!
//! The frames are built byte by byte from the zstd format specification
//! (RFC 8878) rather than by the zstd library, so they can lie: a content
//! size that does not match the blocks, a window far larger than the
//! decoder allows, several frames back to back, skippable frames.

use arbitrary::Arbitrary;
use embercache::record::Dictionary;
use embercache::record::{Compression, HEADER_LEN};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use zstd::dict::EncoderDictionary;

/// The dictionary id the targets register their dictionary under.
pub const DICT_ID: u32 = 7;

/// A record with header fields of our choosing, a correct CRC and any
/// payload: what a decoder sees after a bug or an attacker wrote it, since
/// the checksum only catches accidents.
pub fn record(
    tag: u8,
    dict_id: u32,
    expires_at: u64,
    version: u64,
    epoch: u64,
    raw_len: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(1);
    out.push(tag);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&dict_id.to_le_bytes());
    out.extend_from_slice(&expires_at.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&raw_len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(payload);
    fix_crc(&mut out);
    out
}

/// Rewrites the CRC of a record (of at least `HEADER_LEN` bytes) so that
/// it matches whatever the other bytes are.
pub fn fix_crc(rec: &mut [u8]) {
    if rec.len() < HEADER_LEN {
        return;
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&rec[..36]);
    h.update(&rec[HEADER_LEN..]);
    let crc = h.finalize();
    rec[36..40].copy_from_slice(&crc.to_le_bytes());
}

/// The compression tag byte of a `Compression`.
pub fn tag_of(c: Compression) -> u8 {
    match c {
        Compression::Raw => 0,
        Compression::Zstd => 1,
        Compression::ZstdDict => 2,
    }
}

/// One zstd block.
#[derive(Arbitrary, Debug, Clone)]
pub enum Block {
    /// Stored bytes (block type 0).
    Raw(Vec<u8>),
    /// One byte repeated `count` times (block type 1): a few bytes of
    /// input that expand to up to 128 KiB each, the decompression bomb.
    Rle(u8, u32),
    /// A compressed block with whatever body the fuzzer picked (type 2).
    Compressed(Vec<u8>),
    /// The reserved block type 3, always invalid.
    Reserved,
}

/// One frame, honest or not.
#[derive(Arbitrary, Debug, Clone)]
pub enum Frame {
    /// A zstd frame built from the fields below.
    Zstd {
        /// Frame content size to declare (`None`: absent).
        content_size: Option<u64>,
        /// Window log to declare (10..=41 is what the format can say);
        /// `None`: single-segment frame, the window is the content size.
        window_log: Option<u8>,
        /// Declared dictionary id (0 = none).
        dict_id: u32,
        blocks: Vec<Block>,
        /// Append a (probably wrong) content checksum.
        checksum: Option<u32>,
    },
    /// A skippable frame (magic 0x184D2A5?), which decoders must skip.
    Skippable { nibble: u8, data: Vec<u8> },
    /// Bytes as they come.
    Garbage(Vec<u8>),
}

/// Largest block content the format allows.
const BLOCK_MAX: u32 = 128 << 10;
/// Expected content is tracked up to this many bytes.
const CONTENT_CAP: usize = 4 << 20;

impl Frame {
    /// Appends the frame's bytes to `out`; returns the content an honest
    /// decoder would produce, when the frame is one a decoder can accept
    /// (`None` for compressed or reserved blocks and garbage).
    pub fn write(&self, out: &mut Vec<u8>) -> Option<Vec<u8>> {
        match self {
            Frame::Garbage(b) => {
                out.extend_from_slice(b);
                None
            }
            Frame::Skippable { nibble, data } => {
                out.extend_from_slice(&(0x184D_2A50u32 | u32::from(nibble & 0xF)).to_le_bytes());
                out.extend_from_slice(&(data.len() as u32).to_le_bytes());
                out.extend_from_slice(data);
                Some(Vec::new())
            }
            Frame::Zstd {
                content_size,
                window_log,
                dict_id,
                blocks,
                checksum,
            } => {
                out.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
                let single = window_log.is_none() && content_size.is_some();
                let fcs = content_size.map(|c| {
                    if single && c < 256 {
                        (0u8, c.to_le_bytes()[..1].to_vec())
                    } else if (256..65536 + 256).contains(&c) {
                        (1, ((c - 256) as u16).to_le_bytes().to_vec())
                    } else if c <= u64::from(u32::MAX) {
                        (2, (c as u32).to_le_bytes().to_vec())
                    } else {
                        (3, c.to_le_bytes().to_vec())
                    }
                });
                let did: Vec<u8> = match *dict_id {
                    0 => vec![],
                    d if d < 256 => vec![d as u8],
                    d if d < 65536 => (d as u16).to_le_bytes().to_vec(),
                    d => d.to_le_bytes().to_vec(),
                };
                let did_flag = match did.len() {
                    0 => 0u8,
                    1 => 1,
                    2 => 2,
                    _ => 3,
                };
                let mut fhd = did_flag;
                if checksum.is_some() {
                    fhd |= 1 << 2;
                }
                if single {
                    fhd |= 1 << 5;
                }
                if let Some((flag, _)) = &fcs {
                    fhd |= flag << 6;
                }
                out.push(fhd);
                if !single {
                    // Window_Descriptor: exponent = log - 10, mantissa 0.
                    let log = window_log.unwrap_or(20).clamp(10, 41);
                    out.push((log - 10) << 3);
                }
                out.extend_from_slice(&did);
                if let Some((_, b)) = &fcs {
                    out.extend_from_slice(b);
                }
                let mut content = Some(Vec::new());
                let n = blocks.len();
                if n == 0 {
                    // A frame needs at least one block: an empty last raw one.
                    out.extend_from_slice(&[1, 0, 0]);
                }
                for (i, b) in blocks.iter().enumerate() {
                    let last = u32::from(i + 1 == n);
                    let (ty, size, body): (u32, u32, &[u8]) = match b {
                        Block::Raw(d) => {
                            let d = &d[..d.len().min(BLOCK_MAX as usize)];
                            if let Some(c) = content.as_mut() {
                                c.extend_from_slice(d);
                            }
                            (0, d.len() as u32, d)
                        }
                        Block::Rle(byte, count) => {
                            let count = count % (BLOCK_MAX + 1);
                            if let Some(c) = content.as_mut() {
                                c.resize(c.len() + count as usize, *byte);
                            }
                            (1, count, std::slice::from_ref(byte))
                        }
                        Block::Compressed(d) => {
                            content = None;
                            let d = &d[..d.len().min(BLOCK_MAX as usize)];
                            (2, d.len() as u32, d)
                        }
                        Block::Reserved => {
                            content = None;
                            (3, 0, &[])
                        }
                    };
                    // Past a few MiB nobody compares the content (it is
                    // above every max the targets use): stop building it.
                    if content.as_ref().is_some_and(|c| c.len() > CONTENT_CAP) {
                        content = None;
                    }
                    let h = last | (ty << 1) | (size << 3);
                    out.extend_from_slice(&h.to_le_bytes()[..3]);
                    out.extend_from_slice(body);
                }
                if let Some(c) = checksum {
                    out.extend_from_slice(&c.to_le_bytes());
                    // Almost surely wrong: the decoder may reject it.
                    content = None;
                }
                content
            }
        }
    }
}

/// Writes `frames` back to back; the expected content when every frame
/// is one an honest decoder accepts.
pub fn frames(frames: &[Frame]) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut out = Vec::new();
    let mut content = Some(Vec::new());
    for f in frames {
        match (f.write(&mut out), content.as_mut()) {
            (Some(c), Some(all)) => all.extend_from_slice(&c),
            _ => content = None,
        }
    }
    (out, content)
}

/// Sample values the dictionary is trained on: JSON-ish market data, the
/// kind of value the cache is for.
fn samples() -> Vec<Vec<u8>> {
    (0..400u32)
        .map(|i| {
            format!(
                r#"{{"market":"m{}","question":"will it rain on day {}?","bid":0.{:02},"ask":0.{:02},"volume":{},"tags":["weather","daily"]}}"#,
                i % 37,
                i % 11,
                i % 97,
                (i * 7) % 97,
                i * 1013
            )
            .into_bytes()
        })
        .collect()
}

/// A small dictionary, trained once per process.
pub fn dictionary() -> &'static [u8] {
    static D: OnceLock<Vec<u8>> = OnceLock::new();
    D.get_or_init(|| zstd::dict::from_samples(&samples(), 2048).expect("train dictionary"))
}

/// A different dictionary, for "the wrong dictionary under the right id".
pub fn other_dictionary() -> &'static [u8] {
    static D: OnceLock<Vec<u8>> = OnceLock::new();
    D.get_or_init(|| {
        let s: Vec<Vec<u8>> = samples()
            .into_iter()
            .map(|v| v.iter().rev().copied().collect())
            .collect();
        zstd::dict::from_samples(&s, 2048).expect("train dictionary")
    })
}

/// The prepared decoder dictionary for [`dictionary`].
pub fn decoder_dict() -> &'static std::sync::Arc<Dictionary> {
    static D: OnceLock<std::sync::Arc<Dictionary>> = OnceLock::new();
    D.get_or_init(|| std::sync::Arc::new(Dictionary::new(dictionary()).expect("dictionary")))
}

/// The prepared decoder dictionary for [`other_dictionary`].
pub fn other_decoder_dict() -> &'static std::sync::Arc<Dictionary> {
    static D: OnceLock<std::sync::Arc<Dictionary>> = OnceLock::new();
    D.get_or_init(|| std::sync::Arc::new(Dictionary::new(other_dictionary()).expect("dictionary")))
}

/// Compression levels the targets use, and an encoder dictionary for each.
pub const LEVELS: [i32; 3] = [1, 3, 9];

pub fn encoder_dict(level_idx: usize) -> &'static EncoderDictionary<'static> {
    static D: OnceLock<Vec<EncoderDictionary<'static>>> = OnceLock::new();
    &D.get_or_init(|| {
        LEVELS
            .iter()
            .map(|l| EncoderDictionary::copy(dictionary(), *l))
            .collect()
    })[level_idx % LEVELS.len()]
}

/// A global allocator that counts live bytes and their peak, so a target
/// can assert that a decode never allocates more than the value bound.
/// Only Rust allocations are seen: zstd's own (C) allocations are bounded
/// by libFuzzer's `-malloc_limit_mb` instead.
pub struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded as is to the system allocator.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded as is to the system allocator.
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

/// Starts a measurement: the peak is reset to what is live now.
pub fn alloc_mark() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

/// Most bytes allocated at once since `alloc_mark` returned `base`.
pub fn alloc_peak_since(base: usize) -> usize {
    PEAK.load(Ordering::Relaxed).saturating_sub(base)
}
