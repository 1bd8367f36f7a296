//! One posix messenger holds 5,000 concurrent msgr2 sessions opened by another process
//! (`msgr hold`, so the client sockets count against that process's file limit, not
//! this one's): every session is accepted and answers a ping, a client in this process
//! is still served while they are all held, and when the other process lets go every
//! one of them is cleaned up on the server. The server's resident memory per idle
//! session is measured and printed; only a generous bound is asserted, to catch a
//! buffer pinned by every idle session or allocation that grows without limit.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use msgr::message::types::{MPing, TypedMessage};
use msgr::message::{Message, MSG_PING};
use msgr::messenger::{ConnState, ConnectionRef, Dispatcher, Policy};
use msgr::proto::{EntityAddrVec, EntityType};

mod common;
use common::process::{raise_nofile, rss_kib};
use common::traffic::{config, messenger, stop, wait_until, WAIT};

const SESSIONS: usize = 5_000;
/// Several times what an idle session costs (about 5 KiB), yet half of one 64 KiB read
/// chunk: a read buffer kept by every idle session, or anything else that grows per
/// session beyond its own state, fails this.
const MAX_KIB_PER_SESSION: f64 = 32.0;

/// The server's dispatcher: echoes MPing, counts accepted and reset sessions.
#[derive(Default)]
struct Echo {
    accepted: AtomicUsize,
    resets: AtomicUsize,
}

impl Dispatcher for Echo {
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        m.msg_type == MSG_PING
    }
    fn ms_fast_dispatch(&self, con: &ConnectionRef, m: Message) {
        // A send fails only if the client already went away.
        let _ = con.send_message(Message { seq: 0, src: None, ..m });
    }
    fn ms_handle_accept(&self, _con: &ConnectionRef) {
        self.accepted.fetch_add(1, Ordering::SeqCst);
    }
    fn ms_handle_reset(&self, _con: &ConnectionRef) -> bool {
        self.resets.fetch_add(1, Ordering::SeqCst);
        true
    }
}

/// The in-process client's dispatcher: keeps the payloads of the replies it gets.
#[derive(Default)]
struct Pongs {
    got: Mutex<Vec<Bytes>>,
    cond: Condvar,
    resets: AtomicUsize,
}

impl Dispatcher for Pongs {
    fn ms_can_fast_dispatch(&self, m: &Message) -> bool {
        m.msg_type == MSG_PING
    }
    fn ms_fast_dispatch(&self, _con: &ConnectionRef, m: Message) {
        if let Ok(p) = MPing::decode(&m) {
            self.got.lock().unwrap_or_else(|e| e.into_inner()).push(p.payload);
            self.cond.notify_all();
        }
    }
    fn ms_handle_reset(&self, _con: &ConnectionRef) -> bool {
        self.resets.fetch_add(1, Ordering::SeqCst);
        true
    }
}

impl Pongs {
    /// One MPing round trip on `con`, which must stay open.
    fn round_trip(&self, con: &ConnectionRef, label: &str) {
        let payload = Bytes::from(format!("in-process ping {label}"));
        con.send_message(MPing::new(payload.clone()).encode()).expect("send ping");
        let deadline = Instant::now() + WAIT;
        let mut got = self.got.lock().unwrap_or_else(|e| e.into_inner());
        while !got.contains(&payload) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no ping reply {label} within {WAIT:?}");
            got = self.cond.wait_timeout(got, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        drop(got);
        assert_eq!(con.state(), ConnState::Open, "in-process client's connection {label}");
        assert_eq!(self.resets.load(Ordering::SeqCst), 0, "in-process client was reset {label}");
    }
}

/// The `msgr hold` child; killed if the test fails before it is let go.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `msgr hold: ADDR: sessions N opened N replied N failed N` -> (replied, failed).
fn parse_hold_line(line: &str) -> Option<(usize, usize)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |key: &str| words.iter().position(|w| *w == key).and_then(|i| words.get(i + 1)?.parse().ok());
    Some((after("replied")?, after("failed")?))
}

