//! `msgr bench --api`: the tokio client's rows next to the callback client's, in one
//! table and one run, each with real traffic; and a counted tokio round that sends
//! exactly what it was asked to.

use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Runs `msgr ARGS` to the end, killing it if it takes longer than `limit`.
fn run_msgr(args: &[&str], limit: Duration) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_msgr"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start msgr");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("msgr output"),
        Err(_) => {
            // It hangs: end it so the test fails instead of hanging too. Its server
            // child goes with it (it exits when its stdin closes).
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("msgr {args:?} did not finish within {limit:?}");
        }
    }
}

/// The table rows of a report whose path is `path`, split into columns: those whose
/// second column is a size (the settings line also starts with `msgr`).
fn rows_of<'a>(stdout: &'a str, path: &str) -> Vec<Vec<&'a str>> {
    stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|c| c.first() == Some(&path) && c.get(1).is_some_and(|s| s.starts_with(|ch: char| ch.is_ascii_digit())))
        .collect()
}

/// Runs `msgr bench ARGS --json FILE`; returns its stdout and the JSON report.
fn bench(args: &[&str]) -> (String, serde_json::Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("bench.json");
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--json", json.to_str().expect("utf-8 temp path")]);
    let out = run_msgr(&all, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "msgr {all:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("no JSON ({e}); stdout:\n{stdout}"));
    (stdout, serde_json::from_str(&text).expect("the report is JSON"))
}

#[test]
fn api_both_prints_callback_and_tokio_rows_in_one_table() {
    let (stdout, doc) =
        bench(&["--api", "both", "--size", "64", "--depth", "4", "--duration", "0.5", "--warmup", "0.2", "--verify"]);
    assert!(stdout.lines().next().is_some_and(|l| l.ends_with(" | api both")), "{stdout}");
    for path in ["msgr", "msgr-tokio", "raw"] {
        let rows = rows_of(&stdout, path);
        assert_eq!(rows.len(), 1, "one {path} row:\n{stdout}");
        // path size depth msgs msgs/s ...; errors is the last column but the ratio.
        let msgs_per_sec: f64 = rows[0][4].parse().unwrap_or(0.0);
        assert!(msgs_per_sec > 0.0, "{path} msgs/s:\n{stdout}");
        assert_eq!(rows[0][2], "4", "{path} depth:\n{stdout}");
    }
    let rows = doc["rows"].as_array().expect("rows");
    let paths: Vec<&str> = rows.iter().filter_map(|r| r["transport"].as_str()).collect();
    assert_eq!(paths, ["msgr", "msgr-tokio", "raw"], "{doc}");
    for r in rows {
        assert_eq!(r["errors"], 0, "{r}");
        assert_eq!(r["size"], 64, "{r}");
        assert!(r["msgs_per_sec"].as_f64().is_some_and(|n| n > 0.0), "{r}");
        assert!(r["cpu_ns_per_msg_client"].as_f64().is_some_and(|c| c > 0.0), "{r}");
        assert!(r["rtt_us_p50"].as_f64().is_some_and(|c| c > 0.0), "{r}");
    }
    // The server's messenger counters cover the tokio client's traffic too.
    assert!(rows[1]["copied_per_byte_server_rx"].as_f64().is_some(), "{}", rows[1]);
    assert_eq!(doc["settings"]["api"], "both");
}

#[test]
fn a_counted_tokio_round_sends_exactly_count_per_job() {
    let (stdout, doc) = bench(&[
        "--api",
        "tokio",
        "--size",
        "100",
        "--jobs",
        "2",
        "--depth",
        "3",
        "--count",
        "250",
        "--warmup",
        "0",
        "--baseline",
        "none",
        "--verify",
    ]);
    assert!(rows_of(&stdout, "msgr").is_empty(), "no callback row:\n{stdout}");
    let rows = doc["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{doc}");
    assert_eq!(rows[0]["transport"], "msgr-tokio");
    assert_eq!(rows[0]["msgs"], 500, "{}", rows[0]);
    assert_eq!(rows[0]["errors"], 0, "{}", rows[0]);
    assert_eq!(rows[0]["reconnects"], 0, "{}", rows[0]);
}

/// The rows of a report's JSON, by path.
fn json_rows<'a>(doc: &'a serde_json::Value, path: &str) -> Vec<&'a serde_json::Value> {
    doc["rows"].as_array().expect("rows").iter().filter(|r| r["transport"] == path).collect()
}

