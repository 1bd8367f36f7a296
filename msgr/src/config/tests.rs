use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const CONF: &str = "/etc/ceph/ceph.conf";

fn from_file(entity: &str, text: &str) -> Result<Config, ConfigError> {
    ConfigBuilder::new(entity).file_contents(CONF, text)?.build()
}

fn err_text(r: Result<impl fmt::Debug, ConfigError>) -> String {
    match r {
        Ok(v) => format!("unexpected success: {v:?}"),
        Err(e) => e.to_string(),
    }
}

const LAYERED: &str = "\
[osd.3]
ms_async_op_threads = 5
[global]
ms_async_op_threads = 1
ms_tcp_listen_backlog = 100
keyring = /global
[osd]
ms_async_op_threads = 4
ms_tcp_listen_backlog = 200
[client]
ms_async_op_threads = 2
";

#[test]
fn defaults_match_ceph() {
    let c = Config::default();
    assert_eq!(c.entity_name(), "client.admin");
    assert_eq!(c.ms_type(), MsType::Posix);
    assert_eq!(c.ms_async_op_threads(), 3);
    assert_eq!(c.ms_bind_port_range(), 6800..=7568);
    assert!(c.ms_tcp_nodelay());
    assert_eq!(c.ms_tcp_rcvbuf(), 0);
    assert_eq!(c.ms_tcp_listen_backlog(), 512);
    assert_eq!(c.ms_dispatch_throttle_bytes(), 104_857_600);
    assert_eq!(c.ms_initial_backoff(), Duration::from_millis(200));
    assert_eq!(c.ms_max_backoff(), Duration::from_secs(15));
    assert_eq!(c.ms_max_frame_size(), 256 << 20);
    assert_eq!(c.ms_connection_ready_timeout(), Duration::from_secs(10));
    assert_eq!(c.ms_connection_idle_timeout(), Duration::from_secs(900));
    assert_eq!(c.ms_inject_socket_failures(), 0);
    assert!(c.ms_inject_delay_type().is_empty());
    assert_eq!(c.ms_inject_delay_max(), Duration::from_secs(1));
    assert_eq!(c.ms_inject_delay_probability(), 0.0);
    assert_eq!(c.keyring(), "");
    assert_eq!(c.mon_host(), "");
}

#[test]
fn every_table_option_has_a_default_setting() {
    let c = Config::default();
    for def in OPTIONS {
        assert_eq!(c.source_of(def.name), Some(&Source::Default), "{}", def.name);
    }
}

#[test]
fn empty_builder_equals_default() -> TestResult {
    let built = ConfigBuilder::new(DEFAULT_ENTITY).build()?;
    assert_eq!(built.dump(), Config::default().dump());
    Ok(())
}

#[test]
fn id_section_beats_type_beats_global() -> TestResult {
    let c = from_file("osd.3", LAYERED)?;
    assert_eq!(c.ms_async_op_threads(), 5);
    assert_eq!(c.ms_tcp_listen_backlog(), 200);
    assert_eq!(c.keyring(), "/global");
    Ok(())
}

#[test]
fn id_section_of_another_entity_is_ignored() -> TestResult {
    let c = from_file("osd.4", LAYERED)?;
    assert_eq!(c.ms_async_op_threads(), 4);
    Ok(())
}

#[test]
fn other_type_sections_are_ignored() -> TestResult {
    let c = from_file("mon.a", LAYERED)?;
    assert_eq!(c.ms_async_op_threads(), 1);
    assert_eq!(c.ms_tcp_listen_backlog(), 100);
    Ok(())
}

#[test]
fn name_without_dot_uses_global_then_type() -> TestResult {
    let text = "[client]\nms_async_op_threads = 2\n[global]\nms_async_op_threads = 1\n\
                [client.admin]\nms_async_op_threads = 5\n";
    let c = from_file("client", text)?;
    assert_eq!(c.ms_async_op_threads(), 2);
    Ok(())
}

