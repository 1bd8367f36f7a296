//! RDMA stack (ibverbs RC queue pairs) — `ms_type = async+rdma`.
//!
//! msgr2 runs unchanged over it: every connection is a byte stream, as on posix. The
//! data path is Ceph's (`docs/RDMA_WIRE.md`): SEND-only chunks of at most
//! `ms_async_rdma_buffer_size`, no immediate data, no credits — RNR retries and bounded
//! send queues are the flow control — and a 0-byte SEND to close. It bypasses the kernel
//! and copies as little as it can:
//! * receives land in chunks of a per-worker pool posted to one shared receive queue per
//!   worker, and each chunk is handed up as the message buffer itself (no copy), back to
//!   the pool when the last slice of it is dropped;
//! * SENDs are built from the queued `Bytes`: small ones inline, payloads that already
//!   live in this worker's registered memory (an echoed receive) by reference, the rest
//!   copied once into a registered chunk; a segment is never split across SENDs when it
//!   fits in one, so it lands whole in the peer's receive chunk;
//! * a busy worker makes no system call per message: it polls its CQs, posts readiness
//!   to token sockets and looks at kernel fds (the side channels, the completion
//!   channel) only now and then.
//!
//! Modules:
//! * [`config`], [`sizing`]: the `ms_async_rdma_*` options, and the queue and pool sizes
//!   they give on a device.
//! * [`verbs`]: RAII wrappers over libibverbs, and the only way to post work: with the
//!   buffers it uses, owned until its completion (the crate's only `unsafe`).
//! * [`pool`]: registered chunk pools; received chunks as `Bytes`.
//! * [`plan`]: cutting the byte stream into SENDs.
//! * [`wrid`], [`slab`], [`qpn`]: work request ids with generations, the send-context
//!   slab, QP numbers and their quarantine — how stale completions are told apart.
//! * [`meta`], [`exchange`]: Ceph's 65-byte queue-pair meta and its exchange over the
//!   TCP side channel (client hello, server reply, client ACK).
//! * [`qp`]: RC bring-up with Ceph's attributes.
//! * [`close`]: a connection's phases and Ceph's close (0-byte SEND, QP to ERROR, side
//!   channel closed; the peer's end read as end-of-file after its data).
//! * [`worker`]: per-worker PD/CQs/SRQ/pools, connections, completion handling; its
//!   [`worker::RdmaSource`] is the `CompletionSource` of the worker's
//!   `msgr_core::event::PollingDriver` (completion channel + `ms_async_rdma_polling_us`
//!   busy-poll window).
//! * [`socket`]: the `ConnectedSocket` / `ServerSocket` contract.
//!
//! Ceph's wire end to end: the side channel speaks Ceph's meta exchange, the data path
//! Ceph's SEND-only chunks; CI runs it against a ceph-mon on Ceph's own `async+rdma`.
//! Not yet: RDMA-CM/iWARP, OSDs.
//!
//! # Examples
//!
//! A daemon gets this stack from the `msgr` crate (its `rdma` feature and `ms_type =
//! async+rdma`). By hand, [`backend`] opens the device the configuration names and
//! `Stack::start` runs the workers on it. That needs an RDMA device (soft-RoCE will do:
//! `rdma link add rxe0 type rxe netdev lo`, as `ci/rxe-vm/` sets up), so this example is
//! only compiled, not run by `cargo test`:
//!
//! ```no_run
//! use msgr_core::config::ConfigBuilder;
//! use msgr_core::messenger::{Messenger, Policy, Stack};
//! use msgr_core::proto::{EntityName, EntityType};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = ConfigBuilder::new("osd.0")
//!     .set("ms_type", "async+rdma")?
//!     .set("ms_async_rdma_device_name", "rxe0")?
//!     .set("ms_async_rdma_gid_idx", "1")?
//!     .build()?;
//! let stack = Stack::start(msgr_stack_rdma::backend(&cfg)?, cfg.ms_async_op_threads())?;
//! let server = Messenger::new(stack, EntityName::new(EntityType::Osd, 0), &cfg)?;
//! server.set_default_policy(Policy::stateless_server(0));
//! // Peers reach it on TCP there first (the side channel), then over the queue pair.
//! println!("listening on {}", server.bind("127.0.0.1:0".parse()?)?);
//! server.wait();
//! # Ok(())
//! # }
//! ```
//!
//! What needs no device runs: the settings the `ms_async_rdma_*` options make, and the
//! queue-pair meta two ends swap before the first SEND.
//!
//! ```
//! use msgr_core::config::ConfigBuilder;
//! use msgr_stack_rdma::meta::{CephMeta, META_LEN};
//! use msgr_stack_rdma::RdmaConfig;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = ConfigBuilder::new("osd.0")
//!     .set("ms_async_rdma_buffer_size", "64K")?
//!     .set("ms_async_rdma_send_buffers", "256")?
//!     .set("ms_async_rdma_receive_buffers", "256")?
//!     .build()?;
//! let rdma = RdmaConfig::from_config(&cfg)?;
//! // The most each worker registers (and locks): what RLIMIT_MEMLOCK must allow.
//! assert_eq!(rdma.registered_bytes(), 64 * 1024 * 512);
//!
//! // Each option is valid alone, but a pool of one send chunk cannot work.
//! let one = ConfigBuilder::new("osd.0").set("ms_async_rdma_send_buffers", "1")?.build()?;
//! let err = RdmaConfig::from_config(&one).unwrap_err();
//! assert!(err.to_string().starts_with("ms_async_rdma_send_buffers = 1"), "{err}");
//!
//! let meta = CephMeta { lid: 0, qpn: 0x11, psn: 0x22, peer_qpn: 0, gid: [0; 16] };
//! let wire = meta.encode();
//! assert_eq!(wire.len(), META_LEN);
//! assert_eq!(CephMeta::parse(&wire)?, meta);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod close;
pub mod config;
pub mod exchange;
pub mod meta;
pub mod plan;
pub mod pool;
pub mod qp;
pub mod qpn;
pub mod sizing;
pub mod slab;
pub mod socket;
pub mod verbs;
pub mod worker;
pub mod wrid;

use std::io;
use std::sync::Arc;

use msgr_core::config::Config;
use msgr_core::event::{EventDriver, PollingDriver};
use msgr_core::stack::{StackBackend, WorkerNet};

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
        // Chunks coming back from other threads wake the worker if it ran short of them.
        worker::lock(&worker).set_waker(driver.parker());
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
