//! The relay's decisions, as plain functions of their inputs (no store, no clock, no
//! sockets), so every branch is unit-tested.

use std::collections::BTreeSet;

use kring_policy::{Clearance, Decision, Label, decide, within};
use kring_protocol::wire::ErrorCode;

use crate::records::CommunityRecord;

/// How many epochs back a notice may have been encrypted in and still be accepted
/// (clients keep this many past epochs).
pub const PAST_EPOCHS: u64 = 5;

fn deny(reason: impl Into<String>) -> ErrorCode {
    ErrorCode::PolicyDenied {
        reason: reason.into(),
    }
}

fn require(d: Decision, who: &str) -> Result<(), ErrorCode> {
    if d.allowed {
        Ok(())
    } else {
        Err(deny(format!("{who}: {d}")))
    }
}

/// A community may be created when its maximum label is admitted by the creator's
/// clearance and by the hub relay's accreditation.
pub fn create_community(
    max: &Label,
    creator: Option<&Clearance>,
    hub: &Clearance,
) -> Result<(), ErrorCode> {
    let Some(creator) = creator else {
        return Err(deny("the creator's certificate carries no clearance"));
    };
    require(decide(max, creator), "creator's clearance")?;
    require(decide(max, hub), "hub relay's accreditation")
}

/// A member added to a community: their clearance and their home relay's
/// accreditation must both admit the community's maximum label.
pub fn admit_member(
    user: &str,
    max: &Label,
    clearance: Option<&Clearance>,
    home_accreditation: Option<&Clearance>,
) -> Result<(), ErrorCode> {
    let Some(clearance) = clearance else {
        return Err(deny(format!(
            "{user}: the certificate carries no clearance"
        )));
    };
    let d = decide(max, clearance);
    if !d.allowed {
        return Err(deny(format!("cannot add {user}: {d}")));
    }
    let home = user.rsplit_once('@').map(|(_, r)| r).unwrap_or_default();
    let Some(accr) = home_accreditation else {
        return Err(deny(format!(
            "cannot add {user}: home relay {home} is not a known peer of this relay"
        )));
    };
    let d = decide(max, accr);
    if !d.allowed {
        return Err(deny(format!(
            "cannot add {user}: home relay {home} is not accredited for the community's maximum label {max}: {d}"
        )));
    }
    Ok(())
}

/// A verified commit, before it is merged. `added` carries each new member with their
/// clearance and their home relay's accreditation; `removed_by_hub` are removals the
/// hub proposed (revocation), which any member may commit.
#[allow(clippy::too_many_arguments)]
pub fn commit(
    rec: &CommunityRecord,
    committer: &str,
    max: &Label,
    added: &[(String, Option<Clearance>, Option<Clearance>)],
    removed: &[String],
    removed_by_hub: &[String],
    new_admins: Option<&[String]>,
) -> Result<(), ErrorCode> {
    let is_admin = rec.admins.iter().any(|a| a == committer);
    let admin_only_removals = removed.iter().any(|r| !removed_by_hub.contains(r));
    if (!added.is_empty() || admin_only_removals || new_admins.is_some()) && !is_admin {
        return Err(ErrorCode::NotAdmin);
    }
    for (user, clearance, accr) in added {
        if rec.members.contains(user) {
            return Err(ErrorCode::BadRequest {
                reason: format!("{user} is already a member"),
            });
        }
        admit_member(user, max, clearance.as_ref(), accr.as_ref())?;
    }
    let admins: Vec<&String> = new_admins
        .map(|a| a.iter().collect())
        .unwrap_or_else(|| rec.admins.iter().collect());
    let remaining: Vec<&&String> = admins.iter().filter(|a| !removed.contains(a)).collect();
    // The hub's removal of revoked members is never blocked: a community whose every
    // admin was revoked carries on without admin changes (its members' org-admins
    // can set up a new one).
    let only_revocations =
        !removed.is_empty() && removed.iter().all(|r| removed_by_hub.contains(r));
    if remaining.is_empty() && !only_revocations {
        return Err(ErrorCode::BadRequest {
            reason: "a community cannot be left without an admin".into(),
        });
    }
    for a in remaining {
        let member_after = (rec.members.contains(a) && !removed.contains(a))
            || added.iter().any(|(u, _, _)| u == *a);
        if !member_after {
            return Err(ErrorCode::BadRequest {
                reason: format!("admin {a} is not a member of the community"),
            });
        }
    }
    Ok(())
}

