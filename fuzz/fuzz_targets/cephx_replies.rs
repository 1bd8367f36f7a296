//! The client's decoders of server replies, called directly: cephx principal and auth
//! session replies, service ticket lists, MAuthReply / MCommandReply / monitor messages,
//! the authorizer's challenge and reply, the monitor handshake's challenge and AUTH_DONE,
//! keys and ticket blobs. Payloads are raw or sealed by the harness from the input (see
//! `msgr_fuzz::replies`). Any input ends in a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = msgr_fuzz::replies::run(data);
});
