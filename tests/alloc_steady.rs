//! Heap allocations per message in steady state, counted by a global allocator.
//!
//! A client and a server messenger echo a message back and forth through fast dispatch
//! (on the workers): after a warm-up, every allocation the process makes while
//! `MEASURED` round trips go by — on any thread: workers, dispatch thread, the stack —
//! is counted. The echo itself allocates nothing (each side sends back the message it
//! was handed, whose payload it owns), so what is counted is the library's own cost.
//!
//! `ALLOC_TRACE=1` also resolves a backtrace of every allocation during a short traced
//! run after the measured one and prints the sites by count (run with `--nocapture`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use msgr::message::Message;
use msgr::messenger::{ConnectionRef, Dispatcher};

mod common;
use common::echo_pair::{echo_pair, Net};

// ------------------------------------------------------------------ counting allocator

/// Allocations (alloc, alloc_zeroed, realloc) since the process started, all threads.
static ALLOCS: AtomicU64 = AtomicU64::new(0);
/// Backtraces are recorded while set (only with `ALLOC_TRACE`).
static TRACING: AtomicBool = AtomicBool::new(false);

thread_local! {
    // Set while this thread records a backtrace: what that allocates is not traced.
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

/// Resolved backtraces of traced allocations → count.
fn sites() -> MutexGuard<'static, BTreeMap<String, u64>> {
    static SITES: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
    SITES.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Counting;

impl Counting {
    fn note(&self) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        if TRACING.load(Ordering::Relaxed) {
            trace();
        }
    }
}

/// Records where the current allocation comes from, once per thread at a time (the
/// recording allocates itself).
fn trace() {
    if IN_TRACE.with(|t| t.replace(true)) {
        return;
    }
    let bt = std::backtrace::Backtrace::force_capture().to_string();
    // The frames of the library and the test, without the allocator's own and std's.
    let frames: Vec<&str> = bt
        .lines()
        .filter(|l| l.trim_start().chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(|l| l.split_once(": ").map_or(l, |(_, f)| f).trim())
        .filter(|f| f.starts_with("msgr") || f.starts_with("alloc_steady") || f.starts_with("bytes"))
        .filter(|f| !f.contains("Counting") && !f.contains("alloc_steady::trace"))
        .take(6)
        .collect();
    *sites().entry(frames.join("\n    <- ")).or_insert(0) += 1;
    IN_TRACE.with(|t| t.set(false));
}

// SAFETY: every call is passed on to the system allocator unchanged; the counting only
// touches an atomic (and, when tracing, allocates again under a per-thread guard that
// stops the recursion).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.note();
        // SAFETY: the caller's contract for `alloc` is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.note();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.note();
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes
        // through this allocator), as `realloc` requires.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `realloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ------------------------------------------------------------------ echo

const MSG_ECHO: u16 = 0x7a11;
const WARMUP: u64 = 2_000;
const MEASURED: u64 = 10_000;
/// Round trips traced after the measured ones (with `ALLOC_TRACE`).
const TRACED: u64 = 200;

/// Sends every echo message back as it is.
struct Server;

impl Dispatcher for Server {
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        m.msg_type == MSG_ECHO
    }
    fn ms_fast_dispatch(&self, con: &ConnectionRef, m: Message) {
        // A send failure only means the client went away: the test times out then.
        let _ = con.send_message(Message { seq: 0, src: None, ..m });
    }
}

/// Sends every echo message back from the messenger's dispatch thread (`ms_dispatch`):
/// each request crosses from the worker that read it to the dispatch queue and back.
struct QueuedServer;

impl Dispatcher for QueuedServer {
    fn ms_dispatch(&self, con: &ConnectionRef, m: &Message) -> bool {
        if m.msg_type != MSG_ECHO {
            return false;
        }
        let _ = con.send_message(Message { seq: 0, src: None, ..m.clone() });
        true
    }
}

/// Counts the replies and sends each one back until `total` requests went out; takes
/// the allocation counter at the round trips that open and close the measured window.
struct Client {
    total: u64,
    sent: AtomicU64,
    /// Replies seen, and replies handled (their counter, if any, stored).
    arrived: AtomicU64,
    replies: AtomicU64,
    /// ALLOCS at the end of the warm-up and at the end of the measured round trips.
    at_start: AtomicU64,
    at_end: AtomicU64,
}

