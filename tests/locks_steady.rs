//! Locks taken and wake-ups made per message in steady state, counted by msgr-core's
//! `lock-count` feature (enabled for the tests by msgr-cli's dev-dependency).
//!
//! As in `alloc_steady.rs`, a client and a server messenger echo a message back and
//! forth; after a warm-up, every lock the library takes and every wake-up it makes while
//! `MEASURED` round trips go by — on any thread: workers, dispatch threads — is counted,
//! in total and by call site. Run with `--no-capture` to see which sites a message
//! costs. A round trip is two messages (request and reply), each sent, read and
//! dispatched once.
//!
//! The bounds are what the library takes today (see each test): one more lock on every
//! message makes at least one more per round trip and fails the test.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use msgr::message::Message;
use msgr::messenger::{ConnectionRef, Dispatcher};

mod common;
use common::echo_pair::{echo_pair, Net};
use msgr::sync::{Kind, SiteCount, SyncCounts};

const MSG_ECHO: u16 = 0x7a11;
const WARMUP: u64 = 2_000;
const MEASURED: u64 = 10_000;

/// The counters at one instant: totals and every site.
type Snapshot = (SyncCounts, Vec<SiteCount>);

fn snapshot() -> Snapshot {
    (msgr::sync::counts(), msgr::sync::sites())
}

/// A test-side slot (std's mutex, not the library's: not counted).
fn slot(m: &Mutex<Option<Snapshot>>) -> MutexGuard<'_, Option<Snapshot>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sends every echo message back as it is, from the worker (`fast`) or from the
/// dispatch thread.
struct Server {
    fast: bool,
}

impl Dispatcher for Server {
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        self.fast && m.msg_type == MSG_ECHO
    }
    fn ms_fast_dispatch(&self, con: &ConnectionRef, m: Message) {
        // A send failure only means the client went away: the test times out then.
        let _ = con.send_message(Message { seq: 0, src: None, ..m });
    }
    fn ms_dispatch(&self, con: &ConnectionRef, m: &Message) -> bool {
        if m.msg_type != MSG_ECHO {
            return false;
        }
        let _ = con.send_message(Message { seq: 0, src: None, ..m.clone() });
        true
    }
}

/// Counts the replies and sends each one back until `total` requests went out; takes
/// the counters at the round trips that open and close the measured window.
struct Client {
    fast: bool,
    total: u64,
    sent: AtomicU64,
    /// Replies seen, and replies handled (their snapshot, if any, taken).
    arrived: AtomicU64,
    replies: AtomicU64,
    at_start: Mutex<Option<Snapshot>>,
    at_end: Mutex<Option<Snapshot>>,
}

impl Client {
    fn on_reply(&self, con: &ConnectionRef, m: Message) {
        let n = self.arrived.fetch_add(1, Ordering::SeqCst) + 1;
        if n == WARMUP {
            *slot(&self.at_start) = Some(snapshot());
        } else if n == WARMUP + MEASURED {
            *slot(&self.at_end) = Some(snapshot());
        }
        // Counted once the snapshot is stored: the test reads the slots as soon as it
        // sees the last reply counted.
        self.replies.fetch_add(1, Ordering::SeqCst);
        if self.sent.fetch_add(1, Ordering::SeqCst) < self.total {
            let _ = con.send_message(Message { seq: 0, src: None, ..m });
        }
    }
}

impl Dispatcher for Client {
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        self.fast && m.msg_type == MSG_ECHO
    }
    fn ms_fast_dispatch(&self, con: &ConnectionRef, m: Message) {
        self.on_reply(con, m);
    }
    fn ms_dispatch(&self, con: &ConnectionRef, m: &Message) -> bool {
        if m.msg_type != MSG_ECHO {
            return false;
        }
        self.on_reply(con, m.clone());
        true
    }
}

/// One test at a time under `cargo test` (nextest runs each in its own process): the
/// counters are process-wide.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the measured window cost.
struct Measured {
    /// Locks per round trip.
    locks: f64,
    /// Wake-ups per round trip.
    wakeups: f64,
    /// Sites counted in the window, most first, with their counts in the window.
    sites: Vec<SiteCount>,
}

