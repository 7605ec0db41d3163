//! Time, read through an injectable [`Clock`].
//!
//! Expiry is stored as wall-clock unix milliseconds so that it means the same
//! thing after a restart. Wall clocks jump, though, so the engine never reads
//! the wall clock directly: it reads an [`EngineTime`], which
//!
//! * follows the wall clock when it moves forward (a forward jump makes
//!   entries expire early, never late), and
//! * keeps counting with the monotonic clock when the wall clock moves
//!   backwards, so a backward jump neither extends nor shortens a TTL, and
//! * starts, after a restart, from `max(wall clock, last time the engine
//!   persisted)`, so a clock that went backwards while the process was down
//!   cannot stretch a TTL beyond what the caller set, measured in engine time.
//!
//! See docs/ARCHITECTURE.md, "Time".

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A source of time. Implement it to control time in tests (see
/// [`ManualClock`]); the default is [`SystemClock`].
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Wall-clock time in milliseconds since the unix epoch. May jump.
    fn wall_ms(&self) -> u64;
    /// A monotonic millisecond counter with an arbitrary origin. Never goes
    /// backwards.
    fn monotonic_ms(&self) -> u64;
    /// How much monotonic time (ms) may pass between two looks at the wall
    /// clock. In between, engine time is read from the monotonic clock
    /// alone (one clock read per `get` instead of two), so a forward jump
    /// of the wall clock is followed up to this late. Default: 0, every
    /// read looks at both (what a test clock wants: a `jump_wall` shows at
    /// once); [`SystemClock`] uses 1 ms.
    fn wall_check_interval_ms(&self) -> u64 {
        0
    }
    /// A cheaper read of the monotonic clock for the hot path, as
    /// `(ms, lag_ms)`: `monotonic_ms()` read at the same moment lies in
    /// `ms..=ms + lag_ms`. A hit on an entry that expires further ahead
    /// than the lag is then known fresh without a precise read; entries
    /// closer to their expiry are checked with `monotonic_ms`. Default: the
    /// precise read, no lag. Only used when `wall_check_interval_ms` is
    /// not 0.
    fn monotonic_coarse_ms(&self) -> (u64, u64) {
        (self.monotonic_ms(), 0)
    }
    /// A cheaper read still for the hot path, as `(seconds, steps)`: the
    /// wall clock's whole seconds, lagging by at most the lag of
    /// `monotonic_coarse_ms`, and a count (wrapping) of the steps of the
    /// wall clock seen so far. While it reads the same, a hot hit compares
    /// the entry's expiry with a bound worked out at the last coarse read
    /// (see docs/ARCHITECTURE.md, "Engine time"). Every step backwards
    /// must be counted (a single one of up to a second, a leap second's,
    /// is tolerated uncounted). Default: `None`, no such read. Only used
    /// when `wall_check_interval_ms` is not 0.
    fn wall_seconds_coarse(&self) -> Option<(u64, u16)> {
        None
    }
}

/// The operating system's clocks: `SystemTime` and `Instant`.
#[derive(Debug, Clone)]
pub struct SystemClock {
    /// The origin of `monotonic_ms` where it is read through `Instant`.
    #[cfg_attr(unix, allow(dead_code))]
    origin: Instant,
    /// The bound on how far `CLOCK_MONOTONIC_COARSE` trails
    /// `CLOCK_MONOTONIC` (six of its ticks, in ms); `None` where there is
    /// no usable coarse clock.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    coarse_lag_ms: Option<u64>,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            origin: Instant::now(),
            coarse_lag_ms: coarse_lag_ms(),
        }
    }
}

/// How far the coarse monotonic clock may trail the precise one, in ms.
/// The kernel updates it once per tick (its resolution, 1–10 ms) on the
/// CPU that keeps time; when that CPU stalls (a VM exit, stop_machine),
/// another one forces the update after 5 ticks (`MAX_STALLED_JIFFIES`),
/// so six ticks bound the lag. Older kernels without that rescue have no
/// hard bound: a timekeeper stalled longer than six ticks lets a hot hit
/// serve an entry up to the excess past its expiry. A resolution over
/// 10 ms, or none, is not used.
#[cfg(target_os = "linux")]
fn coarse_lag_ms() -> Option<u64> {
    let r = rustix::time::clock_getres(rustix::time::ClockId::MonotonicCoarse);
    let res_ns = r.tv_sec as u64 * 1_000_000_000 + r.tv_nsec as u64;
    (res_ns > 0 && res_ns <= 10_000_000).then(|| (6 * res_ns).div_ceil(1_000_000) + 1)
}

#[cfg(not(target_os = "linux"))]
fn coarse_lag_ms() -> Option<u64> {
    None
}

