//! The harness itself: the local stack's kube-apiserver, kube-controller-manager and Keycloak are
//! real and answer.

mod common;

use std::time::Duration;

use common::{Keycloak, create_namespace, eventually, kube_client, unique};
use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Secret},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ObjectMeta, PostParams},
};
use serde_json::json;

#[tokio::test]
async fn a_namespace_and_a_secret_can_be_created() {
    let client = kube_client().await;
    let namespace = unique("harness");
    create_namespace(&client, &namespace, &[]).await;
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);

    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("hello".into()),
            ..Default::default()
        },
        data: Some([("key".to_owned(), ByteString(b"value".to_vec()))].into()),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    let read = secrets.get("hello").await.unwrap();
    assert_eq!(read.data.unwrap()["key"].0, b"value");
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_what_it_owns() {
    let client = kube_client().await;
    let namespace = unique("harness-gc");
    create_namespace(&client, &namespace, &[]).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    let owner = config_maps
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("owner".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let owned = Secret {
        metadata: ObjectMeta {
            name: Some("owned".into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: owner.name_any(),
                uid: owner.uid().unwrap(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &owned)
        .await
        .unwrap();

    config_maps
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();

    eventually(
        "the garbage collector to delete the owned Secret",
        Duration::from_secs(60),
        || async {
            secrets
                .get_opt("owned")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_confidential_client_gets_a_token_with_client_credentials() {
    let keycloak = Keycloak::from_stack();
    let realm = unique("harness");
    keycloak.create_realm(&realm).await;

    let client = json!({
        "clientId": "harness-client",
        "secret": "harness-secret-value",
        "publicClient": false,
        "serviceAccountsEnabled": true,
        "standardFlowEnabled": false,
    });
    let (status, body) = keycloak
        .admin(
            reqwest::Method::POST,
            &format!("/{realm}/clients"),
            Some(client),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let token_url = format!(
        "{}/realms/{realm}/protocol/openid-connect/token",
        keycloak.url
    );
    let claims = keycloak
        .token(&token_url, "harness-client", "harness-secret-value")
        .await
        .unwrap();
    assert_eq!(claims["azp"], "harness-client");
    assert_eq!(
        keycloak.token(&token_url, "harness-client", "wrong").await,
        Err(401)
    );
    keycloak.delete_realm(&realm).await;
}
