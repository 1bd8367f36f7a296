//! Fault injection shared by every stack: `ms_inject_socket_failures = N` makes about
//! one socket operation in N fail, as Ceph's option does.
//!
//! The messenger wraps each connected socket in a fault-injecting one when the option
//! is set, so posix, RDMA, DPDK and the in-memory stack all fail the same way: the
//! operation returns `ConnectionReset` and the underlying socket is shut down, so the
//! peer sees the connection die too and both ends go through their fault paths.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

use super::{ConnectedSocket, Copied, RecvMode};
use crate::event::{EventSource, Readiness};

static INJECTED: AtomicU64 = AtomicU64::new(0);
static SEEDS: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);

/// Socket failures injected in this process so far.
pub fn injected_failures() -> u64 {
    INJECTED.load(Ordering::Relaxed)
}

/// A socket that fails about one operation in `every`.
pub(crate) struct FaultySocket {
    inner: Box<dyn ConnectedSocket>,
    every: u64,
    rng: u64,
    failed: bool,
}

impl FaultySocket {
    /// Wraps `inner`; `every` must be at least 1 (1 fails the first operation).
    pub(crate) fn new(inner: Box<dyn ConnectedSocket>, every: u64) -> Self {
        let seed = SEEDS.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()));
        FaultySocket { inner, every: every.max(1), rng: (seed ^ nanos) | 1, failed: false }
    }

    /// Wraps `inner` when `every` is non-zero; otherwise returns it unchanged.
    pub(crate) fn wrap(inner: Box<dyn ConnectedSocket>, every: u64) -> Box<dyn ConnectedSocket> {
        if every == 0 {
            inner
        } else {
            Box::new(FaultySocket::new(inner, every))
        }
    }

    /// Whether this operation fails; once one has, every later one does.
    fn roll(&mut self) -> io::Result<()> {
        if !self.failed {
            // xorshift64
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            if self.rng % self.every == 0 {
                self.failed = true;
                INJECTED.fetch_add(1, Ordering::Relaxed);
                self.inner.shutdown();
            }
        }
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "injected socket failure (ms_inject_socket_failures)",
            ));
        }
        Ok(())
    }
}

impl ConnectedSocket for FaultySocket {
    fn register(&mut self, ready: &Readiness) -> io::Result<EventSource> {
        self.inner.register(ready)
    }

    fn is_connected(&mut self) -> io::Result<bool> {
        self.inner.is_connected()
    }

    fn recv_mode(&self) -> RecvMode {
        self.inner.recv_mode()
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.roll()?;
        self.inner.read(buf)
    }

    fn read_into(&mut self, dst: &mut BytesMut, max: usize) -> io::Result<usize> {
        self.roll()?;
        self.inner.read_into(dst, max)
    }

    fn recv_owned(&mut self) -> io::Result<Bytes> {
        self.roll()?;
        self.inner.recv_owned()
    }

    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.roll()?;
        self.inner.send(bufs)
    }

    fn send_owned(&mut self, queue: &mut VecDeque<Bytes>) -> io::Result<usize> {
        self.roll()?;
        self.inner.send_owned(queue)
    }

    fn take_copied(&mut self) -> Copied {
        self.inner.take_copied()
    }

    fn shutdown(&mut self) {
        self.inner.shutdown();
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        self.inner.peer_addr()
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.local_addr()
    }

    fn short_read_drains(&self) -> bool {
        self.inner.short_read_drains()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::mem::{MemNetwork, MemSocketFactory};
    use crate::stack::{SocketFactory, SocketOptions};

    /// A connected pair of in-memory sockets (the real in-memory stack, not a stand-in).
    fn pair() -> (Box<dyn ConnectedSocket>, Box<dyn ConnectedSocket>) {
        let mut f = MemSocketFactory::new(MemNetwork::new());
        let opts = SocketOptions::default();
        let mut l = f.listen("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
        let c = f.connect(l.local_addr(), &opts).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    #[test]
    fn zero_means_no_wrapper() {
        let (a, _b) = pair();
        let addr = a.local_addr();
        let a = FaultySocket::wrap(a, 0);
        assert_eq!(a.local_addr(), addr);
        let a = FaultySocket::wrap(a, 3);
        assert_eq!(a.local_addr(), addr);
    }

    #[test]
    fn failures_come_about_once_every_n_operations_and_stick() {
        const N: u64 = 10;
        let before = injected_failures();
        let mut ops_until_failure = Vec::new();
        for _ in 0..300 {
            let (a, mut b) = pair();
            let mut a = FaultySocket::new(a, N);
            let mut ops = 0u64;
            while a.send(&[IoSlice::new(b"x")]).is_ok() {
                ops += 1;
                let mut buf = [0u8; 8];
                let _ = b.read(&mut buf);
                assert!(ops < 10_000, "never failed");
            }
            ops_until_failure.push(ops + 1);
            let e = a.send(&[IoSlice::new(b"x")]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "a failed socket stays failed");
            assert!(a.read(&mut [0u8; 4]).is_err());
            // The peer sees the connection end.
            let mut buf = [0u8; 64];
            let mut eof = false;
            for _ in 0..1000 {
                match b.read(&mut buf) {
                    Ok(0) => eof = true,
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => eof = true,
                    _ => {}
                }
                if eof {
                    break;
                }
            }
            assert!(eof, "the peer noticed the injected failure");
        }
        let mean = ops_until_failure.iter().sum::<u64>() as f64 / ops_until_failure.len() as f64;
        assert!((5.0..20.0).contains(&mean), "mean operations until failure {mean}, want about {N}");
        assert!(injected_failures() - before >= 300);
    }
}
