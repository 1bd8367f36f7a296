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
//!
//! A server and a client messenger exchanging one ping, configured from `ceph.conf`
//! text, over the in-memory stack (the same messenger code runs over TCP, RDMA or DPDK
//! with another stack):
//!
//! ```
//! use std::sync::{mpsc, Arc};
//! use std::time::Duration;
//!
//! use msgr_core::config::ConfigBuilder;
//! use msgr_core::message::{MPing, Message, TypedMessage, MSG_PING};
//! use msgr_core::messenger::{ConnectionRef, Dispatcher, Messenger, Policy, Stack};
//! use msgr_core::proto::{EntityAddrVec, EntityName, EntityType};
//! use msgr_core::stack::mem::{MemNetwork, MemStack};
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
//! let conf = "[global]\nms_async_op_threads = 1\n[osd]\nms_dispatch_throttle_bytes = 16M\n";
//! let osd_cfg = ConfigBuilder::new("osd.0").file_contents("ceph.conf", conf)?.build()?;
//! let client_cfg = ConfigBuilder::new("client.admin").file_contents("ceph.conf", conf)?.build()?;
//! assert_eq!(osd_cfg.ms_dispatch_throttle_bytes(), 16 << 20);
//! assert_eq!(client_cfg.ms_dispatch_throttle_bytes(), 100 << 20); // the default
//!
//! // One stack for both messengers, as a process has one per `ms_type`.
//! let stack = Stack::start(Arc::new(MemStack::new(MemNetwork::new())), osd_cfg.ms_async_op_threads())?;
//!
//! let server = Messenger::new(Arc::clone(&stack), EntityName::new(EntityType::Osd, 0), &osd_cfg)?;
//! server.set_default_policy(Policy::stateless_server(0));
//! server.add_dispatcher_tail(Arc::new(Echo));
//! let addr = server.bind("127.0.0.1:0".parse()?)?;
//!
//! let client = Messenger::new(Arc::clone(&stack), EntityName::new(EntityType::Client, -1), &client_cfg)?;
//! client.set_default_policy(Policy::lossy_client(0));
//! let (tx, rx) = mpsc::channel();
//! client.add_dispatcher_tail(Arc::new(Inbox(tx)));
//!
//! let con = client.connect_to(EntityType::Osd, &EntityAddrVec::single(addr))?;
//! con.send_message(MPing::new("hello".into()).encode())?;
//! let reply = rx.recv_timeout(Duration::from_secs(30))?;
//! assert_eq!(reply.msg_type, MSG_PING);
//! assert_eq!(MPing::decode(&reply)?.payload, "hello");
//!
//! for m in [&client, &server] {
//!     m.shutdown();
//!     m.wait();
//! }
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod admin;
pub mod config;
pub mod event;
pub mod message;
pub mod messenger;
pub mod proto;
pub mod stack;
// Public only with `lock-count`, for its counters; otherwise crate-internal helpers.
#[cfg(feature = "lock-count")]
pub mod sync;
#[cfg(not(feature = "lock-count"))]
pub(crate) mod sync;
