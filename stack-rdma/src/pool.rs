//! Registered-memory pool: fixed-size chunks carved out of one memory region.
//!
//! [`ChunkAllocator`] is the bookkeeping over chunk indices (host-testable);
//! [`RegisteredPool`] puts it over a [`MemoryRegion`] and hands out scatter/gather entries.

use std::io;
use std::sync::Arc;

use crate::verbs::{MemoryRegion, ProtectionDomain, Sge};

/// A misuse of the allocator (reported, never a panic: indices may come from a work
/// completion's `wr_id`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// Index beyond the pool.
    #[error("chunk {index} is outside the pool of {count}")]
    OutOfRange {
        /// The index given.
        index: u32,
        /// Chunks in the pool.
        count: u32,
    },
    /// Chunk returned while already free.
    #[error("chunk {0} returned twice")]
    DoubleReturn(u32),
    /// A length larger than a chunk.
    #[error("length {len} exceeds the chunk size {chunk_size}")]
    TooLong {
        /// Length asked for.
        len: usize,
        /// Chunk size.
        chunk_size: usize,
    },
}

impl From<PoolError> for io::Error {
    fn from(e: PoolError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Free list over chunk indices `0..capacity`, where the capacity can grow up to a limit.
#[derive(Debug, Clone)]
pub struct ChunkAllocator {
    free: Vec<u32>,
    in_use: Vec<bool>,
}

impl ChunkAllocator {
    /// All `count` chunks free; lowest indices are handed out first.
    pub fn new(count: u32) -> Self {
        let mut a = ChunkAllocator { free: Vec::new(), in_use: Vec::new() };
        a.grow(count);
        a
    }

    /// Adds `n` free chunks at the end of the index range.
    pub fn grow(&mut self, n: u32) {
        let old = self.capacity();
        let new = old.saturating_add(n);
        self.in_use.resize(new as usize, false);
        // Lowest index on top of the stack: handed out first.
        let mut fresh: Vec<u32> = (old..new).rev().collect();
        fresh.append(&mut self.free);
        self.free = fresh;
    }

    /// Number of chunks.
    pub fn capacity(&self) -> u32 {
        self.in_use.len() as u32
    }

    /// Number of free chunks.
    pub fn available(&self) -> u32 {
        self.free.len() as u32
    }

    /// Number of chunks checked out.
    pub fn in_use(&self) -> u32 {
        self.capacity() - self.available()
    }

    /// Takes a free chunk; `None` when exhausted.
    pub fn checkout(&mut self) -> Option<u32> {
        let i = self.free.pop()?;
        self.in_use[i as usize] = true;
        Some(i)
    }

    /// Whether `index` is currently checked out.
    pub fn is_checked_out(&self, index: u32) -> bool {
        self.in_use.get(index as usize).copied().unwrap_or(false)
    }

    /// Returns a chunk.
    ///
    /// # Errors
    ///
    /// [`PoolError::OutOfRange`] or [`PoolError::DoubleReturn`]; nothing changes then.
    pub fn give_back(&mut self, index: u32) -> Result<(), PoolError> {
        let count = self.capacity();
        let slot = self.in_use.get_mut(index as usize).ok_or(PoolError::OutOfRange { index, count })?;
        if !*slot {
            return Err(PoolError::DoubleReturn(index));
        }
        *slot = false;
        self.free.push(index);
        Ok(())
    }
}

/// Up to `max` chunks of `chunk_size` bytes, registered in slabs of `slab` chunks as they
/// are first needed (Ceph's defaults allow gigabytes per worker; only what traffic
/// actually uses gets allocated and pinned).
pub struct RegisteredPool {
    pd: Arc<ProtectionDomain>,
    slabs: Vec<MemoryRegion>,
    alloc: ChunkAllocator,
    chunk_size: usize,
    slab_chunks: u32,
    max: u32,
}

impl RegisteredPool {
    /// Allocates and registers all `count` chunks of `chunk_size` bytes in `pd` at once.
    ///
    /// # Errors
    ///
    /// As [`growable`](Self::growable).
    pub fn new(pd: &Arc<ProtectionDomain>, chunk_size: usize, count: u32) -> io::Result<Self> {
        let mut pool = Self::growable(pd, chunk_size, count, count)?;
        pool.grow()?;
        Ok(pool)
    }

    /// A pool that registers nothing yet and grows by `slab` chunks (one memory region
    /// each) whenever it runs dry, up to `max` chunks.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a zero size or count, or a slab whose size overflows.
    pub fn growable(pd: &Arc<ProtectionDomain>, chunk_size: usize, max: u32, slab: u32) -> io::Result<Self> {
        let slab = slab.clamp(1, max.max(1));
        let ok = chunk_size > 0
            && max > 0
            && u32::try_from(chunk_size).is_ok()
            && chunk_size.checked_mul(slab as usize).is_some()
            && chunk_size.checked_mul(max as usize).is_some();
        if !ok {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "invalid RDMA pool size"));
        }
        Ok(RegisteredPool {
            pd: Arc::clone(pd),
            slabs: Vec::new(),
            alloc: ChunkAllocator::new(0),
            chunk_size,
            slab_chunks: slab,
            max,
        })
    }

