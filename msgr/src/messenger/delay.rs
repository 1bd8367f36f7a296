//! Delay injection (`ms_inject_delay_type`, `ms_inject_delay_max`,
//! `ms_inject_delay_probability`), as Ceph's `DelayedDelivery`.
//!
//! With the options set, each message received from a peer of a listed type
//! is held back, with the configured probability, for a time drawn uniformly
//! from `0..max` before it is dispatched. Order on a connection is kept: once a
//! connection has a message held, every later message from it waits behind,
//! whether or not it was picked for a delay itself.
//!
//! Held messages wait in a per-messenger [`DelayQueue`] served by one thread,
//! started the first time something is held. The worker that read a message
//! only takes a short lock to queue it; it never sleeps. When a message is due
//! the thread hands it back to its connection's worker, which delivers it
//! through the normal path (fast dispatch or dispatch queue), so fast
//! dispatchers still run on the worker as the [`Dispatcher`](super::Dispatcher)
//! contract promises.
//!
//! A held message counts against `ms_dispatch_throttle_bytes` from the moment
//! it is held, as if it sat in the dispatch queue (Ceph too takes the throttle
//! when it reads a message, before delaying it): delayed traffic applies the
//! same backpressure, so what is held stays bounded. Nothing here waits for the
//! throttle, so a full throttle cannot stall the delay thread, and the delay
//! thread never waits for a worker. Messenger shutdown stops the thread and
//! drops whatever is still held.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering as AtOrd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::Rng;

use super::connection::ConnectionRef;
use super::dispatch::Throttle;
use crate::config::Config;
use crate::message::Message;
use crate::proto::entity::EntityType;
use crate::sync;

/// Longest delay ever applied, whatever `ms_inject_delay_max` says.
// why: keeps `Instant + delay` far from overflow; a message held for a day is
// as good as lost for any test.
const MAX_DELAY: Duration = Duration::from_secs(24 * 60 * 60);

/// `ms_inject_delay_*`, read once from the config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DelaySettings {
    /// Bit set of [`EntityType`] wire values (each type is a distinct bit).
    types: u8,
    max: Duration,
    probability: f64,
}

impl DelaySettings {
    /// The settings, or `None` when injection is off: no peer types listed, or
    /// a probability of 0 (nothing would ever be delayed).
    pub(crate) fn from_config(cfg: &Config) -> Option<DelaySettings> {
        let types = cfg.ms_inject_delay_type().iter().fold(0u8, |set, t| set | *t as u8);
        let probability = cfg.ms_inject_delay_probability();
        (types != 0 && probability > 0.0).then(|| DelaySettings {
            types,
            max: cfg.ms_inject_delay_max().min(MAX_DELAY),
            probability,
        })
    }

    /// Whether messages from a peer of type `peer` are subject to delays.
    fn applies_to(&self, peer: Option<EntityType>) -> bool {
        peer.is_some_and(|t| self.types & t as u8 != 0)
    }

    /// Rolls the dice for one message: `Some(delay)` (uniform in `0..max`) with
    /// the configured probability, else `None`.
    fn roll(&self, rng: &mut impl Rng) -> Option<Duration> {
        // `random::<f64>()` is in [0, 1): probability 1 always delays, 0 never.
        (rng.random::<f64>() < self.probability).then(|| self.max.mul_f64(rng.random::<f64>()))
    }
}

/// A received message held back, with the dispatch-throttle bytes it holds.
///
/// Dropping it returns the bytes, so a message dropped anywhere (shutdown, a
/// worker that is gone) can never leak throttle budget.
struct Held {
    conn: ConnectionRef,
    msg: Option<Message>,
    size: u64,
    throttle: Arc<Throttle>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.throttle.put(self.size);
    }
}

/// The per-messenger delay facility `MsgrInner::deliver` consults.
pub(crate) struct Delayer {
    settings: DelaySettings,
    queue: DelayQueue<Held>,
    throttle: Arc<Throttle>,
    injected: AtomicU64,
}

impl Delayer {
    /// A delayer for the messenger of entity `name`, or `None` when the config
    /// turns injection off. No thread starts until a message is held.
    pub(crate) fn from_config(cfg: &Config, name: &impl std::fmt::Display, throttle: &Arc<Throttle>) -> Option<Self> {
        let settings = DelaySettings::from_config(cfg)?;
        Some(Delayer {
            settings,
            queue: DelayQueue::new(format!("ms_delay:{name}"), Arc::new(hand_over)),
            throttle: Arc::clone(throttle),
            injected: AtomicU64::new(0),
        })
    }

