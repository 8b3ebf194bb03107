//! QUIC application close codes: why a relay or device closed a connection.
//!
//! The code travels in the QUIC `CONNECTION_CLOSE` frame with a short reason text
//! (never content). Codes are fixed once given; new ones are added at the end.

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// Closed on purpose, nothing wrong: a device leaving, a relay shutting down.
    Done,
    /// Delivery on a federation link failed; the link is dialled again.
    DeliveryFailed,
    /// The peer asked for an application protocol (ALPN) other than `kring/1`.
    UnknownProtocol,
    /// The connection was refused: no or a wrong certificate, not a configured
    /// peer, the wrong organisation, a connection cap reached.
    Refused,
    /// The identity was revoked: cut off everywhere in the federation.
    Revoked,
    /// The certificate expired while the connection was up.
    Expired,
    /// A reload removed or changed the peer's configuration.
    Reconfigured,
}

impl CloseCode {
    /// Every code, in code order.
    pub const ALL: [CloseCode; 7] = [
        CloseCode::Done,
        CloseCode::DeliveryFailed,
        CloseCode::UnknownProtocol,
        CloseCode::Refused,
        CloseCode::Revoked,
        CloseCode::Expired,
        CloseCode::Reconfigured,
    ];

    /// The number on the wire.
    pub const fn code(self) -> u32 {
        match self {
            CloseCode::Done => 0,
            CloseCode::DeliveryFailed => 1,
            CloseCode::UnknownProtocol => 2,
            CloseCode::Refused => 4,
            CloseCode::Revoked => 7,
            CloseCode::Expired => 8,
            CloseCode::Reconfigured => 9,
        }
    }

    /// The code a number stands for, if it is one of ours.
    pub fn from_code(code: u64) -> Option<CloseCode> {
        CloseCode::ALL
            .into_iter()
            .find(|c| u64::from(c.code()) == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_read_back() {
        let mut seen = std::collections::BTreeSet::new();
        for c in CloseCode::ALL {
            assert!(seen.insert(c.code()), "{c:?} reuses code {}", c.code());
            assert_eq!(CloseCode::from_code(u64::from(c.code())), Some(c));
        }
        assert_eq!(CloseCode::from_code(3), None);
        // The numbers deployed devices and relays already know.
        assert_eq!(CloseCode::Revoked.code(), 7);
        assert_eq!(CloseCode::Expired.code(), 8);
        assert_eq!(CloseCode::Reconfigured.code(), 9);
    }
}
