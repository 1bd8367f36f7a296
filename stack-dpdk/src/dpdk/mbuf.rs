//! [`Mbuf`]: one owned packet buffer, returned to its pool on drop.

use std::ptr::NonNull;
use std::sync::Arc;

use msgr_dpdk_sys as sys;

use super::mempool::Mempool;

/// One packet buffer (`struct rte_mbuf`), owned: it goes back to its pool when dropped.
///
/// Holds an `Arc` of its [`Mempool`], so the pool outlives it. The data accessors cover the
/// first segment; the ports of this module are set up without scatter, so received frames
/// are single-segment.
#[derive(Debug)]
pub struct Mbuf {
    raw: NonNull<sys::rte_mbuf>,
    pool: Arc<Mempool>,
}

// SAFETY: an Mbuf is the only owner of its rte_mbuf (refcount 1, not in any queue), so
// moving it to another thread moves all access with it; freeing it from any thread is a
// thread-safe mempool put. The pool is Send + Sync.
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Allocates an empty mbuf from `pool` (`rte_pktmbuf_alloc`); `None` when it is empty.
    pub fn alloc(pool: &Arc<Mempool>) -> Option<Mbuf> {
        // SAFETY: pool is a live rte_mempool of packet mbufs (the Arc keeps it alive).
        let raw = NonNull::new(unsafe { sys::msgr_dpdk_pktmbuf_alloc(pool.as_ptr()) })?;
        Some(Mbuf { raw, pool: Arc::clone(pool) })
    }

    /// Number of data bytes (`rte_pktmbuf_data_len`).
    pub fn len(&self) -> usize {
        // SAFETY: self.raw is a valid mbuf owned by self.
        usize::from(unsafe { sys::msgr_dpdk_pktmbuf_data_len(self.raw.as_ptr()) })
    }

    /// Whether the mbuf holds no data.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The data bytes.
    pub fn data(&self) -> &[u8] {
        let len = self.len();
        // SAFETY: self.raw is a valid mbuf owned by self.
        let ptr = unsafe { sys::msgr_dpdk_pktmbuf_mtod(self.raw.as_ptr()) }.cast::<u8>();
        if ptr.is_null() || len == 0 {
            return &[];
        }
        // SAFETY: mtod points at data_len initialised bytes inside the mbuf's data room,
        // which lives as long as self; the returned borrow of self prevents mutation.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }

    /// The data bytes, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        let len = self.len();
        // SAFETY: self.raw is a valid mbuf owned by self.
        let ptr = unsafe { sys::msgr_dpdk_pktmbuf_mtod(self.raw.as_ptr()) }.cast::<u8>();
        if ptr.is_null() || len == 0 {
            return &mut [];
        }
        // SAFETY: as in data(); the mbuf is owned (refcount 1, direct, not shared with a
        // driver), and the exclusive borrow of self makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }

    /// Grows the data by `len` bytes at the end (`rte_pktmbuf_append`) and returns them;
    /// `None` (and no change) when the tailroom is too small. The new bytes are not
    /// initialised by DPDK; this zeroes them.
    pub fn append(&mut self, len: usize) -> Option<&mut [u8]> {
        let len16 = u16::try_from(len).ok()?;
        // SAFETY: self.raw is a valid mbuf owned by self.
        let ptr = unsafe { sys::msgr_dpdk_pktmbuf_append(self.raw.as_ptr(), len16) }.cast::<u8>();
        if ptr.is_null() {
            return None;
        }
        // SAFETY: append returned a pointer to `len` bytes of the mbuf's data room that now
        // belong to its data; they live as long as self, which is exclusively borrowed. They
        // are written before a slice is made, so the slice never covers uninitialised bytes.
        unsafe {
            std::ptr::write_bytes(ptr, 0, len);
            Some(std::slice::from_raw_parts_mut(ptr, len))
        }
    }

    /// The pool this mbuf belongs to.
    pub fn pool(&self) -> &Arc<Mempool> {
        &self.pool
    }

    /// Gives up ownership: the caller becomes responsible for freeing the mbuf (or handing
    /// it to a driver) and for keeping its pool alive while the mbuf exists.
    pub(crate) fn into_raw(self) -> *mut sys::rte_mbuf {
        let raw = self.raw.as_ptr();
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: `me` is never used or dropped again, so the Arc moved out of it is dropped
        // exactly once, here; the mbuf itself is not freed.
        drop(unsafe { std::ptr::read(&me.pool) });
        raw
    }

    /// The raw mbuf, still owned by self.
    pub(crate) fn as_raw(&self) -> *mut sys::rte_mbuf {
        self.raw.as_ptr()
    }

    /// Takes ownership of `raw`.
    ///
    /// # Safety
    /// `raw` must be a valid packet mbuf that nothing else owns or uses any more (refcount 1,
    /// not in a driver queue), allocated from `pool`.
    pub(crate) unsafe fn from_raw(raw: NonNull<sys::rte_mbuf>, pool: Arc<Mempool>) -> Mbuf {
        Mbuf { raw, pool }
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: self owns the mbuf and never uses it again; its pool is alive (self.pool
        // is dropped after this).
        unsafe { sys::msgr_dpdk_pktmbuf_free(self.raw.as_ptr()) };
    }
}
