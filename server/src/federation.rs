//! Relay-to-relay federation (ALPN `kring-fed/1`).
//!
//! Not enabled yet: a peer relay that connects is told so and disconnected.

use std::sync::Arc;

use kring_protocol::identity::Identity;

use crate::audit::{AuditEvent, AuditKind};
use crate::relay::Relay;

/// Serves one peer relay connection.
pub async fn serve_peer(relay: Arc<Relay>, conn: quinn::Connection, peer: Identity) {
    relay.audit_now(AuditEvent::new(
        AuditKind::Link,
        peer.id(),
        relay.id(),
        "link-refused",
        "federation is not enabled on this relay",
    ));
    conn.close(4u32.into(), b"federation not enabled");
}
