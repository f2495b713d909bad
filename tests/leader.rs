//! Leader election between two operator processes against one stack: one reconciles, the other
//! waits; when the leader dies (SIGKILL: its Lease must expire) or shuts down (SIGTERM: it
//! releases the Lease) the other takes over and reconciliation continues. Each test prints the
//! hand-over time it measured.

mod common;

use std::time::{Duration, Instant};

use common::{Keycloak, Operator, create_namespace, eventually, kube_client, unique};
use consumer_operator::api::Consumer;
use k8s_openapi::{api::coordination::v1::Lease, jiff::Timestamp};
use kube::{Api, api::PostParams};
use serde_json::json;

/// Generous: other engineers' tests share the two cores.
const WAIT: Duration = Duration::from_secs(120);
/// The Lease duration the operator writes (src/lease.rs).
const LEASE_SECONDS: i64 = 15;

/// Two replicas, identities `replica-a` and `replica-b`, sharing one Lease in a namespace of
/// their own, which is also the only namespace they watch.
struct Replicas {
    tenant: String,
    leases: Api<Lease>,
    lease: String,
    consumers: Api<Consumer>,
    operators: [Operator; 2],
}

const IDENTITIES: [&str; 2] = ["replica-a", "replica-b"];

impl Replicas {
    async fn start() -> Self {
        let client = kube_client().await;
        common::apply_crds(&client).await;
        let namespace = unique("co-leader");
        create_namespace(&client, &namespace, &[]).await;
        let tenant = unique("tenant");
        Keycloak::from_stack().create_realm(&tenant).await;
        let lease = unique("lease");
        let operators = IDENTITIES.map(|identity| {
            Operator::start(
                &[&namespace],
                &[
                    "--leader-election",
                    "--leader-election-namespace",
                    &namespace,
                    "--leader-election-name",
                    &lease,
                    "--leader-election-identity",
                    identity,
                ],
            )
        });
        Self {
            leases: Api::namespaced(client.clone(), &namespace),
            consumers: Api::namespaced(client, &namespace),
            tenant,
            lease,
            operators,
        }
    }

    async fn lease(&self) -> Option<Lease> {
        self.leases.get_opt(&self.lease).await.ok().flatten()
    }

    /// The index of the replica holding the Lease, once one does.
    async fn leader(&self) -> usize {
        eventually("a leader", WAIT, || async {
            let holder = self.lease().await?.spec?.holder_identity?;
            IDENTITIES.iter().position(|identity| *identity == holder)
        })
        .await
    }

    /// Waits until `identity` holds the Lease; returns when it acquired it (its `acquireTime`).
    async fn wait_until_held_by(&self, index: usize) -> Timestamp {
        let identity = IDENTITIES[index];
        eventually(&format!("{identity} holding the Lease"), WAIT, || async {
            let spec = self.lease().await?.spec?;
            (spec.holder_identity.as_deref() == Some(identity)).then_some(())?;
            Some(spec.acquire_time?.0)
        })
        .await
    }

    async fn create_consumer(&self, name: &str) {
        let manifest = common::consumer_manifest(name, &self.tenant, json!({}));
        let consumer: Consumer = serde_json::from_value(manifest).unwrap();
        self.consumers
            .create(&PostParams::default(), &consumer)
            .await
            .unwrap();
    }

