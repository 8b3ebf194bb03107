//! The core's handlers called directly: relay `bz` of a development federation,
//! its [`Core`] opened on a store in memory at a fixed time, callers and MLS
//! groups made from the users' certificates. No runtime, no socket, no disk store:
//! each refusal comes back as its typed [`ErrorCode`], and what the store holds
//! afterwards is read back. Peers' federation items are applied as the federation
//! shell applies them, built from the same certificates and groups as a peer would
//! build them (`PeerCommunity`).

use std::path::{Path, PathBuf};

use kring_protocol::identity::{IdentityKind, certificates_from_pem, verify_chain_trusted};
use kring_protocol::mls::{
    CIPHERSUITE, CertSigner, ClientGroup, CommunityMeta, GroupUpload, KRING_EXTENSION_TYPE,
    key_package, leaf_public_key, x509_credential,
};
use kring_protocol::revocation::RevocationStatement;
use kring_protocol::validator::FederationValidator;
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::{
    Capabilities, CredentialType, Extension, ExtensionType, Extensions, ExternalSender, GroupId,
    MlsGroup, MlsGroupCreateConfig, PURE_PLAINTEXT_WIRE_FORMAT_POLICY,
    RequiredCapabilitiesExtension, UnknownExtension,
};
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider as _;
use openmls_traits::signatures::Signer as _;

use super::*;
use crate::audit::AuditEvent;
use crate::core::apply::apply_once;
use crate::keyspace::federation as fed_keys;
use crate::store::MemEngine;
use kring_protocol::wire::FedItem;

mod apply;
mod recovery;
mod retention;
mod revocation;

/// The first port of the development federation (written into its configuration
/// only; nothing listens).
const BASE_PORT: u16 = 47_960;

/// The development federation, made once for every test here (encrypting its
/// users' keys takes most of a second): its files, and its users' keys once
/// decrypted.
struct Federation {
    /// When it was made (unix seconds): the time every call is made at.
    now: i64,
    /// Every file, by its path in the federation's directory.
    files: Vec<(PathBuf, Vec<u8>)>,
    /// Users' private keys (PKCS#8), by user.
    keys: Mutex<HashMap<String, Vec<u8>>>,
}

impl Federation {
    fn get() -> &'static Self {
        static MADE: std::sync::OnceLock<Federation> = std::sync::OnceLock::new();
        MADE.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let now = crate::now();
            kring_certs_dev::init_demo(dir.path(), BASE_PORT, false, now).unwrap();
            let mut files = Vec::new();
            read_files(dir.path(), dir.path(), &mut files);
            Self {
                now,
                files,
                keys: Mutex::default(),
            }
        })
    }

    /// The file at `path` in the federation's directory.
    fn file(&self, path: &Path) -> &[u8] {
        let found = self.files.iter().find(|(p, _)| p == path);
        &found.unwrap_or_else(|| panic!("no {}", path.display())).1
    }

    /// Writes every file of the federation under `dir`.
    fn write_to(&self, dir: &Path) {
        for (path, bytes) in &self.files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            write_owner_only(&path, bytes);
        }
    }

    fn chain(&self, user: &str) -> Vec<Vec<u8>> {
        let path = kring_certs_dev::user_dir(Path::new(""), user).join("user.crt");
        certificates_from_pem(self.file(&path)).unwrap()
    }

    fn relay_chain(&self, relay: &str) -> Vec<Vec<u8>> {
        let path = kring_certs_dev::relay_dir(Path::new(""), relay).join("relay.crt");
        certificates_from_pem(self.file(&path)).unwrap()
    }

    /// `user`'s private key, from the key file and the development passphrase.
    fn key(&self, user: &str) -> Vec<u8> {
        let mut keys = self.keys.lock().unwrap();
        let key = keys.entry(user.to_string()).or_insert_with(|| {
            let dir = kring_certs_dev::user_dir(Path::new(""), user);
            let pem = String::from_utf8(self.file(&dir.join("user.key")).to_vec()).unwrap();
            let passphrase = self.file(&dir.join(kring_certs_dev::PASSPHRASE_FILE));
            let passphrase = String::from_utf8(passphrase.to_vec()).unwrap();
            kring_protocol::keyfile::decrypt_pem(&pem, passphrase.trim().as_bytes())
                .unwrap()
                .to_vec()
        });
        key.clone()
    }
}

/// Every file under `dir`, by its path relative to `root`.
fn read_files(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            read_files(root, &path, out);
        } else {
            let bytes = std::fs::read(&path).unwrap();
            out.push((path.strip_prefix(root).unwrap().to_path_buf(), bytes));
        }
    }
}

/// Writes a new file readable by its owner only (as private keys must be).
fn write_owner_only(path: &Path, bytes: &[u8]) {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).unwrap().write_all(bytes).unwrap();
}

/// Relay `bz`'s core on a store in memory, with its configuration and data
/// directory in a directory of its own.
#[derive(Debug)]
struct Bz {
    core: Core,
    config: RelayConfig,
    _dir: tempfile::TempDir,
    /// The time every call is made at (unix seconds).
    now: i64,
    /// The monotonic clock's reading every call is made at.
    mono: Instant,
}

impl Bz {
    fn open() -> Self {
        Self::open_with(|_| {})
    }

    /// Opens relay `bz` with its configuration changed by `adjust` first.
    fn open_with(adjust: impl FnOnce(&mut RelayConfig)) -> Self {
        let federation = Federation::get();
        let dir = tempfile::tempdir().unwrap();
        federation.write_to(dir.path());
        let path = kring_certs_dev::relay_dir(dir.path(), "bz").join("relay.toml");
        let mut config = RelayConfig::load(&path).unwrap();
        adjust(&mut config);
        let engine = Arc::new(MemEngine::new());
        let now = federation.now;
        let core = Core::open(&config, engine, Arc::new(Metrics::new()), now).unwrap();
        Self {
            core,
            config,
            _dir: dir,
            now,
            mono: Instant::now(),
        }
    }

    /// A call made at the fixed time.
    fn cx(&self) -> Cx {
        Cx::at(self.now, self.mono)
    }

    fn chain(&self, user: &str) -> Vec<Vec<u8>> {
        Federation::get().chain(user)
    }

    fn relay_chain(&self, relay: &str) -> Vec<Vec<u8>> {
        Federation::get().relay_chain(relay)
    }

    /// `user` as a connection authenticates them (users of other relays too).
    fn caller(&self, user: &str) -> Caller {
        let chain = self.chain(user);
        let identity = verify_chain_trusted(
            &chain,
            self.core.anchors(),
            self.now as u64,
            IdentityKind::User,
            &self.config.trust,
        )
        .unwrap();
        Caller::new(identity, chain)
    }

    /// `user`'s signing key.
    fn signer(&self, user: &str) -> CertSigner {
        CertSigner::from_pkcs8(self.chain(user), &Federation::get().key(user)).unwrap()
    }