    /// Registers one more slab, if the limit allows; returns whether it did.
    fn grow(&mut self) -> io::Result<bool> {
        let have = self.alloc.capacity();
        let n = self.slab_chunks.min(self.max - have);
        if n == 0 {
            return Ok(false);
        }
        // Only the last slab can be short (the limit is reached with it), so chunk
        // `i` always lives in slab `i / slab_chunks`.
        self.slabs.push(MemoryRegion::new(&self.pd, self.chunk_size * n as usize)?);
        self.alloc.grow(n);
        Ok(true)
    }

    /// Chunk size in bytes.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// Most chunks this pool will ever register.
    pub fn max_chunks(&self) -> u32 {
        self.max
    }

    /// Bytes registered so far.
    pub fn registered_bytes(&self) -> u64 {
        self.slabs.iter().map(|m| m.len() as u64).sum()
    }

    /// The index bookkeeping (free count, capacity).
    pub fn allocator(&self) -> &ChunkAllocator {
        &self.alloc
    }

    /// Chunks checked out now.
    pub fn in_use(&self) -> u32 {
        self.alloc.in_use()
    }

    /// Takes a free chunk, registering a new slab if needed; `Ok(None)` at the limit.
    ///
    /// # Errors
    ///
    /// The registration error of a new slab (typically RLIMIT_MEMLOCK).
    pub fn try_checkout(&mut self) -> io::Result<Option<u32>> {
        if let Some(i) = self.alloc.checkout() {
            return Ok(Some(i));
        }
        if self.grow()? {
            return Ok(self.alloc.checkout());
        }
        Ok(None)
    }

    /// Takes a free chunk; `None` when exhausted or when a new slab cannot be registered.
    pub fn checkout(&mut self) -> Option<u32> {
        self.try_checkout().ok().flatten()
    }

    /// Returns a chunk.
    ///
    /// # Errors
    ///
    /// As [`ChunkAllocator::give_back`].
    pub fn give_back(&mut self, index: u32) -> Result<(), PoolError> {
        self.alloc.give_back(index)
    }

    /// Slab and byte range within it of the first `len` bytes of checked-out chunk `index`.
    fn locate(&self, index: u32, len: usize) -> Result<(usize, std::ops::Range<usize>), PoolError> {
        if !self.alloc.is_checked_out(index) {
            let count = self.alloc.capacity();
            return Err(if index < count {
                PoolError::DoubleReturn(index)
            } else {
                PoolError::OutOfRange { index, count }
            });
        }
        if len > self.chunk_size {
            return Err(PoolError::TooLong { len, chunk_size: self.chunk_size });
        }
        let slab = (index / self.slab_chunks) as usize;
        let start = (index % self.slab_chunks) as usize * self.chunk_size;
        let count = self.alloc.capacity();
        match self.slabs.get(slab) {
            Some(m) if start + len <= m.len() => Ok((slab, start..start + len)),
            _ => Err(PoolError::OutOfRange { index, count }),
        }
    }

