//! Perf counters, Ceph style: one set per messenger and one per worker, dumped as
//! JSON by [`crate::messenger::Messenger::perf_dump`] and served over an admin socket
//! ([`crate::admin`]).
//!
//! A counter is a relaxed atomic: the worker that owns a connection is the only
//! writer of its worker's set, and a messenger's set is written by the few workers
//! it uses, so an increment costs one uncontended atomic add on the hot path.
//! Readers may see counters from slightly different instants; that is fine for
//! monitoring and for `msgr bench`, which reads them once a run is over.

use std::sync::atomic::{AtomicI64, Ordering};

/// What a counter counts. The names are what `perf dump` prints; where Ceph's
/// AsyncMessenger has the same counter the name is Ceph's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    /// Messages received (handed to dispatch).
    RecvMessages,
    /// Messages handed to the wire.
    SendMessages,
    /// Bytes read from transports (frames, headers and handshake included).
    RecvBytes,
    /// Bytes written to transports.
    SendBytes,
    /// Transports created (dialled or accepted).
    CreatedConnections,
    /// Transports open now (a gauge).
    ActiveConnections,
    /// Transports that failed on an error (socket, protocol, timeout).
    ConnectionFaults,
    /// Lossless sessions resumed on a new transport (either side).
    Reconnects,
    /// Sessions the peer reset (`ms_handle_remote_reset`).
    RemoteResets,
    /// Read calls on transports that returned data.
    ReadCalls,
    /// Write (vectored send) calls on transports that moved data.
    WriteCalls,
    /// Frames written (messages, acks, keepalives, handshake).
    FramesWritten,
    /// Bytes copied by msgr on receive (stack rings or chunks to buffers, the session's
    /// own appends and gathers); the kernel's copies are not counted.
    RecvCopiedBytes,
    /// Bytes copied by msgr on send (segments into staging buffers, stacks' copies into
    /// registered memory or TCP rings); the kernel's copies are not counted.
    SendCopiedBytes,
}

impl Counter {
    /// Every counter, in dump order.
    pub const ALL: [Counter; 14] = [
        Counter::RecvMessages,
        Counter::SendMessages,
        Counter::RecvBytes,
        Counter::SendBytes,
        Counter::CreatedConnections,
        Counter::ActiveConnections,
        Counter::ConnectionFaults,
        Counter::Reconnects,
        Counter::RemoteResets,
        Counter::ReadCalls,
        Counter::WriteCalls,
        Counter::FramesWritten,
        Counter::RecvCopiedBytes,
        Counter::SendCopiedBytes,
    ];

    /// The name in `perf dump`.
    pub fn name(self) -> &'static str {
        match self {
            Counter::RecvMessages => "msgr_recv_messages",
            Counter::SendMessages => "msgr_send_messages",
            Counter::RecvBytes => "msgr_recv_bytes",
            Counter::SendBytes => "msgr_send_bytes",
            Counter::CreatedConnections => "msgr_created_connections",
            Counter::ActiveConnections => "msgr_active_connections",
            Counter::ConnectionFaults => "msgr_connection_faults",
            Counter::Reconnects => "msgr_reconnects",
            Counter::RemoteResets => "msgr_remote_resets",
            Counter::ReadCalls => "msgr_read_calls",
            Counter::WriteCalls => "msgr_write_calls",
            Counter::FramesWritten => "msgr_frames_written",
            Counter::RecvCopiedBytes => "msgr_recv_copied_bytes",
            Counter::SendCopiedBytes => "msgr_send_copied_bytes",
        }
    }

    /// One line on what it counts, for `perf schema`.
    pub fn description(self) -> &'static str {
        match self {
            Counter::RecvMessages => "messages received",
            Counter::SendMessages => "messages sent",
            Counter::RecvBytes => "bytes read from transports",
            Counter::SendBytes => "bytes written to transports",
            Counter::CreatedConnections => "transports dialled or accepted",
            Counter::ActiveConnections => "transports open now",
            Counter::ConnectionFaults => "transports failed on an error (not a lossy peer hanging up between frames)",
            Counter::Reconnects => "lossless sessions resumed on a new transport",
            Counter::RemoteResets => "sessions reset by the peer",
            Counter::ReadCalls => "read calls that returned data",
            Counter::WriteCalls => "write calls that moved data",
            Counter::FramesWritten => "frames written",
            Counter::RecvCopiedBytes => "bytes msgr copied on receive (not counting the kernel's copies)",
            Counter::SendCopiedBytes => "bytes msgr copied on send (not counting the kernel's copies)",
        }
    }

    /// True for a value that goes up and down rather than only up.
    pub fn is_gauge(self) -> bool {
        self == Counter::ActiveConnections
    }
}

/// One set of counters.
#[derive(Debug, Default)]
pub struct PerfCounters {
    // i64 so a gauge may dip below zero for an instant (a close counted before the
    // open it races with) without wrapping to a huge number.
    values: [AtomicI64; Counter::ALL.len()],
}

impl PerfCounters {
    /// A set with every counter at zero.
    pub(crate) fn new() -> PerfCounters {
        PerfCounters::default()
    }