impl Measured {
    /// Per round trip, the sites of `kind` in files whose path ends with `file`.
    fn per_rt(&self, file: &str, kind: Kind) -> f64 {
        let n: u64 = self.sites.iter().filter(|s| s.kind == kind && s.file.ends_with(file)).map(|s| s.count).sum();
        n as f64 / MEASURED as f64
    }
}

/// What happened at each site between `start` and `end`.
fn window(start: &[SiteCount], end: &[SiteCount]) -> Vec<SiteCount> {
    let mut out: Vec<SiteCount> = end
        .iter()
        .filter_map(|e| {
            let before = start
                .iter()
                .find(|s| s.kind == e.kind && s.line == e.line && s.column == e.column && s.file == e.file)
                .map_or(0, |s| s.count);
            let mut d = e.clone();
            d.count -= before;
            (d.count > 0).then_some(d)
        })
        .collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| (a.file, a.line).cmp(&(b.file, b.line))));
    out
}

/// Runs the echo and counts the measured window (both messengers, all threads).
fn measure(net: Net, lossless: bool, depth: u64, fast: bool) -> Measured {
    let _serial = serial();
    let pair = echo_pair(net, lossless);
    pair.server.add_dispatcher_tail(Arc::new(Server { fast }));
    let total = WARMUP + MEASURED;
    let cd = Arc::new(Client {
        fast,
        total,
        sent: AtomicU64::new(depth),
        arrived: AtomicU64::new(0),
        replies: AtomicU64::new(0),
        at_start: Mutex::new(None),
        at_end: Mutex::new(None),
    });
    pair.client.add_dispatcher_tail(cd.clone());
    let con = pair.start(MSG_ECHO, depth, 64);
    pair.wait_for(total, || cd.replies.load(Ordering::SeqCst));
    let (start, end) = (slot(&cd.at_start).take(), slot(&cd.at_end).take());
    pair.close(con);
    let (Some((c0, s0)), Some((c1, s1))) = (start, end) else {
        panic!("{net:?}: the window was not taken");
    };
    let d = c1.since(c0);
    let m = Measured {
        locks: d.locks as f64 / MEASURED as f64,
        wakeups: d.wakeups as f64 / MEASURED as f64,
        sites: window(&s0, &s1),
    };
    println!(
        "{net:?} {} depth {depth} {}: {} locks, {} wake-ups in {MEASURED} round trips = {:.3} locks and {:.3} \
         wake-ups per round trip",
        if lossless { "lossless_peer" } else { "lossy client / stateless server" },
        if fast { "fast dispatch" } else { "dispatch thread" },
        d.locks,
        d.wakeups,
        m.locks,
        m.wakeups,
    );
    for s in &m.sites {
        println!(
            "  {:7.3} per round trip  {:<11} {}:{}:{}",
            s.count as f64 / MEASURED as f64,
            format!("{:?}", s.kind),
            s.file,
            s.line,
            s.column
        );
    }
    m
}

/// Fails if the window took more locks or wake-ups per round trip than the bounds.
fn check(name: &str, m: &Measured, locks: f64, wakeups: f64) {
    assert!(m.locks <= locks, "{name}: {:.3} locks per round trip, more than {locks}", m.locks);
    assert!(m.wakeups <= wakeups, "{name}: {:.3} wake-ups per round trip, more than {wakeups}", m.wakeups);
}

// What a message costs on the fast-dispatch path over kernel TCP, at depth 1, where
// every message is one loop iteration of the worker that reads it: no lock. The reply,
// sent from fast dispatch on the connection being read, goes to the session through
// the worker's lane, not the outbox (`Connection::queue_local`), and the flush after
// the read finds the outbox unmarked and does not lock it.
// Gone since the counting began (12 per round trip then): the owning worker's mutex
// in `schedule` (an atomic key says the sender is on it), the second `take_outbox` of
// the flush `after_events` ran for a connection already flushed, the external queue's
// mutex on loop iterations with nothing submitted, the dispatcher list's RwLock in
// `MsgrInner::deliver_now` (a thread reads the list without a lock while it has not
// changed), and the outbox's push and take.
// No wake-up: the reply is sent on the worker that read the request, and the peer's
// worker is woken by its socket (epoll), not by us.
const POSIX_DEPTH1_LOCKS: f64 = 0.0 + 0.5;

#[test]
fn posix_lossy_depth1() {
    let m = measure(Net::Posix, false, 1, true);
    check("posix lossy depth 1", &m, POSIX_DEPTH1_LOCKS, 0.1);
}

