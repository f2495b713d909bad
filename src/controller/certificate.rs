//! Reconciles a ConsumerCertificate: reads its certificate (inline or from a Secret), evaluates
//! the state machine of `decide::certificate` at the current time, writes the status, and
//! requeues at the next instant something changes (a grace end, `notAfter`, the expiry warning).
//! The thumbprints reach Keycloak through the Consumer's reconcile, which this status triggers:
//! one writer per Keycloak client.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use chrono::Utc;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Resource, ResourceExt,
    api::{PartialObjectMeta, Patch, PatchParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        events::EventType,
        finalizer::{Event as Finalizer, finalizer},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;

use super::{Context, Error, Readiness, on_error};
use crate::{
    api::{
        Consumer, ConsumerCertificate,
        certificate::CertificateState,
        condition::{self, Desired},
    },
    decide::certificate::{self as decide, Change, Claim, Policy, Rejection, Seniority},
    names::{self, condition as cond, event, reason},
    x509,
};

const KIND: &str = "ConsumerCertificate";

/// Runs one controller per watched namespace and returns when they stop.
pub async fn run(
    ctx: Arc<Context>,
    apis: Vec<Api<ConsumerCertificate>>,
    concurrency: u16,
    readiness: Arc<Readiness>,
) {
    let controllers = apis.into_iter().map(|certificates| {
        // Only the name of a changed Consumer is needed to find its certificates (the Consumer
        // itself is read from the Consumer controller's cache), so that watch is metadata-only.
        let (secrets, consumers): (Api<Secret>, Api<PartialObjectMeta<Consumer>>) =
            match certificates.namespace() {
                Some(ns) => (
                    Api::namespaced(ctx.client.clone(), ns),
                    Api::namespaced(ctx.client.clone(), ns),
                ),
                None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
            };
        let (reader, writer) = reflector::store();
        let certificates = watcher(certificates, watcher::Config::default())
            .default_backoff()
            .modify(super::slim)
            .reflect(writer)
            .applied_objects();
        let controller = Controller::for_stream(certificates, reader)
            .with_config(controller::Config::default().concurrency(concurrency))
            .shutdown_on_signal();
        let store = controller.store();
        ctx.stores.add_certificates(store.clone());
        let by_secret = store.clone();
        let by_consumer = store.clone();
        let controller = controller
            .watches(
                secrets,
                watcher::Config::default().labels(names::WATCH_SELECTOR),
                move |secret: Secret| referencing(&by_secret, &secret),
            )
            .watches(
                consumers,
                watcher::Config::default(),
                move |consumer: PartialObjectMeta<Consumer>| {
                    certificates_of(&by_consumer, &consumer)
                },
            );
        readiness.track(store);
        super::drain(controller.run(reconcile, error_policy, ctx.clone()))
    });
    futures::future::join_all(controllers).await;
}

/// The ConsumerCertificates that read `secret`.
fn referencing(
    store: &Store<ConsumerCertificate>,
    secret: &Secret,
) -> Vec<ObjectRef<ConsumerCertificate>> {
    let namespace = secret.namespace();
    store
        .state()
        .into_iter()
        .filter(|c| c.namespace() == namespace)
        .filter(|c| {
            c.spec
                .secret_ref
                .as_ref()
                .is_some_and(|r| r.name == secret.name_any())
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// The ConsumerCertificates of `consumer`: re-evaluated when it appears or changes tenant.
fn certificates_of(
    store: &Store<ConsumerCertificate>,
    consumer: &PartialObjectMeta<Consumer>,
) -> Vec<ObjectRef<ConsumerCertificate>> {
    store
        .state()
        .into_iter()
        .filter(|c| c.namespace() == consumer.namespace())
        .filter(|c| c.spec.consumer_ref.name == consumer.name_any())
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

fn error_policy(certificate: Arc<ConsumerCertificate>, error: &Error, ctx: Arc<Context>) -> Action {
    on_error(certificate, error, ctx, KIND)
}

async fn reconcile(
    certificate: Arc<ConsumerCertificate>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = certificate.namespace().unwrap_or_default();
    let api: Api<ConsumerCertificate> = Api::namespaced(ctx.client.clone(), &namespace);
    let key = super::object_key(certificate.as_ref());

    let result = finalizer(
        &api,
        names::CERTIFICATE_FINALIZER,
        certificate,
        |event| async {
            match event {
                Finalizer::Apply(certificate) => apply(&certificate, &ctx).await,
                Finalizer::Cleanup(certificate) => cleanup(&certificate, &ctx).await,
            }
        },
    )
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));

    ctx.metrics.reconciled(KIND, started.elapsed());
    if result.is_ok() {
        ctx.record_success(&key);
    }
    result
}

async fn apply(certificate: &ConsumerCertificate, ctx: &Context) -> Result<Action, Error> {
    let namespace = certificate.namespace().unwrap_or_default();
    let consumers: Api<Consumer> = Api::namespaced(ctx.client.clone(), &namespace);
    let consumer = consumers
        .get_opt(&certificate.spec.consumer_ref.name)
        .await?;

    let policy = match Policy::from_spec(&certificate.spec, certificate.metadata.generation) {
        Ok(policy) => policy,
        Err(error) => {
            let failure = Rejection::new(reason::INVALID_SPEC, error.to_string());
            write_failure(certificate, ctx, &failure).await?;
            return Ok(Action::requeue(ctx.settings.resync_interval));
        }
    };
    let text = read_source(certificate, ctx).await?;
    let parsed = text.and_then(|pem| x509::parse_pem(&pem).map_err(|e| Rejection::from(&e)));
    ctx.readiness.wait().await;
    let taken = match &consumer {
        Some(consumer) => taken_by_others(certificate, consumer, ctx),
        None => Default::default(),
    };
    let now = Utc::now();
    let evaluation = decide::evaluate(
        &policy,
        certificate.status.as_ref(),
        parsed.as_ref(),
        &taken,
        now,
    );

    let mut status = evaluation.status;
    if consumer.is_none() {
        let message = format!(
            "Consumer {} does not exist in namespace {namespace}; nothing is bound",
            certificate.spec.consumer_ref.name
        );
        let previous = certificate
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let others: Vec<Desired> = status
            .conditions
            .iter()
            .filter(|c| c.type_ != cond::READY)
            .map(|c| {
                Desired::new(
                    cond::EXPIRING_SOON,
                    c.status == "True",
                    reason_of(&c.reason),
                    c.message.clone(),
                )
            })
            .collect();
        let mut desired = vec![Desired::new(
            cond::READY,
            false,
            reason::CONSUMER_NOT_FOUND,
            message,
        )];
        desired.extend(others);
        status.conditions =
            condition::merge(&previous, desired, certificate.metadata.generation, now);
    }

    record_metrics(certificate, certificate.status.as_ref(), &status, ctx);
    if certificate.status.as_ref() != Some(&status) {
        patch_status(certificate, ctx, json!(status)).await?;
    }
    publish_changes(certificate, ctx, &evaluation.changes).await;

    let mut requeue = ctx.settings.resync_interval;
    if let Some(at) = evaluation.next_wakeup {
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        requeue = requeue.min(wait + std::time::Duration::from_millis(20));
    }
    Ok(Action::requeue(requeue))
}

/// Reasons come back from the status as strings; the merge wants the constants.
fn reason_of(text: &str) -> &'static str {
    [
        reason::EXPIRING_SOON,
        reason::VALID,
        reason::EXPIRED,
        reason::REVOKED,
        reason::PENDING,
    ]
    .into_iter()
    .find(|r| *r == text)
    .unwrap_or(reason::VALID)
}

/// The PEM text of the certificate, or why there is none. Labels a referenced Secret so that
/// the label-filtered watch sees its changes (cert-manager renewals).
async fn read_source(
    certificate: &ConsumerCertificate,
    ctx: &Context,
) -> Result<Result<String, Rejection>, Error> {
    if let Some(pem) = &certificate.spec.pem {
        return Ok(Ok(pem.clone()));
    }
    let Some(reference) = &certificate.spec.secret_ref else {
        return Ok(Err(Rejection::new(
            reason::INVALID_SPEC,
            "neither pem nor secretRef is set".into(),
        )));
    };
    let namespace = certificate.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(secret) = secrets.get_opt(&reference.name).await? else {
        let message = format!(
            "Secret {} does not exist in namespace {namespace}",
            reference.name
        );
        return Ok(Err(Rejection::new(reason::SECRET_NOT_FOUND, message)));
    };
    if secret.labels().get(names::WATCH_LABEL).map(String::as_str) != Some("true") {
        let label = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "name": reference.name, "labels": { names::WATCH_LABEL: "true" } },
        });
        let params = PatchParams::apply(names::FIELD_MANAGER);
        secrets
            .patch(&reference.name, &params, &Patch::Apply(label))
            .await?;
    }
    let value = secret.data.as_ref().and_then(|d| d.get(&reference.key));
    Ok(match value {
        Some(bytes) => Ok(String::from_utf8_lossy(&bytes.0).into_owned()),
        None => Err(Rejection::new(
            reason::SECRET_NOT_FOUND,
            format!("Secret {} has no key {}", reference.name, reference.key),
        )),
    })
}

