//! Keycloak unreachable while Consumers are applied: the conditions say so, nothing is lost or
//! duplicated, and everything becomes Ready once Keycloak answers. Uses a Keycloak instance of its
//! own (stack/keycloak.sh), so that stopping it disturbs no other test.

mod common;

use std::{process::Command, time::Duration};

use common::{Keycloak, Operator, create_namespace, env, free_port, kube_client, tempdir, unique};
use consumer_operator::api::Consumer;
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

#[tokio::test]
async fn consumers_applied_while_keycloak_is_down_become_ready_once_it_is_back() {
    let client = kube_client().await;
    common::apply_crds(&client).await;
    let namespace = unique("outage");
    let tenant = unique("outage");
    create_namespace(&client, &namespace, &[]).await;
    let keycloak = PrivateKeycloak::new();
    let operator = Operator::start_with_keycloak(&keycloak.url(), &[&namespace], &[]);
    let consumers: Api<Consumer> = Api::namespaced(client.clone(), &namespace);
    let names: Vec<String> = (0..5).map(|i| format!("partner-{i}")).collect();

    for name in &names {
        let manifest = json!({
            "apiVersion": "gostoa.dev/v1alpha1",
            "kind": "Consumer",
            "metadata": { "name": name },
            "spec": { "externalId": name, "tenantId": tenant, "name": name, "email": "ops@example.org" },
        });
        let params = PatchParams::apply("tests").force();
        consumers
            .patch(name, &params, &Patch::Apply(manifest))
            .await
            .unwrap();
    }
    for name in &names {
        let unavailable = await_condition(consumers.clone(), name, |c: Option<&Consumer>| {
            c.and_then(reason).as_deref() == Some("False/KeycloakUnavailable")
        });
        tokio::time::timeout(Duration::from_secs(60), unavailable)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{name} never said KeycloakUnavailable:\n{}",
                    operator.logs()
                )
            })
            .unwrap();
    }

    keycloak.run("start");
    Keycloak::at(&keycloak.url()).create_realm(&tenant).await;

    for name in &names {
        let ready = await_condition(consumers.clone(), name, |c: Option<&Consumer>| {
            c.and_then(reason).as_deref() == Some("True/Reconciled")
        });
        tokio::time::timeout(Duration::from_secs(120), ready)
            .await
            .unwrap_or_else(|_| panic!("{name} did not become Ready:\n{}", operator.logs()))
            .unwrap();
    }
    let admin = Keycloak::at(&keycloak.url());
    for name in &names {
        let clients = admin.clients(&tenant, &format!("{tenant}-{name}")).await;
        assert_eq!(clients.len(), 1, "exactly one client for {name}");
    }
    assert!(
        !operator.logs().contains("panicked"),
        "the operator did not crash"
    );
}
