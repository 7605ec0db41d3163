//! W9 compression of the demo's JSON values: zstd levels 1 and 3, with and
//! without a trained 64 KiB dictionary (what `train_dictionary` builds),
//! one value per frame as the engine stores them.

use crate::Scale;
use crate::report::{Runs, Table};
use crate::workload;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::fmt::Write as _;
use std::time::Instant;

type Make = fn(&mut StdRng, u64) -> String;

fn corpus(make: Make, n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n as u64)
        .map(|i| make(&mut rng, i * 7 + seed).into_bytes())
        .collect()
}

pub fn w9(scale: &Scale) -> String {
    let kinds: Vec<(&str, Make)> = vec![
        ("price", workload::price_json),
        ("market", workload::market_json),
        ("position", |r, u| workload::position_json(r, u, 5000)),
        ("search", |r, q| workload::search_json(r, q, 5000)),
        ("user_stats", workload::user_stats_json),
    ];
    println!("W9 compression");
    let mut t = Table::new(&[
        "values",
        "mean bytes",
        "level",
        "dictionary",
        "ratio",
        "compress MB/s (min–max)",
        "decompress MB/s (min–max)",
    ]);
    let mut summary = Vec::new();
    let mut engine_summary: Vec<(String, i32, usize, Runs)> = Vec::new();
    for (name, make) in &kinds {
        let train = corpus(*make, 4000, 1);
        let test = corpus(*make, scale.ops(5000).min(5000), 2);
        let raw: usize = test.iter().map(|v| v.len()).sum();
        // What `Cache::train_dictionary` trains on: the first 4 MiB.
        let (sampled, _) = samples(&train, embercache::record::SEARCHED_SAMPLE_BYTES);
        let dict = embercache::record::train(&sampled, 3, false).expect("train dictionary");
        for level in [1, 3] {
            for use_dict in [false, true] {
                let mut comp = if use_dict {
                    zstd::bulk::Compressor::with_dictionary(level, &dict).expect("compressor")
                } else {
                    zstd::bulk::Compressor::new(level).expect("compressor")
                };
                let mut dec = if use_dict {
                    zstd::bulk::Decompressor::with_dictionary(&dict).expect("decompressor")
                } else {
                    zstd::bulk::Decompressor::new().expect("decompressor")
                };
                let (mut c_mbs, mut d_mbs) = (Runs::default(), Runs::default());
                let mut packed = Vec::new();
                for _ in 0..scale.runs {
                    let start = Instant::now();
                    packed = test
                        .iter()
                        .map(|v| comp.compress(v).expect("compress"))
                        .collect::<Vec<_>>();
                    c_mbs
                        .0
                        .push(raw as f64 / start.elapsed().as_secs_f64() / 1e6);
                    let start = Instant::now();
                    for (p, v) in packed.iter().zip(&test) {
                        std::hint::black_box(dec.decompress(p, v.len()).expect("decompress"));
                    }
                    d_mbs
                        .0
                        .push(raw as f64 / start.elapsed().as_secs_f64() / 1e6);
                }
                let stored: usize = packed.iter().map(|p| p.len()).sum();
                let ratio = raw as f64 / stored as f64;
                summary.push((
                    name.to_string(),
                    level,
                    use_dict,
                    raw,
                    stored,
                    d_mbs.median(),
                ));
                let mbs = |r: &Runs| format!("{:.0} ({:.0}–{:.0})", r.median(), r.min(), r.max());
                t.row(vec![
                    name.to_string(),
                    format!("{}", raw / test.len()),
                    level.to_string(),
                    if use_dict {
                        "64 KiB trained".into()
                    } else {
                        "none".into()
                    },
                    format!("{ratio:.2}"),
                    mbs(&c_mbs),
                    mbs(&d_mbs),
                ]);
                if use_dict {
                    // The engine's own record path: header, CRC-32 over the
                    // record, the thread's (de)compression context with the
                    // prepared dictionary, bounded decompression.
                    let (row, dec_mbs) = engine_row(name, &test, raw, level, &dict, scale.runs);
                    t.row(row);
                    engine_summary.push((name.to_string(), level, raw, dec_mbs));
                }
            }
        }
    }
    let training = training_table(&kinds, scale);
    let mut s = String::new();
    let _ = writeln!(s, "## W9 compression\n");
    let _ = writeln!(
        s,
        "The demo's JSON generators (copied into benches/peers/src/gen.rs), one zstd frame per value as the \
         engine stores them (embercache adds a 40-byte record header, not counted here; values under 64 bytes \
         are stored raw by default). Dictionary: `zstd::dict::from_samples` over other values of the same \
         kind (the first 4 MiB of 4000 values, which is fewer than 4000 for markets and search results: \
         *Training the dictionary* below gives the counts), 64 KiB, as \
         `Cache::train_dictionary` does per namespace. Speeds are raw (uncompressed) bytes per \
         second, single thread, one reused (de)compression context, the engine's best case; median of {} runs.\n",
        scale.runs
    );
    s.push_str(&t.md());
    for level in [1, 3] {
        for use_dict in [false, true] {
            let rows: Vec<_> = summary
                .iter()
                .filter(|r| r.1 == level && r.2 == use_dict)
                .collect();
            let raw: usize = rows.iter().map(|r| r.3).sum();
            let stored: usize = rows.iter().map(|r| r.4).sum();
            let _ = writeln!(
                s,
                "{}level {level}, {}: all kinds together (equal counts) ratio {:.2}",
                if level == 1 && !use_dict { "\n" } else { "" },
                if use_dict {
                    "trained dictionary"
                } else {
                    "no dictionary"
                },
                raw as f64 / stored as f64
            );
            let _ = writeln!(s);
        }
    }
    // All kinds together: total raw bytes over total decode time.
    for level in [1, 3] {
        let rows: Vec<_> = engine_summary.iter().filter(|r| r.1 == level).collect();
        let raw: f64 = rows.iter().map(|r| r.2 as f64).sum();
        let secs: f64 = rows.iter().map(|r| r.2 as f64 / (r.3.median() * 1e6)).sum();
        let _ = writeln!(
            s,
            "level {level}, trained dictionary, engine record decode: all kinds together {:.0} MB/s\n",
            raw / secs / 1e6
        );
    }
    s.push_str(&training);
    s
}

