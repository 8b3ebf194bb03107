//! `kring whoami [--json]`: who this profile's certificate says the user is. It
//! works offline: it reads the profile, its certificate chain and its trust
//! anchors (to say whether the chain verifies now), never the key, the local state
//! or the network.

use std::path::Path;

use kring_protocol::identity::{self, IdentityKind};
use serde::Serialize;

use super::Out;
use crate::error::{ClientError, EXIT_OK, Result};
use crate::profile::{MAX_PEM_BYTES, Profile, days_left, expiry_warning, read_bounded, utc};

/// What `kring whoami` shows (`--json`: this object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WhoAmI {
    /// `NAME@RELAY`.
    pub user: String,
    /// The home relay's id.
    pub relay: String,
    /// The home relay's address, from the profile.
    pub relay_address: String,
    /// The organisation (certificate O).
    pub organisation: String,
    /// The clearance the certificate grants (canonical), or none.
    pub clearance: Option<String>,
    /// Roles the certificate grants, sorted.
    pub roles: Vec<String>,
    /// The certificate's serial number, lower-case hex (as in CRLs).
    pub serial: String,
    /// Start of validity, RFC 3339 UTC.
    pub not_before: String,
    /// End of validity, RFC 3339 UTC.
    pub not_after: String,
    /// Whole days until `not_after` (negative once expired).
    pub days_left: i64,
    /// Whether the chain verifies against the profile's trust anchors now.
    pub chain_verified: bool,
    /// Why it does not, if it does not.
    pub chain_problem: Option<String>,
    /// The expiry warning, when the certificate ends within 30 days or has ended.
    pub warning: Option<String>,
}

/// Reads what the profile's certificate says, at `now` (unix seconds).
pub fn whoami(profile: &Profile, now: i64) -> Result<WhoAmI> {
    let (chain, me) = profile.certificate()?;
    let chain_problem = match read_anchors(profile) {
        Ok(anchors) => identity::verify_chain(
            &chain,
            &anchors,
            u64::try_from(now).unwrap_or(0),
            IdentityKind::User,
        )
        .err()
        .map(|e| e.to_string()),
        Err(e) => Some(e.to_string()),
    };
    Ok(WhoAmI {
        user: me.id(),
        relay: me.home_relay.clone(),
        relay_address: profile.relay_addr.clone(),
        organisation: me.organisation.clone(),
        clearance: me.clearance.as_ref().map(ToString::to_string),
        roles: me.roles.clone(),
        serial: me.serial.clone(),
        not_before: utc(me.not_before),
        not_after: utc(me.not_after),
        days_left: days_left(me.not_after, now),
        chain_verified: chain_problem.is_none(),
        chain_problem,
        warning: expiry_warning(&me, now),
    })
}

fn read_anchors(profile: &Profile) -> Result<Vec<Vec<u8>>> {
    let bad = |reason: String| ClientError::Profile {
        path: profile.trust_anchors.display().to_string(),
        reason,
    };
    let pem =
        read_bounded(&profile.trust_anchors, MAX_PEM_BYTES).map_err(|e| bad(e.to_string()))?;
    identity::certificates_from_pem(&pem).map_err(|e| bad(e.to_string()))
}

/// The text form: one `field  value` line each.
pub fn render(w: &WhoAmI) -> String {
    let roles = if w.roles.is_empty() {
        "none".to_string()
    } else {
        w.roles.join(", ")
    };
    let left = match w.days_left {
        d if d < 0 => "expired".to_string(),
        1 => "1 day left".to_string(),
        d => format!("{d} days left"),
    };
    let chain = match &w.chain_problem {
        None => "verifies against the profile's trust anchors".to_string(),
        Some(p) => format!("DOES NOT VERIFY: {p}"),
    };
    format!(
        "user          {}\n\
         home relay    {} ({})\n\
         organisation  {}\n\
         clearance     {}\n\
         roles         {roles}\n\
         certificate   serial {}\n\
         valid         {} to {} ({left})\n\
         chain         {chain}",
        w.user,
        w.relay,
        w.relay_address,
        w.organisation,
        w.clearance
            .as_deref()
            .unwrap_or("none (cleared for nothing)"),
        w.serial,
        w.not_before,
        w.not_after,
    )
}