#[test]
fn later_line_in_section_wins() -> TestResult {
    let text = "[global]\nms_type = async+rdma\n[osd]\n[global]\nms type = async+dpdk\n";
    let c = from_file("client.admin", text)?;
    assert_eq!(c.ms_type(), MsType::Dpdk);
    assert_eq!(c.source_of("ms_type"), Some(&Source::File { path: CONF.into(), line: 5 }));
    Ok(())
}

#[test]
fn bad_value_in_unrelated_section_is_not_checked() -> TestResult {
    let c = from_file("client.admin", "[osd]\nms_async_op_threads = 99\n")?;
    assert_eq!(c.ms_async_op_threads(), 3);
    Ok(())
}

#[test]
fn name_normalisation_across_sources() -> TestResult {
    let c = ConfigBuilder::new("client.admin")
        .file_contents(CONF, "[global]\nMs Tcp-Listen  backlog = 7\n")?
        .env_from([("MSGR_ARGS", "--MS-TYPE async+rdma")])?
        .set("ms async op threads", "2")?
        .build()?;
    assert_eq!(c.ms_tcp_listen_backlog(), 7);
    assert_eq!(c.ms_type(), MsType::Rdma);
    assert_eq!(c.ms_async_op_threads(), 2);
    Ok(())
}

#[test]
fn env_overrides_file() -> TestResult {
    let c = ConfigBuilder::new("osd.3")
        .file_contents(CONF, LAYERED)?
        .env_from([("CEPH_ARGS", "--ms_async_op_threads 2")])?
        .build()?;
    assert_eq!(c.ms_async_op_threads(), 2);
    assert_eq!(c.source_of("ms_async_op_threads"), Some(&Source::Env { var: "CEPH_ARGS".into() }));
    Ok(())
}

#[test]
fn msgr_args_overrides_ceph_args_whatever_the_order() -> TestResult {
    let vars = [("MSGR_ARGS", "--ms-type=async+dpdk"), ("CEPH_ARGS", "--ms_type async+rdma --ms_async_op_threads 4")];
    let c = ConfigBuilder::new("client.admin").env_from(vars)?.build()?;
    assert_eq!(c.ms_type(), MsType::Dpdk);
    assert_eq!(c.ms_async_op_threads(), 4);
    Ok(())
}

#[test]
fn other_env_vars_are_ignored() -> TestResult {
    let vars = [("PATH", "garbage words"), ("CEPH_ARGS_X", "stray")];
    let c = ConfigBuilder::new("client.admin").env_from(vars)?.build()?;
    assert_eq!(c.dump(), Config::default().dump());
    Ok(())
}

#[test]
fn env_tokens_all_forms() -> TestResult {
    let vars = [("MSGR_ARGS", "--ms_type async+rdma --ms-async-op-threads=2 -o fsid=abc -o ms_tcp_rcvbuf=64K")];
    let c = ConfigBuilder::new("client.admin").env_from(vars)?.build()?;
    assert_eq!(c.ms_type(), MsType::Rdma);
    assert_eq!(c.ms_async_op_threads(), 2);
    assert_eq!(c.get_raw("fsid"), Some("abc"));
    assert_eq!(c.ms_tcp_rcvbuf(), 65536);
    Ok(())
}

#[test]
fn env_bare_word_names_variable() {
    let r = ConfigBuilder::new("client.admin").env_from([("CEPH_ARGS", "--id admin oops")]);
    assert!(err_text(r).starts_with("CEPH_ARGS: bad argument 'oops'"));
}

#[test]
fn env_bad_value_names_variable() {
    let r = ConfigBuilder::new("client.admin").env_from([("MSGR_ARGS", "--ms_async_op_threads 0")]);
    assert_eq!(err_text(r), "MSGR_ARGS: option 'ms_async_op_threads' = '0': out of range (1..=5)");
}

