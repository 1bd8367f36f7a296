//! Messengers over `ms_type = async+dpdk` (smoltcp on DPDK virtual devices), run by
//! `ci/dpdk-tests.sh`:
//!
//! * `ring_two_dpdk_messengers`: two messengers on one DPDK stack whose port is a
//!   net_ring loopback — no kernel anywhere on the path.
//! * `tap_dpdk_and_posix_both_directions`: the DPDK stack on net_tap, the kernel on the
//!   other side of the TAP, a posix messenger there; DPDK as server and as client.
//! * `memif_two_dpdk_processes`: two `async+dpdk` processes joined by DPDK's net_memif
//!   (shared memory; a unix socket only to set it up): this test's process serves, and
//!   runs this test binary again as the client (`memif_peer_process`, which does nothing
//!   unless the parent started it). No kernel on the data path, two address spaces.
//!
//! EAL can be initialised once per process and a port is closed when its stack stops,
//! so each test needs its own process (cargo-nextest, or the test binary run once per
//! test with `--exact`); the tap test must run as root inside a network namespace made
//! for it. Both skip loudly unless `MSGR_DPDK_TESTS=1`. `MSGR_DPDK_MEM` chooses the EAL
//! memory: `nohuge` (default: `--no-huge -m 512`) or `huge` (hugepages, `--in-memory`).

#![cfg(feature = "dpdk")]

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
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
    let err = |cfg: &Config| match msgr::stack_for(cfg) {
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

/// Where the memif client process finds its server: the memif socket and the server
/// messenger's address, `SOCKET;ADDR`. Set by `memif_two_dpdk_processes` for its child.
const MEMIF_PEER: &str = "MSGR_MEMIF_PEER";

/// How long the memif child may run in all before the parent kills it (and it kills
/// itself), whatever it waits for.
const MEMIF_CHILD_DEADLINE: Duration = Duration::from_secs(240);

/// The config of one memif process. memif needs DPDK's multi-process channel, so each
/// process has its own `--file-prefix` instead of `--in-memory`/`--no-shconf`; hugepage
/// files are unlinked at once, so nothing is left in hugetlbfs. Each process's worker
/// is pinned to a core of its own (`coremask`), so the two busy-polling workers never
/// share a CPU.
fn memif_config(ip: &str, coremask: &str, prefix: &str, vdev: &str) -> Config {
    let mem = match std::env::var("MSGR_DPDK_MEM").as_deref() {
        Ok("huge") => "--huge-unlink",
        _ => "--no-huge -m 512",
    };
    let extra = format!("--no-pci {mem} --file-prefix {prefix} --log-level=*:error {vdev}");
    config(&[
        ("ms_type", "async+dpdk"),
        ("ms_async_op_threads", "1"),
        ("ms_dpdk_coremask", coremask),
        ("ms_dpdk_host_ipv4_addr", ip),
        ("ms_dpdk_netmask_ipv4_addr", "255.255.255.0"),
        ("ms_dpdk_extra_eal_args", &extra),
        ("ms_dpdk_rx_buffer_count_per_core", "4096"),
    ])
}

/// Copies per received and per sent byte, from a messenger's perf dump (its `msgr.*`
/// section).
fn copies(dump: &serde_json::Value) -> String {
    let sec = dump.as_object().and_then(|m| m.iter().find(|(k, _)| k.starts_with("msgr.")).map(|(_, v)| v));
    let v = |k: &str| sec.and_then(|s| s[k].as_f64()).unwrap_or(0.0);
    format!(
        "copied {:.3} per byte received, {:.3} per byte sent",
        v("msgr_recv_copied_bytes") / v("msgr_recv_bytes").max(1.0),
        v("msgr_send_copied_bytes") / v("msgr_send_bytes").max(1.0)
    )
}

/// The client's core mask: the second CPU if this process may use one, else the first
/// (a one-CPU machine: both workers share it, slowly but correctly).
fn peer_core() -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus > 1 { "0x2" } else { "0x1" }.to_string()
}

/// The memif child; kills it (and reaps it) when dropped, so a failing parent leaves no
/// orphan. Its stdin is a pipe the child watches: if the parent dies without dropping
/// this (SIGKILL), the kernel closes the pipe and the child exits by itself.
struct MemifChild(Child);

impl Drop for MemifChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes a DPDK runtime directory (`/var/run/dpdk/PREFIX`) when dropped.
struct RuntimeDir(String);

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(Path::new("/var/run/dpdk").join(&self.0));
    }
}

