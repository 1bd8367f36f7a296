//! Round-trip statistics and report rows for `msgr bench`.
//!
//! Latencies are *round trips* (request sent → reply received), recorded in
//! nanoseconds in an HDR histogram with 3 significant digits, so a percentile is exact
//! to 0.1 % at any scale from 1 µs to an hour, in fixed memory.
//!
//! ```
//! use msgr_cli::bench::stats::RttStats;
//! let mut s = RttStats::new();
//! for us in [10, 20, 30, 40, 1000] {
//!     s.record_us(us as f64);
//! }
//! let q = s.quantiles();
//! assert_eq!((q.min, q.max), (10.0, 1000.0));
//! assert_eq!(s.count(), 5);
//! ```

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Longest round trip the histogram holds: one hour. Anything longer is clamped
/// (and a benchmark whose round trips take that long has failed anyway).
const MAX_RTT_NS: u64 = 3_600_000_000_000;

/// Round-trip times of one benchmark row.
#[derive(Clone, Debug)]
pub struct RttStats {
    hist: Histogram<u64>,
    // Exact extremes: the histogram reports a bucket's edge, 0.1 % off.
    min_ns: u64,
    max_ns: u64,
}

/// The percentiles a report row prints, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Quantiles {
    /// Fastest round trip.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest round trip.
    pub max: f64,
}

impl Default for RttStats {
    fn default() -> Self {
        Self::new()
    }
}

impl RttStats {
    /// An empty set.
    pub fn new() -> Self {
        // 1 ns .. 1 h with 3 significant digits: the bounds are constants that
        // `new_with_bounds` accepts, so this cannot fail.
        let hist = Histogram::new_with_bounds(1, MAX_RTT_NS, 3)
            .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid")));
        RttStats { hist, min_ns: u64::MAX, max_ns: 0 }
    }

    /// Records one round trip.
    pub fn record(&mut self, rtt: Duration) {
        let ns = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX).clamp(1, MAX_RTT_NS);
        // Within bounds after the clamp, so saturating recording never drops it.
        self.hist.saturating_record(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Records one round trip given in microseconds.
    pub fn record_us(&mut self, us: f64) {
        self.record(Duration::from_secs_f64((us.max(0.0)) / 1e6));
    }

    /// Adds another set (e.g. one per job) into this one.
    pub fn merge(&mut self, other: &RttStats) {
        // Same bounds on both sides, so adding cannot fail; a failure would only lose
        // statistics, never correctness of the run.
        let _ = self.hist.add(&other.hist);
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// Mean round trip in microseconds (0 when empty).
    pub fn mean_us(&self) -> f64 {
        if self.hist.is_empty() {
            0.0
        } else {
            self.hist.mean() / 1e3
        }
    }

    /// Round trips recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// min / p50 / p90 / p99 / p99.9 / max in microseconds (all zero when empty).
    pub fn quantiles(&self) -> Quantiles {
        if self.hist.is_empty() {
            return Quantiles::default();
        }
        let us = |ns: u64| ns as f64 / 1e3;
        Quantiles {
            min: us(self.min_ns),
            p50: us(self.hist.value_at_quantile(0.50)),
            p90: us(self.hist.value_at_quantile(0.90)),
            p99: us(self.hist.value_at_quantile(0.99)),
            p999: us(self.hist.value_at_quantile(0.999)),
            max: us(self.max_ns),
        }
    }
}

/// Which path a row measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The messenger (msgr2 sessions over the chosen stack), driven through its callback
    /// API (a dispatcher sends the next message from fast dispatch).
    Msgr,
    /// The same messenger driven through its tokio API (`msgr::tokio::AsyncMessenger`:
    /// request/reply by transaction id, from tokio tasks).
    MsgrTokio,
    /// The floor: a plain socket with minimal framing, same sizes and depths.
    Raw,
}

impl Transport {
    /// The name used in the table and the JSON (`msgr` / `msgr-tokio` / `raw`).
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Msgr => "msgr",
            Transport::MsgrTokio => "msgr-tokio",
            Transport::Raw => "raw",
        }
    }

    /// Whether the path goes through a messenger (whose perf counters cover it).
    pub fn is_messenger(self) -> bool {
        matches!(self, Transport::Msgr | Transport::MsgrTokio)
    }
}

/// Width of the table's `path` column when every path fits in it (`msgr`, `raw`): the
/// table of a run without tokio rows stays as it always was.
const PATH_WIDTH: usize = 5;

