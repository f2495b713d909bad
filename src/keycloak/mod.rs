//! Keycloak's admin REST API as the operator uses it: exact client lookups, client writes,
//! secrets and rotated secrets, protocol mappers, and the realm's secret-rotation client policy.
//! Every call is timed and counted by operation and status, and fails with a typed error that
//! names the call. Knows nothing about Kubernetes.
//!
//! Built on the `keycloak` crate; the token is supplied by [`token::AdminToken`], which logs in
//! once per token lifetime.

pub mod token;

use std::{collections::HashSet, future::Future, path::Path, sync::Arc, time::Instant};

use keycloak::{
    KeycloakAdmin, KeycloakError,
    types::{ClientRepresentation, ProtocolMapperRepresentation},
};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::metrics::Metrics;
pub use token::{AdminCredentials, AdminToken};

/// Name of the client profile and policy the operator keeps in each tenant realm.
const ROTATION_POLICY: &str = "consumer-operator-secret-rotation";
/// Keycloak's secret-rotation executor keeps a rotated secret valid for a realm-wide period; the
/// operator ends each consumer's grace itself (DELETE of the rotated secret), so the realm-wide
/// periods are long: ten years, below Keycloak's 32-bit limit.
const ROTATION_PERIOD_SECONDS: i64 = 10 * 365 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No answer, or 502/503/504: Keycloak is down or restarting.
    #[error("Keycloak is unreachable ({operation}): {message}")]
    Unavailable {
        operation: &'static str,
        message: String,
    },
    /// The realm does not exist.
    #[error("realm {realm:?} does not exist in Keycloak")]
    RealmNotFound { realm: String },
    /// Keycloak answered with an error status.
    #[error("Keycloak answered {status} to {operation}: {message}")]
    Http {
        operation: &'static str,
        status: u16,
        message: String,
    },
}

impl Error {
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Http { status: 404, .. })
    }

    /// Keycloak said the resource already exists (e.g. a concurrent create of the same client).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Http { status: 409, .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to reach Keycloak.
#[derive(Debug, Clone)]
pub struct Config {
    pub url: String,
    pub admin_realm: String,
    pub credentials: AdminCredentials,
    pub ca_file: Option<std::path::PathBuf>,
}

/// A shared handle on the admin API. Cheap to clone.
#[derive(Clone)]
pub struct Keycloak {
    admin: Arc<KeycloakAdmin<AdminToken>>,
    token: AdminToken,
    metrics: Arc<Metrics>,
    /// Realms whose secret-rotation policy is known to be in place.
    rotation_policy_ready: Arc<Mutex<HashSet<String>>>,
    /// Whether the last call found Keycloak unreachable, and a counter of recoveries that the
    /// controllers watch to retry everything at once instead of waiting out their backoff.
    health: Arc<Health>,
}

#[derive(Default)]
struct Health {
    unavailable: std::sync::atomic::AtomicBool,
    went_down: tokio::sync::Notify,
    recoveries: std::sync::OnceLock<tokio::sync::watch::Sender<u64>>,
}

/// An HTTP client that verifies TLS with the system roots plus an optional extra CA bundle.
pub fn http_client(ca_file: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .connect_timeout(std::time::Duration::from_secs(5));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read CA file {}: {e}", path.display()))?;
        for certificate in reqwest::Certificate::from_pem_bundle(&pem)? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    Ok(builder.build()?)
}