impl Dispatcher for Client {
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        m.msg_type == MSG_ECHO
    }
    fn ms_fast_dispatch(&self, con: &ConnectionRef, m: Message) {
        let n = self.arrived.fetch_add(1, Ordering::SeqCst) + 1;
        if n == WARMUP {
            self.at_start.store(ALLOCS.load(Ordering::SeqCst), Ordering::SeqCst);
        } else if n == WARMUP + MEASURED {
            self.at_end.store(ALLOCS.load(Ordering::SeqCst), Ordering::SeqCst);
            if std::env::var_os("ALLOC_TRACE").is_some() {
                TRACING.store(true, Ordering::SeqCst);
            }
        } else if n == WARMUP + MEASURED + TRACED {
            TRACING.store(false, Ordering::SeqCst);
        }
        // Counted once the counter is stored: the test reads it as soon as it sees the
        // last reply counted.
        self.replies.fetch_add(1, Ordering::SeqCst);
        if self.sent.fetch_add(1, Ordering::SeqCst) < self.total {
            let _ = con.send_message(Message { seq: 0, src: None, ..m });
        }
    }
}

/// One test at a time: the counter is process-wide.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the echo; returns allocations per round trip in the measured window (both
/// messengers, all threads).
fn allocs_per_round_trip(net: Net, lossless: bool, depth: u64, size: usize, queued: bool) -> f64 {
    let _serial = serial();
    let pair = echo_pair(net, lossless);
    if queued {
        pair.server.add_dispatcher_tail(Arc::new(QueuedServer));
    } else {
        pair.server.add_dispatcher_tail(Arc::new(Server));
    }
    let total = WARMUP + MEASURED + TRACED;
    let cd = Arc::new(Client {
        total,
        sent: AtomicU64::new(depth),
        arrived: AtomicU64::new(0),
        replies: AtomicU64::new(0),
        at_start: AtomicU64::new(0),
        at_end: AtomicU64::new(0),
    });
    pair.client.add_dispatcher_tail(cd.clone());
    let con = pair.start(MSG_ECHO, depth, size);
    pair.wait_for(total, || cd.replies.load(Ordering::SeqCst));
    let allocs = cd.at_end.load(Ordering::SeqCst) - cd.at_start.load(Ordering::SeqCst);
    pair.close(con);
    let per = allocs as f64 / MEASURED as f64;
    println!(
        "{net:?} {}{} depth {depth} size {size}: {allocs} allocations in {MEASURED} round trips = {per:.3} per round trip",
        if lossless { "lossless_peer" } else { "lossy client / stateless server" },
        if queued { ", server dispatch thread" } else { "" },
    );
    if TRACING.swap(false, Ordering::SeqCst) || std::env::var_os("ALLOC_TRACE").is_some() {
        let mut by_count: Vec<(String, u64)> = std::mem::take(&mut *sites()).into_iter().collect();
        by_count.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        for (site, n) in by_count {
            println!("{:.2} per round trip: {site}", n as f64 / TRACED as f64);
        }
    }
    per
}

/// Runs the echo and fails if it took more than `bound` allocations per round trip
/// (a request and its reply, both messengers): the bound is what the library reaches,
/// so a regression fails here.
fn check(net: Net, lossless: bool, depth: u64, size: usize, bound: f64) {
    check_per(allocs_per_round_trip(net, lossless, depth, size, false), net, bound);
}

fn check_per(per: f64, net: Net, bound: f64) {
    // "None per message" tolerates a handful in the whole window: a queue that a burst
    // on a loaded machine grows once keeps that capacity, which is not a per-message
    // cost. One allocation per message would be 10,000 here.
    let slack = ONE_OFFS as f64 / MEASURED as f64;
    assert!(per <= bound + slack, "{net:?}: {per} allocations per round trip, more than {bound} (+{slack} one-offs)");
}

/// Allocations in the measured window that are not counted against a zero bound.
const ONE_OFFS: u64 = 20;

#[test]
fn posix_lossy_depth1() {
    check(Net::Posix, false, 1, 64, 0.0);
}

#[test]
fn posix_lossy_depth16() {
    check(Net::Posix, false, 16, 4096, 1.0);
}

#[test]
fn posix_lossless_depth16() {
    check(Net::Posix, true, 16, 4096, 3.0);
}

#[test]
fn posix_lossless_depth1() {
    check(Net::Posix, true, 1, 4096, 0.0);
}

#[test]
fn mem_lossy_depth1() {
    check(Net::Mem, false, 1, 64, 0.0);
}

/// The server's replies go through its dispatch queue and thread (`ms_dispatch`), not
/// fast dispatch: the queue's items and the dispatcher list are read without allocating.
#[test]
fn posix_dispatch_thread_depth1() {
    check_per(allocs_per_round_trip(Net::Posix, false, 1, 64, true), Net::Posix, 0.0);
}

/// A 64 KiB message at depth 1 is a large frame read in place, into the connection's deep
/// buffer, which is reclaimed once the messages in it are gone: a new buffer now and then
/// (0.02 per round trip measured), not per message. (A frame that does not fit there, a
/// 1 MiB one say, goes to a pooled buffer of its own, and freezing that allocates a small
/// handle per frame; not covered here: 10,000 such round trips take too long.)
#[test]
fn posix_lossy_depth1_64k() {
    check(Net::Posix, false, 1, 64 * 1024, 0.1);
}
