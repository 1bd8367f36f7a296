//! The per-worker event loop: file (readiness) events, timers and cross-thread events.
//!
//! Modelled on Ceph's `EventCenter`: each worker thread owns one [`EventCenter`] on top
//! of an [`EventDriver`] supplied by its network stack (epoll for posix). Everything a
//! worker does runs as a callback from [`EventCenter::process_events`]. Other threads
//! reach a worker only by [`Submitter::submit`]ting a closure to it.
//!
//! A readiness source is an [`EventSource`]: a kernel descriptor the driver watches, or
//! a [`Token`] whose readiness a kernel-bypass stack posts to the center's
//! [`Readiness`] (no descriptor, no system call). Callbacks treat both alike.
//!
//! This module is public as the other half of the contract in [`crate::stack`]: a stack
//! crate gives each worker its [`EventDriver`] ([`EpollDriver`], or a [`PollingDriver`]
//! over its own [`CompletionSource`]) and registers its sockets' readiness here
//! ([`Readiness`], [`Token`], [`Registration`], [`EventSource`]). Changing these types is
//! changing what every stack implements.

mod driver;
mod epoll;
mod eventfd;
mod polling;
mod ready;

pub use driver::{EventDriver, Waker};
pub use epoll::{Epoll, EpollDriver};
pub use eventfd::EventFd;
pub use polling::{CompletionSource, PollingDriver};
pub use ready::{Parker, Readiness, Registration, Token};

use crate::sync;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::io;
use std::mem;
use std::ops::{BitAnd, BitOr, BitOrAssign, Sub};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// A set of readiness directions.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Interest(u8);

impl Interest {
    /// The empty set.
    pub const NONE: Interest = Interest(0);
    /// Readable (or EOF / error).
    pub const READABLE: Interest = Interest(1);
    /// Writable (or error).
    pub const WRITABLE: Interest = Interest(2);
    /// Readable and writable.
    pub const BOTH: Interest = Interest(3);

    /// True if every direction in `other` is in `self`.
    pub const fn contains(self, other: Interest) -> bool {
        self.0 & other.0 == other.0
    }

    /// True if `self` and `other` have a direction in common.
    pub const fn intersects(self, other: Interest) -> bool {
        self.0 & other.0 != 0
    }

    /// True for [`Interest::NONE`].
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// True if [`Interest::READABLE`] is in the set.
    pub const fn is_readable(self) -> bool {
        self.contains(Interest::READABLE)
    }

    /// True if [`Interest::WRITABLE`] is in the set.
    pub const fn is_writable(self) -> bool {
        self.contains(Interest::WRITABLE)
    }

    /// Directions in either set.
    pub const fn union(self, other: Interest) -> Interest {
        Interest(self.0 | other.0)
    }

    /// Directions in both sets.
    pub const fn intersection(self, other: Interest) -> Interest {
        Interest(self.0 & other.0)
    }

    /// Directions in `self` but not in `other`.
    pub const fn difference(self, other: Interest) -> Interest {
        Interest(self.0 & !other.0)
    }
}

impl BitOr for Interest {
    type Output = Interest;
    fn bitor(self, rhs: Interest) -> Interest {
        self.union(rhs)
    }
}

impl BitOrAssign for Interest {
    fn bitor_assign(&mut self, rhs: Interest) {
        *self = self.union(rhs);
    }
}

impl BitAnd for Interest {
    type Output = Interest;
    fn bitand(self, rhs: Interest) -> Interest {
        self.intersection(rhs)
    }
}

impl Sub for Interest {
    type Output = Interest;
    fn sub(self, rhs: Interest) -> Interest {
        self.difference(rhs)
    }
}

/// Where a socket's readiness comes from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EventSource {
    /// A kernel descriptor, watched by the driver (epoll).
    Fd(RawFd),
    /// A token whose readiness the stack posts to the center's [`Readiness`].
    Token(Token),
}

impl Hash for EventSource {
    // One word, so that the center's map hashes it in one multiply (see `IdHasher`).
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(match self {
            EventSource::Fd(fd) => u64::from(*fd as u32),
            EventSource::Token(t) => t.0 | 1 << 63,
        });
    }
}

/// A map keyed by our own ids (descriptors, tokens, connection numbers). They never
/// come from a peer, so a multiplicative hash is safe, and it costs a fraction of
/// SipHash on lookups made several times per event.
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Fibonacci hashing of a u64 id: spreads sequential ids over the high bits the table
/// probes with.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for our keys; fold anything else in for completeness.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl From<RawFd> for EventSource {
    fn from(fd: RawFd) -> Self {
        EventSource::Fd(fd)
    }
}

impl From<Token> for EventSource {
    fn from(t: Token) -> Self {
        EventSource::Token(t)
    }
}

impl fmt::Display for EventSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventSource::Fd(fd) => write!(f, "fd {fd}"),
            EventSource::Token(t) => write!(f, "token {}", t.0),
        }
    }
}

/// A source found ready.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FiredEvent {
    /// The descriptor or token.
    pub source: EventSource,
    /// The directions that are ready. Errors and hangups are reported as
    /// [`Interest::BOTH`] so that the owner meets them on its next read or write.
    pub mask: Interest,
}

/// Called when a source is ready, with the ready directions (never empty, and only
/// directions the source is currently registered for).
pub type FileCallback<C> = Rc<dyn Fn(&mut C, &mut EventCenter<C>, EventSource, Interest)>;
/// Called once when a timer expires.
pub type TimerCallback<C> = Box<dyn FnOnce(&mut C, &mut EventCenter<C>)>;
/// A closure sent to a center from any thread.
pub type ExternalEvent<C> = Box<dyn FnOnce(&mut C, &mut EventCenter<C>) + Send>;

/// Identifies a timer for [`EventCenter::delete_time_event`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TimerId(u64);

struct FileEntry<C: 'static> {
    mask: Interest,
    cb: FileCallback<C>,
    /// Value of `EventCenter::batch` when the descriptor was (re-)registered.
    batch: u64,
}

/// The part of a center that other threads touch.
struct Shared<C: 'static> {
    queue: Mutex<ExternalQueue<C>>,
    /// Set by the submitter that owes the center a wake; cleared by the center just
    /// before it takes the queue. Only the submitter that flips it to true wakes, so a
    /// burst of submits between two iterations costs one wake.
    wake_pending: AtomicBool,
    waker: Arc<dyn Waker>,
}

