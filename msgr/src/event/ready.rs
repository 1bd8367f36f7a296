//! Readiness of sockets that have no kernel descriptor, and the sleep/wake handshake of
//! a worker's driver.
//!
//! A kernel-bypass stack (RDMA, DPDK, the in-memory test stack) has no file descriptor
//! per socket. Instead each socket takes a [`Token`] from its worker's [`Readiness`] and
//! the stack *posts* the socket's current readiness there ([`Readiness::set`]), level
//! semantics, as epoll would report a descriptor: a socket stays reported for as long as
//! it is ready in a direction its owner is interested in. The worker's
//! [`EventCenter`](super::EventCenter) keeps the interest and runs the socket's callback
//! like any file event; no eventfd and no system call is involved, so a busy worker
//! makes none per message.
//!
//! Posting works from any thread (the in-memory stack's peers live on other workers). A
//! post that makes a token ready while the worker sleeps wakes it through its
//! [`Parker`]; a post made while the worker runs (the common case: the stack posts from
//! its own poll, on the worker thread) costs a lock and no wake-up.

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::driver::Waker;
use super::eventfd::EventFd;
use super::{EventSource, FiredEvent, IdMap, Interest};
use crate::sync;

/// Names a socket that reports readiness through a [`Readiness`] rather than a
/// descriptor. Unique within its `Readiness` and never reused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Token(pub u64);

/// The sleep/wake handshake between a driver and the threads that wake it.
///
/// A driver that is about to block calls [`try_park`](Parker::try_park): it marks itself
/// asleep and then looks once more for work (a wake or a ready token). A waker sets its
/// flag first and then looks whether the driver sleeps, writing the eventfd only then.
/// With both sides ordered `SeqCst`, at least one of them sees the other, so no wake is
/// lost, and a driver that is busy polling is woken without any system call.
pub struct Parker {
    sleeping: AtomicBool,
    woken: AtomicBool,
    efd: EventFd,
    /// Eventfd writes so far (each one a system call on the waking side).
    wakes: AtomicU64,
}

impl fmt::Debug for Parker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parker")
            .field("sleeping", &self.sleeping.load(Ordering::Relaxed))
            .field("woken", &self.woken.load(Ordering::Relaxed))
            .field("wakes", &self.wakes())
            .finish()
    }
}

impl Parker {
    /// A parker whose eventfd the driver must watch (see [`fd`](Parker::fd)).
    pub fn new() -> io::Result<Arc<Parker>> {
        Ok(Arc::new(Parker {
            sleeping: AtomicBool::new(false),
            woken: AtomicBool::new(false),
            efd: EventFd::new()?,
            wakes: AtomicU64::new(0),
        }))
    }

    /// The descriptor that becomes readable when a sleeping driver is woken.
    pub fn fd(&self) -> RawFd {
        self.efd.fd()
    }

    /// Driver side, just before blocking: true if the driver may block now; false if a
    /// wake already came or `ready` has a ready token (the driver must not block then).
    pub fn try_park(&self, ready: &Readiness) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        if self.woken.swap(false, Ordering::SeqCst) || ready.has_ready() {
            self.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Driver side, after a wait that followed a successful [`try_park`](Parker::try_park):
    /// no longer asleep.
    pub fn unpark(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }

    /// Driver side, when its wait saw [`fd`](Parker::fd) readable: consumes the wake.
    pub fn drain(&self) -> io::Result<()> {
        self.efd.drain().map(|_| ())
    }

    /// True while the driver is blocked (or about to be).
    pub fn is_parked(&self) -> bool {
        self.sleeping.load(Ordering::SeqCst)
    }

    /// Wakes the driver only if it is parked; used by readiness posts, whose work the
    /// driver sees anyway while it runs (so a post from the worker's own thread, or
    /// while the worker is busy, costs no system call).
    // why track_caller: the count of the eventfd write is put on the line that asked for
    // the wake (a submit's `wake`, a readiness post), not on this one.
    #[cfg_attr(feature = "lock-count", track_caller)]
    fn wake_if_parked(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            self.write_efd();
        }
    }

    #[cfg_attr(feature = "lock-count", track_caller)]
    fn write_efd(&self) {
        self.wakes.fetch_add(1, Ordering::Relaxed);
        // Cannot fail for an eventfd we own (a full counter counts as success).
        let _ = self.efd.notify();
    }

    /// Eventfd writes made so far: how many wakes cost a system call.
    pub fn wakes(&self) -> u64 {
        self.wakes.load(Ordering::Relaxed)
    }
}

impl Waker for Parker {
    fn wake(&self) {
        self.woken.store(true, Ordering::SeqCst);
        self.wake_if_parked();
    }
}

