//! Our server's cephx authorizer check against hostile clients: AUTH_REQUEST and
//! AUTH_REQUEST_MORE payloads spelled by the input, with the ticket blob and the
//! `CephXAuthorize` sealed by the harness (see `msgr_fuzz::authorizer_server`). Any
//! input ends in a refusal, an error or (spelled exactly right) success, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = msgr_fuzz::authorizer_server::run(data);
});
