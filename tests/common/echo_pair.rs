//! The two messengers of the steady-state counting tests (`alloc_steady`,
//! `locks_steady`): a server and a client, on kernel TCP or on an in-memory stack of
//! their own, two workers each, lossy (stateless server, lossy client) or lossless.

use std::sync::Arc;

use msgr::config::ConfigBuilder;
use msgr::messenger::{Messenger, Policy, Stack};
use msgr::proto::{EntityName, EntityType};
use msgr::stack::mem::{MemNetwork, MemStack};

/// Which stack the pair runs on.
#[derive(Clone, Copy, Debug)]
pub enum Net {
    Posix,
    Mem,
}

/// The pair; `stack` is the in-memory stack (kept alive until the test drops it).
pub struct EchoPair {
    pub server: Messenger,
    pub client: Messenger,
    pub stack: Option<Arc<Stack>>,
}

/// A server and a client messenger on `net`, their default policies set.
pub fn echo_pair(net: Net, lossless: bool) -> EchoPair {
    let cfg = |entity: &str| {
        ConfigBuilder::new(entity).set("ms_async_op_threads", "2").and_then(|b| b.build()).expect("test configuration")
    };
    let server_name = EntityName::new(EntityType::Osd, 0);
    let client_name = EntityName::new(EntityType::Client, -1);
    let (server, client, stack) = match net {
        Net::Posix => (
            msgr::new_messenger(&cfg("osd.0"), server_name).expect("server messenger"),
            msgr::new_messenger(&cfg("client.admin"), client_name).expect("client messenger"),
            None,
        ),
        Net::Mem => {
            let stack = Stack::start(Arc::new(MemStack::new(MemNetwork::new())), 2).expect("start the mem stack");
            let s = Messenger::new(Arc::clone(&stack), server_name, &cfg("osd.0")).expect("server messenger");
            let c = Messenger::new(Arc::clone(&stack), client_name, &cfg("client.admin")).expect("client messenger");
            (s, c, Some(stack))
        }
    };
    if lossless {
        server.set_default_policy(Policy::lossless_peer(0));
        client.set_default_policy(Policy::lossless_peer(0));
    } else {
        server.set_default_policy(Policy::stateless_server(0));
        client.set_default_policy(Policy::lossy_client(0));
    }
    EchoPair { server, client, stack }
}

/// How long a run may take to echo all its messages.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

impl EchoPair {
    /// Binds the server, connects the client and sends the first `depth` requests of
    /// type `msg_type` with a `size`-byte payload; the dispatchers keep them going.
    pub fn start(&self, msg_type: u16, depth: u64, size: usize) -> msgr::messenger::ConnectionRef {
        let addr = self.server.bind("127.0.0.1:0".parse().expect("an address")).expect("bind");
        let con =
            self.client.connect_to(EntityType::Osd, &msgr::proto::EntityAddrVec::single(addr)).expect("connect_to");
        let payload = bytes::Bytes::from(vec![0x5a; size]);
        for i in 0..depth {
            let m = msgr::message::Message::new(msg_type, bytes::Bytes::from_static(b"echo"))
                .with_tid(i + 1)
                .with_data(payload.clone());
            con.send_message(m).expect("queue a request");
        }
        con
    }

    /// Sleeps until `replies()` reaches `total` (only sleeps and reads it: the calling
    /// thread allocates nothing and takes no lock of the library's meanwhile).
    pub fn wait_for(&self, total: u64, replies: impl Fn() -> u64) {
        let deadline = std::time::Instant::now() + PATIENCE;
        while replies() < total {
            assert!(std::time::Instant::now() < deadline, "{} of {total} replies", replies());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Shuts both messengers down and waits for them.
    pub fn close(self, con: msgr::messenger::ConnectionRef) {
        drop(con);
        self.client.shutdown();
        self.server.shutdown();
        self.client.wait();
        self.server.wait();
        drop(self.stack);
    }
}
