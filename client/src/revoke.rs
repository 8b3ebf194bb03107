//! Revoking a user of one's own organisation (`kring admin revoke`): the org-admin's
//! device signs a [`RevocationStatement`] with its certificate key and hands it to
//! the home relay, which makes it durable, cuts the user off and spreads it to every
//! relay of the federation.

use kring_protocol::identity::{Identity, ROLE_ORG_ADMIN};
use kring_protocol::revocation::{RevocationError, RevocationStatement};
use kring_protocol::wire::{Request, Response};
use openmls_traits::signatures::Signer as _;

use crate::client::{Client, unexpected};
use crate::error::{ClientError, Result};

/// What the home relay did with a revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The revoked user.
    pub user: String,
    /// The home relay that accepted it.
    pub relay: String,
    /// Federation peers it is on its way to.
    pub peers: Vec<String>,
    /// Communities hubbed at the home relay from which the user's removal is being
    /// proposed (hubs elsewhere propose theirs when the statement reaches them).
    pub removals: Vec<String>,
}

impl Client {
    /// Revokes `user` (`NAME@RELAY`, a user of this org-admin's organisation) for
    /// `reason`. Refused locally when this certificate has no org-admin role (exit 4)
    /// or the arguments are malformed (exit 2); the relay refuses users of other
    /// organisations (exit 4).
    pub async fn revoke(&mut self, user: &str, reason: &str) -> Result<Revocation> {
        let chain = self.signer.chain().to_vec();
        let me = chain
            .first()
            .and_then(|leaf| Identity::from_der(leaf).ok())
            .ok_or_else(|| ClientError::Auth("cannot read this device's certificate".into()))?;
        if !me.has_role(ROLE_ORG_ADMIN) {
            return Err(ClientError::Auth(format!(
                "{} is not an org-admin: only org-admins may revoke (the certificate has no \
                 org-admin role)",
                me.id()
            )));
        }
        let signer = &self.signer;
        let statement = RevocationStatement::sign(
            chain,
            |bytes| signer.sign(bytes).unwrap_or_default(),
            user,
            reason,
            crate::validator::now_unix() as i64,
        )
        .map_err(|e| match e {
            RevocationError::Invalid(_) => ClientError::Usage(e.to_string()),
            other => ClientError::Auth(other.to_string()),
        })?;
        if statement.user == me.id() {
            return Err(ClientError::Usage(
                "an org-admin cannot revoke themselves; ask another org-admin".into(),
            ));
        }
        match self.call(&Request::Revoke { statement }).await? {
            Response::Revoked {
                user,
                peers,
                removals,
            } => Ok(Revocation {
                user,
                relay: self.relay_id().to_string(),
                peers,
                removals,
            }),
            other => Err(unexpected("Revoke", &other)),
        }
    }
}
