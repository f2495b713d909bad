//! Keycloak unreachable while Consumers are applied: the conditions say so, nothing is lost or
//! duplicated, and everything becomes Ready once Keycloak answers; a client that Keycloak lost
//! while it was down is created again as soon as it is back. Uses a Keycloak instance of its
//! own (stack/keycloak.sh), so that stopping it disturbs no other test.

mod common;

use std::{process::Command, time::Duration};

use common::{Keycloak, Operator, create_namespace, env, free_port, kube_client, tempdir, unique};
use consumer_operator::api::Consumer;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{Patch, PatchParams},
    runtime::wait::await_condition,
};
use serde_json::json;

/// A private Keycloak: stopped when dropped.
struct PrivateKeycloak {
    data: std::path::PathBuf,
    http_port: u16,
    management_port: u16,
}

impl PrivateKeycloak {
    fn new() -> Self {
        Self {
            data: tempdir("keycloak"),
            http_port: free_port(),
            management_port: free_port(),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn run(&self, action: &str) {
        let status = Command::new(env("KEYCLOAK_SH"))
            .arg(action)
            .arg(&self.data)
            .arg(self.http_port.to_string())
            .arg(self.management_port.to_string())
            .env("KEYCLOAK_ADMIN_USER", env("KEYCLOAK_ADMIN_USER"))
            .env("KEYCLOAK_ADMIN_PASSWORD", env("KEYCLOAK_ADMIN_PASSWORD"))
            .env("JAVA_HOME", env("JAVA_HOME"))
            .status()
            .expect("run stack/keycloak.sh");
        assert!(status.success(), "stack/keycloak.sh {action} failed");
    }
}

impl Drop for PrivateKeycloak {
    fn drop(&mut self) {
        self.run("stop");
    }
}

fn reason(consumer: &Consumer) -> Option<String> {
    let status = consumer.status.as_ref()?;
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some(format!("{}/{}", ready.status, ready.reason))
}

async fn apply(consumers: &Api<Consumer>, name: &str, tenant: &str, display_name: &str) {
    let params = PatchParams::apply("tests").force();
    let manifest = common::consumer_manifest(name, tenant, json!({ "name": display_name }));
    consumers
        .patch(name, &params, &Patch::Apply(manifest))
        .await
        .unwrap();
}

/// Waits until the Consumer's Ready condition reads `status/reason` for its latest generation.
async fn wait_for(consumers: &Api<Consumer>, name: &str, wanted: &str, operator: &Operator) {
    let reached = await_condition(consumers.clone(), name, |c: Option<&Consumer>| {
        c.is_some_and(|c| {
            let generation = c.metadata.generation;
            let seen = c.status.as_ref().and_then(|s| s.observed_generation) == generation;
            seen && reason(c).as_deref() == Some(wanted)
        })
    });
    tokio::time::timeout(Duration::from_secs(120), reached)
        .await
        .unwrap_or_else(|_| panic!("{name} never said {wanted}:\n{}", operator.logs()))
        .unwrap();
}

/// A token request with the credentials in `name`'s Secret: the claims, or why there are none.
async fn secret_token(
    admin: &Keycloak,
    secrets: &Api<Secret>,
    name: &str,
) -> Result<serde_json::Value, String> {
    let secret = secrets
        .get(&format!("{name}-credentials"))
        .await
        .map_err(|e| format!("no Secret: {e}"))?;
    let data = secret.data.unwrap_or_default();
    let text = |key: &str| {
        data.get(key)
            .map(|value| String::from_utf8_lossy(&value.0).into_owned())
            .unwrap_or_default()
    };
    admin
        .token(
            &text("token_url"),
            &text("client_id"),
            &text("client_secret"),
        )
        .await
        .map_err(|status| format!("token request answered {status}"))
}

#[tokio::test]
async fn consumers_survive_keycloak_outages_and_become_ready_once_it_is_back() {
    let client = kube_client().await;
    common::apply_crds(&client).await;
    let namespace = unique("outage");
    let tenant = unique("outage");
    create_namespace(&client, &namespace, &[]).await;
    let keycloak = PrivateKeycloak::new();
    let operator = Operator::start_with_keycloak(&keycloak.url(), &[&namespace], &[]);
    let consumers: Api<Consumer> = Api::namespaced(client.clone(), &namespace);
    let names: Vec<String> = (0..5).map(|i| format!("partner-{i}")).collect();

    // Applied before Keycloak ever answered.
    for name in &names {
        apply(&consumers, name, &tenant, name).await;
    }
    for name in &names {
        wait_for(&consumers, name, "False/KeycloakUnavailable", &operator).await;
    }
    keycloak.run("start");
    let admin = Keycloak::at(&keycloak.url());
    admin.create_realm(&tenant).await;
    for name in &names {
        wait_for(&consumers, name, "True/Reconciled", &operator).await;
    }

    // Down again, now that the clients exist: a change and a new Consumer wait for it.
    keycloak.run("stop");
    apply(&consumers, "partner-0", &tenant, "Partner 0 renamed").await;
    apply(&consumers, "partner-new", &tenant, "partner-new").await;
    for name in ["partner-0", "partner-new"] {
        wait_for(&consumers, name, "False/KeycloakUnavailable", &operator).await;
    }
    keycloak.run("start");
    let all: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .chain(["partner-new"])
        .collect();
    for name in &all {
        wait_for(&consumers, name, "True/Reconciled", &operator).await;
    }

    // Keycloak loses a client across an outage (deleted just before the stop, as a restore from
    // a backup or an unflushed write would lose it): once Keycloak is back every client is
    // checked again, so it is created again now, not at the resync ten minutes later.
    let lost_client_id = format!("{tenant}-partner-1");
    let lost_uuid = admin.clients(&tenant, &lost_client_id).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = admin
        .admin(
            reqwest::Method::DELETE,
            &format!("/{tenant}/clients/{lost_uuid}"),
            None,
        )
        .await;
    assert_eq!(status, 204, "delete client: {body}");
    keycloak.run("stop");
    apply(&consumers, "partner-2", &tenant, "Partner 2 renamed").await;
    wait_for(
        &consumers,
        "partner-2",
        "False/KeycloakUnavailable",
        &operator,
    )
    .await;
    keycloak.run("start");
    wait_for(&consumers, "partner-2", "True/Reconciled", &operator).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    common::eventually(
        "partner-1's client created again and its Secret obtaining a token",
        Duration::from_secs(60),
        || async {
            let clients = admin.clients(&tenant, &lost_client_id).await;
            let recreated = clients.len() == 1 && clients[0]["id"] != lost_uuid.as_str();
            let token = secret_token(&admin, &secrets, "partner-1").await;
            (recreated && token.is_ok()).then_some(())
        },
    )
    .await;
    for name in &all {
        let clients = admin.clients(&tenant, &format!("{tenant}-{name}")).await;
        assert_eq!(clients.len(), 1, "exactly one client for {name}");
        let token = secret_token(&admin, &secrets, name).await;
        assert!(
            token.is_ok(),
            "{name}'s credentials obtain a token: {token:?}"
        );
    }
    let renamed = admin.clients(&tenant, &format!("{tenant}-partner-0")).await;
    assert_eq!(renamed[0]["name"], "Partner 0 renamed");
    assert!(
        !operator.logs().contains("panicked"),
        "the operator did not crash"
    );
}
