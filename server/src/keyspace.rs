//! The relay store's key space, in one place.
//!
//! Every key in the store begins with one of the namespaces of [`NAMESPACES`]: a
//! single ASCII letter and `/`, owned by one part of the relay. Ids never contain
//! `\0`, so it separates the parts of a key after the namespace. Sequence numbers
//! are big-endian, so a scan returns them in order.
//!
//! A module reads and writes only through the builders here (re-exported as its
//! `keys` module); the tests below check that no two namespaces overlap and that
//! every builder stays inside its own.

/// A namespace of the key space.
#[derive(Debug, Clone, Copy)]
pub struct Namespace {
    /// The key prefix (a letter and `/`).
    pub prefix: &'static [u8],
    /// The module that owns it.
    pub owner: &'static str,
    /// What its keys hold.
    pub holds: &'static str,
}

macro_rules! namespaces {
    ($($name:ident = $prefix:literal, $owner:literal, $holds:literal;)*) => {
        $(
            #[doc = concat!("`", $prefix, "`: ", $holds, " (", $owner, ").")]
            pub const $name: &[u8] = $prefix.as_bytes();
        )*
        /// Every namespace of the store.
        pub const NAMESPACES: &[Namespace] = &[
            $(Namespace { prefix: $name, owner: $owner, holds: $holds },)*
        ];
    };
}

namespaces! {
    COMMUNITY = "c/", "store", "community records";
    LAST_SEQ = "s/", "store", "a community's last log sequence number";
    LOG = "l/", "store", "community log entries";
    NOTICE = "n/", "store", "notice records (status, de-duplication)";
    MEMBER = "m/", "store", "memberships";
    CURSOR = "u/", "store", "device delivery cursors";
    WELCOME = "w/", "store", "pending welcomes";
    WELCOME_REF = "v/", "store", "pending welcome references";
    WELCOME_BLOB = "W/", "store", "welcomes shared by the members one commit added";
    WELCOME_REFS = "V/", "store", "reference counts of shared welcomes";
    KEY_PACKAGE = "k/", "store", "key packages";
    LAST_RESORT = "K/", "store", "last-resort key packages";
    MLS = "g/", "groups", "the MLS public-group storage";
    AUDIT = "a/", "audit", "audit records";
    AUDIT_META = "A/", "audit", "the relay certificate history of the audit log";
    OUTBOX = "o/", "federation", "outbox items to peers";
    OUTBOX_NEXT = "O/", "federation", "the next outbox sequence number per peer";
    APPLIED = "r/", "federation", "the last item applied from each peer";
    ACCREDITATION = "p/", "federation", "what a peer's certificate granted when last seen";
    HUBBED = "h/", "federation", "how many communities a peer hub registered here";
    DECLARED_CLIENTS = "D/", "federation", "the client organisations a peer declared";
    RECOVERY = "R/", "recovery", "the state of a relay restored from a backup";
    STATEMENT = "x/", "revocation", "revocation statements";
    CRL = "X/", "revocation", "certificate revocation lists";
    PEER_INFO = "P/", "revocation", "what a peer's certificate said when last seen";
    WIPE = "y/", "revocation", "wipe orders for users of this relay";
    RETENTION = "t/", "retention", "community retention periods";
    ATTACHMENTS = "b/", "attachments", "the blobs a notice refers to and where to fetch them";
    JOURNAL = "J/", "store", "the last journal batch the engine holds";
}

/// Keys of the store proper: communities, logs, notices, memberships, cursors,
/// welcomes, key packages, MLS state and the audit log.
pub mod store {
    pub use super::{AUDIT, JOURNAL, LOG as LOGS, MLS};
    /// Prefix of all community records.
    pub const COMMUNITIES: &[u8] = super::COMMUNITY;

