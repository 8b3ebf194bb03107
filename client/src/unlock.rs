//! Unlocking a device: the passphrase, the private key and the local archive.
//!
//! One passphrase protects both the private key (`user.key`, PKCS#8 `ENCRYPTED
//! PRIVATE KEY`, [`kring_protocol::keyfile`]) and the archive's data key
//! (`STATE_DIR/archive.key`, wrapped with Argon2id, [`crate::vault`]). It is read
//! from the file `KRING_PASSPHRASE_FILE` names, else from the profile's
//! `passphrase_file`, else asked on the terminal (without echo) — at most once per
//! process, and only when something locked is opened. Each unlocked key is
//! remembered for the rest of the process (by its file's contents and the
//! passphrase), so the costly key derivations run once per run.
//!
//! A wrong passphrase is [`ClientError::Auth`] (exit 4) and changes nothing: keys
//! are unwrapped before any file is opened for writing.
//!
//! An archive written before archives were sealed (a state directory without
//! `archive.key`) is sealed on first unlock: copied, sealed, into a new database that
//! then replaces the old directory (which is deleted; its blocks are not
//! overwritten). [`wipe`] deletes the archive and MLS state.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kring_protocol::keyfile::{self, KeyFileError};
use zeroize::Zeroizing;

use crate::error::{ClientError, Result};
use crate::profile::{MAX_PEM_BYTES, Profile, read_bounded};
use crate::store::Store;
use crate::vault::{DataKey, VaultError, WrappedKey};

/// The environment variable naming a file that holds the passphrase; it overrides
/// the profile's `passphrase_file`.
pub const PASSPHRASE_ENV: &str = "KRING_PASSPHRASE_FILE";
/// The wrapped archive key, inside the state directory.
pub const ARCHIVE_KEY_FILE: &str = "archive.key";
/// Largest passphrase file read.
const MAX_PASSPHRASE_FILE: u64 = 4096;
/// Largest archive key file read.
const MAX_ARCHIVE_KEY_FILE: u64 = 4096;

/// A passphrase. Never printed; zeroed when dropped.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