/// The shortest time between two self-updates (commits that only update the
/// committer's own leaf) of one member in one community. Each self-update moves
/// the epoch and voids every commit made for the old one, so a member updating
/// without pause would keep admins from ever committing.
pub const SELF_UPDATE_INTERVAL_SECS: u64 = 600;

/// Above this many remembered self-updates, expired ones are dropped.
const SELF_UPDATES_PRUNE_AT: usize = 4096;

/// When each member last updated its leaf in each community, at this hub (in
/// memory: a restart forgets it, which at most allows one early update each).
#[derive(Debug, Default)]
pub struct SelfUpdates {
    last: std::collections::HashMap<(String, String), u64>,
}

impl SelfUpdates {
    /// A self-update of `member` in `community` at `now` (seconds): refused if
    /// the member's previous one there is less than [`SELF_UPDATE_INTERVAL_SECS`]
    /// old. The first one is always allowed (e.g. after a suspected compromise).
    pub fn check(&self, community: &str, member: &str, now: u64) -> Result<(), ErrorCode> {
        let Some(last) = self.last.get(&(community.to_owned(), member.to_owned())) else {
            return Ok(());
        };
        let next = last.saturating_add(SELF_UPDATE_INTERVAL_SECS);
        if now >= next {
            return Ok(());
        }
        Err(deny(format!(
            "{member} updated its keys in {community} {} s ago; a member may update \
             them once every {} minutes: retry in {} s",
            now.saturating_sub(*last),
            SELF_UPDATE_INTERVAL_SECS / 60,
            next - now
        )))
    }

    /// Records an accepted self-update.
    pub fn record(&mut self, community: &str, member: &str, now: u64) {
        if self.last.len() >= SELF_UPDATES_PRUNE_AT {
            self.last
                .retain(|_, t| t.saturating_add(SELF_UPDATE_INTERVAL_SECS) > now);
        }
        self.last
            .insert((community.to_owned(), member.to_owned()), now);
    }
}

/// A notice filed into a community: it must be within the community's maximum, within
/// the sender's clearance and within this relay's accreditation, and encrypted in the
/// current epoch or one of the [`PAST_EPOCHS`] before it.
pub fn file_notice(
    label: &Label,
    max: &Label,
    sender: Option<&Clearance>,
    relay: &Clearance,
    msg_epoch: u64,
    current_epoch: u64,
) -> Result<(), ErrorCode> {
    if msg_epoch > current_epoch || msg_epoch + PAST_EPOCHS < current_epoch {
        return Err(ErrorCode::WrongEpoch {
            current: current_epoch,
        });
    }
    let d = within(label, max);
    if !d.allowed {
        return Err(deny(format!(
            "label {label} is not within the community's maximum {max}: {d}"
        )));
    }
    let Some(sender) = sender else {
        return Err(deny("the sender's certificate carries no clearance"));
    };
    require(decide(label, sender), "sender's clearance")?;
    require(decide(label, relay), "relay accreditation")
}

/// A device files in the epoch its home relay knows as current. An older epoch (which
/// [`file_notice`] would still accept from a federation peer, for notices in flight
/// during a membership change) means the device has not seen the latest commit and
/// may not encrypt to every member: it must sync and encrypt again.
pub fn fresh_filing(msg_epoch: u64, current_epoch: u64) -> Result<(), ErrorCode> {
    if msg_epoch < current_epoch {
        return Err(ErrorCode::WrongEpoch {
            current: current_epoch,
        });
    }
    Ok(())
}

/// Delivery of a notice to one device: the member's current clearance must admit it.
pub fn deliver(label: &Label, member: Option<&Clearance>) -> Decision {
    kring_policy::decide_opt(Some(label), member)
}

