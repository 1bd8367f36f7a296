//! The contract every network stack implements.
//!
//! A stack moves bytes and nothing else: msgr2 framing, sessions and dispatch live above
//! it and are identical on every stack. As in Ceph, every stack offers a byte-stream
//! [`ConnectedSocket`] (RDMA and DPDK included). How a worker learns that a socket is
//! ready is the stack's choice, made when the socket is registered on the worker that
//! will own it ([`ConnectedSocket::register`]): a kernel descriptor its event driver
//! watches (posix), or a [`Token`](crate::event::Token) whose readiness the stack posts
//! to the worker's [`Readiness`] (RDMA, DPDK, the in-memory stack) — no descriptor per
//! socket, no system call per message.
//!
//! Received bytes reach the protocol in the way that costs the stack the fewest copies
//! ([`RecvMode`]): read into a slice the worker gives (the kernel copies), appended by
//! the stack to the connection's buffer (one copy out of a userspace TCP ring), or
//! handed up as the stack's own buffers (RDMA's registered chunks, no copy). Sends take
//! owned [`Bytes`] ([`ConnectedSocket::send_owned`]), so a stack that can transmit
//! straight from them keeps them until the device is done.
//!
//! Objects returned by a [`WorkerNet`] are created on, and used only from, the worker
//! thread that owns them; the `Send` bound on [`ConnectedSocket`] exists so that stacks
//! whose sockets may migrate (posix: an accepted socket handed to the least-loaded
//! worker, which then registers it) can do so.
//!
//! Nothing here knows the messenger: a stack is written against these traits and
//! [`crate::event`] alone. They are public for that reason (the stack crates, or a
//! stack of your own, implement them); a daemon only picks a stack.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};

use crate::event::{EventDriver, EventSource, Readiness};

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

/// How a socket hands received bytes up; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvMode {
    /// [`ConnectedSocket::read`] into a slice the worker provides (kernel sockets).
    Slice,
    /// [`ConnectedSocket::read_into`] appends to the connection's stream buffer (a
    /// userspace TCP copies once out of its ring); large frames still use `read`.
    Append,
    /// [`ConnectedSocket::recv_owned`] hands up the stack's own buffers (no copy).
    Owned,
}

/// Bytes a stack copied from one buffer to another, since it was last asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// On receive (e.g. out of a TCP ring).
    pub rx: u64,
    /// On send (e.g. into a registered buffer or a TCP ring).
    pub tx: u64,
}

/// Most buffers one default [`ConnectedSocket::send_owned`] passes to `send`.
pub const MAX_SEND_PARTS: usize = 64;

