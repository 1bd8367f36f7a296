//! The sans-IO msgr2.1 protocol core: wire encodings and frames.
//!
//! Nothing here performs I/O: callers feed received bytes in and take bytes to send out.

pub mod addr;
pub mod banner;
pub mod crc;
pub mod encoding;
pub mod entity;
mod events;
pub mod frame;
pub mod frames;
pub mod header;
pub mod rope;
pub mod rxpool;
pub mod secure;
// The real crate adds the session state machine and authentication here:
pub mod auth;
pub mod authorizer;
pub mod cephx;
pub mod endpoint;
pub mod reconnect;
pub mod service_auth;
pub mod session;

pub use addr::{AddrParseError, AddrType, EntityAddr, EntityAddrVec};
pub use banner::{Banner, BannerError, BANNER_PREFIX, FEATURE_COMPRESSION, FEATURE_REVISION_1};
pub use crc::ceph_crc32c;
pub use encoding::{DecodeError, Decoder};
pub use entity::{AuthName, EntityName, EntityType};
pub use frame::{
    encode_frame, encode_frame_to_vec, Frame, FrameDecoder, FrameError, FrameLimits, FrameWriter, Tag, CONTROL_ALIGN,
    EPILOGUE_LEN, MAX_SEGMENTS, MAX_SEGMENT_LEN, MESSAGE_ALIGNS, PREAMBLE_LEN, ZERO_COPY_MIN,
};
pub use frames::{Control, ControlFrame, UTime};
pub use header::{message_frame, parse_message_frame, MsgHeader2, MSG_FLAG_COMPLETE_NOCRC};
pub use rope::Rope;
