//! The DPDK wrapper against real virtual PMDs: net_ring (loopback) and net_null.
//!
//! EAL starts once per process. cargo-nextest runs each test in its own process, `cargo
//! test` runs them all as threads of one process; both work because every test goes through
//! [`fixture`], which initialises EAL with the same arguments once and records the ports
//! before any test starts (and so closes) one. Each test uses its own port and its own pool.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use msgr_stack_dpdk::dpdk::{self, DpdkError, Eal, Mbuf, Mempool, Port, PortInfo};

const EAL_ARGS: &[&str] = &[
    "-l",
    "0",
    "--no-pci",
    "--no-huge",
    "--no-shconf",
    "-m",
    "256",
    "--log-level=*:error",
    "--vdev=net_ring0",
    "--vdev=net_null0",
];

const DEADLINE: Duration = Duration::from_secs(10);

struct Fixture {
    eal: &'static Eal,
    /// Ports as found right after EAL init, before any test closed one.
    ports: Vec<PortInfo>,
    count: u16,
    ring: Option<u16>,
    null: Option<u16>,
    /// The initialising thread's CPU affinity before and after EAL init.
    affinity: (String, String),
}

/// The calling thread's `Cpus_allowed_list`.
fn affinity() -> String {
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("/proc/thread-self/status");
    status.lines().find(|l| l.starts_with("Cpus_allowed_list")).unwrap_or_default().to_owned()
}

fn eal_args() -> Vec<String> {
    EAL_ARGS.iter().map(|s| s.to_string()).collect()
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let before = affinity();
        let eal = dpdk::init(&eal_args()).unwrap_or_else(|e| panic!("EAL init failed: {e}"));
        Fixture {
            affinity: (before, affinity()),
            eal,
            ports: dpdk::ports(),
            count: dpdk::port_count(),
            ring: dpdk::port_by_name("net_ring0"),
            null: dpdk::port_by_name("net_null0"),
        }
    })
}

fn pool(n: u32) -> Arc<Mempool> {
    Mempool::new(fixture().eal, n, 32).unwrap_or_else(|e| panic!("mempool: {e}"))
}

/// Frame `i` of 64: 60..=1514 bytes, content depending on `i` and the offset.
fn frame_bytes(i: usize) -> Vec<u8> {
    let len = 60 + i * (1514 - 60) / 63;
    (0..len).map(|j| (i.wrapping_mul(31) ^ j.wrapping_mul(7) ^ (j >> 8)) as u8).collect()
}

fn build_frame(pool: &Arc<Mempool>, bytes: &[u8]) -> Mbuf {
    let mut m = Mbuf::alloc(pool).expect("pool has free mbufs");
    assert!(m.is_empty());
    m.append(bytes.len()).expect("tailroom for a 1514-byte frame").copy_from_slice(bytes);
    assert_eq!(m.len(), bytes.len());
    assert_eq!(m.data(), bytes);
    m
}

/// tx_burst until every frame is accepted (bounded by DEADLINE).
fn send_all(port: &Port, queue: u16, frames: &mut Vec<Mbuf>) -> usize {
    let start = Instant::now();
    let mut sent = 0;
    while !frames.is_empty() {
        assert!(start.elapsed() < DEADLINE, "tx stuck with {} frames left", frames.len());
        sent += port.tx_burst(queue, frames);
    }
    sent
}

#[test]
fn ring_loopback_preserves_bytes_and_order() {
    let f = fixture();
    let id = f.ring.expect("net_ring0 exists");
    let pool = pool(1023);
    let port = Port::start(id, 1, 256, &pool).unwrap_or_else(|e| panic!("start net_ring0: {e}"));
    assert_eq!(port.id(), id);
    assert_eq!(port.driver_name(), "net_ring");
    assert_eq!(port.queues(), 1);

    // One Port per device.
    match Port::start(id, 1, 256, &pool) {
        Err(DpdkError::PortInUse(p)) => assert_eq!(p, id),
        other => panic!("second start of a running port: {other:?}"),
    }

    let expected: Vec<Vec<u8>> = (0..64).map(frame_bytes).collect();
    let mut frames: Vec<Mbuf> = expected.iter().map(|b| build_frame(&pool, b)).collect();
    assert_eq!(pool.in_use(), 64);
    assert_eq!(send_all(&port, 0, &mut frames), 64);

    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < expected.len() {
        assert!(start.elapsed() < DEADLINE, "received only {} of 64 frames", got.len());
        port.rx_burst(0, &mut got, 16);
    }
    assert_eq!(got.len(), 64, "no extra frames");
    for (i, (m, want)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(m.len(), want.len(), "frame {i} length");
        assert!(m.data() == want.as_slice(), "frame {i} content differs");
        assert!(Arc::ptr_eq(m.pool(), &pool));
    }
    // Received mbufs are writable.
    got[0].data_mut()[0] ^= 0xff;
    assert_eq!(got[0].data()[0], expected[0][0] ^ 0xff);

    // Queues that do not exist send and receive nothing (and do not crash).
    let mut extra = vec![build_frame(&pool, &expected[0])];
    assert_eq!(port.tx_burst(1, &mut extra), 0);
    assert_eq!(extra.len(), 1);
    assert_eq!(port.rx_burst(7, &mut got, 8), 0);
    drop(extra);

    let stats = port.stats().unwrap_or_else(|e| panic!("stats: {e}"));
    assert_eq!((stats.ipackets, stats.opackets), (64, 64), "{stats:?}");

    drop(got);
    assert_eq!(pool.in_use(), 0, "every mbuf is back in the pool");
    drop(port);
    assert_eq!(Arc::strong_count(&pool), 1, "the port released its pool");
    // Closing releases a virtual device for good.
    assert_eq!(dpdk::port_by_name("net_ring0"), None);
    assert!(Port::start(id, 1, 256, &pool).is_err());
}

