//! `msgr bench`: messenger throughput and round-trip latency, side by side with the raw
//! transport. This module holds what the runs produce: round-trip statistics and the
//! rows of the report.

pub mod control;
pub mod progress;
pub mod raw;
pub mod run;
pub mod stats;