impl Clock for SystemClock {
    fn wall_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
    fn monotonic_ms(&self) -> u64 {
        // CLOCK_MONOTONIC (what `Instant` reads) without `Instant`'s
        // checked timespec arithmetic: this read is most of what a TTL adds
        // to a hot get. Its origin is the boot, which the trait allows.
        #[cfg(unix)]
        {
            let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
            t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
        }
        #[cfg(not(unix))]
        {
            self.origin.elapsed().as_millis() as u64
        }
    }
    fn wall_check_interval_ms(&self) -> u64 {
        // The system's clocks run at the same rate (NTP slews both), so the
        // wall clock only gets ahead of engine time by a step; checking it
        // once per ms follows a step within 1 ms.
        1
    }
    fn monotonic_coarse_ms(&self) -> (u64, u64) {
        // CLOCK_MONOTONIC through the vDSO ends in a serialising `rdtsc`
        // (`lfence; rdtsc`): every cache miss of the lookup before it must
        // land first, which cost a hot get ~100–200 ns at 1 M keys (W8).
        // The coarse clock is the kernel's last tick, a plain memory read.
        #[cfg(target_os = "linux")]
        if let Some(lag) = self.coarse_lag_ms {
            return (coarse_ms(), lag);
        }
        (self.monotonic_ms(), 0)
    }
}

/// `CLOCK_MONOTONIC_COARSE` in ms.
#[cfg(target_os = "linux")]
#[inline]
fn coarse_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
}

/// A backward step of the wall clock that the bound tolerates uncounted:
/// up to a second, a leap second's (the kernel reports those to the
/// watcher too; this is a margin, not the mechanism).
const STEP_BACK_MS: i64 = 1000;

/// The second word when none is stored: matches no reading (a stored
/// word's low 16 bits are at least 2000).
const NO_SECOND: u64 = u64::MAX;

/// What the second word `w` ([`EngineTime::note_second`] writes it) says
/// about an entry expiring at `t`, for the second read `(s, steps)`:
/// `None` when `w` is not that reading's word, else whether `t` is past
/// its bound (the entry surely fresh).
#[inline]
fn word_says(w: u64, s: u64, steps: u16, t: u64) -> Option<bool> {
    // A match means `s` is the stored second (below 2^32), short of a
    // `time()` from 2^48 seconds on.
    (w >> 16 == s << 16 | u64::from(steps)).then(|| s * 1000 + (w & 0xffff) < t)
}

/// Steps of the wall clock seen by the thread of [`watch_wall_steps`]
/// (wrapping). Read before `time()`: a step between the two invalidates
/// what is stored with the older count.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
static WALL_STEPS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// Set when the thread of [`watch_wall_steps`] stopped: steps are no
/// longer counted, so no second word is stored for the system clock.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
static NO_WATCH: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The system clock's second read: `(time(), WALL_STEPS)`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[inline]
fn system_seconds() -> (u64, u16) {
    use std::ffi::c_long;
    unsafe extern "C" {
        // `time_t` is a `long` on glibc's targets.
        fn time(t: *mut c_long) -> c_long;
    }
    let steps = WALL_STEPS.load(Ordering::Acquire);
    // SAFETY: `time` with a null pointer only returns the time. glibc
    // resolves it to the vDSO's `time`, which reads the second the
    // kernel's last tick stored: ~8 ns where the coarse clock's
    // `clock_gettime` costs ~30 between a get's cache misses (W8). A
    // negative time reads as huge, which no stored word matches.
    let s = unsafe { time(std::ptr::null_mut()) };
    (s as i64 as u64, steps)
}

/// Starts, once per process, a thread that counts steps of the wall clock
/// in [`WALL_STEPS`]: it waits on a `timerfd` armed with
/// `TFD_TIMER_CANCEL_ON_SET`, which the kernel wakes whenever the wall
/// clock is set (by an operator, NTP's step, a leap second, a resume).
/// `false` when it cannot run: the second read is then not used. A step
/// is counted once this thread runs after it: a bound stored before a
/// step back of D seconds could be matched again only after D seconds
/// without a hit seeing another second, so the thread must not be kept
/// off the CPU for longer than that. A process forked from one that
/// runs it has no watcher (its `OnceLock` says it runs): a cache must
/// not be used across a `fork`, which its writer thread does not survive
/// either.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn watch_wall_steps() -> bool {
    use rustix::time::{
        Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
        timerfd_settime,
    };
    static WATCHING: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    fn arm(fd: &rustix::fd::OwnedFd) -> rustix::io::Result<()> {
        // An absolute time far ahead (2255, within the kernel's range):
        // the timer only ends by a step.
        let far = Timespec {
            tv_sec: 9_000_000_000,
            tv_nsec: 0,
        };
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let spec = Itimerspec {
            it_interval: zero,
            it_value: far,
        };
        let flags = TimerfdTimerFlags::ABSTIME | TimerfdTimerFlags::CANCEL_ON_SET;
        timerfd_settime(fd, flags, &spec).map(drop)
    }
    *WATCHING.get_or_init(|| {
        let Ok(fd) = timerfd_create(TimerfdClockId::Realtime, TimerfdFlags::CLOEXEC) else {
            return false;
        };
        if arm(&fd).is_err() {
            return false;
        }
        let watch = move || {
            let mut buf = [0u8; 8];
            loop {
                match rustix::io::read(&fd, &mut buf) {
                    Err(rustix::io::Errno::INTR) => continue,
                    // Re-armed before counting: a step after the count is
                    // then reported again, one before it is covered by it.
                    // (`Ok`, the timer's end, would mean a clock past 2255:
                    // stop rather than spin.)
                    Err(rustix::io::Errno::CANCELED) if arm(&fd).is_ok() => {
                        WALL_STEPS.fetch_add(1, Ordering::Release);
                    }
                    _ => break,
                }
            }
            // Cannot watch any more: count a step, which retires every
            // stored second word. New ones would not be retired by the
            // next step, so the caches that hold this watcher fall back
            // to the coarse read for good.
            NO_WATCH.store(true, Ordering::Release);
            WALL_STEPS.fetch_add(1, Ordering::Release);
        };
        std::thread::Builder::new()
            .name("embercache-clock".into())
            .spawn(watch)
            .is_ok()
    })
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn watch_wall_steps() -> bool {
    false
}