    fn validator(&self) -> FederationValidator<'_> {
        FederationValidator::new(self.core.anchors(), &self.config.trust, self.now as u64)
    }

    /// A new device of `user` with a fresh key package (one-time or last-resort).
    fn device_with_key_package(&self, user: &str, last_resort: bool) -> (Device, Vec<u8>) {
        let signer = self.signer(user);
        let provider = OpenMlsRustCrypto::default();
        let kp = key_package(&provider, &signer, last_resort).unwrap();
        let device = Device {
            user: user.to_string(),
            signer,
            provider,
            group: None,
        };
        (device, kp)
    }

    /// `user`'s key package, its private keys thrown away.
    fn key_package(&self, user: &str, last_resort: bool) -> Vec<u8> {
        self.device_with_key_package(user, last_resort).1
    }

    /// A device of `creator` with a new group for `community` (maximum `max`,
    /// admins `admins`, hubbed at the relay its name ends in), and what it uploads
    /// to the hub to create it.
    fn new_group(
        &self,
        creator: &str,
        community: &str,
        max: &str,
        admins: &[&str],
    ) -> (Device, GroupUpload) {
        let meta = CommunityMeta::new(
            community,
            label(max).to_bytes(),
            admins.iter().map(|a| a.to_string()).collect(),
        )
        .unwrap();
        let hub_chain = self.relay_chain(home_relay(community));
        let hub_key = leaf_public_key(&hub_chain[0]).unwrap();
        let signer = self.signer(creator);
        let provider = OpenMlsRustCrypto::default();
        let (group, upload) = ClientGroup::create(
            &provider,
            &signer,
            &self.validator(),
            &meta,
            &hub_chain,
            &hub_key,
        )
        .unwrap();
        let device = Device {
            user: creator.to_string(),
            signer,
            provider,
            group: Some(group),
        };
        (device, upload)
    }

    /// `caller` uploads `upload` to create `community`; the answer and the call's
    /// record.
    fn create_as(
        &self,
        caller: &str,
        community: &str,
        upload: &GroupUpload,
    ) -> (Result<Response, RelayError>, Cx) {
        let mut cx = self.cx();
        let answer = self.core.create_community(
            &mut cx,
            &self.caller(caller),
            community,
            &upload.group_info,
            &upload.ratchet_tree,
        );
        (answer, cx)
    }

    /// [`create_as`](Self::create_as), the answer only.
    fn create_with(
        &self,
        caller: &str,
        community: &str,
        upload: &GroupUpload,
    ) -> Result<Response, RelayError> {
        self.create_as(caller, community, upload).0
    }

    /// `sender`, a user of this relay, sends `commit` (with the Welcome of the
    /// members it adds, if any) to `community`, hubbed here; the answer and the
    /// call's record.
    fn send_commit(
        &self,
        sender: &str,
        community: &str,
        commit: &[u8],
        welcome: Option<Vec<u8>>,
    ) -> (Result<Response, RelayError>, Cx) {
        let mut cx = self.cx();
        let answer = self
            .core
            .handshake_at_hub(&mut cx, sender, None, community, commit, welcome);
        (answer, cx)
    }

    /// `creator` creates `community` with maximum `max`; their device.
    fn create(&self, creator: &str, community: &str, max: &str) -> Device {
        let (device, upload) = self.new_group(creator, community, max, &[creator]);
        let created = self.create_with(creator, community, &upload).unwrap();
        assert_eq!(created, Response::Accepted { seq: 0, epoch: 0 });
        device
    }

    /// `admin` adds `user` (commit and Welcome accepted by the hub); the new
    /// member's device, joined from the Welcome.
    fn add(&self, admin: &mut Device, user: &str) -> Device {
        let (mut joiner, kp) = self.device_with_key_package(user, false);
        let out = admin.commit_adding(self, &kp);
        let community = admin.community();
        let (accepted, _) =
            self.send_commit(&admin.user, &community, &out.commit, out.welcome.clone());
        assert!(
            matches!(accepted, Ok(Response::Accepted { .. })),
            "{accepted:?}"
        );
        admin.commit_accepted();
        let welcome = out.welcome.unwrap();
        let group = ClientGroup::join(&joiner.provider, &self.validator(), &welcome, None).unwrap();
        joiner.group = Some(group);
        joiner
    }

    /// `caller` files `notices` (id, message) into `community`; the answer and the
    /// call's record.
    fn file_as(
        &self,
        caller: &Caller,
        community: &str,
        notices: &[(Uuid, Vec<u8>)],
    ) -> (Result<Response, RelayError>, Cx) {
        let mut cx = self.cx();
        let uploads = notices
            .iter()
            .map(|(notice_id, message)| NoticeUpload {
                notice_id: *notice_id,
                message: message.clone(),
            })
            .collect();
        let answer = self.core.file_notices(&mut cx, caller, community, uploads);
        (answer, cx)
    }

    /// [`file_as`](Self::file_as) for a user as their certificate says.
    fn file(
        &self,
        user: &str,
        community: &str,
        notices: &[(Uuid, Vec<u8>)],
    ) -> (Result<Response, RelayError>, Cx) {
        self.file_as(&self.caller(user), community, notices)
    }

    fn record(&self, community: &str) -> CommunityRecord {
        self.core.community(community).unwrap().unwrap()
    }

    /// The highest seq of the community's log.
    fn last_seq(&self, community: &str) -> u64 {
        self.record(community).last_seq
    }

    /// The log entries of `community`, in order.
    fn log(&self, community: &str) -> Vec<LogEntry> {
        self.core
            .engine()
            .scan(&keys::log_prefix(community), None, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(k, v)| crate::store::decode(&k, &v).unwrap())
            .collect()
    }

    /// How many one-time key packages the store holds for `user`.
    fn key_packages_held(&self, user: &str) -> usize {
        self.core
            .engine()
            .scan(&keys::key_package_prefix(user), None, usize::MAX)
            .unwrap()
            .len()
    }

    /// `user` publishes one-time key packages `kps` and, if given, a last-resort
    /// one; the answer and the call's record.
    fn publish(
        &self,
        user: &str,
        kps: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> (Result<Response, RelayError>, Cx) {
        let mut cx = self.cx();
        let answer = self
            .core
            .publish_key_packages(&mut cx, &self.caller(user), kps, last_resort);
        (answer, cx)
    }

    /// `requester` asks for one of `user`'s key packages; the answer and the call's
    /// record.
    fn take_key_package(&self, requester: &str, user: &str) -> (Result<Response, RelayError>, Cx) {
        let mut cx = self.cx();
        let answer = self.core.take_key_package(&mut cx, requester, user);
        (answer, cx)
    }

    /// `user`'s last-resort key package, if the store holds one.
    fn last_resort_of(&self, user: &str) -> Option<Vec<u8>> {
        self.core.engine().get(&keys::last_resort(user)).unwrap()
    }

    /// The audit log as an org-admin of `bz` reads it, checked if `verify`.
    fn audit_page(&self, verify: bool) -> kring_protocol::wire::AuditPage {
        match self
            .core
            .audit_log(&self.caller("admin@bz"), 1, 1000, verify)
        {
            Ok(Response::AuditLog(page)) => page,
            other => panic!("{other:?}"),
        }
    }

    /// The audit records as an org-admin of `bz` reads them.
    fn audit(&self) -> Vec<kring_protocol::wire::AuditRecordView> {
        self.audit_page(false).records
    }

    /// Checks the whole audit chain as an org-admin's `verify` does.
    #[track_caller]
    fn assert_audit_chain_verifies(&self) {
        let verdict = self.audit_page(true).verify.unwrap();
        assert_eq!(verdict.first_bad, None, "{verdict:?}");
    }

    /// Peer `id` as this relay knows it after its link saw a certificate granting
    /// `accreditation`, lowered by configuration to `cap` if given (a reload).
    fn peer_known_as(&self, id: &str, accreditation: &str, cap: Option<&str>) {
        let mut cx = self.cx();
        self.core
            .write(&mut cx, |_, b| {
                b.put_obj(
                    crate::keyspace::federation::accreditation(id),
                    &accreditation.to_string(),
                )
            })
            .unwrap();
        let mut entry = self
            .config
            .peers
            .iter()
            .find(|p| p.id == id)
            .unwrap()
            .clone();
        entry.accreditation = cap.map(str::to_string);
        let peer = crate::federation::Peer::from_config(&entry, self.core.engine());
        self.core.insert_peer(&mut cx, &entry, peer).unwrap();
    }

    /// What `creator`'s device uploads for `community`, hubbed here by its metadata,
    /// whose group context names relay `external_sender` (or no relay) as the one
    /// allowed to propose: a group no Kring client makes.
    fn upload_with_external_sender(
        &self,
        creator: &str,
        community: &str,
        external_sender: Option<&str>,
    ) -> GroupUpload {
        let capabilities = Capabilities::new(
            None,
            Some(&[CIPHERSUITE]),
            Some(&[
                ExtensionType::Unknown(KRING_EXTENSION_TYPE),
                ExtensionType::LastResort,
            ]),
            None,
            Some(&[CredentialType::X509]),
        );
        let context = self.context_with_external_sender(creator, community, external_sender);
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .capabilities(capabilities)
            .with_group_context_extensions(context)
            .build();
        let signer = self.signer(creator);
        let provider = OpenMlsRustCrypto::default();
        let group = MlsGroup::new_with_group_id(
            &provider,
            &signer,
            &config,
            GroupId::from_slice(community.as_bytes()),
            signer.credential_with_key().unwrap(),
        )
        .unwrap();
        let group_info = group
            .export_group_info(provider.crypto(), &signer, false)
            .unwrap();
        GroupUpload {
            group_info: group_info.to_bytes().unwrap(),
            ratchet_tree: group
                .export_ratchet_tree()
                .tls_serialize_detached()
                .unwrap(),
        }
    }

    /// The group context of a Kring community `community` created by `creator`,
    /// but with `external_sender`'s relay certificate (or none) as its external
    /// sender.
    fn context_with_external_sender(
        &self,
        creator: &str,
        community: &str,
        external_sender: Option<&str>,
    ) -> Extensions<openmls::prelude::GroupContext> {
        let meta = CommunityMeta::new(
            community,
            label("NL:STG-CONFIDENTIEEL").to_bytes(),
            vec![creator.to_string()],
        )
        .unwrap();
        let mut extensions = vec![
            Extension::Unknown(
                KRING_EXTENSION_TYPE,
                UnknownExtension(meta.encode().unwrap()),
            ),
            Extension::RequiredCapabilities(RequiredCapabilitiesExtension::new(
                &[ExtensionType::Unknown(KRING_EXTENSION_TYPE)],
                &[],
                &[CredentialType::X509],
            )),
        ];
        if let Some(relay) = external_sender {
            let chain = self.relay_chain(relay);
            let key = leaf_public_key(&chain[0]).unwrap();
            let sender =
                ExternalSender::new(key.as_slice().into(), x509_credential(&chain).unwrap());
            extensions.push(Extension::ExternalSenders(vec![sender]));
        }
        Extensions::from_vec(extensions).unwrap()
    }

    /// A statement of org-admin `revoker` revoking `user`, signed now.
    fn statement(&self, revoker: &str, user: &str) -> RevocationStatement {
        let signer = self.signer(revoker);
        RevocationStatement::sign(
            self.chain(revoker),
            |bytes| signer.sign(bytes).unwrap(),
            user,
            "laptop lost",
            self.now,
        )
        .unwrap()
    }

    /// A statement of `admin@bz` revoking `user`, taken into the relay's set.
    fn revoke(&self, user: &str) {
        let statement = self.statement("admin@bz", user);
        assert!(self.core.add_revocation_statement(&statement));
    }
}

