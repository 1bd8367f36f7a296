//! Memory that received messages pin while the application keeps them, counted by a
//! global allocator (live heap bytes, all threads).
//!
//! A lossy connection that reads 8 KiB or more in a wake-up reads in place, into a deep
//! buffer (about 288 KiB) that the messages read into it share; a message kept pins
//! that buffer's allocation. What bounds this is that a drained connection hands the
//! buffer's free room on to the next busy read instead of taking a new buffer each
//! wake-up. Here a server keeps every 4 KiB message of 100 bursts of three: the heap
//! must grow by a small multiple of the payload kept, not by a deep buffer per burst
//! (28 MiB), and come back once the messages are dropped. With many connections each
//! keeping its messages, the same holds, and the memory left once they are dropped is
//! the workers' few spare buffers, not a buffer per connection; an open connection
//! costs a few tens of KiB. Connections gone quiet after a deep pipeline give back what
//! it grew (staging buffers, queues, read buffers), and their workers their spares.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use msgr::message::Message;
use msgr::messenger::{ConnectionRef, Dispatcher, Messenger, Policy};
use msgr::proto::{EntityAddr, EntityAddrVec, EntityType};
use msgr_cli::bench::run::job_targets;

mod common;
use common::traffic::{config, messenger, wait_until, BurstSender, MSG_TEST};

/// Live heap bytes: allocated less freed, since the process started.
static LIVE: AtomicI64 = AtomicI64::new(0);

struct Live;

fn grow(by: i64) {
    LIVE.fetch_add(by, Ordering::Relaxed);
}

// SAFETY: every call is passed on to the system allocator unchanged; the counting only
// touches an atomic.
unsafe impl GlobalAlloc for Live {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size() as i64);
        // SAFETY: the caller's contract for `alloc` is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grow(layout.size() as i64);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        grow(-(layout.size() as i64));
        // SAFETY: `ptr` came from the system allocator with `layout` (every allocation
        // here does).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grow(new_size as i64 - layout.size() as i64);
        // SAFETY: as for `dealloc`; the caller's contract for `realloc` is the system
        // allocator's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Live = Live;

/// Held by each test for its whole run: the count is of the whole process, so tests that
/// ran at once (`cargo test` runs a binary's tests on threads) would count each other.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

const LEN: usize = 4096;
const PER_BURST: usize = 3;
const BURSTS: usize = 100;
/// Asks the client for its next burst.
const MSG_NEXT: u16 = 0x7005;

/// Keeps every test message it is handed; asks a connection for its next burst after
/// each whole one it sent.
#[derive(Default)]
struct Keeper {
    held: Mutex<Vec<Message>>,
    /// Messages taken per connection.
    per_con: Mutex<HashMap<u64, usize>>,
}

impl Dispatcher for Keeper {
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        m.msg_type == MSG_TEST
    }
    fn ms_fast_dispatch(&self, con: &ConnectionRef, m: Message) {
        self.held.lock().unwrap().push(m);
        let n = {
            let mut per_con = self.per_con.lock().unwrap();
            let n = per_con.entry(con.id()).or_default();
            *n += 1;
            *n
        };
        if n % PER_BURST == 0 {
            let _ = con.send_message(Message::new(MSG_NEXT, Bytes::new()));
        }
    }
}

/// A server keeping what it receives, and a client sending it `bursts` bursts in all
/// (not connected yet).
struct Pair {
    server: Messenger,
    keeper: Arc<Keeper>,
    addr: EntityAddr,
    client: Messenger,
    sender: Arc<BurstSender>,
}

impl Pair {
    fn new(bind: &str, bursts: usize) -> Pair {
        let cfg = config(&[]);
        let server = messenger(&cfg, EntityType::Osd, 1);
        server.set_default_policy(Policy::stateless_server(0));
        let keeper = Arc::new(Keeper::default());
        server.add_dispatcher_tail(keeper.clone());
        let addr = server.bind(bind.parse().unwrap()).unwrap();
        let client = messenger(&cfg, EntityType::Client, -1);
        client.set_default_policy(Policy::lossy_client(0));
        let sender =
            Arc::new(BurstSender { ask: MSG_NEXT, next: AtomicUsize::new(0), bursts, per_burst: PER_BURST, len: LEN });
        client.add_dispatcher_tail(sender.clone());
        Pair { server, keeper, addr, client, sender }
    }
}

