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

use kring_protocol::identity::{Identity, IdentityError, RelayTrust, TrustMap};
use kring_protocol::revocation::{RevocationError, WipeOrder};

use crate::profile::Profile;

/// Why a wipe order is not followed ([`check_order`]); the order is ignored, and
/// only the local archive is deleted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WipeOrderError {
    /// The order names another user.
    #[error("it is for {ordered}, not for {me}")]
    OtherUser {
        /// The user the order names.
        ordered: String,
        /// This device's user.
        me: String,
    },
    /// The order names another organisation.
    #[error("it names organisation {ordered}, not {mine}")]
    OtherOrganisation {
        /// The organisation the order names.
        ordered: String,
        /// This device's organisation.
        mine: String,
    },
    /// The order was signed before this device's certificate was issued: it was
    /// for an earlier certificate of the same user (replayed).
    #[error(
        "it was signed at {signed_at}, before this device's certificate was issued \
         ({issued}): it is for an earlier certificate"
    )]
    EarlierCertificate {
        /// When the order was signed (unix seconds).
        signed_at: i64,
        /// When this device's certificate was issued (unix seconds).
        issued: i64,
    },
    /// The trust map of this device's own home relay cannot be formed.
    #[error("{0}")]
    TrustMap(#[from] IdentityError),
    /// The order's signature or signer does not check out.
    #[error("{0}")]
    Signature(#[from] RevocationError),
}

/// Why a local file could not be destroyed ([`destroy_secrets`]).
#[derive(Debug, thiserror::Error)]
pub enum ShredError {
    /// The file cannot be looked at (missing, no permission...).
    #[error("{path}: {source}")]
    Stat {
        /// The file.
        path: PathBuf,
        /// The operating system's explanation.
        source: std::io::Error,
    },
    /// It is not a regular file (a directory, a link...): left alone.
    #[error("{path} is not a regular file")]
    NotRegularFile {
        /// The file.
        path: PathBuf,
    },
    /// It could not be deleted; delete it by hand.
    #[error("{path}: cannot delete: {source}")]
    Delete {
        /// The file.
        path: PathBuf,
        /// The operating system's explanation.
        source: std::io::Error,
    },
    /// It was deleted, but overwriting it first failed: its contents may remain on
    /// the disk.
    #[error("{path}: deleted, but not overwritten: {source}")]
    NotOverwritten {
        /// The file.
        path: PathBuf,
        /// The operating system's explanation.
        source: std::io::Error,
    },
}

/// Why a secret was not destroyed ([`Destroyed`]).
#[derive(Debug, thiserror::Error)]
pub enum WipeError {
    /// The private key is on a PKCS#11 token: take the token away.
    #[error("it is on a PKCS#11 token, not on this disk (take the token away)")]
    OnToken,
    /// The passphrase file lies outside the profile directory and may serve others.
    #[error(
        "{path} is outside the profile directory; delete it yourself if nothing \
         else uses it"
    )]
    OutsideProfile {
        /// The passphrase file.
        path: PathBuf,
    },
    /// The file could not be overwritten or deleted.
    #[error("{0}")]
    Shred(#[from] ShredError),
}

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
) -> Result<String, WipeOrderError> {
    if order.user != me.id() {
        return Err(WipeOrderError::OtherUser {
            ordered: order.user.clone(),
            me: me.id(),
        });
    }
    if order.organisation != me.organisation {
        return Err(WipeOrderError::OtherOrganisation {
            ordered: order.organisation.clone(),
            mine: me.organisation.clone(),
        });
    }
    if order.ordered_at < me.not_before {
        return Err(WipeOrderError::EarlierCertificate {
            signed_at: order.ordered_at,
            issued: me.not_before,
        });
    }
    let trust = TrustMap::from_entries([(
        me.home_relay.as_str(),
        RelayTrust {
            organisation: me.organisation.clone(),
            ca: None,
        },
    )])?;
    Ok(order.verify(anchors, &trust, now)?.id())
}

/// What [`destroy_secrets`] did with each secret.
#[derive(Debug)]
pub struct Destroyed {
    /// The private key file: deleted, or why not.
    pub key: Result<PathBuf, WipeError>,
    /// The passphrase file, if the profile names one: deleted, or why not.
    pub passphrase: Option<Result<PathBuf, WipeError>>,
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
        Err(WipeError::OnToken)
    } else {
        shred(&profile.key)
            .map(|()| profile.key.clone())
            .map_err(WipeError::from)
    };
    let passphrase = profile.passphrase_file.as_ref().map(|file| {
        if !inside(file, &profile.dir) {
            return Err(WipeError::OutsideProfile { path: file.clone() });
        }
        shred(file).map(|()| file.clone()).map_err(WipeError::from)
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
fn shred(path: &Path) -> Result<(), ShredError> {
    let meta = std::fs::symlink_metadata(path).map_err(|source| ShredError::Stat {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(ShredError::NotRegularFile {
            path: path.to_path_buf(),
        });
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
    std::fs::remove_file(path).map_err(|source| ShredError::Delete {
        path: path.to_path_buf(),
        source,
    })?;
    overwritten.map_err(|source| ShredError::NotOverwritten {
        path: path.to_path_buf(),
        source,
    })
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
        assert!(
            matches!(old, WipeOrderError::EarlierCertificate { .. }),
            "{old}"
        );
        assert_eq!(
            old.to_string(),
            format!(
                "it was signed at {}, before this device's certificate was issued ({}): \
                 it is for an earlier certificate",
                me.not_before - 1,
                me.not_before
            )
        );
        // Not for this user.
        let other = fed.user("bz", "analist", "bz", "NL:DEP-VERTROUWELIJK");
        let them = Identity::from_der(&other.chain[0]).unwrap();
        let wrong = check_order(&sign(now - 60), &them, &anchors, now).unwrap_err();
        assert_eq!(
            wrong.to_string(),
            "it is for liaison@bz, not for analist@bz"
        );
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
        let Err(WipeError::Shred(ShredError::Stat { path, .. })) = &done.key else {
            panic!("{:?}", done.key);
        };
        assert_eq!(path, &key);
        assert!(matches!(
            &done.passphrase,
            Some(Err(WipeError::OutsideProfile { path })) if path == &shared
        ));
        assert_eq!(
            done.describe(),
            format!(
                "the private key was not deleted: {}: {}; the passphrase file was not \
                 deleted: {} is outside the profile directory; delete it yourself if \
                 nothing else uses it",
                key.display(),
                std::fs::symlink_metadata(&key).unwrap_err(),
                shared.display()
            )
        );
        assert!(shared.exists());
    }
}