#[test]
fn env_unknown_ms_key_is_kept_raw() -> TestResult {
    let c = ConfigBuilder::new("client.admin").env_from([("MSGR_ARGS", "--ms_future_thing 1")])?.build()?;
    assert_eq!(c.get_raw("ms_future_thing"), Some("1"));
    Ok(())
}

#[test]
fn command_line_overrides_env_and_file() -> TestResult {
    let c = ConfigBuilder::new("osd.3")
        .file_contents(CONF, LAYERED)?
        .env_from([("MSGR_ARGS", "--ms_async_op_threads 2")])?
        .set("ms_async_op_threads", "1")?
        .build()?;
    assert_eq!(c.ms_async_op_threads(), 1);
    assert_eq!(c.source_of("ms_async_op_threads"), Some(&Source::CommandLine));
    Ok(())
}

#[test]
fn precedence_ignores_call_order() -> TestResult {
    let c = ConfigBuilder::new("osd.3")
        .set("ms_type", "async+dpdk")?
        .env_from([("MSGR_ARGS", "--ms_type async+rdma --ms_max_backoff 30")])?
        .file_contents(CONF, "[global]\nms_type = async\nms_max_backoff = 1\n")?
        .build()?;
    assert_eq!(c.ms_type(), MsType::Dpdk);
    assert_eq!(c.ms_max_backoff(), Duration::from_secs(30));
    Ok(())
}

#[test]
fn later_command_line_setting_wins() -> TestResult {
    let c = ConfigBuilder::new("client.admin").set("ms_type", "async+rdma")?.set("ms-type", "async+dpdk")?.build()?;
    assert_eq!(c.ms_type(), MsType::Dpdk);
    Ok(())
}

#[test]
fn out_of_range_in_file_names_file_and_line() {
    let text = "[global]\n".to_owned() + &"; filler\n".repeat(10) + "ms_async_op_threads = 9\n";
    assert_eq!(
        err_text(from_file("client.admin", &text)),
        "/etc/ceph/ceph.conf:12: option 'ms_async_op_threads' = '9': out of range (1..=5)"
    );
}

#[test]
fn unknown_ms_type_in_file_names_file_and_line() {
    let r =
        ConfigBuilder::new("client.admin").file_contents("/tmp/x.conf", "[global]\nfsid = 1\nms_type = async+foo\n");
    assert_eq!(
        err_text(r),
        "/tmp/x.conf:3: option 'ms_type' = 'async+foo': \
         unknown ms_type (expected async+posix, async+rdma or async+dpdk)"
    );
}

#[test]
fn bad_value_is_reported_even_if_overridden_later() {
    // The command line would override it, but the file already failed.
    let r = ConfigBuilder::new("client.admin")
        .set("ms_tcp_nodelay", "true")
        .and_then(|b| b.file_contents(CONF, "[global]\nms_tcp_nodelay = maybe\n"));
    assert_eq!(
        err_text(r),
        "/etc/ceph/ceph.conf:2: option 'ms_tcp_nodelay' = 'maybe': \
         not a boolean (expected true/false, yes/no, on/off or 1/0)"
    );
}

#[test]
fn overridden_type_section_value_is_still_checked() {
    let text = "[osd]\nms_max_backoff = soon\n[osd.3]\nms_max_backoff = 1\n";
    let r = from_file("osd.3", text);
    assert!(err_text(r).starts_with("/etc/ceph/ceph.conf:2: option 'ms_max_backoff'"));
}

#[test]
fn command_line_bad_value_is_reported() {
    let r = ConfigBuilder::new("client.admin").set("ms_max_frame_size", "1K");
    assert_eq!(err_text(r), "command line: option 'ms_max_frame_size' = '1K': below the minimum (4096)");
}

