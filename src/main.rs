//! `msgr` — command-line front end: `serve`, `ping`, `hold`, `mon`, `config`, `bench`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use msgr::proto::EntityType;
use msgr_cli::cli::{self, CliError, CommonArgs};

#[derive(Parser, Debug)]
#[command(name = "msgr", version, about = "Ceph msgr2.1 messenger over posix, RDMA and DPDK stacks")]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Bind and answer every MPing with an echo of its payload.
    Serve {
        /// Address to listen on; port 0 picks a free port in ms_bind_port_min..max.
        #[arg(long, value_name = "ADDR")]
        bind: SocketAddr,
        /// Exit after this many seconds (default: run until killed).
        #[arg(long, value_name = "SECS")]
        duration: Option<f64>,
        /// Client sessions: lossy (dropped on a fault, Ceph's stateless server) or
        /// lossless (kept across faults and resumed, Ceph's stateful server).
        #[arg(long, default_value = "lossy")]
        policy: String,
    },
    /// Send MPing round trips to a server and print count, errors and round-trip times.
    Ping {
        /// Server address: IP:PORT or v2:IP:PORT/NONCE.
        #[arg(long, value_name = "ADDR")]
        connect: String,
        /// Number of round trips.
        #[arg(long, default_value_t = 10)]
        count: u64,
        /// Payload bytes per ping (data segment).
        #[arg(long, default_value_t = 0)]
        size: usize,
        /// Entity type of the server (mon, osd, mds, mgr, client).
        #[arg(long, default_value = "osd")]
        peer_type: String,
        /// Give up when no reply arrives for this many seconds.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
        /// Connection policy: lossy or lossless.
        #[arg(long, default_value = "lossy")]
        policy: String,
        /// Number and checksum every ping; report lost, duplicated, reordered or corrupted
        /// replies and exit non-zero if there is any.
        #[arg(long)]
        verify: bool,
        /// Pings in flight at once.
        #[arg(long, default_value_t = 1)]
        window: usize,
    },
    /// Open many client sessions to a server, one MPing round trip on each, and hold them
    /// open until stdin closes (a load generator for scale tests).
    Hold {
        /// Server address: IP:PORT or v2:IP:PORT/NONCE.
        #[arg(long, value_name = "ADDR")]
        connect: String,
        /// Number of sessions (each on a messenger of its own).
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Most sessions dialled and not yet answered at once.
        #[arg(long, default_value_t = 256)]
        in_flight: usize,
        /// Entity type of the server (mon, osd, mds, mgr, client).
        #[arg(long, default_value = "osd")]
        peer_type: String,
        /// Give up when no session makes progress for this many seconds.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// Talk to a Ceph monitor (msgr2; auth from the config).
    Mon {
        #[command(flatten)]
        mon: MonArgs,
        #[command(subcommand)]
        req: MonReq,
    },
    /// Send a command to a daemon, as `ceph tell`: the monitor says where it is (`osd
    /// find`) and issues a cephx ticket for it; the daemon's answer is printed (output on
    /// stdout, status on stderr) and its return code is the exit status.
    /// E.g. `msgr tell osd.0 '{"prefix":"version"}'`.
    Tell {
        /// The daemon: osd.N.
        target: String,
        /// The command as JSON.
        json: String,
        #[command(flatten)]
        mon: MonArgs,
    },
    /// Print the effective configuration and where each value came from.
    Config,
    /// Send a command to a running daemon's admin socket and print its JSON answer,
    /// e.g. `msgr daemon perf dump --socket /run/msgr/osd.0.asok` (as `ceph daemon`).
    Daemon {
        /// The admin socket (default: `admin_socket` from the config).
        #[arg(long, value_name = "PATH")]
        socket: Option<std::path::PathBuf>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
        /// The command: `perf dump`, `perf schema`, `help`, or a JSON command.
        #[arg(required = true, num_args = 1..)]
        command: Vec<String>,
    },
    /// Throughput and round-trip latency per message size, with the raw TCP baseline
    /// in the same run.
    ///
    /// msgr is driven through its callback API, its tokio API or both (--api), one row
    /// per API and size.
    ///
    /// With no subcommand, a `msgr bench server` child is started on loopback (with
    /// this command's -c, --ms-type and -o) and measured from this process; `bench
    /// server` and `bench client` split the two across processes or machines.
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        /// Same as `msgr bench client --connect ADDR` (kept for scripts written before
        /// `bench client` existed).
        #[arg(long, value_name = "ADDR")]
        connect: Option<String>,
        // Boxed: the largest variant otherwise, by far.
        #[command(flatten)]
        run: Box<BenchRunArgs>,
        #[command(subcommand)]
        role: Option<BenchRole>,
    },
}