#[derive(Clone, Copy, Default, Debug)]
struct Entry {
    /// What the stack last posted.
    ready: Interest,
    /// What the owner watches.
    interest: Interest,
    /// In `Table::hot`.
    hot: bool,
}

impl Entry {
    fn fires(&self) -> Interest {
        self.ready & self.interest
    }
}

#[derive(Default)]
struct Table {
    entries: IdMap<u64, Entry>,
    /// Tokens that fire (or did at their last change; `collect` prunes the rest).
    hot: Vec<u64>,
}

struct Inner {
    table: Mutex<Table>,
    /// Entries of `hot` that fire; read without the lock by a driver deciding to sleep.
    firing: AtomicUsize,
    next: AtomicU64,
    parker: Arc<Parker>,
}

/// The readiness of one worker's token sockets: what the stack posts, what the worker
/// watches, and which tokens fire. Cheap to clone; every clone is the same table.
///
/// ```
/// use msgr_core::event::{EventSource, FiredEvent, Interest, Parker, Readiness};
/// let ready = Readiness::new(Parker::new().unwrap());
/// let t = ready.token();
/// ready.set_interest(t, Interest::READABLE);
/// ready.set(t, Interest::BOTH); // readable and writable: only READABLE is watched
/// let mut fired = Vec::new();
/// ready.collect(&mut fired);
/// assert_eq!(fired, [FiredEvent { source: EventSource::Token(t), mask: Interest::READABLE }]);
/// ready.set(t, Interest::WRITABLE);
/// fired.clear();
/// ready.collect(&mut fired);
/// assert!(fired.is_empty());
/// ```
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<Inner>,
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readiness")
            .field("tokens", &self.lock().entries.len())
            .field("firing", &self.inner.firing.load(Ordering::Relaxed))
            .finish()
    }
}

impl Readiness {
    /// A table whose posts wake the driver through `parker`.
    pub fn new(parker: Arc<Parker>) -> Readiness {
        Readiness {
            inner: Arc::new(Inner {
                table: Mutex::new(Table::default()),
                firing: AtomicUsize::new(0),
                next: AtomicU64::new(1),
                parker,
            }),
        }
    }

