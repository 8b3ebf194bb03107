//! `kring-certs-dev`: writes the development PKI and configuration of a Kring
//! demo federation. See `kring-certs-dev --help`.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use kring_certs_dev::{
    CertifiedUser, CertsError, DEFAULT_BASE_PORT, InitSummary, IssueUserRequest, RevokedEntry,
    SignCsrRequest, UserEntry, clearance_der, init_demo, issue_user_into,
    revoke_user_certificate_with_reason, sign_csr_into,
};
use kring_policy::Clearance;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Development PKI for a Kring federation: CAs, relay and user certificates, configs.
#[derive(Debug, Parser)]
#[command(name = "kring-certs-dev", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write the demo federation (relays bz, nctv, aivd, post-a and their users) into DIR.
    Init {
        /// Directory to create; must be missing or empty unless --force.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// First UDP port (QUIC); relays listen on 127.0.0.1 ports P, P+1, P+2, P+3.
        #[arg(long, value_name = "P", default_value_t = DEFAULT_BASE_PORT)]
        base_port: u16,
        /// Replace DIR's ca/, orgs/, relays/ and users/ if DIR is not empty.
        #[arg(long)]
        force: bool,
        /// Put the users' keys into PKCS#11 tokens of this library (e.g.
        /// /usr/lib/softhsm/libsofthsm2.so; its configuration: DIR/softhsm2.conf).
        #[arg(long, value_name = "MODULE")]
        pkcs11: Option<PathBuf>,
    },
    /// Moves the users of DIR into tokens (run by `init --pkcs11` with SOFTHSM2_CONF set).
    #[command(hide = true)]
    Pkcs11Keys {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[arg(long, value_name = "MODULE")]
        module: PathBuf,
    },
    /// Add a user to an existing federation, signed by its home relay's organisation CA.
    IssueUser {
        /// The federation directory written by `init`.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The user, NAME@RELAY (RELAY must exist in DIR).
        #[arg(long, value_name = "NAME@RELAY")]
        user: String,
        /// The clearance, e.g. NL:STG-GEHEIM;CMP=CYBER.
        #[arg(long, value_name = "LABEL")]
        clearance: String,
        /// A role to grant (repeatable), e.g. org-admin.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// End of validity (RFC 3339, e.g. 2030-01-01T00:00:00Z); default one year.
        #[arg(long, value_name = "RFC3339")]
        not_after: Option<String>,
        /// Replace the user's existing profile directory.
        #[arg(long)]
        force: bool,
    },
    /// Revoke a user's current certificate: add its serial number to the CRL of its
    /// organisation (DIR/orgs/ORG/crl.pem), which relays re-read within a second.
    RevokeCert {
        /// The federation directory written by `init`.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The user, NAME@RELAY (its certificate is DIR/users/NAME@RELAY/user.crt).
        #[arg(value_name = "NAME@RELAY")]
        user: String,
        /// Why (recorded in DIR/orgs/ORG/crl.log; the CRL says keyCompromise).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Certify a user's key from a certificate signing request (`kring enroll`), signed
    /// by the CA of the home relay's organisation; writes the chain (certificate, then
    /// organisation CA) that the user saves as user.crt.
    SignCsr {
        /// The federation directory written by `init`.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The request (PEM or DER), e.g. user.csr from `kring enroll`.
        #[arg(long, value_name = "FILE")]
        csr: PathBuf,
        /// The clearance, e.g. NL:STG-GEHEIM;CMP=CYBER.
        #[arg(long, value_name = "LABEL")]
        clearance: String,
        /// A role to grant (repeatable), e.g. org-admin.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// End of validity (RFC 3339, e.g. 2030-01-01T00:00:00Z); default one year.
        #[arg(long, value_name = "RFC3339")]
        not_after: Option<String>,
        /// Where to write the chain (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print, as hex, the subjectDirectoryAttributes extension (OID 2.5.29.9) that
    /// carries a clearance (and roles), for a CA run with OpenSSL: put
    /// `2.5.29.9 = DER:<hex>` in its extension file (see docs/certificates.md). For a
    /// relay, LABEL is its accreditation and there are no roles.
    ClearanceDer {
        /// The clearance or accreditation, e.g. NL:STG-GEHEIM.
        #[arg(value_name = "LABEL")]
        clearance: String,
        /// A role to grant (repeatable), e.g. org-admin.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
    },
}

/// Lower-case hex, two digits per byte.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn print_init(s: &InitSummary) {
    let dir = s.dir.display();
    println!("Wrote the Kring demo federation to {dir}");
    if s.replaced {
        println!("  (replaced the previous ca/, orgs/, relays/ and users/)");
    }
    println!(
        "  root CA   {}",
        kring_certs_dev::root_cert_path(&s.dir).display()
    );
    println!("  relays");
    for r in &s.relays {
        println!(
            "    {:<8} {:<17} accreditation {}",
            r.id, r.address, r.accreditation
        );
    }
    println!("  users");
    for u in &s.users {
        let roles = if u.roles.is_empty() {
            String::new()
        } else {
            format!("  roles: {}", u.roles.join(", "))
        };
        println!("    {:<16} {}{roles}", u.id, u.clearance);
    }
    println!();
    println!("Next: start each relay, e.g.");
    for r in &s.relays {
        println!("  kring-relay --config {}", r.config.display());
    }
    if let Some(u) = s.users.first() {
        println!(
            "then: kring --profile {} keys publish",
            u.profile_dir.display()
        );
    }
}

