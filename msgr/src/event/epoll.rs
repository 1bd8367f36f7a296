//! Level-triggered epoll: a raw descriptor set ([`Epoll`]) and the driver built on it
//! ([`EpollDriver`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use super::driver::EventDriver;
use super::ready::{Parker, Readiness};
use super::{EventSource, FiredEvent, Interest};

/// Initial size of the buffer the kernel fills; it grows when a wait fills it.
const INITIAL_EVENTS: usize = 64;
/// The buffer stops growing here: more ready descriptors than this are still reported,
/// over successive waits, because epoll is level-triggered and rotates its ready list.
const MAX_EVENTS: usize = 4096;

/// The kernel's `struct __kernel_timespec`, which `epoll_pwait2` takes. Both fields are
/// 64-bit on every ABI, unlike `libc::timespec` on 32-bit targets.
#[repr(C)]
struct KernelTimespec {
    tv_sec: i64,
    tv_nsec: i64,
}

/// A level-triggered epoll set of descriptors, each registered with its own number.
///
/// Timeouts have microsecond resolution through `epoll_pwait2` (Linux 5.11+); on older
/// kernels, or where a sandbox filters the call, it falls back to `epoll_wait` with the
/// timeout rounded up to whole milliseconds, so a wait never ends before its timeout.
#[derive(Debug)]
pub struct Epoll {
    epfd: OwnedFd,
    events: Vec<libc::epoll_event>,
    /// Cleared for good the first time the kernel refuses `epoll_pwait2`.
    use_pwait2: bool,
}

impl Epoll {
    /// Creates an epoll instance (`EPOLL_CLOEXEC`).
    pub fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns, so
        // `OwnedFd` may take ownership and close it exactly once.
        let epfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { epfd, events: vec![libc::epoll_event { events: 0, u64: 0 }; INITIAL_EVENTS], use_pwait2: true })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid, initialised epoll_event that outlives the call (the
        // kernel only reads it); `epfd` is an open epoll descriptor owned by `self`. A bad
        // `fd` is reported by the kernel as an error, not undefined behaviour.
        let r = unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd, &mut ev) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Moves `fd` from being watched for `cur` to being watched for `new`.
    pub fn update(&self, fd: RawFd, cur: Interest, new: Interest) -> io::Result<()> {
        let token = u64::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        let events = epoll_events(new);
        match (cur.is_empty(), new.is_empty()) {
            (true, true) => Ok(()),
            (true, false) => match self.ctl(libc::EPOLL_CTL_ADD, fd, events, token) {
                // Already in the set although the caller believed it was not: the
                // caller's mask is authoritative, so make the kernel agree.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => self.ctl(libc::EPOLL_CTL_MOD, fd, events, token),
                r => r,
            },
            (false, false) => match self.ctl(libc::EPOLL_CTL_MOD, fd, events, token) {
                // The kernel forgets a registration when the descriptor is closed; if the
                // number was reused since, register the new descriptor afresh.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => self.ctl(libc::EPOLL_CTL_ADD, fd, events, token),
                r => r,
            },
            (false, true) => match self.ctl(libc::EPOLL_CTL_DEL, fd, 0, token) {
                // Already gone (closed before being deleted): the goal is reached.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EBADF)) => Ok(()),
                r => r,
            },
        }
    }

    /// Watches `fd` for `cur | add`.
    pub fn add_event(&mut self, fd: RawFd, cur: Interest, add: Interest) -> io::Result<()> {
        self.update(fd, cur, cur | add)
    }

    /// Watches `fd` for `cur - del`; stops watching it when nothing remains.
    pub fn del_event(&mut self, fd: RawFd, cur: Interest, del: Interest) -> io::Result<()> {
        self.update(fd, cur, cur.difference(del))
    }

    /// Waits up to `timeout` (`None`: forever) and replaces `fired` with the ready
    /// descriptors. A signal interruption reports nothing, not an error.
    pub fn wait(&mut self, fired: &mut Vec<FiredEvent>, timeout: Option<Duration>) -> io::Result<()> {
        fired.clear();
        let n = match self.wait_raw(timeout) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        };
        for ev in &self.events[..n] {
            // Copy the fields out: `epoll_event` is packed on some targets.
            let (bits, token) = (ev.events, ev.u64);
            // Tokens are fd numbers that fit in RawFd (see `update`).
            fired.push(FiredEvent { source: EventSource::Fd(token as RawFd), mask: interest_from_epoll(bits) });
        }
        if n == self.events.len() && n < MAX_EVENTS {
            let len = (n * 2).min(MAX_EVENTS);
            self.events.resize(len, libc::epoll_event { events: 0, u64: 0 });
        }
        Ok(())
    }

    /// One epoll wait into `self.events`; returns how many entries the kernel filled.
    fn wait_raw(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        // The buffer never exceeds MAX_EVENTS, so this cannot truncate.
        let max = self.events.len() as libc::c_int;
        if self.use_pwait2 {
            let ts = timeout.map(|d| KernelTimespec {
                tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(d.subsec_nanos()),
            });
            let ts_ptr = ts.as_ref().map_or(ptr::null(), |t| t as *const KernelTimespec);
            // SAFETY: the kernel writes at most `max` entries into `self.events`, which
            // holds exactly `max` initialised epoll_events and is not otherwise borrowed
            // during the call. `ts_ptr` is null (block) or points at `ts`, a live
            // `__kernel_timespec`-layout value the kernel only reads. A null signal mask
            // means "leave the mask alone", and its size argument is then ignored.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    self.epfd.as_raw_fd(),
                    self.events.as_mut_ptr(),
                    max,
                    ts_ptr,
                    ptr::null::<libc::sigset_t>(),
                    0 as libc::size_t,
                )
            };
            if r >= 0 {
                return Ok(r as usize);
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                // ENOSYS: kernel older than 5.11. EPERM: a seccomp filter that predates
                // the call (epoll_pwait2 itself never returns EPERM).
                Some(libc::ENOSYS | libc::EPERM) => self.use_pwait2 = false,
                _ => return Err(err),
            }
        }
        // A plain system call rather than glibc's `epoll_wait`, a pthread cancellation
        // point that switches asynchronous cancellation on and off around every wait
        // (msgr never cancels a thread). `epoll_pwait` with no signal mask is
        // `epoll_wait`, and exists on every architecture.
        // SAFETY: as above, the kernel writes at most `max` entries into `self.events`,
        // a buffer of exactly `max` initialised epoll_events; a null signal mask means
        // "leave the mask alone".
        let r = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait,
                self.epfd.as_raw_fd(),
                self.events.as_mut_ptr(),
                max,
                timeout_ms(timeout),
                ptr::null::<libc::sigset_t>(),
                0 as libc::size_t,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    }
}

