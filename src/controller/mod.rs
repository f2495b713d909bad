//! The I/O of reconciling: the shared context, errors and their backoff, events and status
//! writes, and `run`, which starts the controllers, the HTTP endpoints and leader election.

pub mod certificate;
pub mod consumer;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use k8s_openapi::{
    api::events::v1::Event,
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::PostParams,
    runtime::{controller::Action, events::EventType, reflector::Store},
};
use rand::Rng;

use crate::{
    api::{Consumer, ConsumerCertificate},
    cli::RunArgs,
    keycloak::{self, AdminCredentials, Keycloak},
    metrics::Metrics,
    names::{self, reason},
    server,
};

/// Everything a reconcile needs, shared by all of them.
pub struct Context {
    pub client: Client,
    pub keycloak: Keycloak,
    pub metrics: Arc<Metrics>,
    /// Who publishes the events: the controller name and this replica's identity.
    pub reporter: Reporter,
    pub settings: Settings,
    /// Consecutive failures per object, for the backoff.
    failures: std::sync::Mutex<HashMap<String, u32>>,
    /// The controllers' caches, for decisions that look across objects.
    pub stores: Stores,
    /// Whether those caches are filled.
    pub readiness: Arc<Readiness>,
    /// The last full sync of each Consumer.
    pub verified: consumer::VerifiedCache,
    /// The Consumer versions the last status writes replaced.
    pub status_writes: consumer::StatusWrites,
}

/// The reflector stores of every controller (one per watched namespace and kind).
#[derive(Default)]
pub struct Stores {
    consumers: std::sync::RwLock<Vec<Store<Consumer>>>,
    certificates: std::sync::RwLock<Vec<Store<ConsumerCertificate>>>,
}

impl Stores {
    pub fn add_consumers(&self, store: Store<Consumer>) {
        self.consumers.write().expect("not poisoned").push(store);
    }

    pub fn add_certificates(&self, store: Store<ConsumerCertificate>) {
        self.certificates.write().expect("not poisoned").push(store);
    }

    pub fn consumers(&self) -> Vec<Arc<Consumer>> {
        let stores = self.consumers.read().expect("not poisoned");
        stores.iter().flat_map(|s| s.state()).collect()
    }

    pub fn certificates(&self) -> Vec<Arc<ConsumerCertificate>> {
        let stores = self.certificates.read().expect("not poisoned");
        stores.iter().flat_map(|s| s.state()).collect()
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub realm_template: String,
    pub token_url_base: String,
    pub resync_interval: Duration,
}

impl Settings {
    pub fn token_url(&self, realm: &str) -> String {
        format!(
            "{}/realms/{realm}/protocol/openid-connect/token",
            self.token_url_base
        )
    }
}

/// Why a reconcile did not finish. Each variant has a metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Keycloak(#[from] keycloak::Error),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Keycloak refused or could not serve the reconcile; the status says the same.
    #[error("{message}")]
    Failed {
        reason: &'static str,
        message: String,
    },
    /// The certificate thumbprints could not be bound into the client's tokens.
    #[error("binding certificates: {0}")]
    Binding(String),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Keycloak(keycloak::Error::Unavailable { .. }) => reason::KEYCLOAK_UNAVAILABLE,
            Self::Keycloak(keycloak::Error::RealmNotFound { .. }) => reason::REALM_NOT_FOUND,
            Self::Keycloak(_) => reason::KEYCLOAK_ERROR,
            Self::Kube(_) => reason::KUBERNETES_ERROR,
            Self::Binding(_) => reason::KEYCLOAK_ERROR,
            Self::Failed { reason, .. } => reason,
            Self::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.metric_label(),
                _ => reason::KUBERNETES_ERROR,
            },
        }
    }
}

const MAX_BACKOFF: Duration = Duration::from_secs(120);

/// Backoff for a failing object: 1 s doubling to 2 minutes, with up to 50 % jitter so that
/// consumers failing together (Keycloak down) do not retry in lockstep.
pub fn backoff(failures: u32) -> Duration {
    let base = Duration::from_secs(1)
        .saturating_mul(1 << failures.min(9))
        .min(MAX_BACKOFF);
    let jitter = rand::rng().random_range(0.0..0.5);
    base.mul_f64(1.0 + jitter)
}

impl Context {
    fn record_failure(&self, key: String) -> Duration {
        let mut failures = self.failures.lock().expect("not poisoned");
        let count = failures.entry(key).or_insert(0);
        *count += 1;
        backoff(*count - 1)
    }

