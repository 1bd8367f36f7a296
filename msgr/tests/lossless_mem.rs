//! Property tests of session semantics over the in-memory stack: whatever the network
//! does — connections cut at random byte offsets (mid-banner, mid-handshake, mid-frame,
//! between a message and its ack), sends split into random pieces, both sides dialling
//! each other at once, the server restarting — a lossless session delivers every message
//! exactly once and in order in both directions, and a lossy one behaves as Ceph's does:
//! the connection resets, nothing is resent, and what arrived is an in-order prefix.
//!
//! The in-memory stack only replaces the kernel's TCP; the messengers, workers, event
//! loops and the protocol are the real ones.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use msgr_core::config::{Config, ConfigBuilder};
use msgr_core::message::Message;
use msgr_core::messenger::Stack;
use msgr_core::messenger::{ConnState, ConnectionRef, Dispatcher, Messenger, Policy};
use msgr_core::proto::{EntityAddrVec, EntityName, EntityType};
use msgr_core::stack::mem::{FaultPlan, MemNetwork, MemStack};
use proptest::prelude::*;

const MSG_TEST: u16 = 0x7002;
const PATIENCE: Duration = Duration::from_secs(30);

fn message(stream: u64, i: u64, len: usize) -> Message {
    let data: Vec<u8> = (0..len).map(|k| (k as u64 ^ stream ^ i.wrapping_mul(31)) as u8).collect();
    let mut front = BytesMut::with_capacity(20);
    front.put_u64_le(stream);
    front.put_u64_le(i);
    front.put_u32_le(crc32c(&data));
    Message::new(MSG_TEST, front.freeze()).with_data(Bytes::from(data))
}

// A tiny checksum so the test needs no extra crate: corruption must not go unnoticed.
fn crc32c(data: &[u8]) -> u32 {
    msgr_core::proto::ceph_crc32c(0, data)
}

/// What one messenger's dispatcher saw.
#[derive(Default)]
struct Sink {
    got: Mutex<Vec<(u64, u64)>>,
    corrupt: AtomicUsize,
    resets: AtomicUsize,
    remote_resets: AtomicUsize,
    accepted: Mutex<Vec<ConnectionRef>>,
    streamed: Mutex<HashSet<u64>>,
    // Sent on the first accept of each connection (plain mode's server side).
    reply: Mutex<Vec<usize>>,
}

