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

/// Free list over chunk indices `0..count`.
#[derive(Debug, Clone)]
pub struct ChunkAllocator {
    free: Vec<u32>,
    in_use: Vec<bool>,
}

impl ChunkAllocator {
    /// All `count` chunks free; lowest indices are handed out first.
    pub fn new(count: u32) -> Self {
        ChunkAllocator { free: (0..count).rev().collect(), in_use: vec![false; count as usize] }
    }

    /// Number of chunks.
    pub fn capacity(&self) -> u32 {
        self.in_use.len() as u32
    }

    /// Number of free chunks.
    pub fn available(&self) -> u32 {
        self.free.len() as u32
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

/// `count` chunks of `chunk_size` bytes in one registered memory region.
pub struct RegisteredPool {
    mr: MemoryRegion,
    alloc: ChunkAllocator,
    chunk_size: usize,
}

impl RegisteredPool {
    /// Allocates and registers `chunk_size * count` bytes in `pd`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a zero size or one that overflows; the `ibv_reg_mr` error
    /// otherwise (typically RLIMIT_MEMLOCK).
    pub fn new(pd: &Arc<ProtectionDomain>, chunk_size: usize, count: u32) -> io::Result<Self> {
        let total = chunk_size
            .checked_mul(count as usize)
            .filter(|&t| t > 0 && u32::try_from(chunk_size).is_ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "invalid RDMA pool size"))?;
        let mr = MemoryRegion::new(pd, total)?;
        Ok(RegisteredPool { mr, alloc: ChunkAllocator::new(count), chunk_size })
    }

    /// Chunk size in bytes.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// The index bookkeeping (free count, capacity).
    pub fn allocator(&self) -> &ChunkAllocator {
        &self.alloc
    }

    /// Takes a free chunk; `None` when exhausted.
    pub fn checkout(&mut self) -> Option<u32> {
        self.alloc.checkout()
    }

    /// Returns a chunk.
    ///
    /// # Errors
    ///
    /// As [`ChunkAllocator::give_back`].
    pub fn give_back(&mut self, index: u32) -> Result<(), PoolError> {
        self.alloc.give_back(index)
    }

    fn range(&self, index: u32, len: usize) -> Result<std::ops::Range<usize>, PoolError> {
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
        let start = index as usize * self.chunk_size;
        Ok(start..start + len)
    }

    /// The first `len` bytes of checked-out chunk `index`.
    ///
    /// # Errors
    ///
    /// A [`PoolError`] if the chunk is not checked out or `len` is too long.
    pub fn bytes(&self, index: u32, len: usize) -> Result<&[u8], PoolError> {
        let r = self.range(index, len)?;
        Ok(&self.mr.as_slice()[r])
    }

    /// The whole of checked-out chunk `index`, writable.
    ///
    /// # Errors
    ///
    /// A [`PoolError`] if the chunk is not checked out.
    pub fn bytes_mut(&mut self, index: u32) -> Result<&mut [u8], PoolError> {
        let r = self.range(index, self.chunk_size)?;
        Ok(&mut self.mr.as_mut_slice()[r])
    }

    /// A scatter/gather entry for the first `len` bytes of checked-out chunk `index`.
    ///
    /// # Errors
    ///
    /// As [`bytes`](Self::bytes).
    pub fn sge(&self, index: u32, len: usize) -> Result<Sge, PoolError> {
        let r = self.range(index, len)?;
        Ok(Sge { addr: self.mr.addr() + r.start as u64, length: len as u32, lkey: self.mr.lkey() })
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
