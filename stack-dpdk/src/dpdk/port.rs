//! [`Port`]: one started ethdev port with burst rx/tx, plus port lookup.

use std::ffi::{c_char, CStr, CString};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use msgr_dpdk_sys as sys;

use super::eal::is_ready;
use super::error::DpdkError;
use super::mbuf::Mbuf;
use super::mempool::Mempool;

/// Most mbufs handed to one `rte_eth_rx_burst`/`rte_eth_tx_burst` call.
const BURST: usize = 64;

/// MTU the ports are configured with.
const MTU: u32 = 1500;

/// Port ids a live [`Port`] owns, so no two `Port`s drive the same device.
static CLAIMED: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// Hint for a port id that does not exist.
fn no_port_hint(port_id: u16) -> String {
    format!(
        "no DPDK port {port_id} (this process has {}): add --vdev=net_tap0,iface=... to ms_dpdk_extra_eal_args",
        port_count()
    )
}

/// Traffic counters of a port (`rte_eth_stats_get`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received.
    pub ipackets: u64,
    /// Frames sent.
    pub opackets: u64,
    /// Receive errors.
    pub ierrors: u64,
    /// Transmit errors.
    pub oerrors: u64,
    /// Frames the hardware dropped because no rx descriptor was free (rx too slow).
    pub imissed: u64,
}

/// A port that exists in this process ([`ports`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// Port id.
    pub id: u16,
    /// Device name, e.g. `net_tap0`.
    pub name: String,
    /// Driver name, e.g. `net_tap`.
    pub driver: String,
}

/// A configured and started ethdev port with `queues` rx and `queues` tx queues.
/// Dropping it stops and closes the port (`rte_eth_dev_stop`, `rte_eth_dev_close`); closing
/// releases the device, so a virtual device cannot be started again in this process.
///
/// Threading: `Port` is `Send + Sync`, and [`rx_burst`](Self::rx_burst) and
/// [`tx_burst`](Self::tx_burst) take `&self` and a queue id, so one `Arc<Port>` can serve a
/// thread per queue. DPDK's queues are not thread-safe: each rx queue and each tx queue must
/// be used by one thread at a time. Distinct queues (and the rx and tx side of one queue id)
/// may run in parallel. This is enforced, not just documented: each queue has a busy flag,
/// and a call that finds its queue busy in another thread returns 0 without touching the
/// queue (rx receives nothing, tx keeps all frames). That makes `Sync` sound; the flag
/// costs one uncontended atomic swap per burst.
#[derive(Debug)]
pub struct Port {
    id: u16,
    queues: u16,
    mac: [u8; 6],
    driver: String,
    /// The rx queues' pool; kept alive while the port runs.
    pool: Arc<Mempool>,
    /// Other pools whose mbufs went out through tx_burst: a driver may free them (or, for
    /// loopback drivers, hand them back on rx) later, so they must live as long as the port.
    tx_pools: Mutex<Vec<Arc<Mempool>>>,
    rx_busy: Box<[AtomicBool]>,
    tx_busy: Box<[AtomicBool]>,
}

/// Releases a claimed port id on drop (also on the error paths of [`Port::start`]).
struct Claim(u16);

impl Claim {
    fn take(port_id: u16) -> Result<Claim, DpdkError> {
        let mut claimed = CLAIMED.lock().unwrap_or_else(PoisonError::into_inner);
        if claimed.contains(&port_id) {
            return Err(DpdkError::PortInUse(port_id));
        }
        claimed.push(port_id);
        Ok(Claim(port_id))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        CLAIMED.lock().unwrap_or_else(PoisonError::into_inner).retain(|&p| p != self.0);
    }
}

/// Holds a queue's busy flag.
struct QueueGuard<'a>(&'a AtomicBool);

