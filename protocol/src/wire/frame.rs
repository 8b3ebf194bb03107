//! Frames: a big-endian `u32` length and a [`postcard`] payload of a [`Versioned`]
//! message; [`FrameDecoder`] is the push-based decoder the async layers feed.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::{FRAME_HEADER, PROTOCOL_VERSION, Validate, WireError};

/// A message with the protocol version it was written for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned<T> {
    /// Always [`PROTOCOL_VERSION`] when written by this build.
    pub version: u16,
    /// The message.
    pub body: T,
}

/// Encodes `body` as one frame (length prefix included).
///
/// Fails with [`WireError::TooLarge`] if the payload exceeds `max_frame`.
pub fn encode_frame<T: Serialize>(body: &T, max_frame: usize) -> Result<Vec<u8>, WireError> {
    let versioned = Versioned {
        version: PROTOCOL_VERSION,
        body,
    };
    let mut out = vec![0u8; FRAME_HEADER];
    out = postcard::to_extend(&versioned, out).map_err(|e| WireError::Malformed(e.to_string()))?;
    let len = out.len() - FRAME_HEADER;
    if len > max_frame {
        return Err(WireError::TooLarge {
            len,
            max: max_frame,
        });
    }
    let len32 = u32::try_from(len).map_err(|_| WireError::TooLarge {
        len,
        max: max_frame,
    })?;
    out[..FRAME_HEADER].copy_from_slice(&len32.to_be_bytes());
    Ok(out)
}

/// Decodes one frame payload (without the length prefix) strictly: right version,
/// no trailing bytes, fields within bounds.
pub fn decode_payload<T: DeserializeOwned + Validate>(payload: &[u8]) -> Result<T, WireError> {
    // Read the version first so a peer of another version gets a precise error even if
    // its message layout differs.
    let (version, _) = postcard::take_from_bytes::<u16>(payload)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if version != PROTOCOL_VERSION {
        return Err(WireError::Version { got: version });
    }
    let (msg, rest) = postcard::take_from_bytes::<Versioned<T>>(payload)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    msg.body.validate()?;
    Ok(msg.body)
}

/// Parses the length prefix of a frame, refusing lengths above `max_frame`.
pub fn frame_len(header: [u8; FRAME_HEADER], max_frame: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max_frame {
        return Err(WireError::TooLarge {
            len,
            max: max_frame,
        });
    }
    Ok(len)
}

/// A push-based frame splitter: feed it bytes as they arrive, take complete payloads.
///
/// Memory is bounded: it never buffers more than one frame header plus `max_frame`
/// bytes of the frame being assembled, and refuses an oversized length before
/// reading its payload.
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame: usize,
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder accepting payloads of at most `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self {
            max_frame,
            buf: Vec::new(),
        }
    }

    /// Appends received bytes. Fails if the buffered frame would exceed the maximum.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        if self.buf.len() >= FRAME_HEADER {
            let mut hdr = [0u8; FRAME_HEADER];
            hdr.copy_from_slice(&self.buf[..FRAME_HEADER]);
            frame_len(hdr, self.max_frame)?;
        }
        let limit = FRAME_HEADER
            .saturating_add(self.max_frame)
            .saturating_mul(2);
        if self.buf.len().saturating_add(bytes.len()) > limit {
            // Take what fits; callers feed again after draining frames.
            return Err(WireError::TooLarge {
                len: self.buf.len() + bytes.len(),
                max: limit,
            });
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Returns the next complete payload, if one is buffered.
    pub fn next_payload(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        if self.buf.len() < FRAME_HEADER {
            return Ok(None);
        }
        let mut hdr = [0u8; FRAME_HEADER];
        hdr.copy_from_slice(&self.buf[..FRAME_HEADER]);
        let len = frame_len(hdr, self.max_frame)?;
        if self.buf.len() < FRAME_HEADER + len {
            return Ok(None);
        }
        let payload = self.buf[FRAME_HEADER..FRAME_HEADER + len].to_vec();
        self.buf.drain(..FRAME_HEADER + len);
        Ok(Some(payload))
    }

    /// Called at end of stream: fails if a partial frame is buffered.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let want = if self.buf.len() < FRAME_HEADER {
            FRAME_HEADER
        } else {
            let mut hdr = [0u8; FRAME_HEADER];
            hdr.copy_from_slice(&self.buf[..FRAME_HEADER]);
            FRAME_HEADER + u32::from_be_bytes(hdr) as usize
        };
        Err(WireError::Truncated {
            got: self.buf.len(),
            want,
        })
    }
}
