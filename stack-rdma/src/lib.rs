//! RDMA stack (ibverbs RC queue pairs) — `ms_type = async+rdma`.
//!
//! Not implemented yet: the crate exists so the workspace, the facade and the `rdma`
//! cargo feature have their final shape. Starting it reports that plainly instead of
//! pretending to work.

use std::io;
use std::sync::Arc;

use msgr::config::Config;
use msgr::stack::StackBackend;

/// Creates the RDMA backend for `cfg`.
pub fn backend(_cfg: &Config) -> io::Result<Arc<dyn StackBackend>> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "the RDMA stack is not implemented yet in this version of msgr"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn start_reports_unsupported() {
        let e = super::backend(&msgr::config::Config::default()).err().expect("not implemented");
        assert_eq!(e.kind(), std::io::ErrorKind::Unsupported);
    }
}
