//! The posix stack against real loopback TCP, driven by the worker's event driver.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use msgr_core::event::{EventDriver, EventSource, FiredEvent, Interest, Parker, Readiness};
use msgr_core::stack::{ConnectedSocket, ServerSocket, SocketFactory, SocketOptions, StackBackend, WorkerNet};
use msgr_stack_posix::PosixStack;

/// Only a guard against hangs; nothing asserts that anything happens within it.
const PATIENCE: Duration = Duration::from_secs(20);

struct Rig {
    driver: Box<dyn EventDriver>,
    sockets: Box<dyn SocketFactory>,
    ready: Readiness,
    fired: Vec<FiredEvent>,
}

/// The descriptor a posix socket registers with (it has no token).
trait Fd {
    fn fd(&mut self) -> RawFd;
}

fn as_fd(src: io::Result<EventSource>) -> RawFd {
    match src {
        Ok(EventSource::Fd(fd)) => fd,
        other => panic!("a posix socket registers its descriptor, got {other:?}"),
    }
}

fn readiness() -> Readiness {
    Readiness::new(Parker::new().unwrap())
}

impl Fd for dyn ConnectedSocket + '_ {
    fn fd(&mut self) -> RawFd {
        as_fd(self.register(&readiness()))
    }
}

impl Fd for dyn ServerSocket + '_ {
    fn fd(&mut self) -> RawFd {
        as_fd(self.register(&readiness()))
    }
}

impl Rig {
    fn new() -> Rig {
        let stack = PosixStack;
        assert_eq!(stack.name(), "async+posix");
        assert!(!stack.local_listen_table());
        let WorkerNet { driver, sockets } = stack.init_worker(0).unwrap();
        let ready = Readiness::new(driver.parker());
        Rig { driver, sockets, ready, fired: Vec::new() }
    }

    fn watch(&mut self, fd: RawFd, what: Interest) {
        self.driver.add_event(fd, Interest::NONE, what).unwrap();
    }

    fn unwatch(&mut self, fd: RawFd, what: Interest) {
        self.driver.del_event(fd, what, what).unwrap();
    }

    /// Waits until the driver reports `fd`; panics if it never does.
    fn wait_for(&mut self, fd: RawFd) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let now = Instant::now();
            assert!(now < deadline, "fd {fd} never became ready");
            self.driver.wait(&mut self.fired, Some(deadline - now), &self.ready).unwrap();
            if self.fired.iter().any(|ev| ev.source == EventSource::Fd(fd)) {
                return;
            }
        }
    }

    fn listen(&mut self) -> Box<dyn ServerSocket> {
        self.sockets.listen(loopback(), &SocketOptions::default()).unwrap()
    }

    /// Drives a connect to completion: `Ok(())` when established, the error if it failed.
    fn finish_connect(&mut self, sock: &mut dyn ConnectedSocket) -> io::Result<()> {
        let both = Interest::READABLE | Interest::WRITABLE;
        self.watch(sock.fd(), both);
        let result = loop {
            match sock.is_connected() {
                Ok(true) => break Ok(()),
                Ok(false) => self.wait_for(sock.fd()),
                Err(e) => break Err(e),
            }
        };
        self.unwatch(sock.fd(), both);
        result
    }

    fn accept(&mut self, listener: &mut dyn ServerSocket) -> (Box<dyn ConnectedSocket>, SocketAddr) {
        self.watch(listener.fd(), Interest::READABLE);
        let got = loop {
            match listener.accept() {
                Ok(pair) => break pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_for(listener.fd()),
                Err(e) => panic!("accept failed: {e}"),
            }
        };
        self.unwatch(listener.fd(), Interest::READABLE);
        got
    }

    /// Listener, connected client, accepted server end.
    fn pair(&mut self) -> (Box<dyn ServerSocket>, Box<dyn ConnectedSocket>, Box<dyn ConnectedSocket>) {
        let mut listener = self.listen();
        let mut client = self.sockets.connect(listener.local_addr(), &SocketOptions::default()).unwrap();
        self.finish_connect(client.as_mut()).unwrap();
        let (server, from) = self.accept(listener.as_mut());
        assert_eq!(Some(from), client.local_addr());
        assert_eq!(server.peer_addr(), Some(from));
        assert_eq!(client.peer_addr(), Some(listener.local_addr()));
        assert_eq!(server.local_addr(), Some(listener.local_addr()));
        (listener, client, server)
    }

    /// Reads until the peer closes or `limit` bytes arrived.
    fn read_up_to(&mut self, sock: &mut dyn ConnectedSocket, limit: usize) -> io::Result<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        self.watch(sock.fd(), Interest::READABLE);
        let result = loop {
            if got.len() >= limit {
                break Ok(());
            }
            let room = (limit - got.len()).min(buf.len());
            match sock.read(&mut buf[..room]) {
                Ok(0) => break Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_for(sock.fd()),
                Err(e) => break Err(e),
            }
        };
        self.unwatch(sock.fd(), Interest::READABLE);
        result.map(|()| got)
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)).collect()
}

