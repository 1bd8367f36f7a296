//! Two messengers over the posix stack on loopback: delivery, dispatch paths,
//! priorities, throttle backpressure and connection bookkeeping.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use msgr::config::Config;
use msgr::message::Message;
use msgr::messenger::perf::Counter;
use msgr::messenger::{ConnState, ConnectionRef, Dispatcher, Messenger, PerfSource, Policy, SendError};
use msgr::proto::{EntityAddr, EntityAddrVec, EntityName, EntityType, MAX_SEGMENT_LEN};

mod common;
use common::driven::DrivenClient;
use common::traffic::{config, messenger, test_message, wait_until, BurstSender, Recorder, Tally, MSG_TEST, WAIT};

const MSG_GATE: u16 = 0x7002;

/// Payload length of message `i` of `stream`: 0..8 KiB.
fn len_of(stream: u64, i: u64) -> usize {
    ((stream * 7919 + i * 37) % 8192) as usize
}

/// Server side: counts what it receives and, when a client connects, streams
/// `per_conn` messages back on that connection.
struct Server {
    tally: Tally,
    per_conn: u64,
    accepted: AtomicUsize,
}

impl Dispatcher for Server {
    fn ms_dispatch(&self, con: &ConnectionRef, m: &Message) -> bool {
        self.tally.record(con, m);
        true
    }
    fn ms_handle_accept(&self, con: &ConnectionRef) {
        self.accepted.fetch_add(1, Ordering::SeqCst);
        for i in 0..self.per_conn {
            con.send_message(test_message(con.id(), i, len_of(con.id(), i))).unwrap();
        }
    }
}

#[test]
fn hundred_connections_thousand_messages_each_way() {
    let conns_n: u64 = std::env::var("T_CONNS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let per: u64 = std::env::var("T_PER").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    #[allow(non_snake_case)]
    let (CONNS, PER_CONN) = (conns_n, per);
    let cfg = config(&[("ms_async_op_threads", "3")]);
    let server = messenger(&cfg, EntityType::Osd, 0);
    server.set_default_policy(Policy::stateless_server(0));
    let sd = Arc::new(Server { tally: Tally::default(), per_conn: PER_CONN, accepted: AtomicUsize::new(0) });
    server.add_dispatcher_tail(sd.clone());
    // A wildcard bind lets one server be dialled at 100 distinct loopback addresses,
    // which gives 100 distinct connections from one client messenger.
    let bound = server.bind("0.0.0.0:0".parse().unwrap()).unwrap();
    let port = bound.addr.unwrap().port();

    let client = messenger(&cfg, EntityType::Client, -1);
    client.set_default_policy(Policy::lossy_client(0));
    let cd = Arc::new(Recorder::default());
    client.add_dispatcher_tail(cd.clone());
    let mut conns = Vec::new();
    for k in 0..CONNS {
        let ip = format!("127.0.0.{}:{port}", k + 1);
        let target = EntityAddrVec(vec![EntityAddr::msgr2(ip.parse::<SocketAddr>().unwrap(), 0)]);
        conns.push(client.connect_to(EntityType::Osd, &target).unwrap());
    }
    let ids: std::collections::HashSet<u64> = conns.iter().map(|c| c.id()).collect();
    assert_eq!(ids.len(), CONNS as usize, "distinct peers give distinct connections");
    // Senders on several user threads at once: send_message never blocks on the network.
    std::thread::scope(|s| {
        for chunk in conns.chunks(25) {
            s.spawn(move || {
                for i in 0..PER_CONN {
                    for (k, c) in chunk.iter().enumerate() {
                        let stream = c.id() * 1000 + k as u64;
                        c.send_message(test_message(stream, i, len_of(stream, i))).unwrap();
                    }
                }
            });
        }
    });
    let total = CONNS * PER_CONN;
    assert_eq!(sd.tally.wait_for(total), total, "server received");
    assert_eq!(cd.tally.wait_for(total), total, "client received");
    // Nothing extra arrives later (exactly once).
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(sd.tally.received.load(Ordering::SeqCst), total);
    assert_eq!(cd.tally.received.load(Ordering::SeqCst), total);
    assert!(sd.tally.errors.lock().unwrap().is_empty(), "{:?}", sd.tally.errors.lock().unwrap());
    assert!(cd.tally.errors.lock().unwrap().is_empty(), "{:?}", cd.tally.errors.lock().unwrap());
    assert_eq!(sd.accepted.load(Ordering::SeqCst), CONNS as usize);
    assert_eq!(cd.connected.load(Ordering::SeqCst), CONNS as usize);
    for c in &conns {
        assert_eq!(c.state(), ConnState::Open);
    }
    client.shutdown();
    client.wait();
    server.shutdown();
    server.wait();
}

struct ThreadRecorder {
    fast: Mutex<Vec<String>>,
    slow: Mutex<Vec<String>>,
    n: AtomicUsize,
}

impl Dispatcher for ThreadRecorder {
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        m.msg_type == MSG_GATE
    }
    fn ms_fast_dispatch(&self, _con: &ConnectionRef, _m: Message) {
        self.fast.lock().unwrap().push(std::thread::current().name().unwrap_or("?").to_string());
        self.n.fetch_add(1, Ordering::SeqCst);
    }
    fn ms_dispatch(&self, _con: &ConnectionRef, _m: &Message) -> bool {
        self.slow.lock().unwrap().push(std::thread::current().name().unwrap_or("?").to_string());
        self.n.fetch_add(1, Ordering::SeqCst);
        true
    }
}

