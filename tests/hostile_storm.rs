//! 10,000 connections opened and dropped at once against a posix messenger, some silent,
//! some sending garbage, while a well-behaved client keeps exchanging messages with it:
//! the good client is served throughout, every hostile connection is cleaned up, and the
//! process's memory comes back near where it started.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use msgr::messenger::{ConnState, Policy};
use msgr::proto::{EntityAddrVec, EntityType};

mod common;
use common::process::{raise_nofile, rss_kib};
use common::traffic::{config, messenger, stop, test_message, wait_until, Recorder};

const STORM: usize = 10_000;

/// The hostile side, in its own process (its sockets count against its own limit): a
/// third of the connections say nothing, a third send garbage, a third a banner then
/// garbage. It prints how many it opened, then holds them until its stdin closes.
const STORM_PY: &str = r#"
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
for k in range(n):
    try:
        s = socket.create_connection((host, port), timeout=5)
        if k % 3 == 1:
            s.sendall(b"\xa5" * 64)
        elif k % 3 == 2:
            s.sendall(b"ceph v2\n\x10\x00" + b"\x01" + b"\x00" * 15 + b"x" * 32)
        socks.append(s)
    except OSError:
        pass
print(len(socks), flush=True)
sys.stdin.read()
"#;

#[test]
fn ten_thousand_hostile_connections_do_not_starve_a_good_client() {
    let limit = raise_nofile();
    if limit < (STORM as u64) + 2_000 {
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: open-file limit {limit} is too low for {STORM} connections ***\n"
        );
        return;
    }
    // Hostile connections that never finish the handshake are dropped by this timeout.
    // It is longer than opening the storm can take on a loaded machine: the count below
    // of what the server holds must not race it (with 5 s, a storm that took more than
    // about 7 s to open under the full test suite had its early silent connections
    // timed out before they were counted, and the count never came). The drop further
    // down cleans them up all the same: the kernel closes the child's sockets.
    let cfg = config(&[("ms_connection_ready_timeout", "60")]);
    let server = messenger(&cfg, EntityType::Osd, 0);
    server.set_default_policy(Policy::stateless_server(0));
    let srv = Arc::new(Recorder::default());
    server.add_dispatcher_tail(srv.clone());
    let addr = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let sa = addr.addr.unwrap();

    let client = messenger(&cfg, EntityType::Client, -1);
    client.set_default_policy(Policy::lossy_client(0));
    client.add_dispatcher_tail(Arc::new(Recorder::default()));
    let con = client.connect_to(EntityType::Osd, &EntityAddrVec(vec![addr])).unwrap();
    con.send_message(test_message(1, 0, 100)).unwrap();
    assert_eq!(srv.tally.wait_for(1), 1);
    let rss_before = rss_kib();

    // The good client keeps sending, one message per millisecond, through the storm.
    let storming = Arc::new(AtomicBool::new(true));
    let sender = {
        let (con, storming) = (Arc::clone(&con), Arc::clone(&storming));
        std::thread::spawn(move || {
            let mut i = 1;
            while storming.load(Ordering::SeqCst) {
                if con.send_message(test_message(1, i, 100)).is_err() {
                    panic!("the good client was cut off: {:?}", con.last_error());
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            i
        })
    };

    let t0 = Instant::now();
    let mut storm = Command::new("python3")
        .args(["-c", STORM_PY, &sa.ip().to_string(), &sa.port().to_string(), &STORM.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(storm.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let opened: usize = line.trim().parse().unwrap_or(0);
    // The silent third stays until the handshake timeout; garbage is refused at once.
    wait_until("the server to hold the hostile connections", || server.connection_count() >= opened / 4);
    // T_STORM_HOLD=SECS keeps the hostile connections open longer (past 60 s, the
    // handshake timeout then drops the silent ones on the server side).
    let rss_peak = rss_kib();
    let held = server.connection_count();
    let hold = std::env::var("T_STORM_HOLD").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    std::thread::sleep(Duration::from_secs(hold));
    let during_storm = srv.tally.count();
    // All at once: closing stdin ends the child, and the kernel closes its sockets.
    drop(storm.stdin.take());
    let _ = storm.wait();
    let storm_secs = t0.elapsed().as_secs_f64();

    // Every hostile connection goes away on the server side.
    wait_until("hostile connections cleaned up", || server.connection_count() <= 1);
    storming.store(false, Ordering::SeqCst);
    let sent = sender.join().unwrap();
    assert_eq!(srv.tally.wait_for(sent), sent, "every message of the good client arrived");
    srv.tally.assert_in_order("good client");
    assert_eq!(con.state(), ConnState::Open, "the good client was never cut off");
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = rss_kib();
    eprintln!(
        "{opened} hostile connections opened and dropped in {storm_secs:.1} s ({held} held by the server at once); \
         good client: {during_storm} messages delivered before the drop, {sent} in all; server RSS before \
         {rss_before} KiB, at the peak {rss_peak} KiB ({:.1} KiB per held connection), after {rss_after} KiB",
        rss_peak.saturating_sub(rss_before) as f64 / held.max(1) as f64
    );
    assert!(opened >= STORM * 9 / 10, "only {opened} connections could be opened");
    assert!(during_storm > 1, "the good client made progress during the storm");
    assert!(rss_after < rss_before + 64 * 1024, "memory not given back: {rss_before} -> {rss_after} KiB");
    stop(&[&client, &server]);
}
