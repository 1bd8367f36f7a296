//! `msgr bench`: messenger throughput and round-trip latency, side by side with the raw
//! transport. `msgr bench server` is the measured side (an echoing messenger, a raw TCP
//! echo and the control request that reports its CPU time); `msgr bench client` is the
//! measuring side (on the callback API, the tokio API or both: `--api`); `msgr bench`
//! alone runs both on loopback, the server as a child process.

pub mod control;
pub mod counters;
pub mod progress;
pub mod raw;
pub mod reply;
pub mod rounds;
pub mod run;
pub mod server;
pub mod stack_echo;
pub mod stack_raw;
pub mod stats;
#[cfg(feature = "tokio")]
pub mod tokio_client;
