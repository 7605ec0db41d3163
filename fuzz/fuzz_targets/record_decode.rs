//! Arbitrary bytes into the record decoder.
//!
//! Properties:
//! * `decode` never panics, whatever the bytes (raw, or with the checksum
//!   fixed up so the fuzzer gets past it and reaches the payload).
//! * When it succeeds, the value is `raw_len` bytes and at most the
//!   maximum; re-encoding the decoded header fields and value with the
//!   same compression decodes to the same fields and value, and a raw
//!   record re-encodes to the very same bytes.
//! * A record built from fuzz-chosen fields round-trips exactly.
#![no_main]

use arbitrary::Arbitrary;
use embercache::record::Dictionary;
use embercache::record::{self, Compression, Encoding, HEADER_LEN};
use embercache_fuzz::{DICT_ID, LEVELS, decoder_dict, encoder_dict, fix_crc, tag_of};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

/// Small, so that "at most the maximum" is exercised by ordinary inputs.
const MAX: usize = 4096;

#[derive(Arbitrary, Debug)]
enum Input {
    /// The bytes as they are.
    Bytes(Vec<u8>),
    /// The bytes with a correct checksum written over bytes 36..40.
    Checksummed(Vec<u8>),
    /// A valid record from chosen fields.
    Build {
        value: Vec<u8>,
        expires_at: u64,
        version: u64,
        epoch: u64,
        level: Option<u8>,
        threshold: u8,
        dict: bool,
    },
}

fn dicts(id: u32) -> Option<Arc<Dictionary>> {
    (id == DICT_ID).then(|| decoder_dict().clone())
}

fn encoding(c: Compression, level_idx: usize) -> Encoding<'static> {
    match c {
        Compression::Raw => Encoding {
            level: None,
            threshold: 0,
            dict: None,
        },
        Compression::Zstd => Encoding {
            level: Some(LEVELS[level_idx % LEVELS.len()]),
            threshold: 0,
            dict: None,
        },
        _ => Encoding {
            level: Some(LEVELS[level_idx % LEVELS.len()]),
            threshold: 0,
            dict: Some((DICT_ID, encoder_dict(level_idx))),
        },
    }
}

/// Decoded → re-encoded → decoded again gives the same fields and value.
fn check_reencode(rec: &[u8], h: &record::Header, value: &[u8]) {
    assert!(
        value.len() <= MAX,
        "value of {} bytes > max {MAX}",
        value.len()
    );
    assert_eq!(value.len(), h.raw_len as usize, "value length != raw_len");
    let again = record::encode(
        value,
        h.expires_at,
        h.version,
        h.epoch,
        &encoding(h.compression, 1),
    );
    let (h2, v2) = record::decode(&again, MAX, &dicts).expect("re-encoded record decodes");
    assert_eq!(v2, value);
    assert_eq!(
        (h2.expires_at, h2.version, h2.epoch, h2.raw_len),
        (h.expires_at, h.version, h.epoch, h.raw_len)
    );
    // Compression falls back to raw when it does not pay, so only a raw
    // record with canonical reserved bytes and no dictionary id must come
    // back byte for byte.
    if h.compression == Compression::Raw && rec[2..4] == [0, 0] && h.dict_id == 0 {
        assert_eq!(again, rec, "raw record does not re-encode to itself");
    }
}

fuzz_target!(|input: Input| {
    match input {
        Input::Bytes(b) => {
            if let Ok((h, v)) = record::decode(&b, MAX, &dicts) {
                check_reencode(&b, &h, &v);
            }
            let _ = record::decode_header(&b);
        }
        Input::Checksummed(mut b) => {
            fix_crc(&mut b);
            if let Ok((h, v)) = record::decode(&b, MAX, &dicts) {
                check_reencode(&b, &h, &v);
            }
        }
        Input::Build {
            value,
            expires_at,
            version,
            epoch,
            level,
            threshold,
            dict,
        } => {
            let value = &value[..value.len().min(MAX + 64)];
            let level_idx = level.map(usize::from);
            let enc = Encoding {
                level: level_idx.map(|i| LEVELS[i % LEVELS.len()]),
                threshold: usize::from(threshold),
                dict: (dict && level_idx.is_some())
                    .then(|| (DICT_ID, encoder_dict(level_idx.unwrap_or(0)))),
            };
            let rec = record::encode(value, expires_at, version, epoch, &enc);
            let h = record::decode_header(&rec).expect("header of a fresh record");
            assert_eq!(rec[0], 1);
            assert_eq!(rec[1], tag_of(h.compression));
            match record::decode(&rec, MAX, &dicts) {
                Ok((h2, v)) => {
                    assert_eq!(h2, h);
                    assert_eq!(v, value, "value changed through encode/decode");
                    assert_eq!(
                        (h.expires_at, h.version, h.epoch, h.raw_len as usize),
                        (expires_at, version, epoch, value.len())
                    );
                    if h.compression != Compression::Raw {
                        assert!(
                            rec.len() - HEADER_LEN < value.len(),
                            "compression kept but did not pay"
                        );
                    }
                }
                Err(embercache::RecordError::TooLarge { len, max }) => {
                    assert!(value.len() > MAX && len == value.len() && max == MAX);
                }
                Err(e) => panic!("a valid record of {} bytes failed: {e}", value.len()),
            }
        }
    }
});
