//! Revoking a user of one's own organisation (`kring admin revoke`): the org-admin's
//! device signs a [`RevocationStatement`] with its certificate key and hands it to
//! the home relay, which makes it durable, cuts the user off and spreads it to every
//! relay of the federation.
//!
//! With `--wipe` ([`Client::revoke_and_wipe`]) the device also signs a
//! [`WipeOrder`] for the user's home relay, which must be this org-admin's own: the
//! relay hands it to the revoked device, which then deletes its private key and
//! passphrase file besides its archive and MLS state (see [`crate::wipe`]).

use kring_protocol::identity::{Identity, ROLE_ORG_ADMIN};
use kring_protocol::revocation::{RevocationError, RevocationStatement, WipeOrder};
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
    /// Whether an order to wipe the user's device went with it (kept by the home
    /// relay for the device).
    pub wipe: bool,
}

impl Client {
    /// Revokes `user` (`NAME@RELAY`, a user of this org-admin's organisation) for
    /// `reason`. Refused locally when this certificate has no org-admin role (exit 4)
    /// or the arguments are malformed (exit 2); the relay refuses users of other
    /// organisations (exit 4).
    pub async fn revoke(&mut self, user: &str, reason: &str) -> Result<Revocation> {
        self.revoke_with(user, reason, false).await
    }

    /// [`revoke`](Self::revoke), also ordering the user's device wiped: when it
    /// next reaches its home relay it deletes its private key and passphrase file
    /// besides its archive and MLS state. The user must be homed at this org-admin's
    /// home relay (exit 2 otherwise).
    pub async fn revoke_and_wipe(&mut self, user: &str, reason: &str) -> Result<Revocation> {
        self.revoke_with(user, reason, true).await
    }

    async fn revoke_with(&mut self, user: &str, reason: &str, wipe: bool) -> Result<Revocation> {
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
        let now = crate::validator::now_unix() as i64;
        let statement = RevocationStatement::sign(
            chain.clone(),
            |bytes| signer.sign(bytes).unwrap_or_default(),
            user,
            reason,
            now,
        )
        .map_err(refusal)?;
        if statement.user == me.id() {
            return Err(ClientError::Usage(
                "an org-admin cannot revoke themselves; ask another org-admin".into(),
            ));
        }
        let request = if wipe {
            let home = statement.home_relay();
            if home != self.relay_id() {
                return Err(ClientError::Usage(format!(
                    "{} is a user of relay {home}; --wipe needs an org-admin homed there \
                     (the order is kept by the user's home relay)",
                    statement.user
                )));
            }
            let wipe = WipeOrder::sign(
                chain,
                |bytes| signer.sign(bytes).unwrap_or_default(),
                &statement.user,
                now,
            )
            .map_err(refusal)?;
            Request::RevokeAndWipe { statement, wipe }
        } else {
            Request::Revoke { statement }
        };
        match self.call(&request).await? {
            Response::Revoked {
                user,
                peers,
                removals,
            } => Ok(Revocation {
                user,
                relay: self.relay_id().to_string(),
                peers,
                removals,
                wipe,
            }),
            other => Err(unexpected("Revoke", &other)),
        }
    }
}

fn refusal(e: RevocationError) -> ClientError {
    match e {
        RevocationError::Invalid(_) => ClientError::Usage(e.to_string()),
        other => ClientError::Auth(other.to_string()),
    }
}
