//! Wiping a revoked device.
//!
//! Every device that its home relay tells, over an authenticated connection, that
//! its certificate is revoked deletes its local archive and MLS state
//! ([`crate::unlock::wipe`]); its profile, certificate and private key stay (they
//! open nothing any more: the identity is refused everywhere, and the archive they
//! protected is gone).
//!
//! An org-admin may also order the device wiped (`kring admin revoke USER --wipe`):
//! the home relay then answers the device with a signed
//! [`WipeOrder`] in place of the refusal. The device checks the order itself
//! ([`check_order`]: for this user, signed by an org-admin of this user's
//! organisation homed at this device's home relay, chained to the federation root)
//! and then also destroys its secrets ([`destroy_secrets`]): the private key file
//! (overwritten, then deleted) and the passphrase file its profile names, if that
//! lies in the profile directory. A relay alone cannot make a device destroy its
//! key: without a valid order only the archive goes.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use kring_protocol::identity::{Identity, RelayTrust, TrustMap};
use kring_protocol::revocation::WipeOrder;

use crate::profile::Profile;

/// Checks a wipe order handed to this device (`me`): for this user and
/// organisation, signed by an org-admin of it whose home relay is this device's home
/// relay, at `now`, and signed no earlier than this device's certificate was issued
/// (an order for an earlier certificate of the same user, replayed by a relay, is not
/// followed). The revoker's id, or why the order is not followed.
pub fn check_order(
    order: &WipeOrder,
    me: &Identity,
    anchors: &[Vec<u8>],
    now: i64,
) -> Result<String, String> {
    if order.user != me.id() {
        return Err(format!("it is for {}, not for {}", order.user, me.id()));
    }
    if order.organisation != me.organisation {
        return Err(format!(
            "it names organisation {}, not {}",
            order.organisation, me.organisation
        ));
    }
    if order.ordered_at < me.not_before {
        return Err(format!(
            "it was signed at {}, before this device's certificate was issued ({}): \
             it is for an earlier certificate",
            order.ordered_at, me.not_before
        ));
    }
    let trust = TrustMap::from_entries([(
        me.home_relay.as_str(),
        RelayTrust {
            organisation: me.organisation.clone(),
            ca: None,
        },
    )])
    .map_err(|e| e.to_string())?;
    order
        .verify(anchors, &trust, now)
        .map(|revoker| revoker.id())
        .map_err(|e| e.to_string())
}

/// What [`destroy_secrets`] did with each secret.
#[derive(Debug)]
pub struct Destroyed {
    /// The private key file: deleted, or why not.
    pub key: Result<PathBuf, String>,
    /// The passphrase file, if the profile names one: deleted, or why not.
    pub passphrase: Option<Result<PathBuf, String>>,
}

impl Destroyed {
    /// One sentence for the user.
    pub fn describe(&self) -> String {
        let key = match &self.key {
            Ok(path) => format!(
                "the private key ({}) has been overwritten and deleted",
                path.display()
            ),
            Err(why) => format!("the private key was not deleted: {why}"),
        };
        match &self.passphrase {
            None => key,
            Some(Ok(path)) => format!("{key}, and so has the passphrase file ({})", path.display()),
            Some(Err(why)) => format!("{key}; the passphrase file was not deleted: {why}"),
        }
    }
}

/// Destroys the private key file of `profile` and the passphrase file it names
/// (only one inside the profile directory: a file elsewhere may serve others).
pub fn destroy_secrets(profile: &Profile) -> Destroyed {
    let key = if profile.key_uri.is_some() {
        Err("it is on a PKCS#11 token, not on this disk (take the token away)".to_string())
    } else {
        shred(&profile.key).map(|()| profile.key.clone())
    };
    let passphrase = profile.passphrase_file.as_ref().map(|file| {
        if !inside(file, &profile.dir) {
            return Err(format!(
                "{} is outside the profile directory; delete it yourself if nothing \
                 else uses it",
                file.display()
            ));
        }
        shred(file).map(|()| file.clone())
    });
    Destroyed { key, passphrase }
}

