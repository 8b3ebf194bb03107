//! [`Client`]: one user's device — profile, key material, local state, and the
//! connection to the home relay. The operations live in submodules:
//! [`sync`](crate::sync) (receiving), [`community`](crate::community) (groups) and
//! [`filing`](crate::filing) (notices).

use std::path::Path;

use kring_policy::{Clearance, Label};
use kring_protocol::identity::{
    Identity, IdentityKind, RelayTrust, TrustMap, verify_chain, verify_chain_trusted,
};
use kring_protocol::mls::{self, CertSigner, ClientGroup};
use kring_protocol::mls_storage::KringProvider;
use kring_protocol::wire::{CommunitySummary, Request, Response, TrustState};

use crate::conn::{Credentials, RelayConnection, Timeouts};
use crate::error::{ClientError, Result};
use crate::ids;
use crate::profile::Profile;
use crate::store::{MlsKv, Store};
use crate::sync::SyncEvent;
use crate::validator::{Validator, now_unix};

/// Most key packages one `keys publish` uploads (besides the last-resort one).
pub const MAX_PUBLISH: usize = kring_protocol::wire::limits::MAX_KEY_PACKAGES_PER_PUBLISH;
/// Key packages `keys publish` uploads by default (besides the last-resort one).
pub const DEFAULT_PUBLISH: usize = 10;

/// A user's device: everything needed to talk to the home relay and keep state.
///
/// Methods that change state take `&mut self`; one `Client` per profile and process
/// (the state database is locked by the process that opened it).
pub struct Client {
    pub(crate) profile: Profile,
    pub(crate) creds: Credentials,
    pub(crate) me: Identity,
    pub(crate) signer: CertSigner,
    pub(crate) validator: Validator,
    pub(crate) store: Store,
    pub(crate) provider: KringProvider<MlsKv>,
    pub(crate) timeouts: Timeouts,
    pub(crate) conn: Option<RelayConnection>,
    pub(crate) event_sink: Option<EventSink>,
    /// Told how uploads of attachments progress (see [`Client::set_progress`]).
    pub(crate) progress: Option<ProgressSink>,
    /// The time source of the leaf update schedule.
    pub(crate) clock: crate::keys::Clock,
    /// Whether a sync starts the leaf updates that are due (off while
    /// `update_keys` syncs).
    pub(crate) scheduled_updates: bool,
    /// See [`Client::open_notes`].
    pub(crate) notes: Vec<String>,
    /// Filings sent and not finished yet ([`Client::send_sealed`]).
    pub(crate) in_flight: crate::filing::InFlight,
    /// The group the last sealing left loaded (see [`crate::filing::LoadedGroup`]).
    pub(crate) sealing: Option<crate::filing::LoadedGroup>,
}

/// A callback receiving the events of every sync (see [`Client::set_event_sink`]).
pub type EventSink = Box<dyn FnMut(&SyncEvent) + Send>;