impl Dispatcher for Sink {
    fn ms_dispatch(&self, _con: &ConnectionRef, m: &Message) -> bool {
        let f = &m.front[..];
        if m.msg_type != MSG_TEST || f.len() < 20 {
            self.corrupt.fetch_add(1, Ordering::SeqCst);
            return true;
        }
        let stream = u64::from_le_bytes(f[0..8].try_into().unwrap_or_default());
        let i = u64::from_le_bytes(f[8..16].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(f[16..20].try_into().unwrap_or_default());
        if crc != crc32c(&m.data) {
            self.corrupt.fetch_add(1, Ordering::SeqCst);
        }
        self.got.lock().unwrap().push((stream, i));
        true
    }
    fn ms_handle_accept(&self, con: &ConnectionRef) {
        self.accepted.lock().unwrap().push(Arc::clone(con));
        if self.streamed.lock().unwrap().insert(con.id()) {
            for (i, len) in self.reply.lock().unwrap().iter().enumerate() {
                let _ = con.send_message(message(2, i as u64, *len));
            }
        }
    }
    fn ms_handle_reset(&self, _con: &ConnectionRef) -> bool {
        self.resets.fetch_add(1, Ordering::SeqCst);
        true
    }
    fn ms_handle_remote_reset(&self, _con: &ConnectionRef) {
        self.remote_resets.fetch_add(1, Ordering::SeqCst);
    }
}

impl Sink {
    fn of(&self, stream: u64) -> Vec<u64> {
        self.got.lock().unwrap().iter().filter(|(s, _)| *s == stream).map(|(_, i)| *i).collect()
    }
    fn count(&self, stream: u64) -> usize {
        self.of(stream).len()
    }
}

fn config() -> Config {
    ConfigBuilder::new("osd.0")
        .set("ms_initial_backoff", "0.001")
        .and_then(|b| b.set("ms_max_backoff", "0.02"))
        .and_then(|b| b.set("ms_connection_ready_timeout", "5"))
        .and_then(|b| b.build())
        .expect("test config")
}

fn messenger(net: &Arc<MemNetwork>, num: i64, policy: Policy, sink: &Arc<Sink>) -> Messenger {
    // Two workers each, so sessions really move between worker threads.
    let stack = Stack::start(Arc::new(MemStack::new(Arc::clone(net))), 2).expect("mem stack");
    let m = Messenger::new(stack, EntityName { ty: EntityType::Osd, num }, &config()).expect("messenger");
    m.set_default_policy(policy);
    m.add_dispatcher_tail(Arc::clone(sink) as Arc<dyn Dispatcher>);
    m
}

fn wait(what: &str, f: impl Fn() -> bool) -> Result<(), TestCaseError> {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        if Instant::now() > deadline {
            return Err(TestCaseError::fail(format!("timed out waiting for {what}")));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn exactly_once_in_order(got: &[u64], n: usize, who: &str) -> Result<(), TestCaseError> {
    let want: Vec<u64> = (0..n as u64).collect();
    prop_assert_eq!(got, &want[..], "{} did not get every message exactly once in order", who);
    Ok(())
}

/// One planned cut: connection number `conn` (in order of creation on the network)
/// breaks once `offset` bytes went through in one direction; `split` chops sends.
#[derive(Clone, Debug)]
struct Cut {
    conn: u64,
    to_server: bool,
    offset: u64,
    split: Option<u64>,
}

fn cut() -> impl Strategy<Value = Cut> {
    // Half the cuts land in the first 400 bytes: banner, HELLO, AUTH, IDENT, RECONNECT.
    let offset = prop_oneof![0u64..400, 0u64..120_000];
    (0u64..6, any::<bool>(), offset, proptest::option::of(1u64..70_000))
        .prop_map(|(conn, to_server, offset, split)| Cut { conn, to_server, offset, split })
}

fn sizes() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(prop_oneof![0usize..200, 200usize..5000, 5000usize..40_000], 1..120)
}

fn install_cuts(net: &Arc<MemNetwork>, cuts: Vec<Cut>) {
    net.set_fault_hook(move |info| {
        let mut plans = (FaultPlan::default(), FaultPlan::default());
        for c in cuts.iter().filter(|c| c.conn == info.index) {
            let p = if c.to_server { &mut plans.0 } else { &mut plans.1 };
            p.cut_at = Some(p.cut_at.map_or(c.offset, |o| o.min(c.offset)));
            if let Some(s) = c.split {
                p.split_at.extend((1..8).map(|k| k * s));
            }
        }
        plans
    });
}

fn stop(ms: &[&Messenger]) {
    for m in ms {
        m.shutdown();
    }
    for m in ms {
        m.wait();
    }
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    /// One side dials, both send.
    Plain,
    /// Both sides dial each other at the same moment, both send.
    Race,
}

fn server_addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 6800))
}

fn lossless_case(mode: Mode, a_to_b: Vec<usize>, b_to_a: Vec<usize>, cuts: Vec<Cut>) -> Result<(), TestCaseError> {
    let net = MemNetwork::new();
    install_cuts(&net, cuts);
    let (sa, sb) = (Arc::new(Sink::default()), Arc::new(Sink::default()));
    let a = messenger(&net, 1, Policy::lossless_peer_reuse(0), &sa);
    let b = messenger(&net, 2, Policy::lossless_peer_reuse(0), &sb);
    let b_addr = b.bind(server_addr(2)).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let result = (|| {
        match mode {
            Mode::Plain => {
                *sb.reply.lock().unwrap() = b_to_a.clone();
                let con = a.connect_to(EntityType::Osd, &EntityAddrVec(vec![b_addr.clone()])).unwrap();
                for (i, len) in a_to_b.iter().enumerate() {
                    con.send_message(message(1, i as u64, *len)).unwrap();
                }
                wait("both directions", || sb.count(1) >= a_to_b.len() && sa.count(2) >= b_to_a.len())?;
            }
            Mode::Race => {
                let a_addr = a.bind(server_addr(1)).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let (ca, cb) = std::thread::scope(|s| {
                    let ha = s.spawn(|| a.connect_to(EntityType::Osd, &EntityAddrVec(vec![b_addr.clone()])).unwrap());
                    let hb = s.spawn(|| b.connect_to(EntityType::Osd, &EntityAddrVec(vec![a_addr.clone()])).unwrap());
                    (ha.join().unwrap(), hb.join().unwrap())
                });
                for (i, len) in a_to_b.iter().enumerate() {
                    ca.send_message(message(1, i as u64, *len)).unwrap();
                }
                for (i, len) in b_to_a.iter().enumerate() {
                    cb.send_message(message(2, i as u64, *len)).unwrap();
                }
                wait("both directions", || sb.count(1) >= a_to_b.len() && sa.count(2) >= b_to_a.len())?;
            }
        }
        // Late duplicates would show up now.
        std::thread::sleep(Duration::from_millis(20));
        exactly_once_in_order(&sb.of(1), a_to_b.len(), "server")?;
        exactly_once_in_order(&sa.of(2), b_to_a.len(), "client")?;
        prop_assert_eq!(sa.corrupt.load(Ordering::SeqCst) + sb.corrupt.load(Ordering::SeqCst), 0);
        Ok(())
    })();
    net.clear_fault_hook();
    stop(&[&a, &b]);
    result
}

