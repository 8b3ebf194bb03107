//! Kring community metadata, carried as a custom group-context extension.

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _, VLBytes};

use super::{MAX_ADMINS, MAX_ID_BYTES, MAX_LABEL_BYTES, MemberId, MlsError};

/// Extension type of the Kring community metadata group-context extension (from the
/// RFC 9420 private-use range `0xF000..=0xFFFF`). Listed in the group's
/// RequiredCapabilities, so every member must support it.
pub const KRING_EXTENSION_TYPE: u16 = 0xFF4B;

/// Version byte of an encoded [`CommunityMeta`] with the default update period.
const META_VERSION: u8 = 1;
/// Version byte of an encoded [`CommunityMeta`] that names its update period.
const META_VERSION_PERIOD: u8 = 2;
/// Version byte of an encoded [`CommunityMeta`] that names its update period and a
/// retention period.
const META_VERSION_RETENTION: u8 = 3;

/// The update period of a community that names none: members rotate their leaf
/// keys at least every 7 days.
pub const DEFAULT_UPDATE_DAYS: u16 = 7;
/// The longest update period a community may set.
pub const MAX_UPDATE_DAYS: u16 = 365;
/// The longest retention period a community may set (10 years).
pub const MAX_RETENTION_DAYS: u16 = 3650;
/// Seconds in a day: the unit of update and retention periods.
pub const DAY_SECS: u64 = 86_400;

/// The community metadata every member and relay can read from the group context.
///
/// Invariants (checked by [`CommunityMeta::new`] and on decoding): the community id
/// is `NAME@HUB`; the maximum label is 1..=[`MAX_LABEL_BYTES`] opaque bytes (the
/// binary label encoding of `kring-policy`); there are 1..=[`MAX_ADMINS`] admins,
/// sorted and without duplicates; the update period is 1..=[`MAX_UPDATE_DAYS`] days;
/// a retention period, if any, is 1..=[`MAX_RETENTION_DAYS`] days.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommunityMeta {
    /// `NAME@HUB`, e.g. `desinformatie@bz`; also the MLS group id (its UTF-8 bytes).
    pub community_id: String,
    /// The community's maximum label (opaque binary label bytes from kring-policy).
    /// Fixed at creation.
    pub max_label: Vec<u8>,
    /// Member ids of the community admins (sorted, unique, non-empty).
    pub admins: Vec<MemberId>,
    /// How often every member rotates its own leaf key (a commit updating its
    /// leaf), in days. Fixed at creation; [`DEFAULT_UPDATE_DAYS`] unless set.
    pub update_days: u16,
    /// How long notices are kept, in days: every member's device deletes notices
    /// older than this, and relays drop log entries older than this once every
    /// member device has acknowledged them. Fixed at creation; `None`: no limit.
    pub retention_days: Option<u16>,
}

impl CommunityMeta {
    /// Builds validated metadata; `admins` are sorted and de-duplicated.
    ///
    /// # Errors
    /// [`MlsError::InvalidMeta`] if an invariant does not hold.
    pub fn new(
        community_id: impl Into<String>,
        max_label: Vec<u8>,
        mut admins: Vec<MemberId>,
    ) -> Result<Self, MlsError> {
        admins.sort();
        admins.dedup();
        let meta = Self {
            community_id: community_id.into(),
            max_label,
            admins,
            update_days: DEFAULT_UPDATE_DAYS,
            retention_days: None,
        };
        meta.check()?;
        Ok(meta)
    }

    /// A copy with another update period (1..=[`MAX_UPDATE_DAYS`] days).
    ///
    /// # Errors
    /// [`MlsError::InvalidMeta`] if the period is out of range.
    pub fn with_update_days(&self, days: u16) -> Result<Self, MlsError> {
        let meta = Self {
            update_days: days,
            ..self.clone()
        };
        meta.check()?;
        Ok(meta)
    }

    /// A copy with a retention period (1..=[`MAX_RETENTION_DAYS`] days) or none.
    ///
    /// # Errors
    /// [`MlsError::InvalidMeta`] if the period is out of range.
    pub fn with_retention_days(&self, days: Option<u16>) -> Result<Self, MlsError> {
        let meta = Self {
            retention_days: days,
            ..self.clone()
        };
        meta.check()?;
        Ok(meta)
    }

