//! The only `unsafe` in the crate: RAII wrappers over libibverbs (via `rdma-sys`).
//!
//! Ownership follows the verbs object graph through `Arc`s, so destruction happens in the
//! required order whatever order the handles are dropped in: a [`QueuePair`] keeps its
//! [`CompletionQueue`]s, its [`SharedReceiveQueue`] and [`ProtectionDomain`] alive, a CQ
//! its [`CompChannel`], a [`Region`] its PD, and all of them the [`Context`].
//!
//! Buffers reach the device only through types that own them for as long as it may use
//! them ([`region`], [`qp`]): a receive takes a [`Chunk`] by value and gives it back only
//! for the completion of that very work request (or when its queue is destroyed); a send
//! owns its chunk and the `Bytes` it points into until its completion, or until its queue
//! pair is destroyed. No slice ever covers registered memory the device may be writing.
//!
//! Errors are `io::Error`s whose text names the verbs call that failed.

mod cq;
pub mod qp;
pub mod region;

pub use cq::{CompChannel, CompletionQueue, WorkCompletion};
pub use qp::{
    Destroyed, InFlight, PostScratch, QpCaps, QueuePair, RecvTable, SendWork, SendWorkError, SharedReceiveQueue,
};
pub use region::{Chunk, ChunkHome, Region, Sge, Slot};

use std::ffi::CStr;
use std::io;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use rdma_sys::*;

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
    /// Shared receive queues.
    pub srqs: usize,
}

static LIVE: [AtomicUsize; 7] = [const { AtomicUsize::new(0) }; 7];
const CTX: usize = 0;
const PD: usize = 1;
const MR: usize = 2;
const CHAN: usize = 3;
const CQ: usize = 4;
const QP: usize = 5;
const SRQ: usize = 6;

/// Bytes registered (and pinned) by live memory regions of this process.
static REGISTERED: AtomicU64 = AtomicU64::new(0);

fn born(kind: usize) {
    LIVE[kind].fetch_add(1, Ordering::Relaxed);
}

fn died(kind: usize) {
    LIVE[kind].fetch_sub(1, Ordering::Relaxed);
}

/// Counts of the verbs objects alive now.
pub fn live_objects() -> LiveObjects {
    let n = |k: usize| LIVE[k].load(Ordering::Relaxed);
    LiveObjects { contexts: n(CTX), pds: n(PD), mrs: n(MR), channels: n(CHAN), cqs: n(CQ), qps: n(QP), srqs: n(SRQ) }
}

/// Bytes registered with the device by this process now (every worker's pools).
pub fn registered_bytes() -> u64 {
    REGISTERED.load(Ordering::Relaxed)
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
    /// Most scatter/gather entries of one send work request.
    pub max_sge: u32,
    /// Most outstanding work requests of one shared receive queue; 0 when the device
    /// has no shared receive queues.
    pub max_srq_wr: u32,
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

    pub(crate) fn raw(&self) -> *mut ibv_context {
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
        let max_srq_wr = if attr.max_srq > 0 { pos(attr.max_srq_wr) } else { 0 };
        Ok(DeviceCaps {
            max_cqe: pos(attr.max_cqe),
            max_qp_wr: pos(attr.max_qp_wr),
            max_sge: pos(attr.max_sge),
            max_srq_wr,
        })
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
    pub(crate) pd: NonNull<ibv_pd>,
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