// ----- what peers deliver -------------------------------------------------------------

impl Bz {
    /// Applies `items` from peer `peer` as the federation shell does: in one write,
    /// each exactly once after the last one applied. The last item applied and the
    /// call's record.
    fn deliver(&self, peer: &str, items: Vec<FedItem>) -> (Result<u64, RelayError>, Cx) {
        let mut cx = self.cx();
        let applied = self.core.write(&mut cx, |w, b| {
            let mut upto = b
                .get_obj::<u64>(self.core.engine(), &fed_keys::applied(peer))?
                .unwrap_or(0);
            for item in items {
                upto = apply_once(&self.core, w, b, peer, upto, item)?;
            }
            Ok(upto)
        });
        (applied, cx)
    }

    /// Delivers `body` from `peer` as the item after the last one applied, which
    /// the relay takes or refuses but never fails on: the applied mark moves past
    /// it either way. The call's record.
    #[track_caller]
    fn receive(&self, peer: &str, body: FedBody) -> Cx {
        let seq = self.applied(peer) + 1;
        let (applied, cx) = self.deliver(peer, vec![FedItem { seq, body }]);
        assert_eq!(applied.unwrap(), seq);
        assert_eq!(self.applied(peer), seq);
        cx
    }

    /// [`receive`](Self::receive) of an item the relay refuses: exactly one more
    /// `federation-item` refusal of `peer`, about `subject` and saying `says`, is
    /// audited.
    #[track_caller]
    fn receive_refused(&self, peer: &str, body: FedBody, subject: &str, says: &str) -> Cx {
        let before = self.item_refusals(peer).len();
        let cx = self.receive(peer, body);
        let refusals = self.item_refusals(peer);
        assert_eq!(refusals.len(), before + 1, "{refusals:#?}");
        let (about, detail) = refusals.last().unwrap();
        assert_eq!(about, subject);
        assert!(
            detail.contains(says),
            "expected a refusal saying {says:?}, got {detail:?}"
        );
        cx
    }

    /// The last item of `peer`'s outbox this relay applied.
    fn applied(&self, peer: &str) -> u64 {
        get_obj::<u64>(self.core.engine(), &fed_keys::applied(peer))
            .unwrap()
            .unwrap_or(0)
    }

    /// Every audit record's event, oldest first, as the store holds them.
    fn audited(&self) -> Vec<AuditEvent> {
        self.core
            .engine()
            .scan(keys::AUDIT, None, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(k, v)| crate::store::decode::<crate::audit::AuditRecord>(&k, &v).unwrap())
            .map(|r| r.event)
            .collect()
    }

    /// The audited events of `action`, oldest first.
    fn audited_as(&self, action: &str) -> Vec<AuditEvent> {
        let mut events = self.audited();
        events.retain(|e| e.action == action);
        events
    }

    /// The audited refusals of `peer`'s federation items: (subject, detail).
    fn item_refusals(&self, peer: &str) -> Vec<(String, String)> {
        self.audited_as("federation-item")
            .into_iter()
            .filter(|e| e.kind == AuditKind::Refusal && e.actor == peer)
            .map(|e| (e.subject, e.detail))
            .collect()
    }

    /// Everything the store holds but the audit log and the applied marks: what an
    /// item changed if this differs before and after it.
    fn state(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut pairs = self.core.engine().scan(b"", None, usize::MAX).unwrap();
        pairs.retain(|(k, _)| {
            ![crate::keyspace::AUDIT, crate::keyspace::APPLIED]
                .iter()
                .any(|ns| k.starts_with(ns))
        });
        pairs
    }

    /// Writes `value` under `key` in a write of its own (a record as another part
    /// of the relay leaves it).
    fn put_obj<T: serde::Serialize>(&self, key: Vec<u8>, value: &T) {
        let mut cx = self.cx();
        self.core
            .write(&mut cx, |_, b| b.put_obj(key, value))
            .unwrap();
    }

    /// Writes the bytes `value` under `key` in a write of its own (a damaged
    /// record, say).
    fn put(&self, key: Vec<u8>, value: Vec<u8>) {
        let mut cx = self.cx();
        self.core
            .write(&mut cx, |_, b| {
                b.put(key, value);
                Ok(())
            })
            .unwrap();
    }

    /// What the store holds of notice `id`.
    fn notice_record(&self, id: Uuid) -> Option<NoticeRecord> {
        get_obj(self.core.engine(), &keys::notice(&id)).unwrap()
    }
}

/// A community hubbed at a peer, as that hub orders it, without the hub's relay:
/// its creator's device (which makes its commits and notices) and the community
/// as the hub holds it. What the hub sends this relay is built from it.
struct PeerCommunity {
    device: Device,
    max: String,
    members: Vec<String>,
    /// The epoch after the last commit the hub ordered.
    epoch: u64,
    /// The last seq the hub ordered.
    seq: u64,
    /// When the hub orders (unix seconds).
    now: i64,
}

impl PeerCommunity {
    /// `creator`, a user of the hub `home_relay(community)`, creates `community`
    /// with maximum `max`.
    fn create(bz: &Bz, creator: &str, community: &str, max: &str) -> Self {
        let (device, _) = bz.new_group(creator, community, max, &[creator]);
        Self {
            device,
            max: max.to_string(),
            members: vec![creator.to_string()],
            epoch: 0,
            seq: 0,
            now: bz.now,
        }
    }

    /// `kring@nctv` (maximum NL:STG-GEHEIM) created by `liaison@nctv`, not yet
    /// known here.
    fn kring_at_nctv(bz: &Bz) -> Self {
        Self::create(bz, "liaison@nctv", "kring@nctv", "NL:STG-GEHEIM")
    }

    /// [`kring_at_nctv`](Self::kring_at_nctv), whose creator adds `liaison@bz`: the
    /// community and the entry of that commit, not yet sent here.
    fn adding_liaison_at_bz(bz: &Bz) -> (Self, LogEntry) {
        let mut community = Self::kring_at_nctv(bz);
        let (entry, _) = community.commit_adding(bz, "liaison@bz");
        (community, entry)
    }

    /// [`adding_liaison_at_bz`](Self::adding_liaison_at_bz), with hub nctv's entry
    /// of the commit applied here, registering the community.
    fn registered(bz: &Bz) -> Self {
        let (community, entry) = Self::adding_liaison_at_bz(bz);
        bz.receive("nctv", community.as_entry(entry));
        let rec = bz.record("kring@nctv");
        assert_eq!((rec.hub.as_str(), rec.epoch, rec.last_seq), ("nctv", 1, 1));
        community
    }

    fn id(&self) -> String {
        self.device.community()
    }

    /// The community as the hub says it stands.
    fn summary(&self) -> CommunitySummary {
        CommunitySummary {
            id: self.id(),
            max_label: self.max.clone(),
            epoch: self.epoch,
            members: self.members.clone(),
            admins: vec![self.device.user.clone()],
            last_seq: self.seq,
        }
    }

    /// The next entry of the log, sent by the creator.
    fn next_entry(&mut self, kind: EntryKind, message: Vec<u8>) -> LogEntry {
        self.seq += 1;
        LogEntry {
            community: self.id(),
            seq: self.seq,
            sender: self.device.user.clone(),
            ordered_at: self.now,
            kind,
            message,
        }
    }

    /// A commit of the creator adding `user`, ordered next: its entry and the
    /// Welcome.
    fn commit_adding(&mut self, bz: &Bz, user: &str) -> (LogEntry, Vec<u8>) {
        let kp = bz.key_package(user, false);
        let out = self.device.commit_adding(bz, &kp);
        self.device.commit_accepted();
        self.members.push(user.to_string());
        let entry = self.next_entry(EntryKind::Handshake { epoch: self.epoch }, out.commit);
        self.epoch += 1;
        (entry, out.welcome.unwrap())
    }

    /// A commit of the creator updating their own leaf, ordered next.
    fn self_update(&mut self, bz: &Bz) -> LogEntry {
        let out = self.device.self_update(bz);
        self.device.commit_accepted();
        let entry = self.next_entry(EntryKind::Handshake { epoch: self.epoch }, out.commit);
        self.epoch += 1;
        entry
    }

