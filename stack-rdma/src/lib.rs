//! RDMA stack (ibverbs RC queue pairs) — `ms_type = async+rdma`.
//!
//! Not implemented yet: the crate exists so the workspace, the facade and the `rdma`
//! cargo feature have their final shape. Starting it reports that plainly.

use std::io;
use std::sync::Arc;

use msgr::config::Config;
use msgr::stack::StackBackend;

/// Creates the backend for `cfg`.
pub fn backend(_cfg: &Config) -> io::Result<Arc<dyn StackBackend>> {
    Err(msgr::stack::not_implemented("async+rdma"))
}
