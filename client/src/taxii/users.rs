//! The users file of `kring taxii serve`: one `NAME:HASH` line per user, HASH an
//! Argon2id PHC string (`$argon2id$v=19$...`), written by `kring taxii passwd FILE
//! NAME`. Blank lines and lines starting with `#` are ignored.

use std::collections::BTreeMap;
use std::path::Path;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::error::{ClientError, Result};

/// Largest users file read, in bytes.
pub const MAX_USERS_FILE: u64 = 1024 * 1024;
/// Longest user name.
pub const MAX_NAME: usize = 64;
/// Longest password accepted, in bytes.
pub const MAX_PASSWORD: usize = 1024;

/// The users of a TAXII service and their password hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Users {
    hashes: BTreeMap<String, String>,
}

/// Whether `name` may be a user name: 1 to [`MAX_NAME`] printable ASCII characters,
/// no `:` and no spaces.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// What is wrong with a line of a users file; fix the line, or write it again with
/// `kring taxii passwd FILE NAME`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaxiiUsersError {
    /// The line has no `:` between the name and the hash.
    #[error("line {line}: expected NAME:HASH")]
    NoSeparator {
        /// The line number, from 1.
        line: usize,
    },
    /// The name is not a user name ([`valid_name`]).
    #[error("line {line}: invalid user name {name:?}")]
    InvalidName {
        /// The line number, from 1.
        line: usize,
        /// The name as written.
        name: String,
    },
    /// The hash is not a PHC string (`$argon2id$v=19$...`).
    #[error("line {line}: the hash of {name} is not a PHC string: {reason}")]
    NotPhc {
        /// The line number, from 1.
        line: usize,
        /// The user.
        name: String,
        /// The PHC parser's explanation.
        reason: argon2::password_hash::Error,
    },
    /// The hash is a PHC string of another algorithm than Argon2.
    #[error("line {line}: the hash of {name} is not Argon2")]
    NotArgon2 {
        /// The line number, from 1.
        line: usize,
        /// The user.
        name: String,
    },
    /// The user already has a line above this one.
    #[error("line {line}: {name} appears twice")]
    Duplicate {
        /// The line number, from 1.
        line: usize,
        /// The user.
        name: String,
    },
}

impl Users {
    /// Parses the text of a users file.
    ///
    /// # Errors
    /// The first line at fault, as a [`TaxiiUsersError`].
    pub fn parse(text: &str) -> std::result::Result<Users, TaxiiUsersError> {
        let mut hashes = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let number = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, hash) = line
                .split_once(':')
                .ok_or(TaxiiUsersError::NoSeparator { line: number })?;
            if !valid_name(name) {
                return Err(TaxiiUsersError::InvalidName {
                    line: number,
                    name: name.to_owned(),
                });
            }
            PasswordHash::new(hash).map_err(|reason| TaxiiUsersError::NotPhc {
                line: number,
                name: name.to_owned(),
                reason,
            })?;
            if !hash.starts_with("$argon2") {
                return Err(TaxiiUsersError::NotArgon2 {
                    line: number,
                    name: name.to_owned(),
                });
            }
            if hashes.insert(name.to_owned(), hash.to_owned()).is_some() {
                return Err(TaxiiUsersError::Duplicate {
                    line: number,
                    name: name.to_owned(),
                });
            }
        }
        Ok(Users { hashes })
    }

    /// Reads a users file; a missing file is empty.
    pub fn load(path: &Path) -> Result<Users> {
        if !path.exists() {
            return Ok(Users::default());
        }
        let text = crate::profile::read_text(path, MAX_USERS_FILE)
            .map_err(|r| ClientError::io(path, r))?;
        Users::parse(&text).map_err(|r| ClientError::io(path, r))
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Whether `password` is `name`'s. Slow on purpose (Argon2): call it off the
    /// async threads.
    pub fn verify(&self, name: &str, password: &str) -> bool {
        let Some(hash) = self.hashes.get(name) else {
            return false;
        };
        match PasswordHash::new(hash) {
            Ok(parsed) => Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok(),
            Err(_) => false,
        }
    }

    /// Sets `name`'s password (a fresh salt).
    pub fn set(&mut self, name: &str, password: &str) -> Result<()> {
        if !valid_name(name) {
            return Err(ClientError::Usage(format!(
                "{name:?} is not a user name (1 to {MAX_NAME} printable characters, no ':' or spaces)"
            )));
        }
        self.hashes
            .insert(name.to_owned(), hash_password(password)?);
        Ok(())
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out =
            String::from("# kring taxii users: NAME:ARGON2-HASH (kring taxii passwd FILE NAME)\n");
        for (name, hash) in &self.hashes {
            out.push_str(&format!("{name}:{hash}\n"));
        }
        out
    }
}

