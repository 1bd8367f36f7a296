//! DPDK stack (smoltcp on DPDK poll-mode drivers) — `ms_type = async+dpdk`.
//!
//! msgr2 runs unchanged over it: every connection is a byte stream, as on posix, but TCP
//! is smoltcp's, in the worker's own thread, over a DPDK port.
//! * [`config`]: the `ms_dpdk_*` options and the EAL command line they make.
//! * [`dpdk`]: EAL, mbuf pools, mbufs and ports (the crate's only `unsafe`), over our
//!   own `msgr-dpdk-sys` bindings.
//! * [`device`]: a smoltcp `phy::Device` over one queue of a port — zero-copy receive,
//!   transmit straight into mbufs, tx back-pressure.
//! * [`steer`]: which worker owns a frame; [`worker`]: one worker's interface, sockets
//!   and poll loop (rx burst → steer → interface poll → readiness → tx flush), driven by
//!   `msgr_core::event::PollingDriver` with an idle nap of up to `ms_dpdk_idle_sleep_us`.
//! * [`socket`]: the `ConnectedSocket` / `ServerSocket` contract.
//!
//! One port, one rx/tx queue pair per worker (`ms_async_op_threads`); every worker
//! listens itself (a local listen table) and keeps its connections. When
//! `ms_dpdk_coremask` is set and names a core for every worker, worker i is pinned to
//! its i-th core, as Ceph's DPDK workers run on the mask's lcores: two DPDK processes on
//! one host then need masks of their own (0x1 and 0x2), or the scheduler may put both
//! busy-polling workers on one CPU, where they take turns.
//!
//! Not implemented: IPv6, IP fragmentation (MTU 1500 frames only), TCP offloads (LRO,
//! TSO, checksum offload: smoltcp computes checksums in software), hardware RSS (frames
//! are steered in software).
//!
//! # Examples
//!
//! A daemon gets this stack from the `msgr` crate (its `dpdk` feature and `ms_type =
//! async+dpdk`). By hand, [`backend`] starts EAL and the port the configuration names
//! and `Stack::start` runs the workers on it. That needs root and a DPDK port (here
//! `net_tap`, a TAP interface DPDK creates; no hugepages), and EAL starts once per
//! process, so this example is only compiled, not run by `cargo test`:
//!
//! ```no_run
//! use msgr_core::config::ConfigBuilder;
//! use msgr_core::messenger::{Messenger, Policy, Stack};
//! use msgr_core::proto::{EntityName, EntityType};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = ConfigBuilder::new("osd.0")
//!     .set("ms_type", "async+dpdk")?
//!     .set("ms_dpdk_host_ipv4_addr", "198.18.0.2")?
//!     .set("ms_dpdk_extra_eal_args", "--no-pci --no-huge --no-shconf -m 512 --vdev=net_tap0,iface=dtap0")?
//!     .build()?;
//! let stack = Stack::start(msgr_stack_dpdk::backend(&cfg)?, cfg.ms_async_op_threads())?;
//! let server = Messenger::new(stack, EntityName::new(EntityType::Osd, 0), &cfg)?;
//! server.set_default_policy(Policy::stateless_server(0));
//! // The userspace TCP/IP stack's own address, not one the kernel owns.
//! println!("listening on {}", server.bind("198.18.0.2:0".parse()?)?);
//! server.wait();
//! # Ok(())
//! # }
//! ```
//!
//! What needs no port runs: the settings the `ms_dpdk_*` options make, and the EAL
//! command line and worker pinning they give.
//!
//! ```
//! use msgr_core::config::ConfigBuilder;
//! use msgr_stack_dpdk::DpdkConfig;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = ConfigBuilder::new("osd.0")
//!     .set("ms_dpdk_host_ipv4_addr", "10.88.0.1")?
//!     .set("ms_dpdk_netmask_ipv4_addr", "255.255.0.0")?
//!     .set("ms_dpdk_coremask", "0x6")?
//!     .set("ms_dpdk_extra_eal_args", "--no-pci --in-memory")?
//!     .build()?;
//! let dpdk = DpdkConfig::from_config(&cfg)?;
//! assert_eq!((dpdk.host.to_string(), dpdk.prefix_len), ("10.88.0.1".to_string(), 16));
//! assert_eq!(dpdk.eal_args(), ["msgr", "-c", "0x6", "-n", "4", "--no-pci", "--in-memory"]);
//! // A mask set by hand with a core per worker pins them: worker 0 on CPU 1, 1 on CPU 2.
//! assert_eq!(dpdk.pinning(2), Some(vec![1, 2]));
//!
//! // The stack's address is required.
//! let none = ConfigBuilder::new("osd.0").build()?;
//! let err = DpdkConfig::from_config(&none).unwrap_err();
//! assert!(err.to_string().starts_with("ms_dpdk_host_ipv4_addr"), "{err}");
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod config;
pub mod device;
pub mod dpdk;
pub mod socket;
pub mod steer;
pub mod worker;

