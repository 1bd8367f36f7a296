//! Messengers over `ms_type = async+dpdk` (smoltcp on DPDK virtual devices), run by
//! `ci/dpdk-tests.sh`:
//!
//! * `ring_two_dpdk_messengers`: two messengers on one DPDK stack whose port is a
//!   net_ring loopback — no kernel anywhere on the path.
//! * `tap_dpdk_and_posix_both_directions`: the DPDK stack on net_tap, the kernel on the
//!   other side of the TAP, a posix messenger there; DPDK as server and as client.
//!
//! EAL can be initialised once per process and a port is closed when its stack stops,
//! so each test needs its own process (cargo-nextest, or the test binary run once per
//! test with `--exact`); the tap test must run as root inside a network namespace made
//! for it. Both skip loudly unless `MSGR_DPDK_TESTS=1`. `MSGR_DPDK_MEM` chooses the EAL
//! memory: `nohuge` (default: `--no-huge -m 512`) or `huge` (hugepages, `--in-memory`).

#![cfg(feature = "dpdk")]

use std::io::Write;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use msgr::config::Config;
use msgr::messenger::{ConnState, ConnectionRef, Messenger, Policy};
use msgr::proto::{EntityAddr, EntityAddrVec, EntityType};

mod common;
use common::traffic::{config, messenger, mixed_len, stop, test_message, wait_until, Recorder, Streamer};

const N_DEFAULT: u64 = 10_000;

fn enabled(test: &str) -> bool {
    if std::env::var("MSGR_DPDK_TESTS").as_deref() == Ok("1") {
        return true;
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED {test}: set MSGR_DPDK_TESTS=1 (root, one process per test; ci/dpdk-tests.sh does it) ***\n"
    );
    false
}

fn eal_memory() -> &'static str {
    match std::env::var("MSGR_DPDK_MEM").as_deref() {
        Ok("huge") => "--in-memory",
        _ => "--no-huge --no-shconf -m 512",
    }
}

fn messages() -> u64 {
    std::env::var("T_DPDK_MSGS").ok().and_then(|v| v.parse().ok()).unwrap_or(N_DEFAULT)
}

fn server(cfg: &Config, n: u64, bind: &str) -> (Messenger, Arc<Streamer>, EntityAddr) {
    let m = messenger(cfg, EntityType::Osd, 0);
    m.set_default_policy(Policy::stateless_server(0));
    let d = Streamer::new(n, mixed_len);
    m.add_dispatcher_tail(d.clone());
    let addr = m.bind(bind.parse().unwrap()).unwrap();
    (m, d, addr)
}

fn client(cfg: &Config) -> (Messenger, Arc<Recorder>) {
    let m = messenger(cfg, EntityType::Client, -1);
    m.set_default_policy(Policy::lossy_client(0));
    let d = Arc::new(Recorder::default());
    m.add_dispatcher_tail(d.clone());
    (m, d)
}

/// Client sends `n` to the server, the server `n` back; all checked exactly once, in order.
fn exchange(what: &str, srv: &Arc<Streamer>, cd: &Arc<Recorder>, con: &ConnectionRef, n: u64) {
    let start = Instant::now();
    for i in 0..n {
        con.send_message(test_message(11, i, mixed_len(i))).unwrap();
    }
    assert_eq!(srv.tally.wait_for(n), n, "{what}: server received");
    assert_eq!(cd.tally.wait_for(n), n, "{what}: client received");
    let secs = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!((srv.tally.count(), cd.tally.count()), (n, n), "{what}: nothing arrives twice");
    srv.tally.assert_in_order(what);
    cd.tally.assert_in_order(what);
    assert_eq!(con.state(), ConnState::Open);
    let bytes = srv.tally.bytes.load(Ordering::SeqCst) + cd.tally.bytes.load(Ordering::SeqCst);
    eprintln!(
        "{what}: {n} messages each way, {:.1} MiB in {secs:.2} s = {:.1} MiB/s both ways",
        bytes as f64 / 1048576.0,
        bytes as f64 / 1048576.0 / secs
    );
}

fn dpdk_config(ip: &str, gateway: &str, vdev: &str, workers: &str) -> Config {
    let extra = format!("--no-pci {} --log-level=*:error {vdev}", eal_memory());
    config(&[
        ("ms_type", "async+dpdk"),
        ("ms_async_op_threads", workers),
        ("ms_dpdk_host_ipv4_addr", ip),
        ("ms_dpdk_gateway_ipv4_addr", gateway),
        ("ms_dpdk_extra_eal_args", &extra),
        ("ms_dpdk_rx_buffer_count_per_core", "4096"),
    ])
}

