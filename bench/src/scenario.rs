//! The scenarios: onboarding against the floor with a restart, memory, and faults with an audit.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use consumer_operator::{
    api::Consumer,
    decide::client::{CertificateBinding, client_id, desired_client},
    names,
};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::{
    ByteString,
    api::core::v1::{Namespace, Secret},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::{Value, json};

use crate::{
    prom::Scrape,
    stack::{self, Env, Keycloak, Operator, admin_requests, load, operator_requests, reconciles},
};

const FIELD_MANAGER: &str = "consumer-operator-bench";

#[derive(Debug, clap::Args)]
pub struct OnboardArgs {
    /// Numbers of Consumers, one run each, e.g. 100,1000.
    #[arg(long, value_delimiter = ',', default_value = "100")]
    sizes: Vec<usize>,
    /// Applies in flight at once, and the floor's requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// The operator's --concurrency.
    #[arg(long, default_value_t = 32)]
    operator_concurrency: u16,
    /// Use the stack's Keycloak (shared with other tests, so its counters are not ours alone)
    /// instead of a private one.
    #[arg(long)]
    shared_keycloak: bool,
    /// Skip the floor.
    #[arg(long)]
    no_floor: bool,
    /// Bound of each wait, in seconds.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
}

#[derive(Debug, clap::Args)]
pub struct MemoryArgs {
    #[arg(long, default_value_t = 10_000)]
    consumers: usize,
    #[arg(long, default_value_t = 10_000)]
    secrets: usize,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// How long to watch the operator's memory once every Consumer was reconciled, in seconds.
    #[arg(long, default_value_t = 30)]
    observe: u64,
    /// Extra environment of the operator process, KEY=VALUE (repeatable).
    #[arg(long, value_parser = parse_key_value)]
    operator_env: Vec<(String, String)>,
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

#[derive(Debug, clap::Args)]
pub struct FaultArgs {
    #[arg(long, default_value_t = 1000)]
    n: usize,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[arg(long, default_value_t = 32)]
    operator_concurrency: u16,
    /// SIGKILL the operator (and start it again) this many times during the onboarding.
    #[arg(long, default_value_t = 0)]
    operator_kills: usize,
    /// SIGKILL the private Keycloak once during the onboarding, then start it on the same data.
    #[arg(long)]
    keycloak_kill: bool,
    /// SIGKILL the stack's kube-apiserver once during the onboarding, then start it again.
    #[arg(long)]
    apiserver_kill: bool,
    /// SIGKILL the stack's etcd once during the onboarding, then start it on the same data.
    #[arg(long)]
    etcd_kill: bool,
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
}

/// One fault injected during an onboarding. Each is a crash (SIGKILL) followed by a start.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Operator,
    Keycloak,
    /// A control-plane process of the stack, restarted by `stack/restart.sh`.
    ControlPlane(&'static str),
}

impl FaultArgs {
    /// The faults in the order they are injected, spread evenly over the onboarding.
    fn plan(&self) -> Vec<Fault> {
        let mut plan = vec![Fault::Operator; self.operator_kills];
        plan.extend(self.keycloak_kill.then_some(Fault::Keycloak));
        plan.extend(self.apiserver_kill.then_some(Fault::ControlPlane("kube-apiserver")));
        plan.extend(self.etcd_kill.then_some(Fault::ControlPlane("etcd")));
        plan
    }
}

/// The `gostoa.dev/v1alpha1` Consumer manifest the benchmark applies.
fn manifest(name: &str, tenant: &str) -> Value {
    json!({
        "apiVersion": format!("{}/{}", names::GROUP, names::VERSION),
        "kind": "Consumer",
        "metadata": { "name": name },
        "spec": {
            "externalId": name,
            "tenantId": tenant,
            "name": format!("Partner {name}"),
            "email": format!("ops@{name}.example"),
            "company": "Bench Corp",
        },
    })
}

fn consumer_name(i: usize) -> String {
    format!("c-{i:05}")
}

fn run_id(kind: &str, n: usize) -> String {
    format!("bench-{kind}-{n}-{}", chrono::Utc::now().format("%H%M%S"))
}

fn is_ready(consumer: &Consumer) -> bool {
    consumer.status.as_ref().is_some_and(|status| {
        status.conditions.iter().any(|c| {
            c.type_ == names::condition::READY
                && c.status == "True"
                && c.observed_generation == consumer.metadata.generation
        })
    })
}

/// Counts the Ready Consumers of a namespace from one watch (no per-object polling).
struct ReadyTracker {
    count: tokio::sync::watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyTracker {
    fn start(api: Api<Consumer>) -> Self {
        let (tx, rx) = tokio::sync::watch::channel(0usize);
        let task = tokio::spawn(async move {
            let mut ready: HashSet<String> = HashSet::new();
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                let Ok(event) = event else { continue };
                match event {
                    watcher::Event::Apply(c) | watcher::Event::InitApply(c) => {
                        if is_ready(&c) {
                            ready.insert(c.name_any());
                        } else {
                            ready.remove(&c.name_any());
                        }
                    }
                    watcher::Event::Delete(c) => {
                        ready.remove(&c.name_any());
                    }
                    watcher::Event::Init | watcher::Event::InitDone => {}
                }
                let _ = tx.send(ready.len());
            }
        });
        Self { count: rx, task }
    }

    async fn wait_for(&mut self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let reached = self.count.wait_for(|count| *count >= n);
        let outcome = tokio::time::timeout(timeout, reached)
            .await
            .map(|r| r.map(drop));
        match outcome {
            Ok(result) => result.context("the watch ended"),
            Err(_) => bail!(
                "only {} of {n} Consumers were Ready after {timeout:?}",
                self.ready()
            ),
        }
    }

    fn ready(&self) -> usize {
        *self.count.borrow()
    }
}

impl Drop for ReadyTracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &namespace).await?;
    Ok(())
}