use std::io;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use msgr_core::config::Config;
use msgr_core::event::PollingDriver;
use msgr_core::stack::{StackBackend, WorkerNet};

pub use config::DpdkConfig;
use device::{Frame, FramePort};
use dpdk::{Eal, Mbuf, Mempool, Port};
pub use worker::WorkerStats;
use worker::{NetSettings, NetSource, NetWorker, Shared};

/// Descriptors per rx and per tx queue.
const RING_SIZE: u16 = 1024;
/// Frames per burst.
const BURST: usize = 32;
/// Unsent frames a worker queues before smoltcp is told to wait.
const TX_LIMIT: usize = 512;
/// Mbufs each lcore keeps in its pool cache.
const POOL_CACHE: u32 = 256;
/// How late a worker's nap may end (Linux's default, 50 µs, is as long as a nap).
const TIMER_SLACK: Duration = Duration::from_micros(1);
/// How long a worker keeps polling without a nap after it last moved a frame.
const BUSY_WINDOW: Duration = Duration::from_micros(200);

impl Frame for Mbuf {
    fn data(&self) -> &[u8] {
        Mbuf::data(self)
    }

    fn append(&mut self, len: usize) -> Option<&mut [u8]> {
        Mbuf::append(self, len)
    }
}

/// One queue of a started port: the [`FramePort`] of one worker.
pub struct QueuePort {
    port: Arc<Port>,
    queue: u16,
    pool: Arc<Mempool>,
}

impl FramePort for QueuePort {
    type Frame = Mbuf;

    fn rx_burst(&mut self, out: &mut Vec<Mbuf>, max: usize) -> usize {
        self.port.rx_burst(self.queue, out, max)
    }

    fn alloc(&mut self) -> Option<Mbuf> {
        Mbuf::alloc(&self.pool)
    }

    fn tx_burst(&mut self, frames: &mut Vec<Mbuf>) -> usize {
        self.port.tx_burst(self.queue, frames)
    }
}

/// The pool of the stack running now (for leak checks and reporting).
static ACTIVE_POOL: Mutex<Option<Weak<Mempool>>> = Mutex::new(None);
/// Mbufs still in use when the last stack stopped, after its port was closed.
static LAST_LEAK: Mutex<Option<u32>> = Mutex::new(None);
/// What the workers of the stack running now share (for [`stack_stats`]).
static ACTIVE_SHARED: Mutex<Option<Weak<Shared<Mbuf>>>> = Mutex::new(None);
/// The counters of the last stack that stopped, added up over its workers.
static LAST_STATS: Mutex<Option<WorkerStats>> = Mutex::new(None);

/// The running stack's counters, added up over its workers as they last published them
/// (every `worker::SWEEP_EVERY`), or `None` when no DPDK stack runs. Among them, the TCP
/// payload bytes smoltcp copied between frames and its sockets' rings
/// ([`device::DeviceStats::rx_tcp_payload`], `tx_tcp_payload`): the copies inside the
/// TCP implementation, apart from the one each way the sockets report to the messenger.
pub fn stack_stats() -> Option<WorkerStats> {
    let g = ACTIVE_SHARED.lock().unwrap_or_else(|e| e.into_inner());
    g.as_ref().and_then(Weak::upgrade).map(|s| s.totals())
}

/// The counters of the last stack that stopped (final values), or `None` if none did.
pub fn stack_stats_at_last_shutdown() -> Option<WorkerStats> {
    *LAST_STATS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Mbufs of the running stack's pool in use now (in rx rings, queues and sockets), or
/// `None` when no DPDK stack runs.
pub fn mbufs_in_use() -> Option<u32> {
    let g = ACTIVE_POOL.lock().unwrap_or_else(|e| e.into_inner());
    g.as_ref().and_then(Weak::upgrade).map(|p| p.in_use())
}

/// Mbufs that were not back in the pool after the last stack stopped its workers and
/// closed its port (0 when nothing leaked), or `None` if no stack stopped yet.
pub fn mbufs_leaked_at_last_shutdown() -> Option<u32> {
    *LAST_LEAK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The DPDK stack: one port with a queue pair per worker.
pub struct DpdkStack {
    eal: &'static Eal,
    port: Option<Arc<Port>>,
    pool: Option<Arc<Mempool>>,
    shared: Arc<Shared<Mbuf>>,
    settings: NetSettings,
    workers: usize,
    idle_sleep: Duration,
    /// The CPU each worker is pinned to, if they are ([`DpdkConfig::pinning`]).
    pinning: Option<Vec<usize>>,
    coremask: String,
}

impl DpdkStack {
    /// Starts EAL (once per process), the pool and the port for `workers` workers.
    ///
    /// # Errors
    ///
    /// An EAL, pool or port error quoting DPDK's reason and what to change.
    pub fn new(cfg: &DpdkConfig, workers: usize) -> io::Result<Self> {
        let eal = dpdk::init(&cfg.eal_args()).map_err(io::Error::other)?;
        if dpdk::port_count() == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no DPDK port: bind a NIC to a DPDK driver, or add a virtual device to ms_dpdk_extra_eal_args \
                 (e.g. --vdev=net_tap0,iface=dtap0)",
            ));
        }
        let queues = u16::try_from(workers).map_err(|_| io::Error::other("too many workers"))?;
        let mbufs = cfg.mbufs_per_worker.saturating_mul(u32::from(queues));
        let pool = Mempool::new(eal, mbufs, POOL_CACHE).map_err(io::Error::other)?;
        let port = Port::start(cfg.port_id, queues, RING_SIZE, &pool).map_err(io::Error::other)?;
        *ACTIVE_POOL.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::downgrade(&pool));
        let shared = Arc::new(Shared::new(workers));
        *ACTIVE_SHARED.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::downgrade(&shared));
        let settings = NetSettings {
            mac: worker::mac_for(cfg.host),
            ip: cfg.host,
            prefix_len: cfg.prefix_len,
            gateway: cfg.gateway,
            tcp_buffer: cfg.tcp_buffer,
            burst: BURST,
            tx_limit: TX_LIMIT,
        };
        Ok(DpdkStack {
            eal,
            port: Some(Arc::new(port)),
            pool: Some(pool),
            shared,
            settings,
            workers,
            idle_sleep: cfg.idle_sleep,
            pinning: cfg.pinning(workers),
            coremask: cfg.coremask.clone(),
        })
    }
}