/// Width of the `path` column for a table holding rows of `paths`.
pub fn path_width(paths: impl IntoIterator<Item = Transport>) -> usize {
    paths.into_iter().map(|p| p.as_str().len()).fold(PATH_WIDTH, usize::max)
}

/// Bytes copied per payload byte in each direction of one end: per byte of payload
/// received (requests on the server, replies on the client) and per byte of payload
/// sent, so 1.0 means one copy of every byte.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Copied {
    /// On receive.
    pub rx: f64,
    /// On send.
    pub tx: f64,
}

impl Copied {
    /// Not known.
    pub const UNKNOWN: Copied = Copied { rx: f64::NAN, tx: f64::NAN };

    /// `rx` and `tx` bytes copied while `rx_payload` payload bytes were received and
    /// `tx_payload` sent; a direction that carried no payload is unknown (NaN).
    pub fn per_payload_byte(rx: u64, tx: u64, rx_payload: u64, tx_payload: u64) -> Copied {
        let per = |copied: u64, payload: u64| if payload > 0 { copied as f64 / payload as f64 } else { f64::NAN };
        Copied { rx: per(rx, rx_payload), tx: per(tx, tx_payload) }
    }

    fn label(&self) -> String {
        let one = |x: f64| if x.is_nan() { "-".to_string() } else { format!("{x:.2}") };
        if self.rx.is_nan() && self.tx.is_nan() {
            "-".into()
        } else {
            format!("{}/{}", one(self.rx), one(self.tx))
        }
    }
}

/// One row of the report: one transport, one message size, one depth.
#[derive(Clone, Debug)]
pub struct Row {
    /// msgr (callback or tokio API) or raw.
    pub transport: Transport,
    /// The stack (`async+posix`, …; `tcp` for the raw baseline over kernel sockets).
    pub ms_type: String,
    /// Payload bytes per message.
    pub size: usize,
    /// Messages in flight per connection.
    pub depth: usize,
    /// Connections the row's traffic ran on (jobs × connections per job).
    pub connections: usize,
    /// Connections the server's messenger made during the row (from its perf counters;
    /// `None` for the raw baseline, or when the server's counters are not known).
    pub server_connections: Option<u64>,
    /// Payload bytes of each reply: the message's size for an echo, else `--reply-size`.
    pub reply_size: usize,
    /// Round trips completed.
    pub msgs: u64,
    /// Payload bytes of the replies received (counted as they came in).
    pub received_bytes: u64,
    /// Wall time of the measured part (after warm-up).
    pub elapsed: Duration,
    /// Round-trip times.
    pub rtt: RttStats,
    /// CPU time (user + system) the client spent per message, in ns.
    pub cpu_ns_per_msg_client: f64,
    /// CPU time the server spent per message, in ns.
    pub cpu_ns_per_msg_server: f64,
    /// Bytes msgr copied per payload byte on the client (NaN when not known, e.g. raw).
    pub copied_client: Copied,
    /// Bytes msgr copied per payload byte on the server (NaN when not known).
    pub copied_server: Copied,
    /// Sessions re-established during the row.
    pub reconnects: u64,
    /// Failed or wrong replies.
    pub errors: u64,
    /// Which round of its size the row was measured in, from 1 (`--rounds`).
    pub round: usize,
}