#[derive(Subcommand, Debug)]
enum BenchRole {
    /// The measured side: echoes msgr and raw TCP messages, reports its CPU time.
    ///
    /// A messenger echoing every MPing, a raw TCP echo on the same IP (--raw-port), and
    /// the answer to `msgr bench client`'s control request (this process's CPU time and
    /// the raw echo's port). Runs until killed, or for --duration.
    Server {
        /// Address to listen on; port 0 picks a free port in ms_bind_port_min..max.
        #[arg(long, value_name = "ADDR")]
        bind: SocketAddr,
        /// Client sessions: lossy (dropped on a fault) or lossless (kept and resumed).
        #[arg(long, default_value = "lossy")]
        policy: String,
        /// TCP port of the raw echo on the --bind IP (0: any free port).
        #[arg(long, value_name = "PORT", default_value_t = 0)]
        raw_port: u16,
        /// Exit after this many seconds (default: run until killed).
        #[arg(long, value_name = "SECS")]
        duration: Option<f64>,
        /// Also exit when standard input closes (so a server started by a script or a
        /// parent process goes when its parent does).
        #[arg(long)]
        exit_on_stdin_eof: bool,
    },
    /// The measuring side, against a `msgr bench server` here or on another machine.
    ///
    /// The server's CPU time and raw echo port come from a control request to it. A
    /// peer that does not answer one (`msgr serve`, a Ceph OSD) is still measured, with
    /// its CPU unknown and no raw baseline.
    Client {
        /// The `msgr bench server`'s address (IP:PORT or v2:IP:PORT/NONCE).
        #[arg(long, value_name = "ADDR")]
        connect: String,
        #[command(flatten)]
        run: Box<BenchRunArgs>,
    },
}

/// What a measuring run takes: `msgr bench` and `msgr bench client` alike.
#[derive(Args, Debug)]
struct BenchRunArgs {
    /// Entity type of the server.
    #[arg(long, default_value = "osd")]
    peer_type: String,
    /// Jobs, each with its own messenger (and --conns-per-job connections).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Connections per job, all on the job's messenger; the raw baseline opens as many.
    /// A messenger keeps one connection per peer address, so they dial 127.0.0.1, .2, …:
    /// loopback only, with the server bound to 0.0.0.0 (bare `msgr bench` binds its
    /// child there), and --policy lossy.
    #[arg(long, default_value_t = 1, value_name = "K")]
    conns_per_job: usize,
    /// Messages in flight per connection.
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Payload sizes, e.g. 64,4k,64k,1m.
    #[arg(long, default_value = "64,4k,64k,1m")]
    size: String,
    /// Measured seconds per size.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Messages per connection per size instead of a duration.
    #[arg(long)]
    count: Option<u64>,
    /// The server answers each message with a reply of this many payload bytes (e.g. 0,
    /// 16, 4k) instead of echoing it, msgr and raw rows alike; --verify then checks each
    /// reply's length and fill and, for msgr, that it answers the request it should.
    /// MB/s stays the requests' payload; the JSON has both directions' bytes.
    #[arg(long, value_name = "BYTES")]
    reply_size: Option<String>,
    /// Unmeasured seconds per size first.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Measure each size N times, each round msgr then raw (warm-up included), and print
    /// the medians over the rounds: msgs/s, msgr/raw paired round by round, with their
    /// range. On a shared or noisy machine one round's ratio can swing by 10-15 %.
    #[arg(long, default_value_t = 1, value_name = "N")]
    rounds: usize,
    /// Connection policy: lossy or lossless.
    #[arg(long, default_value = "lossy")]
    policy: String,
    /// Number and checksum every message and check each reply answers its own (without
    /// it every reply is still compared with what it must be, msgr and raw rows alike).
    #[arg(long)]
    verify: bool,
    /// Baseline measured in the same run: raw (the server's plain TCP echo) or none.
    #[arg(long, default_value = "raw")]
    baseline: String,
    /// Where the raw baseline's client runs: kernel (TCP sockets), stack (the
    /// messenger stack's own sockets, on its workers) or auto (stack for async+dpdk,
    /// whose traffic a kernel socket would not follow; kernel otherwise).
    #[arg(long, default_value = "auto", value_name = "WHERE")]
    raw_client: String,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
    /// msgr API the client drives: callback (dispatcher callbacks, `msgr` rows), tokio
    /// (msgr::tokio::AsyncMessenger's request/reply on a tokio runtime, `msgr-tokio`
    /// rows) or both (one row of each per size, in the same table and run).
    #[arg(long, default_value = "callback", value_name = "API")]
    api: String,
}

