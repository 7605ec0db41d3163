//! The on-disk record: a fixed 40-byte little-endian header and a payload.
//!
//! ```text
//! offset size field
//!      0    1 format version (1)
//!      1    1 compression tag: 0 raw, 1 zstd, 2 zstd with dictionary
//!      2    2 reserved, zero
//!      4    4 dictionary id (0 = none)
//!      8    8 expires_at, unix ms in engine time (u64::MAX = never)
//!     16    8 version: per-key write version, only grows
//!     24    8 namespace epoch the value was written under
//!     32    4 raw_len: length of the value after decompression
//!     36    4 CRC-32 (IEEE) of bytes 0..36 followed by the payload
//!     40    - payload
//! ```
//!
//! redb checksums pages only when it repairs; normal reads are not checked.
//! So every decode here verifies the CRC, bounds `raw_len` by the maximum
//! value size before allocating, and asks zstd for at most `raw_len` bytes:
//! a corrupt record or a decompression bomb is a [`RecordError`], never a
//! panic or an out-of-memory. Dictionary frames of values up to 32 KiB are
//! decoded in a thread's copy of the dictionary with a little room after it
//! (see [`Adjacent`]), so at most `raw_len` + 32 bytes are written there
//! before the length check.
//!
//! Memory: besides its two zstd contexts, a thread that decodes dictionary
//! frames keeps up to 4 such copies, each the dictionary's size + up to
//! 32 KiB of room + about 27 KiB of DDict entropy tables, for the thread's
//! life (never shrunk): at most ~0.5 MiB per thread with 64 KiB
//! dictionaries (what `train_dictionary` builds).

use crate::error::RecordError;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::slice;
use std::sync::{Arc, Weak};
use std::thread::LocalKey;
use zstd::dict::{DecoderDictionary, EncoderDictionary};
use zstd::zstd_safe::{CCtx, DCtx, DDict, WriteBuf};

pub const FORMAT_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 40;

/// How the payload is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Raw = 0,
    Zstd = 1,
    ZstdDict = 2,
}

/// The decoded header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub compression: Compression,
    pub dict_id: u32,
    pub expires_at: u64,
    pub version: u64,
    pub epoch: u64,
    pub raw_len: u32,
}

/// What the encoder should do with the payload.
pub struct Encoding<'a> {
    /// zstd level; `None` stores raw.
    pub level: Option<i32>,
    /// Values shorter than this are stored raw.
    pub threshold: usize,
    /// A prepared dictionary and its id.
    pub dict: Option<(u32, &'a EncoderDictionary<'static>)>,
}

/// A trained zstd dictionary, ready for decoding: its bytes and a shared
/// prepared (digested) copy. Decoders look one up by the record's
/// dictionary id.
pub struct Dictionary {
    bytes: Box<[u8]>,
    shared: DecoderDictionary<'static>,
}

impl Dictionary {
    /// Prepares `bytes` (a zstd dictionary, or raw content); `None` if zstd
    /// rejects them.
    pub fn new(bytes: &[u8]) -> Option<Self> {
        Some(Dictionary {
            shared: DecoderDictionary::try_copy(bytes).ok()?,
            bytes: bytes.into(),
        })
    }
}

