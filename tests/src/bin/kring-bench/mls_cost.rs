//! In-process MLS costs with the real credentials: Ed25519 X.509 chains from the
//! dev PKI and the federation's credential validator (the one relays and clients
//! use), openmls with the RustCrypto provider, Kring's ciphersuite.
//!
//! - client cost: encrypt-and-sign and decrypt-and-verify of a notice with a 1 KiB
//!   body, one thread (= one core);
//! - membership: adding and removing one member of an N-member community, for the
//!   committer (`ClientGroup::add_members` / `remove_members`) and for the relay's
//!   verification and merge as a relay does it for a `Commit` request
//!   (`kring_relay::groups::process_handshake` + `merge` over an `Overlay`, the
//!   batch applied to the store), with the group state in an in-memory store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kring_certs_dev::{Pki, RelaySpec, UserSpec};
use kring_client::{Category, Notice, NoticeKind};
use kring_policy::Label;
use kring_protocol::mls::{
    CertSigner, ClientGroup, CommunityMeta, Received, RelayGroup, key_package,
};
use kring_protocol::revocation::Revocations;
use kring_protocol::validator::FederationValidator;
use kring_relay::RelayError;
use kring_relay::groups::{self, Overlay};
use kring_relay::store::{Batch, Engine, Pair};
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider as _;
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;

use crate::common::{CLEARANCE, LABEL, body, now_unix};

const ORG: &str = "bz";
const COMMUNITY: &str = "bench@bz";

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

/// A minted member: identity and signer.
struct Member {
    id: String,
    signer: CertSigner,
}

struct World {
    pki: Pki,
    anchors: Vec<Vec<u8>>,
    trust: kring_protocol::identity::TrustMap,
    now: u64,
    hub: CertSigner,
    next: usize,
}

impl World {
    fn new() -> Result<World, String> {
        let now = now_unix();
        let mut pki = Pki::new(now).map_err(e)?;
        pki.add_organisation(ORG).map_err(e)?;
        let anchors = pki.anchors();
        let trust = kring_protocol::identity::TrustMap::from_entries([(
            ORG,
            kring_protocol::identity::RelayTrust {
                organisation: ORG.to_string(),
                ca: None,
            },
        )])
        .map_err(e)?;
        let relay = pki.issue_relay(&RelaySpec::new(ORG, ORG)).map_err(e)?;
        let hub = signer_of(&relay.chain_der, &relay.key_pem)?;
        Ok(World {
            pki,
            anchors,
            trust,
            now: u64::try_from(now).unwrap_or(0),
            hub,
            next: 0,
        })
    }

    fn member(&mut self) -> Result<Member, String> {
        let name = format!("m{}", self.next);
        self.next += 1;
        let clearance = CLEARANCE.parse().map_err(e)?;
        let cert = self
            .pki
            .issue_user(&UserSpec::new(&name, ORG, ORG).with_clearance(clearance))
            .map_err(e)?;
        Ok(Member {
            id: format!("{name}@{ORG}"),
            signer: signer_of(&cert.chain_der, &cert.key_pem)?,
        })
    }

    fn validator(&self) -> FederationValidator<'_> {
        FederationValidator::new(&self.anchors, &self.trust, self.now)
    }
}

fn signer_of(chain: &[Vec<u8>], key_pem: &str) -> Result<CertSigner, String> {
    let key = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes()).map_err(e)?;
    CertSigner::from_pkcs8(chain.to_vec(), key.secret_pkcs8_der()).map_err(e)
}

fn max_label() -> Result<Vec<u8>, String> {
    Ok(CLEARANCE.parse::<Label>().map_err(e)?.to_bytes())
}

/// Creates the community with `admin` as creator; returns its group.
fn create(w: &World, admin: &Member, provider: &OpenMlsRustCrypto) -> Result<ClientGroup, String> {
    let meta = CommunityMeta::new(COMMUNITY, max_label()?, vec![admin.id.clone()]).map_err(e)?;
    let (group, _upload) = ClientGroup::create(
        provider,
        &admin.signer,
        &w.validator(),
        &meta,
        w.hub.chain(),
        w.hub.public_key(),
    )
    .map_err(e)?;
    Ok(group)
}

/// Client cost figures.
#[derive(Debug)]
pub struct ClientCost {
    pub encrypt_per_s: f64,
    pub decrypt_per_s: f64,
    pub message_bytes: usize,
    pub plaintext_bytes: usize,
    pub samples: usize,
}