fn pair(cfg: &Config) -> (Messenger, Messenger, ConnectionRef) {
    let server = messenger(cfg, EntityType::Osd, 1);
    server.set_default_policy(Policy::stateless_server(0));
    let addr = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let client = messenger(cfg, EntityType::Client, -1);
    client.set_default_policy(Policy::lossy_client(0));
    let con = client.connect_to(EntityType::Osd, &EntityAddrVec(vec![addr])).unwrap();
    (server, client, con)
}

#[test]
fn fast_dispatch_runs_on_the_worker_and_the_rest_on_the_dispatch_thread() {
    let cfg = config(&[]);
    let (server, client, con) = pair(&cfg);
    let rec = Arc::new(ThreadRecorder { fast: Mutex::default(), slow: Mutex::default(), n: AtomicUsize::new(0) });
    server.add_dispatcher_tail(rec.clone());
    for i in 0..10 {
        let ty = if i % 2 == 0 { MSG_GATE } else { MSG_TEST };
        con.send_message(Message::new(ty, Bytes::new())).unwrap();
    }
    wait_until("10 messages", || rec.n.load(Ordering::SeqCst) == 10);
    let fast = rec.fast.lock().unwrap().clone();
    let slow = rec.slow.lock().unwrap().clone();
    assert_eq!((fast.len(), slow.len()), (5, 5));
    assert!(fast.iter().all(|t| t.starts_with("msgr-worker-")), "{fast:?}");
    assert!(slow.iter().all(|t| t.starts_with("ms_dispatch")), "{slow:?}");
    assert_eq!(server.fast_dispatched(), 5);
    drop((client, server));
}

/// Holds the dispatch thread on the first message until released, recording the
/// order of everything after it.
struct Gate {
    entered: Mutex<bool>,
    open: Mutex<bool>,
    cv: Condvar,
    order: Mutex<Vec<(u16, u64)>>,
}

impl Gate {
    /// A gate, `open` already or not.
    fn new(open: bool) -> Arc<Gate> {
        Arc::new(Gate {
            entered: Mutex::new(false),
            open: Mutex::new(open),
            cv: Condvar::new(),
            order: Mutex::default(),
        })
    }
}

impl Dispatcher for Gate {
    fn ms_dispatch(&self, _con: &ConnectionRef, m: &Message) -> bool {
        if m.msg_type == MSG_GATE {
            *self.entered.lock().unwrap() = true;
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.cv.wait(open).unwrap();
            }
        } else {
            self.order.lock().unwrap().push((m.priority, m.tid));
        }
        true
    }
}

#[test]
fn dispatch_queue_delivers_by_priority_then_arrival() {
    let cfg = config(&[]);
    let (server, client, con) = pair(&cfg);
    let gate = Gate::new(false);
    server.add_dispatcher_tail(gate.clone());
    // Opens the gate however the test ends, so a failure cannot leave the dispatch
    // thread (and the messenger's drop) waiting forever.
    struct Opener(Arc<Gate>);
    impl Drop for Opener {
        fn drop(&mut self) {
            *self.0.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
            self.0.cv.notify_all();
        }
    }
    let _opener = Opener(gate.clone());
    con.send_message(Message::new(MSG_GATE, Bytes::new())).unwrap();
    // Only once the dispatch thread is held does the burst go out, so everything in it
    // is queued together and the queue alone decides the order.
    wait_until("gate to be entered", || *gate.entered.lock().unwrap());
    let prios = [127u16, 64, 196, 127, 255, 64, 196, 127, 255, 64];
    for (tid, p) in prios.iter().enumerate() {
        con.send_message(Message::new(MSG_TEST, Bytes::new()).with_priority(*p).with_tid(tid as u64)).unwrap();
    }
    // All ten wait behind the gate before it opens.
    let deadline = Instant::now() + WAIT;
    while server.dispatch_queue_len() != prios.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let queued = server.dispatch_queue_len();
    *gate.open.lock().unwrap() = true;
    gate.cv.notify_all();
    assert_eq!(queued, prios.len(), "messages queued behind the gate");
    wait_until("delivery", || gate.order.lock().unwrap().len() == prios.len());
    let got = gate.order.lock().unwrap().clone();
    let mut want: Vec<(u16, u64)> = prios.iter().enumerate().map(|(t, p)| (*p, t as u64)).collect();
    want.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    assert_eq!(got, want);
    drop((client, server));
}

/// A dispatcher that takes its time, so the queue fills.
struct Slow {
    n: AtomicUsize,
}

impl Dispatcher for Slow {
    fn ms_dispatch(&self, _con: &ConnectionRef, m: &Message) -> bool {
        let crc = u32::from_le_bytes(m.front[16..20].try_into().unwrap());
        assert_eq!(crc32c::crc32c(&m.data), crc, "payload corrupted");
        std::thread::sleep(Duration::from_millis(2));
        self.n.fetch_add(1, Ordering::SeqCst);
        true
    }
}

