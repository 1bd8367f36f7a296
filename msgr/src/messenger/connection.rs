//! The user-facing connection handle.
//!
//! A [`Connection`] is shared between user threads and the worker that owns the
//! socket. Users only queue work on it (messages, keepalives, mark-down) and read what
//! the worker published (peer identity, state, last error); the protocol state itself
//! lives on the worker and is touched by nobody else.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::error::ConnError;
use super::flow::{Delivery, Flow, Pending};
use super::worker::Worker;
use super::MsgrInner;
use crate::message::Message;
use crate::proto::addr::EntityAddrVec;
use crate::proto::entity::{EntityName, EntityType};
use crate::proto::frame::{MAX_SEGMENTS, MAX_SEGMENT_LEN};
use crate::proto::frames::UTime;
use crate::proto::header::MSG_HEADER2_LEN;
use crate::proto::reconnect::Existing;
use crate::proto::secure::{AUTH_TAG_LEN, CRYPTO_BLOCK_LEN, SECURE_EPILOGUE_LEN, SECURE_PREAMBLE_ONWIRE_LEN};

/// Shared handle to a connection.
pub type ConnectionRef = Arc<Connection>;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnState {
    /// TCP connect or msgr2 handshake in progress.
    Connecting = 0,
    /// Handshake complete; messages flow.
    Open = 1,
    /// Closed by a fault, a mark-down or shutdown. Never reopens: dial again.
    Closed = 2,
}

/// Why `send_message` refused a message.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closed; the message was not queued.
    #[error("connection {0} is closed")]
    Closed(u64),
    /// The message cannot be framed: a msgr2 segment length is a le32, so front, middle
    /// and data must each be at most [`MAX_SEGMENT_LEN`] bytes, and the whole frame
    /// must fit in memory. The message was not queued; the connection is unaffected.
    #[error("message {segment} of {len} bytes is over the msgr2 limit of {max} bytes")]
    TooLarge {
        /// The part that is too long: `front`, `middle`, `data`, or `frame` (their sum).
        segment: &'static str,
        /// Its length in bytes.
        len: u64,
        /// The most it may be.
        max: u64,
    },
}

/// The most a MESSAGE frame adds to its front, middle and data in either on-wire mode:
/// secure mode's preamble block, auth tags, padding and epilogue (crc mode's preamble,
/// crc and epilogue are less) and the msg_header2 segment.
const FRAME_OVERHEAD_MAX: u64 = (SECURE_PREAMBLE_ONWIRE_LEN
    + AUTH_TAG_LEN
    + MAX_SEGMENTS * CRYPTO_BLOCK_LEN
    + SECURE_EPILOGUE_LEN
    + MSG_HEADER2_LEN) as u64;

/// Refuses a message the wire format cannot carry, before a worker frames it: a segment
/// longer than [`MAX_SEGMENT_LEN`] (the frame writer would have to panic), or a frame
/// larger than `max_frame` bytes with its overhead (only possible where `usize` is
/// 32 bits; `max_frame` is `usize::MAX` outside tests).
#[inline]
fn check_size(front: usize, middle: usize, data: usize, max_frame: u64) -> Result<(), SendError> {
    let (f, m, d) = (front as u64, middle as u64, data as u64);
    // Every message goes through here: the common answer in two comparisons. (The sum
    // is taken only once each part is under 2^32, so it cannot overflow.)
    if f.max(m).max(d) <= MAX_SEGMENT_LEN as u64 && f + m + d <= max_frame.saturating_sub(FRAME_OVERHEAD_MAX) {
        return Ok(());
    }
    too_large(f, m, d, max_frame)
}

/// Which part of a message [`check_size`] refused, and by how much.
#[cold]
fn too_large(front: u64, middle: u64, data: u64, max_frame: u64) -> Result<(), SendError> {
    let max = MAX_SEGMENT_LEN as u64;
    for (segment, len) in [("front", front), ("middle", middle), ("data", data)] {
        if len > max {
            return Err(SendError::TooLarge { segment, len, max });
        }
    }
    // Each is at most 2^32 - 1 here, so the sum cannot overflow.
    let len = front + middle + data;
    Err(SendError::TooLarge { segment: "frame", len, max: max_frame.saturating_sub(FRAME_OVERHEAD_MAX) })
}

