//! The write-ahead log: how a group of writes becomes durable without a
//! durable redb commit.
//!
//! A durable redb commit rewrites every B-tree page the group touched and
//! fsyncs them: a group of 16 writers' keys dirties 16 leaves. The log
//! instead appends the group as one record to a file whose blocks are
//! already written (so `fdatasync` flushes data, not file metadata), then
//! the writer applies the group to redb in a commit without fsync
//! (`Durability::None`). A durable redb commit — the *checkpoint*: every
//! maintenance pass, and whenever the log is full — makes everything the
//! log held part of the durable database, and starts a new log
//! *generation*.
//!
//! Layout: records from offset 0, each
//! `[payload length: u32][crc32: u32][generation: u64][payload]`
//! (little-endian; the checksum covers length, generation and payload),
//! then zeros or the records of older generations. The current generation
//! is stored in redb's meta table, in the same durable commit that starts
//! it; recovery reads the records of that generation from the start and
//! stops at the first one that is torn, damaged or of another generation.
//! A record of an older generation is never replayed: its writes were in a
//! durable commit already, and replaying them could bring back what was
//! deleted since. A new database starts at a random generation, so a log
//! left over from another database never matches.
//!
//! The file grows in [`GROW`] steps of zeros up to the configured size;
//! a record that would not fit makes the caller checkpoint instead.

use redb::StorageBackend;
use std::io;

/// Name of the log file, beside the database file.
pub const WAL_FILE: &str = "embercache.wal";

/// Bytes of a record header.
const HEADER: usize = 16;

/// The file grows by this much at a time (zeros, then one fsync).
const GROW: u64 = 1 << 20;

const PUT: u8 = 1;
const DELETE: u8 = 2;

/// One write to log, borrowed from the writer's op.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Write<'a> {
    pub ns: &'a str,
    pub key: &'a [u8],
    /// `None` for a delete.
    pub record: Option<&'a [u8]>,
    pub version: u64,
    pub expires_at: u64,
    pub mirror: bool,
}

/// One logged write, as recovery reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Logged {
    pub ns: String,
    pub key: Vec<u8>,
    /// `None` for a delete.
    pub record: Option<Vec<u8>>,
    pub version: u64,
    pub expires_at: u64,
    pub mirror: bool,
}

/// What [`Wal::open`] found.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// The writes of the current generation, in the order they were logged.
    pub writes: Vec<Logged>,
    /// Records read.
    pub records: usize,
    /// A record whose checksum held but whose writes did not decode.
    pub damaged: Option<String>,
}

pub(crate) struct Wal {
    file: Box<dyn StorageBackend>,
    /// Most bytes the file may grow to.
    capacity: u64,
    /// Current file length (all of it written).
    len: u64,
    /// Where the next record goes.
    offset: u64,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn checksum(len: u32, generation: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&generation.to_le_bytes());
    h.update(payload);
    h.finalize()
}

impl Wal {
    /// Opens the log over `file`, empty: recovery ([`Wal::read_back`])
    /// comes next. A file shorter than one step grows to it (zeros,
    /// fsynced). The generation is the caller's (the writer keeps the one
    /// meta holds) and comes with each call.
    pub(crate) fn open(file: Box<dyn StorageBackend>, capacity: u64) -> io::Result<Wal> {
        let len = file.len()?;
        let mut wal = Wal {
            file,
            capacity: capacity.max(len),
            len,
            offset: 0,
            buf: Vec::new(),
        };
        let first = GROW.min(wal.capacity);
        if wal.len < first {
            wal.grow(first)?;
            wal.file.sync_data()?;
        }
        Ok(wal)
    }