/// The epoll descriptor itself, so that a set can be nested in another epoll set (it is
/// readable while any of its own descriptors is ready): the RDMA stack watches its
/// completion channel and side-channel sockets through one such inner set.
impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> RawFd {
        self.epfd.as_raw_fd()
    }
}

/// An [`EventDriver`] over a level-triggered [`Epoll`] set, woken through its
/// [`Parker`]'s eventfd.
#[derive(Debug)]
pub struct EpollDriver {
    epoll: Epoll,
    parker: Arc<Parker>,
}

impl EpollDriver {
    /// Creates an epoll instance with a new parker registered.
    pub fn new() -> io::Result<Self> {
        Self::with_parker(Parker::new()?)
    }

    /// Creates an epoll instance woken through `parker`.
    pub fn with_parker(parker: Arc<Parker>) -> io::Result<Self> {
        let mut epoll = Epoll::new()?;
        epoll.add_event(parker.fd(), Interest::NONE, Interest::READABLE)?;
        Ok(EpollDriver { epoll, parker })
    }
}

impl EventDriver for EpollDriver {
    fn add_event(&mut self, fd: RawFd, cur: Interest, add: Interest) -> io::Result<()> {
        self.epoll.add_event(fd, cur, add)
    }

    fn del_event(&mut self, fd: RawFd, cur: Interest, del: Interest) -> io::Result<()> {
        self.epoll.del_event(fd, cur, del)
    }

    fn wait(&mut self, fired: &mut Vec<FiredEvent>, timeout: Option<Duration>, ready: &Readiness) -> io::Result<()> {
        let parked = timeout != Some(Duration::ZERO) && self.parker.try_park(ready);
        let r = self.epoll.wait(fired, if parked { timeout } else { Some(Duration::ZERO) });
        if parked {
            self.parker.unpark();
        }
        r?;
        take_parker_event(fired, &self.parker)
    }

    fn parker(&self) -> Arc<Parker> {
        Arc::clone(&self.parker)
    }
}

