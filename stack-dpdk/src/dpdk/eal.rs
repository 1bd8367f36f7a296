//! EAL start-up: once per process.

use std::cell::Cell;
use std::ffi::{c_char, c_int, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use msgr_dpdk_sys as sys;

use super::error::DpdkError;

/// `argv[0]` passed to `rte_eal_init` in front of the caller's arguments.
const PROGRAM_NAME: &str = "msgr";

/// `LCORE_ID_ANY` (`UINT32_MAX`): the lcore id of a thread EAL does not know.
pub(crate) const LCORE_ID_ANY: u32 = u32::MAX;

/// What [`init`] did so far in this process.
enum State {
    /// Not called yet (or only rejected before `rte_eal_init` ran).
    Fresh,
    /// EAL is up.
    Ready(&'static Eal),
    /// `rte_eal_init` failed with these arguments and this error. DPDK keeps state from a
    /// failed attempt (a retry fails with "Option -l is ignored, because (-l) is set!"), so
    /// it is not called again.
    Failed(Vec<String>, String),
}

static EAL: Mutex<State> = Mutex::new(State::Fresh);

/// Set (Release) after EAL is up, so the free functions can check without locking.
static READY: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Whether this thread got its lcore id from [`Eal::register_thread`].
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// The initialised DPDK Environment Abstraction Layer. There is at most one per process;
/// [`init`] hands out `&'static` references to it.
#[derive(Debug)]
pub struct Eal {
    args: Vec<String>,
}

/// Whether EAL is initialised in this process.
pub(crate) fn is_ready() -> bool {
    READY.load(Ordering::Acquire)
}

/// Initialises EAL with `args` (EAL options such as `-l 0 --no-pci --vdev=net_tap0`,
/// without a program name), or returns the EAL already initialised with the same `args`.
///
/// The calling thread becomes EAL's main lcore (lcore id of the first `-l` core).
/// `rte_eal_init` also pins it to that core's CPU, which every thread spawned from it later
/// would inherit; `init` restores the thread's previous CPU affinity afterwards, so pin
/// threads explicitly where that is wanted.
///
/// Fails with [`DpdkError::EalArgsMismatch`] when EAL is already up with other arguments,
/// and with [`DpdkError::Call`] quoting DPDK's reason when `rte_eal_init` fails. EAL cannot
/// be retried in the same process after that: later calls return
/// [`DpdkError::EalFailedBefore`] without calling DPDK again.
pub fn init(args: &[String]) -> Result<&'static Eal, DpdkError> {
    let mut state = EAL.lock().unwrap_or_else(PoisonError::into_inner);
    match &*state {
        State::Fresh => {}
        State::Ready(eal) if eal.args == args => return Ok(eal),
        State::Ready(eal) => {
            return Err(DpdkError::EalArgsMismatch { existing: eal.args.clone(), requested: args.to_vec() })
        }
        State::Failed(args, error) => {
            return Err(DpdkError::EalFailedBefore { args: args.clone(), error: error.clone() })
        }
    }

    let mut owned = Vec::with_capacity(args.len() + 1);
    for arg in std::iter::once(PROGRAM_NAME).chain(args.iter().map(String::as_str)) {
        owned.push(CString::new(arg).map_err(|_| DpdkError::InvalidArgument(arg.to_owned()))?);
    }
    let argc = c_int::try_from(owned.len())
        .map_err(|_| DpdkError::InvalidConfig(format!("{} EAL arguments are too many", owned.len())))?;
    // EAL keeps pointers into argv (and getopt permutes the array), so both the strings and
    // the array are leaked: they must stay valid for the rest of the process.
    let argv: Vec<*mut c_char> =
        owned.into_iter().map(CString::into_raw).chain(std::iter::once(std::ptr::null_mut())).collect();
    let argv: &'static mut [*mut c_char] = Box::leak(argv.into_boxed_slice());

    let affinity = Affinity::save();
    // SAFETY: argv holds argc valid, NUL-terminated, writable strings followed by NULL, all
    // leaked so they outlive EAL; the EAL mutex is held, so no other thread of this module
    // calls rte_eal_init concurrently.
    let ret = unsafe { sys::rte_eal_init(argc, argv.as_mut_ptr()) };
    if let Some(affinity) = affinity {
        affinity.restore();
    }
    if ret < 0 {
        let errno = super::error::rte_errno();
        let err = DpdkError::call(format!("rte_eal_init({})", args.join(" ")), errno, eal_hint(errno));
        *state = State::Failed(args.to_vec(), err.to_string());
        return Err(err);
    }
    let eal: &'static Eal = Box::leak(Box::new(Eal { args: args.to_vec() }));
    *state = State::Ready(eal);
    READY.store(true, Ordering::Release);
    Ok(eal)
}

/// The calling thread's CPU affinity. `rte_eal_init` pins the calling thread to the main
/// lcore's CPU, and every thread spawned from it afterwards would inherit that.
struct Affinity(libc::cpu_set_t);

impl Affinity {
    fn save() -> Option<Affinity> {
        // SAFETY: cpu_set_t is a plain bit array for which all-zero is valid.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: pid 0 is the calling thread; set is a valid cpu_set_t of the given size.
        let ret = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        (ret == 0).then_some(Affinity(set))
    }

    /// Best effort: on failure the thread stays pinned where EAL put it.
    fn restore(&self) {
        // SAFETY: pid 0 is the calling thread; self.0 is a valid cpu_set_t of the given size.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0) };
    }
}

/// What to change after `rte_eal_init` failed with `errno`.
fn eal_hint(errno: i32) -> Option<String> {
    let hugepages = "reserve hugepages (echo 256 > /proc/sys/vm/nr_hugepages) or add --no-huge -m 256 to \
                     ms_dpdk_extra_eal_args";
    Some(match errno {
        libc::EACCES | libc::ENOMEM => hugepages.to_owned(),
        libc::EALREADY => "EAL was already initialised in this process outside this module (DPDK allows one \
                                 rte_eal_init per process, even after rte_eal_cleanup)"
            .to_owned(),
        libc::EINVAL => {
            "an EAL argument is invalid (the EAL log above names it): fix ms_dpdk_extra_eal_args".to_owned()
        }
        _ => format!("see the EAL log above; without hugepages, {hugepages}"),
    })
}

impl Eal {
    /// The arguments EAL was initialised with (without the program name).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Gives the calling thread an lcore id, so it uses the per-lcore mempool caches
    /// (`rte_thread_register`), and returns it. EAL threads (the one that called [`init`])
    /// already have one, which is returned as is. Best effort: it fails when all
    /// `RTE_MAX_LCORE` ids are taken or when secondary processes use the multi-process
    /// channel; the thread then keeps working without a cache.
    pub fn register_thread(&self) -> Result<u32, DpdkError> {
        let id = current_lcore();
        if id != LCORE_ID_ANY {
            return Ok(id);
        }
        // SAFETY: EAL is initialised (self exists); registers the calling thread only.
        if unsafe { sys::rte_thread_register() } != 0 {
            return Err(DpdkError::from_rte_errno(
                "rte_thread_register",
                Some(
                    "the thread runs without an lcore id (no mempool cache); registration needs a free lcore id \
                      and no multi-process use (--in-memory or --no-shconf rule that out)"
                        .to_owned(),
                ),
            ));
        }
        REGISTERED.with(|r| r.set(true));
        Ok(current_lcore())
    }

    /// Releases the lcore id [`register_thread`](Self::register_thread) gave the calling
    /// thread (`rte_thread_unregister`); call it before a registered thread exits, or its id
    /// stays taken. Does nothing on threads that did not register (EAL threads included).
    pub fn unregister_thread(&self) {
        if REGISTERED.with(|r| r.replace(false)) {
            // SAFETY: the calling thread was registered through rte_thread_register above,
            // so this releases exactly its own non-EAL lcore id.
            unsafe { sys::rte_thread_unregister() };
        }
    }
}

/// The calling thread's lcore id, [`LCORE_ID_ANY`] if it has none.
pub(crate) fn current_lcore() -> u32 {
    // SAFETY: reads the calling thread's per-lcore TLS variable; no preconditions.
    unsafe { sys::msgr_dpdk_lcore_id() }
}
