//! The only `unsafe` in the crate: RAII wrappers over libibverbs (via `rdma-sys`).
//!
//! Ownership follows the verbs object graph through `Arc`s, so destruction happens in the
//! required order whatever order the handles are dropped in: a [`QueuePair`] keeps its
//! [`CompletionQueue`]s and [`ProtectionDomain`] alive, a CQ its [`CompChannel`], a
//! [`MemoryRegion`] its PD, and all of them the [`Context`].
//!
//! Errors are `io::Error`s whose text names the verbs call that failed.

use std::ffi::CStr;
use std::io;
use std::os::fd::RawFd;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rdma_sys::*;

use crate::qp::{ModifySpec, QpState};

/// `err` from errno, with `call` named.
fn last_error(call: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{call}: {e}"))
}

/// `err` from a returned errno value (verbs calls that return it instead of setting errno).
fn ret_error(call: &str, ret: i32) -> io::Error {
    let e = io::Error::from_raw_os_error(ret.abs());
    io::Error::new(e.kind(), format!("{call}: {e}"))
}

/// Verbs objects currently alive in this process, by kind (for leak checks in tests and
/// for `perf dump`-style reporting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LiveObjects {
    /// Open device contexts.
    pub contexts: usize,
    /// Protection domains.
    pub pds: usize,
    /// Registered memory regions.
    pub mrs: usize,
    /// Completion channels.
    pub channels: usize,
    /// Completion queues.
    pub cqs: usize,
    /// Queue pairs.
    pub qps: usize,
}

static LIVE: [AtomicUsize; 6] = [const { AtomicUsize::new(0) }; 6];
const CTX: usize = 0;
const PD: usize = 1;
const MR: usize = 2;
const CHAN: usize = 3;
const CQ: usize = 4;
const QP: usize = 5;

fn born(kind: usize) {
    LIVE[kind].fetch_add(1, Ordering::Relaxed);
}

fn died(kind: usize) {
    LIVE[kind].fetch_sub(1, Ordering::Relaxed);
}

/// Counts of the verbs objects alive now.
pub fn live_objects() -> LiveObjects {
    let n = |k: usize| LIVE[k].load(Ordering::Relaxed);
    LiveObjects { contexts: n(CTX), pds: n(PD), mrs: n(MR), channels: n(CHAN), cqs: n(CQ), qps: n(QP) }
}

/// The message for "no device".
pub const NO_DEVICE_HELP: &str = "no RDMA device found: load rdma_rxe and `rdma link add rxe0 type rxe netdev lo`, \
     or set ms_async_rdma_device_name";

/// Names of the RDMA devices on this host (empty when there are none, or when the verbs
/// library cannot list them).
pub fn device_names() -> Vec<String> {
    let mut n: i32 = 0;
    // SAFETY: `n` is a valid out-pointer; the list is freed below and not used afterwards.
    let list = unsafe { ibv_get_device_list(&mut n) };
    if list.is_null() {
        return Vec::new();
    }
    let mut names = Vec::new();
    for i in 0..n.max(0) as usize {
        // SAFETY: `list` has `n` valid entries; each device's name is a NUL-terminated
        // string owned by the list, copied out before the list is freed.
        unsafe {
            let dev = *list.add(i);
            if !dev.is_null() {
                let name = ibv_get_device_name(dev);
                if !name.is_null() {
                    names.push(CStr::from_ptr(name).to_string_lossy().into_owned());
                }
            }
        }
    }
    // SAFETY: `list` came from ibv_get_device_list and is freed once.
    unsafe { ibv_free_device_list(list) };
    names
}

/// The soft RLIMIT_MEMLOCK in bytes; `None` when unlimited.
///
/// # Errors
///
/// The `getrlimit` error.
pub fn memlock_limit() -> io::Result<Option<u64>> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `r` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return Err(last_error("getrlimit(RLIMIT_MEMLOCK)"));
    }
    Ok(if r.rlim_cur == libc::RLIM_INFINITY { None } else { Some(r.rlim_cur) })
}