#[test]
fn dispatch_throttle_bounds_memory_with_a_slow_dispatcher() {
    const LIMIT: u64 = 1 << 20;
    const COUNT: usize = 200;
    let cfg = config(&[("ms_dispatch_throttle_bytes", "1M")]);
    let (server, client, con) = pair(&cfg);
    let slow = Arc::new(Slow { n: AtomicUsize::new(0) });
    server.add_dispatcher_tail(slow.clone());
    let big = Bytes::from(vec![0x5au8; 256 << 10]);
    for i in 0..COUNT as u64 {
        let mut front = BytesMut::new();
        front.put_u64_le(9);
        front.put_u64_le(i);
        front.put_u32_le(crc32c::crc32c(&big));
        // Same framing as test_message, with a fixed large payload.
        let m = Message::new(MSG_TEST, front.freeze()).with_data(big.clone());
        con.send_message(m).unwrap();
    }
    let mut max_held = 0;
    let deadline = Instant::now() + WAIT;
    while slow.n.load(Ordering::SeqCst) < COUNT {
        max_held = max_held.max(server.throttle().current());
        assert!(Instant::now() < deadline, "slow dispatcher never finished");
        std::thread::sleep(Duration::from_micros(500));
    }
    // 50 MiB went through a 1 MiB throttle. What is held may exceed the limit by at
    // most what one read pass decodes (READ_BUDGET, 1 MiB) plus one message.
    assert!(max_held <= LIMIT + (1 << 20) + (256 << 10) + 4096, "held {max_held} bytes");
    assert!(max_held >= LIMIT / 2, "the test never filled the throttle ({max_held})");
    assert!(server.throttle().waits() > 0, "readers never had to wait");
    assert_eq!(server.throttle().current(), 0, "everything given back");
    drop((client, server));
}

#[test]
fn connect_to_returns_the_existing_connection_until_marked_down() {
    let cfg = config(&[]);
    let (server, client, con) = pair(&cfg);
    let addrs = con.peer_addrs();
    let again = client.connect_to(EntityType::Osd, &addrs).unwrap();
    assert!(Arc::ptr_eq(&con, &again));
    wait_until("connected", || con.is_connected());
    client.mark_down(&addrs);
    wait_until("closed", || con.state() == ConnState::Closed);
    assert!(con.send_message(Message::new(MSG_TEST, Bytes::new())).is_err(), "closed connections refuse sends");
    let fresh = client.connect_to(EntityType::Osd, &addrs).unwrap();
    assert!(!Arc::ptr_eq(&con, &fresh));
    wait_until("reconnected", || fresh.is_connected());
    client.mark_down_all();
    wait_until("all closed", || client.connection_count() == 0);
    drop((client, server));
}

struct Events {
    log: Mutex<Vec<String>>,
}

impl Dispatcher for Events {
    fn ms_handle_connect(&self, _c: &ConnectionRef) {
        self.log.lock().unwrap().push("connect".into());
    }
    fn ms_handle_accept(&self, _c: &ConnectionRef) {
        self.log.lock().unwrap().push("accept".into());
    }
    fn ms_handle_reset(&self, c: &ConnectionRef) -> bool {
        self.log.lock().unwrap().push(format!("reset:{}", c.last_error().map(|e| e.to_string()).unwrap_or_default()));
        true
    }
    fn ms_handle_refused(&self, _c: &ConnectionRef) -> bool {
        self.log.lock().unwrap().push("refused".into());
        true
    }
}

#[test]
fn handle_connect_accept_reset_and_refused_are_delivered() {
    let cfg = config(&[]);
    let server = messenger(&cfg, EntityType::Osd, 2);
    let sev = Arc::new(Events { log: Mutex::default() });
    server.add_dispatcher_tail(sev.clone());
    let addr = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let client = messenger(&cfg, EntityType::Client, -1);
    client.set_default_policy(Policy::lossy_client(0));
    let cev = Arc::new(Events { log: Mutex::default() });
    client.add_dispatcher_tail(cev.clone());
    let con = client.connect_to(EntityType::Osd, &EntityAddrVec(vec![addr.clone()])).unwrap();
    wait_until("connect", || cev.log.lock().unwrap().contains(&"connect".to_string()));
    wait_until("accept", || sev.log.lock().unwrap().contains(&"accept".to_string()));
    // The server goes away: the client's connection resets with a typed error.
    server.shutdown();
    server.wait();
    wait_until("reset", || cev.log.lock().unwrap().iter().any(|e| e.starts_with("reset:")));
    assert_eq!(con.state(), ConnState::Closed);
    // Nobody listens there now: refused.
    let again = client.connect_to(EntityType::Osd, &EntityAddrVec(vec![addr])).unwrap();
    wait_until("refused", || cev.log.lock().unwrap().contains(&"refused".to_string()));
    assert!(matches!(again.last_error(), Some(msgr::messenger::ConnError::Refused(_))));
    client.shutdown();
    client.wait();
}

#[test]
fn send_from_any_thread_before_the_handshake_completes() {
    let cfg = config(&[]);
    let (server, client, con) = pair(&cfg);
    let tally = Arc::new(Server { tally: Tally::default(), per_conn: 0, accepted: AtomicUsize::new(0) });
    server.add_dispatcher_tail(tally.clone());
    // Sent immediately after connect_to, while TCP connect and handshake are under way.
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let con = &con;
            s.spawn(move || {
                for i in 0..250 {
                    con.send_message(test_message(t, i, len_of(t, i))).unwrap();
                }
            });
        }
    });
    assert_eq!(tally.tally.wait_for(1000), 1000);
    assert!(tally.tally.errors.lock().unwrap().is_empty());
    drop((client, server));
}

