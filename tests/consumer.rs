//! The Consumer lifecycle against the real stack: Keycloak clients, credentials Secrets, tokens.

mod common;

use std::time::Duration;

use common::{Operator, World, create_namespace, eventually, unique};
use consumer_operator::api::Consumer;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
    runtime::wait::await_condition,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

impl World {
    fn consumers(&self) -> Api<Consumer> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn manifest(&self, name: &str, spec: Value) -> Value {
        common::consumer_manifest(name, &self.tenant, spec)
    }

    async fn apply(&self, name: &str, spec: Value) -> Result<Consumer, kube::Error> {
        let params = PatchParams::apply("tests").force();
        self.consumers()
            .patch(name, &params, &Patch::Apply(self.manifest(name, spec)))
            .await
    }

    /// Waits until the Consumer's Ready condition has `status` for its latest generation.
    async fn wait_ready(&self, name: &str, status: &str) -> Consumer {
        let wanted = status.to_owned();
        let ready = await_condition(self.consumers(), name, move |c: Option<&Consumer>| {
            c.is_some_and(|c| ready_status(c) == Some(wanted.clone()))
        });
        match tokio::time::timeout(WAIT, ready).await {
            Ok(result) => result.unwrap().unwrap(),
            Err(_) => panic!(
                "{name} did not reach Ready={status:?}: {:?}\n{}",
                self.consumers().get(name).await.map(|c| c.status),
                self.operator.logs()
            ),
        }
    }

    async fn credentials(&self, name: &str) -> Credentials {
        let secret = self
            .secrets()
            .get(&format!("{name}-credentials"))
            .await
            .unwrap();
        Credentials::from(secret)
    }

    async fn token(&self, credentials: &Credentials, client_secret: &str) -> Result<Value, u16> {
        self.keycloak
            .token(
                &credentials.token_url,
                &credentials.client_id,
                client_secret,
            )
            .await
    }

    /// No client secret appears in the operator's log, the namespace's events or a Consumer:
    /// neither `secrets` (those the test saw come and go) nor any in the namespace's Secrets now.
    async fn assert_no_secret_leaked(&self, secrets: &[String]) {
        let mut secrets = secrets.to_vec();
        for secret in self
            .secrets()
            .list(&Default::default())
            .await
            .unwrap()
            .items
        {
            let data = secret.data.unwrap_or_default();
            for key in ["client_secret", "previous_client_secret"] {
                secrets.extend(
                    data.get(key)
                        .map(|v| String::from_utf8_lossy(&v.0).into_owned()),
                );
            }
        }
        let logs = self.operator.logs();
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let events =
            serde_json::to_string(&events.list(&Default::default()).await.unwrap().items).unwrap();
        let statuses = serde_json::to_string(
            &self
                .consumers()
                .list(&Default::default())
                .await
                .unwrap()
                .items,
        )
        .unwrap();
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            assert!(
                !logs.contains(secret.as_str()),
                "a client secret is in the operator's log"
            );
            assert!(
                !events.contains(secret.as_str()),
                "a client secret is in an event"
            );
            assert!(
                !statuses.contains(secret.as_str()),
                "a client secret is in a Consumer"
            );
        }
    }
}

fn ready_status(consumer: &Consumer) -> Option<String> {
    let status = consumer.status.as_ref()?;
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    (ready.observed_generation == consumer.metadata.generation).then(|| ready.status.clone())
}

fn ready_reason(consumer: &Consumer) -> String {
    let status = consumer.status.as_ref().unwrap();
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .reason
        .clone()
}

#[derive(Debug, Clone)]
struct Credentials {
    client_id: String,
    client_secret: String,
    previous_client_secret: Option<String>,
    token_url: String,
}

impl From<Secret> for Credentials {
    fn from(secret: Secret) -> Self {
        let data = secret.data.unwrap_or_default();
        let text = |key: &str| {
            data.get(key)
                .map(|v| String::from_utf8(v.0.clone()).unwrap())
        };
        Self {
            client_id: text("client_id").unwrap(),
            client_secret: text("client_secret").unwrap(),
            previous_client_secret: text("previous_client_secret"),
            token_url: text("token_url").unwrap(),
        }
    }
}

