//! What the pages show and what they ask of the device: plain data, so the pages
//! and routes are tested without a relay.

use tokio::sync::oneshot;
use uuid::Uuid;

use crate::notice::{Category, Notice};

/// How the device answers a call.
pub type Reply<T> = oneshot::Sender<std::result::Result<T, Problem>>;

/// What the routes ask of the device.
#[derive(Debug)]
pub enum Call {
    /// The user, the communities and the notices on this device.
    Snapshot(Reply<Snapshot>),
    /// A community's members and admins (asked of the relay).
    Members(String, Reply<MembersView>),
    /// What adding a user to a community would mean (community, user); nothing
    /// is committed.
    PreviewAdd(String, String, Reply<AddCheck>),
    /// The home relay's audit log with its verification (org-admins).
    Audit(Reply<AuditView>),
    /// Something that changes state; the answer is a sentence saying what was done.
    Act(Action, Reply<Done>),
    /// Attachment number `.1` (0-based) of notice `.0`, fetched, opened and checked
    /// into a scratch directory of the profile.
    Attachment(Uuid, usize, Reply<SavedFile>),
}

/// An attachment opened on the device for the browser: the file (in a scratch
/// directory the route removes) and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedFile {
    /// The opened file.
    pub path: std::path::PathBuf,
    /// Its scratch directory.
    pub dir: std::path::PathBuf,
    /// The file's name in the notice.
    pub name: String,
    /// Its size.
    pub size: u64,
}

/// What an action did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// A sentence for the person.
    pub message: String,
    /// The notice filed, if one was.
    pub notice: Option<Uuid>,
}

/// A state-changing action.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// File a notice.
    File {
        /// `NAME@HUB`.
        community: String,
        /// The label's text.
        label: String,
        /// Category.
        category: Category,
        /// Title.
        title: String,
        /// Body.
        body: String,
        /// Files to attach (uploaded into the interface's scratch space).
        attachments: Vec<std::path::PathBuf>,
    },
    /// Reply to a notice.
    Reply {
        /// The notice answered.
        to: Uuid,
        /// The label's text.
        label: String,
        /// Body.
        body: String,
    },
    /// Forward a notice into another community.
    Forward {
        /// The notice forwarded.
        id: Uuid,
        /// The target community, `NAME@HUB`.
        to: String,
        /// A higher label than the original's, if wanted.
        label: Option<String>,
        /// A comment for the target community.
        comment: Option<String>,
    },
    /// Add a member.
    Add {
        /// The community.
        community: String,
        /// `NAME@RELAY`.
        user: String,
    },
    /// Remove a member.
    Remove {
        /// The community.
        community: String,
        /// `NAME@RELAY`.
        user: String,
    },
    /// Appoint (`add`) or remove an admin.
    Admin {
        /// The community.
        community: String,
        /// `NAME@RELAY`.
        user: String,
        /// Appoint rather than remove.
        add: bool,
    },
    /// Create a community.
    Create {
        /// Its name (hubbed at the home relay).
        name: String,
        /// Its maximum label.
        max_label: String,
    },
    /// Revoke a user of the organisation.
    Revoke {
        /// `NAME@RELAY`.
        user: String,
        /// Why.
        reason: String,
    },
}

/// An error as a person reads it: what happened and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What happened.
    pub what: String,
    /// What to do about it.
    pub todo: String,
}

impl Problem {
    /// A problem with its remedy.
    pub fn new(what: impl Into<String>, todo: impl Into<String>) -> Problem {
        Problem {
            what: what.into(),
            todo: todo.into(),
        }
    }
}

/// The device's state as the pages show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// `NAME@RELAY`.
    pub user: String,
    /// The home relay.
    pub relay: String,
    /// The user's clearance (canonical text), if the certificate carries one.
    pub clearance: Option<String>,
    /// Whether the user is an org-admin.
    pub org_admin: bool,
    /// Active communities.
    pub communities: Vec<CommunityView>,
    /// Notices, newest first.
    pub notices: Vec<NoticeView>,
    /// Why the last sync failed, if it did.
    pub offline: Option<Problem>,
}

/// A community this device is a member of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommunityView {
    /// `NAME@HUB`.
    pub id: String,
    /// Canonical text of its maximum label.
    pub max_label: String,
}

/// A notice on this device.
#[derive(Debug, Clone, PartialEq)]
pub struct NoticeView {
    /// The notice.
    pub notice: Notice,
    /// Its place in the community log, once the hub ordered it.
    pub seq: Option<u64>,
    /// Whether this device filed it.
    pub own: bool,
    /// Why a hop refused it, if one did.
    pub refused: Option<String>,
}

/// A community's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembersView {
    /// `NAME@HUB`.
    pub id: String,
    /// Canonical text of its maximum label.
    pub max_label: String,
    /// Members (`NAME@RELAY`).
    pub members: Vec<String>,
    /// Admins.
    pub admins: Vec<String>,
    /// Organisation and clearance of the members in this device's group.
    pub profiles: Vec<MemberProfile>,
}

/// A member's organisation and clearance, from their certificate.
pub use crate::community::MemberProfile;

/// The policy decision on adding a user, shown before anything is committed.
pub use crate::community::AddDecision as AddCheck;

/// The home relay's audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditView {
    /// The relay.
    pub relay: String,
    /// Records in the log.
    pub total: u64,
    /// The newest records, newest first.
    pub records: Vec<kring_protocol::wire::AuditRecordView>,
    /// The relay's verification of the whole chain, in words.
    pub verdict: String,
    /// Whether the chain verified.
    pub intact: bool,
}
