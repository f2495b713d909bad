//! The certificate state machine at time `t`, the binding of a consumer's certificates into its
//! tokens, and thumbprint uniqueness within a tenant. Pure: the controller reads the object, its
//! PEM text and the other certificates; these functions say what the status, the token claims
//! and the next wake-up are.
//!
//! The rules, in order of precedence:
//! - `revoked` accepts nothing of the object, for good (a status once `Revoked` stays so).
//! - A rejected input (invalid, private key, CA, already expired, Secret missing) is never
//!   bound. It replaces nothing: the certificate accepted before keeps its own lifecycle, so
//!   that a bad edit does not cut a consumer off; `Ready` says what is wrong.
//! - A changed certificate moves the old one into `previous`, accepted until
//!   `min(now + gracePeriod, its notAfter)`; at that instant it is no longer accepted.
//! - At `notAfter` the current certificate is no longer accepted; `ExpiringSoon` is true from
//!   `notAfter - expiryWarning` on.
//! - A thumbprint an older claim of another consumer holds is not bound (`FingerprintConflict`).
//!
//! Time is taken in whole seconds, so that what is written reads back equal and a second
//! evaluation with the same inputs changes nothing.

use std::collections::BTreeSet;

use chrono::{DateTime, SecondsFormat, SubsecRound, TimeDelta, Utc};

use crate::api::certificate::{
    CertificateState, ConsumerCertificateSpec, ConsumerCertificateStatus, CurrentCertificate,
    PreviousCertificate,
};
use crate::api::condition::{self, Desired};
use crate::api::duration::{Duration, InvalidDuration};
use crate::decide::client::CertificateBinding;
use crate::names::{condition as condition_type, reason};
use crate::x509::{CertificateError, ParsedCertificate};

/// What the spec asks for, read once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub grace_period: TimeDelta,
    pub expiry_warning: TimeDelta,
    pub revoked: bool,
    /// `metadata.generation`, recorded as `observedGeneration`.
    pub generation: Option<i64>,
}

impl Policy {
    /// Reads the durations of the spec; an unreadable one is an error naming it.
    pub fn from_spec(
        spec: &ConsumerCertificateSpec,
        generation: Option<i64>,
    ) -> Result<Self, InvalidDuration> {
        Ok(Self {
            grace_period: time_delta(&spec.grace_period)?,
            expiry_warning: time_delta(&spec.expiry_warning)?,
            revoked: spec.revoked,
            generation,
        })
    }
}

fn time_delta(duration: &Duration) -> Result<TimeDelta, InvalidDuration> {
    let std = duration.to_std()?;
    TimeDelta::from_std(std).map_err(|_| InvalidDuration(duration.0.clone()))
}

/// Why the observed input is not bound: a condition reason and a message safe to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: &'static str, message: String) -> Self {
        Self { reason, message }
    }
}

impl From<&CertificateError> for Rejection {
    fn from(error: &CertificateError) -> Self {
        let reason = match error {
            CertificateError::InvalidCertificate(_) => reason::INVALID_CERTIFICATE,
            CertificateError::PrivateKeyIncluded { .. } => reason::PRIVATE_KEY_INCLUDED,
            CertificateError::CACertificate { .. } => reason::CA_CERTIFICATE,
        };
        Self::new(reason, error.to_string())
    }
}

/// Something that happened in this evaluation, for events and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The first certificate of the object was accepted.
    FirstAccepted { x5t_s256: String },
    /// The certificate changed; the old one stays accepted until its `acceptedUntil`.
    Rotated { from: String, to: String },
    /// A replaced certificate reached its `acceptedUntil`.
    GraceEnded { x5t_s256: String },
    /// The current certificate reached its `notAfter`.
    Expired { x5t_s256: String },
    /// The object was revoked.
    Revoked,
}

/// The outcome of [`evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub status: ConsumerCertificateStatus,
    /// The earliest future instant at which the status changes by itself: a grace end, the
    /// `notAfter`, or the `ExpiringSoon` threshold. `None` when nothing is due.
    pub next_wakeup: Option<DateTime<Utc>>,
    pub changes: Vec<Change>,
}

/// The status of a ConsumerCertificate at `now`, from its policy, its previous status, the
/// certificate read from its `pem` or Secret (or why none could be), and the thumbprints that
/// older claims of other consumers in the tenant hold (see [`claimed_before`]).
pub fn evaluate(
    policy: &Policy,
    previous: Option<&ConsumerCertificateStatus>,
    observed: Result<&ParsedCertificate, &Rejection>,
    taken: &BTreeSet<String>,
    now: DateTime<Utc>,
) -> Evaluation {
    let now = now.trunc_subsecs(0);
    let before = previous.cloned().unwrap_or_default();
    // A status once revoked stays revoked even if the spec's rule were bypassed.
    let revoked = policy.revoked || before.state == Some(CertificateState::Revoked);
    let mut next = before.clone();
    let mut changes = Vec::new();

    let rejection = match observed {
        Err(rejection) => Some(rejection.clone()),
        Ok(certificate) => take_in(&mut next, certificate, policy, revoked, now, &mut changes),
    };
    retire(&mut next, revoked, now, &mut changes);

    let state = state_at(&next, revoked, now);
    let candidates = candidates(&next, revoked, now);
    let conflicting = conflicts(&candidates, taken);
    next.accepted_x5t_s256 = candidates
        .into_iter()
        .filter(|t| !conflicting.contains(t))
        .collect();
    note_state_change(&before, &next, state, &mut changes);
    next.state = state;

    let desired = vec![
        ready(&next, state, rejection.as_ref(), &conflicting),
        expiring_soon(&next, policy, revoked, rejection.as_ref(), now),
    ];
    next.conditions = condition::merge(&before.conditions, desired, policy.generation, now);
    next.observed_generation = policy.generation;

    let next_wakeup = if revoked {
        None
    } else {
        next_wakeup(&next, policy, now)
    };
    Evaluation {
        status: next,
        next_wakeup,
        changes,
    }
}

