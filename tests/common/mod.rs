//! Shared harness of the integration tests: the local stack's kube-apiserver and Keycloak (from
//! `.stack/env`, written by `make stack-up`), the CRDs, unique namespaces and realms, the operator
//! as a child process, and bounded waits. A missing stack fails the test; nothing is skipped.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    future::Future,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::Namespace,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::wait::{await_condition, conditions},
};
use serde_json::{Value, json};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The variables of `.stack/env`.
pub fn stack_env() -> HashMap<String, String> {
    let path = std::env::var("STACK_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".stack/env"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the local stack is not up ({}: {e}); run `make test` or `make stack-up`",
            path.display()
        )
    });
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export ").or(Some(line.trim())))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_owned(),
                v.trim().trim_matches(['"', '\'']).to_owned(),
            )
        })
        .collect()
}

pub fn env(key: &str) -> String {
    stack_env()
        .remove(key)
        .unwrap_or_else(|| panic!("{key} is missing from .stack/env"))
}

pub async fn kube_client() -> Client {
    let kubeconfig = Kubeconfig::read_from(env("KUBECONFIG")).expect("kubeconfig of the stack");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    Client::try_from(config).expect("kube client")
}

/// Waits for `check` to return `Some`, polling every 200 ms, at most `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

pub async fn create_namespace(client: &Client, name: &str, labels: &[(&str, &str)]) {
    let api: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &namespace)
        .await
        .expect("create namespace");
}

/// Applies `crds/*.yaml` and waits until they are established.
pub async fn apply_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let dir = repo_root().join("crds");
    for entry in std::fs::read_dir(&dir).expect("crds/") {
        let path = entry.unwrap().path();
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = crd.name_any();
        let params = PatchParams::apply("consumer-operator-tests").force();
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .expect("apply CRD");
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .expect("CRD established")
            .unwrap();
    }
}

/// Keycloak of the stack, spoken to directly (the tests' own view, independent of the operator).
pub struct Keycloak {
    pub url: String,
    http: reqwest::Client,
}

impl Keycloak {
    pub fn from_stack() -> Self {
        Self::at(&env("KEYCLOAK_URL"))
    }

    pub fn at(url: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            url: url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn admin_token(&self) -> String {
        let response = self
            .http
            .post(format!(
                "{}/realms/master/protocol/openid-connect/token",
                self.url
            ))
            .form(&[
                ("grant_type", "password"),
                ("client_id", "admin-cli"),
                ("username", &env("KEYCLOAK_ADMIN_USER")),
                ("password", &env("KEYCLOAK_ADMIN_PASSWORD")),
            ])
            .send()
            .await
            .expect("admin login");
        assert!(
            response.status().is_success(),
            "admin login: {}",
            response.status()
        );
        response.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// An admin API request; returns the status and the JSON body (or Null).
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}/admin/realms{path}", self.url))
            .bearer_auth(self.admin_token().await);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("admin request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn create_realm(&self, realm: &str) {
        let (status, body) = self
            .admin(
                reqwest::Method::POST,
                "",
                Some(json!({"realm": realm, "enabled": true})),
            )
            .await;
        assert!(
            status == 201 || status == 409,
            "create realm {realm}: {status} {body}"
        );
    }

    pub async fn delete_realm(&self, realm: &str) {
        self.admin(reqwest::Method::DELETE, &format!("/{realm}"), None)
            .await;
    }

    /// The clients of that exact clientId (Keycloak keeps at most one, but the tests count).
    pub async fn clients(&self, realm: &str, client_id: &str) -> Vec<Value> {
        let (status, body) = self
            .admin(
                reqwest::Method::GET,
                &format!("/{realm}/clients?clientId={client_id}&search=false"),
                None,
            )
            .await;
        assert_eq!(status, 200, "list clients: {body}");
        body.as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c["clientId"] == client_id)
            .collect()
    }