    fn record_success(&self, key: &str) {
        self.failures.lock().expect("not poisoned").remove(key);
    }

    /// Publishes an event on `object`. A failure to publish is logged, never fatal.
    ///
    /// NB: kube-runtime's `Recorder` keeps every event it published for six minutes to count
    /// repeats into a series. The operator publishes on transitions only, so a repeat is rare,
    /// and that cache was the largest allocation of a Keycloak outage (one event per Consumer:
    /// about 2 KB each, 20 MB at 10,000 Consumers). Events are created directly instead.
    pub async fn event<K>(&self, object: &K, type_: EventType, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let event = self.reporter.event(object, type_, reason, note);
        let namespace = object.meta().namespace.as_deref().unwrap_or("default");
        let events: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        if let Err(error) = events.create(&PostParams::default(), &event).await {
            tracing::warn!(%error, reason, "cannot publish event");
        }
    }
}

/// The reporting controller and instance of the operator's events.
#[derive(Debug, Clone)]
pub struct Reporter {
    pub controller: String,
    pub instance: String,
}

impl Reporter {
    /// An `events.k8s.io/v1` Event about `object`, named like kubectl's and client-go's: the
    /// object's name and the current time in hexadecimal nanoseconds.
    fn event<K>(&self, object: &K, type_: EventType, reason: &str, note: String) -> Event
    where
        K: Resource<DynamicType = ()>,
    {
        let now = k8s_openapi::jiff::Timestamp::now();
        let regarding = object.object_ref(&());
        let type_ = match type_ {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        };
        Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(&self.controller),
                    now.as_nanosecond()
                )),
                namespace: regarding.namespace.clone(),
                ..ObjectMeta::default()
            },
            action: Some("Reconcile".to_owned()),
            reason: Some(reason.to_owned()),
            note: Some(note),
            type_: Some(type_.to_owned()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        }
    }
}