/// What [`Connection::take_outbox`] hands the worker besides the messages.
pub(crate) struct Taken {
    pub(crate) keepalive: bool,
    pub(crate) mark_down: bool,
}

/// What senders left for the worker, and what they gave the connection over its life.
#[derive(Default)]
pub(crate) struct Outbox {
    pub(crate) msgs: VecDeque<Message>,
    // Tracked messages among `msgs`, by their index there, numbered when the worker
    // takes them (`Connection::take_outbox`).
    tracked: Vec<(usize, Pending)>,
    pub(crate) keepalive: bool,
    pub(crate) mark_down: bool,
}

thread_local! {
    // The connection whose message this worker thread is delivering by fast dispatch
    // (read on every send: a plain cell), and the replies sent on it from there,
    // handed to its session right after the dispatch returns, without the outbox (see
    // `Connection::takes_local`). The queue keeps its capacity.
    static LANE: Cell<Option<u64>> = const { Cell::new(None) };
    static LANE_MSGS: RefCell<VecDeque<Message>> = const { RefCell::new(VecDeque::new()) };
}

/// Opens the local lane for connection `id` on this thread (a worker about to deliver
/// one of its messages); returns what to give [`close_lane`].
pub(crate) fn open_lane(id: u64) -> Option<u64> {
    LANE.try_with(|l| l.replace(Some(id))).ok().flatten()
}

/// Closes the lane [`open_lane`] opened (putting back `prev`) and hands `take` the
/// messages sent on it, in order, to take them all (by
/// [`Session::send_messages`](crate::proto::session::Session::send_messages), which
/// moves none when the session has nothing queued). `take` cannot send: it is the
/// worker handing them to the session.
pub(crate) fn close_lane(prev: Option<u64>, take: impl FnOnce(&mut VecDeque<Message>)) {
    let _ = LANE.try_with(|l| l.set(prev));
    let _ = LANE_MSGS.try_with(|q| {
        if let Ok(mut q) = q.try_borrow_mut() {
            if !q.is_empty() {
                take(&mut q);
            }
        }
    });
}

#[derive(Default)]
pub(crate) struct Published {
    pub(crate) peer_addrs: EntityAddrVec,
    pub(crate) peer_name: Option<EntityName>,
    pub(crate) features: u64,
    pub(crate) lossy: bool,
    pub(crate) con_mode: u32,
    pub(crate) last_error: Option<ConnError>,
    pub(crate) last_keepalive_ack: Option<UTime>,
}

/// One messenger connection to one peer.
pub struct Connection {
    id: u64,
    peer_type: AtomicU8,
    outgoing: bool,
    state: AtomicU8,
    scheduled: AtomicBool,
    pub(crate) outbox: Mutex<Outbox>,
    // The outbox holds something from another thread: set under its lock, cleared by
    // the worker's take. Replies from fast dispatch go behind it while it is set.
    outbox_busy: AtomicBool,
    // Payload bytes of the messages handed to the connection since it was made: by
    // other threads (through the outbox) and by fast dispatch on the worker (the lane).
    // Against the session's [`Done`](crate::proto::reconnect::Done) they say what the
    // connection still holds. The lane's total has one writer, the worker that owns
    // the connection (one at a time: a move between workers goes through their
    // queues), so it is counted with a plain load and store, not an atomic add.
    sent_bytes: AtomicU64,
    local_bytes: AtomicU64,
    flow: Flow,
    pub(crate) info: Mutex<Published>,
    // The worker that owns the connection's transport. A lossless session moves to the
    // worker of the transport a peer reconnects on, so this can change.
    worker: Mutex<Arc<Worker>>,
    // `worker`'s key, so that a send on the owning worker's thread (a reply from fast
    // dispatch) schedules its flush without taking the lock.
    worker_key: AtomicU64,
    // What a new transport from the same peer is compared with (Ceph's "existing").
    pub(crate) existing: Mutex<Existing>,
    pub(crate) msgr: Weak<MsgrInner>,
    private: Mutex<Option<Arc<dyn Any + Send + Sync>>>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("state", &self.state())
            .field("peer", &self.peer_addrs())
            .finish()
    }
}