    /// A client_credentials token request: the access token's claims, or the error status.
    pub async fn token(
        &self,
        token_url: &str,
        client_id: &str,
        client_secret: &str,
    ) -> Result<Value, u16> {
        let response = self
            .http
            .post(token_url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", client_secret),
            ])
            .send()
            .await
            .expect("token request");
        if !response.status().is_success() {
            return Err(response.status().as_u16());
        }
        let body: Value = response.json().await.unwrap();
        Ok(jwt_claims(
            body["access_token"].as_str().expect("access_token"),
        ))
    }
}

/// The claims of a JWT (not verified: the tests read what Keycloak issued).
/// The manifest of Consumer `name` of `tenant` the tests start from: display name
/// `Partner <name>`, email `ops@<name>.example`; `spec` fields given here are added or replace.
pub fn consumer_manifest(name: &str, tenant: &str, spec: Value) -> Value {
    let mut full = json!({
        "externalId": name,
        "tenantId": tenant,
        "name": format!("Partner {name}"),
        "email": format!("ops@{name}.example"),
    });
    full.as_object_mut()
        .unwrap()
        .extend(spec.as_object().cloned().unwrap_or_default());
    json!({
        "apiVersion": "gostoa.dev/v1alpha1",
        "kind": "Consumer",
        "metadata": { "name": name },
        "spec": full,
    })
}

