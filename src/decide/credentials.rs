//! What the credentials Secret should hold, and whether a rotation or the end of a grace period
//! is due. Pure: the controller observes Keycloak and the Secret, this module decides.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::names::secret;

/// What the operator last wrote into the Secret, read back from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedSecret {
    pub data: BTreeMap<String, String>,
    /// The revision annotation; `None` on a Secret that lost its annotations.
    pub revision: Option<i64>,
    pub rotated_at: Option<DateTime<Utc>>,
    pub previous_valid_until: Option<DateTime<Utc>>,
}

impl ObservedSecret {
    pub fn client_secret(&self) -> Option<&str> {
        self.data.get(secret::CLIENT_SECRET).map(String::as_str)
    }

    pub fn previous_client_secret(&self) -> Option<&str> {
        self.data
            .get(secret::PREVIOUS_CLIENT_SECRET)
            .map(String::as_str)
    }
}

/// The next step for the credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Ask Keycloak for a new secret: the Secret's revision is behind the spec's.
    Rotate,
    /// A rotation already happened in Keycloak (the process stopped before the Secret was
    /// written): record it without rotating again.
    RecordRotation,
    /// The grace of the previous secret is over: invalidate it in Keycloak, drop it from the
    /// Secret.
    EndGrace,
    /// Nothing to do in Keycloak; the Secret is written if it differs from `Desired`.
    Keep,
}

/// Decides the credentials step from the spec revision, the Secret, Keycloak's current and
/// rotated secrets, and the time.
pub fn step(
    spec_revision: i64,
    observed: Option<&ObservedSecret>,
    keycloak_secret: &str,
    keycloak_rotated: Option<&str>,
    now: DateTime<Utc>,
) -> Step {
    let Some(observed) = observed else {
        // A missing Secret is restored from Keycloak at the spec's revision, never rotated.
        return Step::Keep;
    };
    let behind = observed.revision.is_some_and(|r| r < spec_revision);
    if behind {
        let secret_in_file = observed.client_secret();
        if secret_in_file != Some(keycloak_secret) && keycloak_rotated == secret_in_file {
            return Step::RecordRotation;
        }
        return Step::Rotate;
    }
    let grace_over = observed
        .previous_valid_until
        .is_some_and(|until| until <= now);
    if grace_over && (observed.previous_client_secret().is_some() || keycloak_rotated.is_some()) {
        return Step::EndGrace;
    }
    Step::Keep
}

/// The Secret's content: the keys and the annotations the operator owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredSecret {
    pub data: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

pub struct Inputs<'a> {
    pub client_id: &'a str,
    pub client_secret: &'a str,
    pub token_url: &'a str,
    pub revision: i64,
    pub previous: Option<&'a str>,
    pub rotated_at: Option<DateTime<Utc>>,
    pub previous_valid_until: Option<DateTime<Utc>>,
}

pub fn desired(inputs: Inputs<'_>) -> DesiredSecret {
    let mut data = BTreeMap::from([
        (secret::CLIENT_ID.to_owned(), inputs.client_id.to_owned()),
        (
            secret::CLIENT_SECRET.to_owned(),
            inputs.client_secret.to_owned(),
        ),
        (secret::TOKEN_URL.to_owned(), inputs.token_url.to_owned()),
    ]);
    let mut annotations = BTreeMap::from([(
        secret::REVISION_ANNOTATION.to_owned(),
        inputs.revision.to_string(),
    )]);
    if let Some(at) = inputs.rotated_at {
        annotations.insert(secret::ROTATED_AT_ANNOTATION.to_owned(), rfc3339(at));
    }
    if let (Some(previous), Some(until)) = (inputs.previous, inputs.previous_valid_until) {
        data.insert(
            secret::PREVIOUS_CLIENT_SECRET.to_owned(),
            previous.to_owned(),
        );
        annotations.insert(
            secret::PREVIOUS_VALID_UNTIL_ANNOTATION.to_owned(),
            rfc3339(until),
        );
    }
    DesiredSecret { data, annotations }
}

pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + seconds, 0).unwrap()
    }

    fn observed(revision: i64, client_secret: &str) -> ObservedSecret {
        ObservedSecret {
            data: BTreeMap::from([(secret::CLIENT_SECRET.to_owned(), client_secret.to_owned())]),
            revision: Some(revision),
            ..Default::default()
        }
    }

    #[test]
    fn a_missing_secret_is_restored_without_rotating() {
        assert_eq!(step(3, None, "s1", None, at(0)), Step::Keep);
    }

    #[test]
    fn a_raised_revision_rotates() {
        assert_eq!(
            step(1, Some(&observed(0, "s1")), "s1", None, at(0)),
            Step::Rotate
        );
    }

    #[test]
    fn a_rotation_interrupted_before_the_secret_was_written_is_recorded_not_repeated() {
        let step = step(1, Some(&observed(0, "s1")), "s2", Some("s1"), at(0));

        assert_eq!(step, Step::RecordRotation);
    }

    #[test]
    fn the_grace_ends_at_its_instant_not_before() {
        let mut secret = observed(1, "s2");
        secret
            .data
            .insert(secret::PREVIOUS_CLIENT_SECRET.to_owned(), "s1".to_owned());
        secret.previous_valid_until = Some(at(10));

        assert_eq!(step(1, Some(&secret), "s2", Some("s1"), at(9)), Step::Keep);
        assert_eq!(
            step(1, Some(&secret), "s2", Some("s1"), at(10)),
            Step::EndGrace
        );
    }

    #[test]
    fn the_previous_secret_is_only_written_with_its_deadline() {
        let inputs = |previous| Inputs {
            client_id: "acme-p1",
            client_secret: "s2",
            token_url: "http://kc/realms/acme/protocol/openid-connect/token",
            revision: 1,
            previous,
            rotated_at: Some(at(0)),
            previous_valid_until: Some(at(10)),
        };

        let with_previous = desired(inputs(Some("s1")));
        let without = desired(inputs(None));

        assert_eq!(with_previous.data[secret::PREVIOUS_CLIENT_SECRET], "s1");
        assert!(
            with_previous
                .annotations
                .contains_key(secret::PREVIOUS_VALID_UNTIL_ANNOTATION)
        );
        assert!(!without.data.contains_key(secret::PREVIOUS_CLIENT_SECRET));
    }
}
