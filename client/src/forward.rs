//! Forwarding a notice into another community (`kring notice forward`).
//!
//! The forward is a new notice in the target community that carries the original's
//! title, body (after the forwarder's comment, if any), STIX objects, kind and
//! category, and says where it comes from (`forwarded_from`: the original's
//! community, id, sender and filing time). Its authenticated data carries its own
//! label and the original's ([`kring_protocol::notice_aad`]), so the target's hub
//! checks the TLP rules again without reading it, and recipients refuse a notice
//! whose content and authenticated data disagree on being a forward.
//!
//! Rules, checked here before anything is sent ([`decide`], exit 3 naming the rule)
//! and again at the target's hub:
//! - TLP of the original: RED never; AMBER+STRICT only into a community whose
//!   members all belong to the forwarder's organisation; AMBER only into one whose
//!   members belong to it or to the organisations it declares as clients (`clients`
//!   in its relays' `relay.toml`, learned from the home relay); GREEN and CLEAR
//!   anywhere. A label without TLP counts as AMBER.
//! - The label is the original's unless a higher one is given, never lower (level,
//!   tags and TLP colour).
//! - The label fits the target community's maximum and the forwarder's clearance.

use std::collections::BTreeSet;

use kring_policy::{Clearance, Label, decide_opt, within};
use kring_protocol::notice_aad::{ForwardRefusal, ForwardRule, NoticeAad, check_forward};
use kring_protocol::wire::{ErrorCode, Request, Response};
use uuid::Uuid;

use crate::client::{Client, not_member, unexpected};
use crate::error::{ClientError, Result};
use crate::filing::{FiledNotice, Prepared};
use crate::ids::hub_of;
use crate::labels::parse_label;
use crate::notice::{ForwardedFrom, MAX_BODY, Notice, NoticeKind, now_utc};

/// Line between the forwarder's comment and the original's body.
pub const COMMENT_SEPARATOR: &str = "-------- forwarded notice --------";

/// What the device knows when it decides on a forward.
#[derive(Debug, Clone)]
pub struct ForwardCase<'a> {
    /// The original's label.
    pub original: &'a Label,
    /// The label asked for (`--label`), if any.
    pub requested: Option<&'a Label>,
    /// The target community.
    pub target: &'a str,
    /// Its maximum label.
    pub target_max: &'a Label,
    /// The forwarder's clearance.
    pub clearance: Option<&'a Clearance>,
    /// The forwarder's organisation.
    pub organisation: &'a str,
    /// The organisations of the target community's members.
    pub member_orgs: &'a BTreeSet<String>,
    /// The organisations the forwarder's organisation declares as its clients.
    pub clients: &'a BTreeSet<String>,
}

/// The device's decision on a forward: the label the forward carries (the
/// original's, or the higher one asked for), or the rule it breaks.
///
/// # Errors
/// [`ForwardRefusal`] naming the first rule broken: TLP, never-lower label,
/// community maximum, clearance.
pub fn decide(case: &ForwardCase<'_>) -> std::result::Result<Label, ForwardRefusal> {
    let label = case.requested.unwrap_or(case.original);
    check_forward(
        case.original,
        label,
        case.target,
        case.organisation,
        case.member_orgs,
        case.clients,
    )?;
    let d = within(label, case.target_max);
    if !d.allowed {
        return Err(ForwardRefusal {
            rule: ForwardRule::CommunityMaximum,
            reason: format!(
                "{label} is above the maximum label {} of {}: {}",
                case.target_max,
                case.target,
                d.reason()
            ),
        });
    }
    let d = decide_opt(Some(label), case.clearance);
    if !d.allowed {
        return Err(ForwardRefusal {
            rule: ForwardRule::Clearance,
            reason: format!("{label} is not within your clearance: {}", d.reason()),
        });
    }
    Ok(label.clone())
}

/// The body of a forward: the original's, after the forwarder's comment if any.
pub fn forward_body(original: &str, comment: Option<&str>) -> Result<String> {
    let body = match comment.map(str::trim).filter(|c| !c.is_empty()) {
        None => original.to_string(),
        Some(comment) => format!("{comment}\n\n{COMMENT_SEPARATOR}\n{original}"),
    };
    if body.len() > MAX_BODY {
        return Err(ClientError::Usage(format!(
            "the comment and the original's body are {} bytes together; at most {MAX_BODY}",
            body.len()
        )));
    }
    Ok(body)
}

