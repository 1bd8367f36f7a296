//! Small synchronisation helpers shared across the crate, and (with the `lock-count`
//! feature) the counters that say how many locks and wake-ups the messenger costs.
//!
//! Every acquisition of a `Mutex` or `RwLock` of this crate, every `Condvar` wait and
//! notify, and every eventfd write goes through a helper here. Without the feature the
//! helpers are exactly the calls they wrap (inlined, no counting, no caller location
//! passed). With it, each one adds to a process-wide total and to the count of its call
//! site (`#[track_caller]`: the line that asked for the lock, not this file), so a test
//! can tell which locks a message takes; see [`counts`] and [`sites`].

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

#[cfg(feature = "lock-count")]
pub use count::{counts, locks_taken, sites, wakeups_taken, Kind, SiteCount, SyncCounts};

/// Locks `m`, ignoring poisoning. State behind our mutexes is only changed in short
/// critical sections that leave it consistent, so a panic on another thread (a failing
/// dispatcher, a test thread) must not take the messenger down with it.
#[inline]
#[cfg_attr(feature = "lock-count", track_caller)]
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    #[cfg(feature = "lock-count")]
    count::record(Kind::Mutex, std::panic::Location::caller());
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Takes `l` for reading, ignoring poisoning (for the reason [`lock`] gives).
#[inline]
#[cfg_attr(feature = "lock-count", track_caller)]
pub(crate) fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    #[cfg(feature = "lock-count")]
    count::record(Kind::Read, std::panic::Location::caller());
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// Takes `l` for writing, ignoring poisoning (for the reason [`lock`] gives).
#[inline]
#[cfg_attr(feature = "lock-count", track_caller)]
pub(crate) fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    #[cfg(feature = "lock-count")]
    count::record(Kind::Write, std::panic::Location::caller());
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// Blocks on `c` until notified, giving up `g` meanwhile; ignores poisoning. Counted as
/// one lock (the mutex is taken again on the way out).
#[inline]
#[cfg_attr(feature = "lock-count", track_caller)]
pub(crate) fn wait<'a, T>(c: &Condvar, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    #[cfg(feature = "lock-count")]
    count::record(Kind::CondvarWait, std::panic::Location::caller());
    c.wait(g).unwrap_or_else(PoisonError::into_inner)
}

/// As [`wait`], for at most `d`.
#[inline]
#[cfg_attr(feature = "lock-count", track_caller)]
pub(crate) fn wait_timeout<'a, T>(c: &Condvar, g: MutexGuard<'a, T>, d: Duration) -> MutexGuard<'a, T> {
    #[cfg(feature = "lock-count")]
    count::record(Kind::CondvarWait, std::panic::Location::caller());
    c.wait_timeout(g, d).unwrap_or_else(PoisonError::into_inner).0
}

/// `c.notify_one()`, counted as a wake-up. (std's futex condvar makes a `futex_wake`
/// system call on every notify, whether or not a thread waits.)
#[inline]
#[cfg_attr(feature = "lock-count", track_caller)]
pub(crate) fn notify_one(c: &Condvar) {
    #[cfg(feature = "lock-count")]
    count::record(Kind::Notify, std::panic::Location::caller());
    c.notify_one();
}

/// `c.notify_all()`, counted as a wake-up.
#[inline]
#[cfg_attr(feature = "lock-count", track_caller)]
pub(crate) fn notify_all(c: &Condvar) {
    #[cfg(feature = "lock-count")]
    count::record(Kind::Notify, std::panic::Location::caller());
    c.notify_all();
}

/// Counts a wake-up made some other way than a condvar: `Kind::EventFd` (an eventfd
/// write, a system call) or `Kind::TaskWake` (a `std::task::Waker` woken). Nothing
/// without the feature.
#[cfg(feature = "lock-count")]
#[inline]
#[track_caller]
pub(crate) fn woke(kind: Kind) {
    count::record(kind, std::panic::Location::caller());
}

/// Without the feature: nothing (the argument is a unit-like stand-in so call sites
/// read the same either way).
#[cfg(not(feature = "lock-count"))]
#[inline(always)]
pub(crate) fn woke(_kind: Kind) {}

