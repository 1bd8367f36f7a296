//! The readiness-notification backend an [`EventCenter`](super::EventCenter) runs on.
//!
//! As in Ceph's `EventDriver`, the center keeps the authoritative interest mask for each
//! descriptor and passes both the old mask and the change to the driver, so a driver
//! needs no bookkeeping of its own to pick between "add", "modify" and "remove".
//!
//! A driver watches kernel descriptors only. Sockets without one (kernel-bypass stacks)
//! post their readiness to the center's [`Readiness`]; the driver's part is never to
//! block while a token there is ready, and to let posts and wakes interrupt a wait
//! through its [`Parker`].

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use super::ready::{Parker, Readiness};
use super::{FiredEvent, Interest};

/// Wakes a driver blocked in [`EventDriver::wait`] from any thread.
pub trait Waker: Send + Sync {
    /// Makes the current (or, if none is in progress, the next) `wait` return promptly.
    /// Wakes may coalesce: many calls before a `wait` cost that `wait` one early return.
    fn wake(&self);
}

/// A readiness-notification mechanism (epoll, a polling driver, ...).
///
/// A driver lives on one worker thread and need not be `Send`; only its
/// [`parker`](EventDriver::parker) crosses threads.
pub trait EventDriver {
    /// Watches `fd` for `cur | add`, where `cur` is what it is watched for now
    /// ([`Interest::NONE`] if not at all).
    fn add_event(&mut self, fd: RawFd, cur: Interest, add: Interest) -> io::Result<()>;

    /// Watches `fd` for `cur - del` only, where `cur` is what it is watched for now;
    /// stops watching it entirely when nothing remains.
    fn del_event(&mut self, fd: RawFd, cur: Interest, del: Interest) -> io::Result<()>;

    /// Waits for descriptor readiness and replaces the contents of `fired` with what
    /// became ready (descriptors only: the center collects tokens from `ready` itself).
    ///
    /// `None` blocks until an event or a wake, `Some(Duration::ZERO)` polls. A driver
    /// must not block while `ready` has a ready token; it parks through
    /// [`Parker::try_park`] before blocking, so that posts and wakes from other threads
    /// end the wait. Returning with no events (timeout, wake, signal interruption) is
    /// not an error. A driver must not report its own parker's descriptor.
    fn wait(&mut self, fired: &mut Vec<FiredEvent>, timeout: Option<Duration>, ready: &Readiness) -> io::Result<()>;

    /// The handle that interrupts [`wait`](EventDriver::wait) from any thread.
    fn parker(&self) -> Arc<Parker>;
}
