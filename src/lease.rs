//! Leader election on a `coordination.k8s.io` Lease: one replica reconciles, the others wait. The
//! holder renews every few seconds; a holder that stops renewing loses the Lease after its
//! duration; a holder that shuts down releases it so that hand-over takes seconds. A replica
//! waiting for the Lease is a standby, ready to take over.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use crate::api::condition::k8s_time;
use chrono::Utc;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};

const LEASE_SECONDS: i32 = 15;
const RENEW_EVERY: Duration = Duration::from_secs(5);

/// Set while this process waits for a Lease another replica holds. One flag per process: a
/// process takes at most one Lease.
static STANDING_BY: AtomicBool = AtomicBool::new(false);

/// Whether this replica has seen the Lease held by another and waits to take it over. A standby
/// counts as ready (`/readyz`): a rolling update waits for its new pods to be ready, and a new
/// pod stays a standby until an old one hands the Lease over.
pub fn standing_by() -> bool {
    STANDING_BY.load(Ordering::SeqCst)
}

/// Waits until this replica holds the Lease, then keeps renewing it in the background. If the
/// Lease is lost, the process exits so that it cannot reconcile beside a new leader.
pub async fn acquire(
    client: &Client,
    namespace: &str,
    name: &str,
    identity: &str,
) -> anyhow::Result<()> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    tracing::info!(lease = %name, %namespace, %identity, "waiting for leadership");
    loop {
        match try_take(&api, name, identity).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, lease = %name, "cannot take the lease"),
        }
        STANDING_BY.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Leading: ready again only once the controllers' caches are synced.
    STANDING_BY.store(false, Ordering::SeqCst);
    tracing::info!(lease = %name, %identity, "leading");

    let (api, name, identity) = (api.clone(), name.to_owned(), identity.to_owned());
    tokio::spawn(async move {
        let mut renewed = std::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match try_take(&api, &name, &identity).await {
                Ok(true) => renewed = std::time::Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %name, "lost leadership; exiting");
                    std::process::exit(1);
                }
                Err(error) => tracing::warn!(%error, lease = %name, "cannot renew the lease"),
            }
            // A leader that could not renew for a Lease duration may have been replaced: it
            // stops rather than reconcile beside the new one.
            if renewed.elapsed() >= Duration::from_secs(LEASE_SECONDS as u64) - RENEW_EVERY {
                tracing::error!(lease = %name, "could not renew the lease in time; exiting");
                std::process::exit(1);
            }
        }
    });
    Ok(())
}

/// Takes or renews the Lease if it is free, expired or ours. Optimistic concurrency through
/// `resourceVersion`: of two replicas replacing it at once, one fails.
async fn try_take(api: &Api<Lease>, name: &str, identity: &str) -> anyhow::Result<bool> {
    let now = Utc::now();
    let Some(mut lease) = api.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            spec: Some(held_by(identity, now, 0)),
        };
        return settled(api.create(&PostParams::default(), &lease).await);
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    let expired = spec.renew_time.as_ref().is_none_or(|renewed| {
        let duration = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
        renewed.0.as_second() + duration < now.timestamp()
    });
    if holder != identity && !holder.is_empty() && !expired {
        return Ok(false);
    }
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(holder != identity);
    lease.spec = Some(LeaseSpec {
        acquire_time: if holder == identity {
            spec.acquire_time
        } else {
            Some(MicroTime(k8s_time(now).0))
        },
        ..held_by(identity, now, transitions)
    });
    settled(api.replace(name, &PostParams::default(), &lease).await)
}

/// A write of the Lease: taken, lost to another replica (409: someone wrote it first), or failed
/// (an error to report and retry).
fn settled(result: Result<Lease, kube::Error>) -> anyhow::Result<bool> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error.into()),
    }
}

fn held_by(identity: &str, now: chrono::DateTime<Utc>, transitions: i32) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        acquire_time: Some(MicroTime(k8s_time(now).0)),
        renew_time: Some(MicroTime(k8s_time(now).0)),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

/// Gives the Lease up (on SIGTERM) so that another replica takes over at once.
pub async fn release(client: &Client, namespace: &str, name: &str, identity: &str) {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let Ok(Some(mut lease)) = api.get_opt(name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(identity) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(lease = %name, "released leadership"),
        Err(error) => tracing::warn!(%error, lease = %name, "cannot release the lease"),
    }
}
