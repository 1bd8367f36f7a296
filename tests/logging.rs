//! The messenger's log events (`tracing`, gated by `debug_ms`), captured from real
//! posix connections: a refused connect, a handshake that fails with its typed error,
//! a lossless session's reconnects — and nothing at all at `debug_ms = 0`.

use std::io::Write;
use std::net::TcpListener;
use std::sync::{Arc, Mutex, OnceLock};

use msgr::messenger::{ConnState, Messenger, Policy};
use msgr::proto::{EntityAddr, EntityAddrVec, EntityType};

mod common;
use common::traffic::{config, messenger, stop, test_message, wait_until, Recorder, Streamer};

/// Everything the process logged, as text (one event per line).
fn captured() -> Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        // Global: events come from the workers' threads.
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new("msgr=trace"))
            .with_writer(move || Sink(Arc::clone(&sink)))
            .init();
        buf
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured lines that mention `marker` (e.g. a port only this test uses).
fn lines_with(marker: &str) -> Vec<String> {
    let buf = captured();
    let text = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    text.lines().filter(|l| l.contains(marker)).map(str::to_string).collect()
}

fn wait_for_line(marker: &str, what: &str) -> String {
    wait_until(what, || lines_with(marker).iter().any(|l| l.contains(what)));
    lines_with(marker).into_iter().find(|l| l.contains(what)).unwrap_or_default()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A lossy client at `debug_ms` dials a port nobody listens on and gives up; returns it
/// (to stop once its lines are checked: a stopping messenger reports no refusal) and the
/// marker its log lines carry (the address dialled).
fn dial_a_closed_port(debug_ms: &str) -> (Messenger, String) {
    captured();
    let port = free_port();
    let client = messenger(&config(&[("debug_ms", debug_ms)]), EntityType::Client, -1);
    client.set_default_policy(Policy::lossy_client(0));
    let target = EntityAddr::msgr2(format!("127.0.0.1:{port}").parse().unwrap(), 0);
    let con = client.connect_to(EntityType::Osd, &EntityAddrVec(vec![target])).unwrap();
    wait_until("the refusal", || con.state() == ConnState::Closed);
    (client, format!("127.0.0.1:{port}"))
}

#[test]
fn a_refused_connect_is_logged_with_its_error() {
    let (client, marker) = dial_a_closed_port("1");
    wait_for_line(&marker, "dialling");
    let refused = wait_for_line(&marker, "msgr: refused");
    assert!(refused.contains("INFO") && refused.contains("Refused("), "{refused}");
    stop(&[&client]);
}

#[test]
fn a_failed_handshake_is_logged_with_its_typed_error() {
    captured();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = messenger(&config(&[("debug_ms", "5")]), EntityType::Client, -1);
    client.set_default_policy(Policy::lossy_client(0));
    let target = EntityAddr::msgr2(format!("127.0.0.1:{port}").parse().unwrap(), 0);
    let con = client.connect_to(EntityType::Osd, &EntityAddrVec(vec![target])).unwrap();
    let (mut s, _) = listener.accept().unwrap();
    s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
    wait_until("the handshake to fail", || con.state() == ConnState::Closed);
    let fault = wait_for_line(&format!("127.0.0.1:{port}"), " fault ");
    assert!(fault.contains("WARN"), "{fault}");
    assert!(fault.contains("Banner(BadPrefix"), "the typed error: {fault}");
    assert!(fault.contains("state=BannerConnecting"), "where in the handshake: {fault}");
    stop(&[&client]);
}

#[test]
fn a_lossless_sessions_reconnects_are_logged() {
    captured();
    let opts = [
        ("debug_ms", "5"),
        ("ms_inject_socket_failures", "20"),
        ("ms_initial_backoff", "0.01"),
        ("ms_max_backoff", "0.05"),
    ];
    let cfg = config(&opts);
    let sd = Streamer::new(0, |_| 100);
    let server = messenger(&cfg, EntityType::Osd, 0);
    server.set_default_policy(Policy::lossless_peer(0));
    server.add_dispatcher_tail(sd.clone());
    let addr = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let client = messenger(&cfg, EntityType::Osd, 1);
    client.set_default_policy(Policy::lossless_peer(0));
    client.add_dispatcher_tail(Arc::new(Recorder::default()));
    let con = client.connect_to(EntityType::Osd, &EntityAddrVec(vec![addr.clone()])).unwrap();
    let marker = addr.to_string();
    // Injected faults are random: send until a transport of this session has broken
    // and been replaced (a few hundred messages at most, in practice).
    let mut sent = 0;
    while !lines_with(&marker).iter().any(|l| l.contains("session ready") && l.contains("resumed=true")) {
        assert!(sent < 100_000, "no reconnect after {sent} messages");
        for _ in 0..100 {
            con.send_message(test_message(1, sent, 100)).unwrap();
            sent += 1;
        }
        sd.tally.wait_for(sent);
    }
    assert_eq!(sd.tally.wait_for(sent), sent, "lossless: every message arrived");
    let reconnect = wait_for_line(&marker, "reconnecting");
    assert!(reconnect.contains("connect_seq="), "{reconnect}");
    wait_for_line(&marker, "reconnect scheduled");
    wait_for_line(&marker, "lossless policy: the session is kept");
    stop(&[&client, &server]);
}

#[test]
fn nothing_is_logged_at_debug_ms_zero() {
    let (client, marker) = dial_a_closed_port("0");
    stop(&[&client]);
    assert_eq!(lines_with(&marker), Vec::<String>::new());
}