    /// The first `len` bytes of checked-out chunk `index`.
    ///
    /// # Errors
    ///
    /// A [`PoolError`] if the chunk is not checked out or `len` is too long.
    pub fn bytes(&self, index: u32, len: usize) -> Result<&[u8], PoolError> {
        let (slab, r) = self.locate(index, len)?;
        Ok(&self.slabs[slab].as_slice()[r])
    }

    /// The whole of checked-out chunk `index`, writable.
    ///
    /// # Errors
    ///
    /// A [`PoolError`] if the chunk is not checked out.
    pub fn bytes_mut(&mut self, index: u32) -> Result<&mut [u8], PoolError> {
        let (slab, r) = self.locate(index, self.chunk_size)?;
        Ok(&mut self.slabs[slab].as_mut_slice()[r])
    }

    /// A scatter/gather entry for the first `len` bytes of checked-out chunk `index`.
    ///
    /// # Errors
    ///
    /// As [`bytes`](Self::bytes).
    pub fn sge(&self, index: u32, len: usize) -> Result<Sge, PoolError> {
        let (slab, r) = self.locate(index, len)?;
        let m = &self.slabs[slab];
        Ok(Sge { addr: m.addr() + r.start as u64, length: len as u32, lkey: m.lkey() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkout_until_exhausted_then_reuse() {
        let mut a = ChunkAllocator::new(3);
        assert_eq!(a.capacity(), 3);
        assert_eq!((a.checkout(), a.checkout(), a.checkout()), (Some(0), Some(1), Some(2)));
        assert_eq!(a.checkout(), None);
        assert_eq!(a.available(), 0);
        a.give_back(1).unwrap();
        assert_eq!(a.available(), 1);
        assert_eq!(a.checkout(), Some(1));
    }

    #[test]
    fn double_return_and_bounds_are_errors() {
        let mut a = ChunkAllocator::new(2);
        assert_eq!(a.give_back(0), Err(PoolError::DoubleReturn(0)), "never checked out");
        let i = a.checkout().unwrap();
        a.give_back(i).unwrap();
        assert_eq!(a.give_back(i), Err(PoolError::DoubleReturn(i)));
        assert_eq!(a.give_back(2), Err(PoolError::OutOfRange { index: 2, count: 2 }));
        assert_eq!(a.give_back(u32::MAX), Err(PoolError::OutOfRange { index: u32::MAX, count: 2 }));
        assert_eq!(a.available(), 2);
    }

    #[test]
    fn empty_allocator() {
        let mut a = ChunkAllocator::new(0);
        assert_eq!(a.checkout(), None);
        assert!(!a.is_checked_out(0));
    }

    #[test]
    fn growth_appends_free_chunks_after_the_existing_ones() {
        let mut a = ChunkAllocator::new(2);
        assert_eq!(a.checkout(), Some(0));
        a.grow(3);
        assert_eq!((a.capacity(), a.available(), a.in_use()), (5, 4, 1));
        assert_eq!(a.checkout(), Some(1), "older free chunks first");
        assert_eq!(a.checkout(), Some(2));
        assert_eq!((a.checkout(), a.checkout(), a.checkout()), (Some(3), Some(4), None));
        a.give_back(3).unwrap();
        assert_eq!(a.in_use(), 4);
    }

    #[test]
    fn every_chunk_handed_out_once() {
        let mut a = ChunkAllocator::new(100);
        let mut seen: Vec<u32> = std::iter::from_fn(|| a.checkout()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        for i in (0..100).step_by(3) {
            a.give_back(i).unwrap();
        }
        assert_eq!(a.available(), 34);
    }
}