#[test]
fn injected_socket_failures_reset_connections_and_the_messengers_carry_on() {
    let before = msgr::stack::inject::injected_failures();
    let cfg = config(&[("ms_inject_socket_failures", "20")]);
    let server = messenger(&cfg, EntityType::Osd, 1);
    server.set_default_policy(Policy::stateless_server(0));
    server.add_dispatcher_tail(Arc::new(Recorder::default()));
    let addr = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let client = messenger(&cfg, EntityType::Client, -1);
    client.set_default_policy(Policy::lossy_client(0));
    let rec = Arc::new(Recorder::default());
    client.add_dispatcher_tail(rec.clone());
    let addrs = EntityAddrVec(vec![addr]);
    // Lossy: each injected failure ends the connection; the client opens a new one.
    for round in 0..20u64 {
        let con = client.connect_to(EntityType::Osd, &addrs).unwrap();
        let deadline = Instant::now() + WAIT;
        let mut i = 0;
        // Keep the socket busy until an injected failure ends it.
        while con.state() != ConnState::Closed {
            assert!(Instant::now() < deadline, "no failure injected in round {round}");
            let _ = con.send_message(test_message(round, i, 100));
            i += 1;
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let injected = msgr::stack::inject::injected_failures() - before;
    assert!(injected >= 20, "{injected} failures injected");
    wait_until("a reset per failed connection", || rec.resets.load(Ordering::SeqCst) >= 20);
    drop((client, server));
}

/// Fast-dispatches `MSG_FAST` messages, recording their index and thread.
#[derive(Default)]
struct FastLog {
    seen: Mutex<Vec<(u64, String)>>,
}

impl Dispatcher for FastLog {
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        m.msg_type == MSG_FAST
    }
    fn ms_fast_dispatch(&self, _con: &ConnectionRef, m: Message) {
        let i = u64::from_le_bytes(m.front[..8].try_into().unwrap());
        let thread = std::thread::current().name().unwrap_or("?").to_string();
        self.seen.lock().unwrap().push((i, thread));
    }
}

const MSG_FAST: u16 = 0x7003;

#[test]
fn injected_delays_hold_client_messages_back_but_keep_them_in_order() {
    const COUNT: u64 = 500;
    const FAST_EVERY: u64 = 10;
    // Only the server delays, and only what its client peers send.
    let server_cfg = config(&[
        ("ms_inject_delay_type", "client"),
        ("ms_inject_delay_max", "0.05"),
        ("ms_inject_delay_probability", "0.5"),
    ]);
    let server = messenger(&server_cfg, EntityType::Osd, 1);
    server.set_default_policy(Policy::stateless_server(0));
    let rec = Arc::new(Recorder::default());
    let fast = Arc::new(FastLog::default());
    server.add_dispatcher_tail(fast.clone());
    server.add_dispatcher_tail(rec.clone());
    let addr = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let client = messenger(&config(&[]), EntityType::Client, -1);
    client.set_default_policy(Policy::lossy_client(0));
    let con = client.connect_to(EntityType::Osd, &EntityAddrVec(vec![addr])).unwrap();
    for i in 0..COUNT {
        con.send_message(test_message(1, i, len_of(1, i))).unwrap();
        if i % FAST_EVERY == 0 {
            let mut front = BytesMut::new();
            front.put_u64_le(i / FAST_EVERY);
            con.send_message(Message::new(MSG_FAST, front.freeze())).unwrap();
        }
    }
    let fast_count = COUNT / FAST_EVERY;
    assert_eq!(rec.tally.wait_for(COUNT), COUNT, "all arrived");
    wait_until("fast messages", || fast.seen.lock().unwrap().len() as u64 >= fast_count);
    // Nothing extra arrives later (exactly once).
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rec.tally.count(), COUNT);
    rec.tally.assert_in_order("server");
    let seen = fast.seen.lock().unwrap().clone();
    assert_eq!(seen.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (0..fast_count).collect::<Vec<_>>());
    // Delayed or not, fast dispatch still runs on the connection's worker.
    assert!(seen.iter().all(|(_, t)| t.starts_with("msgr-worker-")), "{seen:?}");
    // Binomial(550, 0.5): no delay at all has probability 2^-550.
    let delayed = server.injected_delays();
    assert!((1..=COUNT + fast_count).contains(&delayed), "{delayed} delays injected");
    assert_eq!(client.injected_delays(), 0, "the client's settings are off");
    wait_until("throttle bytes returned", || server.throttle().current() == 0);
    assert_eq!(con.state(), ConnState::Open);
    drop((client, server));
}

