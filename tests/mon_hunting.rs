//! MonClient hunting against a real cluster of three Ceph 16.2 monitors (cephx): the
//! monitor in use is killed while requests run in a loop; the client gives it up, finds
//! another, authenticates again and answers every request. Skipped (loudly) only where
//! ceph-mon is missing.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{have_ceph, Mon};
use msgr::config::ConfigBuilder;
use msgr::monc::MonClient;
use msgr::proto::{EntityName, EntityType};

const TIMEOUT: Duration = Duration::from_secs(30);
/// How long a test waits across an election: the killed monitor may be the leader, and
/// on a loaded machine the others take a while to elect a new one.
const ELECTION: Duration = Duration::from_secs(90);

fn client(mon: &Mon, hunt_interval: &str) -> MonClient {
    client_with_timeout(mon, hunt_interval, TIMEOUT)
}

fn client_with_timeout(mon: &Mon, hunt_interval: &str, timeout: Duration) -> MonClient {
    let cfg = ConfigBuilder::new("client.admin")
        .file(mon.conf())
        .unwrap()
        .set("mon_client_hunt_interval", hunt_interval)
        .unwrap()
        .build()
        .unwrap();
    MonClient::new(&cfg, EntityName::new(EntityType::Client, -1), None, timeout).unwrap()
}

fn port_of(c: &MonClient) -> u16 {
    c.current_mon().0[0].addr.expect("an address").port()
}

#[test]
fn killing_the_monitor_in_use_loses_no_request() {
    if !have_ceph("killing_the_monitor_in_use_loses_no_request") {
        return;
    }
    let mon = Mon::start_cluster("cephx", "crc", "", &["a", "b", "c"]);
    let c = Arc::new(client_with_timeout(&mon, "3", ELECTION));
    let (first, _) = c.get_version("osdmap").unwrap();
    let map = c.monmap().unwrap();
    assert_eq!(map.mons.len(), 3);
    assert_eq!(map.ranks.len(), 3);
    let stop = Arc::new(AtomicBool::new(false));
    let runner = {
        let (c, stop) = (Arc::clone(&c), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut answered = 0u64;
            let mut slowest = Duration::ZERO;
            while !stop.load(Ordering::Acquire) {
                let t0 = Instant::now();
                // Every request must be answered: an error here fails the test.
                let (v, _) = c.get_version("osdmap").expect("a request was lost");
                assert!(v >= first);
                slowest = slowest.max(t0.elapsed());
                answered += 1;
            }
            (answered, slowest)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let victim_port = port_of(&c);
    let victim = mon.id_of_port(victim_port).expect("the client talks to one of the monitors").to_string();
    mon.kill_one(&victim);
    let killed_at = Instant::now();
    // Requests go on until well after the switch.
    while c.hunts() == 0 && killed_at.elapsed() < TIMEOUT {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Release);
    let (answered, slowest) = runner.join().expect("every request answered");
    eprintln!(
        "killed mon.{victim}; {answered} requests answered, slowest {slowest:?}; {} hunts, now on port {}",
        c.hunts(),
        port_of(&c)
    );
    assert!(c.hunts() >= 1, "the client never hunted");
    assert_ne!(port_of(&c), victim_port, "still on the killed monitor");
    assert!(answered > 10);
    // The new session is a cephx one that keeps answering, and tickets still come.
    c.get_version("monmap").unwrap();
    c.service_tickets(EntityType::Osd as u32).unwrap();
    c.shutdown();
}

#[test]
fn a_dead_first_monitor_is_skipped() {
    if !have_ceph("a_dead_first_monitor_is_skipped") {
        return;
    }
    let mon = Mon::start_cluster("cephx", "crc", "", &["a", "b", "c"]);
    mon.kill_one("a");
    let c = client(&mon, "3");
    let t0 = Instant::now();
    c.get_version("osdmap").unwrap();
    assert!(c.hunts() >= 1);
    assert_ne!(mon.id_of_port(port_of(&c)), Some("a"));
    assert!(t0.elapsed() < TIMEOUT);
    c.shutdown();
}

#[test]
fn subscriptions_follow_the_client_to_the_next_monitor() {
    if !have_ceph("subscriptions_follow_the_client_to_the_next_monitor") {
        return;
    }
    let mon = Mon::start_cluster("cephx", "crc", "", &["a", "b", "c"]);
    let c = client_with_timeout(&mon, "3", ELECTION);
    c.subscribe("osdmap", 0).unwrap();
    assert!(c.wait_osdmap(1, ELECTION), "the subscription delivered no osdmap");
    let before = c.osdmap_epoch();
    let victim = mon.id_of_port(port_of(&c)).expect("a monitor of the cluster").to_string();
    mon.kill_one(&victim);
    // The next request finds the monitor gone and hunts; the new session is sent the
    // subscription again, from the epoch after the newest received.
    c.get_version("osdmap").unwrap();
    assert!(c.hunts() >= 1);
    assert!(c.resubscriptions() >= 1, "the subscription was not renewed");
    // A new osdmap epoch reaches us through the new monitor.
    mon.ceph(&["osd", "set", "noout"]);
    assert!(c.wait_osdmap(before + 1, ELECTION), "no osdmap after the hunt (still at {})", c.osdmap_epoch());
    eprintln!("osdmap {before} -> {} across the loss of mon.{victim}", c.osdmap_epoch());
    c.shutdown();
}
