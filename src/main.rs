//! `msgr` — command-line front end: `serve`, `ping`, `config`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
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
    },
    /// Print the effective configuration and where each value came from.
    Config,
}

fn secs(v: f64, what: &str) -> Result<Duration, CliError> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| CliError::Usage(format!("{what} must be a non-negative number of seconds")))
}

fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.cmd {
        Cmd::Serve { bind, duration } => {
            let run_for = duration.map(|d| secs(d, "--duration")).transpose()?;
            cli::serve(&cli.common, bind, run_for)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ping { connect, count, size, peer_type, timeout } => {
            let target = cli::parse_addr(&connect)?;
            let pt: EntityType =
                peer_type.parse().map_err(|_| CliError::Usage(format!("unknown --peer-type '{peer_type}'")))?;
            let r = cli::ping(&cli.common, &target, pt, count, size, secs(timeout, "--timeout")?)?;
            let (min, avg, p99, max) = r.summary();
            println!(
                "ping {target}: count {} errors {} size {size} round-trip us min {min:.1} avg {avg:.1} p99 {p99:.1} max {max:.1}",
                r.count, r.errors
            );
            if let Some(e) = &r.first_error {
                eprintln!("msgr ping: error: {e}");
            }
            Ok(if r.errors == 0 && r.count == count { ExitCode::SUCCESS } else { ExitCode::FAILURE })
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
