//! msgr core: a messenger modelled on Ceph's async messenger, speaking msgr2.1.
//!
//! A daemon depends on the `msgr` crate (`facade/`), which re-exports these modules and
//! adds the network stacks; this crate holds everything that does not depend on a stack.
//!
//! Layers, bottom to top (see the repository README for the whole picture):
//! - [`stack`]: the byte-stream socket contract every network stack implements, and an
//!   in-memory stack for tests ([`stack::mem`]);
//! - [`event`]: EventCenter (file, timer and external events) over an [`event::EventDriver`];
//! - [`proto`]: msgr2.1, sans-IO — frames, crc, handshake, session state machine;
//! - [`message`]: messages and a few typed Ceph messages;
//! - [`messenger`]: Messenger, Connection, Dispatcher, policies, and the running stack a
//!   messenger is given ([`messenger::Stack`], its worker threads);
//! - [`config`]: Ceph-style configuration (`ceph.conf`, environment, command line).
//!
//! [`stack`] and [`event`] are also the whole contract a network stack crate is written
//! against (`msgr-stack-posix`, `-rdma`, `-dpdk` implement nothing else); the worker
//! threads that drive a stack belong to the core and are not public: a user holds a
//! running stack as a [`messenger::Stack`].
#![deny(missing_docs)]

pub mod admin;
pub mod config;
pub mod event;
pub mod message;
pub mod messenger;
pub mod proto;
pub mod stack;
pub(crate) mod sync;