impl Passphrase {
    /// A passphrase of these bytes (not empty).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self> {
        let bytes = Zeroizing::new(bytes.into());
        if bytes.is_empty() {
            return Err(ClientError::Auth(
                "an empty passphrase is not accepted".into(),
            ));
        }
        Ok(Self(bytes))
    }

    /// The first line of `path` (without its line ending), as `openssl -passin
    /// file:PATH` reads it.
    pub fn read_file(path: &Path) -> Result<Self> {
        let bytes = Zeroizing::new(
            read_bounded(path, MAX_PASSPHRASE_FILE)
                .map_err(|r| ClientError::io(path, format!("passphrase file: {r}")))?,
        );
        let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        Self::new(line.to_vec())
            .map_err(|_| ClientError::io(path, "passphrase file: the first line is empty"))
    }

    /// Asks on the terminal, without echo.
    pub fn ask(prompt: &str) -> Result<Self> {
        let typed = rpassword::prompt_password(prompt).map_err(|e| {
            ClientError::Auth(format!(
                "no passphrase: cannot ask on the terminal ({e}); for unattended use put \
                 it in a file (mode 0600) named by `passphrase_file` in profile.toml or by \
                 {PASSPHRASE_ENV}"
            ))
        })?;
        Self::new(Zeroizing::new(typed).as_bytes().to_vec())
    }

    /// Asks for a new passphrase twice on the terminal.
    pub fn ask_new(what: &str) -> Result<Self> {
        let first = Self::ask(&format!("New passphrase for {what}: "))?;
        let again = Self::ask("Repeat the new passphrase: ")?;
        if first.0 != again.0 {
            return Err(ClientError::Usage(
                "the passphrases differ; nothing was changed".into(),
            ));
        }
        Ok(first)
    }

    /// The passphrase for a new key: from the file `KRING_PASSPHRASE_FILE` names,
    /// else asked twice on the terminal.
    pub fn for_new_key(what: &str) -> Result<Self> {
        match env_file() {
            Some(path) => Self::read_file(&path),
            None => Self::ask_new(what),
        }
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

fn env_file() -> Option<PathBuf> {
    std::env::var_os(PASSPHRASE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Where a profile's passphrase comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassphraseSource {
    /// The file `KRING_PASSPHRASE_FILE` names.
    Env(PathBuf),
    /// The profile's `passphrase_file`.
    ProfileFile(PathBuf),
    /// Asked on the terminal.
    Terminal,
}

impl PassphraseSource {
    /// The source for `profile`: `KRING_PASSPHRASE_FILE`, else `passphrase_file`,
    /// else the terminal.
    pub fn of(profile: &Profile) -> Self {
        match (env_file(), &profile.passphrase_file) {
            (Some(p), _) => Self::Env(p),
            (None, Some(p)) => Self::ProfileFile(p.clone()),
            (None, None) => Self::Terminal,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Env(p) => format!("from {} ({PASSPHRASE_ENV})", p.display()),
            Self::ProfileFile(p) => format!("from {} (passphrase_file)", p.display()),
            Self::Terminal => "as typed".into(),
        }
    }
}

/// The passphrase of one profile, obtained when first needed.
#[derive(Debug)]
pub struct Unlocker {
    user: String,
    source: PassphraseSource,
    value: Option<Passphrase>,
    /// Whether the passphrase has unlocked something (so it need not be confirmed).
    confirmed: bool,
}

impl Unlocker {
    /// For `profile`, from its [`PassphraseSource`].
    pub fn new(profile: &Profile) -> Self {
        Self {
            user: profile.user.clone(),
            source: PassphraseSource::of(profile),
            value: None,
            confirmed: false,
        }
    }

    /// With a passphrase already known.
    pub fn with(profile: &Profile, passphrase: Passphrase) -> Self {
        Self {
            value: Some(passphrase),
            ..Self::new(profile)
        }
    }

    /// Where the passphrase comes from.
    pub fn source(&self) -> &PassphraseSource {
        &self.source
    }

    /// The passphrase, read or asked for on first use.
    pub fn passphrase(&mut self) -> Result<&Passphrase> {
        if self.value.is_none() {
            let p = match &self.source {
                PassphraseSource::Env(path) | PassphraseSource::ProfileFile(path) => {
                    Passphrase::read_file(path)?
                }
                PassphraseSource::Terminal => {
                    let typed = TYPED.lock().ok().and_then(|t| t.get(&self.user).cloned());
                    match typed {
                        Some(p) => {
                            self.confirmed = true;
                            p
                        }
                        None => Passphrase::ask(&format!("Passphrase for {}: ", self.user))?,
                    }
                }
            };
            self.value = Some(p);
        }
        self.value
            .as_ref()
            .ok_or_else(|| ClientError::Auth("no passphrase".into()))
    }

    /// The passphrase for protecting something new: asked a second time when it
    /// was typed and has not unlocked anything yet.
    fn passphrase_for_new(&mut self) -> Result<Passphrase> {
        let p = self.passphrase()?.clone();
        if self.source == PassphraseSource::Terminal && !self.confirmed {
            let again = Passphrase::ask("Repeat the passphrase (this device's archive is new): ")?;
            if again.0 != p.0 {
                self.value = None;
                return Err(ClientError::Usage(
                    "the passphrases differ; nothing was changed".into(),
                ));
            }
            self.unlocked();
        }
        Ok(p)
    }

    /// The passphrase unlocked something: it need not be confirmed, nor typed again
    /// in this process.
    fn unlocked(&mut self) {
        self.confirmed = true;
        if self.source == PassphraseSource::Terminal
            && let (Some(p), Ok(mut typed)) = (&self.value, TYPED.lock())
        {
            typed.insert(self.user.clone(), p.clone());
        }
    }

    fn wrong(&self, what: &Path) -> ClientError {
        ClientError::Auth(format!(
            "wrong passphrase: the passphrase {} does not unlock {} of {}; nothing was \
             changed",
            self.source.describe(),
            what.display(),
            self.user
        ))
    }
}

/// Unlocked secrets of this process, by file and SHA-256 of its contents and the
/// passphrase that unlocked it.
type Cache<T> = Mutex<BTreeMap<(PathBuf, Vec<u8>), T>>;
static PRIVATE_KEYS: Cache<Zeroizing<Vec<u8>>> = Mutex::new(BTreeMap::new());
static ARCHIVE_KEYS: Cache<DataKey> = Mutex::new(BTreeMap::new());
/// Passphrases typed on the terminal that unlocked something, by user: asked once
/// per process.
static TYPED: Mutex<BTreeMap<String, Passphrase>> = Mutex::new(BTreeMap::new());

fn cache_id(path: &Path, contents: &[u8], passphrase: &Passphrase) -> (PathBuf, Vec<u8>) {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&(contents.len() as u64).to_be_bytes());
    ctx.update(contents);
    ctx.update(passphrase.as_bytes());
    (path, ctx.finish().as_ref().to_vec())
}

fn cached<T: Clone>(cache: &Cache<T>, id: &(PathBuf, Vec<u8>)) -> Option<T> {
    cache.lock().ok().and_then(|c| c.get(id).cloned())
}

fn remember<T>(cache: &Cache<T>, id: (PathBuf, Vec<u8>), value: T) {
    if let Ok(mut c) = cache.lock() {
        c.insert(id, value);
    }
}

/// The profile's private key (PKCS#8 DER), decrypted when it is encrypted.
pub fn private_key(profile: &Profile, unlocker: &mut Unlocker) -> Result<Zeroizing<Vec<u8>>> {
    let path = &profile.key;
    if profile.key_uri.is_some() {
        return Err(ClientError::Profile {
            path: "key".into(),
            reason: "the key is on a PKCS#11 token and cannot be read out".into(),
        });
    }
    let bad = |reason: String| ClientError::Profile {
        path: path.display().to_string(),
        reason,
    };
    let pem = Zeroizing::new(read_bounded(path, MAX_PEM_BYTES).map_err(|e| bad(e.to_string()))?);
    let text = std::str::from_utf8(&pem).map_err(|_| bad("not PEM text".into()))?;
    if !keyfile::is_encrypted(text) {
        return keyfile::decrypt_pem(text, b"").map_err(|e| bad(e.to_string()));
    }
    let passphrase = unlocker.passphrase()?.clone();
    let id = cache_id(path, &pem, &passphrase);
    if let Some(der) = cached(&PRIVATE_KEYS, &id) {
        return Ok(der);
    }
    let der = match keyfile::decrypt_pem(text, passphrase.as_bytes()) {
        Ok(der) => der,
        Err(KeyFileError::WrongPassphrase) => return Err(unlocker.wrong(path)),
        Err(e) => return Err(bad(e.to_string())),
    };
    unlocker.unlocked();
    remember(&PRIVATE_KEYS, id, der.clone());
    Ok(der)
}

/// `STATE_DIR` with `suffix` appended to its last component.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(dir.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
}

