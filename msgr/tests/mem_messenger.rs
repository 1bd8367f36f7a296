//! Two messengers over the in-memory stack (`async+mem`) with hostile byte delivery.
//!
//! The in-memory stack is a test tool for the protocol: its fault plans deliver bytes
//! one at a time, cut writes short at exact stream offsets, hold bytes back, and break
//! connections at exact offsets. These tests show that the messenger and the msgr2.1
//! handshake survive all of that deterministically: every message is delivered exactly
//! once, in order, intact; a broken connection is reported once, with a typed error;
//! nothing leaks.
//!
//! Each test builds its own `MemNetwork` and `NetworkStack` (never the process-wide
//! stack registry), so fault plans, connection indices and byte counters belong to that
//! test alone. Timeouts only guard against hangs: nothing asserts an upper time bound.
//!
//! Test messages carry their stream id, index, data length and a crc32c of the data in
//! the front segment, and a data segment whose bytes are a function of (stream, index),
//! so the receiver can check each one on its own.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use msgr_core::config::{Config, ConfigBuilder};
use msgr_core::message::Message;
use msgr_core::messenger::Stack;
use msgr_core::messenger::{ConnError, ConnState, ConnectionRef, Dispatcher, Messenger, MsgrError, Policy};
use msgr_core::proto::session::SessionError;
use msgr_core::proto::{EntityAddr, EntityAddrVec, EntityName, EntityType};
use msgr_core::stack::mem::{FaultPlan, MemConnInfo, MemNetwork, MemStack};

/// Message type of test messages (outside Ceph's range of real types).
const MSG_TEST: u16 = 0x7a01;
/// Stream of messages the client sends.
const C2S: u64 = 1;
/// Stream of messages the server sends back on every connection it accepts.
const S2C: u64 = 2;
/// Only a guard against hangs.
const PATIENCE: Duration = Duration::from_secs(30);
/// Data length of the fixed-size messages whose frame size is measured.
const FIXED_LEN: usize = 1000;

type LenFn = fn(u64) -> usize;

fn varied_len(i: u64) -> usize {
    // 0, 97, 194, … wrapping at 600: includes an empty data segment.
    ((i * 97) % 600) as usize
}