impl std::fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dictionary")
            .field("len", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

thread_local! {
    // One context per thread for each direction, reused for every record:
    // creating one per record cost 10-100x in speed. Dictionaries are
    // passed per call (`*_using_cdict` / `*_using_ddict`), never left
    // referenced by the context.
    static CCTX: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static CCTX_DICT: RefCell<Option<CCtx<'static>>> = const { RefCell::new(None) };
    static DCTX: RefCell<Option<DCtx<'static>>> = const { RefCell::new(None) };
    static ADJACENT: RefCell<Adjacents> = const {
        RefCell::new(Adjacents {
            slots: Vec::new(),
            decodes: 0,
        })
    };
}

/// Empties a thread's codec state after a caught panic. Never panics
/// itself (it runs outside `catch_unwind`): while the thread's locals are
/// being destroyed `with` would panic and abort, so a local that is gone
/// (or still borrowed) is left as it is.
fn reset<T: Default>(key: &'static LocalKey<RefCell<T>>) {
    let _ = key.try_with(|c| c.try_borrow_mut().map(|mut v| std::mem::take(&mut *v)));
}

/// A zstd error code as an I/O error.
fn zstd_err(code: usize) -> std::io::Error {
    std::io::Error::other(zstd::zstd_safe::get_error_name(code))
}

/// Largest zstd window a decoder accepts (2^27 = 128 MiB is zstd's own
/// default limit; we go lower since values are bounded anyway).
const WINDOW_LOG_MAX: u32 = 27;

/// zstd-compresses `data`; `None` on any failure (the caller stores raw).
fn compress(data: &[u8], level: i32, dict: Option<&EncoderDictionary<'static>>) -> Option<Vec<u8>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        compress_inner(data, level, dict)
    }))
    .unwrap_or_else(|_| {
        reset(&CCTX);
        reset(&CCTX_DICT);
        None
    })
}

fn compress_inner(
    data: &[u8],
    level: i32,
    dict: Option<&EncoderDictionary<'static>>,
) -> Option<Vec<u8>> {
    failpoint!("zstd::compress", |_| None);
    match dict {
        // The level is the one the dictionary was prepared with.
        Some(d) => CCTX_DICT.with(|slot| {
            let mut slot = slot.borrow_mut();
            if slot.is_none() {
                *slot = CCtx::try_create();
            }
            let c = slot.as_mut()?;
            let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
            // The dictionary is borrowed for this call only.
            c.compress_using_cdict(&mut out, data, d.as_cdict()).ok()?;
            Some(out)
        }),
        None => CCTX.with(|c| {
            let mut c = c.borrow_mut();
            if c.is_none() {
                *c = zstd::bulk::Compressor::new(level).ok();
            }
            let c = c.as_mut()?;
            c.set_compression_level(level).ok()?;
            c.compress(data).ok()
        }),
    }
}

/// Whether a compressed payload of `compressed` bytes is worth keeping for a
/// value of `raw` bytes: it must save at least a tenth. Below that (small
/// JSON without a dictionary saves 1–10 %), every read would pay a
/// decompression — the dominant cost of a warm-tier read and of the
/// warm-up at these sizes — to save a few bytes of disk.
fn pays(compressed: usize, raw: usize) -> bool {
    compressed <= raw - raw / 10
}

/// A value compressed (or not) but not yet given its header: compression
/// is the costly part and runs before the caller takes any lock.
pub struct Prepared {
    tag: Compression,
    dict_id: u32,
    raw_len: u32,
    payload: Vec<u8>,
}

impl Prepared {
    /// Compresses `value` as `enc` says; falls back to raw when it does not pay.
    pub fn new(value: &[u8], enc: &Encoding<'_>) -> Self {
        if let Some(level) = enc.level
            && value.len() >= enc.threshold
            && let Some(c) = compress(value, level, enc.dict.map(|(_, d)| d))
            && pays(c.len(), value.len())
        {
            let (tag, dict_id) = match enc.dict {
                Some((id, _)) => (Compression::ZstdDict, id),
                None => (Compression::Zstd, 0),
            };
            return Prepared {
                tag,
                dict_id,
                raw_len: value.len() as u32,
                payload: c,
            };
        }
        Prepared {
            tag: Compression::Raw,
            dict_id: 0,
            raw_len: value.len() as u32,
            payload: value.to_vec(),
        }
    }

    /// Payload bytes (after compression).
    pub fn payload_len(&self) -> usize {
        self.payload.len()
    }

    /// Builds the full record: header, checksum, payload.
    pub fn finish(&self, expires_at: u64, version: u64, epoch: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.push(FORMAT_VERSION);
        out.push(self.tag as u8);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.dict_id.to_le_bytes());
        out.extend_from_slice(&expires_at.to_le_bytes());
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&epoch.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        let crc = checksum(&out[..36], &self.payload);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&self.payload);
        out
    }
}