    /// Messages held back by a roll of the dice so far (not counting those
    /// that only waited behind a delayed one).
    pub(crate) fn injected(&self) -> u64 {
        self.injected.load(AtOrd::Relaxed)
    }

    /// Stops the thread and drops every held message; later messages are
    /// delivered at once.
    pub(crate) fn stop(&self) {
        self.queue.stop();
    }

    /// Holds `m` if the dice say so or its connection already has something
    /// held; otherwise gives it back for delivery now.
    fn hold(&self, conn: &ConnectionRef, m: Message) -> Option<Message> {
        let delay = self.settings.roll(&mut rand::rng());
        let size = m.total_len() as u64;
        // why: taken before the delay thread can see the message, so its
        // hand-over can never return the bytes before they were taken.
        self.throttle.take(size);
        let held = Held { conn: Arc::clone(conn), msg: Some(m), size, throttle: Arc::clone(&self.throttle) };
        if delay.is_some() {
            // Counted before queueing so the count is up to date by the time the
            // message can be dispatched.
            self.injected.fetch_add(1, AtOrd::Relaxed);
        }
        match self.queue.offer(conn.id(), held, delay) {
            Ok(()) => None,
            Err(mut held) => {
                if delay.is_some() {
                    self.injected.fetch_sub(1, AtOrd::Relaxed);
                }
                // Dropping `held` returns the bytes; normal delivery takes its own.
                held.msg.take()
            }
        }
    }
}

/// `MsgrInner::deliver`'s hook: gives `m` back if it is to be delivered now,
/// or keeps it (returning `None`) to deliver it later.
#[inline]
pub(crate) fn intercept(delayer: &Delayer, conn: &ConnectionRef, m: Message) -> Option<Message> {
    if delayer.settings.applies_to(conn.peer_type()) {
        delayer.hold(conn, m)
    } else {
        Some(m)
    }
}

/// The delay thread's sink: delivers a due message on its connection's worker.
fn hand_over(held: Held, released: Released<Held>) {
    let worker = held.conn.worker();
    worker.submit(Box::new(move |_local, _center| {
        let mut held = held;
        if let (Some(msgr), Some(m)) = (held.conn.msgr.upgrade(), held.msg.take()) {
            // why: shutdown drops what is held; this one was already on its way.
            if !msgr.is_stopping() && msgr.deliver_now(&held.conn, m) {
                msgr.count_fast_dispatched(1);
            }
        }
        // The bytes go back now (deliver_now took its own if it queued the
        // message); only then may later messages of the connection go past.
        drop(held);
        drop(released);
    }));
    // If the worker is gone the task is dropped unrun: the bytes go back and the
    // connection's backlog shrinks all the same.
}

/// Called on the delay thread with each item when due, and a token to drop
/// once the item has been delivered.
pub(crate) type Sink<T> = Arc<dyn Fn(T, Released<T>) + Send + Sync>;

/// Items held per key (connection) until a deadline, released in order per key
/// by one lazily started thread.
///
/// An item is held if it is given a delay or if its key already has an item
/// held or not yet delivered; a later item of a key is never due before an
/// earlier one. The sink gets items in due order, ties in arrival order.
pub(crate) struct DelayQueue<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    name: String,
    sink: Sink<T>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    cond: Condvar,
}

impl<T> Shared<T> {
    #[cfg_attr(feature = "lock-count", track_caller)]
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        sync::lock(&self.state)
    }
}

struct State<T> {
    heap: BinaryHeap<Entry<T>>,
    /// Keys with items held or handed to the sink and not yet released.
    backlogs: HashMap<u64, Backlog>,
    seq: u64,
    stopped: bool,
    thread: Thread,
}

enum Thread {
    NotStarted,
    Running(JoinHandle<()>),
    /// Could not be spawned: items are never held.
    Failed,
    Joined,
}

struct Backlog {
    /// Items of this key held or in the sink's hands.
    count: usize,
    /// Due time of the key's latest item.
    last_due: Instant,
}

struct Entry<T> {
    due: Instant,
    seq: u64,
    key: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, o: &Self) -> Ordering {
        // Max-heap: the earliest due (then the oldest) on top.
        o.due.cmp(&self.due).then_with(|| o.seq.cmp(&self.seq))
    }
}

/// Proof that an item handed to the sink has been dealt with; dropping it lets
/// later items of the same key be delivered directly again.
pub(crate) struct Released<T> {
    shared: Arc<Shared<T>>,
    key: u64,
}

