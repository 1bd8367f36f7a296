//! An event driver for kernel-bypass stacks: epoll plus a completion source that is
//! polled, with a busy-poll window before the worker goes back to sleep.
//!
//! RDMA: the source polls the completion queue; its notification fd is the verbs
//! completion channel, armed (`ibv_req_notify_cq`) only when the worker is about to
//! block, so a busy connection never pays for interrupts. DPDK: the source runs
//! `rx_burst` and the TCP stack's poll and has no notification fd, so an idle worker
//! sleeps in short, growing steps instead. Either way the sockets report readiness
//! through eventfds in the same epoll set, so the EventCenter and everything above it
//! are unchanged.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{EpollDriver, EventDriver, FiredEvent, Interest, Waker};

/// Work a kernel-bypass stack does on each loop iteration of its worker.
pub trait CompletionSource {
    /// Processes whatever completed (completions, received packets) and signals the
    /// sockets it concerns. Returns how many items it handled; 0 means idle.
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

/// Epoll plus a polled completion source; see the module documentation.
pub struct PollingDriver<S: CompletionSource> {
    epoll: EpollDriver,
    source: S,
    /// Keep polling this long after the last work before sleeping (`ms_async_rdma_polling_us`).
    window: Duration,
    last_work: Option<Instant>,
    armed: bool,
    nap: Duration,
    max_nap: Duration,
    registered_notify: Option<RawFd>,
    scratch: Vec<FiredEvent>,
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
        let mut epoll = EpollDriver::new()?;
        let registered_notify = source.notify_fd();
        if let Some(fd) = registered_notify {
            epoll.add_event(fd, Interest::NONE, Interest::READABLE)?;
        }
        Ok(PollingDriver {
            epoll,
            source,
            window,
            last_work: None,
            armed: false,
            nap: Duration::ZERO,
            max_nap,
            registered_notify,
            scratch: Vec::new(),
        })
    }

    /// The source (e.g. to create sockets that share its state).
    pub fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    fn poll_source(&mut self, now: Instant) -> io::Result<usize> {
        let n = self.source.poll()?;
        if n > 0 {
            self.last_work = Some(now);
            self.nap = Duration::ZERO;
        }
        Ok(n)
    }

    /// Waits in epoll for socket events. A notification that fired (in any path, busy
    /// or not) is consumed and its completions polled, and the sockets they signalled
    /// are collected too, so a notification is never left pending.
    fn collect(&mut self, fired: &mut Vec<FiredEvent>, timeout: Option<Duration>) -> io::Result<()> {
        if self.epoll_wait(fired, timeout)? {
            self.armed = false;
            self.source.on_notify()?;
            self.poll_source(Instant::now())?;
            let mut more = Vec::new();
            self.epoll_wait(&mut more, Some(Duration::ZERO))?;
            for ev in more {
                if !fired.iter().any(|f| f.fd == ev.fd) {
                    fired.push(ev);
                }
            }
        }
        Ok(())
    }

    /// Waits in epoll, reporting socket events and swallowing the notification fd.
    fn epoll_wait(&mut self, fired: &mut Vec<FiredEvent>, timeout: Option<Duration>) -> io::Result<bool> {
        self.epoll.wait(&mut self.scratch, timeout)?;
        let mut notified = false;
        fired.clear();
        for ev in self.scratch.drain(..) {
            if Some(ev.fd) == self.registered_notify {
                notified = true;
            } else {
                fired.push(ev);
            }
        }
        Ok(notified)
    }
}

impl<S: CompletionSource> EventDriver for PollingDriver<S> {
    fn add_event(&mut self, fd: RawFd, cur: Interest, add: Interest) -> io::Result<()> {
        self.epoll.add_event(fd, cur, add)
    }

    fn del_event(&mut self, fd: RawFd, cur: Interest, del: Interest) -> io::Result<()> {
        self.epoll.del_event(fd, cur, del)
    }

    fn wait(&mut self, fired: &mut Vec<FiredEvent>, timeout: Option<Duration>) -> io::Result<()> {
        let now = Instant::now();
        let worked = self.poll_source(now)? > 0;
        let busy = self.last_work.is_some_and(|t| now.duration_since(t) < self.window);
        if worked || busy || timeout == Some(Duration::ZERO) {
            // Inside the busy window: never block, just collect socket readiness.
            return self.collect(fired, Some(Duration::ZERO));
        }
        let mut block = timeout;
        if self.registered_notify.is_some() {
            if !self.armed {
                self.source.arm()?;
                self.armed = true;
                // Work that completed between the last poll and arming raised no
                // notification: look once more before sleeping.
                if self.poll_source(Instant::now())? > 0 {
                    return self.collect(fired, Some(Duration::ZERO));
                }
            }
        } else {
            // Nothing can wake us for new packets: nap briefly, a little longer each
            // idle round, never beyond the caller's timeout.
            self.nap = (self.nap * 2).clamp(MIN_IDLE_NAP.min(self.max_nap), self.max_nap);
            block = Some(timeout.map_or(self.nap, |t| t.min(self.nap)));
        }
        self.collect(fired, block)
    }

