//! Completion channels, completion queues and the work completions polled from them.

use std::ffi::CStr;
use std::io;
use std::os::fd::RawFd;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use rdma_sys::*;

use super::{born, died, last_error, ret_error, Context, CHAN, CQ};

/// A completion channel: its fd becomes readable when an armed CQ gets a completion.
pub struct CompChannel {
    pub(crate) ch: NonNull<ibv_comp_channel>,
    _ctx: Arc<Context>,
}

// SAFETY: verbs objects are thread-safe; see Context.
unsafe impl Send for CompChannel {}
// SAFETY: as above.
unsafe impl Sync for CompChannel {}

impl CompChannel {
    /// Creates a channel with a non-blocking fd.
    ///
    /// # Errors
    ///
    /// The `ibv_create_comp_channel` or `fcntl` error.
    pub fn new(ctx: &Arc<Context>) -> io::Result<Arc<CompChannel>> {
        // SAFETY: the context is open.
        let ch = unsafe { ibv_create_comp_channel(ctx.raw()) };
        let ch = NonNull::new(ch).ok_or_else(|| last_error("ibv_create_comp_channel"))?;
        born(CHAN);
        let ch = Arc::new(CompChannel { ch, _ctx: Arc::clone(ctx) });
        let fd = ch.fd();
        // SAFETY: `fd` is the channel's open descriptor.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(last_error("fcntl(O_NONBLOCK) on completion channel"));
        }
        Ok(ch)
    }

    /// The fd to watch for readability.
    pub fn fd(&self) -> RawFd {
        // SAFETY: the channel is live.
        unsafe { (*self.ch.as_ptr()).fd }
    }

    /// Waits up to `timeout` for the channel fd to become readable; `Ok(false)` on timeout
    /// or signal interruption.
    ///
    /// # Errors
    ///
    /// The `poll` error.
    pub fn wait(&self, timeout: std::time::Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd { fd: self.fd(), events: libc::POLLIN, revents: 0 };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(last_error("poll(comp channel)"))
            };
        }
        Ok(n > 0)
    }

    /// Takes one pending event and acknowledges it; returns the CQ's address as an opaque
    /// token (compare with [`CompletionQueue::token`]), or `None` if none is pending.
    ///
    /// # Errors
    ///
    /// The `ibv_get_cq_event` error other than "would block".
    pub fn take_event(&self) -> io::Result<Option<usize>> {
        let mut cq: *mut ibv_cq = ptr::null_mut();
        let mut cq_ctx: *mut libc::c_void = ptr::null_mut();
        // SAFETY: the channel is live and non-blocking; out-pointers are valid.
        let ret = unsafe { ibv_get_cq_event(self.ch.as_ptr(), &mut cq, &mut cq_ctx) };
        if ret != 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock { Ok(None) } else { Err(last_error("ibv_get_cq_event")) };
        }
        // SAFETY: `cq` was returned by the event and is alive (CQs on this channel keep it
        // alive, and are only destroyed after their events are acknowledged here).
        unsafe { ibv_ack_cq_events(cq, 1) };
        Ok(Some(cq as usize))
    }
}

impl Drop for CompChannel {
    fn drop(&mut self) {
        // SAFETY: CQs hold an Arc to this channel, so none is alive now.
        unsafe { ibv_destroy_comp_channel(self.ch.as_ptr()) };
        died(CHAN);
    }
}

/// One work completion, copied out of the CQ.
///
/// Only [`CompletionQueue::poll`] makes them (the fields are private): holding one for a
/// work request id is proof that the device is done with that work request, which is
/// what lets [`super::RecvTable`] and [`super::InFlight`] give its buffers back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkCompletion {
    wr_id: u64,
    status: u32,
    opcode: u32,
    byte_len: u32,
    with_imm: bool,
    qp_num: u32,
}

impl WorkCompletion {
    /// The work request id given when posting.
    pub fn wr_id(&self) -> u64 {
        self.wr_id
    }

    /// `ibv_wc_status` value.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Bytes received (receives only).
    pub fn byte_len(&self) -> u32 {
        self.byte_len
    }

    /// Whether the SEND carried immediate data (Ceph's wire never does).
    pub fn with_imm(&self) -> bool {
        self.with_imm
    }

    /// Local QP number.
    pub fn qp_num(&self) -> u32 {
        self.qp_num
    }

    /// Whether it succeeded.
    pub fn is_ok(&self) -> bool {
        self.status == ibv_wc_status::IBV_WC_SUCCESS
    }

    /// Whether it is a flushed work request (the QP is in ERROR).
    pub fn is_flush(&self) -> bool {
        self.status == ibv_wc_status::IBV_WC_WR_FLUSH_ERR
    }

    /// A failed receive of the kind a SEND longer than the posted buffer causes: a
    /// local length error (hardware), or a local QP operation error (rxe reports it so).
    pub fn may_be_too_long_receive(&self) -> bool {
        matches!(self.status, ibv_wc_status::IBV_WC_LOC_LEN_ERR | ibv_wc_status::IBV_WC_LOC_QP_OP_ERR)
    }