/// Takes the observed certificate into `current`, rotating the old one out. Returns the
/// rejection of a certificate that is already expired.
fn take_in(
    next: &mut ConsumerCertificateStatus,
    certificate: &ParsedCertificate,
    policy: &Policy,
    revoked: bool,
    now: DateTime<Utc>,
    changes: &mut Vec<Change>,
) -> Option<Rejection> {
    let same = next
        .current
        .as_ref()
        .map(|c| c.sha256_fingerprint == certificate.sha256_fingerprint);
    if same == Some(true) {
        next.current = Some(current_of(certificate));
        return None;
    }
    if certificate.not_after <= now {
        return Some(Rejection::new(
            reason::EXPIRED,
            format!(
                "the certificate \"{}\" expired at {}; it is not bound",
                certificate.subject,
                rfc3339(certificate.not_after)
            ),
        ));
    }

    match next.current.take() {
        None => changes.push(Change::FirstAccepted {
            x5t_s256: certificate.x5t_s256.clone(),
        }),
        Some(old) if !revoked => {
            let accepted_until = (now + policy.grace_period).min(old.not_after);
            if accepted_until > now {
                next.previous.insert(0, previous_of(&old, accepted_until));
            }
            next.rotation_count += 1;
            next.last_rotation_time = Some(now);
            changes.push(Change::Rotated {
                from: old.x5t_s256,
                to: certificate.x5t_s256.clone(),
            });
        }
        // A revoked object accepts nothing: its certificates are recorded, not rotated.
        Some(_) => {}
    }
    // Going back to a certificate still in its grace makes it current again, not twice listed.
    next.previous
        .retain(|p| p.sha256_fingerprint != certificate.sha256_fingerprint);
    next.current = Some(current_of(certificate));
    None
}

/// Drops the replaced certificates whose grace is over, or all of them once revoked.
fn retire(
    next: &mut ConsumerCertificateStatus,
    revoked: bool,
    now: DateTime<Utc>,
    changes: &mut Vec<Change>,
) {
    if revoked {
        next.previous.clear();
        return;
    }
    next.previous.retain(|p| {
        let in_grace = now < p.accepted_until;
        if !in_grace {
            changes.push(Change::GraceEnded {
                x5t_s256: p.x5t_s256.clone(),
            });
        }
        in_grace
    });
}

fn state_at(
    next: &ConsumerCertificateStatus,
    revoked: bool,
    now: DateTime<Utc>,
) -> Option<CertificateState> {
    if revoked {
        return Some(CertificateState::Revoked);
    }
    let current = next.current.as_ref()?;
    Some(if now >= current.not_after {
        CertificateState::Expired
    } else if !next.previous.is_empty() {
        CertificateState::Rotating
    } else {
        CertificateState::Active
    })
}

/// The thumbprints that would be accepted if no other consumer claimed them.
fn candidates(next: &ConsumerCertificateStatus, revoked: bool, now: DateTime<Utc>) -> Vec<String> {
    if revoked {
        return Vec::new();
    }
    let current = next
        .current
        .iter()
        .filter(|c| now < c.not_after)
        .map(|c| &c.x5t_s256);
    let previous = next.previous.iter().map(|p| &p.x5t_s256);
    let mut thumbprints: Vec<String> = Vec::new();
    for thumbprint in current.chain(previous) {
        if !thumbprints.contains(thumbprint) {
            thumbprints.push(thumbprint.clone());
        }
    }
    thumbprints
}

fn note_state_change(
    before: &ConsumerCertificateStatus,
    next: &ConsumerCertificateStatus,
    state: Option<CertificateState>,
    changes: &mut Vec<Change>,
) {
    if state == before.state {
        return;
    }
    match (state, &next.current) {
        (Some(CertificateState::Revoked), _) => changes.push(Change::Revoked),
        (Some(CertificateState::Expired), Some(current)) => {
            changes.push(Change::Expired {
                x5t_s256: current.x5t_s256.clone(),
            });
        }
        _ => {}
    }
}

fn ready(
    next: &ConsumerCertificateStatus,
    state: Option<CertificateState>,
    rejection: Option<&Rejection>,
    conflicting: &[String],
) -> Desired {
    let not_ready = |reason, message| Desired::new(condition_type::READY, false, reason, message);
    if state == Some(CertificateState::Revoked) {
        return not_ready(
            reason::REVOKED,
            "the certificate is revoked; none of its thumbprints is accepted".to_owned(),
        );
    }
    if let Some(rejection) = rejection {
        let kept = match &next.accepted_x5t_s256[..] {
            [] => String::new(),
            accepted => format!("; still accepted from before: {}", accepted.join(", ")),
        };
        return not_ready(rejection.reason, format!("{}{kept}", rejection.message));
    }
    let Some(current) = &next.current else {
        // Only a rejection leaves an object without a certificate; kept for completeness.
        return not_ready(
            reason::PENDING,
            "no certificate has been read yet".to_owned(),
        );
    };
    if state == Some(CertificateState::Expired) {
        return not_ready(
            reason::EXPIRED,
            format!(
                "the certificate \"{}\" expired at {}; it is no longer accepted",
                current.subject,
                rfc3339(current.not_after)
            ),
        );
    }
    if !conflicting.is_empty() {
        return not_ready(
            reason::FINGERPRINT_CONFLICT,
            format!(
                "thumbprint {} already belongs to another consumer of the tenant; it is not bound",
                conflicting.join(", ")
            ),
        );
    }
    let mut message = format!(
        "the certificate \"{}\" (x5t#S256 {}) is accepted until {}",
        current.subject,
        current.x5t_s256,
        rfc3339(current.not_after)
    );
    for previous in &next.previous {
        message.push_str(&format!(
            "; the replaced certificate {} until {}",
            previous.x5t_s256,
            rfc3339(previous.accepted_until)
        ));
    }
    Desired::new(condition_type::READY, true, reason::VALID, message)
}