    /// A notice of the creator carrying `aad` as its label, ordered next.
    fn notice_with_aad(&mut self, id: Uuid, aad: Vec<u8>) -> LogEntry {
        let message = self.device.message_with_aad(&aad);
        let epoch = self.device.epoch();
        let kind = EntryKind::Notice {
            notice_id: id,
            label: aad,
            epoch,
        };
        self.next_entry(kind, message)
    }

    /// A notice of the creator labelled `text`, ordered next.
    fn notice(&mut self, id: Uuid, text: &str) -> LogEntry {
        self.notice_with_aad(id, NoticeAad::plain(label(text)).to_bytes())
    }

    /// What the hub sends for `entry` with the community as it stands after it.
    fn as_entry(&self, entry: LogEntry) -> FedBody {
        FedBody::Entry {
            community: self.summary(),
            seq: entry.seq,
            entry: Some(entry),
        }
    }

    /// What the hub sends for `entry`, a notice.
    fn as_notice_entry(&self, entry: LogEntry) -> FedBody {
        FedBody::NoticeEntry {
            community: self.id(),
            seq: entry.seq,
            entry: Some(entry),
        }
    }
}

/// A member's device: its signing key, its MLS state and its group of one
/// community once it has one.
struct Device {
    user: String,
    signer: CertSigner,
    provider: OpenMlsRustCrypto,
    group: Option<ClientGroup>,
}

impl Device {
    /// The hub took the device's pending commit.
    fn commit_accepted(&mut self) {
        let group = self.group.as_mut().unwrap();
        group.commit_accepted(&self.provider).unwrap();
    }

    /// The hub refused the device's pending commit.
    fn commit_refused(&mut self) {
        let group = self.group.as_mut().unwrap();
        group.commit_refused(&self.provider).unwrap();
    }

    fn community(&self) -> String {
        self.group.as_ref().unwrap().community_id()
    }

    fn epoch(&self) -> u64 {
        self.group.as_ref().unwrap().epoch()
    }

    /// An application message carrying `aad` as its authenticated data.
    fn message_with_aad(&mut self, aad: &[u8]) -> Vec<u8> {
        let group = self.group.as_mut().unwrap();
        group
            .encrypt(&self.provider, &self.signer, aad, b"{}")
            .unwrap()
    }

    /// A notice labelled `text`, encrypted in the device's current epoch.
    fn notice(&mut self, text: &str) -> Vec<u8> {
        self.message_with_aad(&NoticeAad::plain(label(text)).to_bytes())
    }

    /// A commit adding the owner of `kp`, pending at the device.
    fn commit_adding(&mut self, bz: &Bz, kp: &[u8]) -> kring_protocol::mls::CommitOutput {
        let group = self.group.as_mut().unwrap();
        group
            .add_members(
                &self.provider,
                &self.signer,
                &bz.validator(),
                &[kp.to_vec()],
            )
            .unwrap()
    }

    /// A commit updating the device's own leaf, pending at the device.
    fn self_update(&mut self, bz: &Bz) -> kring_protocol::mls::CommitOutput {
        let group = self.group.as_mut().unwrap();
        group
            .self_update(&self.provider, &self.signer, &bz.validator())
            .unwrap()
    }
}

fn label(text: &str) -> Label {
    text.parse().unwrap()
}