/// A connected, non-blocking byte stream.
///
/// Every method must return promptly: "would block" is reported as
/// [`io::ErrorKind::WouldBlock`], never by waiting.
pub trait ConnectedSocket: Send {
    /// Binds the socket to the worker whose [`Readiness`] is `ready` and says how that
    /// worker learns of its readiness: a descriptor for its driver, or a token the
    /// stack posts to `ready` (level semantics: readable while a read would not block,
    /// writable while a send would not, both on error or end of stream). Called once, on
    /// the owning worker's thread, before any I/O.
    fn register(&mut self, ready: &Readiness) -> io::Result<EventSource>;
    /// For an outgoing connection: `Ok(true)` once the connection is established,
    /// `Ok(false)` while it is still in progress, `Err` if it failed (e.g. refused).
    fn is_connected(&mut self) -> io::Result<bool>;
    /// How this socket hands received bytes up.
    fn recv_mode(&self) -> RecvMode {
        RecvMode::Slice
    }
    /// Reads available bytes; `Ok(0)` means the peer closed the stream.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Appends up to `max` available bytes to `dst`; `Ok(0)` means the peer closed the
    /// stream. How a [`RecvMode::Append`] socket reads; a [`RecvMode::Slice`] socket
    /// is asked to when a deep pipeline fills its reads, so that they land where the
    /// messages will be, without a copy. This default zeroes the room first and reads
    /// into it with [`ConnectedSocket::read`]; a kernel socket reads into the
    /// uninitialised room instead.
    fn read_into(&mut self, dst: &mut BytesMut, max: usize) -> io::Result<usize> {
        let at = dst.len();
        dst.resize(at + max, 0);
        let r = self.read(&mut dst[at..]);
        dst.truncate(at + *r.as_ref().unwrap_or(&0));
        r
    }
    /// [`RecvMode::Owned`]: the next received bytes, as the stack's own buffer; an
    /// empty buffer means the peer closed the stream.
    fn recv_owned(&mut self) -> io::Result<Bytes> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "this socket does not hand up owned buffers"))
    }
    /// Writes as much of `bufs` as the stack accepts now, in order; returns the count.
    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Sends from the front of `queue`, removing (or advancing) what was accepted, and
    /// returns how many bytes that was. A stack that transmits straight from the
    /// buffers keeps clones of them until it is done; the default copies through
    /// [`send`](ConnectedSocket::send).
    fn send_owned(&mut self, queue: &mut VecDeque<Bytes>) -> io::Result<usize> {
        // The array is initialised whole on every call: a message or two at a time
        // (depth 1) takes a few parts, and 64 slots cost more than the write's setup.
        let sent = if queue.len() <= FEW_SEND_PARTS {
            send_parts::<FEW_SEND_PARTS>(self, queue)?
        } else {
            send_parts::<MAX_SEND_PARTS>(self, queue)?
        };
        consume(queue, sent);
        Ok(sent)
    }
    /// Shuts both directions down; further I/O fails. Idempotent.
    fn shutdown(&mut self);
    /// The peer's address, if known.
    fn peer_addr(&self) -> Option<SocketAddr>;
    /// Our side's address, if known.
    fn local_addr(&self) -> Option<SocketAddr>;
    /// True when a read that returned less than it was offered emptied the socket and
    /// readiness is level-triggered, so the worker stops there instead of reading again
    /// only to see `WouldBlock` (kernel TCP: one syscall saved per message).
    fn short_read_drains(&self) -> bool {
        false
    }
    /// The worker has nothing to do until `n` more bytes are here (the rest of a large
    /// frame; 1 once none is pending). A stack that can reports the socket readable only
    /// once that many are queued (or the peer closed), so a large frame arriving in
    /// pieces costs one wake-up, not one per piece. Never more than the peer is about to
    /// send: the caller asks for what completes a frame already started, and asks
    /// again each time it stops reading, drained or not (a wait left from an earlier
    /// frame could exceed what is queued). Default: nothing (readable on any byte).
    fn wake_at(&mut self, n: usize) {
        let _ = n;
    }

    /// Bytes this socket copied since the last call (for "bytes copied" counters).
    fn take_copied(&mut self) -> Copied {
        Copied::default()
    }
}

/// Parts a write of a message or two takes (header piece, data, epilogue, …).
const FEW_SEND_PARTS: usize = 8;

/// One vectored [`ConnectedSocket::send`] of the first `N` (at most) buffers of
/// `queue`, from an array on the stack: it allocates nothing.
fn send_parts<const N: usize>(
    sock: &mut (impl ConnectedSocket + ?Sized),
    queue: &VecDeque<Bytes>,
) -> io::Result<usize> {
    let mut iov = [IoSlice::new(&[]); N];
    let mut n = 0;
    for (slot, b) in iov.iter_mut().zip(queue.iter()) {
        *slot = IoSlice::new(b);
        n += 1;
    }
    sock.send(&iov[..n])
}

/// Removes the first `n` bytes from `queue` (whole buffers, then the front of one).
pub fn consume(queue: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = queue.front_mut() else { return };
        if n >= front.len() {
            n -= front.len();
            queue.pop_front();
        } else {
            front.advance(n);
            return;
        }
    }
}

/// A listening socket.
pub trait ServerSocket: Send {
    /// As [`ConnectedSocket::register`]: readable while a connection is waiting.
    fn register(&mut self, ready: &Readiness) -> io::Result<EventSource>;
    /// Accepts one pending connection (non-blocking; `WouldBlock` when none). The socket
    /// is not registered yet: the worker that will own it registers it.
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
pub(crate) mod worker;

// A user holds a running stack as `messenger::Stack` (a `NetworkStack` whose workers run
// messengers); it is reachable here so that its methods are documented. Its workers and
// their context stay private to the core.
pub use worker::NetworkStack;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_takes_whole_buffers_then_part_of_one() {
        let mut q: VecDeque<Bytes> = ["abc", "de", "fgh"].iter().map(|s| Bytes::from_static(s.as_bytes())).collect();
        consume(&mut q, 4);
        assert_eq!(q, [Bytes::from_static(b"e"), Bytes::from_static(b"fgh")]);
        consume(&mut q, 0);
        assert_eq!(q.len(), 2);
        consume(&mut q, 10);
        assert!(q.is_empty());
    }
}