/// Whether `dir` holds a sled database.
fn has_database(dir: &Path) -> bool {
    dir.join("db").exists() || dir.join("conf").exists()
}

/// Finishes or discards a sealing of a plain archive that was interrupted.
fn recover_sealing(state: &Path) -> Result<()> {
    let sealing = sibling(state, ".sealing");
    let plain = sibling(state, ".plain");
    let io = |p: &Path, e: std::io::Error| ClientError::io(p, e.to_string());
    if sealing.exists() {
        if !state.exists() && sealing.join(ARCHIVE_KEY_FILE).is_file() {
            fs::rename(&sealing, state).map_err(|e| io(&sealing, e))?;
        } else {
            fs::remove_dir_all(&sealing).map_err(|e| io(&sealing, e))?;
        }
    }
    if plain.exists() && state.join(ARCHIVE_KEY_FILE).is_file() {
        fs::remove_dir_all(&plain).map_err(|e| io(&plain, e))?;
    }
    Ok(())
}

/// Writes `contents` to `path` through a temporary file and a rename (so the file
/// is either old or new), with Unix permission bits `mode`.
pub(crate) fn replace_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let tmp = sibling(path, ".new");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(&tmp)
        .map_err(|e| ClientError::io(&tmp, format!("cannot create: {e}")))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| ClientError::io(&tmp, format!("cannot write: {e}")))?;
    fs::rename(&tmp, path).map_err(|e| ClientError::io(path, format!("cannot replace: {e}")))
}

