//! An event driver for kernel-bypass stacks: a completion source that is polled, with
//! a busy-poll window before the worker goes back to sleep, and kernel descriptors
//! looked at only when there are some, and only now and then while busy.
//!
//! RDMA: the source polls the completion queues; its notification fd is the verbs
//! completion channel, armed (`ibv_req_notify_cq`) only when the worker is about to
//! block, so a busy connection never pays for interrupts. DPDK: the source runs
//! `rx_burst` and the TCP stack's poll and has no notification fd, so an idle worker
//! naps in short, growing steps instead. Either way the sockets post their readiness to
//! the worker's [`Readiness`] (a token each, no descriptor), so a busy worker makes no
//! system call per message: no `epoll_wait` while it has work and no descriptor of its
//! own to watch, and none to be woken either (the [`Parker`] writes its eventfd only to
//! a worker that is asleep).

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::epoll::{take_parker_event, Epoll};
use super::ready::{Parker, Readiness};
use super::{EventDriver, EventSource, FiredEvent, Interest};

/// Work a kernel-bypass stack does on each loop iteration of its worker.
pub trait CompletionSource {
    /// Processes whatever completed (completions, received packets) and posts the
    /// readiness of the sockets it concerns. Returns how many items it handled; 0 means
    /// idle.
    fn poll(&mut self) -> io::Result<usize>;
    /// A descriptor that becomes readable when new work arrives after [`arm`] (the
    /// verbs completion channel), or `None` if the source can only be polled.
    ///
    /// [`arm`]: CompletionSource::arm
    fn notify_fd(&self) -> Option<RawFd>;
    /// Requests a notification on [`notify_fd`](CompletionSource::notify_fd) for the
    /// next completion.
    fn arm(&mut self) -> io::Result<()>;
    /// Consumes a notification that fired (e.g. `ibv_get_cq_event` + ack).
    fn on_notify(&mut self) -> io::Result<()>;
}

/// Default longest nap of an idle worker whose source cannot notify (DPDK without work).
pub const MAX_IDLE_NAP: Duration = Duration::from_millis(1);
/// First nap of an idle worker whose source cannot notify.
const MIN_IDLE_NAP: Duration = Duration::from_micros(50);
/// While busy, kernel descriptors are looked at after this long at first...
const FD_CHECK_MIN: Duration = Duration::from_millis(1);
/// ... and, while each look finds nothing, after twice as long each time, up to this.
/// A side-channel event or a new connection waits at most this long behind a busy
/// worker; the data path never waits for it.
const FD_CHECK_MAX: Duration = Duration::from_millis(32);

/// Kernel descriptors plus a polled completion source; see the module documentation.
pub struct PollingDriver<S: CompletionSource> {
    epoll: Epoll,
    parker: Arc<Parker>,
    source: S,
    /// Keep polling this long after the last work before sleeping (`ms_async_rdma_polling_us`).
    window: Duration,
    last_work: Option<Instant>,
    armed: bool,
    nap: Duration,
    max_nap: Duration,
    registered_notify: Option<RawFd>,
    /// Descriptors the center registered (beyond the parker and the notification fd).
    fds: usize,
    next_fd_check: Instant,
    fd_check_every: Duration,
    scratch: Vec<FiredEvent>,
    epoll_waits: u64,
}

impl<S: CompletionSource> PollingDriver<S> {
    /// A driver polling `source`, busy for `window` after the last work; an idle source
    /// without a notification fd is polled after naps of up to `MAX_IDLE_NAP`.
    pub fn new(source: S, window: Duration) -> io::Result<Self> {
        Self::with_max_idle_nap(source, window, MAX_IDLE_NAP)
    }

    /// As [`new`](Self::new), with naps of up to `max_nap` (zero: never sleep, poll
    /// continuously — a dedicated core).
    pub fn with_max_idle_nap(source: S, window: Duration, max_nap: Duration) -> io::Result<Self> {
        Self::with_parker(source, window, max_nap, Parker::new()?)
    }

