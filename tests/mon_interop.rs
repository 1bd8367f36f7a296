//! Interop with a real Ceph 16.2 monitor (auth none, crc mode): every request/reply the
//! `msgr mon` tool makes, checked against what the `ceph` CLI reports for the same
//! cluster, plus failure behaviour. Skipped (loudly) only where ceph-mon is missing.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{have_ceph, Mon};
use msgr::config::{Config, ConfigBuilder};
use msgr::messenger::ConnError;
use msgr::monc::{MonClient, MonError};
use msgr::proto::{EntityName, EntityType};

const TIMEOUT: Duration = Duration::from_secs(20);

fn config(mon: &Mon) -> Config {
    ConfigBuilder::new("client.admin").file(mon.conf()).unwrap().build().unwrap()
}

fn client(mon: &Mon) -> MonClient {
    MonClient::new(&config(mon), EntityName { ty: EntityType::Client, num: -1 }, None, TIMEOUT).unwrap()
}

fn msgr_bin(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_msgr")).args(args).output().expect("run msgr")
}

#[test]
fn get_version_matches_the_ceph_cli() {
    if !have_ceph("get_version_matches_the_ceph_cli") {
        return;
    }
    let mon = Mon::start("none", "crc");
    let c = client(&mon);
    let (osd_newest, osd_oldest) = c.get_version("osdmap").unwrap();
    let (mon_newest, _) = c.get_version("monmap").unwrap();
    let osd = mon.ceph_json(&["osd", "stat"]);
    let dump = mon.ceph_json(&["mon", "dump"]);
    assert_eq!(osd_newest, osd["epoch"].as_u64().unwrap());
    assert!(osd_oldest >= 1 && osd_oldest <= osd_newest);
    assert_eq!(mon_newest, dump["epoch"].as_u64().unwrap());
}

#[test]
fn monmap_matches_the_ceph_cli() {
    if !have_ceph("monmap_matches_the_ceph_cli") {
        return;
    }
    let mon = Mon::start("none", "crc");
    let map = client(&mon).monmap().unwrap();
    let dump = mon.ceph_json(&["mon", "dump"]);
    assert_eq!(map.fsid.to_string(), mon.ceph(&["fsid"]).trim());
    assert_eq!(u64::from(map.epoch), dump["epoch"].as_u64().unwrap());
    let mons = dump["mons"].as_array().unwrap();
    assert_eq!(map.mons.len(), mons.len());
    for (ours, theirs) in map.mons.iter().zip(mons) {
        assert_eq!(ours.name, theirs["name"].as_str().unwrap());
        let want: Vec<String> = theirs["public_addrs"]["addrvec"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| format!("{}:{}", a["type"].as_str().unwrap(), a["addr"].as_str().unwrap()))
            .collect();
        let got: Vec<String> = ours.addrs.0.iter().map(|a| format!("{}:{}", a.ty.as_str(), a.addr.unwrap())).collect();
        assert_eq!(got, want);
        assert_eq!(u64::from(ours.priority), theirs["priority"].as_u64().unwrap());
        assert_eq!(u64::from(ours.weight), theirs["weight"].as_u64().unwrap());
        assert_eq!(map.ranks.get(theirs["rank"].as_u64().unwrap() as usize), Some(&ours.name));
    }
    // The rest of the map, decoded in full.
    assert_eq!(u64::from(map.min_mon_release), dump["min_mon_release"].as_u64().unwrap());
    assert_eq!(u64::from(map.strategy), dump["election_strategy"].as_u64().unwrap());
    assert_eq!(map.stretch_mode_enabled, dump["stretch_mode"].as_bool().unwrap());
    assert_eq!(map.tiebreaker_mon, dump["tiebreaker_mon"].as_str().unwrap());
    assert!(map.removed_ranks.is_empty() && map.disallowed_leaders.is_empty());
    // kraken .. elector-pinging: the eight mon feature bits of a pacific monitor.
    let persistent = dump["features"]["persistent"].as_array().unwrap().len() as u32;
    assert_eq!(map.persistent_features.count_ones(), persistent);
    assert!(map.created.sec > 0 && map.last_changed.sec >= map.created.sec);
}

