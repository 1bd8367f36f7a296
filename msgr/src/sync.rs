//! Small synchronisation helpers shared across the crate.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, ignoring poisoning. State behind our mutexes is only changed in short
/// critical sections that leave it consistent, so a panic on another thread (a failing
/// dispatcher, a test thread) must not take the messenger down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