/// Applies Consumers `0..n` with server-side apply, `concurrency` at once; returns the
/// seconds it took. An apply that fails is retried (the fault tests restart things).
async fn apply_consumers(
    api: &Api<Consumer>,
    tenant: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    stream::iter(0..n)
        .map(|i| {
            let params = params.clone();
            async move {
                let name = consumer_name(i);
                let body = manifest(&name, tenant);
                // Long enough for the API server or etcd to start again after a crash.
                let deadline = Instant::now() + Duration::from_secs(180);
                let mut attempt = 0;
                loop {
                    match api.patch(&name, &params, &Patch::Apply(&body)).await {
                        Ok(_) => return Ok(()),
                        Err(e) if Instant::now() < deadline => {
                            attempt += 1;
                            eprintln!("apply {name}: {e}; retrying");
                            let backoff = Duration::from_millis(250 * attempt.min(8));
                            tokio::time::sleep(backoff).await;
                        }
                        Err(e) => return Err(anyhow::anyhow!("apply {name}: {e}")),
                    }
                }
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(started.elapsed().as_secs_f64())
}

/// Waits until the operator's Keycloak request counter has not moved for `quiet` (bounded by
/// a minute), so that trailing requests of the run are counted in it.
async fn settle(
    operator: &Operator,
    http: &reqwest::Client,
    quiet: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = operator_requests(&operator.metrics(http).await?, None);
    let mut since = Instant::now();
    while since.elapsed() < quiet && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = operator_requests(&operator.metrics(http).await?, None);
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    Ok(())
}

fn sum_where(map: &BTreeMap<String, f64>, keep: impl Fn(&str) -> bool) -> f64 {
    // + 0.0 turns the -0.0 of an all-zero difference into 0.
    map.iter()
        .filter(|(k, _)| keep(k))
        .map(|(_, v)| v)
        .sum::<f64>()
        + 0.0
}

fn is_write(key: &str) -> bool {
    ["POST ", "PUT ", "DELETE ", "PATCH "]
        .iter()
        .any(|m| key.starts_with(m))
}

/// Prints one result line, stamped with the time and the operator's source revision.
fn emit(result: &Value) {
    let mut result = result.clone();
    result["at"] = json!(chrono::Utc::now().to_rfc3339());
    result["operator_revision"] = json!(stack::operator_revision());
    println!("{result}");
}

/// Removes the finalizers of every Consumer of the namespace, then deletes the namespace: the
/// benchmark's Keycloak realm is thrown away with it, so nothing needs the operator's cleanup.
async fn discard_namespace(client: &Client, namespace: &str) {
    let api: Api<Consumer> = Api::namespaced(client.clone(), namespace);
    if let Ok(list) = api.list(&ListParams::default()).await {
        let patch = json!({"metadata": {"finalizers": null}});
        stream::iter(list.items)
            .for_each_concurrent(32, |c| {
                let api = api.clone();
                let patch = patch.clone();
                async move {
                    let _ = api
                        .patch(
                            &c.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await;
                }
            })
            .await;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(namespace, &DeleteParams::default()).await;
}

async fn keycloak_for(env: &Env, shared: bool) -> anyhow::Result<Keycloak> {
    if shared {
        Ok(Keycloak::shared(env))
    } else {
        Keycloak::start_private(env)
    }
}

pub async fn onboard(args: OnboardArgs) -> anyhow::Result<()> {
    let env = Env::load()?;
    let client = env.kube().await?;
    let keycloak = keycloak_for(&env, args.shared_keycloak).await?;
    let result = async {
        for &n in &args.sizes {
            if !args.no_floor {
                floor(&keycloak, n, args.concurrency).await?;
            }
            onboard_one(&env, &client, &keycloak, n, &args).await?;
        }
        anyhow::Ok(())
    }
    .await;
    keycloak.stop();
    result
}

/// The same Keycloak work as the operator's onboarding, directly: create the client with the
/// operator's own representation, then read its secret, `concurrency` consumers at once.
async fn floor(keycloak: &Keycloak, n: usize, concurrency: usize) -> anyhow::Result<Value> {
    let realm = run_id("floor", n);
    keycloak.create_realm(&realm).await?;
    let clients: Vec<Value> = (0..n)
        .map(|i| {
            let name = consumer_name(i);
            let mut manifest = manifest(&name, &realm);
            manifest["metadata"]["namespace"] = json!(realm);
            let consumer: Consumer = serde_json::from_value(manifest).expect("a Consumer");
            serde_json::to_value(desired_client(&consumer, &CertificateBinding::default()))
                .expect("client JSON")
        })
        .collect();
    keycloak.admin_token().await?;
    let before = keycloak.metrics().await?;
    let logins_before = keycloak.logins.load(Ordering::Relaxed);
    let load_before = load();

    let started = Instant::now();
    let realm_ref = realm.as_str();
    let statuses: Vec<(u16, u16)> = stream::iter(clients.iter())
        .map(|body| async move {
            let realm = realm_ref;
            let (created, location, _) = keycloak
                .admin(
                    reqwest::Method::POST,
                    &format!("/{realm}/clients"),
                    Some(body),
                )
                .await?;
            let uuid = location
                .as_deref()
                .and_then(|l| l.rsplit('/').next())
                .unwrap_or_default();
            let (read, _, secret) = keycloak
                .admin(
                    reqwest::Method::GET,
                    &format!("/{realm}/clients/{uuid}/client-secret"),
                    None,
                )
                .await?;
            anyhow::ensure!(secret["value"].is_string(), "no secret value for {uuid}");
            anyhow::Ok((created, read))
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    let seconds = started.elapsed().as_secs_f64();

    let after = keycloak.metrics().await?;
    let requests = admin_requests(&before, &after);
    let failed = statuses
        .iter()
        .filter(|(c, r)| *c != 201 || *r != 200)
        .count();
    let result = json!({
        "scenario": "floor",
        "n": n,
        "concurrency": concurrency,
        "seconds": seconds,
        "consumers_per_second": n as f64 / seconds,
        "failed": failed,
        "keycloak_admin_requests": requests,
        "keycloak_admin_requests_per_consumer": requests.values().sum::<f64>() / n as f64,
        "bench_admin_logins": keycloak.logins.load(Ordering::Relaxed) - logins_before,
        "load_before": load_before,
        "load_after": load(),
    });
    emit(&result);
    keycloak.delete_realm(&realm).await;
    Ok(result)
}

async fn onboard_one(
    env: &Env,
    client: &Client,
    keycloak: &Keycloak,
    n: usize,
    args: &OnboardArgs,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(args.timeout);
    let tenant = run_id("onboard", n);
    create_namespace(client, &tenant).await?;
    keycloak.create_realm(&tenant).await?;
    let api: Api<Consumer> = Api::namespaced(client.clone(), &tenant);
    let mut operator = Operator::start(env, &keycloak.url, &[&tenant], args.operator_concurrency)?;
    operator
        .wait_ready(&keycloak.http, Duration::from_secs(60))
        .await?;
    let mut tracker = ReadyTracker::start(api.clone());
    let kc_before = keycloak.metrics().await?;
    let op_before = operator.metrics(&keycloak.http).await?;
    let cpu_before = operator.cpu_seconds();
    let load_before = load();

    let started = Instant::now();
    let apply_seconds = apply_consumers(&api, &tenant, n, args.concurrency).await?;
    tracker.wait_for(n, timeout).await?;
    let seconds = started.elapsed().as_secs_f64();
    let load_at_ready = load();
    let op_at_ready = operator.metrics(&keycloak.http).await?;
    settle(&operator, &keycloak.http, Duration::from_secs(3)).await?;

    let kc_after = keycloak.metrics().await?;
    let op_after = operator.metrics(&keycloak.http).await?;
    let (hwm, rss) = operator.memory_kib();
    let requests = admin_requests(&kc_before, &kc_after);
    let op_requests = Scrape::diff_by(
        &op_before,
        &op_after,
        "consumer_operator_keycloak_requests_total",
        &["operation", "status"],
        |_| true,
    );
    let logins = operator_requests(&op_after, Some("admin_login"))
        - operator_requests(&op_before, Some("admin_login"));
    let op_total = operator_requests(&op_after, None) - operator_requests(&op_before, None);
    let op_total_at_ready =
        operator_requests(&op_at_ready, None) - operator_requests(&op_before, None);
    emit(&json!({
        "scenario": "onboard",
        "n": n,
        "apply_concurrency": args.concurrency,
        "operator_concurrency": args.operator_concurrency,
        "seconds_until_all_ready": seconds,
        "apply_seconds": apply_seconds,
        "consumers_per_second": n as f64 / seconds,
        "keycloak_admin_requests": requests,
        "keycloak_admin_requests_per_consumer": requests.values().sum::<f64>() / n as f64,
        "keycloak_admin_writes_per_consumer": sum_where(&requests, is_write) / n as f64,
        "operator_keycloak_requests": op_requests,
        "operator_keycloak_requests_per_consumer_excluding_logins": (op_total - logins) / n as f64,
        "operator_keycloak_requests_at_ready_per_consumer": op_total_at_ready / n as f64,
        "admin_logins": logins,
        "reconciles": reconciles(&op_after, "Consumer") - reconciles(&op_before, "Consumer"),
        "operator_cpu_seconds": operator.cpu_seconds() - cpu_before,
        "operator_vm_hwm_kib": hwm,
        "operator_vm_rss_kib": rss,
        "load_before": load_before,
        "load_at_ready": load_at_ready,
    }));

    restart(keycloak, &mut operator, &tracker, n).await?;
    drop(tracker);
    drop(operator);
    discard_namespace(client, &tenant).await;
    keycloak.delete_realm(&tenant).await;
    Ok(())
}

/// With `n` Ready Consumers: restart the operator, time until it has reconciled every one, and
/// count Keycloak's requests meanwhile (writes must be zero).
async fn restart(
    keycloak: &Keycloak,
    operator: &mut Operator,
    tracker: &ReadyTracker,
    n: usize,
) -> anyhow::Result<()> {
    operator.stop();
    let kc_before = keycloak.metrics().await?;
    let load_before = load();

    let started = Instant::now();
    operator.restart()?;
    operator
        .wait_ready(&keycloak.http, Duration::from_secs(120))
        .await?;
    let ready_seconds = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let scrape = operator.metrics(&keycloak.http).await?;
        if reconciles(&scrape, "Consumer") >= n as f64 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the restarted operator reconciled {} of {n}",
                reconciles(&scrape, "Consumer")
            );
        }
        // The operator's own counter, read at 10 Hz: there is no event to watch for a reconcile
        // that changes nothing.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let load_at_done = load();
    settle(operator, &keycloak.http, Duration::from_secs(3)).await?;

    let kc_after = keycloak.metrics().await?;
    let op_after = operator.metrics(&keycloak.http).await?;
    let requests = admin_requests(&kc_before, &kc_after);
    let (hwm, rss) = operator.memory_kib();
    emit(&json!({
        "scenario": "restart",
        "n": n,
        "seconds_until_readyz": ready_seconds,
        "seconds_until_all_reconciled": seconds,
        "reconciles": reconciles(&op_after, "Consumer"),
        "ready_consumers_after": tracker.ready(),
        "keycloak_admin_requests": requests,
        "keycloak_admin_writes": sum_where(&requests, is_write),
        "keycloak_admin_reads": sum_where(&requests, |k| k.starts_with("GET ")),
        "admin_logins": operator_requests(&op_after, Some("admin_login")),
        "operator_vm_hwm_kib": hwm,
        "operator_vm_rss_kib": rss,
        "load_before": load_before,
        "load_at_done": load_at_done,
    }));
    Ok(())
}

pub async fn memory(args: MemoryArgs) -> anyhow::Result<()> {
    let env = Env::load()?;
    let client = env.kube().await?;
    let id = chrono::Utc::now().format("%H%M%S");
    let (consumers_ns, secrets_ns) = (format!("bench-mem-c-{id}"), format!("bench-mem-s-{id}"));
    create_namespace(&client, &consumers_ns).await?;
    create_namespace(&client, &secrets_ns).await?;
    let api: Api<Consumer> = Api::namespaced(client.clone(), &consumers_ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &secrets_ns);
    let started = Instant::now();
    apply_consumers(&api, "bench-mem", args.consumers, args.concurrency).await?;
    stream::iter(0..args.secrets)
        .map(|i| {
            let secrets = secrets.clone();
            async move {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(format!("unrelated-{i:05}")),
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([(
                        "payload".to_owned(),
                        ByteString(vec![b'x'; 512]),
                    )])),
                    ..Default::default()
                };
                secrets
                    .create(&PostParams::default(), &secret)
                    .await
                    .map(drop)
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    eprintln!(
        "applied {} Consumers and {} Secrets in {:.1?}",
        args.consumers,
        args.secrets,
        started.elapsed()
    );

    // Nothing listens at this address: the operator sees a Keycloak that is down, so it creates
    // no client, and the memory measured is that of its caches and work queue.
    let closed = format!("http://127.0.0.1:{}", stack::free_port());
    let http = reqwest::Client::new();
    let load_before = load();
    let started = Instant::now();
    let namespaces = [consumers_ns.as_str(), secrets_ns.as_str()];
    let operator = Operator::start_with_env(&env, &closed, &namespaces, 16, &args.operator_env)?;
    operator.wait_ready(&http, Duration::from_secs(600)).await?;
    let readyz_seconds = started.elapsed().as_secs_f64();
    let (hwm_at_readyz, rss_at_readyz) = operator.memory_kib();
    let deadline = Instant::now() + Duration::from_secs(1200);
    while reconciles(&operator.metrics(&http).await?, "Consumer") < args.consumers as f64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "not every Consumer was reconciled in 20 min"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let reconciled_seconds = started.elapsed().as_secs_f64();
    let mut rss_max = 0;
    let observe_until = Instant::now() + Duration::from_secs(args.observe);
    while Instant::now() < observe_until {
        rss_max = rss_max.max(operator.memory_kib().1);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (hwm, rss) = operator.memory_kib();
    let operator_env: Vec<String> = args
        .operator_env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    emit(&json!({
        "scenario": "memory",
        "consumers": args.consumers,
        "unrelated_secrets": args.secrets,
        "keycloak": "a closed port (nothing listening): no client is created",
        "operator_env": operator_env,
        "seconds_until_readyz": readyz_seconds,
        "seconds_until_all_reconciled_once": reconciled_seconds,
        "vm_hwm_kib_at_readyz": hwm_at_readyz,
        "vm_rss_kib_at_readyz": rss_at_readyz,
        "vm_rss_kib_max_observed": rss_max,
        "observe_seconds": args.observe,
        "vm_hwm_kib": hwm,
        "vm_rss_kib": rss,
        "operator_cpu_seconds": operator.cpu_seconds(),
        "load_before": load_before,
        "load_after": load(),
    }));
    drop(operator);
    discard_namespace(&client, &consumers_ns).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces
        .delete(&secrets_ns, &DeleteParams::default())
        .await;
    Ok(())
}

pub async fn faults(args: FaultArgs) -> anyhow::Result<()> {
    let env = Env::load()?;
    let client = env.kube().await?;
    let keycloak = Keycloak::start_private(&env)?;
    let result = faults_in(&env, &client, &keycloak, &args).await;
    keycloak.stop();
    let passed = result.as_ref().is_ok_and(|audit| audit["passed"] == true);
    if let Ok(audit) = &result {
        emit(audit);
    }
    match result {
        Err(e) => Err(e),
        Ok(_) if !passed => bail!("the audit failed"),
        Ok(_) => Ok(()),
    }
}

async fn faults_in(
    env: &Env,
    client: &Client,
    keycloak: &Keycloak,
    args: &FaultArgs,
) -> anyhow::Result<Value> {
    let n = args.n;
    let tenant = run_id("faults", n);
    create_namespace(client, &tenant).await?;
    keycloak.create_realm(&tenant).await?;
    let api: Api<Consumer> = Api::namespaced(client.clone(), &tenant);
    let mut operator = Operator::start(env, &keycloak.url, &[&tenant], args.operator_concurrency)?;
    operator
        .wait_ready(&keycloak.http, Duration::from_secs(60))
        .await?;
    let mut tracker = ReadyTracker::start(api.clone());
    let kc_before = keycloak.metrics().await?;
    let load_before = load();
    let started = Instant::now();

    let applying = {
        let api = api.clone();
        let tenant = tenant.clone();
        let concurrency = args.concurrency;
        tokio::spawn(async move { apply_consumers(&api, &tenant, n, concurrency).await })
    };
    let plan = args.plan();
    let mut faults = Vec::new();
    for (i, fault) in plan.iter().enumerate() {
        let at = n * (i + 1) / (plan.len() + 1);
        tracker
            .wait_for(at, Duration::from_secs(args.timeout))
            .await?;
        let ready_at_fault = tracker.ready();
        let at_seconds = started.elapsed().as_secs_f64();
        let crashed = Instant::now();
        match fault {
            Fault::Operator => operator.respawn_after_kill()?,
            Fault::Keycloak => restart_keycloak(env, keycloak)?,
            Fault::ControlPlane(name) => {
                let script = stack::repo_root().join("stack/restart.sh");
                let status = std::process::Command::new(script).arg(name).status()?;
                anyhow::ensure!(status.success(), "stack/restart.sh {name} failed");
            }
        }
        faults.push(json!({
            "fault": format!("{fault:?} SIGKILL and start"),
            "ready_at_fault": ready_at_fault,
            "at_seconds": at_seconds,
            "seconds_until_started_again": crashed.elapsed().as_secs_f64(),
        }));
    }
    let apply_seconds = applying.await??;
    tracker
        .wait_for(n, Duration::from_secs(args.timeout))
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    settle(&operator, &keycloak.http, Duration::from_secs(3)).await?;
    let kc_after = keycloak.metrics().await?;

    let mut audit = audit(client, keycloak, &tenant, n).await?;
    let requests = if args.keycloak_kill {
        // Keycloak's counters start from zero when it starts again: no diff is meaningful.
        json!("not measured: the Keycloak restart reset its counters")
    } else {
        json!(admin_requests(&kc_before, &kc_after))
    };
    anyhow::ensure!(
        operator.is_running(),
        "the operator exited during the run (see {})",
        operator.log.display()
    );
    let extra = json!({
        "scenario": "faults",
        "n": n,
        "faults": faults,
        "apply_seconds": apply_seconds,
        "seconds_until_all_ready": seconds,
        "keycloak_admin_requests": requests,
        "load_before": load_before,
        "load_after": load(),
        "operator_log": operator.log.display().to_string(),
    });
    audit
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    drop(tracker);
    drop(operator);
    discard_namespace(client, &tenant).await;
    Ok(audit)
}

/// SIGKILLs the private Keycloak and starts it again on the same data and ports.
fn restart_keycloak(env: &Env, keycloak: &Keycloak) -> anyhow::Result<()> {
    let dir = keycloak
        .private_dir()
        .context("a private Keycloak")?
        .display()
        .to_string();
    let port = |url: &str| url.rsplit(':').next().unwrap_or_default().to_owned();
    let ports = [port(&keycloak.url), port(&keycloak.management_url)];
    for action in ["kill", "start"] {
        let status = std::process::Command::new(env.get("KEYCLOAK_SH"))
            .args([action, &dir, &ports[0], &ports[1]])
            .envs(&env.0)
            .status()?;
        anyhow::ensure!(status.success(), "stack/keycloak.sh {action} failed");
    }
    Ok(())
}

/// Every Consumer Ready; exactly one Keycloak client per Consumer, owned by it; no client of the
/// tenant without a Consumer; every Secret's credentials obtain a token.
async fn audit(
    client: &Client,
    keycloak: &Keycloak,
    tenant: &str,
    n: usize,
) -> anyhow::Result<Value> {
    let api: Api<Consumer> = Api::namespaced(client.clone(), tenant);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), tenant);
    let consumers = api.list(&ListParams::default()).await?.items;
    let not_ready: Vec<String> = consumers
        .iter()
        .filter(|c| !is_ready(c))
        .map(|c| c.name_any())
        .collect();
    let expected: HashMap<String, String> = consumers
        .iter()
        .map(|c| (client_id(c), format!("{tenant}/{}", c.name_any())))
        .collect();

    let clients = keycloak.clients(tenant).await?;
    let mut per_client_id: HashMap<String, Vec<&Value>> = HashMap::new();
    for c in &clients {
        per_client_id
            .entry(c["clientId"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(c);
    }
    let missing: Vec<&String> = expected
        .keys()
        .filter(|id| !per_client_id.contains_key(*id))
        .collect();
    let duplicated: Vec<&String> = per_client_id
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, _)| k)
        .collect();
    let orphans: Vec<&String> = per_client_id
        .keys()
        .filter(|id| id.starts_with(&format!("{tenant}-")) && !expected.contains_key(*id))
        .collect();
    let wrong_owner: Vec<&String> = expected
        .iter()
        .filter(|(id, owner)| {
            per_client_id.get(*id).is_some_and(|cs| {
                cs.iter().any(|c| {
                    c["attributes"][names::attributes::OWNER].as_str() != Some(owner.as_str())
                })
            })
        })
        .map(|(id, _)| id)
        .collect();

    let token_failures: Vec<String> = stream::iter(consumers.iter())
        .map(|c| {
            let secrets = secrets.clone();
            async move {
                let name = format!("{}-credentials", c.name_any());
                let Ok(secret) = secrets.get(&name).await else {
                    return Some(format!("{name}: missing"));
                };
                let data = secret.data.unwrap_or_default();
                let text = |k: &str| {
                    data.get(k)
                        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                        .unwrap_or_default()
                };
                let ok = keycloak
                    .token_works(
                        &text(names::secret::TOKEN_URL),
                        &text(names::secret::CLIENT_ID),
                        &text(names::secret::CLIENT_SECRET),
                    )
                    .await;
                (!ok).then(|| format!("{name}: no token"))
            }
        })
        .buffer_unordered(16)
        .filter_map(|x| async move { x })
        .collect()
        .await;

    let passed = consumers.len() == n
        && not_ready.is_empty()
        && missing.is_empty()
        && duplicated.is_empty()
        && orphans.is_empty()
        && wrong_owner.is_empty()
        && token_failures.is_empty();
    let ours = per_client_id
        .keys()
        .filter(|id| id.starts_with(&format!("{tenant}-")))
        .count();
    Ok(json!({
        "passed": passed,
        "consumers": consumers.len(),
        "not_ready": not_ready,
        "keycloak_clients_of_tenant": ours,
        "missing_clients": missing,
        "duplicated_clients": duplicated,
        "orphan_clients": orphans,
        "clients_with_wrong_owner": wrong_owner,
        "secrets_without_token": token_failures,
    }))
}

#[derive(Debug, clap::Args)]
pub struct CertArgs {
    /// Number of Consumers, each with one ConsumerCertificate that is rotated once.
    #[arg(long, default_value_t = 100)]
    n: usize,
    #[arg(long, default_value = "10s")]
    grace_period: String,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

/// A self-signed end-entity certificate (not a CA), P-256, valid 30 days, from openssl.
fn certificate_pem(subject: &str) -> anyhow::Result<String> {
    let output = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args([
            "-keyout",
            "/dev/null",
            "-days",
            "30",
            "-subj",
            &format!("/CN={subject}"),
        ])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

fn certificate_manifest(name: &str, pem: &str, grace: &str) -> Value {
    json!({
        "apiVersion": format!("{}/{}", names::GROUP, names::VERSION),
        "kind": "ConsumerCertificate",
        "metadata": { "name": name },
        "spec": { "consumerRef": { "name": name }, "pem": pem, "gracePeriod": grace },
    })
}

/// For `n` certificates rotated at once with a short grace: the distribution of (the moment the
/// watch sees the old thumbprint leave `status.acceptedX5tS256`) - (its `acceptedUntil`).
pub async fn certificates(args: CertArgs) -> anyhow::Result<()> {
    use consumer_operator::api::ConsumerCertificate;
    let env = Env::load()?;
    let client = env.kube().await?;
    let keycloak = Keycloak::start_private(&env)?;
    let result = async {
        let n = args.n;
        let tenant = run_id("certs", n);
        create_namespace(&client, &tenant).await?;
        keycloak.create_realm(&tenant).await?;
        let consumers: Api<Consumer> = Api::namespaced(client.clone(), &tenant);
        let certs: Api<ConsumerCertificate> = Api::namespaced(client.clone(), &tenant);
        let operator = Operator::start(&env, &keycloak.url, &[&tenant], 32)?;
        operator
            .wait_ready(&keycloak.http, Duration::from_secs(60))
            .await?;
        let mut tracker = ReadyTracker::start(consumers.clone());
        apply_consumers(&consumers, &tenant, n, args.concurrency).await?;
        tracker
            .wait_for(n, Duration::from_secs(args.timeout))
            .await?;

        let pems = |prefix: &str| -> anyhow::Result<Vec<String>> {
            (0..n)
                .map(|i| certificate_pem(&format!("{prefix}-{i}")))
                .collect()
        };
        let (old, new) = (pems("old")?, pems("new")?);
        let apply_all = |pems: Vec<String>| {
            let certs = certs.clone();
            let grace = args.grace_period.clone();
            async move {
                let params = PatchParams::apply(FIELD_MANAGER).force();
                stream::iter(pems.into_iter().enumerate())
                    .map(|(i, pem)| {
                        let (certs, params, grace) = (certs.clone(), params.clone(), grace.clone());
                        async move {
                            let name = consumer_name(i);
                            let body = certificate_manifest(&name, &pem, &grace);
                            certs
                                .patch(&name, &params, &Patch::Apply(&body))
                                .await
                                .map(drop)
                        }
                    })
                    .buffer_unordered(args.concurrency)
                    .try_collect::<Vec<()>>()
                    .await
            }
        };

        // Watch every certificate: the first thumbprint seen as current is the old one; record
        // each old thumbprint's acceptedUntil, and when it leaves the accepted set.
        let (done_tx, mut done_rx) = tokio::sync::watch::channel(Vec::<(String, f64)>::new());
        let watch_task = {
            let certs = certs.clone();
            tokio::spawn(async move {
                let mut first: HashMap<String, String> = HashMap::new();
                let mut until: HashMap<String, chrono::DateTime<chrono::Utc>> = HashMap::new();
                let mut done: Vec<(String, f64)> = Vec::new();
                let mut seen_done: HashSet<String> = HashSet::new();
                let mut events = watcher(certs, watcher::Config::default())
                    .default_backoff()
                    .boxed();
                while let Some(Ok(event)) = events.next().await {
                    let (watcher::Event::Apply(c) | watcher::Event::InitApply(c)) = event else {
                        continue;
                    };
                    let now = chrono::Utc::now();
                    let name = c.name_any();
                    let Some(status) = c.status.as_ref() else {
                        continue;
                    };
                    let Some(current) = status.current.as_ref() else {
                        continue;
                    };
                    let old = first
                        .entry(name.clone())
                        .or_insert_with(|| current.x5t_s256.clone())
                        .clone();
                    if let Some(p) = status.previous.iter().find(|p| p.x5t_s256 == old) {
                        until.insert(name.clone(), p.accepted_until);
                    }
                    if current.x5t_s256 != old
                        && !status.accepted_x5t_s256.contains(&old)
                        && !seen_done.contains(&name)
                        && let Some(until) = until.get(&name)
                    {
                        seen_done.insert(name.clone());
                        let lateness = (now - *until).num_microseconds().unwrap_or(0) as f64 / 1e6;
                        done.push((name, lateness));
                        let _ = done_tx.send(done.clone());
                    }
                }
            })
        };
        apply_all(old).await?;
        // Every certificate bound (its thumbprint current) before the rotation starts.
        let deadline = Instant::now() + Duration::from_secs(args.timeout);
        loop {
            let list = certs.list(&ListParams::default()).await?.items;
            let is_bound = |c: &&ConsumerCertificate| {
                c.status
                    .as_ref()
                    .is_some_and(|s| s.current.is_some() && !s.accepted_x5t_s256.is_empty())
            };
            let bound = list.iter().filter(is_bound).count();
            if bound == n {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{bound} of {n} certificates bound"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let load_before = load();
        let rotated_at = Instant::now();
        apply_all(new).await?;
        let rotate_seconds = rotated_at.elapsed().as_secs_f64();
        let complete = done_rx.wait_for(|d| d.len() >= n);
        tokio::time::timeout(Duration::from_secs(args.timeout), complete).await??;
        let mut lateness: Vec<f64> = done_rx.borrow().iter().map(|(_, l)| *l).collect();
        watch_task.abort();
        lateness.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| lateness[((lateness.len() as f64 - 1.0) * p).round() as usize];
        emit(&json!({
            "scenario": "certificates",
            "n": n,
            "grace_period": args.grace_period,
            "rotate_apply_seconds": rotate_seconds,
            "removal_minus_accepted_until_seconds": {
                "min": pct(0.0), "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
                "max": pct(1.0),
            },
            "load_before": load_before,
            "load_after": load(),
        }));
        // The certificates' finalizers are the operator's to remove: delete them while it runs.
        certs
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while !certs.list(&ListParams::default()).await?.items.is_empty()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        drop(tracker);
        drop(operator);
        discard_namespace(&client, &tenant).await;
        anyhow::Ok(())
    }
    .await;
    keycloak.stop();
    result
}
