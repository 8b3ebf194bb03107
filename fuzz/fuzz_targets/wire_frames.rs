//! Protocol frames: the bytes a relay or client reads from a QUIC stream.
//!
//! The input is split into chunks (size from the first byte) and fed to a
//! [`FrameDecoder`] capped at 64 KiB, as the network layer does; every complete
//! payload is decoded as each message type. The whole input is also decoded
//! directly as a payload. Any message that decodes must survive an encode/decode
//! round trip unchanged (and still pass validation).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kring_fuzz_bodies::wire_frames(data));