#[test]
fn null_bursts_do_not_leak_mbufs() {
    let f = fixture();
    let id = f.null.expect("net_null0 exists");
    let pool = pool(2047);
    let port = Port::start(id, 1, 512, &pool).unwrap_or_else(|e| panic!("start net_null0: {e}"));
    assert_eq!(port.driver_name(), "net_null");
    assert_eq!(port.mac().len(), 6);

    let mut sent = 0;
    let mut received = 0;
    for round in 0..50 {
        let mut frames: Vec<Mbuf> = (0..32).map(|i| build_frame(&pool, &frame_bytes((round + i) % 64))).collect();
        sent += send_all(&port, 0, &mut frames);
        let mut got = Vec::new();
        received += port.rx_burst(0, &mut got, 100);
        assert!(got.iter().all(|m| Arc::ptr_eq(m.pool(), &pool)));
        drop(got);
        assert_eq!(pool.in_use(), 0, "round {round}: mbufs leaked");
    }
    assert_eq!(sent, 50 * 32);
    assert!(received > 0, "net_null rx produced frames");

    // A thread outside EAL can register for an lcore id (mempool cache) and use the pool.
    let eal = f.eal;
    let pool2 = Arc::clone(&pool);
    let lcore = std::thread::spawn(move || {
        let lcore = eal.register_thread().unwrap_or_else(|e| panic!("register_thread: {e}"));
        assert_eq!(eal.register_thread().ok(), Some(lcore), "registering twice keeps the id");
        let bufs: Vec<Mbuf> = (0..100).filter_map(|_| Mbuf::alloc(&pool2)).collect();
        assert_eq!(bufs.len(), 100);
        drop(bufs);
        eal.unregister_thread();
        lcore
    })
    .join()
    .expect("worker thread");
    assert_ne!(lcore, 0, "lcore 0 is EAL's main lcore");
    assert_eq!(pool.in_use(), 0);

    let stats = port.stats().unwrap_or_else(|e| panic!("stats: {e}"));
    assert_eq!(stats.opackets, 50 * 32, "{stats:?}");
    drop(port);
    assert_eq!(pool.in_use(), 0, "closing the port frees its mbufs");
}

#[test]
fn errors_name_the_cause() {
    let f = fixture();

    // Same arguments: the same EAL. Other arguments: an error naming both lists.
    let again = dpdk::init(&eal_args()).unwrap_or_else(|e| panic!("init with the same args: {e}"));
    assert!(std::ptr::eq(again, f.eal));
    assert_eq!(again.args(), eal_args().as_slice());
    let other: Vec<String> = ["-l", "1", "--no-pci", "--in-memory"].iter().map(|s| s.to_string()).collect();
    let err = dpdk::init(&other).expect_err("init with other args must fail");
    let msg = err.to_string();
    assert!(matches!(err, DpdkError::EalArgsMismatch { .. }), "{err:?}");
    assert!(msg.contains(&EAL_ARGS.join(" ")), "names the existing args: {msg}");
    assert!(msg.contains("-l 1 --no-pci --in-memory"), "names the requested args: {msg}");

    // A port that does not exist: DPDK's reason and a hint.
    let pool = pool(255);
    let missing = 31;
    assert!(dpdk::ports().iter().all(|p| p.id != missing));
    let err = Port::start(missing, 1, 64, &pool).expect_err("port 31 does not exist");
    let msg = err.to_string();
    assert_eq!(err.errno(), Some(19), "ENODEV: {msg}");
    assert!(msg.contains("No such device"), "quotes DPDK's reason: {msg}");
    assert!(msg.contains("rte_eth_dev_info_get(port 31)"), "names the call: {msg}");
    assert!(msg.contains("--vdev="), "says what to change: {msg}");

    // Bad pool parameters: DPDK's reason, the call and its arguments.
    let err = Mempool::new(f.eal, 100, 100).expect_err("cache larger than n / 1.5");
    let msg = err.to_string();
    assert!(msg.contains("rte_pktmbuf_pool_create") && msg.contains("cache=100"), "{msg}");
    assert!(msg.contains("Invalid argument"), "quotes DPDK's reason: {msg}");

    // Zero queues is rejected before DPDK is asked.
    assert!(matches!(Port::start(0, 0, 64, &pool), Err(DpdkError::InvalidConfig(_))));
}

#[test]
fn ports_by_name_and_driver() {
    let f = fixture();
    assert_eq!(f.count, 2, "{:?}", f.ports);
    let ring = f.ring.expect("net_ring0 found by name");
    let null = f.null.expect("net_null0 found by name");
    assert_ne!(ring, null);
    let find = |id| f.ports.iter().find(|p| p.id == id).unwrap_or_else(|| panic!("port {id} in {:?}", f.ports));
    assert_eq!((find(ring).name.as_str(), find(ring).driver.as_str()), ("net_ring0", "net_ring"));
    assert_eq!((find(null).name.as_str(), find(null).driver.as_str()), ("net_null0", "net_null"));
    assert_eq!(dpdk::port_by_name("net_nope0"), None);
    assert_eq!(dpdk::port_by_name("bad\0name"), None);
}

#[test]
fn init_keeps_the_threads_cpu_affinity() {
    let f = fixture();
    // rte_eal_init pins its thread to the `-l 0` CPU; init undoes that.
    assert_eq!(f.affinity.0, f.affinity.1);
}