/// Encodes a record in one step.
pub fn encode(
    value: &[u8],
    expires_at: u64,
    version: u64,
    epoch: u64,
    enc: &Encoding<'_>,
) -> Vec<u8> {
    Prepared::new(value, enc).finish(expires_at, version, epoch)
}

fn checksum(head: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(payload);
    h.finalize()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses the header without checking the payload. The writer uses this to
/// find the old version and expiry of a record it replaces.
pub fn decode_header(rec: &[u8]) -> Result<Header, RecordError> {
    if rec.len() < HEADER_LEN {
        return Err(RecordError::Truncated {
            len: rec.len(),
            header: HEADER_LEN,
        });
    }
    if rec[0] != FORMAT_VERSION {
        return Err(RecordError::UnknownFormat(rec[0]));
    }
    let compression = match rec[1] {
        0 => Compression::Raw,
        1 => Compression::Zstd,
        2 => Compression::ZstdDict,
        t => return Err(RecordError::UnknownCompression(t)),
    };
    Ok(Header {
        compression,
        dict_id: u32_at(rec, 4),
        expires_at: u64_at(rec, 8),
        version: u64_at(rec, 16),
        epoch: u64_at(rec, 24),
        raw_len: u32_at(rec, 32),
    })
}

/// Parses the header and verifies the checksum over header and payload,
/// without decompressing. The writer trusts a stored record's version only
/// through this: a damaged header must not make a record look newer than
/// the write that replaces it (the write would be dropped).
pub fn decode_header_verified(rec: &[u8]) -> Result<Header, RecordError> {
    let h = decode_header(rec)?;
    let stored = u32_at(rec, 36);
    let computed = checksum(&rec[..36], &rec[HEADER_LEN..]);
    if stored != computed {
        return Err(RecordError::ChecksumMismatch { stored, computed });
    }
    Ok(h)
}

/// Room zstd's fast copy loops may write past the end of the output
/// (`WILDCOPY_OVERLENGTH`): sequences ending within it of the buffer's end
/// take a slower, careful path.
const SLACK: usize = 32;

/// Room for values in a thread's [`Adjacent`] buffer: it starts at the
/// smallest size that fits the value (at least 4 KiB) and is rebuilt
/// twice as large when a value does not fit, up to this; larger values use
/// the shared dictionary (their decode is long enough that the in-line
/// match copies matter less, and the room is kept for the thread's life).
const ADJACENT_OUT: usize = 32 << 10;

/// Dictionaries a thread keeps an [`Adjacent`] copy of.
const ADJACENT_SLOTS: usize = 4;

/// Dictionary decodes on the thread a copy must have gone unused before it
/// may be replaced: building one (64 KiB copy, entropy tables) costs about
/// a hundred small decodes, so a thread cycling through more dictionaries
/// than it has slots rebuilds at most [`ADJACENT_SLOTS`] copies per this
/// many decodes and otherwise uses the shared dictionary, while a copy that
/// went cold is reclaimed.
const ADJACENT_PAYBACK: u64 = 4096;

/// A thread's copies, least recent last.
#[derive(Default)]
struct Adjacents {
    slots: Vec<Adjacent>,
    /// Dictionary decodes on this thread that could use a copy (a clock
    /// for [`Adjacent::last_used`]).
    decodes: u64,
}

/// A thread's copy of a dictionary followed by room for one value. A frame
/// decoded right after the dictionary's content sees it as the start of
/// its own output: matches into the dictionary (most of them, for small
/// values) are copied by zstd's inline loops instead of a `memmove` call
/// each, as they are when the dictionary lies elsewhere (W9, level 3:
/// 16-25 % faster per kind; the frame's tail also gets [`SLACK`]).
///
/// zstd reads the dictionary both through the DDict and through the output
/// pointer (`op - offset` reaches back before the room), so the output
/// pointer must carry the whole allocation's provenance: the buffer is
/// kept as a raw pointer only, never as a `&mut` to either part, and the
/// room is handed to zstd as a [`Room`] derived from it.
struct Adjacent {
    /// Identity only (never upgraded): holding the allocation keeps its
    /// address from being reused by another dictionary.
    of: Weak<Dictionary>,
    /// Dropped before `buf` is freed: it reads `buf[..dict_len]`.
    ddict: Option<DDict<'static>>,
    /// From `Box::into_raw` in [`Adjacent::new`], freed in `drop`: the
    /// dictionary's bytes (`..dict_len`, never written after `new`)
    /// followed by the room (`dict_len..`).
    buf: NonNull<[u8]>,
    dict_len: usize,
    /// [`Adjacents::decodes`] at this copy's last use.
    last_used: u64,
}

impl Adjacent {
    /// A copy of `dict` with room for at least `need` bytes after it.
    fn new(dict: &Arc<Dictionary>, need: usize, now: u64) -> Option<Self> {
        let n = dict.bytes.len();
        let room = need.next_power_of_two().clamp(4 << 10, ADJACENT_OUT);
        let mut v = vec![0u8; n + room];
        v[..n].copy_from_slice(&dict.bytes);
        let buf = NonNull::new(Box::into_raw(v.into_boxed_slice())).expect("a Box is not null");
        let mut a = Adjacent {
            of: Arc::downgrade(dict),
            ddict: None,
            buf,
            dict_len: n,
            last_used: now,
        };
        // SAFETY: `buf` points to a live, initialized allocation of
        // `n + room` bytes, so its first `n` bytes are a valid `[u8]`. The
        // slice's lifetime is a lie kept private to this struct: the only
        // user is the DDict, which `drop` drops before freeing `buf`. No
        // `&mut` to these bytes is ever made and nothing writes them after
        // this point ([`Room`] covers only `n..`), so the shared borrow is
        // never invalidated.
        let head: &'static [u8] = unsafe { slice::from_raw_parts(buf.cast::<u8>().as_ptr(), n) };
        // On failure `a` is dropped, which frees `buf`.
        a.ddict = Some(DDict::try_create_by_reference(head)?);
        Some(a)
    }

    /// Bytes of room after the dictionary.
    fn room(&self) -> usize {
        self.buf.len() - self.dict_len
    }

    /// Decodes `payload` with this copy's dictionary into the first `need`
    /// bytes of its room, and copies the value out.
    fn decode(
        &mut self,
        dec: &mut DCtx<'static>,
        payload: &[u8],
        need: usize,
    ) -> Option<Result<Vec<u8>, RecordError>> {
        assert!(need <= self.room(), "room checked by the caller");
        let ddict = self.ddict.as_ref()?;
        // SAFETY: `dict_len <= buf.len()` (`new`), so the offset stays
        // within the allocation. The pointer is derived from the whole
        // allocation's, so reads zstd makes through it before `at` (the
        // dictionary, as a prefix of the output) are within its provenance.
        let at = unsafe { self.buf.cast::<u8>().add(self.dict_len) };
        let mut room = Room {
            at,
            cap: need,
            filled: 0,
            _buf: PhantomData,
        };
        Some(
            dec.decompress_using_ddict(&mut room, payload, ddict)
                .map(|_| room.as_slice().to_vec())
                .map_err(|c| RecordError::Decompress(zstd_err(c).to_string())),
        )
    }
}

impl Drop for Adjacent {
    fn drop(&mut self) {
        self.ddict = None;
        // SAFETY: `buf` came from `Box::into_raw` in `new` and is freed
        // only here, once; the DDict (the only holder of a reference into
        // it) was just dropped, and a `Room` cannot outlive the `&mut self`
        // borrow of `decode` it was made in.
        drop(unsafe { Box::from_raw(self.buf.as_ptr()) });
    }
}

/// zstd's output buffer: the first `cap` bytes of an [`Adjacent`]'s room,
/// as a pointer derived from the whole allocation (see [`Adjacent`]).
struct Room<'a> {
    at: NonNull<u8>,
    cap: usize,
    filled: usize,
    /// The room is borrowed exclusively for the decode.
    _buf: PhantomData<&'a mut [u8]>,
}

