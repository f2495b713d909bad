//! Reconciles a Consumer: its Keycloak client, its credentials Secret, its status and events.
//! Decisions come from `decide::client` and `decide::credentials`; this file only observes and
//! applies. Every step can be interrupted: the next reconcile finishes it from what it observes.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        events::EventType,
        finalizer::{Event as Finalizer, finalizer},
        reflector::{self, ObjectRef},
        watcher,
    },
};
use serde_json::json;

use super::{Context, Error, Readiness, on_error};
use crate::{
    api::{
        Consumer, ConsumerCertificate, ConsumerState, ConsumerStatus,
        condition::{self, Desired},
        consumer::{ConsumerPhase, CredentialsStatus},
    },
    decide::{
        client::{self as decide_client, CertificateBinding, Ownership},
        credentials::{self, ObservedSecret, Step},
    },
    keycloak,
    names::{self, condition as cond, event, reason, secret as keys},
};

const KIND: &str = "Consumer";

/// Failure reasons retried with backoff rather than at the next resync.
const RETRIED: [&str; 3] = [
    reason::KEYCLOAK_UNAVAILABLE,
    reason::REALM_NOT_FOUND,
    reason::KEYCLOAK_ERROR,
];

/// Runs one controller per watched namespace and returns when they stop.
pub async fn run(
    ctx: Arc<Context>,
    apis: Vec<Api<Consumer>>,
    concurrency: u16,
    readiness: Arc<Readiness>,
    recoveries: tokio::sync::watch::Receiver<u64>,
) {
    let secrets_config = watcher::Config::default().labels(names::MANAGED_BY_SELECTOR);
    let controllers = apis.into_iter().map(|consumers| {
        let (secrets, certificates): (Api<Secret>, Api<ConsumerCertificate>) =
            match consumers.namespace() {
                Some(ns) => (
                    Api::namespaced(ctx.client.clone(), ns),
                    Api::namespaced(ctx.client.clone(), ns),
                ),
                None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
            };
        let (reader, writer) = reflector::store();
        let consumers = watcher(consumers, watcher::Config::default())
            .default_backoff()
            .modify(super::slim)
            .reflect(writer)
            .applied_objects();
        let controller = Controller::for_stream(consumers, reader)
            .owns(secrets, secrets_config.clone())
            .watches(certificates, watcher::Config::default(), |certificate| {
                let namespace = certificate.namespace().unwrap_or_default();
                Some(ObjectRef::new(&certificate.spec.consumer_ref.name).within(&namespace))
            })
            .with_config(controller::Config::default().concurrency(concurrency))
            .reconcile_all_on(super::recovery_stream(recoveries.clone()))
            .shutdown_on_signal();
        let store = controller.store();
        ctx.stores.add_consumers(store.clone());
        readiness.track(store);
        super::drain(controller.run(reconcile, error_policy, ctx.clone()))
    });
    futures::future::join_all(controllers).await;
}

fn error_policy(consumer: Arc<Consumer>, error: &Error, ctx: Arc<Context>) -> Action {
    on_error(consumer, error, ctx, KIND)
}