    /// The update period in seconds.
    pub fn update_period_secs(&self) -> u64 {
        u64::from(self.update_days) * DAY_SECS
    }

    /// The retention period in seconds, if the community has one.
    pub fn retention_secs(&self) -> Option<u64> {
        self.retention_days.map(|d| u64::from(d) * DAY_SECS)
    }

    /// The hub relay id: the part of the community id after `@`.
    pub fn hub(&self) -> &str {
        self.community_id.split_once('@').map_or("", |(_, hub)| hub)
    }

    /// True if `member` is a community admin.
    pub fn is_admin(&self, member: &str) -> bool {
        self.admins
            .binary_search_by(|a| a.as_str().cmp(member))
            .is_ok()
    }

    /// A copy with another admin list (sorted, de-duplicated, validated).
    ///
    /// # Errors
    /// [`MlsError::InvalidMeta`] if the list is empty, too long or has a bad id.
    pub fn with_admins(&self, admins: Vec<MemberId>) -> Result<Self, MlsError> {
        Self::new(self.community_id.clone(), self.max_label.clone(), admins)?
            .with_update_days(self.update_days)?
            .with_retention_days(self.retention_days)
    }

    /// Deterministic encoding: `version(1) || id<V> || max_label<V> || admins<V>`
    /// where `admins<V>` is the concatenation of `admin<V>` (MLS variable-length
    /// vectors). A community with another update period than
    /// [`DEFAULT_UPDATE_DAYS`] is encoded as `version(2) || ... || update_days(u16
    /// BE)`, so that the metadata of a community with the default period reads the
    /// same as before periods existed. A community with a retention period is
    /// encoded as `version(3) || ... || update_days(u16 BE) || retention_days(u16
    /// BE)` (the update period always present), so that a community without one
    /// reads the same as before retention existed.
    ///
    /// # Errors
    /// [`MlsError::InvalidMeta`] if an invariant does not hold.
    pub fn encode(&self) -> Result<Vec<u8>, MlsError> {
        self.check()?;
        let mut admins = Vec::new();
        for admin in &self.admins {
            vl(admin.as_bytes(), &mut admins)?;
        }
        let version = match (self.retention_days, self.update_days) {
            (Some(_), _) => META_VERSION_RETENTION,
            (None, DEFAULT_UPDATE_DAYS) => META_VERSION,
            (None, _) => META_VERSION_PERIOD,
        };
        let mut out = vec![version];
        vl(self.community_id.as_bytes(), &mut out)?;
        vl(&self.max_label, &mut out)?;
        vl(&admins, &mut out)?;
        if version != META_VERSION {
            out.extend_from_slice(&self.update_days.to_be_bytes());
        }
        if let Some(days) = self.retention_days {
            out.extend_from_slice(&days.to_be_bytes());
        }
        Ok(out)
    }

    /// Strict decoding of [`encode`](Self::encode): canonical form only, no trailing
    /// bytes, all invariants checked.
    ///
    /// # Errors
    /// [`MlsError::TooLarge`] or [`MlsError::InvalidMeta`].
    pub fn decode(bytes: &[u8]) -> Result<Self, MlsError> {
        let max = 20 + MAX_ID_BYTES + MAX_LABEL_BYTES + MAX_ADMINS * (MAX_ID_BYTES + 4);
        MlsError::check_len("community metadata", bytes.len(), max)?;
        let (version, rest) = bytes
            .split_first()
            .ok_or_else(|| MlsError::InvalidMeta("empty".into()))?;
        if ![META_VERSION, META_VERSION_PERIOD, META_VERSION_RETENTION].contains(version) {
            return Err(MlsError::InvalidMeta(format!(
                "unknown metadata version {version}"
            )));
        }
        let mut rest = rest;
        let id = take_vl(&mut rest)?;
        let max_label = take_vl(&mut rest)?;
        let admins_bytes = take_vl(&mut rest)?;
        let update_days = if *version == META_VERSION {
            DEFAULT_UPDATE_DAYS
        } else {
            take_u16(&mut rest, "update period")?
        };
        let retention_days = if *version == META_VERSION_RETENTION {
            Some(take_u16(&mut rest, "retention period")?)
        } else {
            None
        };
        if !rest.is_empty() {
            return Err(MlsError::InvalidMeta("trailing bytes".into()));
        }
        let community_id = String::from_utf8(id)
            .map_err(|_| MlsError::InvalidMeta("community id is not UTF-8".into()))?;
        let mut admins = Vec::new();
        let mut rest = admins_bytes.as_slice();
        while !rest.is_empty() {
            if admins.len() == MAX_ADMINS {
                return Err(MlsError::InvalidMeta(format!(
                    "more than {MAX_ADMINS} admins"
                )));
            }
            let admin = take_vl(&mut rest)?;
            admins.push(
                String::from_utf8(admin)
                    .map_err(|_| MlsError::InvalidMeta("admin id is not UTF-8".into()))?,
            );
        }
        if admins.windows(2).any(|w| w[0] >= w[1]) {
            return Err(MlsError::InvalidMeta(
                "admins are not sorted and unique".into(),
            ));
        }
        let meta = Self {
            community_id,
            max_label,
            admins,
            update_days,
            retention_days,
        };
        if meta.encode()? != bytes {
            return Err(MlsError::InvalidMeta("not canonically encoded".into()));
        }
        Ok(meta)
    }

