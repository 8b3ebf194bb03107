//! Size buckets for application messages: the plaintext is framed and padded so
//! that the PrivateMessage ciphertext is exactly a bucket's size, and relays and
//! links learn the size class of a notice, not its length.
//!
//! Buckets are powers of two from [`MIN_BUCKET`] (256 bytes) up to
//! [`POWER_BUCKETS_UPTO`] (1 MiB), then multiples of [`LARGE_STEP`] (256 KiB).
//!
//! The framed plaintext is `0x00 || length (u32 BE) || payload || zeros`, exactly
//! `bucket - FRAME_SLACK` bytes long. openmls adds the content framing and the
//! sender's signature (well under [`FRAME_SLACK`] bytes) and pads the content so that
//! content and AEAD tag are a multiple of 256 bytes, which makes the ciphertext
//! exactly the bucket's size.
//!
//! Decoding is tolerant of unframed plaintexts (from senders that do not pad): a
//! plaintext that does not start with `0x00` is taken as it is (Kring's notices are
//! JSON and start with `{`). A framed plaintext must be well-formed: its length
//! within the bytes present and its padding all zeros.

use super::MlsError;

/// The smallest bucket (ciphertext bytes).
pub const MIN_BUCKET: usize = 256;
/// Buckets are powers of two up to this size, ...
pub const POWER_BUCKETS_UPTO: usize = 1 << 20;
/// ... and multiples of this above it.
pub const LARGE_STEP: usize = 256 << 10;
/// What the framed plaintext leaves of a bucket for openmls's content framing, the
/// signature and the AEAD tag (about 90 bytes with Ed25519 and AES-GCM).
const FRAME_SLACK: usize = 128;
/// The framing's marker and length.
const HEADER: usize = 5;
/// The marker byte of a framed plaintext.
const MARKER: u8 = 0x00;

/// The bucket (ciphertext size) a payload of `len` bytes is padded to.
pub fn bucket(len: usize) -> usize {
    let needed = len.saturating_add(HEADER + FRAME_SLACK);
    if needed <= POWER_BUCKETS_UPTO {
        needed.next_power_of_two().max(MIN_BUCKET)
    } else {
        needed.div_ceil(LARGE_STEP).saturating_mul(LARGE_STEP)
    }
}

/// Frames and pads `payload` to its bucket.
///
/// # Errors
/// [`MlsError::TooLarge`] if the payload's length does not fit the frame's u32.
pub(crate) fn pad(payload: &[u8]) -> Result<Vec<u8>, MlsError> {
    let len = u32::try_from(payload.len()).map_err(|_| MlsError::TooLarge {
        what: "plaintext",
        len: payload.len(),
        max: u32::MAX as usize,
    })?;
    let framed = bucket(payload.len()) - FRAME_SLACK;
    let mut out = Vec::with_capacity(framed);
    out.push(MARKER);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out.resize(framed, 0);
    Ok(out)
}

/// The payload of a decrypted plaintext: framed ones are unpadded, others taken as
/// they are.
///
/// # Errors
/// [`MlsError::Malformed`] if a framed plaintext is truncated or its padding is not
/// all zeros.
pub(crate) fn unpad(plaintext: &[u8]) -> Result<&[u8], MlsError> {
    let Some((&MARKER, rest)) = plaintext.split_first() else {
        return Ok(plaintext);
    };
    let (len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| MlsError::malformed("padded plaintext", "truncated length"))?;
    let len = usize::try_from(u32::from_be_bytes(*len))
        .map_err(|_| MlsError::malformed("padded plaintext", "length out of range"))?;
    if len > rest.len() {
        return Err(MlsError::malformed(
            "padded plaintext",
            "length beyond the bytes present",
        ));
    }
    let (payload, padding) = rest.split_at(len);
    if padding.iter().any(|&b| b != 0) {
        return Err(MlsError::malformed("padded plaintext", "non-zero padding"));
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_are_powers_of_two_then_steps() {
        assert_eq!(bucket(0), 256);
        assert_eq!(bucket(256 - HEADER - FRAME_SLACK), 256);
        assert_eq!(bucket(256 - HEADER - FRAME_SLACK + 1), 512);
        assert_eq!(bucket(1000), 2048);
        assert_eq!(bucket(POWER_BUCKETS_UPTO - HEADER - FRAME_SLACK), 1 << 20);
        assert_eq!(
            bucket(POWER_BUCKETS_UPTO - HEADER - FRAME_SLACK + 1),
            (1 << 20) + LARGE_STEP
        );
        assert_eq!(bucket(3 << 20), (3 << 20) + LARGE_STEP);
    }

    #[test]
    fn unframed_plaintexts_are_taken_as_they_are() {
        assert_eq!(unpad(b"{\"id\":1}").unwrap(), b"{\"id\":1}");
        assert_eq!(unpad(b"").unwrap(), b"");
    }

    #[test]
    fn malformed_frames_are_refused() {
        assert!(unpad(&[0, 0, 0]).is_err());
        assert!(unpad(&[0, 0, 0, 0, 9, 1, 2]).is_err());
        let mut padded = pad(b"body").unwrap();
        *padded.last_mut().unwrap() = 1;
        assert!(unpad(&padded).is_err());
        assert!(unpad(&[0, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    proptest! {
        #[test]
        fn padding_round_trips_to_the_bucket(payload in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let padded = pad(&payload).unwrap();
            prop_assert_eq!(padded.len(), bucket(payload.len()) - FRAME_SLACK);
            prop_assert_eq!(unpad(&padded).unwrap(), payload.as_slice());
        }

        #[test]
        fn unpad_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = unpad(&bytes);
        }
    }
}