/// A clock that only moves when told to. Clones share the same time.
///
/// ```
/// use embercache::ManualClock;
/// use std::time::Duration;
/// let clock = ManualClock::new(1_700_000_000_000);
/// clock.advance(Duration::from_secs(5)); // both clocks move
/// clock.jump_wall(-3_600_000); // only the wall clock moves (an NTP step)
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    wall: Arc<AtomicU64>,
    mono: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock whose wall time is `wall_ms` (unix milliseconds).
    pub fn new(wall_ms: u64) -> Self {
        ManualClock {
            wall: Arc::new(AtomicU64::new(wall_ms)),
            mono: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves both the wall and the monotonic clock forward: time passes.
    pub fn advance(&self, by: std::time::Duration) {
        let ms = by.as_millis() as u64;
        // Monotonic first: `EngineTime` reads the wall clock first, so a
        // reader that sees the new wall time also sees the new monotonic
        // time, and never mistakes this advance for a forward wall jump.
        self.mono.fetch_add(ms, Ordering::SeqCst);
        self.wall.fetch_add(ms, Ordering::SeqCst);
    }

    /// Steps only the wall clock by `delta_ms` (negative = backwards), as an
    /// operator or NTP would. The monotonic clock does not move.
    pub fn jump_wall(&self, delta_ms: i64) {
        let cur = self.wall.load(Ordering::SeqCst);
        self.wall
            .store(cur.saturating_add_signed(delta_ms), Ordering::SeqCst);
    }

    /// The current wall time in unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.wall.load(Ordering::SeqCst)
    }
}

impl Clock for ManualClock {
    fn wall_ms(&self) -> u64 {
        self.wall.load(Ordering::SeqCst)
    }
    fn monotonic_ms(&self) -> u64 {
        self.mono.load(Ordering::SeqCst)
    }
}

/// How long past a due wall check [`EngineTime::surely_before`] still
/// answers from the coarse clock: one precise read (and wall check) per
/// this many ms keeps hot hits off the precise clock.
pub(crate) const COARSE_WALL_SLACK_MS: u64 = 10;

/// The engine's notion of "now" in unix milliseconds: never goes backwards,
/// follows forward wall-clock jumps, and counts monotonic time through
/// backward ones. One atomic, no lock: `now = monotonic + offset`, where the
/// offset only grows.
#[derive(Debug)]
pub(crate) struct EngineTime {
    clock: Arc<dyn Clock>,
    offset: AtomicI64,
    /// `Clock::wall_check_interval_ms`, read once.
    wall_every: u64,
    /// Monotonic ms from which the next read also looks at the wall clock.
    next_wall_check: AtomicU64,
    /// The coarse clock's lag when `clock` is the [`SystemClock`] with a
    /// usable coarse clock: [`Self::surely_before`] then reads it straight
    /// from the vDSO instead of through the trait object.
    system_lag: Option<u64>,
    /// Whether the system clock's cheap second read can be used: `time()`
    /// is the vDSO's on glibc, and the thread that counts steps of the
    /// wall clock runs ([`watch_wall_steps`]).
    #[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
    system_seconds: bool,
    /// The second word: the wall clock's second `s` (bits 32..), the step
    /// count `c` (bits 16..32) and `r` (bits 0..16). While the second read
    /// gives `(s, c)`, engine time is below `s × 1000 + r`. [`NO_SECOND`]:
    /// none yet.
    /// See [`Self::surely_before`].
    second: AtomicU64,
}

impl EngineTime {
    /// Starts engine time at `max(wall, floor_ms)`; `floor_ms` is the last
    /// engine time persisted before a restart (0 when none).
    pub(crate) fn new(clock: Arc<dyn Clock>, floor_ms: u64) -> Self {
        Self::build(clock, floor_ms, None)
    }

