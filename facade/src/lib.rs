//! msgr: a messenger modelled on Ceph's async messenger, speaking msgr2.1 byte for byte,
//! for Rust daemons. This is the crate a daemon depends on: the core (re-exported here
//! module by module), the network stacks compiled in by cargo feature — `posix`
//! (kernel TCP, on by default), `rdma` (ibverbs RC queue pairs, Ceph's `async+rdma`
//! wire) and `dpdk` (userspace TCP on a poll-mode driver) — chosen at run time by the
//! `ms_type` option, and a monitor client ([`monc`]). With the `tokio` feature,
//! `msgr::tokio` adds an async API on top: a stream of incoming messages,
//! request/reply by transaction id and async `bind`/`shutdown`.
//!
//! Asking for a stack this build does not contain is a [`FacadeError::NotBuilt`] naming
//! the feature to enable. Each `ms_type` has one stack per process (as in Ceph), sized
//! by `ms_async_op_threads` when the first messenger starts it; a later messenger that
//! asks for another size gets [`FacadeError::StackConflict`] instead of silently
//! sharing a stack of another size.
//!
//! The smallest echo server:
//!
//! ```no_run
//! use std::sync::Arc;
//! use msgr::config::ConfigBuilder;
//! use msgr::message::Message;
//! use msgr::messenger::{ConnectionRef, Dispatcher, Policy};
//! use msgr::proto::{EntityName, EntityType};
//!
//! /// Sends every message back on the connection it came from.
//! struct Echo;
//! impl Dispatcher for Echo {
//!     fn ms_dispatch(&self, con: &ConnectionRef, m: &Message) -> bool {
//!         let _ = con.send_message(m.clone());
//!         true
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // ms_type, ms_async_op_threads, ... from ceph.conf, CEPH_ARGS and overrides.
//! let cfg = ConfigBuilder::new("osd.0").set("ms_type", "async+posix")?.build()?;
//! let m = msgr::new_messenger(&cfg, EntityName { ty: EntityType::Osd, num: 0 })?;
//! m.set_default_policy(Policy::stateless_server(0));
//! m.add_dispatcher_tail(Arc::new(Echo));
//! let addr = m.bind("127.0.0.1:6800".parse()?)?;
//! println!("listening on {addr}");
//! m.wait(); // until m.shutdown() from another thread
//! # Ok(())
//! # }
//! ```
//!
//! A client and a server in one process (run by `cargo test`): both messengers share the
//! process's `async+posix` stack, started by the first and stopped after the last.
//!
//! ```
//! use std::sync::{mpsc, Arc};
//! use std::time::Duration;
//! use msgr::config::ConfigBuilder;
//! use msgr::message::{MPing, Message, TypedMessage};
//! use msgr::messenger::{ConnectionRef, Dispatcher, Policy};
//! use msgr::proto::{EntityAddrVec, EntityName, EntityType};
//!
//! struct Echo;
//! impl Dispatcher for Echo {
//!     fn ms_dispatch(&self, con: &ConnectionRef, m: &Message) -> bool {
//!         let _ = con.send_message(m.clone());
//!         true
//!     }
//! }
//!
//! /// Hands every message it gets to the code below.
//! struct Inbox(mpsc::Sender<Message>);
//! impl Dispatcher for Inbox {
//!     fn ms_dispatch(&self, _con: &ConnectionRef, m: &Message) -> bool {
//!         let _ = self.0.send(m.clone());
//!         true
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = |name| ConfigBuilder::new(name).set("ms_async_op_threads", "1")?.build();
//! let server = msgr::new_messenger(&cfg("osd.0")?, EntityName::new(EntityType::Osd, 0))?;
//! server.set_default_policy(Policy::stateless_server(0));
//! server.add_dispatcher_tail(Arc::new(Echo));
//! let addr = server.bind("127.0.0.1:0".parse()?)?;
//!
//! let client = msgr::new_messenger(&cfg("client.admin")?, EntityName::new(EntityType::Client, -1))?;
//! client.set_default_policy(Policy::lossy_client(0));
//! let (tx, rx) = mpsc::channel();
//! client.add_dispatcher_tail(Arc::new(Inbox(tx)));
//! let con = client.connect_to(EntityType::Osd, &EntityAddrVec::single(addr))?;
//! con.send_message(MPing::new("ping".into()).encode())?;
//! let reply = rx.recv_timeout(Duration::from_secs(30))?;
//! assert_eq!(MPing::decode(&reply)?.payload, "ping");
//!
//! // Another worker count than the running stack's is refused, not silently shared.
//! let two = ConfigBuilder::new("client.admin").set("ms_async_op_threads", "2")?.build()?;
//! let e = msgr::new_messenger(&two, EntityName::new(EntityType::Client, -1)).err().expect("refused");
//! assert!(matches!(e, msgr::FacadeError::StackConflict { running: 1, asked: 2, .. }));
//!
//! for m in [&client, &server] {
//!     m.shutdown();
//!     m.wait();
//! }
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod monc;
pub mod service;
#[cfg(feature = "tokio")]
pub mod tokio;