/// The first values of `train` up to `max_bytes`, as the engine reads its
/// samples (it stops once the total reaches the cap); and their total.
fn samples(train: &[Vec<u8>], max_bytes: usize) -> (Vec<bytes::Bytes>, usize) {
    let (mut out, mut total) = (Vec::new(), 0);
    for v in train {
        if total >= max_bytes {
            break;
        }
        total += v.len();
        out.push(bytes::Bytes::from(v.clone()));
    }
    (out, total)
}

/// Training time and level-3 ratio of the two dictionaries a namespace can
/// get: `train_dictionary`'s (`from_samples`, which searches five segment
/// sizes, over the values' first `SEARCHED_SAMPLE_BYTES`) and the
/// automatic first one (fastCover once, over their first
/// `FIRST_SAMPLE_BYTES`), each on the samples the engine would read.
fn training_table(kinds: &[(&str, Make)], scale: &Scale) -> String {
    use embercache::record::{self, FIRST_SAMPLE_BYTES, SEARCHED_SAMPLE_BYTES};
    let mut t = Table::new(&[
        "values",
        "searched: samples",
        "searched: ms (min–max)",
        "searched: ratio",
        "first dictionary: samples",
        "first dictionary: ms (min–max)",
        "first dictionary: ratio",
        "time saved",
    ]);
    let ratio = |dict: &[u8], test: &[Vec<u8>]| {
        let mut c = zstd::bulk::Compressor::with_dictionary(3, dict).expect("compressor");
        let raw: usize = test.iter().map(|v| v.len()).sum();
        let stored: usize = test
            .iter()
            .map(|v| c.compress(v).expect("compress").len())
            .sum();
        raw as f64 / stored as f64
    };
    let ms = |r: &Runs| format!("{:.0} ({:.0}–{:.0})", r.median(), r.min(), r.max());
    let (mut all_searched, mut all_fast) = (0.0, 0.0);
    for (name, make) in kinds {
        let train = corpus(*make, 4000, 1);
        let test = corpus(*make, scale.ops(5000).min(5000), 2);
        let (all, all_bytes) = samples(&train, SEARCHED_SAMPLE_BYTES);
        let (first, bytes) = samples(&train, FIRST_SAMPLE_BYTES);
        let (mut searched_ms, mut fast_ms) = (Runs::default(), Runs::default());
        let (mut searched, mut fast) = (Vec::new(), Vec::new());
        for _ in 0..scale.runs {
            let start = Instant::now();
            searched = record::train(&all, 3, false).expect("train dictionary");
            searched_ms.0.push(start.elapsed().as_secs_f64() * 1e3);
            let start = Instant::now();
            fast = record::train(&first, 3, true).expect("train first dictionary");
            fast_ms.0.push(start.elapsed().as_secs_f64() * 1e3);
        }
        all_searched += searched_ms.median();
        all_fast += fast_ms.median();
        t.row(vec![
            name.to_string(),
            format!("{} ({} KiB)", all.len(), all_bytes >> 10),
            ms(&searched_ms),
            format!("{:.2}", ratio(&searched, &test)),
            format!("{} ({} KiB)", first.len(), bytes >> 10),
            ms(&fast_ms),
            format!("{:.2}", ratio(&fast, &test)),
            format!("{:.1}×", searched_ms.median() / fast_ms.median()),
        ]);
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Training the dictionary\n\nA namespace's first dictionary trains on its own, while its writers \
         run (`NamespacePolicy::auto_dictionary`): once, with fixed fastCover parameters, on its first \
         {} KiB of values (`record::train` with `first`). `Cache::train_dictionary` searches five segment sizes over \
         its first {} MiB (`zstd::dict::from_samples`). Both train on the first values of the 4000 above, up \
         to their cap, as the engine reads them. Ratios at level 3 on the test values; times of one thread, \
         median of {} runs.\n",
        FIRST_SAMPLE_BYTES >> 10,
        SEARCHED_SAMPLE_BYTES >> 20,
        scale.runs
    );
    s.push_str(&t.md());
    let _ = writeln!(
        s,
        "\nAll kinds: {all_searched:.0} ms searched, {all_fast:.0} ms for the first dictionary ({:.1}× less).\n",
        all_searched / all_fast
    );
    s
}