/// An Argon2id PHC string of `password` with a random salt.
pub fn hash_password(password: &str) -> Result<String> {
    check_password(password)?;
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| ClientError::Protocol("no randomness for the password salt".into()))?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| ClientError::Protocol(format!("password salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ClientError::Protocol(format!("hashing the password: {e}")))
}

fn check_password(password: &str) -> Result<()> {
    if password.is_empty() {
        return Err(ClientError::Usage("the password is empty".into()));
    }
    if password.len() > MAX_PASSWORD {
        return Err(ClientError::Usage(format!(
            "the password is longer than {MAX_PASSWORD} bytes"
        )));
    }
    Ok(())
}

/// `kring taxii passwd FILE NAME`: reads the password from the first line of
/// `input`, sets it in FILE (created if missing, owner-only).
pub fn passwd(file: &Path, name: &str, input: &mut dyn std::io::Read) -> Result<()> {
    use std::io::Read;
    let mut buf = Vec::new();
    input
        .take(MAX_PASSWORD as u64 + 2)
        .read_to_end(&mut buf)
        .map_err(|e| ClientError::io("stdin", e))?;
    let text = String::from_utf8(buf).map_err(|_| ClientError::io("stdin", "not UTF-8 text"))?;
    let password = text.lines().next().unwrap_or_default();
    let mut users = Users::load(file)?;
    users.set(name, password)?;
    crate::export::write_file(file, users.render().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hashed_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("users");
        passwd(&file, "misp", &mut "s3cret\n".as_bytes()).unwrap();
        passwd(&file, "opencti", &mut "other".as_bytes()).unwrap();
        let users = Users::load(&file).unwrap();
        assert_eq!(users.len(), 2);
        assert!(users.verify("misp", "s3cret"));
        assert!(!users.verify("misp", "s3cret\n"));
        assert!(!users.verify("misp", "other"));
        assert!(!users.verify("nobody", "s3cret"));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("misp:$argon2id$"), "{text}");
        assert!(!text.contains("s3cret"));
        // A new password replaces the old one.
        passwd(&file, "misp", &mut "new".as_bytes()).unwrap();
        let users = Users::load(&file).unwrap();
        assert!(users.verify("misp", "new") && !users.verify("misp", "s3cret"));
        assert!(passwd(&file, "bad name", &mut "x".as_bytes()).is_err());
        assert!(passwd(&file, "empty", &mut "\n".as_bytes()).is_err());
    }

    #[test]
    fn malformed_files_are_refused() {
        assert_eq!(
            Users::parse("misp"),
            Err(TaxiiUsersError::NoSeparator { line: 1 })
        );
        assert_eq!(
            Users::parse("misp").unwrap_err().to_string(),
            "line 1: expected NAME:HASH"
        );
        let err = Users::parse("# users\nmisp:plaintext").unwrap_err();
        assert!(
            matches!(err, TaxiiUsersError::NotPhc { line: 2, .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("line 2: the hash of misp is not a PHC string: "),
            "{err}"
        );
        assert_eq!(
            Users::parse("bad name:$argon2id$x")
                .unwrap_err()
                .to_string(),
            "line 1: invalid user name \"bad name\""
        );
        assert!(Users::parse("# comment\n\n").unwrap().is_empty());
    }
}