impl Keycloak {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let http = http_client(config.ca_file.as_deref())?;
        let token = AdminToken::new(
            config.credentials.clone(),
            config.admin_realm.clone(),
            http.clone(),
            metrics.clone(),
        );
        let url = config.url.trim_end_matches('/');
        Ok(Self {
            admin: Arc::new(KeycloakAdmin::new(url, token.clone(), http)),
            token,
            metrics,
            rotation_policy_ready: Arc::default(),
            health: Arc::default(),
        })
    }

    /// A receiver that changes each time Keycloak answers again after being unreachable. The
    /// first call starts the probe that watches for the recovery (a GET of the admin realm every
    /// two seconds, only while Keycloak is down).
    pub fn recoveries(&self, url: &str, admin_realm: &str) -> tokio::sync::watch::Receiver<u64> {
        let mut started = false;
        let sender = self.health.recoveries.get_or_init(|| {
            started = true;
            tokio::sync::watch::channel(0).0
        });
        if started {
            let health = self.health.clone();
            let probe = format!("{}/realms/{admin_realm}", url.trim_end_matches('/'));
            let http = reqwest::Client::new();
            tokio::spawn(async move { watch_recovery(health, probe, http).await });
        }
        sender.subscribe()
    }

    fn observe(&self, result: &Result<(), &Error>) {
        use std::sync::atomic::Ordering;
        let down = matches!(result, Err(Error::Unavailable { .. }));
        let was_down = self.health.unavailable.swap(down, Ordering::SeqCst);
        if down && !was_down {
            self.health.went_down.notify_one();
        }
        // NB: whichever notices first, this call or the probe, announces the recovery.
        if was_down && !down {
            self.health.recovered();
        }
    }

    /// Runs one admin call: times and counts it, and maps its error.
    async fn call<T>(
        &self,
        operation: &'static str,
        realm: &str,
        request: impl Future<Output = Result<T, KeycloakError>>,
    ) -> Result<T> {
        let started = Instant::now();
        let result = request.await;
        let status = match &result {
            Ok(_) => 200,
            Err(KeycloakError::HttpFailure { status, .. }) => *status,
            Err(KeycloakError::ReqwestFailure(e)) => e.status().map_or(0, |s| s.as_u16()),
        };
        self.metrics
            .keycloak_request(operation, status, started.elapsed());
        match result {
            Ok(value) => {
                self.observe(&Ok(()));
                Ok(value)
            }
            Err(error) => {
                let error = self.classify(operation, realm, error).await;
                self.observe(&Err(&error));
                Err(error)
            }
        }
    }

    async fn classify(&self, operation: &'static str, realm: &str, error: KeycloakError) -> Error {
        match error {
            KeycloakError::ReqwestFailure(e) => Error::Unavailable {
                operation,
                message: without_url(&e),
            },
            KeycloakError::HttpFailure {
                status: 502..=504,
                text,
                ..
            } => Error::Unavailable {
                operation,
                message: text,
            },
            KeycloakError::HttpFailure { status, body, text } => {
                if status == 401 {
                    // The token was refused (Keycloak restarted, or the session was revoked):
                    // log in again next time.
                    self.token.invalidate().await;
                }
                let message = body
                    .as_ref()
                    .and_then(|b| b.message())
                    .map(|m| m.into_owned());
                let message = message.unwrap_or(text);
                if status == 404 && message.to_ascii_lowercase().contains("realm not found") {
                    return Error::RealmNotFound {
                        realm: realm.to_owned(),
                    };
                }
                Error::Http {
                    operation,
                    status,
                    message,
                }
            }
        }
    }

    /// The client of that exact clientId, with its protocol mappers, or `None`.
    pub async fn find_client(
        &self,
        realm: &str,
        client_id: &str,
    ) -> Result<Option<ClientRepresentation>> {
        let request = self.admin.realm_clients_get(
            realm,
            Some(client_id.to_owned()),
            None,
            None,
            None,
            Some(false),
            None,
        );
        let clients = self.call("find_client", realm, request).await?;
        Ok(clients
            .into_iter()
            .find(|c| c.client_id.as_deref() == Some(client_id)))
    }

    /// Creates the client and returns its UUID (from the `Location` header, without a read).
    pub async fn create_client(&self, realm: &str, client: ClientRepresentation) -> Result<String> {
        let response = self.call(
            "create_client",
            realm,
            self.admin.realm_clients_post(realm, client),
        );
        let response = response.await?;
        response
            .to_id()
            .map(str::to_owned)
            .ok_or_else(|| Error::Http {
                operation: "create_client",
                status: 201,
                message: "no Location header in the answer".to_owned(),
            })
    }

    pub async fn update_client(
        &self,
        realm: &str,
        uuid: &str,
        client: ClientRepresentation,
    ) -> Result<()> {
        let request = self
            .admin
            .realm_clients_with_client_uuid_put(realm, uuid, client);
        self.call("update_client", realm, request).await.map(drop)
    }

    /// Deletes the client; an already absent client is success.
    pub async fn delete_client(&self, realm: &str, uuid: &str) -> Result<()> {
        let request = self
            .admin
            .realm_clients_with_client_uuid_delete(realm, uuid);
        match self.call("delete_client", realm, request).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(drop),
        }
    }

    pub async fn client_secret(&self, realm: &str, uuid: &str) -> Result<String> {
        let request = self
            .admin
            .realm_clients_with_client_uuid_client_secret_get(realm, uuid);
        let credential = self.call("get_client_secret", realm, request).await?;
        Ok(credential.value.map(|v| v.to_string()).unwrap_or_default())
    }

    /// Makes Keycloak issue a new client secret; the current one becomes the rotated secret.
    pub async fn regenerate_secret(&self, realm: &str, uuid: &str) -> Result<String> {
        self.ensure_rotation_policy(realm).await?;
        let request = self
            .admin
            .realm_clients_with_client_uuid_client_secret_post(realm, uuid);
        let credential = self
            .call("regenerate_client_secret", realm, request)
            .await?;
        Ok(credential.value.map(|v| v.to_string()).unwrap_or_default())
    }

    /// The rotated (previous) secret still accepted by Keycloak, if any.
    pub async fn rotated_secret(&self, realm: &str, uuid: &str) -> Result<Option<String>> {
        let request = self
            .admin
            .realm_clients_with_client_uuid_client_secret_rotated_get(realm, uuid);
        match self.call("get_rotated_secret", realm, request).await {
            Ok(credential) => Ok(credential
                .value
                .map(|v| v.to_string())
                .filter(|v| !v.is_empty())),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Ends the grace of the rotated secret: it stops working at once.
    pub async fn invalidate_rotated_secret(&self, realm: &str, uuid: &str) -> Result<()> {
        let request = self
            .admin
            .realm_clients_with_client_uuid_client_secret_rotated_delete(realm, uuid);
        match self.call("delete_rotated_secret", realm, request).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(drop),
        }
    }

    /// Creates several protocol mappers in one request, so that a token never carries only some
    /// of them.
    pub async fn create_mappers(
        &self,
        realm: &str,
        uuid: &str,
        mappers: Vec<ProtocolMapperRepresentation>,
    ) -> Result<()> {
        let request = self
            .admin
            .realm_clients_with_client_uuid_protocol_mappers_add_models_post(realm, uuid, mappers);
        self.call("create_protocol_mappers", realm, request)
            .await
            .map(drop)
    }

    pub async fn update_mapper(
        &self,
        realm: &str,
        uuid: &str,
        mapper: ProtocolMapperRepresentation,
    ) -> Result<()> {
        let id = mapper.id.clone().unwrap_or_default();
        let request = self
            .admin
            .realm_clients_with_client_uuid_protocol_mappers_models_with_id_put(
                realm, uuid, &id, mapper,
            );
        self.call("update_protocol_mapper", realm, request)
            .await
            .map(drop)
    }

    pub async fn delete_mapper(&self, realm: &str, uuid: &str, id: &str) -> Result<()> {
        let request = self
            .admin
            .realm_clients_with_client_uuid_protocol_mappers_models_with_id_delete(realm, uuid, id);
        match self.call("delete_protocol_mapper", realm, request).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(drop),
        }
    }

    /// Puts the realm's client profile and policy for secret rotation in place, once per realm
    /// and process: clients marked as managed by the operator keep their rotated secret valid
    /// until the operator invalidates it.
    pub async fn ensure_rotation_policy(&self, realm: &str) -> Result<()> {
        let mut ready = self.rotation_policy_ready.lock().await;
        if ready.contains(realm) {
            return Ok(());
        }

        let profiles = self
            .admin
            .realm_client_policies_profiles_get(realm, Some(false));
        let mut profiles =
            serde_json::to_value(self.call("get_client_profiles", realm, profiles).await?)
                .unwrap_or_default();
        if add_named(&mut profiles, rotation_profile()) {
            let body = serde_json::from_value(profiles).expect("profiles round-trip");
            let request = self.admin.realm_client_policies_profiles_put(realm, body);
            self.call("put_client_profiles", realm, request).await?;
        }

        let policies = self
            .admin
            .realm_client_policies_policies_get(realm, Some(false));
        let mut policies =
            serde_json::to_value(self.call("get_client_policies", realm, policies).await?)
                .unwrap_or_default();
        if add_named(&mut policies, rotation_policy()) {
            let body = serde_json::from_value(policies).expect("policies round-trip");
            let request = self.admin.realm_client_policies_policies_put(realm, body);
            self.call("put_client_policies", realm, request).await?;
        }

        ready.insert(realm.to_owned());
        Ok(())
    }
}

