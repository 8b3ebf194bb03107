//! Bounds on decoded messages: the [`Validate`] trait and the field checks the
//! messages' implementations share.

use super::{LogMark, WireError, limits};
use crate::revocation::{RevocationStatement, WipeOrder};

/// Longest hop of a [`FedBody::Refusal`](super::FedBody::Refusal) (`FROM->TO`, two relay ids).
pub const MAX_HOP: usize = 2 * limits::MAX_ID + 2;

pub(super) fn check_refusal(hop: &str, reason: &str) -> Result<(), WireError> {
    if hop.is_empty() || hop.len() > MAX_HOP {
        return Err(WireError::Invalid {
            field: "hop",
            reason: format!("empty or longer than {MAX_HOP} bytes"),
        });
    }
    if reason.len() > limits::MAX_REASON {
        return Err(WireError::Invalid {
            field: "reason",
            reason: format!("longer than {} bytes", limits::MAX_REASON),
        });
    }
    Ok(())
}

/// `reason` cut to at most [`limits::MAX_REASON`] bytes, on a character boundary:
/// what a relay stores or sends of a free-text reason.
pub fn bounded_reason(reason: &str) -> String {
    let mut end = reason.len().min(limits::MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.get(..end).unwrap_or_default().to_owned()
}

pub(super) fn check_statement(s: &RevocationStatement) -> Result<(), WireError> {
    check_qualified_id("user", &s.user)?;
    check_name("organisation", &s.organisation)?;
    if s.reason.len() > limits::MAX_REASON {
        return Err(WireError::Invalid {
            field: "reason",
            reason: "too long".into(),
        });
    }
    if s.revoker_chain.len() > 4 || s.signature.len() > 128 {
        return Err(WireError::Invalid {
            field: "revoker_chain",
            reason: "too many certificates or signature too long".into(),
        });
    }
    Ok(())
}

/// Checks a list of declared client organisations.
pub fn check_clients(clients: &[String]) -> Result<(), WireError> {
    if clients.len() > limits::MAX_CLIENTS {
        return Err(WireError::Invalid {
            field: "clients",
            reason: format!(
                "{} organisations; at most {}",
                clients.len(),
                limits::MAX_CLIENTS
            ),
        });
    }
    clients.iter().try_for_each(|c| check_name("clients", c))
}

pub(super) fn check_wipe(w: &WipeOrder) -> Result<(), WireError> {
    check_qualified_id("user", &w.user)?;
    check_name("organisation", &w.organisation)?;
    if w.revoker_chain.len() > 4 || w.signature.len() > 128 {
        return Err(WireError::Invalid {
            field: "revoker_chain",
            reason: "too many certificates or signature too long".into(),
        });
    }
    Ok(())
}

/// Checks the bounds of a decoded message.
pub trait Validate {
    /// Returns the first field that is out of bounds.
    fn validate(&self) -> Result<(), WireError>;
}

pub(super) fn check_id(field: &'static str, s: &str) -> Result<(), WireError> {
    let invalid = |reason: &str| WireError::Invalid {
        field,
        reason: reason.to_string(),
    };
    if s.is_empty() {
        return Err(invalid("empty"));
    }
    if s.len() > limits::MAX_ID {
        return Err(invalid("longer than 128 bytes"));
    }
    let ok = s.chars().all(|c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.' | '@')
    });
    if !ok {
        return Err(invalid(
            "only lower-case letters, digits, '-', '_', '.' and '@' are allowed",
        ));
    }
    if s.matches('@').count() > 1 {
        return Err(invalid("more than one '@'"));
    }
    Ok(())
}

/// Checks a list of log positions (bounded, community ids well formed).
pub(super) fn check_marks(field: &'static str, marks: &[LogMark]) -> Result<(), WireError> {
    if marks.len() > limits::MAX_LIST {
        return Err(WireError::Invalid {
            field,
            reason: "too many".into(),
        });
    }
    marks
        .iter()
        .try_for_each(|m| check_qualified_id("community", &m.community))
}

/// Checks a `NAME@RELAY` / `NAME@HUB` identifier (two non-empty parts).
pub fn check_qualified_id(field: &'static str, s: &str) -> Result<(), WireError> {
    check_id(field, s)?;
    match s.split_once('@') {
        Some((name, relay)) if !name.is_empty() && !relay.is_empty() => Ok(()),
        _ => Err(WireError::Invalid {
            field,
            reason: format!("'{s}' is not of the form NAME@RELAY"),
        }),
    }
}

/// Checks a bare name or relay id (no '@').
pub fn check_name(field: &'static str, s: &str) -> Result<(), WireError> {
    check_id(field, s)?;
    if s.contains('@') {
        return Err(WireError::Invalid {
            field,
            reason: "must not contain '@'".into(),
        });
    }
    Ok(())
}

/// A sealed blob's size: one a sealed blob can have, within what one notice may carry.
pub(super) fn check_blob_size(size: u64) -> Result<(), WireError> {
    if size > crate::attachment::MAX_SEALED_BYTES || crate::attachment::plain_len(size).is_none() {
        return Err(WireError::Invalid {
            field: "size",
            reason: format!(
                "{size} bytes is not the size of a sealed attachment of at most {} bytes",
                crate::attachment::MAX_SEALED_BYTES
            ),
        });
    }
    Ok(())
}

/// The bytes of one blob transfer: at most [`crate::attachment::TRANSFER_CHUNK`].
pub(super) fn check_transfer(field: &'static str, data: &[u8]) -> Result<(), WireError> {
    if data.len() > crate::attachment::TRANSFER_CHUNK {
        return Err(WireError::Invalid {
            field,
            reason: format!(
                "{} bytes; at most {} per message",
                data.len(),
                crate::attachment::TRANSFER_CHUNK
            ),
        });
    }
    Ok(())
}
