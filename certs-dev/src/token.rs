//! `kring-certs-dev init --pkcs11 MODULE`: the demo users' keys moved into PKCS#11
//! tokens, one token per user (as each user holds their own smartcard).
//!
//! For SoftHSM2, the token files live in `DIR/softhsm/tokens` and the
//! configuration that points at them is `DIR/softhsm2.conf`: the library reads it
//! from `SOFTHSM2_CONF`, which must be set (to that file) for this step and for
//! every `kring` command of these users. Each user's key is imported into a token
//! labelled with the user's id, `user.key` is overwritten and deleted, and the
//! profile's `key` becomes a `pkcs11:` URI whose PIN is in `user.pin` beside the
//! profile (development only).

use std::path::{Path, PathBuf};

use cryptoki::context::{CInitializeArgs, Pkcs11};
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

use crate::error::CertsError;
use crate::federation::{KEY_MODE, PASSPHRASE_FILE, write_file};

/// The SoftHSM2 configuration `init --pkcs11` writes into the federation directory.
pub const SOFTHSM2_CONF: &str = "softhsm2.conf";
/// The PIN file beside each token user's profile.
pub const PIN_FILE: &str = "user.pin";
/// DER of the Ed25519 curve OID (1.3.101.112), the key's CKA_EC_PARAMS.
const ED25519_OID_DER: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];