// SAFETY: `as_mut_ptr` points at `cap` bytes of a live allocation that
// nothing else reads or writes while the `Room` lives (`Adjacent::decode`
// holds `&mut` to their owner), all of them initialized (zeroed in
// `Adjacent::new`); `capacity` is `cap`; `as_slice` covers only the
// `filled <= cap` bytes zstd reported written.
unsafe impl WriteBuf for Room<'_> {
    fn as_slice(&self) -> &[u8] {
        // SAFETY: `filled <= cap` bytes at `at`, inside the room (see the
        // impl), initialized and not written while this borrow lives (only
        // `&mut self` methods hand out the pointer).
        unsafe { slice::from_raw_parts(self.at.as_ptr(), self.filled) }
    }

    fn capacity(&self) -> usize {
        self.cap
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.at.as_ptr()
    }

    unsafe fn filled_until(&mut self, n: usize) {
        self.filled = n.min(self.cap);
    }
}

/// The thread's context, created on first use.
fn with_dctx<R>(
    f: impl FnOnce(&mut DCtx<'static>) -> Result<R, RecordError>,
) -> Result<R, RecordError> {
    DCTX.with(|slot| {
        let mut d = slot.borrow_mut();
        if d.is_none() {
            let mut dec = DCtx::try_create()
                .ok_or_else(|| RecordError::Decompress("zstd context allocation failed".into()))?;
            dec.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(WINDOW_LOG_MAX))
                .map_err(|c| RecordError::Decompress(zstd_err(c).to_string()))?;
            *d = Some(dec);
        }
        f(d.as_mut().expect("just set"))
    })
}