impl<'a> QueueGuard<'a> {
    fn try_lock(flag: Option<&'a AtomicBool>) -> Option<QueueGuard<'a>> {
        let flag = flag?;
        flag.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).ok()?;
        Some(QueueGuard(flag))
    }
}

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Port {
    /// Configures port `port_id` with `queues` rx and tx queues (MTU 1500), sets each queue
    /// up with `ring_size` descriptors (adjusted to the driver's limits by
    /// `rte_eth_dev_adjust_nb_rx_tx_desc`), rx queues filling from `pool`, starts it and
    /// turns promiscuous mode on (drivers without it are accepted).
    ///
    /// On failure the port is left stopped and not closed, so it can be started again with
    /// other parameters.
    pub fn start(port_id: u16, queues: u16, ring_size: u16, pool: &Arc<Mempool>) -> Result<Port, DpdkError> {
        if queues == 0 || ring_size == 0 {
            return Err(DpdkError::InvalidConfig(format!(
                "port {port_id}: queues ({queues}) and ring_size ({ring_size}) must be at least 1"
            )));
        }
        let claim = Claim::take(port_id)?;
        let info = dev_info(port_id)?;
        let driver = c_string(info.driver_name);
        if queues > info.max_rx_queues || queues > info.max_tx_queues {
            return Err(DpdkError::InvalidConfig(format!(
                "port {port_id} ({driver}) has at most {} rx and {} tx queues, {queues} requested",
                info.max_rx_queues, info.max_tx_queues
            )));
        }

        let mut conf = sys::rte_eth_conf::default();
        conf.rxmode.mtu = MTU;
        // SAFETY: conf is a valid, zero-initialised rte_eth_conf that DPDK only reads; an
        // invalid port id is reported as an error code.
        let ret = unsafe { sys::rte_eth_dev_configure(port_id, queues, queues, &conf) };
        if ret != 0 {
            return Err(DpdkError::from_ret(
                format!("rte_eth_dev_configure(port {port_id} ({driver}), {queues} rx/tx queues, mtu {MTU})"),
                ret,
                None,
            ));
        }

        let (mut nb_rx, mut nb_tx) = (ring_size, ring_size);
        // SAFETY: both pointers are valid u16 locals that DPDK reads and updates.
        let ret = unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(port_id, &mut nb_rx, &mut nb_tx) };
        if ret != 0 {
            return Err(DpdkError::from_ret(format!("rte_eth_dev_adjust_nb_rx_tx_desc(port {port_id})"), ret, None));
        }
        // SAFETY: no preconditions; -1 (SOCKET_ID_ANY) for devices without a NUMA node,
        // which the setup calls accept as "any socket" after the cast.
        let socket = unsafe { sys::rte_eth_dev_socket_id(port_id) } as u32;
        for q in 0..queues {
            // SAFETY: the port is configured with `queues` rx queues and q < queues; a null
            // rx_conf selects the driver defaults; the pool is a live packet mbuf pool that
            // self.pool keeps alive for as long as the port can use it.
            let ret =
                unsafe { sys::rte_eth_rx_queue_setup(port_id, q, nb_rx, socket, std::ptr::null(), pool.as_ptr()) };
            if ret != 0 {
                return Err(DpdkError::from_ret(
                    format!("rte_eth_rx_queue_setup(port {port_id}, queue {q}, {nb_rx} descriptors, {})", pool.name()),
                    ret,
                    (ret == -libc::ENOMEM).then(|| "the pool is too small for the rx rings".to_owned()),
                ));
            }
            // SAFETY: as above for tx; a null tx_conf selects the driver defaults.
            let ret = unsafe { sys::rte_eth_tx_queue_setup(port_id, q, nb_tx, socket, std::ptr::null()) };
            if ret != 0 {
                return Err(DpdkError::from_ret(
                    format!("rte_eth_tx_queue_setup(port {port_id}, queue {q}, {nb_tx} descriptors)"),
                    ret,
                    None,
                ));
            }
        }

        // SAFETY: the port is configured and all its queues are set up.
        let ret = unsafe { sys::rte_eth_dev_start(port_id) };
        if ret != 0 {
            return Err(DpdkError::from_ret(format!("rte_eth_dev_start(port {port_id} ({driver}))"), ret, None));
        }
        // From here on, failures must stop the port again.
        let stop = |err: DpdkError| {
            // SAFETY: the port was started above and nothing else uses it yet.
            unsafe { sys::rte_eth_dev_stop(port_id) };
            err
        };
        // SAFETY: valid started port; no pointers involved.
        let ret = unsafe { sys::rte_eth_promiscuous_enable(port_id) };
        if ret != 0 && ret != -libc::ENOTSUP {
            return Err(stop(DpdkError::from_ret(format!("rte_eth_promiscuous_enable(port {port_id})"), ret, None)));
        }
        let mut addr = sys::rte_ether_addr::default();
        // SAFETY: addr is a valid rte_ether_addr that DPDK writes.
        let ret = unsafe { sys::rte_eth_macaddr_get(port_id, &mut addr) };
        if ret != 0 {
            return Err(stop(DpdkError::from_ret(format!("rte_eth_macaddr_get(port {port_id})"), ret, None)));
        }

        // The port is running: from now on Port's Drop releases it and the claim.
        std::mem::forget(claim);
        let flags = |n: u16| (0..n).map(|_| AtomicBool::new(false)).collect::<Box<[_]>>();
        Ok(Port {
            id: port_id,
            queues,
            mac: addr.addr_bytes,
            driver,
            pool: Arc::clone(pool),
            tx_pools: Mutex::new(Vec::new()),
            rx_busy: flags(queues),
            tx_busy: flags(queues),
        })
    }

    /// The port id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Number of rx queues, and of tx queues.
    pub fn queues(&self) -> u16 {
        self.queues
    }

    /// The port's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The driver's name, e.g. `net_tap`, `net_ring`, `net_null`.
    pub fn driver_name(&self) -> String {
        self.driver.clone()
    }

    /// The pool the rx queues fill from.
    pub fn pool(&self) -> &Arc<Mempool> {
        &self.pool
    }

    /// Receives up to `max` frames from rx queue `queue` and appends them to `out`; returns
    /// how many. Returns 0 for a queue id `>= queues()` or while another thread is in
    /// `rx_burst` on the same queue.
    pub fn rx_burst(&self, queue: u16, out: &mut Vec<Mbuf>, max: usize) -> usize {
        let Some(_busy) = QueueGuard::try_lock(self.rx_busy.get(usize::from(queue))) else {
            return 0;
        };
        let mut raw = [std::ptr::null_mut::<sys::rte_mbuf>(); BURST];
        let mut total = 0;
        while total < max {
            let want = (max - total).min(BURST);
            // SAFETY: queue < queues (the busy flag exists) on a started port, this thread
            // holds the queue's busy flag, and raw has room for want <= BURST pointers.
            let got = unsafe { sys::msgr_dpdk_rx_burst(self.id, queue, raw.as_mut_ptr(), want as u16) };
            let got = usize::from(got).min(want);
            out.reserve(got);
            for &m in &raw[..got] {
                let Some(m) = NonNull::new(m) else { continue };
                // SAFETY: the driver handed over this received mbuf: it is valid, owned by
                // no one else, and belongs to the pool pool_of returns.
                out.push(unsafe { Mbuf::from_raw(m, self.pool_of(m)) });
            }
            total += got;
            if got < want {
                break;
            }
        }
        total
    }

    /// Hands a prefix of `frames` to tx queue `queue` and removes the frames the driver
    /// accepted from the front of `frames`; the rest stay, in order (a full ring is back
    /// pressure: retry them later). Returns how many were accepted. Returns 0 for a queue id
    /// `>= queues()` or while another thread is in `tx_burst` on the same queue.
    pub fn tx_burst(&self, queue: u16, frames: &mut Vec<Mbuf>) -> usize {
        let Some(_busy) = QueueGuard::try_lock(self.tx_busy.get(usize::from(queue))) else {
            return 0;
        };
        let mut raw = [std::ptr::null_mut::<sys::rte_mbuf>(); BURST];
        let mut total = 0;
        while !frames.is_empty() {
            let n = frames.len().min(BURST);
            for (slot, m) in raw.iter_mut().zip(&frames[..n]) {
                self.pin(m.pool());
                *slot = m.as_raw();
            }
            // SAFETY: queue < queues on a started port and this thread holds the queue's
            // busy flag; raw[..n] are valid mbufs owned by `frames`, whose pools live as long
            // as the port (self.pool or pinned). The driver takes ownership of the first
            // `sent`, and only of those.
            let sent = unsafe { sys::msgr_dpdk_tx_burst(self.id, queue, raw.as_mut_ptr(), n as u16) };
            let sent = usize::from(sent).min(n);
            for m in frames.drain(..sent) {
                // The driver owns (and will free) these now.
                let _ = m.into_raw();
            }
            total += sent;
            if sent < n {
                break;
            }
        }
        total
    }

    /// The port's counters.
    pub fn stats(&self) -> Result<PortStats, DpdkError> {
        let mut s = sys::rte_eth_stats::default();
        // SAFETY: s is a valid rte_eth_stats that DPDK writes; the port is started.
        let ret = unsafe { sys::rte_eth_stats_get(self.id, &mut s) };
        if ret != 0 {
            return Err(DpdkError::from_ret(format!("rte_eth_stats_get(port {})", self.id), ret, None));
        }
        Ok(PortStats {
            ipackets: s.ipackets,
            opackets: s.opackets,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            imissed: s.imissed,
        })
    }

    /// The pool a received mbuf belongs to: normally the rx pool; other pools show up with
    /// loopback drivers (net_ring) that hand back what was sent.
    fn pool_of(&self, m: NonNull<sys::rte_mbuf>) -> Arc<Mempool> {
        // SAFETY: m is a valid mbuf just received; `pool` is a plain field of it.
        let raw_pool = unsafe { (*m.as_ptr()).pool };
        if raw_pool == self.pool.as_ptr() {
            return Arc::clone(&self.pool);
        }
        match NonNull::new(raw_pool) {
            Some(p) => Mempool::of_raw(p),
            None => Arc::clone(&self.pool),
        }
    }

    /// Keeps `pool` alive as long as the port, if it is not the rx pool.
    fn pin(&self, pool: &Arc<Mempool>) {
        if Arc::ptr_eq(pool, &self.pool) {
            return;
        }
        let mut pinned = self.tx_pools.lock().unwrap_or_else(PoisonError::into_inner);
        if !pinned.iter().any(|p| Arc::ptr_eq(p, pool)) {
            pinned.push(Arc::clone(pool));
        }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // SAFETY: the port was started by Port::start and is owned by self; no burst can be
        // running (they borrow self). Stop/close errors cannot be reported from drop; the
        // device is released either way.
        unsafe {
            sys::rte_eth_dev_stop(self.id);
            sys::rte_eth_dev_close(self.id);
        }
        drop(Claim(self.id));
    }
}

