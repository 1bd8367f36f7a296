//! Send-side flow of the async API over real TCP on 127.0.0.1 (posix stack): a bounded
//! `send` that waits while the peer stops reading, and `send_acked` whose deliveries
//! resolve only once the peer has the message, across reconnects of a lossless session.
#![cfg(feature = "tokio")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use msgr::config::ConfigBuilder;
use msgr::message::Message;
use msgr::messenger::perf::Counter;
use msgr::messenger::{ConnectionRef, Delivered, Policy};
use msgr::proto::{EntityAddrVec, EntityName, EntityType};
use msgr::tokio::{AsyncMessenger, MessageStream};

const MSG_TEST: u16 = 0x7001;
/// How long a test waits for what should happen (generous: the machine may be busy).
const WAIT: Duration = Duration::from_secs(60);
const KIB: usize = 1024;

fn messenger(ty: EntityType, num: i64, policy: Policy, opts: &[(&str, &str)]) -> AsyncMessenger {
    let mut b = ConfigBuilder::new("osd.0");
    for (k, v) in opts {
        b = b.set(k, v).expect("option");
    }
    let m = msgr::new_messenger(&b.build().expect("config"), EntityName::new(ty, num)).expect("messenger");
    m.set_default_policy(policy);
    AsyncMessenger::new(m)
}

/// Message `i`: its number in the first 8 bytes of a `size`-byte front.
fn numbered(i: u64, size: usize) -> Message {
    let mut front = vec![0u8; size.max(8)];
    front[..8].copy_from_slice(&i.to_le_bytes());
    Message::new(MSG_TEST, front.into())
}

fn number(m: &Message) -> u64 {
    u64::from_le_bytes(m.front[..8].try_into().expect("8-byte front"))
}

/// Reads `n` messages from `s`, checking they are numbered 0.. in order.
async fn read_in_order(s: &mut MessageStream, n: u64) {
    for i in 0..n {
        let (_, m) = tokio::time::timeout(WAIT, s.next_message()).await.expect("stream stalled").expect("stream ended");
        assert_eq!(number(&m), i, "out of order or duplicated");
    }
}

