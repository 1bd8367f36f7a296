//! Dispatchers, the DispatchQueue and its throttle.
//!
//! Messages that no dispatcher fast-dispatches are queued by priority and delivered by
//! one dispatch thread per messenger, as in Ceph. The queue's byte throttle
//! (`ms_dispatch_throttle_bytes`) is what turns a slow dispatcher into backpressure:
//! while it is full, workers stop reading from sockets, so the peer's sends block in
//! its socket buffer instead of piling up in our memory.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtOrd};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;

use super::connection::ConnectionRef;
use crate::message::Message;

/// Receives messages and connection events from a messenger.
///
/// Every method has a default so implementors override only what they need. Methods
/// are called from the dispatch thread, except the fast-dispatch pair which runs on the
/// network worker that owns the connection: keep `ms_fast_dispatch` short and never
/// block in it.
///
/// ```
/// use msgr_core::message::Message;
/// use msgr_core::messenger::{ConnectionRef, Dispatcher};
///
/// struct Echo;
/// impl Dispatcher for Echo {
///     fn ms_can_fast_dispatch(&self, _m: &Message) -> bool { true }
///     fn ms_fast_dispatch(&self, con: &ConnectionRef, m: Message) {
///         let _ = con.send_message(m); // reply from the worker: no thread hop
///     }
/// }
/// ```
pub trait Dispatcher: Send + Sync {
    /// Handles a message on the dispatch thread. Return true if handled; false passes
    /// it to the next dispatcher.
    fn ms_dispatch(&self, _con: &ConnectionRef, _m: &Message) -> bool {
        false
    }
    /// True if this dispatcher may take `m` on the worker thread.
    fn ms_can_fast_dispatch(&self, _m: &Message) -> bool {
        false
    }
    /// Handles `m` on the worker thread (only called if `ms_can_fast_dispatch` said yes).
    fn ms_fast_dispatch(&self, _con: &ConnectionRef, _m: Message) {}
    /// An outgoing connection completed its handshake.
    fn ms_handle_connect(&self, _con: &ConnectionRef) {}
    /// An incoming connection completed its handshake.
    fn ms_handle_accept(&self, _con: &ConnectionRef) {}
    /// A connection failed and was closed; `con.last_error()` says why. Return true
    /// if handled.
    fn ms_handle_reset(&self, _con: &ConnectionRef) -> bool {
        false
    }
    /// The peer reset our session (it restarted or forgot us).
    fn ms_handle_remote_reset(&self, _con: &ConnectionRef) {}
    /// An outgoing connection was refused. Return true if handled.
    fn ms_handle_refused(&self, _con: &ConnectionRef) -> bool {
        false
    }
}

/// Connection events delivered through the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnEvent {
    /// `ms_handle_connect`.
    Connect,
    /// `ms_handle_accept`.
    Accept,
    /// `ms_handle_reset`.
    Reset,
    /// `ms_handle_remote_reset`.
    RemoteReset,
    /// `ms_handle_refused`.
    Refused,
}

/// Ceph's CEPH_MSG_PRIO_HIGHEST: connection events jump the queue, as in Ceph.
const PRIO_HIGHEST: u16 = 255;

/// A byte budget shared by everything waiting in the dispatch queue.
///
/// Workers take bytes for each queued message (always succeeding, so a message that
/// arrived is never dropped) and stop reading while the budget is exhausted; the
/// dispatch thread returns bytes after delivery and wakes the stopped readers.
pub struct Throttle {
    max: u64,
    current: AtomicU64,
    has_waiters: AtomicBool,
    waiters: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
    waits: AtomicU64,
}

impl Throttle {
    /// A throttle of `max` bytes; 0 means unlimited.
    pub fn new(max: u64) -> Self {
        Throttle {
            max,
            current: AtomicU64::new(0),
            has_waiters: AtomicBool::new(false),
            waiters: Mutex::new(Vec::new()),
            waits: AtomicU64::new(0),
        }
    }

    /// Bytes currently held.
    pub fn current(&self) -> u64 {
        self.current.load(AtOrd::Acquire)
    }

    /// The limit (0 = none).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// How many times a reader had to stop and wait.
    pub fn waits(&self) -> u64 {
        self.waits.load(AtOrd::Relaxed)
    }

    /// True while readers must stop.
    pub fn is_full(&self) -> bool {
        self.max != 0 && self.current() >= self.max
    }

    /// Takes `n` bytes unconditionally.
    pub fn take(&self, n: u64) {
        self.current.fetch_add(n, AtOrd::AcqRel);
    }

    /// Returns `n` bytes and wakes waiters once below the limit.
    pub fn put(&self, n: u64) {
        let prev = self.current.fetch_sub(n, AtOrd::AcqRel);
        debug_assert!(prev >= n, "throttle underflow");
        if self.has_waiters.load(AtOrd::Acquire) && !self.is_full() {
            self.wake_all();
        }
    }

    /// Runs `wake` once the throttle has room. Returns false (and does not keep
    /// `wake`) if there is room already, so the caller just carries on.
    pub fn wait(&self, wake: Box<dyn FnOnce() + Send>) -> bool {
        let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if !self.is_full() {
            return false;
        }
        w.push(wake);
        self.waits.fetch_add(1, AtOrd::Relaxed);
        self.has_waiters.store(true, AtOrd::Release);
        drop(w);
        // Room may have appeared between the check and the flag: re-check so the
        // waiter is never stranded.
        if !self.is_full() {
            self.wake_all();
        }
        true
    }