#[test]
fn shutdown_drops_messages_held_by_injected_delays_without_waiting() {
    const COUNT: u64 = 20;
    let server_cfg = config(&[
        ("ms_inject_delay_type", "client"),
        ("ms_inject_delay_max", "3600"),
        ("ms_inject_delay_probability", "1"),
    ]);
    let server = messenger(&server_cfg, EntityType::Osd, 1);
    server.set_default_policy(Policy::stateless_server(0));
    let rec = Arc::new(Recorder::default());
    server.add_dispatcher_tail(rec.clone());
    let addr = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let client = messenger(&config(&[]), EntityType::Client, -1);
    client.set_default_policy(Policy::lossy_client(0));
    let con = client.connect_to(EntityType::Osd, &EntityAddrVec(vec![addr])).unwrap();
    for i in 0..COUNT {
        con.send_message(test_message(2, i, 1000)).unwrap();
    }
    wait_until("every message held", || server.injected_delays() == COUNT);
    assert!(server.throttle().current() > 0, "held messages count against the throttle");
    let start = Instant::now();
    server.shutdown();
    server.wait();
    // Only a guard against hanging on the hour-long delays.
    assert!(start.elapsed() < WAIT, "shutdown took {:?}", start.elapsed());
    assert_eq!(rec.tally.count(), 0, "held messages are dropped, not delivered");
    assert_eq!(server.throttle().current(), 0, "their throttle bytes were returned");
    drop((client, server));
}

/// True where a zeroed allocation of 4 GiB costs address space only: glibc's calloc
/// maps fresh pages for it and the kernel commits none until they are touched, which
/// nothing here does. False where strict overcommit or a small machine could refuse it
/// (the failed allocation would abort the test process).
fn can_map_4_gib() -> bool {
    if !cfg!(all(target_os = "linux", target_pointer_width = "64")) {
        return false;
    }
    let strict = std::fs::read_to_string("/proc/sys/vm/overcommit_memory").map_or(true, |s| s.trim() == "2");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    !strict && kib("MemTotal:") + kib("SwapTotal:") >= 8 << 20
}

#[test]
fn oversized_message_is_refused_with_a_typed_error_and_nothing_is_sent() {
    let cfg = config(&[]);
    let (server, client, con) = pair(&cfg);
    let rec = Arc::new(Recorder::default());
    server.add_dispatcher_tail(rec.clone());
    wait_until("connected", || con.is_connected());
    if can_map_4_gib() {
        // One byte over what a le32 segment length can say.
        let data = Bytes::from(vec![0u8; MAX_SEGMENT_LEN + 1]);
        let err = con.send_message(Message::new(MSG_TEST, Bytes::new()).with_data(data)).unwrap_err();
        assert_eq!(err, SendError::TooLarge { segment: "data", len: 1 << 32, max: u64::from(u32::MAX) });
    } else {
        eprintln!("*** SKIPPED the 4 GiB message: this machine might refuse to map it ***");
    }
    // The connection carries on, and the refused message never reached the wire.
    con.send_message(test_message(7, 0, 100)).unwrap();
    assert_eq!(rec.tally.wait_for(1), 1);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rec.tally.count(), 1);
    rec.tally.assert_in_order("server");
    assert_eq!(client.perf().get(Counter::SendMessages), 1);
    assert_eq!(con.state(), ConnState::Open);
    assert_eq!(rec.resets.load(Ordering::SeqCst), 0);
    drop((client, server));
}

/// Verifies and counts messages after holding the dispatch thread on the first one
/// until the test opens the gate.
struct GatedTally {
    open: Mutex<bool>,
    cv: Condvar,
    tally: Tally,
}

impl Dispatcher for GatedTally {
    fn ms_dispatch(&self, con: &ConnectionRef, m: &Message) -> bool {
        if m.msg_type == MSG_GATE {
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.cv.wait(open).unwrap();
            }
        } else {
            self.tally.record(con, m);
        }
        true
    }
}

/// A backlog deeper than one read: once a read fills its buffer the socket is read
/// straight into the session's stream buffer (no copy through the worker's scratch),
/// and every message still arrives whole and in order.
#[test]
fn a_deep_backlog_is_read_without_a_copy_and_arrives_intact() {
    const N: u64 = 20_000;
    // The dispatch thread is held on the first message, so the 1 MiB throttle stops
    // the worker's reads and the client's writes pile up in the socket: reads after
    // the gate opens find more than a buffer's worth waiting.
    let cfg = config(&[("ms_dispatch_throttle_bytes", "1M")]);
    let (server, client, con) = pair(&cfg);
    let sd = Arc::new(GatedTally { open: Mutex::new(false), cv: Condvar::new(), tally: Tally::default() });
    server.add_dispatcher_tail(sd.clone());
    con.send_message(Message::new(MSG_GATE, Bytes::new())).unwrap();
    // 0..8 KiB payloads: small frames share reads (frames from 32 KiB would not).
    for i in 0..N {
        con.send_message(test_message(7, i, len_of(7, i))).unwrap();
    }
    // Until the client has written what the socket takes: its held bytes stop falling.
    let mut held = con.queued_bytes();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = con.queued_bytes();
        if now == held {
            break;
        }
        held = now;
    }
    *sd.open.lock().unwrap() = true;
    sd.cv.notify_all();
    assert_eq!(sd.tally.wait_for(N), N, "server received");
    sd.tally.assert_in_order("server");
    let (read, copied) = (server.perf().get(Counter::RecvBytes), server.perf().get(Counter::RecvCopiedBytes));
    let reads = server.perf().get(Counter::ReadCalls);
    println!("{read} bytes read in {reads} reads, {copied} copied ({:.2} per byte)", copied as f64 / read as f64);
    assert!(read > N as i64 * 4000, "{read} bytes read");
    // Through the scratch buffer alone, every byte would be copied. The socket held
    // megabytes when the gate opened: at least 2 MiB of them must have been read in
    // place.
    assert!(read - copied >= 2 << 20, "{copied} of {read} received bytes copied: the backlog was not read in place");
    drop((client, server));
}

