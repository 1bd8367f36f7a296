//! A connection's send side as its senders see it: how many bytes of their messages it
//! still holds, and who waits for room or for a message's acknowledgement.
//!
//! A message is *held* from `send_message` until the session is finished with it: a
//! lossy session once it framed it for the transport, a lossless one once the peer
//! acknowledged it (or a reset dropped it). The session counts what it finished
//! ([`Done`]); the worker that owns the session publishes those totals here after each
//! step ([`Flow::publish`]), and wakes whoever waits. Messages are finished in the order
//! they were sent, so "the k-th message sent on this connection" is enough to know
//! whether one is finished: no per-message bookkeeping unless a sender asks to track it.
//!
//! The futures here are runtime-agnostic (`std::task` only); `msgr::tokio` builds its
//! `send` on them, and [`Delivery::wait`] serves threads without a runtime.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use super::error::ConnError;
use crate::proto::reconnect::Done;
use crate::sync::{self, lock};

/// How a tracked message left its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivered {
    /// A lossless peer acknowledged it: the peer's messenger has it and will not lose
    /// it to a reconnect.
    Acked,
    /// A lossy session framed it for the transport. Lossy sessions have no
    /// acknowledgements, so this is as far as the sender can know.
    Written,
}

/// Why a tracked message will never be acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The peer lost our session (it restarted) and the session was reset: the message
    /// was dropped unacknowledged, with everything else outstanding.
    #[error("the peer reset the session: the message was dropped unacknowledged")]
    Reset,
    /// The connection closed (fault on a lossy session, mark-down, shutdown) before the
    /// peer acknowledged the message; the error is why, when there was one.
    #[error("the connection closed before the message was acknowledged{}", .0.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Closed(Option<ConnError>),
}

type Outcome = Result<Delivered, DeliveryError>;

/// One tracked message's outcome, filled in by the worker.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
}

#[derive(Default)]
enum SlotState {
    #[default]
    Waiting,
    Polled(Waker),
    Done(Outcome),
    /// The outcome was handed out.
    Taken,
}

impl Slot {
    fn resolve(&self, outcome: Outcome) {
        let prev = std::mem::replace(&mut *lock(&self.state), SlotState::Done(outcome));
        if let SlotState::Polled(w) = prev {
            sync::woke(sync::Kind::TaskWake);
            w.wake();
        }
    }
}

/// The outcome of a message sent with
/// [`Connection::send_message_tracked`](super::Connection::send_message_tracked): a
/// future that resolves once the session is finished with the message, or
/// [`Delivery::wait`] for threads without an async runtime. Dropping it forgets the
/// message's fate, nothing else: the message is still sent.
#[must_use = "a Delivery does nothing unless awaited or waited on; drop it to stop tracking"]
pub struct Delivery {
    slot: Arc<Slot>,
}

/// A tracked message not yet numbered: what [`Flow::tracker`] gives the sender to queue
/// beside the message, for the worker to [`Flow::register`]. Dropped unregistered (its
/// message never reached a session: the connection went away with it), it fails its
/// [`Delivery`] rather than leave it waiting forever.
pub(crate) struct Pending {
    slot: Option<Arc<Slot>>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.resolve(Err(DeliveryError::Closed(None)));
        }
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let done = matches!(*lock(&self.slot.state), SlotState::Done(_) | SlotState::Taken);
        f.debug_struct("Delivery").field("done", &done).finish()
    }
}