fn print_user(u: &UserEntry) {
    let roles = if u.roles.is_empty() {
        "none".to_string()
    } else {
        u.roles.join(", ")
    };
    println!(
        "Issued {} (organisation {}, clearance {}, roles: {roles})",
        u.id, u.organisation, u.clearance
    );
    println!("  profile  {}", u.profile_dir.display());
    println!(
        "Next: kring --profile {} keys publish",
        u.profile_dir.display()
    );
}

fn print_revoked(r: &RevokedEntry) {
    if r.already_revoked {
        println!(
            "The certificate of {} (serial {}) is already revoked; nothing changed",
            r.user, r.serial
        );
    } else {
        println!(
            "Revoked the certificate of {} (organisation {}, serial {})",
            r.user, r.organisation, r.serial
        );
    }
    let when = |t: i64| {
        OffsetDateTime::from_unix_timestamp(t)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| t.to_string())
    };
    println!(
        "  CRL      {} (number {}, {} revoked certificate{}, thisUpdate {}, nextUpdate {})",
        r.crl_path.display(),
        r.crl_number,
        r.entries,
        if r.entries == 1 { "" } else { "s" },
        when(r.this_update),
        when(r.next_update)
    );
    if !r.already_revoked {
        println!(
            "Relays that list this CRL under `crls` pick it up within a second. To re-admit \
             the person, issue a new certificate (issue-user --force)."
        );
    }
}

fn parse_not_after(text: &str) -> Result<i64, CertsError> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map(OffsetDateTime::unix_timestamp)
        .map_err(|e| CertsError::InvalidArgument {
            what: "--not-after",
            reason: format!("{text:?} is not an RFC 3339 time (e.g. 2030-01-01T00:00:00Z): {e}"),
        })
}

fn print_certified(c: &CertifiedUser) {
    let roles = if c.roles.is_empty() {
        "none".to_string()
    } else {
        c.roles.join(", ")
    };
    let until = OffsetDateTime::from_unix_timestamp(c.not_after)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| c.not_after.to_string());
    println!(
        "Certified {} (organisation {}, clearance {}, roles: {roles})",
        c.id, c.organisation, c.clearance
    );
    println!("  serial   {}", c.serial);
    println!("  valid to {until}");
    println!("  chain    {}", c.chain_path.display());
    println!(
        "Next: the user saves this file as user.crt in the profile directory `kring enroll` \
         made, next to the federation root CA certificate (root.crt)"
    );
}

