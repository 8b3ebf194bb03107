//! How the command line shows things to people (and to scripts, with `--json`).

use kring_protocol::wire::{CommunitySummary, NoticeStatus};
use serde::Serialize;

use crate::error::ClientError;
use crate::filing::FiledNotice;
use crate::ids::hub_of;
use crate::notice::Notice;
use crate::ordering::{Ordering, seconds};
use crate::store::StoredNotice;
use crate::sync::SyncEvent;

/// `2025-03-01 12:30:00Z` for people (the JSON form keeps RFC 3339).
pub fn human_time(t: &time::OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    t.format(&f).unwrap_or_else(|_| t.to_string())
}

/// A notice in full, for `notice show` and `notice watch`.
pub fn notice_full(n: &Notice, seq: Option<u64>) -> String {
    let mut out = String::new();
    out.push_str(&format!("[{}]\n", n.label));
    out.push_str(&format!("{}\n", n.title));
    let seq = seq.map(|s| format!(" #{s}")).unwrap_or_default();
    out.push_str(&format!(
        "  {} · {} · {}{seq}\n  from {} at {}\n  id {}\n",
        n.kind,
        n.category,
        n.community,
        n.sender,
        human_time(&n.filed_at),
        n.id
    ));
    if let Some(parent) = n.in_reply_to {
        out.push_str(&format!("  in reply to {parent}\n"));
    }
    if let Some(from) = &n.forwarded_from {
        out.push_str(&format!(
            "  forwarded from {} notice {}, filed by {} at {}\n",
            from.community,
            from.id,
            from.sender,
            human_time(&from.filed_at)
        ));
    }
    if !n.body.is_empty() {
        out.push('\n');
        for line in n.body.lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    if let Some(stix) = &n.stix {
        let mut types: Vec<&str> = stix
            .iter()
            .filter_map(|o| o.get("type").and_then(|t| t.as_str()))
            .collect();
        types.sort_unstable();
        types.dedup();
        out.push_str(&format!(
            "\n  STIX: {} object(s): {}\n",
            stix.len(),
            types.join(", ")
        ));
    }
    if !n.attachments.is_empty() {
        out.push_str(&format!(
            "\n  {} attachment(s) (`kring notice attachments {}` saves them):\n",
            n.attachments.len(),
            n.id
        ));
        for a in &n.attachments {
            out.push_str(&format!(
                "    {}  {} bytes  sha256 {}\n",
                a.name, a.size, a.sha256
            ));
        }
    }
    out
}

/// One line per notice, for `notice list`.
pub fn notice_line(s: &StoredNotice) -> String {
    notice_line_expiring(s, None)
}

/// [`notice_line`] saying when the notice expires (Unix seconds; its community's
/// retention period), before the title: `... expires 2026-12-04 10:00:00Z  TITLE`.
pub fn notice_line_expiring(s: &StoredNotice, expires_at: Option<i64>) -> String {
    let n = &s.notice;
    let expires = expires_at
        .and_then(crate::retention::expiry_time)
        .map(|t| format!("expires {}  ", human_time(&t)))
        .unwrap_or_default();
    let seq = s.seq.map_or_else(|| "-".to_string(), |q| q.to_string());
    let short: String = n.id.simple().to_string().chars().take(8).collect();
    format!(
        "{short}  {}  #{seq:<4} {}  [{}]  {}/{}  {}  {expires}{}",
        n.community,
        human_time(&n.filed_at),
        n.label,
        n.kind,
        n.category,
        n.sender,
        n.title
    )
}

/// The line `notice file` and `notice reply` print after the notice id, or the
/// error (exit 3) when a hop refused the notice.
pub fn filed_line(filed: &FiledNotice) -> Result<String, ClientError> {
    let n = &filed.notice;
    let (home, hub) = (&filed.home, &filed.hub);
    match &filed.ordering {
        Ordering::Ordered { seq } if filed.hub_is_home() => Ok(format!(
            "accepted by {home}: {} #{seq} [{}]",
            n.community, n.label
        )),
        Ordering::Ordered { seq } => Ok(format!(
            "queued at {home}; ordered by hub {hub} as {} #{seq} [{}]",
            n.community, n.label
        )),
        Ordering::Queued { waited } if waited.is_zero() => Ok(format!(
            "queued at {home}; not waiting for hub {hub} to order it — it stays queued and \
             will be delivered once the hub has ordered it"
        )),
        Ordering::Queued { waited } => Ok(format!(
            "queued at {home}; hub {hub} has not ordered it within {} s — it stays queued \
             and will be delivered when the hub is reachable",
            seconds(*waited)
        )),
        Ordering::Refused { hop, reason } => Err(ClientError::RefusedAtHop {
            hop: hop.clone(),
            reason: reason.clone(),
        }),
    }
}

/// Warnings (for stderr) about refusals [`filed_line`] does not report: hops after
/// the hub that withhold an ordered notice, and further refusals of a refused one.
pub fn filed_warnings(filed: &FiledNotice) -> Vec<String> {
    let skip = usize::from(filed.ordering.is_refused());
    filed
        .refusals
        .iter()
        .skip(skip)
        .map(|r| {
            format!(
                "warning: refused by {}: {}; the notice is withheld from that hop on",
                r.hop, r.reason
            )
        })
        .collect()
}

/// One line on where an own notice stands: ordered, refused, or still queued at
/// the home relay `home` for the community's hub.
pub fn status_summary(status: &NoticeStatus, home: &str) -> String {
    let hub = hub_of(&status.community);
    match (status.seq, status.refusals.first()) {
        (Some(seq), _) => format!("ordered by hub {hub} as #{seq} in {}", status.community),
        (None, Some(r)) => format!(
            "not ordered in {}: refused by {}: {}",
            status.community, r.hop, r.reason
        ),
        (None, None) => format!("queued at {home}, not yet ordered by {hub}"),
    }
}

/// The relays' account of an own notice, for `notice show` (`home`: this user's
/// home relay).
pub fn notice_status(status: &NoticeStatus, home: &str) -> String {
    let mut out = format!("status: {}\n", status_summary(status, home));
    if status.refusals.is_empty() {
        out.push_str("  no hop refused it\n");
    }
    for r in &status.refusals {
        out.push_str(&format!("  REFUSED at {}: {}\n", r.hop, r.reason));
    }
    out
}

/// One line per community, for `community list`.
pub fn community_line(c: &CommunitySummary) -> String {
    format!(
        "{}  max [{}]  {} member(s), admins: {}  epoch {}  last #{}",
        c.id,
        c.max_label,
        c.members.len(),
        c.admins.join(", "),
        c.epoch,
        c.last_seq
    )
}

/// A community member as a JSON line.
#[derive(Debug, Serialize)]
pub struct MemberLine<'a> {
    /// `NAME@RELAY`.
    pub id: &'a str,
    /// Whether they are a community admin.
    pub admin: bool,
    /// When the member's leaf key last changed (RFC 3339 UTC): the time the hub
    /// ordered the commit that changed it, as this device saw it; `null` if that was
    /// before this device joined (or the member is not in this device's group yet).
    pub leaf_updated_at: Option<String>,
    /// Fingerprint of the member's current leaf encryption key (16 hex digits);
    /// `null` if the member is not in this device's group yet.
    pub leaf_key: Option<&'a str>,
}