fn expiring_soon(
    next: &ConsumerCertificateStatus,
    policy: &Policy,
    revoked: bool,
    rejection: Option<&Rejection>,
    now: DateTime<Utc>,
) -> Desired {
    let condition = |status, reason, message| {
        Desired::new(condition_type::EXPIRING_SOON, status, reason, message)
    };
    if revoked {
        return condition(
            false,
            reason::REVOKED,
            "the certificate is revoked".to_owned(),
        );
    }
    let Some(current) = &next.current else {
        let reason = rejection.map_or(reason::PENDING, |r| r.reason);
        return condition(false, reason, "no certificate is accepted".to_owned());
    };
    let not_after = rfc3339(current.not_after);
    let warning = human(policy.expiry_warning);
    if now >= current.not_after {
        condition(
            true,
            reason::EXPIRED,
            format!("the certificate expired at {not_after}"),
        )
    } else if now >= current.not_after - policy.expiry_warning {
        let message = format!("the certificate expires at {not_after}, within {warning}");
        condition(true, reason::EXPIRING_SOON, message)
    } else {
        let message = format!("the certificate expires at {not_after}, more than {warning} ahead");
        condition(false, reason::VALID, message)
    }
}

/// The earliest instant after `now` at which the status changes by itself.
fn next_wakeup(
    next: &ConsumerCertificateStatus,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let grace_ends = next.previous.iter().map(|p| p.accepted_until);
    let current = next
        .current
        .iter()
        .flat_map(|c| [c.not_after - policy.expiry_warning, c.not_after]);
    grace_ends
        .chain(current)
        .filter(|instant| *instant > now)
        .min()
}

fn current_of(certificate: &ParsedCertificate) -> CurrentCertificate {
    CurrentCertificate {
        sha256_fingerprint: certificate.sha256_fingerprint.clone(),
        x5t_s256: certificate.x5t_s256.clone(),
        subject: certificate.subject.clone(),
        issuer: certificate.issuer.clone(),
        serial_number: certificate.serial_number.clone(),
        not_before: certificate.not_before,
        not_after: certificate.not_after,
    }
}

fn previous_of(current: &CurrentCertificate, accepted_until: DateTime<Utc>) -> PreviousCertificate {
    PreviousCertificate {
        sha256_fingerprint: current.sha256_fingerprint.clone(),
        x5t_s256: current.x5t_s256.clone(),
        subject: current.subject.clone(),
        not_after: current.not_after,
        accepted_until,
    }
}

fn rfc3339(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A duration in the manifest's own notation: `336h`, `1h30m`, `45s`.
fn human(delta: TimeDelta) -> String {
    let seconds = delta.num_seconds();
    let (hours, minutes, seconds) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    let mut text = String::new();
    for (value, unit) in [(hours, 'h'), (minutes, 'm'), (seconds, 's')] {
        if value != 0 {
            text.push_str(&format!("{value}{unit}"));
        }
    }
    if text.is_empty() {
        "0s".to_owned()
    } else {
        text
    }
}

/// One ConsumerCertificate of a consumer, as its binding sees it.
#[derive(Debug, Clone, Copy)]
pub struct CertificateView<'a> {
    pub status: &'a ConsumerCertificateStatus,
    /// The object's `creationTimestamp`, the last tie-breaker.
    pub created: Option<DateTime<Utc>>,
}

/// What a consumer's tokens carry, from all its certificates: every accepted thumbprint, and
/// the newest accepted certificate for `cnf`. With none accepted, the binding is empty and both
/// claims leave the tokens.
///
/// The newest is a current certificate before a replaced one; among current ones the latest
/// `notBefore`, then the latest rotation, then the latest object; among replaced ones the
/// latest `acceptedUntil`.
pub fn binding(views: &[CertificateView]) -> CertificateBinding {
    let accepted: BTreeSet<&String> = views
        .iter()
        .flat_map(|v| &v.status.accepted_x5t_s256)
        .collect();
    let newest = views.iter().flat_map(ranked).max();
    CertificateBinding {
        newest: newest.map(|rank| rank.thumbprint.to_owned()),
        accepted: accepted.into_iter().cloned().collect(),
    }
}

/// How recent an accepted certificate is; compared field by field.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rank<'a> {
    is_current: bool,
    issued_or_replaced: DateTime<Utc>,
    last_rotation_time: Option<DateTime<Utc>>,
    created: Option<DateTime<Utc>>,
    thumbprint: &'a str,
}

fn ranked<'a>(view: &'a CertificateView<'a>) -> Vec<Rank<'a>> {
    let status = view.status;
    let accepted = |thumbprint: &str| status.accepted_x5t_s256.iter().any(|t| t == thumbprint);
    let rank = |is_current, instant, thumbprint| Rank {
        is_current,
        issued_or_replaced: instant,
        last_rotation_time: status.last_rotation_time,
        created: view.created,
        thumbprint,
    };
    let current = status
        .current
        .iter()
        .filter(|c| accepted(&c.x5t_s256))
        .map(|c| rank(true, c.not_before, c.x5t_s256.as_str()));
    let previous = status
        .previous
        .iter()
        .filter(|p| accepted(&p.x5t_s256))
        .map(|p| rank(false, p.accepted_until, p.x5t_s256.as_str()));
    current.chain(previous).collect()
}

/// Which of `own` thumbprints another consumer already claims: the uniqueness check of a tenant.
/// The result keeps the order of `own`.
pub fn conflicts(own: &[String], claimed_by_others: &BTreeSet<String>) -> Vec<String> {
    own.iter()
        .filter(|t| claimed_by_others.contains(*t))
        .cloned()
        .collect()
}

