//! Status conditions, keyed by type, with transition times that only move when the status does.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as a decision states it, before the transition time is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Desired {
    pub fn new(type_: &'static str, status: bool, reason: &'static str, message: String) -> Self {
        Self {
            type_,
            status,
            reason,
            message,
        }
    }
}

/// The conditions to write: one per desired type, in the order given. A condition whose status
/// did not change keeps its `lastTransitionTime`; one that did gets `now`.
pub fn merge(
    previous: &[Condition],
    desired: Vec<Desired>,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Vec<Condition> {
    desired
        .into_iter()
        .map(|d| {
            let status = if d.status { "True" } else { "False" }.to_owned();
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| k8s_time(now));
            Condition {
                type_: d.type_.to_owned(),
                status,
                reason: d.reason.to_owned(),
                message: d.message,
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// A chrono instant as a Kubernetes `Time`.
pub fn k8s_time(at: DateTime<Utc>) -> Time {
    let nanos = i128::from(at.timestamp_nanos_opt().unwrap_or_default());
    Time(k8s_openapi::jiff::Timestamp::from_nanosecond(nanos).unwrap_or_default())
}

/// Whether the condition of `type_` is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(seconds, 0).unwrap()
    }

    #[test]
    fn an_unchanged_status_keeps_its_transition_time() {
        let first = merge(
            &[],
            vec![Desired::new("Ready", true, "Reconciled", "ok".into())],
            None,
            at(1),
        );

        let second = merge(
            &first,
            vec![Desired::new("Ready", true, "Reconciled", "ok".into())],
            None,
            at(9),
        );

        assert_eq!(second[0].last_transition_time, k8s_time(at(1)));
    }

    #[test]
    fn a_changed_status_takes_the_new_time_and_generation() {
        let first = merge(
            &[],
            vec![Desired::new("Ready", true, "Reconciled", "ok".into())],
            None,
            at(1),
        );

        let second = merge(
            &first,
            vec![Desired::new("Ready", false, "Conflict", "taken".into())],
            Some(3),
            at(9),
        );

        assert_eq!(second[0].last_transition_time, k8s_time(at(9)));
        assert_eq!(second[0].observed_generation, Some(3));
        assert_eq!(second[0].status, "False");
        assert!(!is_true(&second, "Ready"));
    }
}