    /// [`Self::new`] on a [`SystemClock`]. A hot hit on an entry with a
    /// TTL reads the coarse clock without the call through `dyn Clock`:
    /// W8's TTL cost ~4 % against ~7 % through the trait object (`probe
    /// ttl3`; a clock read in one load would cost ~2 %).
    pub(crate) fn system(floor_ms: u64) -> Self {
        let clock = SystemClock::default();
        let lag = clock.coarse_lag_ms;
        let mut t = Self::build(Arc::new(clock), floor_ms, lag);
        t.system_seconds = lag.is_some() && watch_wall_steps();
        t
    }

    fn build(clock: Arc<dyn Clock>, floor_ms: u64, system_lag: Option<u64>) -> Self {
        let start = clock.wall_ms().max(floor_ms);
        let offset = start as i64 - clock.monotonic_ms() as i64;
        EngineTime {
            wall_every: clock.wall_check_interval_ms(),
            clock,
            offset: AtomicI64::new(offset),
            next_wall_check: AtomicU64::new(0),
            system_lag,
            system_seconds: false,
            second: AtomicU64::new(NO_SECOND),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        if self.wall_every > 0 {
            // The common case: the monotonic clock alone. Between two wall
            // checks engine time runs with it, as it would anyway unless
            // the wall clock stepped forward (followed at the next check).
            let mono = self.clock.monotonic_ms();
            // Acquire: pairs with the Release in `now_checked`, so an offset
            // raised by the check that moved `next_wall_check` is seen here.
            if mono < self.next_wall_check.load(Ordering::Acquire) {
                return (mono as i64 + self.offset.load(Ordering::Relaxed)).max(0) as u64;
            }
        }
        self.now_checked()
    }

    /// Whether engine time is surely before `t` (an entry expiring at `t`
    /// is fresh), told without a precise read; `false` means "read
    /// `now_ms`", not "expired".
    ///
    /// The cheapest way first: while the wall clock's whole second (and
    /// its step count) reads as it did at the last coarse read, engine
    /// time is below the bound that read stored ([`Self::note_second`]);
    /// on the system clock this is `time()`, a call into the vDSO about a
    /// quarter the cost of the coarse clock's read (W8). Otherwise the
    /// coarse clock: the precise monotonic time is at most `coarse + lag`,
    /// so the answer is never wrong for `now_ms` with the current offset.
    /// That way does not look at the wall clock, but answers only within
    /// [`COARSE_WALL_SLACK_MS`] of the time a wall check was due: past it,
    /// the caller's precise read makes the check. A forward wall-clock step
    /// is thus followed within `wall_check_interval_ms +
    /// COARSE_WALL_SLACK_MS + lag` on a path of hot hits (under 40 ms for
    /// `SystemClock`), and at once where the clock has no lag (tests); the
    /// second's bound stays right across such a step (it also bounds the
    /// wall clock), it just does not move engine time.
    #[inline]
    pub(crate) fn surely_before(&self, t: u64) -> bool {
        let second = match self.system_lag {
            // The system clock, read without the call through `dyn Clock`.
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            Some(_) if self.system_seconds => Some(system_seconds()),
            Some(_) => None,
            None if self.wall_every == 0 => return false,
            None => self.clock.wall_seconds_coarse(),
        };
        if let Some((s, steps)) = second
            && let Some(sure) = word_says(self.second.load(Ordering::Relaxed), s, steps, t)
        {
            // Closer to the bound: the coarse read may still tell.
            return sure || self.surely_before_coarse(t, None);
        }
        self.surely_before_coarse(t, second)
    }

    /// [`Self::surely_before`] from the coarse clock; stores the bound for
    /// the wall clock's second `second` read just before.
    ///
    /// Plain sums, as in `now_ms` and `now_checked`: clock readings are ms
    /// since some origin, far from overflowing. A negative `now_max` (an
    /// engine time before 1970) reads as huge; either answer is then right,
    /// since every `t` is at least 0.
    ///
    /// Cold: out of the hot get's way. A build where it was not ran gets
    /// *without* TTLs ~20 % slower in W8 (a code-layout effect; see
    /// docs/BENCHMARKS.md, W1).
    #[cold]
    fn surely_before_coarse(&self, t: u64, second: Option<(u64, u16)>) -> bool {
        let (coarse, lag) = match self.system_lag {
            #[cfg(target_os = "linux")]
            Some(lag) => (coarse_ms(), lag),
            _ => self.clock.monotonic_coarse_ms(),
        };
        // Acquire: as in `now_ms`, an offset raised by the check that moved
        // `next_wall_check` is seen here.
        let due = self.next_wall_check.load(Ordering::Acquire);
        if coarse >= due + COARSE_WALL_SLACK_MS {
            return false;
        }
        let now_max = (coarse + lag) as i64 + self.offset.load(Ordering::Relaxed);
        if let Some((s, steps)) = second
            && self.steps_counted()
        {
            self.note_second(s, steps, now_max, lag);
        }
        (now_max as u64) < t
    }

    /// Whether wall-clock steps are still counted: always for a test
    /// clock, on the system clock while [`watch_wall_steps`]'s thread runs.
    /// Read after the step count, so a word stored with a count from
    /// before the watcher stopped is retired by its last count.
    fn steps_counted(&self) -> bool {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        if self.system_seconds {
            return !NO_WATCH.load(Ordering::Acquire);
        }
        true
    }

    /// Stores the bound on engine time while the wall clock's second
    /// reads `(s, steps)`, read before `now_max` (at least engine time,
    /// from the coarse clock). Why it holds, from the moment `s` was read
    /// until the second read changes: the wall clock is then under
    /// `(s + 1) × 1000 + lag` (`s` is its second at the kernel's last tick,
    /// which is at most `lag` old), and was at least `s × 1000` when `s`
    /// was read, so less than `1000 + lag` ms of wall-clock time passes.
    /// Monotonic time passes as much, less any forward step and plus any
    /// backward step of the wall clock (both are slewed alike), so engine
    /// time stays under `now_max + 1000 + lag + back` while its offset
    /// holds; where a wall check raises the offset to follow a forward
    /// step, engine time is the wall clock's then, under `(s + 1) × 1000 +
    /// lag + back`. `back` ([`STEP_BACK_MS`]) covers one backward step
    /// of up to a second not counted in `steps`; every other one must be
    /// (the watcher counts every step the kernel reports). A bound more than 65 s
    /// past `s × 1000` (engine time ahead of the wall clock after a
    /// backward step) is not stored: the second's way is then not taken.
    fn note_second(&self, s: u64, steps: u16, now_max: i64, lag: u64) {
        if s >= 1 << 32 {
            // Past 2106, or a negative `time()` (which reads as huge): the
            // coarse read answers.
            return;
        }
        let (s_ms, lag) = (s as i64 * 1000, lag as i64);
        let bound = (now_max + 1000 + lag).max(s_ms + 1000 + lag) + STEP_BACK_MS;
        let r = bound - s_ms;
        if (0..=0xffff).contains(&r) {
            let w = s << 32 | u64::from(steps) << 16 | r as u64;
            self.second.store(w, Ordering::Relaxed);
        }
    }

    /// Engine time from both clocks; follows a forward wall-clock jump.
    fn now_checked(&self) -> u64 {
        // Wall clock first, then monotonic: time that passes between the two
        // reads (a preemption, or a `ManualClock::advance` on another
        // thread) then makes `wall - mono` smaller, never larger. Read the
        // other way round it looked like a forward wall jump, and the offset,
        // which only grows, kept engine time ahead of the wall clock for
        // good: entries expired early, and after a restart (which starts
        // from the wall clock) lived that much longer than their TTL.
        let wall = self.clock.wall_ms() as i64;
        let mono = self.clock.monotonic_ms() as i64;
        let engine = mono + self.offset.load(Ordering::Acquire);
        let now = if wall > engine {
            // Forward jump (or drift): follow the wall clock.
            self.offset.fetch_max(wall - mono, Ordering::AcqRel);
            wall
        } else {
            engine
        };
        // Only after the offset: a fast-path read that sees the new check
        // time must also see the raised offset, or engine time would go
        // back across threads by the whole step.
        if self.wall_every > 0 {
            self.next_wall_check
                .fetch_max(mono as u64 + self.wall_every, Ordering::Release);
        }
        now.max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn backward_jump_keeps_counting() {
        let c = ManualClock::new(1_000_000);
        let t = EngineTime::new(Arc::new(c.clone()), 0);
        assert_eq!(t.now_ms(), 1_000_000);
        c.jump_wall(-500_000);
        assert_eq!(t.now_ms(), 1_000_000);
        c.advance(Duration::from_millis(10));
        assert_eq!(t.now_ms(), 1_000_010);
    }

    /// A clock on which, while `busy`, time passes between any two reads,
    /// as when the reading thread is preempted or another thread advances a
    /// `ManualClock` in the middle of `now_ms`.
    #[derive(Debug)]
    struct BusyClock {
        inner: ManualClock,
        busy: Arc<std::sync::atomic::AtomicBool>,
    }

    impl BusyClock {
        fn tick(&self) {
            if self.busy.load(Ordering::SeqCst) {
                self.inner.advance(Duration::from_millis(100));
            }
        }
    }

    impl Clock for BusyClock {
        fn wall_ms(&self) -> u64 {
            let w = self.inner.wall_ms();
            self.tick();
            w
        }
        fn monotonic_ms(&self) -> u64 {
            let m = self.inner.monotonic_ms();
            self.tick();
            m
        }
    }

    #[test]
    fn time_passing_during_a_read_is_not_a_forward_jump() {
        let c = ManualClock::new(1_000_000);
        let busy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let t = EngineTime::new(
            Arc::new(BusyClock {
                inner: c.clone(),
                busy: busy.clone(),
            }),
            0,
        );
        for _ in 0..10 {
            t.now_ms();
        }
        busy.store(false, Ordering::SeqCst);
        assert_eq!(
            t.now_ms(),
            c.now_ms(),
            "engine time drifted from the wall clock"
        );
    }

    #[test]
    fn forward_jump_is_followed() {
        let c = ManualClock::new(1_000_000);
        let t = EngineTime::new(Arc::new(c.clone()), 0);
        c.jump_wall(3_600_000);
        assert_eq!(t.now_ms(), 4_600_000);
        c.advance(Duration::from_millis(1));
        assert_eq!(t.now_ms(), 4_600_001);
    }

    /// A manual clock that, like `SystemClock`, asks to be looked at only
    /// once per ms of monotonic time.
    #[derive(Debug)]
    struct Lazy(ManualClock);

    impl Clock for Lazy {
        fn wall_ms(&self) -> u64 {
            self.0.wall_ms()
        }
        fn monotonic_ms(&self) -> u64 {
            self.0.monotonic_ms()
        }
        fn wall_check_interval_ms(&self) -> u64 {
            1
        }
    }

    #[test]
    fn a_lazy_wall_check_follows_a_forward_jump_within_its_interval() {
        let c = ManualClock::new(1_000_000);
        let t = EngineTime::new(Arc::new(Lazy(c.clone())), 0);
        assert_eq!(t.now_ms(), 1_000_000);
        c.jump_wall(3_600_000);
        // Not looked at yet: engine time runs on the monotonic clock.
        assert_eq!(t.now_ms(), 1_000_000);
        c.advance(Duration::from_millis(1));
        assert_eq!(t.now_ms(), 4_600_001);
        c.jump_wall(-10_000);
        c.advance(Duration::from_millis(5));
        assert_eq!(t.now_ms(), 4_600_006, "a backward step is still ignored");
    }

    /// A clock whose coarse reads trail the precise one by `behind` ms,
    /// within a declared lag, as the kernel's tick clock does. With
    /// `seconds`, it also has the second read, whose step count
    /// `count_step` moves.
    #[derive(Debug)]
    struct Coarse {
        c: ManualClock,
        behind: AtomicU64,
        lag: u64,
        seconds: bool,
        steps: std::sync::atomic::AtomicU16,
        coarse_reads: AtomicU64,
    }
    impl Coarse {
        fn new(behind: u64, lag: u64, seconds: bool) -> Arc<Self> {
            Self::at(1_000_000, behind, lag, seconds)
        }
        fn at(wall_ms: u64, behind: u64, lag: u64, seconds: bool) -> Arc<Self> {
            Arc::new(Coarse {
                c: ManualClock::new(wall_ms),
                behind: AtomicU64::new(behind),
                lag,
                seconds,
                steps: Default::default(),
                coarse_reads: AtomicU64::new(0),
            })
        }
        /// A step of the wall clock, counted as the system clock's
        /// watcher counts it.
        fn count_step(&self) {
            self.steps.fetch_add(1, Ordering::SeqCst);
        }
        fn coarse_reads(&self) -> u64 {
            self.coarse_reads.load(Ordering::SeqCst)
        }
    }
    impl Clock for Coarse {
        fn wall_ms(&self) -> u64 {
            self.c.wall_ms()
        }
        fn monotonic_ms(&self) -> u64 {
            self.c.monotonic_ms()
        }
        fn wall_check_interval_ms(&self) -> u64 {
            1
        }
        fn monotonic_coarse_ms(&self) -> (u64, u64) {
            self.coarse_reads.fetch_add(1, Ordering::SeqCst);
            let m = self.c.monotonic_ms();
            (
                m.saturating_sub(self.behind.load(Ordering::SeqCst)),
                self.lag,
            )
        }
        fn wall_seconds_coarse(&self) -> Option<(u64, u16)> {
            let steps = self.steps.load(Ordering::SeqCst);
            let w = self.c.wall_ms();
            let s = w.saturating_sub(self.behind.load(Ordering::SeqCst)) / 1000;
            self.seconds.then_some((s, steps))
        }
    }

    /// A step of the wall clock in the proptest: none, forward (any size,
    /// not counted), or back (counted, as the watcher counts every step
    /// the kernel reports), by under a second or by more.
    fn wall_step() -> impl proptest::strategy::Strategy<Value = i64> {
        use proptest::prelude::*;
        prop_oneof![
            6 => Just(0i64),
            1 => 1i64..5_000,
            1 => -1_000i64..0,
            1 => -100_000i64..-1_000,
        ]
    }

    /// Time passing in the proptest: mostly a few ms (the coarse way
    /// answers only near a wall check), sometimes most of a second.
    fn time_step() -> impl proptest::strategy::Strategy<Value = u64> {
        use proptest::prelude::*;
        prop_oneof![3 => 0u64..12, 1 => 0u64..1_000]
    }

    proptest::proptest! {
        /// `surely_before` never calls an entry fresh that `now_ms` read
        /// right after would call expired, whatever the coarse reads'
        /// delay within their lag, as time passes and the wall clock
        /// steps, with the second read or without it. A forward step that
        /// `now_ms` follows only then may be missed by the coarse way's
        /// answer (it is followed within 40 ms, see `surely_before`), not
        /// by the second's bound.
        #[test]
        fn surely_before_never_contradicts_now(
            seconds: bool,
            steps in proptest::collection::vec(
                (wall_step(), time_step(), 0u64..=8, 0u64..8_000), 1..300),
        ) {
            let clock = Coarse::new(0, 8, seconds);
            let t = EngineTime::new(clock.clone(), 0);
            let mut before = t.now_ms();
            for (step, advance, behind, ahead) in steps {
                // The step first, then time: a step back and the time to
                // come back to the same second can pass between two reads.
                clock.c.jump_wall(step);
                if step < 0 {
                    clock.count_step();
                }
                clock.c.advance(Duration::from_millis(advance));
                clock.behind.store(behind, Ordering::SeqCst);
                // Around engine time as last read: the precise read after
                // the answer follows any forward step, the answer may not.
                let probe = before + ahead;
                let word = t.second.load(Ordering::SeqCst);
                let by_word = clock
                    .wall_seconds_coarse()
                    .and_then(|(s, n)| word_says(word, s, n, probe))
                    == Some(true);
                let offset = t.offset.load(Ordering::SeqCst);
                let sure = t.surely_before(probe);
                let now = t.now_ms();
                let followed = (t.offset.load(Ordering::SeqCst) - offset) as u64;
                if by_word {
                    proptest::prop_assert!(sure);
                    proptest::prop_assert!(now < probe, "word: {} >= {}", now, probe);
                } else {
                    proptest::prop_assert!(!sure || now - followed < probe, "{} >= {}", now, probe);
                }
                before = now;
            }
        }
    }

    #[test]
    fn the_second_read_answers_without_the_coarse_clock_until_it_changes() {
        let clock = Coarse::new(3, 4, true);
        clock.c.advance(Duration::from_millis(100));
        let t = EngineTime::new(clock.clone(), 0);
        assert_eq!(t.now_ms(), 1_000_100);
        // The first answer reads the coarse clock (97 ms, lag 4: engine
        // time at most 1_000_101) and stores the bound for second 1000
        // (the wall clock 3 ms behind): 1_000_101 + a second + the lag +
        // a second's step back.
        assert!(t.surely_before(1_010_000));
        assert_eq!(clock.coarse_reads(), 1);
        for _ in 0..3 {
            assert!(t.surely_before(1_010_000));
            assert!(t.surely_before(1_002_105), "under the bound: coarsely");
        }
        assert!(!t.surely_before(1_000_101), "within the lag: precisely");
        assert_eq!(clock.coarse_reads(), 5, "only under the bound");
        // Within the same second, time passes: the bound still holds.
        clock.c.advance(Duration::from_millis(890));
        assert!(t.surely_before(1_002_106));
        assert_eq!(clock.coarse_reads(), 5);
        // The next second: read the coarse clock again, once (after a
        // precise read, as the engine makes when the coarse way says no:
        // that way answers only near a wall check).
        clock.c.advance(Duration::from_millis(20));
        t.now_ms();
        assert!(t.surely_before(1_010_000));
        assert!(t.surely_before(1_010_000));
        assert_eq!(clock.coarse_reads(), 6);
        // A counted step retires the word even in the same second.
        clock.count_step();
        assert!(t.surely_before(1_010_000));
        assert!(t.surely_before(1_010_000));
        assert_eq!(clock.coarse_reads(), 7);
        // Engine time far ahead of the wall clock (a backward step of an
        // hour, counted): no word is stored, every answer reads coarsely.
        clock.c.jump_wall(-3_600_000);
        clock.count_step();
        clock.c.advance(Duration::from_millis(5));
        t.now_ms();
        for _ in 0..3 {
            assert!(t.surely_before(1_010_000));
        }
        assert_eq!(clock.coarse_reads(), 10);
    }

    /// One uncounted step back of a second (a leap second the watcher
    /// missed): the wall clock reads the stored second twice over, and the
    /// bound still holds.
    #[test]
    fn the_second_bound_holds_across_one_uncounted_leap_second() {
        let clock = Coarse::new(0, 4, true);
        let t = EngineTime::new(clock.clone(), 0);
        // Stored at the second's start: engine time under 1_002_008.
        assert!(t.surely_before(1_100_000));
        clock.c.advance(Duration::from_millis(999));
        clock.c.jump_wall(-1_000);
        clock.c.advance(Duration::from_millis(999));
        // The wall clock reads second 1000 again; engine time is 1_001_998.
        assert_eq!(clock.wall_seconds_coarse(), Some((1000, 0)));
        let now = t.now_ms();
        assert_eq!(now, 1_001_998);
        assert!(!t.surely_before(now), "an entry expiring now is not fresh");
        assert!(t.surely_before(1_002_009));
    }

    /// A forward step of the wall clock (not counted) that engine time
    /// follows only after the bound was stored: the bound covers the wall
    /// clock's second too, so it stays right for the time followed.
    #[test]
    fn the_second_bound_holds_across_a_forward_step_followed_later() {
        let clock = Coarse::new(0, 4, true);
        let t = EngineTime::new(clock.clone(), 0);
        assert_eq!(t.now_ms(), 1_000_000);
        clock.c.jump_wall(2_500);
        clock.c.advance(Duration::from_millis(5));
        // Answered by the coarse clock before the step is followed
        // (engine time at most 1_000_009), stored for second 1002: the
        // wall clock's term (1_003_004) is the larger.
        assert!(t.surely_before(1_100_000));
        assert_eq!(t.now_ms(), 1_002_505, "followed");
        clock.c.advance(Duration::from_millis(490));
        assert_eq!(clock.wall_seconds_coarse(), Some((1002, 0)));
        let now = t.now_ms();
        assert_eq!(now, 1_002_995);
        assert!(!t.surely_before(now), "an entry expiring now is not fresh");
        assert!(t.surely_before(1_004_005));
    }

    /// A reading of second 0 with no steps is not taken for a stored
    /// word (the empty word is not 0).
    #[test]
    fn no_word_is_read_before_one_is_stored() {
        let clock = Coarse::at(0, 0, 4, true);
        let t = EngineTime::new(clock.clone(), 0);
        clock.c.advance(Duration::from_millis(500));
        assert_eq!(clock.wall_seconds_coarse(), Some((0, 0)));
        assert!(!t.surely_before(100), "expired at 100, engine time 500");
    }

    #[test]
    fn surely_before_answers_from_the_coarse_clock_and_hands_back_near_expiry() {
        let clock = Coarse::new(3, 4, false);
        clock.c.advance(Duration::from_millis(100));
        let t = EngineTime::new(clock.clone(), 0);
        assert_eq!(t.now_ms(), 1_000_100);
        // Coarse 97 + lag 4: engine time is at most 1_000_101.
        assert!(t.surely_before(1_000_102));
        assert!(
            !t.surely_before(1_000_101),
            "within the lag: read precisely"
        );
        // A forward wall step is not seen by the coarse path until the
        // slack past the due wall check runs out; then it hands back.
        clock.c.jump_wall(60_000);
        assert!(t.surely_before(1_000_200));
        clock
            .c
            .advance(Duration::from_millis(1 + COARSE_WALL_SLACK_MS + 3));
        assert!(!t.surely_before(1_000_200));
        assert_eq!(t.now_ms(), 1_060_100 + 1 + COARSE_WALL_SLACK_MS + 3);
        assert!(!t.surely_before(1_000_200));
        // A clock without lag (ManualClock) never takes the coarse path.
        let m = EngineTime::new(Arc::new(ManualClock::new(1_000)), 0);
        assert!(!m.surely_before(u64::MAX - 1));
    }

    /// The default clock's direct coarse read agrees with the precise one:
    /// an entry that expires now or earlier is never called fresh, one far
    /// ahead is, without a precise read.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_system_clock_read_directly_never_calls_an_expired_entry_fresh() {
        let t = EngineTime::system(0);
        let Some(lag) = t.system_lag else {
            // No usable coarse clock here: `surely_before` always says
            // "read precisely", which the next assertions would not show.
            return;
        };
        #[cfg(target_env = "gnu")]
        assert!(t.system_seconds, "the wall-step watcher runs");
        for _ in 0..1000 {
            let now = t.now_ms();
            assert!(!t.surely_before(now), "an entry expiring now is not fresh");
            assert!(!t.surely_before(now.saturating_sub(1_000)));
        }
        // The wall check is due within 1 ms; the coarse path answers for
        // `COARSE_WALL_SLACK_MS` past it.
        let now = t.now_ms();
        assert!(t.surely_before(now + lag + 60_000), "far ahead is fresh");
    }

    /// The watcher counts a step of the wall clock. Ignored: it sets the
    /// system clock (to the time it reads, a step of microseconds), which
    /// needs `CAP_SYS_TIME`; run by hand with `cargo test --lib --
    /// --ignored wall_steps_are_counted`.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    #[ignore]
    fn wall_steps_are_counted() {
        use rustix::time::{ClockId, clock_gettime, clock_settime};
        assert!(watch_wall_steps());
        let before = WALL_STEPS.load(Ordering::SeqCst);
        clock_settime(ClockId::Realtime, clock_gettime(ClockId::Realtime)).expect("settime");
        let t = std::time::Instant::now();
        while WALL_STEPS.load(Ordering::SeqCst) == before {
            assert!(t.elapsed() < Duration::from_secs(5), "step not counted");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!NO_WATCH.load(Ordering::SeqCst));
    }

    #[test]
    fn restart_floor_wins_over_a_wall_clock_that_went_back() {
        let c = ManualClock::new(1_000_000);
        let t = EngineTime::new(Arc::new(c.clone()), 2_000_000);
        assert_eq!(t.now_ms(), 2_000_000);
        c.advance(Duration::from_millis(5));
        assert_eq!(t.now_ms(), 2_000_005);
    }
}