#[test]
fn five_thousand_concurrent_connections_on_one_messenger() {
    // The server holds one socket per session plus its own few; the child raises
    // nothing itself but inherits this limit.
    let limit = raise_nofile();
    if limit < (SESSIONS as u64) + 1_000 {
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: open-file limit {limit} is too low for {SESSIONS} connections ***\n"
        );
        return;
    }
    let t0 = Instant::now();
    let cfg = config(&[]);
    let server = messenger(&cfg, EntityType::Osd, 0);
    server.set_default_policy(Policy::stateless_server(0));
    let echo = Arc::new(Echo::default());
    server.add_dispatcher_tail(echo.clone());
    let addr = server.bind("127.0.0.1:0".parse().unwrap()).expect("bind");

    let client = messenger(&cfg, EntityType::Client, -1);
    client.set_default_policy(Policy::lossy_client(0));
    let pongs = Arc::new(Pongs::default());
    client.add_dispatcher_tail(pongs.clone());
    let con = client.connect_to(EntityType::Osd, &EntityAddrVec(vec![addr.clone()])).expect("connect_to");
    pongs.round_trip(&con, "before the sessions are opened");
    wait_until("the in-process client to be accepted", || echo.accepted.load(Ordering::SeqCst) == 1);
    let baseline = server.connection_count();
    let rss_before = rss_kib();

    let mut holder = Holder(
        Command::new(env!("CARGO_BIN_EXE_msgr"))
            .args(["-c", "/dev/null", "hold", "--connect", &addr.to_string()])
            .args(["--connections", &SESSIONS.to_string(), "--timeout", "60"])
            .env_remove("CEPH_ARGS")
            .env_remove("MSGR_ARGS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn msgr hold"),
    );
    let mut line = String::new();
    let stdout = holder.0.stdout.take().expect("child stdout");
    BufReader::new(stdout).read_line(&mut line).expect("read msgr hold's report");
    let open_secs = t0.elapsed().as_secs_f64();
    let (replied, failed) = parse_hold_line(&line).unwrap_or_else(|| panic!("unexpected msgr hold output: {line:?}"));
    assert_eq!((replied, failed), (SESSIONS, 0), "every session answered its ping: {line}");

    // Accept events go through the dispatch queue, so they may trail the replies.
    let accepts = SESSIONS + 1; // and the in-process client
    wait_until("every session accepted", || echo.accepted.load(Ordering::SeqCst) >= accepts);
    assert_eq!(echo.accepted.load(Ordering::SeqCst), accepts, "accepted exactly once each");
    assert_eq!(server.connection_count(), baseline + SESSIONS, "the server holds every session");
    assert_eq!(echo.resets.load(Ordering::SeqCst), 0, "no session was reset while held");
    pongs.round_trip(&con, "while the sessions are held");

    let rss_held = rss_kib();
    let per_session = rss_held.saturating_sub(rss_before) as f64 / SESSIONS as f64;
    let report = format!(
        "memory per idle connection: {per_session:.1} KiB (server RSS {rss_before} KiB before, {rss_held} KiB \
         holding {SESSIONS} sessions)"
    );
    eprintln!("{report}");
    println!("{report}");

    // All at once: the child closes every session when its stdin ends.
    let t_close = Instant::now();
    drop(holder.0.stdin.take());
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = holder.0.try_wait().expect("wait for msgr hold") {
            break s;
        }
        assert!(Instant::now() < deadline, "msgr hold did not exit within {WAIT:?} of its stdin closing");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "msgr hold exited with {status}");
    wait_until("every session cleaned up", || server.connection_count() == baseline);
    wait_until("every session reported reset", || echo.resets.load(Ordering::SeqCst) >= SESSIONS);
    let close_secs = t_close.elapsed().as_secs_f64();
    assert_eq!(echo.resets.load(Ordering::SeqCst), SESSIONS, "reset exactly once each, the in-process client never");
    pongs.round_trip(&con, "after the sessions are gone");

    let summary = format!(
        "{SESSIONS} sessions opened and answered in {open_secs:.1} s, closed and cleaned up in {close_secs:.1} s; \
         server RSS afterwards {} KiB",
        rss_kib()
    );
    eprintln!("{summary}");
    println!("{summary}");
    assert!(
        per_session < MAX_KIB_PER_SESSION,
        "{per_session:.1} KiB per idle session exceeds {MAX_KIB_PER_SESSION} KiB"
    );
    stop(&[&client, &server]);
}