pub fn jwt_claims(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The operator as a child process, with its log in a file. Killed when dropped.
pub struct Operator {
    child: Option<Child>,
    pub log: PathBuf,
    pub metrics_url: String,
    args: Vec<String>,
    kubeconfig: PathBuf,
}

/// The stack's bootstrap admin, as the files of a `--keycloak-admin-credentials-dir`.
fn admin_user_files() -> Vec<(&'static str, String)> {
    vec![
        ("username", env("KEYCLOAK_ADMIN_USER")),
        ("password", env("KEYCLOAK_ADMIN_PASSWORD")),
    ]
}

impl Operator {
    /// Starts the operator against the stack's Keycloak, watching `namespaces`.
    pub fn start(namespaces: &[&str], extra: &[&str]) -> Self {
        Self::start_with_keycloak(&env("KEYCLOAK_URL"), namespaces, extra)
    }

    pub fn start_with_keycloak(keycloak_url: &str, namespaces: &[&str], extra: &[&str]) -> Self {
        let kubeconfig = PathBuf::from(env("KUBECONFIG"));
        Self::launch(
            keycloak_url,
            kubeconfig,
            &admin_user_files(),
            namespaces,
            extra,
        )
    }

    /// Like [`Operator::start`], but the operator reaches the API server with `kubeconfig` (e.g.
    /// one from [`impersonating_kubeconfig`]).
    pub fn start_with_kubeconfig(kubeconfig: &Path, namespaces: &[&str], extra: &[&str]) -> Self {
        let url = env("KEYCLOAK_URL");
        Self::launch(
            &url,
            kubeconfig.into(),
            &admin_user_files(),
            namespaces,
            extra,
        )
    }

    /// Like [`Operator::start`], with these files (name, content) as the admin credentials
    /// directory, e.g. `client-id` and `client-secret` of a service-account client.
    pub fn start_with_credentials(
        credentials: &[(&'static str, String)],
        namespaces: &[&str],
        extra: &[&str],
    ) -> Self {
        let kubeconfig = PathBuf::from(env("KUBECONFIG"));
        Self::launch(
            &env("KEYCLOAK_URL"),
            kubeconfig,
            credentials,
            namespaces,
            extra,
        )
    }

    fn launch(
        keycloak_url: &str,
        kubeconfig: PathBuf,
        credentials: &[(&'static str, String)],
        namespaces: &[&str],
        extra: &[&str],
    ) -> Self {
        let dir = tempdir("operator");
        for (file, content) in credentials {
            std::fs::write(dir.join(file), content).unwrap();
        }
        let metrics_port = free_port();
        let mut args: Vec<String> = vec![
            "run".into(),
            "--keycloak-url".into(),
            keycloak_url.into(),
            "--keycloak-admin-credentials-dir".into(),
            dir.display().to_string(),
            "--watch-namespace".into(),
            namespaces.join(","),
            "--metrics-addr".into(),
            format!("127.0.0.1:{metrics_port}"),
            "--health-addr".into(),
            format!("127.0.0.1:{}", free_port()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut operator = Self {
            child: None,
            log: dir.join("operator.log"),
            metrics_url: format!("http://127.0.0.1:{metrics_port}/metrics"),
            args,
            kubeconfig,
        };
        operator.spawn();
        operator
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_consumer-operator"))
            .args(&self.args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info,consumer_operator=debug")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start the operator");
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The operator's metrics text, once it answers.
    pub async fn metrics(&self) -> String {
        let url = self.metrics_url.clone();
        eventually("operator metrics", Duration::from_secs(30), || {
            let url = url.clone();
            async move { reqwest::get(&url).await.ok()?.text().await.ok() }
        })
        .await
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn tempdir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(&format!("consumer-operator-{prefix}")));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn read_file(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The stack's kubeconfig with the user impersonating `user` (kubeconfig field `as`), written
/// into a temporary file. The stack's admin may impersonate anyone.
pub fn impersonating_kubeconfig(user: &str) -> PathBuf {
    let text = std::fs::read_to_string(env("KUBECONFIG")).expect("kubeconfig of the stack");
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).expect("kubeconfig YAML");
    let users = config["users"].as_sequence_mut().expect("kubeconfig users");
    for entry in users {
        entry["user"]["as"] = serde_yaml::Value::from(user);
    }
    let path = tempdir("kubeconfig").join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

impl Operator {
    /// SIGKILL, as when a node dies: the operator releases nothing.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until the Consumer's Ready condition is `True` for its latest generation; on timeout,
/// says what its status was (the caller adds the operator's log).
pub async fn wait_consumer_ready(
    api: &Api<consumer_operator::api::Consumer>,
    name: &str,
    timeout: Duration,
) -> Result<consumer_operator::api::Consumer, String> {
    let ready = await_condition(
        api.clone(),
        name,
        |c: Option<&consumer_operator::api::Consumer>| {
            c.is_some_and(|c| {
                let Some(status) = c.status.as_ref() else {
                    return false;
                };
                status.conditions.iter().any(|condition| {
                    condition.type_ == consumer_operator::names::condition::READY
                        && condition.status == "True"
                        && condition.observed_generation == c.metadata.generation
                })
            })
        },
    );
    match tokio::time::timeout(timeout, ready).await {
        Ok(result) => Ok(result
            .expect("watch the Consumer")
            .expect("the Consumer exists")),
        Err(_) => Err(format!(
            "Consumer {name} was not Ready within {timeout:?}: {:?}",
            api.get_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|c| c.status)
        )),
    }
}

impl Operator {
    /// `http://<--health-addr>`, the base URL of `/healthz` and `/readyz`.
    pub fn health_url(&self) -> String {
        let at = self
            .args
            .iter()
            .position(|a| a == "--health-addr")
            .expect("--health-addr");
        format!("http://{}", self.args[at + 1])
    }
}

/// The HTTP status of a GET, once the address answers.
pub async fn http_status(url: &str) -> u16 {
    eventually(
        &format!("an answer from {url}"),
        Duration::from_secs(30),
        || async { Some(reqwest::get(url).await.ok()?.status().as_u16()) },
    )
    .await
}

/// One test's world: a namespace, a tenant realm in the stack's Keycloak, and an operator
/// watching the namespace. Test files add their own accessors with `impl World`.
pub struct World {
    pub client: Client,
    pub namespace: String,
    pub tenant: String,
    pub keycloak: Keycloak,
    pub operator: Operator,
}

impl World {
    /// A fresh namespace named `<prefix>-<pid>-<n>`, a fresh realm, and an operator.
    pub async fn new(prefix: &str) -> Self {
        let client = kube_client().await;
        apply_crds(&client).await;
        let namespace = unique(prefix);
        let tenant = unique("tenant");
        create_namespace(&client, &namespace, &[]).await;
        let keycloak = Keycloak::from_stack();
        keycloak.create_realm(&tenant).await;
        let operator = Operator::start(&[&namespace], &[]);
        Self {
            client,
            namespace,
            tenant,
            keycloak,
            operator,
        }
    }
}
