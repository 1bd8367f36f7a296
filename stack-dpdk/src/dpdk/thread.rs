//! How a polling worker thread sits on the machine: pinned to its own CPU, and woken
//! from its naps on time.

use std::io;
use std::time::Duration;

/// Pins the calling thread to CPU `cpu` (`sched_setaffinity`).
///
/// Two busy-polling workers left to the scheduler can end up on one CPU (each naps now
/// and then, so together they look like one CPU's worth of load and are not moved
/// apart); they then take turns, and every round trip between them waits for a nap.
/// Pinned to distinct CPUs, they cannot.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("CPU {cpu} is beyond CPU_SETSIZE")));
    }
    // SAFETY: cpu_set_t is a plain bit array for which all-zero is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: cpu < CPU_SETSIZE (checked above), so CPU_SET writes inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the given size.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Lets the calling thread's timed waits end within `slack` of when they were asked to
/// (`PR_SET_TIMERSLACK`), instead of Linux's default 50 µs. A polling worker's naps are
/// tens of microseconds, and the default slack more than doubles them: a 50 µs
/// `epoll_pwait2` took ~120 µs here with it, ~75 µs with 1 µs. One system call, made
/// once per worker thread.
pub fn set_timer_slack(slack: Duration) -> io::Result<()> {
    let ns = libc::c_ulong::try_from(slack.as_nanos()).unwrap_or(libc::c_ulong::MAX).max(1);
    let zero: libc::c_ulong = 0;
    // SAFETY: PR_SET_TIMERSLACK takes plain integers and changes only the calling
    // thread's timer slack; no pointers are involved.
    let r = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns, zero, zero, zero) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a thread of its own, so the test runner's threads keep their placement.
    #[test]
    fn a_pinned_thread_runs_where_it_was_pinned_and_naps_on_time() {
        std::thread::spawn(|| {
            pin_to_cpu(0).unwrap();
            // SAFETY: sched_getcpu has no preconditions.
            assert_eq!(unsafe { libc::sched_getcpu() }, 0);
            assert!(pin_to_cpu(libc::CPU_SETSIZE as usize).is_err());
            set_timer_slack(Duration::from_micros(1)).unwrap();
            // SAFETY: PR_GET_TIMERSLACK takes no pointer and reads the calling thread's slack.
            let slack = unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) };
            assert_eq!(slack, 1000);
        })
        .join()
        .unwrap();
    }
}