impl Row {
    /// Round trips per second.
    pub fn msgs_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.msgs as f64 / s
        } else {
            0.0
        }
    }

    /// Request payload megabytes (10^6) per second: one direction (the one the
    /// requests go; an echo brings as much back).
    pub fn mb_per_sec(&self) -> f64 {
        self.msgs_per_sec() * self.size as f64 / 1e6
    }

    /// Reply payload megabytes (10^6) per second, as received.
    pub fn reply_mb_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.received_bytes as f64 / s / 1e6
        } else {
            0.0
        }
    }

    /// Messages per second per server core: msgs/s over the server's CPU use (CPU
    /// seconds per wall second), i.e. 1e9 over the server's CPU ns per message. NaN
    /// when the server's CPU is not known.
    pub fn msgs_per_sec_per_core_server(&self) -> f64 {
        let ns = self.cpu_ns_per_msg_server;
        if ns.is_finite() && ns > 0.0 {
            1e9 / ns
        } else {
            f64::NAN
        }
    }

    /// The row as the JSON object `--json` writes.
    pub fn to_json(&self) -> serde_json::Value {
        let q = self.rtt.quantiles();
        serde_json::json!({
            "transport": self.transport.as_str(),
            "ms_type": self.ms_type,
            "size": self.size,
            "depth": self.depth,
            "connections": self.connections,
            "server_connections": self.server_connections,
            "reply_size": self.reply_size,
            "msgs": self.msgs,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "msgs_per_sec": self.msgs_per_sec(),
            "mb_per_sec": self.mb_per_sec(),
            "reply_mb_per_sec": self.reply_mb_per_sec(),
            "sent_bytes": self.msgs.saturating_mul(self.size as u64),
            "received_bytes": self.received_bytes,
            "rtt_us_min": q.min,
            "rtt_us_p50": q.p50,
            "rtt_us_p90": q.p90,
            "rtt_us_p99": q.p99,
            "rtt_us_p999": q.p999,
            "rtt_us_max": q.max,
            "cpu_ns_per_msg_client": self.cpu_ns_per_msg_client,
            "cpu_ns_per_msg_server": self.cpu_ns_per_msg_server,
            "msgs_per_sec_per_core_server": self.msgs_per_sec_per_core_server(),
            "copied_per_byte_client_rx": self.copied_client.rx,
            "copied_per_byte_client_tx": self.copied_client.tx,
            "copied_per_byte_server_rx": self.copied_server.rx,
            "copied_per_byte_server_tx": self.copied_server.tx,
            "reconnects": self.reconnects,
            "errors": self.errors,
            "round": self.round,
        })
    }
}

/// The table header, aligned with [`format_row`] for the same `path_width` (see
/// [`path_width`]).
pub fn header(path_width: usize) -> String {
    format!(
        "{:<path_width$} {:>8} {:>5} {:>10} {:>11} {:>9}   {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}   {:>8} {:>8} {:>11} {:>9} {:>9} {:>6} {:>6}  {}",
        "path",
        "size",
        "depth",
        "msgs",
        "msgs/s",
        "MB/s",
        "min",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "cpu/msg",
        "cpu/msg",
        "msgs/s/core",
        "copied/B",
        "copied/B",
        "recon",
        "errors",
        "vs raw"
    ) + "\n"
        + &format!(
            "{:<path_width$} {:>8} {:>5} {:>10} {:>11} {:>9}   {:^63}   {:>8} {:>8} {:>11} {:>9} {:>9} {:>6} {:>6}",
            "",
            "bytes",
            "",
            "",
            "",
            "request",
            "round trip, us",
            "client",
            "server",
            "server",
            "cli rx/tx",
            "srv rx/tx",
            "",
            ""
        )
}

/// Human-readable byte count for the size column: 64, 4k, 64k, 1m.
pub fn size_label(size: usize) -> String {
    match size {
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{}m", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{}k", s >> 10),
        s => s.to_string(),
    }
}

/// One table line, its `path` column `path_width` wide. `vs_raw` is this row's msgs/s
/// over the raw baseline's for the same size and depth, when there is one.
pub fn format_row(r: &Row, vs_raw: Option<f64>, path_width: usize) -> String {
    let q = r.rtt.quantiles();
    let per_core = match r.msgs_per_sec_per_core_server() {
        x if x.is_nan() => "-".to_string(),
        x => format!("{x:.0}"),
    };
    let mut line = format!(
        "{:<path_width$} {:>8} {:>5} {:>10} {:>11.0} {:>9.1}   {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>9.1}   {:>8.0} {:>8.0} {:>11} {:>9} {:>9} {:>6} {:>6}",
        r.transport.as_str(),
        size_label(r.size),
        r.depth,
        r.msgs,
        r.msgs_per_sec(),
        r.mb_per_sec(),
        q.min,
        q.p50,
        q.p90,
        q.p99,
        q.p999,
        q.max,
        r.cpu_ns_per_msg_client,
        r.cpu_ns_per_msg_server,
        per_core,
        r.copied_client.label(),
        r.copied_server.label(),
        r.reconnects,
        r.errors
    );
    if let Some(x) = vs_raw {
        let _ = write!(line, "  {x:.2}x");
    }
    line
}

/// Parses a size list such as `64,4k,64k,1m` (suffixes k/m/g are powers of 1024).
pub fn parse_sizes(s: &str) -> Result<Vec<usize>, String> {
    s.split(',').map(parse_size).collect()
}