#[test]
fn every_kind_through_the_builder() -> TestResult {
    let text = "\
[global]
ms_tcp_nodelay = off
ms_async_op_threads = 5
ms_dispatch_throttle_bytes = 1G
ms_max_frame_size = 4KiB
ms_initial_backoff = 250ms
ms_connection_ready_timeout = 1500us
mon_host = \"[v2:10.0.0.1:3300] 10.0.0.2\"
ms_type = async
";
    let c = from_file("client.admin", text)?;
    assert!(!c.get_bool("ms_tcp_nodelay")?);
    assert_eq!(c.get_u64("ms_async_op_threads")?, 5);
    assert_eq!(c.get_size("ms_dispatch_throttle_bytes")?, 1 << 30);
    assert_eq!(c.ms_max_frame_size(), 4096);
    assert_eq!(c.get_duration("ms_initial_backoff")?, Duration::from_millis(250));
    assert_eq!(c.ms_connection_ready_timeout(), Duration::from_micros(1500));
    assert_eq!(c.get_str("mon_host")?, "[v2:10.0.0.1:3300] 10.0.0.2");
    assert_eq!(c.ms_type(), MsType::Posix);
    Ok(())
}

#[test]
fn bad_values_of_each_kind_are_refused() {
    let cases = [
        ("ms_tcp_nodelay", "2"),
        ("ms_async_op_threads", "three"),
        ("ms_async_op_threads", "-1"),
        ("ms_tcp_rcvbuf", "1.5M"),
        ("ms_tcp_rcvbuf", "99999999999T"),
        ("ms_initial_backoff", "-0.2"),
        ("ms_max_backoff", "1min"),
        ("ms_type", "async+foo"),
        ("ms_bind_port_min", "0"),
        ("ms_bind_port_max", "65536"),
        ("ms_tcp_listen_backlog", "0"),
        ("ms_inject_delay_probability", "1.5"),
        ("ms_inject_delay_probability", "-0.1"),
        ("ms_inject_delay_max", "-1"),
        ("ms_inject_delay_type", "osd disk"),
    ];
    for (key, value) in cases {
        let r = ConfigBuilder::new("client.admin").set(key, value);
        assert!(matches!(r, Err(ConfigError::InvalidValue { ref name, .. }) if name == key), "{key} = {value}");
    }
}

#[test]
fn inject_delay_options_through_the_builder() -> TestResult {
    let text = "\
[global]
ms inject delay type = osd, client
ms_inject_delay_max = 0.05
ms_inject_delay_probability = 0.5
";
    let c = from_file("osd.1", text)?;
    assert_eq!(c.ms_inject_delay_type(), [crate::proto::EntityType::Osd, crate::proto::EntityType::Client]);
    assert_eq!(c.ms_inject_delay_max(), Duration::from_millis(50));
    assert_eq!(c.ms_inject_delay_probability(), 0.5);
    Ok(())
}

#[test]
fn bad_inject_delay_values_name_the_option() {
    let r = ConfigBuilder::new("client.admin").set("ms_inject_delay_probability", "2");
    assert_eq!(
        err_text(r),
        "command line: option 'ms_inject_delay_probability' = '2': \
         not a probability (expected a number from 0 to 1, e.g. 0.5)"
    );
    let r = from_file("client.admin", "[global]\nms_inject_delay_type = osd disk\n");
    assert_eq!(
        err_text(r),
        "/etc/ceph/ceph.conf:2: option 'ms_inject_delay_type' = 'osd disk': \
         unknown entity type 'disk' (expected mon, mds, osd, client, mgr or auth)"
    );
}

#[test]
fn port_min_above_max_names_both_options() {
    let r = ConfigBuilder::new("client.admin")
        .file_contents(CONF, "[global]\nms_bind_port_min = 7000\n")
        .and_then(|b| b.set("ms_bind_port_max", "6900"))
        .and_then(ConfigBuilder::build);
    assert_eq!(
        err_text(r),
        "ms_bind_port_min = 7000 (/etc/ceph/ceph.conf:2) is greater than \
         ms_bind_port_max = 6900 (command line)"
    );
}

