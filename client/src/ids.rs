//! Resolution of community and user ids typed on the command line.
//!
//! A community id is `NAME@HUB`; a bare `NAME` means a community hubbed at the user's
//! own relay. User ids are `NAME@RELAY`; a bare `NAME` likewise means a user of the
//! caller's own relay. Input is case-insensitive and resolved to lower case.

use kring_protocol::wire::{check_name, check_qualified_id};

use crate::error::{ClientError, Result};

/// Resolves a community id: `NAME` → `NAME@home_relay`, `NAME@HUB` as is.
pub fn resolve_community(input: &str, home_relay: &str) -> Result<String> {
    resolve("community id", input, home_relay)
}

/// Resolves a user id: `NAME` → `NAME@home_relay`, `NAME@RELAY` as is.
pub fn resolve_user(input: &str, home_relay: &str) -> Result<String> {
    resolve("user id", input, home_relay)
}

/// The hub of a community id `NAME@HUB` (the part after the last `@`); the whole
/// input if it has no `@` (ids are checked before they get here).
pub fn hub_of(community: &str) -> &str {
    community.rsplit_once('@').map_or(community, |(_, hub)| hub)
}

/// Checks a bare community name (for `community create`).
pub fn check_community_name(input: &str) -> Result<String> {
    let name = input.trim().to_ascii_lowercase();
    check_name("name", &name).map_err(|e| {
        ClientError::Usage(format!(
            "invalid community name {input:?}: {}",
            reason_of(&e.to_string())
        ))
    })?;
    Ok(name)
}

fn resolve(what: &str, input: &str, home_relay: &str) -> Result<String> {
    let lowered = input.trim().to_ascii_lowercase();
    let full = if lowered.contains('@') {
        lowered
    } else {
        format!("{lowered}@{home_relay}")
    };
    check_qualified_id("id", &full).map_err(|e| {
        ClientError::Usage(format!(
            "invalid {what} {input:?}: {}",
            reason_of(&e.to_string())
        ))
    })?;
    Ok(full)
}

fn reason_of(msg: &str) -> &str {
    msg.split_once(": ").map_or(msg, |(_, r)| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_is_the_part_after_the_at() {
        assert_eq!(hub_of("desinformatie@bz"), "bz");
        assert_eq!(hub_of("cyber@post-a"), "post-a");
        assert_eq!(hub_of("bare"), "bare");
    }

    #[test]
    fn bare_names_resolve_to_the_home_relay() {
        assert_eq!(
            resolve_community("desinformatie", "bz").unwrap(),
            "desinformatie@bz"
        );
        assert_eq!(resolve_user("liaison", "nctv").unwrap(), "liaison@nctv");
    }

    #[test]
    fn qualified_ids_are_kept_and_lower_cased() {
        assert_eq!(
            resolve_community("Desinformatie@BZ", "post-a").unwrap(),
            "desinformatie@bz"
        );
        assert_eq!(
            resolve_user("analist@post-a", "bz").unwrap(),
            "analist@post-a"
        );
    }

    #[test]
    fn malformed_ids_are_usage_errors() {
        for bad in ["", "a@b@c", "@bz", "x@", "sp ace", "é@bz"] {
            let err = resolve_community(bad, "bz").unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
            assert!(err.to_string().starts_with("invalid community id"), "{err}");
        }
        let long = "a".repeat(200);
        assert!(resolve_user(&long, "bz").is_err());
    }

    #[test]
    fn community_names_have_no_hub() {
        assert_eq!(check_community_name("Cyber").unwrap(), "cyber");
        assert!(check_community_name("cyber@bz").is_err());
        assert!(check_community_name("").is_err());
    }
}
