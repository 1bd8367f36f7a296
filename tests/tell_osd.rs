//! cephx beyond the monitor, against a real Ceph 16.2 cluster: a `ceph-mon` and a memstore
//! `ceph-osd` with cephx (`ci/mon.sh`, `ci/osd.sh`). `msgr tell osd.0` finds the OSD
//! through the monitor, gets an OSD service ticket (`CEPHX_GET_PRINCIPAL_SESSION_KEY` in
//! an `MAuth`), authenticates to the OSD with an authorizer (answering its challenge) in
//! crc and in secure mode, and prints what `ceph tell` prints. Skipped (loudly) only where
//! ceph-mon or ceph-osd is missing.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{have_ceph_osd, Mon};
use msgr::config::ConfigBuilder;
use msgr::monc::{MonClient, MonError};
use msgr::proto::{EntityName, EntityType};

const TIMEOUT: Duration = Duration::from_secs(20);

fn msgr_bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msgr")).args(args).output().expect("run msgr")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A cluster of one monitor and osd.0 with cephx, connections in `mode`.
fn cluster(mode: &str) -> Mon {
    let mon = Mon::start("cephx", mode);
    mon.start_osd(0);
    mon
}

/// `msgr tell osd.0 version` prints the JSON `ceph tell osd.0 version` prints.
fn tell_version_matches_ceph(mon: &Mon) {
    let conf = mon.conf();
    let out = msgr_bin(&["-c", conf.to_str().unwrap(), "tell", "osd.0", r#"{"prefix":"version","format":"json"}"#]);
    assert!(out.status.success(), "msgr tell failed: {}", text(&out.stderr));
    let ours: serde_json::Value = serde_json::from_slice(&out.stdout).expect("msgr tell printed JSON");
    let theirs = mon.ceph_json(&["tell", "osd.0", "version"]);
    assert_eq!(ours, theirs);
    assert_eq!(ours["release"], "pacific");
}

#[test]
fn tell_osd_version_matches_ceph_tell_crc() {
    if !have_ceph_osd("tell_osd_version_matches_ceph_tell_crc") {
        return;
    }
    let mon = cluster("crc");
    tell_version_matches_ceph(&mon);
    // A failing command: the OSD's return code and text, as the ceph CLI shows them.
    let conf = mon.conf();
    let out = msgr_bin(&["-c", conf.to_str().unwrap(), "tell", "osd.0", r#"{"prefix":"no such command"}"#]);
    assert_eq!(out.status.code(), Some(22), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no such command") || !out.stderr.is_empty());
}

#[test]
fn tell_osd_version_matches_ceph_tell_secure() {
    if !have_ceph_osd("tell_osd_version_matches_ceph_tell_secure") {
        return;
    }
    let mon = cluster("secure");
    tell_version_matches_ceph(&mon);
}

#[test]
fn the_library_holds_an_osd_ticket_and_reuses_its_connection() {
    if !have_ceph_osd("the_library_holds_an_osd_ticket_and_reuses_its_connection") {
        return;
    }
    let mon = cluster("crc");
    let cfg = ConfigBuilder::new("client.admin").file(mon.conf()).unwrap().build().unwrap();
    let c = MonClient::new(&cfg, EntityName::new(EntityType::Client, -1), None, TIMEOUT).unwrap();
    for _ in 0..3 {
        let r = c.tell("osd.0", r#"{"prefix":"version"}"#).unwrap();
        assert_eq!(r.r, 0, "{}", r.rs);
        assert!(String::from_utf8_lossy(&r.output).contains("pacific"));
    }
    let t = c.tickets();
    let osd = t.get(EntityType::Osd as u32).expect("an OSD ticket");
    assert!(osd.validity.sec > 0, "the ticket has a lifetime");
    assert_ne!(t.global_id, 0);
    // One connection to the monitor and one to the OSD, kept.
    assert_eq!(c.messenger().connection_count(), 2);
    c.shutdown();
}

#[test]
fn wrong_missing_or_unknown_is_a_clear_error_not_a_hang() {
    if !have_ceph_osd("wrong_missing_or_unknown_is_a_clear_error_not_a_hang") {
        return;
    }
    let mon = cluster("crc");
    let conf = mon.conf();
    let conf = conf.to_str().unwrap();
    let dir = mon.dir();
    // A key the cluster does not know.
    let bad = dir.join("bad.keyring");
    let made = Command::new("ceph-authtool")
        .arg("--create-keyring")
        .arg(&bad)
        .args(["--name", "client.admin", "--gen-key"])
        .output()
        .expect("ceph-authtool");
    assert!(made.status.success());
    let started = Instant::now();
    let out = msgr_bin(&["-c", conf, "tell", "--keyring", bad.to_str().unwrap(), "osd.0", r#"{"prefix":"version"}"#]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("denied authentication as client.admin"), "{}", text(&out.stderr));
    // No keyring at all.
    let out = msgr_bin(&["-c", conf, "tell", "--keyring", "/nonexistent/keyring", "osd.0", r#"{"prefix":"version"}"#]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/nonexistent/keyring"), "{}", text(&out.stderr));
    // An OSD that does not exist.
    let out = msgr_bin(&["-c", conf, "tell", "osd.7", r#"{"prefix":"version"}"#]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("osd.7 does not exist"), "{}", text(&out.stderr));
    assert!(started.elapsed() < TIMEOUT, "errors took {:?}", started.elapsed());
    // A client whose caps do not allow OSD commands gets a ticket, and the OSD's EACCES.
    let nocaps = dir.join("nocaps.keyring");
    mon.ceph(&["auth", "get-or-create", "client.nocaps", "mon", "allow r", "-o", nocaps.to_str().unwrap()]);
    let out = msgr_bin(&[
        "-c",
        conf,
        "-n",
        "client.nocaps",
        "tell",
        "--keyring",
        nocaps.to_str().unwrap(),
        "osd.0",
        r#"{"prefix":"version"}"#,
    ]);
    assert_eq!(out.status.code(), Some(13), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("ermission denied"), "{}", text(&out.stderr));
}

#[test]
fn a_secure_only_osd_refuses_a_crc_only_client_by_name() {
    if !have_ceph_osd("a_secure_only_osd_refuses_a_crc_only_client_by_name") {
        return;
    }
    let mon = cluster("secure");
    let cfg = ConfigBuilder::new("client.admin")
        .file(mon.conf())
        .unwrap()
        .set("ms_client_mode", "crc")
        .unwrap()
        .build()
        .unwrap();
    let c = MonClient::new(&cfg, EntityName::new(EntityType::Client, -1), None, TIMEOUT).unwrap();
    let e = c.tell("osd.0", r#"{"prefix":"version"}"#).unwrap_err();
    assert!(matches!(e, MonError::Daemon { .. }), "{e:?}");
    assert!(e.to_string().contains("modes [2]"), "{e}");
}

#[test]
fn service_tickets_are_renewed_and_new_connections_keep_authenticating() {
    if !have_ceph_osd("service_tickets_are_renewed_and_new_connections_keep_authenticating") {
        return;
    }
    // Service tickets (and the OSD's rotating secrets) live 4 s: the test spans several.
    const TTL: u64 = 4;
    let mon = Mon::start_with("cephx", "crc", &format!("auth_service_ticket_ttl = {TTL}"));
    mon.start_osd(0);
    let cfg = ConfigBuilder::new("client.admin").file(mon.conf()).unwrap().build().unwrap();
    let c = MonClient::new(&cfg, EntityName::new(EntityType::Client, -1), None, TIMEOUT).unwrap();
    // A second client keeps one OSD connection for the whole test.
    let kept = MonClient::new(&cfg, EntityName::new(EntityType::Client, -1), None, TIMEOUT).unwrap();
    let start = Instant::now();
    let mut secret_ids = std::collections::BTreeSet::new();
    let mut rounds = 0;
    while start.elapsed() < Duration::from_secs(4 * TTL) {
        // A fresh connection each round: it authenticates with the ticket held now.
        c.close_daemon("osd.0");
        let r = c.tell("osd.0", r#"{"prefix":"version"}"#).unwrap();
        assert_eq!(r.r, 0, "round {rounds}: {}", r.rs);
        let t = c.tickets();
        let osd = t.get(EntityType::Osd as u32).expect("an OSD ticket");
        assert!(osd.validity.sec <= TTL as u32, "validity {:?} over the ttl", osd.validity);
        secret_ids.insert(osd.ticket.secret_id);
        let r = kept.tell("osd.0", r#"{"prefix":"version"}"#).unwrap();
        assert_eq!(r.r, 0, "kept connection, round {rounds}: {}", r.rs);
        rounds += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("{rounds} rounds over {:?}; tickets sealed with secrets {secret_ids:?}", start.elapsed());
    assert!(secret_ids.len() >= 3, "tickets were not renewed across rotations: {secret_ids:?}");
    c.shutdown();
    kept.shutdown();
}