/// `n` connections from `client` to a server bound to 0.0.0.0 (`bound`), all up: one
/// client messenger keeps one connection per peer address, so they dial 127.0.0.1, .2,
/// … as `msgr bench --conns-per-job` does.
fn connect_all(client: &Messenger, bound: &EntityAddr, n: usize) -> Vec<ConnectionRef> {
    let lo = EntityAddr::new(bound.ty, SocketAddr::new(Ipv4Addr::LOCALHOST.into(), bound.port()), bound.nonce);
    let cons: Vec<ConnectionRef> = job_targets(&lo, n)
        .unwrap()
        .into_iter()
        .map(|a| client.connect_to(EntityType::Osd, &EntityAddrVec(vec![a])).unwrap())
        .collect();
    wait_until("every connection up", || cons.iter().all(|c| c.is_connected()));
    cons
}

#[test]
fn kept_messages_pin_a_bounded_multiple_of_their_payload_and_release_it() {
    let _alone = one_at_a_time();
    let Pair { server, keeper, addr, client, sender } = Pair::new("127.0.0.1:0", BURSTS);
    let before = LIVE.load(Ordering::Relaxed);
    let con = client.connect_to(EntityType::Osd, &EntityAddrVec(vec![addr])).unwrap();
    sender.burst(&con);
    let all = BURSTS * PER_BURST;
    wait_until("every message kept", || keeper.held.lock().unwrap().len() == all);
    let kept = (all * LEN) as i64;
    let grown = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "{all} messages of {LEN} bytes kept: the heap grew by {grown} bytes, {:.2}x their payload",
        grown as f64 / kept as f64
    );
    // Connection set-up, the worker's spare buffers (up to four deep ones) and the
    // client's side take the 2 MiB; a deep buffer per burst would be 28 MiB.
    assert!(grown < 3 * kept + (2 << 20), "{grown} bytes for {kept} bytes of payload kept");
    keeper.held.lock().unwrap().clear();
    let after = LIVE.load(Ordering::Relaxed) - before;
    println!("once they are dropped: {after} bytes above the start");
    assert!(after < 2 << 20, "{after} bytes still held once every message was dropped");
    drop((con, client, server));
}

/// A deep buffer per worker may stay as its spare (`DEEP_SPARES`, four of about 288 KiB);
/// the default messenger has three workers.
const WORKER_SPARES: i64 = 3 * 4 * 288 * 1024;

#[test]
fn many_connections_cost_little_each_and_pin_no_buffer_once_their_messages_are_dropped() {
    let _alone = one_at_a_time();
    const CONNS: usize = 32;
    // Bound to every address, so that one client messenger (one connection per peer
    // address) dials it as 127.0.0.1, .2, … Bursts are numbered across connections:
    // each connection asks for the next one.
    let Pair { server, keeper, addr: bound, client, sender } = Pair::new("0.0.0.0:0", CONNS * BURSTS);
    let unconnected = LIVE.load(Ordering::Relaxed);
    // Counted from once they are all up: what set-up takes is not receive memory.
    let cons = connect_all(&client, &bound, CONNS);
    let before = LIVE.load(Ordering::Relaxed);
    let per_pair = (before - unconnected) / CONNS as i64;
    println!("{CONNS} connections up: {per_pair} bytes of heap each, both ends");
    // A connection's own receive and staging buffers start small: each end's 64 KiB
    // staging buffer made this 145 KB.
    assert!(per_pair < 48 << 10, "{per_pair} bytes of heap per connection once up");
    for con in &cons {
        sender.burst(con);
    }
    let all = CONNS * BURSTS * PER_BURST;
    wait_until("every message kept", || keeper.held.lock().unwrap().len() == all);
    assert_eq!(keeper.per_con.lock().unwrap().len(), CONNS, "every connection sent its share");
    let kept = (all * LEN) as i64;
    let grown = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "{all} messages of {LEN} bytes kept from {CONNS} connections: the heap grew by {grown} bytes, {:.2}x their payload",
        grown as f64 / kept as f64
    );
    assert!(grown < 3 * kept + WORKER_SPARES, "{grown} bytes for {kept} bytes of payload kept");
    // Dropped with the vector that listed them (its 9600 entries are no receive memory).
    drop(std::mem::take(&mut *keeper.held.lock().unwrap()));
    let after = LIVE.load(Ordering::Relaxed) - before;
    println!("once they are dropped, the connections still open: {after} bytes above the start");
    // A deep buffer held by each idle connection would be 9 MiB here.
    assert!(after < WORKER_SPARES + (1 << 20), "{after} bytes still held once every message was dropped");
    drop((cons, client, server));
}