fn read_wrapped(path: &Path) -> Result<(Vec<u8>, WrappedKey)> {
    let bytes = read_bounded(path, MAX_ARCHIVE_KEY_FILE).map_err(|r| ClientError::io(path, r))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| ClientError::io(path, "not UTF-8"))?;
    let wrapped: WrappedKey = toml::from_str(text)
        .map_err(|e| ClientError::io(path, format!("not an archive key file: {e}")))?;
    Ok((bytes, wrapped))
}

fn wrapped_text(wrapped: &WrappedKey) -> Result<String> {
    let body = toml::to_string(wrapped)
        .map_err(|e| ClientError::Protocol(format!("archive key file: {e}")))?;
    Ok(format!(
        "# The key of this device's local archive, wrapped under the passphrase\n\
         # (Argon2id). Without this file the archive cannot be read.\n{body}"
    ))
}

fn vault_err(path: &Path, e: VaultError) -> ClientError {
    ClientError::io(path, e.to_string())
}

/// Opens the local archive: unwraps its data key with the passphrase (or creates
/// the archive under it), sealing an archive kept in the clear first. Returns the
/// store and, when something happened the user should know of, a sentence saying
/// so.
pub fn open_archive(profile: &Profile, unlocker: &mut Unlocker) -> Result<(Store, Option<String>)> {
    let state = &profile.state_dir;
    recover_sealing(state)?;
    let key_path = state.join(ARCHIVE_KEY_FILE);
    if key_path.is_file() {
        let (bytes, wrapped) = read_wrapped(&key_path)?;
        let passphrase = unlocker.passphrase()?.clone();
        let id = cache_id(&key_path, &bytes, &passphrase);
        let key = match cached(&ARCHIVE_KEYS, &id) {
            Some(key) => key,
            None => {
                let key = match wrapped.unwrap_key(passphrase.as_bytes()) {
                    Ok(key) => key,
                    Err(VaultError::WrongPassphrase) => return Err(unlocker.wrong(&key_path)),
                    Err(e) => return Err(vault_err(&key_path, e)),
                };
                unlocker.unlocked();
                remember(&ARCHIVE_KEYS, id, key.clone());
                key
            }
        };
        return Ok((Store::open_sealed(state, key)?, None));
    }
    let passphrase = unlocker.passphrase_for_new()?;
    let key = DataKey::generate().map_err(|e| vault_err(&key_path, e))?;
    let wrapped =
        WrappedKey::wrap(&key, passphrase.as_bytes()).map_err(|e| vault_err(&key_path, e))?;
    let text = wrapped_text(&wrapped)?;
    if has_database(state) {
        // An archive from before sealing: copy it sealed, then swap directories.
        let sealing = sibling(state, ".sealing");
        let plain = sibling(state, ".plain");
        let entries = crate::store::seal_copy(state, &sealing, key.clone())?;
        replace_file(&sealing.join(ARCHIVE_KEY_FILE), text.as_bytes(), 0o600)?;
        let io = |p: &Path, e: std::io::Error| ClientError::io(p, e.to_string());
        fs::rename(state, &plain).map_err(|e| io(state, e))?;
        fs::rename(&sealing, state).map_err(|e| io(&sealing, e))?;
        fs::remove_dir_all(&plain).map_err(|e| io(&plain, e))?;
        remember(
            &ARCHIVE_KEYS,
            cache_id(&key_path, text.as_bytes(), &passphrase),
            key.clone(),
        );
        let store = Store::open_sealed(state, key)?;
        return Ok((
            store,
            Some(format!(
                "the local archive in {} was stored in the clear; it is now encrypted \
                 under your passphrase ({entries} records sealed, the clear copy deleted)",
                state.display()
            )),
        ));
    }
    fs::create_dir_all(state).map_err(|e| ClientError::io(state, e.to_string()))?;
    replace_file(&key_path, text.as_bytes(), 0o600)?;
    remember(
        &ARCHIVE_KEYS,
        cache_id(&key_path, text.as_bytes(), &passphrase),
        key.clone(),
    );
    Ok((Store::open_sealed(state, key)?, None))
}

