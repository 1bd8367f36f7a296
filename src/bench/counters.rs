//! The perf counters `msgr bench` prints after its rows: the server's, from its last
//! control reply, and the client's own, added up over every messenger the client ran
//! (one per job and round).

use msgr::messenger::perf::{is_cumulative, WORKER_SECTION_PREFIX};
use serde_json::{Map, Value};

/// `perf dump`s of several messengers added up, section by section. Only values that
/// only go up are kept: a gauge or a ratio from messengers that have since shut down
/// means nothing once summed.
///
/// Messenger sections are added. Worker sections are not: the messengers of one
/// process share their stack's workers, whose counters run for the stack's life, so
/// each dump already holds what earlier ones showed and the total is the largest
/// value seen. (`msgr bench` keeps its control messenger, and with it the stack, up
/// for the whole run.)
#[derive(Debug, Default, Clone)]
pub struct CounterTotals {
    sections: Map<String, Value>,
}

impl CounterTotals {
    /// No dumps yet.
    pub fn new() -> CounterTotals {
        CounterTotals::default()
    }

    /// Adds one messenger's `perf dump`; anything that is not a dump is ignored.
    pub fn add(&mut self, dump: &Value) {
        let Some(sections) = dump.as_object() else { return };
        for (name, sec) in sections {
            let Some(sec) = sec.as_object() else { continue };
            let shared = name.starts_with(WORKER_SECTION_PREFIX);
            let total = self.sections.entry(name.clone()).or_insert_with(|| Value::Object(Map::new()));
            let Some(total) = total.as_object_mut() else { continue };
            for (k, v) in sec {
                if let (true, Some(v)) = (is_cumulative(k), v.as_i64()) {
                    let seen = total.get(k).and_then(Value::as_i64).unwrap_or(0);
                    let t = if shared { seen.max(v) } else { seen.saturating_add(v) };
                    total.insert(k.clone(), t.into());
                }
            }
        }
    }

    /// The totals, shaped like a `perf dump`; `null` if nothing was added.
    pub fn to_json(&self) -> Value {
        if self.sections.is_empty() {
            Value::Null
        } else {
            Value::Object(self.sections.clone())
        }
    }
}

/// Bytes msgr copied (received, sent) according to the messenger sections (`msgr.*`) of
/// a `perf dump`; worker sections count the same bytes again and are left out.
pub fn copied_bytes(dump: &Value) -> (u64, u64) {
    let Some(sections) = dump.as_object() else { return (0, 0) };
    let mut rx = 0u64;
    let mut tx = 0u64;
    for (name, sec) in sections {
        if name.starts_with(WORKER_SECTION_PREFIX) {
            continue;
        }
        let n = |k: &str| sec.get(k).and_then(Value::as_u64).unwrap_or(0);
        rx = rx.saturating_add(n("msgr_recv_copied_bytes"));
        tx = tx.saturating_add(n("msgr_send_copied_bytes"));
    }
    (rx, tx)
}

/// Connections the messengers of a `perf dump` made (dialled or accepted), from their
/// sections (`msgr.*`); worker sections count the same connections again and are left
/// out.
pub fn created_connections(dump: &Value) -> u64 {
    let Some(sections) = dump.as_object() else { return 0 };
    sections
        .iter()
        .filter(|(name, _)| !name.starts_with(WORKER_SECTION_PREFIX))
        .map(|(_, sec)| sec.get("msgr_created_connections").and_then(Value::as_u64).unwrap_or(0))
        .fold(0, u64::saturating_add)
}