/// What [`woke`] is told without the feature (nothing is counted).
#[cfg(not(feature = "lock-count"))]
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    EventFd,
    TaskWake,
}

#[cfg(feature = "lock-count")]
mod count {
    use std::panic::Location;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    /// What a counted site does.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    #[non_exhaustive]
    pub enum Kind {
        /// A `Mutex` locked.
        Mutex,
        /// An `RwLock` taken for reading.
        Read,
        /// An `RwLock` taken for writing.
        Write,
        /// A `Condvar` wait: the thread sleeps, and retakes the mutex when woken.
        CondvarWait,
        /// A `Condvar` notified (one or all).
        Notify,
        /// An eventfd written (a system call that wakes a worker's driver).
        EventFd,
        /// A `std::task::Waker` woken (a task or a thread waiting on a `Delivery`).
        TaskWake,
    }

    impl Kind {
        /// True for the kinds that wake another thread (counted in
        /// [`SyncCounts::wakeups`]); the others are locks ([`SyncCounts::locks`]).
        pub fn is_wakeup(self) -> bool {
            matches!(self, Kind::Notify | Kind::EventFd | Kind::TaskWake)
        }
    }

    /// Process-wide totals since the start (all threads).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SyncCounts {
        /// Mutex locks, RwLock reads and writes, and Condvar waits (each retakes its
        /// mutex).
        pub locks: u64,
        /// Condvar notifies, eventfd writes and task wakes.
        pub wakeups: u64,
    }

    impl SyncCounts {
        /// What was counted between `earlier` and `self`.
        pub fn since(self, earlier: SyncCounts) -> SyncCounts {
            SyncCounts {
                locks: self.locks.wrapping_sub(earlier.locks),
                wakeups: self.wakeups.wrapping_sub(earlier.wakeups),
            }
        }
    }

    /// How often one call site was counted.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct SiteCount {
        /// Source file of the call site (as `file!()` gives it).
        pub file: &'static str,
        /// Line of the call site.
        pub line: u32,
        /// Column of the call site.
        pub column: u32,
        /// What the site does.
        pub kind: Kind,
        /// Times counted.
        pub count: u64,
    }

    static LOCKS: AtomicU64 = AtomicU64::new(0);
    static WAKEUPS: AtomicU64 = AtomicU64::new(0);
    /// Counts that found no room in `TABLE` (more distinct sites than slots).
    static UNPLACED: AtomicU64 = AtomicU64::new(0);

    /// Slots for distinct call sites; the crate has about a hundred.
    const SLOTS: usize = 1024;

    /// One call site and its count. The key is set once and never changes, so the
    /// count of a known site is one atomic load to find and one add: no lock and no
    /// allocation (a lock here would be counted, and contended, on every lock).
    struct Slot {
        key: OnceLock<(&'static Location<'static>, Kind)>,
        count: AtomicU64,
    }

    static TABLE: [Slot; SLOTS] = [const { Slot { key: OnceLock::new(), count: AtomicU64::new(0) } }; SLOTS];

    /// The same site: compared by value, as each codegen unit may have its own copy of
    /// a location.
    fn same(a: &Location<'_>, b: &Location<'_>) -> bool {
        std::ptr::eq(a, b) || (a.line() == b.line() && a.column() == b.column() && a.file() == b.file())
    }

    fn slot_of(loc: &Location<'_>, kind: Kind) -> usize {
        let h =
            (u64::from(loc.line()) << 32) ^ (u64::from(loc.column()) << 16) ^ (loc.file().len() as u64) ^ kind as u64;
        // Fibonacci hashing: the top bits index the table.
        (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOTS.trailing_zeros())) as usize
    }

    /// Counts one `kind` at `loc`.
    #[inline(never)]
    pub(crate) fn record(kind: Kind, loc: &'static Location<'static>) {
        let total = if kind.is_wakeup() { &WAKEUPS } else { &LOCKS };
        total.fetch_add(1, Ordering::Relaxed);
        let start = slot_of(loc, kind);
        for i in 0..SLOTS {
            let slot = &TABLE[(start + i) % SLOTS];
            // Claims an empty slot for this site; a slot another thread claims first
            // for another site sends us on to the next one.
            let &(l, k) = slot.key.get_or_init(|| (loc, kind));
            if k == kind && same(l, loc) {
                slot.count.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        UNPLACED.fetch_add(1, Ordering::Relaxed);
    }

    /// Locks and wake-ups counted so far, all threads.
    pub fn counts() -> SyncCounts {
        SyncCounts { locks: locks_taken(), wakeups: wakeups_taken() }
    }

    /// Locks taken so far (see [`SyncCounts::locks`]).
    pub fn locks_taken() -> u64 {
        LOCKS.load(Ordering::Relaxed)
    }

    /// Wake-ups made so far (see [`SyncCounts::wakeups`]).
    pub fn wakeups_taken() -> u64 {
        WAKEUPS.load(Ordering::Relaxed)
    }

    /// Every call site counted so far with its count, most counted first (ties by
    /// file and line). Allocates: take it outside a window that must not.
    pub fn sites() -> Vec<SiteCount> {
        let mut out: Vec<SiteCount> = Vec::new();
        for slot in &TABLE {
            let Some(&(loc, kind)) = slot.key.get() else { continue };
            let count = slot.count.load(Ordering::Relaxed);
            match out
                .iter_mut()
                .find(|s| s.kind == kind && s.line == loc.line() && s.column == loc.column() && s.file == loc.file())
            {
                Some(s) => s.count += count,
                None => out.push(SiteCount { file: loc.file(), line: loc.line(), column: loc.column(), kind, count }),
            }
        }
        let unplaced = UNPLACED.load(Ordering::Relaxed);
        if unplaced > 0 {
            // Not expected (the table has room for ten times the crate's sites), but
            // never silently dropped.
            out.push(SiteCount {
                file: "(sites beyond the table)",
                line: 0,
                column: 0,
                kind: Kind::Mutex,
                count: unplaced,
            });
        }
        out.sort_by(|a, b| {
            b.count.cmp(&a.count).then_with(|| (a.file, a.line, a.column).cmp(&(b.file, b.line, b.column)))
        });
        out
    }
}

#[cfg(all(test, feature = "lock-count"))]
mod tests {
    use super::*;

    /// The window's count at the sites of this file with `kind` (other tests of the
    /// process may count elsewhere meanwhile, never here).
    fn here(before: &[SiteCount], kind: Kind) -> Vec<(u32, u64)> {
        let mut out: Vec<(u32, u64)> = sites()
            .into_iter()
            .filter(|s| s.kind == kind && s.file.ends_with("sync.rs"))
            .map(|s| {
                let old = before.iter().find(|b| b.kind == s.kind && b.line == s.line && b.column == s.column);
                (s.line, s.count - old.map_or(0, |b| b.count))
            })
            .filter(|&(_, n)| n > 0)
            .collect();
        out.sort_unstable();
        out
    }

    #[test]
    fn every_acquisition_and_wake_is_counted_at_its_call_site() {
        let before = sites();
        let m = Mutex::new(0);
        let l = RwLock::new(0);
        let c = Condvar::new();
        let first = line!() + 2;
        for _ in 0..3 {
            *lock(&m) += 1;
        }
        *lock(&m) += 1;
        drop(read(&l));
        *write(&l) += 1;
        notify_one(&c);
        notify_all(&c);
        woke(Kind::TaskWake);
        let g = wait_timeout(&c, lock(&m), Duration::from_millis(1));
        drop(g);
        assert_eq!(here(&before, Kind::Mutex), [(first, 3), (first + 2, 1), (first + 8, 1)]);
        assert_eq!(here(&before, Kind::Read), [(first + 3, 1)]);
        assert_eq!(here(&before, Kind::Write), [(first + 4, 1)]);
        assert_eq!(here(&before, Kind::Notify), [(first + 5, 1), (first + 6, 1)]);
        assert_eq!(here(&before, Kind::TaskWake), [(first + 7, 1)]);
        assert_eq!(here(&before, Kind::CondvarWait), [(first + 8, 1)]);
        let now = counts();
        assert!(now.locks >= 7 && now.wakeups >= 3, "{now:?}");
        assert!(Kind::EventFd.is_wakeup() && !Kind::CondvarWait.is_wakeup());
    }
}