/// Best effort: raises RLIMIT_MEMLOCK to at least `needed` bytes (possible up to the hard
/// limit, or beyond it with CAP_SYS_RESOURCE); returns the resulting soft limit.
///
/// # Errors
///
/// The `getrlimit` error.
pub fn raise_memlock(needed: u64) -> io::Result<Option<u64>> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `r` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return Err(last_error("getrlimit(RLIMIT_MEMLOCK)"));
    }
    if r.rlim_cur != libc::RLIM_INFINITY && r.rlim_cur < needed {
        let hard = if r.rlim_max == libc::RLIM_INFINITY { r.rlim_max } else { r.rlim_max.max(needed) };
        let want = libc::rlimit { rlim_cur: needed, rlim_max: hard };
        // SAFETY: `want` is a valid rlimit; failure (no privilege) is tolerated.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &want) } != 0 && r.rlim_max >= needed {
            let soft_only = libc::rlimit { rlim_cur: needed, rlim_max: r.rlim_max };
            // SAFETY: as above; raising the soft limit up to the hard one needs no privilege.
            unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &soft_only) };
        }
    }
    memlock_limit()
}

/// Port properties this stack needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortInfo {
    /// `ibv_port_state` value.
    pub state: u32,
    /// Active MTU (`ibv_mtu` value).
    pub active_mtu: u32,
    /// LID.
    pub lid: u16,
    /// Size of the GID table.
    pub gid_tbl_len: i32,
}

impl PortInfo {
    /// Whether the port is ACTIVE.
    pub fn is_active(&self) -> bool {
        self.state == ibv_port_state::IBV_PORT_ACTIVE
    }
}

/// Device limits (`ibv_query_device`) this stack sizes its queues by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceCaps {
    /// Most entries of one completion queue.
    pub max_cqe: u32,
    /// Most outstanding work requests of one queue.
    pub max_qp_wr: u32,
}

/// An open device.
pub struct Context {
    ctx: NonNull<ibv_context>,
    name: String,
}

// SAFETY: libibverbs contexts are thread-safe (the library locks internally); the handle is
// only a pointer to it.
unsafe impl Send for Context {}
// SAFETY: as above.
unsafe impl Sync for Context {}