impl Client {
    /// The organisations this user's organisation declares as its clients, as the
    /// home relay states them (none from a relay that does not say).
    pub async fn declared_clients(&mut self) -> Result<BTreeSet<String>> {
        match self.call(&Request::DeclaredClients).await {
            Ok(Response::DeclaredClients {
                organisation,
                clients,
            }) => {
                if organisation != self.me.organisation {
                    return Err(ClientError::Protocol(format!(
                        "the home relay declared clients for organisation {organisation}, \
                         not {}",
                        self.me.organisation
                    )));
                }
                Ok(clients.into_iter().collect())
            }
            Ok(other) => Err(unexpected("DeclaredClients", &other)),
            // A relay that does not know the request declares nothing.
            Err(ClientError::Relay(ErrorCode::BadRequest { .. })) => Ok(BTreeSet::new()),
            Err(e) => Err(e),
        }
    }

    /// Forwards stored notice `notice_id` into community `to` (see the
    /// [module docs](self)): [`prepare_forward`](Self::prepare_forward), then
    /// [`file_forward`](Self::file_forward).
    pub async fn forward(
        &mut self,
        notice_id: &str,
        to: &str,
        label: Option<&str>,
        comment: Option<&str>,
    ) -> Result<FiledNotice> {
        self.forward_with(notice_id, to, label, comment, Vec::new())
            .await
    }

    /// [`forward`](Self::forward) with more files attached besides the original's.
    pub async fn forward_with(
        &mut self,
        notice_id: &str,
        to: &str,
        label: Option<&str>,
        comment: Option<&str>,
        attach: Vec<std::path::PathBuf>,
    ) -> Result<FiledNotice> {
        let mut forward = self.prepare_forward(notice_id, to, label, comment).await?;
        forward.attach = attach;
        self.file_forward(forward).await
    }

    /// Checks the forward of stored notice `notice_id` into community `to` on this
    /// device (exit 3 naming the rule; see [`decide`]) and builds it.
    pub async fn prepare_forward(
        &mut self,
        notice_id: &str,
        to: &str,
        label: Option<&str>,
        comment: Option<&str>,
    ) -> Result<ForwardDraft> {
        self.reset_transaction()?;
        let original = self.find_notice(notice_id)?.notice;
        let target = self.resolve_community(to)?;
        if target == original.community {
            return Err(ClientError::Usage(format!(
                "notice {} is in {target} already; forward it into another community",
                original.id
            )));
        }
        let original_label = parse_label(&original.label)?;
        let requested = label.map(parse_label).transpose()?;
        // The trust map (organisations of relays) comes with the connection; the
        // target's group and maximum label with a sync if this device has not
        // joined it yet.
        self.connect().await?;
        if !self.store.community(&target)?.is_some_and(|r| r.active) {
            self.sync().await?;
        }
        let record = self
            .store
            .community(&target)?
            .filter(|r| r.active)
            .ok_or_else(|| not_member(&target))?;
        let target_max: Label = record
            .max_label
            .parse()
            .map_err(|e| ClientError::Protocol(format!("stored maximum label of {target}: {e}")))?;
        let group = self.load_group(&target)?;
        let trust = self.validator.trust().clone();
        let member_orgs: BTreeSet<String> = group
            .members(&self.validator)?
            .into_iter()
            .map(|m| {
                let relay = hub_of(&m.id).to_string();
                trust
                    .organisation_of(&relay)
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("(the unknown organisation of relay {relay})"))
            })
            .collect();
        let clients = self.declared_clients().await?;
        let organisation = self.me.organisation.clone();
        let label = decide(&ForwardCase {
            original: &original_label,
            requested: requested.as_ref(),
            target: &target,
            target_max: &target_max,
            clearance: self.clearance(),
            organisation: &organisation,
            member_orgs: &member_orgs,
            clients: &clients,
        })
        .map_err(|refusal| ClientError::PolicyDenied(refusal.to_string()))?;
        let notice = Notice {
            id: Uuid::new_v4(),
            community: target,
            label: label.to_string(),
            // A reply's parent is not in the target community.
            kind: match original.kind {
                NoticeKind::Reply => NoticeKind::Notice,
                other => other,
            },
            category: original.category,
            title: original.title.clone(),
            body: forward_body(&original.body, comment)?,
            sender: self.user(),
            filed_at: now_utc(),
            in_reply_to: None,
            stix: original.stix.clone(),
            forwarded_from: Some(ForwardedFrom {
                community: original.community.clone(),
                id: original.id,
                sender: original.sender.clone(),
                filed_at: original.filed_at,
            }),
            attachments: original.attachments.clone(),
        };
        Ok(ForwardDraft {
            notice,
            original_label,
            attach: Vec::new(),
        })
    }

    /// Files a forward as it is: its label bound to the ciphertext with the
    /// original's ([`kring_protocol::notice_aad`]), checked against the user's
    /// clearance and the target's maximum like any notice. The TLP rules are
    /// [`prepare_forward`](Self::prepare_forward)'s and the target hub's: a draft
    /// made otherwise is checked by the hub alone.
    pub async fn file_forward(&mut self, forward: ForwardDraft) -> Result<FiledNotice> {
        self.reset_transaction()?;
        let ForwardDraft {
            mut notice,
            original_label,
            attach,
        } = forward;
        let Some(from) = notice.forwarded_from.clone() else {
            return Err(ClientError::Usage(
                "a forward must say what it forwards (forwarded_from)".into(),
            ));
        };
        if notice.sender != self.user() {
            return Err(ClientError::Usage(format!(
                "a forward is filed by its sender, not {}",
                self.user()
            )));
        }
        let label = parse_label(&notice.label)?;
        let d = self.check_clearance(&label);
        if !d.allowed {
            return Err(ClientError::PolicyDenied(format!(
                "label {label} is not within your clearance: {}",
                d.reason()
            )));
        }
        notice
            .validate()
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        let target = notice.community.clone();
        // The original's files travel as they are (same blobs, same keys): the
        // home relay must hold them, as it holds any filer's uploads.
        if !notice.attachments.is_empty() {
            let mut sink = self.progress.take();
            let mut tell = |p: crate::attachments::Progress| {
                if let Some(sink) = sink.as_mut() {
                    sink(p);
                }
            };
            let held = self
                .hold_at_home(
                    &target,
                    &from.community,
                    from.id,
                    &notice.attachments,
                    &mut tell,
                )
                .await;
            self.progress = sink;
            held?;
        }
        if !attach.is_empty() {
            let more = self.upload_with_progress(&target, &attach).await?;
            notice.attachments.extend(more);
        }
        let prepared = Prepared::new(notice, NoticeAad::forward(label, original_label))?;
        let mut filed = self.file_prepared(&target, vec![prepared]).await?;
        match (filed.pop(), filed.is_empty()) {
            (Some(one), true) => Ok(one),
            _ => Err(ClientError::Protocol(
                "one notice filed, but not one answer".into(),
            )),
        }
    }
}

