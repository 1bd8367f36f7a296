//! DPDK stack (smoltcp on DPDK poll-mode drivers) — `ms_type = async+dpdk`.
//!
//! Not implemented yet: the crate exists so the workspace, the facade and the `dpdk`
//! cargo feature have their final shape. Starting it reports that plainly.

use std::io;
use std::sync::Arc;

use msgr::config::Config;
use msgr::stack::StackBackend;

/// Creates the backend for `cfg`.
pub fn backend(_cfg: &Config) -> io::Result<Arc<dyn StackBackend>> {
    Err(msgr::stack::not_implemented("async+dpdk"))
}