#[test]
fn port_min_equal_max_is_allowed() -> TestResult {
    let c =
        ConfigBuilder::new("client.admin").set("ms_bind_port_min", "7000")?.set("ms_bind_port_max", "7000")?.build()?;
    assert_eq!(c.ms_bind_port_range(), 7000..=7000);
    Ok(())
}

#[test]
fn unknown_ms_key_on_command_line_is_an_error() {
    let r = ConfigBuilder::new("client.admin").set("ms-tcp-nodelya", "true");
    assert!(matches!(
        r,
        Err(ConfigError::UnknownOption { ref name, at: Source::CommandLine })
            if name == "ms_tcp_nodelya"
    ));
}

#[test]
fn unknown_other_key_on_command_line_is_kept_raw() -> TestResult {
    let c = ConfigBuilder::new("client.admin").set("debug-ms", "1/5")?.build()?;
    assert_eq!(c.get_raw("debug_ms"), Some("1/5"));
    assert_eq!(c.source_of("debug ms"), Some(&Source::CommandLine));
    Ok(())
}

#[test]
fn unknown_keys_in_file_are_kept_raw() -> TestResult {
    let text = "[global]\nfsid = 2f1e-99\nms future option = x\n";
    let c = from_file("client.admin", text)?;
    assert_eq!(c.get_raw("fsid"), Some("2f1e-99"));
    assert_eq!(c.get_raw("ms_future_option"), Some("x"));
    Ok(())
}

#[test]
fn get_raw_keeps_supplied_text_and_dump_shows_canonical() -> TestResult {
    let c = from_file("client.admin", "[global]\nms_tcp_rcvbuf = 64K\nfsid = f\n")?;
    assert_eq!(c.get_raw("ms_tcp_rcvbuf"), Some("64K"));
    let dump = c.dump();
    let row = |name: &str| dump.iter().find(|(n, _, _)| n == name).cloned();
    assert_eq!(
        row("ms_tcp_rcvbuf"),
        Some(("ms_tcp_rcvbuf".into(), "65536".into(), Source::File { path: CONF.into(), line: 2 }))
    );
    assert_eq!(row("ms_initial_backoff").map(|r| (r.1, r.2)), Some(("0.2".into(), Source::Default)));
    assert_eq!(row("fsid").map(|r| r.1), Some("f".into()));
    Ok(())
}

#[test]
fn dump_is_sorted_and_complete() {
    let dump = Config::default().dump();
    let names: Vec<_> = dump.iter().map(|(n, _, _)| n.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    assert_eq!(names.len(), OPTIONS.len());
}

#[test]
fn unset_unknown_key_has_no_raw_or_source() {
    let c = Config::default();
    assert_eq!(c.get_raw("fsid"), None);
    assert_eq!(c.source_of("fsid"), None);
}

#[test]
fn getter_for_unknown_name_is_an_error() -> TestResult {
    let c = from_file("client.admin", "[global]\nfsid = x\n")?;
    assert!(matches!(
        c.get_str("fsid"),
        Err(ConfigError::NoSuchOption { ref name }) if name == "fsid"
    ));
    assert!(matches!(c.get_duration("nope"), Err(ConfigError::NoSuchOption { .. })));
    Ok(())
}

#[test]
fn getter_of_wrong_kind_is_an_error() {
    let c = Config::default();
    assert_eq!(
        err_text(c.get_size("ms_async_op_threads")),
        "option 'ms_async_op_threads' has kind unsigned integer, not size"
    );
    assert!(matches!(c.get_bool("ms_type"), Err(ConfigError::WrongKind { .. })));
}

#[test]
fn getters_normalise_names() -> TestResult {
    let c = Config::default();
    assert_eq!(c.get_duration("MS Max-Backoff")?, Duration::from_secs(15));
    assert_eq!(c.get_raw("ms-type"), Some("async+posix"));
    Ok(())
}

#[test]
fn file_reads_from_disk() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ceph.conf");
    std::fs::write(&path, "[global]\nms type = async+rdma\n")?;
    let c = ConfigBuilder::new("client.admin").file(&path)?.build()?;
    assert_eq!(c.ms_type(), MsType::Rdma);
    assert_eq!(c.source_of("ms_type"), Some(&Source::File { path, line: 2 }));
    Ok(())
}

