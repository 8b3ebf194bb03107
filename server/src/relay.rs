//! The relay's request path: authenticate → decode → policy → store → ack → deliver.
//!
//! Every mutation runs inside [`Relay::write`]: one short critical section that makes
//! the decision, appends audit records and applies one atomic [`Batch`]. The caller then
//! awaits group-commit durability before acknowledging, and finally wakes the delivery
//! tasks. Decisions themselves are plain functions in [`crate::decide`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kring_policy::{Clearance, Label};
use kring_protocol::identity::{Identity, IdentityKind};
use kring_protocol::wire::{
    CommunitySummary, EntryKind, ErrorCode, LogEntry, NoticeStatus, Request, Response,
};
use tokio::sync::watch;
use uuid::Uuid;

use crate::audit::{AuditEvent, AuditHead, AuditKind};
use crate::config::{Limits, RelayConfig};
use crate::decide;
use crate::error::RelayError;
use crate::groups;
use crate::records::{CommunityRecord, MemberRecord, NoticeRecord, WelcomeRecord};
use crate::store::{Batch, Durability, Engine, get_obj, keys};

/// An authenticated peer of a connection.
#[derive(Debug)]
pub struct Caller {
    /// Identity from the certificate.
    pub identity: Identity,
    /// `NAME@RELAY` (users) or relay id.
    pub id: String,
    /// Certificate chain presented in TLS, leaf first (DER).
    pub chain: Vec<Vec<u8>>,
}

impl Caller {
    /// Wraps an authenticated identity.
    pub fn new(identity: Identity, chain: Vec<Vec<u8>>) -> Self {
        let id = identity.id();
        Self {
            identity,
            id,
            chain,
        }
    }
}

/// State only the writer touches.
#[derive(Debug)]
pub struct Writer {
    /// Audit chain head.
    pub audit: AuditHead,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Keeps a connection registered while it lives (for revocation cut-off).
#[derive(Debug)]
pub struct Registration {
    relay: Arc<Relay>,
    id: String,
    conn_id: usize,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut conns) = self.relay.conns.lock()
            && let Some(list) = conns.get_mut(&self.id)
        {
            list.retain(|(id, _)| *id != self.conn_id);
            if list.is_empty() {
                conns.remove(&self.id);
            }
        }
    }
}

/// One relay.
#[derive(Debug)]
pub struct Relay {
    id: String,
    organisation: String,
    accreditation: Clearance,
    anchors: Vec<Vec<u8>>,
    limits: Limits,
    /// The relay's own certificate chain (its MLS external-sender credential).
    pub cert_chain: Vec<Vec<u8>>,
    /// PKCS#8 of the relay key (signs external proposals).
    pub key_pkcs8: Vec<u8>,
    engine: Arc<dyn Engine>,
    durability: Durability,
    writer: Mutex<Writer>,
    changes: watch::Sender<u64>,
    conns: Mutex<HashMap<String, Vec<(usize, quinn::Connection)>>>,
    rate: Mutex<HashMap<String, Bucket>>,
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    crate::now_unix()
}

fn internal(e: impl std::fmt::Display) -> RelayError {
    RelayError::Store(e.to_string())
}

impl Relay {
    /// Opens the store and builds the relay. Must run inside a tokio runtime.
    pub fn open(config: &RelayConfig, engine: Arc<dyn Engine>) -> Result<Arc<Self>, RelayError> {
        let audit = AuditHead::load(engine.as_ref())?;
        let durability = Durability::start(engine.clone());
        let (changes, _) = watch::channel(0);
        Ok(Arc::new(Self {
            id: config.identity.name.clone(),
            organisation: config.identity.organisation.clone(),
            accreditation: config.accreditation.clone(),
            anchors: config.anchors.iter().map(|a| a.to_vec()).collect(),
            limits: config.limits.clone(),
            cert_chain: config.cert_chain.iter().map(|c| c.to_vec()).collect(),
            key_pkcs8: config.key_pkcs8.clone(),
            engine,
            durability,
            writer: Mutex::new(Writer { audit }),
            changes,
            conns: Mutex::new(HashMap::new()),
            rate: Mutex::new(HashMap::new()),
        }))
    }

    /// This relay's id.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// Effective accreditation.
    pub fn accreditation(&self) -> &Clearance {
        &self.accreditation
    }
    /// Limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
    /// The store.
    pub fn engine(&self) -> &dyn Engine {
        self.engine.as_ref()
    }
    /// Federation trust anchors (DER).
    pub fn anchors(&self) -> &[Vec<u8>] {
        &self.anchors
    }
    /// A receiver that changes whenever a log, welcome or cursor changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Flushes and stops the store (graceful shutdown).
    pub async fn shutdown(&self) -> Result<(), RelayError> {
        self.durability.stop().await
    }