    fn waker(&self) -> Arc<dyn Waker> {
        self.epoll.waker()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventFd;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A stand-in completion source for the driver's own logic: "completions" are a
    /// counter; its notification fd is an eventfd the test signals, like a verbs
    /// completion channel; handling a completion signals a socket eventfd.
    struct FakeSource {
        pending: Rc<RefCell<usize>>,
        notify: Option<EventFd>,
        socket: Rc<EventFd>,
        arms: usize,
        notified: usize,
    }

    impl CompletionSource for FakeSource {
        fn poll(&mut self) -> io::Result<usize> {
            let n = std::mem::take(&mut *self.pending.borrow_mut());
            if n > 0 {
                self.socket.notify()?;
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

    fn setup(with_notify: bool, window: Duration) -> (PollingDriver<FakeSource>, Rc<RefCell<usize>>, Rc<EventFd>) {
        let pending = Rc::new(RefCell::new(0));
        let socket = Rc::new(EventFd::new().unwrap());
        let src = FakeSource {
            pending: Rc::clone(&pending),
            notify: with_notify.then(|| EventFd::new().unwrap()),
            socket: Rc::clone(&socket),
            arms: 0,
            notified: 0,
        };
        let mut d = PollingDriver::new(src, window).unwrap();
        d.add_event(socket.fd(), Interest::NONE, Interest::READABLE).unwrap();
        (d, pending, socket)
    }

    #[test]
    fn completions_found_by_polling_report_the_socket_without_blocking() {
        let (mut d, pending, socket) = setup(true, Duration::from_millis(1));
        *pending.borrow_mut() = 3;
        let mut fired = Vec::new();
        d.wait(&mut fired, None).unwrap();
        assert_eq!(fired.iter().map(|f| f.fd).collect::<Vec<_>>(), vec![socket.fd()]);
        assert_eq!(d.source.arms, 0, "busy: no notification armed");
    }

    #[test]
    fn idle_source_is_armed_once_and_woken_by_its_notification() {
        let (mut d, pending, socket) = setup(true, Duration::ZERO);
        let mut fired = Vec::new();
        d.wait(&mut fired, Some(Duration::from_millis(1))).unwrap();
        assert!(fired.is_empty());
        assert_eq!(d.source.arms, 1);
        d.wait(&mut fired, Some(Duration::from_millis(1))).unwrap();
        assert_eq!(d.source.arms, 1, "still armed: no second request");
        // A completion arrives and the channel fires.
        *pending.borrow_mut() = 1;
        d.source.notify.as_ref().unwrap().notify().unwrap();
        d.wait(&mut fired, Some(Duration::from_secs(10))).unwrap();
        assert_eq!(d.source.notified, 1, "the notification is consumed even when polling found the work first");
        assert!(!d.armed, "a consumed notification must be re-armed before sleeping again");
        assert!(fired.iter().any(|f| f.fd == socket.fd()), "socket signalled by the completion: {fired:?}");
        assert!(fired.iter().all(|f| Some(f.fd) != d.source.notify_fd()), "the channel fd is never reported");
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
        let (d, _pending, socket) = setup(true, Duration::ZERO);
        let mut d = PollingDriver::new(Racy(d.source), Duration::ZERO).unwrap();
        d.add_event(socket.fd(), Interest::NONE, Interest::READABLE).unwrap();
        let mut fired = Vec::new();
        // Would block for 10 s if the post-arm poll were missing.
        d.wait(&mut fired, Some(Duration::from_secs(10))).unwrap();
        assert!(fired.iter().any(|f| f.fd == socket.fd()));
    }

    #[test]
    fn source_without_notification_naps_and_keeps_polling() {
        let (mut d, pending, socket) = setup(false, Duration::ZERO);
        let mut fired = Vec::new();
        d.wait(&mut fired, None).unwrap();
        assert!(fired.is_empty(), "idle: returns after a nap instead of blocking forever");
        assert!(d.nap > Duration::ZERO && d.nap <= MAX_IDLE_NAP);
        *pending.borrow_mut() = 2;
        d.wait(&mut fired, None).unwrap();
        assert!(fired.iter().any(|f| f.fd == socket.fd()));
        assert_eq!(d.nap, Duration::ZERO, "work resets the backoff");
    }

    #[test]
    fn a_zero_nap_never_sleeps() {
        let (d, _pending, _socket) = setup(false, Duration::ZERO);
        let mut d = PollingDriver::with_max_idle_nap(d.source, Duration::ZERO, Duration::ZERO).unwrap();
        let mut fired = Vec::new();
        for _ in 0..3 {
            d.wait(&mut fired, None).unwrap();
            assert_eq!(d.nap, Duration::ZERO);
        }
    }

    #[test]
    fn waker_interrupts_a_blocked_wait() {
        let (mut d, _pending, _socket) = setup(true, Duration::ZERO);
        let w = d.waker();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            w.wake();
        });
        let mut fired = Vec::new();
        d.wait(&mut fired, None).unwrap();
        t.join().unwrap();
        assert!(fired.is_empty());
    }
}