use crate::sync::lock;

impl Connection {
    pub(crate) fn new(
        id: u64,
        peer_type: Option<EntityType>,
        peer_addrs: EntityAddrVec,
        outgoing: bool,
        worker: Arc<Worker>,
        msgr: Weak<MsgrInner>,
        send_limit: u64,
    ) -> ConnectionRef {
        Arc::new(Connection {
            id,
            peer_type: AtomicU8::new(peer_type.map_or(0, |t| t as u8)),
            outgoing,
            state: AtomicU8::new(ConnState::Connecting as u8),
            scheduled: AtomicBool::new(false),
            outbox: Mutex::new(Outbox::default()),
            outbox_busy: AtomicBool::new(false),
            sent_bytes: AtomicU64::new(0),
            local_bytes: AtomicU64::new(0),
            flow: Flow::new(send_limit),
            info: Mutex::new(Published { peer_addrs, ..Published::default() }),
            worker_key: AtomicU64::new(worker.key()),
            worker: Mutex::new(worker),
            existing: Mutex::new(Existing::fresh()),
            msgr,
            private: Mutex::new(None),
        })
    }

    /// Process-unique id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// True if we dialled, false if we accepted.
    pub fn is_outgoing(&self) -> bool {
        self.outgoing
    }

    /// Current state.
    pub fn state(&self) -> ConnState {
        match self.state.load(Ordering::Acquire) {
            0 => ConnState::Connecting,
            1 => ConnState::Open,
            _ => ConnState::Closed,
        }
    }

    /// True once the handshake completed and until the connection closes.
    pub fn is_connected(&self) -> bool {
        self.state() == ConnState::Open
    }

    pub(crate) fn set_state(&self, s: ConnState) {
        self.state.store(s as u8, Ordering::Release);
    }

    /// The peer's entity type (known from the start for outgoing connections).
    pub fn peer_type(&self) -> Option<EntityType> {
        EntityType::try_from(self.peer_type.load(Ordering::Acquire)).ok()
    }

    pub(crate) fn set_peer_type(&self, t: EntityType) {
        self.peer_type.store(t as u8, Ordering::Release);
    }

    /// The peer's addresses (as dialled, then as the peer identified itself).
    pub fn peer_addrs(&self) -> EntityAddrVec {
        lock(&self.info).peer_addrs.clone()
    }

    /// The peer's entity name, once the handshake completed.
    pub fn peer_name(&self) -> Option<EntityName> {
        lock(&self.info).peer_name
    }

    /// Features both sides support, once the handshake completed.
    pub fn features(&self) -> u64 {
        lock(&self.info).features
    }

    /// Connection mode of the session (1 = crc, 2 = secure), once it is open.
    pub fn con_mode(&self) -> u32 {
        lock(&self.info).con_mode
    }

    /// True if the session is lossy.
    pub fn is_lossy(&self) -> bool {
        lock(&self.info).lossy
    }

    /// Why the connection closed, if it closed on an error.
    pub fn last_error(&self) -> Option<ConnError> {
        lock(&self.info).last_error.clone()
    }

    /// Stamp of the last KEEPALIVE2_ACK from the peer.
    pub fn last_keepalive_ack(&self) -> Option<UTime> {
        lock(&self.info).last_keepalive_ack
    }

    /// Attaches user data to the connection (Ceph's `set_priv`).
    pub fn set_private(&self, p: Option<Arc<dyn Any + Send + Sync>>) {
        *lock(&self.private) = p;
    }