struct ExternalQueue<C: 'static> {
    events: VecDeque<ExternalEvent<C>>,
    /// Set when the center is dropped; later submits are refused.
    closed: bool,
}

impl<C: 'static> Shared<C> {
    #[cfg_attr(feature = "lock-count", track_caller)]
    fn lock(&self) -> MutexGuard<'_, ExternalQueue<C>> {
        // The lock is never held while user code runs, so a poisoned lock only means a
        // panic (e.g. allocation failure) in a push or take, which leaves it consistent.
        sync::lock(&self.queue)
    }
}

/// A worker's event loop, generic over the worker-local context `C` that every
/// callback receives mutably.
///
/// Descriptors must be removed with [`delete_file_event`](EventCenter::delete_file_event)
/// before they are closed: the center keys everything by descriptor number.
///
/// ```
/// use std::rc::Rc;
/// use std::time::Duration;
/// use msgr_core::event::{EpollDriver, EventCenter, EventFd, Interest};
///
/// type Log = Vec<String>;
/// # fn main() -> std::io::Result<()> {
/// let mut center = EventCenter::<Log>::new(Box::new(EpollDriver::new()?));
///
/// let efd = Rc::new(EventFd::new()?);
/// let e = Rc::clone(&efd);
/// center.create_file_event(
///     efd.fd(),
///     Interest::READABLE,
///     Rc::new(move |log: &mut Log, _: &mut EventCenter<Log>, _fd, _mask| {
///         log.push(format!("signalled {} time(s)", e.drain().unwrap()));
///     }),
/// )?;
/// center.create_time_event(
///     Duration::ZERO,
///     Box::new(|log: &mut Log, _: &mut EventCenter<Log>| log.push("timer".into())),
/// );
/// let submitter = center.submitter();
/// std::thread::spawn(move || {
///     submitter.submit(Box::new(|log: &mut Log, _: &mut EventCenter<Log>| {
///         log.push("from another thread".into())
///     }))
/// })
/// .join()
/// .unwrap();
/// efd.notify()?;
///
/// let mut log = Log::new();
/// while log.len() < 3 {
///     center.process_events(&mut log, Duration::from_secs(10))?;
/// }
/// assert_eq!(log, ["signalled 1 time(s)", "timer", "from another thread"]);
/// center.delete_file_event(efd.fd(), Interest::READABLE)?;
/// # Ok(())
/// # }
/// ```
pub struct EventCenter<C: 'static> {
    driver: Box<dyn EventDriver>,
    files: IdMap<EventSource, FileEntry<C>>,
    /// Pending timers in firing order: deadline, then creation order.
    timers: BTreeMap<(Instant, u64), TimerCallback<C>>,
    /// Deadline of every pending timer, to find it in `timers`. A timer is pending
    /// exactly while it is in here.
    timer_deadlines: HashMap<u64, Instant>,
    next_timer: u64,
    /// Counts driver waits, to recognise registrations newer than the events at hand.
    batch: u64,
    /// When the last wait returned (see [`EventCenter::now`]).
    woke: Instant,
    /// Reused buffers, kept to avoid allocating on every iteration.
    fired: Vec<FiredEvent>,
    external: VecDeque<ExternalEvent<C>>,
    shared: Arc<Shared<C>>,
    readiness: Readiness,
}

