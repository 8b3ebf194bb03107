//! Reloading a running relay's configuration (SIGHUP, `kring-relay reload`): what
//! changed between the configuration it runs and the one just read ([`plan`], a
//! pure function), and carrying that out on the running relay ([`apply`]) without
//! dropping connections the change does not concern.
//!
//! Reloadable: the certificate and key (TLS presents the new ones from the next
//! handshake; checkpoints are signed with the new key after the old one has signed
//! everything before; the audit certificate history records it), the
//! accreditation, the CRL files, and the peers (a removed peer's link is closed and
//! refused from then on; a new one is dialled; a changed one is re-dialled; a
//! changed organisation or CA pin applies to the next handshake and closes a link
//! that no longer matches). The relay id, organisation, listen address, data
//! directory, trust anchors, limits and metrics listener need a restart: a reload
//! changing them is refused and the relay keeps running as it was.

use std::path::PathBuf;
use std::sync::Arc;

use crate::audit::{AuditEvent, AuditKind};
use crate::config::{PeerToml, RelayConfig};
use crate::error::ReloadError;
use crate::relay::Relay;

/// What of a configuration a reload compares.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Relay id.
    pub id: String,
    /// Organisation.
    pub organisation: String,
    /// Listen address.
    pub listen: std::net::SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Trust anchors (DER).
    pub anchors: Vec<Vec<u8>>,
    /// Limits, as text (compared only).
    pub limits: String,
    /// Metrics listener.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Certificate chain (DER).
    pub cert_chain: Vec<Vec<u8>>,
    /// Effective accreditation, as text.
    pub accreditation: String,
    /// CRL files.
    pub crls: Vec<PathBuf>,
    /// Declared clients.
    pub clients: Vec<String>,
    /// Peers.
    pub peers: Vec<PeerSnapshot>,
}

/// One peer entry as compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSnapshot {
    /// Peer id.
    pub id: String,
    /// Where it is dialled.
    pub address: std::net::SocketAddr,
    /// Lowered accreditation.
    pub accreditation: Option<String>,
    /// Organisation.
    pub organisation: Option<String>,
    /// CA pin.
    pub ca_fingerprint: Option<String>,
}

impl PeerSnapshot {
    fn of(p: &PeerToml) -> Self {
        Self {
            id: p.id.clone(),
            address: p.address,
            accreditation: p.accreditation.clone(),
            organisation: p.organisation.clone(),
            ca_fingerprint: p.ca_fingerprint.clone(),
        }
    }
}

impl Snapshot {
    /// The compared parts of `config`.
    pub fn of(config: &RelayConfig) -> Self {
        Self {
            id: config.identity.name.clone(),
            organisation: config.identity.organisation.clone(),
            listen: config.listen,
            data_dir: config.data_dir.clone(),
            anchors: config.anchors.iter().map(|a| a.to_vec()).collect(),
            limits: format!("{:?}", config.limits),
            metrics_listen: config.metrics_listen,
            cert_chain: config.cert_chain.iter().map(|c| c.to_vec()).collect(),
            accreditation: config.accreditation.to_string(),
            crls: config.crls.clone(),
            clients: config.clients.clone(),
            peers: config.peers.iter().map(PeerSnapshot::of).collect(),
        }
    }
}

/// What a reload does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// A new certificate (and key).
    pub certificate: bool,
    /// A new accreditation.
    pub accreditation: bool,
    /// Another list of CRL files.
    pub crls: bool,
    /// Other declared clients.
    pub clients: bool,
    /// Peers to add and dial.
    pub peers_added: Vec<String>,
    /// Peers to cut off and refuse.
    pub peers_removed: Vec<String>,
    /// Peers whose address or lowered accreditation changed: re-dialled.
    pub peers_redialled: Vec<String>,
    /// Peers whose organisation or CA pin changed: an existing link that no
    /// longer matches is closed.
    pub peers_rechecked: Vec<String>,
}

impl Plan {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// One line for the operator and the audit log.
    pub fn summary(&self) -> String {
        if self.is_empty() {
            return "nothing changed".into();
        }
        let mut parts = Vec::new();
        if self.certificate {
            parts.push("new certificate and key".to_string());
        }
        if self.accreditation {
            parts.push("new accreditation".to_string());
        }
        if self.crls {
            parts.push("new CRL files".to_string());
        }
        if self.clients {
            parts.push("new declared clients".to_string());
        }
        let list = |what: &str, ids: &[String]| format!("{what} {}", ids.join(", "));
        if !self.peers_added.is_empty() {
            parts.push(list("peers added:", &self.peers_added));
        }
        if !self.peers_removed.is_empty() {
            parts.push(list("peers removed:", &self.peers_removed));
        }
        if !self.peers_redialled.is_empty() {
            parts.push(list("peers re-dialled:", &self.peers_redialled));
        }
        if !self.peers_rechecked.is_empty() {
            parts.push(list("peers rechecked:", &self.peers_rechecked));
        }
        parts.join("; ")
    }
}

