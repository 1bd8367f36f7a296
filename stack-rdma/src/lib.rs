//! RDMA stack (ibverbs RC queue pairs) — `ms_type = async+rdma`.
//!
//! msgr2 runs unchanged over it: every connection is a byte stream, as on posix.
//! * [`config`]: the `ms_async_rdma_*` options, typed.
//! * [`verbs`]: RAII wrappers over libibverbs (the crate's only `unsafe`).
//! * [`pool`]: registered-memory pools of fixed-size chunks, registered as needed.
//! * [`credit`]: credit-based flow control (a sender never overruns posted receives).
//! * [`qp`], [`handshake`]: QP information, the TCP side-channel exchange, RC bring-up.
//! * [`worker`]: per-worker PD/CQs/pools, connections, completion handling; its
//!   [`worker::RdmaSource`] is the `CompletionSource` of the worker's
//!   `msgr::event::PollingDriver` (completion channel + `ms_async_rdma_polling_us`
//!   busy-poll window).
//! * [`socket`]: the `ConnectedSocket` / `ServerSocket` contract.
//!
//! Not implemented: a shared receive queue (`ms_async_rdma_support_srq` is read and
//! ignored: each connection posts its own `ms_async_rdma_conn_credits` receives, which is
//! what makes per-connection credits exact); zero-copy sends of large buffers (every byte
//! is copied into a registered chunk); handing received chunks to the reader without a
//! copy.

pub mod config;
pub mod credit;
pub mod handshake;
pub mod pool;
pub mod qp;
pub mod socket;
pub mod verbs;
pub mod worker;

use std::io;
use std::sync::Arc;

use msgr::config::Config;
use msgr::event::PollingDriver;
use msgr::stack::{StackBackend, WorkerNet};

pub use config::{RdmaConfig, RdmaConfigError};

/// An opened, checked RDMA device port: what every worker shares.
pub struct Device {
    /// The device context.
    pub ctx: Arc<verbs::Context>,
    /// The configured port.
    pub port_num: u8,
    /// The port's properties (ACTIVE).
    pub port: verbs::PortInfo,
    /// The configured GID index.
    pub gid_idx: u8,
    /// The GID at that index.
    pub gid: [u8; 16],
}

impl Device {
    /// Opens and checks the device of `cfg`: device present, port ACTIVE, GID index set,
    /// RLIMIT_MEMLOCK large enough for the pools of `workers` workers at their largest
    /// (the soft limit is raised when the hard limit or privileges allow).
    ///
    /// # Errors
    ///
    /// An `io::Error` that says what to change.
    pub fn open(cfg: &RdmaConfig, workers: usize) -> io::Result<Device> {
        let needed = cfg.registered_bytes().saturating_mul(workers as u64);
        config::check_memlock_limit(verbs::raise_memlock(needed)?, needed)?;
        let ctx = verbs::Context::open(cfg.device_name.as_deref())?;
        let port = ctx.active_port(cfg.port_num)?;
        let gid = ctx.query_gid(cfg.port_num, cfg.gid_idx)?;
        Ok(Device { ctx, port_num: cfg.port_num, port, gid_idx: cfg.gid_idx, gid })
    }
}

/// The RDMA stack: one device shared by all workers, each with its own PD, CQs and pools.
pub struct RdmaStack {
    dev: Arc<Device>,
    cfg: Arc<RdmaConfig>,
}

impl RdmaStack {
    /// Opens the device of `cfg` for `workers` workers.
    ///
    /// # Errors
    ///
    /// As [`Device::open`].
    pub fn new(cfg: RdmaConfig, workers: usize) -> io::Result<Self> {
        let dev = Device::open(&cfg, workers)?;
        Ok(RdmaStack { dev: Arc::new(dev), cfg: Arc::new(cfg) })
    }
}

impl StackBackend for RdmaStack {
    fn name(&self) -> &'static str {
        "async+rdma"
    }

    fn init_worker(&self, _worker_id: usize) -> io::Result<WorkerNet> {
        let worker = worker::WorkerRdma::new(&self.dev, &self.cfg)?;
        socket::set_current(&worker);
        let driver = PollingDriver::new(worker::RdmaSource::new(&worker), self.cfg.polling)?;
        Ok(WorkerNet { driver: Box::new(driver), sockets: Box::new(socket::RdmaSocketFactory::new(&worker)) })
    }

    fn local_listen_table(&self) -> bool {
        // One listener hands side channels to the least-loaded worker; the QP is created
        // on whichever worker takes the connection.
        false
    }
}

/// Creates the backend for `cfg`.
///
/// # Errors
///
/// A bad combination of `ms_async_rdma_*` values, or a device start-up error that says
/// what to change (no device, port down, GID index empty, RLIMIT_MEMLOCK too small).
pub fn backend(cfg: &Config) -> io::Result<Arc<dyn StackBackend>> {
    let rdma = RdmaConfig::from_config(cfg)?;
    Ok(Arc::new(RdmaStack::new(rdma, cfg.ms_async_op_threads())?))
}
