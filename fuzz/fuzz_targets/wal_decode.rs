//! The write-ahead log read back after a crash (src/store/wal.rs).
//!
//! Properties:
//! * Groups of arbitrary writes appended at a generation read back as
//!   exactly those writes, in order (a delete's expiry reads back as 0).
//! * After arbitrary damage to that image (bytes flipped, the file cut
//!   short, garbage written over a range), the replay never panics or
//!   fails, and gives back whole every record that ends before the first
//!   damaged byte.
//! * Read at another generation, the image replays nothing.
//! * Any bytes at all as a log: no panic.
#![no_main]

use arbitrary::Arbitrary;
use embercache::testing::{WalWrite, wal_image, wal_read_back};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct W {
    ns: String,
    key: Vec<u8>,
    record: Option<Vec<u8>>,
    version: u64,
    expires_at: u64,
    mirror: bool,
}

#[derive(Arbitrary, Debug)]
enum Damage {
    Flip { at: u32, bits: u8 },
    Cut { at: u32 },
    Overwrite { at: u32, bytes: Vec<u8> },
}

#[derive(Arbitrary, Debug)]
struct Input {
    groups: Vec<Vec<W>>,
    generation: u64,
    damage: Vec<Damage>,
    raw: Vec<u8>,
}

fuzz_target!(|input: Input| {
    // Any bytes: no panic.
    let _ = wal_read_back(input.raw.clone(), input.generation);

    let groups: Vec<Vec<WalWrite>> = input
        .groups
        .into_iter()
        .take(16)
        .map(|g| {
            g.into_iter()
                .take(16)
                .map(|w| (w.ns, w.key, w.record, w.version, w.expires_at, w.mirror))
                .collect()
        })
        .collect();
    let image = wal_image(&groups, input.generation, 1 << 20);
    // A group with no writes is no record; a delete logs no expiry.
    let logged: Vec<Vec<WalWrite>> = groups
        .iter()
        .filter(|g| !g.is_empty())
        .map(|g| {
            g.iter()
                .cloned()
                .map(|mut w| {
                    if w.2.is_none() {
                        w.4 = 0;
                    }
                    w
                })
                .collect()
        })
        .collect();
    let all: Vec<WalWrite> = logged.iter().flatten().cloned().collect();
    let (back, damaged) = wal_read_back(image.clone(), input.generation).expect("read back");
    assert!(damaged.is_none());
    assert_eq!(back, all);
    let (other, _) = wal_read_back(image.clone(), input.generation.wrapping_add(1)).unwrap();
    assert!(other.is_empty());

    // Where each record ends, from the headers (16 bytes, the first four
    // the payload length).
    let mut ends = Vec::new();
    let mut at = 0usize;
    for _ in &logged {
        let n = u32::from_le_bytes(image[at..at + 4].try_into().unwrap()) as usize;
        at += 16 + n;
        ends.push(at);
    }
    let mut bad = image;
    let mut first = usize::MAX;
    for d in input.damage.into_iter().take(8) {
        match d {
            Damage::Flip { at, bits } => {
                if !bad.is_empty() && bits != 0 {
                    let i = at as usize % bad.len();
                    bad[i] ^= bits;
                    first = first.min(i);
                }
            }
            Damage::Cut { at } => {
                let n = at as usize % (bad.len() + 1);
                if n < bad.len() {
                    bad.truncate(n);
                    first = first.min(n);
                }
            }
            Damage::Overwrite { at, bytes } => {
                if !bad.is_empty() && !bytes.is_empty() {
                    let i = at as usize % bad.len();
                    let n = bytes.len().min(bad.len() - i);
                    bad[i..i + n].copy_from_slice(&bytes[..n]);
                    first = first.min(i);
                }
            }
        }
    }
    // Never a panic or an I/O error; every record that ends before the
    // first damaged byte comes back whole, in order. (What follows may be
    // anything: a checksum is no defence against a forger, and a fuzzer
    // with comparison tracing is one.)
    let (back, _) = wal_read_back(bad, input.generation).expect("read back");
    let intact: usize = logged
        .iter()
        .zip(&ends)
        .take_while(|(_, end)| **end <= first)
        .map(|(g, _)| g.len())
        .sum();
    assert!(
        back.len() >= intact,
        "{} writes back, {intact} intact",
        back.len()
    );
    assert_eq!(back[..intact], all[..intact]);
});
