//! Writes fuzz seeds for `wire_frames` and `mls_message` from a demo federation.
//!
//! ```text
//! kring-certs-dev init --out /tmp/fed
//! sed '/-----/d' /tmp/fed/users/admin@bz/user.key | base64 -d > /tmp/admin.pk8
//! kring-fuzz-seedgen /tmp/fed /tmp/admin.pk8 fuzz/seeds
//! ```
//!
//! Everything written is a valid message, so the fuzzer starts from inputs that
//! pass the outer layers and mutates from there.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};

use kring_policy::Label;
use kring_protocol::identity::{Identity, certificates_from_pem};
use kring_protocol::mls::{
    CertSigner, ClientGroup, CommunityMeta, CredentialValidator, MemberId, key_package,
};
use kring_protocol::wire::{
    CommunitySummary, EntryKind, ErrorCode, FedBody, FedItem, FedRequest, FedResponse, HopRefusal,
    LogEntry, NoticeStatus, Push, Request, Response, encode_frame,
};
use openmls_rust_crypto::OpenMlsRustCrypto;
use uuid::Uuid;

type Res<T> = Result<T, Box<dyn Error>>;

/// Names a credential by its certificate (no chain or revocation checks: seeds only).
struct ByCertificate;

impl CredentialValidator for ByCertificate {
    fn validate(&self, chain: &[Vec<u8>], _key: &[u8]) -> Result<MemberId, String> {
        let leaf = chain.first().ok_or("empty chain")?;
        Identity::from_der(leaf)
            .map(|i| i.id())
            .map_err(|e| e.to_string())
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Res<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join(name), bytes)?;
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [fed, admin_key, out] = args.as_slice() else {
        return Err("usage: kring-fuzz-seedgen FEDERATION_DIR ADMIN_PKCS8_DER SEEDS_DIR".into());
    };
    let admin_chain = certificates_from_pem(&fs::read(fed.join("users/admin@bz/user.crt"))?)?;
    let hub_chain = certificates_from_pem(&fs::read(fed.join("relays/bz/relay.crt"))?)?;
    let hub_key = Identity::from_der(&hub_chain[0])?.public_key;
    let signer = CertSigner::from_pkcs8(admin_chain, &fs::read(admin_key)?)?;
    let provider = OpenMlsRustCrypto::default();

    let label: Label = "NL:STG-CONFIDENTIEEL;REL=NLD;TLP=AMBER".parse()?;
    let max_label: Label = "NL:STG-GEHEIM".parse()?;
    let meta = CommunityMeta::new("fuzz@bz", max_label.to_bytes(), vec!["admin@bz".into()])?;
    let (mut group, upload) = ClientGroup::create(
        &provider,
        &signer,
        &ByCertificate,
        &meta,
        &hub_chain,
        &hub_key,
    )?;
    let kp = key_package(&provider, &signer, false)?;
    let kp_last = key_package(&provider, &signer, true)?;
    let app = group.encrypt(&provider, &signer, &label.to_bytes(), b"seed notice body")?;

    let mls = out.join("mls_message");
    write(&mls, "key-package", &kp)?;
    write(&mls, "key-package-last-resort", &kp_last)?;
    write(&mls, "application", &app)?;
    write(&mls, "group-info", &upload.group_info)?;

    let notice_id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    let summary = CommunitySummary {
        id: "fuzz@bz".into(),
        max_label: max_label.to_string(),
        epoch: 1,
        members: vec!["admin@bz".into(), "liaison@nctv".into()],
        admins: vec!["admin@bz".into()],
        last_seq: 7,
    };
    let entry = LogEntry {
        community: "fuzz@bz".into(),
        seq: 7,
        sender: "admin@bz".into(),
        ordered_at: 1_700_000_000,
        kind: EntryKind::Notice {
            notice_id,
            label: label.to_bytes(),
            epoch: 1,
        },
        message: app.clone(),
    };
    let mut frames: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, frame: Vec<u8>| frames.push((name.to_owned(), frame));
    let max = kring_protocol::wire::DEFAULT_MAX_FRAME;
    add("req-publish", encode_frame(&Request::PublishKeyPackages {
        key_packages: vec![kp.clone()],
        last_resort: Some(kp_last),
    }, max)?);
    add("req-fetch", encode_frame(&Request::FetchKeyPackage { user: "liaison@nctv".into() }, max)?);
    add("req-create", encode_frame(&Request::CreateCommunity {
        community: "fuzz@bz".into(),
        group_info: upload.group_info,
        ratchet_tree: upload.ratchet_tree,
    }, max)?);
    add("req-file", encode_frame(&Request::FileNotice {
        community: "fuzz@bz".into(),
        notice_id,
        message: app.clone(),
    }, max)?);
    add("req-ack", encode_frame(&Request::Ack { community: "fuzz@bz".into(), seq: 3 }, max)?);
    add("req-ping", encode_frame(&Request::Ping, max)?);
    add("req-status", encode_frame(&Request::NoticeStatus { notice_id }, max)?);
    add("resp-communities", encode_frame(&Response::Communities {
        communities: vec![summary.clone()],
    }, max)?);
    add("resp-status", encode_frame(&Response::Status(NoticeStatus {
        notice_id,
        community: "fuzz@bz".into(),
        seq: Some(7),
        refusals: vec![HopRefusal { hop: "post-a".into(), reason: "level above accreditation".into() }],
    }), max)?);
    add("resp-error", encode_frame(&Response::Error(ErrorCode::PolicyDenied {
        reason: "clearance too low".into(),
    }), max)?);
    add("resp-queued", encode_frame(&Response::Queued { notice_id, hub: "bz".into() }, max)?);
    add("push-entry", encode_frame(&Push::Entry(entry.clone()), max)?);
    add("push-caught-up", encode_frame(&Push::CaughtUp, max)?);
    add("fed-deliver", encode_frame(&FedRequest::Deliver {
        items: vec![
            FedItem {
                seq: 1,
                body: FedBody::Notice {
                    community: "fuzz@bz".into(),
                    notice_id,
                    sender: "admin@bz".into(),
                    message: app,
                },
            },
            FedItem {
                seq: 2,
                body: FedBody::Entry { community: summary, seq: 7, entry: Some(entry) },
            },
        ],
    }, max)?);
    add("fed-fetch", encode_frame(&FedRequest::FetchKeyPackage {
        user: "liaison@nctv".into(),
        requester: "admin@bz".into(),
    }, max)?);
    add("fed-ack", encode_frame(&FedResponse::Ack { upto: 9 }, max)?);
    add("fed-resp", encode_frame(&FedResponse::Response(Response::Pong), max)?);

    // Target input: a chunk-size byte, then the stream. Also each payload alone
    // (the target decodes the whole input as a payload too).
    let wire = out.join("wire_frames");
    let mut stream = vec![7u8];
    for (name, frame) in &frames {
        let mut one = vec![0xff];
        one.extend_from_slice(frame);
        write(&wire, &format!("{name}.frame"), &one)?;
        write(&wire, &format!("{name}.payload"), &frame[4..])?;
        stream.extend_from_slice(frame);
    }
    write(&wire, "all.stream", &stream)?;
    println!("wrote {} frame seeds and 4 MLS seeds under {}", frames.len(), out.display());
    Ok(())
}