impl<T> Drop for Released<T> {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        if let Some(b) = s.backlogs.get_mut(&self.key) {
            b.count = b.count.saturating_sub(1);
            if b.count == 0 {
                s.backlogs.remove(&self.key);
            }
        }
    }
}

impl<T: Send + 'static> DelayQueue<T> {
    /// A queue whose thread (named `name`, started on first use) passes due
    /// items to `sink`.
    pub(crate) fn new(name: String, sink: Sink<T>) -> Self {
        let state = State {
            heap: BinaryHeap::new(),
            backlogs: HashMap::new(),
            seq: 0,
            stopped: false,
            thread: Thread::NotStarted,
        };
        DelayQueue { shared: Arc::new(Shared { state: Mutex::new(state), cond: Condvar::new() }), name, sink }
    }

    /// Holds `item` for `delay`, or behind what `key` already has held.
    ///
    /// # Errors
    ///
    /// Gives the item back when it need not wait (no delay and nothing of `key`
    /// outstanding), after [`stop`](Self::stop), or if the thread cannot be
    /// started: the caller delivers it now.
    pub(crate) fn offer(&self, key: u64, item: T, delay: Option<Duration>) -> Result<(), T> {
        let now = Instant::now();
        let mut s = self.shared.lock();
        let behind = s.backlogs.get(&key).map(|b| b.last_due);
        if s.stopped || (delay.is_none() && behind.is_none()) || !self.ensure_thread(&mut s) {
            return Err(item);
        }
        let wait = delay.unwrap_or_default().min(MAX_DELAY);
        let mut due = now.checked_add(wait).unwrap_or(now);
        if let Some(last) = behind {
            due = due.max(last);
        }
        s.seq += 1;
        let seq = s.seq;
        let earliest = s.heap.peek().is_none_or(|top| due < top.due);
        s.heap.push(Entry { due, seq, key, item });
        let b = s.backlogs.entry(key).or_insert(Backlog { count: 0, last_due: due });
        b.count += 1;
        b.last_due = due;
        drop(s);
        // The thread sleeps until the earliest deadline; only a new earliest
        // one needs to wake it.
        if earliest {
            sync::notify_one(&self.shared.cond);
        }
        Ok(())
    }

    /// Starts the thread if needed; false if it cannot run.
    fn ensure_thread(&self, s: &mut State<T>) -> bool {
        match s.thread {
            Thread::Running(_) => true,
            Thread::Failed | Thread::Joined => false,
            Thread::NotStarted => {
                let shared = Arc::clone(&self.shared);
                let sink = Arc::clone(&self.sink);
                let spawned = std::thread::Builder::new().name(self.name.clone()).spawn(move || run(&shared, &*sink));
                match spawned {
                    Ok(t) => {
                        s.thread = Thread::Running(t);
                        true
                    }
                    Err(_) => {
                        // why: injection is a test aid; without its thread,
                        // messages simply go through undelayed.
                        s.thread = Thread::Failed;
                        false
                    }
                }
            }
        }
    }

    /// Items held and not yet handed to the sink.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.shared.lock().heap.len()
    }

    /// Items of `key` held or in the sink's hands.
    #[cfg(test)]
    fn outstanding(&self, key: u64) -> usize {
        self.shared.lock().backlogs.get(&key).map_or(0, |b| b.count)
    }

    /// Whether the thread has been started.
    #[cfg(test)]
    fn started(&self) -> bool {
        matches!(self.shared.lock().thread, Thread::Running(_))
    }

    /// Stops the thread (after the hand-over in progress, if any) and drops
    /// every held item. Idempotent; returns without waiting for any deadline.
    pub(crate) fn stop(&self) {
        let (left, thread) = {
            let mut s = self.shared.lock();
            s.stopped = true;
            s.backlogs.clear();
            let thread = std::mem::replace(&mut s.thread, Thread::Joined);
            (std::mem::take(&mut s.heap), thread)
        };
        sync::notify_all(&self.shared.cond);
        // Dropped outside the lock: an item's drop may run arbitrary code.
        drop(left);
        if let Thread::Running(t) = thread {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl<T: Send + 'static> Drop for DelayQueue<T> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The delay thread: sleeps until the earliest deadline, hands every due item
/// to `sink` (outside the lock), until stopped.
fn run<T>(shared: &Arc<Shared<T>>, sink: &(dyn Fn(T, Released<T>) + Send + Sync)) {
    loop {
        let due = {
            let mut s = shared.lock();
            loop {
                if s.stopped {
                    return;
                }
                let now = Instant::now();
                match s.heap.peek().map(|top| top.due) {
                    Some(due) if due <= now => break take_due(&mut s.heap, now),
                    Some(due) => s = sync::wait_timeout(&shared.cond, s, due - now),
                    None => s = sync::wait(&shared.cond, s),
                }
            }
        };
        for e in due {
            sink(e.item, Released { shared: Arc::clone(shared), key: e.key });
        }
    }
}

/// Pops every entry due by `now`, in order.
fn take_due<T>(heap: &mut BinaryHeap<Entry<T>>, now: Instant) -> Vec<Entry<T>> {
    let mut due = Vec::new();
    while heap.peek().is_some_and(|top| top.due <= now) {
        if let Some(e) = heap.pop() {
            due.push(e);
        }
    }
    due
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Generous bound against hangs; nothing asserts on speed within it.
    const PATIENCE: Duration = Duration::from_secs(20);

    /// Records what the sink delivered, per key, in order.
    #[derive(Default)]
    struct Out {
        got: Mutex<Vec<(u64, u32)>>,
        cv: Condvar,
    }

    impl Out {
        fn push(&self, item: (u64, u32)) {
            self.got.lock().unwrap().push(item);
            self.cv.notify_all();
        }

        fn wait_for(&self, n: usize) -> Vec<(u64, u32)> {
            let deadline = Instant::now() + PATIENCE;
            let mut g = self.got.lock().unwrap();
            while g.len() < n {
                let now = Instant::now();
                assert!(now < deadline, "only {} of {n} delivered", g.len());
                g = self.cv.wait_timeout(g, deadline - now).unwrap().0;
            }
            g.clone()
        }

        fn of(&self, key: u64) -> Vec<u32> {
            self.got.lock().unwrap().iter().filter(|(k, _)| *k == key).map(|(_, i)| *i).collect()
        }
    }

    fn queue(out: &Arc<Out>) -> DelayQueue<(u64, u32)> {
        let out = Arc::clone(out);
        // The token drops after the push, as the messenger's hand-over does.
        DelayQueue::new("test-delay".into(), Arc::new(move |item, _released| out.push(item)))
    }

    /// What the messenger does: offer, and deliver directly what comes back.
    fn send(q: &DelayQueue<(u64, u32)>, out: &Out, key: u64, i: u32, delay: Option<Duration>) {
        if let Err(item) = q.offer(key, (key, i), delay) {
            out.push(item);
        }
    }

    #[test]
    fn undelayed_messages_wait_behind_a_delayed_one() {
        let out = Arc::new(Out::default());
        let q = queue(&out);
        send(&q, &out, 1, 0, Some(Duration::from_millis(30)));
        send(&q, &out, 1, 1, None);
        send(&q, &out, 1, 2, Some(Duration::ZERO));
        send(&q, &out, 1, 3, None);
        assert!(out.of(1).is_empty(), "all four wait behind the first");
        out.wait_for(4);
        assert_eq!(out.of(1), [0, 1, 2, 3]);
        // Once the last token is released (just after its push), an undelayed
        // message goes straight through again.
        let deadline = Instant::now() + PATIENCE;
        while q.outstanding(1) > 0 {
            assert!(Instant::now() < deadline, "key 1 never released");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(q.offer(1, (1, 4), None).is_err());
    }

    #[test]
    fn order_is_kept_under_random_delays() {
        let out = Arc::new(Out::default());
        let q = queue(&out);
        let mut rng = rand::rng();
        const N: u32 = 2000;
        for i in 0..N {
            let delay = rng.random_bool(0.2).then(|| Duration::from_micros(rng.random_range(0..2000)));
            send(&q, &out, 7, i, delay);
        }
        out.wait_for(N as usize);
        assert_eq!(out.of(7), (0..N).collect::<Vec<_>>());
    }

    #[test]
    fn keys_are_independent() {
        let out = Arc::new(Out::default());
        let q = queue(&out);
        // Key 1 is held for a minute; key 2 is not stuck behind it.
        send(&q, &out, 1, 0, Some(Duration::from_secs(60)));
        send(&q, &out, 1, 1, None);
        send(&q, &out, 2, 0, None);
        assert_eq!(out.of(2), [0], "delivered directly");
        send(&q, &out, 2, 1, Some(Duration::from_millis(1)));
        send(&q, &out, 2, 2, None);
        out.wait_for(3);
        assert_eq!(out.of(2), [0, 1, 2]);
        assert!(out.of(1).is_empty(), "key 1 is still held");
        assert_eq!(q.held(), 2);
    }

    #[test]
    fn no_thread_until_something_is_held() {
        let out = Arc::new(Out::default());
        let q = queue(&out);
        send(&q, &out, 1, 0, None);
        assert!(!q.started());
        send(&q, &out, 1, 1, Some(Duration::ZERO));
        assert!(q.started());
        out.wait_for(2);
        assert_eq!(out.of(1), [0, 1]);
    }

    /// Counts drops, to see held items go away at shutdown.
    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, AtOrd::SeqCst);
        }
    }

    #[test]
    fn stop_with_items_held_returns_promptly_and_drops_them() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let q: DelayQueue<Counted> = DelayQueue::new("test-delay".into(), Arc::new(|_item, _released| {}));
        for i in 0..100 {
            let delay = if i % 2 == 0 { Some(Duration::from_secs(3600)) } else { None };
            assert!(q.offer(i % 3, Counted(Arc::clone(&dropped)), delay).is_ok() || i % 2 == 1);
        }
        let held = q.held();
        assert!(held >= 50, "{held}");
        let start = Instant::now();
        q.stop();
        // Only a guard against a hang: the hour-long deadlines were not waited for.
        assert!(start.elapsed() < PATIENCE);
        // What was refused was dropped by the loop; what was held, by stop.
        assert_eq!(dropped.load(AtOrd::SeqCst), 100);
        assert_eq!(q.held(), 0);
        // After stop nothing is held any more.
        let refused = q.offer(0, Counted(Arc::clone(&dropped)), Some(Duration::from_secs(1)));
        assert!(refused.is_err());
        q.stop();
    }

    #[test]
    fn dropping_the_queue_stops_its_thread() {
        let out = Arc::new(Out::default());
        let q = queue(&out);
        send(&q, &out, 1, 0, Some(Duration::from_secs(3600)));
        let start = Instant::now();
        drop(q);
        assert!(start.elapsed() < PATIENCE);
        assert!(out.of(1).is_empty());
    }

    fn settings(types: &str, max: &str, probability: &str) -> Option<DelaySettings> {
        let cfg = crate::config::ConfigBuilder::new("osd.0")
            .set("ms_inject_delay_type", types)
            .and_then(|b| b.set("ms_inject_delay_max", max))
            .and_then(|b| b.set("ms_inject_delay_probability", probability))
            .and_then(|b| b.build())
            .unwrap();
        DelaySettings::from_config(&cfg)
    }

    #[test]
    fn off_unless_types_and_a_probability_are_set() {
        assert_eq!(DelaySettings::from_config(&Config::default()), None);
        assert_eq!(settings("", "1", "1"), None);
        assert_eq!(settings("osd", "1", "0"), None);
        let s = settings("osd, client", "0.05", "0.5").unwrap();
        assert!(s.applies_to(Some(EntityType::Osd)));
        assert!(s.applies_to(Some(EntityType::Client)));
        assert!(!s.applies_to(Some(EntityType::Mon)));
        assert!(!s.applies_to(None), "a peer of unknown type is never delayed");
    }

    #[test]
    fn probability_zero_never_delays() {
        let s = DelaySettings { types: 0xff, max: Duration::from_secs(1), probability: 0.0 };
        let mut rng = rand::rng();
        assert!((0..10_000).all(|_| s.roll(&mut rng).is_none()));
    }

    #[test]
    fn probability_one_always_delays_up_to_max() {
        let max = Duration::from_millis(50);
        let s = DelaySettings { types: 0xff, max, probability: 1.0 };
        let mut rng = rand::rng();
        for _ in 0..10_000 {
            let d = s.roll(&mut rng).unwrap();
            assert!(d <= max, "{d:?}");
        }
    }

    #[test]
    fn probability_half_delays_about_half() {
        let s = settings("client", "0.05", "0.5").unwrap();
        let mut rng = rand::rng();
        let delayed = (0..10_000).filter(|_| s.roll(&mut rng).is_some()).count();
        // Binomial(10000, 0.5): the standard deviation is 50; this is 20 sigma.
        assert!((4_000..=6_000).contains(&delayed), "{delayed}");
    }

    #[test]
    fn max_is_capped() {
        let s = settings("osd", "999999999", "1").unwrap();
        assert_eq!(s.max, MAX_DELAY);
    }
}