fn fixed_len(_: u64) -> usize {
    FIXED_LEN
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ------------------------------------------------------------------ panics in library threads

static LIBRARY_PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts panics on the messenger's own threads (workers, dispatch, mem delay timers):
/// such a panic would otherwise only show up as a hang or a missing event.
fn count_library_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = std::thread::current().name().unwrap_or_default().to_owned();
            if name.starts_with("msgr-") || name.starts_with("ms_dispatch") {
                LIBRARY_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

// ------------------------------------------------------------------ test messages

fn payload(stream: u64, i: u64, len: usize) -> Bytes {
    let seed = stream.wrapping_mul(0x9e37_79b9).wrapping_add(i.wrapping_mul(31));
    Bytes::from((0..len as u64).map(|k| (k.wrapping_mul(131) ^ seed ^ (k >> 8)) as u8).collect::<Vec<u8>>())
}

fn test_message(stream: u64, i: u64, len: usize) -> Message {
    let data = payload(stream, i, len);
    let mut front = BytesMut::with_capacity(28);
    front.put_u64_le(stream);
    front.put_u64_le(i);
    front.put_u64_le(len as u64);
    front.put_u32_le(crc32c::crc32c(&data));
    Message::new(MSG_TEST, front.freeze()).with_tid(i + 1).with_data(data)
}

/// Checks one received test message on its own; returns (stream, index).
fn check_message(m: &Message) -> Result<(u64, u64), String> {
    if m.msg_type != MSG_TEST {
        return Err(format!("unexpected message type {:#x}", m.msg_type));
    }
    let f = &m.front[..];
    if f.len() != 28 {
        return Err(format!("front is {} bytes, want 28", f.len()));
    }
    let word = |at: usize| u64::from_le_bytes(f[at..at + 8].try_into().unwrap());
    let (stream, i, len) = (word(0), word(8), word(16) as usize);
    let crc = u32::from_le_bytes(f[24..28].try_into().unwrap());
    if m.data.len() != len {
        return Err(format!("stream {stream} #{i}: data is {} bytes, want {len}", m.data.len()));
    }
    if crc32c::crc32c(&m.data) != crc {
        return Err(format!("stream {stream} #{i}: data crc mismatch"));
    }
    if m.data != payload(stream, i, len) {
        return Err(format!("stream {stream} #{i}: data differs"));
    }
    if m.tid != i + 1 {
        return Err(format!("stream {stream} #{i}: tid {} want {}", m.tid, i + 1));
    }
    Ok((stream, i))
}

// ------------------------------------------------------------------ recording dispatcher

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ev {
    Connect,
    Accept,
    Reset,
    RemoteReset,
    Refused,
}

#[derive(Default)]
struct Seen {
    /// (connection id, event) in delivery order.
    events: Vec<(u64, Ev)>,
    /// (connection id, stream) → message indices in delivery order.
    msgs: HashMap<(u64, u64), Vec<u64>>,
    /// Anything malformed.
    bad: Vec<String>,
    /// Every connection an event or message was seen on.
    conns: HashMap<u64, ConnectionRef>,
}

impl Seen {
    fn events_of(&self, id: u64) -> Vec<Ev> {
        self.events.iter().filter(|(c, _)| *c == id).map(|(_, e)| *e).collect()
    }

    fn has(&self, id: u64, ev: Ev) -> bool {
        self.events.iter().any(|&(c, e)| c == id && e == ev)
    }

    /// Connections that got `ev`, in the order of their first such event.
    fn ids(&self, ev: Ev) -> Vec<u64> {
        let mut out = Vec::new();
        for &(c, e) in &self.events {
            if e == ev && !out.contains(&c) {
                out.push(c);
            }
        }
        out
    }

    fn got(&self, id: u64, stream: u64) -> &[u64] {
        self.msgs.get(&(id, stream)).map_or(&[], Vec::as_slice)
    }

    /// The connection messages of `stream` arrived on (streams are per connection).
    fn conn_of_stream(&self, stream: u64) -> Option<u64> {
        self.msgs.keys().find(|(_, s)| *s == stream).map(|(c, _)| *c)
    }

    fn message_count(&self) -> usize {
        self.msgs.values().map(Vec::len).sum()
    }

    fn summary(&self) -> String {
        let mut counts: Vec<_> = self.msgs.iter().map(|(k, v)| (*k, v.len())).collect();
        counts.sort_unstable();
        format!("events {:?}; message counts {:?}; bad {:?}", self.events, counts, self.bad)
    }
}

/// Records everything a messenger dispatches. As a server it streams `reply` messages
/// of stream [`S2C`] back on every connection it accepts.
struct Recorder {
    /// Take test messages through fast dispatch (on the worker) instead of the queue.
    fast: bool,
    reply: u64,
    reply_len: LenFn,
    seen: Mutex<Seen>,
    cond: Condvar,
}

impl Recorder {
    fn new(fast: bool, reply: u64, reply_len: LenFn) -> Arc<Recorder> {
        Arc::new(Recorder { fast, reply, reply_len, seen: Mutex::new(Seen::default()), cond: Condvar::new() })
    }

    fn lock(&self) -> MutexGuard<'_, Seen> {
        lock(&self.seen)
    }

    fn note_event(&self, con: &ConnectionRef, ev: Ev) {
        let mut s = self.lock();
        s.conns.entry(con.id()).or_insert_with(|| Arc::clone(con));
        s.events.push((con.id(), ev));
        drop(s);
        self.cond.notify_all();
    }

    fn note_message(&self, con: &ConnectionRef, m: &Message) {
        let mut s = self.lock();
        s.conns.entry(con.id()).or_insert_with(|| Arc::clone(con));
        match check_message(m) {
            Ok((stream, i)) => s.msgs.entry((con.id(), stream)).or_default().push(i),
            Err(e) => s.bad.push(format!("conn {}: {e}", con.id())),
        }
        drop(s);
        self.cond.notify_all();
    }

    /// Waits until `pred` holds and returns the state, locked.
    fn wait(&self, what: &str, mut pred: impl FnMut(&Seen) -> bool) -> MutexGuard<'_, Seen> {
        let deadline = Instant::now() + PATIENCE;
        let mut g = self.lock();
        while !pred(&g) {
            let now = Instant::now();
            assert!(now < deadline, "gave up waiting for {what}: {}", g.summary());
            let step = (deadline - now).min(Duration::from_millis(100));
            g = self.cond.wait_timeout(g, step).unwrap_or_else(PoisonError::into_inner).0;
        }
        g
    }
}

impl Dispatcher for Recorder {
    fn ms_dispatch(&self, con: &ConnectionRef, m: &Message) -> bool {
        self.note_message(con, m);
        true
    }
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        self.fast && m.msg_type == MSG_TEST
    }
    fn ms_fast_dispatch(&self, con: &ConnectionRef, m: Message) {
        self.note_message(con, &m);
    }
    fn ms_handle_connect(&self, con: &ConnectionRef) {
        self.note_event(con, Ev::Connect);
    }
    fn ms_handle_accept(&self, con: &ConnectionRef) {
        self.note_event(con, Ev::Accept);
        for i in 0..self.reply {
            // The connection may already be gone (a cut right after READY): then
            // there is nobody to reply to, and the checks look at what arrived.
            if con.send_message(test_message(S2C, i, (self.reply_len)(i))).is_err() {
                break;
            }
        }
    }
    fn ms_handle_reset(&self, con: &ConnectionRef) -> bool {
        self.note_event(con, Ev::Reset);
        true
    }
    fn ms_handle_remote_reset(&self, con: &ConnectionRef) {
        self.note_event(con, Ev::RemoteReset);
    }
    fn ms_handle_refused(&self, con: &ConnectionRef) -> bool {
        self.note_event(con, Ev::Refused);
        true
    }
}

