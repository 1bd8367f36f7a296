//! Our client session against a hostile server: a monitor (cephx) or an OSD (cephx
//! authorizer from a made-up ticket), crc or secure, lossy or lossless, bytes handed
//! over in chunks three ways. The server follows the input as a script (see
//! `msgr_fuzz::hostile_server`): valid framing around arbitrary AUTH_BAD_METHOD,
//! AUTH_REPLY_MORE, AUTH_DONE (cephx tickets, sealed by the harness from the input),
//! signatures, idents and messages, or raw bytes. Every run must end in progress or a
//! typed error for this session, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = msgr_fuzz::hostile_server::run(data);
});