#[test]
fn posix_lossless_depth1() {
    // A lossless session takes no lock of its own for its acks: none either.
    let m = measure(Net::Posix, true, 1, true);
    check("posix lossless depth 1", &m, POSIX_DEPTH1_LOCKS, 0.1);
}

// At depth 16 a worker's loop iteration carries a burst (8 round trips here): none
// either.
const POSIX_DEPTH16_LOCKS: f64 = 0.0 + 0.4;

#[test]
fn posix_lossy_depth16() {
    let m = measure(Net::Posix, false, 16, true);
    check("posix lossy depth 16", &m, POSIX_DEPTH16_LOCKS, 0.1);
}

#[test]
fn posix_lossless_depth16() {
    let m = measure(Net::Posix, true, 16, true);
    check("posix lossless depth 16", &m, POSIX_DEPTH16_LOCKS, 0.1);
}

#[test]
fn mem_lossy_depth1() {
    // None on the posix path's part, but the in-memory stack's own per message (12 per
    // round trip): the simulated connection's state mutex for the send and for two
    // reads (the message, then WouldBlock) in stack/mem.rs; the readiness table's
    // mutex (event/ready.rs) twice to post the peer's readability and its own, once
    // to collect what fires in the loop iteration. A post that finds the peer's worker
    // asleep writes its eventfd: at most one wake-up per message.
    let m = measure(Net::Mem, false, 1, true);
    check("mem lossy depth 1", &m, 12.0 + 0.5, 2.0 + 0.1);
}

/// Messages of the echo handed to `ms_dispatch` on the messengers' dispatch threads
/// (one per messenger) instead of fast dispatch, 16 in flight.
#[test]
fn posix_dispatch_thread_depth16() {
    let m = measure(Net::Posix, false, 16, false);
    // Each message crosses from its worker to its messenger's dispatch thread.
    let per_msg = |n: f64| n / 2.0;
    let notifies = m.per_rt("messenger/dispatch.rs", Kind::Notify);
    let sleeps = m.per_rt("messenger/dispatch.rs", Kind::CondvarWait);
    println!(
        "dispatch threads: {:.3} notifies and {:.3} sleeps (each one woken) per message",
        per_msg(notifies),
        per_msg(sleeps)
    );
    // The worker notifies only a dispatch thread that sleeps: a burst that finds it busy
    // costs no futex_wake (before, every message made one).
    assert!(notifies <= sleeps + 0.01, "{notifies:.3} notifies per round trip for {sleeps:.3} sleeps");
    // A read's messages are queued as one burst, and a sleeping thread is notified once
    // for all of them: 0.10 per message measured (one per read of about 10 messages);
    // notified by the burst's first message, the thread took them 2 at a time (0.39 to
    // 0.56 per message).
    assert!(per_msg(notifies) <= 0.3, "{:.3} notifies per message: not one per burst", per_msg(notifies));
    // Per message, 3 locks whatever the timing: the worker's push into the queue, the
    // dispatch thread's pop and the outbox append of the reply. (Neither thread locks
    // the dispatcher list to read it.)
    let steady: f64 = m
        .sites
        .iter()
        .filter(|s| {
            !s.kind.is_wakeup() && s.kind != Kind::CondvarWait && s.count as f64 >= 0.95 * 2.0 * MEASURED as f64
        })
        .map(|s| s.count as f64 / MEASURED as f64)
        .sum();
    assert!(steady <= 6.0 + 0.5, "{steady:.3} locks per round trip taken on every message, more than 6.5");
    // Besides: each sleep retakes the queue's lock, and the worker loop's locks and the
    // hand-over of replies to the worker (a submit, when the connection is not already
    // scheduled) depend on how messages batch: 0.9 to 1.5 per round trip measured.
    let rest = m.locks - sleeps - steady;
    assert!(rest <= 3.0, "{rest:.3} locks per round trip besides the per-message ones and the sleeps");
    // The wake-ups are the notifies and the eventfd writes of replies handed to a
    // sleeping worker (0.07 to 0.11 per round trip measured).
    let efd = m.wakeups - notifies;
    assert!(efd <= 0.5, "{efd:.3} wake-ups per round trip besides the dispatch threads' notifies");
}