impl StackBackend for DpdkStack {
    fn name(&self) -> &'static str {
        "async+dpdk"
    }

    fn init_worker(&self, worker_id: usize) -> io::Result<WorkerNet> {
        // An lcore id gives the worker a mempool cache; without one it still works.
        let _ = self.eal.register_thread();
        // An idle worker naps for tens of microseconds; let the naps be that short.
        let _ = dpdk::set_timer_slack(TIMER_SLACK);
        if let Some(cpu) = self.pinning.as_ref().and_then(|p| p.get(worker_id)) {
            dpdk::pin_to_cpu(*cpu).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot pin DPDK worker {worker_id} to CPU {cpu} (ms_dpdk_coremask = {}): {e}; name CPUs this \
                         process may run on",
                        self.coremask
                    ),
                )
            })?;
        }
        let (Some(port), Some(pool)) = (&self.port, &self.pool) else {
            return Err(io::Error::other("the DPDK stack is stopping"));
        };
        let queue = u16::try_from(worker_id).map_err(|_| io::Error::other("worker id out of range"))?;
        let qp = QueuePort { port: Arc::clone(port), queue, pool: Arc::clone(pool) };
        let net = Arc::new(Mutex::new(NetWorker::new(
            worker_id,
            self.workers,
            qp,
            self.settings.clone(),
            Arc::clone(&self.shared),
        )));
        let driver = PollingDriver::with_max_idle_nap(NetSource::new(&net), BUSY_WINDOW, self.idle_sleep)?;
        Ok(WorkerNet { driver: Box::new(driver), sockets: Box::new(socket::DpdkSocketFactory::new(&net)) })
    }

    fn local_listen_table(&self) -> bool {
        true
    }
}

impl Drop for DpdkStack {
    /// The workers are gone by now (the network stack joins them first): frames still
    /// queued between workers are freed, the port is stopped and closed (its rings give
    /// their mbufs back), and what is then still out of the pool is a leak.
    fn drop(&mut self) {
        *LAST_STATS.lock().unwrap_or_else(|e| e.into_inner()) = Some(self.shared.totals());
        for inbox in &self.shared.inboxes {
            drop(std::mem::take(&mut *inbox.lock()));
        }
        if let Some(port) = self.port.take() {
            // Frames sent in the last moments (FINs, ACKs) may still sit in the rx rings;
            // a software PMD such as net_ring does not free what is left in its rings
            // when closed, so take them out first.
            let mut frames = Vec::new();
            for queue in 0..port.queues() {
                for _ in 0..1024 {
                    frames.clear();
                    if port.rx_burst(queue, &mut frames, BURST) == 0 {
                        break;
                    }
                }
            }
            drop(frames);
            drop(port);
        }
        if let Some(pool) = self.pool.take() {
            *LAST_LEAK.lock().unwrap_or_else(|e| e.into_inner()) = Some(pool.in_use());
        }
    }
}

/// Creates the backend for `cfg`.
///
/// # Errors
///
/// A bad `ms_dpdk_*` value, or an EAL/port start-up error quoting DPDK's reason.
pub fn backend(cfg: &Config) -> io::Result<Arc<dyn StackBackend>> {
    let dcfg = DpdkConfig::from_config(cfg)?;
    Ok(Arc::new(DpdkStack::new(&dcfg, cfg.ms_async_op_threads())?))
}