/// Removes the parker's descriptor from `fired`, draining it if it fired.
pub(crate) fn take_parker_event(fired: &mut Vec<FiredEvent>, parker: &Parker) -> io::Result<()> {
    let pfd = EventSource::Fd(parker.fd());
    if let Some(i) = fired.iter().position(|e| e.source == pfd) {
        fired.swap_remove(i);
        parker.drain()?;
    }
    Ok(())
}

fn epoll_events(interest: Interest) -> u32 {
    let mut events = 0;
    if interest.contains(Interest::READABLE) {
        events |= libc::EPOLLIN as u32;
    }
    if interest.contains(Interest::WRITABLE) {
        events |= libc::EPOLLOUT as u32;
    }
    events
}

/// Errors and hangups count as both directions so that whoever owns the descriptor
/// runs its read or write path and meets the error (or EOF) there.
fn interest_from_epoll(bits: u32) -> Interest {
    let mut mask = Interest::NONE;
    if bits & libc::EPOLLIN as u32 != 0 {
        mask |= Interest::READABLE;
    }
    if bits & libc::EPOLLOUT as u32 != 0 {
        mask |= Interest::WRITABLE;
    }
    if bits & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
        mask = Interest::BOTH;
    }
    mask
}

/// `epoll_wait`'s millisecond timeout, rounded up so the wait never ends early;
/// -1 (block) for `None`, saturating at `c_int::MAX`.
fn timeout_ms(timeout: Option<Duration>) -> libc::c_int {
    match timeout {
        None => -1,
        Some(d) => {
            // Rounded up, in 64-bit arithmetic (`as_nanos` is 128-bit: a division
            // routine per wait).
            let ms = d.as_secs().saturating_mul(1000).saturating_add(u64::from(d.subsec_nanos().div_ceil(1_000_000)));
            libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventFd, Waker};
    use std::collections::HashSet;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::thread;
    use std::time::Instant;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a writable array of two c_ints, as pipe2 requires.
        let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        assert_eq!(r, 0, "pipe2: {}", io::Error::last_os_error());
        // SAFETY: both descriptors were just created by pipe2 and are owned by no one else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn rd(d: &EpollDriver) -> Readiness {
        Readiness::new(d.parker())
    }

    fn poll(d: &mut EpollDriver) -> Vec<FiredEvent> {
        let mut fired = Vec::new();
        let r = rd(d);
        d.wait(&mut fired, Some(Duration::ZERO), &r).unwrap();
        fired
    }

    fn fd_ev(fd: RawFd, mask: Interest) -> FiredEvent {
        FiredEvent { source: EventSource::Fd(fd), mask }
    }

    /// Waits (up to 10 s in total) until `fd` is reported, returning its mask.
    fn wait_for(d: &mut EpollDriver, fd: RawFd) -> Interest {
        let give_up = Instant::now() + Duration::from_secs(10);
        let mut fired = Vec::new();
        let r = rd(d);
        while Instant::now() < give_up {
            d.wait(&mut fired, Some(Duration::from_millis(100)), &r).unwrap();
            if let Some(ev) = fired.iter().find(|ev| ev.source == EventSource::Fd(fd)) {
                return ev.mask;
            }
        }
        panic!("fd {fd} never fired");
    }

    #[test]
    fn poll_with_nothing_ready_is_empty() {
        let mut d = EpollDriver::new().unwrap();
        assert!(poll(&mut d).is_empty());
    }

    #[test]
    fn eventfd_readable() {
        let mut d = EpollDriver::new().unwrap();
        let efd = EventFd::new().unwrap();
        d.add_event(efd.fd(), Interest::NONE, Interest::READABLE).unwrap();
        assert!(poll(&mut d).is_empty());
        efd.notify().unwrap();
        assert_eq!(poll(&mut d), vec![fd_ev(efd.fd(), Interest::READABLE)]);
        // Level-triggered: still reported until drained.
        assert_eq!(poll(&mut d).len(), 1);
        assert_eq!(efd.drain().unwrap(), 1);
        assert!(poll(&mut d).is_empty());
    }

    #[test]
    fn add_modify_delete_transitions() {
        let mut d = EpollDriver::new().unwrap();
        let efd = EventFd::new().unwrap();
        let fd = efd.fd();
        // An eventfd is always writable.
        d.add_event(fd, Interest::NONE, Interest::WRITABLE).unwrap();
        assert_eq!(poll(&mut d), vec![fd_ev(fd, Interest::WRITABLE)]);
        efd.notify().unwrap();
        d.add_event(fd, Interest::WRITABLE, Interest::READABLE).unwrap();
        assert_eq!(poll(&mut d), vec![fd_ev(fd, Interest::BOTH)]);
        d.del_event(fd, Interest::BOTH, Interest::WRITABLE).unwrap();
        assert_eq!(poll(&mut d), vec![fd_ev(fd, Interest::READABLE)]);
        d.del_event(fd, Interest::READABLE, Interest::READABLE).unwrap();
        assert!(poll(&mut d).is_empty());
        // Deleting what is not registered is a no-op, as is adding nothing.
        d.del_event(fd, Interest::READABLE, Interest::BOTH).unwrap();
        d.del_event(fd, Interest::NONE, Interest::READABLE).unwrap();
        d.add_event(fd, Interest::NONE, Interest::NONE).unwrap();
        assert!(poll(&mut d).is_empty());
    }

    #[test]
    fn stale_caller_masks_are_repaired() {
        let mut d = EpollDriver::new().unwrap();
        let efd = EventFd::new().unwrap();
        let fd = efd.fd();
        efd.notify().unwrap();
        // Caller thinks it is registered (EPOLL_CTL_MOD gets ENOENT).
        d.add_event(fd, Interest::WRITABLE, Interest::READABLE).unwrap();
        assert_eq!(poll(&mut d), vec![fd_ev(fd, Interest::BOTH)]);
        // Caller thinks it is not registered (EPOLL_CTL_ADD gets EEXIST).
        d.add_event(fd, Interest::NONE, Interest::READABLE).unwrap();
        assert_eq!(poll(&mut d), vec![fd_ev(fd, Interest::READABLE)]);
    }

    #[test]
    fn bad_descriptors_are_errors() {
        let mut d = EpollDriver::new().unwrap();
        assert!(d.add_event(-1, Interest::NONE, Interest::READABLE).is_err());
        let (r, w) = pipe();
        let fd = r.as_raw_fd();
        drop((r, w));
        // Only a removal of something already gone is tolerated.
        d.del_event(fd, Interest::READABLE, Interest::READABLE).unwrap();
    }

    #[test]
    fn waker_interrupts_blocking_wait_and_is_not_reported() {
        let mut d = EpollDriver::new().unwrap();
        let waker = d.parker();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            waker.wake();
        });
        let mut fired = vec![fd_ev(99, Interest::BOTH)];
        let r = rd(&d);
        d.wait(&mut fired, None, &r).unwrap();
        assert!(fired.is_empty(), "stale entries cleared, waker not reported");
        t.join().unwrap();
        // The wake was consumed.
        assert!(poll(&mut d).is_empty());
        assert_eq!(d.parker.wakes(), 1);
    }

    #[test]
    fn wakes_before_wait_coalesce_into_one_early_return() {
        let mut d = EpollDriver::new().unwrap();
        let waker = d.parker();
        waker.wake();
        waker.wake();
        let mut fired = Vec::new();
        let r = rd(&d);
        // Not parked when woken: no eventfd write, and the wait does not block.
        d.wait(&mut fired, None, &r).unwrap();
        assert!(fired.is_empty());
        assert_eq!(d.parker.wakes(), 0);
    }

    #[test]
    fn timeout_is_not_cut_short() {
        let mut d = EpollDriver::new().unwrap();
        let timeout = Duration::from_micros(2500);
        let start = Instant::now();
        let mut fired = Vec::new();
        let r = rd(&d);
        d.wait(&mut fired, Some(timeout), &r).unwrap();
        assert!(fired.is_empty());
        assert!(start.elapsed() >= timeout);
    }

    #[test]
    fn epoll_wait_fallback() {
        let mut d = EpollDriver::new().unwrap();
        d.epoll.use_pwait2 = false;
        let timeout = Duration::from_micros(1500);
        let start = Instant::now();
        let mut fired = Vec::new();
        let r = rd(&d);
        d.wait(&mut fired, Some(timeout), &r).unwrap();
        assert!(fired.is_empty());
        assert!(start.elapsed() >= timeout);

        let efd = EventFd::new().unwrap();
        d.add_event(efd.fd(), Interest::NONE, Interest::READABLE).unwrap();
        efd.notify().unwrap();
        assert_eq!(poll(&mut d), vec![fd_ev(efd.fd(), Interest::READABLE)]);

        let waker = d.parker();
        let t = thread::spawn(move || waker.wake());
        efd.drain().unwrap();
        d.wait(&mut fired, None, &r).unwrap();
        assert!(fired.is_empty());
        t.join().unwrap();
        assert!(!d.epoll.use_pwait2, "the fallback sticks");
    }

    #[test]
    fn millisecond_rounding() {
        assert_eq!(timeout_ms(None), -1);
        assert_eq!(timeout_ms(Some(Duration::ZERO)), 0);
        assert_eq!(timeout_ms(Some(Duration::from_nanos(1))), 1);
        assert_eq!(timeout_ms(Some(Duration::from_micros(999))), 1);
        assert_eq!(timeout_ms(Some(Duration::from_millis(1))), 1);
        assert_eq!(timeout_ms(Some(Duration::from_micros(1001))), 2);
        assert_eq!(timeout_ms(Some(Duration::from_secs(3))), 3000);
        assert_eq!(timeout_ms(Some(Duration::MAX)), libc::c_int::MAX);
    }

    #[test]
    fn epoll_bits_mapping() {
        let bits = |b: libc::c_int| interest_from_epoll(b as u32);
        assert_eq!(bits(0), Interest::NONE);
        assert_eq!(bits(libc::EPOLLIN), Interest::READABLE);
        assert_eq!(bits(libc::EPOLLOUT), Interest::WRITABLE);
        assert_eq!(bits(libc::EPOLLIN | libc::EPOLLOUT), Interest::BOTH);
        assert_eq!(bits(libc::EPOLLHUP), Interest::BOTH);
        assert_eq!(bits(libc::EPOLLERR | libc::EPOLLOUT), Interest::BOTH);
        assert_eq!(epoll_events(Interest::NONE), 0);
        assert_eq!(epoll_events(Interest::BOTH), (libc::EPOLLIN | libc::EPOLLOUT) as u32);
    }

    #[test]
    fn closed_socketpair_peer_is_readable() {
        let mut d = EpollDriver::new().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        d.add_event(a.as_raw_fd(), Interest::NONE, Interest::READABLE).unwrap();
        assert!(poll(&mut d).is_empty());
        drop(b);
        assert!(wait_for(&mut d, a.as_raw_fd()).contains(Interest::READABLE));
    }

    #[test]
    fn hangup_without_data_is_reported_as_both() {
        // A pipe's read end reports a closed writer with EPOLLHUP alone (no EPOLLIN).
        let mut d = EpollDriver::new().unwrap();
        let (r, w) = pipe();
        d.add_event(r.as_raw_fd(), Interest::NONE, Interest::READABLE).unwrap();
        assert!(poll(&mut d).is_empty());
        drop(w);
        assert_eq!(wait_for(&mut d, r.as_raw_fd()), Interest::BOTH);
    }

    #[test]
    fn error_is_reported_as_both() {
        // A pipe's write end reports a closed reader with EPOLLERR.
        let mut d = EpollDriver::new().unwrap();
        let (r, w) = pipe();
        let mut file = std::fs::File::from(w);
        // Fill the pipe so that EPOLLOUT is not what gets reported.
        while file.write(&[0u8; 4096]).is_ok() {}
        d.add_event(file.as_raw_fd(), Interest::NONE, Interest::WRITABLE).unwrap();
        assert!(poll(&mut d).is_empty());
        drop(r);
        assert_eq!(wait_for(&mut d, file.as_raw_fd()), Interest::BOTH);
    }

    #[test]
    fn more_ready_than_buffer_reported_over_successive_waits() {
        let mut d = EpollDriver::new().unwrap();
        let efds: Vec<EventFd> = (0..INITIAL_EVENTS + 36).map(|_| EventFd::new().unwrap()).collect();
        for efd in &efds {
            d.add_event(efd.fd(), Interest::NONE, Interest::READABLE).unwrap();
            efd.notify().unwrap();
        }
        let first = poll(&mut d);
        assert_eq!(first.len(), INITIAL_EVENTS);
        // The buffer grew, so the next wait sees every ready descriptor.
        let second: HashSet<EventSource> = poll(&mut d).iter().map(|ev| ev.source).collect();
        let all: HashSet<EventSource> = efds.iter().map(|e| EventSource::Fd(e.fd())).collect();
        assert_eq!(second, all);
    }
}
