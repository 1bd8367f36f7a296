//! The worker's timers on real threads: KEEPALIVE2 every `ms_keepalive_interval`, a
//! silent peer dropped after `ms_connection_idle_timeout`, and the lossless session
//! carried on over a new transport.
//!
//! The simulator (`tests/sim`) checks the same contract on virtual time with its own
//! pump; this test is what checks the messenger's pump (`messenger/io.rs`): that its
//! event-loop timers follow the session's deadlines as they move, which the simulator
//! does not run. It waits for events with a generous bound, never a fixed time.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use msgr_core::config::ConfigBuilder;
use msgr_core::message::Message;
use msgr_core::messenger::{ConnState, ConnectionRef, Dispatcher, Messenger, Policy, Stack};
use msgr_core::proto::{EntityAddrVec, EntityName, EntityType};
use msgr_core::stack::mem::{FaultPlan, MemNetwork, MemStack};

const MSG_TEST: u16 = 0x7002;
const PATIENCE: Duration = Duration::from_secs(30);

fn message(i: u64) -> Message {
    let mut front = BytesMut::with_capacity(8);
    front.put_u64_le(i);
    Message::new(MSG_TEST, front.freeze()).with_data(Bytes::from(vec![i as u8; 100]))
}

/// The indexes of the test messages received, in order.
#[derive(Default)]
struct Sink(Mutex<Vec<u64>>);

impl Dispatcher for Sink {
    fn ms_dispatch(&self, _con: &ConnectionRef, m: &Message) -> bool {
        if m.msg_type == MSG_TEST && m.front.len() == 8 {
            let i = u64::from_le_bytes(m.front[..8].try_into().unwrap_or_default());
            self.0.lock().unwrap().push(i);
        }
        true
    }
}

fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

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
    let addr = b.bind(SocketAddr::from(([10, 0, 0, 2], 6800))).expect("bind");
    let con = a.connect_to(EntityType::Osd, &EntityAddrVec(vec![addr])).expect("connect");
    // Acks to keepalives we never asked for: the interval timer sends them, and keeps
    // sending them while messages move the idle deadline.
    let mut stamps = HashSet::new();
    let first = Instant::now();
    let mut sent = 0;
    while stamps.len() < 3 {
        assert!(first.elapsed() < PATIENCE, "no keepalive acks without sending any");
        if let Some(s) = con.last_keepalive_ack() {
            stamps.insert((s.sec, s.nsec));
        }
        con.send_message(message(sent)).expect("send");
        sent += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    // Then the server's bytes stop arriving: the client must notice and reconnect.
    until("a silent peer to be detected", || net.connections_opened() >= 2);
    let why = con.last_error().map(|e| e.to_string()).unwrap_or_default();
    assert!(why.contains("no traffic"), "dead transport reported as {why:?}");
    for i in sent..sent + 50 {
        con.send_message(message(i)).expect("send");
    }
    let total = sent + 50;
    until("the session to carry on after the dead transport", || sb.0.lock().unwrap().len() as u64 >= total);
    assert_eq!(*sb.0.lock().unwrap(), (0..total).collect::<Vec<u64>>());
    assert_ne!(con.state(), ConnState::Closed);
    net.clear_fault_hook();
    for m in [&a, &b] {
        m.shutdown();
    }
    for m in [&a, &b] {
        m.wait();
    }
}
