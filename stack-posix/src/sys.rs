//! `recv(2)` and `sendmsg(2)` as plain system calls.
//!
//! glibc's `recv` and `sendmsg` are pthread cancellation points: each call switches
//! asynchronous cancellation on and off around the system call. msgr never cancels a
//! thread, and at depth 1 those two switches were about 93 of the worker's ~6,000
//! user-space instructions per message on each side (callgrind:
//! `__pthread_enable_asynccancel`, `__pthread_disable_asynccancel`). `syscall(2)` is
//! not a cancellation point; the system calls themselves are the same.

use std::io::{self, IoSlice};
use std::os::fd::RawFd;
use std::ptr;

/// `recvfrom(fd, buf, len, 0, NULL, NULL)`: what `recv` does, without the
/// cancellation switch. Returns the bytes received (0: the peer closed).
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes for the duration of the call (it may
/// be uninitialised: the kernel only writes to it).
#[allow(unsafe_code)]
pub(crate) unsafe fn recv(fd: RawFd, buf: *mut u8, len: usize) -> io::Result<usize> {
    // SAFETY: the caller guarantees `buf` is writable for `len` bytes; the kernel
    // writes at most `len` bytes there and reads nothing else of ours (the address
    // arguments are null, so no address is stored).
    let r = unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            fd,
            buf,
            len,
            0 as libc::c_int,
            ptr::null_mut::<libc::sockaddr>(),
            ptr::null_mut::<libc::socklen_t>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        // Never more than `len`, a usize.
        Ok(r as usize)
    }
}

/// `sendmsg(fd, {bufs}, flags)`: what `sendmsg` does, without the cancellation
/// switch. Returns the bytes sent.
#[allow(unsafe_code)]
pub(crate) fn sendmsg(fd: RawFd, bufs: &[IoSlice<'_>], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is a valid value (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is ABI-compatible with `iovec` on Unix (std guarantees it), and the
    // kernel only reads the buffers. The caller bounds `bufs.len()` by IOV_MAX.
    msg.msg_iov = bufs.as_ptr().cast_mut().cast::<libc::iovec>();
    msg.msg_iovlen = bufs.len() as _;
    // SAFETY: `msg` points at `bufs.len()` live iovecs, each describing a live
    // borrowed buffer of its length, for the duration of the call; no name or
    // control data is passed. The kernel reads them and writes nothing of ours.
    let r = unsafe { libc::syscall(libc::SYS_sendmsg, fd, &msg as *const libc::msghdr, flags) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}