/// A callback told how transfers of attachments progress (see [`Client::set_progress`]).
pub type ProgressSink = Box<dyn FnMut(crate::attachments::Progress) + Send>;

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("user", &self.me.id())
            .field("relay", &self.profile.relay_id)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Opens the device of the profile in `profile_dir`: loads the profile, the
    /// certificate chain and key, checks that the certificate is a user certificate
    /// for the profile's user, and opens the local state (creating it on first use).
    pub fn open(profile_dir: impl AsRef<Path>) -> Result<Client> {
        Self::open_profile(Profile::load(profile_dir)?)
    }

    /// Like [`open`](Self::open), with an already loaded profile.
    pub fn open_profile(profile: Profile) -> Result<Client> {
        let mut unlocker = crate::unlock::Unlocker::new(&profile);
        Self::open_unlocked(profile, &mut unlocker)
    }

    /// Like [`open_profile`](Self::open_profile), with the passphrase from
    /// `unlocker` (which unlocks the private key and the local archive).
    pub fn open_unlocked(
        profile: Profile,
        unlocker: &mut crate::unlock::Unlocker,
    ) -> Result<Client> {
        let creds = Credentials::load_with(&profile, unlocker)?;
        let leaf = creds.chain.first().ok_or_else(|| ClientError::Profile {
            path: profile.cert.display().to_string(),
            reason: "no certificate".into(),
        })?;
        let me = Identity::from_der(leaf).map_err(|e| ClientError::Profile {
            path: profile.cert.display().to_string(),
            reason: format!("not a usable Kring certificate: {e}"),
        })?;
        if me.kind != IdentityKind::User {
            return Err(ClientError::Profile {
                path: profile.cert.display().to_string(),
                reason: format!("is a {} certificate, not a user certificate", me.kind),
            });
        }
        if me.id() != profile.user {
            return Err(ClientError::Profile {
                path: profile.cert.display().to_string(),
                reason: format!(
                    "the certificate is for {}, but the profile is for {}",
                    me.id(),
                    profile.user
                ),
            });
        }
        let signer = creds.mls_signer()?;
        let validator = Validator::new(creds.anchors_der());
        let (store, note) = crate::unlock::open_archive(&profile, unlocker)?;
        let provider = KringProvider::new(store.mls_backend());
        // Notices past their community's retention period go at every start.
        crate::retention::delete_expired_in(&store, i64::try_from(now_unix()).unwrap_or(i64::MAX))?;
        Ok(Client {
            profile,
            creds,
            me,
            signer,
            validator,
            store,
            provider,
            timeouts: Timeouts::default(),
            conn: None,
            event_sink: None,
            progress: None,
            clock: crate::keys::system_clock(),
            scheduled_updates: true,
            notes: note.into_iter().collect(),
            in_flight: Default::default(),
            sealing: None,
        })
    }

    /// Whether `error` is the home relay saying, over an authenticated connection,
    /// that this device's certificate is revoked (with or without a wipe order).
    pub fn is_revocation(error: &ClientError) -> bool {
        matches!(
            error,
            ClientError::Relay(kring_protocol::wire::ErrorCode::Revoked)
                | ClientError::WipeOrdered(_)
        )
    }

    /// Deletes this device's local archive and MLS state after its relay said it is
    /// revoked ([`is_revocation`](Self::is_revocation)) and, if an org-admin ordered
    /// it wiped (a [`ClientError::WipeOrdered`] whose order checks out, see
    /// [`crate::wipe`]), its private key and passphrase file too; the error to
    /// report, saying what was deleted. The device cannot be used afterwards.
    ///
    /// A revocation learnt otherwise than at connect (a closed push channel, a
    /// closed connection) carries no wipe order: pass it through
    /// [`with_wipe_order`](Self::with_wipe_order) first.
    pub fn wipe_after_revocation(self, error: ClientError) -> ClientError {
        let order = match &error {
            ClientError::WipeOrdered(order) => Some(order.as_ref().clone()),
            _ => None,
        };
        let checked = order.map(|order| {
            crate::wipe::check_order(
                &order,
                &self.me,
                &self.creds.anchors_der(),
                crate::validator::now_unix() as i64,
            )
            .map(|revoker| (order, revoker))
        });
        let profile = self.profile.clone();
        drop(self);
        let archive = match crate::unlock::wipe(&profile) {
            Ok(()) => format!(
                "this device's local archive and MLS state ({}) have been deleted",
                profile.state_dir.display()
            ),
            Err(e) => format!("deleting this device's local archive failed: {e}"),
        };
        let what = match checked {
            None => archive,
            Some(Ok((_, revoker))) => {
                let keys = crate::wipe::destroy_secrets(&profile);
                format!("{archive}; by order of {revoker}, {}", keys.describe())
            }
            Some(Err(why)) => format!(
                "{archive}; the relay also sent an order to wipe this device's private key, \
                 which was not followed: {why}"
            ),
        };
        let cause = match &error {
            ClientError::WipeOrdered(_) => {
                "this device's certificate is revoked (refused by the relay)".to_string()
            }
            other => other.to_string(),
        };
        ClientError::Auth(format!("{cause}: {what}"))
    }

    /// For a plain revocation error (`Relay(Revoked)`), connects once more to learn
    /// whether an org-admin ordered this device wiped: the relay's refusal at
    /// connect then carries the order ([`ClientError::WipeOrdered`]). Any other
    /// error comes back unchanged.
    pub async fn with_wipe_order(&mut self, error: ClientError) -> ClientError {
        match error {
            ClientError::Relay(kring_protocol::wire::ErrorCode::Revoked) => {
                self.conn = None;
                let answer = self.connect().await.map(|_| ());
                self.conn = None;
                match answer {
                    Err(e @ ClientError::WipeOrdered(_)) => e,
                    _ => error,
                }
            }
            other => other,
        }
    }

    /// Things that happened while opening this device that the user should be told
    /// (e.g. that its archive was sealed).
    pub fn open_notes(&self) -> &[String] {
        &self.notes
    }

    /// Replaces the time limits. `connect` and `request` apply from the next
    /// connection on (set them before connecting); `handshake` and `ordering` from
    /// the next operation that uses them.
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.timeouts = timeouts;
    }

    /// The current time limits.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Sets a callback that sees the events of every sync, including the syncs
    /// other operations (filing, adding members, …) run first; e.g. to show
    /// warnings and policy refusals to the user.
    pub fn set_event_sink(&mut self, sink: EventSink) {
        self.event_sink = Some(sink);
    }

    /// Sets the callback told how uploads of attachments progress while notices
    /// with files are filed, replied or forwarded.
    pub fn set_progress(&mut self, sink: ProgressSink) {
        self.progress = Some(sink);
    }

    /// The user's identity, `NAME@RELAY`.
    pub fn user(&self) -> String {
        self.me.id()
    }

    /// The home relay's id.
    pub fn relay_id(&self) -> &str {
        &self.profile.relay_id
    }

    /// The profile this device was opened with.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The user's clearance as certified (none: cleared for nothing).
    pub fn clearance(&self) -> Option<&Clearance> {
        self.me.clearance.as_ref()
    }

    /// Whether the user's clearance admits `label`; the reason says why (not).
    pub fn check_clearance(&self, label: &Label) -> kring_policy::Decision {
        kring_policy::decide_opt(Some(label), self.clearance())
    }

    /// Resolves a community id as typed (bare `NAME` → `NAME@<home relay>`).
    pub fn resolve_community(&self, input: &str) -> Result<String> {
        ids::resolve_community(input, &self.profile.relay_id)
    }

    /// Resolves a user id as typed (bare `NAME` → `NAME@<home relay>`).
    pub fn resolve_user(&self, input: &str) -> Result<String> {
        ids::resolve_user(input, &self.profile.relay_id)
    }

    /// The local state (notices, communities, cursors).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Connects to the home relay if not connected (or if the connection dropped).
    pub async fn connect(&mut self) -> Result<&RelayConnection> {
        if self.conn.as_ref().is_some_and(RelayConnection::is_closed) {
            self.conn = None;
        }
        if self.conn.is_none() {
            // A clear local error beats a TLS alert from the relay.
            verify_chain(
                &self.creds.chain_der(),
                &self.creds.anchors_der(),
                now_unix(),
                IdentityKind::User,
            )
            .map_err(|e| ClientError::Auth(format!("this device's certificate: {e}")))?;
            let conn = RelayConnection::connect(
                &self.creds,
                &self.profile.relay_addr,
                &self.profile.relay_id,
                self.timeouts,
            )
            .await?;
            self.authenticate_home_relay(&conn)?;
            let state = trust_state(&conn).await?;
            let changes = self.validator.trust_changes(&state);
            let warnings = self
                .validator
                .update(&state, &self.me, now_unix())
                .map_err(|e| ClientError::Auth(e.to_string()))?;
            self.conn = Some(conn);
            for change in changes {
                eprintln!("kring: warning: {change}");
                self.warn(change);
            }
            for w in warnings {
                self.warn(w);
            }
        }
        self.conn
            .as_ref()
            .ok_or_else(|| ClientError::Protocol("connection vanished".into()))
    }

    /// Checks that the relay this device reached is its home relay, certified by
    /// the user's own organisation: TLS accepted any relay certificate of the
    /// federation for the relay's name, and another organisation's CA must not be
    /// able to stand in for it.
    fn authenticate_home_relay(&self, conn: &RelayConnection) -> Result<()> {
        let own = TrustMap::from_entries([(
            self.me.home_relay.as_str(),
            RelayTrust {
                organisation: self.me.organisation.clone(),
                ca: None,
            },
        )])
        .map_err(|e| ClientError::Auth(format!("this device's certificate: {e}")))?;
        let relay = verify_chain_trusted(
            &conn.peer_chain(),
            &self.creds.anchors_der(),
            now_unix(),
            IdentityKind::Relay,
            &own,
        )
        .map_err(|e| ClientError::Auth(format!("the relay's certificate: {e}")))?;
        if relay.id() != self.profile.relay_id {
            return Err(ClientError::Auth(format!(
                "connected to relay {}, but the profile's relay is {}",
                relay.id(),
                self.profile.relay_id
            )));
        }
        Ok(())
    }

    /// Drops the connection (gracefully).
    pub async fn disconnect(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.close().await;
        }
    }

    /// Sends a request, connecting first if needed (a connection found closed is
    /// re-established); a relay refusal becomes [`ClientError::Relay`]. A request
    /// whose connection drops midway is not resent: its fate is unknown.
    pub async fn call(&mut self, request: &Request) -> Result<Response> {
        self.connect().await?.call(request).await
    }

    /// [`call`](Self::call) with its own time limit for the answer.
    pub(crate) async fn call_within(
        &mut self,
        request: &Request,
        timeout: std::time::Duration,
    ) -> Result<Response> {
        self.connect().await?.call_within(request, timeout).await
    }

    /// Hands a warning to the event sink (see [`set_event_sink`](Self::set_event_sink))
    /// and the log.
    pub(crate) fn warn(&mut self, warning: String) {
        tracing::warn!("{warning}");
        if let Some(sink) = self.event_sink.as_mut() {
            sink(&SyncEvent::Warning(warning));
        }
    }

    /// Checks the relay answers.
    pub async fn ping(&mut self) -> Result<()> {
        match self.call(&Request::Ping).await? {
            Response::Pong => Ok(()),
            other => Err(unexpected("Ping", &other)),
        }
    }

    /// Creates `count` key packages (at most [`MAX_PUBLISH`]) plus a last-resort one
    /// and uploads them; returns how many the relay now holds.
    pub async fn publish_key_packages(&mut self, count: usize) -> Result<u32> {
        if count == 0 || count > MAX_PUBLISH {
            return Err(ClientError::Usage(format!(
                "--count must be between 1 and {MAX_PUBLISH}"
            )));
        }
        self.store.begin()?;
        let made = (|| {
            let mut packages = Vec::with_capacity(count);
            for _ in 0..count {
                packages.push(mls::key_package(&self.provider, &self.signer, false)?);
            }
            let last_resort = mls::key_package(&self.provider, &self.signer, true)?;
            Ok::<_, ClientError>((packages, last_resort))
        })();
        let (key_packages, last_resort) = match made {
            Ok(v) => v,
            Err(e) => {
                self.store.rollback()?;
                return Err(e);
            }
        };
        let request = Request::PublishKeyPackages {
            key_packages,
            last_resort: Some(last_resort),
        };
        match self.call(&request).await {
            Ok(Response::KeyPackagesStored { count }) => {
                // Keep the private keys only once the relay holds the packages.
                self.store.commit(crate::store::Batch::new())?;
                Ok(count)
            }
            Ok(other) => {
                self.store.rollback()?;
                Err(unexpected("PublishKeyPackages", &other))
            }
            Err(e) => {
                self.store.rollback()?;
                Err(e)
            }
        }
    }

    /// Communities the user belongs to, as the home relay knows them.
    pub async fn list_communities(&mut self) -> Result<Vec<CommunitySummary>> {
        match self.call(&Request::ListCommunities).await? {
            Response::Communities { communities } => Ok(communities),
            other => Err(unexpected("ListCommunities", &other)),
        }
    }

    /// Members, admins, epoch and maximum label of a community (members only).
    pub async fn community_info(&mut self, community: &str) -> Result<CommunitySummary> {
        let community = self.resolve_community(community)?;
        match self
            .call(&Request::CommunityInfo {
                community: community.clone(),
            })
            .await?
        {
            Response::Community(summary) => Ok(summary),
            other => Err(unexpected("CommunityInfo", &other)),
        }
    }

    /// Loads this device's group of `community`; [`ClientError::Auth`] (exit 4) if
    /// there is none.
    pub(crate) fn load_group(&self, community: &str) -> Result<ClientGroup> {
        ClientGroup::load(&self.provider, community)?.ok_or_else(|| not_member(community))
    }

    /// Drops MLS writes buffered by an operation that was cancelled midway.
    pub(crate) fn reset_transaction(&self) -> Result<()> {
        Ok(self.store.rollback()?)
    }
}

