//! Pools of registered chunks, and received chunks handed up as `Bytes`.
//!
//! A [`ChunkPool`] registers memory in regions of [`SLAB_CHUNKS`] chunks as it first
//! needs them, up to its limit (Ceph's defaults allow gigabytes per worker; only what
//! traffic uses gets allocated and pinned). Its chunks come back by themselves when
//! dropped, from any thread (see [`crate::verbs::region`]).
//!
//! [`chunk_bytes`] turns a received chunk into the `Bytes` the protocol decodes from: the
//! `Bytes` covers exactly the received bytes of that one chunk, and the chunk goes back
//! to its pool when the last slice of it is dropped.

use std::io;
use std::sync::Arc;

use bytes::Bytes;

use crate::verbs::{Chunk, ChunkHome, ProtectionDomain, Region};

/// Chunks registered at a time when a pool grows (one memory region).
pub const SLAB_CHUNKS: u32 = 64;

/// Up to `max` chunks of `chunk_size` bytes, registered as needed.
pub struct ChunkPool {
    home: Arc<ChunkHome>,
    pd: Arc<ProtectionDomain>,
    /// Sorted by address, for [`ChunkPool::region_of`].
    regions: Vec<Arc<Region>>,
    chunk_size: usize,
    slab_chunks: u32,
    max: u32,
    created: u32,
}

impl ChunkPool {
    /// A pool that registers nothing yet and grows by `slab` chunks at a time, up to `max`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a zero or oversized chunk size or count.
    pub fn new(pd: &Arc<ProtectionDomain>, chunk_size: usize, max: u32, slab: u32) -> io::Result<Self> {
        let ok = chunk_size > 0
            && max > 0
            && u32::try_from(chunk_size).is_ok()
            && chunk_size.checked_mul(max as usize).is_some();
        if !ok {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "invalid RDMA pool size"));
        }
        Ok(ChunkPool {
            home: ChunkHome::new(),
            pd: Arc::clone(pd),
            regions: Vec::new(),
            chunk_size,
            slab_chunks: slab.clamp(1, max),
            max,
            created: 0,
        })
    }

    /// Where this pool's chunks come back to.
    pub fn home(&self) -> &Arc<ChunkHome> {
        &self.home
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
        u64::from(self.created) * self.chunk_size as u64
    }

    /// Chunks free now or still to be registered.
    pub fn available(&self) -> u32 {
        (self.max - self.created) + self.home.free_count() as u32
    }

    /// Chunks held somewhere (posted, queued, handed up, in flight).
    pub fn in_use(&self) -> u32 {
        self.max - self.available()
    }

    /// Takes a free chunk, registering a new region if needed; `Ok(None)` at the limit.
    ///
    /// # Errors
    ///
    /// The registration error of a new region (typically RLIMIT_MEMLOCK).
    pub fn take(&mut self) -> io::Result<Option<Chunk>> {
        if let Some(c) = self.home.take() {
            return Ok(Some(c));
        }
        let n = self.slab_chunks.min(self.max - self.created);
        if n == 0 {
            return Ok(None);
        }
        let region = self.home.carve(&self.pd, self.chunk_size, n, self.created)?;
        self.created += n;
        let at = self.regions.partition_point(|r| r.addr() < region.addr());
        self.regions.insert(at, region);
        Ok(self.home.take())
    }

    /// The region of this pool that holds `len` bytes at `addr`, if any.
    pub fn region_of(&self, addr: usize, len: usize) -> Option<&Arc<Region>> {
        let i = self.regions.partition_point(|r| r.addr() as usize <= addr);
        let r = self.regions.get(i.checked_sub(1)?)?;
        r.contains(addr, len).then_some(r)
    }
}

/// A received chunk as the owner of a `Bytes`: its first `len` bytes.
struct RxBuf {
    chunk: Chunk,
    len: usize,
}

impl AsRef<[u8]> for RxBuf {
    fn as_ref(&self) -> &[u8] {
        &self.chunk.as_slice()[..self.len]
    }
}

/// The first `len` bytes of `chunk` as `Bytes` (no copy): the chunk goes back to its
/// pool when the last slice is dropped. `len` is capped at the chunk size.
pub fn chunk_bytes(chunk: Chunk, len: usize) -> Bytes {
    let len = len.min(chunk.size());
    Bytes::from_owner(RxBuf { chunk, len })
}
