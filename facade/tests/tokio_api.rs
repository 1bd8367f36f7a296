//! The async API (`msgr::tokio`) over real TCP on 127.0.0.1: a server and a client
//! messenger in one process, on the posix stack.
#![cfg(feature = "tokio")]

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_core::Stream;
use msgr::config::ConfigBuilder;
use msgr::message::Message;
use msgr::messenger::{ConnEvent, ConnectionRef, Policy};
use msgr::proto::{EntityAddrVec, EntityName, EntityType};
use msgr::tokio::{AsyncMessenger, MessageStream, RequestError};

/// Test traffic's message type.
const MSG_TEST: u16 = 0x7001;
/// Replies' message type.
const MSG_REPLY: u16 = 0x7002;
/// How long a test waits for what should happen (generous: the machine may be busy).
const WAIT: Duration = Duration::from_secs(60);

fn messenger(ty: EntityType, num: i64, policy: Policy) -> AsyncMessenger {
    let cfg = ConfigBuilder::new("osd.0").build().expect("config");
    let m = msgr::new_messenger(&cfg, EntityName::new(ty, num)).expect("messenger");
    m.set_default_policy(policy);
    AsyncMessenger::new(m)
}

/// A bound server and its address.
async fn server() -> (Arc<AsyncMessenger>, EntityAddrVec) {
    let s = messenger(EntityType::Osd, 0, Policy::stateless_server(0));
    let addr = s.bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
    (Arc::new(s), EntityAddrVec(vec![addr]))
}

/// A client and its connection to `addrs`.
fn client(addrs: &EntityAddrVec) -> (Arc<AsyncMessenger>, ConnectionRef) {
    let c = messenger(EntityType::Client, -1, Policy::lossy_client(0));
    let con = c.connect_to(EntityType::Osd, addrs).expect("connect_to");
    (Arc::new(c), con)
}

fn numbered(i: u64) -> Message {
    Message::new(MSG_TEST, i.to_le_bytes().to_vec().into())
}

fn number(m: &Message) -> u64 {
    u64::from_le_bytes(m.front[..8].try_into().expect("8-byte front"))
}

/// The next item of `s` through its `Stream` impl, within [`WAIT`].
async fn next_item(s: &mut MessageStream) -> Option<(ConnectionRef, Message)> {
    let next = std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx));
    tokio::time::timeout(WAIT, next).await.expect("stream stalled")
}