fn token_err(what: impl Into<String>) -> impl FnOnce(cryptoki::error::Error) -> CertsError {
    let what = what.into();
    move |e| CertsError::Generate {
        what,
        reason: e.to_string(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertsError + '_ {
    move |e| CertsError::Generate {
        what: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Writes `DIR/softhsm2.conf` and its token directory; returns the file's path.
///
/// # Errors
/// [`CertsError::Generate`] if they cannot be written.
pub fn write_softhsm_conf(dir: &Path) -> Result<PathBuf, CertsError> {
    let dir = std::path::absolute(dir).map_err(io_err(dir))?;
    let tokens = dir.join("softhsm").join("tokens");
    std::fs::create_dir_all(&tokens).map_err(io_err(&tokens))?;
    let conf = dir.join(SOFTHSM2_CONF);
    let text = format!(
        "# SoftHSM2 configuration of this demo federation's tokens (development only).\n\
         # Use it with: export SOFTHSM2_CONF={}\n\
         directories.tokendir = {}\n\
         objectstore.backend = file\n\
         log.level = ERROR\n",
        conf.display(),
        tokens.display()
    );
    std::fs::write(&conf, text.as_bytes()).map_err(io_err(&conf))?;
    Ok(conf)
}

fn random_pin() -> Result<String, CertsError> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CertsError::Generate {
            what: "a PIN".into(),
            reason: "the system random number generator failed".into(),
        })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The `key` line of a token user's profile.
pub fn key_uri(user: &str, module: &Path) -> String {
    format!(
        "pkcs11:token={user};object={user}?pin-source=file:{PIN_FILE}&module-path={}",
        module.display()
    )
}

/// Moves every user of the federation directory `dir` (`dir/users/NAME@RELAY/`) into a token of `module` (see the module
/// documentation). `SOFTHSM2_CONF` must already point at [`write_softhsm_conf`]'s
/// file when the module is SoftHSM2.
///
/// # Errors
/// [`CertsError::Generate`] if the library, a token or a file fails.
pub fn move_keys_into_tokens(dir: &Path, module: &Path) -> Result<(), CertsError> {
    let users_dir = dir.join("users");
    let mut users = Vec::new();
    for entry in std::fs::read_dir(&users_dir).map_err(io_err(&users_dir))? {
        let entry = entry.map_err(io_err(&users_dir))?;
        let path = entry.path();
        if path.join("user.key").is_file()
            && let Some(name) = path.file_name().and_then(|n| n.to_str())
        {
            users.push((name.to_string(), path.clone()));
        }
    }
    users.sort();
    let ctx = Pkcs11::new(module).map_err(token_err(format!(
        "the PKCS#11 library {}",
        module.display()
    )))?;
    ctx.initialize(CInitializeArgs::OsThreads)
        .map_err(token_err("PKCS#11 initialisation"))?;
    for (user, profile_dir) in &users {
        move_one(&ctx, user, profile_dir, module)?;
    }
    Ok(())
}

fn move_one(ctx: &Pkcs11, user: &str, dir: &Path, module: &Path) -> Result<(), CertsError> {
    let key_path = dir.join("user.key");
    let passphrase = std::fs::read_to_string(dir.join(PASSPHRASE_FILE))
        .map_err(io_err(&dir.join(PASSPHRASE_FILE)))?;
    let pem = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
    let der = kring_protocol::keyfile::decrypt_pem(&pem, passphrase.trim_end().as_bytes())
        .map_err(|e| CertsError::Generate {
            what: key_path.display().to_string(),
            reason: e.to_string(),
        })?;
    // An Ed25519 PKCS#8 document ends with the 32-byte seed (RFC 8410), v1 form.
    let seed = der
        .get(16..48)
        .filter(|_| der.len() == 48)
        .ok_or_else(|| CertsError::Generate {
            what: key_path.display().to_string(),
            reason: "not a PKCS#8 v1 Ed25519 key".into(),
        })?
        .to_vec();
    let seed = zeroize::Zeroizing::new(seed);

    let slot = ctx
        .get_slots_with_token()
        .map_err(token_err("the token list"))?
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .map(|i| !i.token_initialized())
                .unwrap_or(false)
        })
        .ok_or_else(|| CertsError::Generate {
            what: format!("a token for {user}"),
            reason: "the PKCS#11 library offers no free slot".into(),
        })?;
    let pin = random_pin()?;
    let so_pin = AuthPin::new(random_pin()?);
    ctx.init_token(slot, &so_pin, user)
        .map_err(token_err(format!("the token of {user}")))?;
    let session = ctx
        .open_rw_session(slot)
        .map_err(token_err("a token session"))?;
    session
        .login(UserType::So, Some(&so_pin))
        .map_err(token_err("the SO login"))?;
    session
        .init_pin(&AuthPin::new(pin.clone()))
        .map_err(token_err("the user PIN"))?;
    session.logout().map_err(token_err("the SO logout"))?;
    session
        .login(UserType::User, Some(&AuthPin::new(pin.clone())))
        .map_err(token_err("the user login"))?;
    session
        .create_object(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::EC_EDWARDS),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Label(user.as_bytes().to_vec()),
            Attribute::Id(user.as_bytes().to_vec()),
            Attribute::EcParams(ED25519_OID_DER.to_vec()),
            Attribute::Value(seed.to_vec()),
        ])
        .map_err(token_err(format!("the key of {user} in its token")))?;
    drop(session);

    write_file(&dir.join(PIN_FILE), format!("{pin}\n").as_bytes(), KEY_MODE)?;
    let profile_path = dir.join("profile.toml");
    let profile = std::fs::read_to_string(&profile_path).map_err(io_err(&profile_path))?;
    if !profile.contains("key = \"user.key\"\n") {
        return Err(CertsError::Generate {
            what: profile_path.display().to_string(),
            reason: "has no key = \"user.key\" line to replace".into(),
        });
    }
    let profile = profile.replace(
        "key = \"user.key\"\n",
        &format!(
            "# The key is in a PKCS#11 token (SoftHSM2: export SOFTHSM2_CONF=../../{SOFTHSM2_CONF}\n\
             # from the federation directory); DEVELOPMENT ONLY: its PIN is in {PIN_FILE}.\n\
             key = \"{}\"\n",
            key_uri(user, module)
        ),
    );
    std::fs::write(&profile_path, profile.as_bytes()).map_err(io_err(&profile_path))?;
    // Overwrite, then delete, the key file: the key now lives only in the token.
    let len = usize::try_from(
        std::fs::metadata(&key_path)
            .map_err(io_err(&key_path))?
            .len(),
    )
    .unwrap_or(0);
    std::fs::write(&key_path, vec![0u8; len]).map_err(io_err(&key_path))?;
    std::fs::remove_file(&key_path).map_err(io_err(&key_path))
}
