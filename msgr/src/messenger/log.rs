//! Log events at Ceph's `debug_ms` levels, through `tracing`.
//!
//! A messenger's events are gated by its own `debug_ms` before `tracing` sees them, so a
//! daemon that lets everything through its subscriber still gets only what `debug_ms`
//! allows, and at `debug_ms = 0` a site costs one comparison. The levels, as Ceph uses
//! them, and the `tracing` level each maps to:
//!
//! | `debug_ms` | what | `tracing` |
//! |---|---|---|
//! | 1 | connections dialled and accepted, sessions ready, faults with their typed error, resets, refusals, reconnects | INFO (faults: WARN) |
//! | 5 | handshake steps, policy decisions, the dispatch throttle pausing and resuming reads | DEBUG |
//! | 10 | every message received and queued to send | TRACE |
//!
//! Every event of a connection's transport is inside the span `msgr_conn` (fields:
//! connection id, peer, worker, messenger); events have target `msgr`.

/// `dout!(msgr, LEVEL, fields..., "message")`: an event when `msgr`'s `debug_ms` is at
/// least `LEVEL` (1, 5 or 10), at the `tracing` level the table above gives.
macro_rules! dout {
    ($m:expr, 1, $($arg:tt)+) => {
        if $m.settings.debug_ms >= 1 {
            ::tracing::info!(target: "msgr", $($arg)+)
        }
    };
    ($m:expr, 5, $($arg:tt)+) => {
        if $m.settings.debug_ms >= 5 {
            ::tracing::debug!(target: "msgr", $($arg)+)
        }
    };
    ($m:expr, 10, $($arg:tt)+) => {
        if $m.settings.debug_ms >= 10 {
            ::tracing::trace!(target: "msgr", $($arg)+)
        }
    };
}

/// `dwarn!(msgr, fields..., "message")`: a fault, at WARN, when `debug_ms` ≥ 1.
macro_rules! dwarn {
    ($m:expr, $($arg:tt)+) => {
        if $m.settings.debug_ms >= 1 {
            ::tracing::warn!(target: "msgr", $($arg)+)
        }
    };
}

pub(crate) use {dout, dwarn};
