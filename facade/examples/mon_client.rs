//! Talks to a Ceph monitor with `msgr::monc::MonClient`: reads ceph.conf (`mon_host`,
//! the auth settings and the keyring, as librados would), prints the osdmap version and
//! the monmap (fsid and monitors), and exits 0; on any failure it prints why and exits 1.
//!
//! ```sh
//! bash ci/mon.sh start /tmp/mon --auth cephx      # a throw-away ceph-mon on loopback
//! cargo run -p msgr --example mon_client -- -c /tmp/mon/ceph.conf
//! #   osdmap version 1 (oldest 1)
//! #   fsid 0b5c5c9e-...
//! #   monmap epoch 1
//! #   mon.a rank 0 [v2:127.0.0.1:3300/0,v1:127.0.0.1:6789/0]
//! ```
//!
//! Options: `-c FILE` (default `$CEPH_CONF`, else /etc/ceph/ceph.conf), `--name TYPE.ID`
//! (who to authenticate as, default client.admin), `--mon-host ADDRS` (instead of the
//! file's `mon_host`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use msgr::config::{Config, ConfigBuilder};
use msgr::monc::MonClient;
use msgr::proto::{AuthName, EntityName, EntityType};

const USAGE: &str = "usage: mon_client [-c FILE] [--name TYPE.ID] [--mon-host ADDRS]";

/// Each request gives up after this long: a monitor that is up answers in milliseconds.
const TIMEOUT: Duration = Duration::from_secs(10);

struct Args {
    conf: Option<PathBuf>,
    name: AuthName,
    mon_host: Option<String>,
}

fn parse_args() -> Result<Option<Args>, String> {
    let admin = AuthName { ty: EntityType::Client, id: "admin".into() };
    let mut args = Args { conf: None, name: admin, mon_host: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "-c" | "--conf" => args.conf = Some(PathBuf::from(value()?)),
            "--name" | "-n" => {
                let v = value()?;
                args.name = v.parse().map_err(|e| format!("--name {v}: {e}"))?;
            }
            "--mon-host" => args.mon_host = Some(value()?),
            _ => return Err(format!("unknown argument '{flag}'")),
        }
    }
    Ok(Some(args))
}

/// The config librados would read: the file (its `[global]`, `[client]` and
/// `[client.admin]` sections, chosen by the name), then `CEPH_ARGS`.
fn config(args: &Args) -> Result<Config, msgr::config::ConfigError> {
    let b = ConfigBuilder::new(&args.name.to_string());
    let b = match args.conf.clone().or_else(|| std::env::var_os("CEPH_CONF").map(PathBuf::from)) {
        Some(path) => b.file(path)?,
        None => b.file_if_exists("/etc/ceph/ceph.conf")?,
    };
    b.env()?.build()
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = config(args)?;
    // The messenger's own name: a client's number is assigned by the monitor, so it has
    // none yet; `client.admin` is the name it authenticates as (from the config).
    let me = EntityName::new(args.name.ty, args.name.id.parse().unwrap_or(EntityName::NEW));
    let mc = MonClient::new(&cfg, me, args.mon_host.as_deref(), TIMEOUT)?;

    let (newest, oldest) = mc.get_version("osdmap")?;
    println!("osdmap version {newest} (oldest {oldest})");
    let map = mc.monmap()?;
    println!("fsid {}", map.fsid);
    println!("monmap epoch {}", map.epoch);
    for (rank, mon) in map.mons.iter().enumerate() {
        println!("mon.{} rank {rank} {}", mon.name, mon.addrs);
    }
    // Closes the session and joins the messenger's threads (dropping it would too).
    mc.shutdown();
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("mon_client: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mon_client: {e}");
            ExitCode::FAILURE
        }
    }
}