impl Context {
    /// Opens device `name`, or the first device when `None`.
    ///
    /// # Errors
    ///
    /// `NotFound` with [`NO_DEVICE_HELP`] when there is no device, or naming the devices
    /// present when `name` is not one of them; the `ibv_open_device` error otherwise.
    pub fn open(name: Option<&str>) -> io::Result<Arc<Context>> {
        let mut n: i32 = 0;
        // SAFETY: `n` is a valid out-pointer; the list is freed before returning.
        let list = unsafe { ibv_get_device_list(&mut n) };
        if list.is_null() || n <= 0 {
            if !list.is_null() {
                // SAFETY: freed once, not used afterwards.
                unsafe { ibv_free_device_list(list) };
            }
            return Err(io::Error::new(io::ErrorKind::NotFound, NO_DEVICE_HELP));
        }
        let mut found: Option<(*mut ibv_device, String)> = None;
        let mut seen = Vec::new();
        for i in 0..n as usize {
            // SAFETY: `list` has `n` entries; names are valid C strings while the list lives.
            let (dev, dev_name) = unsafe {
                let dev = *list.add(i);
                let p = if dev.is_null() { ptr::null() } else { ibv_get_device_name(dev) };
                (dev, if p.is_null() { String::new() } else { CStr::from_ptr(p).to_string_lossy().into_owned() })
            };
            if dev.is_null() {
                continue;
            }
            if name.is_none_or(|want| want == dev_name) {
                found = Some((dev, dev_name));
                break;
            }
            seen.push(dev_name);
        }
        let result = match found {
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "RDMA device '{}' not found (present: {}): fix ms_async_rdma_device_name",
                    name.unwrap_or(""),
                    seen.join(", ")
                ),
            )),
            Some((dev, dev_name)) => {
                // SAFETY: `dev` is a live entry of `list`; the context stays valid after
                // the list is freed (verbs keeps the device referenced while open).
                let ctx = unsafe { ibv_open_device(dev) };
                match NonNull::new(ctx) {
                    Some(ctx) => {
                        born(CTX);
                        Ok(Arc::new(Context { ctx, name: dev_name }))
                    }
                    None => Err(last_error("ibv_open_device")),
                }
            }
        };
        // SAFETY: freed once, not used afterwards.
        unsafe { ibv_free_device_list(list) };
        result
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn raw(&self) -> *mut ibv_context {
        self.ctx.as_ptr()
    }

    /// The device limits queue sizes are checked against.
    ///
    /// # Errors
    ///
    /// The `ibv_query_device` error.
    pub fn caps(&self) -> io::Result<DeviceCaps> {
        // SAFETY: ibv_device_attr is plain C data, valid when zeroed.
        let mut attr: ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the context is open and `attr` is a valid out-pointer of the right size.
        let ret = unsafe { ibv_query_device(self.raw(), &mut attr) };
        if ret != 0 {
            return Err(ret_error(&format!("ibv_query_device({})", self.name), ret));
        }
        let pos = |v: i32| u32::try_from(v).unwrap_or(0);
        Ok(DeviceCaps { max_cqe: pos(attr.max_cqe), max_qp_wr: pos(attr.max_qp_wr) })
    }

    /// Queries port `port`.
    ///
    /// # Errors
    ///
    /// The `ibv_query_port` error (e.g. no such port).
    pub fn query_port(&self, port: u8) -> io::Result<PortInfo> {
        // SAFETY: ibv_port_attr is plain C data, valid when zeroed.
        let mut attr: ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the context is open and `attr` is a valid out-pointer of the right size.
        let ret = unsafe { ___ibv_query_port(self.raw(), port, &mut attr) };
        if ret != 0 {
            return Err(ret_error(&format!("ibv_query_port({}, port {port})", self.name), ret));
        }
        Ok(PortInfo { state: attr.state, active_mtu: attr.active_mtu, lid: attr.lid, gid_tbl_len: attr.gid_tbl_len })
    }

    /// Queries port `port` and fails unless it is ACTIVE.
    ///
    /// # Errors
    ///
    /// As [`query_port`](Self::query_port), or `NotConnected` saying what to change.
    pub fn active_port(&self, port: u8) -> io::Result<PortInfo> {
        let info = self
            .query_port(port)
            .map_err(|e| io::Error::new(e.kind(), format!("{e}: check ms_async_rdma_port_num (ports start at 1)")))?;
        if !info.is_active() {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!(
                    "RDMA port {port} of {} is not active (state {}): bring its netdev/link up \
                     (`ip link set <dev> up`, `rdma link show`) or change ms_async_rdma_port_num",
                    self.name, info.state
                ),
            ));
        }
        Ok(info)
    }

    /// GID `index` of port `port`.
    ///
    /// # Errors
    ///
    /// The `ibv_query_gid` error, or `InvalidInput` for an all-zero GID (unset entry).
    pub fn query_gid(&self, port: u8, index: u8) -> io::Result<[u8; 16]> {
        let mut gid = ibv_gid { raw: [0; 16] };
        // SAFETY: the context is open and `gid` is a valid out-pointer.
        let ret = unsafe { ibv_query_gid(self.raw(), port, i32::from(index), &mut gid) };
        if ret != 0 {
            let e = ret_error(&format!("ibv_query_gid(port {port}, index {index})"), ret);
            return Err(io::Error::new(e.kind(), format!("{e}: change ms_async_rdma_gid_idx")));
        }
        // SAFETY: every bit pattern of the union is a valid `[u8; 16]`.
        let raw = unsafe { gid.raw };
        if raw == [0; 16] {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("GID index {index} of {} port {port} is empty: change ms_async_rdma_gid_idx", self.name),
            ));
        }
        Ok(raw)
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: every child object holds an Arc<Context>, so none is alive now.
        unsafe { ibv_close_device(self.raw()) };
        died(CTX);
    }
}

/// A protection domain.
pub struct ProtectionDomain {
    pd: NonNull<ibv_pd>,
    ctx: Arc<Context>,
}

// SAFETY: verbs objects are thread-safe; see Context.
unsafe impl Send for ProtectionDomain {}
// SAFETY: as above.
unsafe impl Sync for ProtectionDomain {}