    /// As [`with_max_idle_nap`](Self::with_max_idle_nap), woken through `parker`.
    pub fn with_parker(source: S, window: Duration, max_nap: Duration, parker: Arc<Parker>) -> io::Result<Self> {
        let mut epoll = Epoll::new()?;
        epoll.add_event(parker.fd(), Interest::NONE, Interest::READABLE)?;
        let registered_notify = source.notify_fd();
        if let Some(fd) = registered_notify {
            epoll.add_event(fd, Interest::NONE, Interest::READABLE)?;
        }
        Ok(PollingDriver {
            epoll,
            parker,
            source,
            window,
            last_work: None,
            armed: false,
            nap: Duration::ZERO,
            max_nap,
            registered_notify,
            fds: 0,
            next_fd_check: Instant::now(),
            fd_check_every: FD_CHECK_MIN,
            scratch: Vec::new(),
            epoll_waits: 0,
        })
    }

    /// The source (e.g. to create sockets that share its state).
    pub fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    /// `epoll_wait` calls made so far (each one a system call).
    pub fn epoll_waits(&self) -> u64 {
        self.epoll_waits
    }

    fn poll_source(&mut self, now: Instant) -> io::Result<usize> {
        let n = self.source.poll()?;
        if n > 0 {
            self.last_work = Some(now);
            self.nap = Duration::ZERO;
        }
        Ok(n)
    }

    /// True when there are kernel descriptors to look at besides the parker.
    fn has_fds(&self) -> bool {
        self.fds > 0 || self.registered_notify.is_some()
    }

    /// Waits in epoll, reporting the center's descriptors. A notification that fired is
    /// consumed and its completions polled; the parker's wake is consumed.
    fn collect(&mut self, fired: &mut Vec<FiredEvent>, timeout: Option<Duration>, now: Instant) -> io::Result<()> {
        let mut scratch = std::mem::take(&mut self.scratch);
        self.epoll_waits += 1;
        let r = self.epoll.wait(&mut scratch, timeout);
        if let Err(e) = r {
            self.scratch = scratch;
            return Err(e);
        }
        take_parker_event(&mut scratch, &self.parker)?;
        let mut notified = false;
        for ev in scratch.drain(..) {
            if Some(ev.source) == self.registered_notify.map(EventSource::Fd) {
                notified = true;
            } else {
                fired.push(ev);
            }
        }
        self.scratch = scratch;
        // Adaptive: look again soon after something was found, rarely while nothing is.
        self.fd_check_every =
            if fired.is_empty() && !notified { (self.fd_check_every * 2).min(FD_CHECK_MAX) } else { FD_CHECK_MIN };
        self.next_fd_check = now + self.fd_check_every;
        if notified {
            self.armed = false;
            self.source.on_notify()?;
            self.poll_source(Instant::now())?;
        }
        Ok(())
    }
}

impl<S: CompletionSource> EventDriver for PollingDriver<S> {
    fn add_event(&mut self, fd: RawFd, cur: Interest, add: Interest) -> io::Result<()> {
        self.epoll.add_event(fd, cur, add)?;
        if cur.is_empty() && !add.is_empty() {
            self.fds += 1;
            // A new descriptor is looked at on the next iteration, busy or not.
            self.next_fd_check = Instant::now();
            self.fd_check_every = FD_CHECK_MIN;
        }
        Ok(())
    }

    fn del_event(&mut self, fd: RawFd, cur: Interest, del: Interest) -> io::Result<()> {
        let r = self.epoll.del_event(fd, cur, del);
        if !cur.is_empty() && cur.difference(del).is_empty() {
            self.fds = self.fds.saturating_sub(1);
        }
        r
    }

