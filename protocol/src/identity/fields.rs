//! The checks of a certificate's fields: extensions, key, basic constraints, SANs,
//! subject name and extended key usage.

use super::*;

/// Extensions that may be marked critical in a Kring end-entity certificate.
pub(super) fn may_be_critical(oid: &x509_parser::der_parser::oid::Oid<'_>) -> bool {
    use x509_parser::oid_registry as r;
    *oid == r::OID_X509_EXT_BASIC_CONSTRAINTS
        || *oid == r::OID_X509_EXT_KEY_USAGE
        || *oid == r::OID_X509_EXT_EXTENDED_KEY_USAGE
        || *oid == r::OID_X509_EXT_SUBJECT_ALT_NAME
}

pub(super) fn check_extensions(cert: &X509Certificate<'_>) -> Result<(), IdentityError> {
    cert.extensions_map()
        .map_err(|e| malformed(format!("{e} (an extension appears twice)")))?;
    for ext in cert.extensions() {
        if let ParsedExtension::ParseError { error } = ext.parsed_extension() {
            return Err(malformed(format!(
                "extension {} cannot be parsed: {error}",
                ext.oid.to_id_string()
            )));
        }
        if ext.critical && !may_be_critical(&ext.oid) {
            return Err(IdentityError::UnsupportedCriticalExtension {
                oid: ext.oid.to_id_string(),
            });
        }
    }
    Ok(())
}

pub(super) fn ed25519_key(cert: &X509Certificate<'_>) -> Result<Vec<u8>, IdentityError> {
    let spki = cert.public_key();
    let alg = &spki.algorithm;
    if alg.algorithm != x509_parser::oid_registry::OID_SIG_ED25519 {
        return Err(IdentityError::UnsupportedKey {
            found: format!("algorithm {}", alg.algorithm.to_id_string()),
        });
    }
    if alg.parameters.is_some() {
        return Err(IdentityError::UnsupportedKey {
            found: "Ed25519 with algorithm parameters (RFC 8410 forbids them)".to_string(),
        });
    }
    let key = &spki.subject_public_key;
    if key.unused_bits != 0 || key.data.len() != ED25519_KEY_LEN {
        return Err(IdentityError::UnsupportedKey {
            found: format!("an Ed25519 key of {} bytes (expected 32)", key.data.len()),
        });
    }
    Ok(key.data.to_vec())
}

pub(super) fn check_not_ca(cert: &X509Certificate<'_>) -> Result<(), IdentityError> {
    if let Some(bc) = cert
        .basic_constraints()
        .map_err(|e| malformed(e.to_string()))?
        && bc.value.ca
    {
        return Err(IdentityError::IsCa);
    }
    if let Some(ku) = cert.key_usage().map_err(|e| malformed(e.to_string()))? {
        let ku = ku.value;
        if !ku.digital_signature() {
            return Err(IdentityError::BadKeyUsage {
                reason: "keyUsage lacks digitalSignature, which Ed25519 TLS and MLS keys need"
                    .to_string(),
            });
        }
        if ku.key_cert_sign() || ku.crl_sign() {
            return Err(IdentityError::BadKeyUsage {
                reason: "keyUsage allows signing certificates or CRLs, which only CAs may do"
                    .to_string(),
            });
        }
    }
    Ok(())
}

pub(super) fn subject_alt_names<'a>(
    cert: &'a X509Certificate<'a>,
) -> Result<Vec<GeneralName<'a>>, IdentityError> {
    Ok(cert
        .subject_alternative_name()
        .map_err(|e| malformed(e.to_string()))?
        .map(|ext| ext.value.general_names.clone())
        .unwrap_or_default())
}