async fn reconcile(consumer: Arc<Consumer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = consumer.namespace().unwrap_or_default();
    let api: Api<Consumer> = Api::namespaced(ctx.client.clone(), &namespace);
    let key = super::object_key(consumer.as_ref());
    if ctx.status_writes.is_behind(&key, consumer.as_ref()) {
        // The cache still holds the version this operator last wrote the status over; the watch
        // event of that write is on its way and reconciles the current version.
        return Ok(Action::await_change());
    }

    let result = finalizer(&api, names::CONSUMER_FINALIZER, consumer, |event| async {
        match event {
            Finalizer::Apply(consumer) => apply(&consumer, &ctx).await,
            Finalizer::Cleanup(consumer) => cleanup(&consumer, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));

    ctx.metrics.reconciled(KIND, started.elapsed());
    if result.is_ok() {
        ctx.record_success(&key);
    }
    result
}

/// What one reconcile observed and decided, for the status.
struct Outcome {
    client: Result<ClientSync, Failure>,
    credentials: Result<CredentialsSync, Failure>,
}

#[derive(Clone)]
struct ClientSync {
    uuid: String,
}

#[derive(Clone)]
struct CredentialsSync {
    status: CredentialsStatus,
    /// When the previous secret's grace ends, for a timed requeue.
    grace_ends: Option<DateTime<Utc>>,
    /// The Secret's resourceVersion once it holds these credentials.
    secret_version: Option<String>,
}

/// What a sync depends on, as far as the operator can see it without asking Keycloak.
#[derive(Clone, PartialEq)]
pub struct Seen {
    generation: Option<i64>,
    annotations: [Option<String>; 2],
    secret_version: Option<String>,
    binding: CertificateBinding,
}

impl Seen {
    fn of(consumer: &Consumer, secret: Option<&Secret>, binding: &CertificateBinding) -> Self {
        let annotation = |key: &str| consumer.annotations().get(key).cloned();
        Self {
            generation: consumer.metadata.generation,
            annotations: [
                annotation(names::ADOPT_ANNOTATION),
                annotation(names::DELETION_POLICY_ANNOTATION),
            ],
            secret_version: secret.and_then(|s| s.resource_version()),
            binding: binding.clone(),
        }
    }
}

/// The outcome of a full sync.
#[derive(Clone)]
pub struct Verified {
    client: ClientSync,
    credentials: CredentialsSync,
}

/// The last full sync of each Consumer, so that the events its own writes cause (the Secret,
/// the status) cost no Keycloak request. An entry serves for half the resync interval, never
/// past a grace end, and never across a Keycloak outage: a Keycloak that comes back may have
/// lost its last writes (or been restored from a backup), so every Consumer is verified again.
pub struct VerifiedCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (Seen, Verified, Instant, u64)>>,
    fresh_for: std::time::Duration,
    /// Counts Keycloak's recoveries; an entry is valid only in the recovery count it was made in.
    recoveries: tokio::sync::watch::Receiver<u64>,
}

impl VerifiedCache {
    pub fn new(
        resync_interval: std::time::Duration,
        recoveries: tokio::sync::watch::Receiver<u64>,
    ) -> Self {
        Self {
            entries: Default::default(),
            fresh_for: resync_interval / 2,
            recoveries,
        }
    }

    fn recent(&self, key: &str, seen: &Seen) -> Option<Verified> {
        let entries = self.entries.lock().expect("not poisoned");
        let (recorded, verified, at, recovery) = entries.get(key)?;
        let grace_due = verified
            .credentials
            .grace_ends
            .is_some_and(|end| end <= Utc::now());
        let fresh = at.elapsed() < self.fresh_for && *recovery == *self.recoveries.borrow();
        (recorded == seen && fresh && !grace_due).then(|| verified.clone())
    }

    fn record(&self, key: String, seen: Seen, verified: Verified) {
        let recovery = *self.recoveries.borrow();
        self.entries
            .lock()
            .expect("not poisoned")
            .insert(key, (seen, verified, Instant::now(), recovery));
    }

    /// Forgets a Consumer (deleted, or its sync failed).
    pub fn forget(&self, key: &str) {
        self.entries.lock().expect("not poisoned").remove(key);
    }
}

/// The resourceVersion each Consumer had when the operator last changed its status, until the
/// cache shows a newer version. A reconcile started by another event (its Secret's) in between
/// would compare the desired status with a stale one and write it a second time.
#[derive(Default)]
pub struct StatusWrites {
    written_over: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl StatusWrites {
    /// True when `consumer` is the version the last status write replaced.
    fn is_behind(&self, key: &str, consumer: &Consumer) -> bool {
        let mut written_over = self.written_over.lock().expect("not poisoned");
        match written_over.get(key) {
            Some(version) if consumer.metadata.resource_version.as_ref() == Some(version) => true,
            Some(_) => {
                written_over.remove(key);
                false
            }
            None => false,
        }
    }

    /// Records that the status write turned version `before` into version `after`. A write that
    /// changed nothing on the server makes no new version and no watch event: nothing to wait for.
    fn record(&self, key: String, before: Option<String>, after: Option<String>) {
        if let Some(before) = before
            && after.as_ref() != Some(&before)
        {
            self.written_over
                .lock()
                .expect("not poisoned")
                .insert(key, before);
        }
    }

    fn forget(&self, key: &str) {
        self.written_over.lock().expect("not poisoned").remove(key);
    }
}

/// A condition reason and a message that says what is wrong (never a secret).
struct Failure {
    reason: &'static str,
    message: String,
}

impl Failure {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }

    fn from_keycloak(error: &keycloak::Error) -> Self {
        let reason = match error {
            keycloak::Error::Unavailable { .. } => reason::KEYCLOAK_UNAVAILABLE,
            keycloak::Error::RealmNotFound { .. } => reason::REALM_NOT_FOUND,
            keycloak::Error::Http { .. } => reason::KEYCLOAK_ERROR,
        };
        Self::new(reason, error.to_string())
    }
}

async fn apply(consumer: &Consumer, ctx: &Context) -> Result<Action, Error> {
    let realm = decide_client::realm(&ctx.settings.realm_template, &consumer.spec.tenant_id);
    let client_id = decide_client::client_id(consumer);

    let invalid = validate_spec(consumer);
    let outcome = match invalid {
        Some(failure) => Outcome {
            client: Err(failure),
            credentials: Err(Failure::new(reason::INVALID_SPEC, "spec is invalid")),
        },
        None => sync(consumer, ctx, &realm, &client_id).await?,
    };

    // Failures that a retry can cure go through the error policy, which backs off with jitter;
    // a conflict or an invalid spec waits for a change (or the resync).
    let retry = [
        &outcome.client.as_ref().err(),
        &outcome.credentials.as_ref().err(),
    ]
    .into_iter()
    .flatten()
    .find(|f| RETRIED.contains(&f.reason))
    .map(|f| Error::Failed {
        reason: f.reason,
        message: f.message.clone(),
    });
    let grace_ends = outcome.credentials.as_ref().ok().and_then(|c| c.grace_ends);
    write_status(consumer, ctx, &realm, &client_id, outcome).await?;
    if let Some(error) = retry {
        return Err(error);
    }

    let mut requeue = ctx.settings.resync_interval;
    if let Some(until) = grace_ends {
        let wait = (until - Utc::now()).to_std().unwrap_or_default();
        requeue = requeue.min(wait + std::time::Duration::from_millis(50));
    }
    Ok(Action::requeue(requeue))
}

fn validate_spec(consumer: &Consumer) -> Option<Failure> {
    let errors = validate_spec_rules(consumer);
    (!errors.is_empty()).then(|| Failure::new(reason::INVALID_SPEC, errors.join("; ")))
}

fn validate_spec_rules(consumer: &Consumer) -> Vec<String> {
    let mut errors: Vec<String> = crate::api::consumer::validate_spec(&consumer.spec)
        .iter()
        .map(ToString::to_string)
        .collect();
    if let Err(e) = consumer.spec.credentials.rotation_grace_period.to_std() {
        errors.push(format!("spec.credentials.rotationGracePeriod: {e}"));
    }
    errors
}

/// Brings the client and the Secret in line. Keycloak failures end up in the outcome (and the
/// status); Kubernetes failures are returned.
async fn sync(
    consumer: &Consumer,
    ctx: &Context,
    realm: &str,
    client_id: &str,
) -> Result<Outcome, Error> {
    let secrets: Api<Secret> = Api::namespaced(
        ctx.client.clone(),
        &consumer.namespace().unwrap_or_default(),
    );
    let secret_name = consumer.secret_name();
    let observed_secret = secrets.get_opt(&secret_name).await?;
    if let Some(secret) = &observed_secret
        && !owned_by(secret, consumer)
    {
        let message = format!(
            "Secret {secret_name} exists and is not owned by this Consumer; it is left untouched"
        );
        let failure = || Failure::new(reason::CONFLICT, message.clone());
        ctx.event(
            consumer,
            EventType::Warning,
            reason::CONFLICT,
            message.clone(),
        )
        .await;
        return Ok(Outcome {
            client: Err(failure()),
            credentials: Err(failure()),
        });
    }

    ctx.readiness.wait().await;
    let binding = certificate_binding(consumer, ctx, None);
    let seen = Seen::of(consumer, observed_secret.as_ref(), &binding);
    if let Some(verified) = ctx.verified.recent(&super::object_key(consumer), &seen) {
        // Nothing the operator could see changed since the last full sync (the event is its
        // own Secret or status write): no Keycloak request. Drift in Keycloak is caught by the
        // resync, which is never skipped.
        return Ok(Outcome {
            client: Ok(verified.client),
            credentials: Ok(verified.credentials),
        });
    }

    let client = match sync_client(consumer, ctx, realm, client_id, &binding).await {
        Ok(client) => client,
        Err(failure) => {
            let credentials = Failure::new(failure.reason, "waiting for the Keycloak client");
            return Ok(Outcome {
                client: Err(failure),
                credentials: Err(credentials),
            });
        }
    };
    let credentials = sync_credentials(
        consumer,
        ctx,
        realm,
        client_id,
        &client.uuid,
        observed_secret.as_ref(),
    )
    .await?;
    if let Ok(synced) = &credentials {
        let seen = Seen {
            secret_version: synced.secret_version.clone(),
            ..seen
        };
        let verified = Verified {
            client: client.clone(),
            credentials: synced.clone(),
        };
        ctx.verified
            .record(super::object_key(consumer), seen, verified);
    }
    Ok(Outcome {
        client: Ok(client),
        credentials,
    })
}

async fn sync_client(
    consumer: &Consumer,
    ctx: &Context,
    realm: &str,
    client_id: &str,
    binding: &CertificateBinding,
) -> Result<ClientSync, Failure> {
    let kc = &ctx.keycloak;
    let observed = kc
        .find_client(realm, client_id)
        .await
        .map_err(|e| Failure::from_keycloak(&e))?;

    let Some(observed) = observed else {
        let desired = decide_client::desired_client(consumer, binding);
        let uuid = match kc.create_client(realm, desired).await {
            Ok(uuid) => uuid,
            // Created concurrently (another replica, or an answer lost in a previous attempt):
            // the next reconcile reads and checks it.
            Err(e) => return Err(Failure::from_keycloak(&e)),
        };
        let had_client = consumer
            .status
            .as_ref()
            .and_then(|s| s.keycloak_client_uuid.as_ref())
            .is_some();
        if had_client {
            ctx.event(
                consumer,
                EventType::Warning,
                event::DRIFT_CORRECTED,
                format!(
                    "Keycloak client {client_id} was missing in realm {realm} and was created again"
                ),
            )
            .await;
        } else {
            ctx.event(
                consumer,
                EventType::Normal,
                event::CLIENT_CREATED,
                format!("Created Keycloak client {client_id} in realm {realm}"),
            )
            .await;
        }
        let consumer_key = super::object_key(consumer);
        tracing::info!(consumer = %consumer_key, %realm, %client_id, "client created");
        return Ok(ClientSync { uuid });
    };

    let uuid = observed.id.clone().unwrap_or_default();
    match decide_client::ownership(&observed, consumer) {
        Ownership::Ours => {}
        Ownership::Other(owner) => {
            let message =
                format!("Keycloak client {client_id} in realm {realm} belongs to Consumer {owner}");
            ctx.event(
                consumer,
                EventType::Warning,
                reason::CONFLICT,
                message.clone(),
            )
            .await;
            return Err(Failure::new(reason::CONFLICT, message));
        }
        Ownership::Unowned if adopts(consumer) => {
            tracing::info!(consumer = %super::object_key(consumer), %client_id, "adopting client");
        }
        Ownership::Unowned => {
            let message = format!(
                "Keycloak client {client_id} in realm {realm} exists without an owner; \
                 annotate the Consumer with {}: \"true\" to adopt it",
                names::ADOPT_ANNOTATION
            );
            ctx.event(
                consumer,
                EventType::Warning,
                reason::CONFLICT,
                message.clone(),
            )
            .await;
            return Err(Failure::new(reason::CONFLICT, message));
        }
    }

    let changes = decide_client::changes(&observed, consumer, binding);
    if changes.is_empty() {
        return Ok(ClientSync { uuid });
    }
    // A changed client with an unchanged spec was edited by hand; changed claims alone follow
    // the certificates.
    let spec_seen = consumer.status.as_ref().and_then(|s| s.observed_generation)
        == consumer.metadata.generation;
    let drift = spec_seen && changes.update.is_some();
    apply_changes(kc, realm, &uuid, changes)
        .await
        .map_err(|e| Failure::from_keycloak(&e))?;

    if drift {
        let note =
            format!("Keycloak client {client_id} was changed outside the operator; corrected");
        ctx.event(consumer, EventType::Warning, event::DRIFT_CORRECTED, note)
            .await;
    } else {
        let note = format!("Updated Keycloak client {client_id}");
        ctx.event(consumer, EventType::Normal, event::CLIENT_UPDATED, note)
            .await;
    }
    tracing::info!(consumer = %super::object_key(consumer), %realm, %client_id, "client updated");
    Ok(ClientSync { uuid })
}

/// The thumbprints of the consumer's certificates to bind, from the certificates' statuses;
/// `except` leaves out one certificate (the one being deleted).
fn certificate_binding(
    consumer: &Consumer,
    ctx: &Context,
    except: Option<&str>,
) -> CertificateBinding {
    let certificates = ctx.stores.certificates();
    let views: Vec<_> = certificates
        .iter()
        .filter(|c| c.namespace() == consumer.namespace())
        .filter(|c| c.spec.consumer_ref.name == consumer.name_any())
        .filter(|c| c.metadata.deletion_timestamp.is_none() && c.uid().as_deref() != except)
        .filter_map(|c| {
            let created = c.metadata.creation_timestamp.as_ref()?.0.as_second();
            Some(crate::decide::certificate::CertificateView {
                status: c.status.as_ref()?,
                created: DateTime::from_timestamp(created, 0),
            })
        })
        .collect();
    crate::decide::certificate::binding(&views)
}

/// Brings the certificate claims of the consumer's client in line, leaving out the certificate
/// `except` (used by a ConsumerCertificate's finalizer, before it lets go).
pub async fn bind_certificates(
    consumer: &Consumer,
    ctx: &Context,
    except: Option<&str>,
) -> Result<(), Error> {
    let realm = decide_client::realm(&ctx.settings.realm_template, &consumer.spec.tenant_id);
    let client_id = decide_client::client_id(consumer);
    let kc = &ctx.keycloak;
    let Some(observed) = kc.find_client(&realm, &client_id).await? else {
        return Ok(());
    };
    if decide_client::ownership(&observed, consumer) != Ownership::Ours {
        return Ok(());
    }
    let uuid = observed.id.clone().unwrap_or_default();
    ctx.readiness.wait().await;
    let binding = certificate_binding(consumer, ctx, except);
    let changes = decide_client::changes(&observed, consumer, &binding);
    apply_changes(kc, &realm, &uuid, changes).await?;
    Ok(())
}

/// Writes the changes to the client, then its protocol mappers.
async fn apply_changes(
    kc: &keycloak::Keycloak,
    realm: &str,
    uuid: &str,
    changes: decide_client::ClientChanges,
) -> Result<(), keycloak::Error> {
    if let Some(update) = changes.update {
        kc.update_client(realm, uuid, update).await?;
    }
    if !changes.create_mappers.is_empty() {
        kc.create_mappers(realm, uuid, changes.create_mappers)
            .await?;
    }
    for mapper in changes.update_mappers {
        kc.update_mapper(realm, uuid, mapper).await?;
    }
    for id in &changes.delete_mappers {
        kc.delete_mapper(realm, uuid, id).await?;
    }
    Ok(())
}

fn adopts(consumer: &Consumer) -> bool {
    consumer
        .annotations()
        .get(names::ADOPT_ANNOTATION)
        .is_some_and(|v| v == "true")
}

fn owned_by(secret: &Secret, consumer: &Consumer) -> bool {
    let uid = consumer.uid();
    secret
        .owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && Some(&r.uid) == uid.as_ref())
}