    fn wait(&mut self, fired: &mut Vec<FiredEvent>, timeout: Option<Duration>, ready: &Readiness) -> io::Result<()> {
        fired.clear();
        let now = Instant::now();
        let worked = self.poll_source(now)? > 0;
        let busy = worked
            || self.last_work.is_some_and(|t| now.duration_since(t) < self.window)
            || timeout == Some(Duration::ZERO)
            || ready.has_ready();
        if busy {
            // Never block; look at kernel descriptors only if there are any, and only
            // now and then, so that busy polling makes no system call per iteration.
            // Work found while armed has raised a notification: consume it now, once,
            // so the source is known to be disarmed.
            if self.armed || (self.has_fds() && now >= self.next_fd_check) {
                self.collect(fired, Some(Duration::ZERO), now)?;
            }
            return Ok(());
        }
        let mut block = timeout;
        if self.registered_notify.is_some() {
            if !self.armed {
                self.source.arm()?;
                self.armed = true;
                // Work that completed between the last poll and arming raised no
                // notification: look once more before sleeping.
                if self.poll_source(Instant::now())? > 0 {
                    return Ok(());
                }
            }
        } else if self.max_nap.is_zero() {
            // A dedicated core: never sleep, and look at descriptors only now and then.
            if self.has_fds() && now >= self.next_fd_check {
                self.collect(fired, Some(Duration::ZERO), now)?;
            }
            return Ok(());
        } else {
            // Nothing can wake us for new packets: nap briefly, a little longer each
            // idle round, never beyond the caller's timeout.
            self.nap = (self.nap * 2).clamp(MIN_IDLE_NAP.min(self.max_nap), self.max_nap);
            block = Some(timeout.map_or(self.nap, |t| t.min(self.nap)));
        }
        if !self.parker.try_park(ready) {
            if self.has_fds() && now >= self.next_fd_check {
                self.collect(fired, Some(Duration::ZERO), now)?;
            }
            return Ok(());
        }
        let r = self.collect(fired, block, now);
        self.parker.unpark();
        r
    }