/// How `mon` and `tell` reach the monitors.
#[derive(clap::Args, Debug)]
struct MonArgs {
    /// Monitor address(es), as Ceph's mon_host (default: mon_host from the config).
    #[arg(long, value_name = "ADDR")]
    mon_host: Option<String>,
    /// Keyring file (sets the `keyring` option).
    #[arg(long, value_name = "FILE")]
    keyring: Option<String>,
    /// Give up on a request after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

impl MonArgs {
    /// The common arguments with `--keyring` applied, and the timeout.
    fn apply(&self, common: &CommonArgs) -> Result<(CommonArgs, Duration), CliError> {
        let mut common = common.clone();
        if let Some(k) = &self.keyring {
            common.options.push(format!("keyring={k}"));
        }
        Ok((common, secs(self.timeout, "--timeout")?))
    }
}

#[derive(Subcommand, Debug)]
enum MonReq {
    /// Newest and oldest epoch of a map: osdmap, monmap, mdsmap or fsmap.
    GetVersion {
        /// The map.
        map: String,
        /// Ask this many times on one session and print round-trip statistics.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
    },
    /// MPing: print the monitor's status JSON.
    Ping,
    /// Print the monmap: fsid, epoch, monitors and their addresses.
    Monmap,
    /// Run a monitor command given as JSON, e.g. '{"prefix":"mon dump","format":"json"}'.
    Command {
        /// The command.
        json: String,
    },
    /// KEEPALIVE2 round trip.
    Keepalive,
    /// Ask for a map's version every --interval on one held session, and say each
    /// session reset and each failed request as it happens (e.g. a monitor restarted
    /// under the session). Exit status 0 if the last request succeeded (with
    /// --until-recovered: as soon as one succeeds after a reset).
    Watch {
        /// The map, as for get-version.
        map: String,
        /// Seconds between requests.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 60.0)]
        duration: f64,
        /// Stop at the first successful request after a session reset.
        #[arg(long)]
        until_recovered: bool,
    },
}

/// Prints a line to stdout; a closed pipe (e.g. `| head`) ends output quietly
/// instead of panicking.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

fn secs(v: f64, what: &str) -> Result<Duration, CliError> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| CliError::Usage(format!("{what} must be a non-negative number of seconds")))
}

/// `--policy`: lossless or lossy.
fn lossless(policy: &str) -> Result<bool, CliError> {
    match policy {
        "lossy" => Ok(false),
        "lossless" => Ok(true),
        other => Err(CliError::Usage(format!("--policy must be lossy or lossless, not '{other}'"))),
    }
}

fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.cmd {
        Cmd::Serve { bind, duration, policy } => {
            let run_for = duration.map(|d| secs(d, "--duration")).transpose()?;
            cli::serve(&cli.common, bind, run_for, lossless(&policy)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ping { connect, count, size, peer_type, timeout, policy, verify, window } => {
            let target = cli::parse_addr(&connect)?;
            let pt: EntityType =
                peer_type.parse().map_err(|_| CliError::Usage(format!("unknown --peer-type '{peer_type}'")))?;
            if window == 0 {
                return Err(CliError::Usage("--window must be at least 1".into()));
            }
            let lossless = lossless(&policy)?;
            let opts = cli::PingOptions {
                count,
                size,
                timeout: secs(timeout, "--timeout")?,
                verify,
                lossless,
                window,
                until: None,
                progress: None,
                reply: None,
            };
            let r = cli::ping(&cli.common, &target, pt, &opts)?;
            let (min, avg, p99, max) = r.summary();
            println!(
                "ping {target}: count {} errors {} size {size} round-trip us min {min:.1} avg {avg:.1} p99 {p99:.1} max {max:.1}",
                r.count, r.errors
            );
            if verify {
                let v = r.verify;
                println!(
                    "verify: {} replies checked, lost {}, duplicated {}, reordered {}, corrupted {}",
                    v.checked,
                    count.saturating_sub(v.checked + v.reordered + v.corrupted),
                    v.duplicated,
                    v.reordered,
                    v.corrupted
                );
            }
            if r.resets + r.remote_resets > 0 || r.lost_to_reset > 0 {
                println!(
                    "sessions: {} resets, {} remote resets (server restarted), {} pings in flight lost with them and sent again",
                    r.resets, r.remote_resets, r.lost_to_reset
                );
            }
            // Only under injection, so the usual output stays one line per run.
            let injected = msgr::stack::inject::injected_failures();
            if injected > 0 {
                println!("injected socket failures: {injected}");
            }
            if let Some(e) = &r.first_error {
                eprintln!("msgr ping: error: {e}");
            }
            Ok(if r.errors == 0 && r.count == count { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::Bench { connect, run, role } => match role {
            Some(BenchRole::Server { bind, policy, raw_port, duration, exit_on_stdin_eof }) => {
                let o = msgr_cli::bench::server::ServerOptions {
                    bind,
                    lossless: lossless(&policy)?,
                    raw_port,
                    run_for: duration.map(|d| secs(d, "--duration")).transpose()?,
                    exit_on_stdin_eof,
                };
                msgr_cli::bench::server::serve(&cli.common, &o)?;
                Ok(ExitCode::SUCCESS)
            }
            Some(BenchRole::Client { connect, run }) => bench(&cli.common, Some(&connect), *run),
            None => bench(&cli.common, connect.as_deref(), *run),
        },
        Cmd::Hold { connect, connections, in_flight, peer_type, timeout } => {
            let target = cli::parse_addr(&connect)?;
            let pt: EntityType =
                peer_type.parse().map_err(|_| CliError::Usage(format!("unknown --peer-type '{peer_type}'")))?;
            let opts = cli::HoldOptions { connections, in_flight, timeout: secs(timeout, "--timeout")? };
            let held = cli::hold(&cli.common, &target, pt, &opts)?;
            let r = held.report.clone();
            say!(
                "msgr hold: {target}: sessions {connections} opened {} replied {} failed {}",
                r.opened,
                r.replied,
                r.failed
            );
            if let Some(e) = &r.first_error {
                eprintln!("msgr hold: error: {e}");
            }
            let ok = r.replied == connections && r.failed == 0;
            if ok {
                // Whoever started us decides when the sessions go: at the end of stdin.
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            }
            held.close();
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Cmd::Tell { target, json, mon } => {
            let (common, timeout) = mon.apply(&cli.common)?;
            tell(&common, mon.mon_host.as_deref(), timeout, &target, &json)
        }
        Cmd::Mon { mon, req } => {
            let (common, timeout) = mon.apply(&cli.common)?;
            mon_cmd(&common, mon.mon_host.as_deref(), timeout, req)
        }
        Cmd::Daemon { socket, timeout, command } => {
            let path = match socket {
                Some(p) => p,
                None => {
                    let cfg = cli.common.config("client.admin")?;
                    if cfg.admin_socket().is_empty() {
                        return Err(CliError::Usage("give --socket PATH (admin_socket is not set)".into()));
                    }
                    cfg.admin_socket().into()
                }
            };
            let out = msgr::admin::request(&path, &command.join(" "), secs(timeout, "--timeout")?)?;
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Config => {
            let cfg = cli.common.config("client.admin")?;
            for (name, value, source) in cfg.dump() {
                println!("{name} = {value}  # {source}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `msgr bench` / `msgr bench client`: measures against `connect`, or against a
/// `msgr bench server` child when there is none.
fn bench(common: &CommonArgs, connect: Option<&str>, a: BenchRunArgs) -> Result<ExitCode, CliError> {
    let sizes = msgr_cli::bench::stats::parse_sizes(&a.size).map_err(CliError::Usage)?;
    let reply_size = a
        .reply_size
        .as_deref()
        .map(msgr_cli::bench::stats::parse_size)
        .transpose()
        .map_err(|e| CliError::Usage(format!("--reply-size: {e}")))?;
    let baseline_raw = match a.baseline.as_str() {
        "raw" => true,
        "none" => false,
        other => return Err(CliError::Usage(format!("--baseline must be raw or none, not '{other}'"))),
    };
    let opts = msgr_cli::bench::run::BenchOptions {
        connect: connect.map(cli::parse_addr).transpose()?,
        peer_type: a
            .peer_type
            .parse()
            .map_err(|_| CliError::Usage(format!("unknown --peer-type '{}'", a.peer_type)))?,
        jobs: a.jobs,
        conns_per_job: a.conns_per_job,
        depth: a.depth,
        sizes,
        duration: secs(a.duration, "--duration")?,
        count: a.count,
        warmup: secs(a.warmup, "--warmup")?,
        lossless: lossless(&a.policy)?,
        verify: a.verify,
        baseline_raw,
        raw_client: msgr_cli::bench::run::RawClient::parse(&a.raw_client).ok_or_else(|| {
            CliError::Usage(format!("--raw-client must be kernel, stack or auto, not '{}'", a.raw_client))
        })?,
        json: a.json,
        api: msgr_cli::bench::run::Api::parse(&a.api)
            .ok_or_else(|| CliError::Usage(format!("--api must be callback, tokio or both, not '{}'", a.api)))?,
        reply_size,
        rounds: a.rounds,
    };
    let rows = msgr_cli::bench::run::run(common, &opts)?;
    let errors: u64 = rows.iter().map(|r| r.errors).sum();
    Ok(if errors == 0 && rows.iter().all(|r| r.msgs > 0) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `msgr tell TARGET JSON`.
fn tell(
    common: &CommonArgs,
    mon_host: Option<&str>,
    timeout: Duration,
    target: &str,
    json: &str,
) -> Result<ExitCode, CliError> {
    let cfg = common.config("client.admin")?;
    let name = common.entity("client.admin")?;
    let m = msgr::monc::MonClient::new(&cfg, name, mon_host, timeout)?;
    let reply = m.tell(target, json)?;
    Ok(print_command_result(&reply.output, &reply.rs, reply.r))
}

/// Prints a command's answer as the ceph CLI does (output on stdout, status on stderr)
/// and turns its return code into the exit status.
fn print_command_result(output: &[u8], rs: &str, r: i32) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = out.write_all(output);
    if !output.is_empty() && !output.ends_with(b"\n") {
        let _ = out.write_all(b"\n");
    }
    if !rs.is_empty() {
        eprintln!("{rs}");
    } else if r < 0 {
        // The daemon gave no text: say what the code means (-13: permission denied).
        eprintln!("error {r}: {}", std::io::Error::from_raw_os_error(-r));
    }
    if r != 0 {
        return ExitCode::from(r.unsigned_abs().min(255) as u8);
    }
    ExitCode::SUCCESS
}

fn mon_cmd(common: &CommonArgs, mon_host: Option<&str>, timeout: Duration, req: MonReq) -> Result<ExitCode, CliError> {
    let cfg = common.config("client.admin")?;
    let name = common.entity("client.admin")?;
    let m = msgr::monc::MonClient::new(&cfg, name, mon_host, timeout)?;
    match req {
        MonReq::GetVersion { map, repeat } => {
            let mut rtts = Vec::with_capacity(repeat as usize);
            let mut last = (0, 0);
            for _ in 0..repeat.max(1) {
                let t0 = std::time::Instant::now();
                last = m.get_version(&map)?;
                rtts.push(t0.elapsed().as_secs_f64() * 1e6);
            }
            say!("{map} version {} oldest {}", last.0, last.1);
            if repeat > 1 {
                // The first request also opens the session; report the rest.
                let mut v = rtts[1..].to_vec();
                v.sort_by(f64::total_cmp);
                let avg = v.iter().sum::<f64>() / v.len() as f64;
                say!(
                    "round trip us over {} requests: min {:.1} avg {avg:.1} p50 {:.1} max {:.1} (first, with handshake: {:.1})",
                    v.len(),
                    v[0],
                    v[v.len() / 2],
                    v[v.len() - 1],
                    rtts[0]
                );
            }
        }
        MonReq::Ping => say!("{}", m.ping()?),
        MonReq::Monmap => {
            let map = m.monmap()?;
            say!("fsid {}", map.fsid);
            say!("epoch {}", map.epoch);
            for (rank, mon) in map.mons.iter().enumerate() {
                say!("{rank}: {} mon.{}", mon.addrs, mon.name);
            }
        }
        MonReq::Command { json } => {
            let ack = m.command(&json)?;
            let code = print_command_result(&ack.output, &ack.rs, ack.r);
            if ack.r != 0 {
                return Ok(code);
            }
        }
        MonReq::Keepalive => {
            let stamp = m.keepalive()?;
            say!("keepalive ack {}.{:09}", stamp.sec, stamp.nsec);
        }
        MonReq::Watch { map, interval, duration, until_recovered } => {
            let ok = watch(&m, &map, secs(interval, "--interval")?, secs(duration, "--duration")?, until_recovered);
            return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `msgr mon watch`: one line per request and per session reset, stamped with the
/// seconds since the start. True if the last request succeeded (with `until_recovered`:
/// if one succeeded after a reset).
fn watch(m: &msgr::monc::MonClient, map: &str, interval: Duration, duration: Duration, until_recovered: bool) -> bool {
    let start = std::time::Instant::now();
    let stamp = || start.elapsed().as_secs_f64();
    let mut resets_seen = 0;
    loop {
        let t0 = std::time::Instant::now();
        let res = m.get_version(map);
        let rtt = t0.elapsed();
        // A reset is reported by the messenger (ms_handle_reset) whether or not a
        // request was waiting on the session.
        let resets = m.resets();
        if resets > resets_seen {
            say!("{:.1}s session reset (resets so far: {resets})", stamp());
            resets_seen = resets;
        }
        let last_ok = match res {
            Ok((newest, oldest)) => {
                say!("{:.1}s {map} version {newest} oldest {oldest} (round trip {} us)", stamp(), rtt.as_micros());
                if until_recovered && resets_seen > 0 {
                    say!("recovered after {resets_seen} session reset(s)");
                    return true;
                }
                true
            }
            Err(e) => {
                say!("{:.1}s request failed: {e}", stamp());
                false
            }
        };
        if start.elapsed() + interval > duration {
            if until_recovered {
                say!("not recovered within {duration:?} (session resets: {resets_seen})");
                return false;
            }
            return last_ok;
        }
        std::thread::sleep(interval.saturating_sub(rtt));
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("msgr: error: {e}");
            ExitCode::from(2)
        }
    }
}