    fn check(&self) -> Result<(), MlsError> {
        check_id("community id", &self.community_id)?;
        if self.max_label.is_empty() || self.max_label.len() > MAX_LABEL_BYTES {
            return Err(MlsError::InvalidMeta(format!(
                "maximum label of {} bytes (must be 1..={MAX_LABEL_BYTES})",
                self.max_label.len()
            )));
        }
        if self.admins.is_empty() || self.admins.len() > MAX_ADMINS {
            return Err(MlsError::InvalidMeta(format!(
                "{} admins (must be 1..={MAX_ADMINS})",
                self.admins.len()
            )));
        }
        if self.admins.windows(2).any(|w| w[0] >= w[1]) {
            return Err(MlsError::InvalidMeta(
                "admins are not sorted and unique".into(),
            ));
        }
        for admin in &self.admins {
            check_id("admin id", admin)?;
        }
        if self.update_days == 0 || self.update_days > MAX_UPDATE_DAYS {
            return Err(MlsError::InvalidMeta(format!(
                "update period of {} days (must be 1..={MAX_UPDATE_DAYS})",
                self.update_days
            )));
        }
        if let Some(days) = self.retention_days
            && (days == 0 || days > MAX_RETENTION_DAYS)
        {
            return Err(MlsError::InvalidMeta(format!(
                "retention period of {days} days (must be 1..={MAX_RETENTION_DAYS})"
            )));
        }
        Ok(())
    }
}

/// Reads a big-endian u16, advancing `bytes`.
fn take_u16(bytes: &mut &[u8], what: &str) -> Result<u16, MlsError> {
    let (value, tail) = bytes
        .split_first_chunk::<2>()
        .ok_or_else(|| MlsError::InvalidMeta(format!("truncated {what}")))?;
    *bytes = tail;
    Ok(u16::from_be_bytes(*value))
}

/// Checks an id of the form `NAME@RELAY`: non-empty parts, one `@`, printable
/// ASCII without spaces, at most [`MAX_ID_BYTES`] bytes.
fn check_id(what: &str, id: &str) -> Result<(), MlsError> {
    let ok = id.len() <= MAX_ID_BYTES
        && id.bytes().all(|b| b.is_ascii_graphic())
        && id.bytes().filter(|&b| b == b'@').count() == 1
        && id
            .split_once('@')
            .is_some_and(|(name, relay)| !name.is_empty() && !relay.is_empty());
    if ok {
        Ok(())
    } else {
        Err(MlsError::InvalidMeta(format!(
            "{what} {id:?} is not of the form NAME@RELAY"
        )))
    }
}

fn vl(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), MlsError> {
    VLBytes::new(bytes.to_vec())
        .tls_serialize(out)
        .map(|_| ())
        .map_err(|e| MlsError::InvalidMeta(format!("cannot encode: {e}")))
}

/// Reads one variable-length vector, advancing `bytes`. (Uses the `Read`-based
/// decoder: tls_codec's slice decoder `debug_assert`s on truncated input.)
fn take_vl(bytes: &mut &[u8]) -> Result<Vec<u8>, MlsError> {
    let v = VLBytes::tls_deserialize(bytes)
        .map_err(|e| MlsError::InvalidMeta(format!("bad encoding: {e}")))?;
    Ok(v.as_slice().to_vec())
}