    fn parker(&self) -> Arc<Parker> {
        Arc::clone(&self.parker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventFd, Token, Waker};
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A stand-in completion source for the driver's own logic (the RDMA and DPDK
    /// sources are tested with their stacks): "completions" are a counter; its
    /// notification fd is an eventfd the test signals, like a verbs completion channel;
    /// handling a completion posts a socket token's readiness, as a stack does.
    struct FakeSource {
        pending: Rc<RefCell<usize>>,
        notify: Option<EventFd>,
        post: Option<(Readiness, Token)>,
        arms: usize,
        notified: usize,
    }

    impl CompletionSource for FakeSource {
        fn poll(&mut self) -> io::Result<usize> {
            let n = std::mem::take(&mut *self.pending.borrow_mut());
            if let (true, Some((r, t))) = (n > 0, &self.post) {
                r.set(*t, Interest::READABLE);
            }
            Ok(n)
        }
        fn notify_fd(&self) -> Option<RawFd> {
            self.notify.as_ref().map(EventFd::fd)
        }
        fn arm(&mut self) -> io::Result<()> {
            self.arms += 1;
            Ok(())
        }
        fn on_notify(&mut self) -> io::Result<()> {
            self.notified += 1;
            if let Some(n) = &self.notify {
                n.drain()?;
            }
            Ok(())
        }
    }

    struct Rig {
        d: PollingDriver<FakeSource>,
        pending: Rc<RefCell<usize>>,
        ready: Readiness,
        token: Token,
    }

    impl Rig {
        fn new(with_notify: bool, window: Duration, max_nap: Duration) -> Rig {
            let pending = Rc::new(RefCell::new(0));
            let src = FakeSource {
                pending: Rc::clone(&pending),
                notify: with_notify.then(|| EventFd::new().unwrap()),
                post: None,
                arms: 0,
                notified: 0,
            };
            let mut d = PollingDriver::with_max_idle_nap(src, window, max_nap).unwrap();
            let ready = Readiness::new(d.parker());
            let token = ready.token();
            ready.set_interest(token, Interest::READABLE);
            d.source.post = Some((ready.clone(), token));
            Rig { d, pending, ready, token }
        }

        /// One wait; returns the descriptors it reported and whether the token fired.
        fn wait(&mut self, timeout: Option<Duration>) -> (Vec<FiredEvent>, bool) {
            let mut fired = Vec::new();
            self.d.wait(&mut fired, timeout, &self.ready).unwrap();
            let fds = fired.clone();
            self.ready.collect(&mut fired);
            let token = fired.iter().any(|f| f.source == EventSource::Token(self.token));
            // Consumed, as a socket that was read would post.
            self.ready.set(self.token, Interest::NONE);
            (fds, token)
        }
    }

    #[test]
    fn completions_found_by_polling_post_the_socket_without_a_system_call() {
        let mut rig = Rig::new(true, Duration::from_secs(10), MAX_IDLE_NAP);
        *rig.pending.borrow_mut() = 3;
        let (_, token) = rig.wait(None);
        assert!(token);
        assert_eq!(rig.d.source.arms, 0, "busy: no notification armed");
        // Busy for the whole window: many iterations, each finding work.
        for _ in 0..1000 {
            *rig.pending.borrow_mut() = 1;
            assert!(rig.wait(None).1);
        }
        assert!(rig.d.epoll_waits() <= 1, "{} epoll waits while busy", rig.d.epoll_waits());
        assert_eq!(rig.d.parker().wakes(), 0);
    }

    #[test]
    fn a_busy_driver_without_descriptors_never_calls_epoll() {
        let mut rig = Rig::new(false, Duration::from_secs(10), MAX_IDLE_NAP);
        for _ in 0..10_000 {
            *rig.pending.borrow_mut() = 1;
            rig.wait(None);
        }
        assert_eq!(rig.d.epoll_waits(), 0);
    }

    #[test]
    fn a_busy_driver_looks_at_descriptors_now_and_then_and_reports_them() {
        let mut rig = Rig::new(false, Duration::from_secs(10), MAX_IDLE_NAP);
        let efd = EventFd::new().unwrap();
        rig.d.add_event(efd.fd(), Interest::NONE, Interest::READABLE).unwrap();
        // Newly added descriptors are looked at on the next iteration.
        efd.notify().unwrap();
        *rig.pending.borrow_mut() = 1;
        let (fds, _) = rig.wait(None);
        assert_eq!(fds, [FiredEvent { source: EventSource::Fd(efd.fd()), mask: Interest::READABLE }]);
        efd.drain().unwrap();
        let start = Instant::now();
        let mut iterations = 0u64;
        while start.elapsed() < Duration::from_millis(100) {
            *rig.pending.borrow_mut() = 1;
            rig.wait(None);
            iterations += 1;
        }
        let waits = rig.d.epoll_waits();
        // Backing off from FD_CHECK_MIN to FD_CHECK_MAX: 1+2+4+8+16+32... ms.
        assert!(waits <= 10, "{waits} epoll waits in {iterations} busy iterations");
        // A descriptor that becomes ready is still seen within FD_CHECK_MAX.
        efd.notify().unwrap();
        let seen_by = Instant::now() + FD_CHECK_MAX * 4;
        loop {
            *rig.pending.borrow_mut() = 1;
            if !rig.wait(None).0.is_empty() {
                break;
            }
            assert!(Instant::now() < seen_by, "a ready descriptor went unseen while busy");
        }
    }

    #[test]
    fn idle_source_is_armed_once_and_woken_by_its_notification() {
        let mut rig = Rig::new(true, Duration::ZERO, MAX_IDLE_NAP);
        rig.wait(Some(Duration::from_millis(1)));
        assert_eq!(rig.d.source.arms, 1);
        rig.wait(Some(Duration::from_millis(1)));
        assert_eq!(rig.d.source.arms, 1, "still armed: no second request");
        // A completion arrives and the channel fires.
        *rig.pending.borrow_mut() = 1;
        rig.d.source.notify.as_ref().unwrap().notify().unwrap();
        let (fds, token) = rig.wait(Some(Duration::from_secs(10)));
        assert_eq!(rig.d.source.notified, 1, "the notification is consumed even when polling found the work first");
        assert!(!rig.d.armed, "a consumed notification must be re-armed before sleeping again");
        assert!(token, "socket posted by the completion");
        assert!(fds.is_empty(), "the channel fd is never reported: {fds:?}");
    }

    #[test]
    fn work_completing_while_arming_is_not_missed() {
        struct Racy(FakeSource);
        impl CompletionSource for Racy {
            fn poll(&mut self) -> io::Result<usize> {
                self.0.poll()
            }
            fn notify_fd(&self) -> Option<RawFd> {
                self.0.notify_fd()
            }
            fn arm(&mut self) -> io::Result<()> {
                // A completion lands right as we arm: no notification will come for it.
                *self.0.pending.borrow_mut() += 1;
                self.0.arm()
            }
            fn on_notify(&mut self) -> io::Result<()> {
                self.0.on_notify()
            }
        }
        let rig = Rig::new(true, Duration::ZERO, MAX_IDLE_NAP);
        let ready = rig.ready.clone();
        let mut d = PollingDriver::new(Racy(rig.d.source), Duration::ZERO).unwrap();
        let mut fired = Vec::new();
        let start = Instant::now();
        // Would block for 10 s if the post-arm poll were missing.
        d.wait(&mut fired, Some(Duration::from_secs(10)), &ready).unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
        ready.collect(&mut fired);
        assert!(fired.iter().any(|f| f.source == EventSource::Token(rig.token)));
    }

    #[test]
    fn source_without_notification_naps_and_keeps_polling() {
        let mut rig = Rig::new(false, Duration::ZERO, MAX_IDLE_NAP);
        let (_, token) = rig.wait(None);
        assert!(!token, "idle: returns after a nap instead of blocking forever");
        assert!(rig.d.nap > Duration::ZERO && rig.d.nap <= MAX_IDLE_NAP);
        *rig.pending.borrow_mut() = 2;
        assert!(rig.wait(None).1);
        assert_eq!(rig.d.nap, Duration::ZERO, "work resets the backoff");
    }

    #[test]
    fn a_zero_nap_never_sleeps_nor_calls_epoll() {
        let mut rig = Rig::new(false, Duration::ZERO, Duration::ZERO);
        for _ in 0..1000 {
            rig.wait(None);
            assert_eq!(rig.d.nap, Duration::ZERO);
        }
        assert_eq!(rig.d.epoll_waits(), 0);
    }

    #[test]
    fn waker_interrupts_a_blocked_wait() {
        let mut rig = Rig::new(true, Duration::ZERO, MAX_IDLE_NAP);
        let w = rig.d.parker();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            w.wake();
        });
        let start = Instant::now();
        let (fds, token) = rig.wait(None);
        t.join().unwrap();
        assert!(fds.is_empty() && !token);
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_post_from_another_thread_wakes_a_sleeping_driver() {
        let mut rig = Rig::new(true, Duration::ZERO, MAX_IDLE_NAP);
        let (ready, token, parker) = (rig.ready.clone(), rig.token, rig.d.parker());
        let t = std::thread::spawn(move || {
            let give_up = Instant::now() + Duration::from_secs(10);
            while !parker.is_parked() && Instant::now() < give_up {
                std::thread::yield_now();
            }
            ready.set(token, Interest::READABLE);
        });
        let start = Instant::now();
        let mut seen = false;
        while !seen {
            assert!(start.elapsed() < Duration::from_secs(20));
            seen = rig.wait(Some(Duration::from_secs(30))).1;
        }
        t.join().unwrap();
    }
}
