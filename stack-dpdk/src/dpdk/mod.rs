//! A small safe wrapper over DPDK (`msgr-dpdk-sys`): EAL start-up, mbuf pools, mbufs and
//! ethdev ports with burst rx/tx. This module is the only place in the crate with `unsafe`.
//!
//! Lifecycle and ownership:
//! * [`init`] starts EAL once per process and returns a `&'static` [`Eal`]. DPDK cannot be
//!   initialised twice (nor again after `rte_eal_cleanup`, which this module never calls),
//!   so a second call with the same arguments returns the same [`Eal`] and one with other
//!   arguments fails with [`DpdkError::EalArgsMismatch`].
//! * [`Mempool::new`] creates a pool of packet mbufs, shared as `Arc<Mempool>`. Every
//!   [`Mbuf`] and every [`Port`] holds an `Arc` of the pool it uses, so a pool is freed only
//!   after the last buffer and port that can touch it are gone.
//! * [`pin_to_cpu`] and [`set_timer_slack`] place a polling worker thread: on a CPU of
//!   its own, woken from its naps on time.
//! * [`Port::start`] configures and starts one ethdev port; dropping the [`Port`] stops and
//!   closes it. Closing releases the port: a virtual device (`--vdev=...`) is gone for the
//!   rest of the process afterwards, and [`Port::start`] on its id fails.
//!
//! Threading: EAL threads and threads registered with [`Eal::register_thread`] use the
//! per-lcore mempool caches; any other thread works too, going to the shared pool ring
//! directly. [`Port::rx_burst`] and [`Port::tx_burst`] take `&self` and a queue id: use each
//! queue from one thread at a time (see [`Port`]).

#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod eal;
mod error;
mod mbuf;
mod mempool;
mod port;
mod thread;

pub use eal::{init, Eal};
pub use error::DpdkError;
pub use mbuf::Mbuf;
pub use mempool::Mempool;
pub use port::{port_by_name, port_count, ports, Port, PortInfo, PortStats};
pub use thread::{pin_to_cpu, set_timer_slack};
