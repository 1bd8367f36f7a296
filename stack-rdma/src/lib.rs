//! RDMA stack (ibverbs RC queue pairs) — `ms_type = async+rdma`.
//!
//! Done so far: the verbs layer.
//! * [`config`]: the `ms_async_rdma_*` options, typed.
//! * [`verbs`]: RAII wrappers over libibverbs (the crate's only `unsafe`).
//! * [`pool`]: registered-memory pool of fixed-size chunks.
//! * [`credit`]: credit-based flow control.
//! * [`poller`]: CQ polling with the `ms_async_rdma_polling_us` busy-poll window.
//! * [`qp`]: QP information exchanged over the TCP side channel, and RC bring-up.
//! * [`Device`]: start-up checks (device, port, GID, RLIMIT_MEMLOCK).
//!
//! The messenger-facing backend still reports "not implemented".
//!
//! TODO(issue 4), what remains:
//! 1. `RdmaWorker`: per-worker PD/CQs/comp channel and send/recv pools; an `EventDriver`
//!    that watches the completion channel fd (EpollDriver + channel fd as a file event),
//!    busy-polls the CQ for `ms_async_rdma_polling_us` before re-arming, and dispatches
//!    completions to sockets by QPN, signalling each socket's eventfd (as `stack/mem.rs`).
//! 2. `RdmaConnectedSocket`: TCP side channel (posix socket on the messenger's address)
//!    exchanging `QpInfo`, QP INIT→RTR→RTS, pre-posted receives, `send` copying into send
//!    chunks under `CreditFlow`, `read` from received chunks returning them (re-post +
//!    credits) when consumed; `needs_write_interest() == false`; eventfd `fd()`.
//! 3. `RdmaServerSocket`: listening TCP socket; accept = TCP accept + QP exchange.
//! 4. Fault path: failed work completion / QP in ERR faults the connection; teardown moves
//!    the QP to ERR, drains flushed completions, returns chunks, then drops (QP → CQ →
//!    channel; MR → PD → context, enforced by the `Arc` graph in `verbs`).
//! 5. SRQ (`ms_async_rdma_support_srq`) — receives are per-QP for now.
//! 6. Options into `msgr/src/config/options.rs` (then `Config::set` accepts them), the
//!    VM test suite and benchmarks of issue 4, `docker/`.

pub mod config;
pub mod credit;
pub mod poller;
pub mod pool;
pub mod qp;
pub mod verbs;

use std::io;
use std::sync::Arc;

use msgr::config::Config;
use msgr::stack::StackBackend;

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
    /// RLIMIT_MEMLOCK large enough for the configured pools (the soft limit is raised when
    /// the hard limit or privileges allow).
    ///
    /// # Errors
    ///
    /// An `io::Error` that says what to change.
    pub fn open(cfg: &RdmaConfig) -> io::Result<Device> {
        let needed = cfg.registered_bytes();
        config::check_memlock_limit(verbs::raise_memlock(needed)?, needed)?;
        let ctx = verbs::Context::open(cfg.device_name.as_deref())?;
        let port = ctx.active_port(cfg.port_num)?;
        let gid = ctx.query_gid(cfg.port_num, cfg.gid_idx)?;
        Ok(Device { ctx, port_num: cfg.port_num, port, gid_idx: cfg.gid_idx, gid })
    }
}

/// Creates the backend for `cfg`.
///
/// # Errors
///
/// A bad `ms_async_rdma_*` value; otherwise "not implemented" until the sockets exist.
pub fn backend(cfg: &Config) -> io::Result<Arc<dyn StackBackend>> {
    let _rdma = RdmaConfig::from_config(cfg)?;
    Err(msgr::stack::not_implemented("async+rdma"))
}