#[test]
fn vectored_round_trip() {
    let mut rig = Rig::new();
    let (_listener, mut client, mut server) = rig.pair();

    // Large enough that the kernel takes it in several short writes.
    let frames = [pattern(40, 1), pattern(1 << 20, 2), Vec::new(), pattern(3, 3), pattern(700_000, 4)];
    let expect = frames.concat();
    let writer = std::thread::spawn(move || {
        let mut rig = Rig::new();
        rig.watch(client.fd(), Interest::WRITABLE);
        let mut sent = 0;
        let mut first = true;
        while sent < expect.len() {
            // Rebuild the iovec list past what went out, as a messenger's queue does.
            let mut skip = sent;
            let mut slices = Vec::new();
            for f in &frames {
                if skip >= f.len() {
                    skip -= f.len();
                    continue;
                }
                slices.push(IoSlice::new(&f[skip..]));
                skip = 0;
            }
            match client.send(&slices) {
                Ok(n) => {
                    assert!(n > 0);
                    if first {
                        // One sendmsg carried more than the first frame.
                        assert!(n > frames[0].len(), "first send took only {n} bytes");
                    }
                    sent += n;
                    first = false;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => rig.wait_for(client.fd()),
                Err(e) => panic!("send failed: {e}"),
            }
        }
        client.shutdown();
        expect
    });
    let got = rig.read_up_to(server.as_mut(), usize::MAX).unwrap();
    let expect = writer.join().unwrap();
    assert_eq!(got.len(), expect.len());
    assert!(got == expect, "stream corrupted");
}

#[test]
fn more_iovecs_than_the_kernel_takes_is_a_short_write() {
    let mut rig = Rig::new();
    let (_listener, mut client, mut server) = rig.pair();
    let bytes = pattern(2000, 5);
    let slices: Vec<IoSlice<'_>> = bytes.chunks(1).map(IoSlice::new).collect();
    let n = client.send(&slices).unwrap();
    assert_eq!(n, 1024);
    assert_eq!(client.send(&slices[n..]).unwrap(), 2000 - 1024);
    client.shutdown();
    assert_eq!(rig.read_up_to(server.as_mut(), usize::MAX).unwrap(), bytes);
}

#[test]
fn connect_to_closed_port_is_refused() {
    let mut rig = Rig::new();
    // A port that was just ours and is now closed.
    let addr = rig.listen().local_addr();
    let mut sock = rig.sockets.connect(addr, &SocketOptions::default()).unwrap();
    let err = rig.finish_connect(sock.as_mut()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    // The failure is remembered although SO_ERROR was consumed.
    assert_eq!(sock.is_connected().unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
}

#[test]
fn double_bind_is_addr_in_use() {
    let mut rig = Rig::new();
    let first = rig.listen();
    let err = rig.sockets.listen(first.local_addr(), &SocketOptions::default()).err().unwrap();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
}

#[test]
fn listen_binds_a_port_and_honours_options() {
    let mut rig = Rig::new();
    let opts = SocketOptions { nodelay: false, rcvbuf: 128 * 1024, listen_backlog: 8 };
    let mut listener = rig.sockets.listen(loopback(), &opts).unwrap();
    assert_ne!(listener.local_addr().port(), 0);
    let mut client = rig.sockets.connect(listener.local_addr(), &opts).unwrap();
    rig.finish_connect(client.as_mut()).unwrap();
    let (mut server, _) = rig.accept(listener.as_mut());
    server.send(&[IoSlice::new(b"ok")]).unwrap();
    assert_eq!(rig.read_up_to(client.as_mut(), 2).unwrap(), b"ok");
}

#[test]
fn accept_with_nothing_pending_would_block() {
    let mut rig = Rig::new();
    let mut listener = rig.listen();
    assert_eq!(listener.accept().err().unwrap().kind(), io::ErrorKind::WouldBlock);
}

#[test]
fn peer_close_reads_as_end_of_stream() {
    let mut rig = Rig::new();
    let (_listener, mut client, mut server) = rig.pair();
    client.send(&[IoSlice::new(b"last words")]).unwrap();
    drop(client);
    assert_eq!(rig.read_up_to(server.as_mut(), usize::MAX).unwrap(), b"last words");
    assert_eq!(server.read(&mut [0u8; 8]).unwrap(), 0);
}

#[test]
fn send_after_peer_close_fails() {
    let mut rig = Rig::new();
    let (_listener, mut client, server) = rig.pair();
    drop(server);
    // The first sends may still be taken by the kernel; the peer's RST then fails them.
    let chunk = [7u8; 4096];
    let mut err = None;
    let deadline = Instant::now() + PATIENCE;
    while err.is_none() && Instant::now() < deadline {
        match client.send(&[IoSlice::new(&chunk)]) {
            Ok(_) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => err = Some(e),
        }
    }
    let kind = err.expect("send never failed").kind();
    assert!(matches!(kind, io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset), "{kind:?}");
}

#[test]
fn shutdown_is_idempotent_and_seen_by_the_peer() {
    let mut rig = Rig::new();
    let (_listener, mut client, mut server) = rig.pair();
    client.shutdown();
    client.shutdown();
    assert_eq!(client.read(&mut [0u8; 1]).unwrap_err().kind(), io::ErrorKind::NotConnected);
    assert_eq!(client.send(&[IoSlice::new(b"x")]).unwrap_err().kind(), io::ErrorKind::NotConnected);
    assert!(rig.read_up_to(server.as_mut(), usize::MAX).unwrap().is_empty());
}
