//! The posix network stack (`ms_type = async+posix`): kernel TCP sockets watched by epoll.
//!
//! Every socket is non-blocking and close-on-exec. Sends go out through one vectored
//! `sendmsg(MSG_NOSIGNAL)` so that several queued frames leave in a single syscall and a
//! vanished peer surfaces as `EPIPE` instead of killing the process with `SIGPIPE`.
//!
//! Everything goes through `socket2` and `std`, but for a few `unsafe` blocks: reads
//! and sends are plain `recvfrom`/`sendmsg` system calls (the `sys` module: glibc's
//! wrappers switch pthread cancellation on and off around each, work msgr never
//! needs); a read may land in a buffer's uninitialised room (`read_into`); and
//! SO_RCVLOWAT is set by hand, as `socket2` does not offer it (`wake_at`).
//!
//! A daemon gets this stack from the `msgr` crate by `ms_type` (`msgr::stack_for`); to
//! start it by hand, hand a [`PosixStack`] to [`Stack::start`]. A server and a client
//! messenger exchanging one ping over loopback, on one worker:
//!
//! ```
//! use std::sync::{mpsc, Arc};
//! use std::time::Duration;
//!
//! use msgr_core::config::Config;
//! use msgr_core::message::{MPing, Message, TypedMessage};
//! use msgr_core::messenger::{ConnectionRef, Dispatcher, Messenger, Policy, Stack};
//! use msgr_core::proto::{EntityAddrVec, EntityName, EntityType};
//! use msgr_stack_posix::PosixStack;
//!
//! /// Sends every message back on the connection it came from.
//! struct Echo;
//! impl Dispatcher for Echo {
//!     fn ms_dispatch(&self, con: &ConnectionRef, m: &Message) -> bool {
//!         let _ = con.send_message(m.clone());
//!         true
//!     }
//! }
//!
//! /// Hands every message it gets to the code below.
//! struct Inbox(mpsc::Sender<Message>);
//! impl Dispatcher for Inbox {
//!     fn ms_dispatch(&self, _con: &ConnectionRef, m: &Message) -> bool {
//!         let _ = self.0.send(m.clone());
//!         true
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let stack = Stack::start(Arc::new(PosixStack::new()), 1)?;
//! assert_eq!((stack.name(), stack.num_workers()), ("async+posix", 1));
//! let cfg = Config::default();
//!
//! let server = Messenger::new(Arc::clone(&stack), EntityName::new(EntityType::Osd, 0), &cfg)?;
//! server.set_default_policy(Policy::stateless_server(0));
//! server.add_dispatcher_tail(Arc::new(Echo));
//! // Port 0: the first free port of `ms_bind_port_min..=ms_bind_port_max`, as in Ceph.
//! let addr = server.bind("127.0.0.1:0".parse()?)?;
//!
//! let client = Messenger::new(Arc::clone(&stack), EntityName::new(EntityType::Client, -1), &cfg)?;
//! client.set_default_policy(Policy::lossy_client(0));
//! let (tx, rx) = mpsc::channel();
//! client.add_dispatcher_tail(Arc::new(Inbox(tx)));
//! let con = client.connect_to(EntityType::Osd, &EntityAddrVec::single(addr))?;
//! con.send_message(MPing::new("ping".into()).encode())?;
//! let reply = rx.recv_timeout(Duration::from_secs(30))?;
//! assert_eq!(MPing::decode(&reply)?.payload, "ping");
//!
//! for m in [&client, &server] {
//!     m.shutdown();
//!     m.wait();
//! }
//! # Ok(())
//! # }
//! ```
//!
//! [`Stack::start`]: msgr_core::messenger::Stack::start

#![deny(unsafe_code)]
#![warn(missing_docs)]

use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use bytes::BytesMut;
use msgr_core::event::{EpollDriver, EventSource, Readiness};
use msgr_core::stack::{ConnectedSocket, ServerSocket, SocketFactory, SocketOptions, StackBackend, WorkerNet};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

mod sys;

/// Linux refuses `sendmsg` with more iovecs than this (`UIO_MAXIOV`) with `EMSGSIZE`;
/// sending a prefix instead is just a short write the caller already handles.
const MAX_IOVECS: usize = 1024;

/// The posix stack: plain kernel TCP, one epoll instance per worker.
#[derive(Clone, Copy, Debug, Default)]
pub struct PosixStack;

impl PosixStack {
    /// Creates the stack; it holds no state of its own.
    pub fn new() -> Self {
        PosixStack
    }
}