fn object_key<K: Resource>(object: &K) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// The error policy shared by the controllers: count, log, back off with jitter.
pub fn on_error<K: Resource>(
    object: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
    kind: &'static str,
) -> Action {
    ctx.metrics.failed(kind, error.metric_label());
    let delay = ctx.record_failure(object_key(object.as_ref()));
    tracing::warn!(
        kind,
        object = %object_key(object.as_ref()),
        error = %error,
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// Runs the operator until SIGTERM or Ctrl-C.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let client = Client::try_default().await?;
    let credentials = AdminCredentials::from_dir(&args.keycloak_admin_credentials_dir)?;
    let keycloak_url = args.keycloak_url.trim_end_matches('/').to_owned();
    let keycloak = Keycloak::new(
        &keycloak::Config {
            url: keycloak_url.clone(),
            admin_realm: args.keycloak_admin_realm.clone(),
            credentials,
            ca_file: args.keycloak_ca_file.clone(),
        },
        metrics.clone(),
    )?;
    let identity = args
        .leader_election_identity
        .clone()
        .unwrap_or_else(hostname);
    let reporter = Reporter {
        controller: names::MANAGED_BY.to_owned(),
        instance: identity.clone(),
    };
    let settings = Settings {
        realm_template: args.realm_template.clone(),
        token_url_base: args
            .token_url_base
            .clone()
            .unwrap_or(keycloak_url)
            .trim_end_matches('/')
            .to_owned(),
        resync_interval: args.resync_interval,
    };
    let recoveries = keycloak.recoveries(&args.keycloak_url, &args.keycloak_admin_realm);
    let ready = Arc::new(AtomicBool::new(false));
    let watched = args
        .watch_namespace
        .iter()
        .filter(|n| !n.is_empty())
        .count()
        .max(1);
    let readiness = Readiness::new(2 * watched, ready.clone());
    let ctx = Arc::new(Context {
        reporter,
        client: client.clone(),
        keycloak,
        metrics: metrics.clone(),
        settings,
        failures: std::sync::Mutex::default(),
        stores: Stores::default(),
        readiness: readiness.clone(),
        verified: consumer::VerifiedCache::new(args.resync_interval, recoveries.clone()),
        status_writes: consumer::StatusWrites::default(),
    });

    let server = tokio::spawn(server::serve(
        args.metrics_addr,
        args.health_addr,
        metrics,
        ready.clone(),
    ));

    if args.leader_election {
        crate::lease::acquire(
            &client,
            &args.leader_election_namespace,
            &args.leader_election_name,
            &identity,
        )
        .await?;
    }

    let namespaces: Vec<String> = args
        .watch_namespace
        .iter()
        .filter(|n| !n.is_empty())
        .cloned()
        .collect();
    tracing::info!(
        namespaces = ?namespaces,
        concurrency = args.concurrency,
        realm_template = %args.realm_template,
        "starting controllers"
    );
    tokio::spawn(forget_failures_on_recovery(ctx.clone(), recoveries.clone()));
    let consumer_apis = namespaced(&client, &namespaces);
    let consumers = consumer::run(
        ctx.clone(),
        consumer_apis,
        args.concurrency,
        readiness.clone(),
        recoveries,
    );
    let certificates = certificate::run(
        ctx.clone(),
        namespaced(&client, &namespaces),
        args.concurrency,
        readiness,
    );
    tokio::select! {
        _ = futures::future::join(consumers, certificates) => {}
        result = server => result??,
    }
    if args.leader_election {
        crate::lease::release(
            &client,
            &args.leader_election_namespace,
            &args.leader_election_name,
            &identity,
        )
        .await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// One Api per watched namespace, or one for all namespaces.
fn namespaced<K>(client: &Client, namespaces: &[String]) -> Vec<Api<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    if namespaces.is_empty() {
        return vec![Api::all(client.clone())];
    }
    namespaces
        .iter()
        .map(|ns| Api::namespaced(client.clone(), ns))
        .collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "consumer-operator".to_owned())
}

/// Once Keycloak answers again, the backoff of the outage is forgotten: objects that now fail
/// for another reason (a realm still missing) retry from one second, not from minutes.
async fn forget_failures_on_recovery(
    ctx: Arc<Context>,
    mut recoveries: tokio::sync::watch::Receiver<u64>,
) {
    while recoveries.changed().await.is_ok() {
        ctx.failures.lock().expect("not poisoned").clear();
    }
}

/// Drops what the operator never reads before an object enters a cache: `managedFields` and
/// kubectl's last-applied copy of the whole object are most of a small object's size.
pub fn slim<K: ResourceExt>(object: &mut K) {
    object.managed_fields_mut().clear();
    object
        .annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

/// A stream that yields once per Keycloak recovery, for `Controller::reconcile_all_on`.
pub fn recovery_stream(
    recoveries: tokio::sync::watch::Receiver<u64>,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(recoveries, |mut receiver| async move {
        receiver.changed().await.ok()?;
        Some(((), receiver))
    })
}

/// `/readyz`: ready once every controller's store has its first full list. Decisions that look
/// across objects (certificate bindings, thumbprint uniqueness) wait for it too, so that a
/// restarted operator never acts on a half-filled cache.
pub struct Readiness {
    pending: std::sync::atomic::AtomicUsize,
    ready: Arc<AtomicBool>,
    synced: tokio::sync::watch::Sender<bool>,
}

impl Readiness {
    /// Expects `stores` stores to sync before the operator is ready.
    pub fn new(stores: usize, ready: Arc<AtomicBool>) -> Arc<Self> {
        let synced = tokio::sync::watch::channel(false).0;
        Arc::new(Self {
            pending: stores.into(),
            ready,
            synced,
        })
    }

    /// Counts `store` as synced once it has its first full list.
    pub fn track<K>(self: &Arc<Self>, store: Store<K>)
    where
        K: Resource + Clone + Send + Sync + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let readiness = self.clone();
        tokio::spawn(async move {
            // NB: a store's readiness wakes only its latest waiter (a oneshot channel underneath)
            // and the controller waits on the same store, so this waiter polls again until the
            // store answers.
            let synced = loop {
                let wait = store.wait_until_ready();
                if let Ok(result) = tokio::time::timeout(Duration::from_millis(100), wait).await {
                    break result.is_ok();
                }
            };
            tracing::debug!(kind = std::any::type_name::<K>(), synced, "store synced");
            if synced && readiness.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
                readiness.ready.store(true, Ordering::SeqCst);
                readiness.synced.send_replace(true);
            }
        });
    }

    /// Returns once every store has synced.
    pub async fn wait(&self) {
        let mut synced = self.synced.subscribe();
        // NB: the sender lives as long as `self`, so this cannot fail while we wait.
        let _ = synced.wait_for(|synced| *synced).await;
    }
}

/// Drives a controller's stream to its end; per-object outcomes are logged by the reconcilers.
pub async fn drain<T, E: std::fmt::Display>(results: impl futures::Stream<Item = Result<T, E>>) {
    use futures::StreamExt;
    results
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "controller event");
            }
        })
        .await;
}
