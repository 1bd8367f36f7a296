//! The byte-stream socket contract over the userspace TCP of one worker.
//!
//! A connection lives on the worker that created (or accepted) it: every frame of it is
//! steered there ([`crate::steer`]), and the stack asks the messenger for a local listen
//! table, so every worker listens itself and keeps what it accepts. A socket has no
//! descriptor: it registers a token with its worker's readiness table, and the worker's
//! poll loop posts the TCP socket's readiness there — no eventfd, no system call.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;

use msgr::event::{EventSource, Readiness};
use msgr::stack::{ConnectedSocket, ServerSocket, SocketFactory, SocketOptions};
use smoltcp::iface::SocketHandle;

use crate::device::FramePort;
use crate::worker::{with, SharedNet};

/// A TCP connection of the DPDK stack.
pub struct DpdkConnectedSocket<P: FramePort> {
    net: SharedNet<P>,
    handle: Option<SocketHandle>,
    peer: SocketAddr,
    local: SocketAddr,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "DPDK socket is shut down")
}

impl<P: FramePort + Send + 'static> ConnectedSocket for DpdkConnectedSocket<P>
where
    P::Frame: Send,
{
    fn register(&mut self, ready: &Readiness) -> io::Result<EventSource> {
        let h = self.handle.ok_or_else(closed)?;
        with(&self.net, |w| w.register_conn(h, ready))
    }

    fn is_connected(&mut self) -> io::Result<bool> {
        let h = self.handle.ok_or_else(closed)?;
        with(&self.net, |w| w.is_connected(h))
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let h = self.handle.ok_or_else(closed)?;
        with(&self.net, |w| w.read(h, buf))
    }

    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let h = self.handle.ok_or_else(closed)?;
        with(&self.net, |w| w.send(h, bufs))
    }

    fn shutdown(&mut self) {
        self.close();
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        Some(self.local)
    }
}

impl<P: FramePort> DpdkConnectedSocket<P> {
    /// Hands the connection to its worker for a graceful close; idempotent.
    fn close(&mut self) {
        if let Some(h) = self.handle.take() {
            with(&self.net, |w| w.close(h));
        }
    }
}

impl<P: FramePort> Drop for DpdkConnectedSocket<P> {
    fn drop(&mut self) {
        self.close();
    }
}

/// A listening socket on one worker.
pub struct DpdkServerSocket<P: FramePort> {
    net: SharedNet<P>,
    id: u64,
    local: SocketAddr,
}

impl<P: FramePort + Send + 'static> ServerSocket for DpdkServerSocket<P>
where
    P::Frame: Send,
{
    fn register(&mut self, ready: &Readiness) -> io::Result<EventSource> {
        with(&self.net, |w| w.register_listener(self.id, ready))
    }

    fn accept(&mut self) -> io::Result<(Box<dyn ConnectedSocket>, SocketAddr)> {
        let (handle, peer, local) = with(&self.net, |w| w.accept(self.id))?;
        let s = DpdkConnectedSocket { net: Arc::clone(&self.net), handle: Some(handle), peer, local };
        Ok((Box::new(s), peer))
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl<P: FramePort> Drop for DpdkServerSocket<P> {
    fn drop(&mut self) {
        with(&self.net, |w| w.close_listener(self.id));
    }
}

/// Creates sockets on one worker's stack.
pub struct DpdkSocketFactory<P: FramePort> {
    net: SharedNet<P>,
}

impl<P: FramePort> DpdkSocketFactory<P> {
    /// A factory for `net`'s sockets.
    pub fn new(net: &SharedNet<P>) -> Self {
        DpdkSocketFactory { net: Arc::clone(net) }
    }
}

impl<P: FramePort + Send + 'static> SocketFactory for DpdkSocketFactory<P>
where
    P::Frame: Send,
{
    fn listen(&mut self, addr: SocketAddr, _opts: &SocketOptions) -> io::Result<Box<dyn ServerSocket>> {
        let (id, local) = with(&self.net, |w| w.listen(addr))?;
        Ok(Box::new(DpdkServerSocket { net: Arc::clone(&self.net), id, local }))
    }

    fn connect(&mut self, addr: SocketAddr, _opts: &SocketOptions) -> io::Result<Box<dyn ConnectedSocket>> {
        let (handle, local) = with(&self.net, |w| w.connect(addr))?;
        Ok(Box::new(DpdkConnectedSocket { net: Arc::clone(&self.net), handle: Some(handle), peer: addr, local }))
    }
}