impl StackBackend for PosixStack {
    fn name(&self) -> &'static str {
        "async+posix"
    }

    fn init_worker(&self, _worker_id: usize) -> io::Result<WorkerNet> {
        Ok(WorkerNet { driver: Box::new(EpollDriver::new()?), sockets: Box::new(PosixSocketFactory::new()) })
    }

    fn local_listen_table(&self) -> bool {
        // Any worker can serve a kernel socket, so one listener feeds them all.
        false
    }
}

/// Creates kernel TCP sockets for one worker.
#[derive(Clone, Copy, Debug, Default)]
pub struct PosixSocketFactory;

impl PosixSocketFactory {
    /// Creates a factory; kernel sockets need no per-worker state.
    pub fn new() -> Self {
        PosixSocketFactory
    }
}

/// A non-blocking TCP stream socket; `socket2::Socket::new` already sets `SOCK_CLOEXEC`.
fn new_tcp_socket(addr: &SocketAddr) -> io::Result<Socket> {
    Socket::new(Domain::for_address(*addr), Type::STREAM.nonblocking(), Some(Protocol::TCP))
}

fn apply_rcvbuf(sock: &Socket, opts: &SocketOptions) -> io::Result<()> {
    if opts.rcvbuf != 0 {
        sock.set_recv_buffer_size(opts.rcvbuf)?;
    }
    Ok(())
}

fn inet_addr(addr: &SockAddr) -> io::Result<SocketAddr> {
    addr.as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "socket address is not an IPv4/IPv6 address"))
}

fn is_in_progress(e: &io::Error) -> bool {
    // EINTR on a non-blocking connect means the kernel carries on asynchronously,
    // exactly like EINPROGRESS.
    matches!(e.raw_os_error(), Some(libc::EINPROGRESS) | Some(libc::EINTR)) || e.kind() == io::ErrorKind::WouldBlock
}

/// Retries an operation interrupted by a signal; it never blocks, so the retry is cheap.
fn retry_eintr<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn shut_down_error() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "socket was shut down")
}

impl PosixSocketFactory {
    /// [`SocketFactory::listen`], as the concrete type (for stacks that use kernel TCP
    /// underneath, e.g. RDMA's side channel).
    pub fn listen_tcp(&mut self, addr: SocketAddr, opts: &SocketOptions) -> io::Result<PosixServerSocket> {
        let sock = new_tcp_socket(&addr)?;
        // Lets a restarted daemon rebind while old connections sit in TIME_WAIT; it does
        // not allow two live listeners, so a taken port still fails with AddrInUse.
        sock.set_reuse_address(true)?;
        // Set before listen so accepted sockets inherit it and window scaling is
        // negotiated for the requested size.
        apply_rcvbuf(&sock, opts)?;
        sock.bind(&addr.into())?;
        let backlog = i32::try_from(opts.listen_backlog).unwrap_or(i32::MAX);
        sock.listen(backlog)?;
        let local = inet_addr(&sock.local_addr()?)?;
        Ok(PosixServerSocket { sock, local, opts: opts.clone() })
    }

    /// [`SocketFactory::connect`], as the concrete type.
    pub fn connect_tcp(&mut self, addr: SocketAddr, opts: &SocketOptions) -> io::Result<PosixConnectedSocket> {
        let sock = new_tcp_socket(&addr)?;
        sock.set_tcp_nodelay(opts.nodelay)?;
        // Must precede connect: the window scale is fixed by the SYN.
        apply_rcvbuf(&sock, opts)?;
        let connected = match sock.connect(&addr.into()) {
            Ok(()) => true,
            Err(e) if is_in_progress(&e) => false,
            Err(e) => return Err(e),
        };
        Ok(PosixConnectedSocket::new(sock, connected, addr))
    }
}

impl SocketFactory for PosixSocketFactory {
    fn listen(&mut self, addr: SocketAddr, opts: &SocketOptions) -> io::Result<Box<dyn ServerSocket>> {
        Ok(Box::new(self.listen_tcp(addr, opts)?))
    }

    fn connect(&mut self, addr: SocketAddr, opts: &SocketOptions) -> io::Result<Box<dyn ConnectedSocket>> {
        Ok(Box::new(self.connect_tcp(addr, opts)?))
    }
}

/// A listening kernel TCP socket.
#[derive(Debug)]
pub struct PosixServerSocket {
    sock: Socket,
    local: SocketAddr,
    opts: SocketOptions,
}