    async fn wait_ready(&self, name: &str) {
        let ready = common::wait_consumer_ready(&self.consumers, name, WAIT).await;
        ready.unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    async fn reconciles(&self, index: usize) -> f64 {
        reconciles(&self.operators[index].metrics().await)
    }

    /// Waits until replica `index` has counted a reconcile. The count goes up when a reconcile
    /// returns, a moment after its status (which the test watches) was written.
    async fn wait_reconciled(&self, index: usize) {
        let url = self.operators[index].metrics_url.clone();
        let counted = tokio::time::timeout(WAIT, async {
            loop {
                let text = match reqwest::get(&url).await {
                    Ok(response) => response.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                if reconciles(&text) > 0.0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        if counted.await.is_err() {
            panic!(
                "{} counted no reconcile\n{}",
                IDENTITIES[index],
                self.logs()
            );
        }
    }

    /// Both logs, for a failure message.
    fn logs(&self) -> String {
        let [a, b] = &self.operators;
        format!("--- replica-a\n{}\n--- replica-b\n{}", a.logs(), b.logs())
    }
}

/// The sum of `consumer_operator_reconciles_total` over its labels.
fn reconciles(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with("consumer_operator_reconciles_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn seconds_between(from: Timestamp, to: Timestamp) -> f64 {
    (to.as_millisecond() - from.as_millisecond()) as f64 / 1000.0
}

/// Two replicas start; only the leader reconciles a new Consumer.
async fn only_the_leader_reconciles(replicas: &Replicas) -> (usize, usize) {
    let leader = replicas.leader().await;
    let follower = 1 - leader;
    replicas.create_consumer("before-handover").await;
    replicas.wait_ready("before-handover").await;

    replicas.wait_reconciled(leader).await;
    assert_eq!(
        replicas.reconciles(follower).await,
        0.0,
        "{}",
        replicas.logs()
    );
    // A standby is ready to take over: a rolling update (maxUnavailable 0) waits for new pods to
    // be ready, and a new pod is a standby until the old leader goes.
    let readyz = format!("{}/readyz", replicas.operators[follower].health_url());
    let status = common::http_status(&readyz).await;
    assert_eq!(status, 200, "standby {readyz}\n{}", replicas.logs());
    let follower_log = replicas.operators[follower].logs();
    assert!(
        follower_log.contains("waiting for leadership"),
        "{follower_log}"
    );
    assert!(
        !follower_log.contains("starting controllers"),
        "{follower_log}"
    );
    (leader, follower)
}

#[tokio::test]
async fn a_killed_leader_is_replaced_once_its_lease_expires_and_reconciliation_continues() {
    let mut replicas = Replicas::start().await;
    let (leader, follower) = only_the_leader_reconciles(&replicas).await;
    let killed_at = Timestamp::now();
    let started = Instant::now();

    replicas.operators[leader].kill();
    replicas.create_consumer("after-kill").await;

    let acquired = replicas.wait_until_held_by(follower).await;
    replicas.wait_ready("after-kill").await;
    let ready_after = started.elapsed().as_secs_f64();
    let handover = seconds_between(killed_at, acquired);
    println!(
        "SIGKILL hand-over: Lease taken {handover:.1} s after the kill; \
         a Consumer created at the kill was Ready after {ready_after:.1} s"
    );
    replicas.wait_reconciled(follower).await;
    // The dead leader never renews again: the Lease is taken once expired, within its duration
    // plus the follower's one-second retry (and some slack for a loaded machine).
    assert!(
        handover <= (LEASE_SECONDS + 5) as f64,
        "hand-over took {handover} s\n{}",
        replicas.logs()
    );
    let transitions = replicas
        .lease()
        .await
        .unwrap()
        .spec
        .unwrap()
        .lease_transitions;
    assert_eq!(transitions, Some(1));
}

#[tokio::test]
async fn a_leader_stopped_with_sigterm_releases_its_lease_and_the_other_takes_over_at_once() {
    let mut replicas = Replicas::start().await;
    let (leader, follower) = only_the_leader_reconciles(&replicas).await;
    let last_renewal = replicas
        .lease()
        .await
        .unwrap()
        .spec
        .unwrap()
        .renew_time
        .unwrap()
        .0;
    let stopped_at = Timestamp::now();
    let started = Instant::now();

    replicas.operators[leader].stop();
    replicas.create_consumer("after-sigterm").await;

    let acquired = replicas.wait_until_held_by(follower).await;
    replicas.wait_ready("after-sigterm").await;
    let ready_after = started.elapsed().as_secs_f64();
    let handover = seconds_between(stopped_at, acquired);
    println!(
        "SIGTERM hand-over: Lease taken {handover:.1} s after the signal; \
         a Consumer created at the signal was Ready after {ready_after:.1} s"
    );
    let leader_log = replicas.operators[leader].logs();
    assert!(leader_log.contains("released leadership"), "{leader_log}");
    // Taken before the old holder's Lease could have expired: handed over, not timed out.
    let expiry = seconds_between(last_renewal, acquired);
    assert!(
        expiry < LEASE_SECONDS as f64,
        "Lease taken {expiry} s after its last renewal: expired, not released\n{}",
        replicas.logs()
    );
    replicas.wait_reconciled(follower).await;
}