/// Asks for the next burst once it has received a whole one.
struct BurstServer {
    tally: Tally,
    per_burst: u64,
}

impl Dispatcher for BurstServer {
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        m.msg_type == MSG_TEST
    }
    fn ms_fast_dispatch(&self, con: &ConnectionRef, m: Message) {
        self.tally.record(con, &m);
        if self.tally.count() % self.per_burst == 0 {
            let _ = con.send_message(Message::new(MSG_FAST, Bytes::new()));
        }
    }
}

/// A busy connection is read in place after a wake-up too: bursts of about 100 KiB,
/// each sent in one write once the server has received the one before, so that the
/// server's worker drains the socket and sleeps between them. A burst is less than
/// one read's buffer, so no read fills it; before, every burst's first read went
/// through the worker's scratch buffer and was copied (all the bytes here), now only
/// the first burst's is.
#[test]
fn bursts_on_a_busy_connection_are_read_in_place_after_each_wake_up() {
    const BURSTS: usize = 30;
    let (read, copied, _) = run_bursts(BURSTS, 24);
    // The first burst (1/30 of the bytes) is copied, and a burst the kernel hands over
    // in pieces too small to mark the connection busy may be; most are not.
    assert!(copied * 4 < read, "{copied} of {read} received bytes copied: bursts were read through the scratch buffer");
}

/// So is a shallow one: bursts of three 4 KiB messages (12 KiB, two messages' worth
/// marks a connection busy). Before, bursts under 64 KiB were all read through the
/// scratch buffer and copied.
#[test]
fn bursts_of_three_messages_are_read_in_place_after_the_first() {
    let (read, copied, _) = run_bursts(40, 3);
    assert!(copied * 4 < read, "{copied} of {read} received bytes copied: bursts were read through the scratch buffer");
}

/// And one message at a time (depth 1): after the first, each is read straight into
/// the small buffer the one before was copied into (and is free again by then), one
/// read per message. Before, every one went through the scratch buffer and was copied.
#[test]
fn single_messages_are_read_in_place_after_the_first() {
    const N: usize = 200;
    let (read, copied, reads) = run_bursts(N, 1);
    assert!(
        copied * 4 < read,
        "{copied} of {read} received bytes copied: messages were read through the scratch buffer"
    );
    // Each read took its message whole and told that it took all there was: no read
    // more per message than through the scratch buffer (the handshake's few aside).
    assert!(reads <= N as i64 + 10, "{reads} reads for {N} messages");
}

/// Sends `bursts` bursts of `per_burst` 4 KiB messages, each once the server has
/// received the one before, and returns the bytes the server read and copied of them,
/// and its read calls.
fn run_bursts(bursts: usize, per_burst: usize) -> (i64, i64, i64) {
    const LEN: usize = 4096;
    let (server, client, con) = pair(&config(&[]));
    let sd = Arc::new(BurstServer { tally: Tally::default(), per_burst: per_burst as u64 });
    server.add_dispatcher_tail(sd.clone());
    let cd = Arc::new(BurstSender { ask: MSG_FAST, next: AtomicUsize::new(1), bursts, per_burst, len: LEN });
    client.add_dispatcher_tail(cd);
    for i in 0..per_burst {
        con.send_message(test_message(5, i as u64, LEN)).unwrap();
    }
    let all = (bursts * per_burst) as u64;
    assert_eq!(sd.tally.wait_for(all), all, "server received");
    sd.tally.assert_in_order("server");
    let (read, copied) = (server.perf().get(Counter::RecvBytes), server.perf().get(Counter::RecvCopiedBytes));
    let reads = server.perf().get(Counter::ReadCalls);
    println!("{read} bytes read in {reads} reads, {copied} copied ({:.2} per byte)", copied as f64 / read as f64);
    assert!(read >= all as i64 * LEN as i64, "{read} bytes read");
    drop((client, server));
    (read, copied, reads)
}

/// Replies to each request at once, and asks for the next burst once it has a whole
/// one; records, for each request as it is handed over, the server's read and write
/// calls so far.
struct ReplyProbe {
    tally: Tally,
    per_burst: u64,
    server: PerfSource,
    seen: Mutex<Vec<(i64, i64)>>,
}

impl Dispatcher for ReplyProbe {
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        m.msg_type == MSG_TEST
    }
    fn ms_fast_dispatch(&self, con: &ConnectionRef, m: Message) {
        let dump = self.server.dump().unwrap();
        let (_, me) = dump.as_object().unwrap().iter().find(|(k, _)| k.starts_with("msgr.")).unwrap();
        let get = |c: Counter| me[c.name()].as_i64().unwrap();
        self.seen.lock().unwrap().push((get(Counter::ReadCalls), get(Counter::WriteCalls)));
        self.tally.record(con, &m);
        let _ = con.send_message(Message::new(MSG_REPLY, Bytes::new()));
        if self.tally.count() % self.per_burst == 0 {
            let _ = con.send_message(Message::new(MSG_FAST, Bytes::new()));
        }
    }
}

const MSG_REPLY: u16 = 0x7004;

/// Takes the replies of [`ReplyProbe`] and drops them.
struct Replies(AtomicUsize);