#[test]
fn missing_file_is_an_error() {
    let r = ConfigBuilder::new("client.admin").file("/nonexistent/ceph.conf");
    assert!(matches!(r, Err(ConfigError::Io { .. })));
}

#[test]
fn file_if_exists_skips_missing_file() -> TestResult {
    let c = ConfigBuilder::new("client.admin")
        .set("ms_type", "async+rdma")?
        .file_if_exists("/nonexistent/ceph.conf")?
        .build()?;
    assert_eq!(c.ms_type(), MsType::Rdma);
    Ok(())
}

#[test]
fn file_if_exists_still_reports_bad_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ceph.conf");
    std::fs::write(&path, "garbage\n")?;
    let r = ConfigBuilder::new("client.admin").file_if_exists(&path);
    assert!(matches!(r, Err(ConfigError::MalformedLine { .. })));
    Ok(())
}

#[test]
fn oversize_file_is_refused_by_builder() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("big.conf");
    let mut text = b"[global]\n".to_vec();
    text.resize(MAX_FILE_BYTES + 1, b'\n');
    std::fs::write(&path, text)?;
    let r = ConfigBuilder::new("client.admin").file(&path);
    assert!(matches!(r, Err(ConfigError::FileTooLarge { .. })));
    Ok(())
}

#[test]
fn oversize_line_is_refused_by_builder() {
    let text = format!("[global]\nmon_host = {}\n", "1".repeat(MAX_LINE_BYTES));
    let r = from_file("client.admin", &text);
    assert!(matches!(r, Err(ConfigError::LineTooLong { at: Source::File { line: 2, .. }, .. })));
}

#[test]
fn key_before_section_is_refused_by_builder() {
    let r = from_file("client.admin", "ms_type = async\n");
    assert_eq!(err_text(r), "/etc/ceph/ceph.conf:1: 'ms_type' appears before any [section] header");
}

#[test]
fn garbage_line_is_refused_by_builder() {
    let r = from_file("client.admin", "[global]\nms_type async\n");
    assert!(err_text(r).starts_with("/etc/ceph/ceph.conf:2: expected '[section]'"));
}

#[test]
fn comments_quotes_and_continuation_through_builder() -> TestResult {
    let text = "\
# header
[global]
; full-line comment
mon host = \"10.0.0.1 ; 10.0.0.2\"  # trailing
keyring = /etc/ceph/\\
    ceph.client.admin.keyring
";
    let c = from_file("client.admin", text)?;
    assert_eq!(c.mon_host(), "10.0.0.1 ; 10.0.0.2");
    assert_eq!(c.keyring(), "/etc/ceph/ceph.client.admin.keyring");
    Ok(())
}

#[test]
fn normalize_key_rules() {
    assert_eq!(normalize_key("ms type"), "ms_type");
    assert_eq!(normalize_key("ms-type"), "ms_type");
    assert_eq!(normalize_key("MS_TYPE"), "ms_type");
    assert_eq!(normalize_key("  ms \t - type  "), "ms_type");
    assert_eq!(normalize_key("a__b"), "a_b");
    assert_eq!(normalize_key(""), "");
}

#[test]
fn source_display_forms() {
    let file = Source::File { path: "/etc/ceph/ceph.conf".into(), line: 12 };
    assert_eq!(file.to_string(), "/etc/ceph/ceph.conf:12");
    let env = Source::Env { var: "MSGR_ARGS".into() };
    assert_eq!(env.to_string(), "MSGR_ARGS");
    assert_eq!(Source::CommandLine.to_string(), "command line");
    assert_eq!(Source::Default.to_string(), "default");
}