/// Encodes and decodes `test` through `embercache::record` with a prepared
/// dictionary (as the engine does after `train_dictionary`).
fn engine_row(
    name: &str,
    test: &[Vec<u8>],
    raw: usize,
    level: i32,
    dict: &[u8],
    runs: usize,
) -> (Vec<String>, Runs) {
    use embercache::record::{Encoding, decode, encode};
    use std::sync::Arc;
    let enc_dict = zstd::dict::EncoderDictionary::copy(dict, level);
    let dec_dict = Arc::new(embercache::record::Dictionary::new(dict).expect("dictionary"));
    let enc = Encoding {
        level: Some(level),
        threshold: 64,
        dict: Some((1, &enc_dict)),
    };
    let lookup = |_: u32| Some(dec_dict.clone());
    let (mut c_mbs, mut d_mbs) = (Runs::default(), Runs::default());
    let mut records = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        records = test
            .iter()
            .map(|v| encode(v, u64::MAX, 1, 0, &enc))
            .collect::<Vec<_>>();
        c_mbs
            .0
            .push(raw as f64 / start.elapsed().as_secs_f64() / 1e6);
        let start = Instant::now();
        for r in &records {
            std::hint::black_box(decode(r, 16 << 20, &lookup).expect("decode"));
        }
        d_mbs
            .0
            .push(raw as f64 / start.elapsed().as_secs_f64() / 1e6);
    }
    let stored: usize = records.iter().map(|r| r.len()).sum();
    let mbs = |r: &Runs| format!("{:.0} ({:.0}–{:.0})", r.median(), r.min(), r.max());
    (
        vec![
            name.to_string(),
            format!("{}", raw / test.len()),
            level.to_string(),
            "64 KiB trained, engine record path (incl. 40-byte header)".into(),
            format!("{:.2}", raw as f64 / stored as f64),
            mbs(&c_mbs),
            mbs(&d_mbs),
        ],
        d_mbs,
    )
}