/// Lock and wake-up counts (the `lock-count` feature): see `msgr_core::sync`.
#[cfg(feature = "lock-count")]
pub use msgr_core::sync;
pub use msgr_core::{admin, config, event, message, messenger, proto, stack};

// The Rust blocks of the README ("Embedding msgr") are doc tests of this crate, so the
// smallest program it shows keeps compiling against the API it describes.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

use std::sync::Arc;

use msgr_core::config::{Config, MsType};
// With no stack feature there is nothing to start: every ms_type is NotBuilt.
#[cfg_attr(not(any(feature = "posix", feature = "rdma", feature = "dpdk")), allow(unused_imports))]
use msgr_core::messenger::{stack_for as get_or_start, Stack as NetworkStack};
use msgr_core::messenger::{Messenger, MsgrError};
use msgr_core::proto::EntityName;

/// Why a stack or a messenger could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// The process's stack for this `ms_type` already runs with another number of
    /// workers than this configuration asks for.
    #[error(
        "the process's {ms_type} stack runs {running} workers but this messenger's configuration asks for \
         {asked} (ms_async_op_threads): every messenger of a process shares its stack, so configure them alike"
    )]
    StackConflict {
        /// The `ms_type`.
        ms_type: &'static str,
        /// Workers of the running stack.
        running: usize,
        /// Workers this configuration asks for.
        asked: usize,
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

/// True if this build contains the stack for `t`.
pub fn is_built(t: MsType) -> bool {
    match t {
        MsType::Posix => cfg!(feature = "posix"),
        MsType::Rdma => cfg!(feature = "rdma"),
        MsType::Dpdk => cfg!(feature = "dpdk"),
    }
}

/// The process's running stack for the configured `ms_type`, started on first use
/// with `ms_async_op_threads` workers (one stack per process and type, as in Ceph).
///
/// # Errors
///
/// The stack is not built in, cannot start, or runs with another worker count.
pub fn stack_for(cfg: &Config) -> Result<Arc<NetworkStack>, FacadeError> {
    let t = cfg.ms_type();
    let name = t.as_str();
    let threads = cfg.ms_async_op_threads();
    let start =
        |r: std::io::Result<Arc<NetworkStack>>| r.map_err(|source| FacadeError::Start { ms_type: name, source });
    let stack: Arc<NetworkStack> = match t {
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
    }?;
    // (A stack always has at least one worker.)
    let (running, asked) = (stack.num_workers(), threads.max(1));
    if running != asked {
        return Err(FacadeError::StackConflict { ms_type: name, running, asked });
    }
    Ok(stack)
}

/// A messenger named `name` on the stack `cfg`'s `ms_type` selects (started if it is not
/// running yet).
///
/// # Errors
///
/// As [`stack_for`], or the messenger's own configuration errors.
pub fn new_messenger(cfg: &Config, name: EntityName) -> Result<Messenger, FacadeError> {
    let stack = stack_for(cfg)?;
    Ok(Messenger::new(stack, name, cfg)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use msgr_core::config::ConfigBuilder;

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
    fn posix_stack_is_a_process_singleton_and_its_size_is_not_silently_shared() {
        let cfg = Config::default();
        let a = stack_for(&cfg).unwrap();
        let b = stack_for(&cfg).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.name(), "async+posix");
        assert_eq!(a.num_workers(), 3);
        let two = ConfigBuilder::new("client.admin").set("ms_async_op_threads", "2").unwrap().build().unwrap();
        let e = stack_for(&two).expect_err("a second size");
        assert!(matches!(e, FacadeError::StackConflict { running: 3, asked: 2, .. }), "{e}");
        drop((a, b));
        // Once the last user is gone, the next one sizes it anew.
        assert_eq!(stack_for(&two).unwrap().num_workers(), 2);
    }
}
