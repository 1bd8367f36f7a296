//! `msgr bench --rounds N`: every size measured N times, each round a msgr row (per API)
//! and then its raw row, summarised by medians over the rounds.
//!
//! Why: on a shared machine one round's msgr ÷ raw moves by 10–15 % either way from one
//! invocation to the next (here raw TCP's own 64 B × 128 msgs/s ranged 2.21M–2.84M over
//! 19 invocations), so a single pair decides little. Each round's ratio pairs rows run
//! back to back, which cancels what drifts slowly (other load, CPU clock); the median
//! over the rounds then sets aside the rounds a burst of load hit. The spread is printed
//! beside it, so a reader sees how much one round could have said on its own.
//!
//! ```
//! use msgr_cli::bench::rounds::{median, Spread};
//! assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
//! assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
//! let s = Spread::of(&[0.9, 0.84, 0.97]).unwrap();
//! assert_eq!((s.median, s.min, s.max), (0.9, 0.84, 0.97));
//! ```

use super::stats::{size_label, Row, Transport};

/// Median of the finite values in `xs` (mean of the middle two for an even count); NaN
/// when there are none. A round whose figure is unknown (NaN: e.g. a server that does
/// not report its CPU) is left out rather than poisoning the rest.
pub fn median(xs: &[f64]) -> f64 {
    Spread::of(xs).map_or(f64::NAN, |s| s.median)
}

/// Median, smallest and largest of a figure over the rounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// Median over the rounds ([`median`]).
    pub median: f64,
    /// Smallest round.
    pub min: f64,
    /// Largest round.
    pub max: f64,
}

impl Spread {
    /// The spread of the finite values in `xs`; `None` when there are none.
    pub fn of(xs: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let (&min, &max) = (v.first()?, v.last()?);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 };
        Some(Spread { median, min, max })
    }
}

/// One msgr path's rows of one size over its rounds, against the raw rows of the same
/// rounds.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// The msgr path (callback or tokio API).
    pub transport: Transport,
    /// Payload bytes per message.
    pub size: usize,
    /// Messages in flight per connection.
    pub depth: usize,
    /// Rounds the path ran in.
    pub rounds: usize,
    /// msgr's msgs/s over the rounds.
    pub msgs_per_sec: Spread,
    /// Raw's msgs/s over the rounds; `None` without a raw baseline.
    pub raw_msgs_per_sec: Option<Spread>,
    /// msgr's msgs/s over raw's, each round's pair on its own; `None` without a raw
    /// baseline.
    pub vs_raw: Option<Spread>,
    /// msgr's p50 round trip over raw's, round by round.
    pub p50_vs_raw: Option<Spread>,
    /// Server CPU ns per msgr message (median; NaN when the server does not say).
    pub server_cpu_ns: f64,
    /// Server CPU ns per raw message (median).
    pub raw_server_cpu_ns: Option<f64>,
}

/// Summarises the rows of one size, all rounds (each row's [`Row::round`] tells its
/// round): one [`Summary`] per msgr path, in the order the paths first appear.
pub fn summarise(rows: &[Row]) -> Vec<Summary> {
    let raw_of = |round: usize| rows.iter().find(|r| r.transport == Transport::Raw && r.round == round);
    let mut paths: Vec<Transport> = Vec::new();
    for r in rows.iter().filter(|r| r.transport.is_messenger()) {
        if !paths.contains(&r.transport) {
            paths.push(r.transport);
        }
    }
    paths
        .into_iter()
        .filter_map(|t| {
            let mine: Vec<&Row> = rows.iter().filter(|r| r.transport == t).collect();
            let first = mine.first()?;
            let pairs: Vec<(&Row, &Row)> = mine.iter().filter_map(|m| raw_of(m.round).map(|r| (*m, r))).collect();
            let ratio = |f: fn(&Row) -> f64| -> Option<Spread> {
                Spread::of(&pairs.iter().map(|(m, r)| f(m) / f(r)).collect::<Vec<_>>())
            };
            let raws: Vec<&Row> = pairs.iter().map(|(_, r)| *r).collect();
            let of = |rs: &[&Row], f: fn(&Row) -> f64| rs.iter().map(|r| f(r)).collect::<Vec<_>>();
            Some(Summary {
                transport: t,
                size: first.size,
                depth: first.depth,
                rounds: mine.len(),
                msgs_per_sec: Spread::of(&of(&mine, Row::msgs_per_sec))?,
                raw_msgs_per_sec: Spread::of(&of(&raws, Row::msgs_per_sec)),
                vs_raw: ratio(Row::msgs_per_sec),
                p50_vs_raw: ratio(|r| r.rtt.quantiles().p50),
                server_cpu_ns: median(&of(&mine, |r| r.cpu_ns_per_msg_server)),
                raw_server_cpu_ns: (!raws.is_empty()).then(|| median(&of(&raws, |r| r.cpu_ns_per_msg_server))),
            })
        })
        .collect()
}

