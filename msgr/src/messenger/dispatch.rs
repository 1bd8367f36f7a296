//! Dispatchers, the DispatchQueue and its throttle.
//!
//! Messages that no dispatcher fast-dispatches are queued by priority and delivered by
//! one dispatch thread per messenger, as in Ceph. The queue's byte throttle
//! (`ms_dispatch_throttle_bytes`) is what turns a slow dispatcher into backpressure:
//! while it is full, workers stop reading from sockets, so the peer's sends block in
//! its socket buffer instead of piling up in our memory.
//!
//! A dispatcher that panics does not take the messenger down: every callback runs
//! under `catch_unwind`, on the dispatch thread and on the workers alike. The panic is
//! counted (`msgr_dispatch_panics` in `perf dump`, [`DispatchQueue::panics`]) and the
//! last one kept ([`DispatchPanic`]); the thread carries on with the next item.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtOrd};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;

use super::connection::ConnectionRef;
use crate::message::Message;
use crate::sync;

/// Receives messages and connection events from a messenger.
///
/// Every method has a default so implementors override only what they need. Methods
/// are called from the dispatch thread, except the fast-dispatch pair which runs on the
/// network worker that owns the connection: keep `ms_fast_dispatch` short and never
/// block in it.
///
/// A panic in any method is caught by the messenger, counted and kept (see
/// [`DispatchPanic`]); the thread that called it carries on. What it did to the
/// message or event:
/// - `ms_dispatch`, `ms_fast_dispatch`: the message is consumed (not offered to the
///   next dispatcher, which might handle it twice), its dispatch throttle bytes are
///   returned, and the connection stays up.
/// - `ms_can_fast_dispatch`: taken as `false`; the message goes on to the next
///   dispatcher or the dispatch queue, so it is not lost.
/// - `ms_handle_*`: taken as not handled; the next dispatcher is told too.
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

/// A dispatcher callback that panicked. The messenger caught the panic and carried on;
/// see [`Dispatcher`] for what became of the message or event.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DispatchPanic {
    /// The callback that panicked: `ms_dispatch`, `ms_fast_dispatch`, `ms_handle_reset`…
    pub callback: &'static str,
    /// The id of the connection it was called for ([`super::Connection::id`]).
    pub conn_id: u64,
    /// The panic's message; a placeholder when the payload was not a string.
    pub message: String,
}

/// Runs dispatcher callbacks under `catch_unwind`, counting the panics and keeping the
/// last one.
#[derive(Default)]
pub(crate) struct PanicLog {
    count: AtomicU64,
    last: Mutex<Option<DispatchPanic>>,
}

impl PanicLog {
    /// Runs `f`, the dispatcher callback `callback` for connection `conn_id`. Returns
    /// its result, or `None` if it panicked (the panic is recorded, never resumed).
    // Inlined: out of line, the closure (with the message it owns) was copied into the
    // call on every fast dispatch — about 260 instructions per round trip.
    #[inline]
    pub(crate) fn call<R>(&self, callback: &'static str, conn_id: u64, f: impl FnOnce() -> R) -> Option<R> {
        // AssertUnwindSafe: nothing of the messenger's is half-updated while a callback
        // runs (no lock of ours is held for writing, no queue is mid-change), so the
        // messenger is consistent after a panic. The dispatcher's own state is its own:
        // it is handed the next message as if nothing happened.
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => Some(r),
            Err(payload) => {
                self.record(callback, conn_id, &*payload);
                drop_payload(payload);
                None
            }
        }
    }

    fn record(&self, callback: &'static str, conn_id: u64, payload: &(dyn Any + Send)) {
        let message = panic_message(payload);
        // Whatever debug_ms says (Ceph's level 0): a bug in the daemon's own code.
        tracing::error!(target: "msgr", callback, conn = conn_id, %message, "a dispatcher callback panicked: caught; its \
            message is consumed, the connection and the threads carry on");
        *sync::lock(&self.last) = Some(DispatchPanic { callback, conn_id, message });
        // Counted after `last` is set, so whoever sees the count sees this panic's text.
        self.count.fetch_add(1, AtOrd::Release);
    }

    /// Panics caught so far.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(AtOrd::Acquire)
    }

    /// The last panic caught.
    pub(crate) fn last(&self) -> Option<DispatchPanic> {
        sync::lock(&self.last).clone()
    }
}