    /// The writes of `generation` and where they end. Reads only.
    pub(crate) fn read_back(&self, generation: u64) -> io::Result<(Recovered, u64)> {
        let mut out = Recovered::default();
        let mut at = 0u64;
        let mut head = [0u8; HEADER];
        while at + HEADER as u64 <= self.len {
            self.file.read(at, &mut head)?;
            let n = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
            let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
            let gen_of = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
            let end = at + HEADER as u64 + u64::from(n);
            if n == 0 || gen_of != generation || end > self.len {
                break;
            }
            let mut payload = vec![0u8; n as usize];
            self.file.read(at + HEADER as u64, &mut payload)?;
            if checksum(n, gen_of, &payload) != crc {
                break;
            }
            // A record whose checksum holds was written whole by us: one
            // that does not decode is not a torn write. Keep what came
            // before it and say so.
            let mut writes = Vec::new();
            if let Err(e) = decode(&payload, &mut writes) {
                tracing::error!(offset = at, error = %e, "write-ahead log record does not decode; replaying the records before it");
                out.damaged = Some(format!("record at offset {at}: {e}"));
                break;
            }
            out.writes.extend(writes);
            out.records += 1;
            at = end;
        }
        Ok((out, at))
    }

    /// Appends `writes` as one record of `generation` and fsyncs it.
    /// `Ok(false)`: no room; nothing was written, checkpoint instead.
    /// Nothing to write is `Ok(true)` without any I/O.
    pub(crate) fn append<'a>(
        &mut self,
        generation: u64,
        writes: impl IntoIterator<Item = Write<'a>>,
    ) -> io::Result<bool> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.resize(HEADER, 0);
        for w in writes {
            encode(&w, &mut buf);
        }
        let n = buf.len() - HEADER;
        let fits = u32::try_from(n).is_ok() && self.offset + buf.len() as u64 <= self.capacity;
        if n == 0 || !fits {
            self.buf = buf;
            return Ok(n == 0);
        }
        let n = n as u32;
        let crc = checksum(n, generation, &buf[HEADER..]);
        buf[0..4].copy_from_slice(&n.to_le_bytes());
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        buf[8..16].copy_from_slice(&generation.to_le_bytes());
        let end = self.offset + buf.len() as u64;
        let r = (|| {
            if end > self.len {
                let to = end.div_ceil(GROW).saturating_mul(GROW).min(self.capacity);
                self.grow(to)?;
            }
            self.file.write(self.offset, &buf)?;
            self.file.sync_data()
        })();
        self.buf = buf;
        r?;
        self.offset = end;
        Ok(true)
    }

    /// Extends the file with zeros to `to` bytes (not fsynced). Written,
    /// not just a longer length: a hole would make the first fsync of each
    /// record allocate blocks, a metadata change.
    fn grow(&mut self, to: u64) -> io::Result<()> {
        self.file.set_len(to)?;
        let zeros = vec![0u8; 64 << 10];
        let mut at = self.len;
        while at < to {
            let n = (to - at).min(zeros.len() as u64) as usize;
            self.file.write(at, &zeros[..n])?;
            at += n as u64;
        }
        self.len = to;
        Ok(())
    }

    /// A durable commit took over what the log held (or there was nothing
    /// to replay): the next record goes to the start of the file.
    pub(crate) fn rewind(&mut self) {
        self.offset = 0;
    }

    /// Bytes of records in the current generation.
    pub(crate) fn used(&self) -> u64 {
        self.offset
    }
}

fn encode(w: &Write<'_>, buf: &mut Vec<u8>) {
    let kind = if w.record.is_some() { PUT } else { DELETE };
    let (ns, key, record) = (w.ns, w.key, w.record.unwrap_or_default());
    // A delete has no expiry: it is logged as 0.
    let expires_at = if w.record.is_some() { w.expires_at } else { 0 };
    let (version, mirror) = (w.version, w.mirror);
    buf.push(kind);
    buf.push(u8::from(mirror));
    buf.extend_from_slice(&version.to_le_bytes());
    buf.extend_from_slice(&expires_at.to_le_bytes());
    for part in [ns.as_bytes(), key, record] {
        buf.extend_from_slice(&(part.len() as u32).to_le_bytes());
        buf.extend_from_slice(part);
    }
}