impl<C: 'static> EventCenter<C> {
    /// Creates a center running on `driver`.
    pub fn new(driver: Box<dyn EventDriver>) -> Self {
        let parker = driver.parker();
        let readiness = Readiness::new(Arc::clone(&parker));
        let waker: Arc<dyn Waker> = parker;
        EventCenter {
            driver,
            files: IdMap::default(),
            timers: BTreeMap::new(),
            timer_deadlines: HashMap::new(),
            next_timer: 0,
            batch: 0,
            woke: Instant::now(),
            fired: Vec::new(),
            external: VecDeque::new(),
            shared: Arc::new(Shared {
                queue: Mutex::new(ExternalQueue { events: VecDeque::new(), closed: false }),
                wake_pending: AtomicBool::new(false),
                waker,
            }),
            readiness,
        }
    }

    /// Adds `mask` to the interest for `src` and sets its callback (one callback per
    /// source, called with the fired mask). An empty `mask` registers the callback
    /// alone, for a later [`add_interest`](EventCenter::add_interest).
    pub fn create_file_event(
        &mut self,
        src: impl Into<EventSource>,
        mask: Interest,
        cb: FileCallback<C>,
    ) -> io::Result<()> {
        let src = src.into();
        match self.files.get_mut(&src) {
            Some(entry) => {
                if !entry.mask.contains(mask) {
                    let new = entry.mask | mask;
                    watch(&mut *self.driver, &self.readiness, src, entry.mask, new)?;
                    entry.mask = new;
                }
                entry.cb = cb;
            }
            None => {
                watch(&mut *self.driver, &self.readiness, src, Interest::NONE, mask)?;
                self.files.insert(src, FileEntry { mask, cb, batch: self.batch });
            }
        }
        Ok(())
    }

    /// Adds interest bits for a source that already has a callback
    /// ([`io::ErrorKind::NotFound`] otherwise).
    pub fn add_interest(&mut self, src: impl Into<EventSource>, mask: Interest) -> io::Result<()> {
        let src = src.into();
        let Some(entry) = self.files.get_mut(&src) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{src} has no file event")));
        };
        if !entry.mask.contains(mask) {
            let new = entry.mask | mask;
            watch(&mut *self.driver, &self.readiness, src, entry.mask, new)?;
            entry.mask = new;
        }
        Ok(())
    }

    /// Removes interest bits; removes the source (and drops its callback) when none
    /// remain. Unknown source → `Ok`.
    ///
    /// The center forgets the bits even if the driver reports an error, so a callback
    /// is never again called for them.
    pub fn delete_file_event(&mut self, src: impl Into<EventSource>, mask: Interest) -> io::Result<()> {
        let src = src.into();
        let Some(entry) = self.files.get_mut(&src) else {
            return Ok(());
        };
        let cur = entry.mask;
        let new = cur.difference(mask);
        let result = if new == cur { Ok(()) } else { watch(&mut *self.driver, &self.readiness, src, cur, new) };
        if new.is_empty() {
            self.files.remove(&src);
        } else {
            entry.mask = new;
        }
        result
    }

    /// The directions `src` is registered for ([`Interest::NONE`] if it is not).
    pub fn interest(&self, src: impl Into<EventSource>) -> Interest {
        self.files.get(&src.into()).map_or(Interest::NONE, |e| e.mask)
    }

    /// Where this worker's token sockets post their readiness (see [`Readiness`]); a
    /// stack's socket takes it when it is registered on this worker.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Runs `cb` once, `after` from now (microsecond resolution; never earlier).
    pub fn create_time_event(&mut self, after: Duration, cb: TimerCallback<C>) -> TimerId {
        let now = Instant::now();
        // Only absurd durations (centuries) overflow an Instant; treat them as "never".
        let deadline = now.checked_add(after).unwrap_or_else(|| far_future(now));
        self.create_time_event_at(deadline, cb)
    }

    /// Runs `cb` once at `deadline` or as soon after it as the loop gets to it. Timers
    /// with equal deadlines run in creation order.
    pub fn create_time_event_at(&mut self, deadline: Instant, cb: TimerCallback<C>) -> TimerId {
        let seq = self.next_timer;
        self.next_timer += 1;
        self.timers.insert((deadline, seq), cb);
        self.timer_deadlines.insert(seq, deadline);
        TimerId(seq)
    }

    /// Cancels a timer; true if it was pending (false if it already ran or was cancelled).
    pub fn delete_time_event(&mut self, id: TimerId) -> bool {
        match self.timer_deadlines.remove(&id.0) {
            Some(deadline) => {
                // Absent from `timers` if it is due in the batch being run; removal from
                // `timer_deadlines` is what stops it there.
                self.timers.remove(&(deadline, id.0));
                true
            }
            None => false,
        }
    }

    /// A handle for sending closures to this center from any thread.
    pub fn submitter(&self) -> Submitter<C> {
        Submitter { shared: Arc::downgrade(&self.shared) }
    }

    /// One loop iteration: wait for at most `max_wait` (less if a timer is due sooner,
    /// zero if external events are pending), run fired file callbacks, then due timers
    /// (in deadline order, ties in creation order), then external events (FIFO).
    /// Returns the number of callbacks run.
    ///
    /// Work created by callbacks waits for a later iteration: timers they create, even
    /// already due ones, and events submitted while external events run. This bounds an
    /// iteration, so I/O is never starved.
    pub fn process_events(&mut self, ctx: &mut C, max_wait: Duration) -> io::Result<usize> {
        let mut timeout = max_wait;
        if self.shared.wake_pending.load(Ordering::Acquire) || self.readiness.has_ready() {
            timeout = Duration::ZERO;
        } else if let Some(&(deadline, _)) = self.timers.keys().next() {
            timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
        }

        let mut fired = mem::take(&mut self.fired);
        let waited = self.driver.wait(&mut fired, Some(timeout), &self.readiness);
        self.woke = Instant::now();
        self.batch += 1;
        let mut ran = 0;
        if let Err(e) = waited {
            self.fired = fired;
            return Err(e);
        }
        self.readiness.collect(&mut fired);
        for ev in fired.drain(..) {
            ran += self.dispatch_file_event(ctx, ev);
        }
        self.fired = fired;

        ran += self.run_due_timers(ctx);
        ran += self.run_external_events(ctx);
        Ok(ran)
    }

    /// When this iteration's wait returned (before the first, when the center was
    /// made): the time its callbacks take as now, rather than each reading the clock.
    /// A callback that runs long sees it fall behind by what the iteration has run so
    /// far; it never lies ahead of the clock.
    ///
    /// At depth 1 a wake-up read the clock three times (before the wait, per read, for
    /// the timers); now twice (about 28 instructions each, counted under callgrind).
    pub fn now(&self) -> Instant {
        self.woke
    }

    /// The driver, e.g. for a stack that needs driver-specific calls.
    pub fn driver_mut(&mut self) -> &mut dyn EventDriver {
        &mut *self.driver
    }

    fn dispatch_file_event(&mut self, ctx: &mut C, ev: FiredEvent) -> usize {
        // Earlier callbacks of this batch may have changed the registration.
        let Some(entry) = self.files.get(&ev.source) else {
            return 0;
        };
        // Registered after this batch's wait: the readiness belongs to whatever the
        // number referred to before (e.g. a closed socket whose number was reused).
        if entry.batch == self.batch {
            return 0;
        }
        let mask = ev.mask.intersection(entry.mask);
        if mask.is_empty() {
            return 0;
        }
        // The callback may replace or delete its own registration.
        let cb = Rc::clone(&entry.cb);
        cb(ctx, self, ev.source, mask);
        1
    }

    fn run_due_timers(&mut self, ctx: &mut C) -> usize {
        let Some(&(first, _)) = self.timers.keys().next() else {
            return 0;
        };
        // The wake-up's time: a timer that came due while the callbacks ran waits for
        // the next iteration, whose wait (its timeout read from the clock) is then zero.
        let now = self.woke;
        if first > now {
            return 0;
        }
        // Detach the due timers so that timers created by callbacks land in
        // `self.timers` and wait for the next iteration.
        let later = self.timers.split_off(&(now, u64::MAX));
        let due = mem::replace(&mut self.timers, later);
        let mut ran = 0;
        for ((_, seq), cb) in due {
            // Cancelled by an earlier callback of this batch?
            if self.timer_deadlines.remove(&seq).is_some() {
                cb(ctx, self);
                ran += 1;
            }
        }
        ran
    }

    fn run_external_events(&mut self, ctx: &mut C) -> usize {
        // Clear the flag before taking the queue: a submit that misses this take sees
        // the flag clear (its push follows our take under the mutex, which follows this
        // swap) and wakes the driver, so its event runs in the next iteration. A flag
        // found clear means no submit finished since the last take (each sets it after
        // its push), so the queue's lock is not taken on every loop iteration.
        if !self.shared.wake_pending.swap(false, Ordering::SeqCst) {
            return 0;
        }
        let mut batch = mem::take(&mut self.external);
        mem::swap(&mut batch, &mut self.shared.lock().events);
        let mut ran = 0;
        while let Some(ev) = batch.pop_front() {
            ev(ctx, self);
            ran += 1;
        }
        self.external = batch;
        ran
    }
}