    /// Adds `n` (negative only for gauges).
    #[inline]
    pub(crate) fn add(&self, c: Counter, n: i64) {
        self.values[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self, c: Counter) -> i64 {
        self.values[c as usize].load(Ordering::Relaxed)
    }

    /// Every counter as (name, value), in dump order.
    pub fn snapshot(&self) -> Vec<(&'static str, i64)> {
        Counter::ALL.iter().map(|&c| (c.name(), self.get(c))).collect()
    }

    /// The counters as a JSON object, plus `msgr_frames_per_write` (frames written
    /// per write call: how well queued frames are batched into one vectored write).
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        for (name, v) in self.snapshot() {
            m.insert(name.to_string(), v.into());
        }
        let writes = self.get(Counter::WriteCalls);
        let per_write = if writes > 0 { self.get(Counter::FramesWritten) as f64 / writes as f64 } else { 0.0 };
        m.insert("msgr_frames_per_write".into(), serde_json::json!((per_write * 100.0).round() / 100.0));
        m
    }
}

/// How a worker's section in `perf dump` is named: this and the worker's number. A
/// worker belongs to its stack, which every messenger of that `ms_type` in the process
/// shares, so each of their dumps shows the same worker sections.
pub const WORKER_SECTION_PREFIX: &str = "AsyncMessenger::Worker-";

/// Values a messenger's `perf dump` section has besides its [`Counter`]s (they live
/// in the dispatch queue, the throttle and the receive pool): (name, is a gauge,
/// description).
pub const MESSENGER_EXTRAS: [(&str, bool, &str); 6] = [
    ("msgr_dispatch_queue_len", true, "messages waiting for the dispatch thread"),
    ("msgr_dispatch_throttle_bytes", true, "bytes of received messages held against ms_dispatch_throttle_bytes"),
    ("msgr_dispatch_throttle_waits", false, "times a worker stopped reading because the dispatch throttle was full"),
    ("msgr_rx_pool_idle_bytes", true, "large-frame receive buffers kept idle for reuse"),
    ("msgr_fast_dispatched", false, "messages handed to ms_fast_dispatch on the worker thread"),
    ("msgr_dispatch_panics", false, "dispatcher callbacks that panicked (caught; the messenger carried on)"),
];

/// True for a `perf dump` value that only goes up, so dumps of several messengers
/// can be added up (gauges and ratios cannot).
///
/// ```
/// use msgr_core::messenger::perf::is_cumulative;
/// assert!(is_cumulative("msgr_send_messages"));
/// assert!(!is_cumulative("msgr_active_connections"));
/// assert!(!is_cumulative("msgr_frames_per_write"));
/// ```
pub fn is_cumulative(name: &str) -> bool {
    Counter::ALL.iter().any(|c| c.name() == name && !c.is_gauge())
        || MESSENGER_EXTRAS.iter().any(|&(n, gauge, _)| n == name && !gauge)
}

/// The description of every value in `perf dump`, as `perf schema` prints it.
pub fn schema() -> serde_json::Value {
    let mut m = serde_json::Map::new();
    let kind = |gauge| if gauge { "gauge" } else { "counter" };
    for c in Counter::ALL {
        m.insert(c.name().into(), serde_json::json!({"type": kind(c.is_gauge()), "description": c.description()}));
    }
    for (name, gauge, description) in MESSENGER_EXTRAS {
        m.insert(name.into(), serde_json::json!({"type": kind(gauge), "description": description}));
    }
    m.insert(
        "msgr_frames_per_write".into(),
        serde_json::json!({"type": "ratio", "description": "frames written per write call"}),
    );
    serde_json::Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_a_unique_name_and_its_own_slot() {
        let p = PerfCounters::new();
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "ALL is in discriminant order");
            p.add(*c, i as i64 + 1);
        }
        let names: std::collections::HashSet<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), Counter::ALL.len());
        for (i, (_, v)) in p.snapshot().into_iter().enumerate() {
            assert_eq!(v, i as i64 + 1);
        }
    }

    #[test]
    fn gauges_go_down_and_frames_per_write_is_a_ratio() {
        let p = PerfCounters::new();
        p.add(Counter::ActiveConnections, 2);
        p.add(Counter::ActiveConnections, -1);
        assert_eq!(p.get(Counter::ActiveConnections), 1);
        assert_eq!(p.to_json()["msgr_frames_per_write"], 0.0);
        p.add(Counter::WriteCalls, 3);
        p.add(Counter::FramesWritten, 10);
        assert_eq!(p.to_json()["msgr_frames_per_write"], 3.33);
        assert_eq!(p.to_json()["msgr_write_calls"], 3);
    }

    #[test]
    fn the_schema_describes_every_counter() {
        let s = schema();
        for c in Counter::ALL {
            assert!(s[c.name()]["description"].is_string(), "{}", c.name());
        }
        assert_eq!(s["msgr_active_connections"]["type"], "gauge");
        assert_eq!(s["msgr_dispatch_throttle_waits"]["type"], "counter");
        assert_eq!(s["msgr_dispatch_queue_len"]["type"], "gauge");
        assert_eq!(s["msgr_dispatch_panics"]["type"], "counter");
        assert!(is_cumulative("msgr_dispatch_panics"));
    }
}