/// Asserts that `got` is exactly 0..n: every message once, in order, nothing else.
fn assert_exactly(got: &[u64], n: u64, what: &str) {
    if got.iter().copied().eq(0..n) {
        return;
    }
    let first_bad = got.iter().enumerate().find(|&(k, &i)| i != k as u64);
    panic!(
        "{what}: got {} messages, want exactly 0..{n} in order; first deviation {first_bad:?} (position, index); \
         head {:?}",
        got.len(),
        &got[..got.len().min(20)]
    );
}

/// Asserts that `got` is 0..k for some k ≤ n: a prefix, in order, no duplicates.
fn assert_prefix(got: &[u64], n: u64, what: &str) {
    assert!(got.len() as u64 <= n, "{what}: {} messages, more than the {n} sent", got.len());
    assert_exactly(got, got.len() as u64, what);
}

fn is_reset_error(e: &Option<ConnError>) -> bool {
    // A client reset before one byte of the server's banner says so (the usual cause is
    // a peer on another ms_type).
    matches!(
        e,
        Some(ConnError::Io { kind: io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe, .. })
            | Some(ConnError::ClosedBeforeBanner)
    )
}

// ------------------------------------------------------------------ rig

fn config(entity: &str, ready_timeout: &str) -> Config {
    ConfigBuilder::new(entity)
        .set("ms_connection_ready_timeout", ready_timeout)
        .and_then(|b| b.build())
        .expect("test configuration")
}

struct Opts {
    /// lossless_peer on both sides instead of lossy client / stateless server.
    lossless: bool,
    /// Fast dispatch on both sides.
    fast: bool,
    /// Messages the server sends back on every accepted connection.
    reply: u64,
    reply_len: LenFn,
    /// Addresses the server binds.
    binds: usize,
    /// The client's `ms_connection_ready_timeout`.
    client_ready_timeout: &'static str,
}

impl Default for Opts {
    fn default() -> Self {
        Opts { lossless: false, fast: false, reply: 0, reply_len: varied_len, binds: 1, client_ready_timeout: "60" }
    }
}

/// A server messenger (osd.0) and a client messenger on one private stack and network.
struct Rig {
    // Declared first so that on an early panic they drop before the stack.
    server: Messenger,
    client: Messenger,
    srv: Arc<Recorder>,
    cli: Arc<Recorder>,
    addrs: Vec<EntityAddrVec>,
    net: Arc<MemNetwork>,
    stack: Option<Arc<Stack>>,
}

impl Rig {
    fn new(o: Opts) -> Rig {
        count_library_panics();
        let net = MemNetwork::new();
        let stack = Stack::start(Arc::new(MemStack::new(Arc::clone(&net))), 2).expect("start the mem stack");
        let server =
            Messenger::new(Arc::clone(&stack), EntityName { ty: EntityType::Osd, num: 0 }, &config("osd.0", "60"))
                .expect("server messenger");
        let client = Messenger::new(
            Arc::clone(&stack),
            EntityName { ty: EntityType::Client, num: -1 },
            &config("client.admin", o.client_ready_timeout),
        )
        .expect("client messenger");
        if o.lossless {
            server.set_default_policy(Policy::lossless_peer(0));
            client.set_default_policy(Policy::lossless_peer(0));
        } else {
            server.set_default_policy(Policy::stateless_server(0));
            client.set_default_policy(Policy::lossy_client(0));
        }
        let srv = Recorder::new(o.fast, o.reply, o.reply_len);
        let cli = Recorder::new(o.fast, 0, o.reply_len);
        server.add_dispatcher_tail(srv.clone());
        client.add_dispatcher_tail(cli.clone());
        let addrs = (0..o.binds.max(1))
            .map(|_| EntityAddrVec::single(server.bind("127.0.0.1:0".parse().unwrap()).expect("bind")))
            .collect();
        Rig { server, client, srv, cli, addrs, net, stack: Some(stack) }
    }

    fn connect(&self, k: usize) -> ConnectionRef {
        self.client.connect_to(EntityType::Osd, &self.addrs[k]).expect("connect_to")
    }

    /// Shuts both messengers down, checks that no socket is left open, stops the stack.
    fn shutdown(&mut self) {
        self.client.shutdown();
        self.server.shutdown();
        self.client.wait();
        self.server.wait();
        assert_eq!(self.client.connection_count(), 0);
        assert_eq!(self.server.connection_count(), 0);
        assert_eq!(self.net.open_connections(), 0, "sockets left open after shutdown");
        drop(self.stack.take());
        assert_eq!(LIBRARY_PANICS.load(Ordering::SeqCst), 0, "a messenger thread panicked");
    }
}