impl Dispatcher for Replies {
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        m.msg_type == MSG_REPLY
    }
    fn ms_fast_dispatch(&self, _con: &ConnectionRef, _m: Message) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A read that drains the socket has its first replies written after 8 KiB of
/// requests (two of 4 KiB here), before the rest of the read is handled, and the next
/// ones only 32 messages later: the peer, which sent all it had, starts on them
/// instead of waiting for the whole read's. Bursts of 8 requests of 4 KiB, each sent
/// in one write once the one before was received: less than a busy connection's
/// read, so each read takes all there is.
#[test]
fn a_drained_read_writes_its_first_replies_before_handling_the_rest() {
    const BURSTS: usize = 20;
    const PER_BURST: usize = 8;
    const LEN: usize = 4096;
    let (server, client, con) = pair(&config(&[]));
    let sd = Arc::new(ReplyProbe {
        tally: Tally::default(),
        per_burst: PER_BURST as u64,
        server: server.perf_source(),
        seen: Mutex::default(),
    });
    server.add_dispatcher_tail(sd.clone());
    let cd = Arc::new(BurstSender {
        ask: MSG_FAST,
        next: AtomicUsize::new(1),
        bursts: BURSTS,
        per_burst: PER_BURST,
        len: LEN,
    });
    client.add_dispatcher_tail(cd);
    let replies = Arc::new(Replies(AtomicUsize::new(0)));
    client.add_dispatcher_tail(replies.clone());
    for i in 0..PER_BURST {
        con.send_message(test_message(5, i as u64, LEN)).unwrap();
    }
    let all = (BURSTS * PER_BURST) as u64;
    assert_eq!(sd.tally.wait_for(all), all, "server received");
    sd.tally.assert_in_order("server");
    wait_until("every reply", || replies.0.load(Ordering::SeqCst) == BURSTS * PER_BURST);
    let seen = std::mem::take(&mut *sd.seen.lock().unwrap());
    // The requests each read handed over, with the write calls made before each.
    let mut reads: Vec<Vec<i64>> = Vec::new();
    for (i, &(r, w)) in seen.iter().enumerate() {
        if i == 0 || seen[i - 1].0 != r {
            reads.push(Vec::new());
        }
        reads.last_mut().unwrap().push(w);
    }
    let checked: Vec<&Vec<i64>> = reads.iter().filter(|w| w.len() >= 3).collect();
    println!("{} reads handed over requests, {} of them 3 or more", reads.len(), checked.len());
    assert!(!checked.is_empty(), "no read brought 3 requests: {reads:?}");
    for w in checked {
        assert_eq!(w[1], w[0], "a write between the first two requests of a read: {w:?}");
        assert!(w[2] > w[0], "the first replies were not written after 8 KiB of requests: {w:?}");
        assert!(w[2..].iter().all(|&x| x == w[2]), "a write less than 32 requests after the first: {w:?}");
    }
    drop((client, server));
}

/// Large messages sent one at a time arrive intact and in order while their reader
/// waits for the rest of each: while a frame is half read, the socket asks the kernel
/// to report it readable only once what the frame lacks is there (SO_RCVLOWAT; the
/// option itself is tested in stack-posix). A wrong wait (more than the peer sends)
/// would hang here. Each message is 2 MiB: read into a buffer of its own (up to 4 MiB).
#[test]
fn large_messages_one_at_a_time_arrive_while_the_reader_waits_for_their_rest() {
    const N: u64 = 16;
    const LEN: usize = 2 << 20;
    let (server, client, con) = pair(&config(&[]));
    let sd = Arc::new(Server { tally: Tally::default(), per_conn: 0, accepted: AtomicUsize::new(0) });
    server.add_dispatcher_tail(sd.clone());
    // One at a time: each message's pieces come as the client's kernel sends them.
    for i in 0..N {
        con.send_message(test_message(9, i, LEN + i as usize * 4099)).unwrap();
        assert_eq!(sd.tally.wait_for(i + 1), i + 1, "server received message {i}");
    }
    sd.tally.assert_in_order("server");
    let reads = server.perf().get(Counter::ReadCalls) as f64 / N as f64;
    println!("{reads:.1} reads per message of about {LEN} bytes");
    drop((client, server));
}