impl<C: 'static> Drop for EventCenter<C> {
    fn drop(&mut self) {
        let pending = {
            let mut q = self.shared.lock();
            q.closed = true;
            mem::take(&mut q.events)
        };
        // Dropped outside the lock: a closure's captures may submit again on drop.
        drop(pending);
    }
}

impl<C: 'static> fmt::Debug for EventCenter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventCenter")
            .field("file_events", &self.files.len())
            .field("timers", &self.timer_deadlines.len())
            .finish_non_exhaustive()
    }
}

/// Moves `src` from being watched for `cur` to `new`: descriptors through the driver,
/// tokens in the readiness table.
fn watch(
    driver: &mut dyn EventDriver,
    ready: &Readiness,
    src: EventSource,
    cur: Interest,
    new: Interest,
) -> io::Result<()> {
    match src {
        EventSource::Fd(fd) if new.contains(cur) => driver.add_event(fd, cur, new.difference(cur)),
        EventSource::Fd(fd) if cur.contains(new) => driver.del_event(fd, cur, cur.difference(new)),
        EventSource::Fd(fd) => {
            driver.del_event(fd, cur, cur.difference(new))?;
            driver.add_event(fd, cur & new, new.difference(cur))
        }
        EventSource::Token(t) => {
            ready.set_interest(t, new);
            Ok(())
        }
    }
}

fn far_future(now: Instant) -> Instant {
    // Instants count seconds since boot in an i64, so a century always fits.
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(CENTURY).unwrap_or(now)
}

/// Sends closures to an [`EventCenter`] from any thread (including its own).
pub struct Submitter<C: 'static> {
    // Weak: a submitter must not keep a dropped center's queue and waker alive.
    shared: Weak<Shared<C>>,
}

impl<C: 'static> Clone for Submitter<C> {
    fn clone(&self) -> Self {
        Submitter { shared: Weak::clone(&self.shared) }
    }
}

impl<C: 'static> fmt::Debug for Submitter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Submitter").field("center_alive", &(self.shared.strong_count() > 0)).finish()
    }
}

