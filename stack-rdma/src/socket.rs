//! The byte-stream socket contract over RC queue pairs.
//!
//! A connection is a TCP side channel (a posix socket to the messenger's address) plus a
//! QP on the worker that uses it; see [`crate::worker`]. The socket's descriptor is an
//! eventfd that the worker signals when there is data, room to send, an error or an end
//! of stream, so the messenger drives it exactly like a kernel socket, except that it
//! never needs write interest.
//!
//! An accepted connection is handed by the listening worker to the least-loaded one, as
//! for posix. Its QP must live on the CQs of the worker that serves it, so it is created
//! on first use on that worker's thread, found through a thread-local that each RDMA
//! worker sets when it starts.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

use msgr::event::EventFd;
use msgr::stack::{ConnectedSocket, ServerSocket, SocketFactory, SocketOptions};
use msgr_stack_posix::PosixSocketFactory;

use crate::worker::{with, SharedWorker};

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
    Unattached(Box<dyn ConnectedSocket>),
    /// Bound: the QP number names the connection in its worker.
    Attached { worker: SharedWorker, qpn: u32 },
    /// Shut down (or attaching failed).
    Closed,
}

/// A connection over an RC queue pair.
pub struct RdmaConnectedSocket {
    state: State,
    efd: Arc<EventFd>,
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
    /// Why attaching failed, reported by every later call.
    attach_error: Option<(io::ErrorKind, String)>,
}

impl RdmaConnectedSocket {
    fn unattached(tcp: Box<dyn ConnectedSocket>) -> io::Result<Self> {
        let (peer, local) = (tcp.peer_addr(), tcp.local_addr());
        Ok(RdmaConnectedSocket {
            state: State::Unattached(tcp),
            efd: Arc::new(EventFd::new()?),
            peer,
            local,
            attach_error: None,
        })
    }

    /// Binds an accepted socket to this thread's worker on first use.
    fn attached(&mut self) -> io::Result<(&SharedWorker, u32)> {
        self.state = match std::mem::replace(&mut self.state, State::Closed) {
            State::Unattached(tcp) => {
                let worker = current()?;
                match with(&worker, |w| w.attach(tcp, Arc::clone(&self.efd), false)) {
                    Ok(qpn) => State::Attached { worker, qpn },
                    Err(e) => {
                        self.attach_error = Some((e.kind(), e.to_string()));
                        // Readable, so that the messenger comes back and meets the error.
                        let _ = self.efd.notify();
                        State::Closed
                    }
                }
            }
            other => other,
        };
        match &self.state {
            State::Attached { worker, qpn } => Ok((worker, *qpn)),
            _ => Err(match &self.attach_error {
                Some((kind, msg)) => io::Error::new(*kind, msg.clone()),
                None => io::Error::new(io::ErrorKind::NotConnected, "RDMA socket is shut down"),
            }),
        }
    }
}

impl ConnectedSocket for RdmaConnectedSocket {
    fn fd(&self) -> RawFd {
        self.efd.fd()
    }

    fn is_connected(&mut self) -> io::Result<bool> {
        let (w, qpn) = self.attached()?;
        with(w, |w| w.is_connected(qpn))
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (w, qpn) = self.attached()?;
        with(w, |w| w.read(qpn, buf))
    }

    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let (w, qpn) = self.attached()?;
        with(w, |w| w.send(qpn, bufs))
    }

    fn shutdown(&mut self) {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Attached { worker, qpn } => with(&worker, |w| w.close(qpn, Instant::now())),
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

    fn needs_write_interest(&self) -> bool {
        false
    }
}

impl Drop for RdmaConnectedSocket {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A listening socket: the TCP side channel's listener.
pub struct RdmaServerSocket {
    tcp: Box<dyn ServerSocket>,
}

impl ServerSocket for RdmaServerSocket {
    fn fd(&self) -> RawFd {
        self.tcp.fd()
    }

    fn accept(&mut self) -> io::Result<(Box<dyn ConnectedSocket>, SocketAddr)> {
        let (tcp, peer) = self.tcp.accept()?;
        Ok((Box::new(RdmaConnectedSocket::unattached(tcp)?), peer))
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
        Ok(Box::new(RdmaServerSocket { tcp: self.tcp.listen(addr, opts)? }))
    }

    fn connect(&mut self, addr: SocketAddr, opts: &SocketOptions) -> io::Result<Box<dyn ConnectedSocket>> {
        let tcp = self.tcp.connect(addr, opts)?;
        let (peer, local) = (tcp.peer_addr().or(Some(addr)), tcp.local_addr());
        let efd = Arc::new(EventFd::new()?);
        let qpn = with(&self.worker, |w| w.attach(tcp, Arc::clone(&efd), true))?;
        Ok(Box::new(RdmaConnectedSocket {
            state: State::Attached { worker: Arc::clone(&self.worker), qpn },
            efd,
            peer,
            local,
            attach_error: None,
        }))
    }
}