    /// `c/COMMUNITY` → community record.
    pub fn community(id: &str) -> Vec<u8> {
        [super::COMMUNITY, id.as_bytes()].concat()
    }
    /// `s/COMMUNITY` → the community's last log seq (postcard u64), written per
    /// entry so that a notice does not rewrite the whole community record.
    pub fn last_seq(id: &str) -> Vec<u8> {
        [super::LAST_SEQ, id.as_bytes()].concat()
    }
    /// `l/COMMUNITY\0SEQ` → log entry.
    pub fn log(id: &str, seq: u64) -> Vec<u8> {
        [super::LOG, id.as_bytes(), b"\0", &seq.to_be_bytes()].concat()
    }
    /// Prefix of one community's log.
    pub fn log_prefix(id: &str) -> Vec<u8> {
        [super::LOG, id.as_bytes(), b"\0"].concat()
    }
    /// `n/NOTICE` → notice record (status, for de-duplication).
    pub fn notice(id: &uuid::Uuid) -> Vec<u8> {
        [super::NOTICE, id.as_bytes()].concat()
    }
    /// `m/USER\0COMMUNITY` → membership record.
    pub fn member(user: &str, community: &str) -> Vec<u8> {
        [super::MEMBER, user.as_bytes(), b"\0", community.as_bytes()].concat()
    }
    /// Prefix of one user's memberships.
    pub fn member_prefix(user: &str) -> Vec<u8> {
        [super::MEMBER, user.as_bytes(), b"\0"].concat()
    }
    /// `u/DEVICE\0COMMUNITY` → delivery cursor (u64 big-endian).
    pub fn cursor(device: &str, community: &str) -> Vec<u8> {
        [
            super::CURSOR,
            device.as_bytes(),
            b"\0",
            community.as_bytes(),
        ]
        .concat()
    }
    /// `w/USER\0WELCOME` → pending welcome.
    pub fn welcome(user: &str, id: &uuid::Uuid) -> Vec<u8> {
        [super::WELCOME, user.as_bytes(), b"\0", id.as_bytes()].concat()
    }
    /// Prefix of one user's pending welcomes.
    pub fn welcome_prefix(user: &str) -> Vec<u8> {
        [super::WELCOME, user.as_bytes(), b"\0"].concat()
    }
    /// `v/USER\0WELCOME` → a pending welcome kept once per commit ([`welcome_blob`]).
    pub fn welcome_ref(user: &str, id: &uuid::Uuid) -> Vec<u8> {
        [super::WELCOME_REF, user.as_bytes(), b"\0", id.as_bytes()].concat()
    }
    /// Prefix of one user's pending welcome references.
    pub fn welcome_ref_prefix(user: &str) -> Vec<u8> {
        [super::WELCOME_REF, user.as_bytes(), b"\0"].concat()
    }
    /// `W/BLOB` → a Welcome and its ratchet tree, shared by the members one commit
    /// added here.
    pub fn welcome_blob(blob: &uuid::Uuid) -> Vec<u8> {
        [super::WELCOME_BLOB, blob.as_bytes()].concat()
    }
    /// `V/BLOB` → how many `v/` references a welcome blob still has (postcard u32).
    pub fn welcome_refs(blob: &uuid::Uuid) -> Vec<u8> {
        [super::WELCOME_REFS, blob.as_bytes()].concat()
    }
    /// `k/USER\0ID` → key package.
    pub fn key_package(user: &str, id: &uuid::Uuid) -> Vec<u8> {
        [super::KEY_PACKAGE, user.as_bytes(), b"\0", id.as_bytes()].concat()
    }
    /// Prefix of one user's key packages.
    pub fn key_package_prefix(user: &str) -> Vec<u8> {
        [super::KEY_PACKAGE, user.as_bytes(), b"\0"].concat()
    }
    /// `K/USER` → last-resort key package.
    pub fn last_resort(user: &str) -> Vec<u8> {
        [super::LAST_RESORT, user.as_bytes()].concat()
    }
    /// `a/SEQ` → audit record.
    pub fn audit(seq: u64) -> Vec<u8> {
        [super::AUDIT, &seq.to_be_bytes()].concat()
    }
}

/// Keys of the audit log's certificate history (`A/`).
pub mod audit {
    /// `A/cert` → the relay certificate chain as older versions kept it (one chain).
    pub const LEGACY_CERT: &[u8] = b"A/cert";
    /// Prefix of the certificate history: `A/cert/INDEX` → one chain.
    pub const CERT_HISTORY: &[u8] = b"A/cert/";

    /// `A/cert/INDEX` (u64 big-endian).
    pub fn cert_history(index: u64) -> Vec<u8> {
        [CERT_HISTORY, &index.to_be_bytes()].concat()
    }
}

/// Keys of federation: outboxes, what was applied from each peer, what peers said.
pub mod federation {
    /// Prefix of every outbox.
    pub const OUTBOXES: &[u8] = super::OUTBOX;