/// Dials address `k`, queues `n` messages of `stream` (sent once the handshake is
/// done), and waits until the server got them all and the client got the server's
/// replies. Returns the client connection and the id of the server's connection.
fn exchange(rig: &Rig, k: usize, stream: u64, n: u64, len: LenFn) -> (ConnectionRef, u64) {
    let c = rig.connect(k);
    for i in 0..n {
        c.send_message(test_message(stream, i, len(i))).expect("queue a message");
    }
    let sid = {
        let g = rig.srv.wait("the client's messages", |s| {
            s.conn_of_stream(stream).is_some_and(|id| s.got(id, stream).len() as u64 >= n)
        });
        g.conn_of_stream(stream).unwrap()
    };
    let reply = rig.srv.reply;
    drop(rig.cli.wait("the server's replies", |s| s.got(c.id(), S2C).len() as u64 >= reply));
    (c, sid)
}

/// Every message of an exchange arrived exactly once and in order, and nothing was
/// malformed. Call after [`Rig::shutdown`], when no more deliveries can happen.
fn assert_exchange(rig: &Rig, c: &ConnectionRef, sid: u64, stream: u64, n: u64, what: &str) {
    let s = rig.srv.lock();
    assert!(s.bad.is_empty(), "{what}: server saw malformed messages: {:?}", s.bad);
    assert_exactly(s.got(sid, stream), n, &format!("{what}: client→server"));
    assert_eq!(s.events_of(sid).iter().filter(|e| **e == Ev::Accept).count(), 1, "{what}: {}", s.summary());
    drop(s);
    let s = rig.cli.lock();
    assert!(s.bad.is_empty(), "{what}: client saw malformed messages: {:?}", s.bad);
    assert_exactly(s.got(c.id(), S2C), rig.srv.reply, &format!("{what}: server→client"));
    assert_eq!(s.events_of(c.id()).iter().filter(|e| **e == Ev::Connect).count(), 1, "{what}: {}", s.summary());
}

/// Both ends of an exchange are open and nothing but the handshake was reported.
fn assert_healthy(rig: &Rig, c: &ConnectionRef, sid: u64, what: &str) {
    assert_eq!(c.state(), ConnState::Open, "{what}: client connection {:?}", c.last_error());
    assert_eq!(rig.cli.lock().events_of(c.id()), vec![Ev::Connect], "{what}");
    assert_eq!(rig.srv.lock().events_of(sid), vec![Ev::Accept], "{what}");
}

// ------------------------------------------------------------------ sizes on the wire

/// Wire sizes measured through the messenger itself, so that faults can be aimed at
/// exact places in the stream.
#[derive(Clone, Copy)]
struct Sizes {
    /// Bytes the client sends from its banner through CLIENT_IDENT.
    client_handshake: u64,
    /// Bytes of one MESSAGE frame carrying a `FIXED_LEN` test message (lossy session).
    fixed_frame: u64,
}

fn sizes() -> &'static Sizes {
    static SIZES: OnceLock<Sizes> = OnceLock::new();
    SIZES.get_or_init(measure_sizes)
}