/// What [`change_passphrase`] re-protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassphraseChange {
    /// The archive key was re-wrapped (false: this device has no archive yet).
    pub archive: bool,
    /// The private key file was re-encrypted (or encrypted, if it was in the clear).
    pub key: PathBuf,
    /// The profile's `passphrase_file`, rewritten with the new passphrase.
    pub passphrase_file: Option<PathBuf>,
}

/// `kring passphrase change`: the archive key re-wrapped and the private key
/// re-encrypted under `new` (the archive itself is not re-encrypted). Both are
/// unlocked with the current passphrase before anything is written; a wrong one
/// changes nothing. When the current passphrase came from the profile's
/// `passphrase_file`, that file gets the new one.
pub fn change_passphrase(
    profile: &Profile,
    unlocker: &mut Unlocker,
    new: &Passphrase,
) -> Result<PassphraseChange> {
    let key_path = profile.state_dir.join(ARCHIVE_KEY_FILE);
    recover_sealing(&profile.state_dir)?;
    // Unlock everything first. A key on a token (`pkcs11:`) has no file to
    // re-encrypt: its PIN protects it.
    let der = match profile.key_uri {
        None => Some(private_key(profile, unlocker)?),
        Some(_) => None,
    };
    let rewrapped = if key_path.is_file() {
        let (_, wrapped) = read_wrapped(&key_path)?;
        let data_key = match wrapped.unwrap_key(unlocker.passphrase()?.as_bytes()) {
            Ok(key) => key,
            Err(VaultError::WrongPassphrase) => return Err(unlocker.wrong(&key_path)),
            Err(e) => return Err(vault_err(&key_path, e)),
        };
        let w = WrappedKey::wrap(&data_key, new.as_bytes()).map_err(|e| vault_err(&key_path, e))?;
        Some(wrapped_text(&w)?)
    } else {
        None
    };
    let pem = der
        .map(|der| {
            keyfile::encrypt_pem(&der, new.as_bytes()).map_err(|e| ClientError::Profile {
                path: profile.key.display().to_string(),
                reason: e.to_string(),
            })
        })
        .transpose()?;
    // Then write: the archive key, the private key, the passphrase file.
    if let Some(text) = &rewrapped {
        replace_file(&key_path, text.as_bytes(), 0o600)?;
    }
    if let Some(pem) = &pem {
        replace_file(&profile.key, pem.as_bytes(), 0o600)?;
    }
    let passphrase_file = match unlocker.source() {
        PassphraseSource::ProfileFile(p) => {
            let mut line = Zeroizing::new(new.as_bytes().to_vec());
            line.push(b'\n');
            replace_file(p, &line, 0o600)?;
            Some(p.clone())
        }
        _ => None,
    };
    Ok(PassphraseChange {
        archive: rewrapped.is_some(),
        key: profile.key.clone(),
        passphrase_file,
    })
}