/// The thumbprints older claims of other consumers of the same tenant hold.
fn taken_by_others(
    certificate: &ConsumerCertificate,
    consumer: &Consumer,
    ctx: &Context,
) -> std::collections::BTreeSet<String> {
    let tenant = &consumer.spec.tenant_id;
    let consumers = ctx.stores.consumers();
    let tenant_of = |c: &ConsumerCertificate| {
        consumers
            .iter()
            .find(|k| k.namespace() == c.namespace() && k.name_any() == c.spec.consumer_ref.name)
            .map(|k| k.spec.tenant_id.clone())
    };
    let me_consumer = (
        certificate.namespace(),
        certificate.spec.consumer_ref.name.clone(),
    );
    let others: Vec<(Seniority, Vec<String>)> = ctx
        .stores
        .certificates()
        .iter()
        .filter(|c| (c.namespace(), c.spec.consumer_ref.name.clone()) != me_consumer)
        .filter(|c| c.meta().deletion_timestamp.is_none())
        .filter(|c| tenant_of(c).as_ref() == Some(tenant))
        .filter_map(|c| {
            let accepted = c.status.as_ref()?.accepted_x5t_s256.clone();
            Some((seniority(c), accepted))
        })
        .collect();
    let claims: Vec<Claim> = others
        .iter()
        .map(|(s, a)| Claim {
            seniority: s,
            accepted_x5t_s256: a,
        })
        .collect();
    decide::claimed_before(&seniority(certificate), &claims)
}