impl ProtectionDomain {
    /// Allocates a PD on `ctx`.
    ///
    /// # Errors
    ///
    /// The `ibv_alloc_pd` error.
    pub fn new(ctx: &Arc<Context>) -> io::Result<Arc<ProtectionDomain>> {
        // SAFETY: the context is open.
        let pd = unsafe { ibv_alloc_pd(ctx.raw()) };
        let pd = NonNull::new(pd).ok_or_else(|| last_error("ibv_alloc_pd"))?;
        born(PD);
        Ok(Arc::new(ProtectionDomain { pd, ctx: Arc::clone(ctx) }))
    }

    /// The device context.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }
}

impl Drop for ProtectionDomain {
    fn drop(&mut self) {
        // SAFETY: MRs and QPs hold an Arc to this PD, so none is alive now.
        unsafe { ibv_dealloc_pd(self.pd.as_ptr()) };
        died(PD);
    }
}

/// A scatter/gather entry (address, length, local key) inside a [`MemoryRegion`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sge {
    /// Virtual address.
    pub addr: u64,
    /// Length in bytes.
    pub length: u32,
    /// Local key of the region.
    pub lkey: u32,
}

const PAGE: usize = 4096;

/// A page-aligned, zeroed allocation registered for local write (owns both).
pub struct MemoryRegion {
    mr: NonNull<ibv_mr>,
    buf: NonNull<u8>,
    len: usize,
    _pd: Arc<ProtectionDomain>,
}

// SAFETY: the region owns its buffer exclusively; verbs MRs are thread-safe handles.
unsafe impl Send for MemoryRegion {}
// SAFETY: shared access only reads the buffer (`as_slice`); writes need `&mut self`.
unsafe impl Sync for MemoryRegion {}

impl MemoryRegion {
    /// Allocates `len` zeroed bytes and registers them in `pd`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for `len == 0`, `OutOfMemory` if allocation fails, the `ibv_reg_mr`
    /// error otherwise (with a hint about RLIMIT_MEMLOCK).
    pub fn new(pd: &Arc<ProtectionDomain>, len: usize) -> io::Result<MemoryRegion> {
        let layout = std::alloc::Layout::from_size_align(len, PAGE)
            .ok()
            .filter(|_| len > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "invalid memory region size"))?;
        // SAFETY: the layout has a non-zero size.
        let buf = unsafe { std::alloc::alloc_zeroed(layout) };
        let buf = NonNull::new(buf)
            .ok_or_else(|| io::Error::new(io::ErrorKind::OutOfMemory, format!("cannot allocate {len} bytes")))?;
        let access = ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0 as i32;
        // SAFETY: `buf` points to `len` bytes owned by this region until after deregistration.
        let mr = unsafe { ibv_reg_mr(pd.pd.as_ptr(), buf.as_ptr().cast(), len, access) };
        match NonNull::new(mr) {
            Some(mr) => {
                born(MR);
                Ok(MemoryRegion { mr, buf, len, _pd: Arc::clone(pd) })
            }
            None => {
                let e = last_error("ibv_reg_mr");
                // SAFETY: allocated above with `layout`, never registered.
                unsafe { std::alloc::dealloc(buf.as_ptr(), layout) };
                Err(io::Error::new(
                    e.kind(),
                    format!(
                        "{e} ({len} bytes): if RLIMIT_MEMLOCK is low, raise it: ulimit -l unlimited / LimitMEMLOCK"
                    ),
                ))
            }
        }
    }

    /// Region length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (never: construction rejects 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Start address.
    pub fn addr(&self) -> u64 {
        self.buf.as_ptr() as u64
    }

    /// Local key.
    pub fn lkey(&self) -> u32 {
        // SAFETY: the MR is registered until drop.
        unsafe { (*self.mr.as_ptr()).lkey }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `buf` holds `len` initialised (zeroed) bytes owned by self. The device
        // writes only into buffers of posted receives, which callers do not read until
        // the completion arrives.
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr(), self.len) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.buf.as_ptr(), self.len) }
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: deregister first, then free the memory that was registered.
        unsafe {
            ibv_dereg_mr(self.mr.as_ptr());
            std::alloc::dealloc(self.buf.as_ptr(), std::alloc::Layout::from_size_align_unchecked(self.len, PAGE));
        }
        died(MR);
    }
}

