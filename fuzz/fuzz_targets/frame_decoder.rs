//! The msgr2 frame decoder on arbitrary bytes: every input ends in frames, "need more"
//! or a typed error, never a panic or an allocation beyond the limits. The first byte
//! picks where the input is split, so incremental decoding is exercised too.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use msgr_core::proto::frame::{FrameDecoder, FrameLimits};

fuzz_target!(|data: &[u8]| {
    let mut dec = FrameDecoder::new(FrameLimits { max_frame: 1 << 20, max_control: 64 << 10 });
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut buf = BytesMut::new();
    for part in [&data[..split], &data[split..]] {
        buf.extend_from_slice(part);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(_frame)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
