//! Registered memory, and the exclusive right to one chunk of it.
//!
//! A [`Region`] is one page-aligned allocation registered with a protection domain. It
//! is carved into fixed-size chunks once, when it is created: each chunk's right of use
//! is a [`Slot`], made exactly once and never copied, so at any time one holder at most
//! can name a chunk's bytes. A slot is used as a [`Chunk`]: whoever holds the chunk may
//! read and write its bytes, post it as a receive (which moves the chunk into the
//! receive queue's table until the completion of that work request gives it back), or
//! wrap it into a `Bytes` (see `crate::pool`). Dropping a chunk, wherever and on
//! whichever thread, gives its slot back to its pool's [`ChunkHome`]: a chunk is never
//! lost and never returned twice.
//!
//! No slice covers more than one chunk, so reading a chunk never aliases bytes the device
//! is writing into another chunk of the same region. Every chunk keeps its region (and
//! through it the protection domain and device) alive, so registered memory outlives
//! every `Bytes` made from it.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use msgr_core::event::Waker;
use rdma_sys::*;

use super::{born, died, last_error, ProtectionDomain, MR, REGISTERED};

/// A scatter/gather entry (address, length, local key) inside a [`Region`].
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
pub struct Region {
    mr: NonNull<ibv_mr>,
    buf: NonNull<u8>,
    len: usize,
    _pd: Arc<ProtectionDomain>,
}

// SAFETY: the region's bytes are only reached through chunks, each owned by one holder
// (see the module documentation); the MR handle is a thread-safe verbs object.
unsafe impl Send for Region {}
// SAFETY: as above: shared access to the region gives no access to its bytes.
unsafe impl Sync for Region {}

impl Region {
    fn register(pd: &Arc<ProtectionDomain>, len: usize) -> io::Result<Region> {
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
                REGISTERED.fetch_add(len as u64, Ordering::Relaxed);
                Ok(Region { mr, buf, len, _pd: Arc::clone(pd) })
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

    /// Whether `len` bytes at `addr` lie inside the region.
    pub fn contains(&self, addr: usize, len: usize) -> bool {
        let start = self.addr() as usize;
        addr >= start && addr.checked_add(len).is_some_and(|end| end <= start + self.len)
    }

    /// The entry for `len` bytes at `addr`, if inside the region.
    pub(crate) fn sge_for(&self, addr: usize, len: usize) -> Option<Sge> {
        let length = u32::try_from(len).ok()?;
        self.contains(addr, len).then(|| Sge { addr: addr as u64, length, lkey: self.lkey() })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: no chunk of the region is alive (each holds an Arc to it), so no work
        // request can use it: deregister first, then free the memory that was registered.
        unsafe {
            ibv_dereg_mr(self.mr.as_ptr());
            std::alloc::dealloc(self.buf.as_ptr(), std::alloc::Layout::from_size_align_unchecked(self.len, PAGE));
        }
        REGISTERED.fetch_sub(self.len as u64, Ordering::Relaxed);
        died(MR);
    }
}

/// The right to use one chunk: `size` bytes at `offset` of `region`. Made only when a
/// region is carved, never cloned: holding it is holding the chunk.
pub struct Slot {
    region: Arc<Region>,
    offset: usize,
    size: usize,
    index: u32,
}

impl Slot {
    /// The chunk's index in its pool.
    pub fn index(&self) -> u32 {
        self.index
    }
}

/// The free chunks of one pool, shared with every chunk of it so that a chunk dropped on
/// any thread comes back here.
pub struct ChunkHome {
    free: Mutex<Vec<Slot>>,
    /// Chunks given back so far (a worker compares it to notice returns cheaply).
    returned: AtomicU64,
    /// Set by a worker that ran short of chunks: the next return wakes it.
    want_wake: AtomicBool,
    waker: OnceLock<Arc<dyn Waker>>,
}

impl ChunkHome {
    /// A home with no chunks yet.
    pub fn new() -> Arc<ChunkHome> {
        Arc::new(ChunkHome {
            free: Mutex::new(Vec::new()),
            returned: AtomicU64::new(0),
            want_wake: AtomicBool::new(false),
            waker: OnceLock::new(),
        })
    }