/// A completion channel: its fd becomes readable when an armed CQ gets a completion.
pub struct CompChannel {
    ch: NonNull<ibv_comp_channel>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkCompletion {
    /// The work request id given when posting.
    pub wr_id: u64,
    /// `ibv_wc_status` value.
    pub status: u32,
    /// `ibv_wc_opcode` value.
    pub opcode: u32,
    /// Bytes received (receives only).
    pub byte_len: u32,
    /// Immediate data in host order, if any.
    pub imm: Option<u32>,
    /// Local QP number.
    pub qp_num: u32,
}

impl WorkCompletion {
    /// Whether it succeeded.
    pub fn is_ok(&self) -> bool {
        self.status == ibv_wc_status::IBV_WC_SUCCESS
    }

    /// Whether it is a flushed work request (the QP is in ERROR).
    pub fn is_flush(&self) -> bool {
        self.status == ibv_wc_status::IBV_WC_WR_FLUSH_ERR
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
                format!("work completion {} on QP {}: {}", self.wr_id, self.qp_num, self.status_str()),
            ))
        }
    }
}

/// A completion queue attached to a [`CompChannel`].
pub struct CompletionQueue {
    cq: NonNull<ibv_cq>,
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
                let imm = if wc.wc_flags & ibv_wc_flags::IBV_WC_WITH_IMM.0 != 0 {
                    // SAFETY: with IBV_WC_WITH_IMM the union holds the immediate data.
                    Some(u32::from_be(unsafe { wc.imm_data_invalidated_rkey_union.imm_data }))
                } else {
                    None
                };
                out.push(WorkCompletion {
                    wr_id: wc.wr_id,
                    status: wc.status,
                    opcode: wc.opcode,
                    byte_len: wc.byte_len,
                    imm,
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

/// Sizes of a new queue pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpCaps {
    /// Send queue depth.
    pub max_send_wr: u32,
    /// Receive queue depth.
    pub max_recv_wr: u32,
}

/// A reliable-connected queue pair.
pub struct QueuePair {
    qp: NonNull<ibv_qp>,
    state: QpState,
    _send_cq: Arc<CompletionQueue>,
    _recv_cq: Arc<CompletionQueue>,
    _pd: Arc<ProtectionDomain>,
}

// SAFETY: verbs objects are thread-safe; see Context. Posting needs `&mut self`.
unsafe impl Send for QueuePair {}

impl QueuePair {
    /// Creates an RC QP in RESET.
    ///
    /// # Errors
    ///
    /// The `ibv_create_qp` error.
    pub fn new_rc(
        pd: &Arc<ProtectionDomain>,
        send_cq: &Arc<CompletionQueue>,
        recv_cq: &Arc<CompletionQueue>,
        caps: QpCaps,
    ) -> io::Result<QueuePair> {
        // SAFETY: plain C data, valid when zeroed (null SRQ and context).
        let mut init: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = send_cq.cq.as_ptr();
        init.recv_cq = recv_cq.cq.as_ptr();
        init.cap.max_send_wr = caps.max_send_wr;
        init.cap.max_recv_wr = caps.max_recv_wr;
        init.cap.max_send_sge = 1;
        init.cap.max_recv_sge = 1;
        init.qp_type = ibv_qp_type::IBV_QPT_RC;
        // SAFETY: PD and CQs are live and kept alive by the QP.
        let qp = unsafe { ibv_create_qp(pd.pd.as_ptr(), &mut init) };
        let qp = NonNull::new(qp).ok_or_else(|| last_error("ibv_create_qp"))?;
        born(QP);
        Ok(QueuePair {
            qp,
            state: QpState::Reset,
            _send_cq: Arc::clone(send_cq),
            _recv_cq: Arc::clone(recv_cq),
            _pd: Arc::clone(pd),
        })
    }

    /// The QP number.
    pub fn qpn(&self) -> u32 {
        // SAFETY: the QP is live.
        unsafe { (*self.qp.as_ptr()).qp_num }
    }

    /// The state as last set through [`modify`](Self::modify).
    pub fn state(&self) -> QpState {
        self.state
    }

    /// Applies `spec` (from [`crate::qp::modify_spec`]) and records `to`.
    ///
    /// # Errors
    ///
    /// The `ibv_modify_qp` error, naming the target state.
    pub fn modify(&mut self, to: QpState, spec: &ModifySpec) -> io::Result<()> {
        // SAFETY: plain C data, valid when zeroed.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = spec.qp_state;
        a.port_num = spec.port_num;
        a.pkey_index = spec.pkey_index;
        a.qp_access_flags = spec.access;
        a.path_mtu = spec.path_mtu;
        a.dest_qp_num = spec.dest_qpn;
        a.rq_psn = spec.rq_psn;
        a.sq_psn = spec.sq_psn;
        a.max_dest_rd_atomic = spec.max_dest_rd_atomic;
        a.max_rd_atomic = spec.max_rd_atomic;
        a.min_rnr_timer = spec.min_rnr_timer;
        a.timeout = spec.timeout;
        a.retry_cnt = spec.retry_cnt;
        a.rnr_retry = spec.rnr_retry;
        a.ah_attr.is_global = u8::from(spec.is_global);
        a.ah_attr.dlid = spec.dlid;
        a.ah_attr.port_num = spec.port_num;
        a.ah_attr.grh.dgid = ibv_gid { raw: spec.dgid };
        a.ah_attr.grh.sgid_index = spec.sgid_index;
        a.ah_attr.grh.hop_limit = spec.hop_limit;
        // SAFETY: the QP is live and `a` is fully initialised.
        let ret = unsafe { ibv_modify_qp(self.qp.as_ptr(), &mut a, spec.mask as i32) };
        if ret != 0 {
            return Err(ret_error(&format!("ibv_modify_qp(-> {to:?})"), ret));
        }
        self.state = to;
        Ok(())
    }

    /// Moves the QP to ERROR: outstanding work requests complete with "flush" status, so
    /// their buffers can be reclaimed before the QP is destroyed.
    ///
    /// # Errors
    ///
    /// The `ibv_modify_qp` error.
    pub fn set_error(&mut self) -> io::Result<()> {
        self.modify(QpState::Error, &ModifySpec::state_only(QpState::Error))
    }

    /// Posts one receive of `sge` (which must lie in a live [`MemoryRegion`] of the same
    /// PD and stay untouched until its completion).
    ///
    /// # Errors
    ///
    /// The `ibv_post_recv` error.
    pub fn post_recv(&mut self, wr_id: u64, sge: Sge) -> io::Result<()> {
        let mut sg = ibv_sge { addr: sge.addr, length: sge.length, lkey: sge.lkey };
        let mut wr = ibv_recv_wr { wr_id, next: ptr::null_mut(), sg_list: &mut sg, num_sge: 1 };
        let mut bad: *mut ibv_recv_wr = ptr::null_mut();
        // SAFETY: the QP is live; `wr` and `sg` outlive the call (verbs copies them).
        let ret = unsafe { ibv_post_recv(self.qp.as_ptr(), &mut wr, &mut bad) };
        if ret != 0 {
            return Err(ret_error("ibv_post_recv", ret));
        }
        Ok(())
    }

    /// Posts one signalled SEND of `sge` (`None` = zero-length) with immediate data `imm`.
    ///
    /// # Errors
    ///
    /// The `ibv_post_send` error.
    pub fn post_send(&mut self, wr_id: u64, sge: Option<Sge>, imm: u32) -> io::Result<()> {
        let mut sg = sge.map(|s| ibv_sge { addr: s.addr, length: s.length, lkey: s.lkey });
        // SAFETY: plain C data, valid when zeroed.
        let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.opcode = ibv_wr_opcode::IBV_WR_SEND_WITH_IMM;
        wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
        wr.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
        if let Some(sg) = sg.as_mut() {
            wr.sg_list = sg;
            wr.num_sge = 1;
        }
        let mut bad: *mut ibv_send_wr = ptr::null_mut();
        // SAFETY: the QP is live; `wr` and `sg` outlive the call (verbs copies them); the
        // buffer is in a registered region the caller keeps until the completion.
        let ret = unsafe { ibv_post_send(self.qp.as_ptr(), &mut wr, &mut bad) };
        if ret != 0 {
            return Err(ret_error("ibv_post_send", ret));
        }
        Ok(())
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        // SAFETY: the QP is live and destroyed once; its CQs and PD outlive it (Arcs).
        unsafe { ibv_destroy_qp(self.qp.as_ptr()) };
        died(QP);
    }
}