impl Summary {
    /// The report's line for it: starts with `median`, so that scripts reading the
    /// table's `msgr` and `raw` rows do not take it for one.
    pub fn line(&self) -> String {
        let x = |s: &Spread| format!("{:.2}x ({:.2}x-{:.2}x)", s.median, s.min, s.max);
        let ns = |v: f64| if v.is_finite() { format!("{v:.0}") } else { "-".into() };
        let mut line = format!(
            "median of {} rounds, {} {} x {}: {:.0} msgs/s ({:.0}-{:.0})",
            self.rounds,
            self.transport.as_str(),
            size_label(self.size),
            self.depth,
            self.msgs_per_sec.median,
            self.msgs_per_sec.min,
            self.msgs_per_sec.max,
        );
        if let Some(r) = &self.raw_msgs_per_sec {
            line += &format!(", raw {:.0} ({:.0}-{:.0})", r.median, r.min, r.max);
        }
        if let Some(v) = &self.vs_raw {
            line += &format!(" | vs raw {}", x(v));
        }
        if let Some(v) = &self.p50_vs_raw {
            line += &format!(" | p50 vs raw {}", x(v));
        }
        line += &format!(" | server cpu/msg {} ns", ns(self.server_cpu_ns));
        if let Some(raw) = self.raw_server_cpu_ns {
            line += &format!(", raw {} ns", ns(raw));
        }
        line
    }