fn seniority(certificate: &ConsumerCertificate) -> Seniority {
    let created = certificate
        .meta()
        .creation_timestamp
        .as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.0.as_second(), 0))
        .unwrap_or_else(Utc::now);
    Seniority {
        created,
        key: super::object_key(certificate),
    }
}

async fn write_failure(
    certificate: &ConsumerCertificate,
    ctx: &Context,
    failure: &Rejection,
) -> Result<(), Error> {
    let previous = certificate.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    let ready = Desired::new(cond::READY, false, failure.reason, failure.message.clone());
    status.conditions = condition::merge(
        &previous.conditions,
        vec![ready],
        certificate.metadata.generation,
        Utc::now(),
    );
    status.observed_generation = certificate.metadata.generation;
    if status != previous {
        patch_status(certificate, ctx, json!(status)).await?;
    }
    Ok(())
}

async fn patch_status(
    certificate: &ConsumerCertificate,
    ctx: &Context,
    status: serde_json::Value,
) -> Result<(), Error> {
    let api: Api<ConsumerCertificate> = Api::namespaced(
        ctx.client.clone(),
        &certificate.namespace().unwrap_or_default(),
    );
    let patch = json!({
        "apiVersion": ConsumerCertificate::api_version(&()),
        "kind": ConsumerCertificate::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(names::FIELD_MANAGER).force();
    api.patch_status(&certificate.name_any(), &params, &Patch::Apply(&patch))
        .await?;
    Ok(())
}

fn record_metrics(
    certificate: &ConsumerCertificate,
    before: Option<&crate::api::ConsumerCertificateStatus>,
    status: &crate::api::ConsumerCertificateStatus,
    ctx: &Context,
) {
    use crate::metrics::{AcceptedLabels, CertificateLabels};
    let namespace = certificate.namespace().unwrap_or_default();
    let name = certificate.name_any();
    let labels = CertificateLabels {
        namespace: namespace.clone(),
        name: name.clone(),
    };
    match &status.current {
        Some(current) => {
            ctx.metrics
                .certificate_not_after
                .get_or_create(&labels)
                .set(current.not_after.timestamp());
        }
        None => {
            ctx.metrics.certificate_not_after.remove(&labels);
        }
    }
    let previous: BTreeMap<String, i64> = status
        .previous
        .iter()
        .map(|p| (p.sha256_fingerprint.clone(), p.accepted_until.timestamp()))
        .collect();
    let accepted_labels = |fingerprint: &str| AcceptedLabels {
        namespace: namespace.clone(),
        name: name.clone(),
        fingerprint: fingerprint.to_owned(),
    };
    for (fingerprint, until) in &previous {
        let labels = accepted_labels(fingerprint);
        ctx.metrics
            .certificate_accepted_until
            .get_or_create(&labels)
            .set(*until);
    }
    // A certificate whose grace ended leaves the metric with the status.
    for gone in before.iter().flat_map(|b| &b.previous) {
        if !previous.contains_key(&gone.sha256_fingerprint) {
            let labels = accepted_labels(&gone.sha256_fingerprint);
            ctx.metrics.certificate_accepted_until.remove(&labels);
        }
    }
}

async fn publish_changes(certificate: &ConsumerCertificate, ctx: &Context, changes: &[Change]) {
    let object = super::object_key(certificate);
    for change in changes {
        let (type_, reason, note) = match change {
            Change::FirstAccepted { x5t_s256 } => (
                EventType::Normal,
                reason::VALID,
                format!("Certificate {x5t_s256} accepted"),
            ),
            Change::Rotated { from, to } => (
                EventType::Normal,
                event::CERTIFICATE_ROTATED,
                format!(
                    "Certificate rotated from {from} to {to}; the old one is accepted for {}",
                    certificate.spec.grace_period
                ),
            ),
            Change::GraceEnded { x5t_s256 } => (
                EventType::Normal,
                event::CERTIFICATE_GRACE_ENDED,
                format!("Grace period of certificate {x5t_s256} ended; it is no longer accepted"),
            ),
            Change::Expired { x5t_s256 } => (
                EventType::Warning,
                reason::EXPIRED,
                format!("Certificate {x5t_s256} expired"),
            ),
            Change::Revoked => (
                EventType::Warning,
                reason::REVOKED,
                "Certificate revoked".to_owned(),
            ),
        };
        tracing::info!(certificate = %object, change = ?change, "certificate state changed");
        ctx.event(certificate, type_, reason, note).await;
    }
    let state = certificate.status.as_ref().and_then(|s| s.state);
    if state == Some(CertificateState::Expired) {
        ctx.metrics
            .certificate_not_after
            .remove(&crate::metrics::CertificateLabels {
                namespace: certificate.namespace().unwrap_or_default(),
                name: certificate.name_any(),
            });
    }
}

/// Takes the certificate's thumbprints out of its consumer's tokens before letting go.
async fn cleanup(certificate: &ConsumerCertificate, ctx: &Context) -> Result<Action, Error> {
    let namespace = certificate.namespace().unwrap_or_default();
    let consumers: Api<Consumer> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Some(consumer) = consumers
        .get_opt(&certificate.spec.consumer_ref.name)
        .await?
    {
        super::consumer::bind_certificates(&consumer, ctx, certificate.uid().as_deref()).await?;
    }
    let labels = crate::metrics::CertificateLabels {
        namespace,
        name: certificate.name_any(),
    };
    ctx.metrics.certificate_not_after.remove(&labels);
    Ok(Action::await_change())
}
