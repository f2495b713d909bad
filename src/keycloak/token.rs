//! The admin access token: obtained once, reused until shortly before it expires, shared by every
//! reconcile. Concurrent callers wait for one login instead of each logging in.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use keycloak::{KeycloakError, KeycloakTokenSupplier};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::metrics::Metrics;

/// The longest a token is replaced before it expires.
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// When a token issued at `issued` for `lifetime` is replaced: once nine tenths of its lifetime
/// have passed, at the latest 30 s before it expires. A request never meets an expired token
/// (requests take milliseconds) and there is one login per token lifetime, not two: Keycloak's
/// default admin token lives 60 s, and a fixed 30 s margin would log in every 30 s.
fn refresh_at(issued: Instant, lifetime: Duration) -> Instant {
    issued + lifetime - (lifetime / 10).min(MAX_REFRESH_MARGIN)
}

/// Who the operator is in Keycloak. Read from a mounted Secret directory, never from a flag.
#[derive(Clone)]
pub enum AdminCredentials {
    /// A confidential client with service accounts enabled (client_credentials grant).
    ServiceAccount {
        client_id: String,
        client_secret: String,
    },
    /// An admin user, through the `admin-cli` client (password grant).
    User { username: String, password: String },
}

// NB: hand-written so that a `{:?}` of the configuration can never print a password.
impl std::fmt::Debug for AdminCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ServiceAccount { client_id, .. } => write!(f, "ServiceAccount({client_id})"),
            Self::User { username, .. } => write!(f, "User({username})"),
        }
    }
}

impl AdminCredentials {
    /// Reads `client-id` + `client-secret`, or else `username` + `password`, from `dir`.
    pub fn from_dir(dir: &Path) -> anyhow::Result<Self> {
        let read = |name: &str| -> Option<String> {
            std::fs::read_to_string(dir.join(name))
                .ok()
                .map(|s| s.trim().to_owned())
        };
        if let (Some(client_id), Some(client_secret)) = (read("client-id"), read("client-secret")) {
            return Ok(Self::ServiceAccount {
                client_id,
                client_secret,
            });
        }
        if let (Some(username), Some(password)) = (read("username"), read("password")) {
            return Ok(Self::User { username, password });
        }
        anyhow::bail!(
            "{} holds neither client-id and client-secret nor username and password",
            dir.display()
        )
    }

    fn form(&self) -> Vec<(&'static str, &str)> {
        match self {
            Self::ServiceAccount {
                client_id,
                client_secret,
            } => vec![
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", client_secret),
            ],
            Self::User { username, password } => vec![
                ("grant_type", "password"),
                ("client_id", "admin-cli"),
                ("username", username),
                ("password", password),
            ],
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

struct Cached {
    access_token: String,
    refresh_at: Instant,
}

/// A [`KeycloakTokenSupplier`] that logs in at most once per token lifetime.
#[derive(Clone)]
pub struct AdminToken {
    credentials: AdminCredentials,
    realm: String,
    http: reqwest::Client,
    cached: Arc<Mutex<Option<Cached>>>,
    metrics: Arc<Metrics>,
}

impl AdminToken {
    pub fn new(
        credentials: AdminCredentials,
        realm: String,
        http: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            credentials,
            realm,
            http,
            cached: Arc::default(),
            metrics,
        }
    }

    /// Forgets the token, e.g. after Keycloak answered 401 (it was restarted and lost sessions).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    async fn login(&self, url: &str) -> Result<Cached, KeycloakError> {
        let endpoint = format!("{url}/realms/{}/protocol/openid-connect/token", self.realm);
        let started = Instant::now();
        let response = self
            .http
            .post(endpoint)
            .form(&self.credentials.form())
            .send()
            .await;
        let status = response.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
        self.metrics
            .keycloak_request("admin_login", status, started.elapsed());
        let response = response?;
        if !response.status().is_success() {
            // The body of a failed token request names the error, never the credentials.
            let text = response.text().await.unwrap_or_default();
            return Err(KeycloakError::HttpFailure {
                status,
                body: None,
                text,
            });
        }
        let token: TokenResponse = response.json().await?;
        let lifetime = Duration::from_secs(token.expires_in);
        let refresh_at = refresh_at(started, lifetime);
        tracing::debug!(realm = %self.realm, expires_in = token.expires_in, "admin login");
        Ok(Cached {
            access_token: token.access_token,
            refresh_at,
        })
    }
}

#[async_trait]
impl KeycloakTokenSupplier for AdminToken {
    async fn get(&self, url: &str) -> Result<String, KeycloakError> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref()
            && Instant::now() < token.refresh_at
        {
            return Ok(token.access_token.clone());
        }
        let fresh = self.login(url).await?;
        let access_token = fresh.access_token.clone();
        *cached = Some(fresh);
        Ok(access_token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_replaced_once_nine_tenths_of_its_lifetime_passed() {
        let issued = Instant::now();
        let at = |secs| refresh_at(issued, Duration::from_secs(secs)) - issued;
        assert_eq!(at(60), Duration::from_secs(54));
        assert_eq!(at(5), Duration::from_millis(4500));
        // A long-lived token is replaced at most 30 s before it expires.
        assert_eq!(at(3600), Duration::from_secs(3570));
        assert_eq!(at(0), Duration::ZERO);
    }
}