/// Parses one size such as `0`, `16` or `4k` (suffixes k/m/g are powers of 1024).
pub fn parse_size(t: &str) -> Result<usize, String> {
    let t = t.trim().to_ascii_lowercase();
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1usize << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (&t[..], 1),
    };
    let n: usize = num.parse().map_err(|_| format!("bad size '{t}' (use e.g. 64,4k,64k,1m)"))?;
    n.checked_mul(mul).ok_or_else(|| format!("size '{t}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(transport: Transport, msgs: u64, secs: f64, size: usize) -> Row {
        let mut rtt = RttStats::new();
        for i in 1..=1000u64 {
            rtt.record(Duration::from_micros(i));
        }
        Row {
            transport,
            ms_type: "async+posix".into(),
            size,
            depth: 1,
            connections: 1,
            server_connections: None,
            reply_size: size,
            msgs,
            received_bytes: msgs * size as u64,
            elapsed: Duration::from_secs_f64(secs),
            rtt,
            cpu_ns_per_msg_client: 1500.0,
            cpu_ns_per_msg_server: 1200.0,
            copied_client: Copied::per_payload_byte(1000 * size as u64, 0, msgs * size as u64, msgs * size as u64),
            copied_server: Copied::UNKNOWN,
            reconnects: 0,
            errors: 0,
            round: 1,
        }
    }

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let r = row(Transport::Msgr, 1000, 1.0, 4096);
        let q = r.rtt.quantiles();
        // 3 significant digits: within 0.1 % of the exact order statistic.
        let near = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        assert!(near(q.min, 1.0), "{q:?}");
        assert!(near(q.p50, 500.0), "{q:?}");
        assert!(near(q.p90, 900.0), "{q:?}");
        assert!(near(q.p99, 990.0), "{q:?}");
        assert!(near(q.p999, 999.0), "{q:?}");
        assert!(near(q.max, 1000.0), "{q:?}");
    }

    #[test]
    fn empty_stats_are_zero_not_a_panic() {
        let s = RttStats::new();
        assert_eq!(s.count(), 0);
        assert_eq!(s.quantiles(), Quantiles::default());
    }

    #[test]
    fn merging_jobs_adds_their_round_trips() {
        let mut a = RttStats::new();
        let mut b = RttStats::new();
        a.record(Duration::from_micros(10));
        b.record(Duration::from_micros(30));
        b.record(Duration::from_micros(20));
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.quantiles().max, 30.0);
    }

    #[test]
    fn absurd_round_trips_are_clamped_not_lost() {
        let mut s = RttStats::new();
        s.record(Duration::ZERO);
        s.record(Duration::from_secs(10 * 3600));
        assert_eq!(s.count(), 2);
        assert!(s.quantiles().max <= MAX_RTT_NS as f64 / 1e3 * 1.001);
    }

    #[test]
    fn rates_follow_from_messages_and_time() {
        let r = row(Transport::Msgr, 20_000, 2.0, 1 << 20);
        assert_eq!(r.msgs_per_sec(), 10_000.0);
        assert_eq!(r.mb_per_sec(), 10_000.0 * 1_048_576.0 / 1e6);
        let zero = row(Transport::Raw, 5, 0.0, 64);
        assert_eq!(zero.msgs_per_sec(), 0.0);
    }

    #[test]
    fn json_rows_carry_every_required_field() {
        let v = row(Transport::Raw, 1000, 1.0, 64).to_json();
        for k in [
            "transport",
            "ms_type",
            "size",
            "depth",
            "msgs",
            "msgs_per_sec",
            "mb_per_sec",
            "rtt_us_min",
            "rtt_us_p50",
            "rtt_us_p90",
            "rtt_us_p99",
            "rtt_us_p999",
            "rtt_us_max",
            "cpu_ns_per_msg_client",
            "cpu_ns_per_msg_server",
            "copied_per_byte_client_rx",
            "copied_per_byte_server_tx",
            "errors",
        ] {
            assert!(v.get(k).is_some(), "missing {k} in {v}");
        }
        assert_eq!(v["transport"], "raw");
        assert_eq!(v["size"], 64);
    }

    #[test]
    fn table_lines_line_up_with_the_header() {
        let w = path_width([Transport::Msgr, Transport::Raw]);
        assert_eq!(w, 5, "the table without tokio rows keeps its width");
        let h = header(w);
        let first = h.lines().next().unwrap_or_default();
        let line = format_row(&row(Transport::Msgr, 1000, 1.0, 65536), None, w);
        assert_eq!(line.len(), first.len() - "  vs raw".len(), "\n{first}\n{line}");
        assert!(line.starts_with("msgr       64k     1       1000"), "{line}");
        let with_ratio = format_row(&row(Transport::Msgr, 1000, 1.0, 64), Some(0.873), w);
        assert!(with_ratio.ends_with("  0.87x"), "{with_ratio}");
    }

    #[test]
    fn tokio_rows_widen_the_path_column_for_every_row() {
        let w = path_width([Transport::Msgr, Transport::MsgrTokio, Transport::Raw]);
        assert_eq!(w, "msgr-tokio".len());
        let h = header(w);
        let mut lines = h.lines();
        let (first, second) = (lines.next().unwrap_or_default(), lines.next().unwrap_or_default());
        // The size column (8 wide, right-aligned) ends at the same place on every line.
        let size_end = w + 1 + 8;
        assert_eq!(first.find(" size ").map(|i| i + 5), Some(size_end), "\n{first}");
        assert_eq!(second.find(" bytes ").map(|i| i + 6), Some(size_end), "\n{second}");
        for t in [Transport::Msgr, Transport::MsgrTokio, Transport::Raw] {
            let line = format_row(&row(t, 1000, 1.0, 64), None, w);
            assert_eq!(line.len(), first.len() - "  vs raw".len(), "\n{first}\n{line}");
            assert_eq!(line.find(" 64 ").map(|i| i + 3), Some(size_end), "\n{first}\n{line}");
            assert!(line.starts_with(t.as_str()), "{line}");
        }
    }

    #[test]
    fn copies_are_per_payload_byte_and_unknown_without_payload() {
        let c = Copied::per_payload_byte(4096, 2048, 2048, 2048);
        assert_eq!((c.rx, c.tx), (2.0, 1.0));
        assert_eq!(c.label(), "2.00/1.00");
        // A reply of 0 bytes: the server sends no payload, so its tx is unknown.
        let r0 = Copied::per_payload_byte(4096, 0, 4096, 0);
        assert_eq!(r0.rx, 1.0);
        assert!(r0.tx.is_nan());
        assert_eq!(r0.label(), "1.00/-");
        assert!(Copied::per_payload_byte(1, 1, 0, 0).rx.is_nan());
        assert_eq!(Copied::UNKNOWN.label(), "-");
    }

    #[test]
    fn msgs_per_second_per_server_core_is_1e9_over_server_cpu_per_message() {
        let r = row(Transport::Msgr, 1000, 1.0, 64);
        assert_eq!(r.msgs_per_sec_per_core_server(), 1e9 / 1200.0);
        let v = r.to_json();
        assert_eq!(v["msgs_per_sec_per_core_server"].as_f64(), Some(1e9 / 1200.0));
        let w = path_width([Transport::Msgr]);
        assert!(format_row(&r, None, w).contains(" 833333 "), "{}", format_row(&r, None, w));
        // Unknown server CPU: a dash in the table, null in the JSON.
        let unknown = Row { cpu_ns_per_msg_server: f64::NAN, ..r };
        assert!(unknown.msgs_per_sec_per_core_server().is_nan());
        assert!(unknown.to_json()["msgs_per_sec_per_core_server"].is_null());
        let line = format_row(&unknown, None, w);
        let cols: Vec<&str> = line.split_whitespace().collect();
        // path size depth msgs msgs/s MB/s min p50 p90 p99 p99.9 max cpu cpu per-core
        assert_eq!(cols[14], "-", "{line}");
    }

    #[test]
    fn reply_bandwidth_counts_what_came_back() {
        let r = Row { reply_size: 16, received_bytes: 2000 * 16, ..row(Transport::Raw, 2000, 2.0, 4096) };
        assert_eq!(r.mb_per_sec(), 1000.0 * 4096.0 / 1e6);
        assert_eq!(r.reply_mb_per_sec(), 1000.0 * 16.0 / 1e6);
        let v = r.to_json();
        assert_eq!((v["sent_bytes"].as_u64(), v["received_bytes"].as_u64()), (Some(2000 * 4096), Some(32_000)));
        assert_eq!(v["reply_size"], 16);
    }

    #[test]
    fn size_lists_parse_with_binary_suffixes() {
        assert_eq!(parse_sizes("64,4k,64K,1m").unwrap(), vec![64, 4096, 65536, 1 << 20]);
        assert!(parse_sizes("4x").is_err());
        assert!(parse_sizes("").is_err());
        assert!(parse_sizes("99999999999999999999g").is_err());
        assert_eq!(size_label(65536), "64k");
        assert_eq!(size_label(100), "100");
        assert_eq!(size_label(1 << 20), "1m");
        assert_eq!(parse_size(" 4K"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("-1").is_err());
    }
}