/// The home relay's trust state with every revocation statement it holds: the
/// first page comes with `Request::Trust`, the rest page by page.
async fn trust_state(conn: &RelayConnection) -> Result<TrustState> {
    let mut state = match conn.call(&Request::Trust).await? {
        Response::Trust(state) => state,
        other => return Err(unexpected("Trust", &other)),
    };
    let mut after = state.statements.last().map(|s| s.user.clone());
    while let Some(last) = after.take() {
        let request = Request::TrustStatements {
            after: Some(last.clone()),
        };
        match conn.call(&request).await? {
            Response::TrustStatements { statements, more } => {
                let next = statements.last().map(|s| s.user.clone());
                state.statements.extend(statements);
                // Pages run in user-id order; anything else ends the paging.
                if more && next.as_ref().is_some_and(|n| *n > last) {
                    after = next;
                }
            }
            other => return Err(unexpected("TrustStatements", &other)),
        }
    }
    Ok(state)
}

/// The error for a community this device is not (or no longer) a member of.
pub(crate) fn not_member(community: &str) -> ClientError {
    ClientError::Auth(format!(
        "this device is not a member of {community}; an admin of the community must add you \
         (and you must have published key packages with `kring keys publish`)"
    ))
}

/// The error for an answer that does not fit the request.
pub(crate) fn unexpected(request: &str, response: &Response) -> ClientError {
    let name = match response {
        Response::Ok => "Ok",
        Response::KeyPackagesStored { .. } => "KeyPackagesStored",
        Response::KeyPackage { .. } => "KeyPackage",
        Response::Accepted { .. } => "Accepted",
        Response::Queued { .. } => "Queued",
        Response::Filed { .. } => "Filed",
        Response::AuditLog(_) => "AuditLog",
        Response::Communities { .. } => "Communities",
        Response::Community(_) => "Community",
        Response::Status(_) => "Status",
        Response::Pong => "Pong",
        Response::BlobProgress { .. } => "BlobProgress",
        Response::BlobChunk { .. } => "BlobChunk",
        Response::Error(_) => "Error",
        Response::Revoked { .. } => "Revoked",
        Response::Trust(_) => "Trust",
        Response::AuditHead(_) => "AuditHead",
        Response::TrustStatements { .. } => "TrustStatements",
        Response::Cursors { .. } => "Cursors",
        Response::WipeOrdered(_) => "WipeOrdered",
        Response::DeclaredClients { .. } => "DeclaredClients",
    };
    ClientError::Protocol(format!("the relay answered {request} with {name}"))
}

