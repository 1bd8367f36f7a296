//! The msgr facade: maps `ms_type` to a network stack compiled into this build.
//!
//! Core (`msgr`) knows no stack; each `msgr-stack-*` crate implements the stack traits
//! and is compiled in by a cargo feature (`posix`, on by default; `rdma`; `dpdk`).
//! Asking for a stack that was not built is a [`FacadeError::NotBuilt`] naming the
//! feature to enable.
//!
//! ```no_run
//! use msgr::config::Config;
//! use msgr::proto::{EntityName, EntityType};
//!
//! let cfg = Config::default(); // ms_type = async+posix
//! let m = msgr_cli::messenger(&cfg, EntityName { ty: EntityType::Client, num: -1 }).unwrap();
//! # drop(m);
//! ```

pub mod bench;
pub mod cli;
pub mod monc;

use std::sync::Arc;

use msgr::config::{Config, MsType};
use msgr::messenger::{stack_for as get_or_start, Stack as NetworkStack};
use msgr::messenger::{Messenger, MsgrError};
use msgr::proto::EntityName;

/// Why a stack could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FacadeError {
    /// The stack exists but this binary was built without it.
    #[error("ms_type = {ms_type} is not built into this binary: rebuild with `cargo build --features {feature}`")]
    NotBuilt {
        /// The requested `ms_type`.
        ms_type: &'static str,
        /// The cargo feature that compiles it in.
        feature: &'static str,
    },
    /// The stack failed to start (device, EAL, permissions…).
    #[error("cannot start network stack {ms_type}: {source}")]
    Start {
        /// The requested `ms_type`.
        ms_type: &'static str,
        /// The stack's own error.
        source: std::io::Error,
    },
    /// The messenger could not be created.
    #[error(transparent)]
    Messenger(#[from] MsgrError),
}

/// The cargo feature that builds the stack for `t`.
pub fn feature_for(t: MsType) -> &'static str {
    match t {
        MsType::Posix => "posix",
        MsType::Rdma => "rdma",
        MsType::Dpdk => "dpdk",
    }
}

/// True if this binary contains the stack for `t`.
pub fn is_built(t: MsType) -> bool {
    match t {
        MsType::Posix => cfg!(feature = "posix"),
        MsType::Rdma => cfg!(feature = "rdma"),
        MsType::Dpdk => cfg!(feature = "dpdk"),
    }
}

/// The process's running stack for the configured `ms_type`, started on first use
/// with `ms_async_op_threads` workers (one stack per process and type, as in Ceph).
pub fn stack_for(cfg: &Config) -> Result<Arc<NetworkStack>, FacadeError> {
    let t = cfg.ms_type();
    let name = t.as_str();
    let threads = cfg.ms_async_op_threads();
    let start =
        |r: std::io::Result<Arc<NetworkStack>>| r.map_err(|source| FacadeError::Start { ms_type: name, source });
    match t {
        #[cfg(feature = "posix")]
        MsType::Posix => start(get_or_start(name, threads, || Ok(Arc::new(msgr_stack_posix::PosixStack::new())))),
        #[cfg(feature = "rdma")]
        MsType::Rdma => start(get_or_start(name, threads, || msgr_stack_rdma::backend(cfg))),
        #[cfg(feature = "dpdk")]
        MsType::Dpdk => start(get_or_start(name, threads, || msgr_stack_dpdk::backend(cfg))),
        #[allow(unreachable_patterns)]
        _ => {
            let _ = (threads, &start);
            Err(FacadeError::NotBuilt { ms_type: name, feature: feature_for(t) })
        }
    }
}

/// A messenger for `name` on the configured stack.
pub fn messenger(cfg: &Config, name: EntityName) -> Result<Messenger, FacadeError> {
    let stack = stack_for(cfg)?;
    Ok(Messenger::new(stack, name, cfg)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use msgr::config::ConfigBuilder;

    #[test]
    fn unbuilt_stack_names_its_feature() {
        for (t, feat) in [(MsType::Rdma, "rdma"), (MsType::Dpdk, "dpdk")] {
            if is_built(t) {
                continue;
            }
            let cfg = ConfigBuilder::new("client.admin").set("ms_type", t.as_str()).unwrap().build().unwrap();
            let e = stack_for(&cfg).expect_err("must fail");
            assert!(matches!(e, FacadeError::NotBuilt { feature, .. } if feature == feat));
            assert!(e.to_string().contains(&format!("--features {feat}")), "{e}");
        }
    }

    #[cfg(feature = "posix")]
    #[test]
    fn posix_stack_is_a_process_singleton() {
        let cfg = Config::default();
        let a = stack_for(&cfg).unwrap();
        let b = stack_for(&cfg).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.name(), "async+posix");
        assert_eq!(a.workers().len(), 3);
    }
}