    fn free(&self) -> MutexGuard<'_, Vec<Slot>> {
        // The lock guards plain pushes and pops; a panic cannot leave the list torn.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `count` chunks of `size` bytes in `pd` as one region, numbered from
    /// `first_index`, and adds them to the free chunks; returns the region.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a zero size or count, the allocation or registration error.
    pub fn carve(
        &self,
        pd: &Arc<ProtectionDomain>,
        size: usize,
        count: u32,
        first_index: u32,
    ) -> io::Result<Arc<Region>> {
        let total = size
            .checked_mul(count as usize)
            .filter(|&t| t > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "invalid RDMA pool size"))?;
        let region = Arc::new(Region::register(pd, total)?);
        let mut free = self.free();
        // Lowest index on top: handed out first.
        for i in (0..count).rev() {
            free.push(Slot { region: Arc::clone(&region), offset: i as usize * size, size, index: first_index + i });
        }
        Ok(region)
    }

    /// Takes a free chunk.
    pub fn take(self: &Arc<Self>) -> Option<Chunk> {
        let slot = self.free().pop()?;
        Some(Chunk { slot: Some(slot), home: Arc::clone(self) })
    }

    /// Free chunks now.
    pub fn free_count(&self) -> usize {
        self.free().len()
    }

    /// Chunks given back so far.
    pub fn returned(&self) -> u64 {
        self.returned.load(Ordering::Acquire)
    }

    /// Sets who is woken by [`wake_on_return`](Self::wake_on_return) (once).
    pub fn set_waker(&self, waker: Arc<dyn Waker>) {
        let _ = self.waker.set(waker);
    }

    /// The next chunk given back wakes the waker (the worker ran short and may be about
    /// to sleep). A wake costs a system call only if the worker is asleep by then.
    pub fn wake_on_return(&self) {
        self.want_wake.store(true, Ordering::SeqCst);
    }

    fn give_back(&self, slot: Slot) {
        self.free().push(slot);
        self.returned.fetch_add(1, Ordering::Release);
        if self.want_wake.load(Ordering::SeqCst) && self.want_wake.swap(false, Ordering::SeqCst) {
            if let Some(w) = self.waker.get() {
                w.wake();
            }
        }
    }
}

/// A chunk held exclusively: no work request covers it and no other holder exists.
/// Dropping it gives it back to its pool.
pub struct Chunk {
    // `None` only inside `drop`.
    slot: Option<Slot>,
    home: Arc<ChunkHome>,
}

impl Chunk {
    fn slot(&self) -> &Slot {
        // Always `Some` outside `drop`.
        self.slot.as_ref().unwrap_or_else(|| unreachable!("a chunk's slot is taken only when it is dropped"))
    }

    /// The chunk's index in its pool.
    pub fn index(&self) -> u32 {
        self.slot().index
    }

    /// The chunk's size.
    pub fn size(&self) -> usize {
        self.slot().size
    }

    /// The region the chunk is part of.
    pub fn region(&self) -> &Arc<Region> {
        &self.slot().region
    }

    /// The chunk's bytes.
    pub fn as_slice(&self) -> &[u8] {
        let s = self.slot();
        // SAFETY: the bytes are inside the region (carved so), initialised (zeroed at
        // allocation), and this chunk is their only holder: no other slice of them
        // exists and no work request lets the device write them while the chunk is held
        // (posting a receive takes the chunk by value).
        unsafe { std::slice::from_raw_parts(s.region.buf.as_ptr().add(s.offset), s.size) }
    }

    /// The chunk's bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let s = self.slot();
        // SAFETY: as in `as_slice`; `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(s.region.buf.as_ptr().add(s.offset), s.size) }
    }

    /// The entry for the chunk's first `len` bytes (`len` is capped at the chunk size).
    pub(crate) fn sge(&self, len: usize) -> Sge {
        let s = self.slot();
        let len = len.min(s.size);
        Sge { addr: s.region.addr() + s.offset as u64, length: len as u32, lkey: s.region.lkey() }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.home.give_back(slot);
        }
    }
}
