//! Running `msgr bench`: for each size, `jobs` connections each keeping `depth`
//! messages in flight for a duration (or a count), after a warm-up; optionally the
//! same over the raw TCP baseline, in the same invocation.
//!
//! Without `--connect` the server is a `msgr serve` child process on loopback, so the
//! CPU time of client and server can be told apart (the client's from this process,
//! the server's from `/proc/PID/stat`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cpu_time::ProcessTime;
use msgr::proto::{EntityAddr, EntityType};

use super::raw::{self, RawServer, Until};
use super::stats::{format_row, header, Row, RttStats, Transport};
use crate::cli::{self, CliError, CommonArgs, PingOptions};

/// How `msgr bench` runs.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// A running `msgr serve` to measure against; `None` starts one locally.
    pub connect: Option<EntityAddr>,
    /// Entity type of the server.
    pub peer_type: EntityType,
    /// Connections (one messenger and one thread of work each).
    pub jobs: usize,
    /// Messages in flight per job.
    pub depth: usize,
    /// Payload sizes, one row each.
    pub sizes: Vec<usize>,
    /// Measured time per row (when `count` is `None`).
    pub duration: Duration,
    /// Messages per job per row instead of a duration.
    pub count: Option<u64>,
    /// Unmeasured time per row before measuring.
    pub warmup: Duration,
    /// Lossless sessions instead of lossy.
    pub lossless: bool,
    /// Check every reply's sequence and checksum.
    pub verify: bool,
    /// Also measure the raw TCP baseline.
    pub baseline_raw: bool,
    /// Write the report as JSON here.
    pub json: Option<PathBuf>,
}

/// What the run was, for the report header and the JSON `settings`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The stack (`ms_type`).
    pub ms_type: String,
    /// lossy or lossless.
    pub policy: &'static str,
    /// local (server started here) or client (against `--connect`).
    pub mode: &'static str,
    /// CPU model.
    pub cpu: String,
    /// Kernel release.
    pub kernel: String,
}

impl Settings {
    fn to_json(&self, o: &BenchOptions) -> serde_json::Value {
        serde_json::json!({
            "ms_type": self.ms_type,
            "policy": self.policy,
            "mode": self.mode,
            "cpu": self.cpu,
            "kernel": self.kernel,
            "jobs": o.jobs,
            "depth": o.depth,
            "duration_s": o.duration.as_secs_f64(),
            "count": o.count,
            "warmup_s": o.warmup.as_secs_f64(),
            "verify": o.verify,
            "latency": "round trip",
        })
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "unknown".into())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// CPU time (user + system) of process `pid` from `/proc/PID/stat`, which counts in
/// USER_HZ = 100 ticks per second on Linux: 10 ms resolution, fine over a measured row.
fn proc_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields resume after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// A `msgr serve` child process.
struct LocalServer {
    child: Child,
    addr: EntityAddr,
}

impl LocalServer {
    fn start(common: &CommonArgs, lossless: bool) -> Result<LocalServer, CliError> {
        let exe = std::env::current_exe().map_err(|e| CliError::Usage(format!("cannot find the msgr binary: {e}")))?;
        let mut cmd = Command::new(exe);
        if let Some(c) = &common.conf {
            cmd.arg("-c").arg(c);
        }
        if let Some(t) = &common.ms_type {
            cmd.args(["--ms-type", t]);
        }
        for o in &common.options {
            cmd.args(["-o", o]);
        }
        cmd.args(["serve", "--bind", "127.0.0.1:0", "--policy", if lossless { "lossless" } else { "lossy" }]);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| CliError::Usage(format!("cannot start msgr serve: {e}")))?;
        let out = child.stdout.take().ok_or_else(|| CliError::Usage("msgr serve has no stdout".into()))?;
        let mut lines = BufReader::new(out).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(a) = l.split(" listening on ").nth(1).and_then(|r| r.split_whitespace().next()) {
                        break cli::parse_addr(a)?;
                    }
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(CliError::Usage("msgr serve exited before listening".into()));
                }
            }
        };
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(LocalServer { child, addr })
    }

    fn cpu(&self) -> Option<Duration> {
        proc_cpu(self.child.id())
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One measured round of `jobs` connections.
struct Round {
    rtt: RttStats,
    msgs: u64,
    errors: u64,
    reconnects: u64,
    elapsed: Duration,
    client_cpu: Duration,
}

impl Round {
    fn new(elapsed: Duration, client_cpu: Duration) -> Round {
        Round { rtt: RttStats::new(), msgs: 0, errors: 0, reconnects: 0, elapsed, client_cpu }
    }

    /// Adds one job's figures.
    fn add(&mut self, rtt: &RttStats, msgs: u64, errors: u64) {
        self.rtt.merge(rtt);
        self.msgs += msgs;
        self.errors += errors;
    }

    /// A job that did not run to the end.
    fn failed(&mut self, what: &str, e: &str) {
        self.errors += 1;
        eprintln!("msgr bench: {what} failed: {e}");
    }

    /// The report row; `server_cpu` is what the server spent during the round, if known.
    fn into_row(
        self,
        transport: Transport,
        ms_type: String,
        size: usize,
        depth: usize,
        server_cpu: Option<Duration>,
    ) -> Row {
        Row {
            transport,
            ms_type,
            size,
            depth,
            msgs: self.msgs,
            elapsed: self.elapsed,
            cpu_ns_per_msg_client: per_msg(Some(self.client_cpu), self.msgs),
            cpu_ns_per_msg_server: per_msg(server_cpu, self.msgs),
            rtt: self.rtt,
            reconnects: self.reconnects,
            errors: self.errors,
        }
    }
}

/// Runs `job` on `jobs` threads at once and collects their results; a job that
/// panicked is an error like any other.
fn run_jobs<T: Send>(jobs: usize, job: impl Fn() -> Result<T, String> + Sync) -> Vec<Result<T, String>> {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..jobs).map(|_| s.spawn(&job)).collect();
        hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("job thread panicked".into()))).collect()
    })
}