    /// `o/PEER\0SEQ` → outbox item.
    pub fn outbox(peer: &str, seq: u64) -> Vec<u8> {
        [super::OUTBOX, peer.as_bytes(), b"\0", &seq.to_be_bytes()].concat()
    }
    /// Prefix of one peer's outbox.
    pub fn outbox_prefix(peer: &str) -> Vec<u8> {
        [super::OUTBOX, peer.as_bytes(), b"\0"].concat()
    }
    /// `O/PEER` → next outbox seq for a peer (kept even when the outbox is empty).
    pub fn outbox_next(peer: &str) -> Vec<u8> {
        [super::OUTBOX_NEXT, peer.as_bytes()].concat()
    }
    /// `r/PEER` → last item seq applied from a peer.
    pub fn applied(peer: &str) -> Vec<u8> {
        [super::APPLIED, peer.as_bytes()].concat()
    }
    /// `p/PEER` → what a peer's certificate granted when last seen (canonical text).
    pub fn accreditation(peer: &str) -> Vec<u8> {
        [super::ACCREDITATION, peer.as_bytes()].concat()
    }
    /// `h/PEER` → communities a peer hub registered here (u64).
    pub fn hubbed(peer: &str) -> Vec<u8> {
        [super::HUBBED, peer.as_bytes()].concat()
    }
    /// `h/PEER\0USER` → communities a peer hub registered here with `user` of this
    /// relay as a member (u64).
    pub fn hubbed_for(peer: &str, user: &str) -> Vec<u8> {
        [super::HUBBED, peer.as_bytes(), b"\0", user.as_bytes()].concat()
    }
    /// `D/PEER` → the organisations `peer`'s organisation declared as its clients,
    /// as it said last.
    pub fn declared_clients(peer: &str) -> Vec<u8> {
        [super::DECLARED_CLIENTS, peer.as_bytes()].concat()
    }
}

/// Keys of a restored relay (`R/`).
pub mod recovery {
    /// Prefix of every recovery key.
    pub const PREFIX: &[u8] = super::RECOVERY;
    /// `R/state` → the restore state.
    pub const STATE: &[u8] = b"R/state";
    /// Prefix of [`base`].
    pub const BASES: &[u8] = b"R/base/";

    /// `R/peer/PEER` → the peer has answered.
    pub fn peer(peer: &str) -> Vec<u8> {
        [b"R/peer/", peer.as_bytes()].concat()
    }
    /// `R/base/COMMUNITY` → the last seq of a community hubbed here at the first
    /// start after the restore.
    pub fn base(community: &str) -> Vec<u8> {
        [BASES, community.as_bytes()].concat()
    }
    /// `R/outbox/PEER` → the next outbox seq to a peer at the first start.
    pub fn outbox(peer: &str) -> Vec<u8> {
        [b"R/outbox/", peer.as_bytes()].concat()
    }
    /// `R/resumed/COMMUNITY` → the first seq ordered here after the restore.
    pub fn resumed(community: &str) -> Vec<u8> {
        [b"R/resumed/", community.as_bytes()].concat()
    }
    /// `R/device/DEVICE\0COMMUNITY`: the device has reported its cursor.
    pub fn device(device: &str, community: &str) -> Vec<u8> {
        [b"R/device/", device.as_bytes(), b"\0", community.as_bytes()].concat()
    }
    /// `R/lost/COMMUNITY`: a community hubbed here that was created after the
    /// backup; its id is not given out again.
    pub fn lost(community: &str) -> Vec<u8> {
        [b"R/lost/", community.as_bytes()].concat()
    }
}

/// Keys of revocation.
pub mod revocation {
    /// Prefix of revocation statements.
    pub const STATEMENTS: &[u8] = super::STATEMENT;
    /// Prefix of CRLs.
    pub const CRLS: &[u8] = super::CRL;

    /// `x/USER` → a statement revoking `user`.
    pub fn statement(user: &str) -> Vec<u8> {
        [STATEMENTS, user.as_bytes()].concat()
    }
    /// `X/ISSUER` → the newest CRL of the CA with fingerprint `issuer`.
    pub fn crl(issuer: &kring_protocol::identity::CaFingerprint) -> Vec<u8> {
        [CRLS, issuer.to_string().as_bytes()].concat()
    }
    /// `P/PEER` → what a peer's certificate said when last seen.
    pub fn peer_info(peer: &str) -> Vec<u8> {
        [super::PEER_INFO, peer.as_bytes()].concat()
    }
    /// `y/USER` → the wipe order for a user of this relay (`kring admin revoke
    /// --wipe`).
    pub fn wipe(user: &str) -> Vec<u8> {
        [super::WIPE, user.as_bytes()].concat()
    }
}

/// Keys of retention.
pub mod retention {
    /// Prefix of the retention periods.
    pub const RETENTION: &[u8] = super::RETENTION;

    /// `t/COMMUNITY` → the community's retention period in seconds (u64 big endian).
    pub fn retention(community: &str) -> Vec<u8> {
        [RETENTION, community.as_bytes()].concat()
    }
}

/// Keys of attachments.
pub mod attachments {
    /// Prefix of the notices' blob records.
    pub const ATTACHMENTS: &[u8] = super::ATTACHMENTS;