/// Which object claimed first: the older object, then the smaller `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seniority {
    pub created: DateTime<Utc>,
    pub key: String,
}

/// The accepted thumbprints of a ConsumerCertificate of another consumer in the same tenant.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub seniority: &'a Seniority,
    pub accepted_x5t_s256: &'a [String],
}

/// The thumbprints claimed by objects of other consumers that are older than `me`: these are
/// the ones `me` must not bind. Yielding only to older claims means two objects that both hold a
/// thumbprint never both let it go (nor both keep it), whatever order they are reconciled in.
pub fn claimed_before(me: &Seniority, others: &[Claim]) -> BTreeSet<String> {
    others
        .iter()
        .filter(|claim| claim.seniority < me)
        .flat_map(|claim| claim.accepted_x5t_s256.iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::api::certificate::{ConsumerRef, SecretKeyRef};

    const HOUR: i64 = 3600;
    const DAY: i64 = 24 * HOUR;

    /// Seconds after 2025-01-01T00:00:00Z.
    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_735_689_600 + seconds, 0).unwrap()
    }

    /// A certificate named `name`, valid from `not_before` to `not_after` (seconds, as `at`).
    fn certificate(name: &str, not_before: i64, not_after: i64) -> ParsedCertificate {
        ParsedCertificate {
            sha256_fingerprint: format!("sha256-{name}"),
            x5t_s256: format!("x5t-{name}"),
            subject: format!("CN={name}"),
            issuer: "CN=Partner CA".to_owned(),
            serial_number: "01".to_owned(),
            not_before: at(not_before),
            not_after: at(not_after),
        }
    }

    /// Grace 1 hour, warning 14 days, not revoked, generation 1.
    fn policy() -> Policy {
        Policy {
            grace_period: TimeDelta::hours(1),
            expiry_warning: TimeDelta::days(14),
            revoked: false,
            generation: Some(1),
        }
    }

    fn revoked() -> Policy {
        Policy {
            revoked: true,
            ..policy()
        }
    }

    fn nothing_taken() -> BTreeSet<String> {
        BTreeSet::new()
    }

    fn run(
        policy: &Policy,
        before: Option<&ConsumerCertificateStatus>,
        certificate: &ParsedCertificate,
        now: DateTime<Utc>,
    ) -> Evaluation {
        evaluate(policy, before, Ok(certificate), &nothing_taken(), now)
    }

    fn condition<'a>(status: &'a ConsumerCertificateStatus, type_: &str) -> (&'a str, &'a str) {
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition present");
        (c.status.as_str(), c.reason.as_str())
    }

    fn accepted(status: &ConsumerCertificateStatus) -> Vec<&str> {
        status
            .accepted_x5t_s256
            .iter()
            .map(String::as_str)
            .collect()
    }

    /// `a` (valid 90 days) accepted at 0, then rotated to `b` (valid 1 to 120 days) at 10 days.
    fn rotated_to_b() -> (ParsedCertificate, ParsedCertificate, Evaluation) {
        let a = certificate("a", 0, 90 * DAY);
        let b = certificate("b", DAY, 120 * DAY);
        let first = run(&policy(), None, &a, at(0));
        let rotated = run(&policy(), Some(&first.status), &b, at(10 * DAY));
        (a, b, rotated)
    }

    #[test]
    fn a_first_certificate_is_accepted_and_wakes_at_the_expiry_warning() {
        let a = certificate("a", 0, 90 * DAY);

        let evaluation = run(&policy(), None, &a, at(60));

        let status = &evaluation.status;
        assert_eq!(status.state, Some(CertificateState::Active));
        assert_eq!(status.current.as_ref().unwrap().x5t_s256, "x5t-a");
        assert_eq!(accepted(status), ["x5t-a"]);
        assert_eq!(status.rotation_count, 0);
        assert_eq!(status.last_rotation_time, None);
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(condition(status, "Ready"), ("True", "Valid"));
        assert_eq!(condition(status, "ExpiringSoon"), ("False", "Valid"));
        assert_eq!(evaluation.next_wakeup, Some(at(76 * DAY)));
        assert_eq!(
            evaluation.changes,
            [Change::FirstAccepted {
                x5t_s256: "x5t-a".into()
            }]
        );
    }

    #[test]
    fn the_same_certificate_again_changes_nothing() {
        let a = certificate("a", 0, 90 * DAY);
        let first = run(&policy(), None, &a, at(0));

        let again = run(&policy(), Some(&first.status), &a, at(5 * DAY));

        assert_eq!(again.status, first.status);
        assert_eq!(again.changes, []);
        assert_eq!(again.next_wakeup, first.next_wakeup);
    }

    #[test]
    fn a_changed_certificate_rotates_and_keeps_the_old_one_for_the_grace_period() {
        let (_, _, rotated) = rotated_to_b();

        let status = &rotated.status;
        assert_eq!(status.state, Some(CertificateState::Rotating));
        assert_eq!(status.current.as_ref().unwrap().x5t_s256, "x5t-b");
        assert_eq!(status.previous.len(), 1);
        assert_eq!(status.previous[0].x5t_s256, "x5t-a");
        assert_eq!(status.previous[0].accepted_until, at(10 * DAY + HOUR));
        assert_eq!(status.previous[0].not_after, at(90 * DAY));
        assert_eq!(accepted(status), ["x5t-b", "x5t-a"]);
        assert_eq!(status.rotation_count, 1);
        assert_eq!(status.last_rotation_time, Some(at(10 * DAY)));
        assert_eq!(condition(status, "Ready"), ("True", "Valid"));
        assert_eq!(rotated.next_wakeup, Some(at(10 * DAY + HOUR)));
        assert_eq!(
            rotated.changes,
            [Change::Rotated {
                from: "x5t-a".into(),
                to: "x5t-b".into()
            }]
        );
    }

    #[test]
    fn the_old_certificate_is_accepted_until_one_second_before_accepted_until() {
        let (_, b, rotated) = rotated_to_b();

        let last_second = run(
            &policy(),
            Some(&rotated.status),
            &b,
            at(10 * DAY + HOUR - 1),
        );

        assert_eq!(last_second.status, rotated.status);
        assert_eq!(last_second.next_wakeup, Some(at(10 * DAY + HOUR)));
    }

    #[test]
    fn at_accepted_until_the_old_certificate_is_no_longer_accepted() {
        let (_, b, rotated) = rotated_to_b();

        let grace_over = run(&policy(), Some(&rotated.status), &b, at(10 * DAY + HOUR));

        let status = &grace_over.status;
        assert_eq!(status.state, Some(CertificateState::Active));
        assert_eq!(status.previous, []);
        assert_eq!(accepted(status), ["x5t-b"]);
        assert_eq!(status.rotation_count, 1);
        assert_eq!(
            grace_over.changes,
            [Change::GraceEnded {
                x5t_s256: "x5t-a".into()
            }]
        );
        assert_eq!(grace_over.next_wakeup, Some(at(106 * DAY)));
    }

    #[test]
    fn a_fraction_of_a_second_counts_as_the_whole_second_it_falls_in() {
        let (_, b, rotated) = rotated_to_b();
        let grace_end = at(10 * DAY + HOUR);

        let just_before = run(
            &policy(),
            Some(&rotated.status),
            &b,
            grace_end - TimeDelta::nanoseconds(1),
        );
        let just_after = run(
            &policy(),
            Some(&rotated.status),
            &b,
            grace_end + TimeDelta::milliseconds(500),
        );

        assert_eq!(accepted(&just_before.status), ["x5t-b", "x5t-a"]);
        assert_eq!(accepted(&just_after.status), ["x5t-b"]);
    }

    #[test]
    fn timestamps_written_by_a_rotation_are_whole_seconds() {
        let a = certificate("a", 0, 90 * DAY);
        let b = certificate("b", 0, 120 * DAY);
        let first = run(&policy(), None, &a, at(0));

        let rotated = run(
            &policy(),
            Some(&first.status),
            &b,
            at(DAY) + TimeDelta::milliseconds(700),
        );

        assert_eq!(rotated.status.last_rotation_time, Some(at(DAY)));
        assert_eq!(rotated.status.previous[0].accepted_until, at(DAY + HOUR));
    }

    #[test]
    fn the_grace_period_never_outlasts_the_old_certificate() {
        let a = certificate("a", 0, 10 * DAY + 600);
        let b = certificate("b", 0, 120 * DAY);
        let first = run(&policy(), None, &a, at(0));

        let rotated = run(&policy(), Some(&first.status), &b, at(10 * DAY));

        assert_eq!(
            rotated.status.previous[0].accepted_until,
            at(10 * DAY + 600)
        );
        assert_eq!(rotated.next_wakeup, Some(at(10 * DAY + 600)));
    }

    #[test]
    fn replacing_an_expired_certificate_gives_it_no_grace() {
        let a = certificate("a", 0, 10 * DAY);
        let b = certificate("b", 0, 120 * DAY);
        let first = run(&policy(), None, &a, at(0));
        let expired = run(&policy(), Some(&first.status), &a, at(10 * DAY));

        let replaced = run(&policy(), Some(&expired.status), &b, at(11 * DAY));

        let status = &replaced.status;
        assert_eq!(status.state, Some(CertificateState::Active));
        assert_eq!(status.previous, []);
        assert_eq!(accepted(status), ["x5t-b"]);
        assert_eq!(status.rotation_count, 1);
        assert_eq!(condition(status, "Ready"), ("True", "Valid"));
    }

    #[test]
    fn repeated_rotations_keep_each_replaced_certificate_for_its_own_grace() {
        let a = certificate("a", 0, 90 * DAY);
        let b = certificate("b", 0, 90 * DAY);
        let c = certificate("c", 0, 90 * DAY);
        let first = run(&policy(), None, &a, at(0));
        let to_b = run(&policy(), Some(&first.status), &b, at(1000));

        let to_c = run(&policy(), Some(&to_b.status), &c, at(2000));
        let a_gone = run(&policy(), Some(&to_c.status), &c, at(1000 + HOUR));
        let b_gone = run(&policy(), Some(&a_gone.status), &c, at(2000 + HOUR));

        assert_eq!(accepted(&to_c.status), ["x5t-c", "x5t-b", "x5t-a"]);
        assert_eq!(to_c.status.rotation_count, 2);
        assert_eq!(to_c.status.last_rotation_time, Some(at(2000)));
        assert_eq!(to_c.next_wakeup, Some(at(1000 + HOUR)));
        assert_eq!(accepted(&a_gone.status), ["x5t-c", "x5t-b"]);
        assert_eq!(a_gone.status.state, Some(CertificateState::Rotating));
        assert_eq!(a_gone.next_wakeup, Some(at(2000 + HOUR)));
        assert_eq!(accepted(&b_gone.status), ["x5t-c"]);
        assert_eq!(b_gone.status.state, Some(CertificateState::Active));
        assert_eq!(b_gone.status.rotation_count, 2);
    }

    #[test]
    fn going_back_to_a_certificate_in_its_grace_makes_it_current_once() {
        let a = certificate("a", 0, 90 * DAY);
        let b = certificate("b", 0, 90 * DAY);
        let first = run(&policy(), None, &a, at(0));
        let to_b = run(&policy(), Some(&first.status), &b, at(1000));

        let back_to_a = run(&policy(), Some(&to_b.status), &a, at(2000));

        let status = &back_to_a.status;
        assert_eq!(status.current.as_ref().unwrap().x5t_s256, "x5t-a");
        let previous: Vec<_> = status
            .previous
            .iter()
            .map(|p| p.x5t_s256.as_str())
            .collect();
        assert_eq!(previous, ["x5t-b"]);
        assert_eq!(accepted(status), ["x5t-a", "x5t-b"]);
        assert_eq!(status.rotation_count, 2);
    }

    #[test]
    fn expiring_soon_turns_true_exactly_at_the_warning_threshold() {
        let a = certificate("a", 0, 30 * DAY);
        let first = run(&policy(), None, &a, at(0));

        let before = run(&policy(), Some(&first.status), &a, at(16 * DAY - 1));
        let at_threshold = run(&policy(), Some(&before.status), &a, at(16 * DAY));

        assert_eq!(
            condition(&before.status, "ExpiringSoon"),
            ("False", "Valid")
        );
        assert_eq!(before.next_wakeup, Some(at(16 * DAY)));
        assert_eq!(
            condition(&at_threshold.status, "ExpiringSoon"),
            ("True", "ExpiringSoon")
        );
        assert_eq!(condition(&at_threshold.status, "Ready"), ("True", "Valid"));
        assert_eq!(accepted(&at_threshold.status), ["x5t-a"]);
        assert_eq!(at_threshold.next_wakeup, Some(at(30 * DAY)));
    }

    #[test]
    fn at_not_after_the_certificate_expires_and_nothing_is_accepted() {
        let a = certificate("a", 0, 30 * DAY);
        let first = run(&policy(), None, &a, at(0));

        let last_second = run(&policy(), Some(&first.status), &a, at(30 * DAY - 1));
        let expired = run(&policy(), Some(&last_second.status), &a, at(30 * DAY));

        assert_eq!(accepted(&last_second.status), ["x5t-a"]);
        let status = &expired.status;
        assert_eq!(status.state, Some(CertificateState::Expired));
        assert_eq!(accepted(status), Vec::<&str>::new());
        assert_eq!(condition(status, "Ready"), ("False", "Expired"));
        assert_eq!(condition(status, "ExpiringSoon"), ("True", "Expired"));
        assert_eq!(
            expired.changes,
            [Change::Expired {
                x5t_s256: "x5t-a".into()
            }]
        );
        assert_eq!(expired.next_wakeup, None);
    }

    #[test]
    fn an_expiry_seen_late_is_still_an_expiry() {
        let a = certificate("a", 0, 30 * DAY);
        let first = run(&policy(), None, &a, at(0));

        let much_later = run(&policy(), Some(&first.status), &a, at(400 * DAY));

        assert_eq!(much_later.status.state, Some(CertificateState::Expired));
        assert_eq!(much_later.status.accepted_x5t_s256, Vec::<String>::new());
    }

    #[test]
    fn revocation_during_a_rotation_accepts_nothing_at_once() {
        let (_, b, rotated) = rotated_to_b();

        let revoked = run(&revoked(), Some(&rotated.status), &b, at(10 * DAY + 60));

        let status = &revoked.status;
        assert_eq!(status.state, Some(CertificateState::Revoked));
        assert_eq!(status.accepted_x5t_s256, Vec::<String>::new());
        assert_eq!(status.previous, []);
        assert_eq!(status.current.as_ref().unwrap().x5t_s256, "x5t-b");
        assert_eq!(condition(status, "Ready"), ("False", "Revoked"));
        assert_eq!(condition(status, "ExpiringSoon"), ("False", "Revoked"));
        assert_eq!(revoked.changes, [Change::Revoked]);
        assert_eq!(revoked.next_wakeup, None);
    }

    #[test]
    fn a_revoked_status_stays_revoked_even_if_the_spec_says_otherwise() {
        let a = certificate("a", 0, 90 * DAY);
        let b = certificate("b", 0, 90 * DAY);
        let revoked = run(&revoked(), None, &a, at(0));

        let unrevoked = run(&policy(), Some(&revoked.status), &b, at(60));

        assert_eq!(unrevoked.status.state, Some(CertificateState::Revoked));
        assert_eq!(unrevoked.status.accepted_x5t_s256, Vec::<String>::new());
        assert_eq!(unrevoked.status.rotation_count, 0);
        assert_eq!(unrevoked.changes, []);
    }

    #[test]
    fn a_certificate_revoked_from_the_start_is_never_accepted() {
        let a = certificate("a", 0, 90 * DAY);

        let evaluation = run(&revoked(), None, &a, at(0));

        assert_eq!(evaluation.status.state, Some(CertificateState::Revoked));
        assert_eq!(evaluation.status.accepted_x5t_s256, Vec::<String>::new());
        assert_eq!(evaluation.next_wakeup, None);
    }

    #[test]
    fn a_certificate_already_expired_when_first_seen_is_rejected() {
        let a = certificate("a", 0, 30 * DAY);

        let evaluation = run(&policy(), None, &a, at(30 * DAY));

        let status = &evaluation.status;
        assert_eq!(status.state, None);
        assert_eq!(status.current, None);
        assert_eq!(status.accepted_x5t_s256, Vec::<String>::new());
        assert_eq!(condition(status, "Ready"), ("False", "Expired"));
        assert_eq!(condition(status, "ExpiringSoon"), ("False", "Expired"));
        assert_eq!(evaluation.next_wakeup, None);
        assert_eq!(evaluation.changes, []);
    }

    #[test]
    fn an_expired_replacement_is_rejected_and_the_current_certificate_stays() {
        let a = certificate("a", 0, 90 * DAY);
        let old = certificate("old", 0, 5 * DAY);
        let first = run(&policy(), None, &a, at(0));

        let evaluation = run(&policy(), Some(&first.status), &old, at(10 * DAY));

        let status = &evaluation.status;
        assert_eq!(status.current.as_ref().unwrap().x5t_s256, "x5t-a");
        assert_eq!(accepted(status), ["x5t-a"]);
        assert_eq!(status.rotation_count, 0);
        assert_eq!(condition(status, "Ready"), ("False", "Expired"));
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert!(
            ready.message.contains("still accepted from before: x5t-a"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn an_invalid_input_binds_nothing_and_says_why() {
        let error = CertificateError::PrivateKeyIncluded {
            label: "PRIVATE KEY".into(),
        };
        let rejection = Rejection::from(&error);

        let evaluation = evaluate(&policy(), None, Err(&rejection), &nothing_taken(), at(0));

        let status = &evaluation.status;
        assert_eq!(status.state, None);
        assert_eq!(status.accepted_x5t_s256, Vec::<String>::new());
        assert_eq!(condition(status, "Ready"), ("False", "PrivateKeyIncluded"));
        assert_eq!(
            condition(status, "ExpiringSoon"),
            ("False", "PrivateKeyIncluded")
        );
        assert_eq!(evaluation.next_wakeup, None);
    }

    #[test]
    fn an_invalid_edit_keeps_the_accepted_certificate_on_its_own_schedule() {
        let (_, _, rotated) = rotated_to_b();
        let rejection = Rejection::new(
            reason::SECRET_NOT_FOUND,
            "Secret partner-tls is gone".into(),
        );

        let broken = evaluate(
            &policy(),
            Some(&rotated.status),
            Err(&rejection),
            &nothing_taken(),
            at(10 * DAY + HOUR),
        );

        let status = &broken.status;
        assert_eq!(status.current.as_ref().unwrap().x5t_s256, "x5t-b");
        assert_eq!(accepted(status), ["x5t-b"]);
        assert_eq!(status.state, Some(CertificateState::Active));
        assert_eq!(condition(status, "Ready"), ("False", "SecretNotFound"));
        assert_eq!(broken.next_wakeup, Some(at(106 * DAY)));
    }

    #[test]
    fn a_thumbprint_taken_by_another_consumer_is_not_bound() {
        let (_, b, rotated) = rotated_to_b();
        let taken = BTreeSet::from(["x5t-a".to_owned()]);

        let evaluation = evaluate(
            &policy(),
            Some(&rotated.status),
            Ok(&b),
            &taken,
            at(10 * DAY),
        );

        let status = &evaluation.status;
        assert_eq!(accepted(status), ["x5t-b"]);
        assert_eq!(status.state, Some(CertificateState::Rotating));
        assert_eq!(condition(status, "Ready"), ("False", "FingerprintConflict"));
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert!(ready.message.contains("x5t-a"), "{}", ready.message);
    }

    #[test]
    fn the_ready_transition_time_moves_only_when_its_status_does() {
        let (_, b, rotated) = rotated_to_b();
        let ready_time =
            |s: &ConsumerCertificateStatus| s.conditions[0].last_transition_time.clone();

        let later = run(&policy(), Some(&rotated.status), &b, at(10 * DAY + HOUR));
        let revoked = run(&revoked(), Some(&later.status), &b, at(11 * DAY));

        assert_eq!(ready_time(&later.status), ready_time(&rotated.status));
        assert_ne!(ready_time(&revoked.status), ready_time(&later.status));
    }

    #[test]
    fn the_policy_reads_the_spec_durations() {
        let mut spec = ConsumerCertificateSpec {
            consumer_ref: ConsumerRef {
                name: "partner-1".into(),
            },
            pem: None,
            secret_ref: Some(SecretKeyRef {
                name: "partner-1-tls".into(),
                key: "tls.crt".into(),
            }),
            grace_period: Duration::new("1h30m"),
            expiry_warning: Duration::new("336h"),
            revoked: true,
        };

        let read = Policy::from_spec(&spec, Some(4));
        spec.grace_period = Duration::new("soon");
        let unreadable = Policy::from_spec(&spec, Some(5));

        assert_eq!(
            read,
            Ok(Policy {
                grace_period: TimeDelta::minutes(90),
                expiry_warning: TimeDelta::days(14),
                revoked: true,
                generation: Some(4),
            })
        );
        assert_eq!(unreadable, Err(InvalidDuration("soon".into())));
    }

    #[test]
    fn every_parsing_error_has_its_reason() {
        let cases = [
            (
                CertificateError::InvalidCertificate("x".into()),
                "InvalidCertificate",
            ),
            (
                CertificateError::PrivateKeyIncluded {
                    label: "PRIVATE KEY".into(),
                },
                "PrivateKeyIncluded",
            ),
            (
                CertificateError::CACertificate {
                    subject: "CN=ca".into(),
                },
                "CACertificate",
            ),
        ];

        for (error, expected) in cases {
            assert_eq!(Rejection::from(&error).reason, expected);
        }
    }

    #[test]
    fn durations_are_written_as_in_manifests() {
        assert_eq!(human(TimeDelta::hours(336)), "336h");
        assert_eq!(human(TimeDelta::seconds(5_405)), "1h30m5s");
        assert_eq!(human(TimeDelta::zero()), "0s");
    }

    fn status_with(
        current: Option<(&str, i64)>,
        previous: &[(&str, i64)],
        last_rotation: Option<i64>,
    ) -> ConsumerCertificateStatus {
        let current =
            current.map(|(name, not_before)| current_of(&certificate(name, not_before, 400 * DAY)));
        let previous: Vec<_> = previous
            .iter()
            .map(|(name, until)| {
                previous_of(&current_of(&certificate(name, 0, 400 * DAY)), at(*until))
            })
            .collect();
        let accepted = current
            .iter()
            .map(|c| c.x5t_s256.clone())
            .chain(previous.iter().map(|p| p.x5t_s256.clone()))
            .collect();
        ConsumerCertificateStatus {
            current,
            previous,
            accepted_x5t_s256: accepted,
            last_rotation_time: last_rotation.map(at),
            ..Default::default()
        }
    }

    fn view(
        status: &ConsumerCertificateStatus,
        created: Option<DateTime<Utc>>,
    ) -> CertificateView<'_> {
        CertificateView { status, created }
    }

    #[test]
    fn no_accepted_certificate_means_an_empty_binding() {
        let expired = ConsumerCertificateStatus {
            current: Some(current_of(&certificate("a", 0, DAY))),
            ..Default::default()
        };

        let claims = binding(&[view(&expired, Some(at(0)))]);

        assert_eq!(claims, CertificateBinding::default());
        assert_eq!(binding(&[]), CertificateBinding::default());
    }

    #[test]
    fn cnf_names_the_certificate_with_the_latest_not_before() {
        let older = status_with(Some(("old", 0)), &[], None);
        let newer = status_with(Some(("new", DAY)), &[("replaced", 2 * DAY)], Some(DAY));

        let claims = binding(&[view(&newer, Some(at(0))), view(&older, Some(at(5)))]);

        assert_eq!(claims.newest.as_deref(), Some("x5t-new"));
        assert_eq!(claims.accepted, ["x5t-new", "x5t-old", "x5t-replaced"]);
    }

    #[test]
    fn equal_not_before_goes_to_the_latest_rotation_then_the_latest_object() {
        let rotated_late = status_with(Some(("late", 0)), &[], Some(DAY));
        let rotated_early = status_with(Some(("early", 0)), &[], Some(HOUR));
        let created_late = status_with(Some(("created-late", 0)), &[], None);
        let created_early = status_with(Some(("created-early", 0)), &[], None);

        let by_rotation = binding(&[
            view(&rotated_late, Some(at(0))),
            view(&rotated_early, Some(at(9))),
        ]);
        let by_creation = binding(&[
            view(&created_late, Some(at(9))),
            view(&created_early, Some(at(0))),
        ]);

        assert_eq!(by_rotation.newest.as_deref(), Some("x5t-late"));
        assert_eq!(by_creation.newest.as_deref(), Some("x5t-created-late"));
    }

    #[test]
    fn a_replaced_certificate_is_named_only_when_no_current_one_is_accepted() {
        let mut current_conflicting = status_with(Some(("new", DAY)), &[("kept", HOUR)], Some(0));
        current_conflicting.accepted_x5t_s256 = vec!["x5t-kept".into()];
        let other = status_with(None, &[("other", 2 * HOUR)], Some(0));

        let current = status_with(Some(("current", 0)), &[], None);

        let replaced_only = binding(&[view(&current_conflicting, None), view(&other, None)]);
        let with_current = binding(&[view(&other, None), view(&current, None)]);

        assert_eq!(replaced_only.newest.as_deref(), Some("x5t-other"));
        assert_eq!(replaced_only.accepted, ["x5t-kept", "x5t-other"]);
        assert_eq!(with_current.newest.as_deref(), Some("x5t-current"));
    }

    #[test]
    fn the_same_thumbprint_in_two_objects_is_listed_once() {
        let first = status_with(Some(("a", 0)), &[], None);
        let second = status_with(Some(("a", 0)), &[], None);

        let claims = binding(&[view(&first, None), view(&second, None)]);

        assert_eq!(claims.accepted, ["x5t-a"]);
    }

    #[test]
    fn conflicts_are_the_own_thumbprints_claimed_elsewhere() {
        let own = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let elsewhere = BTreeSet::from(["c".to_owned(), "a".to_owned(), "z".to_owned()]);

        assert_eq!(conflicts(&own, &elsewhere), ["a", "c"]);
        assert_eq!(conflicts(&own, &BTreeSet::new()), Vec::<String>::new());
    }

    #[test]
    fn only_older_claims_take_a_thumbprint_away() {
        let me = Seniority {
            created: at(100),
            key: "acme/m".into(),
        };
        let older = Seniority {
            created: at(50),
            key: "acme/z".into(),
        };
        let same_time_smaller_key = Seniority {
            created: at(100),
            key: "acme/a".into(),
        };
        let younger = Seniority {
            created: at(200),
            key: "acme/b".into(),
        };
        let t = |s: &str| vec![s.to_owned()];
        let (t1, t2, t3) = (t("t1"), t("t2"), t("t3"));
        let others = [
            Claim {
                seniority: &older,
                accepted_x5t_s256: &t1,
            },
            Claim {
                seniority: &same_time_smaller_key,
                accepted_x5t_s256: &t2,
            },
            Claim {
                seniority: &younger,
                accepted_x5t_s256: &t3,
            },
        ];

        let taken = claimed_before(&me, &others);

        assert_eq!(taken, BTreeSet::from(["t1".to_owned(), "t2".to_owned()]));
    }

    #[test]
    fn two_objects_holding_one_thumbprint_settle_on_the_older_whatever_the_order() {
        let a = certificate("shared", 0, 90 * DAY);
        let older = Seniority {
            created: at(0),
            key: "tenant-x/first".into(),
        };
        let younger = Seniority {
            created: at(0),
            key: "tenant-y/second".into(),
        };
        let first = run(&policy(), None, &a, at(10));
        let second = run(&policy(), None, &a, at(10));

        // Both bound at the same time; each now sees the other's claim.
        let first_again = evaluate(
            &policy(),
            Some(&first.status),
            Ok(&a),
            &claimed_before(
                &older,
                &[Claim {
                    seniority: &younger,
                    accepted_x5t_s256: &second.status.accepted_x5t_s256,
                }],
            ),
            at(20),
        );
        let second_again = evaluate(
            &policy(),
            Some(&second.status),
            Ok(&a),
            &claimed_before(
                &younger,
                &[Claim {
                    seniority: &older,
                    accepted_x5t_s256: &first.status.accepted_x5t_s256,
                }],
            ),
            at(20),
        );

        assert_eq!(accepted(&first_again.status), ["x5t-shared"]);
        assert_eq!(accepted(&second_again.status), Vec::<&str>::new());
        assert_eq!(
            condition(&second_again.status, "Ready"),
            ("False", "FingerprintConflict")
        );
    }
}