impl AsRawFd for PosixServerSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl PosixServerSocket {
    /// [`ServerSocket::accept`], as the concrete type.
    pub fn accept_tcp(&mut self) -> io::Result<(PosixConnectedSocket, SocketAddr)> {
        // socket2 uses accept4(SOCK_CLOEXEC) on Linux, so no window exists in which a
        // fork+exec elsewhere in the process could inherit the descriptor.
        let (sock, peer) = retry_eintr(|| self.sock.accept())?;
        let peer = inet_addr(&peer)?;
        // accept4 does not inherit O_NONBLOCK from the listener.
        sock.set_nonblocking(true)?;
        sock.set_tcp_nodelay(self.opts.nodelay)?;
        apply_rcvbuf(&sock, &self.opts)?;
        Ok((PosixConnectedSocket::new(sock, true, peer), peer))
    }
}

impl ServerSocket for PosixServerSocket {
    fn register(&mut self, _ready: &Readiness) -> io::Result<EventSource> {
        Ok(EventSource::Fd(self.sock.as_raw_fd()))
    }

    fn accept(&mut self) -> io::Result<(Box<dyn ConnectedSocket>, SocketAddr)> {
        let (sock, peer) = self.accept_tcp()?;
        Ok((Box::new(sock), peer))
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// Where an outgoing connect stands.
#[derive(Debug)]
enum ConnectState {
    InProgress,
    Connected,
    /// SO_ERROR is cleared when read, so the failure is remembered to keep reporting it.
    Failed(io::ErrorKind, Option<i32>),
}

/// A connected (or connecting) kernel TCP socket.
#[derive(Debug)]
pub struct PosixConnectedSocket {
    sock: Socket,
    state: ConnectState,
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
    shut: bool,
    /// SO_RCVLOWAT as last set (1, the kernel's default, until `wake_at` asks more).
    lowat: usize,
}

/// The most `wake_at` asks the kernel to wait for. (Linux caps it anyway at half the
/// receive buffer's limit, and grows the buffer to hold it.)
const LOWAT_MAX: usize = 8 << 20;

impl AsRawFd for PosixConnectedSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl PosixConnectedSocket {
    fn new(sock: Socket, connected: bool, peer: SocketAddr) -> Self {
        let mut s = PosixConnectedSocket {
            sock,
            state: if connected { ConnectState::Connected } else { ConnectState::InProgress },
            peer: Some(peer),
            local: None,
            shut: false,
            lowat: 1,
        };
        // Even a pending connect has already been bound to its ephemeral port.
        s.learn_local_addr();
        s
    }

    fn learn_local_addr(&mut self) {
        if let Ok(a) = self.sock.local_addr() {
            self.local = a.as_socket();
        }
    }

    fn fail(&mut self, e: io::Error) -> io::Error {
        self.state = ConnectState::Failed(e.kind(), e.raw_os_error());
        e
    }
}

impl ConnectedSocket for PosixConnectedSocket {
    // A kernel socket is a descriptor any worker's epoll can watch.
    fn register(&mut self, _ready: &Readiness) -> io::Result<EventSource> {
        Ok(EventSource::Fd(self.sock.as_raw_fd()))
    }

    fn is_connected(&mut self) -> io::Result<bool> {
        match self.state {
            ConnectState::Connected => return Ok(true),
            ConnectState::Failed(_, Some(code)) => return Err(io::Error::from_raw_os_error(code)),
            ConnectState::Failed(kind, None) => return Err(io::Error::new(kind, "connect failed")),
            ConnectState::InProgress => {}
        }
        if self.shut {
            return Err(shut_down_error());
        }
        // A failed connect leaves its errno in SO_ERROR; check it first because
        // getpeername on a refused socket only says ENOTCONN, which also means "pending".
        match self.sock.take_error() {
            Ok(Some(e)) => return Err(self.fail(e)),
            Ok(None) => {}
            Err(e) => return Err(self.fail(e)),
        }
        match self.sock.peer_addr() {
            Ok(_) => {
                self.state = ConnectState::Connected;
                // The source address may only be final once the route is chosen.
                self.learn_local_addr();
                Ok(true)
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(false),
            Err(e) => Err(self.fail(e)),
        }
    }

    #[allow(unsafe_code)]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.shut {
            return Err(shut_down_error());
        }
        let fd = self.sock.as_raw_fd();
        // SAFETY: `buf` is a live, exclusively borrowed slice of `buf.len()` bytes.
        retry_eintr(|| unsafe { sys::recv(fd, buf.as_mut_ptr(), buf.len()) })
    }

    // Reads into the buffer's uninitialised room: zeroing 256 KiB first would cost
    // about what the copy this read replaces did.
    #[allow(unsafe_code)]
    fn read_into(&mut self, dst: &mut BytesMut, max: usize) -> io::Result<usize> {
        if self.shut {
            return Err(shut_down_error());
        }
        dst.reserve(max);
        let room = &mut dst.spare_capacity_mut()[..max];
        let fd = self.sock.as_raw_fd();
        // SAFETY: `room` is the buffer's exclusively borrowed spare capacity, `max`
        // bytes long (reserved above); the kernel writes into it and nothing reads it.
        let n = retry_eintr(|| unsafe { sys::recv(fd, room.as_mut_ptr().cast::<u8>(), max) })?.min(max);
        // SAFETY: recv(2) wrote the first `n` bytes of `room`, which starts at the
        // buffer's length and lies within its capacity (reserved above), so those bytes
        // are initialised and the length may cover them.
        unsafe { dst.set_len(dst.len() + n) };
        Ok(n)
    }

    // recv(2) on a TCP socket returns all that is queued up to the buffer's size, and
    // epoll is level-triggered here: anything arriving later is reported again.
    fn short_read_drains(&self) -> bool {
        true
    }

    fn wake_at(&mut self, n: usize) {
        let n = n.clamp(1, LOWAT_MAX);
        if n == self.lowat {
            return;
        }
        // n <= LOWAT_MAX fits a c_int.
        let v = n as libc::c_int;
        // SAFETY: setsockopt reads `size_of::<c_int>()` bytes at `&v`, a live c_int on
        // this stack frame; the descriptor is this socket's own, open while `self` is.
        #[allow(unsafe_code)]
        let r = unsafe {
            libc::setsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        // A refusal only costs the wake-ups this saves: the socket stays readable on
        // any byte, as by default.
        if r == 0 {
            self.lowat = n;
        }
    }

    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.shut {
            return Err(shut_down_error());
        }
        let bufs = &bufs[..bufs.len().min(MAX_IOVECS)];
        if bufs.iter().all(|b| b.is_empty()) {
            return Ok(0);
        }
        let fd = self.sock.as_raw_fd();
        retry_eintr(|| sys::sendmsg(fd, bufs, libc::MSG_NOSIGNAL))
    }

    fn shutdown(&mut self) {
        if self.shut {
            return;
        }
        self.shut = true;
        // ENOTCONN (never connected, or the peer already reset us) leaves nothing to shut
        // down, and no other failure would change what the caller does next: the socket
        // is dead to it either way and is closed when dropped.
        let _ = self.sock.shutdown(Shutdown::Both);
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    /// A connected pair: our socket (reading) and a plain std writer.
    fn pair() -> (PosixConnectedSocket, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let w = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (r, peer) = l.accept().unwrap();
        (PosixConnectedSocket::new(Socket::from(r), true, peer), w)
    }

    /// Reads what a blocking read with a 300 ms timeout returns: SO_RCVLOWAT holds
    /// blocking reads as it holds poll's readability, so a read that has to wait for
    /// the low-water mark takes the whole timeout (and still returns what it holds).
    fn blocking_read(s: &PosixConnectedSocket) -> (usize, Duration) {
        s.sock.set_nonblocking(false).unwrap();
        s.sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut buf = [0u8; 4096];
        let t = Instant::now();
        let n = (&s.sock).read(&mut buf).unwrap_or(0);
        let took = t.elapsed();
        s.sock.set_nonblocking(true).unwrap();
        (n, took)
    }

    #[test]
    fn wake_at_holds_readability_until_that_many_bytes_are_queued() {
        let (mut s, mut w) = pair();
        s.wake_at(1000);
        w.write_all(&[1; 500]).unwrap();
        let (n, took) = blocking_read(&s);
        assert_eq!(n, 500);
        assert!(took >= Duration::from_millis(250), "500 of 1000 bytes were reported readable after {took:?}");
        // The rest of what was asked for, all at once: no wait.
        w.write_all(&[2; 1000]).unwrap();
        let (n, took) = blocking_read(&s);
        assert_eq!(n, 1000, "after {took:?}");
        // Back to any byte.
        s.wake_at(1);
        w.write_all(&[3; 10]).unwrap();
        let (n, took) = blocking_read(&s);
        assert_eq!(n, 10, "after {took:?}");
        assert!(took < Duration::from_millis(250), "a read at the default low-water mark waited {took:?}");
    }

    #[test]
    fn wake_at_clamps_what_it_asks() {
        let (mut s, _w) = pair();
        s.wake_at(0);
        assert_eq!(s.lowat, 1);
        s.wake_at(usize::MAX);
        assert_eq!(s.lowat, LOWAT_MAX);
    }
}
