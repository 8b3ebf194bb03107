//! Attachments: files sealed on the filer's device and carried by relays as
//! opaque blobs.
//!
//! Each file is sealed with a fresh 256-bit key (carried inside the MLS-encrypted
//! notice, never seen by a relay) in chunks of [`CHUNK`] bytes, each with
//! ChaCha20-Poly1305:
//!
//! ```text
//! sealed  = chunk_0 || chunk_1 || ... || chunk_n      (n ≥ 0; chunk_n may be empty)
//! chunk_i = ChaCha20-Poly1305(key, nonce_i, plaintext_i) (plaintext_i ‖ 16-byte tag)
//! nonce_i = i as u64 big-endian ‖ [0, 0, 0, last]     (last = 1 for chunk_n only)
//! ```
//!
//! Every chunk but the last holds exactly [`CHUNK`] bytes of plaintext, so the
//! sealed length fixes where the chunks end ([`sealed_len`]); the `last` flag in the
//! final nonce stops a truncated blob from opening. A blob is named by the SHA-256 of
//! its sealed bytes ([`BlobId`]): a relay checks what it receives against the name
//! without the key, and stores a blob once however many notices refer to it. The
//! device that opens it checks the plaintext's SHA-256 the notice carries.
//!
//! The functions here read and write through [`std::io`]: a file is never held
//! whole in memory.

use std::fmt;
use std::io::{Read, Write};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

/// Plaintext bytes per sealed chunk.
pub const CHUNK: usize = 64 * 1024;
/// Bytes an AEAD tag adds to each chunk.
pub const TAG: usize = 16;
/// Most attachments on one notice.
pub const MAX_ATTACHMENTS: usize = 16;
/// Most plaintext bytes of all attachments of one notice together (50 MiB).
pub const MAX_ATTACHMENT_BYTES: u64 = 50 * 1024 * 1024;
/// Most sealed bytes of all attachments of one notice together: what
/// [`MAX_ATTACHMENT_BYTES`] of plaintext seals to, split over the most files.
pub const MAX_SEALED_BYTES: u64 =
    sealed_len(MAX_ATTACHMENT_BYTES) + (MAX_ATTACHMENTS as u64) * TAG as u64;
/// Most bytes of a blob in one upload or download message.
pub const TRANSFER_CHUNK: usize = 1024 * 1024;
/// Longest attachment file name (bytes).
pub const MAX_NAME: usize = 255;

/// The length of `plain` bytes sealed: a tag per chunk, and one empty final chunk
/// when the plaintext fills its chunks exactly (or is empty).
pub const fn sealed_len(plain: u64) -> u64 {
    let chunk = CHUNK as u64;
    // Saturating: a size from the network never overflows (and is then refused
    // as larger than any attachment may be).
    plain.saturating_add((plain / chunk + 1).saturating_mul(TAG as u64))
}

/// The plaintext length of a blob of `sealed` bytes, if that is a length a sealed
/// blob can have.
pub fn plain_len(sealed: u64) -> Option<u64> {
    let full = (CHUNK + TAG) as u64;
    let chunks = sealed / full;
    let rest = sealed % full;
    // The final chunk carries at least its tag and less than a whole chunk.
    if rest < TAG as u64 {
        return None;
    }
    Some(chunks * CHUNK as u64 + (rest - TAG as u64))
}

/// A blob's name: the SHA-256 of its sealed bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    /// The name as 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<BlobId> {
        let bytes = unhex(s)?;
        Some(BlobId(bytes.try_into().ok()?))
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({})", self.to_hex())
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A blob a notice refers to, as relays see it (in the notice's authenticated
/// data, [`crate::notice_aad`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// Its name.
    pub id: BlobId,
    /// Its sealed length in bytes.
    pub size: u64,
}

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachmentError {
    /// Reading the source or writing the destination failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A chunk did not open: the blob was changed, cut or sealed with another key.
    #[error("attachment chunk {0} does not open: the blob was altered or cut")]
    Tampered(u64),
    /// The blob's length is not one a sealed blob can have.
    #[error("a sealed blob cannot be {0} bytes long")]
    BadLength(u64),
    /// The opened plaintext is not what the notice says.
    #[error("the attachment's SHA-256 is {got}, the notice says {want}")]
    WrongHash {
        /// What the notice says.
        want: String,
        /// What came out.
        got: String,
    },
    /// The file is larger than attachments may be.
    #[error("{0} bytes; attachments may be at most {MAX_ATTACHMENT_BYTES} bytes in all")]
    TooLarge(u64),
    /// The key is not 32 bytes.
    #[error("an attachment key is 32 bytes")]
    BadKey,
}