#[test]
fn ring_two_dpdk_messengers() {
    if !enabled("ring_two_dpdk_messengers") {
        return;
    }
    // Two workers on a loopback ring: frames come back on the queue they left by, so
    // half of them land on a worker that does not own their connection.
    let cfg = dpdk_config("198.18.9.2", "", "--vdev=net_ring0", "2");
    let n = messages();
    let (srv, sd, addr) = server(&cfg, n, "198.18.9.2:0");
    let (cli, cd) = client(&cfg);
    let con = cli.connect_to(EntityType::Osd, &EntityAddrVec(vec![addr])).unwrap();
    exchange("async+dpdk <-> async+dpdk over net_ring", &sd, &cd, &con, n);
    stop(&[&cli, &srv]);
    assert_eq!(msgr_stack_dpdk::mbufs_in_use(), None, "the stack is gone, its pool freed");
    assert_eq!(msgr_stack_dpdk::mbufs_leaked_at_last_shutdown(), Some(0), "every mbuf back in the pool");
}

/// Runs `ip ARGS` (in this process's network namespace).
fn ip(args: &str) {
    let out = Command::new("ip").args(args.split_whitespace()).output().expect("run ip");
    assert!(out.status.success(), "ip {args}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn tap_dpdk_and_posix_both_directions() {
    if !enabled("tap_dpdk_and_posix_both_directions") {
        return;
    }
    // The kernel side of the TAP: created first (multi-queue, persistent), so it has its
    // address before DPDK attaches to it.
    let _ = Command::new("ip").args(["link", "del", "dtapm"]).output();
    ip("tuntap add dev dtapm mode tap multi_queue");
    ip("addr add 198.18.7.1/24 dev dtapm");
    ip("link set dtapm up");
    let cfg = dpdk_config("198.18.7.2", "198.18.7.1", "--vdev=net_tap0,iface=dtapm", "2");
    let pcfg = config(&[("ms_type", "async+posix")]);
    let n = messages();

    // DPDK serves, the kernel's TCP dials it.
    let (dsrv, dsd, daddr) = server(&cfg, n, "198.18.7.2:0");
    let (pcli, pcd) = client(&pcfg);
    let con = pcli.connect_to(EntityType::Osd, &EntityAddrVec(vec![daddr])).unwrap();
    exchange("async+posix client -> async+dpdk server over net_tap", &dsd, &pcd, &con, n);

    // The kernel serves, DPDK dials it.
    let (psrv, psd, paddr) = server(&pcfg, n, "198.18.7.1:0");
    let (dcli, dcd) = client(&cfg);
    let con = dcli.connect_to(EntityType::Osd, &EntityAddrVec(vec![paddr])).unwrap();
    exchange("async+dpdk client -> async+posix server over net_tap", &psd, &dcd, &con, n);

    wait_until("the pool to be in use", || msgr_stack_dpdk::mbufs_in_use().is_some());
    stop(&[&pcli, &dcli, &dsrv, &psrv]);
    assert_eq!(msgr_stack_dpdk::mbufs_in_use(), None, "the stack is gone, its pool freed");
    assert_eq!(msgr_stack_dpdk::mbufs_leaked_at_last_shutdown(), Some(0), "every mbuf back in the pool");
    let _ = Command::new("ip").args(["link", "del", "dtapm"]).output();
}

#[test]
fn startup_errors_say_what_to_change() {
    if !enabled("startup_errors_say_what_to_change") {
        return;
    }
    let err = |cfg: &Config| match msgr_cli::stack_for(cfg) {
        Ok(_) => panic!("expected a start-up error"),
        Err(e) => e.to_string(),
    };
    // No address for the userspace stack: named before EAL is touched.
    let e = err(&config(&[("ms_type", "async+dpdk")]));
    assert!(e.contains("ms_dpdk_host_ipv4_addr"), "{e}");
    // EAL starts, but no port exists: say how to get one.
    let extra = format!("--no-pci {} --log-level=*:error", eal_memory());
    let e = err(&config(&[
        ("ms_type", "async+dpdk"),
        ("ms_dpdk_host_ipv4_addr", "198.18.9.2"),
        ("ms_dpdk_extra_eal_args", &extra),
    ]));
    assert!(e.contains("no DPDK port") && e.contains("ms_dpdk_extra_eal_args"), "{e}");
    eprintln!("start-up errors: ok");
}