fn observe(secret: &Secret) -> ObservedSecret {
    let data = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    let annotations = secret.annotations();
    let time = |key: &str| {
        annotations
            .get(key)
            .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    ObservedSecret {
        data,
        revision: annotations
            .get(keys::REVISION_ANNOTATION)
            .and_then(|v| v.parse().ok()),
        rotated_at: time(keys::ROTATED_AT_ANNOTATION),
        previous_valid_until: time(keys::PREVIOUS_VALID_UNTIL_ANNOTATION),
    }
}

async fn sync_credentials(
    consumer: &Consumer,
    ctx: &Context,
    realm: &str,
    client_id: &str,
    uuid: &str,
    secret: Option<&Secret>,
) -> Result<Result<CredentialsSync, Failure>, Error> {
    let kc = &ctx.keycloak;
    let now = Utc::now();
    let spec_revision = consumer.spec.credentials.revision;
    let observed = secret.map(observe);
    let attempt = async {
        let current = kc.client_secret(realm, uuid).await?;
        let needs_rotated = observed.as_ref().is_some_and(|o| {
            o.revision.is_some_and(|r| r < spec_revision) || o.previous_valid_until.is_some()
        }) || status_grace(consumer).is_some_and(|until| until > now);
        let rotated = if needs_rotated {
            kc.rotated_secret(realm, uuid).await?
        } else {
            None
        };
        Ok::<_, keycloak::Error>((current, rotated))
    };
    let (current, rotated) = match attempt.await {
        Ok(secrets) => secrets,
        Err(e) => return Ok(Err(Failure::from_keycloak(&e))),
    };

    let grace = consumer
        .spec
        .credentials
        .rotation_grace_period
        .to_std()
        .unwrap_or_default();
    let step = credentials::step(
        spec_revision,
        observed.as_ref(),
        &current,
        rotated.as_deref(),
        now,
    );
    let token_url = ctx.settings.token_url(realm);
    let inputs = |client_secret: &str, previous: Option<String>, rotated_at, until| {
        credentials::desired(credentials::Inputs {
            client_id,
            client_secret,
            token_url: &token_url,
            revision: spec_revision,
            previous: previous.as_deref(),
            rotated_at,
            previous_valid_until: until,
        })
    };
    let last = observed.clone().unwrap_or_default();
    let (desired, rotated_now) = match step {
        Step::Rotate => {
            let new = match kc.regenerate_secret(realm, uuid).await {
                Ok(new) => new,
                Err(e) => return Ok(Err(Failure::from_keycloak(&e))),
            };
            let until = now + chrono::Duration::from_std(grace).unwrap_or_default();
            (
                inputs(&new, Some(current.clone()), Some(now), Some(until)),
                true,
            )
        }
        Step::RecordRotation => {
            let until = now + chrono::Duration::from_std(grace).unwrap_or_default();
            (
                inputs(
                    &current,
                    last.client_secret().map(str::to_owned),
                    Some(now),
                    Some(until),
                ),
                true,
            )
        }
        Step::EndGrace => {
            if let Err(e) = kc.invalidate_rotated_secret(realm, uuid).await {
                return Ok(Err(Failure::from_keycloak(&e)));
            }
            let consumer_key = super::object_key(consumer);
            tracing::info!(consumer = %consumer_key, %client_id, "previous secret invalidated");
            (inputs(&current, None, last.rotated_at, None), false)
        }
        Step::Keep => {
            // The previous secret stays in the Secret while its grace lasts; a Secret deleted
            // during the grace gets it back from Keycloak's rotated secret.
            let until = last
                .previous_valid_until
                .or_else(|| status_grace(consumer))
                .filter(|u| *u > now);
            let previous = until.and(
                last.previous_client_secret()
                    .map(str::to_owned)
                    .or(rotated.clone()),
            );
            let rotated_at = last.rotated_at.or_else(|| status_rotated_at(consumer));
            (inputs(&current, previous, rotated_at, until), false)
        }
    };

    let secret_version = write_secret(consumer, ctx, secret, &desired)
        .await?
        .or_else(|| secret.and_then(|s| s.resource_version()));
    if rotated_now {
        let grace = &consumer.spec.credentials.rotation_grace_period;
        let note = format!(
            "Rotated the client secret of {client_id} to revision {spec_revision}; \
             the previous one works for {grace}"
        );
        ctx.event(
            consumer,
            EventType::Normal,
            event::CREDENTIALS_ROTATED,
            note,
        )
        .await;
        let consumer_key = super::object_key(consumer);
        let revision = spec_revision;
        tracing::info!(consumer = %consumer_key, %client_id, revision, "credentials rotated");
    }

    let annotation_time = |key: &str| desired.annotations.get(key).cloned();
    let grace_ends = annotation_time(keys::PREVIOUS_VALID_UNTIL_ANNOTATION)
        .and_then(|v| DateTime::parse_from_rfc3339(&v).ok())
        .map(|t| t.with_timezone(&Utc));
    Ok(Ok(CredentialsSync {
        status: CredentialsStatus {
            revision: spec_revision,
            rotated_at: annotation_time(keys::ROTATED_AT_ANNOTATION),
            previous_valid_until: annotation_time(keys::PREVIOUS_VALID_UNTIL_ANNOTATION),
        },
        grace_ends,
        secret_version,
    }))
}

fn status_grace(consumer: &Consumer) -> Option<DateTime<Utc>> {
    let value = consumer
        .status
        .as_ref()?
        .credentials
        .as_ref()?
        .previous_valid_until
        .as_ref()?;
    DateTime::parse_from_rfc3339(value)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn status_rotated_at(consumer: &Consumer) -> Option<DateTime<Utc>> {
    let value = consumer
        .status
        .as_ref()?
        .credentials
        .as_ref()?
        .rotated_at
        .as_ref()?;
    DateTime::parse_from_rfc3339(value)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Writes the Secret with server-side apply when its data or our annotations differ. A Secret
/// that was deleted or edited is put back, with a Warning event.
async fn write_secret(
    consumer: &Consumer,
    ctx: &Context,
    observed: Option<&Secret>,
    desired: &credentials::DesiredSecret,
) -> Result<Option<String>, Error> {
    let observed_view = observed.map(observe);
    let same_data = observed_view
        .as_ref()
        .is_some_and(|o| o.data == desired.data);
    let same_annotations = observed.is_some_and(|s| {
        desired
            .annotations
            .iter()
            .all(|(k, v)| s.annotations().get(k) == Some(v))
            && [
                keys::PREVIOUS_VALID_UNTIL_ANNOTATION,
                keys::ROTATED_AT_ANNOTATION,
            ]
            .iter()
            .all(|k| s.annotations().contains_key(*k) == desired.annotations.contains_key(*k))
    });
    if same_data && same_annotations {
        return Ok(None);
    }

    let name = consumer.secret_name();
    let namespace = consumer.namespace().unwrap_or_default();
    let owner = OwnerReference {
        api_version: Consumer::api_version(&()).into_owned(),
        kind: Consumer::kind(&()).into_owned(),
        name: consumer.name_any(),
        uid: consumer.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            labels: Some(BTreeMap::from([(
                names::MANAGED_BY_LABEL.to_owned(),
                names::MANAGED_BY.to_owned(),
            )])),
            annotations: Some(desired.annotations.clone()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(
            desired
                .data
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                .collect(),
        ),
        ..Default::default()
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PatchParams::apply(names::FIELD_MANAGER).force();
    let written = api.patch(&name, &params, &Patch::Apply(&secret)).await?;

    // An existing Secret whose client_secret no longer matched was edited or lost its value.
    let restored = match &observed_view {
        None => consumer
            .status
            .as_ref()
            .and_then(|s| s.secret_name.as_ref())
            .is_some(),
        Some(o) => {
            o.client_secret() != desired.data.get(keys::CLIENT_SECRET).map(String::as_str)
                && o.revision == Some(consumer.spec.credentials.revision)
        }
    };
    if restored {
        ctx.event(
            consumer,
            EventType::Warning,
            event::DRIFT_CORRECTED,
            format!("Secret {name} was deleted or edited and was restored from Keycloak"),
        )
        .await;
    }
    tracing::info!(consumer = %super::object_key(consumer), secret = %name, "secret written");
    Ok(written.resource_version())
}

async fn write_status(
    consumer: &Consumer,
    ctx: &Context,
    realm: &str,
    client_id: &str,
    outcome: Outcome,
) -> Result<(), Error> {
    let previous = consumer.status.clone().unwrap_or_default();
    let desired_conditions = conditions(consumer, &outcome);
    let ready = desired_conditions.iter().all(|c| c.status);

    let was_unavailable = previous
        .conditions
        .iter()
        .any(|c| c.type_ == cond::READY && c.reason == reason::KEYCLOAK_UNAVAILABLE);
    if let Some(failure) = outcome
        .client
        .as_ref()
        .err()
        .or(outcome.credentials.as_ref().err())
        && failure.reason == reason::KEYCLOAK_UNAVAILABLE
        && !was_unavailable
    {
        ctx.event(
            consumer,
            EventType::Warning,
            reason::KEYCLOAK_UNAVAILABLE,
            failure.message.clone(),
        )
        .await;
    }
    if let Err(failure) = &outcome.client
        && failure.reason == reason::INVALID_SPEC
    {
        ctx.event(
            consumer,
            EventType::Warning,
            reason::INVALID_SPEC,
            failure.message.clone(),
        )
        .await;
    }

    let phase = match (&outcome.client, consumer.spec.state) {
        (Ok(_), _) if !ready => ConsumerPhase::Pending,
        (Ok(_), ConsumerState::Active) => ConsumerPhase::Active,
        (Ok(_), ConsumerState::Suspended) => ConsumerPhase::Suspended,
        (Ok(_), ConsumerState::Blocked) => ConsumerPhase::Blocked,
        (Err(f), _) if f.reason == reason::KEYCLOAK_UNAVAILABLE => ConsumerPhase::Pending,
        (Err(_), _) => ConsumerPhase::Failed,
    };
    let client_ok = outcome.client.as_ref().ok();
    let status = ConsumerStatus {
        phase: Some(phase),
        conditions: condition::merge(
            &previous.conditions,
            desired_conditions,
            consumer.metadata.generation,
            Utc::now(),
        ),
        observed_generation: consumer.metadata.generation,
        realm: Some(realm.to_owned()),
        keycloak_client_id: Some(client_id.to_owned()),
        keycloak_client_uuid: client_ok
            .map(|c| c.uuid.clone())
            .or(previous.keycloak_client_uuid.clone()),
        secret_name: if outcome.credentials.is_ok() {
            Some(consumer.secret_name())
        } else {
            previous.secret_name.clone()
        },
        token_url: Some(ctx.settings.token_url(realm)),
        credentials: outcome
            .credentials
            .as_ref()
            .ok()
            .map(|c| c.status.clone())
            .or(previous.credentials.clone()),
    };
    if status == previous {
        return Ok(());
    }
    let api: Api<Consumer> = Api::namespaced(
        ctx.client.clone(),
        &consumer.namespace().unwrap_or_default(),
    );
    let patch = json!({
        "apiVersion": Consumer::api_version(&()),
        "kind": Consumer::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(names::FIELD_MANAGER).force();
    let written = api
        .patch_status(&consumer.name_any(), &params, &Patch::Apply(&patch))
        .await?;
    ctx.status_writes.record(
        super::object_key(consumer),
        consumer.resource_version(),
        written.resource_version(),
    );
    Ok(())
}

fn conditions(consumer: &Consumer, outcome: &Outcome) -> Vec<Desired> {
    let client = match &outcome.client {
        Ok(_) => Desired::new(
            cond::CLIENT_SYNCED,
            true,
            reason::RECONCILED,
            format!(
                "Keycloak client {} matches the spec",
                decide_client::client_id(consumer)
            ),
        ),
        Err(f) => Desired::new(cond::CLIENT_SYNCED, false, f.reason, f.message.clone()),
    };
    let credentials = match &outcome.credentials {
        Ok(_) => Desired::new(
            cond::CREDENTIALS_READY,
            true,
            reason::RECONCILED,
            format!(
                "Secret {} holds the current credentials",
                consumer.secret_name()
            ),
        ),
        Err(f) => Desired::new(cond::CREDENTIALS_READY, false, f.reason, f.message.clone()),
    };
    let ready = match (&outcome.client, &outcome.credentials) {
        (Ok(_), Ok(_)) => {
            let message = match consumer.spec.state {
                ConsumerState::Active => "client enabled, credentials ready".to_owned(),
                state => format!("{} consumer: client disabled", state.as_str()),
            };
            Desired::new(cond::READY, true, reason::RECONCILED, message)
        }
        (Err(f), _) | (_, Err(f)) => Desired::new(cond::READY, false, f.reason, f.message.clone()),
    };
    vec![ready, client, credentials]
}

/// Deletes the Keycloak client (unless the Orphan policy says otherwise) and the Secret.
async fn cleanup(consumer: &Consumer, ctx: &Context) -> Result<Action, Error> {
    ctx.verified.forget(&super::object_key(consumer));
    ctx.status_writes.forget(&super::object_key(consumer));
    let realm = decide_client::realm(&ctx.settings.realm_template, &consumer.spec.tenant_id);
    let client_id = decide_client::client_id(consumer);
    let orphan = consumer
        .annotations()
        .get(names::DELETION_POLICY_ANNOTATION)
        .is_some_and(|p| p == names::DELETION_POLICY_ORPHAN);

    if !orphan {
        let deleted = async {
            match ctx.keycloak.find_client(&realm, &client_id).await? {
                Some(client) if decide_client::ownership(&client, consumer) == Ownership::Ours => {
                    ctx.keycloak
                        .delete_client(&realm, client.id.as_deref().unwrap_or_default())
                        .await?;
                    Ok(true)
                }
                _ => Ok::<_, keycloak::Error>(false),
            }
        };
        match deleted.await {
            Ok(true) => {
                ctx.event(
                    consumer,
                    EventType::Normal,
                    event::CLIENT_DELETED,
                    format!("Deleted Keycloak client {client_id}"),
                )
                .await;
                let consumer_key = super::object_key(consumer);
                tracing::info!(consumer = %consumer_key, %client_id, "client deleted");
            }
            Ok(false) => {}
            // A missing realm holds no client.
            Err(keycloak::Error::RealmNotFound { .. }) => {}
            Err(error) => {
                let failure = Failure::from_keycloak(&error);
                let outcome = Outcome {
                    client: Err(Failure::new(
                        failure.reason,
                        format!("deleting: {}", failure.message),
                    )),
                    credentials: Err(Failure::new(
                        reason::DELETING,
                        "waiting for the Keycloak client to be deleted",
                    )),
                };
                write_status(consumer, ctx, &realm, &client_id, outcome).await?;
                return Err(error.into());
            }
        }
    }

    let secrets: Api<Secret> = Api::namespaced(
        ctx.client.clone(),
        &consumer.namespace().unwrap_or_default(),
    );
    if let Some(secret) = secrets.get_opt(&consumer.secret_name()).await?
        && owned_by(&secret, consumer)
    {
        match secrets
            .delete(&consumer.secret_name(), &Default::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_version(version: &str) -> Consumer {
        let mut consumer = Consumer::new("partner-1", crate::api::consumer::example_spec());
        consumer.metadata.resource_version = Some(version.into());
        consumer
    }

    fn verified() -> Verified {
        Verified {
            client: ClientSync {
                uuid: "uuid-1".into(),
            },
            credentials: CredentialsSync {
                status: CredentialsStatus::default(),
                grace_ends: None,
                secret_version: Some("7".into()),
            },
        }
    }

    #[test]
    fn a_full_sync_is_trusted_until_keycloak_recovers_from_an_outage() {
        let (recoveries, receiver) = tokio::sync::watch::channel(0);
        let cache = VerifiedCache::new(std::time::Duration::from_secs(600), receiver);
        let seen = Seen::of(&at_version("10"), None, &CertificateBinding::default());
        cache.record("ns/partner-1".into(), seen.clone(), verified());
        assert!(cache.recent("ns/partner-1", &seen).is_some());

        recoveries.send_replace(1);

        assert!(cache.recent("ns/partner-1", &seen).is_none());
    }

    #[test]
    fn a_consumer_is_behind_until_the_cache_shows_a_version_after_the_status_write() {
        let writes = StatusWrites::default();

        writes.record("ns/partner-1".into(), Some("10".into()), Some("11".into()));

        assert!(writes.is_behind("ns/partner-1", &at_version("10")));
        assert!(!writes.is_behind("ns/partner-1", &at_version("11")));
        assert!(
            !writes.is_behind("ns/partner-1", &at_version("10")),
            "forgotten once caught up"
        );
    }

    #[test]
    fn a_status_write_that_changed_nothing_on_the_server_leaves_nothing_to_wait_for() {
        let writes = StatusWrites::default();

        writes.record("ns/partner-1".into(), Some("10".into()), Some("10".into()));

        assert!(!writes.is_behind("ns/partner-1", &at_version("10")));
    }
}