/// Encrypt-and-sign and decrypt-and-verify (including the notice JSON) of a
/// notice with a 1 KiB body, for about `seconds` each, on this thread.
pub fn client_cost(seconds: f64) -> Result<ClientCost, String> {
    let mut w = World::new()?;
    let alice = w.member()?;
    let bob = w.member()?;
    let pa = OpenMlsRustCrypto::default();
    let pb = OpenMlsRustCrypto::default();
    let mut ga = create(&w, &alice, &pa)?;
    let kp = key_package(&pb, &bob.signer, false).map_err(e)?;
    let out = ga
        .add_members(&pa, &alice.signer, &w.validator(), &[kp])
        .map_err(e)?;
    ga.commit_accepted(&pa).map_err(e)?;
    let welcome = out.welcome.ok_or("no welcome")?;
    let mut gb = ClientGroup::join(&pb, &w.validator(), &welcome, None).map_err(e)?;

    let label: Label = LABEL.parse().map_err(e)?;
    let aad = label.to_bytes();
    let notice = Notice {
        id: uuid::Uuid::new_v4(),
        community: COMMUNITY.into(),
        label: label.to_string(),
        kind: NoticeKind::Signal,
        category: Category::Disinformation,
        title: "bench".into(),
        body: body(),
        sender: alice.id.clone(),
        filed_at: time::OffsetDateTime::now_utc(),
        in_reply_to: None,
        stix: None,
        forwarded_from: None,
        attachments: Vec::new(),
    };
    let plaintext = notice.to_plaintext().map_err(e)?;

    // Encrypt for `seconds`, keeping the messages for the receiver.
    let mut messages = Vec::new();
    let start = Instant::now();
    let budget = Duration::from_secs_f64(seconds);
    while start.elapsed() < budget || messages.len() < 10 {
        let m = ga
            .encrypt(&pa, &alice.signer, &aad, &plaintext)
            .map_err(e)?;
        messages.push(m);
    }
    let enc = start.elapsed();
    let message_bytes = messages.first().map_or(0, Vec::len);

    let v = w.validator();
    let start = Instant::now();
    for m in &messages {
        match gb.process(&pb, &v, m).map_err(e)? {
            Received::Application {
                plaintext, aad: a, ..
            } => {
                if a != aad {
                    return Err("authenticated data changed".into());
                }
                let n: Notice = serde_json::from_slice(&plaintext).map_err(e)?;
                if n.body.len() != crate::common::BODY_BYTES {
                    return Err("decrypted body has the wrong size".into());
                }
            }
            other => return Err(format!("expected a notice, got {other:?}")),
        }
    }
    let dec = start.elapsed();
    Ok(ClientCost {
        encrypt_per_s: messages.len() as f64 / enc.as_secs_f64(),
        decrypt_per_s: messages.len() as f64 / dec.as_secs_f64(),
        message_bytes,
        plaintext_bytes: plaintext.len(),
        samples: messages.len(),
    })
}

/// Membership figures (medians over the repetitions).
#[derive(Debug)]
pub struct Membership {
    pub members: usize,
    pub build: Duration,
    pub add_commit: Duration,
    pub add_relay: Duration,
    pub remove_commit: Duration,
    pub remove_relay: Duration,
    pub add_commit_bytes: usize,
    pub welcome_bytes: usize,
    pub repetitions: usize,
}