/// Compile-time check: the client's operations can run in spawned tasks.
#[allow(dead_code)]
fn futures_are_send(client: &mut Client) {
    fn send<T: Send>(_: T) {}
    send(client.sync());
    send(client.watch(|_| {}));
    send(client.publish_key_packages(1));
    send(client.audit_log(1, 1, false));
    send(client.audit_all(true));
    send(client.create_community("c", "TLP:GREEN"));
    send(client.add_members("c", &["u"]));
    send(client.update_keys(None));
    send(client.file_notice(crate::notice::NoticeDraft {
        community: String::new(),
        label: String::new(),
        kind: crate::notice::NoticeKind::Signal,
        category: crate::notice::Category::Other,
        title: String::new(),
        body: String::new(),
        in_reply_to: None,
        stix: None,
        attachments: Vec::new(),
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notice::{Category, NoticeDraft, NoticeKind};
    use crate::testpki::Fed;

    fn analist() -> (tempfile::TempDir, Client) {
        let dir = tempfile::tempdir().unwrap();
        let fed = Fed::new("post-a");
        let leaf = fed.user("post-a", "analist", "post-a", "NL:STG-CONFIDENTIEEL");
        let profile = fed.profile(dir.path(), "analist@post-a", "post-a", &leaf);
        let client = Client::open(&profile).unwrap();
        (dir, client)
    }

    #[test]
    fn opens_a_device_and_reads_the_clearance_from_the_certificate() {
        let (_dir, client) = analist();
        assert_eq!(client.user(), "analist@post-a");
        assert_eq!(client.relay_id(), "post-a");
        assert_eq!(
            client.clearance().unwrap().to_string(),
            "NL:STG-CONFIDENTIEEL"
        );
        let secret: Label = "NL:STG-GEHEIM".parse().unwrap();
        assert!(!client.check_clearance(&secret).allowed);
        assert_eq!(client.resolve_community("cyber").unwrap(), "cyber@post-a");
        assert!(client.notices(None).unwrap().is_empty());
    }

    #[test]
    fn a_certificate_for_someone_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fed = Fed::new("bz");
        let leaf = fed.user("bz", "liaison", "bz", "NL:STG-GEHEIM");
        let profile = fed.profile(dir.path(), "admin@bz", "bz", &leaf);
        let err = Client::open(&profile).unwrap_err();
        assert!(
            err.to_string()
                .contains("the certificate is for liaison@bz"),
            "{err}"
        );

        let relay = fed.relay("bz", "bz", "NL:STG-GEHEIM");
        let profile = fed.profile(dir.path(), "bz@bz", "bz", &relay);
        let err = Client::open(&profile).unwrap_err();
        assert!(err.to_string().contains("not a user certificate"), "{err}");
    }

    #[tokio::test]
    async fn policy_is_checked_before_anything_is_sent() {
        // The profile points at a port nobody listens on: reaching the network would
        // fail with exit 5, so exit 3 proves the refusal came first.
        let (_dir, mut client) = analist();
        let err = client
            .create_community("hoog", "NL:STG-GEHEIM")
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 3, "{err}");
        assert!(err.to_string().contains("STG-GEHEIM"), "{err}");

        let err = client
            .file_notice(NoticeDraft {
                community: "desinformatie@bz".into(),
                label: "NL:STG-GEHEIM;TLP=AMBER".into(),
                kind: NoticeKind::Signal,
                category: Category::Disinformation,
                title: "t".into(),
                body: String::new(),
                in_reply_to: None,
                stix: None,
                attachments: Vec::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 3, "{err}");

        let err = client.publish_key_packages(0).await.unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        let err = client
            .create_community("Bad Name", "TLP:GREEN")
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
    }
}