/// The text of a panic: `panic!` with a literal gives a `&str`, with arguments a
/// `String`; anything else (`panic_any`) has no text to show.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(panic payload is not a string)".to_owned()
    }
}

/// Drops a panic payload without letting a panicking `Drop` of it unwind into the
/// messenger's thread.
fn drop_payload(payload: Box<dyn Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        // A payload whose drop panics again would do the same here: leak it instead.
        std::mem::forget(again);
    }
}

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
    pub(crate) fn new(max: u64) -> Self {
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

    /// Bytes that may still be taken before readers must stop; `None`: no limit.
    pub fn room(&self) -> Option<u64> {
        (self.max != 0).then(|| self.max.saturating_sub(self.current()))
    }

    /// True while readers must stop.
    pub fn is_full(&self) -> bool {
        self.max != 0 && self.current() >= self.max
    }

    /// Takes `n` bytes unconditionally (a message that arrived is never refused; the
    /// readers stop once the budget is spent). A dispatcher that keeps messages past its
    /// callback takes their bytes here and [`Throttle::put`]s them back when done with
    /// them, as `msgr::tokio`'s stream does.
    pub fn take(&self, n: u64) {
        self.current.fetch_add(n, AtOrd::AcqRel);
    }

    /// Returns `n` bytes, which must have been taken with [`Throttle::take`], and wakes
    /// the paused readers once below the limit.
    pub fn put(&self, n: u64) {
        let prev = self.current.fetch_sub(n, AtOrd::AcqRel);
        debug_assert!(prev >= n, "throttle underflow");
        if self.has_waiters.load(AtOrd::Acquire) && !self.is_full() {
            self.wake_all();
        }
    }

    /// Runs `wake` once the throttle has room. Returns false (and does not keep
    /// `wake`) if there is room already, so the caller just carries on.
    pub(crate) fn wait(&self, wake: Box<dyn FnOnce() + Send>) -> bool {
        let mut w = sync::lock(&self.waiters);
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
            let mut w = sync::lock(&self.waiters);
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
    /// The dispatch thread waits on `cond`: set by it (under the lock) just before it
    /// waits, cleared by the first push that sees it, which is the one that notifies.
    sleeping: bool,
}

/// The list of dispatchers, shared by the queue and the workers' fast path, and read
/// for every message delivered: a reader takes no lock while the list has not changed
/// since its thread last read it (see [`DispatcherList::with`]).
pub(crate) struct DispatcherList {
    /// Tells this list from any other in the process, in the per-thread cache.
    id: u64,
    /// Bumped after each change, once the new list is in place.
    version: AtomicU64,
    list: RwLock<Arc<[Arc<dyn Dispatcher>]>>,
}

/// Distinct ids for dispatcher lists (one per messenger).
static LIST_IDS: AtomicU64 = AtomicU64::new(1);

/// The list a thread read last: whose, at which version, and the list itself.
struct Seen {
    id: u64,
    version: u64,
    list: Arc<[Arc<dyn Dispatcher>]>,
}

thread_local! {
    // One entry: a worker or dispatch thread serves a single messenger, so it hits.
    static SEEN: RefCell<Option<Seen>> = const { RefCell::new(None) };
}

impl DispatcherList {
    /// An empty list.
    pub(crate) fn new() -> Arc<Self> {
        Self::of(Vec::new())
    }

    fn of(list: Vec<Arc<dyn Dispatcher>>) -> Arc<Self> {
        Arc::new(DispatcherList {
            id: LIST_IDS.fetch_add(1, AtOrd::Relaxed),
            version: AtomicU64::new(0),
            list: RwLock::new(list.into()),
        })
    }

    /// Puts `d` first.
    pub(crate) fn add_head(&self, d: Arc<dyn Dispatcher>) {
        self.change(|l| l.insert(0, d));
    }

    /// Puts `d` last.
    pub(crate) fn add_tail(&self, d: Arc<dyn Dispatcher>) {
        self.change(|l| l.push(d));
    }

    fn change(&self, f: impl FnOnce(&mut Vec<Arc<dyn Dispatcher>>)) {
        let mut cur = sync::write(&self.list);
        let mut l = cur.to_vec();
        f(&mut l);
        *cur = l.into();
        // Under the write lock, after the store: a reader that sees the new version and
        // takes the read lock finds the new list.
        self.version.fetch_add(1, AtOrd::Release);
    }

    /// Runs `f` on the current list. Lock-free (an atomic load and a thread-local
    /// look-up) when this thread has read the list since it last changed; otherwise the
    /// read lock is taken once and the thread remembers the result. No lock is held
    /// while `f` runs: a dispatcher may add dispatchers or deliver again from inside.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&[Arc<dyn Dispatcher>]) -> R) -> R {
        let version = self.version.load(AtOrd::Acquire);
        let mut f = Some(f);
        let hit = SEEN.try_with(|seen| {
            let seen = seen.try_borrow().ok()?;
            let s = seen.as_ref().filter(|s| s.id == self.id && s.version == version)?;
            f.take().map(|f| f(&s.list))
        });
        if let Ok(Some(r)) = hit {
            return r;
        }
        let list = Arc::clone(&*sync::read(&self.list));
        // Remembered only if this thread is not inside a `with` of its own already
        // (a busy cache is left as it is) and its thread-locals still exist.
        let _ = SEEN.try_with(|seen| {
            if let Ok(mut s) = seen.try_borrow_mut() {
                *s = Some(Seen { id: self.id, version, list: Arc::clone(&list) });
            }
        });
        match f {
            Some(f) => f(&list),
            None => unreachable!("`f` is taken only when it ran"),
        }
    }
}

