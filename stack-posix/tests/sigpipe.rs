//! A send to a closed peer must fail with an error, never raise SIGPIPE.
//!
//! The Rust runtime ignores SIGPIPE in every binary, test harnesses included, which
//! would hide a missing MSG_NOSIGNAL; this test restores the default action (terminate)
//! first. It lives in its own test binary so that the change affects nothing else.

use std::io::{self, IoSlice};
use std::time::{Duration, Instant};

use msgr_core::stack::{SocketOptions, StackBackend, WorkerNet};
use msgr_stack_posix::PosixStack;

#[test]
fn send_to_closed_peer_does_not_raise_sigpipe() {
    // SAFETY: SIG_DFL is a valid disposition for SIGPIPE; no handler code is involved,
    // and nothing in this test binary relies on SIGPIPE being ignored.
    let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    assert_ne!(previous, libc::SIG_ERR);

    let WorkerNet { mut sockets, .. } = PosixStack.init_worker(0).unwrap();
    let opts = SocketOptions::default();
    let mut listener = sockets.listen("127.0.0.1:0".parse().unwrap(), &opts).unwrap();
    let mut client = sockets.connect(listener.local_addr(), &opts).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let server = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    while !client.is_connected().unwrap() {
        assert!(Instant::now() < deadline, "connect never completed");
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(server);

    let chunk = [1u8; 4096];
    let mut failures = 0;
    // Keep sending past the RST: with SIGPIPE at its default the process would die on the
    // first EPIPE unless every send carries MSG_NOSIGNAL.
    while failures < 3 {
        assert!(Instant::now() < deadline, "send never failed");
        match client.send(&[IoSlice::new(&chunk), IoSlice::new(&chunk)]) {
            Ok(_) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => {
                assert!(matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset), "{e}");
                failures += 1;
            }
        }
    }
}
