//! Values through compress/decompress, and hostile zstd payloads.
//!
//! Properties:
//! * Any value round-trips through `encode`/`decode` at a few levels, with
//!   and without a dictionary.
//! * Decoding with a different dictionary registered under the same id
//!   fails or returns the right value, never a wrong one.
//! * A payload of hand-built frames (lying content sizes, windows up to
//!   2^41, RLE bombs, concatenated and skippable frames, garbage) inside a
//!   correctly checksummed record claiming any `raw_len`: never a panic,
//!   a value only of exactly `raw_len` ≤ max bytes and, when the frames
//!   are honest, equal to their content; the decode never allocates more
//!   than max + 1 MiB on the Rust heap (zstd's C heap is bounded by
//!   `-malloc_limit_mb`, see fuzz/README.md).
#![no_main]

use arbitrary::Arbitrary;
use embercache::record::Dictionary;
use embercache::record::{self, Compression, Encoding};
use embercache_fuzz::{
    CountingAlloc, DICT_ID, Frame, LEVELS, alloc_mark, alloc_peak_since, decoder_dict,
    encoder_dict, frames, other_decoder_dict, record as make_record,
};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const MAX: usize = 256 << 10;
/// Rust-heap slack a decode may use beyond the value itself.
const SLACK: usize = 1 << 20;

#[derive(Arbitrary, Debug)]
enum Input {
    Value {
        value: Vec<u8>,
        /// Repeat the value to make it compressible and longer.
        repeat: u8,
        level: u8,
        dict: bool,
    },
    Hostile {
        frames: Vec<Frame>,
        /// `raw_len` to claim; `None`: the honest content length.
        raw_len: Option<u32>,
        dict: bool,
    },
}

fn dicts(id: u32) -> Option<Arc<Dictionary>> {
    (id == DICT_ID).then(|| decoder_dict().clone())
}

fn wrong_dicts(id: u32) -> Option<Arc<Dictionary>> {
    (id == DICT_ID).then(|| other_decoder_dict().clone())
}

/// Decodes while measuring the Rust-heap peak.
fn measured_decode(
    rec: &[u8],
    dict: &dyn Fn(u32) -> Option<Arc<Dictionary>>,
) -> Result<(record::Header, Vec<u8>), embercache::RecordError> {
    let base = alloc_mark();
    let r = record::decode(rec, MAX, dict);
    let peak = alloc_peak_since(base);
    assert!(
        peak <= MAX + SLACK,
        "decode allocated {peak} bytes at once (max value {MAX})"
    );
    r
}

fuzz_target!(|input: Input| {
    match input {
        Input::Value {
            value,
            repeat,
            level,
            dict,
        } => {
            let mut v = Vec::new();
            for _ in 0..=(repeat % 64) {
                v.extend_from_slice(&value);
                if v.len() > MAX {
                    break;
                }
            }
            v.truncate(MAX);
            let li = usize::from(level) % LEVELS.len();
            let enc = Encoding {
                level: Some(LEVELS[li]),
                threshold: 0,
                dict: dict.then(|| (DICT_ID, encoder_dict(li))),
            };
            let rec = record::encode(&v, 1, 2, 3, &enc);
            let (h, out) = measured_decode(&rec, &dicts).expect("fresh record decodes");
            assert_eq!(out, v);
            assert_eq!(h.raw_len as usize, v.len());
            if h.compression == Compression::ZstdDict {
                assert!(dict);
                // The same id mapped to another dictionary: zstd frames
                // name their dictionary, so this must fail, not return
                // garbage that passed the (compressed-bytes) checksum.
                if let Ok((_, o)) = measured_decode(&rec, &wrong_dicts) {
                    assert_eq!(o, v, "wrong dictionary produced a wrong value");
                }
            }
        }
        Input::Hostile {
            frames: fs,
            raw_len,
            dict,
        } => {
            let (payload, content) = frames(&fs);
            let claimed = raw_len.unwrap_or(content.as_ref().map_or(0, |c| c.len() as u32));
            let tag = if dict { 2 } else { 1 };
            let dict_id = if dict { DICT_ID } else { 0 };
            let rec = make_record(tag, dict_id, u64::MAX, 1, 0, claimed, &payload);
            match measured_decode(&rec, &dicts) {
                Ok((h, v)) => {
                    assert_eq!(v.len(), claimed as usize);
                    assert!(v.len() <= MAX);
                    assert_eq!(h.raw_len, claimed);
                    // Without a dictionary an honest frame set decodes to
                    // its content (with one, zstd may use the dictionary's
                    // content for matches, so no claim is made).
                    if let Some(c) = &content
                        && !dict
                    {
                        assert_eq!(&v, c, "decoded value differs from the frames' content");
                    }
                }
                Err(embercache::RecordError::TooLarge { len, .. }) => {
                    assert!(len > MAX);
                }
                Err(_) => {}
            }
        }
    }
});
