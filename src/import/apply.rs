//! The I/O half of the importer: one server-side apply per row, what it did to the Consumer, and
//! waiting until the applied Consumers are Ready. Reads and writes Consumers only (never Secrets).

use std::{collections::HashMap, pin::pin, time::Duration};

use futures::TryStreamExt;
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};

use super::rows::Row;
use crate::{api::Consumer, names};

/// What applying a row did to its Consumer (or would do, in a dry run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Created,
    Updated,
    Unchanged,
}

impl Applied {
    /// Decides from the Consumer before and after the apply. A Consumer is unchanged when its
    /// spec is: the importer sets nothing else, and comparing the spec (not the resourceVersion)
    /// gives the same answer in a dry run, where nothing is stored, and when the apply only
    /// moved field ownership to the importer.
    pub fn classify(before: Option<&Consumer>, after: &Consumer) -> Self {
        match before {
            None => Self::Created,
            Some(before) if before.spec == after.spec => Self::Unchanged,
            Some(_) => Self::Updated,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Unchanged => "unchanged",
        }
    }
}

/// Connects the importer to the namespace's Consumers and checks, before anything is applied,
/// that the API server answers, serves the Consumer kind and lets the caller list it.
pub async fn consumers(namespace: &str) -> Result<Api<Consumer>, String> {
    let client = kube::Client::try_default()
        .await
        .map_err(|error| format!("cannot configure a Kubernetes client: {}", describe(&error)))?;
    let api: Api<Consumer> = Api::namespaced(client, namespace);

    api.list_metadata(&ListParams::default().limit(1))
        .await
        .map_err(|error| {
            format!(
                "cannot list Consumers in namespace {namespace:?}: {}",
                describe(&error)
            )
        })?;
    Ok(api)
}

/// Server-side applies one row's Consumer with the importer's field manager, taking over fields
/// another manager set (`force`), as a dry run when asked.
pub async fn apply(
    api: &Api<Consumer>,
    row: &Row,
    namespace: &str,
    dry_run: bool,
) -> Result<Applied, String> {
    let before = api
        .get_opt(row.object_name())
        .await
        .map_err(|error| format!("cannot read the Consumer: {}", describe(&error)))?;

    let mut params = PatchParams::apply(names::IMPORT_FIELD_MANAGER).force();
    if dry_run {
        params = params.dry_run();
    }
    let after = api
        .patch(
            row.object_name(),
            &params,
            &Patch::Apply(row.manifest(namespace)),
        )
        .await
        .map_err(|error| describe(&error))?;

    Ok(Applied::classify(before.as_ref(), &after))
}

/// An applied Consumer that `--wait` has not seen Ready yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub line: u64,
    pub applied: Applied,
    /// The last Ready condition seen that was not `True` for the current generation.
    pub last_seen: Option<String>,
}

/// Watches the namespace's Consumers until every one in `pending` is Ready or `timeout` passes;
/// returns those still not Ready. `on_ready` is called once per Consumer that becomes Ready.
pub async fn wait_ready(
    api: Api<Consumer>,
    mut pending: HashMap<String, Waiting>,
    timeout: Duration,
    mut on_ready: impl FnMut(),
) -> HashMap<String, Waiting> {
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let mut events = pin!(events);
    let deadline = tokio::time::sleep(timeout);
    let mut deadline = pin!(deadline);

    while !pending.is_empty() {
        let consumer = tokio::select! {
            () = &mut deadline => break,
            event = events.try_next() => match event {
                Ok(Some(consumer)) => consumer,
                Ok(None) => break,
                Err(error) => {
                    // The backoff restarts the watch; the deadline still bounds the wait.
                    tracing::debug!(error = %describe_watch(&error), "watch of Consumers failed");
                    continue;
                }
            },
        };
        let Some(waiting) = pending.get_mut(&consumer.name_any()) else {
            continue;
        };
        match readiness(&consumer) {
            Ok(()) => {
                pending.remove(&consumer.name_any());
                on_ready();
            }
            Err(last_seen) => waiting.last_seen = last_seen,
        }
    }
    pending
}

/// `Ok` when the Consumer's Ready condition is `True` for its current generation; otherwise what
/// the condition says, if there is one.
pub fn readiness(consumer: &Consumer) -> Result<(), Option<String>> {
    let status = consumer.status.as_ref().ok_or(None)?;
    let ready = status
        .conditions
        .iter()
        .find(|condition| condition.type_ == names::condition::READY)
        .ok_or(None)?;
    let observed = ready.observed_generation.or(status.observed_generation);
    let current = observed.is_none_or(|observed| Some(observed) >= consumer.metadata.generation);

    match (ready.status.as_str(), current) {
        ("True", true) => Ok(()),
        ("True", false) => Err(Some("Ready=True for an older generation".to_owned())),
        (status, _) => Err(Some(format!(
            "{}={status}, {}: {}",
            names::condition::READY,
            ready.reason,
            ready.message
        ))),
    }
}

/// An API error as the API server words it; any other error with its causes.
pub fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            format!(
                "rejected by the API server ({} {}): {}",
                status.code, status.reason, status.message
            )
        }
        other => with_causes(other),
    }
}

fn describe_watch(error: &watcher::Error) -> String {
    with_causes(error)
}

fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use super::*;
    use crate::api::{ConsumerSpec, ConsumerStatus};

    fn consumer(name: &str, generation: i64) -> Consumer {
        let spec: ConsumerSpec = serde_json::from_value(serde_json::json!({
            "externalId": name, "tenantId": "acme", "name": "N", "email": "n@x.example"
        }))
        .unwrap();
        let mut consumer = Consumer::new(name, spec);
        consumer.metadata.generation = Some(generation);
        consumer
    }

    fn with_ready(mut consumer: Consumer, status: &str, observed: Option<i64>) -> Consumer {
        let condition = Condition {
            type_: names::condition::READY.into(),
            status: status.into(),
            reason: names::reason::REALM_NOT_FOUND.into(),
            message: "realm acme not found".into(),
            observed_generation: observed,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        };
        consumer.status = Some(ConsumerStatus {
            conditions: vec![condition],
            ..Default::default()
        });
        consumer
    }

    #[test]
    fn a_consumer_that_did_not_exist_was_created() {
        assert_eq!(Applied::classify(None, &consumer("a", 1)), Applied::Created);
    }

    #[test]
    fn the_same_spec_is_unchanged_and_another_spec_updated() {
        let before = consumer("a", 1);
        let mut after = consumer("a", 2);

        let same = Applied::classify(Some(&before), &after);
        after.spec.name = "Renamed".into();
        let renamed = Applied::classify(Some(&before), &after);

        assert_eq!((same, renamed), (Applied::Unchanged, Applied::Updated));
    }

    #[test]
    fn ready_true_for_the_current_generation_is_ready() {
        let consumer = with_ready(consumer("a", 3), "True", Some(3));

        assert_eq!(readiness(&consumer), Ok(()));
    }

    #[test]
    fn ready_true_for_an_older_generation_is_not_ready() {
        let consumer = with_ready(consumer("a", 3), "True", Some(2));

        assert!(readiness(&consumer).is_err());
    }

    #[test]
    fn ready_false_says_why() {
        let consumer = with_ready(consumer("a", 1), "False", Some(1));

        assert_eq!(
            readiness(&consumer),
            Err(Some(
                "Ready=False, RealmNotFound: realm acme not found".into()
            ))
        );
    }

    #[test]
    fn no_status_is_not_ready() {
        assert_eq!(readiness(&consumer("a", 1)), Err(None));
    }
}