/// Answers every message with one of type MSG_REPLY carrying its tid and front.
fn answer_all(s: &AsyncMessenger) -> tokio::task::JoinHandle<()> {
    let mut incoming = s.incoming().expect("incoming stream");
    tokio::spawn(async move {
        while let Some((con, m)) = incoming.next_message().await {
            let _ = con.send_message(Message::new(MSG_REPLY, m.front.clone()).with_tid(m.tid));
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_delivers_10000_messages_in_order_both_ways() {
    const N: u64 = 10_000;
    let (s, addrs) = server().await;
    // The server echoes, reading its stream through `next_message`.
    let mut server_in = s.incoming().expect("incoming stream");
    let echo = tokio::spawn(async move {
        let mut next = 0;
        while next < N {
            let (con, m) = tokio::time::timeout(WAIT, server_in.next_message())
                .await
                .expect("server stream stalled")
                .expect("server stream ended");
            assert_eq!((m.msg_type, number(&m)), (MSG_TEST, next), "server received out of order");
            con.send_message(m).expect("echo");
            next += 1;
        }
    });
    let (c, con) = client(&addrs);
    let mut client_in = c.incoming().expect("incoming stream");
    assert!(c.incoming().is_none(), "there is one incoming stream");
    for i in 0..N {
        con.send_message(numbered(i)).expect("send");
    }
    // The client reads the echoes through the `Stream` impl: all of them, in order.
    for i in 0..N {
        let (from, m) = next_item(&mut client_in).await.expect("client stream ended");
        assert_eq!(from.id(), con.id());
        assert_eq!(number(&m), i, "client received out of order");
    }
    echo.await.expect("echo task");
    c.shutdown().await.expect("client shutdown");
    // After shutdown the stream ends.
    assert!(next_item(&mut client_in).await.is_none());
    s.shutdown().await.expect("server shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_gets_its_reply() {
    let (s, addrs) = server().await;
    let answering = answer_all(&s);
    let (c, con) = client(&addrs);
    // Concurrent requests: each gets the reply to its own message.
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        let (c, con) = (Arc::clone(&c), Arc::clone(&con));
        tasks.push(tokio::spawn(async move { (i, c.request(&con, numbered(i), WAIT).await) }));
    }
    for t in tasks {
        let (i, reply) = t.await.expect("request task");
        let reply = reply.expect("reply");
        assert_eq!((reply.msg_type, number(&reply)), (MSG_REPLY, i));
        assert_ne!(reply.tid, 0);
    }
    assert_eq!(c.pending_requests(), 0);
    // Replies went to their requests, not to the incoming stream; other traffic does.
    con.send_message(Message::new(MSG_REPLY, 7u64.to_le_bytes().to_vec().into())).expect("send");
    let (_, m) = tokio::time::timeout(WAIT, c.next_message()).await.expect("stalled").expect("ended");
    assert_eq!(number(&m), 7, "only the reply to the plain message is in the stream");
    c.shutdown().await.expect("client shutdown");
    s.shutdown().await.expect("server shutdown");
    answering.await.expect("answering task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_to_a_silent_server_times_out() {
    // The server reads its requests and never answers.
    let (s, addrs) = server().await;
    let mut incoming = s.incoming().expect("incoming stream");
    let (c, con) = client(&addrs);
    let deadline = Duration::from_millis(200);
    let start = Instant::now();
    let r = c.request(&con, numbered(1), deadline).await;
    let took = start.elapsed();
    assert!(matches!(r, Err(RequestError::Timeout)), "{r:?}");
    assert!(took >= deadline, "gave up after {took:?}");
    assert!(took < WAIT, "took {took:?}");
    assert_eq!(c.pending_requests(), 0);
    // The request did reach the server.
    let (_, m) = tokio::time::timeout(WAIT, incoming.next_message()).await.expect("stalled").expect("ended");
    assert_eq!(number(&m), 1);
    c.shutdown().await.expect("client shutdown");
    s.shutdown().await.expect("server shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_request_leaves_no_pending_entry() {
    let (s, addrs) = server().await;
    let _incoming = s.incoming().expect("incoming stream");
    let (c, con) = client(&addrs);
    let task = {
        let (c, con) = (Arc::clone(&c), Arc::clone(&con));
        tokio::spawn(async move { c.request(&con, numbered(1), WAIT).await })
    };
    let start = Instant::now();
    while c.pending_requests() == 0 {
        assert!(start.elapsed() < WAIT, "the request never became pending");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task.abort();
    assert!(task.await.expect_err("aborted").is_cancelled());
    assert_eq!(c.pending_requests(), 0);
    c.shutdown().await.expect("client shutdown");
    s.shutdown().await.expect("server shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_fails_when_its_connection_resets() {
    let (s, addrs) = server().await;
    let mut incoming = s.incoming().expect("incoming stream");
    let (c, con) = client(&addrs);
    let task = {
        let (c, con) = (Arc::clone(&c), Arc::clone(&con));
        tokio::spawn(async move { c.request(&con, numbered(1), WAIT).await })
    };
    // Once the server has the request, it goes away without answering.
    tokio::time::timeout(WAIT, incoming.next_message()).await.expect("stalled").expect("ended");
    s.shutdown().await.expect("server shutdown");
    let r = task.await.expect("request task");
    assert!(matches!(r, Err(RequestError::ConnectionReset)), "{r:?}");
    assert_eq!(c.pending_requests(), 0);
    c.shutdown().await.expect("client shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_after_shutdown_fail_to_send() {
    let (s, addrs) = server().await;
    let (c, con) = client(&addrs);
    c.shutdown().await.expect("client shutdown");
    let r = c.request(&con, numbered(1), WAIT).await;
    assert!(matches!(r, Err(RequestError::Send(_))), "{r:?}");
    assert_eq!(c.pending_requests(), 0);
    s.shutdown().await.expect("server shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_to_a_closed_port_is_refused() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("probe").local_addr().expect("port").port();
    let addrs: EntityAddrVec = format!("v2:127.0.0.1:{port}/0").parse().expect("addrs");
    let (c, con) = client(&addrs);
    let r = c.request(&con, numbered(1), WAIT).await;
    // The dial normally fails while the request waits (Refused); should it fail before the
    // request is even queued, the send fails on the closed connection instead.
    assert!(matches!(r, Err(RequestError::Refused | RequestError::Send(_))), "{r:?}");
    assert_eq!(c.pending_requests(), 0);
    c.shutdown().await.expect("client shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_events_are_reported() {
    let (s, addrs) = server().await;
    let (c, con) = client(&addrs);
    let next = |m: Arc<AsyncMessenger>| async move {
        tokio::time::timeout(WAIT, m.next_event()).await.expect("no event").expect("events ended")
    };
    let ev = next(Arc::clone(&c)).await;
    assert_eq!((ev.kind, ev.con.id()), (ConnEvent::Connect, con.id()));
    let ev = next(Arc::clone(&s)).await;
    assert_eq!(ev.kind, ConnEvent::Accept);
    // The server goes away: the client's connection resets.
    s.shutdown().await.expect("server shutdown");
    let ev = next(Arc::clone(&c)).await;
    assert_eq!((ev.kind, ev.con.id()), (ConnEvent::Reset, con.id()));
    assert_eq!(c.dropped_events(), 0);
    c.shutdown().await.expect("client shutdown");
    let mut events = c.events().expect("event stream");
    assert!(events.next_event().await.is_none(), "the event stream ends after shutdown");
}
