//! Recycled receive buffers for large frames.
//!
//! A large frame (a 64 KiB write, a 4 MiB object) is read straight into a buffer of its
//! own, sized from its preamble, and handed up zero-copy: the message's segments are
//! slices of that buffer. Left to the allocator, every such buffer is fresh memory: glibc
//! gives freed arena tops back to the kernel (`madvise`) and the next frame page-faults
//! its way through zeroing them again — a third of the receiving thread's time at
//! 64 KiB × 16 in flight before this pool existed. The pool keeps freed buffers, by
//! size class, up to a byte limit, so in steady state a large frame costs no allocation,
//! no zeroing and no page fault.
//!
//! Buffers return to the pool when the last slice of the frame is dropped, on whatever
//! thread that happens (a dispatch thread, a caller that kept the payload).

use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use crate::sync;
use bytes::Bytes;

/// Size classes are multiples of this.
const CLASS_STEP: usize = 16 * 1024;
/// Buffers above this are not kept: a few of them would fill the pool, and frames that
/// large are rare enough for the allocator's cost not to matter.
pub const MAX_POOLED: usize = 4 << 20;

/// A shared pool of receive buffers, bounded by the bytes it keeps idle.
///
/// ```
/// use msgr_core::proto::rxpool::RxPool;
/// let pool = RxPool::new(1 << 20);
/// let mut b = pool.take(70_000);
/// b.as_mut_slice()[0] = 7;
/// let frame = b.freeze();
/// assert_eq!(frame.len(), 70_000);
/// drop(frame);
/// // The buffer (rounded up to its size class) waits for the next large frame.
/// assert_eq!(pool.idle_bytes(), 80 * 1024);
/// ```
#[derive(Clone)]
pub struct RxPool {
    inner: Arc<Inner>,
}

struct Inner {
    max_idle: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    idle_bytes: usize,
    // Index = size class (capacity / CLASS_STEP - 1); each a LIFO stack so the buffer
    // reused next is the one most likely still in cache.
    classes: Vec<Vec<Vec<u8>>>,
}

impl fmt::Debug for RxPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RxPool").field("max_idle", &self.inner.max_idle).field("idle", &self.idle_bytes()).finish()
    }
}

fn class_size(len: usize) -> usize {
    len.div_ceil(CLASS_STEP).max(1) * CLASS_STEP
}

impl RxPool {
    /// A pool keeping at most `max_idle` bytes of unused buffers.
    pub fn new(max_idle: usize) -> RxPool {
        RxPool { inner: Arc::new(Inner { max_idle, state: Mutex::new(State::default()) }) }
    }

    #[cfg_attr(feature = "lock-count", track_caller)]
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves only a list of spare buffers behind.
        sync::lock(&self.inner.state)
    }

    /// A buffer of exactly `len` bytes (contents unspecified: a reused buffer holds an
    /// earlier frame's bytes), recycled into this pool when dropped.
    pub fn take(&self, len: usize) -> RxBuf {
        if len > MAX_POOLED {
            return RxBuf::unpooled(len);
        }
        let cap = class_size(len);
        let reused = {
            let mut st = self.lock();
            let v = st.classes.get_mut(cap / CLASS_STEP - 1).and_then(Vec::pop);
            if v.is_some() {
                st.idle_bytes -= cap;
            }
            v
        };
        let vec = reused.unwrap_or_else(|| vec![0; cap]);
        RxBuf { vec, len, pool: Some(Arc::downgrade(&self.inner)) }
    }

    /// Bytes held in idle buffers.
    pub fn idle_bytes(&self) -> usize {
        self.lock().idle_bytes
    }
}

impl Inner {
    fn give_back(&self, vec: Vec<u8>) {
        let cap = vec.len();
        let mut st = sync::lock(&self.state);
        if st.idle_bytes + cap > self.max_idle {
            return;
        }
        let class = cap / CLASS_STEP - 1;
        if st.classes.len() <= class {
            st.classes.resize_with(class + 1, Vec::new);
        }
        st.classes[class].push(vec);
        st.idle_bytes += cap;
    }
}

/// A receive buffer of a fixed length, from an [`RxPool`] or not.
pub struct RxBuf {
    // Always fully initialised: `len` of it is ours, the rest is class rounding.
    vec: Vec<u8>,
    len: usize,
    pool: Option<Weak<Inner>>,
}

impl RxBuf {
    /// A zeroed buffer that is freed, not recycled, when dropped.
    pub fn unpooled(len: usize) -> RxBuf {
        RxBuf { vec: vec![0; len], len, pool: None }
    }

    /// The buffer's bytes, to fill.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.vec[..self.len]
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Immutable, shareable bytes; the buffer goes back to its pool when the last
    /// slice of them is dropped.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for RxBuf {
    fn as_ref(&self) -> &[u8] {
        &self.vec[..self.len]
    }
}

impl Drop for RxBuf {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take().and_then(|w| w.upgrade()) {
            pool.give_back(std::mem::take(&mut self.vec));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_by_class() {
        let pool = RxPool::new(1 << 20);
        let mut a = pool.take(20_000);
        a.as_mut_slice()[19_999] = 9;
        let ptr = a.as_ref().as_ptr();
        drop(a.freeze());
        assert_eq!(pool.idle_bytes(), 32 * 1024);
        // Same class (17..32 KiB): the same memory comes back, with the right length.
        let b = pool.take(17_000);
        assert_eq!(b.as_ref().as_ptr(), ptr);
        assert_eq!(b.len(), 17_000);
        assert_eq!(pool.idle_bytes(), 0);
        // Another class: fresh memory.
        let c = pool.take(40_000);
        assert_ne!(c.as_ref().as_ptr(), ptr);
    }

    #[test]
    fn returns_only_when_the_last_slice_is_dropped() {
        let pool = RxPool::new(1 << 20);
        let frame = pool.take(50_000).freeze();
        let seg = frame.slice(100..200);
        drop(frame);
        assert_eq!(pool.idle_bytes(), 0);
        drop(seg);
        assert_eq!(pool.idle_bytes(), 64 * 1024);
    }

    #[test]
    fn idle_bytes_are_bounded() {
        let pool = RxPool::new(100 * 1024);
        let bufs: Vec<RxBuf> = (0..10).map(|_| pool.take(30_000)).collect();
        drop(bufs);
        // Three 32 KiB buffers fit under 100 KiB; the rest went back to the allocator.
        assert_eq!(pool.idle_bytes(), 96 * 1024);
    }

    #[test]
    fn huge_buffers_and_dead_pools_are_not_kept() {
        let pool = RxPool::new(usize::MAX);
        drop(pool.take(MAX_POOLED + 1));
        assert_eq!(pool.idle_bytes(), 0);
        let orphan = pool.take(1000);
        drop(pool);
        // The pool is gone: dropping its buffer just frees it.
        drop(orphan.freeze());
    }
}