/// A forwarded notice at the hub of the target community `community`
/// ([`kring_protocol::notice_aad`]): its label must be the original's or higher, and
/// the original's TLP colour must allow organisation `forwarder_org` (with the
/// `clients` it declares) to forward it into a community whose members belong to
/// `member_orgs` (every member's home relay's organisation, as this relay's trust
/// map has it). The refusal names the rule.
pub fn forward(
    label: &Label,
    original: &Label,
    community: &str,
    forwarder_org: Option<&str>,
    member_orgs: &BTreeSet<String>,
    clients: &BTreeSet<String>,
) -> Result<(), ErrorCode> {
    let org = forwarder_org.unwrap_or_default();
    kring_protocol::notice_aad::check_forward(original, label, community, org, member_orgs, clients)
        .map_err(|refusal| deny(refusal.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(s: &str) -> Label {
        s.parse().unwrap()
    }

    #[test]
    fn a_member_self_updates_once_per_interval() {
        let mut updates = SelfUpdates::default();
        assert_eq!(updates.check("c@bz", "a@bz", 1000), Ok(()));
        updates.record("c@bz", "a@bz", 1000);
        let refused = updates.check("c@bz", "a@bz", 1001).unwrap_err();
        assert!(
            matches!(&refused, ErrorCode::PolicyDenied { reason }
                if reason.contains("retry in 599 s")),
            "{refused}"
        );
        let last = 1000 + SELF_UPDATE_INTERVAL_SECS - 1;
        assert!(updates.check("c@bz", "a@bz", last).is_err());
        // Other members and other communities are not held back.
        assert_eq!(updates.check("c@bz", "b@bz", 1001), Ok(()));
        assert_eq!(updates.check("d@bz", "a@bz", 1001), Ok(()));
        assert_eq!(
            updates.check("c@bz", "a@bz", 1000 + SELF_UPDATE_INTERVAL_SECS),
            Ok(())
        );
        // Expired entries are dropped once there are many.
        for i in 0..SELF_UPDATES_PRUNE_AT {
            updates.record("c@bz", &format!("m{i}@bz"), 1000);
        }
        updates.record("c@bz", "late@bz", 1000 + SELF_UPDATE_INTERVAL_SECS);
        assert_eq!(updates.last.len(), 1);
    }

    #[test]
    fn a_device_files_in_the_current_epoch() {
        assert_eq!(fresh_filing(4, 4), Ok(()));
        assert_eq!(
            fresh_filing(3, 4),
            Err(ErrorCode::WrongEpoch { current: 4 })
        );
        // Newer than the relay knows: file_notice decides (WrongEpoch as well).
        assert_eq!(fresh_filing(5, 4), Ok(()));
    }
    fn c(s: &str) -> Clearance {
        s.parse().unwrap()
    }
    fn rec(members: &[&str], admins: &[&str]) -> CommunityRecord {
        CommunityRecord {
            id: "d@bz".into(),
            hub: "bz".into(),
            max_label: l("NL:STG-CONFIDENTIEEL").to_bytes(),
            admins: admins.iter().map(|s| s.to_string()).collect(),
            members: members.iter().map(|s| s.to_string()).collect(),
            epoch: 3,
            last_seq: 10,
            created_by: "liaison@bz".into(),
            created_at: 0,
        }
    }
    fn reason(e: ErrorCode) -> String {
        e.to_string()
    }

    #[test]
    fn create_requires_creator_and_hub() {
        let max = l("NL:STG-GEHEIM");
        assert!(create_community(&max, Some(&c("NL:STG-GEHEIM")), &c("NL:STG-GEHEIM")).is_ok());
        let e = create_community(&max, Some(&c("NL:STG-CONFIDENTIEEL")), &c("NL:STG-GEHEIM"));
        assert!(reason(e.unwrap_err()).contains("creator"));
        let e = create_community(&max, Some(&c("NL:STG-GEHEIM")), &c("NL:STG-CONFIDENTIEEL"));
        assert!(reason(e.unwrap_err()).contains("hub relay"));
        assert!(create_community(&max, None, &c("NL:STG-GEHEIM")).is_err());
    }

    #[test]
    fn adding_needs_admin_and_policy() {
        let r = rec(&["liaison@bz", "x@bz"], &["liaison@bz"]);
        let max = l("NL:STG-CONFIDENTIEEL");
        let ok = vec![(
            "analist@post-a".to_string(),
            Some(c("NL:STG-CONFIDENTIEEL")),
            Some(c("NL:STG-CONFIDENTIEEL")),
        )];
        assert!(commit(&r, "liaison@bz", &max, &ok, &[], &[], None).is_ok());
        assert_eq!(
            commit(&r, "x@bz", &max, &ok, &[], &[], None),
            Err(ErrorCode::NotAdmin)
        );
        let low = vec![(
            "attache@post-a".to_string(),
            Some(c("NL:DEP-VERTROUWELIJK")),
            Some(c("NL:STG-CONFIDENTIEEL")),
        )];
        let e = reason(commit(&r, "liaison@bz", &max, &low, &[], &[], None).unwrap_err());
        assert!(e.contains("attache@post-a") && e.contains("above"), "{e}");
        let relay_low = vec![(
            "analist@post-a".to_string(),
            Some(c("NL:STG-GEHEIM")),
            Some(c("NL:DEP-VERTROUWELIJK")),
        )];
        let e = reason(commit(&r, "liaison@bz", &max, &relay_low, &[], &[], None).unwrap_err());
        assert!(e.contains("home relay post-a"), "{e}");
        let unknown = vec![("a@zz".to_string(), Some(c("NL:STG-GEHEIM")), None)];
        let e = reason(commit(&r, "liaison@bz", &max, &unknown, &[], &[], None).unwrap_err());
        assert!(e.contains("not a known peer"), "{e}");
        let no_clearance = vec![("b@bz".to_string(), None, Some(c("NL:STG-GEHEIM")))];
        assert!(commit(&r, "liaison@bz", &max, &no_clearance, &[], &[], None).is_err());
        let dup = vec![(
            "x@bz".to_string(),
            Some(c("NL:STG-GEHEIM")),
            Some(c("NL:STG-GEHEIM")),
        )];
        assert!(commit(&r, "liaison@bz", &max, &dup, &[], &[], None).is_err());
    }

    #[test]
    fn removals_and_admins() {
        let r = rec(&["liaison@bz", "x@bz", "y@bz"], &["liaison@bz"]);
        let max = l("NL:STG-CONFIDENTIEEL");
        let rm = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(commit(&r, "liaison@bz", &max, &[], &rm(&["x@bz"]), &[], None).is_ok());
        assert_eq!(
            commit(&r, "y@bz", &max, &[], &rm(&["x@bz"]), &[], None),
            Err(ErrorCode::NotAdmin)
        );
        // A removal the hub proposed may be committed by any member.
        assert!(commit(&r, "y@bz", &max, &[], &rm(&["x@bz"]), &rm(&["x@bz"]), None).is_ok());
        let e = commit(&r, "liaison@bz", &max, &[], &rm(&["liaison@bz"]), &[], None);
        assert!(reason(e.unwrap_err()).contains("without an admin"));
        // ... unless the hub removes a revoked last admin: that is never blocked.
        let sole = rm(&["liaison@bz"]);
        assert!(commit(&r, "y@bz", &max, &[], &sole, &sole, None).is_ok());
        let admins = rm(&["liaison@bz", "y@bz"]);
        assert!(commit(&r, "liaison@bz", &max, &[], &[], &[], Some(&admins)).is_ok());
        assert_eq!(
            commit(&r, "y@bz", &max, &[], &[], &[], Some(&admins)),
            Err(ErrorCode::NotAdmin)
        );
        let e = commit(
            &r,
            "liaison@bz",
            &max,
            &[],
            &[],
            &[],
            Some(&rm(&["nobody@bz"])),
        );
        assert!(reason(e.unwrap_err()).contains("not a member"));
        let e = commit(&r, "liaison@bz", &max, &[], &[], &[], Some(&[]));
        assert!(reason(e.unwrap_err()).contains("without an admin"));
    }

    #[test]
    fn notices_are_checked_against_max_sender_relay_and_epoch() {
        let max = l("NL:STG-CONFIDENTIEEL");
        let relay = c("NL:STG-CONFIDENTIEEL");
        let sender = c("NL:STG-GEHEIM");
        let ok = l("NL:DEP-VERTROUWELIJK");
        assert!(file_notice(&ok, &max, Some(&sender), &relay, 3, 3).is_ok());
        assert!(file_notice(&ok, &max, Some(&sender), &relay, 1, 3).is_ok());
        assert_eq!(
            file_notice(&ok, &max, Some(&sender), &relay, 4, 3),
            Err(ErrorCode::WrongEpoch { current: 3 })
        );
        assert_eq!(
            file_notice(&ok, &max, Some(&sender), &relay, 1, 9),
            Err(ErrorCode::WrongEpoch { current: 9 })
        );
        let high = l("NL:STG-GEHEIM");
        let e = reason(file_notice(&high, &max, Some(&sender), &relay, 3, 3).unwrap_err());
        assert!(e.contains("maximum"), "{e}");
        let e = reason(
            file_notice(&ok, &max, Some(&c("NL:ONGERUBRICEERD")), &relay, 3, 3).unwrap_err(),
        );
        assert!(e.contains("sender"), "{e}");
        let e = reason(
            file_notice(
                &ok,
                &l("NL:STG-GEHEIM"),
                Some(&sender),
                &c("NL:ONGERUBRICEERD"),
                3,
                3,
            )
            .unwrap_err(),
        );
        assert!(e.contains("relay accreditation"), "{e}");
        assert!(file_notice(&ok, &max, None, &relay, 3, 3).is_err());
    }

    #[test]
    fn forwards_follow_the_originals_tlp_at_the_hub() {
        let orgs = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let hub = |original: &str, label: &str, members: &[&str], clients: &[&str]| {
            forward(
                &l(label),
                &l(original),
                "c@bz",
                Some("bz"),
                &orgs(members),
                &orgs(clients),
            )
        };
        let mixed = ["bz", "nctv", "post-a"];
        // GREEN and CLEAR anywhere.
        assert_eq!(hub("TLP:GREEN", "TLP:GREEN", &mixed, &[]), Ok(()));
        assert_eq!(hub("TLP:CLEAR", "TLP:CLEAR", &["aivd"], &[]), Ok(()));
        // RED never, even into the forwarder's own organisation.
        let red = reason(hub("TLP:RED", "TLP:RED", &["bz"], &[]).unwrap_err());
        assert!(red.contains("forward refused by the TLP rule"), "{red}");
        assert!(red.contains("TLP:RED may not be forwarded"), "{red}");
        // AMBER+STRICT only among the forwarder's organisation, clients or not.
        assert_eq!(
            hub("TLP:AMBER+STRICT", "TLP:AMBER+STRICT", &["bz"], &[]),
            Ok(())
        );
        let strict = hub(
            "TLP:AMBER+STRICT",
            "TLP:AMBER+STRICT",
            &["bz", "post-a"],
            &["post-a"],
        );
        let strict = reason(strict.unwrap_err());
        assert!(strict.contains("TLP rule"), "{strict}");
        assert!(strict.contains("members from post-a"), "{strict}");
        // AMBER among the organisation and its declared clients.
        assert_eq!(
            hub("TLP:AMBER", "TLP:AMBER", &["bz", "post-a"], &["post-a"]),
            Ok(())
        );
        let amber = reason(hub("TLP:AMBER", "TLP:AMBER", &["bz", "post-a"], &[]).unwrap_err());
        assert!(amber.contains("none declared"), "{amber}");
        let amber = reason(hub("TLP:AMBER", "TLP:AMBER", &mixed, &["post-a"]).unwrap_err());
        assert!(amber.contains("members from nctv"), "{amber}");
        // An unmarked original counts as AMBER.
        let unmarked = hub("NL:STG-CONFIDENTIEEL", "NL:STG-CONFIDENTIEEL", &mixed, &[]);
        assert!(reason(unmarked.unwrap_err()).contains("treated as TLP:AMBER"));
        // The forward's label is the original's or higher, never lower.
        assert_eq!(
            hub("TLP:GREEN", "NL:STG-GEHEIM;TLP=AMBER", &mixed, &[]),
            Ok(())
        );
        let lower = hub(
            "NL:STG-GEHEIM;TLP=GREEN",
            "NL:STG-CONFIDENTIEEL;TLP=GREEN",
            &mixed,
            &[],
        );
        let lower = reason(lower.unwrap_err());
        assert!(lower.contains("never-lower label rule"), "{lower}");
        let lighter = reason(hub("TLP:AMBER", "TLP:GREEN", &["bz"], &[]).unwrap_err());
        assert!(lighter.contains("less restrictive"), "{lighter}");
        // A forwarder whose organisation this hub does not know: only anywhere-colours.
        let unknown = |original: &str| {
            forward(
                &l(original),
                &l(original),
                "c@bz",
                None,
                &orgs(&["bz"]),
                &orgs(&[]),
            )
        };
        assert_eq!(unknown("TLP:GREEN"), Ok(()));
        assert!(reason(unknown("TLP:AMBER+STRICT").unwrap_err()).contains("unknown"));
    }

    #[test]
    fn delivery_checks_current_clearance() {
        let label = l("NL:STG-CONFIDENTIEEL;CMP=CYBER");
        assert!(deliver(&label, Some(&c("NL:STG-GEHEIM;CMP=CYBER"))).allowed);
        assert!(!deliver(&label, Some(&c("NL:STG-GEHEIM"))).allowed);
        assert!(!deliver(&label, None).allowed);
    }
}