#[test]
fn memif_two_dpdk_processes() {
    if !enabled("memif_two_dpdk_processes") {
        return;
    }
    let n = messages();
    let dir = tempfile::tempdir().expect("temp dir");
    let sock = dir.path().join("memif.sock");
    let pid = std::process::id();
    let (me, peer) = (format!("msgr-memif-s{pid}"), format!("msgr-memif-c{pid}"));
    let _dirs = (RuntimeDir(me.clone()), RuntimeDir(peer.clone()));
    let vdev = format!("--vdev=net_memif0,role=server,socket={}", sock.display());
    let cfg = memif_config("198.18.11.1", "0x1", &me, &vdev);
    let (srv, sd, addr) = server(&cfg, n, "198.18.11.1:0");

    // The client: this test binary again, running only `memif_peer_process`.
    let exe = std::env::current_exe().expect("test binary");
    let child = Command::new(exe)
        .args(["--exact", "memif_peer_process", "--nocapture", "--test-threads=1"])
        .env("MSGR_DPDK_TESTS", "1")
        .env(MEMIF_PEER, format!("{};{addr};{peer}", sock.display()))
        .stdin(Stdio::piped())
        .spawn()
        .expect("start the memif client process");
    let mut child = MemifChild(child);

    let got = sd.tally.wait_for(n);
    // The child exits once it has its n and has checked its pool; give it until its own
    // deadline, then kill it.
    let deadline = Instant::now() + MEMIF_CHILD_DEADLINE;
    let status = loop {
        match child.0.try_wait().expect("wait for the memif client") {
            Some(s) => break Some(s),
            None if Instant::now() >= deadline => break None,
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let status =
        status.unwrap_or_else(|| panic!("the memif client process did not finish in {MEMIF_CHILD_DEADLINE:?}"));
    assert!(status.success(), "the memif client process failed ({status}); its output is above");
    assert_eq!(got, n, "server received");
    assert_eq!(sd.tally.count(), n, "nothing arrives twice");
    sd.tally.assert_in_order("memif server");
    eprintln!("memif server process: {}", copies(&srv.perf_dump()));
    stop(&[&srv]);
    assert_eq!(msgr_stack_dpdk::mbufs_in_use(), None, "the stack is gone, its pool freed");
    assert_eq!(msgr_stack_dpdk::mbufs_leaked_at_last_shutdown(), Some(0), "server: every mbuf back in the pool");
    if let Some(st) = msgr_stack_dpdk::stack_stats_at_last_shutdown() {
        eprintln!("memif server process: smoltcp {:?}", st.device);
    }
}

#[test]
fn memif_peer_process() {
    let Ok(peer) = std::env::var(MEMIF_PEER) else {
        eprintln!("memif_peer_process: the client half of memif_two_dpdk_processes, which starts it; nothing to do");
        return;
    };
    // Bounded whatever happens: the parent is gone (stdin closes) or the run hangs.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = writeln!(std::io::stderr(), "memif client: the parent process is gone; exiting");
        std::process::exit(3);
    });
    std::thread::spawn(|| {
        std::thread::sleep(MEMIF_CHILD_DEADLINE);
        let _ = writeln!(std::io::stderr(), "memif client: no result within {MEMIF_CHILD_DEADLINE:?}; exiting");
        std::process::exit(4);
    });
    let mut parts = peer.split(';');
    let (Some(sock), Some(addr), Some(prefix)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("{MEMIF_PEER} = '{peer}': expected SOCKET;ADDR;PREFIX");
    };
    let addr: EntityAddr = addr.parse().expect("server address");
    let n = messages();
    let vdev = format!("--vdev=net_memif0,role=client,socket={sock}");
    let cfg = memif_config("198.18.11.2", &peer_core(), prefix, &vdev);
    let (cli, cd) = client(&cfg);
    let con = cli.connect_to(EntityType::Osd, &EntityAddrVec(vec![addr])).unwrap();
    let start = Instant::now();
    for i in 0..n {
        con.send_message(test_message(11, i, mixed_len(i))).unwrap();
    }
    assert_eq!(cd.tally.wait_for(n), n, "memif client received");
    let secs = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cd.tally.count(), n, "nothing arrives twice");
    cd.tally.assert_in_order("memif client");
    assert_eq!(con.state(), ConnState::Open);
    let mib = cd.tally.bytes.load(Ordering::SeqCst) as f64 / 1048576.0;
    eprintln!(
        "memif client process: {n} messages each way in {secs:.2} s ({mib:.1} MiB received, {:.1} MiB/s); {}",
        mib / secs,
        copies(&cli.perf_dump())
    );
    stop(&[&cli]);
    assert_eq!(msgr_stack_dpdk::mbufs_in_use(), None, "the stack is gone, its pool freed");
    assert_eq!(msgr_stack_dpdk::mbufs_leaked_at_last_shutdown(), Some(0), "client: every mbuf back in the pool");
    if let Some(st) = msgr_stack_dpdk::stack_stats_at_last_shutdown() {
        eprintln!("memif client process: smoltcp {:?}", st.device);
    }
}
