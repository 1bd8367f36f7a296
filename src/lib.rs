//! The `msgr` command-line tool's library: its commands ([`cli`]) and the benchmark
//! ([`bench`](mod@bench)). A daemon depends on the `msgr` crate (`facade/`), not on this one.
//!
//! Each subcommand is a function here, so tests and other tools can run it in process.
//! `msgr serve` and `msgr ping -c ceph.conf --count 3 --verify` against it, on loopback:
//!
//! ```
//! use std::sync::atomic::AtomicBool;
//! use std::time::Duration;
//!
//! use msgr::proto::EntityType;
//! use msgr_cli::cli::{self, CommonArgs, EchoServer, PingOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let conf = dir.path().join("ceph.conf");
//! std::fs::write(&conf, "[global]\nms_async_op_threads = 1\n")?;
//! let common = CommonArgs { conf: Some(conf), ..CommonArgs::default() };
//!
//! let server = EchoServer::start(&common, "127.0.0.1:0".parse()?, false, Vec::new())?;
//! let opts = PingOptions {
//!     count: 3,
//!     size: 64,
//!     timeout: Duration::from_secs(30),
//!     verify: true,
//!     lossless: false,
//!     window: 1,
//!     until: None,
//!     progress: None,
//!     reply: None,
//! };
//! let report = cli::ping(&common, &server.addr, EntityType::Osd, &opts)?;
//! assert_eq!((report.count, report.errors, report.verify.corrupted), (3, 0, 0));
//! // Serves no longer than it takes to notice `run_for`, then shuts down.
//! server.run("msgr serve", Some(Duration::ZERO), &AtomicBool::new(false));
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod bench;
pub mod cli;
