//! Protocol frames: the bytes a relay or client reads from a QUIC stream.
//!
//! The input is split into chunks (size from the first byte) and fed to a
//! [`FrameDecoder`] capped at 64 KiB, as the network layer does; every complete
//! payload is decoded as each message type. The whole input is also decoded
//! directly as a payload. Any message that decodes must survive an encode/decode
//! round trip unchanged (and still pass validation).
#![no_main]

use kring_protocol::wire::{
    DEFAULT_MAX_FRAME, FRAME_HEADER, FedRequest, FedResponse, FrameDecoder, Push, Request,
    Response, Validate, WireError, decode_payload, encode_frame,
};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The frame cap of this harness (smaller than the relay default to keep runs fast).
const MAX_FRAME: usize = 64 * 1024;

/// Decodes `payload` as `T`; on success re-encodes it and checks that it decodes to
/// the same value.
fn check<T>(payload: &[u8])
where
    T: DeserializeOwned + Serialize + Validate + PartialEq + std::fmt::Debug,
{
    let Ok(msg) = decode_payload::<T>(payload) else {
        return;
    };
    let frame = match encode_frame(&msg, DEFAULT_MAX_FRAME) {
        Ok(frame) => frame,
        // Canonicalisation (e.g. `TLP:GREEN` → `NL:ONGERUBRICEERD;TLP=GREEN`) may grow
        // a message; only a size refusal is acceptable here.
        Err(WireError::TooLarge { .. }) => return,
        Err(e) => panic!("a decoded message failed to re-encode: {e}; message {msg:?}"),
    };
    let again = decode_payload::<T>(&frame[FRAME_HEADER..])
        .unwrap_or_else(|e| panic!("re-encoded message does not decode: {e}; message {msg:?}"));
    assert_eq!(again, msg, "message changed in an encode/decode round trip");
}

fn check_all(payload: &[u8]) {
    check::<Request>(payload);
    check::<Response>(payload);
    check::<Push>(payload);
    check::<FedRequest>(payload);
    check::<FedResponse>(payload);
}

fuzz_target!(|data: &[u8]| {
    check_all(data);

    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first).max(1);
    let mut decoder = FrameDecoder::new(MAX_FRAME);
    for piece in stream.chunks(chunk) {
        if decoder.feed(piece).is_err() {
            return;
        }
        loop {
            match decoder.next_payload() {
                Ok(Some(payload)) => {
                    assert!(payload.len() <= MAX_FRAME, "payload above the frame cap");
                    check_all(&payload);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = decoder.finish();
});