/// The code of a refusal (anything else fails the test).
#[track_caller]
fn refused<T: std::fmt::Debug>(result: Result<T, RelayError>) -> ErrorCode {
    match result {
        Err(RelayError::Refused(code)) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[track_caller]
fn assert_bad_request(code: &ErrorCode, says: &str) {
    assert!(
        matches!(code, ErrorCode::BadRequest { reason } if reason.contains(says)),
        "expected a bad request saying {says:?}, got {code:?}"
    );
}

#[track_caller]
fn assert_policy_denied(code: &ErrorCode, says: &str) {
    assert!(
        matches!(code, ErrorCode::PolicyDenied { reason } if reason.contains(says)),
        "expected a policy refusal saying {says:?}, got {code:?}"
    );
}

#[track_caller]
fn assert_unauthenticated(code: &ErrorCode, says: &str) {
    assert!(
        matches!(code, ErrorCode::Unauthenticated { reason } if reason.contains(says)),
        "expected an authentication refusal saying {says:?}, got {code:?}"
    );
}

/// A key package fetch refused until the hour is over, having written nothing.
#[track_caller]
fn assert_refused_for_an_hour((answer, cx): (Result<Response, RelayError>, Cx)) {
    assert_eq!(
        refused(answer),
        ErrorCode::RateLimited {
            retry_after_ms: 3_600_000
        }
    );
    assert_eq!(cx.wrote, 0);
}

/// The seqs of an accepted filing.
#[track_caller]
fn filed_seqs(answer: Result<Response, RelayError>) -> Vec<Option<u64>> {
    match answer {
        Ok(Response::Filed { seqs, .. }) => seqs,
        other => panic!("expected a filing, got {other:?}"),
    }
}

// ----- filing -----------------------------------------------------------------------

#[test]
fn a_filing_that_is_no_mls_application_message_is_refused_before_anything_is_written() {
    let bz = Bz::open();
    let mut liaison = bz.create("liaison@bz", "kring@bz", "NL:STG-GEHEIM");
    let good = liaison.notice("NL:STG-CONFIDENTIEEL");

    let (answer, cx) = bz.file(
        "liaison@bz",
        "kring@bz",
        &[(Uuid::from_u128(1), vec![0; 64])],
    );
    assert_bad_request(&refused(answer), "not an MLS application message");
    assert_eq!(cx.wrote, 0);

    // One bad notice refuses the whole filing, and is named when there are several.
    let bad = Uuid::from_u128(3);
    let (answer, cx) = bz.file(
        "liaison@bz",
        "kring@bz",
        &[(Uuid::from_u128(2), good), (bad, b"garbage".to_vec())],
    );
    let code = refused(answer);
    assert_bad_request(
        &code,
        &format!("notice {bad}: not an MLS application message"),
    );
    assert_eq!(cx.wrote, 0);

    // A commit is an MLS message, but no application message.
    let commit = liaison.self_update(&bz).commit;
    let (answer, _) = bz.file("liaison@bz", "kring@bz", &[(Uuid::from_u128(4), commit)]);
    assert_bad_request(&refused(answer), "not an MLS PrivateMessage");
    assert_eq!(bz.last_seq("kring@bz"), 0);
    assert!(bz.log("kring@bz").is_empty());
}

#[test]
fn a_notice_id_given_twice_in_one_filing_refuses_the_whole_filing() {
    let bz = Bz::open();
    let mut liaison = bz.create("liaison@bz", "kring@bz", "NL:STG-GEHEIM");
    let id = Uuid::from_u128(7);
    let first = liaison.notice("NL:STG-CONFIDENTIEEL");
    let second = liaison.notice("NL:STG-CONFIDENTIEEL");
    let (answer, cx) = bz.file(
        "liaison@bz",
        "kring@bz",
        &[(id, first.clone()), (id, second)],
    );
    assert_bad_request(
        &refused(answer),
        &format!("notice {id} appears twice in one filing"),
    );
    assert_eq!(cx.wrote, 0);
    assert!(bz.log("kring@bz").is_empty());

    // Alone, the first is accepted and written.
    let (answer, cx) = bz.file("liaison@bz", "kring@bz", &[(id, first)]);
    assert_eq!(filed_seqs(answer), vec![Some(1)]);
    assert!(cx.wrote > 0);
    assert_eq!(bz.log("kring@bz").len(), 1);
}

#[test]
fn a_non_member_cannot_file_and_learns_nothing_of_whether_the_community_exists() {
    let bz = Bz::open();
    let mut liaison = bz.create("liaison@bz", "kring@bz", "NL:STG-GEHEIM");
    let message = liaison.notice("NL:STG-CONFIDENTIEEL");
    let notice = [(Uuid::from_u128(1), message)];
    let (answer, cx) = bz.file("admin@bz", "kring@bz", &notice);
    assert_eq!(refused(answer), ErrorCode::NotMember);
    assert_eq!(cx.wrote, 0);
    let (answer, _) = bz.file("admin@bz", "nergens@bz", &notice);
    assert_eq!(refused(answer), ErrorCode::NotMember);
    assert!(bz.log("kring@bz").is_empty());
}

#[test]
fn a_notice_encrypted_in_another_epoch_than_the_communitys_is_refused() {
    let bz = Bz::open();
    let mut liaison = bz.create("liaison@bz", "kring@bz", "NL:STG-GEHEIM");
    let stale = liaison.notice("NL:STG-CONFIDENTIEEL");
    let update = liaison.self_update(&bz);
    let (accepted, _) = bz.send_commit("liaison@bz", "kring@bz", &update.commit, None);
    assert_eq!(accepted.unwrap(), Response::Accepted { seq: 1, epoch: 1 });
    liaison.commit_accepted();

    // Encrypted before the commit was ordered: the device must sync and encrypt again.
    let (answer, cx) = bz.file("liaison@bz", "kring@bz", &[(Uuid::from_u128(1), stale)]);
    assert_eq!(refused(answer), ErrorCode::WrongEpoch { current: 1 });
    assert_eq!(cx.wrote, 0);

    // An epoch the hub never started (a commit it was never sent) is refused too.
    let _ = liaison.self_update(&bz);
    liaison.commit_accepted();
    assert_eq!(liaison.epoch(), 2);
    let ahead = liaison.notice("NL:STG-CONFIDENTIEEL");
    let (answer, _) = bz.file("liaison@bz", "kring@bz", &[(Uuid::from_u128(2), ahead)]);
    assert_eq!(refused(answer), ErrorCode::WrongEpoch { current: 1 });
    assert_eq!(bz.last_seq("kring@bz"), 1);
}

#[test]
fn a_message_of_another_group_is_refused() {
    let bz = Bz::open();
    bz.create("liaison@bz", "kring@bz", "NL:STG-GEHEIM");
    let mut other = bz.create("liaison@bz", "ander@bz", "NL:STG-GEHEIM");
    let message = other.notice("NL:STG-CONFIDENTIEEL");
    let (answer, cx) = bz.file("liaison@bz", "kring@bz", &[(Uuid::from_u128(1), message)]);
    assert_bad_request(&refused(answer), "the message belongs to another group");
    assert_eq!(cx.wrote, 0);
    assert!(bz.log("kring@bz").is_empty());
    assert!(bz.log("ander@bz").is_empty());
}

#[test]
fn a_notice_without_a_valid_label_is_refused() {
    let bz = Bz::open();
    let mut liaison = bz.create("liaison@bz", "kring@bz", "NL:STG-GEHEIM");
    for aad in [Vec::new(), vec![0xff; 16]] {
        let message = liaison.message_with_aad(&aad);
        let (answer, cx) = bz.file("liaison@bz", "kring@bz", &[(Uuid::new_v4(), message)]);
        assert_bad_request(&refused(answer), "the notice carries no valid label");
        assert_eq!(cx.wrote, 0);
    }
    assert!(bz.log("kring@bz").is_empty());
}

#[test]
fn a_label_above_the_communitys_maximum_is_refused() {
    let bz = Bz::open();
    let mut liaison = bz.create("liaison@bz", "kring@bz", "NL:STG-CONFIDENTIEEL");
    let message = liaison.notice("NL:STG-GEHEIM");
    let (answer, cx) = bz.file("liaison@bz", "kring@bz", &[(Uuid::from_u128(1), message)]);
    assert_policy_denied(&refused(answer), "is not within the community's maximum");
    assert_eq!(cx.wrote, 0);
    assert!(bz.log("kring@bz").is_empty());
}

#[test]
fn a_label_above_the_filers_current_clearance_is_refused() {
    let bz = Bz::open();
    let mut liaison = bz.create("liaison@bz", "kring@bz", "NL:STG-GEHEIM");
    // The member's certificate now grants less than when they joined.
    let mut lowered = bz.caller("liaison@bz");
    lowered.identity.clearance = Some("NL:DEP-VERTROUWELIJK".parse().unwrap());
    let message = liaison.notice("NL:STG-CONFIDENTIEEL");
    let (answer, cx) = bz.file_as(&lowered, "kring@bz", &[(Uuid::from_u128(1), message)]);
    assert_policy_denied(&refused(answer), "sender's clearance");
    assert_eq!(cx.wrote, 0);

    let mut uncleared = bz.caller("liaison@bz");
    uncleared.identity.clearance = None;
    let message = liaison.notice("NL:STG-CONFIDENTIEEL");
    let (answer, _) = bz.file_as(&uncleared, "kring@bz", &[(Uuid::from_u128(2), message)]);
    assert_policy_denied(
        &refused(answer),
        "the sender's certificate carries no clearance",
    );
    assert!(bz.log("kring@bz").is_empty());

    // Within the lowered clearance it is accepted.
    let message = liaison.notice("NL:DEP-VERTROUWELIJK");
    let (answer, _) = bz.file_as(&lowered, "kring@bz", &[(Uuid::from_u128(3), message)]);
    assert_eq!(filed_seqs(answer), vec![Some(1)]);
}

#[test]
fn a_label_above_the_relays_accreditation_is_refused() {
    let mut bz = Bz::open();
    let mut liaison = bz.create("liaison@bz", "kring@bz", "NL:STG-GEHEIM");
    // A reload lowers the relay's accreditation below the community's maximum.
    bz.config.accreditation = "NL:STG-CONFIDENTIEEL".parse().unwrap();
    bz.core.set_accreditation(&bz.config);
    let message = liaison.notice("NL:STG-GEHEIM");
    let (answer, cx) = bz.file("liaison@bz", "kring@bz", &[(Uuid::from_u128(1), message)]);
    assert_policy_denied(&refused(answer), "relay accreditation");
    assert_eq!(cx.wrote, 0);
    assert!(bz.log("kring@bz").is_empty());

    let message = liaison.notice("NL:STG-CONFIDENTIEEL");
    let (answer, _) = bz.file("liaison@bz", "kring@bz", &[(Uuid::from_u128(2), message)]);
    assert_eq!(filed_seqs(answer), vec![Some(1)]);
}

#[test]
fn a_notice_id_already_filed_is_refused_as_a_replay_to_anyone_else_and_elsewhere() {
    let bz = Bz::open();
    let mut liaison = bz.create("liaison@bz", "kring@bz", "NL:STG-GEHEIM");
    bz.add(&mut liaison, "admin@bz");
    let id = Uuid::from_u128(11);
    let message = liaison.notice("NL:STG-CONFIDENTIEEL");
    let (answer, _) = bz.file("liaison@bz", "kring@bz", &[(id, message.clone())]);
    assert_eq!(filed_seqs(answer), vec![Some(2)]);

    // Another member sending the same filing again.
    let (answer, cx) = bz.file("admin@bz", "kring@bz", &[(id, message)]);
    assert_bad_request(&refused(answer), &format!("notice {id} was already filed"));
    assert_eq!(cx.wrote, 0);

    // The filer reusing the id in another community.
    let mut other = bz.create("liaison@bz", "ander@bz", "NL:STG-GEHEIM");
    let elsewhere = other.notice("NL:STG-CONFIDENTIEEL");
    let (answer, _) = bz.file("liaison@bz", "ander@bz", &[(id, elsewhere)]);
    assert_bad_request(&refused(answer), "was already filed");
    assert_eq!(bz.last_seq("kring@bz"), 2);
    assert!(bz.log("ander@bz").is_empty());
}

#[test]
fn a_retried_filing_gets_the_same_answer_and_writes_nothing_again() {
    let bz = Bz::open();
    let mut liaison = bz.create("liaison@bz", "kring@bz", "NL:STG-GEHEIM");
    let id = Uuid::from_u128(5);
    let message = liaison.notice("NL:STG-CONFIDENTIEEL");
    let (first, cx) = bz.file("liaison@bz", "kring@bz", &[(id, message.clone())]);
    let first = first.unwrap();
    assert_eq!(
        first,
        Response::Filed {
            hub: "bz".into(),
            epoch: 0,
            seqs: vec![Some(1)]
        }
    );
    assert!(cx.wrote > 0);
    let first_write = cx.wrote;
    let (again, cx) = bz.file("liaison@bz", "kring@bz", &[(id, message.clone())]);
    assert_eq!(again.unwrap(), first);
    assert_eq!(cx.wrote, 0);
    // The same answer rests on the first filing's batch: the shell makes it durable
    // before answering again.
    assert!(cx.depends_on >= first_write, "{cx:?}");
    // The single-notice request says the same.
    let mut cx = bz.cx();
    let single = bz
        .core
        .file_notice(&mut cx, &bz.caller("liaison@bz"), "kring@bz", id, message)
        .unwrap();
    assert_eq!(single, Response::Accepted { seq: 1, epoch: 0 });
    assert_eq!(cx.wrote, 0);
    assert_eq!(bz.log("kring@bz").len(), 1);
}

// ----- ordering at the hub ----------------------------------------------------------

#[test]
fn the_hub_orders_no_notice_of_a_non_member_or_a_revoked_sender() {
    let bz = Bz::open();
    let mut liaison = bz.create("liaison@bz", "kring@bz", "NL:STG-GEHEIM");
    let message = liaison.notice("NL:STG-CONFIDENTIEEL");
    let order = |rec: &mut CommunityRecord, sender: &str| {
        let mut cx = bz.cx();
        let app = groups::read_application(&message).unwrap();
        let clearance: Clearance = "NL:STG-GEHEIM".parse().unwrap();
        let ordered = bz.core.write(&mut cx, |w, b| {
            bz.core.order_notice(
                w,
                b,
                rec,
                sender,
                Some(&clearance),
                None,
                Uuid::from_u128(1),
                app,
                message.clone(),
            )
        });
        (ordered, cx)
    };

    let mut rec = bz.record("kring@bz");
    let (ordered, cx) = order(&mut rec, "admin@bz");
    assert_eq!(refused(ordered), ErrorCode::NotMember);
    assert_eq!(cx.wrote, 0);
    // A record of a community hubbed elsewhere is not ordered here.
    let mut elsewhere = bz.record("kring@bz");
    elsewhere.hub = "nctv".into();
    let (ordered, _) = order(&mut elsewhere, "liaison@bz");
    assert_eq!(refused(ordered), ErrorCode::NotMember);

    bz.revoke("liaison@bz");
    let (ordered, cx) = order(&mut rec, "liaison@bz");
    assert_eq!(refused(ordered), ErrorCode::Revoked);
    assert_eq!(cx.wrote, 0);
    // A filing of the revoked member meets the same refusal.
    let (answer, _) = bz.file(
        "liaison@bz",
        "kring@bz",
        &[(Uuid::from_u128(2), message.clone())],
    );
    assert_eq!(refused(answer), ErrorCode::Revoked);
    assert_eq!(rec.last_seq, 0);
    assert!(bz.log("kring@bz").is_empty());
}

// ----- community creation ------------------------------------------------------------

#[test]
fn a_community_created_here_must_be_named_after_this_relay() {
    let bz = Bz::open();
    let (_, upload) = bz.new_group("liaison@bz", "kring@bz", "NL:STG-GEHEIM", &["liaison@bz"]);
    for name in ["kring@nctv", "@bz", "kring"] {
        let (answer, cx) = bz.create_as("liaison@bz", name, &upload);
        assert_bad_request(
            &refused(answer),
            "a community created at relay bz must be named NAME@bz",
        );
        assert_eq!(cx.wrote, 0);
        assert_eq!(bz.core.community(name).unwrap(), None);
    }
    // The group of kring@bz is not taken for a community of another name either.
    let answer = bz.create_with("liaison@bz", "ander@bz", &upload);
    assert_bad_request(
        &refused(answer),
        "message belongs to group \"kring@bz\", not to \"ander@bz\"",
    );
    assert_eq!(bz.core.community("ander@bz").unwrap(), None);
}

#[test]
fn a_community_is_created_once() {
    let bz = Bz::open();
    let (_, upload) = bz.new_group("liaison@bz", "kring@bz", "NL:STG-GEHEIM", &["liaison@bz"]);
    let (created, cx) = bz.create_as("liaison@bz", "kring@bz", &upload);
    assert_eq!(created.unwrap(), Response::Accepted { seq: 0, epoch: 0 });
    assert!(cx.wrote > 0);
    let rec = bz.record("kring@bz");
    assert_eq!(rec.members, vec!["liaison@bz".to_string()]);
    assert_eq!(rec.admins, vec!["liaison@bz".to_string()]);
    assert_eq!(rec.created_by, "liaison@bz");
    assert!(
        get_obj::<MemberRecord>(bz.core.engine(), &keys::member("liaison@bz", "kring@bz"))
            .unwrap()
            .is_some()
    );

    let (_, again) = bz.new_group(
        "liaison@bz",
        "kring@bz",
        "NL:STG-CONFIDENTIEEL",
        &["liaison@bz"],
    );
    let (answer, cx) = bz.create_as("liaison@bz", "kring@bz", &again);
    assert_bad_request(&refused(answer), "community kring@bz already exists");
    assert_eq!(cx.wrote, 0);
    assert_eq!(bz.record("kring@bz"), rec);
}

#[test]
fn a_community_above_the_creators_clearance_or_the_hubs_accreditation_is_not_created() {
    let mut bz = Bz::open();
    let (_, upload) = bz.new_group(
        "liaison@bz",
        "hoog@bz",
        "NL:STG-ZEER-GEHEIM",
        &["liaison@bz"],
    );
    let (answer, cx) = bz.create_as("liaison@bz", "hoog@bz", &upload);
    assert_policy_denied(&refused(answer), "creator's clearance");
    assert_eq!(cx.wrote, 0);
    assert_eq!(bz.core.community("hoog@bz").unwrap(), None);

    // The creator is cleared, the relay (after a reload) is not.
    bz.config.accreditation = "NL:STG-CONFIDENTIEEL".parse().unwrap();
    bz.core.set_accreditation(&bz.config);
    let (_, upload) = bz.new_group("liaison@bz", "geheim@bz", "NL:STG-GEHEIM", &["liaison@bz"]);
    let answer = bz.create_with("liaison@bz", "geheim@bz", &upload);
    assert_policy_denied(&refused(answer), "hub relay's accreditation");
    assert_eq!(bz.core.community("geheim@bz").unwrap(), None);

    // Nothing of the refused group was kept: the name is still free.
    bz.create("liaison@bz", "hoog@bz", "NL:STG-CONFIDENTIEEL");
}

#[test]
fn a_group_that_does_not_have_this_relay_as_its_external_sender_is_refused() {
    let bz = Bz::open();
    let upload = bz.upload_with_external_sender("liaison@bz", "kring@bz", Some("nctv"));
    let (answer, cx) = bz.create_as("liaison@bz", "kring@bz", &upload);
    assert_bad_request(
        &refused(answer),
        "external sender is nctv, but the hub of kring@bz is bz",
    );
    assert_eq!(cx.wrote, 0);

    let upload = bz.upload_with_external_sender("liaison@bz", "kring@bz", None);
    let answer = bz.create_with("liaison@bz", "kring@bz", &upload);
    assert_bad_request(&refused(answer), "the hub is not an external sender");
    assert_eq!(bz.core.community("kring@bz").unwrap(), None);
    // A proper group of the same name is taken afterwards.
    bz.create("liaison@bz", "kring@bz", "NL:STG-CONFIDENTIEEL");
}

#[test]
fn a_new_community_must_have_its_creator_as_only_member_and_admin() {
    let bz = Bz::open();
    let (_, shared) = bz.new_group(
        "liaison@bz",
        "kring@bz",
        "NL:STG-GEHEIM",
        &["liaison@bz", "admin@bz"],
    );
    let (answer, cx) = bz.create_as("liaison@bz", "kring@bz", &shared);
    assert_bad_request(
        &refused(answer),
        "a new community must have its creator as only member and admin",
    );
    assert_eq!(cx.wrote, 0);

    // Someone else uploading the creator's group.
    let (_, upload) = bz.new_group("liaison@bz", "kring@bz", "NL:STG-GEHEIM", &["liaison@bz"]);
    let answer = bz.create_with("admin@bz", "kring@bz", &upload);
    assert_bad_request(&refused(answer), "its creator as only member and admin");
    assert_eq!(bz.core.community("kring@bz").unwrap(), None);
}

// ----- commits ------------------------------------------------------------------------

#[test]
fn a_commit_from_a_non_member_is_refused() {
    let bz = Bz::open();
    let mut liaison = bz.create("liaison@bz", "kring@bz", "NL:STG-GEHEIM");
    let commit = liaison.self_update(&bz).commit;
    for community in ["kring@bz", "nergens@bz"] {
        let (answer, cx) = bz.send_commit("admin@bz", community, &commit, None);
        assert_eq!(refused(answer), ErrorCode::NotMember);
        assert_eq!(cx.wrote, 0);
        assert!(cx.enforce.is_empty());
    }
    assert_eq!(bz.record("kring@bz").epoch, 0);
}

#[test]
fn a_commit_signed_by_another_member_than_its_sender_is_refused() {
    let bz = Bz::open();
    let mut liaison = bz.create("liaison@bz", "kring@bz", "NL:STG-GEHEIM");
    bz.add(&mut liaison, "admin@bz");
    let commit = liaison.self_update(&bz).commit;
    let (answer, cx) = bz.send_commit("admin@bz", "kring@bz", &commit, None);
    assert_unauthenticated(
        &refused(answer),
        "signed by liaison@bz but was sent by admin@bz",
    );
    assert_eq!(cx.wrote, 0);
    assert!(cx.enforce.is_empty());
    assert_eq!(bz.record("kring@bz").epoch, 1);
    assert_eq!(bz.last_seq("kring@bz"), 1);
}

#[test]
fn a_commit_adding_members_without_their_welcome_is_refused() {
    let bz = Bz::open();
    let mut liaison = bz.create("liaison@bz", "kring@bz", "NL:STG-GEHEIM");
    let kp = bz.key_package("admin@bz", false);
    let out = liaison.commit_adding(&bz, &kp);
    let (answer, cx) = bz.send_commit("liaison@bz", "kring@bz", &out.commit, None);
    assert_bad_request(
        &refused(answer),
        "a commit that adds members must come with their Welcome",
    );
    assert_eq!(cx.wrote, 0);
    assert!(cx.enforce.is_empty());
    let rec = bz.record("kring@bz");
    assert_eq!((rec.epoch, rec.last_seq), (0, 0));
    assert_eq!(rec.members, vec!["liaison@bz".to_string()]);

    // The same commit with its Welcome is taken: nothing of the refusal stuck.
    let (answer, _) = bz.send_commit("liaison@bz", "kring@bz", &out.commit, out.welcome);
    assert_eq!(answer.unwrap(), Response::Accepted { seq: 1, epoch: 1 });
}

#[test]
fn a_member_not_cleared_for_the_maximum_or_homed_at_an_unknown_relay_cannot_be_added() {
    let bz = Bz::open();
    let mut liaison = bz.create("liaison@bz", "kring@bz", "NL:STG-CONFIDENTIEEL");
    let cases = [
        // Clearance NL:DEP-VERTROUWELIJK, below the maximum.
        ("attache@post-a", "cannot add attache@post-a"),
        // Cleared, but post-a's accreditation has not been seen here.
        (
            "analist@post-a",
            "cannot add analist@post-a: home relay post-a is not a known peer",
        ),
    ];
    for (user, says) in cases {
        let kp = bz.key_package(user, false);
        let out = liaison.commit_adding(&bz, &kp);
        let (answer, cx) = bz.send_commit("liaison@bz", "kring@bz", &out.commit, out.welcome);
        assert_policy_denied(&refused(answer), says);
        assert_eq!(cx.wrote, 0);
        assert!(cx.sent.is_empty());
        liaison.commit_refused();
    }
    let rec = bz.record("kring@bz");
    assert_eq!((rec.epoch, rec.members.len()), (0, 1));

    // Once post-a's certificate was seen granting enough, the cleared user is added.
    bz.peer_known_as("post-a", "NL:STG-CONFIDENTIEEL", None);
    bz.add(&mut liaison, "analist@post-a");
    assert!(
        bz.record("kring@bz")
            .members
            .contains(&"analist@post-a".to_string())
    );
}

#[test]
fn an_accepted_commit_is_written_and_asks_enforcement_to_look_at_the_community_again() {
    let bz = Bz::open();
    let mut liaison = bz.create("liaison@bz", "kring@bz", "NL:STG-GEHEIM");
    let (_, kp) = bz.device_with_key_package("admin@bz", false);
    let out = liaison.commit_adding(&bz, &kp);
    let (answer, cx) = bz.send_commit("liaison@bz", "kring@bz", &out.commit, out.welcome);
    assert_eq!(answer.unwrap(), Response::Accepted { seq: 1, epoch: 1 });
    assert!(cx.wrote > 0);
    assert_eq!(cx.enforce, vec!["kring@bz".to_string()]);
    // Both members are at this relay: nothing goes to a peer.
    assert!(cx.sent.is_empty());

    let rec = bz.record("kring@bz");
    assert_eq!((rec.epoch, rec.last_seq), (1, 1));
    assert_eq!(
        rec.members,
        vec!["liaison@bz".to_string(), "admin@bz".to_string()]
    );
    let log = bz.log("kring@bz");
    assert!(matches!(
        log.as_slice(),
        [LogEntry {
            seq: 1,
            kind: EntryKind::Handshake { epoch: 0 },
            ..
        }]
    ));
    let joined: MemberRecord = get_obj(bz.core.engine(), &keys::member("admin@bz", "kring@bz"))
        .unwrap()
        .unwrap();
    assert_eq!((joined.joined_seq, joined.removed_seq), (1, None));
    let welcomes = bz
        .core
        .engine()
        .scan(&keys::welcome_ref_prefix("admin@bz"), None, 10)
        .unwrap();
    assert_eq!(welcomes.len(), 1);
    assert!(bz.audit().iter().any(|r| r.action == "add-member"
        && r.subject == "kring@bz"
        && r.detail.starts_with("admin@bz added at epoch 1")));
}

// ----- key packages -------------------------------------------------------------------

#[test]
fn garbage_and_someone_elses_key_packages_are_not_stored() {
    let bz = Bz::open();
    let publish = |kps, last_resort| bz.publish("liaison@bz", kps, last_resort);
    let (answer, cx) = publish(vec![vec![1, 2, 3]], None);
    assert_bad_request(&refused(answer), "key package refused");
    assert_eq!(cx.wrote, 0);
    let own = bz.key_package("liaison@bz", false);
    let theirs = bz.key_package("admin@bz", false);
    let (answer, _) = publish(vec![own.clone(), theirs], None);
    assert_bad_request(
        &refused(answer),
        "the key package's credential is not the caller's own certificate",
    );
    let (answer, _) = publish(vec![own], Some(vec![0; 32]));
    assert_bad_request(&refused(answer), "key package refused");
    assert_eq!(bz.key_packages_held("liaison@bz"), 0);
    assert_eq!(bz.last_resort_of("liaison@bz"), None);
}

#[test]
fn key_packages_beyond_the_cap_are_refused_whole() {
    let bz = Bz::open_with(|config| config.limits.key_packages_per_user = 2);
    let kps = |n: usize| -> Vec<Vec<u8>> {
        (0..n)
            .map(|_| bz.key_package("liaison@bz", false))
            .collect()
    };
    let (answer, cx) = bz.publish("liaison@bz", kps(3), None);
    assert_eq!(
        refused(answer),
        ErrorCode::TooLarge {
            what: "0 key packages held plus 3 new exceeds the cap of 2".into()
        }
    );
    assert_eq!(cx.wrote, 0);
    let (answer, cx) = bz.publish("liaison@bz", kps(2), None);
    assert_eq!(answer.unwrap(), Response::KeyPackagesStored { count: 2 });
    assert!(cx.wrote > 0);
    let last_resort = Some(bz.key_package("liaison@bz", true));
    let (answer, cx) = bz.publish("liaison@bz", kps(1), last_resort);
    assert_eq!(
        refused(answer),
        ErrorCode::TooLarge {
            what: "2 key packages held plus 1 new exceeds the cap of 2".into()
        }
    );
    assert_eq!(cx.wrote, 0);
    assert_eq!(bz.key_packages_held("liaison@bz"), 2);
    // The last-resort package of the refused request was not kept either.
    assert_eq!(bz.last_resort_of("liaison@bz"), None);
}

#[test]
fn a_user_who_published_nothing_has_no_key_package_to_hand_out() {
    let bz = Bz::open();
    let (answer, cx) = bz.take_key_package("liaison@bz", "admin@bz");
    assert_eq!(
        refused(answer),
        ErrorCode::KeyMaterialExhausted {
            user: "admin@bz".into()
        }
    );
    assert_eq!(cx.wrote, 0);
}

#[test]
fn the_last_resort_key_package_is_handed_out_and_kept_once_the_one_time_ones_are_gone() {
    let bz = Bz::open();
    let one_time = bz.key_package("admin@bz", false);
    let last_resort = bz.key_package("admin@bz", true);
    let (stored, _) = bz.publish(
        "admin@bz",
        vec![one_time.clone()],
        Some(last_resort.clone()),
    );
    assert_eq!(stored.unwrap(), Response::KeyPackagesStored { count: 1 });
    let take = || {
        let (answer, cx) = bz.take_key_package("liaison@bz", "admin@bz");
        match answer {
            Ok(Response::KeyPackage { key_package }) => {
                assert!(cx.wrote > 0, "every hand-out is audited");
                key_package
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(take(), one_time);
    assert_eq!(bz.key_packages_held("admin@bz"), 0);
    assert_eq!(take(), last_resort);
    assert_eq!(take(), last_resort);
    assert_eq!(bz.last_resort_of("admin@bz"), Some(last_resort));
    let details: Vec<String> = bz
        .audit()
        .into_iter()
        .filter(|r| r.action == "fetch-key-package")
        .map(|r| r.detail)
        .collect();
    assert_eq!(details.len(), 3);
    assert!(
        details[1].contains("no one-time package left"),
        "{details:?}"
    );
}

#[test]
fn one_requester_can_neither_drain_a_users_key_packages_nor_fetch_without_limit() {
    let bz = Bz::open();
    let kps = (0..5).map(|_| bz.key_package("admin@bz", false)).collect();
    let (stored, _) = bz.publish("admin@bz", kps, None);
    assert_eq!(stored.unwrap(), Response::KeyPackagesStored { count: 5 });
    let handed_out = |requester: &str| {
        let (answer, _) = bz.take_key_package(requester, "admin@bz");
        matches!(answer, Ok(Response::KeyPackage { .. }))
    };
    let per_pair = crate::key_fetch::ONE_TIME_PER_PAIR as usize;
    for _ in 0..per_pair {
        assert!(handed_out("liaison@bz"));
    }
    // One-time packages are left, but not for this requester this hour; with no
    // last-resort package there is nothing to hand out.
    assert_refused_for_an_hour(bz.take_key_package("liaison@bz", "admin@bz"));
    assert_eq!(bz.key_packages_held("admin@bz"), 5 - per_pair);
    // Another requester still gets one.
    assert!(handed_out("analist@post-a"));

    // With a last-resort package every fetch is answered, up to the cap per pair.
    let last_resort = Some(bz.key_package("admin@bz", true));
    let (stored, _) = bz.publish("admin@bz", Vec::new(), last_resort);
    assert!(stored.is_ok(), "{stored:?}");
    let fetched = per_pair + 1;
    for _ in fetched..crate::key_fetch::FETCHES_PER_PAIR as usize {
        assert!(handed_out("liaison@bz"));
    }
    assert_refused_for_an_hour(bz.take_key_package("liaison@bz", "admin@bz"));
}

#[test]
fn a_revoked_users_key_packages_are_not_handed_out() {
    let bz = Bz::open();
    let kp = bz.key_package("liaison@bz", false);
    let (stored, _) = bz.publish("liaison@bz", vec![kp], None);
    assert!(stored.is_ok(), "{stored:?}");
    bz.revoke("liaison@bz");
    let (answer, cx) = bz.take_key_package("admin@bz", "liaison@bz");
    assert_eq!(refused(answer), ErrorCode::Revoked);
    assert_eq!(cx.wrote, 0);
    assert_eq!(bz.key_packages_held("liaison@bz"), 1);
}

// ----- acknowledgements and the audit log ---------------------------------------------

#[test]
fn only_members_acknowledge_and_never_past_the_end_of_the_log() {
    let bz = Bz::open();
    let mut liaison = bz.create("liaison@bz", "kring@bz", "NL:STG-GEHEIM");
    let ack = |user: &str, community: &str, seq: u64| {
        let mut cx = bz.cx();
        let answer = bz.core.ack(&mut cx, &bz.caller(user), community, seq);
        (answer, cx)
    };
    let (answer, cx) = ack("admin@bz", "kring@bz", 0);
    assert_eq!(refused(answer), ErrorCode::NotMember);
    assert_eq!(cx.wrote, 0);
    let (answer, _) = ack("liaison@bz", "nergens@bz", 0);
    assert_eq!(refused(answer), ErrorCode::NotMember);
    let (answer, cx) = ack("liaison@bz", "kring@bz", 1);
    assert_bad_request(
        &refused(answer),
        "cannot acknowledge 1 in kring@bz: the log ends at 0",
    );
    assert_eq!(cx.wrote, 0);

    let message = liaison.notice("NL:STG-CONFIDENTIEEL");
    let (filed, _) = bz.file("liaison@bz", "kring@bz", &[(Uuid::from_u128(1), message)]);
    assert_eq!(filed_seqs(filed), vec![Some(1)]);
    let (answer, cx) = ack("liaison@bz", "kring@bz", 1);
    assert_eq!(answer.unwrap(), Response::Ok);
    assert!(cx.wrote > 0);
    let cursor = bz
        .core
        .engine()
        .get(&keys::cursor("liaison@bz", "kring@bz"))
        .unwrap();
    assert_eq!(cursor, Some(1u64.to_be_bytes().to_vec()));
    let (answer, _) = ack("liaison@bz", "kring@bz", 2);
    assert_bad_request(&refused(answer), "the log ends at 1");
}

#[test]
fn one_request_moves_the_cursors_of_several_communities_all_or_none() {
    let bz = Bz::open();
    let mut first = bz.create("liaison@bz", "een@bz", "NL:STG-GEHEIM");
    let mut second = bz.create("liaison@bz", "twee@bz", "NL:STG-GEHEIM");
    for (device, community) in [(&mut first, "een@bz"), (&mut second, "twee@bz")] {
        for n in 1..=2u128 {
            let id = Uuid::from_u128(n + if community == "een@bz" { 0 } else { 10 });
            let message = device.notice("NL:STG-CONFIDENTIEEL");
            let (filed, _) = bz.file("liaison@bz", community, &[(id, message)]);
            assert!(filed.is_ok(), "{filed:?}");
        }
    }
    let cursor = |community: &str| {
        bz.core
            .engine()
            .get(&keys::cursor("liaison@bz", community))
            .unwrap()
            .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
    };
    let ack_many = |marks: &[(&str, u64)]| {
        let mut cx = bz.cx();
        let answer = bz.core.ack_many(&mut cx, &bz.caller("liaison@bz"), marks);
        (answer, cx)
    };

    // One community the caller is not in refuses the whole request.
    let (answer, cx) = ack_many(&[("een@bz", 1), ("nergens@bz", 1)]);
    assert_eq!(refused(answer), ErrorCode::NotMember);
    assert_eq!(cx.wrote, 0);
    assert_eq!(cursor("een@bz"), None);
    // One past the end of its log likewise.
    let (answer, cx) = ack_many(&[("een@bz", 1), ("twee@bz", 3)]);
    assert_bad_request(
        &refused(answer),
        "cannot acknowledge 3 in twee@bz: the log ends at 2",
    );
    assert_eq!(cx.wrote, 0);

    // Both move in one write, answered before the flush; a community named twice
    // keeps the higher cursor, and a cursor never moves back.
    let (answer, cx) = ack_many(&[("een@bz", 2), ("twee@bz", 1), ("een@bz", 1)]);
    assert_eq!(answer.unwrap(), Response::Ok);
    assert!(cx.wrote > 0 && cx.answer_before_durable);
    assert_eq!((cursor("een@bz"), cursor("twee@bz")), (Some(2), Some(1)));
    let (answer, _) = ack_many(&[("een@bz", 1), ("twee@bz", 2)]);
    assert_eq!(answer.unwrap(), Response::Ok);
    assert_eq!((cursor("een@bz"), cursor("twee@bz")), (Some(2), Some(2)));
}

#[test]
fn the_audit_log_is_read_by_org_admins_of_this_relays_organisation_only() {
    let bz = Bz::open();
    let says = "the audit log of relay bz is for org-admins of organisation bz";
    for user in ["liaison@bz", "admin@nctv"] {
        let code = refused(bz.core.audit_log(&bz.caller(user), 1, 10, false));
        assert!(
            matches!(&code, ErrorCode::Unauthenticated { reason } if reason == says),
            "{user}: {code:?}"
        );
        let mut cx = bz.cx();
        let code = refused(bz.core.audit_head(&mut cx, &bz.caller(user)));
        assert!(
            matches!(&code, ErrorCode::Unauthenticated { reason } if reason == says),
            "{user}: {code:?}"
        );
        assert_eq!(cx.wrote, 0);
    }
    assert_eq!(bz.audit_page(false).relay, "bz");
    bz.assert_audit_chain_verifies();
}

// ----- fan-out --------------------------------------------------------------------------

#[test]
fn a_notice_is_withheld_from_a_peer_relay_not_accredited_for_its_label() {
    let bz = Bz::open();
    bz.peer_known_as("nctv", "NL:STG-GEHEIM", None);
    let mut liaison = bz.create("liaison@bz", "kring@bz", "NL:STG-GEHEIM");
    let kp = bz.key_package("liaison@nctv", false);
    let out = liaison.commit_adding(&bz, &kp);
    let (added, cx) = bz.send_commit("liaison@bz", "kring@bz", &out.commit, out.welcome);
    assert_eq!(added.unwrap(), Response::Accepted { seq: 1, epoch: 1 });
    assert_eq!(
        cx.sent,
        vec![
            ("nctv".to_string(), "entry"),
            ("nctv".to_string(), "welcomes")
        ]
    );
    liaison.commit_accepted();

    // A reload caps nctv below the community's maximum.
    bz.peer_known_as("nctv", "NL:STG-GEHEIM", Some("NL:STG-CONFIDENTIEEL"));
    let secret = Uuid::from_u128(1);
    let message = liaison.notice("NL:STG-GEHEIM");
    let (answer, cx) = bz.file("liaison@bz", "kring@bz", &[(secret, message)]);
    assert_eq!(filed_seqs(answer), vec![Some(2)]);
    assert_eq!(cx.sent, vec![("nctv".to_string(), "withheld")]);
    match bz.core.notice_status(&bz.caller("liaison@bz"), secret) {
        Ok(Response::Status(status)) => {
            assert_eq!(status.seq, Some(2));
            assert!(
                matches!(status.refusals.as_slice(), [r] if r.hop == "bz->nctv"
                    && r.reason.contains("relay nctv is not accredited for")),
                "{status:?}"
            );
        }
        other => panic!("{other:?}"),
    }

    // A notice nctv is accredited for goes out whole.
    let message = liaison.notice("NL:STG-CONFIDENTIEEL");
    let (answer, cx) = bz.file("liaison@bz", "kring@bz", &[(Uuid::from_u128(2), message)]);
    assert_eq!(filed_seqs(answer), vec![Some(3)]);
    assert_eq!(cx.sent, vec![("nctv".to_string(), "notice-entry")]);
}

#[test]
fn a_callers_revocation_check_is_skipped_only_while_nothing_new_is_revoked() {
    let bz = Bz::open();
    let admin = bz.caller("admin@bz");
    let liaison = bz.caller("liaison@bz");
    assert!(admin.check_revocation(&bz.core.revocations()).is_ok());
    assert!(liaison.check_revocation(&bz.core.revocations()).is_ok());
    // A revocation moves the set's generation: the next check of every caller
    // looks again, and the revoked one fails, every time.
    bz.revoke("admin@bz");
    for _ in 0..2 {
        assert!(admin.check_revocation(&bz.core.revocations()).is_err());
        assert!(liaison.check_revocation(&bz.core.revocations()).is_ok());
    }
}