/// What changed from `old` to `new`, or why the change needs a restart.
pub fn plan(old: &Snapshot, new: &Snapshot) -> Result<Plan, ReloadError> {
    let mut restart = Vec::new();
    if old.id != new.id {
        restart.push(format!("the relay id ({} → {})", old.id, new.id));
    }
    if old.organisation != new.organisation {
        restart.push(format!(
            "the organisation ({} → {})",
            old.organisation, new.organisation
        ));
    }
    if old.listen != new.listen {
        restart.push(format!(
            "the listen address ({} → {})",
            old.listen, new.listen
        ));
    }
    if old.data_dir != new.data_dir {
        restart.push(format!(
            "the data directory ({} → {})",
            old.data_dir.display(),
            new.data_dir.display()
        ));
    }
    if old.anchors != new.anchors {
        restart.push("the trust anchors".into());
    }
    if old.limits != new.limits {
        restart.push("the [limits]".into());
    }
    if old.metrics_listen != new.metrics_listen {
        restart.push("the metrics listener".into());
    }
    if !restart.is_empty() {
        return Err(ReloadError::NeedsRestart(restart));
    }
    let mut p = Plan {
        certificate: old.cert_chain != new.cert_chain,
        accreditation: old.accreditation != new.accreditation,
        crls: old.crls != new.crls,
        clients: old.clients != new.clients,
        ..Plan::default()
    };
    for n in &new.peers {
        match old.peers.iter().find(|o| o.id == n.id) {
            None => p.peers_added.push(n.id.clone()),
            Some(o) if o.address != n.address || o.accreditation != n.accreditation => {
                p.peers_redialled.push(n.id.clone())
            }
            Some(o) if o.organisation != n.organisation || o.ca_fingerprint != n.ca_fingerprint => {
                p.peers_rechecked.push(n.id.clone())
            }
            Some(_) => {}
        }
    }
    for o in &old.peers {
        if !new.peers.iter().any(|n| n.id == o.id) {
            p.peers_removed.push(o.id.clone());
        }
    }
    Ok(p)
}