fn restart_case(before: Vec<usize>, after: Vec<usize>, cuts: Vec<Cut>) -> Result<(), TestCaseError> {
    let net = MemNetwork::new();
    install_cuts(&net, cuts);
    let (sa, sb, sb2) = (Arc::new(Sink::default()), Arc::new(Sink::default()), Arc::new(Sink::default()));
    let a = messenger(&net, 1, Policy::lossless_peer_reuse(0), &sa);
    let b = messenger(&net, 2, Policy::lossless_peer_reuse(0), &sb);
    let b_addr = b.bind(server_addr(2)).map_err(|e| TestCaseError::fail(e.to_string()))?;
    // Dialled without a nonce, so the restarted server (new nonce) is the same peer.
    let target = msgr_core::proto::EntityAddr { nonce: 0, ..b_addr };
    let con = a.connect_to(EntityType::Osd, &EntityAddrVec(vec![target])).unwrap();
    for (i, len) in before.iter().enumerate() {
        con.send_message(message(1, i as u64, *len)).unwrap();
    }
    let half = before.len().div_ceil(2);
    let r1 = wait("half the messages before the restart", || sb.count(1) >= half);
    stop(&[&b]);
    let b2 = messenger(&net, 2, Policy::lossless_peer_reuse(0), &sb2);
    let result = (|| {
        r1?;
        b2.bind(server_addr(2)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        wait("the remote reset", || sa.remote_resets.load(Ordering::SeqCst) >= 1)?;
        prop_assert!(con.state() != ConnState::Closed, "a lossless connection survives a remote reset");
        for (i, len) in after.iter().enumerate() {
            con.send_message(message(3, i as u64, *len)).unwrap();
        }
        wait("the messages after the restart", || sb2.count(3) >= after.len())?;
        std::thread::sleep(Duration::from_millis(20));
        // The old server got an in-order prefix, each once; the new one everything sent
        // after the reset, each once, in order. Nothing from the old session leaks over.
        let old = sb.of(1);
        let prefix: Vec<u64> = (0..old.len() as u64).collect();
        prop_assert_eq!(&old, &prefix, "old server: not an in-order prefix");
        exactly_once_in_order(&sb2.of(3), after.len(), "restarted server")?;
        prop_assert_eq!(sb2.count(1), 0, "messages of the reset session were resent to the new one");
        prop_assert_eq!(sa.resets.load(Ordering::SeqCst), 0);
        Ok(())
    })();
    net.clear_fault_hook();
    stop(&[&a, &b2]);
    result
}

fn lossy_case(sizes: Vec<usize>, cut: Option<Cut>) -> Result<(), TestCaseError> {
    let net = MemNetwork::new();
    let cut_first = cut.map(|c| Cut { conn: 0, ..c });
    install_cuts(&net, cut_first.clone().into_iter().collect());
    let (sa, sb) = (Arc::new(Sink::default()), Arc::new(Sink::default()));
    let a = messenger(&net, 1, Policy::lossy_client(0), &sa);
    let b = messenger(&net, 2, Policy::stateless_server(0), &sb);
    let b_addr = b.bind(server_addr(2)).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let result = (|| {
        let con = a.connect_to(EntityType::Osd, &EntityAddrVec(vec![b_addr])).unwrap();
        for (i, len) in sizes.iter().enumerate() {
            let _ = con.send_message(message(1, i as u64, *len));
        }
        wait("all messages, or the reset", || sb.count(1) >= sizes.len() || sa.resets.load(Ordering::SeqCst) >= 1)?;
        // Let whatever was in flight settle.
        std::thread::sleep(Duration::from_millis(30));
        let got = sb.of(1);
        let prefix: Vec<u64> = (0..got.len() as u64).collect();
        prop_assert_eq!(&got, &prefix, "lossy delivery must be an in-order prefix, no duplicates");
        if got.len() < sizes.len() {
            // Something was lost: the client must have been told, and never resent.
            wait("the client's reset", || sa.resets.load(Ordering::SeqCst) >= 1)?;
            prop_assert_eq!(con.state(), ConnState::Closed);
            prop_assert!(con.send_message(message(1, 0, 1)).is_err(), "a reset lossy connection takes no more");
            std::thread::sleep(Duration::from_millis(30));
            prop_assert_eq!(sb.of(1).len(), got.len(), "a lossy connection resent after a reset");
        }
        prop_assert_eq!(sb.corrupt.load(Ordering::SeqCst), 0);
        Ok(())
    })();
    net.clear_fault_hook();
    stop(&[&a, &b]);
    result
}

fn cases(default: u32) -> ProptestConfig {
    let n = std::env::var("MSGR_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    ProptestConfig { cases: n, max_shrink_iters: 64, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(cases(24))]

    #[test]
    fn lossless_exactly_once_in_order_under_cuts(
        a_to_b in sizes(), b_to_a in sizes(), cuts in proptest::collection::vec(cut(), 0..5)
    ) {
        lossless_case(Mode::Plain, a_to_b, b_to_a, cuts)?;
    }

    #[test]
    fn lossless_connect_race_exactly_once_in_order(
        a_to_b in sizes(), b_to_a in sizes(), cuts in proptest::collection::vec(cut(), 0..3)
    ) {
        lossless_case(Mode::Race, a_to_b, b_to_a, cuts)?;
    }

    #[test]
    fn lossless_peer_restart_is_a_remote_reset(
        before in sizes(), after in sizes(), cuts in proptest::collection::vec(cut(), 0..3)
    ) {
        restart_case(before, after, cuts)?;
    }

    #[test]
    fn lossy_resets_and_never_resends(sizes in sizes(), cut in proptest::option::of(cut())) {
        lossy_case(sizes, cut)?;
    }
}

/// KEEPALIVE2 goes out on its own every `ms_keepalive_interval`; when the peer falls
/// silent (its bytes stuck behind a 60 s latency spike), the idle timeout declares the
/// transport dead and the lossless session carries on over a new one.
#[test]
fn keepalives_flow_by_themselves_and_a_silent_peer_is_detected() {
    let net = MemNetwork::new();
    // Connection 0: from byte 1500 on, server→client bytes arrive only after 60 s
    // (about 25 keepalive acks after the handshake). Later connections are clean.
    net.set_fault_hook(|info| {
        let mut to_client = FaultPlan::default();
        if info.index == 0 {
            to_client.delay = Some((1500, Duration::from_secs(60)));
        }
        (FaultPlan::default(), to_client)
    });
    let cfg = ConfigBuilder::new("osd.0")
        .set("ms_keepalive_interval", "0.02")
        .and_then(|b| b.set("ms_connection_idle_timeout", "0.5"))
        .and_then(|b| b.set("ms_initial_backoff", "0.001"))
        .and_then(|b| b.build())
        .expect("config");
    let start = |num: i64, sink: &Arc<Sink>| {
        let stack = Stack::start(Arc::new(MemStack::new(Arc::clone(&net))), 2).expect("mem stack");
        let m = Messenger::new(stack, EntityName { ty: EntityType::Osd, num }, &cfg).expect("messenger");
        m.set_default_policy(Policy::lossless_peer(0));
        m.add_dispatcher_tail(Arc::clone(sink) as Arc<dyn Dispatcher>);
        m
    };
    let (sa, sb) = (Arc::new(Sink::default()), Arc::new(Sink::default()));
    let (a, b) = (start(1, &sa), start(2, &sb));
    let addr = b.bind(server_addr(2)).expect("bind");
    let con = a.connect_to(EntityType::Osd, &EntityAddrVec(vec![addr])).expect("connect");
    // Acks to keepalives we never asked for: the interval timer sends them.
    let first = Instant::now();
    let mut stamps = HashSet::new();
    while stamps.len() < 3 {
        assert!(first.elapsed() < PATIENCE, "no keepalive acks without sending any");
        if let Some(s) = con.last_keepalive_ack() {
            stamps.insert((s.sec, s.nsec));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Then the server's bytes stop arriving: the client must notice and reconnect.
    let deadline = Instant::now() + PATIENCE;
    while net.connections_opened() < 2 {
        assert!(Instant::now() < deadline, "a silent peer was never detected");
        std::thread::sleep(Duration::from_millis(5));
    }
    let why = con.last_error().map(|e| e.to_string()).unwrap_or_default();
    assert!(why.contains("no traffic"), "dead transport reported as {why:?}");
    for i in 0..50 {
        con.send_message(message(1, i, 100)).expect("send");
    }
    let deadline = Instant::now() + PATIENCE;
    while sb.count(1) < 50 {
        assert!(Instant::now() < deadline, "session did not carry on after the dead transport");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(sb.of(1), (0..50).collect::<Vec<u64>>());
    assert_ne!(con.state(), ConnState::Closed);
    net.clear_fault_hook();
    stop(&[&a, &b]);
}
