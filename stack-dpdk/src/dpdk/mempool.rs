//! [`Mempool`]: a pool of packet mbufs (`rte_pktmbuf_pool_create`), freed on drop.

use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use msgr_dpdk_sys as sys;

use super::eal::Eal;
use super::error::DpdkError;

/// Makes pool names unique within the process (DPDK names pools globally).
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// The pools this module created and that are still alive, by address, so an mbuf received
/// from any of them can be tied to its pool (see [`Mempool::of_raw`]).
static LIVE: Mutex<Vec<(usize, Weak<Mempool>)>> = Mutex::new(Vec::new());

/// A pool of packet mbufs with `RTE_MBUF_DEFAULT_BUF_SIZE` (2176-byte) data rooms.
///
/// Shared as `Arc<Mempool>`: every [`Mbuf`](super::Mbuf) and [`Port`](super::Port) using it
/// holds a clone, so `rte_mempool_free` runs only when none is left. Allocation and free are
/// thread-safe (DPDK's multi-producer/multi-consumer ring, plus per-lcore caches for EAL and
/// registered threads).
#[derive(Debug)]
pub struct Mempool {
    raw: NonNull<sys::rte_mempool>,
    name: String,
    /// False for a pool this module did not create: it is never freed here.
    owned: bool,
}

// SAFETY: an rte_mempool is made for use from many threads: get/put go through a
// multi-producer/multi-consumer ring (or the calling lcore's own cache), and the counters
// read by in_use/available are read-only walks. The pointer is not tied to a thread.
unsafe impl Send for Mempool {}
// SAFETY: see Send; every method takes &self and is one of those thread-safe operations.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a pool of `n` mbufs with a per-lcore cache of `cache` mbufs
    /// (`rte_pktmbuf_pool_create(name, n, cache, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
    /// rte_socket_id())`). `cache` must be at most 512 and at most `n / 1.5`; `n` works best
    /// as a power of two minus one. The name is unique per process (`msgr_mbuf_<k>`).
    pub fn new(_eal: &Eal, n: u32, cache: u32) -> Result<Arc<Mempool>, DpdkError> {
        let name = format!("msgr_mbuf_{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
        let c_name = CString::new(name.as_str()).map_err(|_| DpdkError::InvalidConfig(name.clone()))?;
        let data_room = u16::try_from(sys::RTE_MBUF_DEFAULT_BUF_SIZE).unwrap_or(u16::MAX);
        // SAFETY: EAL is initialised (the &Eal proves it); c_name is a valid NUL-terminated
        // string that DPDK copies; rte_socket_id has no preconditions.
        let raw = unsafe {
            sys::rte_pktmbuf_pool_create(c_name.as_ptr(), n, cache, 0, data_room, sys::rte_socket_id() as i32)
        };
        let Some(raw) = NonNull::new(raw) else {
            let errno = super::error::rte_errno();
            let hint = match errno {
                libc::ENOMEM => Some(
                    "not enough DPDK memory: raise -m (e.g. -m 512) in ms_dpdk_extra_eal_args or reserve more \
                     hugepages, or use fewer mbufs"
                        .to_owned(),
                ),
                libc::EINVAL => Some("the cache must be at most 512 mbufs and at most n / 1.5".to_owned()),
                _ => None,
            };
            return Err(DpdkError::call(format!("rte_pktmbuf_pool_create({name}, n={n}, cache={cache})"), errno, hint));
        };
        let pool = Arc::new(Mempool { raw, name, owned: true });
        let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
        live.retain(|(_, weak)| weak.strong_count() > 0);
        live.push((raw.as_ptr() as usize, Arc::downgrade(&pool)));
        drop(live);
        Ok(pool)
    }

    /// The pool's DPDK name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many mbufs are allocated (held by the application or by drivers).
    pub fn in_use(&self) -> u32 {
        // SAFETY: self.raw is a live pool (freed only in Drop); the call only reads counters.
        unsafe { sys::rte_mempool_in_use_count(self.raw.as_ptr()) }
    }

    /// How many mbufs are free (in the pool and in the per-lcore caches).
    pub fn available(&self) -> u32 {
        // SAFETY: self.raw is a live pool (freed only in Drop); the call only reads counters.
        unsafe { sys::rte_mempool_avail_count(self.raw.as_ptr()) }
    }

    /// The raw pool, for allocation and queue setup.
    pub(crate) fn as_ptr(&self) -> *mut sys::rte_mempool {
        self.raw.as_ptr()
    }

    /// The `Arc` of the pool at `raw`: a pool this module created and that is still alive, or
    /// else a non-owning handle (a pool a driver created itself; it lives as long as the
    /// driver's port). Used for mbufs received from a pool other than the port's own.
    pub(crate) fn of_raw(raw: NonNull<sys::rte_mempool>) -> Arc<Mempool> {
        let addr = raw.as_ptr() as usize;
        let live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pool) = live.iter().filter(|(a, _)| *a == addr).find_map(|(_, weak)| weak.upgrade()) {
            return pool;
        }
        drop(live);
        // SAFETY: name is a NUL-terminated char array inside the live rte_mempool header.
        let name = unsafe { std::ffi::CStr::from_ptr((*raw.as_ptr()).name.as_ptr()) };
        Arc::new(Mempool { raw, name: name.to_string_lossy().into_owned(), owned: false })
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let addr = self.raw.as_ptr() as usize;
        LIVE.lock().unwrap_or_else(PoisonError::into_inner).retain(|(a, w)| *a != addr && w.strong_count() > 0);
        // SAFETY: this is the last reference to a pool this module created: every Mbuf and
        // Port using it holds an Arc, so no mbuf of it is in Rust hands or in a started
        // port's queues any more, and the pointer is not used after this.
        unsafe { sys::rte_mempool_free(self.raw.as_ptr()) };
    }
}
