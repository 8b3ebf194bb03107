//! How the command line shows things to people (and to scripts, with `--json`).

use kring_protocol::wire::{CommunitySummary, NoticeStatus};
use serde::Serialize;

use crate::notice::Notice;
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
    out
}

/// One line per notice, for `notice list`.
pub fn notice_line(s: &StoredNotice) -> String {
    let n = &s.notice;
    let seq = s.seq.map_or_else(|| "-".to_string(), |q| q.to_string());
    let short: String = n.id.simple().to_string().chars().take(8).collect();
    format!(
        "{short}  {}  #{seq:<4} {}  [{}]  {}/{}  {}  {}",
        n.community,
        human_time(&n.filed_at),
        n.label,
        n.kind,
        n.category,
        n.sender,
        n.title
    )
}

/// The relays' account of an own notice.
pub fn notice_status(status: &NoticeStatus) -> String {
    let mut out = match status.seq {
        Some(seq) => format!(
            "status: ordered by the hub as #{seq} in {}\n",
            status.community
        ),
        None => format!("status: not (yet) ordered in {}\n", status.community),
    };
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
                parts.push("updated".into());
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
    }

    #[test]
    fn list_lines_show_label_and_title_on_one_line() {
        let line = notice_line(&StoredNotice {
            notice: sample(),
            seq: Some(3),
            own: false,
        });
        assert!(!line.contains('\n'));
        assert!(line.contains("[NL:STG-CONFIDENTIEEL;TLP=AMBER]"), "{line}");
        assert!(line.contains("Nepnieuws"), "{line}");
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
}