    /// `b/COMMUNITY\0NOTICE_ID` → the blobs a notice of a community refers to
    /// (keyed by community too: a notice id another community reuses is another
    /// record).
    pub fn notice(community: &str, id: &uuid::Uuid) -> Vec<u8> {
        [ATTACHMENTS, community.as_bytes(), b"\0", id.as_bytes()].concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_a_letter_and_a_slash_and_never_overlap() {
        for (i, a) in NAMESPACES.iter().enumerate() {
            assert!(
                a.prefix.len() == 2 && a.prefix[0].is_ascii_alphabetic() && a.prefix[1] == b'/',
                "{a:?}"
            );
            for b in &NAMESPACES[i + 1..] {
                assert!(
                    !a.prefix.starts_with(b.prefix) && !b.prefix.starts_with(a.prefix),
                    "{a:?} and {b:?} overlap"
                );
            }
        }
    }

    /// The namespace a key falls in.
    fn namespace_of(key: &[u8]) -> &'static str {
        let hits: Vec<&Namespace> = NAMESPACES
            .iter()
            .filter(|n| key.starts_with(n.prefix))
            .collect();
        assert_eq!(hits.len(), 1, "{key:?} is in {hits:?}");
        hits[0].owner
    }

    #[test]
    fn every_builder_stays_in_its_owners_namespace() {
        let id = uuid::Uuid::nil();
        let ca = kring_protocol::identity::CaFingerprint::of(b"ca");
        let owned: [(&str, Vec<Vec<u8>>); 8] = [
            (
                "store",
                vec![
                    store::community("c@bz"),
                    store::COMMUNITIES.to_vec(),
                    store::last_seq("c@bz"),
                    store::log("c@bz", 7),
                    store::log_prefix("c@bz"),
                    store::LOGS.to_vec(),
                    store::notice(&id),
                    store::member("u@bz", "c@bz"),
                    store::member_prefix("u@bz"),
                    store::cursor("u@bz", "c@bz"),
                    store::welcome("u@bz", &id),
                    store::welcome_prefix("u@bz"),
                    store::welcome_ref("u@bz", &id),
                    store::welcome_ref_prefix("u@bz"),
                    store::welcome_blob(&id),
                    store::welcome_refs(&id),
                    store::key_package("u@bz", &id),
                    store::key_package_prefix("u@bz"),
                    store::last_resort("u@bz"),
                ],
            ),
            ("groups", vec![store::MLS.to_vec()]),
            (
                "audit",
                vec![
                    store::audit(3),
                    store::AUDIT.to_vec(),
                    audit::LEGACY_CERT.to_vec(),
                    audit::CERT_HISTORY.to_vec(),
                    audit::cert_history(2),
                ],
            ),
            (
                "federation",
                vec![
                    federation::outbox("nctv", 4),
                    federation::outbox_prefix("nctv"),
                    federation::OUTBOXES.to_vec(),
                    federation::outbox_next("nctv"),
                    federation::applied("nctv"),
                    federation::accreditation("nctv"),
                    federation::hubbed("nctv"),
                    federation::hubbed_for("nctv", "u@bz"),
                    federation::declared_clients("nctv"),
                ],
            ),
            (
                "recovery",
                vec![
                    recovery::PREFIX.to_vec(),
                    recovery::STATE.to_vec(),
                    recovery::BASES.to_vec(),
                    recovery::peer("nctv"),
                    recovery::base("c@bz"),
                    recovery::outbox("nctv"),
                    recovery::resumed("c@bz"),
                    recovery::device("u@bz", "c@bz"),
                    recovery::lost("c@bz"),
                ],
            ),
            (
                "revocation",
                vec![
                    revocation::statement("u@bz"),
                    revocation::STATEMENTS.to_vec(),
                    revocation::crl(&ca),
                    revocation::CRLS.to_vec(),
                    revocation::peer_info("nctv"),
                    revocation::wipe("u@bz"),
                ],
            ),
            (
                "retention",
                vec![retention::retention("c@bz"), retention::RETENTION.to_vec()],
            ),
            (
                "attachments",
                vec![
                    attachments::notice("c@bz", &uuid::Uuid::nil()),
                    attachments::ATTACHMENTS.to_vec(),
                ],
            ),
        ];
        for (owner, keys) in owned {
            for key in keys {
                assert_eq!(namespace_of(&key), owner, "{key:?}");
            }
        }
    }

    #[test]
    fn one_peers_outbox_prefix_does_not_cover_another_peers() {
        // `\0` ends the peer id, so `bz` does not scan `bz2`'s items.
        assert!(!federation::outbox("bz2", 1).starts_with(&federation::outbox_prefix("bz")));
        assert!(federation::outbox("bz", 1).starts_with(&federation::outbox_prefix("bz")));
    }
}
