//! The live progress line of `msgr bench`: while a measured round runs and stdout is a
//! terminal, one line rewritten in place (`\r`) a few times a second, cleared before
//! the round's row is printed. Never printed to a pipe or a file: scripts parse that
//! output.
//!
//! ```
//! use std::time::Duration;
//! use msgr_cli::bench::progress::{progress_line, Span};
//! use msgr_cli::bench::stats::Transport;
//! let l = progress_line(64, Transport::Msgr, Duration::from_millis(1200), Span::Time(Duration::from_secs(3)), 21_881);
//! assert_eq!(l, "  64 B   msgr   1.2 s / 3.0 s   18,234 msgs/s");
//! ```

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::stats::Transport;

/// How often the line is rewritten: often enough to look live, rarely enough to cost
/// nothing measurable.
const REFRESH: Duration = Duration::from_millis(250);

/// How long a round is meant to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span {
    /// For this long.
    Time(Duration),
    /// Until this many messages (all jobs together) have come back.
    Count(u64),
}

/// `64 B`, `4 KiB`, `1 MiB`; sizes that are not a whole number of KiB stay in bytes.
pub fn human_size(size: usize) -> String {
    match size {
        s if s >= 1 << 30 && s % (1 << 30) == 0 => format!("{} GiB", s >> 30),
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The progress line of a round of `size`-byte messages over `path`, `elapsed` into
/// it, with `msgs` replies so far.
pub fn progress_line(size: usize, path: Transport, elapsed: Duration, span: Span, msgs: u64) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { (msgs as f64 / secs).round() as u64 } else { 0 };
    let head = format!("{:>6}   {:<4}   ", human_size(size), path.as_str());
    match span {
        Span::Time(total) => {
            format!("{head}{secs:.1} s / {:.1} s   {} msgs/s", total.as_secs_f64(), thousands(rate))
        }
        Span::Count(total) => {
            format!("{head}{secs:.1} s   {} / {} msgs   {} msgs/s", thousands(msgs), thousands(total), thousands(rate))
        }
    }
}

/// `line` with the round it belongs to, when a size is measured in several rounds
/// (`--rounds`): otherwise a watcher sees the same line come back with no sign of how
/// far the run has got.
pub fn in_round(line: String, round: usize, rounds: usize) -> String {
    if rounds > 1 {
        format!("{line}   round {round}/{rounds}")
    } else {
        line
    }
}

/// Runs `work`; meanwhile, if `show`, rewrites `line(replies so far, time so far)` on
/// stdout every `REFRESH`, and clears it when `work` is done. `counter` is what the
/// round's jobs add their replies to.
pub fn with_progress<T>(
    show: bool,
    counter: &AtomicU64,
    line: impl Fn(u64, Duration) -> String + Send + Sync,
    work: impl FnOnce() -> T,
) -> T {
    if !show {
        return work();
    }
    let t0 = Instant::now();
    let (done, wait) = mpsc::channel::<()>();
    let line = &line;
    std::thread::scope(|s| {
        s.spawn(move || {
            // Ends when `done` is dropped, i.e. when the work is over (or panicked).
            while let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(REFRESH) {
                let mut out = std::io::stdout().lock();
                let _ = write!(out, "\r{}\x1b[K", line(counter.load(Ordering::Relaxed), t0.elapsed()));
                let _ = out.flush();
            }
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r\x1b[K");
            let _ = out.flush();
        });
        let r = work();
        drop(done);
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_size_path_time_and_rate() {
        let secs = |s: f64| Duration::from_secs_f64(s);
        assert_eq!(
            progress_line(64, Transport::Msgr, secs(1.2), Span::Time(secs(3.0)), 21_881),
            "  64 B   msgr   1.2 s / 3.0 s   18,234 msgs/s"
        );
        assert_eq!(
            progress_line(1 << 20, Transport::Raw, secs(0.5), Span::Time(secs(3.0)), 500),
            " 1 MiB   raw    0.5 s / 3.0 s   1,000 msgs/s"
        );
        assert_eq!(
            progress_line(4096, Transport::Msgr, secs(2.0), Span::Count(50_000), 12_000),
            " 4 KiB   msgr   2.0 s   12,000 / 50,000 msgs   6,000 msgs/s"
        );
        // The very first tick, before any time has passed: no division by zero.
        assert_eq!(
            progress_line(100, Transport::Msgr, Duration::ZERO, Span::Time(secs(1.0)), 0),
            " 100 B   msgr   0.0 s / 1.0 s   0 msgs/s"
        );
    }

    #[test]
    fn the_round_is_shown_only_when_there_are_several() {
        let line = || progress_line(64, Transport::Msgr, Duration::from_secs(1), Span::Count(10), 5);
        assert_eq!(in_round(line(), 1, 1), line());
        assert_eq!(in_round(line(), 2, 5), format!("{}   round 2/5", line()));
    }

    #[test]
    fn numbers_are_grouped_and_sizes_named() {
        for (n, s) in [(0, "0"), (999, "999"), (1000, "1,000"), (18_234, "18,234"), (1_234_567, "1,234,567")] {
            assert_eq!(thousands(n), s);
        }
        assert_eq!(thousands(u64::MAX), "18,446,744,073,709,551,615");
        for (n, s) in [(0, "0 B"), (64, "64 B"), (1000, "1000 B"), (4096, "4 KiB"), (65536, "64 KiB")] {
            assert_eq!(human_size(n), s);
        }
        assert_eq!(human_size(1 << 20), "1 MiB");
        assert_eq!(human_size(3 << 30), "3 GiB");
        assert_eq!(human_size((1 << 20) + 1024), "1025 KiB");
    }

    #[test]
    fn without_a_terminal_the_work_just_runs() {
        let c = AtomicU64::new(0);
        let r = with_progress(false, &c, |_, _| unreachable!("no line without a terminal"), || 42);
        assert_eq!(r, 42);
        // With one, the work's result comes back too (the line goes to the test's stdout).
        assert_eq!(with_progress(true, &c, |n, _| n.to_string(), || 7), 7);
    }
}
