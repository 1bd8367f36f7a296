//! The contract every network stack implements.
//!
//! A stack moves bytes and nothing else: msgr2 framing, sessions and dispatch live above
//! it and are identical on every stack. As in Ceph, every stack offers a byte-stream
//! [`ConnectedSocket`] (RDMA and DPDK included) whose readiness is reported through the
//! worker's [`EventDriver`] by a file descriptor — a kernel
//! socket for posix, an eventfd signalled by the completion poller for RDMA, a userspace
//! descriptor owned by the polling driver for DPDK.
//!
//! Objects returned by a [`WorkerNet`] are created on, and used only from, the worker
//! thread that owns them; the `Send` bound on [`ConnectedSocket`] exists so that stacks
//! whose sockets may migrate (posix: an accepted fd handed to the least-loaded worker)
//! can do so.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::RawFd;

use crate::event::EventDriver;

/// Socket options a messenger asks of a stack (Ceph's `SocketOptions`).
#[derive(Clone, Debug)]
pub struct SocketOptions {
    /// `ms_tcp_nodelay`.
    pub nodelay: bool,
    /// `ms_tcp_rcvbuf`; 0 leaves the kernel default.
    pub rcvbuf: usize,
    /// `ms_tcp_listen_backlog`.
    pub listen_backlog: u32,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions { nodelay: true, rcvbuf: 0, listen_backlog: 512 }
    }
}

/// A connected, non-blocking byte stream.
///
/// Every method must return promptly: "would block" is reported as
/// [`io::ErrorKind::WouldBlock`], never by waiting.
pub trait ConnectedSocket: Send {
    /// Descriptor the worker's event driver watches for readability/writability.
    fn fd(&self) -> RawFd;
    /// For an outgoing connection: `Ok(true)` once the connection is established,
    /// `Ok(false)` while it is still in progress, `Err` if it failed (e.g. refused).
    fn is_connected(&mut self) -> io::Result<bool>;
    /// Reads available bytes; `Ok(0)` means the peer closed the stream.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes as much of `bufs` as the stack accepts now, in order; returns the count.
    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Shuts both directions down; further I/O fails. Idempotent.
    fn shutdown(&mut self);
    /// The peer's address, if known.
    fn peer_addr(&self) -> Option<SocketAddr>;
    /// Our side's address, if known.
    fn local_addr(&self) -> Option<SocketAddr>;
    /// True when the worker must ask the driver for write readiness after a short send
    /// (kernel sockets). Sockets whose fd is an eventfd signal "space freed" through
    /// readability instead (mem, RDMA); an eventfd is always writable to epoll, so
    /// asking for it would spin the worker.
    fn needs_write_interest(&self) -> bool {
        true
    }
    /// True when a read that returned less than it was offered emptied the socket and
    /// readiness is level-triggered, so the worker stops there instead of reading again
    /// only to see `WouldBlock` (kernel TCP: one syscall saved per message).
    fn short_read_drains(&self) -> bool {
        false
    }
}

/// A listening socket.
pub trait ServerSocket: Send {
    /// Descriptor that becomes readable when a connection is waiting.
    fn fd(&self) -> RawFd;
    /// Accepts one pending connection (non-blocking; `WouldBlock` when none).
    fn accept(&mut self) -> io::Result<(Box<dyn ConnectedSocket>, SocketAddr)>;
    /// The address actually bound (port filled in).
    fn local_addr(&self) -> SocketAddr;
}

/// The per-worker half of a stack, created on the worker thread.
pub trait SocketFactory {
    /// Binds and listens on `addr`.
    fn listen(&mut self, addr: SocketAddr, opts: &SocketOptions) -> io::Result<Box<dyn ServerSocket>>;
    /// Starts a non-blocking connect to `addr`.
    fn connect(&mut self, addr: SocketAddr, opts: &SocketOptions) -> io::Result<Box<dyn ConnectedSocket>>;
}

/// What a stack gives each worker thread: its event driver flavour and socket factory.
pub struct WorkerNet {
    /// epoll for posix, epoll + busy-poll window for RDMA, a polling driver for DPDK.
    pub driver: Box<dyn EventDriver>,
    /// Creates sockets bound to this worker.
    pub sockets: Box<dyn SocketFactory>,
}

/// A network stack implementation (posix, rdma, dpdk, mem).
pub trait StackBackend: Send + Sync + 'static {
    /// The `ms_type` this backend serves, e.g. `"async+posix"`.
    fn name(&self) -> &'static str;
    /// Called once on each worker thread before its event loop starts.
    fn init_worker(&self, worker_id: usize) -> io::Result<WorkerNet>;
    /// True when every worker must listen itself and keep the connections it accepts
    /// (DPDK: a connection is bound to its worker's queue). False when one worker
    /// listens and accepted sockets go to the least-loaded worker (posix).
    fn local_listen_table(&self) -> bool {
        false
    }
}

pub mod inject;
pub mod mem;
pub mod worker;

/// The error a stack that is not implemented yet returns from start-up, so asking for
/// it fails plainly instead of pretending to work.
pub fn not_implemented(ms_type: &str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, format!("ms_type = {ms_type}: this stack is not implemented yet"))
}