    fn wake_all(&self) {
        let list = {
            let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            self.has_waiters.store(false, AtOrd::Release);
            std::mem::take(&mut *w)
        };
        for f in list {
            f();
        }
    }
}

enum ItemKind {
    Message(Message, u64),
    Event(ConnEvent),
}

struct Item {
    priority: u16,
    order: u64,
    con: ConnectionRef,
    kind: ItemKind,
}

impl PartialEq for Item {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    fn cmp(&self, o: &Self) -> Ordering {
        // Max-heap: higher priority first, then older first.
        self.priority.cmp(&o.priority).then_with(|| o.order.cmp(&self.order))
    }
}

struct QueueState {
    heap: BinaryHeap<Item>,
    order: u64,
    stop: bool,
}

/// The list of dispatchers, shared by the queue and the workers' fast path.
pub type DispatcherList = Arc<RwLock<Vec<Arc<dyn Dispatcher>>>>;

/// Priority queue + one dispatch thread (Ceph's DispatchQueue).
pub struct DispatchQueue {
    state: Mutex<QueueState>,
    cond: Condvar,
    throttle: Arc<Throttle>,
    dispatchers: DispatcherList,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl DispatchQueue {
    /// A queue delivering to `dispatchers`, throttled by `throttle`.
    pub fn new(dispatchers: DispatcherList, throttle: Arc<Throttle>) -> Arc<Self> {
        Arc::new(DispatchQueue {
            state: Mutex::new(QueueState { heap: BinaryHeap::new(), order: 0, stop: false }),
            cond: Condvar::new(),
            throttle,
            dispatchers,
            thread: Mutex::new(None),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the dispatch thread (idempotent).
    pub fn start(self: &Arc<Self>, name: &str) -> std::io::Result<()> {
        let mut t = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        if t.is_some() {
            return Ok(());
        }
        let me = Arc::clone(self);
        *t = Some(std::thread::Builder::new().name(format!("ms_dispatch:{name}")).spawn(move || me.run())?);
        Ok(())
    }

    /// Queues a message of `size` bytes (already taken from the throttle).
    pub fn enqueue(&self, con: ConnectionRef, m: Message, size: u64) {
        let priority = m.priority;
        self.push(con, priority, ItemKind::Message(m, size));
    }

    /// Queues a connection event.
    pub fn enqueue_event(&self, con: ConnectionRef, ev: ConnEvent) {
        self.push(con, PRIO_HIGHEST, ItemKind::Event(ev));
    }

    fn push(&self, con: ConnectionRef, priority: u16, kind: ItemKind) {
        let mut s = self.lock();
        if s.stop {
            if let ItemKind::Message(_, size) = kind {
                self.throttle.put(size);
            }
            return;
        }
        s.order += 1;
        let order = s.order;
        s.heap.push(Item { priority, order, con, kind });
        drop(s);
        self.cond.notify_one();
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.lock().heap.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops the thread after the item in progress; queued items are dropped and
    /// their throttle bytes returned.
    pub fn stop(&self) {
        let mut s = self.lock();
        s.stop = true;
        let left = std::mem::take(&mut s.heap);
        drop(s);
        for it in left {
            if let ItemKind::Message(_, size) = it.kind {
                self.throttle.put(size);
            }
        }
        self.cond.notify_all();
    }

    /// Joins the dispatch thread (after [`DispatchQueue::stop`]).
    pub fn join(&self) {
        let t = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = t {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }

    fn run(&self) {
        loop {
            let item = {
                let mut s = self.lock();
                loop {
                    if s.stop {
                        return;
                    }
                    if let Some(it) = s.heap.pop() {
                        break it;
                    }
                    s = self.cond.wait(s).unwrap_or_else(|e| e.into_inner());
                }
            };
            self.deliver(item);
        }
    }

    fn deliver(&self, item: Item) {
        let list: Vec<Arc<dyn Dispatcher>> = self.dispatchers.read().unwrap_or_else(|e| e.into_inner()).clone();
        let con = &item.con;
        match item.kind {
            ItemKind::Message(m, size) => {
                for d in &list {
                    if d.ms_dispatch(con, &m) {
                        break;
                    }
                }
                self.throttle.put(size);
            }
            ItemKind::Event(ev) => {
                for d in &list {
                    let handled = match ev {
                        ConnEvent::Connect => {
                            d.ms_handle_connect(con);
                            false
                        }
                        ConnEvent::Accept => {
                            d.ms_handle_accept(con);
                            false
                        }
                        ConnEvent::Reset => d.ms_handle_reset(con),
                        ConnEvent::RemoteReset => {
                            d.ms_handle_remote_reset(con);
                            false
                        }
                        ConnEvent::Refused => d.ms_handle_refused(con),
                    };
                    if handled {
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn throttle_wakes_waiter_when_room_appears() {
        let t = Throttle::new(100);
        t.take(150);
        assert!(t.is_full());
        let woke = Arc::new(AtomicUsize::new(0));
        let w = Arc::clone(&woke);
        assert!(t.wait(Box::new(move || {
            w.fetch_add(1, AtOrd::SeqCst);
        })));
        t.put(20);
        assert_eq!(woke.load(AtOrd::SeqCst), 0, "still full at 130");
        t.put(40);
        assert_eq!(woke.load(AtOrd::SeqCst), 1);
        assert_eq!(t.waits(), 1);
        assert!(!t.wait(Box::new(|| {})), "room available: no wait");
    }

    #[test]
    fn unlimited_throttle_never_full() {
        let t = Throttle::new(0);
        t.take(u64::from(u32::MAX));
        assert!(!t.is_full());
    }
}