/// Reads nothing: carries out `plan` on `relay`, whose new configuration is `new`.
/// Returns the summary line.
pub fn apply(relay: &Arc<Relay>, plan: &Plan, new: &RelayConfig) -> Result<String, ReloadError> {
    if plan.certificate {
        relay
            .renew_identity(new)
            .map_err(ReloadError::Certificate)?;
    } else if plan.accreditation {
        relay.set_accreditation(new);
    }
    relay.set_trust(new.trust.clone());
    if plan.clients {
        relay.set_clients(new.clients.clone());
    }
    if plan.crls {
        relay.set_crl_files(new.crls.clone());
    }
    for id in &plan.peers_removed {
        if let Some(peer) = relay.remove_peer(id) {
            relay.retire_peer(&peer, "removed from the configuration");
        }
        relay.audit_now(AuditEvent::new(
            AuditKind::Link,
            relay.id(),
            id.clone(),
            "peer-removed",
            "removed from the configuration by a reload: link closed, refused from now on",
        ));
    }
    for id in plan.peers_added.iter().chain(&plan.peers_redialled) {
        let Some(entry) = new.peers.iter().find(|p| &p.id == id) else {
            continue;
        };
        let peer = crate::core::peers::Peer::from_config(entry, relay.engine());
        if let Some(old) = relay
            .insert_peer(&mut relay.cx(), entry, peer.clone())
            .map_err(|error| ReloadError::Peer {
                peer: id.clone(),
                error,
            })?
        {
            relay.retire_peer(&old, "its configuration changed");
        }
        crate::federation::start_link(relay, peer);
        relay.audit_now(AuditEvent::new(
            AuditKind::Link,
            relay.id(),
            id.clone(),
            if plan.peers_added.contains(id) {
                "peer-added"
            } else {
                "peer-changed"
            },
            format!("{} by a reload", entry.address),
        ));
    }
    for id in &plan.peers_rechecked {
        let Some(peer) = relay.peer(id) else {
            continue;
        };
        let still = relay.link(&peer.id).chain().map(|chain| {
            relay
                .authenticate(&chain, kring_protocol::identity::IdentityKind::Relay)
                .map(|i| i.name == *id)
        });
        if let Some(Err(_) | Ok(false)) = still {
            relay
                .link(&peer.id)
                .close("its certificate no longer matches the configuration");
            relay.audit_now(AuditEvent::new(
                AuditKind::Link,
                relay.id(),
                id.clone(),
                "link-closed",
                "its certificate no longer matches the organisation or CA pin configured",
            ));
        }
    }
    let summary = plan.summary();
    relay.audit_now(AuditEvent::new(
        AuditKind::Admin,
        relay.id(),
        "-",
        "config-reloaded",
        summary.clone(),
    ));
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, port: u16) -> PeerSnapshot {
        PeerSnapshot {
            id: id.into(),
            address: format!("127.0.0.1:{port}").parse().unwrap(),
            accreditation: None,
            organisation: Some("org".into()),
            ca_fingerprint: None,
        }
    }

    fn snap() -> Snapshot {
        Snapshot {
            id: "a".into(),
            organisation: "org".into(),
            listen: "127.0.0.1:4433".parse().unwrap(),
            data_dir: "/var/lib/kring".into(),
            anchors: vec![vec![1]],
            limits: "limits".into(),
            metrics_listen: None,
            cert_chain: vec![vec![2], vec![3]],
            accreditation: "SECRET".into(),
            crls: vec![],
            clients: vec![],
            peers: vec![peer("b", 1), peer("c", 2)],
        }
    }

    #[test]
    fn the_same_configuration_changes_nothing() {
        let p = plan(&snap(), &snap()).unwrap();
        assert!(p.is_empty());
        assert_eq!(p.summary(), "nothing changed");
    }

    #[test]
    fn a_renewed_certificate_and_accreditation_are_applied() {
        let mut new = snap();
        new.cert_chain[0] = vec![9];
        new.accreditation = "RESTRICTED".into();
        new.crls = vec!["/etc/kring/org.crl".into()];
        new.clients = vec!["post-a".into()];
        let p = plan(&snap(), &new).unwrap();
        assert!(p.certificate && p.accreditation && p.crls && p.clients);
        assert!(
            p.summary().contains("new declared clients"),
            "{}",
            p.summary()
        );
        assert!(p.peers_added.is_empty() && p.peers_removed.is_empty());
    }

    #[test]
    fn peers_are_added_removed_redialled_and_rechecked() {
        let mut new = snap();
        new.peers.retain(|p| p.id != "c");
        new.peers.push(peer("d", 4));
        new.peers[0].ca_fingerprint = Some("ab".into());
        let p = plan(&snap(), &new).unwrap();
        assert_eq!(p.peers_added, vec!["d".to_string()]);
        assert_eq!(p.peers_removed, vec!["c".to_string()]);
        assert_eq!(p.peers_rechecked, vec!["b".to_string()]);
        assert!(p.peers_redialled.is_empty());
        new.peers[0].address = "127.0.0.1:7".parse().unwrap();
        let p = plan(&snap(), &new).unwrap();
        assert_eq!(p.peers_redialled, vec!["b".to_string()]);
        assert!(p.peers_rechecked.is_empty());
        assert!(!p.certificate);
    }

    #[test]
    fn what_needs_a_restart_is_refused_and_named() {
        for (change, word) in [
            (
                Box::new(|s: &mut Snapshot| s.id = "z".into()) as Box<dyn Fn(&mut Snapshot)>,
                "relay id",
            ),
            (
                Box::new(|s: &mut Snapshot| s.listen = "127.0.0.1:1".parse().unwrap()),
                "listen address",
            ),
            (
                Box::new(|s: &mut Snapshot| s.data_dir = "/tmp/x".into()),
                "data directory",
            ),
            (
                Box::new(|s: &mut Snapshot| s.anchors.push(vec![7])),
                "trust anchors",
            ),
        ] {
            let mut new = snap();
            new.cert_chain[0] = vec![9];
            change(&mut new);
            let e = plan(&snap(), &new).unwrap_err();
            let ReloadError::NeedsRestart(what) = &e else {
                panic!("{e:?}");
            };
            assert!(what.iter().any(|w| w.contains(word)), "{what:?}");
            assert!(
                e.to_string()
                    .ends_with("needs a restart (nothing was changed)")
            );
        }
    }
}
