//! `msgr bench server` and `msgr bench client` as two processes: the client learns the
//! server's CPU time and raw echo port through the bench control request, so both rows
//! (msgr and raw) carry the server's CPU per message. Against a peer that does not
//! answer the control request (a plain `msgr serve`), the client warns, reports server
//! CPU as unknown, skips the raw baseline and still finishes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines `out` yields, from a thread of their own, so a reader can wait with a
/// deadline; the channel disconnects at EOF.
fn lines_of(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    rx
}

/// Starts `msgr ARGS` and returns it with the messenger address from its
/// `... listening on ADDR ...` line.
fn start_server(args: &[&str]) -> (Killed, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_msgr"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the server");
    let out = child.stdout.take().expect("server stdout");
    let guard = Killed(child);
    let rx = lines_of(out);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|e| panic!("no listening line from msgr {args:?}: {e}"));
        if let Some(addr) = l.split(" listening on ").nth(1).and_then(|r| r.split_whitespace().next()) {
            return (guard, addr.to_string());
        }
    }
}

/// Runs `msgr ARGS` to the end, killing it if it takes longer than `limit`.
fn run_client(args: &[&str], limit: Duration) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_msgr"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the client");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("client output"),
        Err(_) => {
            // It hangs: end it so the test fails instead of hanging too.
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("msgr {args:?} did not finish within {limit:?}");
        }
    }
}

fn client_json(addr: &str, json: &std::path::Path, limit: Duration) -> (Output, serde_json::Value) {
    client_json_with(addr, json, limit, &[])
}