    /// The summary as the JSON object `--json` writes under `summary`.
    pub fn to_json(&self) -> serde_json::Value {
        let spread = |s: Option<&Spread>| match s {
            Some(s) => serde_json::json!({ "median": s.median, "min": s.min, "max": s.max }),
            None => serde_json::Value::Null,
        };
        serde_json::json!({
            "transport": self.transport.as_str(),
            "size": self.size,
            "depth": self.depth,
            "rounds": self.rounds,
            "msgs_per_sec": spread(Some(&self.msgs_per_sec)),
            "raw_msgs_per_sec": spread(self.raw_msgs_per_sec.as_ref()),
            "vs_raw": spread(self.vs_raw.as_ref()),
            "p50_vs_raw": spread(self.p50_vs_raw.as_ref()),
            "server_cpu_ns_per_msg": self.server_cpu_ns,
            "raw_server_cpu_ns_per_msg": self.raw_server_cpu_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::{Copied, RttStats};
    use std::time::Duration;

    /// A row of `msgs` messages in one second, every round trip `rtt_us` long.
    fn row(transport: Transport, round: usize, msgs: u64, rtt_us: u64, server_ns: f64) -> Row {
        let mut rtt = RttStats::new();
        rtt.record(Duration::from_micros(rtt_us));
        Row {
            transport,
            ms_type: "async+posix".into(),
            size: 64,
            depth: 128,
            connections: 1,
            server_connections: None,
            reply_size: 64,
            msgs,
            received_bytes: msgs * 64,
            elapsed: Duration::from_secs(1),
            rtt,
            cpu_ns_per_msg_client: 400.0,
            cpu_ns_per_msg_server: server_ns,
            copied_client: Copied::UNKNOWN,
            copied_server: Copied::UNKNOWN,
            reconnects: 0,
            errors: 0,
            round,
        }
    }

    #[test]
    fn the_median_of_an_odd_and_an_even_count_and_of_nothing() {
        assert_eq!(median(&[5.0]), 5.0);
        assert_eq!(median(&[9.0, 1.0, 5.0]), 5.0);
        assert_eq!(median(&[9.0, 1.0, 5.0, 3.0]), 4.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn unknown_figures_are_left_out_not_counted_as_numbers() {
        assert_eq!(median(&[f64::NAN, 2.0, 4.0, f64::INFINITY]), 3.0);
        assert!(median(&[f64::NAN]).is_nan());
        assert_eq!(Spread::of(&[f64::NAN, 2.0, 1.0]), Some(Spread { median: 1.5, min: 1.0, max: 2.0 }));
        assert_eq!(Spread::of(&[f64::NAN]), None);
    }

    #[test]
    fn each_rounds_ratio_pairs_the_rows_of_that_round() {
        // Round 2's raw row is fast and round 3's msgr row is slow: paired by round,
        // the ratios are 0.9, 0.5 and 0.6; medians of msgr and raw taken apart would
        // give 900/1000 = 0.9 instead.
        let rows = [
            row(Transport::Msgr, 1, 900, 50, 400.0),
            row(Transport::Raw, 1, 1000, 40, 70.0),
            row(Transport::Msgr, 2, 1000, 40, 420.0),
            row(Transport::Raw, 2, 2000, 20, 80.0),
            row(Transport::Msgr, 3, 600, 100, 500.0),
            row(Transport::Raw, 3, 1000, 50, 60.0),
        ];
        let s = summarise(&rows);
        assert_eq!(s.len(), 1);
        let s = &s[0];
        assert_eq!((s.transport, s.size, s.depth, s.rounds), (Transport::Msgr, 64, 128, 3));
        assert_eq!(s.msgs_per_sec, Spread { median: 900.0, min: 600.0, max: 1000.0 });
        assert_eq!(s.raw_msgs_per_sec, Some(Spread { median: 1000.0, min: 1000.0, max: 2000.0 }));
        let v = s.vs_raw.unwrap();
        assert!((v.median - 0.6).abs() < 1e-9 && (v.min - 0.5).abs() < 1e-9 && (v.max - 0.9).abs() < 1e-9, "{v:?}");
        let p = s.p50_vs_raw.unwrap();
        assert!(p.median > 1.9 && p.median < 2.1, "p50 ratios about 1.25, 2, 2: {p:?}");
        assert_eq!(s.server_cpu_ns, 420.0);
        assert_eq!(s.raw_server_cpu_ns, Some(70.0));
    }

    #[test]
    fn without_a_raw_baseline_there_are_no_ratios() {
        let rows = [row(Transport::Msgr, 1, 900, 50, f64::NAN), row(Transport::Msgr, 2, 1100, 50, f64::NAN)];
        let s = &summarise(&rows)[0];
        assert_eq!(s.msgs_per_sec.median, 1000.0);
        assert_eq!((s.raw_msgs_per_sec, s.vs_raw, s.p50_vs_raw, s.raw_server_cpu_ns), (None, None, None, None));
        assert!(s.server_cpu_ns.is_nan());
        let line = s.line();
        assert!(line.starts_with("median of 2 rounds, msgr 64 x 128: 1000 msgs/s (900-1100)"), "{line}");
        assert!(!line.contains("vs raw") && line.ends_with("server cpu/msg - ns"), "{line}");
        assert_eq!(s.to_json()["vs_raw"], serde_json::Value::Null);
    }

    #[test]
    fn each_msgr_path_is_summarised_on_its_own() {
        let rows = [
            row(Transport::Msgr, 1, 900, 50, 400.0),
            row(Transport::MsgrTokio, 1, 700, 60, 450.0),
            row(Transport::Raw, 1, 1000, 40, 70.0),
        ];
        let s = summarise(&rows);
        assert_eq!(s.iter().map(|s| s.transport).collect::<Vec<_>>(), [Transport::Msgr, Transport::MsgrTokio]);
        assert!((s[1].vs_raw.unwrap().median - 0.7).abs() < 1e-9);
        let line = s[0].line();
        assert!(line.contains("| vs raw 0.90x (0.90x-0.90x)"), "{line}");
        assert!(line.contains("raw 1000 (1000-1000)") && line.ends_with("server cpu/msg 400 ns, raw 70 ns"), "{line}");
        let j = s[0].to_json();
        assert_eq!((j["rounds"].as_u64(), j["vs_raw"]["median"].as_f64()), (Some(1), Some(0.9)));
    }
}