/// Builds an `members`-member community (adds in batches of 100, the protocol's
/// limit), then `repetitions` times adds one member and removes it again,
/// timing the committer and the relay's verification + merge separately.
pub fn membership(members: usize, repetitions: usize) -> Result<Membership, String> {
    // More repetitions for steadier medians or for profiling.
    let repetitions = std::env::var("KRING_BENCH_MEMBERSHIP_REPS")
        .ok()
        .and_then(|r| r.parse::<usize>().ok())
        .filter(|&r| r > 0)
        .unwrap_or(repetitions);
    let build_start = Instant::now();
    let mut w = World::new()?;
    let admin = w.member()?;
    let pa = OpenMlsRustCrypto::default();
    // Every other member's key packages live in one provider (only the committer
    // and the relay are measured).
    let others = OpenMlsRustCrypto::default();
    let mut group = create(&w, &admin, &pa)?;
    let mut remaining = members.saturating_sub(1);
    while remaining > 0 {
        let batch = remaining.min(kring_protocol::mls::MAX_BATCH_MEMBERS);
        let mut kps = Vec::with_capacity(batch);
        for _ in 0..batch {
            let m = w.member()?;
            kps.push(key_package(&others, &m.signer, false).map_err(e)?);
        }
        group
            .add_members(&pa, &admin.signer, &w.validator(), &kps)
            .map_err(e)?;
        group.commit_accepted(&pa).map_err(e)?;
        remaining -= batch;
    }
    // The hub's view, from the uploaded GroupInfo and ratchet tree (as at creation).
    let upload = group.group_upload(&pa, &admin.signer).map_err(e)?;
    let rp = OpenMlsRustCrypto::default();
    let mut relay = RelayGroup::from_group_info(
        rp.crypto(),
        rp.storage(),
        &w.validator(),
        &upload.group_info,
        &upload.ratchet_tree,
    )
    .map_err(e)?;
    // The same hub as a relay runs it: group state in its store, loaded per request.
    let engine = Arc::new(MemEngine::default());
    let overlay = Overlay::new(engine.clone());
    groups::create(
        &overlay,
        COMMUNITY,
        &upload.group_info,
        &upload.ratchet_tree,
        &w.anchors,
        &w.trust,
        w.now,
    )
    .map_err(|e| e.to_string())?;
    engine.apply(overlay.into_batch()).map_err(e)?;
    let build = build_start.elapsed();
    if relay.epoch() != group.epoch() {
        return Err("relay and committer disagree on the epoch".into());
    }

    let mut add_c = Vec::new();
    let mut add_r = Vec::new();
    let mut rem_c = Vec::new();
    let mut rem_r = Vec::new();
    let mut add_g = Vec::new();
    let mut rem_g = Vec::new();
    let mut add_commit_bytes = 0;
    let mut welcome_bytes = 0;
    for _ in 0..repetitions {
        let newcomer = w.member()?;
        let kp = key_package(&others, &newcomer.signer, false).map_err(e)?;
        let v = w.validator();
        let t = Instant::now();
        let out = group
            .add_members(&pa, &admin.signer, &v, &[kp])
            .map_err(e)?;
        add_c.push(t.elapsed());
        add_commit_bytes = out.commit.len();
        welcome_bytes = out.welcome.as_ref().map_or(0, Vec::len);
        let t = Instant::now();
        let verified = relay
            .process_handshake(rp.crypto(), &v, &out.commit)
            .map_err(e)?;
        relay.merge(rp.storage(), verified).map_err(e)?;
        add_g.push(t.elapsed());
        let t = Instant::now();
        relay_commit(&engine, &w, &out.commit)?;
        add_r.push(t.elapsed());
        group.commit_accepted(&pa).map_err(e)?;

        let t = Instant::now();
        let out = group
            .remove_members(&pa, &admin.signer, &v, std::slice::from_ref(&newcomer.id))
            .map_err(e)?;
        rem_c.push(t.elapsed());
        let t = Instant::now();
        let verified = relay
            .process_handshake(rp.crypto(), &v, &out.commit)
            .map_err(e)?;
        relay.merge(rp.storage(), verified).map_err(e)?;
        rem_g.push(t.elapsed());
        let t = Instant::now();
        relay_commit(&engine, &w, &out.commit)?;
        rem_r.push(t.elapsed());
        group.commit_accepted(&pa).map_err(e)?;
    }
    use crate::common::median;
    // The relay's MLS work alone (no store), for comparison with earlier runs.
    eprintln!(
        "kring-bench: membership: RelayGroup::process_handshake + merge in memory \
         (no store): add {:.1} ms, remove {:.1} ms",
        median(add_g).as_secs_f64() * 1e3,
        median(rem_g).as_secs_f64() * 1e3
    );
    Ok(Membership {
        members,
        build,
        add_commit: median(add_c),
        add_relay: median(add_r),
        remove_commit: median(rem_c),
        remove_relay: median(rem_r),
        add_commit_bytes,
        welcome_bytes,
        repetitions,
    })
}

/// What a hub relay does with a commit's MLS message: load and verify it, merge it,
/// apply the resulting state batch to the store.
fn relay_commit(engine: &Arc<MemEngine>, w: &World, commit: &[u8]) -> Result<(), String> {
    let overlay = Overlay::new(engine.clone());
    let staged = groups::process_handshake(
        &overlay,
        COMMUNITY,
        commit,
        &w.anchors,
        &w.trust,
        w.now,
        Revocations::empty(),
    )
    .map_err(e)?;
    groups::merge(&overlay, COMMUNITY, staged, &w.anchors, &w.trust, w.now).map_err(e)?;
    engine.apply(overlay.into_batch()).map_err(e)
}

type Entries = BTreeMap<Vec<u8>, Vec<u8>>;

/// An in-memory relay store.
#[derive(Debug, Default)]
struct MemEngine {
    entries: Mutex<Entries>,
}

impl MemEngine {
    fn entries(&self) -> Result<std::sync::MutexGuard<'_, Entries>, RelayError> {
        self.entries
            .lock()
            .map_err(|_| RelayError::Poisoned("bench store"))
    }
}

impl Engine for MemEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, RelayError> {
        Ok(self.entries()?.get(key).cloned())
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Pair>, RelayError> {
        Ok(self
            .entries()?
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && after.is_none_or(|a| k.as_slice() > a))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn last(&self, prefix: &[u8]) -> Result<Option<Pair>, RelayError> {
        Ok(self
            .entries()?
            .iter()
            .rev()
            .find(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn apply(&self, batch: Batch) -> Result<(), RelayError> {
        let mut entries = self.entries()?;
        for (k, v) in batch.into_ops() {
            match v {
                Some(v) => entries.insert(k, v),
                None => entries.remove(&k),
            };
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), RelayError> {
        Ok(())
    }
}