#[test]
fn reply_size_rows_bring_back_the_replies_asked_for_on_every_path() {
    for reply in [0u64, 16] {
        let n = reply.to_string();
        let (stdout, doc) = bench(&[
            "--api",
            "both",
            "--size",
            "4k",
            "--depth",
            "4",
            "--count",
            "150",
            "--warmup",
            "0",
            "--reply-size",
            &n,
            "--verify",
        ]);
        let first = stdout.lines().next().unwrap_or_default();
        assert!(first.contains(&format!(" | reply {reply} B | ")), "{stdout}");
        assert_eq!(doc["settings"]["reply_size"], reply, "{doc}");
        for path in ["msgr", "msgr-tokio", "raw"] {
            let rows = json_rows(&doc, path);
            assert_eq!(rows.len(), 1, "one {path} row: {doc}");
            let r = rows[0];
            assert_eq!((r["msgs"].as_u64(), r["errors"].as_u64()), (Some(150), Some(0)), "{path}: {r}");
            assert_eq!(r["size"], 4096, "{r}");
            assert_eq!(r["reply_size"], reply, "{r}");
            assert_eq!(r["sent_bytes"], 150 * 4096, "{r}");
            // Counted as the replies came in: what the server sent back.
            assert_eq!(r["received_bytes"], 150 * reply, "{path}: {r}");
            assert_eq!(rows_of(&stdout, path).len(), 1, "{stdout}");
        }
        // The server's messenger took the 4 KiB requests in and sent small replies out
        // (the rest of what it sent is the control replies).
        let me = &doc["server_counters"]["msgr.osd.0"];
        let (rx, tx) = (me["msgr_recv_bytes"].as_u64().unwrap_or(0), me["msgr_send_bytes"].as_u64().unwrap_or(0));
        assert!(rx >= 2 * 150 * 4096, "{me}");
        assert!(tx * 4 < rx, "the server sent {tx} bytes for {rx} received: echoes, not replies? {me}");
    }
}

#[test]
fn conns_per_job_gives_each_job_that_many_distinct_connections_on_every_path() {
    let (stdout, doc) = bench(&[
        "--api",
        "both",
        "--jobs",
        "2",
        "--conns-per-job",
        "2",
        "--size",
        "64",
        "--depth",
        "2",
        "--count",
        "50",
        "--warmup",
        "0",
        "--verify",
    ]);
    let first = stdout.lines().next().unwrap_or_default();
    assert!(first.contains(" | 4 connections (2 per job, to 127.0.0.1-127.0.0.2) | "), "{stdout}");
    assert_eq!(
        (doc["settings"]["connections"].as_u64(), doc["settings"]["conns_per_job"].as_u64()),
        (Some(4), Some(2))
    );
    for path in ["msgr", "msgr-tokio"] {
        let rows = json_rows(&doc, path);
        assert_eq!(rows.len(), 1, "{doc}");
        let r = rows[0];
        // --count is per connection: 50 on each of the 4.
        assert_eq!((r["msgs"].as_u64(), r["errors"].as_u64()), (Some(200), Some(0)), "{path}: {r}");
        assert_eq!(r["connections"], 4, "{r}");
        // What the server's messenger saw during the row: 4 distinct connections, not 2
        // (one per job, had a job's connections been one) nor a reconnection.
        assert_eq!(r["server_connections"], 4, "{path}: {r}");
        assert_eq!(r["reconnects"], 0, "{r}");
    }
    let raw = json_rows(&doc, "raw");
    assert_eq!(raw.len(), 1, "{doc}");
    assert_eq!((raw[0]["msgs"].as_u64(), raw[0]["connections"].as_u64()), (Some(200), Some(4)), "{}", raw[0]);
    assert!(raw[0]["server_connections"].is_null(), "the raw echo is not a messenger: {}", raw[0]);
    // Over the whole run: the control connection and 4 per msgr round.
    let created = doc["server_counters"]["msgr.osd.0"]["msgr_created_connections"].as_u64();
    assert!(created.is_some_and(|n| n >= 9), "{}", doc["server_counters"]);
}
