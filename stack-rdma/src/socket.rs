//! The byte-stream socket contract over RC queue pairs.
//!
//! A connection is a TCP side channel (a posix socket to the messenger's address) plus a
//! QP on the worker that uses it; see [`crate::worker`]. The socket has no descriptor of
//! its own: it registers a token with its worker's readiness table and the worker posts
//! its readiness there (data, room to send, an error, the end of the stream) as
//! completions arrive — no eventfd, no system call.
//!
//! An accepted connection is handed by the listening worker to the least-loaded one, as
//! for posix. Its QP must live on the CQs of the worker that serves it, so it is created
//! when the socket is registered on that worker's thread, found through a thread-local
//! that each RDMA worker sets when it starts.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use msgr_core::event::{EventSource, Readiness};
use msgr_core::stack::{ConnectedSocket, Copied, RecvMode, ServerSocket, SocketFactory, SocketOptions};
use msgr_stack_posix::{PosixConnectedSocket, PosixServerSocket, PosixSocketFactory};

use crate::worker::{with, ConnKey, SharedWorker};

thread_local! {
    /// The RDMA worker running on this thread, if any.
    static CURRENT: RefCell<Option<SharedWorker>> = const { RefCell::new(None) };
}

/// Records `worker` as this thread's RDMA worker (called on the worker thread at start).
pub(crate) fn set_current(worker: &SharedWorker) {
    CURRENT.with(|c| *c.borrow_mut() = Some(Arc::clone(worker)));
}

fn current() -> io::Result<SharedWorker> {
    CURRENT.with(|c| c.borrow().clone()).ok_or_else(|| {
        io::Error::new(io::ErrorKind::Unsupported, "an RDMA socket was used outside an async+rdma worker thread")
    })
}

enum State {
    /// Accepted, not yet bound to a worker's QP.
    Unattached(PosixConnectedSocket),
    /// Bound: the key names the connection in its worker.
    Attached { worker: SharedWorker, key: ConnKey },
    /// Shut down (or attaching failed).
    Closed,
}

/// A connection over an RC queue pair.
pub struct RdmaConnectedSocket {
    state: State,
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
    /// Why attaching failed, reported by every later call.
    attach_error: Option<(io::ErrorKind, String)>,
}

impl RdmaConnectedSocket {
    fn unattached(tcp: PosixConnectedSocket) -> Self {
        let (peer, local) = (tcp.peer_addr(), tcp.local_addr());
        RdmaConnectedSocket { state: State::Unattached(tcp), peer, local, attach_error: None }
    }

    /// Binds an accepted socket to this thread's worker (at registration).
    fn attached(&mut self) -> io::Result<(&SharedWorker, ConnKey)> {
        self.state = match std::mem::replace(&mut self.state, State::Closed) {
            State::Unattached(tcp) => {
                let worker = current()?;
                match with(&worker, |w| w.attach(tcp, false)) {
                    Ok(key) => State::Attached { worker, key },
                    Err(e) => {
                        self.attach_error = Some((e.kind(), e.to_string()));
                        State::Closed
                    }
                }
            }
            other => other,
        };
        match &self.state {
            State::Attached { worker, key } => Ok((worker, *key)),
            _ => Err(match &self.attach_error {
                Some((kind, msg)) => io::Error::new(*kind, msg.clone()),
                None => io::Error::new(io::ErrorKind::NotConnected, "RDMA socket is shut down"),
            }),
        }
    }
}

impl ConnectedSocket for RdmaConnectedSocket {
    fn register(&mut self, ready: &Readiness) -> io::Result<EventSource> {
        let (w, key) = self.attached()?;
        with(w, |w| w.register(key, ready))
    }

    fn is_connected(&mut self) -> io::Result<bool> {
        let (w, key) = self.attached()?;
        with(w, |w| w.is_connected(key))
    }

    fn recv_mode(&self) -> RecvMode {
        // Received chunks are handed up as they are.
        RecvMode::Owned
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (w, key) = self.attached()?;
        with(w, |w| w.read(key, buf))
    }

    fn recv_owned(&mut self) -> io::Result<Bytes> {
        let (w, key) = self.attached()?;
        with(w, |w| w.recv_owned(key))
    }

    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let (w, key) = self.attached()?;
        with(w, |w| w.send(key, bufs))
    }

    fn send_owned(&mut self, queue: &mut VecDeque<Bytes>) -> io::Result<usize> {
        let (w, key) = self.attached()?;
        with(w, |w| w.send_owned(key, queue))
    }

    fn take_copied(&mut self) -> Copied {
        match &self.state {
            State::Attached { worker, key } => with(worker, |w| w.take_copied(*key)),
            _ => Copied::default(),
        }
    }

    fn shutdown(&mut self) {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Attached { worker, key } => with(&worker, |w| w.close(key, Instant::now())),
            State::Unattached(mut tcp) => tcp.shutdown(),
            State::Closed => {}
        }
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }
}

impl Drop for RdmaConnectedSocket {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A listening socket: the TCP side channel's listener.
pub struct RdmaServerSocket {
    tcp: PosixServerSocket,
}

impl ServerSocket for RdmaServerSocket {
    fn register(&mut self, _ready: &Readiness) -> io::Result<EventSource> {
        // New connections arrive on the kernel's TCP listener.
        Ok(EventSource::Fd(self.tcp.as_raw_fd()))
    }

    fn accept(&mut self) -> io::Result<(Box<dyn ConnectedSocket>, SocketAddr)> {
        let (tcp, peer) = self.tcp.accept_tcp()?;
        Ok((Box::new(RdmaConnectedSocket::unattached(tcp)), peer))
    }

    fn local_addr(&self) -> SocketAddr {
        self.tcp.local_addr()
    }
}

/// Creates RDMA sockets on one worker.
pub struct RdmaSocketFactory {
    worker: SharedWorker,
    tcp: PosixSocketFactory,
}

impl RdmaSocketFactory {
    /// A factory for `worker`'s connections.
    pub fn new(worker: &SharedWorker) -> Self {
        RdmaSocketFactory { worker: Arc::clone(worker), tcp: PosixSocketFactory::new() }
    }
}

impl SocketFactory for RdmaSocketFactory {
    fn listen(&mut self, addr: SocketAddr, opts: &SocketOptions) -> io::Result<Box<dyn ServerSocket>> {
        Ok(Box::new(RdmaServerSocket { tcp: self.tcp.listen_tcp(addr, opts)? }))
    }

    fn connect(&mut self, addr: SocketAddr, opts: &SocketOptions) -> io::Result<Box<dyn ConnectedSocket>> {
        let tcp = self.tcp.connect_tcp(addr, opts)?;
        let (peer, local) = (tcp.peer_addr().or(Some(addr)), tcp.local_addr());
        let key = with(&self.worker, |w| w.attach(tcp, true))?;
        Ok(Box::new(RdmaConnectedSocket {
            state: State::Attached { worker: Arc::clone(&self.worker), key },
            peer,
            local,
            attach_error: None,
        }))
    }
}