/// Unix seconds as RFC 3339 UTC (`2025-03-01T12:30:00Z`).
pub fn rfc3339(secs: u64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).ok()?).ok()?;
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// One line per member, for `community members` without `--json`.
pub fn member_line(id: &str, admin: bool, leaf: Option<&crate::keys::MemberLeaf>) -> String {
    let mut line = id.to_string();
    if admin {
        line.push_str("  (admin)");
    }
    if let Some(leaf) = leaf {
        line.push_str(&format!("  leaf key {}", leaf.leaf_key));
        match leaf.updated_at.and_then(rfc3339) {
            Some(at) => line.push_str(&format!(", updated {at}")),
            None => line.push_str(", updated before you joined"),
        }
    }
    line
}

/// One JSON line; serialising these plain types cannot fail.
pub fn json_line<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// What a sync event says on stderr (notices themselves go to stdout); `None` for
/// events not worth a line.
pub fn event_line(event: &SyncEvent) -> Option<String> {
    Some(match event {
        SyncEvent::Joined {
            community,
            max_label,
        } => format!("joined community {community} (maximum label {max_label})"),
        SyncEvent::Refused {
            community,
            seq,
            notice_id,
            reason,
        } => format!(
            "warning: notice {notice_id} (#{seq} in {community}) was refused on this device and \
             not stored: {reason}"
        ),
        SyncEvent::Unreadable {
            community,
            seq,
            reason,
        } => format!("warning: entry #{seq} of {community} skipped: {reason}"),
        SyncEvent::Changed {
            community,
            epoch,
            committer,
            added,
            removed,
            admins,
        } => {
            let mut parts = Vec::new();
            if !added.is_empty() {
                parts.push(format!("added {}", added.join(", ")));
            }
            if !removed.is_empty() {
                parts.push(format!("removed {}", removed.join(", ")));
            }
            if let Some(admins) = admins {
                parts.push(format!("admins now {}", admins.join(", ")));
            }
            if parts.is_empty() {
                parts.push("keys updated".into());
            }
            format!(
                "{community}: {} by {committer} (epoch {epoch})",
                parts.join("; ")
            )
        }
        SyncEvent::RemovalProposed { community, member } => {
            format!("{community}: the hub asks to remove {member}; committing")
        }
        SyncEvent::RemovalCommitted { community, seq } => {
            format!("{community}: committed the hub's pending removals (#{seq})")
        }
        SyncEvent::KeysUpdated {
            community,
            seq,
            epoch,
        } => format!("{community}: updated your keys on schedule (epoch {epoch}, #{seq})"),
        SyncEvent::Left { community } => {
            format!("you were removed from {community}")
        }
        SyncEvent::Warning(w) => format!("warning: {w}"),
        SyncEvent::Reconnecting { after, reason } => format!(
            "connection lost ({reason}); reconnecting in {} s",
            after.as_secs()
        ),
        SyncEvent::Notice(_) | SyncEvent::CaughtUp => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notice::{Category, NoticeKind};
    use std::time::Duration;

    fn sample() -> Notice {
        Notice {
            id: uuid::Uuid::from_u128(0xabcdef),
            community: "desinformatie@bz".into(),
            label: "NL:STG-CONFIDENTIEEL;TLP=AMBER".into(),
            kind: NoticeKind::Signal,
            category: Category::Disinformation,
            title: "Nepnieuws".into(),
            body: "regel 1\nregel 2".into(),
            sender: "analist@post-a".into(),
            filed_at: time::macros::datetime!(2025-03-01 12:30:00 UTC),
            in_reply_to: None,
            stix: None,
            forwarded_from: None,
            attachments: Vec::new(),
        }
    }

    #[test]
    fn full_notice_puts_the_label_first() {
        let text = notice_full(&sample(), Some(12));
        assert!(
            text.starts_with("[NL:STG-CONFIDENTIEEL;TLP=AMBER]\nNepnieuws\n"),
            "{text}"
        );
        assert!(
            text.contains("signal · disinformation · desinformatie@bz #12"),
            "{text}"
        );
        assert!(
            text.contains("from analist@post-a at 2025-03-01 12:30:00Z"),
            "{text}"
        );
        assert!(text.contains("  regel 2\n"), "{text}");
        assert!(!text.contains("forwarded"), "{text}");
        let mut forward = sample();
        forward.forwarded_from = Some(crate::notice::ForwardedFrom {
            community: "intern@bz".into(),
            id: uuid::Uuid::from_u128(7),
            sender: "liaison@bz".into(),
            filed_at: time::macros::datetime!(2025-03-01 11:00:00 UTC),
        });
        let text = notice_full(&forward, None);
        assert!(
            text.contains(
                "  forwarded from intern@bz notice 00000000-0000-0000-0000-000000000007, \
                 filed by liaison@bz at 2025-03-01 11:00:00Z\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn list_lines_show_label_and_title_on_one_line() {
        let line = notice_line(&StoredNotice {
            notice: sample(),
            seq: Some(3),
            own: false,
            ordered_at: None,
        });
        assert!(!line.contains('\n'));
        assert!(line.contains("[NL:STG-CONFIDENTIEEL;TLP=AMBER]"), "{line}");
        assert!(line.contains("Nepnieuws"), "{line}");
        assert!(!line.contains("expires"), "{line}");
        let stored = StoredNotice {
            notice: sample(),
            seq: Some(3),
            own: false,
            ordered_at: None,
        };
        let line = notice_line_expiring(&stored, Some(1_800_000_000));
        assert!(
            line.contains("expires 2027-01-15 08:00:00Z  Nepnieuws"),
            "{line}"
        );
    }

    fn filed(home: &str, ordering: Ordering, refusals: &[(&str, &str)]) -> FiledNotice {
        FiledNotice {
            notice: sample(),
            seq: ordering.seq(),
            epoch: 2,
            home: home.into(),
            hub: "bz".into(),
            ordering,
            refusals: crate::ordering::tests::hop_refusals(refusals),
        }
    }

    #[test]
    fn a_local_hub_accepts_at_once() {
        let f = filed("bz", Ordering::Ordered { seq: 12 }, &[]);
        assert_eq!(
            filed_line(&f).unwrap(),
            "accepted by bz: desinformatie@bz #12 [NL:STG-CONFIDENTIEEL;TLP=AMBER]"
        );
        assert!(filed_warnings(&f).is_empty());
    }

    #[test]
    fn a_remote_hub_orders_after_the_home_relay_queued() {
        let f = filed("post-a", Ordering::Ordered { seq: 4 }, &[]);
        assert_eq!(
            filed_line(&f).unwrap(),
            "queued at post-a; ordered by hub bz as desinformatie@bz #4 \
             [NL:STG-CONFIDENTIEEL;TLP=AMBER]"
        );
    }

    #[test]
    fn an_unordered_notice_stays_queued_and_is_not_an_error() {
        let f = filed(
            "post-a",
            Ordering::Queued {
                waited: Duration::from_secs(10),
            },
            &[],
        );
        assert_eq!(
            filed_line(&f).unwrap(),
            "queued at post-a; hub bz has not ordered it within 10 s — it stays queued and \
             will be delivered when the hub is reachable"
        );
        let f = filed(
            "post-a",
            Ordering::Queued {
                waited: Duration::ZERO,
            },
            &[],
        );
        let line = filed_line(&f).unwrap();
        assert!(
            line.starts_with("queued at post-a; not waiting for hub bz"),
            "{line}"
        );
    }

    #[test]
    fn a_refusal_is_exit_3_naming_the_hop() {
        let f = filed(
            "post-a",
            Ordering::Refused {
                hop: "bz".into(),
                reason: "label above the community maximum".into(),
            },
            &[
                ("bz", "label above the community maximum"),
                ("post-a->bz", "link accreditation"),
            ],
        );
        let err = filed_line(&f).unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert_eq!(
            err.to_string(),
            "refused by bz: label above the community maximum"
        );
        assert_eq!(
            filed_warnings(&f),
            vec![
                "warning: refused by post-a->bz: link accreditation; the notice is withheld \
                 from that hop on"
                    .to_string()
            ]
        );
    }

    #[test]
    fn refusals_after_the_hub_are_warnings_on_an_ordered_notice() {
        let f = filed(
            "post-a",
            Ordering::Ordered { seq: 5 },
            &[("bz->aivd", "accreditation")],
        );
        assert!(filed_line(&f).is_ok());
        assert_eq!(filed_warnings(&f).len(), 1);
        assert!(filed_warnings(&f)[0].contains("bz->aivd"));
    }

    use crate::ordering::tests::status;

    #[test]
    fn show_says_where_an_own_notice_stands() {
        let queued = notice_status(&status(None, &[]), "post-a");
        assert_eq!(
            queued,
            "status: queued at post-a, not yet ordered by bz\n  no hop refused it\n"
        );
        let ordered = notice_status(&status(Some(8), &[]), "post-a");
        assert!(
            ordered.starts_with("status: ordered by hub bz as #8 in desinformatie@bz\n"),
            "{ordered}"
        );
        let refused = notice_status(&status(None, &[("bz", "too high")]), "post-a");
        assert!(
            refused.starts_with("status: not ordered in desinformatie@bz: refused by bz"),
            "{refused}"
        );
        assert!(refused.contains("  REFUSED at bz: too high\n"), "{refused}");
        assert!(!refused.contains("queued"), "{refused}");
    }

    #[test]
    fn refusal_events_carry_no_content() {
        let line = event_line(&SyncEvent::Refused {
            community: "c@bz".into(),
            seq: 4,
            notice_id: uuid::Uuid::from_u128(1),
            reason: "level STG-GEHEIM is above clearance STG-CONFIDENTIEEL".into(),
        })
        .unwrap();
        assert!(line.starts_with("warning: notice 00000000-0000-0000-0000-000000000001"));
        assert!(event_line(&SyncEvent::CaughtUp).is_none());
    }

    #[test]
    fn members_show_their_leaf_key_and_when_it_changed() {
        let leaf = crate::keys::MemberLeaf {
            id: "liaison@bz".into(),
            leaf_key: "3f9c01d2a7b45e08".into(),
            updated_at: Some(1_740_832_200),
        };
        assert_eq!(
            member_line("liaison@bz", true, Some(&leaf)),
            "liaison@bz  (admin)  leaf key 3f9c01d2a7b45e08, updated 2025-03-01T12:30:00Z"
        );
        let unknown = crate::keys::MemberLeaf {
            updated_at: None,
            ..leaf.clone()
        };
        assert!(member_line("liaison@bz", false, Some(&unknown)).ends_with("before you joined"));
        assert_eq!(member_line("x@bz", false, None), "x@bz");
        let json = json_line(&MemberLine {
            id: "liaison@bz",
            admin: false,
            leaf_updated_at: leaf.updated_at.and_then(rfc3339),
            leaf_key: Some(&leaf.leaf_key),
        });
        assert_eq!(
            json,
            r#"{"id":"liaison@bz","admin":false,"leaf_updated_at":"2025-03-01T12:30:00Z","leaf_key":"3f9c01d2a7b45e08"}"#
        );
    }
}