    /// Checks a certificate chain presented in TLS and reads the identity from it.
    pub fn authenticate(
        &self,
        chain: &[Vec<u8>],
        expected: IdentityKind,
    ) -> Result<Identity, ErrorCode> {
        let id =
            kring_protocol::identity::verify_chain(chain, &self.anchors, now() as u64, expected)
                .map_err(|e| ErrorCode::Unauthenticated {
                    reason: e.to_string(),
                })?;
        // A user connects to their home relay only, and a relay serves only users of
        // its own organisation: another organisation's CA cannot mint users here.
        if id.kind == IdentityKind::User
            && (id.home_relay != self.id || id.organisation != self.organisation)
        {
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

    /// Registers a live client connection.
    pub fn register_connection(
        self: &Arc<Self>,
        caller: &Caller,
        conn: quinn::Connection,
    ) -> Registration {
        let conn_id = conn.stable_id();
        if let Ok(mut conns) = self.conns.lock() {
            conns
                .entry(caller.id.clone())
                .or_default()
                .push((conn_id, conn));
        }
        Registration {
            relay: self.clone(),
            id: caller.id.clone(),
            conn_id,
        }
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

    /// Runs `f` in the writer's critical section and applies the batch it fills.
    /// The effect is visible at once; call [`Relay::durable`] before acknowledging.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut Writer, &mut Batch) -> Result<T, RelayError>,
    ) -> Result<T, RelayError> {
        let mut w = self
            .writer
            .lock()
            .map_err(|_| RelayError::Store("writer lock poisoned".into()))?;
        let mut batch = Batch::default();
        match f(&mut w, &mut batch) {
            Ok(v) => {
                if !batch.is_empty()
                    && let Err(e) = self.engine.apply(batch)
                {
                    w.audit = AuditHead::load(self.engine.as_ref())?;
                    return Err(e);
                }
                Ok(v)
            }
            Err(e) => {
                // Nothing was applied: the audit head may have advanced in memory.
                w.audit = AuditHead::load(self.engine.as_ref())?;
                Err(e)
            }
        }
    }

    /// Waits until everything applied so far is on disk, then wakes delivery tasks.
    pub async fn durable(&self) -> Result<(), RelayError> {
        self.durability.wait().await?;
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
        Ok(())
    }

    /// Appends one audit record in its own batch (best effort; failures are logged).
    pub fn audit_now(&self, event: AuditEvent) {
        let r = self.write(|w, b| w.audit.append(b, now(), event));
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot write audit record");
        }
    }

    /// Audit-logs a refusal.
    pub fn audit_refusal(&self, actor: &str, subject: &str, action: &str, code: &ErrorCode) {
        self.audit_now(AuditEvent::new(
            AuditKind::Refusal,
            actor,
            subject,
            action,
            code.to_string(),
        ));
    }

    /// Handles one request; refusals come back as [`Response::Error`] and are audited.
    pub async fn handle(&self, caller: &Caller, request: Request) -> Response {
        let action = crate::net::request_kind(&request);
        let subject = request_subject(&request);
        let result = self.dispatch(caller, request).await;
        match result {
            Ok(r) => r,
            Err(e) => {
                let code = e.to_code();
                match &e {
                    RelayError::Refused(_) => {}
                    other => tracing::error!(error = %other, action, "request failed"),
                }
                if !matches!(code, ErrorCode::NotFound { .. }) {
                    self.audit_refusal(&caller.id, &subject, action, &code);
                }
                Response::Error(code)
            }
        }
    }

    async fn dispatch(&self, caller: &Caller, request: Request) -> Result<Response, RelayError> {
        match request {
            Request::Ping => Ok(Response::Pong),
            Request::PublishKeyPackages {
                key_packages,
                last_resort,
            } => {
                self.publish_key_packages(caller, key_packages, last_resort)
                    .await
            }
            Request::FetchKeyPackage { user } => self.fetch_key_package(caller, &user).await,
            Request::CreateCommunity {
                community,
                group_info,
                ratchet_tree,
            } => {
                self.create_community(caller, &community, &group_info, &ratchet_tree)
                    .await
            }
            Request::Handshake {
                community,
                message,
                welcome,
            } => self.handshake(caller, &community, &message, welcome).await,
            Request::FileNotice {
                community,
                notice_id,
                message,
            } => {
                self.file_notice(caller, &community, notice_id, message)
                    .await
            }
            Request::Ack { community, seq } => self.ack(caller, &community, seq).await,
            Request::AckWelcome { id } => {
                self.write(|_, b| {
                    b.delete(keys::welcome(&caller.id, &id));
                    Ok(())
                })?;
                self.durable().await?;
                Ok(Response::Ok)
            }
            Request::ListCommunities => self.list_communities(caller),
            Request::CommunityInfo { community } => {
                let rec = self.member_community(caller, &community)?;
                Ok(Response::Community(summary(&rec)))
            }
            Request::NoticeStatus { notice_id } => self.notice_status(caller, notice_id),
            Request::Subscribe => Err(ErrorCode::BadRequest {
                reason: "subscribe is handled on its own stream".into(),
            }
            .into()),
        }
    }

    // ----- key packages --------------------------------------------------------------

    async fn publish_key_packages(
        &self,
        caller: &Caller,
        key_packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<Response, RelayError> {
        let now_s = now() as u64;
        for kp in key_packages.iter().chain(last_resort.iter()) {
            groups::validate_key_package(kp, &caller.chain, &self.anchors, now_s).map_err(
                |reason| ErrorCode::BadRequest {
                    reason: format!("key package refused: {reason}"),
                },
            )?;
        }
        let cap = self.limits.key_packages_per_user;
        let count = self.write(|_, b| {
            let existing = self
                .engine
                .scan(&keys::key_package_prefix(&caller.id), None, cap + 1)?
                .len();
            if existing + key_packages.len() > cap {
                return Err(ErrorCode::TooLarge {
                    what: format!(
                        "{} key packages held plus {} new exceeds the cap of {cap}",
                        existing,
                        key_packages.len()
                    ),
                }
                .into());
            }
            for kp in &key_packages {
                b.put(keys::key_package(&caller.id, &Uuid::new_v4()), kp.clone());
            }
            if let Some(lr) = &last_resort {
                b.put(keys::last_resort(&caller.id), lr.clone());
            }
            Ok(existing + key_packages.len())
        })?;
        self.durable().await?;
        Ok(Response::KeyPackagesStored {
            count: count as u32,
        })
    }

    async fn fetch_key_package(&self, caller: &Caller, user: &str) -> Result<Response, RelayError> {
        let home = user.rsplit_once('@').map(|(_, r)| r).unwrap_or_default();
        if home != self.id {
            return Err(ErrorCode::NotFound {
                what: format!("{user} is not a user of relay {}", self.id),
            }
            .into());
        }
        let kp = self.write(|w, b| {
            let found = self.engine.scan(&keys::key_package_prefix(user), None, 1)?;
            let kp = if let Some((k, v)) = found.into_iter().next() {
                b.delete(k);
                v
            } else if let Some(lr) = self.engine.get(&keys::last_resort(user))? {
                lr
            } else {
                return Err(ErrorCode::KeyMaterialExhausted {
                    user: user.to_string(),
                }
                .into());
            };
            w.audit.append(
                b,
                now(),
                AuditEvent::new(
                    AuditKind::Membership,
                    &caller.id,
                    user,
                    "fetch-key-package",
                    "key package handed out",
                ),
            )?;
            Ok(kp)
        })?;
        self.durable().await?;
        Ok(Response::KeyPackage { key_package: kp })
    }

    // ----- communities ---------------------------------------------------------------

    fn community(&self, id: &str) -> Result<Option<CommunityRecord>, RelayError> {
        get_obj(self.engine.as_ref(), &keys::community(id))
    }

    fn member_community(&self, caller: &Caller, id: &str) -> Result<CommunityRecord, RelayError> {
        match self.community(id)? {
            Some(rec) if rec.members.contains(&caller.id) => Ok(rec),
            // A non-member learns nothing about whether the community exists.
            _ => Err(ErrorCode::NotMember.into()),
        }
    }

    /// The clearance that limits what a member's home relay may receive.
    fn relay_accreditation(&self, relay: &str) -> Option<Clearance> {
        if relay == self.id {
            Some(self.accreditation.clone())
        } else {
            None
        }
    }

    async fn create_community(
        &self,
        caller: &Caller,
        community: &str,
        group_info: &[u8],
        ratchet_tree: &[u8],
    ) -> Result<Response, RelayError> {
        let (name, hub) = community.rsplit_once('@').unwrap_or((community, ""));
        if hub != self.id || name.is_empty() {
            return Err(ErrorCode::BadRequest {
                reason: format!(
                    "a community created at relay {} must be named NAME@{}",
                    self.id, self.id
                ),
            }
            .into());
        }
        let seq = self.write(|w, b| {
            if self.community(community)?.is_some() {
                return Err(ErrorCode::BadRequest {
                    reason: format!("community {community} already exists"),
                }
                .into());
            }
            let overlay = groups::Overlay::new(self.engine.clone());
            let view = groups::create(
                &overlay,
                community,
                group_info,
                ratchet_tree,
                &self.anchors,
                now() as u64,
            )
            .map_err(|reason| ErrorCode::BadRequest { reason })?;
            // The group must name this relay as its external sender, and its creator
            // must be the caller, alone and admin.
            if view.hub != self.id {
                return Err(ErrorCode::BadRequest {
                    reason: format!(
                        "the group must have relay {} as its external sender",
                        self.id
                    ),
                }
                .into());
            }
            if view.members != vec![caller.id.clone()] || view.admins != vec![caller.id.clone()] {
                return Err(ErrorCode::BadRequest {
                    reason: "a new community must have its creator as only member and admin".into(),
                }
                .into());
            }
            let max_label =
                Label::from_bytes(&view.max_label).map_err(|e| ErrorCode::BadRequest {
                    reason: format!("maximum label: {e}"),
                })?;
            decide::create_community(
                &max_label,
                caller.identity.clearance.as_ref(),
                &self.accreditation,
            )?;
            let rec = CommunityRecord {
                id: community.to_string(),
                hub: self.id.clone(),
                max_label: view.max_label.clone(),
                admins: view.admins.clone(),
                members: view.members.clone(),
                epoch: view.epoch,
                last_seq: 0,
                created_by: caller.id.clone(),
                created_at: now(),
            };
            b.extend(overlay.into_batch());
            b.put_obj(keys::community(community), &rec)?;
            b.put_obj(
                keys::member(&caller.id, community),
                &MemberRecord {
                    joined_seq: 0,
                    removed_seq: None,
                },
            )?;
            w.audit.append(
                b,
                now(),
                AuditEvent::new(
                    AuditKind::Membership,
                    &caller.id,
                    community,
                    "create-community",
                    format!("maximum label {max_label}"),
                ),
            )?;
            Ok(0)
        })?;
        self.durable().await?;
        Ok(Response::Accepted { seq, epoch: 0 })
    }

    async fn handshake(
        &self,
        caller: &Caller,
        community: &str,
        message: &[u8],
        welcome: Option<Vec<u8>>,
    ) -> Result<Response, RelayError> {
        let (seq, epoch) = self.write(|w, b| {
            let mut rec = self.member_community(caller, community)?;
            let overlay = groups::Overlay::new(self.engine.clone());
            let staged = groups::process_handshake(
                &overlay,
                community,
                message,
                &self.anchors,
                now() as u64,
            )?;
            if staged.sender != caller.id {
                return Err(ErrorCode::Unauthenticated {
                    reason: format!(
                        "the handshake is signed by {} but the connection is {}",
                        staged.sender, caller.id
                    ),
                }
                .into());
            }
            let max_label = Label::from_bytes(&rec.max_label).map_err(internal)?;
            let added_clearances: Vec<(String, Option<Clearance>, Option<Clearance>)> = staged
                .added
                .iter()
                .map(|(id, clearance)| {
                    let home = id.rsplit_once('@').map(|(_, r)| r).unwrap_or_default();
                    (
                        id.clone(),
                        clearance.clone(),
                        self.relay_accreditation(home),
                    )
                })
                .collect();
            decide::commit(
                &rec,
                &caller.id,
                &max_label,
                &added_clearances,
                &staged.removed,
                &staged.removed_by_hub,
                staged.new_admins.as_deref(),
            )
            .map_err(RelayError::Refused)?;
            if !staged.added.is_empty() && welcome.is_none() {
                return Err(ErrorCode::BadRequest {
                    reason: "a commit that adds members must come with their Welcome".into(),
                }
                .into());
            }
            let epoch_before = staged.epoch;
            let added = staged.added.clone();
            let removed = staged.removed.clone();
            let new_admins = staged.new_admins.clone();
            let merged = groups::merge(&overlay, community, staged, &self.anchors, now() as u64)?;
            let seq = rec.last_seq + 1;
            let entry = LogEntry {
                community: community.to_string(),
                seq,
                sender: caller.id.clone(),
                ordered_at: now(),
                kind: EntryKind::Handshake {
                    epoch: epoch_before,
                },
                message: message.to_vec(),
            };
            b.extend(overlay.into_batch());
            b.put_obj(keys::log(community, seq), &entry)?;
            for (user, _) in &added {
                b.put_obj(
                    keys::member(user, community),
                    &MemberRecord {
                        joined_seq: seq,
                        removed_seq: None,
                    },
                )?;
                if let Some(welcome) = &welcome {
                    let id = Uuid::new_v4();
                    b.put_obj(
                        keys::welcome(user, &id),
                        &WelcomeRecord {
                            id,
                            community: community.to_string(),
                            welcome: welcome.clone(),
                            ratchet_tree: merged.ratchet_tree.clone(),
                        },
                    )?;
                }
                w.audit.append(
                    b,
                    now(),
                    AuditEvent::new(
                        AuditKind::Membership,
                        &caller.id,
                        community,
                        "add-member",
                        format!("{user} added at epoch {}", merged.epoch),
                    ),
                )?;
            }
            for user in &removed {
                let key = keys::member(user, community);
                let mut m: MemberRecord =
                    get_obj(self.engine.as_ref(), &key)?.unwrap_or(MemberRecord {
                        joined_seq: 0,
                        removed_seq: None,
                    });
                m.removed_seq = Some(seq);
                b.put_obj(key, &m)?;
                w.audit.append(
                    b,
                    now(),
                    AuditEvent::new(
                        AuditKind::Membership,
                        &caller.id,
                        community,
                        "remove-member",
                        format!("{user} removed at epoch {}", merged.epoch),
                    ),
                )?;
            }
            if let Some(admins) = &new_admins {
                w.audit.append(
                    b,
                    now(),
                    AuditEvent::new(
                        AuditKind::Admin,
                        &caller.id,
                        community,
                        "set-admins",
                        format!("admins now {}", admins.join(", ")),
                    ),
                )?;
            }
            rec.epoch = merged.epoch;
            rec.members = merged.members;
            rec.admins = merged.admins;
            rec.last_seq = seq;
            b.put_obj(keys::community(community), &rec)?;
            Ok((seq, rec.epoch))
        })?;
        self.durable().await?;
        Ok(Response::Accepted { seq, epoch })
    }

    // ----- notices -------------------------------------------------------------------

    async fn file_notice(
        &self,
        caller: &Caller,
        community: &str,
        notice_id: Uuid,
        message: Vec<u8>,
    ) -> Result<Response, RelayError> {
        let app = groups::read_application(&message).map_err(|reason| ErrorCode::BadRequest {
            reason: format!("not an MLS application message: {reason}"),
        })?;
        let (seq, epoch) = self.write(|w, b| {
            let mut rec = self.member_community(caller, community)?;
            if let Some(prev) =
                get_obj::<NoticeRecord>(self.engine.as_ref(), &keys::notice(&notice_id))?
            {
                // A retried filing gets the same answer; anything else is a replay.
                return match prev.seq {
                    Some(seq) if prev.sender == caller.id && prev.community == community => {
                        Ok((seq, rec.epoch))
                    }
                    _ => Err(ErrorCode::BadRequest {
                        reason: format!("notice {notice_id} was already filed"),
                    }
                    .into()),
                };
            }
            if app.group_id != community.as_bytes() {
                return Err(ErrorCode::BadRequest {
                    reason: "the message belongs to another group".into(),
                }
                .into());
            }
            let label = Label::from_bytes(&app.aad).map_err(|e| ErrorCode::BadRequest {
                reason: format!("the notice carries no valid label: {e}"),
            })?;
            let max = Label::from_bytes(&rec.max_label).map_err(internal)?;
            let d = decide::file_notice(
                &label,
                &max,
                caller.identity.clearance.as_ref(),
                &self.accreditation,
                app.epoch,
                rec.epoch,
            );
            if let Err(code) = d {
                return Err(code.into());
            }
            let seq = rec.last_seq + 1;
            let entry = LogEntry {
                community: community.to_string(),
                seq,
                sender: caller.id.clone(),
                ordered_at: now(),
                kind: EntryKind::Notice {
                    notice_id,
                    label: app.aad.clone(),
                    epoch: app.epoch,
                },
                message: message.clone(),
            };
            b.put_obj(keys::log(community, seq), &entry)?;
            b.put_obj(
                keys::notice(&notice_id),
                &NoticeRecord {
                    community: community.to_string(),
                    sender: caller.id.clone(),
                    seq: Some(seq),
                    refusals: Vec::new(),
                },
            )?;
            rec.last_seq = seq;
            b.put_obj(keys::community(community), &rec)?;
            let _ = w;
            Ok((seq, rec.epoch))
        })?;
        self.durable().await?;
        Ok(Response::Accepted { seq, epoch })
    }

    async fn ack(
        &self,
        caller: &Caller,
        community: &str,
        seq: u64,
    ) -> Result<Response, RelayError> {
        self.write(|_, b| {
            let key = keys::member(&caller.id, community);
            let Some(m) = get_obj::<MemberRecord>(self.engine.as_ref(), &key)? else {
                return Err(ErrorCode::NotMember.into());
            };
            let rec = self.community(community)?.ok_or(ErrorCode::NotMember)?;
            let limit = m.removed_seq.unwrap_or(rec.last_seq);
            if seq > limit {
                return Err(ErrorCode::BadRequest {
                    reason: format!("cannot acknowledge {seq}: the log ends at {limit}"),
                }
                .into());
            }
            let ckey = keys::cursor(&caller.id, community);
            let current = self.cursor_of(&caller.id, community, &m)?;
            if seq > current {
                b.put(ckey, seq.to_be_bytes().to_vec());
            }
            Ok(())
        })?;
        self.durable().await?;
        Ok(Response::Ok)
    }

    /// A device's delivery cursor: everything up to it was acknowledged.
    pub fn cursor_of(
        &self,
        device: &str,
        community: &str,
        m: &MemberRecord,
    ) -> Result<u64, RelayError> {
        let stored = match self.engine.get(&keys::cursor(device, community))? {
            Some(v) if v.len() == 8 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(&v);
                u64::from_be_bytes(a)
            }
            Some(_) => {
                return Err(RelayError::Corrupt {
                    key: format!("cursor {device} {community}"),
                    reason: "not 8 bytes".into(),
                });
            }
            None => 0,
        };
        Ok(stored.max(m.joined_seq))
    }

    fn list_communities(&self, caller: &Caller) -> Result<Response, RelayError> {
        let mut out = Vec::new();
        for (k, v) in self.engine.scan(
            &keys::member_prefix(&caller.id),
            None,
            kring_protocol::wire::limits::MAX_LIST,
        )? {
            let m: MemberRecord = crate::store::decode(&k, &v)?;
            if m.removed_seq.is_some() {
                continue;
            }
            let community =
                String::from_utf8_lossy(&k[keys::member_prefix(&caller.id).len()..]).into_owned();
            if let Some(rec) = self.community(&community)? {
                out.push(summary(&rec));
            }
        }
        Ok(Response::Communities { communities: out })
    }

    fn notice_status(&self, caller: &Caller, notice_id: Uuid) -> Result<Response, RelayError> {
        let not_found = || ErrorCode::NotFound {
            what: format!("notice {notice_id}"),
        };
        let rec: NoticeRecord =
            get_obj(self.engine.as_ref(), &keys::notice(&notice_id))?.ok_or_else(not_found)?;
        let visible = rec.sender == caller.id
            || self
                .community(&rec.community)?
                .is_some_and(|c| c.members.contains(&caller.id));
        if !visible {
            return Err(not_found().into());
        }
        Ok(Response::Status(NoticeStatus {
            notice_id,
            community: rec.community,
            seq: rec.seq,
            refusals: rec.refusals,
        }))
    }
}

/// The client-visible summary of a community record.
pub fn summary(rec: &CommunityRecord) -> CommunitySummary {
    CommunitySummary {
        id: rec.id.clone(),
        max_label: Label::from_bytes(&rec.max_label)
            .map(|l| l.to_string())
            .unwrap_or_else(|_| "(unreadable)".into()),
        epoch: rec.epoch,
        members: rec.members.clone(),
        admins: rec.admins.clone(),
        last_seq: rec.last_seq,
    }
}

fn request_subject(r: &Request) -> String {
    match r {
        Request::FetchKeyPackage { user } => user.clone(),
        Request::CreateCommunity { community, .. }
        | Request::Handshake { community, .. }
        | Request::Ack { community, .. }
        | Request::CommunityInfo { community } => community.clone(),
        Request::FileNotice {
            community,
            notice_id,
            ..
        } => format!("{community} notice {notice_id}"),
        Request::NoticeStatus { notice_id } => notice_id.to_string(),
        Request::AckWelcome { id } => id.to_string(),
        _ => "-".into(),
    }
}