#[tokio::test]
async fn a_consumer_becomes_ready_and_its_credentials_get_a_token_with_its_claims() {
    let world = World::new("cons").await;

    world.apply("partner-a", json!({})).await.unwrap();

    let consumer = world.wait_ready("partner-a", "True").await;
    let credentials = world.credentials("partner-a").await;
    assert_eq!(credentials.client_id, format!("{}-partner-a", world.tenant));
    let claims = world
        .token(&credentials, &credentials.client_secret)
        .await
        .unwrap();
    assert_eq!(claims["tenant_id"], world.tenant.as_str());
    assert_eq!(claims["consumer_id"], "partner-a");
    let status = consumer.status.unwrap();
    assert_eq!(
        status.keycloak_client_id.as_deref(),
        Some(credentials.client_id.as_str())
    );
    assert_eq!(
        status.token_url.as_deref(),
        Some(credentials.token_url.as_str())
    );
    world
        .assert_no_secret_leaked(&[credentials.client_secret])
        .await;
}

#[tokio::test]
async fn a_suspended_consumer_cannot_get_a_token_until_it_is_active_again() {
    let world = World::new("cons").await;
    world.apply("partner-s", json!({})).await.unwrap();
    world.wait_ready("partner-s", "True").await;
    let credentials = world.credentials("partner-s").await;

    world
        .apply("partner-s", json!({"state": "Suspended"}))
        .await
        .unwrap();
    let suspended = world.wait_ready("partner-s", "True").await;

    assert!(
        world
            .token(&credentials, &credentials.client_secret)
            .await
            .is_err()
    );
    assert_eq!(
        suspended
            .status
            .unwrap()
            .phase
            .map(|p| format!("{p:?}"))
            .as_deref(),
        Some("Suspended")
    );

    world
        .apply("partner-s", json!({"state": "Active"}))
        .await
        .unwrap();
    world.wait_ready("partner-s", "True").await;

    assert!(
        world
            .token(&credentials, &credentials.client_secret)
            .await
            .is_ok()
    );
    assert_eq!(
        world.credentials("partner-s").await.client_secret,
        credentials.client_secret
    );
    world.assert_no_secret_leaked(&[]).await;
}

#[tokio::test]
async fn a_blocked_consumer_cannot_get_a_token_and_cannot_be_made_active_again() {
    let world = World::new("cons").await;
    world.apply("partner-b", json!({})).await.unwrap();
    world.wait_ready("partner-b", "True").await;
    let credentials = world.credentials("partner-b").await;

    world
        .apply("partner-b", json!({"state": "Blocked"}))
        .await
        .unwrap();
    world.wait_ready("partner-b", "True").await;

    assert!(
        world
            .token(&credentials, &credentials.client_secret)
            .await
            .is_err()
    );
    let refused = world
        .apply("partner-b", json!({"state": "Active"}))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("Blocked is final"),
        "{refused}"
    );
    world.assert_no_secret_leaked(&[]).await;
}

