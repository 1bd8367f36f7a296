//! The byte-stream socket contract over the userspace TCP of one worker.
//!
//! A connection lives on the worker that created (or accepted) it: every frame of it is
//! steered there ([`crate::steer`]), and the stack asks the messenger for a local listen
//! table, so every worker listens itself and keeps what it accepts. A socket has no
//! descriptor: it registers a token with its worker's readiness table, and the worker's
//! poll loop posts the TCP socket's readiness there — no eventfd, no system call.
//!
//! Bytes are copied once each way between the messenger's buffers and smoltcp's socket
//! rings, and counted ([`ConnectedSocket::take_copied`]): received bytes are appended
//! straight from the receive ring to the session's stream buffer
//! ([`RecvMode::Append`]), or written into a large frame's own buffer; sent bytes are
//! copied into the send ring. smoltcp's own copies between frames and rings are inside
//! the TCP implementation, as the kernel's are for posix (see
//! [`crate::device::DeviceStats`]).

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use msgr_core::event::{EventSource, Readiness};
use msgr_core::stack::{ConnectedSocket, Copied, RecvMode, ServerSocket, SocketFactory, SocketOptions};
use smoltcp::iface::SocketHandle;

use crate::device::FramePort;
use crate::worker::{with, SharedNet};

/// A TCP connection of the DPDK stack.
pub struct DpdkConnectedSocket<P: FramePort> {
    net: SharedNet<P>,
    handle: Option<SocketHandle>,
    peer: SocketAddr,
    local: SocketAddr,
    /// Bytes copied between the messenger's buffers and the socket's rings, not yet
    /// reported.
    copied: Copied,
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

    fn recv_mode(&self) -> RecvMode {
        RecvMode::Append
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let h = self.handle.ok_or_else(closed)?;
        let n = with(&self.net, |w| w.read(h, buf))?;
        self.copied.rx += n as u64;
        Ok(n)
    }

    fn read_into(&mut self, dst: &mut BytesMut, max: usize) -> io::Result<usize> {
        let h = self.handle.ok_or_else(closed)?;
        let n = with(&self.net, |w| w.read_into(h, dst, max))?;
        self.copied.rx += n as u64;
        Ok(n)
    }

    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let h = self.handle.ok_or_else(closed)?;
        let n = with(&self.net, |w| w.send(h, bufs))?;
        self.copied.tx += n as u64;
        Ok(n)
    }

    fn take_copied(&mut self) -> Copied {
        std::mem::take(&mut self.copied)
    }

    /// A read takes everything the receive ring holds up to what it was offered, and
    /// nothing arrives until the worker polls again: a short read left the ring empty.
    fn short_read_drains(&self) -> bool {
        true
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
        let s = DpdkConnectedSocket {
            net: Arc::clone(&self.net),
            handle: Some(handle),
            peer,
            local,
            copied: Copied::default(),
        };
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
        Ok(Box::new(DpdkConnectedSocket {
            net: Arc::clone(&self.net),
            handle: Some(handle),
            peer: addr,
            local,
            copied: Copied::default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use bytes::Bytes;
    use msgr_core::event::Parker;

    use super::*;
    use crate::worker::tests::{pair, server_addr, WirePort};
    use crate::worker::NetWorker;

    fn shared(w: NetWorker<WirePort>) -> SharedNet<WirePort> {
        Arc::new(Mutex::new(w))
    }

    /// Polls both stacks until `f` holds (bounded).
    fn until(a: &SharedNet<WirePort>, b: &SharedNet<WirePort>, mut f: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "timed out");
            with(a, |w| w.poll());
            with(b, |w| w.poll());
        }
    }

    #[test]
    fn one_copy_each_way_appended_to_the_stream_buffer_and_counted() {
        let (mut wa, mut wb) = pair(1, 1);
        let (a, b) = (shared(wa.remove(0)), shared(wb.remove(0)));
        let opts = SocketOptions::default();
        let mut listener = DpdkSocketFactory::new(&b).listen(server_addr(), &opts).unwrap();
        let mut client = DpdkSocketFactory::new(&a).connect(server_addr(), &opts).unwrap();
        let ready = Readiness::new(Parker::new().unwrap());
        client.register(&ready).unwrap();
        let mut server = None;
        until(&a, &b, || {
            server = server.take().or_else(|| listener.accept().ok().map(|(s, _)| s));
            server.is_some() && client.is_connected().unwrap()
        });
        let mut server = server.unwrap();
        server.register(&ready).unwrap();
        assert_eq!(server.recv_mode(), RecvMode::Append);
        assert!(server.short_read_drains());

        // Sent from owned buffers through the default send_owned: one copy into the ring.
        let payload: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
        let mut queue: VecDeque<Bytes> = payload.chunks(7_000).map(Bytes::copy_from_slice).collect();
        let mut stream = BytesMut::new();
        let mut large = vec![0u8; 10_000];
        let mut large_got = 0;
        until(&a, &b, || {
            if !queue.is_empty() {
                let _ = client.send_owned(&mut queue);
            }
            // The first 10,000 bytes into a buffer of their own (a large frame's), the
            // rest appended to the stream buffer.
            if large_got < large.len() {
                large_got += server.read(&mut large[large_got..]).unwrap_or(0);
            } else {
                let _ = server.read_into(&mut stream, 8192);
            }
            large_got + stream.len() == payload.len()
        });
        assert!(large[..] == payload[..10_000] && stream[..] == payload[10_000..]);
        assert_eq!(client.take_copied(), Copied { rx: 0, tx: payload.len() as u64 });
        assert_eq!(server.take_copied(), Copied { rx: payload.len() as u64, tx: 0 });
        assert_eq!(server.take_copied(), Copied::default(), "reported once");
        // smoltcp's own copies, frame to ring and ring to frame, are counted apart.
        let (rx_inside, tx_inside) =
            (with(&b, |w| w.device_stats().rx_tcp_payload), with(&a, |w| w.device_stats().tx_tcp_payload));
        assert!(rx_inside >= payload.len() as u64 && tx_inside >= payload.len() as u64, "{rx_inside} {tx_inside}");
    }
}