/// `rte_eth_dev_info_get`, with the "no port" hint when the id does not exist.
fn dev_info(port_id: u16) -> Result<sys::rte_eth_dev_info, DpdkError> {
    let mut info = sys::rte_eth_dev_info::default();
    // SAFETY: info is a valid rte_eth_dev_info that DPDK fills; an invalid port id is
    // reported as -ENODEV.
    let ret = unsafe { sys::rte_eth_dev_info_get(port_id, &mut info) };
    if ret != 0 {
        let hint = (ret == -libc::ENODEV).then(|| no_port_hint(port_id));
        return Err(DpdkError::from_ret(format!("rte_eth_dev_info_get(port {port_id})"), ret, hint));
    }
    Ok(info)
}

/// Copies a C string owned by DPDK (empty for null).
fn c_string(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: p is non-null and points at a NUL-terminated string DPDK keeps alive (driver
    // names are static); it is copied at once.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Number of usable ports (`rte_eth_dev_count_avail`); 0 before EAL is initialised.
pub fn port_count() -> u16 {
    if !is_ready() {
        return 0;
    }
    // SAFETY: EAL is initialised; the call only reads the port table.
    unsafe { sys::rte_eth_dev_count_avail() }
}

/// The id of the port named `name` (e.g. `net_tap0`, as in `--vdev=net_tap0,...`), if any
/// (`rte_eth_dev_get_port_by_name`).
pub fn port_by_name(name: &str) -> Option<u16> {
    if !is_ready() {
        return None;
    }
    let c_name = CString::new(name).ok()?;
    let mut id = 0u16;
    // SAFETY: EAL is initialised; c_name is NUL-terminated and id is a valid u16 to write.
    let ret = unsafe { sys::rte_eth_dev_get_port_by_name(c_name.as_ptr(), &mut id) };
    (ret == 0).then_some(id)
}

/// All usable ports with their device and driver names.
pub fn ports() -> Vec<PortInfo> {
    let mut out = Vec::new();
    if !is_ready() {
        return out;
    }
    let max = u64::from(sys::RTE_MAX_ETHPORTS);
    let no_owner = u64::from(sys::RTE_ETH_DEV_NO_OWNER);
    // SAFETY: EAL is initialised; this only walks the port table (RTE_ETH_FOREACH_DEV).
    let mut next = unsafe { sys::rte_eth_find_next_owned_by(0, no_owner) };
    while next < max {
        let id = next as u16;
        let mut name = [0 as c_char; sys::RTE_ETH_NAME_MAX_LEN as usize];
        // SAFETY: name has RTE_ETH_NAME_MAX_LEN bytes, the size DPDK writes at most.
        let named = unsafe { sys::rte_eth_dev_get_name_by_port(id, name.as_mut_ptr()) } == 0;
        if let (true, Ok(info)) = (named, dev_info(id)) {
            let name: Vec<u8> = name.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
            out.push(PortInfo {
                id,
                name: String::from_utf8_lossy(&name).into_owned(),
                driver: c_string(info.driver_name),
            });
        }
        // SAFETY: as above.
        next = unsafe { sys::rte_eth_find_next_owned_by(id + 1, no_owner) };
    }
    out
}