/// A read that stops before the socket is drained must leave the socket reported
/// readable for what is queued behind it. While a large frame is half read, the reader
/// asks the kernel to wake it only once the frame's rest is there (SO_RCVLOWAT). Here
/// the read that completes the frame stops early, with a small message queued behind
/// it in the socket: were the wait for the large frame's rest still set, that message
/// would never be reported (the peer sends nothing more), and its reply never sent.
///
/// The client is the crate's own session driven over a raw socket, so the test decides
/// which bytes arrive together. The large message (of `large_type`, `large_len` bytes of
/// data, tid 0) is sent in three writes: its first 32 KiB, read on their own; its rest
/// up to its last KiB; then that KiB together with the small message (tid 1). Returns
/// what `Gate` saw dispatched, once it opened.
fn small_message_behind_a_large_one(opts: &[(&str, &str)], large_type: u16, large_len: usize) -> Vec<(u16, u64)> {
    const FIRST: usize = 32 << 10;
    let server = messenger(&config(opts), EntityType::Osd, 1);
    server.set_default_policy(Policy::stateless_server(0));
    let gate = Gate::new(large_type != MSG_GATE);
    server.add_dispatcher_tail(gate.clone());
    let me = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let name = EntityName { ty: EntityType::Client, num: 5 };
    let mut c = DrivenClient::connect(me.addr.expect("bound address"), me.clone(), name);
    c.handshake();
    c.s.send_message(Message::new(large_type, Bytes::new()).with_data(Bytes::from(vec![7u8; large_len])));
    let large = c.take_bytes();
    c.s.send_message(Message::new(MSG_TEST, Bytes::new()).with_tid(1));
    let small = c.take_bytes();
    let recv = || server.perf().get(Counter::RecvBytes) as usize;
    let before = recv();
    c.sock.write_all(&large[..FIRST]).unwrap();
    wait_until("the large frame's head to be read", || recv() >= before + FIRST);
    let tail = large.len() - 1024;
    c.sock.write_all(&large[FIRST..tail]).unwrap();
    c.sock.write_all(&[&large[tail..], &small[..]].concat()).unwrap();
    if large_type == MSG_GATE {
        wait_until("the large message to reach the dispatcher", || *gate.entered.lock().unwrap());
        // The throttle stays full until the dispatcher lets go of the large message.
        std::thread::sleep(Duration::from_millis(50));
        *gate.open.lock().unwrap() = true;
        gate.cv.notify_all();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gate.order.lock().unwrap().iter().any(|&(_, tid)| tid == 1) {
        assert!(
            Instant::now() < deadline,
            "the small message queued behind the large one was never read ({} bytes read, of {})",
            recv() - before,
            large.len() + small.len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(c);
    let got = gate.order.lock().unwrap().clone();
    drop(server);
    got
}

/// ... when the read stopped because the large message filled the dispatch throttle
/// (256 KiB held against 64 KiB) and reading resumes once the dispatcher lets it go.
#[test]
fn a_read_stopped_by_the_throttle_resumes_for_the_small_message_behind_a_large_one() {
    let got = small_message_behind_a_large_one(&[("ms_dispatch_throttle_bytes", "64K")], MSG_GATE, 256 << 10);
    assert_eq!(got, vec![(127, 1)], "the small message, once");
}

/// ... when the read stopped because it had taken its budget (1 MiB per wake-up, so one
/// connection cannot starve the worker's others): the rest of a 2 MiB message came in
/// one read.
#[test]
fn a_read_stopped_by_its_budget_resumes_for_the_small_message_behind_a_large_one() {
    let got = small_message_behind_a_large_one(&[], MSG_TEST, 2 << 20);
    assert_eq!(got, vec![(127, 0), (127, 1)], "the large message, then the small one, once each");
}

/// A busy connection whose bursts arrive in two pieces, most of each and then its last
/// few bytes on their own (the kernel delivered 4 KiB × 512 bursts to the bench server
/// so, 134,451 bytes and then 13), is still read in place: the wake-up for those few
/// bytes does not end the busy spell, so the next burst's first read does not go
/// through the worker's scratch buffer. Before, every burst after such a tail was
/// copied whole.
///
/// The client is the crate's own session driven over a raw socket, so that the test
/// decides which bytes arrive together: it writes each piece once the server has read
/// the one before.
#[test]
fn a_burst_after_the_last_bytes_of_the_one_before_alone_is_read_in_place() {
    const BURSTS: usize = 12;
    const PER_BURST: u64 = 32;
    const TAIL: usize = 13;
    let server = messenger(&config(&[]), EntityType::Osd, 1);
    server.set_default_policy(Policy::stateless_server(0));
    let sd = Arc::new(Server { tally: Tally::default(), per_conn: 0, accepted: AtomicUsize::new(0) });
    server.add_dispatcher_tail(sd.clone());
    let me = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let name = EntityName { ty: EntityType::Client, num: 6 };
    let mut c = DrivenClient::connect(me.addr.expect("bound address"), me.clone(), name);
    c.handshake();
    let recv = || server.perf().get(Counter::RecvBytes) as usize;
    let copied = || server.perf().get(Counter::RecvCopiedBytes) as usize;
    let (mut sent, mut first_copied) = (0, 0);
    for b in 0..BURSTS {
        for i in 0..PER_BURST {
            c.s.send_message(test_message(8, b as u64 * PER_BURST + i, 4096));
        }
        let burst = c.take_bytes();
        let before = recv();
        let head = burst.len() - TAIL;
        c.sock.write_all(&burst[..head]).unwrap();
        wait_until("a burst's head to be read", || recv() >= before + head);
        c.sock.write_all(&burst[head..]).unwrap();
        wait_until("a burst's tail to be read", || recv() >= before + burst.len());
        sent += burst.len();
        // The first two bursts find no read buffer of the connection's own free (the
        // first is read while it is not busy yet): they may be copied.
        if b == 1 {
            first_copied = copied();
        }
    }
    let all = BURSTS as u64 * PER_BURST;
    assert_eq!(sd.tally.wait_for(all), all, "server received");
    sd.tally.assert_in_order("server");
    let later = copied() - first_copied;
    println!("{sent} bytes sent; the first two bursts copied {first_copied}, the {} after them {later}", BURSTS - 2);
    // Copied whole, the ten later bursts would be 1.3 MB; in place, none of them is (a
    // frame's few bytes at most).
    assert!(
        later < sent / BURSTS / 4,
        "{later} bytes of the later bursts copied: they went through the scratch buffer"
    );
    drop(c);
    drop(server);
}
