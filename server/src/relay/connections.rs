//! Who may connect and how much: authentication of a connecting certificate,
//! the connection registry, per-identity request budgets and rate limits.

use super::*;
use crate::core::Bucket;

impl Relay {
    /// Checks a certificate chain presented in TLS and reads the identity from it.
    pub fn authenticate(
        &self,
        chain: &[Vec<u8>],
        expected: IdentityKind,
    ) -> Result<Identity, ErrorCode> {
        let id = kring_protocol::identity::verify_chain_trusted(
            chain,
            &self.anchors,
            now() as u64,
            expected,
            &self.trust(),
        )
        .map_err(|e| ErrorCode::Unauthenticated {
            reason: e.to_string(),
        })?;
        let revoked = self.revocations().check_chain(&id, chain);
        if let Err(why) = revoked {
            self.audit_now(AuditEvent::new(
                AuditKind::Revocation,
                id.id(),
                self.id.clone(),
                "connect-refused",
                why.to_string(),
            ));
            return Err(ErrorCode::Revoked);
        }
        // A user connects to their home relay only (the trust map already bound the
        // certificate's organisation and CA to the relay it names).
        if id.kind == IdentityKind::User && id.home_relay != self.id {
            return Err(ErrorCode::Unauthenticated {
                reason: format!(
                    "{} (organisation {}) is not a user of relay {} (organisation {})",
                    id.id(),
                    id.organisation,
                    self.id,
                    self.organisation
                ),
            });
        }
        Ok(id)
    }

    /// The organisation CA that `chain` (a relay's, as presented in TLS) verifies
    /// through, as [`authenticate`](Self::authenticate) checked it: the CA to
    /// record for a peer, never merely the second certificate presented.
    pub fn verified_issuer(&self, chain: &[Vec<u8>]) -> Option<Vec<u8>> {
        kring_protocol::identity::verify_chain_trusted_issuer(
            chain,
            &self.anchors,
            now() as u64,
            IdentityKind::Relay,
            &self.trust(),
        )
        .ok()
        .map(|(_, issuer)| issuer)
    }

    /// Registers a live connection of a device or a peer relay, authenticated as
    /// `identity` with `chain`. Refused (`Unavailable`) when the identity already has
    /// `max_connections_per_identity` connections open; the caller tells the peer
    /// and audits it. The connection is closed (and the cut audited) when the first
    /// certificate of `chain` expires.
    pub fn register_connection(
        self: &Arc<Self>,
        identity: &Identity,
        chain: &[Vec<u8>],
        conn: quinn::Connection,
    ) -> Result<Registration, ErrorCode> {
        let id = identity.id();
        let conn_id = conn.stable_id();
        let max = self.limits.max_connections_per_identity;
        let budget = {
            let mut conns = self
                .conns
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let live = conns.entry(id.clone()).or_insert_with(|| Live {
                budget: ByteBudget::new(self.limits.request_bytes_per_identity),
                conns: Vec::new(),
            });
            live.conns.retain(|(_, c, _)| c.close_reason().is_none());
            if live.conns.len() >= max {
                return Err(ErrorCode::Unavailable {
                    reason: format!(
                        "{id} already has {} connections open to relay {}, the most allowed; \
                         close one and retry",
                        live.conns.len(),
                        self.id
                    ),
                });
            }
            live.conns.push((conn_id, conn.clone(), identity.clone()));
            self.metrics.connection_opened(identity.kind);
            live.budget.clone()
        };
        let not_after = kring_protocol::identity::chain_not_after(chain)
            .map_or(identity.not_after, |t| t.min(identity.not_after));
        tokio::spawn(close_at_expiry(
            Arc::downgrade(self),
            conn,
            id.clone(),
            not_after,
        ));
        Ok(Registration {
            relay: self.clone(),
            id,
            kind: identity.kind,
            conn_id,
            budget,
        })
    }

    /// The request byte budget of `id` (a registered identity's, else a new one
    /// that is dropped with the caller's hold).
    pub fn request_budget(&self, id: &str) -> ByteBudget {
        self.conns
            .lock()
            .ok()
            .and_then(|c| c.get(id).map(|l| l.budget.clone()))
            .unwrap_or_else(|| ByteBudget::new(self.limits.request_bytes_per_identity))
    }

    /// Token bucket per identity: `requests_per_second`, burst of twice that.
    pub fn check_rate(&self, id: &str) -> Result<(), ErrorCode> {
        let rate = f64::from(self.limits.requests_per_second);
        let Ok(mut buckets) = self.rate.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        let b = buckets.entry(id.to_string()).or_insert(Bucket {
            tokens: rate * 2.0,
            last: now,
        });
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(rate * 2.0);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - b.tokens) / rate * 1000.0).ceil() as u64;
            drop(buckets);
            self.audit_now(AuditEvent::new(
                AuditKind::Refusal,
                id,
                "-",
                "rate-limit",
                "request rate above the configured limit",
            ));
            Err(ErrorCode::RateLimited {
                retry_after_ms: wait,
            })
        }
    }
}