fn measure_sizes() -> Sizes {
    let mut rig = Rig::new(Opts::default());
    let cut: Arc<Mutex<Option<u64>>> = Arc::new(Mutex::new(None));
    let plan_cut = Arc::clone(&cut);
    rig.net.set_fault_hook(move |_| {
        (FaultPlan { cut_at: *lock(&plan_cut), ..FaultPlan::default() }, FaultPlan::default())
    });

    // A lossy session sends nothing but the MESSAGE frames once READY (no ACK frames,
    // no keepalives), so the byte counter grows by exactly one frame per message.
    let c = rig.connect(0);
    drop(rig.cli.wait("connect", |s| s.has(c.id(), Ev::Connect)));
    drop(rig.srv.wait("accept", |s| !s.ids(Ev::Accept).is_empty()));
    let mut totals = vec![rig.net.bytes_transferred()];
    for i in 0..3u64 {
        c.send_message(test_message(C2S, i, FIXED_LEN)).unwrap();
        drop(
            rig.srv.wait("a measured message", |s| {
                s.conn_of_stream(C2S).is_some_and(|id| s.got(id, C2S).len() as u64 > i)
            }),
        );
        totals.push(rig.net.bytes_transferred());
    }
    let frames: Vec<u64> = totals.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(frames.iter().all(|f| *f == frames[0]), "fixed-size messages framed to different sizes: {frames:?}");
    assert!(frames[0] > FIXED_LEN as u64);
    c.mark_down();

    // The handshake is complete for the server exactly when the whole CLIENT_IDENT got
    // through: bisect over client→server cut offsets for the smallest one it accepts at.
    let accepts_with_cut_at = |at: u64| -> bool {
        *lock(&cut) = Some(at);
        let known: HashSet<u64> = rig.srv.lock().events.iter().map(|(id, _)| *id).collect();
        let c = rig.connect(0);
        let g = rig.srv.wait("the probe's outcome on the server", |s| {
            s.events.iter().any(|(id, e)| !known.contains(id) && matches!(e, Ev::Accept | Ev::Reset))
        });
        let id = g.events.iter().map(|(id, _)| *id).find(|id| !known.contains(id)).unwrap();
        // Accept is queued before the Reset that follows the cut, and both have the same
        // priority: a Reset without an Accept before it means the server never accepted.
        let accepted = g.has(id, Ev::Accept);
        drop(g);
        c.mark_down();
        accepted
    };
    assert!(!accepts_with_cut_at(0));
    let (mut lo, mut hi) = (0u64, 1u64 << 16);
    assert!(accepts_with_cut_at(hi));
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if accepts_with_cut_at(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    rig.shutdown();
    // Banner (26 bytes) plus at least HELLO, AUTH_REQUEST, AUTH_SIGNATURE and CLIENT_IDENT.
    assert!(hi > 26 + 4 * 32, "implausible client handshake length {hi}");
    Sizes { client_handshake: hi, fixed_frame: frames[0] }
}

// ------------------------------------------------------------------ tests

/// Case 1: every write in both directions is dribbled one byte at a time: the handshake
/// completes and 200 messages each way arrive exactly once, in order, intact. Run with
/// lossy and with lossless sessions (the latter interleaves ACK frames).
#[test]
fn dribbled_one_byte_at_a_time_both_ways() {
    for lossless in [false, true] {
        let what = if lossless { "lossless" } else { "lossy" };
        let mut rig = Rig::new(Opts { lossless, reply: 200, ..Opts::default() });
        let dribble = FaultPlan { max_chunk: Some(1), ..FaultPlan::default() };
        rig.net.set_fault_hook(move |_| (dribble.clone(), dribble.clone()));
        let (c, sid) = exchange(&rig, 0, C2S, 200, varied_len);
        assert_healthy(&rig, &c, sid, what);
        assert_eq!(c.is_lossy(), !lossless);
        rig.shutdown();
        assert_exchange(&rig, &c, sid, C2S, 200, what);
        assert_eq!(rig.net.connections_opened(), 1, "{what}: unexpected extra connections");
    }
}

/// Case 2: writes are cut short at chosen offsets covering the banner, HELLO, AUTH, IDENT
/// and the first MESSAGE frames: (a) one connection split at every 7th offset, in both
/// directions; (b) one connection per offset with only that split, in both directions.
#[test]
fn short_writes_at_many_offsets() {
    let hs = sizes().client_handshake;

    // (a) All the splits on one connection.
    let mut rig = Rig::new(Opts { reply: 100, ..Opts::default() });
    let offsets: Vec<u64> = (0..1500).step_by(7).collect();
    assert!(*offsets.last().unwrap() > hs + 600, "splits must reach into the message frames");
    let plan = FaultPlan { split_at: offsets, ..FaultPlan::default() };
    rig.net.set_fault_hook(move |_| (plan.clone(), plan.clone()));
    let (c, sid) = exchange(&rig, 0, C2S, 100, varied_len);
    assert_healthy(&rig, &c, sid, "every 7th offset");
    rig.shutdown();
    assert_exchange(&rig, &c, sid, C2S, 100, "every 7th offset");

    // (b) One split per connection, at every 7th offset of 0..hs+300.
    let mut rig = Rig::new(Opts { reply: 3, ..Opts::default() });
    let offsets: Arc<Vec<u64>> = Arc::new((0..hs + 300).step_by(7).collect());
    let plan_offsets = Arc::clone(&offsets);
    rig.net.set_fault_hook(move |info: &MemConnInfo| {
        let at = plan_offsets[info.index as usize % plan_offsets.len()];
        let plan = FaultPlan { split_at: vec![at], ..FaultPlan::default() };
        (plan.clone(), plan)
    });
    let mut done = Vec::new();
    for (k, at) in offsets.iter().enumerate() {
        let stream = 1000 + k as u64;
        let (c, sid) = exchange(&rig, 0, stream, 3, varied_len);
        let what = format!("split at {at}");
        assert_healthy(&rig, &c, sid, &what);
        c.mark_down();
        done.push((c, sid, stream, what));
    }
    rig.shutdown();
    for (c, sid, stream, what) in &done {
        assert_exchange(&rig, c, *sid, *stream, 3, what);
    }
    assert_eq!(rig.net.connections_opened(), offsets.len() as u64);
}

/// Case 3: bytes held back for 200 ms from offset 30 (inside HELLO), client→server,
/// server→client, and both: the handshake completes (no earlier than the hold allows)
/// and nothing is delivered twice.
#[test]
fn delayed_bytes_mid_handshake() {
    let hold = Duration::from_millis(200);
    let mut rig = Rig::new(Opts { reply: 50, ..Opts::default() });
    let delayed = FaultPlan { delay: Some((30, hold)), ..FaultPlan::default() };
    rig.net.set_fault_hook(move |info| match info.index {
        0 => (delayed.clone(), FaultPlan::default()),
        1 => (FaultPlan::default(), delayed.clone()),
        _ => (delayed.clone(), delayed.clone()),
    });
    let mut done = Vec::new();
    for (k, what) in ["client→server held", "server→client held", "both held"].into_iter().enumerate() {
        let stream = 100 + k as u64;
        let started = Instant::now();
        let (c, sid) = exchange(&rig, 0, stream, 50, varied_len);
        // Neither side can finish without the held HELLO bytes.
        assert!(started.elapsed() >= hold, "{what}: the handshake finished before the held bytes were released");
        assert_healthy(&rig, &c, sid, what);
        c.mark_down();
        done.push((c, sid, stream, what));
    }
    rig.shutdown();
    for (c, sid, stream, what) in &done {
        assert_exchange(&rig, c, *sid, *stream, 50, what);
    }
    assert_eq!(rig.net.connections_opened(), 3);
}

/// One sub-case of case 4: the first connection is cut at `at` in one direction.
fn cut_handshake_case(client_to_server: bool, at: u64) {
    let what = format!("cut {} at {at}", if client_to_server { "client→server" } else { "server→client" });
    let mut rig = Rig::new(Opts { reply: 3, ..Opts::default() });
    let cut = FaultPlan { cut_at: Some(at), ..FaultPlan::default() };
    rig.net.set_fault_hook(move |info| match (info.index, client_to_server) {
        (0, true) => (cut.clone(), FaultPlan::default()),
        (0, false) => (FaultPlan::default(), cut.clone()),
        _ => (FaultPlan::default(), FaultPlan::default()),
    });

    let c = rig.connect(0);
    for i in 0..3 {
        // With a cut at 0 the connection may already have failed.
        let _ = c.send_message(test_message(C2S, i, 100));
    }
    // The mem "TCP" connect always completes (the listener exists), so the failure is a
    // reset of an established socket, never a refusal.
    let s = rig.cli.wait("the client's reset", |s| s.has(c.id(), Ev::Reset));
    assert_eq!(s.events_of(c.id()), vec![Ev::Reset], "{what}: {}", s.summary());
    assert_eq!(s.message_count(), 0, "{what}");
    drop(s);
    assert_eq!(c.state(), ConnState::Closed, "{what}");
    assert!(is_reset_error(&c.last_error()), "{what}: client last_error {:?}", c.last_error());
    assert!(c.send_message(test_message(C2S, 9, 1)).is_err(), "{what}: a closed connection took a message");

    // The server's end fails too, and it never reports the half-done handshake.
    let s = rig.srv.wait("the server's reset", |s| !s.ids(Ev::Reset).is_empty());
    assert!(s.ids(Ev::Accept).is_empty(), "{what}: server accepted a cut handshake: {}", s.summary());
    assert_eq!(s.message_count(), 0, "{what}");
    let sid = s.ids(Ev::Reset)[0];
    let server_err = s.conns[&sid].last_error();
    drop(s);
    assert!(is_reset_error(&server_err), "{what}: server last_error {server_err:?}");
    assert_eq!(rig.client.connection_count(), 0, "{what}");

    // Dialling again makes a new connection, which the hook leaves alone.
    let (c2, sid2) = exchange(&rig, 0, C2S + 10, 3, varied_len);
    assert_ne!(c2.id(), c.id(), "{what}: connect_to returned the closed connection");
    assert_healthy(&rig, &c2, sid2, &what);
    rig.shutdown();
    assert_exchange(&rig, &c2, sid2, C2S + 10, 3, &what);
    assert_eq!(rig.net.connections_opened(), 2, "{what}");
}

/// Case 4: a connection cut during the handshake, at several offsets in either direction:
/// the lossy client gets `ms_handle_reset` (the mem connect itself always succeeds, so
/// never `ms_handle_refused`) with a typed error; the server never reports
/// `ms_handle_accept` for it; a new `connect_to` afterwards succeeds.
#[test]
fn cut_mid_handshake_resets_and_redial_succeeds() {
    let hs = sizes().client_handshake;
    let client_cuts = [0, 10, 26, 60, 100, 200, hs - 1];
    for at in client_cuts {
        assert!(at < hs, "cut offset {at} is not inside the {hs}-byte client handshake");
        cut_handshake_case(true, at);
    }
    // Server→client: only offsets before SERVER_IDENT (the server's last handshake
    // frame, sent after it accepted): banner is 26 bytes, HELLO comes next.
    for at in [0, 10, 26, 60] {
        cut_handshake_case(false, at);
    }
}

/// The refusal case of case 4: with no listener at the address the connect fails
/// before any socket is established, and the client gets `ms_handle_refused`, not a reset.
#[test]
fn connect_without_listener_is_refused() {
    let mut rig = Rig::new(Opts::default());
    let nowhere = EntityAddrVec::single(EntityAddr::msgr2("127.0.0.1:1".parse().unwrap(), 0));
    let c = rig.client.connect_to(EntityType::Osd, &nowhere).expect("connect_to");
    let s = rig.cli.wait("the refusal", |s| s.has(c.id(), Ev::Refused));
    assert_eq!(s.events_of(c.id()), vec![Ev::Refused]);
    drop(s);
    assert!(matches!(c.last_error(), Some(ConnError::Refused(_))), "last_error {:?}", c.last_error());
    assert_eq!(c.state(), ConnState::Closed);
    assert_eq!(rig.net.connections_opened(), 0);
    rig.shutdown();
}

/// One sub-case of case 5. With `replies` the server streams messages back while the
/// client's messages arrive, so its own write may fail first and close the connection
/// before it read everything sent ahead of the cut: then only a prefix is guaranteed.
/// Without, the server never writes after READY and gets exactly the whole frames.
fn cut_mid_message_case(fast: bool, replies: bool) {
    let what = format!(
        "{} dispatch, server {}",
        if fast { "fast" } else { "queued" },
        if replies { "replying" } else { "silent" }
    );
    let Sizes { client_handshake, fixed_frame } = *sizes();
    const SENT: u64 = 30;
    const WHOLE: u64 = 10;
    // Half-way through the frame of message #WHOLE.
    let at = client_handshake + WHOLE * fixed_frame + fixed_frame / 2;
    let reply = if replies { SENT } else { 0 };
    let mut rig = Rig::new(Opts { fast, reply, reply_len: fixed_len, ..Opts::default() });
    let cut = FaultPlan { cut_at: Some(at), ..FaultPlan::default() };
    rig.net.set_fault_hook(move |info| {
        if info.index == 0 {
            (cut.clone(), FaultPlan::default())
        } else {
            (FaultPlan::default(), FaultPlan::default())
        }
    });
    let c = rig.connect(0);
    for i in 0..SENT {
        // The handshake may be over and the cut reached while we are still queueing.
        if c.send_message(test_message(C2S, i, FIXED_LEN)).is_err() {
            assert!(i > WHOLE, "{what}: closed after only {i} messages were queued");
            break;
        }
    }
    let s = rig.cli.wait("the client's reset", |s| s.has(c.id(), Ev::Reset));
    assert_eq!(s.events_of(c.id()), vec![Ev::Connect, Ev::Reset], "{what}: {}", s.summary());
    drop(s);
    assert!(is_reset_error(&c.last_error()), "{what}: client last_error {:?}", c.last_error());
    assert_eq!(c.state(), ConnState::Closed);
    assert!(c.send_message(test_message(C2S, SENT, 1)).is_err(), "{what}: a closed connection took a message");

    let s = rig.srv.wait("the server's reset (and, if silent, the messages before the cut)", |s| {
        s.ids(Ev::Reset).len() == 1
            && (replies || s.conn_of_stream(C2S).is_some_and(|id| s.got(id, C2S).len() as u64 >= WHOLE))
    });
    let sid = s.ids(Ev::Reset)[0];
    assert_eq!(s.events_of(sid), vec![Ev::Accept, Ev::Reset], "{what}: {}", s.summary());
    let server_err = s.conns[&sid].last_error();
    drop(s);
    assert!(is_reset_error(&server_err), "{what}: server last_error {server_err:?}");
    assert_eq!(rig.client.connection_count(), 0);
    assert_eq!(rig.server.connection_count(), 0);
    rig.shutdown();

    // Client→server: nothing from the torn frame or after it; each message once, in order.
    let s = rig.srv.lock();
    assert!(s.bad.is_empty(), "{what}: {:?}", s.bad);
    if replies {
        assert_prefix(s.got(sid, C2S), WHOLE, &format!("{what}: client→server across the cut"));
    } else {
        assert_exactly(s.got(sid, C2S), WHOLE, &format!("{what}: client→server across the cut"));
    }
    drop(s);
    // Server→client broke at a moment that depends on timing: a prefix.
    let s = rig.cli.lock();
    assert!(s.bad.is_empty(), "{what}: {:?}", s.bad);
    assert_prefix(s.got(c.id(), S2C), reply, &format!("{what}: server→client across the cut"));
    drop(s);
    assert_eq!(rig.net.connections_opened(), 1, "{what}: a lossy client must not redial by itself");
}

/// Case 5: a cut after READY, half-way through a MESSAGE frame: both lossy sides get
/// `ms_handle_reset`; the messages delivered are a prefix of those sent, each once and
/// in order, with nothing from the torn frame or after it — exactly the whole frames
/// before the cut when the server had no write of its own to fail on first.
#[test]
fn cut_mid_message_after_ready_keeps_the_prefix() {
    for fast in [false, true] {
        for replies in [false, true] {
            cut_mid_message_case(fast, replies);
        }
    }
}

/// Case 6: `cut_all` with 20 open connections (two client messengers, each dialling the 10
/// addresses of one server): every connection closes and is reported reset once on
/// each side, the connection counts drop to 0, no socket is left.
#[test]
fn cut_all_resets_every_connection() {
    const ADDRS: usize = 10;
    const N: usize = 2 * ADDRS;
    let mut rig = Rig::new(Opts { binds: ADDRS, ..Opts::default() });
    let stack = Arc::clone(rig.stack.as_ref().unwrap());
    let client2 = Messenger::new(stack, EntityName { ty: EntityType::Client, num: -1 }, &config("client.admin", "60"))
        .expect("second client messenger");
    client2.set_default_policy(Policy::lossy_client(0));
    let cli2 = Recorder::new(false, 0, varied_len);
    client2.add_dispatcher_tail(cli2.clone());
    let sides: [(&Messenger, &Arc<Recorder>); 2] = [(&rig.client, &rig.cli), (&client2, &cli2)];

    let mut conns: Vec<Vec<ConnectionRef>> = Vec::new();
    for (m, _) in sides {
        conns.push(rig.addrs.iter().map(|a| m.connect_to(EntityType::Osd, a).expect("connect_to")).collect());
    }
    for (k, c) in conns.iter().flatten().enumerate() {
        c.send_message(test_message(C2S + 100 + k as u64, 0, 64)).unwrap();
    }
    for (_, rec) in sides {
        drop(rec.wait("10 connects", |s| s.ids(Ev::Connect).len() == ADDRS));
    }
    let servers = rig
        .srv
        .wait("20 accepts and their messages", |s| s.ids(Ev::Accept).len() == N && s.message_count() == N)
        .ids(Ev::Accept);
    assert_eq!(rig.client.connection_count(), ADDRS);
    assert_eq!(client2.connection_count(), ADDRS);
    assert_eq!(rig.server.connection_count(), N);
    assert_eq!(rig.net.open_connections(), N);

    rig.net.cut_all();

    for ((m, rec), cs) in sides.iter().zip(&conns) {
        let s = rec.wait("10 client resets", |s| s.ids(Ev::Reset).len() == ADDRS);
        for c in cs {
            assert_eq!(s.events_of(c.id()), vec![Ev::Connect, Ev::Reset], "{}", s.summary());
        }
        drop(s);
        for c in cs {
            assert_eq!(c.state(), ConnState::Closed);
            assert!(is_reset_error(&c.last_error()), "client connection {}: {:?}", c.id(), c.last_error());
        }
        assert_eq!(m.connection_count(), 0);
    }
    let s = rig.srv.wait("20 server resets", |s| s.ids(Ev::Reset).len() == N);
    for id in &servers {
        assert_eq!(s.events_of(*id), vec![Ev::Accept, Ev::Reset], "{}", s.summary());
        let err = s.conns[id].last_error();
        assert!(is_reset_error(&err), "server connection {id}: {err:?}");
    }
    drop(s);
    assert_eq!(rig.server.connection_count(), 0);
    client2.shutdown();
    client2.wait();
    rig.shutdown();
    assert_eq!(rig.net.connections_opened(), N as u64, "nobody redials a lossy connection");
}

/// A messenger bound to as many addresses as an address vector may carry on the wire
/// (`MAX_ADDRVEC_LEN`, 16) refuses another bind and stays reachable.
#[test]
fn more_than_sixteen_bound_addresses_are_refused() {
    let mut rig = Rig::new(Opts { binds: 16, ..Opts::default() });
    // Peers reject an identity with more than 16 addresses, so the 17th bind must fail
    // instead of making the server unreachable.
    let r = rig.server.bind("127.0.0.1:0".parse().unwrap());
    assert!(matches!(r, Err(MsgrError::TooManyAddrs { max: 16 })), "{r:?}");
    let c = rig.connect(0);
    let s = rig.cli.wait("the outcome", |s| !s.events_of(c.id()).is_empty());
    assert_eq!(s.events_of(c.id()), vec![Ev::Connect], "last_error {:?}", c.last_error());
    drop(s);
    rig.shutdown();
}

/// Case 7: the server's bytes are all held back longer than the client's 1 s
/// `ms_connection_ready_timeout`: the client gives up with a typed handshake timeout.
#[test]
fn stalled_handshake_times_out() {
    let mut rig = Rig::new(Opts { client_ready_timeout: "1", ..Opts::default() });
    let stall = FaultPlan { delay: Some((0, Duration::from_secs(5))), ..FaultPlan::default() };
    rig.net.set_fault_hook(move |_| (FaultPlan::default(), stall.clone()));
    let started = Instant::now();
    let c = rig.connect(0);
    c.send_message(test_message(C2S, 0, 10)).unwrap();
    let s = rig.cli.wait("the client's reset", |s| s.has(c.id(), Ev::Reset));
    assert_eq!(s.events_of(c.id()), vec![Ev::Reset], "{}", s.summary());
    drop(s);
    assert!(started.elapsed() >= Duration::from_secs(1), "timed out before ms_connection_ready_timeout");
    assert_eq!(c.state(), ConnState::Closed);
    assert_eq!(
        c.last_error(),
        Some(ConnError::Protocol(SessionError::HandshakeTimeout(Duration::from_secs(1)))),
        "client last_error"
    );
    let s = rig.srv.lock();
    assert!(s.ids(Ev::Accept).is_empty(), "the server accepted a stalled handshake: {}", s.summary());
    assert_eq!(s.message_count(), 0);
    drop(s);
    rig.shutdown();
}