impl<C: 'static> Submitter<C> {
    /// Queues `ev` to run on the center's thread and wakes it. Callable from any
    /// thread, including the center's own. If the center has been dropped, `ev` is
    /// dropped without running.
    pub fn submit(&self, ev: ExternalEvent<C>) {
        let _ = self.try_submit(ev);
    }

    /// Like [`submit`](Submitter::submit) but returns `Err(ev)` if the center has been
    /// dropped.
    pub fn try_submit(&self, ev: ExternalEvent<C>) -> Result<(), ExternalEvent<C>> {
        let Some(shared) = self.shared.upgrade() else {
            return Err(ev);
        };
        {
            let mut q = shared.lock();
            if q.closed {
                return Err(ev);
            }
            q.events.push_back(ev);
        }
        // Push first, then claim the wake: whoever finds the flag clear after our push
        // is ordered after the center's clear-then-take, so either the center's take
        // saw our event or the wake we make here makes it look again.
        if !shared.wake_pending.swap(true, Ordering::SeqCst) {
            shared.waker.wake();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::thread;

    /// What the callbacks of a test record.
    #[derive(Default)]
    struct Ctx {
        log: Vec<String>,
    }

    fn center<C>() -> EventCenter<C> {
        EventCenter::new(Box::new(EpollDriver::new().unwrap()))
    }

    // These pin the closures' argument types, which `Rc::new`/`Box::new` cannot infer.
    fn file_cb<C>(f: impl Fn(&mut C, &mut EventCenter<C>, EventSource, Interest) + 'static) -> FileCallback<C> {
        Rc::new(f)
    }

    fn timer_cb<C>(f: impl FnOnce(&mut C, &mut EventCenter<C>) + 'static) -> TimerCallback<C> {
        Box::new(f)
    }

    fn ext<C>(f: impl FnOnce(&mut C, &mut EventCenter<C>) + Send + 'static) -> ExternalEvent<C> {
        Box::new(f)
    }

    /// Runs iterations until `done`, failing after a generous 10 s.
    fn run_until<C>(c: &mut EventCenter<C>, ctx: &mut C, done: impl Fn(&C) -> bool) {
        let give_up = Instant::now() + Duration::from_secs(10);
        while !done(ctx) {
            assert!(Instant::now() < give_up, "condition not reached within 10 s");
            c.process_events(ctx, Duration::from_millis(100)).unwrap();
        }
    }

    /// Sets its flag when dropped.
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn nonblocking_pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    #[test]
    fn interest_set_operations() {
        use Interest as I;
        assert!(I::default().is_empty());
        assert_eq!(I::READABLE | I::WRITABLE, I::BOTH);
        assert!(I::BOTH.contains(I::READABLE) && I::BOTH.contains(I::WRITABLE));
        assert!(I::BOTH.contains(I::NONE));
        assert!(!I::READABLE.contains(I::BOTH));
        assert!(I::READABLE.intersects(I::BOTH) && !I::READABLE.intersects(I::WRITABLE));
        assert_eq!(I::BOTH.difference(I::READABLE), I::WRITABLE);
        assert_eq!(I::BOTH - I::BOTH, I::NONE);
        assert_eq!(I::BOTH & I::WRITABLE, I::WRITABLE);
        assert_eq!(I::READABLE.union(I::NONE), I::READABLE);
        assert!(I::READABLE.is_readable() && !I::READABLE.is_writable());
        let mut m = I::NONE;
        m |= I::WRITABLE;
        assert!(m.is_writable() && !m.is_empty());
    }

    #[test]
    fn timers_fire_in_deadline_order_never_early() {
        let mut c = center::<Ctx>();
        let mut ctx = Ctx::default();
        let start = Instant::now();
        let add = |c: &mut EventCenter<Ctx>, name: &'static str, at: Instant| {
            c.create_time_event_at(
                at,
                timer_cb(move |ctx: &mut Ctx, _| {
                    assert!(Instant::now() >= at, "{name} fired early");
                    ctx.log.push(name.to_string());
                }),
            );
        };
        add(&mut c, "30", start + Duration::from_millis(30));
        add(&mut c, "10", start + Duration::from_millis(10));
        add(&mut c, "15a", start + Duration::from_millis(15));
        add(&mut c, "20", start + Duration::from_millis(20));
        add(&mut c, "15b", start + Duration::from_millis(15));
        run_until(&mut c, &mut ctx, |ctx| ctx.log.len() == 5);
        assert_eq!(ctx.log, ["10", "15a", "15b", "20", "30"]);
    }

    #[test]
    fn relative_timer_is_not_early() {
        let mut c = center::<Ctx>();
        let mut ctx = Ctx::default();
        let start = Instant::now();
        let after = Duration::from_micros(1500);
        c.create_time_event(
            after,
            timer_cb(move |ctx: &mut Ctx, _| {
                assert!(start.elapsed() >= after);
                ctx.log.push("t".into());
            }),
        );
        // One long wait is enough: the timer shortens it.
        let give_up = Instant::now() + Duration::from_secs(10);
        while ctx.log.is_empty() && Instant::now() < give_up {
            c.process_events(&mut ctx, Duration::from_secs(10)).unwrap();
        }
        assert_eq!(ctx.log, ["t"]);
    }

    #[test]
    fn cancelled_timers_do_not_fire() {
        let mut c = center::<Ctx>();
        let mut ctx = Ctx::default();
        let t1 = c.create_time_event(Duration::from_millis(1), timer_cb(|ctx: &mut Ctx, _| ctx.log.push("t1".into())));
        let t2 = c.create_time_event(Duration::from_millis(5), timer_cb(|ctx: &mut Ctx, _| ctx.log.push("t2".into())));
        assert_ne!(t1, t2);
        assert!(c.delete_time_event(t1));
        assert!(!c.delete_time_event(t1), "already cancelled");
        run_until(&mut c, &mut ctx, |ctx| !ctx.log.is_empty());
        assert_eq!(ctx.log, ["t2"]);
        assert!(!c.delete_time_event(t2), "already fired");
        // Nothing else is pending.
        assert_eq!(c.process_events(&mut ctx, Duration::from_millis(20)).unwrap(), 0);
    }

    #[test]
    fn timer_created_from_a_callback() {
        let mut c = center::<Ctx>();
        let mut ctx = Ctx::default();
        c.create_time_event(
            Duration::ZERO,
            timer_cb(|ctx: &mut Ctx, c: &mut EventCenter<Ctx>| {
                ctx.log.push("outer".into());
                // Due immediately, yet it waits for the next iteration.
                c.create_time_event(Duration::ZERO, timer_cb(|ctx: &mut Ctx, _| ctx.log.push("now".into())));
                let at = Instant::now() + Duration::from_millis(5);
                c.create_time_event_at(
                    at,
                    timer_cb(move |ctx: &mut Ctx, _| {
                        assert!(Instant::now() >= at);
                        ctx.log.push("later".into());
                    }),
                );
            }),
        );
        assert_eq!(c.process_events(&mut ctx, Duration::ZERO).unwrap(), 1);
        assert_eq!(ctx.log, ["outer"]);
        assert_eq!(c.process_events(&mut ctx, Duration::ZERO).unwrap(), 1);
        assert_eq!(ctx.log, ["outer", "now"]);
        run_until(&mut c, &mut ctx, |ctx| ctx.log.len() == 3);
        assert_eq!(ctx.log, ["outer", "now", "later"]);
    }

    #[test]
    fn timer_cancels_another_due_in_the_same_batch() {
        let mut c = center::<Ctx>();
        let mut ctx = Ctx::default();
        let past = Instant::now();
        let victim = Rc::new(Cell::new(None));
        let v = Rc::clone(&victim);
        c.create_time_event_at(
            past,
            timer_cb(move |ctx: &mut Ctx, c: &mut EventCenter<Ctx>| {
                ctx.log.push("first".into());
                assert!(c.delete_time_event(v.get().unwrap()), "still pending");
            }),
        );
        let id = c.create_time_event_at(past, timer_cb(|ctx: &mut Ctx, _| ctx.log.push("victim".into())));
        victim.set(Some(id));
        assert_eq!(c.process_events(&mut ctx, Duration::ZERO).unwrap(), 1);
        assert_eq!(c.process_events(&mut ctx, Duration::ZERO).unwrap(), 0);
        assert_eq!(ctx.log, ["first"]);
    }

    #[test]
    fn file_event_on_eventfd() {
        let mut c = center::<Ctx>();
        let mut ctx = Ctx::default();
        let efd = Rc::new(EventFd::new().unwrap());
        let e = Rc::clone(&efd);
        c.create_file_event(
            efd.fd(),
            Interest::READABLE,
            file_cb(move |ctx: &mut Ctx, _, fd, mask| {
                assert_eq!(fd, EventSource::Fd(e.fd()));
                assert_eq!(mask, Interest::READABLE);
                ctx.log.push(format!("drained {}", e.drain().unwrap()));
            }),
        )
        .unwrap();
        assert_eq!(c.interest(efd.fd()), Interest::READABLE);
        assert_eq!(c.process_events(&mut ctx, Duration::ZERO).unwrap(), 0);
        efd.notify().unwrap();
        efd.notify().unwrap();
        run_until(&mut c, &mut ctx, |ctx| !ctx.log.is_empty());
        assert_eq!(ctx.log, ["drained 2"]);
        assert_eq!(c.process_events(&mut ctx, Duration::ZERO).unwrap(), 0);
        c.delete_file_event(efd.fd(), Interest::READABLE).unwrap();
    }

    #[test]
    fn socketpair_readable_writable_and_interest_changes() {
        let mut c = center::<Vec<Interest>>();
        let mut fired = Vec::new();
        let (a, mut b) = nonblocking_pair();
        let fd = a.as_raw_fd();
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = DropFlag(Arc::clone(&dropped));
        let cb = file_cb(move |fired: &mut Vec<Interest>, _, _, mask| {
            let _keep = &flag;
            fired.push(mask);
        });

        assert_eq!(c.add_interest(fd, Interest::READABLE).unwrap_err().kind(), io::ErrorKind::NotFound);
        c.create_file_event(fd, Interest::WRITABLE, cb).unwrap();
        c.process_events(&mut fired, Duration::from_secs(10)).unwrap();
        assert_eq!(fired, [Interest::WRITABLE]);

        c.add_interest(fd, Interest::READABLE).unwrap();
        assert_eq!(c.interest(fd), Interest::BOTH);
        b.write_all(b"x").unwrap();
        fired.clear();
        c.process_events(&mut fired, Duration::from_secs(10)).unwrap();
        assert_eq!(fired, [Interest::BOTH]);

        c.delete_file_event(fd, Interest::WRITABLE).unwrap();
        assert_eq!(c.interest(fd), Interest::READABLE);
        fired.clear();
        c.process_events(&mut fired, Duration::from_secs(10)).unwrap();
        assert_eq!(fired, [Interest::READABLE]);

        assert!(!dropped.load(Ordering::SeqCst));
        c.delete_file_event(fd, Interest::READABLE).unwrap();
        assert_eq!(c.interest(fd), Interest::NONE);
        assert!(dropped.load(Ordering::SeqCst), "callback dropped with the last interest");
        fired.clear();
        assert_eq!(c.process_events(&mut fired, Duration::ZERO).unwrap(), 0);
        // Unknown descriptors: deleting is a no-op.
        c.delete_file_event(fd, Interest::BOTH).unwrap();
    }

    #[test]
    fn callback_first_then_interest() {
        let mut c = center::<Vec<Interest>>();
        let mut fired = Vec::new();
        let efd = EventFd::new().unwrap();
        efd.notify().unwrap();
        c.create_file_event(efd.fd(), Interest::NONE, file_cb(|f: &mut Vec<Interest>, _, _, m| f.push(m))).unwrap();
        assert_eq!(c.process_events(&mut fired, Duration::ZERO).unwrap(), 0);
        c.add_interest(efd.fd(), Interest::READABLE).unwrap();
        c.process_events(&mut fired, Duration::from_secs(10)).unwrap();
        assert_eq!(fired, [Interest::READABLE]);
        c.delete_file_event(efd.fd(), Interest::READABLE).unwrap();
        assert_eq!(c.process_events(&mut fired, Duration::ZERO).unwrap(), 0);
    }

    #[test]
    fn replacing_the_callback_keeps_the_interest() {
        let mut c = center::<Ctx>();
        let mut ctx = Ctx::default();
        let efd = EventFd::new().unwrap();
        efd.notify().unwrap();
        c.create_file_event(efd.fd(), Interest::READABLE, file_cb(|ctx: &mut Ctx, _, _, _| ctx.log.push("old".into())))
            .unwrap();
        c.create_file_event(efd.fd(), Interest::NONE, file_cb(|ctx: &mut Ctx, _, _, _| ctx.log.push("new".into())))
            .unwrap();
        assert_eq!(c.interest(efd.fd()), Interest::READABLE);
        run_until(&mut c, &mut ctx, |ctx| !ctx.log.is_empty());
        assert_eq!(ctx.log, ["new"]);
    }

    #[test]
    fn driver_errors_leave_no_registration() {
        let mut c = center::<Ctx>();
        let err = c.create_file_event(-1, Interest::READABLE, file_cb(|_: &mut Ctx, _, _, _| {}));
        assert!(err.is_err());
        assert_eq!(c.interest(-1), Interest::NONE);
        assert!(c.add_interest(-1, Interest::READABLE).is_err());
    }

    /// Two signalled eventfds, each with a callback that acts on itself and the other.
    fn two_signalled(
        c: &mut EventCenter<Ctx>,
        act: fn(&mut EventCenter<Ctx>, EventSource, EventSource),
    ) -> [EventFd; 2] {
        let efds = [EventFd::new().unwrap(), EventFd::new().unwrap()];
        let fds = [EventSource::Fd(efds[0].fd()), EventSource::Fd(efds[1].fd())];
        for (i, efd) in efds.iter().enumerate() {
            let other = fds[1 - i];
            let cb = file_cb(move |ctx: &mut Ctx, c: &mut EventCenter<Ctx>, me, mask| {
                ctx.log.push(format!("{mask:?}"));
                act(c, me, other);
            });
            c.create_file_event(efd.fd(), Interest::BOTH, cb).unwrap();
            efd.notify().unwrap();
        }
        efds
    }

    #[test]
    fn deleting_another_fired_fd_prevents_its_callback() {
        let mut c = center::<Ctx>();
        let mut ctx = Ctx::default();
        let _efds = two_signalled(&mut c, |c, _, other| c.delete_file_event(other, Interest::BOTH).unwrap());
        // Both fire in the first wait; whichever runs first removes the other.
        assert_eq!(c.process_events(&mut ctx, Duration::from_secs(10)).unwrap(), 1);
        assert_eq!(ctx.log.len(), 1);
    }

    #[test]
    fn narrowing_another_fired_fd_narrows_its_mask() {
        let mut c = center::<Ctx>();
        let mut ctx = Ctx::default();
        let _efds = two_signalled(&mut c, |c, _, other| c.delete_file_event(other, Interest::WRITABLE).unwrap());
        assert_eq!(c.process_events(&mut ctx, Duration::from_secs(10)).unwrap(), 2);
        let both = format!("{:?}", Interest::BOTH);
        let readable = format!("{:?}", Interest::READABLE);
        assert_eq!(ctx.log, [both, readable]);
    }

    #[test]
    fn registration_newer_than_the_wait_is_not_called() {
        let mut c = center::<Ctx>();
        let mut ctx = Ctx::default();
        // The first callback to run re-registers the other descriptor, as if its number
        // had been closed and reused; the other's readiness predates that registration.
        let _efds = two_signalled(&mut c, |c, me, other| {
            c.delete_file_event(me, Interest::BOTH).unwrap();
            c.delete_file_event(other, Interest::BOTH).unwrap();
            let cb = file_cb(|ctx: &mut Ctx, c: &mut EventCenter<Ctx>, fd, _| {
                ctx.log.push("new".into());
                c.delete_file_event(fd, Interest::BOTH).unwrap();
            });
            c.create_file_event(other, Interest::READABLE, cb).unwrap();
        });
        assert_eq!(c.process_events(&mut ctx, Duration::from_secs(10)).unwrap(), 1);
        assert_eq!(ctx.log.len(), 1);
        // Level-triggered, so the new registration sees the readiness on the next wait.
        run_until(&mut c, &mut ctx, |ctx| ctx.log.len() == 2);
        assert_eq!(ctx.log[1], "new");
    }

    #[test]
    fn callback_may_delete_itself() {
        let mut c = center::<Ctx>();
        let mut ctx = Ctx::default();
        let efd = EventFd::new().unwrap();
        efd.notify().unwrap();
        let cb = file_cb(|ctx: &mut Ctx, c: &mut EventCenter<Ctx>, fd, _| {
            c.delete_file_event(fd, Interest::BOTH).unwrap();
            // Still alive: the center holds a clone of the callback while it runs.
            ctx.log.push("once".into());
        });
        c.create_file_event(efd.fd(), Interest::READABLE, cb).unwrap();
        run_until(&mut c, &mut ctx, |ctx| !ctx.log.is_empty());
        assert_eq!(c.interest(efd.fd()), Interest::NONE);
        assert_eq!(c.process_events(&mut ctx, Duration::ZERO).unwrap(), 0);
        assert_eq!(ctx.log, ["once"]);
    }

    #[test]
    fn one_iteration_runs_files_then_timers_then_external() {
        let mut c = center::<Ctx>();
        let mut ctx = Ctx::default();
        c.submitter().submit(ext(|ctx: &mut Ctx, _| ctx.log.push("external".into())));
        c.create_time_event_at(Instant::now(), timer_cb(|ctx: &mut Ctx, _| ctx.log.push("timer".into())));
        let efd = EventFd::new().unwrap();
        efd.notify().unwrap();
        c.create_file_event(
            efd.fd(),
            Interest::READABLE,
            file_cb(|ctx: &mut Ctx, _, _, _| ctx.log.push("file".into())),
        )
        .unwrap();
        assert_eq!(c.process_events(&mut ctx, Duration::from_secs(10)).unwrap(), 3);
        assert_eq!(ctx.log, ["file", "timer", "external"]);
    }

    #[test]
    fn external_event_wakes_a_blocked_loop() {
        let mut c = center::<Ctx>();
        let mut ctx = Ctx::default();
        let s = c.submitter();
        let t = thread::spawn(move || {
            // Most likely the loop is blocked by now; if not, the wake is still pending.
            thread::sleep(Duration::from_millis(50));
            s.submit(ext(|ctx: &mut Ctx, _| ctx.log.push("woken".into())));
        });
        let ran = c.process_events(&mut ctx, Duration::from_secs(10)).unwrap();
        t.join().unwrap();
        assert_eq!(ran, 1);
        assert_eq!(ctx.log, ["woken"]);
    }

    #[test]
    fn unbounded_wait_is_accepted_and_woken() {
        let mut c = center::<Ctx>();
        let mut ctx = Ctx::default();
        let s = c.submitter();
        let t = thread::spawn(move || s.submit(ext(|ctx: &mut Ctx, _| ctx.log.push("woken".into()))));
        let give_up = Instant::now() + Duration::from_secs(10);
        while ctx.log.is_empty() {
            assert!(Instant::now() < give_up);
            c.process_events(&mut ctx, Duration::MAX).unwrap();
        }
        t.join().unwrap();
    }

    #[test]
    fn submits_from_four_threads_run_once_in_per_thread_order() {
        const THREADS: usize = 4;
        const PER_THREAD: usize = 2500;
        let mut c = center::<Vec<(usize, usize)>>();
        let mut seen = Vec::new();
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let s = c.submitter();
                thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        s.submit(ext(move |seen: &mut Vec<(usize, usize)>, _| seen.push((t, i))));
                    }
                })
            })
            .collect();
        let give_up = Instant::now() + Duration::from_secs(60);
        while seen.len() < THREADS * PER_THREAD {
            assert!(Instant::now() < give_up, "only {} events ran", seen.len());
            // A lost wake would leave this blocked for the full 10 s, repeatedly.
            c.process_events(&mut seen, Duration::from_secs(10)).unwrap();
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.process_events(&mut seen, Duration::ZERO).unwrap(), 0);
        let mut next = [0; THREADS];
        for &(t, i) in &seen {
            assert_eq!(i, next[t], "thread {t}'s events out of order");
            next[t] += 1;
        }
        assert_eq!(next, [PER_THREAD; THREADS]);
    }

    #[test]
    fn submits_between_iterations_cost_one_wake() {
        let mut c = center::<usize>();
        let mut count = 0;
        let parker = c.driver_mut().parker();
        // As if the worker were blocked in its wait: the first submit writes the
        // eventfd, the others find a wake already owed.
        assert!(parker.try_park(c.readiness()));
        let s = c.submitter();
        for _ in 0..1000 {
            s.submit(ext(|n: &mut usize, _| *n += 1));
        }
        assert_eq!(parker.wakes(), 1);
        parker.unpark();
        assert_eq!(c.process_events(&mut count, Duration::from_secs(10)).unwrap(), 1000);
        assert_eq!(count, 1000);
        // Submits while the worker runs cost no eventfd write at all.
        s.submit(ext(|n: &mut usize, _| *n += 1));
        s.clone().submit(ext(|n: &mut usize, _| *n += 1));
        assert_eq!(parker.wakes(), 1);
        assert_eq!(c.process_events(&mut count, Duration::from_secs(10)).unwrap(), 2);
    }

    /// Token sources: readiness posted by a "stack" (here the test) reaches callbacks
    /// with no descriptor involved, level-triggered, filtered by interest.
    #[test]
    fn token_events_fire_like_descriptors() {
        let mut c = center::<Vec<(EventSource, Interest)>>();
        let mut log = Vec::new();
        let ready = c.readiness().clone();
        let t = ready.token();
        c.create_file_event(t, Interest::READABLE, file_cb(|log: &mut Vec<_>, _, src, m| log.push((src, m)))).unwrap();
        assert_eq!(c.interest(t), Interest::READABLE);
        assert_eq!(c.process_events(&mut log, Duration::ZERO).unwrap(), 0);
        ready.set(t, Interest::BOTH);
        assert_eq!(c.process_events(&mut log, Duration::from_secs(10)).unwrap(), 1);
        assert_eq!(log, [(EventSource::Token(t), Interest::READABLE)]);
        // Still ready: reported again (level semantics), and the wait does not block.
        let start = Instant::now();
        assert_eq!(c.process_events(&mut log, Duration::from_secs(10)).unwrap(), 1);
        assert!(start.elapsed() < Duration::from_secs(5));
        c.add_interest(t, Interest::WRITABLE).unwrap();
        c.process_events(&mut log, Duration::ZERO).unwrap();
        assert_eq!(log.last(), Some(&(EventSource::Token(t), Interest::BOTH)));
        ready.set(t, Interest::NONE);
        log.clear();
        assert_eq!(c.process_events(&mut log, Duration::ZERO).unwrap(), 0);
        c.delete_file_event(t, Interest::BOTH).unwrap();
        ready.set(t, Interest::READABLE);
        assert_eq!(c.process_events(&mut log, Duration::ZERO).unwrap(), 0, "no interest: no callback");
        assert_eq!(c.driver_mut().parker().wakes(), 0, "no system call on the token path");
    }

    /// A post from another thread wakes a center blocked in its wait.
    #[test]
    fn token_post_from_another_thread_wakes_a_blocked_center() {
        let mut c = center::<Vec<EventSource>>();
        let mut log = Vec::new();
        let ready = c.readiness().clone();
        let t = ready.token();
        c.create_file_event(t, Interest::READABLE, file_cb(|log: &mut Vec<_>, _, src, _| log.push(src))).unwrap();
        let parker = c.driver_mut().parker();
        let th = thread::spawn(move || {
            let give_up = Instant::now() + Duration::from_secs(10);
            while !parker.is_parked() && Instant::now() < give_up {
                thread::yield_now();
            }
            ready.set(t, Interest::READABLE);
        });
        let start = Instant::now();
        while log.is_empty() {
            assert!(start.elapsed() < Duration::from_secs(20), "the post never woke the center");
            c.process_events(&mut log, Duration::from_secs(30)).unwrap();
        }
        th.join().unwrap();
        assert_eq!(log[0], EventSource::Token(t));
    }

    #[test]
    fn events_submitted_by_external_events_run_next_iteration() {
        let mut c = center::<Ctx>();
        let mut ctx = Ctx::default();
        c.submitter().submit(ext(|ctx: &mut Ctx, c: &mut EventCenter<Ctx>| {
            ctx.log.push("a".into());
            c.submitter().submit(ext(|ctx: &mut Ctx, _| ctx.log.push("b".into())));
        }));
        assert_eq!(c.process_events(&mut ctx, Duration::ZERO).unwrap(), 1);
        assert_eq!(ctx.log, ["a"]);
        // Pending work makes the wait zero; the generous bound is never reached.
        assert_eq!(c.process_events(&mut ctx, Duration::from_secs(10)).unwrap(), 1);
        assert_eq!(ctx.log, ["a", "b"]);
    }

    #[test]
    fn submit_from_a_file_callback_runs_in_the_same_iteration() {
        let mut c = center::<Ctx>();
        let mut ctx = Ctx::default();
        let efd = EventFd::new().unwrap();
        efd.notify().unwrap();
        let cb = file_cb(|ctx: &mut Ctx, c: &mut EventCenter<Ctx>, fd, _| {
            ctx.log.push("file".into());
            c.delete_file_event(fd, Interest::BOTH).unwrap();
            c.submitter().submit(ext(|ctx: &mut Ctx, _| ctx.log.push("external".into())));
        });
        c.create_file_event(efd.fd(), Interest::READABLE, cb).unwrap();
        assert_eq!(c.process_events(&mut ctx, Duration::from_secs(10)).unwrap(), 2);
        assert_eq!(ctx.log, ["file", "external"]);
    }

    #[test]
    fn dropping_the_center_drops_pending_work_unrun() {
        let mut c = center::<Ctx>();
        let ran = Arc::new(AtomicBool::new(false));
        let dropped = [(); 3].map(|_| Arc::new(AtomicBool::new(false)));

        let (r, flag) = (Arc::clone(&ran), DropFlag(Arc::clone(&dropped[0])));
        let s = c.submitter();
        s.submit(ext(move |_: &mut Ctx, _| {
            let _keep = flag;
            r.store(true, Ordering::SeqCst);
        }));
        let (r, flag) = (Arc::clone(&ran), DropFlag(Arc::clone(&dropped[1])));
        c.create_time_event(
            Duration::ZERO,
            timer_cb(move |_: &mut Ctx, _| {
                let _keep = flag;
                r.store(true, Ordering::SeqCst);
            }),
        );
        let efd = EventFd::new().unwrap();
        let (r, flag) = (Arc::clone(&ran), DropFlag(Arc::clone(&dropped[2])));
        let cb = file_cb(move |_: &mut Ctx, _, _, _| {
            let _keep = &flag;
            r.store(true, Ordering::SeqCst);
        });
        c.create_file_event(efd.fd(), Interest::READABLE, cb).unwrap();

        drop(c);
        assert!(dropped.iter().all(|d| d.load(Ordering::SeqCst)));
        assert!(!ran.load(Ordering::SeqCst));

        // Late submits are refused without panicking.
        s.submit(ext(|_: &mut Ctx, _| unreachable!()));
        assert!(s.try_submit(ext(|_: &mut Ctx, _| unreachable!())).is_err());
    }

    #[test]
    fn submit_after_drop_from_another_thread() {
        let c = center::<Ctx>();
        let s = c.submitter();
        drop(c);
        thread::spawn(move || {
            s.submit(ext(|_: &mut Ctx, _| unreachable!()));
            assert!(s.try_submit(ext(|_: &mut Ctx, _| unreachable!())).is_err());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn submitter_is_send_sync_clone_even_for_a_thread_local_context() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Submitter<Rc<Cell<u32>>>>();
        let c = center::<Rc<Cell<u32>>>();
        let s = c.submitter();
        assert!(format!("{s:?}").contains("true"));
        assert!(format!("{c:?}").contains("EventCenter"));
        drop(c);
        assert!(format!("{s:?}").contains("false"));
    }
}