async fn watch_recovery(health: Arc<Health>, probe: String, http: reqwest::Client) {
    use std::sync::atomic::Ordering;
    loop {
        if !health.unavailable.load(Ordering::SeqCst) {
            health.went_down.notified().await;
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let answered = http
            .get(&probe)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if answered && health.unavailable.swap(false, Ordering::SeqCst) {
            health.recovered();
        }
    }
}

impl Health {
    fn recovered(&self) {
        tracing::info!("Keycloak answers again; verifying every object");
        if let Some(sender) = self.recoveries.get() {
            sender.send_modify(|n| *n += 1);
        }
    }
}

/// Adds `item` to the `profiles` or `policies` array of `document` unless one of that name is
/// there. Returns whether the document changed.
fn add_named(document: &mut Value, item: Value) -> bool {
    let key = if item.get("executors").is_some() {
        "profiles"
    } else {
        "policies"
    };
    if !document.is_object() {
        *document = json!({});
    }
    let list = document
        .as_object_mut()
        .expect("an object")
        .entry(key)
        .or_insert_with(|| json!([]));
    let Some(items) = list.as_array_mut() else {
        *list = json!([item]);
        return true;
    };
    if items.iter().any(|p| p.get("name") == item.get("name")) {
        return false;
    }
    items.push(item);
    true
}

fn rotation_profile() -> Value {
    json!({
        "name": ROTATION_POLICY,
        "description": "Keeps a rotated client secret valid until consumer-operator ends its grace",
        "executors": [{
            "executor": "secret-rotation",
            "configuration": {
                "expiration-period": ROTATION_PERIOD_SECONDS,
                "rotated-expiration-period": ROTATION_PERIOD_SECONDS,
                "remaining-rotation-period": 0
            }
        }]
    })
}

fn rotation_policy() -> Value {
    let selector = json!([{
        "key": crate::names::attributes::MANAGED_BY,
        "value": crate::names::MANAGED_BY
    }]);
    json!({
        "name": ROTATION_POLICY,
        "description": "Secret rotation for the clients of consumer-operator",
        "enabled": true,
        "conditions": [{
            "condition": "client-attributes",
            "configuration": { "attributes": selector.to_string(), "is_negative_logic": false }
        }],
        "profiles": [ROTATION_POLICY]
    })
}

/// A network error's text with its causes (the URL it names carries no secret).
fn without_url(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rotation_profile_is_added_once() {
        let mut document = json!({ "profiles": [{ "name": "other", "executors": [] }] });

        assert!(add_named(&mut document, rotation_profile()));
        assert!(!add_named(&mut document, rotation_profile()));

        assert_eq!(document["profiles"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn the_rotation_policy_goes_into_policies() {
        let mut document = json!({});

        assert!(add_named(&mut document, rotation_policy()));

        assert_eq!(document["policies"][0]["profiles"][0], ROTATION_POLICY);
    }
}