#[tokio::test]
async fn raising_the_revision_rotates_and_the_previous_secret_works_until_the_grace_ends() {
    let world = World::new("cons").await;
    world
        .apply(
            "partner-r",
            json!({"credentials": {"rotationGracePeriod": "8s"}}),
        )
        .await
        .unwrap();
    world.wait_ready("partner-r", "True").await;
    let before = world.credentials("partner-r").await;

    world
        .apply(
            "partner-r",
            json!({"credentials": {"rotationGracePeriod": "8s", "revision": 1}}),
        )
        .await
        .unwrap();
    let rotated = world.wait_ready("partner-r", "True").await;
    let after = world.credentials("partner-r").await;

    let status = rotated.status.unwrap().credentials.unwrap();
    assert_eq!(status.revision, 1);
    let time = |t: Option<String>| chrono::DateTime::parse_from_rfc3339(&t.unwrap()).unwrap();
    let valid_until = time(status.previous_valid_until);
    let grace = valid_until - time(status.rotated_at);
    assert!(
        (grace - chrono::TimeDelta::seconds(8)).abs() <= chrono::TimeDelta::seconds(1),
        "{grace}"
    );
    assert_ne!(after.client_secret, before.client_secret);
    assert_eq!(
        after.previous_client_secret.as_deref(),
        Some(before.client_secret.as_str())
    );
    assert!(
        world.token(&after, &after.client_secret).await.is_ok(),
        "the new secret works at once"
    );
    assert!(
        world.token(&after, &before.client_secret).await.is_ok(),
        "the previous one still works"
    );

    let stopped = eventually(
        "the previous secret to stop working",
        Duration::from_secs(30),
        || async {
            let failed = world.token(&after, &before.client_secret).await.is_err();
            failed.then(chrono::Utc::now)
        },
    )
    .await;
    // Ended by a timed requeue, not by the next resync: at most a few seconds late.
    let late = stopped.signed_duration_since(valid_until);
    assert!(
        late > chrono::TimeDelta::seconds(-1) && late < chrono::TimeDelta::seconds(5),
        "the previous secret worked until {late} after previousValidUntil"
    );
    assert!(world.token(&after, &after.client_secret).await.is_ok());
    let (notes, count) = world.events("CredentialsRotated").await;
    assert_eq!(count, 1, "one CredentialsRotated event: {notes:?}");
    let settled = eventually(
        "previous_client_secret to leave the Secret",
        Duration::from_secs(10),
        || async {
            let credentials = world.credentials("partner-r").await;
            credentials
                .previous_client_secret
                .is_none()
                .then_some(credentials)
        },
    )
    .await;
    assert_eq!(settled.client_secret, after.client_secret);
    world
        .assert_no_secret_leaked(&[before.client_secret, after.client_secret])
        .await;
}

