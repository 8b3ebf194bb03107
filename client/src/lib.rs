//! The Kring client: a library that talks to the user's home relay, keeps the
//! user's MLS state and notices locally, and the `kring` command line built on it.
//!
//! The entry point is [`Client`]: open a device from a profile directory, then
//! [`sync`](Client::sync), [`create_community`](Client::create_community),
//! [`add_members`](Client::add_members), [`file_notice`](Client::file_notice),
//! [`notices`](Client::notices), [`watch`](Client::watch), … Every error is a
//! [`ClientError`] whose [`exit_code`](ClientError::exit_code) follows the documented exit codes.
#![forbid(unsafe_code)]

pub mod attachments;
pub mod audit;
pub mod cli;
mod client;
pub mod community;
pub mod conn;
pub mod device_key;
pub mod enroll;
pub mod error;
pub mod export;
pub mod filing;
pub mod forward;
pub mod ids;
pub mod keys;
pub mod labels;
pub mod notice;
pub mod ordering;
pub mod profile;
pub mod retention;
pub mod revoke;
pub mod store;
pub mod sync;
pub mod taxii;
#[cfg(test)]
mod testpki;
pub mod ui;
pub mod unlock;
pub mod validator;
pub mod vault;
pub mod wipe;

pub use audit::AuditSummary;
pub use client::{Client, DEFAULT_PUBLISH, MAX_PUBLISH};
pub use community::{AdminChange, CommitReceipt};
pub use error::{ClientError, Result};
pub use filing::{FiledNotice, PendingFiling, SealedFiling};
pub use keys::{Clock, KeyUpdate, MemberLeaf};
pub use notice::{Category, Notice, NoticeDraft, NoticeKind};
pub use ordering::Ordering;
pub use sync::{SyncEvent, SyncReport};