/// Where this thread is in a burst (see [`Burst`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum InBurst {
    No,
    Yes,
    /// In a burst that owes notifies (the queues are in `OWED`).
    Owes,
}

thread_local! {
    // Read for every burst: a plain cell, no borrow flag.
    static IN_BURST: Cell<InBurst> = const { Cell::new(InBurst::No) };
    // The queues whose sleeping thread the burst owes a notify. Kept with its capacity:
    // a burst allocates nothing.
    static OWED: RefCell<Vec<Arc<DispatchQueue>>> = const { RefCell::new(Vec::new()) };
}

/// A burst of deliveries on this thread: a queue whose thread sleeps is notified once,
/// when the burst ends (the guard drops), not by the first message of the burst, so
/// the thread wakes to the whole burst instead of racing the worker one message at a
/// time. Only the outermost of nested bursts counts.
pub(crate) struct Burst {
    outermost: bool,
}

impl Burst {
    /// Opens a burst on this thread.
    pub(crate) fn begin() -> Burst {
        let outermost = IN_BURST.try_with(|b| {
            let outermost = b.get() == InBurst::No;
            if outermost {
                b.set(InBurst::Yes);
            }
            outermost
        });
        Burst { outermost: outermost.unwrap_or(false) }
    }

    /// In a burst: remembers that `q`'s thread must be notified when it ends, and says
    /// so. Outside one (or if the list is busy): false, notify now.
    fn owe(q: &Arc<DispatchQueue>) -> bool {
        if IN_BURST.try_with(Cell::get).unwrap_or(InBurst::No) == InBurst::No {
            return false;
        }
        let owed = OWED.try_with(|o| match o.try_borrow_mut() {
            Ok(mut o) => {
                if !o.iter().any(|x| Arc::ptr_eq(x, q)) {
                    o.push(Arc::clone(q));
                }
                true
            }
            Err(_) => false,
        });
        let owed = owed.unwrap_or(false);
        if owed {
            let _ = IN_BURST.try_with(|b| b.set(InBurst::Owes));
        }
        owed
    }
}

impl Drop for Burst {
    fn drop(&mut self) {
        if !self.outermost || IN_BURST.try_with(|b| b.replace(InBurst::No)).unwrap_or(InBurst::No) != InBurst::Owes {
            return;
        }
        let _ = OWED.try_with(|o| {
            // Taken out of the cell first: no borrow is held across the notifies.
            let Ok(mut owed) = o.try_borrow_mut().map(|mut o| std::mem::take(&mut *o)) else { return };
            for q in owed.drain(..) {
                q.notify();
            }
            if let Ok(mut o) = o.try_borrow_mut() {
                *o = owed;
            }
        });
    }
}

/// Priority queue + one dispatch thread (Ceph's DispatchQueue).
pub(crate) struct DispatchQueue {
    state: Mutex<QueueState>,
    cond: Condvar,
    throttle: Arc<Throttle>,
    dispatchers: Arc<DispatcherList>,
    thread: Mutex<Option<JoinHandle<()>>>,
    // Panics of dispatcher callbacks, on this queue's thread and the workers' fast path.
    panics: PanicLog,
}