impl Future for Delivery {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut st = lock(&self.slot.state);
        match std::mem::take(&mut *st) {
            SlotState::Done(o) => {
                *st = SlotState::Taken;
                Poll::Ready(o)
            }
            // Polled again after it finished: a misuse of the future, answered plainly.
            SlotState::Taken => {
                *st = SlotState::Taken;
                Poll::Ready(Err(DeliveryError::Closed(None)))
            }
            SlotState::Waiting | SlotState::Polled(_) => {
                *st = SlotState::Polled(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Wakes a parked thread: what [`Delivery::wait`] polls with.
struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

impl Delivery {
    /// Blocks the calling thread until the outcome is known or `timeout` passed
    /// (`None`: the outcome is not known yet; the message may still be acknowledged
    /// later). For callback code; async code awaits the `Delivery` instead.
    ///
    /// Do not call it on a messenger thread (a dispatcher callback): the worker that
    /// would deliver the acknowledgement may be the one waiting.
    pub fn wait(mut self, timeout: Duration) -> Option<Outcome> {
        let deadline = Instant::now() + timeout;
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(o) = Pin::new(&mut self).poll(&mut cx) {
                return Some(o);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            std::thread::park_timeout(deadline - now);
        }
    }

    /// The outcome if it is known already, without waiting.
    pub fn try_outcome(&self) -> Option<Outcome> {
        let mut st = lock(&self.slot.state);
        match std::mem::take(&mut *st) {
            SlotState::Done(o) => {
                *st = SlotState::Done(o.clone());
                Some(o)
            }
            other => {
                *st = other;
                None
            }
        }
    }
}

#[derive(Default)]
struct Waiters {
    /// The connection closed: nothing more will be finished.
    closed: bool,
    /// Why, when there was an error: what trackers registered after the close fail with.
    close_err: Option<ConnError>,
    /// Tracked messages by their number on the connection (1 = the first ever sent),
    /// in that order.
    acks: VecDeque<(u64, Arc<Slot>)>,
    /// Senders waiting for the held bytes to go down.
    room: Vec<Waker>,
}

/// The send-side totals of one connection and the senders waiting on them.
pub(crate) struct Flow {
    /// Most bytes a bounded sender lets the connection hold (0: no bound).
    limit: u64,
    // Written by the worker that owns the session (one at a time), read by senders.
    done_msgs: AtomicU64,
    done_bytes: AtomicU64,
    dropped: AtomicU64,
    /// Someone waits: the worker must look at `waiters` when it publishes.
    watched: AtomicBool,
    waiters: Mutex<Waiters>,
}

impl Flow {
    pub(crate) fn new(limit: u64) -> Flow {
        Flow {
            limit,
            done_msgs: AtomicU64::new(0),
            done_bytes: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            watched: AtomicBool::new(false),
            waiters: Mutex::new(Waiters::default()),
        }
    }

    /// The bound on held bytes (0: none).
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes of payload finished so far.
    pub(crate) fn done_bytes(&self) -> u64 {
        self.done_bytes.load(Ordering::SeqCst)
    }

    /// True if `queued` bytes held leave room for `len` more under the bound. A message
    /// alone is always let through, however large, or it could never be sent.
    pub(crate) fn room_for(&self, held: u64, len: u64) -> bool {
        self.limit == 0 || held == 0 || held.saturating_add(len) <= self.limit
    }

    /// Registers `waker` to be woken when held bytes go down or the connection closes.
    /// Returns false (registering nothing) if the connection is closed already.
    pub(crate) fn wait_room(&self, waker: &Waker) -> bool {
        let mut w = lock(&self.waiters);
        if w.closed {
            return false;
        }
        if !w.room.iter().any(|r| r.will_wake(waker)) {
            w.room.push(waker.clone());
        }
        // SeqCst, as the worker's publish: either it sees this flag, or the sender's
        // re-check after this call sees the worker's new totals.
        self.watched.store(true, Ordering::SeqCst);
        true
    }

    /// For tests: [`Flow::tracker`] and [`Flow::register`] as number `nth` at once.
    /// `None` if the connection is closed.
    #[cfg(test)]
    pub(crate) fn track(&self, nth: u64) -> Option<Delivery> {
        let (p, d) = self.tracker()?;
        self.register(nth, p);
        Some(d)
    }

    /// A tracker for a message about to be queued, and the sender's [`Delivery`] of it;
    /// `None` if the connection is closed. The tracker is numbered when the worker
    /// takes the message ([`Flow::register`]): only the worker knows how many messages
    /// went before it, counting the replies its fast dispatch sends without counting
    /// them one by one.
    pub(crate) fn tracker(&self) -> Option<(Pending, Delivery)> {
        if lock(&self.waiters).closed {
            return None;
        }
        let slot = Arc::new(Slot::default());
        Some((Pending { slot: Some(Arc::clone(&slot)) }, Delivery { slot }))
    }

    /// Tracks `p` as the message that is number `nth` on the connection (1 = the first
    /// ever sent). Called by the worker before the message is handed to the session,
    /// in order, so that it cannot be finished before it is tracked. On a closed
    /// connection it fails at once, as a tracked message would have at the close.
    pub(crate) fn register(&self, nth: u64, mut p: Pending) {
        let Some(slot) = p.slot.take() else { return };
        let mut w = lock(&self.waiters);
        if w.closed {
            let err = w.close_err.clone();
            drop(w);
            slot.resolve(Err(DeliveryError::Closed(err)));
            return;
        }
        w.acks.push_back((nth, slot));
        self.watched.store(true, Ordering::SeqCst);
    }

    /// The worker: the session's totals after a step. Within one step acknowledgements
    /// come before drops (a reset happens in a handshake, before anything new is sent),
    /// so of the messages finished since the last call the first ones were delivered
    /// and the last `dropped` ones dropped.
    #[inline]
    pub(crate) fn publish(&self, d: Done, lossy: bool) {
        if d.msgs != self.done_msgs.load(Ordering::Relaxed) {
            self.publish_changed(d, lossy);
        }
    }

    #[inline(never)]
    fn publish_changed(&self, d: Done, lossy: bool) {
        // Only this worker writes `dropped`; it rarely changes.
        let prev_dropped = self.dropped.load(Ordering::Relaxed);
        if d.dropped != prev_dropped {
            self.dropped.store(d.dropped, Ordering::Relaxed);
        }
        self.done_bytes.store(d.bytes, Ordering::SeqCst);
        self.done_msgs.store(d.msgs, Ordering::SeqCst);
        if !self.watched.load(Ordering::SeqCst) {
            return;
        }
        let delivered_through = d.msgs - d.dropped.saturating_sub(prev_dropped);
        let (room, ready) = {
            let mut w = lock(&self.waiters);
            let mut ready = Vec::new();
            while w.acks.front().is_some_and(|(nth, _)| *nth <= d.msgs) {
                if let Some((nth, slot)) = w.acks.pop_front() {
                    let outcome = if nth > delivered_through {
                        Err(DeliveryError::Reset)
                    } else if lossy {
                        Ok(Delivered::Written)
                    } else {
                        Ok(Delivered::Acked)
                    };
                    ready.push((slot, outcome));
                }
            }
            self.watched.store(!w.acks.is_empty(), Ordering::SeqCst);
            (std::mem::take(&mut w.room), ready)
        };
        for r in room {
            sync::woke(sync::Kind::TaskWake);
            r.wake();
        }
        for (slot, outcome) in ready {
            slot.resolve(outcome);
        }
    }

    /// The connection closed: every tracked message still waiting fails with `err`,
    /// and senders waiting for room wake to find it closed.
    pub(crate) fn close(&self, err: Option<ConnError>) {
        let (room, acks) = {
            let mut w = lock(&self.waiters);
            w.closed = true;
            w.close_err.clone_from(&err);
            self.watched.store(false, Ordering::SeqCst);
            (std::mem::take(&mut w.room), std::mem::take(&mut w.acks))
        };
        for r in room {
            sync::woke(sync::Kind::TaskWake);
            r.wake();
        }
        for (_, slot) in acks {
            slot.resolve(Err(DeliveryError::Closed(err.clone())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(msgs: u64, bytes: u64, dropped: u64) -> Done {
        Done { msgs, bytes, dropped }
    }

    #[test]
    fn a_tracked_message_resolves_when_its_number_is_finished() {
        let f = Flow::new(0);
        let d1 = f.track(1).unwrap();
        let d2 = f.track(2).unwrap();
        f.publish(done(1, 10, 0), false);
        assert_eq!(d1.try_outcome(), Some(Ok(Delivered::Acked)));
        assert_eq!(d2.try_outcome(), None);
        f.publish(done(2, 20, 0), false);
        assert_eq!(d2.try_outcome(), Some(Ok(Delivered::Acked)));
    }

    #[test]
    fn a_lossy_session_reports_written() {
        let f = Flow::new(0);
        let d = f.track(1).unwrap();
        f.publish(done(1, 3, 0), true);
        assert_eq!(d.try_outcome(), Some(Ok(Delivered::Written)));
    }

    #[test]
    fn drops_are_the_last_finished_of_a_step() {
        let f = Flow::new(0);
        let ds: Vec<_> = (1..=4).map(|n| f.track(n).unwrap()).collect();
        // One acknowledged, then a reset dropped the other three.
        f.publish(done(4, 40, 3), false);
        assert_eq!(ds[0].try_outcome(), Some(Ok(Delivered::Acked)));
        for d in &ds[1..] {
            assert_eq!(d.try_outcome(), Some(Err(DeliveryError::Reset)));
        }
    }

    #[test]
    fn earlier_drops_do_not_count_against_later_acks() {
        let f = Flow::new(0);
        f.publish(done(2, 20, 2), false);
        let d = f.track(3).unwrap();
        f.publish(done(3, 30, 2), false);
        assert_eq!(d.try_outcome(), Some(Ok(Delivered::Acked)));
    }

    #[test]
    fn a_tracker_numbered_after_the_close_fails_with_its_error_and_one_never_numbered_fails_too() {
        let f = Flow::new(0);
        let (late, d_late) = f.tracker().unwrap();
        let (lost, d_lost) = f.tracker().unwrap();
        f.close(Some(ConnError::Shutdown));
        // Taken from the outbox by a worker that had not seen the close yet.
        f.register(1, late);
        assert_eq!(d_late.try_outcome(), Some(Err(DeliveryError::Closed(Some(ConnError::Shutdown)))));
        // Dropped with its message (never handed to a session): not left waiting.
        drop(lost);
        assert_eq!(d_lost.try_outcome(), Some(Err(DeliveryError::Closed(None))));
        assert!(f.tracker().is_none());
    }

    #[test]
    fn close_fails_what_is_still_tracked_and_refuses_more() {
        let f = Flow::new(0);
        let d = f.track(1).unwrap();
        f.close(Some(ConnError::Shutdown));
        assert_eq!(d.try_outcome(), Some(Err(DeliveryError::Closed(Some(ConnError::Shutdown)))));
        assert!(f.track(2).is_none());
        assert!(!f.wait_room(Waker::noop()));
    }

    #[test]
    fn room_lets_a_lone_message_through_and_bounds_the_rest() {
        let f = Flow::new(100);
        assert!(f.room_for(0, 1_000));
        assert!(f.room_for(60, 40));
        assert!(!f.room_for(60, 41));
        assert!(Flow::new(0).room_for(u64::MAX, u64::MAX));
    }

    #[test]
    fn publishing_wakes_room_waiters() {
        struct Count(AtomicU64);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicU64::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let f = Flow::new(10);
        assert!(f.wait_room(&waker));
        // The same waker twice is kept once.
        assert!(f.wait_room(&waker));
        f.publish(done(1, 5, 0), true);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(f.done_bytes(), 5);
        // Nothing finished: nobody is woken, nothing is looked at.
        f.publish(done(1, 5, 0), true);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn wait_gives_up_at_its_timeout_and_returns_a_known_outcome() {
        let f = Flow::new(0);
        let d = f.track(1).unwrap();
        let t = std::thread::spawn(move || d.wait(Duration::from_millis(20)));
        assert_eq!(t.join().ok(), Some(None));
        let d = f.track(2).unwrap();
        let waiter = std::thread::spawn(move || d.wait(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(10));
        f.publish(done(2, 2, 0), false);
        assert_eq!(waiter.join().ok(), Some(Some(Ok(Delivered::Acked))));
    }
}