    /// A failed SEND of the kind the peer's too-short receive buffer causes: a remote
    /// invalid request (hardware), or a remote operation error (rxe).
    pub fn may_be_refused_as_too_long(&self) -> bool {
        matches!(self.status, ibv_wc_status::IBV_WC_REM_INV_REQ_ERR | ibv_wc_status::IBV_WC_REM_OP_ERR)
    }

    /// Whether it completes a receive (meaningful only for a successful completion: the
    /// opcode of a failed one is undefined).
    pub fn is_recv(&self) -> bool {
        self.opcode & ibv_wc_opcode::IBV_WC_RECV != 0
    }

    /// The status as text (e.g. "remote access error").
    pub fn status_str(&self) -> String {
        // SAFETY: ibv_wc_status_str accepts any value and returns a static string.
        let p = unsafe { ibv_wc_status_str(self.status) };
        if p.is_null() {
            return format!("status {}", self.status);
        }
        // SAFETY: non-null static NUL-terminated string.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    /// `Ok` for success, otherwise an error naming the status.
    ///
    /// # Errors
    ///
    /// `ConnectionAborted` for any failed completion.
    pub fn check(&self) -> io::Result<()> {
        if self.is_ok() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("work completion {:#x} on QP {}: {}", self.wr_id, self.qp_num, self.status_str()),
            ))
        }
    }
}

/// A completion queue attached to a [`CompChannel`].
pub struct CompletionQueue {
    pub(crate) cq: NonNull<ibv_cq>,
    channel: Arc<CompChannel>,
}

// SAFETY: verbs objects are thread-safe; see Context.
unsafe impl Send for CompletionQueue {}
// SAFETY: as above.
unsafe impl Sync for CompletionQueue {}

impl CompletionQueue {
    /// Creates a CQ of at least `entries` entries on `channel`.
    ///
    /// # Errors
    ///
    /// The `ibv_create_cq` error.
    pub fn new(ctx: &Arc<Context>, channel: &Arc<CompChannel>, entries: u32) -> io::Result<Arc<CompletionQueue>> {
        let n = i32::try_from(entries.max(1))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "completion queue too large"))?;
        // SAFETY: the context and channel are live.
        let cq = unsafe { ibv_create_cq(ctx.raw(), n, ptr::null_mut(), channel.ch.as_ptr(), 0) };
        let cq = NonNull::new(cq).ok_or_else(|| last_error("ibv_create_cq"))?;
        born(CQ);
        Ok(Arc::new(CompletionQueue { cq, channel: Arc::clone(channel) }))
    }

    /// Opaque identity matching [`CompChannel::take_event`]'s result.
    pub fn token(&self) -> usize {
        self.cq.as_ptr() as usize
    }

    /// The channel.
    pub fn channel(&self) -> &Arc<CompChannel> {
        &self.channel
    }

    /// Arms notification for the next completion.
    ///
    /// # Errors
    ///
    /// The `ibv_req_notify_cq` error.
    pub fn arm(&self) -> io::Result<()> {
        // SAFETY: the CQ is live.
        let ret = unsafe { ibv_req_notify_cq(self.cq.as_ptr(), 0) };
        if ret != 0 {
            return Err(ret_error("ibv_req_notify_cq", ret));
        }
        Ok(())
    }

    /// Polls up to `max` completions into `out` (appended); returns how many.
    ///
    /// # Errors
    ///
    /// The `ibv_poll_cq` error.
    pub fn poll(&self, out: &mut Vec<WorkCompletion>, max: usize) -> io::Result<usize> {
        const BATCH: usize = 16;
        let mut total = 0;
        while total < max {
            // SAFETY: ibv_wc is plain C data, valid when zeroed.
            let mut wcs: [ibv_wc; BATCH] = unsafe { std::mem::zeroed() };
            let want = (max - total).min(BATCH) as i32;
            // SAFETY: the CQ is live and `wcs` has room for `want` entries.
            let n = unsafe { ibv_poll_cq(self.cq.as_ptr(), want, wcs.as_mut_ptr()) };
            if n < 0 {
                return Err(ret_error("ibv_poll_cq", n));
            }
            let n = n.min(want);
            for wc in &wcs[..n as usize] {
                out.push(WorkCompletion {
                    wr_id: wc.wr_id,
                    status: wc.status,
                    opcode: wc.opcode,
                    byte_len: wc.byte_len,
                    with_imm: wc.wc_flags & ibv_wc_flags::IBV_WC_WITH_IMM.0 != 0,
                    qp_num: wc.qp_num,
                });
            }
            total += n as usize;
            if (n as usize) < want as usize {
                break;
            }
        }
        Ok(total)
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        // SAFETY: QPs hold an Arc to their CQs, so none uses it now; events taken through
        // CompChannel::take_event are acknowledged immediately.
        unsafe { ibv_destroy_cq(self.cq.as_ptr()) };
        died(CQ);
    }
}