/// `kring whoami [--json]`; the warning, if any, also goes to stderr.
pub fn run(profile_dir: Option<&Path>, json: bool, out: &mut Out) -> Result<i32> {
    let profile = Profile::load(profile_dir.ok_or(ClientError::NoProfile)?)?;
    let now = i64::try_from(crate::validator::now_unix()).unwrap_or(i64::MAX);
    let w = whoami(&profile, now)?;
    if let Some(warning) = &w.warning {
        eprintln!("kring: warning: {warning}");
    }
    out.line(&if json {
        super::output::json_line(&w)
    } else {
        render(&w)
    });
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testpki::Fed;

    const DAY: i64 = 86_400;

    fn now() -> i64 {
        i64::try_from(crate::validator::now_unix()).unwrap()
    }

    /// An org-admin `consul@bz` whose certificate runs from a day ago to 300 days
    /// from now.
    fn profile(dir: &Path) -> Profile {
        let fed = Fed::new("bz");
        let leaf = fed.admin("bz", "consul", "bz");
        Profile::load(fed.profile(dir, "consul@bz", "bz", &leaf)).unwrap()
    }

    #[test]
    fn whoami_reads_the_certificate_offline() {
        let tmp = tempfile::tempdir().unwrap();
        let profile = profile(tmp.path());
        let w = whoami(&profile, now()).unwrap();
        assert_eq!(w.user, "consul@bz");
        assert_eq!(w.relay, "bz");
        assert_eq!(w.relay_address, "127.0.0.1:9");
        assert_eq!(w.organisation, "bz");
        assert_eq!(w.clearance.as_deref(), Some("NL:STG-GEHEIM"));
        assert_eq!(w.roles, ["org-admin"]);
        assert_eq!(w.serial.len() % 2, 0);
        assert!(w.not_after.ends_with('Z'), "UTC: {}", w.not_after);
        let days = kring_certs_dev::USER_DAYS;
        assert!((days - 2..=days).contains(&w.days_left), "{}", w.days_left);
        assert!(w.chain_verified, "{:?}", w.chain_problem);
        assert_eq!(w.warning, None);
        // Offline: no local state was opened or created.
        assert!(!profile.state_dir.exists());

        let text = render(&w);
        for needle in [
            "user          consul@bz",
            "home relay    bz (127.0.0.1:9)",
            "organisation  bz",
            "clearance     NL:STG-GEHEIM",
            "roles         org-admin",
            &format!("certificate   serial {}", w.serial),
            &format!("to {} (", w.not_after),
            "chain         verifies",
        ] {
            assert!(text.contains(needle), "{needle}:\n{text}");
        }
        let json: serde_json::Value =
            serde_json::from_str(&super::super::output::json_line(&w)).unwrap();
        assert_eq!(json["user"], "consul@bz");
        assert_eq!(json["roles"][0], "org-admin");
        assert_eq!(json["warning"], serde_json::Value::Null);
    }

    #[test]
    fn whoami_warns_within_30_days_and_after_expiry() {
        let tmp = tempfile::tempdir().unwrap();
        let profile = profile(tmp.path());
        let days = kring_certs_dev::USER_DAYS;
        let soon = whoami(&profile, now() + (days - 20) * DAY).unwrap();
        let warning = soon.warning.unwrap();
        assert!(warning.contains("consul@bz expires in"), "{warning}");
        assert!(warning.contains(&soon.not_after), "{warning}");
        assert!(soon.chain_verified);

        let late = whoami(&profile, now() + (days + 1) * DAY).unwrap();
        assert!(late.days_left < 0);
        assert!(late.warning.as_deref().unwrap().contains("expired"));
        assert!(!late.chain_verified);
        assert!(
            render(&late).contains("DOES NOT VERIFY"),
            "{}",
            render(&late)
        );
    }

    #[test]
    fn whoami_refuses_a_certificate_of_someone_else() {
        let tmp = tempfile::tempdir().unwrap();
        let fed = Fed::new("bz");
        let leaf = fed.user("bz", "other", "bz", "NL:STG-GEHEIM");
        let dir = fed.profile(tmp.path(), "consul@bz", "bz", &leaf);
        let err = whoami(&Profile::load(dir).unwrap(), now()).unwrap_err();
        assert!(err.to_string().contains("other@bz"), "{err}");
        let relay = fed.relay("bz", "bz", "NL:STG-GEHEIM");
        let dir = fed.profile(&tmp.path().join("r"), "consul@bz", "bz", &relay);
        let err = whoami(&Profile::load(dir).unwrap(), now()).unwrap_err();
        assert!(err.to_string().contains("not a user certificate"), "{err}");
    }
}