/// What sealing a file produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The blob's name and sealed length.
    pub blob: BlobRef,
    /// Plaintext length.
    pub size: u64,
    /// SHA-256 of the plaintext.
    pub sha256: [u8; 32],
}

fn key(key: &[u8; 32]) -> Result<LessSafeKey, AttachmentError> {
    UnboundKey::new(&CHACHA20_POLY1305, key)
        .map(LessSafeKey::new)
        .map_err(|_| AttachmentError::BadKey)
}

fn nonce(index: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::assume_unique_for_key(n)
}

/// Reads until `buf` is full or the source ends; the number of bytes read.
fn fill(src: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Seals everything `src` yields into `dst` with `k` (a fresh key per file), at
/// most `limit` plaintext bytes.
///
/// # Errors
/// [`AttachmentError::TooLarge`] past `limit`; I/O errors of either side.
pub fn seal(
    src: &mut impl Read,
    dst: &mut impl Write,
    k: &[u8; 32],
    limit: u64,
) -> Result<Sealed, AttachmentError> {
    let k = key(k)?;
    let mut plain_hash = Context::new(&SHA256);
    let mut sealed_hash = Context::new(&SHA256);
    let mut buf = vec![0u8; CHUNK + 1];
    // One byte of look-ahead tells whether this chunk is the last.
    let mut have = fill(src, &mut buf)?;
    let mut index = 0u64;
    let mut size = 0u64;
    let mut sealed = 0u64;
    loop {
        let last = have < CHUNK;
        let take = have.min(CHUNK);
        size += take as u64;
        if size > limit {
            return Err(AttachmentError::TooLarge(size));
        }
        let mut chunk = buf[..take].to_vec();
        plain_hash.update(&chunk);
        k.seal_in_place_append_tag(nonce(index, last), Aad::empty(), &mut chunk)
            .map_err(|_| AttachmentError::Tampered(index))?;
        sealed_hash.update(&chunk);
        dst.write_all(&chunk)?;
        sealed += chunk.len() as u64;
        if last {
            break;
        }
        // Keep the look-ahead byte; read the rest of the next chunk after it.
        buf.copy_within(CHUNK..have, 0);
        have = have - CHUNK + fill(src, &mut buf[have - CHUNK..])?;
        index += 1;
    }
    dst.flush()?;
    Ok(Sealed {
        blob: BlobRef {
            id: BlobId(digest(sealed_hash)),
            size: sealed,
        },
        size,
        sha256: digest(plain_hash),
    })
}

/// Opens a sealed blob of `sealed_len` bytes from `src` into `dst`, checking every
/// chunk and, at the end, the plaintext's SHA-256 against `sha256`. On an error,
/// what was written to `dst` must be thrown away.
///
/// # Errors
/// [`AttachmentError::Tampered`], [`AttachmentError::BadLength`],
/// [`AttachmentError::WrongHash`], I/O errors.
pub fn open(
    src: &mut impl Read,
    sealed_len: u64,
    dst: &mut impl Write,
    k: &[u8; 32],
    sha256: &[u8; 32],
) -> Result<u64, AttachmentError> {
    plain_len(sealed_len).ok_or(AttachmentError::BadLength(sealed_len))?;
    let k = key(k)?;
    let mut plain_hash = Context::new(&SHA256);
    let mut buf = vec![0u8; CHUNK + TAG];
    let mut left = sealed_len;
    let mut index = 0u64;
    let mut size = 0u64;
    loop {
        let take = left.min((CHUNK + TAG) as u64) as usize;
        let last = left == take as u64 && take < CHUNK + TAG;
        let got = fill(src, &mut buf[..take])?;
        if got != take {
            return Err(AttachmentError::Tampered(index));
        }
        let plain = k
            .open_in_place(nonce(index, last), Aad::empty(), &mut buf[..take])
            .map_err(|_| AttachmentError::Tampered(index))?;
        plain_hash.update(plain);
        dst.write_all(plain)?;
        size += plain.len() as u64;
        left -= take as u64;
        if last {
            break;
        }
        index += 1;
    }
    dst.flush()?;
    let got = digest(plain_hash);
    if &got != sha256 {
        return Err(AttachmentError::WrongHash {
            want: hex(sha256),
            got: hex(&got),
        });
    }
    Ok(size)
}

/// The SHA-256 of everything `src` yields (a blob checked against its name).
///
/// # Errors
/// Reading fails.
pub fn sha256_of(src: &mut impl Read) -> std::io::Result<[u8; 32]> {
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = fill(src, &mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(digest(ctx))
}

fn digest(ctx: Context) -> [u8; 32] {
    let d = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses hex (either case; nothing but hex digits).
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seal_vec(data: &[u8], k: &[u8; 32]) -> (Sealed, Vec<u8>) {
        let mut out = Vec::new();
        let s = seal(&mut &data[..], &mut out, k, MAX_ATTACHMENT_BYTES).unwrap();
        (s, out)
    }

    #[test]
    fn lengths_at_chunk_boundaries() {
        for plain in [
            0,
            1,
            CHUNK as u64 - 1,
            CHUNK as u64,
            CHUNK as u64 + 1,
            3 * CHUNK as u64,
        ] {
            let (s, out) = seal_vec(&vec![7u8; plain as usize], &[1; 32]);
            assert_eq!(out.len() as u64, sealed_len(plain), "{plain}");
            assert_eq!(s.blob.size, sealed_len(plain));
            assert_eq!(plain_len(sealed_len(plain)), Some(plain), "{plain}");
        }
        assert_eq!(plain_len(5), None);
        assert_eq!(plain_len((CHUNK + TAG) as u64 + 3), None);
    }

    #[test]
    fn sealed_blobs_open_and_are_named_by_their_hash() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let k = [9; 32];
        let (s, sealed) = seal_vec(&data, &k);
        assert_eq!(s.blob.id.0, sha256_of(&mut &sealed[..]).unwrap());
        assert_eq!(s.sha256, sha256_of(&mut &data[..]).unwrap());
        let mut back = Vec::new();
        let n = open(
            &mut &sealed[..],
            sealed.len() as u64,
            &mut back,
            &k,
            &s.sha256,
        )
        .unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(back, data);
    }

    #[test]
    fn altered_cut_or_rekeyed_blobs_do_not_open() {
        let data = vec![3u8; 2 * CHUNK + 10];
        let k = [5; 32];
        let (s, sealed) = seal_vec(&data, &k);
        let try_open = |bytes: &[u8], k: &[u8; 32]| {
            open(
                &mut &bytes[..],
                bytes.len() as u64,
                &mut Vec::new(),
                k,
                &s.sha256,
            )
        };
        let mut flipped = sealed.clone();
        flipped[CHUNK + 40] ^= 1;
        assert!(matches!(
            try_open(&flipped, &k),
            Err(AttachmentError::Tampered(1))
        ));
        assert!(try_open(&sealed, &[6; 32]).is_err());
        // Cut after a whole chunk: the length is a valid one, but that chunk was
        // not sealed as the last.
        let cut = &sealed[..2 * (CHUNK + TAG)];
        assert!(try_open(cut, &k).is_err());
        // Chunks swapped.
        let mut swapped = sealed.clone();
        let (a, b) = swapped.split_at_mut(CHUNK + TAG);
        a.swap_with_slice(&mut b[..CHUNK + TAG]);
        assert!(try_open(&swapped, &k).is_err());
        // A different plaintext hash.
        let r = open(
            &mut &sealed[..],
            sealed.len() as u64,
            &mut Vec::new(),
            &k,
            &[0; 32],
        );
        assert!(matches!(r, Err(AttachmentError::WrongHash { .. })));
    }

    #[test]
    fn the_limit_is_enforced_while_reading() {
        let data = vec![0u8; CHUNK * 2];
        let r = seal(&mut &data[..], &mut Vec::new(), &[1; 32], CHUNK as u64);
        assert!(matches!(r, Err(AttachmentError::TooLarge(_))));
    }

    #[test]
    fn blob_ids_print_and_parse_as_hex() {
        let id = BlobId([0xab; 32]);
        assert_eq!(BlobId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(BlobId::from_hex("ab"), None);
        assert_eq!(BlobId::from_hex(&"zz".repeat(32)), None);
        // One spelling per id: no signs.
        assert_eq!(BlobId::from_hex(&format!("+a{}", "ab".repeat(31))), None);
        assert_eq!(sealed_len(u64::MAX), u64::MAX);
    }

    proptest! {
        #[test]
        fn any_plaintext_round_trips(data in proptest::collection::vec(any::<u8>(), 0..(3 * CHUNK)),
                                     k in any::<[u8; 32]>()) {
            let (s, sealed) = seal_vec(&data, &k);
            prop_assert_eq!(sealed.len() as u64, sealed_len(data.len() as u64));
            let mut back = Vec::new();
            open(&mut &sealed[..], sealed.len() as u64, &mut back, &k, &s.sha256).unwrap();
            prop_assert_eq!(back, data);
        }
    }
}