fn keycloak_writes(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("consumer_operator_keycloak_requests_total"))
        .filter(|l| {
            ![
                "find_client",
                "get_client_secret",
                "get_rotated_secret",
                "admin_login",
                "get_client_",
            ]
            .iter()
            .any(|op| l.contains(&format!("operation=\"{op}")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The number of Keycloak requests of `operation` in the operator's metrics, any status.
fn keycloak_requests(metrics: &str, operation: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("consumer_operator_keycloak_requests_total"))
        .filter(|l| l.contains(&format!("operation=\"{operation}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The World's operator, started again with a resync every `interval`.
fn resync_every(world: &mut World, interval: &str) {
    world.operator.stop();
    world.operator = Operator::start(&[&world.namespace], &["--resync-interval", interval]);
}

#[tokio::test]
async fn updates_reach_keycloak_and_an_unchanged_consumer_makes_no_keycloak_write() {
    let mut world = World::new("cons").await;
    resync_every(&mut world, "3s");
    world.apply("partner-u", json!({})).await.unwrap();
    world.wait_ready("partner-u", "True").await;

    let spec = json!({
        "name": "Partner U renamed",
        "description": "moved to the gold plan",
        "email": "new@partner-u.example",
        "consumerMetadata": {"tier": "gold"},
    });
    world.apply("partner-u", spec.clone()).await.unwrap();
    world.wait_ready("partner-u", "True").await;

    let client_id = format!("{}-partner-u", world.tenant);
    let client = &world.keycloak.clients(&world.tenant, &client_id).await[0];
    assert_eq!(client["name"], "Partner U renamed");
    assert_eq!(client["description"], "moved to the gold plan");
    assert_eq!(
        client["attributes"]["gostoa.dev/email"],
        "new@partner-u.example"
    );
    assert_eq!(client["attributes"]["gostoa.dev/metadata.tier"], "gold");

    // Unchanged: the same manifest again, a label (a watch event, no spec change), and two
    // resyncs, each a full comparison with what Keycloak holds.
    let before = world.operator.metrics().await;
    world.apply("partner-u", spec).await.unwrap();
    let label = json!({"metadata": {"labels": {"team": "payments"}}});
    world
        .consumers()
        .patch("partner-u", &PatchParams::default(), &Patch::Merge(label))
        .await
        .unwrap();
    let lookups = keycloak_requests(&before, "find_client");
    let after = eventually("two resyncs that read the client", WAIT, || async {
        let metrics = world.operator.metrics().await;
        (keycloak_requests(&metrics, "find_client") >= lookups + 2).then_some(metrics)
    })
    .await;
    assert!(
        keycloak_writes(&before) > 0,
        "the update itself was a write"
    );
    assert_eq!(
        keycloak_writes(&after),
        keycloak_writes(&before),
        "no Keycloak write for an unchanged Consumer:\n{after}"
    );

    world.operator.restart();
    let metrics_after_restart = eventually("a full sync after the restart", WAIT, || async {
        let metrics = world.operator.metrics().await;
        (keycloak_requests(&metrics, "find_client") >= 1).then_some(metrics)
    })
    .await;
    assert_eq!(
        keycloak_writes(&metrics_after_restart),
        0,
        "no Keycloak write after the restart:\n{metrics_after_restart}"
    );
}

#[tokio::test]
async fn the_same_consumer_in_a_second_namespace_is_a_conflict_that_changes_nothing() {
    let world = World::new("cons").await;
    world.apply("partner-c", json!({})).await.unwrap();
    world.wait_ready("partner-c", "True").await;
    let first = world.credentials("partner-c").await;
    let second_namespace = unique("cons-second");
    create_namespace(&world.client, &second_namespace, &[]).await;
    let _second_operator = Operator::start(&[&second_namespace], &[]);
    let second: Api<Consumer> = Api::namespaced(world.client.clone(), &second_namespace);

    let params = PatchParams::apply("tests").force();
    second
        .patch(
            "partner-c",
            &params,
            &Patch::Apply(world.manifest("partner-c", json!({"name": "Impostor"}))),
        )
        .await
        .unwrap();

    let conflicted = await_condition(second.clone(), "partner-c", |c: Option<&Consumer>| {
        c.is_some_and(|c| ready_status(c).as_deref() == Some("False"))
    });
    let conflicted = tokio::time::timeout(WAIT, conflicted)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ready_reason(&conflicted), "Conflict");
    let client = &world
        .keycloak
        .clients(&world.tenant, &first.client_id)
        .await[0];
    assert_eq!(client["name"], "Partner partner-c");
    let secrets: Api<Secret> = Api::namespaced(world.client.clone(), &second_namespace);
    assert!(
        secrets
            .get_opt("partner-c-credentials")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        world.credentials("partner-c").await.client_secret,
        first.client_secret
    );
    assert!(world.token(&first, &first.client_secret).await.is_ok());
    world.assert_no_secret_leaked(&[]).await;
}

impl World {
    /// The namespace's events with `reason`: their notes, and how often they happened (an
    /// event that repeats within minutes is one Event with a `series` count, as in client-go).
    async fn events(&self, reason: &str) -> (Vec<String>, i32) {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let events = events.list(&Default::default()).await.unwrap().items;
        let matching: Vec<_> = events
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect();
        let count = matching
            .iter()
            .map(|e| e.series.as_ref().map_or(1, |s| s.count))
            .sum();
        (matching.into_iter().filter_map(|e| e.note).collect(), count)
    }

    /// The Keycloak client of the Consumer `name`, as Keycloak holds it.
    async fn keycloak_client(&self, name: &str) -> Value {
        let client_id = format!("{}-{name}", self.tenant);
        let mut clients = self.keycloak.clients(&self.tenant, &client_id).await;
        assert_eq!(clients.len(), 1, "exactly one client {client_id}");
        clients.remove(0)
    }
}

#[tokio::test]
async fn a_client_deleted_or_edited_in_keycloak_is_put_back_by_the_resync() {
    let mut world = World::new("cons").await;
    resync_every(&mut world, "3s");
    world.apply("partner-d", json!({})).await.unwrap();
    world.wait_ready("partner-d", "True").await;
    let before = world.credentials("partner-d").await;
    let uuid = world.keycloak_client("partner-d").await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Deleted by hand; nothing changes in the cluster.
    let path = format!("/{}/clients/{uuid}", world.tenant);
    world
        .keycloak
        .admin(reqwest::Method::DELETE, &path, None)
        .await;

    let after = eventually("the client and a new secret", WAIT, || async {
        let credentials = world.credentials("partner-d").await;
        (credentials.client_secret != before.client_secret).then_some(credentials)
    })
    .await;
    let recreated = world.keycloak_client("partner-d").await;
    assert_ne!(recreated["id"], uuid.as_str());
    assert!(world.token(&after, &after.client_secret).await.is_ok());
    // The status is the reconcile's last write, after its events.
    eventually("the new client in the status", WAIT, || async {
        let consumer = world.consumers().get("partner-d").await.unwrap();
        let status_uuid = consumer.status.and_then(|s| s.keycloak_client_uuid);
        (status_uuid.as_deref() == recreated["id"].as_str()).then_some(())
    })
    .await;
    let (notes, corrections) = world.events("DriftCorrected").await;
    assert!(
        notes.iter().any(|n| n.contains("was missing")),
        "a DriftCorrected event for the deleted client: {notes:?}"
    );

    // Edited by hand: renamed and given a flow the contract forbids.
    let mut edited = recreated.clone();
    edited["name"] = json!("hijacked");
    edited["directAccessGrantsEnabled"] = json!(true);
    let path = format!(
        "/{}/clients/{}",
        world.tenant,
        recreated["id"].as_str().unwrap()
    );
    let (status, body) = world
        .keycloak
        .admin(reqwest::Method::PUT, &path, Some(edited))
        .await;
    assert_eq!(status, 204, "edit the client by hand: {body}");

    let repaired = eventually("the edit to be undone", WAIT, || async {
        let client = world.keycloak_client("partner-d").await;
        (client["name"] == "Partner partner-d").then_some(client)
    })
    .await;
    assert_eq!(repaired["directAccessGrantsEnabled"], false);
    eventually("a second DriftCorrected, for the edit", WAIT, || async {
        (world.events("DriftCorrected").await.1 == corrections + 1).then_some(())
    })
    .await;
    assert_eq!(
        world.credentials("partner-d").await.client_secret,
        after.client_secret
    );
    assert!(world.token(&after, &after.client_secret).await.is_ok());
    world
        .assert_no_secret_leaked(&[before.client_secret, after.client_secret])
        .await;
}

#[tokio::test]
async fn a_deleted_or_edited_secret_is_restored_from_keycloak_without_rotating() {
    let world = World::new("cons").await;
    world.apply("partner-e", json!({})).await.unwrap();
    world.wait_ready("partner-e", "True").await;
    let original = world.credentials("partner-e").await;

    world
        .secrets()
        .delete("partner-e-credentials", &DeleteParams::default())
        .await
        .unwrap();
    let restored = eventually("the Secret to be restored", WAIT, || async {
        world
            .secrets()
            .get_opt("partner-e-credentials")
            .await
            .unwrap()
            .map(Credentials::from)
    })
    .await;
    assert_eq!(restored.client_secret, original.client_secret);

    let edit = json!({"data": {"client_secret": ByteString(b"tampered".to_vec())}});
    world
        .secrets()
        .patch(
            "partner-e-credentials",
            &PatchParams::default(),
            &Patch::Merge(edit),
        )
        .await
        .unwrap();
    let repaired = eventually("the edited Secret to be repaired", WAIT, || async {
        let credentials = world.credentials("partner-e").await;
        (credentials.client_secret == original.client_secret).then_some(credentials)
    })
    .await;
    assert!(
        world
            .token(&repaired, &repaired.client_secret)
            .await
            .is_ok()
    );
    world.assert_no_secret_leaked(&[]).await;
}

#[tokio::test]
async fn deleting_a_consumer_removes_its_client_and_secret_unless_the_orphan_policy_keeps_the_client()
 {
    let world = World::new("cons").await;
    world.apply("partner-x", json!({})).await.unwrap();
    world.apply("partner-o", json!({})).await.unwrap();
    world.wait_ready("partner-x", "True").await;
    world.wait_ready("partner-o", "True").await;
    let orphan_policy =
        json!({"metadata": {"annotations": {"gostoa.dev/deletion-policy": "Orphan"}}});
    world
        .consumers()
        .patch(
            "partner-o",
            &PatchParams::default(),
            &Patch::Merge(orphan_policy),
        )
        .await
        .unwrap();

    world
        .consumers()
        .delete("partner-x", &DeleteParams::default())
        .await
        .unwrap();
    world
        .consumers()
        .delete("partner-o", &DeleteParams::default())
        .await
        .unwrap();

    for name in ["partner-x", "partner-o"] {
        eventually("the Consumer to be gone", WAIT, || async {
            world
                .consumers()
                .get_opt(name)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
        assert!(
            world
                .secrets()
                .get_opt(&format!("{name}-credentials"))
                .await
                .unwrap()
                .is_none()
        );
    }
    assert!(
        world
            .keycloak
            .clients(&world.tenant, &format!("{}-partner-x", world.tenant))
            .await
            .is_empty()
    );
    assert_eq!(
        world
            .keycloak
            .clients(&world.tenant, &format!("{}-partner-o", world.tenant))
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn invalid_manifests_are_rejected_by_the_api_server_with_the_field_named() {
    let world = World::new("cons").await;
    world
        .apply("partner-v", json!({"credentials": {"revision": 2}}))
        .await
        .unwrap();
    let cases = [
        (
            "bad externalId",
            json!({"externalId": "Not_Valid"}),
            "spec.externalId",
        ),
        ("bad email", json!({"email": "not-an-email"}), "spec.email"),
        (
            "lower revision",
            json!({"credentials": {"revision": 1}}),
            "credentials.revision can never go down",
        ),
    ];

    for (what, spec, expected) in cases {
        let error = world.apply("partner-v", spec).await.unwrap_err();
        assert!(error.to_string().contains(expected), "{what}: {error}");
    }

    let mut missing_name = world.manifest("partner-w", json!({}));
    missing_name["spec"].as_object_mut().unwrap().remove("name");
    let params = PatchParams::apply("tests").force();
    let error = world
        .consumers()
        .patch("partner-w", &params, &Patch::Apply(missing_name))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("spec.name"),
        "missing name: {error}"
    );
}

#[tokio::test]
async fn a_client_made_by_hand_is_adopted_only_with_the_adopt_annotation() {
    let world = World::new("cons").await;
    let client_id = format!("{}-partner-h", world.tenant);
    let by_hand =
        json!({"clientId": client_id, "publicClient": false, "serviceAccountsEnabled": true});
    let path = format!("/{}/clients", world.tenant);
    let (status, _) = world
        .keycloak
        .admin(reqwest::Method::POST, &path, Some(by_hand))
        .await;
    assert_eq!(status, 201);

    world.apply("partner-h", json!({})).await.unwrap();
    let refused = world.wait_ready("partner-h", "False").await;
    assert_eq!(ready_reason(&refused), "Conflict");
    assert!(
        world
            .secrets()
            .get_opt("partner-h-credentials")
            .await
            .unwrap()
            .is_none()
    );

    let adopt = json!({"metadata": {"annotations": {"gostoa.dev/adopt": "true"}}});
    let params = PatchParams::default();
    world
        .consumers()
        .patch("partner-h", &params, &Patch::Merge(adopt))
        .await
        .unwrap();
    let adopted = eventually("the client to be adopted", WAIT, || async {
        let consumer = world.consumers().get("partner-h").await.unwrap();
        (ready_status(&consumer).as_deref() == Some("True")).then_some(consumer)
    })
    .await;

    let clients = world.keycloak.clients(&world.tenant, &client_id).await;
    assert_eq!(clients.len(), 1);
    let owner = format!("{}/partner-h", world.namespace);
    assert_eq!(clients[0]["attributes"]["gostoa.dev/owner"], owner.as_str());
    assert_eq!(
        adopted.status.unwrap().keycloak_client_uuid.as_ref(),
        clients[0]["id"].as_str().map(String::from).as_ref()
    );
    let credentials = world.credentials("partner-h").await;
    assert!(
        world
            .token(&credentials, &credentials.client_secret)
            .await
            .is_ok()
    );
    world.assert_no_secret_leaked(&[]).await;
}

#[tokio::test]
async fn a_secret_of_that_name_owned_by_nobody_is_a_conflict_and_is_never_overwritten() {
    let world = World::new("cons").await;
    let foreign = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("partner-f-credentials".into()),
            ..Default::default()
        },
        data: Some(
            [(
                "client_secret".to_owned(),
                ByteString(b"someone-elses".to_vec()),
            )]
            .into(),
        ),
        ..Default::default()
    };
    world
        .secrets()
        .create(&Default::default(), &foreign)
        .await
        .unwrap();

    world.apply("partner-f", json!({})).await.unwrap();

    let refused = world.wait_ready("partner-f", "False").await;
    assert_eq!(ready_reason(&refused), "Conflict");
    let secret = world.secrets().get("partner-f-credentials").await.unwrap();
    assert_eq!(secret.data.unwrap()["client_secret"].0, b"someone-elses");
}

/// A confidential client of the master realm with service accounts enabled and the master
/// realm's `admin` role: what a production install gives the operator instead of a user.
/// Returns the client's id (for the clean-up) and its credentials as a credentials directory.
async fn service_account_admin(
    keycloak: &common::Keycloak,
    client_id: &str,
) -> (String, Vec<(&'static str, String)>) {
    use reqwest::Method;
    let secret = unique("svc-secret");
    let client = json!({
        "clientId": client_id,
        "publicClient": false,
        "serviceAccountsEnabled": true,
        "standardFlowEnabled": false,
        "directAccessGrantsEnabled": false,
        "secret": secret,
    });
    let (status, body) = keycloak
        .admin(Method::POST, "/master/clients", Some(client))
        .await;
    assert_eq!(status, 201, "create the service-account client: {body}");
    let id = keycloak.clients("master", client_id).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, user) = keycloak
        .admin(
            Method::GET,
            &format!("/master/clients/{id}/service-account-user"),
            None,
        )
        .await;
    assert_eq!(status, 200, "service-account user: {user}");
    let (status, role) = keycloak
        .admin(Method::GET, "/master/roles/admin", None)
        .await;
    assert_eq!(status, 200, "the master realm's admin role: {role}");
    let user_id = user["id"].as_str().unwrap();
    let (status, body) = keycloak
        .admin(
            Method::POST,
            &format!("/master/users/{user_id}/role-mappings/realm"),
            Some(json!([role])),
        )
        .await;
    assert_eq!(status, 204, "grant the admin role: {body}");
    let files = vec![
        ("client-id", client_id.to_owned()),
        ("client-secret", secret),
    ];
    (id, files)
}

#[tokio::test]
async fn the_operator_can_log_in_to_keycloak_as_a_service_account_client() {
    let mut world = World::new("svc").await;
    let client_id = unique("consumer-operator-svc");
    let (id, files) = service_account_admin(&world.keycloak, &client_id).await;
    world.operator.stop();
    world.operator = Operator::start_with_credentials(&files, &[&world.namespace], &[]);

    world.apply("partner-s", json!({})).await.unwrap();
    world.wait_ready("partner-s", "True").await;
    let credentials = world.credentials("partner-s").await;
    let claims = world
        .token(&credentials, &credentials.client_secret)
        .await
        .unwrap();
    assert_eq!(claims["consumer_id"], "partner-s");
    let metrics = world.operator.metrics().await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("consumer_operator_keycloak_requests_total")
                && l.contains("operation=\"admin_login\"")
                && l.contains("status=\"200\"")
        ),
        "no successful admin login in the metrics:\n{metrics}"
    );

    world
        .keycloak
        .admin(
            reqwest::Method::DELETE,
            &format!("/master/clients/{id}"),
            None,
        )
        .await;
    let (_, service_secret) = files[1].clone();
    world
        .assert_no_secret_leaked(&[credentials.client_secret, service_secret])
        .await;
}