/// Samples `f` every 20 ms until it has not changed for `quiet`, within [`WAIT`];
/// returns its last value and the largest of `g` seen meanwhile.
async fn settle(f: impl Fn() -> u64, g: impl Fn() -> u64, quiet: Duration) -> (u64, u64) {
    let start = Instant::now();
    let (mut last, mut since, mut max_g) = (f(), Instant::now(), g());
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        max_g = max_g.max(g());
        let now = f();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= quiet {
            return (last, max_g);
        }
        assert!(start.elapsed() < WAIT, "never settled");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_waits_for_room_while_the_peer_stops_reading() {
    const N: u64 = 1000;
    const SIZE: usize = 64 * KIB;
    const LIMIT: u64 = 1024 * 1024;
    // The server's application does not read yet: its stream holds at most the
    // dispatch throttle's worth, then its readers pause and TCP fills up.
    let s = messenger(EntityType::Osd, 0, Policy::stateless_server(0), &[("ms_dispatch_throttle_bytes", "256K")]);
    let addr = s.bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
    let mut server_in = s.incoming().expect("incoming");
    let c = Arc::new(messenger(EntityType::Client, -1, Policy::lossy_client(0), &[("ms_send_queue_max_bytes", "1M")]));
    let con = c.connect_to(EntityType::Osd, &EntityAddrVec(vec![addr])).expect("connect_to");
    assert_eq!(con.send_queue_limit(), LIMIT);
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (c, con, sent) = (Arc::clone(&c), Arc::clone(&con), Arc::clone(&sent));
        tokio::spawn(async move {
            for i in 0..N {
                c.send(&con, numbered(i, SIZE)).await.expect("send");
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let (stalled_at, max_held) =
        settle(|| sent.load(Ordering::SeqCst), || con.queued_bytes(), Duration::from_secs(1)).await;
    eprintln!("sender stopped at {stalled_at}/{N}; the connection held at most {max_held} bytes");
    assert!(stalled_at < N, "the sender never waited: {N} messages of {SIZE} bytes sent to a stalled peer");
    assert!(max_held <= LIMIT + SIZE as u64, "held {max_held} bytes, over the bound {LIMIT} + one message");
    let server_held = s.messenger().throttle().current();
    assert!(server_held <= 256 * 1024 + SIZE as u64, "the stalled stream holds {server_held} bytes");
    // A send given up while it waits for room (its future dropped) sends nothing.
    let given_up = tokio::time::timeout(Duration::from_millis(100), c.send(&con, numbered(u64::MAX, SIZE))).await;
    assert!(given_up.is_err(), "a send to a stalled peer found room");
    // The application catches up: everything arrives, in order, and the sender ends.
    read_in_order(&mut server_in, N).await;
    tokio::time::timeout(WAIT, sender).await.expect("sender stuck").expect("sender task");
    let extra = tokio::time::timeout(Duration::from_millis(300), server_in.next_message()).await;
    assert!(extra.is_err(), "the cancelled send's message arrived: {:?}", extra.map(|o| o.map(|(_, m)| number(&m))));
    assert_eq!(s.messenger().throttle().current(), 0, "the stream returned its throttle bytes");
    c.shutdown().await.expect("client shutdown");
    s.shutdown().await.expect("server shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_acked_resolves_only_once_the_peer_has_the_message() {
    const N: u64 = 200;
    const SIZE: usize = 64 * KIB;
    let s = messenger(EntityType::Osd, 0, Policy::lossless_peer(0), &[("ms_dispatch_throttle_bytes", "256K")]);
    let addr = s.bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
    let mut server_in = s.incoming().expect("incoming");
    let c = messenger(EntityType::Osd, 1, Policy::lossless_peer(0), &[("ms_send_queue_max_bytes", "0")]);
    let con = c.connect_to(EntityType::Osd, &EntityAddrVec(vec![addr])).expect("connect_to");
    let mut deliveries = Vec::new();
    for i in 0..N {
        deliveries.push(c.send_acked(&con, numbered(i, SIZE)).await.expect("send"));
    }
    // The server reads until its stream holds the throttle's worth, and acknowledges
    // what it read: nothing more.
    let received = || s.messenger().perf().get(Counter::RecvMessages) as u64;
    let acked = || deliveries.iter().filter(|d| d.try_outcome().is_some()).count() as u64;
    let (read, _) = settle(received, || 0, Duration::from_secs(1)).await;
    let (resolved, _) = settle(acked, || 0, Duration::from_millis(500)).await;
    eprintln!("stalled server read {read}/{N}; {resolved} deliveries resolved");
    assert!(read < N, "the server never stalled");
    assert!(resolved <= read, "{resolved} acknowledged but the peer read only {read}");
    assert!(resolved > 0, "what the server read was never acknowledged");
    assert!(con.queued_bytes() >= (N - resolved) * SIZE as u64, "unacknowledged messages are held");
    // The application reads: every delivery resolves as acknowledged, in order.
    let reader = tokio::spawn(async move {
        read_in_order(&mut server_in, N).await;
        server_in
    });
    for (i, d) in deliveries.into_iter().enumerate() {
        let outcome = tokio::time::timeout(WAIT, d).await.expect("delivery stuck");
        assert_eq!(outcome, Ok(Delivered::Acked), "message {i}");
        assert!(received() > i as u64, "message {i} acknowledged before the peer read it");
    }
    let _server_in = reader.await.expect("reader");
    assert_eq!(con.queued_bytes(), 0);
    c.shutdown().await.expect("client shutdown");
    s.shutdown().await.expect("server shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_acked_survives_reconnects_of_a_lossless_session() {
    const N: u64 = 3000;
    // About one socket operation in 20 fails: reads of up to 256 KiB make few enough
    // operations that one in 50 sometimes gave fewer than 3 failures in the whole run.
    let faults = [("ms_inject_socket_failures", "20"), ("ms_initial_backoff", "0.01"), ("ms_max_backoff", "0.1")];
    let before = msgr::stack::inject::injected_failures();
    let s = messenger(EntityType::Osd, 0, Policy::lossless_peer(0), &faults);
    let addr = s.bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
    let mut server_in = s.incoming().expect("incoming");
    let reader = tokio::spawn(async move { read_in_order(&mut server_in, N).await });
    let c = messenger(EntityType::Osd, 1, Policy::lossless_peer(0), &faults);
    let con: ConnectionRef = c.connect_to(EntityType::Osd, &EntityAddrVec(vec![addr])).expect("connect_to");
    let mut deliveries = Vec::new();
    for i in 0..N {
        deliveries.push(c.send_acked(&con, numbered(i, 64 + (i as usize * 97) % 3000)).await.expect("send"));
    }
    for (i, d) in deliveries.into_iter().enumerate() {
        let outcome = tokio::time::timeout(WAIT, d).await.expect("delivery stuck");
        assert_eq!(outcome, Ok(Delivered::Acked), "message {i}");
    }
    tokio::time::timeout(WAIT, reader).await.expect("server stuck").expect("reader");
    let injected = msgr::stack::inject::injected_failures() - before;
    let reconnects = c.messenger().perf().get(Counter::Reconnects) + s.messenger().perf().get(Counter::Reconnects);
    eprintln!("{injected} injected failures, {reconnects} reconnects");
    assert!(injected >= 3 && reconnects >= 2, "{injected} faults, {reconnects} reconnects: the test proved nothing");
    assert_eq!(con.queued_bytes(), 0);
    c.shutdown().await.expect("client shutdown");
    s.shutdown().await.expect("server shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_senders_and_deliveries_fail_when_the_connection_closes() {
    // A closed port: a lossy connection is refused and closes.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
    let addr = probe.local_addr().expect("addr");
    drop(probe);
    let c = messenger(EntityType::Client, -1, Policy::lossy_client(0), &[("ms_send_queue_max_bytes", "4K")]);
    let addrs: EntityAddrVec = format!("v2:{addr}/0").parse().expect("addrvec");
    let con = c.connect_to(EntityType::Osd, &addrs).expect("connect_to");
    let first = c.send_acked(&con, numbered(0, 4 * KIB)).await;
    // Either it was queued before the refusal and its delivery fails, or the connection
    // was closed already.
    if let Ok(d) = first {
        let outcome = tokio::time::timeout(WAIT, d).await.expect("delivery stuck");
        assert!(outcome.is_err(), "{outcome:?}");
    }
    let second = tokio::time::timeout(WAIT, c.send(&con, numbered(1, 4 * KIB))).await.expect("sender stuck");
    assert!(second.is_err(), "a send on a closed connection must fail, not wait");
    c.shutdown().await.expect("client shutdown");
}
