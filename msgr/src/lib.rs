//! msgr core: a messenger modelled on Ceph's async messenger, speaking msgr2.1.
//!
//! Layers, bottom to top (see the repository README for the whole picture):
//! - [`stack`]: the byte-stream socket contract every network stack implements, the
//!   worker threads ([`stack::worker`]) and an in-memory stack for tests ([`stack::mem`]);
//! - [`event`]: EventCenter (file, timer and external events) over an [`event::EventDriver`];
//! - [`proto`]: msgr2.1, sans-IO — frames, crc, handshake, session state machine;
//! - [`message`]: messages and a few typed Ceph messages;
//! - [`messenger`]: Messenger, Connection, Dispatcher, DispatchQueue, policies;
//! - [`config`]: Ceph-style configuration (`ceph.conf`, environment, command line).
#![deny(missing_docs)]

pub mod admin;
pub mod config;
pub mod event;
pub mod message;
pub mod messenger;
pub mod proto;
pub mod stack;
pub(crate) mod sync;
