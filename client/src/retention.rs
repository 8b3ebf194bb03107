//! Retention on the device: a community may set a retention period (in its group
//! context, fixed at creation; `kring community create --retention DAYS`). This
//! device deletes every notice of such a community once it is older than the
//! period: at every start ([`Client::open`](crate::Client::open)) and at the end of
//! every sync. A notice's age counts from when the hub ordered it (its log entry's
//! time, the same clock relays prune their logs by), or from when it was filed while
//! that is not known (an own notice still queued for a remote hub).
//!
//! Deletion removes the notice's record from the local archive (where it was sealed
//! in any case); the community's cursor stays, so the relay never sends it again.

use std::collections::HashMap;

use time::OffsetDateTime;

use kring_protocol::mls::DAY_SECS;

use crate::client::Client;
use crate::error::Result;
use crate::store::{Batch, Store, StoreError, StoredNotice};

/// Notices deleted in one batch.
const BATCH: usize = 256;

/// When a stored notice expires under a retention period of `retention_days`
/// (Unix seconds); `None` without a period.
pub fn expires_at(stored: &StoredNotice, retention_days: Option<u16>) -> Option<i64> {
    let days = retention_days?;
    let from = stored
        .ordered_at
        .unwrap_or_else(|| stored.notice.filed_at.unix_timestamp());
    let period = i64::try_from(u64::from(days) * DAY_SECS).unwrap_or(i64::MAX);
    Some(from.saturating_add(period))
}

/// Whether a notice expiring at `expires_at` is to be deleted at `now`.
pub fn expired(expires_at: Option<i64>, now: i64) -> bool {
    expires_at.is_some_and(|at| at <= now)
}

/// An expiry time as a date-time (UTC), for listings.
pub fn expiry_time(expires_at: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(expires_at).ok()
}

/// [`Client::delete_expired`] on a store: one scan of the stored notices, and only
/// when some community has a retention period.
pub fn delete_expired_in(store: &Store, now: i64) -> std::result::Result<usize, StoreError> {
    let periods: HashMap<String, u16> = store
        .communities()?
        .into_iter()
        .filter_map(|c| Some((c.id, c.retention_days?)))
        .collect();
    if periods.is_empty() {
        return Ok(0);
    }
    let mut deleted = 0;
    let mut batch = Batch::new();
    let mut in_batch = 0;
    for stored in store.notices(None)? {
        let days = periods.get(&stored.notice.community).copied();
        if !expired(expires_at(&stored, days), now) {
            continue;
        }
        batch.remove_notice(stored.notice.id);
        in_batch += 1;
        if in_batch == BATCH {
            store.commit_plain(std::mem::take(&mut batch))?;
            deleted += in_batch;
            in_batch = 0;
        }
    }
    if in_batch > 0 {
        store.commit_plain(batch)?;
        deleted += in_batch;
    }
    if deleted > 0 {
        tracing::info!(
            deleted,
            "notices past their community's retention period deleted"
        );
    }
    Ok(deleted)
}

impl Client {
    /// When a stored notice will be deleted from this device under its community's
    /// retention period (Unix seconds); `None` if the community keeps notices
    /// without limit.
    pub fn notice_expiry(&self, stored: &StoredNotice) -> Result<Option<i64>> {
        let days = self
            .store
            .community(&stored.notice.community)?
            .and_then(|c| c.retention_days);
        Ok(expires_at(stored, days))
    }

    /// Deletes every stored notice whose community's retention period has passed
    /// at `now` (Unix seconds); returns how many.
    pub fn delete_expired(&self, now: i64) -> Result<usize> {
        Ok(delete_expired_in(&self.store, now)?)
    }

    /// [`delete_expired`](Self::delete_expired) at the client's clock.
    pub(crate) fn delete_expired_now(&self) -> Result<usize> {
        self.delete_expired(i64::try_from(self.now()).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notice::{Category, Notice, NoticeKind};

    const DAY: i64 = 86_400;

    fn stored(filed_at: i64, ordered_at: Option<i64>) -> StoredNotice {
        StoredNotice {
            notice: Notice {
                id: uuid::Uuid::from_u128(1),
                community: "kort@bz".into(),
                label: "TLP:GREEN".into(),
                kind: NoticeKind::Signal,
                category: Category::Other,
                title: "t".into(),
                body: String::new(),
                sender: "liaison@bz".into(),
                filed_at: OffsetDateTime::from_unix_timestamp(filed_at).unwrap(),
                in_reply_to: None,
                stix: None,
                forwarded_from: None,
                attachments: Vec::new(),
            },
            seq: ordered_at.map(|_| 1),
            own: false,
            ordered_at,
        }
    }

    #[test]
    fn a_notice_expires_a_period_after_the_hub_ordered_it() {
        let t = 1_800_000_000;
        // The hub's time counts, not the filer's (which may be off).
        assert_eq!(
            expires_at(&stored(t - 5000, Some(t)), Some(2)),
            Some(t + 2 * DAY)
        );
        // Until it is known, the filing time.
        assert_eq!(expires_at(&stored(t, None), Some(1)), Some(t + DAY));
        // No period, no expiry.
        assert_eq!(expires_at(&stored(t, Some(t)), None), None);
        assert!(!expired(None, i64::MAX));
        assert!(!expired(Some(t + DAY), t + DAY - 1));
        assert!(expired(Some(t + DAY), t + DAY));
        assert!(expiry_time(t).is_some());
    }

    #[test]
    fn only_expired_notices_of_communities_with_a_period_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let t = 1_800_000_000;
        let mut b = Batch::new();
        for (id, days) in [("kort@bz", Some(1)), ("lang@bz", None)] {
            b.put_community(&crate::store::CommunityRecord {
                id: id.into(),
                max_label: "TLP:GREEN".into(),
                joined_epoch: 0,
                active: true,
                retention_days: days,
            })
            .unwrap();
        }
        let notice = |n: u128, community: &str, at: i64| {
            let mut s = stored(at, Some(at));
            s.notice.id = uuid::Uuid::from_u128(n);
            s.notice.community = community.into();
            s
        };
        let old_short = notice(1, "kort@bz", t - 2 * DAY);
        let new_short = notice(2, "kort@bz", t - 10);
        let old_long = notice(3, "lang@bz", t - 200 * DAY);
        for n in [&old_short, &new_short, &old_long] {
            b.put_notice(n).unwrap();
        }
        store.commit_plain(b).unwrap();
        let left = |now: i64| {
            delete_expired_in(&store, now).unwrap();
            let mut ids: Vec<u128> = store
                .notices(None)
                .unwrap()
                .iter()
                .map(|s| s.notice.id.as_u128())
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(left(t), vec![2, 3]);
        assert_eq!(left(t + DAY), vec![3]);
    }
}