/// Finds the single `kring:` URI SAN and splits it into (kind, name, home relay).
pub(super) fn kring_uri(
    sans: &[GeneralName<'_>],
) -> Result<(IdentityKind, String, String), IdentityError> {
    let uris: Vec<&str> = sans
        .iter()
        .filter_map(|g| match g {
            GeneralName::URI(u) if u.starts_with("kring:") => Some(*u),
            _ => None,
        })
        .collect();
    let uri = match uris.as_slice() {
        [] => return Err(IdentityError::MissingSan),
        [one] => *one,
        many => return Err(IdentityError::AmbiguousSan { count: many.len() }),
    };
    let bad = |e: IdentityError| IdentityError::BadSan {
        san: uri.to_string(),
        reason: e.to_string(),
    };
    if let Some(user) = uri.strip_prefix(USER_URI_PREFIX) {
        let (name, relay) = parse_user_id(user).map_err(bad)?;
        Ok((IdentityKind::User, name.to_string(), relay.to_string()))
    } else if let Some(relay) = uri.strip_prefix(RELAY_URI_PREFIX) {
        validate_relay_id(relay).map_err(bad)?;
        Ok((IdentityKind::Relay, relay.to_string(), relay.to_string()))
    } else {
        Err(IdentityError::BadSan {
            san: uri.to_string(),
            reason: "must start with kring:user: or kring:relay:".to_string(),
        })
    }
}

#[derive(Clone, Copy)]
pub(super) enum Attr {
    Cn,
    O,
}

/// The single value of subject attribute `attr`, if present.
pub(super) fn single_subject_attr(
    name: &X509Name<'_>,
    attr: Attr,
) -> Result<Option<String>, IdentityError> {
    let (label, values): (&'static str, Vec<_>) = match attr {
        Attr::Cn => ("CN", name.iter_common_name().collect()),
        Attr::O => ("O", name.iter_organization().collect()),
    };
    match values.as_slice() {
        [] => Ok(None),
        [one] => one
            .as_str()
            .map(|s| Some(s.to_string()))
            .map_err(|e| IdentityError::BadSubject {
                attribute: label,
                reason: e.to_string(),
            }),
        _ => Err(IdentityError::AmbiguousSubject { attribute: label }),
    }
}

/// The subject must have exactly one CN, equal to the user name / relay id.
pub(super) fn check_subject_name(subject: &X509Name<'_>, name: &str) -> Result<(), IdentityError> {
    let cn = single_subject_attr(subject, Attr::Cn)?.ok_or_else(|| {
        IdentityError::MissingCommonName {
            expected: name.to_string(),
        }
    })?;
    if cn != name {
        return Err(IdentityError::NameMismatch {
            cn,
            name: name.to_string(),
        });
    }
    Ok(())
}

pub(super) fn check_eku(
    cert: &X509Certificate<'_>,
    kind: IdentityKind,
) -> Result<(), IdentityError> {
    let eku = cert
        .extended_key_usage()
        .map_err(|e| malformed(e.to_string()))?
        .map(|e| e.value)
        .ok_or(IdentityError::EkuMissing {
            kind,
            missing: "clientAuth",
        })?;
    let forbidden = |eku: &str| IdentityError::EkuForbidden {
        kind,
        eku: eku.to_string(),
    };
    if eku.any {
        return Err(forbidden("anyExtendedKeyUsage"));
    }
    for (present, label) in [
        (eku.code_signing, "codeSigning"),
        (eku.email_protection, "emailProtection"),
        (eku.time_stamping, "timeStamping"),
        (eku.ocsp_signing, "OCSPSigning"),
    ] {
        if present {
            return Err(forbidden(label));
        }
    }
    if let Some(other) = eku.other.first() {
        return Err(forbidden(&other.to_id_string()));
    }
    if !eku.client_auth {
        return Err(IdentityError::EkuMissing {
            kind,
            missing: "clientAuth",
        });
    }
    match kind {
        IdentityKind::User if eku.server_auth => Err(forbidden(
            "serverAuth (only relay certificates may authenticate TLS servers)",
        )),
        IdentityKind::Relay if !eku.server_auth => Err(IdentityError::EkuMissing {
            kind,
            missing: "serverAuth",
        }),
        _ => Ok(()),
    }
}

/// Checks the SANs other than the `kring:` URI: a relay needs exactly its DNS name,
/// a user may carry nothing else.
pub(super) fn check_other_sans(
    sans: &[GeneralName<'_>],
    kind: IdentityKind,
    relay: &str,
) -> Result<(), IdentityError> {
    let expected_dns = format!("{relay}{RELAY_DNS_SUFFIX}");
    let mut dns_found: Vec<&str> = Vec::new();
    for san in sans {
        match san {
            GeneralName::URI(u) if u.starts_with("kring:") => {}
            GeneralName::DNSName(d) if kind == IdentityKind::Relay => dns_found.push(d),
            GeneralName::DNSName(d) => {
                return Err(IdentityError::UnexpectedSan {
                    kind,
                    san: format!("DNS:{d}"),
                    reason: "user certificates carry no DNS names".to_string(),
                });
            }
            other => {
                return Err(IdentityError::UnexpectedSan {
                    kind,
                    san: other.to_string(),
                    reason: "Kring certificates carry only their kring: URI (and, for relays, \
                             their DNS name)"
                        .to_string(),
                });
            }
        }
    }
    if kind == IdentityKind::Relay {
        match dns_found.as_slice() {
            [] => {
                return Err(IdentityError::MissingDnsSan {
                    expected: expected_dns,
                });
            }
            [one] if *one == expected_dns => {}
            [one] => {
                return Err(IdentityError::DnsSanMismatch {
                    expected: expected_dns,
                    found: (*one).to_string(),
                });
            }
            many => {
                return Err(IdentityError::DnsSanMismatch {
                    expected: expected_dns,
                    found: many.join(", "),
                });
            }
        }
    }
    Ok(())
}