/// Whether `file` lies inside `dir` (after resolving both).
fn inside(file: &Path, dir: &Path) -> bool {
    match (file.canonicalize(), dir.canonicalize()) {
        (Ok(file), Ok(dir)) => file.starts_with(dir),
        _ => false,
    }
}

/// Overwrites a regular file with zeros (flushed to disk), then deletes it.
fn shred(path: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let overwrite = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        let zeros = vec![0u8; 4096];
        let mut left = meta.len();
        while left > 0 {
            let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
            f.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        f.sync_all()
    };
    // A file that cannot be overwritten is still deleted.
    let overwritten = overwrite();
    std::fs::remove_file(path).map_err(|e| format!("{}: cannot delete: {e}", path.display()))?;
    overwritten.map_err(|e| format!("{}: deleted, but not overwritten: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_is_followed_only_for_this_certificate() {
        use crate::testpki::Fed;
        let fed = Fed::new("bz");
        let admin = fed.admin("bz", "admin", "bz");
        let user = fed.user("bz", "liaison", "bz", "NL:DEP-VERTROUWELIJK");
        let me = Identity::from_der(&user.chain[0]).unwrap();
        let pair =
            ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&admin.key.serialize_der())
                .unwrap();
        let sign = |at: i64| {
            WipeOrder::sign(
                admin.chain.clone(),
                |m: &[u8]| pair.sign(m).as_ref().to_vec(),
                "liaison@bz",
                at,
            )
            .unwrap()
        };
        let anchors = vec![fed.root_der.clone()];
        let now = me.not_before + 3_600;
        assert_eq!(
            check_order(&sign(now - 60), &me, &anchors, now),
            Ok("admin@bz".to_string())
        );
        // An order signed before this certificate existed was for an earlier one.
        let old = check_order(&sign(me.not_before - 1), &me, &anchors, now).unwrap_err();
        assert!(old.contains("earlier certificate"), "{old}");
        // Not for this user.
        let other = fed.user("bz", "analist", "bz", "NL:DEP-VERTROUWELIJK");
        let them = Identity::from_der(&other.chain[0]).unwrap();
        let wrong = check_order(&sign(now - 60), &them, &anchors, now).unwrap_err();
        assert!(wrong.contains("not for analist@bz"), "{wrong}");
    }

    #[test]
    fn secrets_inside_the_profile_go_and_others_stay() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let profile_dir = dir.path().join("p");
        std::fs::create_dir(&profile_dir).unwrap();
        let key = profile_dir.join("user.key");
        std::fs::write(&key, b"-----BEGIN ENCRYPTED PRIVATE KEY-----").unwrap();
        let pass = profile_dir.join("passphrase");
        std::fs::write(&pass, b"secret\n").unwrap();
        let mut profile = Profile {
            dir: profile_dir.clone(),
            user: "liaison@bz".into(),
            relay_addr: "127.0.0.1:1".into(),
            relay_id: "bz".into(),
            cert: profile_dir.join("user.crt"),
            key: key.clone(),
            key_uri: None,
            pkcs11_module: None,
            trust_anchors: profile_dir.join("anchors.pem"),
            state_dir: profile_dir.join("state"),
            passphrase_file: Some(pass.clone()),
        };
        let done = destroy_secrets(&profile);
        assert_eq!(done.key.as_deref().ok(), Some(key.as_path()));
        assert!(matches!(&done.passphrase, Some(Ok(p)) if p == &pass));
        assert!(!key.exists() && !pass.exists());
        assert!(
            done.describe().contains("overwritten and deleted"),
            "{}",
            done.describe()
        );

        // A passphrase file elsewhere stays; a missing key is reported.
        let shared = outside.path().join("passphrase");
        std::fs::write(&shared, b"secret\n").unwrap();
        profile.passphrase_file = Some(shared.clone());
        let done = destroy_secrets(&profile);
        assert!(done.key.is_err());
        assert!(matches!(&done.passphrase, Some(Err(why)) if why.contains("outside")));
        assert!(shared.exists());
    }
}