fn msgr_round(common: &CommonArgs, o: &BenchOptions, target: &EntityAddr, size: usize, span: Duration) -> Round {
    let cpu0 = ProcessTime::now();
    let t0 = Instant::now();
    let until = o.count.is_none().then(|| t0 + span);
    let opts = PingOptions {
        count: o.count.unwrap_or(u64::MAX),
        size,
        timeout: Duration::from_secs(30),
        verify: o.verify,
        lossless: o.lossless,
        window: o.depth,
        until,
        progress: None,
    };
    let reports = run_jobs(o.jobs, || cli::ping(common, target, o.peer_type, &opts).map_err(|e| e.to_string()));
    let mut r = Round::new(t0.elapsed(), cpu0.elapsed());
    for rep in reports {
        match rep {
            Ok(p) => {
                r.add(&p.rtt, p.count, p.errors);
                r.reconnects += p.resets + p.remote_resets;
                if let Some(e) = p.first_error {
                    eprintln!("msgr bench: job error: {e}");
                }
            }
            Err(e) => r.failed("job", &e),
        }
    }
    r
}

fn raw_round(server: &RawServer, o: &BenchOptions, size: usize, span: Duration) -> Round {
    let t0 = Instant::now();
    let until = match o.count {
        Some(n) => Until::Count(n),
        None => Until::Deadline(t0 + span),
    };
    let results = run_jobs(o.jobs, || {
        raw::run_job(server.addr(), size, o.depth, until, o.verify, None).map_err(|e| e.to_string())
    });
    let mut r = Round::new(t0.elapsed(), Duration::ZERO);
    for res in results {
        match res {
            Ok(j) => {
                r.add(&j.rtt, j.msgs, j.errors);
                r.client_cpu += j.cpu;
            }
            Err(e) => r.failed("raw job", &e),
        }
    }
    r
}

fn per_msg(cpu: Option<Duration>, msgs: u64) -> f64 {
    match cpu {
        Some(c) if msgs > 0 => c.as_nanos() as f64 / msgs as f64,
        _ => f64::NAN,
    }
}