/// A forward, built and checked by [`Client::prepare_forward`], to file with
/// [`Client::file_forward`].
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardDraft {
    /// The new notice (in the target community, with `forwarded_from`).
    pub notice: Notice,
    /// The original's label, bound to the forward's ciphertext for the hub's check.
    pub original_label: Label,
    /// Files to attach besides the original's.
    pub attach: Vec<std::path::PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(s: &str) -> Label {
        s.parse().unwrap()
    }

    fn orgs(o: &[&str]) -> BTreeSet<String> {
        o.iter().map(|s| s.to_string()).collect()
    }

    /// bz forwarding `original` (as `requested`) into a community of `members`
    /// (maximum NL:STG-GEHEIM), with post-a declared as bz's client; the user is
    /// cleared for NL:STG-GEHEIM.
    fn forward(original: &str, requested: Option<&str>, members: &[&str]) -> Result<Label, String> {
        let (original, requested) = (l(original), requested.map(l));
        let max = l("NL:STG-GEHEIM");
        let clearance: Clearance = "NL:STG-GEHEIM".parse().unwrap();
        let (members, clients) = (orgs(members), orgs(&["post-a"]));
        decide(&ForwardCase {
            original: &original,
            requested: requested.as_ref(),
            target: "doel@nctv",
            target_max: &max,
            clearance: Some(&clearance),
            organisation: "bz",
            member_orgs: &members,
            clients: &clients,
        })
        .map_err(|e| e.to_string())
    }

    fn refused(result: Result<Label, String>, rule: &str, says: &str) {
        let err = result.unwrap_err();
        assert!(
            err.starts_with(&format!("forward refused by the {rule} rule: ")),
            "{err}"
        );
        assert!(err.contains(says), "{err}");
    }

    #[test]
    fn every_tlp_colour_goes_where_it_may() {
        let everyone = ["bz", "nctv", "aivd", "post-a"];
        // CLEAR and GREEN anywhere.
        for c in ["CLEAR", "GREEN"] {
            let label = format!("NL:STG-CONFIDENTIEEL;TLP={c}");
            assert_eq!(forward(&label, None, &everyone), Ok(l(&label)));
        }
        // AMBER: the organisation and its declared clients only.
        let amber = "NL:STG-CONFIDENTIEEL;TLP=AMBER";
        assert!(forward(amber, None, &["bz", "post-a"]).is_ok());
        assert!(forward(amber, None, &["bz"]).is_ok());
        refused(
            forward(amber, None, &everyone),
            "TLP",
            "also has members from aivd, nctv",
        );
        // Unmarked counts as AMBER.
        assert!(forward("NL:STG-CONFIDENTIEEL", None, &["bz", "post-a"]).is_ok());
        refused(
            forward("NL:STG-CONFIDENTIEEL", None, &["bz", "nctv"]),
            "TLP",
            "treated as TLP:AMBER",
        );
        // AMBER+STRICT: the organisation only, clients not.
        let strict = "NL:STG-CONFIDENTIEEL;TLP=AMBER+STRICT";
        assert!(forward(strict, None, &["bz"]).is_ok());
        refused(
            forward(strict, None, &["bz", "post-a"]),
            "TLP",
            "members from post-a",
        );
        // RED never, not even within the organisation.
        refused(
            forward("NL:STG-CONFIDENTIEEL;TLP=RED", None, &["bz"]),
            "TLP",
            "TLP:RED may not be forwarded",
        );
    }

    #[test]
    fn the_label_is_the_originals_or_higher_never_lower() {
        let members = ["bz", "nctv"];
        let original = "NL:STG-CONFIDENTIEEL;TLP=GREEN";
        assert_eq!(forward(original, None, &members), Ok(l(original)));
        let higher = "NL:STG-GEHEIM;TLP=AMBER";
        assert_eq!(forward(original, Some(higher), &members), Ok(l(higher)));
        refused(
            forward(original, Some("NL:DEP-VERTROUWELIJK;TLP=GREEN"), &members),
            "never-lower label",
            "lower than the original",
        );
        refused(
            forward(original, Some("NL:STG-CONFIDENTIEEL;TLP=CLEAR"), &members),
            "never-lower label",
            "less restrictive",
        );
    }

    #[test]
    fn the_label_fits_the_target_maximum_and_the_clearance() {
        let members = ["bz", "nctv"];
        refused(
            forward("NL:STG-ZEER-GEHEIM;TLP=GREEN", None, &members),
            "community maximum",
            "maximum label NL:STG-GEHEIM of doel@nctv",
        );
        // Within the maximum but not the clearance: the maximum admits the CYBER
        // compartment, the user does not hold it.
        let original = l("NL:STG-CONFIDENTIEEL;TLP=GREEN");
        let label = l("NL:STG-CONFIDENTIEEL;CMP=CYBER;TLP=GREEN");
        let max = l("NL:STG-GEHEIM;CMP=CYBER");
        let clearance: Clearance = "NL:STG-GEHEIM".parse().unwrap();
        let members = orgs(&["bz"]);
        let none = orgs(&[]);
        let err = decide(&ForwardCase {
            original: &original,
            requested: Some(&label),
            target: "doel@nctv",
            target_max: &max,
            clearance: Some(&clearance),
            organisation: "bz",
            member_orgs: &members,
            clients: &none,
        })
        .unwrap_err();
        assert_eq!(err.rule, ForwardRule::Clearance, "{err}");
        let err = decide(&ForwardCase {
            original: &original,
            requested: None,
            target: "doel@nctv",
            target_max: &max,
            clearance: None,
            organisation: "bz",
            member_orgs: &members,
            clients: &none,
        })
        .unwrap_err();
        assert_eq!(err.rule, ForwardRule::Clearance, "{err}");
    }

    #[test]
    fn a_comment_comes_before_the_original_body() {
        assert_eq!(forward_body("body", None).unwrap(), "body");
        assert_eq!(forward_body("body", Some("  ")).unwrap(), "body");
        assert_eq!(
            forward_body("body", Some("Zie dit")).unwrap(),
            format!("Zie dit\n\n{COMMENT_SEPARATOR}\nbody")
        );
        assert!(forward_body(&"x".repeat(MAX_BODY), Some("c")).is_err());
    }
}