/// Decodes a dictionary frame in the thread's [`Adjacent`] copy of `dict`
/// when it has (or may build) one; `None` to use the shared dictionary.
fn decompress_adjacent(
    dec: &mut DCtx<'static>,
    dict: &Arc<Dictionary>,
    payload: &[u8],
    raw_len: usize,
) -> Option<Result<Vec<u8>, RecordError>> {
    let need = raw_len + SLACK;
    if need > ADJACENT_OUT {
        return None;
    }
    // During thread-local destruction there are no copies: the shared
    // dictionary is used.
    ADJACENT
        .try_with(|adj| {
            let mut adj = adj.borrow_mut();
            adj.decodes += 1;
            let now = adj.decodes;
            let slots = &mut adj.slots;
            let me = Arc::as_ptr(dict);
            let at = match slots.iter().position(|a| a.of.as_ptr() == me) {
                Some(i) => {
                    if slots[i].room() < need {
                        slots[i] = Adjacent::new(dict, need, now)?;
                    }
                    i
                }
                None => {
                    if slots.len() >= ADJACENT_SLOTS {
                        // Replace the least recent copy only once it has
                        // gone unused for a while or its dictionary is gone.
                        let last = slots.last().expect("full");
                        if now - last.last_used < ADJACENT_PAYBACK && last.of.strong_count() > 0 {
                            return None;
                        }
                        slots.pop();
                    }
                    slots.push(Adjacent::new(dict, need, now)?);
                    slots.len() - 1
                }
            };
            // Most recent first: the last slot is the one replaced.
            slots[..=at].rotate_right(1);
            let a = &mut slots[0];
            a.last_used = now;
            a.decode(dec, payload, need)
        })
        .ok()
        .flatten()
}

/// Decompresses a zstd payload into at most `raw_len` bytes (plus
/// [`SLACK`] of scratch room when decoded in a thread's buffer).
fn decompress(
    compression: Compression,
    dict_id: u32,
    payload: &[u8],
    raw_len: usize,
    dict: &dyn Fn(u32) -> Option<Arc<Dictionary>>,
) -> Result<Vec<u8>, RecordError> {
    failpoint!("zstd::decompress", |_| Err(RecordError::Decompress(
        "injected fault".into()
    )));
    let err = |c: usize| RecordError::Decompress(zstd_err(c).to_string());
    if compression == Compression::ZstdDict {
        let dd = dict(dict_id).ok_or(RecordError::MissingDictionary(dict_id))?;
        return with_dctx(|dec| {
            if let Some(r) = decompress_adjacent(dec, &dd, payload, raw_len) {
                return r;
            }
            let mut out = Vec::with_capacity(raw_len);
            dec.decompress_using_ddict(&mut out, payload, dd.shared.as_ddict())
                .map_err(err)?;
            Ok(out)
        });
    }
    with_dctx(|dec| {
        let mut out = Vec::with_capacity(raw_len);
        dec.decompress(&mut out, payload).map_err(err)?;
        Ok(out)
    })
}