    #[cfg_attr(feature = "lock-count", track_caller)]
    fn lock(&self) -> MutexGuard<'_, Table> {
        // Nothing runs under this lock but the table's own updates.
        sync::lock(&self.inner.table)
    }

    /// A new token, not ready and not watched yet.
    pub fn token(&self) -> Token {
        Token(self.inner.next.fetch_add(1, Ordering::Relaxed))
    }

    /// True if both handles are the same table (the same worker).
    pub fn same(&self, other: &Readiness) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The parker of the driver this table belongs to.
    pub fn parker(&self) -> &Arc<Parker> {
        &self.inner.parker
    }

    /// Posts the current readiness of `token` (level semantics: it stays in force until
    /// the next post). From any thread.
    pub fn set(&self, token: Token, ready: Interest) {
        let woke = self.update(token, |e| e.ready = ready);
        if woke {
            self.inner.parker.wake_if_parked();
        }
    }

    /// Sets what the owner of `token` watches (the event center does this).
    pub fn set_interest(&self, token: Token, interest: Interest) {
        let woke = self.update(token, |e| e.interest = interest);
        if woke {
            self.inner.parker.wake_if_parked();
        }
    }

    /// Forgets `token` (its socket is gone): it never fires again.
    pub fn remove(&self, token: Token) {
        let mut t = self.lock();
        if let Some(e) = t.entries.remove(&token.0) {
            if e.hot {
                t.hot.retain(|&x| x != token.0);
            }
            if !e.fires().is_empty() {
                self.inner.firing.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Applies `f` to the entry of `token`; true if the token started firing.
    // why track_caller: the lock is counted on `set` or `set_interest`, whichever posted.
    #[cfg_attr(feature = "lock-count", track_caller)]
    fn update(&self, token: Token, f: impl FnOnce(&mut Entry)) -> bool {
        let mut guard = self.lock();
        let t = &mut *guard;
        let e = t.entries.entry(token.0).or_default();
        let before = !e.fires().is_empty();
        f(e);
        let now = !e.fires().is_empty();
        if now && !e.hot {
            e.hot = true;
            t.hot.push(token.0);
        }
        let forget = e.ready.is_empty() && e.interest.is_empty() && !e.hot;
        if forget {
            // Nothing to remember: keep the table as small as the live sockets.
            t.entries.remove(&token.0);
        }
        match (before, now) {
            (false, true) => {
                self.inner.firing.fetch_add(1, Ordering::SeqCst);
                true
            }
            (true, false) => {
                self.inner.firing.fetch_sub(1, Ordering::SeqCst);
                false
            }
            _ => false,
        }
    }

    /// True if some token is ready in a watched direction (no lock taken).
    pub fn has_ready(&self) -> bool {
        self.inner.firing.load(Ordering::SeqCst) > 0
    }

    /// Appends an event for every token ready in a watched direction. Tokens stay
    /// reported on every call while they are (level semantics).
    pub fn collect(&self, fired: &mut Vec<FiredEvent>) {
        if !self.has_ready() {
            return;
        }
        let mut guard = self.lock();
        let t = &mut *guard;
        let entries = &mut t.entries;
        t.hot.retain(|&tok| match entries.get_mut(&tok) {
            Some(e) if !e.fires().is_empty() => {
                fired.push(FiredEvent { source: EventSource::Token(Token(tok)), mask: e.fires() });
                true
            }
            Some(e) => {
                e.hot = false;
                false
            }
            None => false,
        });
    }

    /// Tokens known to the table (watched, ready, or both).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when no token is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A socket's place in its worker's [`Readiness`]: the stack posts through it, only
/// when the readiness changes, and the token is forgotten when it is dropped (the
/// socket is gone, as a closed descriptor leaves every epoll set).
///
/// ```
/// use msgr_core::event::{Interest, Parker, Readiness, Registration};
/// let ready = Readiness::new(Parker::new().unwrap());
/// let mut reg = Registration::new(&ready);
/// ready.set_interest(reg.token(), Interest::READABLE);
/// reg.post(Interest::READABLE);
/// assert!(ready.has_ready());
/// drop(reg);
/// assert!(!ready.has_ready());
/// ```
#[derive(Debug)]
pub struct Registration {
    ready: Readiness,
    token: Token,
    posted: Interest,
}

impl Registration {
    /// A new token in `ready`, not ready yet.
    pub fn new(ready: &Readiness) -> Registration {
        Registration { ready: ready.clone(), token: ready.token(), posted: Interest::NONE }
    }

    /// The token the owner watches.
    pub fn token(&self) -> Token {
        self.token
    }

    /// The token as an event source.
    pub fn source(&self) -> EventSource {
        EventSource::Token(self.token)
    }

    /// Posts the socket's readiness now (level semantics); nothing happens when it is
    /// what was posted last.
    pub fn post(&mut self, ready: Interest) {
        if ready != self.posted {
            self.ready.set(self.token, ready);
            self.posted = ready;
        }
    }

    /// What was posted last.
    pub fn posted(&self) -> Interest {
        self.posted
    }

    /// True if registered in `ready`.
    pub fn is_in(&self, ready: &Readiness) -> bool {
        self.ready.same(ready)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.ready.remove(self.token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;
    use std::time::{Duration, Instant};

    fn table() -> Readiness {
        Readiness::new(Parker::new().unwrap())
    }

    fn fired(r: &Readiness) -> Vec<(Token, Interest)> {
        let mut v = Vec::new();
        r.collect(&mut v);
        v.into_iter()
            .map(|f| match f.source {
                EventSource::Token(t) => (t, f.mask),
                EventSource::Fd(_) => unreachable!("tokens only"),
            })
            .collect()
    }

    #[test]
    fn a_registration_posts_changes_only_and_forgets_its_token_when_dropped() {
        let r = table();
        let mut reg = Registration::new(&r);
        let t = reg.token();
        assert_eq!(reg.source(), EventSource::Token(t));
        assert!(reg.is_in(&r));
        r.set_interest(t, Interest::BOTH);
        reg.post(Interest::READABLE);
        assert_eq!(fired(&r), [(t, Interest::READABLE)]);
        // The stack changed the table behind the registration's back: a repeated post
        // of the same value is skipped, so the table keeps what it has.
        r.set(t, Interest::NONE);
        reg.post(Interest::READABLE);
        assert!(fired(&r).is_empty());
        reg.post(Interest::WRITABLE);
        assert_eq!(reg.posted(), Interest::WRITABLE);
        assert_eq!(fired(&r), [(t, Interest::WRITABLE)]);
        drop(reg);
        assert!(fired(&r).is_empty());
        assert!(r.is_empty());
    }

    #[test]
    fn tokens_are_unique() {
        let r = table();
        let a = r.token();
        let b = r.token();
        assert_ne!(a, b);
    }

    #[test]
    fn ready_but_not_watched_does_not_fire() {
        let r = table();
        let t = r.token();
        r.set(t, Interest::READABLE);
        assert!(!r.has_ready());
        assert!(fired(&r).is_empty());
        r.set_interest(t, Interest::WRITABLE);
        assert!(fired(&r).is_empty());
        r.set_interest(t, Interest::BOTH);
        assert_eq!(fired(&r), [(t, Interest::READABLE)]);
    }

    #[test]
    fn level_semantics_until_the_stack_says_otherwise() {
        let r = table();
        let t = r.token();
        r.set_interest(t, Interest::READABLE);
        r.set(t, Interest::READABLE);
        for _ in 0..3 {
            assert_eq!(fired(&r), [(t, Interest::READABLE)], "still ready: reported again");
        }
        r.set(t, Interest::NONE);
        assert!(!r.has_ready());
        assert!(fired(&r).is_empty());
        r.set(t, Interest::BOTH);
        assert_eq!(fired(&r), [(t, Interest::READABLE)]);
    }

    #[test]
    fn dropping_interest_stops_reports_and_firing_count_follows() {
        let r = table();
        let (a, b) = (r.token(), r.token());
        for t in [a, b] {
            r.set_interest(t, Interest::READABLE);
            r.set(t, Interest::READABLE);
        }
        assert_eq!(r.inner.firing.load(Ordering::SeqCst), 2);
        r.set_interest(a, Interest::NONE);
        assert_eq!(r.inner.firing.load(Ordering::SeqCst), 1);
        assert_eq!(fired(&r), [(b, Interest::READABLE)]);
        r.remove(b);
        assert!(!r.has_ready());
        assert!(fired(&r).is_empty());
        r.set(a, Interest::NONE);
        assert!(r.is_empty(), "nothing watched and nothing ready: forgotten");
    }

    #[test]
    fn a_removed_token_never_fires() {
        let r = table();
        let t = r.token();
        r.set_interest(t, Interest::READABLE);
        r.set(t, Interest::READABLE);
        r.remove(t);
        assert!(fired(&r).is_empty());
        assert!(!r.has_ready());
    }

    #[test]
    fn a_post_while_running_costs_no_wake() {
        let p = Parker::new().unwrap();
        let r = Readiness::new(Arc::clone(&p));
        let t = r.token();
        r.set_interest(t, Interest::READABLE);
        r.set(t, Interest::READABLE);
        assert_eq!(p.wakes(), 0);
        assert!(!p.try_park(&r), "a ready token forbids sleeping");
    }

    #[test]
    fn a_post_to_a_parked_driver_wakes_it_once() {
        let p = Parker::new().unwrap();
        let r = Readiness::new(Arc::clone(&p));
        let t = r.token();
        r.set_interest(t, Interest::READABLE);
        assert!(p.try_park(&r));
        let r2 = r.clone();
        let th = thread::spawn(move || r2.set(t, Interest::READABLE));
        th.join().unwrap();
        assert_eq!(p.wakes(), 1);
        assert!(!p.is_parked());
        p.unpark();
        p.drain().unwrap();
        assert_eq!(fired(&r), [(t, Interest::READABLE)]);
    }

    #[test]
    fn a_wake_before_parking_is_not_lost() {
        let p = Parker::new().unwrap();
        let r = Readiness::new(Arc::clone(&p));
        p.wake();
        assert_eq!(p.wakes(), 0, "not parked: no eventfd write");
        assert!(!p.try_park(&r), "the earlier wake forbids sleeping");
        assert!(p.try_park(&r), "and is consumed");
        p.wake();
        assert_eq!(p.wakes(), 1);
        p.unpark();
        p.drain().unwrap();
    }

    /// Many threads post while the driver parks and unparks in a loop; every post that
    /// makes a token fire is seen, and no park lasts long (a lost wake would block the
    /// poll below for its whole timeout).
    #[test]
    fn concurrent_posts_never_lose_a_wake() {
        let p = Parker::new().unwrap();
        let r = Readiness::new(Arc::clone(&p));
        let tokens: Vec<Token> = (0..4).map(|_| r.token()).collect();
        for &t in &tokens {
            r.set_interest(t, Interest::READABLE);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let posters: Vec<_> = tokens
            .iter()
            .map(|&t| {
                let (r, stop) = (r.clone(), Arc::clone(&stop));
                thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        r.set(t, Interest::READABLE);
                        n += 1;
                        thread::yield_now();
                    }
                    n
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_millis(300);
        let mut seen = 0;
        while Instant::now() < deadline {
            if p.try_park(&r) {
                let mut fds = [libc::pollfd { fd: p.fd(), events: libc::POLLIN, revents: 0 }];
                // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 2000) };
                assert!(n >= 0);
                if n == 0 {
                    // Woken by nobody for 2 s: only a lost wake explains it when a post
                    // is pending.
                    assert!(!r.has_ready(), "a lost wake: a token fired while we slept");
                }
                p.unpark();
                p.drain().unwrap();
            }
            let f = fired(&r);
            seen += f.len();
            for (t, _) in f {
                r.set(t, Interest::NONE);
            }
        }
        stop.store(true, Ordering::Relaxed);
        for t in posters {
            t.join().unwrap();
        }
        assert!(seen > 0);
    }
}
