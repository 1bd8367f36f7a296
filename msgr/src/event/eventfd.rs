//! A safe, non-blocking Linux eventfd.
//!
//! Used as the event driver's waker and by stacks whose readiness is not a kernel socket
//! (the in-memory test stack, RDMA completion polling): they signal the eventfd and the
//! worker's driver sees it become readable like any other descriptor.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::driver::Waker;

/// A non-blocking, close-on-exec eventfd counter.
///
/// [`notify`](EventFd::notify) adds one to the counter, making the descriptor readable;
/// [`drain`](EventFd::drain) reads and resets it. Both take `&self` and may be called
/// from any thread: the kernel serialises them.
#[derive(Debug)]
pub struct EventFd {
    // `File` owns the descriptor (an `OwnedFd` inside) and gives us read/write on a raw
    // descriptor without hand-written unsafe; nothing file-system specific is used.
    file: File,
}

impl EventFd {
    /// Creates an eventfd with a zero counter, `EFD_NONBLOCK | EFD_CLOEXEC`.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; any return value is handled below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd, is open, and nothing else owns it,
        // so transferring ownership to `OwnedFd` (which closes it exactly once) is sound.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(EventFd { file: File::from(owned) })
    }

    /// Adds one to the counter, waking anyone polling the descriptor for readability.
    ///
    /// A full counter (`EAGAIN`) is success: the descriptor is already readable, and
    /// the reader only cares that it was signalled, not how often.
    #[cfg_attr(feature = "lock-count", track_caller)]
    pub fn notify(&self) -> io::Result<()> {
        self.add(1)
    }

    /// Adds `n` to the counter; `EAGAIN` (it would overflow) counts as success.
    #[cfg_attr(feature = "lock-count", track_caller)]
    pub(crate) fn add(&self, n: u64) -> io::Result<()> {
        // Counted at the caller's line (with `lock-count`): who woke the worker.
        crate::sync::woke(crate::sync::Kind::EventFd);
        loop {
            match (&self.file).write(&n.to_ne_bytes()) {
                Ok(8) => return Ok(()),
                // The kernel transfers eventfd values whole or not at all.
                Ok(w) => {
                    return Err(io::Error::other(format!("short eventfd write: {w} bytes")));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads and resets the counter, returning its value; 0 if it was not signalled.
    pub fn drain(&self) -> io::Result<u64> {
        let mut buf = [0u8; 8];
        loop {
            match (&self.file).read(&mut buf) {
                Ok(8) => return Ok(u64::from_ne_bytes(buf)),
                Ok(r) => return Err(io::Error::other(format!("short eventfd read: {r} bytes"))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The descriptor, for registering with an event driver. It stays owned by `self`.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd()
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Waker for EventFd {
    fn wake(&self) {
        // `wake` cannot report failure. The only possible errors are EBADF/EINVAL,
        // impossible for a descriptor we own and an 8-byte write, and a full counter,
        // which `notify` already treats as success.
        let _ = self.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<EventFd>();
    }

    #[test]
    fn drain_unsignalled_is_zero() {
        let efd = EventFd::new().unwrap();
        assert_eq!(efd.drain().unwrap(), 0);
        assert_eq!(efd.drain().unwrap(), 0);
    }

    #[test]
    fn notify_accumulates_and_drain_resets() {
        let efd = EventFd::new().unwrap();
        efd.notify().unwrap();
        efd.notify().unwrap();
        efd.notify().unwrap();
        assert_eq!(efd.drain().unwrap(), 3);
        assert_eq!(efd.drain().unwrap(), 0);
        efd.notify().unwrap();
        assert_eq!(efd.drain().unwrap(), 1);
    }

    #[test]
    fn full_counter_is_success() {
        let efd = EventFd::new().unwrap();
        // The largest value the counter can hold.
        let max = u64::MAX - 1;
        efd.add(max).unwrap();
        efd.notify().unwrap();
        efd.notify().unwrap();
        assert_eq!(efd.drain().unwrap(), max);
        assert_eq!(efd.drain().unwrap(), 0);
    }

    #[test]
    fn flags_are_nonblock_and_cloexec() {
        let efd = EventFd::new().unwrap();
        // SAFETY: F_GETFL/F_GETFD on a descriptor owned by `efd`, no pointers.
        let fl = unsafe { libc::fcntl(efd.fd(), libc::F_GETFL) };
        // SAFETY: as above.
        let fd_flags = unsafe { libc::fcntl(efd.fd(), libc::F_GETFD) };
        assert!(fl >= 0 && fd_flags >= 0);
        assert_ne!(fl & libc::O_NONBLOCK, 0);
        assert_ne!(fd_flags & libc::FD_CLOEXEC, 0);
        assert_eq!(efd.as_raw_fd(), efd.fd());
        assert_eq!(efd.as_fd().as_raw_fd(), efd.fd());
    }

    #[test]
    fn notify_from_other_threads() {
        let efd = Arc::new(EventFd::new().unwrap());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let efd = Arc::clone(&efd);
                thread::spawn(move || {
                    for _ in 0..100 {
                        efd.notify().unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(efd.drain().unwrap(), 400);
    }

    #[test]
    fn waker_notifies() {
        let efd = EventFd::new().unwrap();
        let waker: &dyn Waker = &efd;
        waker.wake();
        waker.wake();
        assert_eq!(efd.drain().unwrap(), 2);
    }
}