/// One line per section of a `perf dump` (a messenger, then each worker) under
/// `title`: the counters a reader of a benchmark wants next to the rows. Gauges are
/// shown only where the dump has them (a live server's, not summed totals).
pub fn counters_summary(title: &str, dump: &Value) -> Vec<String> {
    let Some(sections) = dump.as_object().filter(|s| !s.is_empty()) else { return Vec::new() };
    let n = |sec: &Value, k: &str| sec.get(k).and_then(Value::as_i64).unwrap_or(0);
    let mut lines = vec![title.to_string()];
    for (name, sec) in sections {
        let writes = n(sec, "msgr_write_calls");
        let per_write = if writes > 0 { n(sec, "msgr_frames_written") as f64 / writes as f64 } else { 0.0 };
        let mut l = format!(
            "  {name}: msgs in {} out {} | bytes in {} out {} | reads {} writes {} ({:.2} frames/write) | conns created {}",
            n(sec, "msgr_recv_messages"),
            n(sec, "msgr_send_messages"),
            n(sec, "msgr_recv_bytes"),
            n(sec, "msgr_send_bytes"),
            n(sec, "msgr_read_calls"),
            writes,
            per_write,
            n(sec, "msgr_created_connections"),
        );
        if sec.get("msgr_active_connections").is_some() {
            l.push_str(&format!(" active {}", n(sec, "msgr_active_connections")));
        }
        l.push_str(&format!(" faults {} reconnects {}", n(sec, "msgr_connection_faults"), n(sec, "msgr_reconnects")));
        l.push_str(&format!(
            " | copied in {} out {}",
            n(sec, "msgr_recv_copied_bytes"),
            n(sec, "msgr_send_copied_bytes")
        ));
        if sec.get("msgr_dispatch_queue_len").is_some() {
            l.push_str(&format!(" | dispatch queue {}", n(sec, "msgr_dispatch_queue_len")));
        }
        if sec.get("msgr_dispatch_throttle_waits").is_some() {
            l.push_str(&format!(" | throttle waits {}", n(sec, "msgr_dispatch_throttle_waits")));
        }
        lines.push(l);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_summary_has_a_line_per_section_and_nothing_for_no_dump() {
        assert!(counters_summary("t", &Value::Null).is_empty());
        assert!(counters_summary("t", &json!({})).is_empty());
        let dump = json!({
            "msgr.osd.0": {"msgr_recv_messages": 5, "msgr_write_calls": 2, "msgr_frames_written": 5,
                           "msgr_active_connections": 1, "msgr_dispatch_queue_len": 0,
                           "msgr_dispatch_throttle_waits": 3},
            "AsyncMessenger::Worker-0": {"msgr_send_messages": 7},
        });
        let l = counters_summary("server perf counters:", &dump);
        assert_eq!(l.len(), 3);
        assert_eq!(l[0], "server perf counters:");
        assert!(l[1].contains("AsyncMessenger::Worker-0: msgs in 0 out 7"), "{}", l[1]);
        assert!(!l[1].contains("throttle") && !l[1].contains("active"), "{}", l[1]);
        assert!(l[2].contains("msgr.osd.0: msgs in 5") && l[2].contains("(2.50 frames/write)"), "{}", l[2]);
        assert!(l[2].contains("active 1 faults 0") && l[2].contains("throttle waits 3"), "{}", l[2]);
    }

    #[test]
    fn copied_bytes_come_from_the_messenger_sections_only() {
        assert_eq!(copied_bytes(&Value::Null), (0, 0));
        let dump = json!({
            "msgr.osd.0": {"msgr_recv_copied_bytes": 100, "msgr_send_copied_bytes": 7},
            "msgr.osd.1": {"msgr_recv_copied_bytes": 1},
            "AsyncMessenger::Worker-0": {"msgr_recv_copied_bytes": 1000, "msgr_send_copied_bytes": 1000},
        });
        assert_eq!(copied_bytes(&dump), (101, 7));
    }

    #[test]
    fn totals_add_messenger_counters_take_shared_workers_once_and_drop_gauges_and_ratios() {
        let mut t = CounterTotals::new();
        assert_eq!(t.to_json(), Value::Null);
        let dump = |sent: i64| {
            json!({"msgr.client.admin": {"msgr_send_messages": sent, "msgr_active_connections": 1,
                                         "msgr_frames_per_write": 1.5, "msgr_dispatch_throttle_waits": 2,
                                         "msgr_dispatch_queue_len": 4}})
        };
        t.add(&dump(10));
        t.add(&dump(32));
        // The same shared worker seen by two messengers, the second dump after more traffic.
        t.add(&json!({"AsyncMessenger::Worker-0": {"msgr_send_messages": 10}}));
        t.add(&json!({"AsyncMessenger::Worker-0": {"msgr_send_messages": 42}}));
        t.add(&json!("not a dump"));
        t.add(&json!({"odd": 3}));
        let j = t.to_json();
        let me = &j["msgr.client.admin"];
        assert_eq!(me["msgr_send_messages"], 42);
        assert_eq!(me["msgr_dispatch_throttle_waits"], 4);
        assert!(me.get("msgr_active_connections").is_none(), "{me}");
        assert!(me.get("msgr_frames_per_write").is_none(), "{me}");
        assert!(me.get("msgr_dispatch_queue_len").is_none(), "{me}");
        assert!(j.get("odd").is_none(), "{j}");
        assert_eq!(j["AsyncMessenger::Worker-0"]["msgr_send_messages"], 42, "{j}");
    }
}
