//! Training a namespace's first zstd dictionary, quickly.
//!
//! `zstd::dict::from_samples` (`ZDICT_trainFromBuffer`) searches for the
//! segment size `k`: it trains five dictionaries on three quarters of the
//! samples and keeps the one that compresses the rest best. The first
//! dictionary trains while the namespace's writers run, on their CPU, and
//! until it is in use values compress about half as well and cost more to
//! compress: on W5 at 64 `Sync` writers it was in use ~0.5 s into a 1.5 s
//! run, the training thread one of 65 runnable threads on two cores.
//! [`train_fast`] trains once (fastCover, the algorithm that search runs),
//! with the middle `k` of the search's range, on [`FIRST_SAMPLE_BYTES`] of
//! values, counting every second d-mer in a smaller table. On the bench's
//! JSON values: 10–28× less CPU than the search over the 4 MiB
//! ([`SEARCHED_SAMPLE_BYTES`]) that `Cache::train_dictionary` reads, for a
//! ratio within 0.03 (docs/BENCHMARKS.md, W9's training table).
//! `Cache::train_dictionary`, which a user calls when the time is theirs,
//! still searches.

use bytes::Bytes;
use zstd::zstd_safe::zstd_sys;

/// Bytes of stored values the first dictionary trains on.
pub const FIRST_SAMPLE_BYTES: usize = 1 << 20;
/// Bytes of stored values `Cache::train_dictionary` trains on.
pub const SEARCHED_SAMPLE_BYTES: usize = 4 << 20;
/// The size of a trained dictionary.
pub const DICT_BYTES: usize = 64 << 10;

/// How many bytes of a namespace's values its dictionary trains on: less
/// for the `first` (automatic) one, which competes with the writers.
pub(crate) fn sample_bytes(first: bool) -> usize {
    if first {
        FIRST_SAMPLE_BYTES
    } else {
        SEARCHED_SAMPLE_BYTES
    }
}

/// A namespace's dictionary from `samples` (read up to [`sample_bytes`]):
/// the `first` one once, with [`train_fast`]; any other with zstd's
/// search over segment sizes.
pub fn train(samples: &[Bytes], level: i32, first: bool) -> Result<Vec<u8>, String> {
    if first {
        train_fast(samples, DICT_BYTES, level)
    } else {
        zstd::dict::from_samples(samples, DICT_BYTES).map_err(|e| e.to_string())
    }
}

/// The segment size: the middle of the range `ZDICT_trainFromBuffer`
/// searches (50–2000).
const K: u32 = 1024;
/// The d-mer size `ZDICT_trainFromBuffer` fixes.
const D: u32 = 8;
/// log2 of the d-mer frequency table: 2^18 entries (1.5 MiB), a quarter
/// of zstd's default, ample for the 1 MiB of samples the engine passes.
const F: u32 = 18;
/// Every second d-mer position is counted, and half the samples build
/// the entropy tables (zstd's default, 1, counts all and uses all).
const ACCEL: u32 = 2;

/// A dictionary of at most `capacity` bytes from `samples`, with entropy
/// tables for compression `level`. An error, with zstd's reason, when zstd
/// cannot make one (no samples or a single one, or a capacity under its
/// minimum of 256 bytes).
pub(crate) fn train_fast(
    samples: &[Bytes],
    capacity: usize,
    level: i32,
) -> Result<Vec<u8>, String> {
    let nb = u32::try_from(samples.len()).map_err(|_| "too many samples".to_string())?;
    if nb == 0 {
        return Err("no samples".into());
    }
    let sizes: Vec<usize> = samples.iter().map(Bytes::len).collect();
    let flat = samples.concat();
    let mut dict = vec![0u8; capacity];
    let params = zstd_sys::ZDICT_fastCover_params_t {
        k: K,
        d: D,
        f: F,
        // 0: train once, with `k` and `d` as given (no search).
        steps: 0,
        nbThreads: 0,
        // Ignored when training once: every sample is used.
        splitPoint: 0.0,
        accel: ACCEL,
        shrinkDict: 0,
        shrinkDictMaxRegression: 0,
        zParams: zstd_sys::ZDICT_params_t {
            compressionLevel: level,
            notificationLevel: 0,
            dictID: 0,
        },
    };
    // SAFETY: `dict` is a writable buffer of `capacity` bytes; `flat` holds
    // the samples back to back and `sizes` their `nb` lengths, which sum to
    // `flat.len()`; all three outlive the call, which keeps no pointer to
    // them. `params` is passed by value.
    let n = unsafe {
        zstd_sys::ZDICT_trainFromBuffer_fastCover(
            dict.as_mut_ptr().cast(),
            capacity,
            flat.as_ptr().cast(),
            sizes.as_ptr(),
            nb,
            params,
        )
    };
    // SAFETY: a plain function of the returned code.
    if unsafe { zstd_sys::ZDICT_isError(n) } != 0 {
        return Err(zstd::zstd_safe::get_error_name(n).to_string());
    }
    dict.truncate(n);
    Ok(dict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<Bytes> {
        (0..n as u64)
            .map(|i| {
                let x = i.wrapping_mul(2_654_435_761) ^ seed;
                Bytes::from(format!(
                    r#"{{"market":"m{}","bid":{:.4},"ask":{:.4},"ts":{},"src":"ws","note":"{}"}}"#,
                    x % 5000,
                    (x % 97) as f64 / 100.0,
                    (x % 89) as f64 / 100.0,
                    1_764_000_000_000 + x % 1_000_000,
                    ["open", "closed", "paused", "resolved"][(x % 4) as usize]
                        .repeat(1 + (x % 5) as usize)
                ))
            })
            .collect()
    }

    fn compressed(dict: Option<&[u8]>, vals: &[Bytes]) -> usize {
        let mut c = match dict {
            Some(d) => zstd::bulk::Compressor::with_dictionary(3, d).unwrap(),
            None => zstd::bulk::Compressor::new(3).unwrap(),
        };
        vals.iter().map(|v| c.compress(v).unwrap().len()).sum()
    }

    #[test]
    fn a_fast_dictionary_compresses_about_as_well_as_the_searched_one() {
        let train = values(3000, 1);
        let test = values(1000, 99);
        let fast = train_fast(&train, 16 << 10, 3).unwrap();
        assert!(!fast.is_empty() && fast.len() <= 16 << 10);
        let searched = zstd::dict::from_samples(&train, 16 << 10).unwrap();
        let (none, fast_n, searched_n) = (
            compressed(None, &test),
            compressed(Some(&fast), &test),
            compressed(Some(&searched), &test),
        );
        assert!(
            fast_n * 3 < none * 2,
            "fast {fast_n} B against {none} B without"
        );
        assert!(
            fast_n * 100 <= searched_n * 105,
            "fast {fast_n} B against {searched_n} B searched"
        );
        // It round-trips through a decoder built from the same bytes.
        let mut c = zstd::bulk::Compressor::with_dictionary(3, &fast).unwrap();
        let mut d = zstd::bulk::Decompressor::with_dictionary(&fast).unwrap();
        for v in &test[..50] {
            assert_eq!(
                d.decompress(&c.compress(v).unwrap(), v.len()).unwrap(),
                &v[..]
            );
        }
    }

    #[test]
    fn samples_that_cannot_make_a_dictionary_are_an_error() {
        assert!(train_fast(&[], 16 << 10, 3).is_err());
        let e = train_fast(&values(1, 1), 16 << 10, 3).unwrap_err();
        assert!(e.contains("size"), "{e}");
        // A capacity below zstd's minimum.
        assert!(train_fast(&values(3000, 1), 64, 3).is_err());
    }
}