impl DispatchQueue {
    /// A queue delivering to `dispatchers`, throttled by `throttle`.
    pub(crate) fn new(dispatchers: Arc<DispatcherList>, throttle: Arc<Throttle>) -> Arc<Self> {
        Arc::new(DispatchQueue {
            state: Mutex::new(QueueState { heap: BinaryHeap::new(), order: 0, stop: false, sleeping: false }),
            cond: Condvar::new(),
            throttle,
            dispatchers,
            thread: Mutex::new(None),
            panics: PanicLog::default(),
        })
    }

    /// Dispatcher callbacks that panicked so far (caught, on any thread).
    pub(crate) fn panics(&self) -> u64 {
        self.panics.count()
    }

    /// The last dispatcher callback panic caught, if any.
    pub(crate) fn last_panic(&self) -> Option<DispatchPanic> {
        self.panics.last()
    }

    /// Where the workers' fast path records the panics of the callbacks it calls.
    pub(crate) fn panic_log(&self) -> &PanicLog {
        &self.panics
    }

    #[cfg_attr(feature = "lock-count", track_caller)]
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        sync::lock(&self.state)
    }

    /// Starts the dispatch thread (idempotent).
    pub(crate) fn start(self: &Arc<Self>, name: &str) -> std::io::Result<()> {
        let mut t = sync::lock(&self.thread);
        if t.is_some() {
            return Ok(());
        }
        let me = Arc::clone(self);
        *t = Some(std::thread::Builder::new().name(format!("ms_dispatch:{name}")).spawn(move || me.run())?);
        Ok(())
    }

    /// Queues a message of `size` bytes (already taken from the throttle).
    pub(crate) fn enqueue(self: &Arc<Self>, con: ConnectionRef, m: Message, size: u64) {
        let priority = m.priority;
        self.push(con, priority, ItemKind::Message(m, size));
    }

    /// Queues a connection event.
    pub(crate) fn enqueue_event(self: &Arc<Self>, con: ConnectionRef, ev: ConnEvent) {
        self.push(con, PRIO_HIGHEST, ItemKind::Event(ev));
    }

    fn push(self: &Arc<Self>, con: ConnectionRef, priority: u16, kind: ItemKind) {
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
        // why: only a sleeping thread needs a notify (a busy one looks at the heap,
        // under this lock, before it waits again), and std's notify is a futex_wake
        // system call even when nobody waits: a burst that arrives while the thread
        // works costs no system call, one that finds it asleep costs one.
        let wake = std::mem::take(&mut s.sleeping);
        drop(s);
        if wake && !Burst::owe(self) {
            self.notify();
        }
    }

    /// Wakes the dispatch thread (which had set `sleeping`).
    fn notify(&self) {
        sync::notify_one(&self.cond);
    }

    /// Items waiting.
    pub(crate) fn len(&self) -> usize {
        self.lock().heap.len()
    }

    /// Stops the thread after the item in progress; queued items are dropped and
    /// their throttle bytes returned.
    pub(crate) fn stop(&self) {
        let mut s = self.lock();
        s.stop = true;
        let left = std::mem::take(&mut s.heap);
        drop(s);
        for it in left {
            if let ItemKind::Message(_, size) = it.kind {
                self.throttle.put(size);
            }
        }
        sync::notify_all(&self.cond);
    }

    /// Joins the dispatch thread (after [`DispatchQueue::stop`]).
    pub(crate) fn join(&self) {
        let t = sync::lock(&self.thread).take();
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
                    // Set and waited on under the lock: a push either comes before
                    // (and the heap is not empty above) or sees the flag and notifies.
                    s.sleeping = true;
                    s = sync::wait(&self.cond, s);
                    s.sleeping = false;
                }
            };
            self.deliver(item);
        }
    }

    fn deliver(&self, item: Item) {
        self.dispatchers.with(|list| self.deliver_to(list, item));
    }

    fn deliver_to(&self, list: &[Arc<dyn Dispatcher>], item: Item) {
        let con = &item.con;
        let (p, id) = (&self.panics, con.id());
        match item.kind {
            ItemKind::Message(m, size) => {
                for d in list {
                    // A panic consumes the message: the dispatcher may have half handled
                    // it, and the next one handling it again could be worse.
                    if p.call("ms_dispatch", id, || d.ms_dispatch(con, &m)).unwrap_or(true) {
                        break;
                    }
                }
                // `call` never unwinds, so the bytes go back after a panic too.
                self.throttle.put(size);
            }
            ItemKind::Event(ev) => {
                for d in list {
                    // A panic is "not handled": the next dispatcher hears of the event too.
                    let handled = match ev {
                        ConnEvent::Connect => {
                            p.call("ms_handle_connect", id, || d.ms_handle_connect(con));
                            false
                        }
                        ConnEvent::Accept => {
                            p.call("ms_handle_accept", id, || d.ms_handle_accept(con));
                            false
                        }
                        ConnEvent::Reset => p.call("ms_handle_reset", id, || d.ms_handle_reset(con)).unwrap_or(false),
                        ConnEvent::RemoteReset => {
                            p.call("ms_handle_remote_reset", id, || d.ms_handle_remote_reset(con));
                            false
                        }
                        ConnEvent::Refused => {
                            p.call("ms_handle_refused", id, || d.ms_handle_refused(con)).unwrap_or(false)
                        }
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

    /// A dispatcher that only answers `ms_dispatch` with `handled`.
    struct Nop(bool);

    impl Dispatcher for Nop {
        fn ms_dispatch(&self, _con: &ConnectionRef, _m: &Message) -> bool {
            self.0
        }
    }

    fn nop(handled: bool) -> Arc<dyn Dispatcher> {
        Arc::new(Nop(handled))
    }

    #[test]
    fn a_dispatcher_added_after_a_thread_read_the_list_is_seen_by_its_next_read() {
        let list = DispatcherList::new();
        assert_eq!(list.with(<[_]>::len), 0);
        // Remembered now: the next read takes no lock, and still sees the change.
        list.add_tail(nop(true));
        assert_eq!(list.with(<[_]>::len), 1);
        let first = nop(false);
        list.add_head(Arc::clone(&first));
        assert!(list.with(|l| Arc::ptr_eq(&l[0], &first) && l.len() == 2));
    }

    #[test]
    fn a_change_made_on_another_thread_is_seen() {
        let list = DispatcherList::new();
        assert_eq!(list.with(<[_]>::len), 0);
        let other = Arc::clone(&list);
        std::thread::spawn(move || other.add_tail(nop(true))).join().unwrap();
        assert_eq!(list.with(<[_]>::len), 1);
    }

    #[test]
    fn two_lists_read_on_one_thread_each_give_their_own() {
        let (a, b) = (DispatcherList::new(), DispatcherList::of(vec![nop(true), nop(true)]));
        for _ in 0..3 {
            assert_eq!(a.with(<[_]>::len), 0);
            assert_eq!(b.with(<[_]>::len), 2);
        }
    }

    #[test]
    fn a_dispatcher_may_add_one_and_read_the_list_from_inside_a_read() {
        let list = DispatcherList::of(vec![nop(true)]);
        let inner = list.with(|l| {
            list.add_tail(nop(true));
            // Nested: the outer read holds this thread's cache, the lock is not held.
            (l.len(), list.with(<[_]>::len))
        });
        assert_eq!(inner, (1, 2));
        assert_eq!(list.with(<[_]>::len), 2);
    }

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
    fn a_panicking_callback_is_counted_and_its_text_kept() {
        let log = PanicLog::default();
        assert_eq!(log.call("ms_dispatch", 1, || true), Some(true));
        assert_eq!((log.count(), log.last()), (0, None));
        // The default hook prints these to the captured test output.
        let n = 7;
        let literal = log.call("ms_dispatch", 3, || -> bool { panic!("plain text") });
        let last_literal = log.last();
        let formatted = log.call("ms_fast_dispatch", 4, || panic!("message {n}"));
        let last_formatted = log.last();
        let other = log.call("ms_handle_reset", 5, || std::panic::panic_any(42u32));
        assert_eq!((literal, formatted, other), (None, None, None));
        assert_eq!(log.count(), 3);
        let want =
            |callback, conn_id, message: &str| Some(DispatchPanic { callback, conn_id, message: message.into() });
        assert_eq!(last_literal, want("ms_dispatch", 3, "plain text"));
        assert_eq!(last_formatted, want("ms_fast_dispatch", 4, "message 7"));
        assert_eq!(log.last(), want("ms_handle_reset", 5, "(panic payload is not a string)"));
    }

    #[test]
    fn a_payload_that_panics_when_dropped_does_not_unwind() {
        struct Bomb;
        impl Drop for Bomb {
            fn drop(&mut self) {
                panic!("dropped");
            }
        }
        let log = PanicLog::default();
        let r = log.call("ms_dispatch", 1, || std::panic::panic_any(Bomb));
        assert_eq!((r, log.count()), (None::<()>, 1));
    }

    /// Records the tids it is handed; holds the first one until the test releases it.
    struct Gate {
        entered: std::sync::mpsc::Sender<()>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
        got: std::sync::mpsc::Sender<u64>,
    }

    impl Dispatcher for Gate {
        fn ms_dispatch(&self, _con: &ConnectionRef, m: &Message) -> bool {
            if m.tid == 1 {
                let _ = self.entered.send(());
                let _ = sync::lock(&self.release).recv();
            }
            let _ = self.got.send(m.tid);
            true
        }
    }

    #[test]
    fn a_push_notifies_only_a_sleeping_dispatch_thread_and_none_is_lost() {
        use crate::messenger::Stack;
        use crate::proto::EntityAddrVec;
        use crate::stack::mem::{MemNetwork, MemStack};
        use std::sync::mpsc::channel;
        use std::time::{Duration, Instant};

        // A connection needs a worker to belong to; nothing is sent on it.
        let stack = Stack::start(Arc::new(MemStack::new(MemNetwork::new())), 1).unwrap();
        let con = super::super::Connection::new(
            1,
            None,
            EntityAddrVec::default(),
            true,
            stack.least_loaded(),
            std::sync::Weak::new(),
            0,
        );
        let (entered_tx, entered) = channel();
        let (release, release_rx) = channel();
        let (got_tx, got) = channel();
        let gate = Gate { entered: entered_tx, release: Mutex::new(release_rx), got: got_tx };
        let list = DispatcherList::of(vec![Arc::new(gate) as Arc<dyn Dispatcher>]);
        let q = DispatchQueue::new(list, Arc::new(Throttle::new(0)));
        q.start("test").unwrap();
        let msg = |tid| Message::new(1, bytes::Bytes::new()).with_tid(tid);
        let patience = Duration::from_secs(10);

        q.enqueue(Arc::clone(&con), msg(1), 0);
        entered.recv_timeout(patience).expect("the first message reaches the dispatcher");
        // The thread is busy in the callback: a burst leaves it un-notified.
        for tid in 2..=10 {
            q.enqueue(Arc::clone(&con), msg(tid), 0);
            assert!(!q.lock().sleeping, "a busy dispatch thread is not asleep");
        }
        release.send(()).unwrap();
        let burst: Vec<u64> = (1..=10).map(|_| got.recv_timeout(patience).expect("the burst is delivered")).collect();
        assert_eq!(burst, (1..=10).collect::<Vec<_>>());

        // Once the queue is empty the thread sleeps; a push then must wake it.
        let give_up = Instant::now() + patience;
        while !q.lock().sleeping {
            assert!(Instant::now() < give_up, "the idle dispatch thread never waited");
            std::thread::sleep(Duration::from_millis(1));
        }
        q.enqueue(Arc::clone(&con), msg(11), 0);
        assert_eq!(got.recv_timeout(patience), Ok(11), "a message pushed to a sleeping thread is delivered");

        // A burst (nested here, as a delivery from inside a delivery would be) owes the
        // sleeping thread one notify, paid when the outermost burst ends.
        let sleeps = |q: &DispatchQueue| {
            let give_up = Instant::now() + patience;
            while !q.lock().sleeping {
                assert!(Instant::now() < give_up, "the idle dispatch thread never waited");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        sleeps(&q);
        let outer = Burst::begin();
        let inner = Burst::begin();
        for tid in 12..=14 {
            q.enqueue(Arc::clone(&con), msg(tid), 0);
        }
        drop(inner);
        let owed = OWED.with(|o| o.borrow().iter().filter(|o| Arc::ptr_eq(o, &q)).count());
        assert_eq!(owed, 1, "the queue is owed one notify until the outer burst ends");
        drop(outer);
        assert!(IN_BURST.with(Cell::get) == InBurst::No && OWED.with(|o| o.borrow().is_empty()));
        let burst: Vec<u64> = (12..=14).map(|_| got.recv_timeout(patience).expect("the burst is delivered")).collect();
        assert_eq!(burst, vec![12, 13, 14], "a burst's messages reach the thread it found asleep");
        q.stop();
        q.join();
        stack.shutdown();
    }

    #[test]
    fn unlimited_throttle_never_full() {
        let t = Throttle::new(0);
        t.take(u64::from(u32::MAX));
        assert!(!t.is_full());
    }
}