/// [`client_json`] with `extra` arguments after the usual ones.
fn client_json_with(
    addr: &str,
    json: &std::path::Path,
    limit: Duration,
    extra: &[&str],
) -> (Output, serde_json::Value) {
    let json_arg = json.to_str().expect("utf-8 temp path");
    let mut args = vec![
        "bench",
        "client",
        "--connect",
        addr,
        "--duration",
        "0.5",
        "--warmup",
        "0",
        "--size",
        "64",
        "--verify",
        "--json",
        json_arg,
    ];
    args.extend_from_slice(extra);
    let out = run_client(&args, limit);
    let text = std::fs::read_to_string(json).unwrap_or_else(|e| {
        panic!(
            "no JSON from the client ({e}); stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, serde_json::from_str(&text).expect("the report is JSON"))
}

#[test]
fn client_against_bench_server_reports_server_cpu_for_msgr_and_raw() {
    let (_server, addr) = start_server(&["bench", "server", "--bind", "127.0.0.1:0"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("bench.json");
    let (out, doc) = client_json(&addr, &json, Duration::from_secs(120));
    assert!(out.status.success(), "client failed: {}", String::from_utf8_lossy(&out.stderr));
    // Piped, so no progress line may be in the output.
    assert!(!out.stdout.contains(&b'\r'), "progress line printed to a pipe");
    let rows = doc["rows"].as_array().expect("rows");
    let paths: Vec<&str> = rows.iter().filter_map(|r| r["transport"].as_str()).collect();
    assert_eq!(paths, ["msgr", "raw"], "{doc}");
    for r in rows {
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["msgs"].as_u64().is_some_and(|n| n > 0), "{r}");
        let cpu = r["cpu_ns_per_msg_server"].as_f64();
        assert!(cpu.is_some_and(|c| c > 0.0), "server CPU per message must be known and positive: {r}");
        assert!(r["cpu_ns_per_msg_client"].as_f64().is_some_and(|c| c > 0.0), "{r}");
    }
    assert_eq!(doc["settings"]["mode"], "client");
    assert_eq!(doc["settings"]["server_cpu_known"], true);
    assert!(doc["settings"]["raw"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{doc}");
    assert!(doc["server_counters"].is_object(), "{doc}");
    // The congestion control the client's connections ran over, as its network
    // namespace has it (BBR paces in the kernel on loopback: it changes every row).
    let cc = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string());
    assert_eq!(doc["settings"]["tcp_congestion_control"], cc.as_str(), "{doc}");
    let header = String::from_utf8_lossy(&out.stdout);
    assert!(header.contains(&format!("| tcp {cc} |")), "{header}");
}

#[test]
fn client_against_a_plain_serve_warns_and_finishes_without_server_cpu() {
    let (_server, addr) = start_server(&["serve", "--bind", "127.0.0.1:0"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("bench.json");
    let t0 = Instant::now();
    let (out, doc) = client_json(&addr, &json, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "client failed: {stderr}");
    assert!(stderr.contains("does not answer the bench control request"), "{stderr}");
    assert!(stderr.contains("raw baseline skipped"), "{stderr}");
    let rows = doc["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "only the msgr row: {doc}");
    assert_eq!(rows[0]["transport"], "msgr");
    assert_eq!(rows[0]["errors"], 0);
    assert!(rows[0]["cpu_ns_per_msg_server"].is_null(), "{doc}");
    assert_eq!(doc["settings"]["server_cpu_known"], false);
    // One control timeout (a few seconds), not one per round and never a hang.
    assert!(t0.elapsed() < Duration::from_secs(60), "took {:?}", t0.elapsed());
}

#[test]
fn perf_counters_reach_the_bench_report_and_the_admin_socket() {
    let dir = tempfile::tempdir().expect("temp dir");
    let asok = dir.path().join("osd.0.asok");
    let asok_opt = format!("admin_socket={}", asok.display());
    let (_server, addr) = start_server(&["-o", &asok_opt, "bench", "server", "--bind", "127.0.0.1:0"]);
    let json = dir.path().join("bench.json");
    let (out, doc) = client_json(&addr, &json, Duration::from_secs(120));
    assert!(out.status.success(), "client failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("server perf counters"), "{stdout}");
    let msgs = doc["rows"][0]["msgs"].as_i64().expect("msgr row");
    let me = &doc["server_counters"]["msgr.osd.0"];
    // Warm-up, probes and the measured round all went through the server messenger.
    assert!(me["msgr_recv_messages"].as_i64().is_some_and(|n| n >= msgs), "{me}");
    assert!(me["msgr_send_messages"].as_i64().is_some_and(|n| n >= msgs), "{me}");
    assert!(me["msgr_write_calls"].as_i64().is_some_and(|n| n > 0), "{me}");
    assert_eq!(me["msgr_connection_faults"], 0, "clients hanging up are not faults: {me}");
    // The client's own messengers, added up over warm-up and measured round.
    assert!(stdout.contains("client perf counters"), "{stdout}");
    let client = &doc["client_counters"]["msgr.client.?"];
    assert!(client["msgr_send_messages"].as_i64().is_some_and(|n| n >= msgs), "{client}");
    assert!(client["msgr_frames_written"].as_i64().is_some_and(|n| n >= msgs), "{client}");
    assert!(client.get("msgr_active_connections").is_none(), "a summed gauge means nothing: {client}");

    let dump =
        run_client(&["daemon", "perf", "dump", "--socket", asok.to_str().expect("utf-8")], Duration::from_secs(30));
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    let v: serde_json::Value = serde_json::from_slice(&dump.stdout).expect("perf dump is JSON");
    let now = v["msgr.osd.0"]["msgr_recv_messages"].as_i64().expect("messenger section");
    assert!(now >= msgs);
    let workers: i64 = v
        .as_object()
        .expect("sections")
        .iter()
        .filter(|(k, _)| k.starts_with("AsyncMessenger::Worker-"))
        .map(|(_, w)| w["msgr_recv_messages"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(workers, now, "one messenger on the stack: its workers' counts add up to its own");

    // `perf schema` describes every value `perf dump` shows.
    let schema =
        run_client(&["daemon", "perf", "schema", "--socket", asok.to_str().expect("utf-8")], Duration::from_secs(30));
    assert!(schema.status.success(), "{}", String::from_utf8_lossy(&schema.stderr));
    let schema: serde_json::Value = serde_json::from_slice(&schema.stdout).expect("perf schema is JSON");
    for (section, values) in v.as_object().expect("sections") {
        for key in values.as_object().expect("a section is an object").keys() {
            assert!(schema[key]["description"].is_string(), "{section}.{key} is not in perf schema: {schema}");
        }
    }

    let missing = dir.path().join("nobody.asok");
    let e =
        run_client(&["daemon", "perf", "dump", "--socket", missing.to_str().expect("utf-8")], Duration::from_secs(30));
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("admin_socket"), "{}", String::from_utf8_lossy(&e.stderr));
}

/// The children of `pid` still running (not zombies), from `/proc/*/stat`.
fn live_children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // "PID (COMM) STATE PPID ...": COMM may hold spaces, so split after the last ')'.
        let Some((head, rest)) = stat.rsplit_once(") ") else { continue };
        let mut f = rest.split_whitespace();
        let (state, ppid) = (f.next(), f.next().and_then(|p| p.parse::<u32>().ok()));
        if ppid == Some(pid) && state != Some("Z") {
            if let Some(child) = head.split_whitespace().next().and_then(|p| p.parse().ok()) {
                out.push(child);
            }
        }
    }
    out
}

/// Whether `pid` has exited (gone, or a zombie waiting for whoever adopted it).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

#[test]
fn a_bare_bench_killed_with_sigkill_takes_its_server_child_with_it() {
    let mut bench = Command::new(env!("CARGO_BIN_EXE_msgr"))
        .args(["bench", "--size", "64", "--duration", "60", "--warmup", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start msgr bench");
    let bench_pid = bench.id();
    let out = bench.stdout.take().expect("bench stdout");
    let rx = lines_of(out);
    // The settings header is printed once the server child listens.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        match l {
            Ok(l) if l.starts_with("msgr bench: ") => break,
            Ok(_) => {}
            Err(e) => {
                let _ = bench.kill();
                panic!("no settings header from msgr bench: {e}");
            }
        }
    }
    let children = live_children(bench_pid);
    assert_eq!(children.len(), 1, "msgr bench should have one server child, has {children:?}");
    let server = children[0];

    bench.kill().expect("SIGKILL msgr bench");
    bench.wait().expect("reap msgr bench");

    let deadline = Instant::now() + Duration::from_secs(20);
    while !exited(server) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !exited(server) {
        let _ = Command::new("kill").args(["-9", &server.to_string()]).status();
        panic!("the server child {server} outlived its SIGKILLed parent by 20 s");
    }
}

#[test]
fn a_bench_server_with_exit_on_stdin_eof_stops_cleanly_when_stdin_closes() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_msgr"))
        .args(["bench", "server", "--bind", "127.0.0.1:0", "--exit-on-stdin-eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the server");
    let out = child.stdout.take().expect("server stdout");
    let stdin = child.stdin.take();
    let mut guard = Killed(child);
    let rx = lines_of(out);
    let first = rx.recv_timeout(Duration::from_secs(30)).expect("a listening line");
    assert!(first.contains(" listening on "), "first line: {first:?}");
    drop(stdin);
    // Everything it prints until its stdout closes; the last words come from the clean
    // shutdown path, which a kill would skip.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut rest = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) => rest.push(l),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("still running 20 s after stdin closed: {rest:?}"),
        }
    }
    assert!(rest.iter().any(|l| l.starts_with("msgr bench server: answered 0 pings")), "after EOF: {rest:?}");
    let status = guard.0.wait().expect("wait for the server");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn msgs_per_second_per_server_core_is_1e9_over_the_server_cpu_per_message() {
    let (_server, addr) = start_server(&["bench", "server", "--bind", "127.0.0.1:0"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("bench.json");
    let (out, doc) = client_json(&addr, &json, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("msgs/s/core"), "{stdout}");
    let rows = doc["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{doc}");
    for r in rows {
        let cpu = r["cpu_ns_per_msg_server"].as_f64().expect("server CPU known");
        let per_core = r["msgs_per_sec_per_core_server"].as_f64().expect("msgs/s/core in the JSON");
        assert!(cpu > 0.0 && per_core > 0.0, "{r}");
        assert!((per_core * cpu / 1e9 - 1.0).abs() < 1e-9, "msgs/s/core != 1e9 / cpu ns per msg: {r}");
        // The same as msgs/s over the server's CPU use (CPU seconds per wall second).
        let (msgs, secs, rate) =
            (r["msgs"].as_f64().unwrap_or(0.0), r["elapsed_s"].as_f64().unwrap_or(0.0), r["msgs_per_sec"].as_f64());
        let cpu_use = cpu * msgs / 1e9 / secs;
        assert!(rate.is_some_and(|m| (m / cpu_use / per_core - 1.0).abs() < 1e-6), "{r}");
        // The table shows it rounded, in the column after the server's cpu/msg.
        let path = r["transport"].as_str().unwrap_or("?");
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(path) && l.split_whitespace().nth(1) == Some("64"))
            .unwrap_or_else(|| panic!("no {path} row:\n{stdout}"));
        let shown: f64 = line.split_whitespace().nth(14).and_then(|c| c.parse().ok()).unwrap_or(-1.0);
        assert!((shown - per_core).abs() <= 0.5, "{shown} shown for {per_core}: {line}");
    }
}

#[test]
fn a_split_run_with_replies_and_several_connections_per_job_against_a_wildcard_server() {
    // Bound to 0.0.0.0, so it prints 0.0.0.0 and can be dialled at 127.0.0.1 and .2.
    let (_server, addr) = start_server(&["bench", "server", "--bind", "0.0.0.0:0"]);
    assert!(addr.contains("0.0.0.0:"), "{addr}");
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("bench.json");
    let extra = ["--reply-size", "0", "--conns-per-job", "2", "--depth", "4", "--count", "100"];
    let (out, doc) = client_json_with(&addr, &json, Duration::from_secs(120), &extra);
    assert!(out.status.success(), "client failed: {}", String::from_utf8_lossy(&out.stderr));
    let rows = doc["rows"].as_array().expect("rows");
    let paths: Vec<&str> = rows.iter().filter_map(|r| r["transport"].as_str()).collect();
    assert_eq!(paths, ["msgr", "raw"], "{doc}");
    for r in rows {
        assert_eq!((r["msgs"].as_u64(), r["errors"].as_u64()), (Some(200), Some(0)), "{r}");
        assert_eq!((r["connections"].as_u64(), r["reply_size"].as_u64()), (Some(2), Some(0)), "{r}");
        assert_eq!((r["sent_bytes"].as_u64(), r["received_bytes"].as_u64()), (Some(200 * 64), Some(0)), "{r}");
    }
    assert_eq!(rows[0]["server_connections"], 2, "{}", rows[0]);
}

#[test]
fn bad_reply_size_and_conns_per_job_are_refused_naming_the_flag() {
    for (args, flag) in [
        (&["bench", "--reply-size", "65m"][..], "--reply-size"),
        (&["bench", "--reply-size", "lots"][..], "--reply-size"),
        (&["bench", "--conns-per-job", "0"][..], "--conns-per-job"),
        (&["bench", "--rounds", "0"][..], "--rounds"),
        (&["bench", "--conns-per-job", "2", "--policy", "lossless"][..], "--policy lossy"),
        (&["bench", "client", "--connect", "10.0.0.1:6800", "--conns-per-job", "2"][..], "loopback"),
    ] {
        let out = run_client(args, Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

#[test]
fn rounds_alternate_msgr_and_raw_and_end_in_a_median_line_and_summary() {
    let (_server, addr) = start_server(&["bench", "server", "--bind", "127.0.0.1:0"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("bench.json");
    let extra = ["--rounds", "3", "--depth", "4", "--count", "200"];
    let (out, doc) = client_json_with(&addr, &json, Duration::from_secs(180), &extra);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client failed: {}", String::from_utf8_lossy(&out.stderr));
    // The table: msgr then raw, three times over, each row as a single round prints it.
    let table: Vec<&str> = stdout
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("64"))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|p| *p == "msgr" || *p == "raw")
        .collect();
    assert_eq!(table, ["msgr", "raw", "msgr", "raw", "msgr", "raw"], "{stdout}");
    let rows = doc["rows"].as_array().expect("rows");
    let order: Vec<(&str, u64)> =
        rows.iter().map(|r| (r["transport"].as_str().unwrap_or("?"), r["round"].as_u64().unwrap_or(0))).collect();
    assert_eq!(order, [("msgr", 1), ("raw", 1), ("msgr", 2), ("raw", 2), ("msgr", 3), ("raw", 3)], "{doc}");
    // The summary is made of those rows: the median of three is the middle one.
    let middle = |path: &str, key: &str| {
        let mut v: Vec<f64> = rows.iter().filter(|r| r["transport"] == path).filter_map(|r| r[key].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        v[1]
    };
    let summary = doc["summary"].as_array().expect("summary");
    assert_eq!(summary.len(), 1, "{doc}");
    let s = &summary[0];
    assert_eq!((s["transport"].as_str(), s["rounds"].as_u64(), s["depth"].as_u64()), (Some("msgr"), Some(3), Some(4)));
    assert_eq!(s["msgs_per_sec"]["median"].as_f64(), Some(middle("msgr", "msgs_per_sec")), "{s}");
    assert_eq!(s["raw_msgs_per_sec"]["median"].as_f64(), Some(middle("raw", "msgs_per_sec")), "{s}");
    assert_eq!(s["server_cpu_ns_per_msg"].as_f64(), Some(middle("msgr", "cpu_ns_per_msg_server")), "{s}");
    let ratios: Vec<f64> = rows
        .chunks(2)
        .map(|p| p[0]["msgs_per_sec"].as_f64().unwrap_or(0.0) / p[1]["msgs_per_sec"].as_f64().unwrap_or(1.0))
        .collect();
    let v = &s["vs_raw"];
    let (lo, hi) = (ratios.iter().copied().fold(f64::MAX, f64::min), ratios.iter().copied().fold(0.0, f64::max));
    // Recomputed from the JSON: serde_json reads floats back to within a bit or two
    // (exactly only with its float_roundtrip feature), so not compared exactly.
    let near = |x: Option<f64>, want: f64| x.is_some_and(|x| (x / want - 1.0).abs() < 1e-12);
    assert!(near(v["min"].as_f64(), lo) && near(v["max"].as_f64(), hi), "{lo} {hi}: {s}");
    let line = stdout.lines().find(|l| l.starts_with("median of 3 rounds, msgr 64 x 4: ")).unwrap_or_else(|| {
        panic!("no median line:\n{stdout}");
    });
    let x = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let shown = format!("| vs raw {:.2}x ({:.2}x-{:.2}x)", x("median"), x("min"), x("max"));
    assert!(line.contains(&shown), "{shown} not in {line}");
    assert!(stdout.lines().next().is_some_and(|l| l.contains("| 3 rounds, msgr then raw in each")), "{stdout}");
}