/// Runs the benchmark, prints the report and returns its rows.
pub fn run(common: &CommonArgs, o: &BenchOptions) -> Result<Vec<Row>, CliError> {
    let cfg = common.config("client.admin")?;
    let settings = Settings {
        ms_type: cfg.ms_type().to_string(),
        policy: if o.lossless { "lossless" } else { "lossy" },
        mode: if o.connect.is_some() { "client" } else { "local" },
        cpu: cpu_model(),
        kernel: kernel(),
    };
    let local = match &o.connect {
        Some(_) => None,
        None => Some(LocalServer::start(common, o.lossless)?),
    };
    let target = match (&o.connect, &local) {
        (Some(a), _) => a.clone(),
        (None, Some(l)) => l.addr.clone(),
        (None, None) => return Err(CliError::Usage("no server".into())),
    };
    let raw_server = if o.baseline_raw {
        Some(
            RawServer::start("127.0.0.1:0".parse::<SocketAddr>().map_err(|e| CliError::Usage(e.to_string()))?)
                .map_err(|e| CliError::Usage(format!("cannot start the raw baseline server: {e}")))?,
        )
    } else {
        None
    };
    let what = match o.count {
        Some(n) => format!("{n} messages per job"),
        None => format!("{:.1} s per row", o.duration.as_secs_f64()),
    };
    println!(
        "msgr bench: ms_type {} | policy {} | mode {} ({}) | {} job(s) x depth {} | {} after {:.1} s warm-up{}",
        settings.ms_type,
        settings.policy,
        settings.mode,
        target,
        o.jobs,
        o.depth,
        what,
        o.warmup.as_secs_f64(),
        if o.verify { " | verified" } else { "" }
    );
    println!("cpu: {} | kernel {} | latency is round trip", settings.cpu, settings.kernel);
    println!("{}", header());
    let mut rows = Vec::new();
    for &size in &o.sizes {
        if !o.warmup.is_zero() {
            let warm = BenchOptions { count: None, ..o.clone() };
            let _ = msgr_round(common, &warm, &target, size, o.warmup);
        }
        let scpu0 = local.as_ref().and_then(LocalServer::cpu);
        let m = msgr_round(common, o, &target, size, o.duration);
        let scpu = match (scpu0, local.as_ref().and_then(LocalServer::cpu)) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let msgr_row = m.into_row(Transport::Msgr, settings.ms_type.clone(), size, o.depth, scpu);
        let raw_row = raw_server.as_ref().map(|srv| {
            if !o.warmup.is_zero() {
                let warm = BenchOptions { count: None, ..o.clone() };
                let _ = raw_round(srv, &warm, size, o.warmup);
            }
            let s0 = srv.cpu();
            let r = raw_round(srv, o, size, o.duration);
            // The echo threads add their CPU time when their connection ends.
            std::thread::sleep(Duration::from_millis(50));
            r.into_row(Transport::Raw, "tcp".into(), size, o.depth, Some(srv.cpu().saturating_sub(s0)))
        });
        let ratio =
            raw_row.as_ref().filter(|r| r.msgs_per_sec() > 0.0).map(|r| msgr_row.msgs_per_sec() / r.msgs_per_sec());
        println!("{}", format_row(&msgr_row, ratio));
        rows.push(msgr_row);
        if let Some(r) = raw_row {
            println!("{}", format_row(&r, None));
            rows.push(r);
        }
    }
    if let Some(path) = &o.json {
        let doc = serde_json::json!({
            "settings": settings.to_json(o),
            "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| CliError::Usage(format!("json: {e}")))?;
        std::fs::write(path, text + "\n")
            .map_err(|e| CliError::Usage(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_cpu_of_this_process_is_readable() {
        // Burn a little CPU so the tick counters move past zero.
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        assert_ne!(x, 42);
        assert!(proc_cpu(std::process::id()).is_some());
        assert!(proc_cpu(u32::MAX).is_none());
    }

    #[test]
    fn cpu_per_message_is_nan_when_unknown() {
        assert!(per_msg(None, 10).is_nan());
        assert!(per_msg(Some(Duration::from_secs(1)), 0).is_nan());
        assert_eq!(per_msg(Some(Duration::from_micros(10)), 10), 1000.0);
    }
}