#[test]
fn ping_and_keepalive() {
    if !have_ceph("ping_and_keepalive") {
        return;
    }
    let mon = Mon::start("none", "crc");
    let c = client(&mon);
    let status: serde_json::Value = serde_json::from_str(&c.ping().unwrap()).unwrap();
    assert_eq!(status["mon_status"]["name"], "a");
    let stamp = c.keepalive().unwrap();
    assert!(stamp.sec > 1_600_000_000, "the mon echoes our wall-clock stamp");
}

#[test]
fn commands_return_code_status_and_output() {
    if !have_ceph("commands_return_code_status_and_output") {
        return;
    }
    let mon = Mon::start("none", "crc");
    let c = client(&mon);
    let ack = c.command(r#"{"prefix":"mon dump","format":"json"}"#).unwrap();
    assert_eq!(ack.r, 0);
    assert!(ack.rs.contains("dumped monmap epoch"), "{}", ack.rs);
    let dump: serde_json::Value = serde_json::from_slice(&ack.output).unwrap();
    assert_eq!(dump["fsid"].as_str().unwrap(), mon.ceph(&["fsid"]).trim());
    let ack = c.command(r#"{"prefix":"status","format":"json"}"#).unwrap();
    assert_eq!(ack.r, 0);
    let status: serde_json::Value = serde_json::from_slice(&ack.output).unwrap();
    assert_eq!(status["fsid"], dump["fsid"]);
    let ack = c.command(r#"{"prefix":"osd pool get","pool":"nope","var":"size"}"#).unwrap();
    assert_eq!(ack.r, -2, "ENOENT");
    assert!(ack.rs.contains("nope"), "{}", ack.rs);
}

#[test]
fn cli_mon_subcommands() {
    if !have_ceph("cli_mon_subcommands") {
        return;
    }
    let mon = Mon::start("none", "crc");
    let conf = mon.conf();
    let conf = conf.to_str().unwrap();
    let out = msgr_bin(&["mon", "-c", conf, "get-version", "osdmap"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let epoch = mon.ceph_json(&["osd", "stat"])["epoch"].as_u64().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("osdmap version {epoch} ")));
    let out = msgr_bin(&["mon", "--mon-host", &mon.v2_addr(), "monmap"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("fsid {}", mon.ceph(&["fsid"]).trim())));
    let out = msgr_bin(&["mon", "-c", conf, "command", r#"{"prefix":"osd pool get","pool":"nope","var":"size"}"#]);
    assert_eq!(out.status.code(), Some(2), "exit code = -r like the ceph CLI");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    let out = msgr_bin(&["mon", "-c", conf, "ping"]);
    assert!(out.status.success());
}

/// `msgr mon watch` holds one session across a monitor's death and restart: it says
/// the reset when it happens, fails requests meanwhile, and exits 0 once a request
/// succeeds again.
#[test]
fn cli_watch_reports_the_reset_and_the_recovery() {
    use std::io::{BufRead, BufReader};
    if !have_ceph("cli_watch_reports_the_reset_and_the_recovery") {
        return;
    }
    let mon = Mon::start("none", "crc");
    let conf = mon.conf();
    let mut child = Command::new(env!("CARGO_BIN_EXE_msgr"))
        .args(["mon", "-c", conf.to_str().unwrap(), "--timeout", "5", "watch", "osdmap"])
        .args(["--interval", "0.2", "--duration", "60", "--until-recovered"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run msgr mon watch");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok);
    let mut next = |what: &str, want: &dyn Fn(&str) -> bool| -> String {
        for line in lines.by_ref() {
            if want(&line) {
                return line;
            }
        }
        panic!("msgr mon watch ended before {what}");
    };
    next("the first answer", &|l| l.contains("osdmap version 1 "));
    mon.kill();
    next("the reset", &|l| l.contains("session reset (resets so far: 1)"));
    // A request in flight when the monitor died fails with the reset; the ones after
    // it find the port closed.
    let failed = next("a refused request", &|l| l.contains("request failed") && l.contains("refused the connection"));
    assert!(failed.contains("osdmap") || failed.contains("monitor"), "{failed}");
    mon.restart();
    // One reset at the kill; a request that reached the dying monitor can add another.
    next("the recovery", &|l| l.starts_with("recovered after ") && l.contains("session reset"));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn mon_down_is_refused_within_the_timeout() {
    if !have_ceph("mon_down_is_refused_within_the_timeout") {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = Config::default();
    let host = format!("127.0.0.1:{port}");
    let c = MonClient::new(&cfg, EntityName { ty: EntityType::Client, num: -1 }, Some(&host), TIMEOUT).unwrap();
    let t0 = Instant::now();
    let e = c.get_version("osdmap").unwrap_err();
    assert!(matches!(&e, MonError::Refused { err, .. } if matches!(**err, ConnError::Refused(_))), "{e:?}");
    assert!(t0.elapsed() < TIMEOUT, "reported as refused, not as a timeout");
}

fn killed_mid_session_then_restarted(auth: &str, mode: &str) {
    let mon = Mon::start(auth, mode);
    let c = client(&mon);
    c.get_version("osdmap").unwrap();
    assert_eq!(c.resets(), 0);
    mon.kill();
    // The lossy session resets (ms_handle_reset); a request meanwhile fails with a
    // typed error, not a hang.
    let deadline = Instant::now() + TIMEOUT;
    while c.resets() == 0 {
        assert!(Instant::now() < deadline, "no ms_handle_reset after the mon was killed");
        std::thread::sleep(Duration::from_millis(10));
    }
    let e = c.get_version("osdmap").unwrap_err();
    assert!(matches!(e, MonError::Refused { .. }), "the mon is down: {e:?}");
    mon.restart();
    // A new request opens a new session (new authentication) and succeeds.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match c.get_version("osdmap") {
            Ok((v, _)) => {
                assert!(v >= 1);
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "no recovery after restart: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

#[test]
fn mon_killed_mid_session_then_restarted() {
    if !have_ceph("mon_killed_mid_session_then_restarted") {
        return;
    }
    killed_mid_session_then_restarted("none", "crc");
}

#[test]
fn mon_killed_mid_session_then_restarted_cephx_secure() {
    if !have_ceph("mon_killed_mid_session_then_restarted_cephx_secure") {
        return;
    }
    killed_mid_session_then_restarted("cephx", "secure");
}

/// Every request/reply of `msgr mon` on one session, checked against the `ceph` CLI.
fn every_request(mon: &Mon) {
    let c = client(mon);
    let (osd, _) = c.get_version("osdmap").unwrap();
    assert_eq!(osd, mon.ceph_json(&["osd", "stat"])["epoch"].as_u64().unwrap());
    let (monmap_v, _) = c.get_version("monmap").unwrap();
    let dump = mon.ceph_json(&["mon", "dump"]);
    assert_eq!(monmap_v, dump["epoch"].as_u64().unwrap());
    let map = c.monmap().unwrap();
    assert_eq!(map.fsid.to_string(), mon.ceph(&["fsid"]).trim());
    assert_eq!(map.mons[0].name, dump["mons"][0]["name"].as_str().unwrap());
    let status: serde_json::Value = serde_json::from_str(&c.ping().unwrap()).unwrap();
    assert_eq!(status["mon_status"]["name"], "a");
    c.keepalive().unwrap();
    let ack = c.command(r#"{"prefix":"mon dump","format":"json"}"#).unwrap();
    assert_eq!(ack.r, 0);
    let ours: serde_json::Value = serde_json::from_slice(&ack.output).unwrap();
    assert_eq!(ours["fsid"], dump["fsid"]);
    let ack = c.command(r#"{"prefix":"status"}"#).unwrap();
    assert_eq!(ack.r, 0);
    assert!(String::from_utf8_lossy(&ack.output).contains("HEALTH_"));
    assert_eq!(c.resets(), 0, "one session served everything");
}

#[test]
fn every_request_auth_none_crc() {
    if !have_ceph("every_request_auth_none_crc") {
        return;
    }
    every_request(&Mon::start("none", "crc"));
}

/// Ceph 16.2 ignores `ms_crc_data` / `ms_crc_header` on msgr2: a monitor set to false
/// still sends and checks every crc (our client rejects a frame with a wrong one), and our
/// client accepts the options from a tuned cluster's ceph.conf.
#[test]
fn ms_crc_data_false_changes_nothing_on_msgr2() {
    if !have_ceph("ms_crc_data_false_changes_nothing_on_msgr2") {
        return;
    }
    let mon = Mon::start_with("none", "crc", "ms_crc_data = false\nms_crc_header = false");
    every_request(&mon);
    let conf = mon.conf();
    let conf = conf.to_str().expect("utf-8 path");
    let out = msgr_bin(&["mon", "-c", conf, "-o", "ms_crc_data=false", "-o", "ms_crc_header=false", "keepalive"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn every_request_cephx_crc() {
    if !have_ceph("every_request_cephx_crc") {
        return;
    }
    every_request(&Mon::start("cephx", "crc"));
}

#[test]
fn every_request_cephx_secure() {
    if !have_ceph("every_request_cephx_secure") {
        return;
    }
    // The monitor accepts only secure mode: a session that reaches READY and answers is
    // proof that our AES-GCM frames and nonces are right.
    every_request(&Mon::start("cephx", "secure"));
}

#[test]
fn secure_crc_preference_gets_secure_from_a_cephx_mon() {
    if !have_ceph("secure_crc_preference_gets_secure_from_a_cephx_mon") {
        return;
    }
    // The monitor allows both; "secure crc" on our side means secure is chosen.
    let mon = Mon::start("cephx", "secure crc");
    let cfg = ConfigBuilder::new("client.admin")
        .file(mon.conf())
        .unwrap()
        .set("ms_mon_client_mode", "secure crc")
        .unwrap()
        .build()
        .unwrap();
    let c = MonClient::new(&cfg, EntityName { ty: EntityType::Client, num: -1 }, None, TIMEOUT).unwrap();
    c.get_version("osdmap").unwrap();
    assert_eq!(c.connection_mode(), Some(msgr::proto::frames::CON_MODE_SECURE));
    let cfg = ConfigBuilder::new("client.admin")
        .file(mon.conf())
        .unwrap()
        .set("ms_mon_client_mode", "crc")
        .unwrap()
        .build()
        .unwrap();
    let c = MonClient::new(&cfg, EntityName { ty: EntityType::Client, num: -1 }, None, TIMEOUT).unwrap();
    c.get_version("osdmap").unwrap();
    assert_eq!(c.connection_mode(), Some(msgr::proto::frames::CON_MODE_CRC));
}

#[test]
fn wrong_key_is_a_clear_authentication_error() {
    if !have_ceph("wrong_key_is_a_clear_authentication_error") {
        return;
    }
    let mon = Mon::start("cephx", "crc");
    let other = Mon::start("cephx", "crc");
    // The other cluster's keyring has a valid key for client.admin, just not this one's.
    let cfg = ConfigBuilder::new("client.admin")
        .file(mon.conf())
        .unwrap()
        .set("keyring", other.keyring().to_str().unwrap())
        .unwrap()
        .build()
        .unwrap();
    let c = MonClient::new(&cfg, EntityName { ty: EntityType::Client, num: -1 }, None, TIMEOUT).unwrap();
    let e = c.get_version("osdmap").unwrap_err();
    assert!(matches!(e, MonError::AuthDenied { .. }), "{e:?}");
    assert!(e.to_string().contains("denied authentication as client.admin"), "{e}");
    // The CLI says the same and exits non-zero.
    let out = msgr_bin(&[
        "mon",
        "-c",
        mon.conf().to_str().unwrap(),
        "--keyring",
        other.keyring().to_str().unwrap(),
        "get-version",
        "osdmap",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("denied authentication"));
}

#[test]
fn missing_keyring_for_cephx_is_a_clear_error() {
    if !have_ceph("missing_keyring_for_cephx_is_a_clear_error") {
        return;
    }
    let mon = Mon::start("cephx", "crc");
    let cfg = ConfigBuilder::new("client.admin")
        .file(mon.conf())
        .unwrap()
        .set("keyring", "/nonexistent/keyring")
        .unwrap()
        .build()
        .unwrap();
    let e = MonClient::new(&cfg, EntityName { ty: EntityType::Client, num: -1 }, None, TIMEOUT).err().unwrap();
    assert!(e.to_string().contains("/nonexistent/keyring"), "{e}");
}