    /// The user data attached with [`Connection::set_private`].
    pub fn private(&self) -> Option<Arc<dyn Any + Send + Sync>> {
        lock(&self.private).clone()
    }

    /// Queues `m` for the peer. Never blocks on the network: the message is appended to
    /// this connection's queue and its worker is woken (or, when called on that worker,
    /// flushed before it next waits). Messages sent before the handshake completes go
    /// out once it does, in order.
    ///
    /// A message with a segment the msgr2 wire format cannot carry is refused with
    /// [`SendError::TooLarge`] and nothing is sent.
    ///
    /// The queue is not bounded here (Ceph's semantics: a sender never blocks); a sender
    /// that wants a bound waits for [`Connection::poll_send_room`] first, as
    /// `msgr::tokio`'s `send` does.
    pub fn send_message(&self, m: Message) -> Result<(), SendError> {
        self.queue::<false>(m).map(drop)
    }

    /// As [`Connection::send_message`], and tells what became of the message: the
    /// returned [`Delivery`] resolves to [`Delivered::Acked`](super::Delivered::Acked)
    /// once a lossless peer acknowledged it (surviving reconnects on the way), to
    /// [`Delivered::Written`](super::Delivered::Written) on a lossy session once it was
    /// framed for the transport, or to an error if a reset dropped it or the connection
    /// closed first. Costs an allocation per message; untracked sends cost nothing.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use msgr_core::message::types::{MPing, TypedMessage};
    /// # fn f(con: &msgr_core::messenger::Connection) -> Result<(), Box<dyn std::error::Error>> {
    /// let delivery = con.send_message_tracked(MPing::default().encode())?;
    /// match delivery.wait(Duration::from_secs(10)) {
    ///     Some(Ok(how)) => println!("delivered: {how:?}"),
    ///     Some(Err(e)) => println!("lost: {e}"),
    ///     None => println!("not acknowledged yet"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn send_message_tracked(&self, m: Message) -> Result<Delivery, SendError> {
        match self.queue::<true>(m)? {
            Some(d) => Ok(d),
            None => Err(SendError::Closed(self.id)),
        }
    }

    /// Queues `m`, tracking it if `TRACK` (a constant, so that untracked sends carry no
    /// trace of tracking).
    #[inline]
    fn queue<const TRACK: bool>(&self, m: Message) -> Result<Option<Delivery>, SendError> {
        let len = m.total_len() as u64;
        check_size(m.front.len(), m.middle.len(), m.data.len(), usize::MAX as u64)?;
        if self.state() == ConnState::Closed {
            return Err(SendError::Closed(self.id));
        }
        if !TRACK && self.takes_local(len) {
            // Moved once, straight into the lane (a message is large: each move is a
            // copy). The lane is this thread's and open, so its queue is there and not
            // borrowed (it is only borrowed here and when the lane closes).
            LANE_MSGS.with_borrow_mut(|q| q.push_back(m));
            return Ok(None);
        }
        let mut out = lock(&self.outbox);
        let delivery = if TRACK {
            // Checked under the outbox lock: a close that comes after finds the tracker
            // there and fails it (`close_flow`).
            let Some((pending, delivery)) = self.flow.tracker() else { return Err(SendError::Closed(self.id)) };
            let at = out.msgs.len();
            out.tracked.push((at, pending));
            Some(delivery)
        } else {
            None
        };
        // Marked before the lock is let go: a reply from fast dispatch that sees the
        // mark queues behind this message; one that did not see it was sent first.
        self.outbox_busy.store(true, Ordering::Release);
        self.sent_bytes.fetch_add(len, Ordering::Relaxed);
        out.msgs.push_back(m);
        drop(out);
        self.schedule();
        Ok(delivery)
    }

    /// Whether a send of `len` bytes goes by the lane, counted: a send from this
    /// connection's own fast dispatch (its worker is delivering its messages,
    /// [`open_lane`]) while nothing from other threads waits in its outbox. The worker
    /// hands it to the session when the deliveries end, and writes it with the flush
    /// after the read, so it takes no lock and schedules nothing.
    #[inline]
    fn takes_local(&self, len: u64) -> bool {
        if LANE.try_with(Cell::get).ok().flatten() != Some(self.id) || self.outbox_busy.load(Ordering::Acquire) {
            return false;
        }
        // The worker is the one writer (see `local_bytes`): no atomic add, which was
        // one of a reply's costliest steps.
        self.local_bytes.store(self.local_bytes.load(Ordering::Relaxed) + len, Ordering::Release);
        true
    }

    /// Payload bytes (front + middle + data) of the messages this connection holds:
    /// queued, in flight, or, on a lossless session, waiting for the peer's
    /// acknowledgement (which a reconnect would resend).
    pub fn queued_bytes(&self) -> u64 {
        let sent = self.sent_bytes.load(Ordering::Acquire).wrapping_add(self.local_bytes.load(Ordering::Acquire));
        sent.saturating_sub(self.flow.done_bytes())
    }

    /// The most bytes a bounded sender lets this connection hold
    /// (`ms_send_queue_max_bytes`; 0 = no bound).
    pub fn send_queue_limit(&self) -> u64 {
        self.flow.limit()
    }

    /// Ready once a message of `len` payload bytes fits under the connection's bound
    /// ([`Connection::send_queue_limit`]): when what it holds plus `len` is within the
    /// limit, or it holds nothing (a message larger than the limit goes alone). Fails
    /// when the connection is closed. Otherwise `cx`'s waker is woken as the peer takes
    /// (lossy) or acknowledges (lossless) messages.
    ///
    /// The bound is soft: senders that wait together may each add one message past
    /// it. A peer that stops reading makes a bounded sender wait, not the process grow.
    pub fn poll_send_room(
        &self,
        cx: &mut std::task::Context<'_>,
        len: usize,
    ) -> std::task::Poll<Result<(), SendError>> {
        use std::task::Poll;
        let len = len as u64;
        for attempt in 0..2 {
            if self.state() == ConnState::Closed {
                return Poll::Ready(Err(SendError::Closed(self.id)));
            }
            if self.flow.room_for(self.queued_bytes(), len) {
                return Poll::Ready(Ok(()));
            }
            // Registered, then checked once more: the worker may have finished messages
            // between the check and the registration.
            if attempt == 0 && !self.flow.wait_room(cx.waker()) {
                return Poll::Ready(Err(SendError::Closed(self.id)));
            }
        }
        Poll::Pending
    }

    /// The worker: the session's totals after a step.
    #[inline]
    pub(crate) fn publish_done(&self, d: crate::proto::reconnect::Done, lossy: bool) {
        self.flow.publish(d, lossy);
    }

    /// The connection closed: tracked messages and bounded senders learn it.
    pub(crate) fn close_flow(&self, err: Option<ConnError>) {
        self.flow.close(err);
        // Tracked messages still in the outbox fail too (registered on a closed flow,
        // each fails at once with its error). Taken after the close: a sender that
        // queues one later finds the flow closed and is refused.
        let tracked = std::mem::take(&mut lock(&self.outbox).tracked);
        for (_, p) in tracked {
            self.flow.register(0, p);
        }
    }

    /// Queues a KEEPALIVE2; the peer's ack shows up in [`Connection::last_keepalive_ack`].
    pub fn send_keepalive(&self) {
        self.ask_worker(|out| out.keepalive = true);
    }

    /// Closes the connection without telling the dispatchers; queued messages are
    /// dropped. Later `connect_to` calls dial afresh.
    pub fn mark_down(&self) {
        if self.state() == ConnState::Closed {
            return;
        }
        if let Some(m) = self.msgr.upgrade() {
            m.unregister(self);
        }
        self.queue_mark_down();
    }

    /// Asks the worker to close the connection at its next flush; also how a flush
    /// between the messages of one read puts back a mark-down it took, for the flush
    /// after the read.
    pub(crate) fn queue_mark_down(&self) {
        self.ask_worker(|out| out.mark_down = true);
    }

    /// Leaves the worker a request in the outbox (a keepalive, a mark-down), marks the
    /// outbox busy (replies from fast dispatch then queue behind it) and schedules a
    /// flush.
    fn ask_worker(&self, f: impl FnOnce(&mut Outbox)) {
        let mut out = lock(&self.outbox);
        f(&mut out);
        self.outbox_busy.store(true, Ordering::Release);
        drop(out);
        self.schedule();
    }

    fn schedule(&self) {
        if !self.scheduled.swap(true, Ordering::AcqRel) {
            let id = self.id;
            // A connection moving to another worker at this moment is the race a
            // flush requested on the worker it left already handles (clear_scheduled).
            if crate::stack::worker::is_current_key(self.worker_key.load(Ordering::Acquire)) {
                return super::worker::schedule_local_flush(id);
            }
            super::worker::schedule_flush(&self.worker(), id);
        }
    }

    /// Whether a flush was asked for since the last one began.
    pub(crate) fn is_scheduled(&self) -> bool {
        self.scheduled.load(Ordering::Acquire)
    }

    /// Called by the worker before it drains the outbox, so a send racing with the
    /// drain schedules another flush instead of being stranded. A swap, not a store:
    /// it synchronises with the sender's swap, so the drain sees the sender's message
    /// even when the flush was requested on the worker the connection just left.
    pub(crate) fn clear_scheduled(&self) {
        self.scheduled.swap(false, Ordering::AcqRel);
    }

    /// The worker that owns this connection now.
    pub(crate) fn worker(&self) -> Arc<Worker> {
        Arc::clone(&lock(&self.worker))
    }

    /// Hands the connection to another worker (a lossless session moving onto the
    /// transport its peer reconnected on).
    pub(crate) fn move_to(&self, w: Arc<Worker>) {
        let mut cur = lock(&self.worker);
        cur.sub_load();
        w.add_load();
        self.worker_key.store(w.key(), Ordering::Release);
        *cur = w;
    }

    pub(crate) fn existing(&self) -> Existing {
        *lock(&self.existing)
    }

    pub(crate) fn set_existing(&self, f: impl FnOnce(&mut Existing)) {
        f(&mut lock(&self.existing));
    }

    pub(crate) fn publish(&self, f: impl FnOnce(&mut Published)) {
        f(&mut lock(&self.info));
    }

    /// Lets the outbox's room beyond `keep` entries go (a quiet connection's, after a
    /// burst that grew it); what is in it stays.
    pub(crate) fn shrink_outbox(&self, keep: usize) {
        let mut o = lock(&self.outbox);
        o.msgs.shrink_to(keep);
        o.tracked.shrink_to(keep);
    }

    /// Takes what senders queued (the totals stay), numbering the tracked ones among
    /// them as the messages after the `queued_before` the session has ever had queued
    /// ([`Session::queued_total`](crate::proto::session::Session::queued_total)): the
    /// caller hands them all to the session next (or, at a mark-down, closes the
    /// connection). The messages go to `msgs`, which must be empty: the two queues trade
    /// places, so the outbox keeps an allocation and senders do not allocate a new queue
    /// after every flush.
    #[inline]
    pub(crate) fn take_outbox(&self, msgs: &mut VecDeque<Message>, queued_before: u64) -> Taken {
        debug_assert!(msgs.is_empty(), "messages left in the worker's queue");
        // Nothing from another thread: no lock. (Read after `clear_scheduled`: a sender
        // that marks the outbox after this schedules another flush.)
        if !self.outbox_busy.load(Ordering::Acquire) {
            return Taken { keepalive: false, mark_down: false };
        }
        let mut o = lock(&self.outbox);
        self.outbox_busy.store(false, Ordering::Release);
        std::mem::swap(&mut o.msgs, msgs);
        for (i, p) in o.tracked.drain(..) {
            self.flow.register(queued_before + i as u64 + 1, p);
        }
        Taken { keepalive: std::mem::take(&mut o.keepalive), mark_down: std::mem::take(&mut o.mark_down) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod lane {
        use super::super::*;
        use crate::messenger::Stack;
        use crate::stack::mem::{MemNetwork, MemStack};
        use bytes::Bytes;

        /// A connection on a worker that does not serve it: what senders leave on it
        /// stays there for the test to look at.
        fn con(stack: &Arc<Stack>) -> ConnectionRef {
            Connection::new(7, None, EntityAddrVec::default(), true, stack.least_loaded(), Weak::new(), 0)
        }

        fn msg(tid: u64) -> Message {
            Message::new(1, Bytes::from_static(b"front")).with_tid(tid)
        }

        fn tids(msgs: impl IntoIterator<Item = Message>) -> Vec<u64> {
            msgs.into_iter().map(|m| m.tid).collect()
        }

        /// Sends `tids` on `c` as fast dispatch of one of its messages would; returns
        /// what the lane handed to the session.
        fn in_lane(c: &Connection, tids: &[u64]) -> Vec<u64> {
            let prev = open_lane(c.id());
            for &t in tids {
                c.send_message(msg(t)).unwrap();
            }
            let mut got = Vec::new();
            close_lane(prev, |q| got.extend(q.drain(..).map(|m| m.tid)));
            got
        }

        fn outbox(c: &Connection) -> Vec<u64> {
            let mut q = VecDeque::new();
            c.take_outbox(&mut q, 0);
            tids(q)
        }

        #[test]
        fn replies_from_fast_dispatch_skip_the_outbox_and_keep_their_order() {
            let stack = Stack::start(Arc::new(MemStack::new(MemNetwork::new())), 1).unwrap();
            let c = con(&stack);
            assert_eq!(in_lane(&c, &[1, 2, 3]), vec![1, 2, 3]);
            assert_eq!(outbox(&c), Vec::<u64>::new());
            // Counted all the same: what the connection holds includes them.
            assert_eq!(c.queued_bytes(), 3 * 5);
            stack.shutdown();
        }

        #[test]
        fn a_reply_goes_after_what_other_threads_left_in_the_outbox() {
            let stack = Stack::start(Arc::new(MemStack::new(MemNetwork::new())), 1).unwrap();
            let c = con(&stack);
            // Sent with no lane open (another thread, as far as the connection knows).
            c.send_message(msg(1)).unwrap();
            assert_eq!(in_lane(&c, &[2, 3]), Vec::<u64>::new(), "older messages wait: the replies queue behind them");
            assert_eq!(outbox(&c), vec![1, 2, 3]);
            // Taken: the lane is open to replies again.
            assert_eq!(in_lane(&c, &[4]), vec![4]);
            stack.shutdown();
        }

        #[test]
        fn a_pending_keepalive_or_mark_down_keeps_replies_behind_it() {
            let stack = Stack::start(Arc::new(MemStack::new(MemNetwork::new())), 1).unwrap();
            let c = con(&stack);
            // What the worker's take finds: (keepalive, mark-down) and the messages.
            let take = |c: &Connection| {
                let mut q = VecDeque::new();
                let t = c.take_outbox(&mut q, 0);
                ((t.keepalive, t.mark_down), tids(q))
            };
            c.send_keepalive();
            assert_eq!(in_lane(&c, &[1]), Vec::<u64>::new());
            assert_eq!(take(&c), ((true, false), vec![1]));
            c.mark_down();
            assert_eq!(in_lane(&c, &[2]), Vec::<u64>::new());
            assert_eq!(take(&c), ((false, true), vec![2]));
            stack.shutdown();
        }

        #[test]
        fn tracked_sends_and_sends_on_other_connections_use_the_outbox() {
            let stack = Stack::start(Arc::new(MemStack::new(MemNetwork::new())), 1).unwrap();
            let (a, b) = (
                con(&stack),
                Connection::new(8, None, EntityAddrVec::default(), true, stack.least_loaded(), Weak::new(), 0),
            );
            let prev = open_lane(a.id());
            a.send_message(msg(1)).unwrap();
            let d = a.send_message_tracked(msg(2)).unwrap();
            a.send_message(msg(3)).unwrap();
            b.send_message(msg(9)).unwrap();
            let mut lane = Vec::new();
            close_lane(prev, |q| lane.extend(q.drain(..).map(|m| m.tid)));
            // 1 went first (the lane); 2 is tracked, numbered when the outbox is taken
            // behind the one message the session then has had queued (the lane's), and
            // 3 queues behind it.
            assert_eq!(lane, vec![1]);
            let mut q = VecDeque::new();
            a.take_outbox(&mut q, 1);
            assert_eq!(tids(q), vec![2, 3]);
            assert_eq!(outbox(&b), vec![9]);
            assert!(format!("{d:?}").contains("done: false"), "not finished: nothing was written");
            // The session finished the lane's message: not yet the tracked one.
            let done = |msgs| crate::proto::reconnect::Done { msgs, bytes: 0, dropped: 0 };
            a.publish_done(done(1), true);
            assert!(format!("{d:?}").contains("done: false"), "only the first message is finished");
            a.publish_done(done(2), true);
            assert_eq!(d.wait(std::time::Duration::ZERO), Some(Ok(crate::messenger::Delivered::Written)));
            stack.shutdown();
        }

        #[test]
        fn a_tracked_message_left_in_the_outbox_fails_when_the_connection_closes() {
            let stack = Stack::start(Arc::new(MemStack::new(MemNetwork::new())), 1).unwrap();
            let c = con(&stack);
            let d = c.send_message_tracked(msg(1)).unwrap();
            c.close_flow(None);
            assert_eq!(d.wait(std::time::Duration::ZERO), Some(Err(crate::messenger::DeliveryError::Closed(None))));
            // And a closed connection refuses to track more.
            assert!(matches!(c.send_message_tracked(msg(2)), Err(SendError::Closed(_))));
            stack.shutdown();
        }

        #[test]
        fn a_closed_lane_sends_through_the_outbox() {
            let stack = Stack::start(Arc::new(MemStack::new(MemNetwork::new())), 1).unwrap();
            let c = con(&stack);
            assert!(in_lane(&c, &[]).is_empty());
            c.send_message(msg(1)).unwrap();
            assert_eq!(outbox(&c), vec![1]);
            stack.shutdown();
        }
    }

    const MAX: u64 = u32::MAX as u64;

    #[test]
    fn every_segment_up_to_the_le32_limit_is_accepted() {
        let m = MAX_SEGMENT_LEN;
        assert_eq!(check_size(m, m, m, u64::MAX), Ok(()));
        assert_eq!(check_size(0, 0, 0, u64::MAX), Ok(()));
    }

    #[test]
    fn a_segment_of_4_gib_or_more_is_refused_by_name() {
        let over = MAX_SEGMENT_LEN + 1;
        let all = usize::MAX as u64;
        let want = |segment| Err(SendError::TooLarge { segment, len: MAX + 1, max: MAX });
        assert_eq!(check_size(over, 0, 0, all), want("front"));
        assert_eq!(check_size(0, over, 0, all), want("middle"));
        assert_eq!(check_size(0, 0, over, all), want("data"));
        assert_eq!(
            check_size(0, 0, usize::MAX, all),
            Err(SendError::TooLarge { segment: "data", len: usize::MAX as u64, max: MAX })
        );
    }

    #[test]
    fn a_frame_that_cannot_be_held_is_refused() {
        // What a 32-bit target's usize allows: three segments under the le32 limit can
        // still add up to more.
        let max_frame = MAX;
        let seg = 3_000_000_000;
        let err = check_size(seg, 0, seg, max_frame).unwrap_err();
        assert_eq!(err, SendError::TooLarge { segment: "frame", len: 6_000_000_000, max: MAX - FRAME_OVERHEAD_MAX });
        assert!(err.to_string().contains("frame of 6000000000 bytes"), "{err}");
        assert_eq!(check_size(seg, 0, 0, max_frame), Ok(()));
    }
}