/// Answers every test message with an empty one, and counts what it was sent.
#[derive(Default)]
struct Answerer {
    got: AtomicUsize,
}

impl Dispatcher for Answerer {
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        m.msg_type == MSG_TEST || m.msg_type == MSG_NEXT
    }
    fn ms_fast_dispatch(&self, con: &ConnectionRef, m: Message) {
        self.got.fetch_add(1, Ordering::Relaxed);
        if m.msg_type == MSG_TEST {
            let _ = con.send_message(Message::new(MSG_NEXT, Bytes::new()));
        }
    }
}

#[test]
fn connections_quiet_after_a_deep_pipeline_give_their_grown_buffers_back() {
    let _alone = one_at_a_time();
    const CONNS: usize = 32;
    const DEEP: usize = 2000;
    let cfg = config(&[]);
    let server = messenger(&cfg, EntityType::Osd, 1);
    server.set_default_policy(Policy::stateless_server(0));
    let answers = Arc::new(Answerer::default());
    server.add_dispatcher_tail(answers.clone());
    let bound = server.bind("0.0.0.0:0".parse().unwrap()).unwrap();
    let client = messenger(&cfg, EntityType::Client, -1);
    client.set_default_policy(Policy::lossy_client(0));
    let replies = Arc::new(Answerer::default());
    client.add_dispatcher_tail(replies.clone());
    let cons = connect_all(&client, &bound, CONNS);
    let before = LIVE.load(Ordering::Relaxed);
    // A deep pipeline each way: thousands of small messages queued at once are framed
    // in large bursts, and so are the answers.
    for con in &cons {
        for i in 0..DEEP {
            let _ = con.send_message(Message::new(MSG_TEST, Bytes::from(vec![i as u8; 64])));
        }
    }
    wait_until("every message answered", || replies.got.load(Ordering::Relaxed) == CONNS * DEEP);
    let busy = (LIVE.load(Ordering::Relaxed) - before) / CONNS as i64;
    println!("{CONNS} connections after {DEEP} messages each way: {busy} bytes of heap each above their set-up");
    // A session gives its buffers back at most two periods after its last frame (its
    // first look may come less than a period after it); a margin for a loaded machine.
    let wait = 2 * msgr::proto::session::IDLE_SHRINK_AFTER + std::time::Duration::from_secs(3);
    std::thread::sleep(wait);
    let quiet = (LIVE.load(Ordering::Relaxed) - before) / CONNS as i64;
    println!("and {wait:?} later, nothing sent: {quiet} bytes each");
    // Each end's staging buffer grows to 64 KiB under such bursts, and the queues to
    // thousands of entries: 1.1 MB per connection stayed once quiet before they were
    // given back.
    assert!(busy > 512 << 10, "{busy} bytes per connection: the pipeline did not grow the buffers");
    assert!(quiet * 4 < busy, "{quiet} bytes per connection still held once quiet, of {busy}");
    // The workers' spare read buffers go too once no read took one for as long: quiet
    // connections cost what they did once up (less: their first small read buffers are
    // gone with the rest). Before, the spares alone were 200 KiB per connection here.
    assert!(quiet < 16 << 10, "{quiet} bytes per connection still held once quiet");
    drop((cons, client, server));
}