/// Fully decodes and verifies a record, returning the header and the value.
/// Never allocates more than `max_value_len` for the value.
pub fn decode(
    rec: &[u8],
    max_value_len: usize,
    dict: &dyn Fn(u32) -> Option<Arc<Dictionary>>,
) -> Result<(Header, Vec<u8>), RecordError> {
    let h = decode_header_verified(rec)?;
    let payload = &rec[HEADER_LEN..];
    let raw_len = h.raw_len as usize;
    if raw_len > max_value_len {
        return Err(RecordError::TooLarge {
            len: raw_len,
            max: max_value_len,
        });
    }
    let value = match h.compression {
        Compression::Raw => payload.to_vec(),
        // zstd is C code behind a safe wrapper; should it ever panic, the
        // record is reported as undecodable instead of unwinding into the
        // caller (and the thread's context is rebuilt).
        c => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decompress(c, h.dict_id, payload, raw_len, dict)
        }))
        .unwrap_or_else(|_| {
            // `try_with`: while the thread's locals are being destroyed
            // they are gone (or going), and `with` would panic here,
            // outside the `catch_unwind`, and abort.
            reset(&DCTX);
            reset(&ADJACENT);
            Err(RecordError::Decompress("zstd panicked".into()))
        })?,
    };
    if value.len() != raw_len {
        return Err(RecordError::LengthMismatch {
            declared: raw_len,
            actual: value.len(),
        });
    }
    Ok((h, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn no_dict(_: u32) -> Option<Arc<Dictionary>> {
        None
    }

    fn enc(level: Option<i32>) -> Encoding<'static> {
        Encoding {
            level,
            threshold: 16,
            dict: None,
        }
    }

    #[test]
    fn round_trips_raw_and_compressed() {
        let v = br#"{"market":"will-it-rain","price":0.42,"spread":0.01}"#.repeat(20);
        for level in [None, Some(1), Some(3)] {
            let r = encode(&v, 77, 5, 2, &enc(level));
            let (h, out) = decode(&r, 1 << 20, &no_dict).unwrap();
            assert_eq!(out, v);
            assert_eq!((h.expires_at, h.version, h.epoch), (77, 5, 2));
            assert_eq!(h.compression == Compression::Zstd, level.is_some());
        }
    }

    #[test]
    fn dictionary_frames_round_trip_across_dictionaries_on_one_thread() {
        // The thread's dictionary contexts are shared by every dictionary:
        // alternate two, and plain frames, and check each decodes with its own.
        let sample = |i: usize, tag: &str| {
            format!(
                r#"{{"{tag}":"market-{i}","price":0.{i},"volume":{}}}"#,
                i * 31
            )
            .into_bytes()
        };
        let train = |tag: &str| {
            let samples: Vec<Vec<u8>> = (0..200).map(|i| sample(i, tag)).collect();
            zstd::dict::from_samples(&samples, 4096).unwrap()
        };
        let (a, b) = (train("alpha"), train("beta"));
        let enc_a = EncoderDictionary::copy(&a, 3);
        let enc_b = EncoderDictionary::copy(&b, 1);
        let dec: HashMap<u32, Arc<Dictionary>> = [
            (1, Arc::new(Dictionary::new(&a).unwrap())),
            (2, Arc::new(Dictionary::new(&b).unwrap())),
        ]
        .into();
        let lookup = |id: u32| dec.get(&id).cloned();
        for i in 0..50 {
            let (tag, id, d) = if i % 2 == 0 {
                ("alpha", 1, &enc_a)
            } else {
                ("beta", 2, &enc_b)
            };
            let v = sample(1000 + i, tag).repeat(3);
            let e = Encoding {
                level: Some(3),
                threshold: 16,
                dict: (i % 5 != 4).then_some((id, d)),
            };
            let r = encode(&v, 1, i as u64, 0, &e);
            let (h, out) = decode(&r, 1 << 20, &lookup).unwrap();
            assert_eq!(out, v);
            assert_eq!(h.dict_id != 0, i % 5 != 4);
            // Decoding with the other dictionary fails instead of
            // returning garbage (zstd checks the frame's dictionary id).
            if h.dict_id != 0 {
                let wrong = |_: u32| dec.get(&(3 - h.dict_id)).cloned();
                assert!(decode(&r, 1 << 20, &wrong).is_err());
            }
        }
    }

    #[test]
    fn dictionary_frames_decode_past_the_thread_copies() {
        // More dictionaries than a thread keeps adjacent copies of, used in
        // turn (the rest go through the shared dictionary), values from a
        // few bytes to past the largest adjacent room, and dictionaries
        // dropped and replaced: every value comes back intact.
        let sample = |i: usize, tag: usize| {
            format!(
                r#"{{"kind":"k{tag}","market":"m-{i}","price":0.{i},"n":{}}}"#,
                i * 7
            )
            .into_bytes()
        };
        let make = |tag: usize| {
            let samples: Vec<Vec<u8>> = (0..200).map(|i| sample(i, tag)).collect();
            let d = zstd::dict::from_samples(&samples, 4096).unwrap();
            (
                EncoderDictionary::copy(&d, 3),
                Arc::new(Dictionary::new(&d).unwrap()),
            )
        };
        let n = ADJACENT_SLOTS + 2;
        for round in 0..3 {
            let dicts: Vec<_> = (0..n).map(|t| make(t + round * n)).collect();
            for i in 0..40 {
                let t = i % n;
                let (e, d) = &dicts[t];
                let v = match i % 4 {
                    0 => sample(i, t)[..20].to_vec(),
                    1 => sample(i, t),
                    2 => sample(i, t).repeat(100),
                    _ => sample(i, t).repeat(ADJACENT_OUT / 40),
                };
                let enc = Encoding {
                    level: Some(3),
                    threshold: 0,
                    dict: Some((7, e)),
                };
                let r = encode(&v, 1, 1, 0, &enc);
                let (_, out) = decode(&r, 1 << 24, &|_| Some(d.clone())).unwrap();
                assert_eq!(out, v, "round {round} value {i}");
            }
        }
    }

    /// Whether this thread holds an adjacent copy of `d`.
    fn adjacent_holds(d: &Arc<Dictionary>) -> bool {
        ADJACENT.with(|s| {
            s.borrow()
                .slots
                .iter()
                .any(|a| a.of.as_ptr() == Arc::as_ptr(d))
        })
    }

    #[test]
    fn a_cold_thread_copy_is_reclaimed() {
        // A thread fills its slots with dictionaries that then go cold (few
        // uses, still alive). A new dictionary used on and on must get a
        // copy once the least recent one has been idle long enough, but not
        // while the slots are in use (no rebuild per decode).
        std::thread::spawn(|| {
            let sample = |i: usize, tag: usize| {
                format!(r#"{{"kind":"c{tag}","market":"m-{i}","price":0.{i}}}"#).into_bytes()
            };
            let dicts: Vec<_> = (0..=ADJACENT_SLOTS)
                .map(|t| {
                    let samples: Vec<Vec<u8>> = (0..200).map(|i| sample(i, t)).collect();
                    let d = zstd::dict::from_samples(&samples, 4096).unwrap();
                    let e = EncoderDictionary::copy(&d, 3);
                    let v = sample(5000 + t, t).repeat(2);
                    let enc = Encoding {
                        level: Some(3),
                        threshold: 0,
                        dict: Some((9, &e)),
                    };
                    let rec = encode(&v, 1, 1, 0, &enc);
                    (Arc::new(Dictionary::new(&d).unwrap()), rec, v)
                })
                .collect();
            let run = |t: usize| {
                let (d, rec, v) = &dicts[t];
                let (_, out) = decode(rec, 1 << 20, &|_| Some(d.clone())).unwrap();
                assert_eq!(&out, v);
            };
            for (t, (d, _, _)) in dicts[..ADJACENT_SLOTS].iter().enumerate() {
                run(t);
                run(t);
                assert!(adjacent_holds(d));
            }
            let new = &dicts[ADJACENT_SLOTS].0;
            // The slots were just used: the newcomer takes the shared path.
            for t in 0..ADJACENT_SLOTS {
                run(ADJACENT_SLOTS);
                run(t);
            }
            assert!(!adjacent_holds(new));
            for _ in 0..ADJACENT_PAYBACK + 1 {
                run(ADJACENT_SLOTS);
            }
            assert!(adjacent_holds(new), "a cold copy locked the newcomer out");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn dictionary_frame_longer_than_declared_is_refused() {
        // A frame that decodes to more than `raw_len` (here, with a correct
        // checksum over the lying header) is an error, also when decoded in
        // the thread's adjacent copy with its few bytes of room.
        let samples: Vec<Vec<u8>> = (0..200)
            .map(|i| format!(r#"{{"price":0.{i},"size":{}}}"#, i * 3).into_bytes())
            .collect();
        let d = zstd::dict::from_samples(&samples, 4096).unwrap();
        let e = EncoderDictionary::copy(&d, 3);
        let dd = Arc::new(Dictionary::new(&d).unwrap());
        let v = samples.concat();
        let enc = Encoding {
            level: Some(3),
            threshold: 0,
            dict: Some((1, &e)),
        };
        for less in [1, 2, SLACK, SLACK + 1, v.len() / 2] {
            let mut rec = encode(&v, 1, 2, 3, &enc);
            rec[32..36].copy_from_slice(&((v.len() - less) as u32).to_le_bytes());
            let crc = checksum(&rec[..36], &rec[HEADER_LEN..]);
            rec[36..40].copy_from_slice(&crc.to_le_bytes());
            assert!(decode(&rec, 1 << 20, &|_| Some(dd.clone())).is_err());
        }
    }

    #[test]
    fn compression_that_saves_under_a_tenth_is_not_kept() {
        // 100 pseudo-random bytes: zstd saves nothing.
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let v: Vec<u8> = (0..100)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let r = encode(&v, 1, 2, 3, &enc(Some(3)));
        assert_eq!(decode_header(&r).unwrap().compression, Compression::Raw);
        let repetitive = b"{\"price\":0.5}".repeat(20);
        let r = encode(&repetitive, 1, 2, 3, &enc(Some(3)));
        assert_eq!(decode_header(&r).unwrap().compression, Compression::Zstd);
        assert!(pays(90, 100) && !pays(91, 100) && pays(0, 0));
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let v = b"hello world, hello world, hello world".repeat(4);
        let r = encode(&v, 1, 2, 3, &enc(Some(3)));
        for i in 0..r.len() {
            for bit in 0..8 {
                let mut bad = r.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    decode(&bad, 1 << 20, &no_dict).is_err(),
                    "flip at byte {i} bit {bit} accepted"
                );
            }
        }
    }

    #[test]
    fn truncated_and_oversized_are_errors() {
        let r = encode(b"abc", 1, 2, 3, &enc(None));
        for n in 0..r.len() {
            assert!(decode(&r[..n], 1 << 20, &no_dict).is_err());
        }
        let big = encode(&vec![7u8; 1000], 1, 2, 3, &enc(Some(3)));
        assert!(matches!(
            decode(&big, 100, &no_dict),
            Err(RecordError::TooLarge { .. })
        ));
    }

    #[test]
    fn zstd_bomb_is_refused_without_allocating_it() {
        // 64 MiB of zeros compresses to a few KiB; the header lies that the
        // value is 10 bytes.
        let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap();
        let mut rec = encode(b"0123456789", u64::MAX, 1, 0, &enc(None));
        rec.truncate(HEADER_LEN);
        rec[1] = Compression::Zstd as u8;
        rec.extend_from_slice(&bomb);
        let crc = checksum(&rec[..36], &rec[HEADER_LEN..]);
        rec[36..40].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode(&rec, 1 << 20, &no_dict),
            Err(RecordError::Decompress(_))
        ));
    }
}