/// Deletes this device's archive and MLS state (the whole state directory, its
/// archive key included). The profile, certificate and key stay.
pub fn wipe(profile: &Profile) -> Result<()> {
    let state = &profile.state_dir;
    for dir in [
        state.clone(),
        sibling(state, ".sealing"),
        sibling(state, ".plain"),
    ] {
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ClientError::io(&dir, format!("cannot delete: {e}"))),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::notice::{Category, Notice, NoticeKind};
    use crate::store::{Batch, StoredNotice};

    const TITLE: &str = "Zebra-Orchid-Lantern-4471";
    const BODY: &str = "Marmalade-Quasar-Tundra-9082";

    fn profile_dir(tmp: &Path) -> PathBuf {
        let fed = crate::testpki::Fed::new("bz");
        let leaf = fed.user("bz", "analist", "bz", "NL:STG-GEHEIM");
        fed.profile(tmp, "analist@bz", "bz", &leaf)
    }

    fn notice(n: u128) -> StoredNotice {
        StoredNotice {
            notice: Notice {
                id: uuid::Uuid::from_u128(n),
                community: "c@bz".into(),
                label: "NL:ONGERUBRICEERD".into(),
                kind: NoticeKind::Notice,
                category: Category::Other,
                title: TITLE.into(),
                body: BODY.into(),
                sender: "liaison@bz".into(),
                filed_at: time::macros::datetime!(2025-01-01 0:00 UTC),
                in_reply_to: None,
                stix: None,
                forwarded_from: None,
                attachments: Vec::new(),
            },
            seq: Some(1),
            own: false,
            ordered_at: None,
        }
    }

    /// Every file under `dir` with its bytes.
    fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.insert(p.clone(), fs::read(&p).unwrap());
                }
            }
        }
        out
    }

    fn contains(files: &BTreeMap<PathBuf, Vec<u8>>, needle: &str) -> Vec<PathBuf> {
        files
            .iter()
            .filter(|(_, b)| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
            .map(|(p, _)| p.clone())
            .collect()
    }

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.as_bytes().to_vec()).unwrap()
    }

    fn open(dir: &Path, passphrase: &str) -> Result<crate::Client> {
        let profile = Profile::load(dir)?;
        crate::Client::open_unlocked(
            profile.clone(),
            &mut Unlocker::with(&profile, pass(passphrase)),
        )
    }

    #[test]
    fn the_archive_is_sealed_on_disk_and_reopens_with_the_passphrase() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = profile_dir(tmp.path());
        {
            let client = crate::Client::open(&dir).unwrap();
            assert!(client.open_notes().is_empty());
            assert!(client.store().insert_notice(&notice(1)).unwrap());
            client.store().release().unwrap();
        }
        let files = snapshot(&dir);
        assert!(files.contains_key(&dir.join("state").join(ARCHIVE_KEY_FILE)));
        for needle in [TITLE, BODY] {
            assert_eq!(contains(&files, needle), Vec::<PathBuf>::new(), "{needle}");
        }
        let client = open(&dir, "test passphrase").unwrap();
        let n = client
            .store()
            .notice(uuid::Uuid::from_u128(1))
            .unwrap()
            .unwrap();
        assert_eq!(n.notice.title, TITLE);
    }

    #[test]
    fn a_wrong_passphrase_is_exit_4_and_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = profile_dir(tmp.path());
        drop(crate::Client::open(&dir).unwrap());
        let before = snapshot(&dir);
        let err = open(&dir, "not the passphrase").unwrap_err();
        assert_eq!(err.exit_code(), 4, "{err}");
        assert!(err.to_string().contains("wrong passphrase"), "{err}");
        assert!(err.to_string().contains("nothing was changed"), "{err}");
        assert_eq!(snapshot(&dir), before);
        // An encrypted private key is refused the same way, before the archive.
        let profile = Profile::load(&dir).unwrap();
        let der = private_key(&profile, &mut Unlocker::new(&profile)).unwrap();
        fs::write(
            &profile.key,
            keyfile::encrypt_pem(&der, b"test passphrase")
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        let before = snapshot(&dir);
        let err = open(&dir, "not the passphrase").unwrap_err();
        assert_eq!(err.exit_code(), 4, "{err}");
        assert!(err.to_string().contains("user.key"), "{err}");
        assert_eq!(snapshot(&dir), before);
        assert!(open(&dir, "test passphrase").is_ok());
    }

    #[test]
    fn an_archive_in_the_clear_is_sealed_on_first_unlock() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = profile_dir(tmp.path());
        let state = dir.join("state");
        {
            // The layout of an archive written before sealing.
            let db = sled::open(&state).unwrap();
            let tree = db.open_tree("kring").unwrap();
            let mut key = b"n/".to_vec();
            key.extend_from_slice(uuid::Uuid::from_u128(5).as_bytes());
            tree.insert(key, serde_json::to_vec(&notice(5)).unwrap())
                .unwrap();
            tree.insert(b"s/c@bz", &7u64.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        assert!(!contains(&snapshot(&state), TITLE).is_empty());
        let client = crate::Client::open(&dir).unwrap();
        let note = client.open_notes().join(" ");
        assert!(note.contains("now encrypted"), "{note}");
        assert!(note.contains("2 records"), "{note}");
        assert_eq!(client.store().cursor("c@bz").unwrap(), 7);
        assert!(client.store().has_notice(uuid::Uuid::from_u128(5)).unwrap());
        client.store().release().unwrap();
        drop(client);
        let files = snapshot(tmp.path());
        assert_eq!(contains(&files, TITLE), Vec::<PathBuf>::new());
        assert_eq!(contains(&files, BODY), Vec::<PathBuf>::new());
        assert!(!dir.join("state.plain").exists() && !dir.join("state.sealing").exists());
        // Opened again: nothing more to do.
        let client = open(&dir, "test passphrase").unwrap();
        assert!(client.open_notes().is_empty());
        assert!(client.store().has_notice(uuid::Uuid::from_u128(5)).unwrap());
    }

    #[test]
    fn a_sealed_archive_without_its_key_file_is_not_taken_for_a_clear_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = profile_dir(tmp.path());
        {
            let client = crate::Client::open(&dir).unwrap();
            let mut b = Batch::new();
            b.put_cursor("c@bz", 3);
            client.store().commit_plain(b).unwrap();
        }
        fs::remove_file(dir.join("state").join(ARCHIVE_KEY_FILE)).unwrap();
        let err = crate::Client::open(&dir).unwrap_err();
        assert!(
            err.to_string()
                .contains("archive key (archive.key) is missing"),
            "{err}"
        );
        assert!(!dir.join("state.sealing").exists());
    }

    #[test]
    fn changing_the_passphrase_rewraps_without_reencrypting() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = profile_dir(tmp.path());
        {
            let client = crate::Client::open(&dir).unwrap();
            client.store().insert_notice(&notice(1)).unwrap();
            client.store().release().unwrap();
        }
        let state_before: BTreeMap<_, _> = snapshot(&dir.join("state"))
            .into_iter()
            .filter(|(p, _)| !p.ends_with(ARCHIVE_KEY_FILE))
            .collect();
        let profile = Profile::load(&dir).unwrap();
        // A wrong current passphrase changes nothing.
        let before = snapshot(&dir);
        let err = change_passphrase(
            &profile,
            &mut Unlocker::with(&profile, pass("nope")),
            &pass("second"),
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), 4);
        assert_eq!(snapshot(&dir), before);

        let change =
            change_passphrase(&profile, &mut Unlocker::new(&profile), &pass("second")).unwrap();
        assert!(change.archive);
        assert_eq!(change.passphrase_file, Some(dir.join("passphrase")));
        assert_eq!(
            fs::read_to_string(dir.join("passphrase")).unwrap(),
            "second\n"
        );
        let pem = fs::read_to_string(dir.join("user.key")).unwrap();
        assert!(
            keyfile::is_encrypted(&pem),
            "the key in the clear is now encrypted"
        );
        let state_after: BTreeMap<_, _> = snapshot(&dir.join("state"))
            .into_iter()
            .filter(|(p, _)| !p.ends_with(ARCHIVE_KEY_FILE))
            .collect();
        assert_eq!(state_after, state_before, "the archive is not re-encrypted");
        assert_eq!(open(&dir, "test passphrase").unwrap_err().exit_code(), 4);
        let client = crate::Client::open(&dir).unwrap();
        assert!(client.store().has_notice(uuid::Uuid::from_u128(1)).unwrap());
    }

    #[test]
    fn passphrase_files_give_their_first_line() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("p");
        for (text, want) in [("abc\n", "abc"), ("abc\r\nrest\n", "abc"), ("abc", "abc")] {
            fs::write(&p, text).unwrap();
            assert_eq!(
                Passphrase::read_file(&p).unwrap().as_bytes(),
                want.as_bytes()
            );
        }
        fs::write(&p, "\nabc").unwrap();
        assert!(Passphrase::read_file(&p).is_err());
        assert!(Passphrase::read_file(&tmp.path().join("missing")).is_err());
    }

    #[test]
    fn wiping_deletes_the_archive_and_keeps_the_profile() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = profile_dir(tmp.path());
        drop(crate::Client::open(&dir).unwrap());
        let profile = Profile::load(&dir).unwrap();
        wipe(&profile).unwrap();
        assert!(!dir.join("state").exists());
        assert!(dir.join("user.key").is_file() && dir.join("profile.toml").is_file());
        wipe(&profile).unwrap();
    }
}
