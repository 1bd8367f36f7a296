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
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
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
    let json_arg = json.to_str().expect("utf-8 temp path");
    let out = run_client(
        &[
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
        ],
        limit,
    );
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

    let missing = dir.path().join("nobody.asok");
    let e =
        run_client(&["daemon", "perf", "dump", "--socket", missing.to_str().expect("utf-8")], Duration::from_secs(30));
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("admin_socket"), "{}", String::from_utf8_lossy(&e.stderr));
}