fn parse_clearance(text: &str) -> Result<Clearance, CertsError> {
    Clearance::from_str(text).map_err(|e| CertsError::BadClearance {
        label: text.to_string(),
        reason: e.to_string(),
    })
}

fn sign_csr(
    dir: &Path,
    csr: &Path,
    clearance: &str,
    roles: Vec<String>,
    not_after: Option<&str>,
    out: &Path,
) -> Result<CertifiedUser, CertsError> {
    let clearance = parse_clearance(clearance)?;
    let not_after = not_after.map(parse_not_after).transpose()?;
    let csr = kring_certs_dev::read_csr_file(csr)?;
    sign_csr_into(
        dir,
        &SignCsrRequest {
            csr,
            clearance,
            roles,
            not_after,
        },
        out,
        now_unix(),
    )
}

fn issue_user(
    dir: &Path,
    user: String,
    clearance: &str,
    roles: Vec<String>,
    not_after: Option<&str>,
    force: bool,
) -> Result<UserEntry, CertsError> {
    let clearance = parse_clearance(clearance)?;
    let not_after = not_after.map(parse_not_after).transpose()?;
    let now = now_unix();
    if let Some(t) = not_after
        && t <= now
    {
        eprintln!(
            "kring-certs-dev: warning: --not-after is in the past; the certificate is already expired"
        );
    }
    issue_user_into(
        dir,
        &IssueUserRequest {
            user,
            clearance,
            roles,
            not_after,
            force,
        },
        now,
    )
}

fn run(cli: Cli) -> Result<(), CertsError> {
    match cli.command {
        Command::Init {
            out,
            base_port,
            force,
            pkcs11,
        } => {
            let summary = init_demo(&out, base_port, force, now_unix())?;
            if let Some(module) = pkcs11 {
                let conf = kring_certs_dev::token::write_softhsm_conf(&out)?;
                // The library reads SOFTHSM2_CONF when it loads: run the token step
                // in a child process that has it.
                let exe = std::env::current_exe().map_err(|e| CertsError::Generate {
                    what: "the token step".into(),
                    reason: e.to_string(),
                })?;
                let status = std::process::Command::new(exe)
                    .arg("pkcs11-keys")
                    .arg("--dir")
                    .arg(&out)
                    .arg("--module")
                    .arg(&module)
                    .env("SOFTHSM2_CONF", &conf)
                    .status()
                    .map_err(|e| CertsError::Generate {
                        what: "the token step".into(),
                        reason: e.to_string(),
                    })?;
                if !status.success() {
                    return Err(CertsError::Generate {
                        what: "the users' tokens".into(),
                        reason: format!("the token step failed ({status})"),
                    });
                }
                print_init(&summary);
                println!(
                    "Keys are in PKCS#11 tokens of {}; before using a profile: export SOFTHSM2_CONF={}",
                    module.display(),
                    conf.display()
                );
            } else {
                print_init(&summary);
            }
        }
        Command::Pkcs11Keys { dir, module } => {
            kring_certs_dev::token::move_keys_into_tokens(&dir, &module)?;
        }
        Command::IssueUser {
            dir,
            user,
            clearance,
            roles,
            not_after,
            force,
        } => {
            let entry = issue_user(&dir, user, &clearance, roles, not_after.as_deref(), force)?;
            print_user(&entry);
        }
        Command::SignCsr {
            dir,
            csr,
            clearance,
            roles,
            not_after,
            out,
        } => {
            let certified = sign_csr(&dir, &csr, &clearance, roles, not_after.as_deref(), &out)?;
            print_certified(&certified);
        }
        Command::ClearanceDer { clearance, roles } => {
            let der = clearance_der(&parse_clearance(&clearance)?, &roles)?;
            println!("{}", hex(&der));
        }
        Command::RevokeCert { dir, user, reason } => {
            let entry =
                revoke_user_certificate_with_reason(&dir, &user, reason.as_deref(), now_unix())?;
            print_revoked(&entry);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kring-certs-dev: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
