//! [`DpdkError`]: what failed, DPDK's reason and, where it is obvious, what to change.

use std::ffi::CStr;
use std::fmt;

use msgr_dpdk_sys as sys;

/// An error from the DPDK wrapper.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DpdkError {
    /// A DPDK call failed; `reason` is `rte_strerror` of its error code.
    #[error("{call} failed: {reason} (errno {errno}){}", Hint(.hint))]
    Call {
        /// The call that failed, with its interesting arguments.
        call: String,
        /// The positive error code (`rte_errno`, or the negated return value).
        errno: i32,
        /// DPDK's text for `errno`.
        reason: String,
        /// What to change, when that is obvious.
        hint: Option<String>,
    },
    /// [`init`](super::init) was called again with arguments other than the first call's.
    #[error(
        "DPDK EAL is already initialised with [{}] and cannot be initialised again with [{}]: \
         EAL starts once per process, so every user must pass the same EAL arguments",
        .existing.join(" "), .requested.join(" ")
    )]
    EalArgsMismatch {
        /// The arguments EAL was initialised with.
        existing: Vec<String>,
        /// The arguments of the rejected call.
        requested: Vec<String>,
    },
    /// An earlier [`init`](super::init) of this process failed in `rte_eal_init`; DPDK cannot
    /// retry it in the same process.
    #[error(
        "DPDK EAL initialisation already failed in this process ({error}) and cannot be retried: fix the EAL \
         arguments [{}] and restart the process",
        .args.join(" ")
    )]
    EalFailedBefore {
        /// The arguments of the failed attempt.
        args: Vec<String>,
        /// That attempt's error.
        error: String,
    },
    /// An EAL argument contains a NUL byte.
    #[error("EAL argument {0:?} contains a NUL byte")]
    InvalidArgument(String),
    /// The port is already started by another [`Port`](super::Port) of this process.
    #[error("DPDK port {0} is already started by another Port in this process")]
    PortInUse(u16),
    /// A parameter is out of range (the message says which and why).
    #[error("{0}")]
    InvalidConfig(String),
}

impl DpdkError {
    /// A failed `call` with the positive error code `errno`.
    pub(crate) fn call(call: impl Into<String>, errno: i32, hint: Option<String>) -> Self {
        DpdkError::Call { call: call.into(), errno, reason: strerror(errno), hint }
    }

    /// A failed `call` whose reason is in `rte_errno`.
    pub(crate) fn from_rte_errno(call: impl Into<String>, hint: Option<String>) -> Self {
        DpdkError::call(call, rte_errno(), hint)
    }

    /// A failed `call` that returned the negative error code `ret`.
    pub(crate) fn from_ret(call: impl Into<String>, ret: i32, hint: Option<String>) -> Self {
        DpdkError::call(call, ret.saturating_neg(), hint)
    }

    /// The positive error code of a failed DPDK call, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            DpdkError::Call { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// The calling thread's `rte_errno`.
pub(crate) fn rte_errno() -> i32 {
    // SAFETY: reads the calling thread's rte_errno TLS variable; no preconditions.
    unsafe { sys::msgr_dpdk_errno() }
}

/// DPDK's text for the error code `errno` (`rte_strerror`, which also knows DPDK's own codes).
pub(crate) fn strerror(errno: i32) -> String {
    // SAFETY: rte_strerror accepts any int and returns a NUL-terminated string, either
    // static or in a per-thread buffer that stays valid until this thread calls it again.
    let text = unsafe { sys::rte_strerror(errno) };
    if text.is_null() {
        return format!("error {errno}");
    }
    // SAFETY: `text` is non-null and NUL-terminated (above); it is copied out at once,
    // before this thread can call rte_strerror again.
    unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned()
}

/// Formats an optional hint as "; hint".
struct Hint<'a>(&'a Option<String>);

impl fmt::Display for Hint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(h) => write!(f, "; {h}"),
            None => Ok(()),
        }
    }
}