/// Decodes a payload; any malformation is an error, never a panic.
pub(crate) fn decode(mut p: &[u8], out: &mut Vec<Logged>) -> io::Result<()> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> io::Result<&'a [u8]> {
        if p.len() < n {
            return Err(invalid("write-ahead log record ends inside a write"));
        }
        let (a, b) = p.split_at(n);
        *p = b;
        Ok(a)
    }
    fn u32_of(p: &mut &[u8]) -> io::Result<usize> {
        Ok(u32::from_le_bytes(take(p, 4)?.try_into().expect("4 bytes")) as usize)
    }
    fn u64_of(p: &mut &[u8]) -> io::Result<u64> {
        Ok(u64::from_le_bytes(take(p, 8)?.try_into().expect("8 bytes")))
    }
    while !p.is_empty() {
        let head = take(&mut p, 2)?;
        let (kind, mirror) = (head[0], head[1]);
        if !matches!(kind, PUT | DELETE) || mirror > 1 {
            return Err(invalid(
                "write-ahead log record holds an unknown write kind",
            ));
        }
        let version = u64_of(&mut p)?;
        let expires_at = u64_of(&mut p)?;
        let n = u32_of(&mut p)?;
        let ns = std::str::from_utf8(take(&mut p, n)?)
            .map_err(|_| invalid("write-ahead log record names a namespace that is not UTF-8"))?
            .to_string();
        let n = u32_of(&mut p)?;
        let key = take(&mut p, n)?.to_vec();
        let n = u32_of(&mut p)?;
        let record = take(&mut p, n)?.to_vec();
        out.push(Logged {
            ns,
            key,
            record: (kind == PUT).then_some(record),
            version,
            expires_at,
            mirror: mirror == 1,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests_support {
    use super::*;

    pub(super) fn put(i: u64) -> Logged {
        Logged {
            ns: format!("ns{}", i % 3),
            key: format!("key-{i}").into_bytes(),
            record: (i % 4 != 3).then(|| vec![i as u8; (i % 50) as usize]),
            version: 100 + i,
            expires_at: if i.is_multiple_of(2) {
                u64::MAX
            } else {
                5_000 + i
            },
            mirror: i.is_multiple_of(5),
        }
    }

    pub(super) fn view(l: &Logged) -> Write<'_> {
        Write {
            ns: &l.ns,
            key: &l.key,
            record: l.record.as_deref(),
            version: l.version,
            expires_at: l.expires_at,
            mirror: l.mirror,
        }
    }

    /// `l` as it reads back (a delete logs no expiry).
    pub(super) fn logged(l: &Logged) -> Logged {
        let mut l = l.clone();
        if l.record.is_none() {
            l.expires_at = 0;
        }
        l
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;
    use redb::backends::InMemoryBackend;

    fn group(from: u64, n: u64) -> Vec<Logged> {
        (from..from + n).map(put).collect()
    }

    fn mem() -> Box<dyn StorageBackend> {
        Box::new(InMemoryBackend::new())
    }

    #[test]
    fn groups_read_back_in_order_and_a_new_generation_hides_the_old() {
        let mut wal = Wal::open(mem(), 1 << 20).unwrap();
        let (a, b) = (group(0, 5), group(5, 1));
        assert!(wal.append(7, a.iter().map(view)).unwrap());
        assert!(wal.append(7, b.iter().map(view)).unwrap());
        // Nothing to log: no record, no I/O.
        assert!(wal.append(7, []).unwrap());
        let (got, end) = wal.read_back(7).unwrap();
        let want: Vec<Logged> = a.iter().chain(&b).map(logged).collect();
        assert_eq!(got.writes, want);
        assert_eq!((got.records, end), (2, wal.used()));
        assert!(got.damaged.is_none());

        // A checkpoint: the next generation overwrites from the start; the
        // older records behind it are never read back.
        wal.rewind();
        assert_eq!(wal.read_back(8).unwrap().0.writes, Vec::<Logged>::new());
        let c = group(9, 2);
        assert!(wal.append(8, c.iter().map(view)).unwrap());
        let got = wal.read_back(8).unwrap().0.writes;
        assert_eq!(got, c.iter().map(logged).collect::<Vec<_>>());
        // Read at the old generation, the log holds nothing.
        assert!(wal.read_back(7).unwrap().0.writes.is_empty());
    }

    #[test]
    fn a_damaged_or_torn_record_ends_the_replay_before_it() {
        let mut wal = Wal::open(mem(), 1 << 20).unwrap();
        let (a, b) = (group(0, 3), group(3, 3));
        wal.append(1, a.iter().map(view)).unwrap();
        let second = wal.used();
        wal.append(1, b.iter().map(view)).unwrap();
        let end = wal.used();
        let mut image = vec![0u8; wal.len as usize];
        wal.file.read(0, &mut image).unwrap();
        let only_a: Vec<Logged> = a.iter().map(logged).collect();
        for (what, at) in [
            ("a payload byte", end - 1),
            ("the checksum", second + 5),
            ("the length", second),
            ("the generation", second + 9),
        ] {
            let mut bad = image.clone();
            bad[at as usize] ^= 0x40;
            let (got, stop) = Wal::open(Box::new(copy(&bad)), 1 << 20)
                .unwrap()
                .read_back(1)
                .unwrap();
            assert_eq!(got.writes, only_a, "{what} damaged");
            assert_eq!(stop, second, "{what} damaged");
        }
        // Torn: the file ends inside the second record (open grows it
        // back with zeros, which the checksum refuses).
        let torn = copy(&image[..(end - 3) as usize]);
        let (got, stop) = Wal::open(Box::new(torn), 1 << 20)
            .unwrap()
            .read_back(1)
            .unwrap();
        assert_eq!((got.writes, stop), (only_a, second));
    }

    fn copy(bytes: &[u8]) -> InMemoryBackend {
        let f = InMemoryBackend::new();
        f.set_len(bytes.len() as u64).unwrap();
        f.write(0, bytes).unwrap();
        f
    }

    #[test]
    fn a_checksummed_record_that_does_not_decode_is_reported_not_replayed() {
        let mut wal = Wal::open(mem(), 1 << 20).unwrap();
        let a = group(0, 2);
        wal.append(3, a.iter().map(view)).unwrap();
        let at = wal.used();
        // A record whose checksum holds around a payload of an unknown kind.
        let payload = [9u8, 0, 1, 2, 3];
        let mut rec = Vec::new();
        rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        rec.extend_from_slice(&checksum(payload.len() as u32, 3, &payload).to_le_bytes());
        rec.extend_from_slice(&3u64.to_le_bytes());
        rec.extend_from_slice(&payload);
        wal.file.write(at, &rec).unwrap();
        let (got, stop) = wal.read_back(3).unwrap();
        assert_eq!(got.writes, a.iter().map(logged).collect::<Vec<_>>());
        assert_eq!(stop, at);
        assert!(got.damaged.unwrap().contains("unknown write kind"));
    }

    #[test]
    fn decode_refuses_garbage_without_panicking() {
        let mut out = Vec::new();
        for bytes in [
            &[1u8][..],
            &[
                1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255,
            ][..],
            &[1, 2][..],
            &[3, 0][..],
        ] {
            assert!(decode(bytes, &mut out).is_err(), "{bytes:?}");
        }
        // A namespace that is not UTF-8.
        let mut p = vec![PUT, 0];
        p.extend_from_slice(&[0; 16]);
        p.extend_from_slice(&1u32.to_le_bytes());
        p.push(0xff);
        assert!(decode(&p, &mut out).is_err());
    }

    #[test]
    fn a_full_log_refuses_a_group_and_writes_nothing() {
        // Room for a few groups only (the capacity is at least the file).
        let mut wal = Wal::open(mem(), 4096).unwrap();
        assert_eq!(wal.len, 4096);
        let mut appended = Vec::new();
        let mut i = 0;
        loop {
            let g = group(i, 4);
            i += 4;
            if !wal.append(5, g.iter().map(view)).unwrap() {
                break;
            }
            appended.extend(g.iter().map(logged));
        }
        assert!(!appended.is_empty());
        let before = wal.used();
        assert!(!wal.append(5, group(i, 4).iter().map(view)).unwrap());
        assert_eq!(wal.used(), before);
        assert_eq!(wal.read_back(5).unwrap().0.writes, appended);
        // After a checkpoint there is room again.
        wal.rewind();
        assert!(wal.append(6, group(i, 4).iter().map(view)).unwrap());
    }

    #[test]
    fn the_file_grows_in_steps_of_zeros_up_to_the_capacity() {
        let mut wal = Wal::open(mem(), 3 * GROW + 100).unwrap();
        assert_eq!(wal.len, GROW);
        let big = Logged {
            record: Some(vec![7; (GROW / 2) as usize]),
            ..put(0)
        };
        let mut n = 0;
        while wal.append(1, [view(&big)]).unwrap() {
            n += 1;
            assert!(wal.len >= wal.used() && wal.len <= 3 * GROW + 100);
            assert!(wal.len.is_multiple_of(GROW) || wal.len == 3 * GROW + 100);
        }
        assert_eq!(n, 5);
        assert_eq!(wal.read_back(1).unwrap().0.writes.len(), 5);
    }
}

/// A power cut at any fsync of the log: each crash image reads back the
/// groups of its generation in order, every group acknowledged (appended
/// and fsynced) before the cut included, nothing else.
#[cfg(all(test, feature = "testing"))]
mod power_loss {
    use super::*;
    use crate::testing::PowerLossDisk;
    use std::sync::{Arc, Mutex};

    #[test]
    fn every_acknowledged_group_survives_a_power_cut() {
        let disk = PowerLossDisk::new();
        // (generation, groups acknowledged in it) as the test goes.
        let now = Arc::new(Mutex::new((1u64, 0usize)));
        let cuts = Arc::new(Mutex::new(Vec::new()));
        {
            let (now, cuts) = (now.clone(), cuts.clone());
            disk.on_sync(move |cut| {
                let (g, acked) = *now.lock().unwrap();
                for seed in 0..4 {
                    cuts.lock()
                        .unwrap()
                        .push((g, acked, cut.image(cut.sync_number() * 31 + seed)));
                }
            });
        }
        let mut wal = Wal::open(Box::new(disk.clone()), 64 << 10).unwrap();
        let mut generation = 1u64;
        // Groups of each generation, in order.
        let mut issued: Vec<Vec<Vec<Logged>>> = vec![Vec::new()];
        let mut i = 0u64;
        for round in 0..120u64 {
            if round % 23 == 22 {
                // A checkpoint.
                generation += 1;
                let g = generation;
                wal.rewind();
                *now.lock().unwrap() = (g, 0);
                issued.push(Vec::new());
            }
            let n = 1 + (round * 7) % 5;
            let g: Vec<Logged> = (i..i + n)
                .map(|j| Logged {
                    record: Some(vec![j as u8; (j * 37 % 900) as usize]),
                    ..super::tests_support::put(j)
                })
                .collect();
            i += n;
            if wal
                .append(generation, g.iter().map(super::tests_support::view))
                .unwrap()
            {
                issued.last_mut().unwrap().push(g);
                now.lock().unwrap().1 += 1;
            }
        }
        disk.clear_hook();
        let cuts = std::mem::take(&mut *cuts.lock().unwrap());
        assert!(cuts.len() > 400, "{} images", cuts.len());
        let mut replayed_some = 0;
        for (g, acked, image) in cuts {
            let groups = &issued[(g - 1) as usize];
            let wal =
                Wal::open(Box::new(PowerLossDisk::from_image(image.bytes)), 64 << 10).unwrap();
            let (got, _) = wal.read_back(g).unwrap();
            assert!(got.damaged.is_none());
            let k = got.records;
            assert!(
                k >= acked && k <= groups.len(),
                "generation {g}: {k} groups back, {acked} acknowledged, {} issued",
                groups.len()
            );
            let want: Vec<Logged> = groups[..k].iter().flatten().cloned().collect();
            assert_eq!(got.writes, want, "generation {g}, {k} groups");
            replayed_some += usize::from(k > 0);
        }
        assert!(replayed_some > 100);
    }
}
