//! The `msgr` command-line tool's library: its commands ([`cli`]) and the benchmark
//! ([`bench`](mod@bench)). A daemon depends on the `msgr` crate (`facade/`), not on this one.

pub mod bench;
pub mod cli;
