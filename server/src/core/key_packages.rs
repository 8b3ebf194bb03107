//! Key packages: publishing a device's packages, handing one out (locally or
//! through the user's home relay), with the limits that keep one-time packages
//! from being drained.

use super::*;

impl Core {
    pub fn publish_key_packages(
        &self,
        cx: &mut Cx,
        caller: &Caller,
        key_packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<Response, RelayError> {
        let now_s = cx.now as u64;
        for kp in key_packages.iter().chain(last_resort.iter()) {
            groups::validate_key_package(kp, &caller.chain, &self.anchors, &self.trust(), now_s)
                .map_err(|reason| ErrorCode::BadRequest {
                    reason: format!("key package refused: {reason}"),
                })?;
        }
        let cap = self.limits.key_packages_per_user;
        let count = self.write(cx, |_, b| {
            let existing = self
                .engine
                .scan(&keys::key_package_prefix(&caller.id), None, cap + 1)?
                .len();
            if existing + key_packages.len() > cap {
                return Err(ErrorCode::TooLarge {
                    what: format!(
                        "{} key packages held plus {} new exceeds the cap of {cap}",
                        existing,
                        key_packages.len()
                    ),
                }
                .into());
            }
            for kp in &key_packages {
                b.put(keys::key_package(&caller.id, &Uuid::new_v4()), kp.clone());
            }
            if let Some(lr) = &last_resort {
                b.put(keys::last_resort(&caller.id), lr.clone());
            }
            Ok(existing + key_packages.len())
        })?;
        Ok(Response::KeyPackagesStored {
            count: count as u32,
        })
    }

    /// Hands out one key package of a local user (consumed; the last-resort one is kept).
    pub fn take_key_package(
        &self,
        cx: &mut Cx,
        requester: &str,
        user: &str,
    ) -> Result<Response, RelayError> {
        if self.revocations().user_revoked(user).is_some() {
            return Err(ErrorCode::Revoked.into());
        }
        use crate::key_fetch::{Grant, RetryAfter};
        let retry = |d: std::time::Duration| ErrorCode::RateLimited {
            retry_after_ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        };
        let at = cx.mono;
        let kp = self.write(cx, |w, b| {
            // Limits per requester and user, and per user (`key_fetch`): past them
            // only the last-resort package is handed out, so one-time packages
            // cannot be drained.
            let mut limiter = self
                .key_fetches
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let grant = limiter
                .admit(requester, user, at)
                .map_err(|RetryAfter(d)| retry(d))?;
            let one_time = match grant {
                Grant::OneTime => self
                    .engine
                    .scan(&keys::key_package_prefix(user), None, 1)?
                    .into_iter()
                    .next(),
                Grant::LastResortOnly { .. } => None,
            };
            let (kp, detail) = if let Some((k, v)) = one_time {
                b.delete(k);
                limiter.took_one_time(requester, user, at);
                (v, "one-time key package handed out".to_string())
            } else if let Some(lr) = self.engine.get(&keys::last_resort(user))? {
                let detail = match &grant {
                    Grant::OneTime => {
                        "last-resort key package handed out (no one-time package left)".into()
                    }
                    Grant::LastResortOnly { why, .. } => format!(
                        "last-resort key package handed out (one-time packages protected: {why})"
                    ),
                };
                (lr, detail)
            } else {
                return Err(match grant {
                    Grant::OneTime => ErrorCode::KeyMaterialExhausted {
                        user: user.to_string(),
                    },
                    Grant::LastResortOnly { retry_after, .. } => retry(retry_after),
                }
                .into());
            };
            w.audit.append(
                b,
                w.now,
                AuditEvent::new(
                    AuditKind::Membership,
                    requester,
                    user,
                    "fetch-key-package",
                    detail,
                ),
            )?;
            Ok(kp)
        })?;
        // A key package whose certificate was revoked (CRL) or expired since it was
        // published is not handed out.
        let checked = {
            let revoked = self.revocations();
            groups::check_key_package_credential(
                &kp,
                &self.anchors,
                &self.trust(),
                cx.now as u64,
                &revoked,
            )
        };
        if let Err(reason) = checked {
            self.audit(
                cx,
                AuditEvent::new(
                    AuditKind::Refusal,
                    requester,
                    user,
                    "fetch-key-package",
                    format!("stored key package withheld: {reason}"),
                ),
            );
            return Err(ErrorCode::Revoked.into());
        }
        Ok(Response::KeyPackage { key_package: kp })
    }
}
