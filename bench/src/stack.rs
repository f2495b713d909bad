//! The pieces of the local stack the benchmark talks to: `.stack/env`, the API server, a Keycloak
//! (the stack's or a private one started with `stack/keycloak.sh`), and the operator as a
//! separate release process whose memory is read from `/proc`.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use kube::{
    Client,
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::prom::Scrape;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The variables of `.stack/env` (or of `$STACK_ENV`).
pub fn stack_env() -> anyhow::Result<HashMap<String, String>> {
    let path = std::env::var("STACK_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".stack/env"));
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "the local stack is not up ({}); run make stack-up",
            path.display()
        )
    })?;
    Ok(text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_owned(),
                v.trim().trim_matches(['"', '\'']).to_owned(),
            )
        })
        .collect())
}

pub struct Env(pub HashMap<String, String>);

impl Env {
    pub fn load() -> anyhow::Result<Self> {
        Ok(Self(stack_env()?))
    }

    pub fn get(&self, key: &str) -> String {
        self.0
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("{key} is missing from .stack/env"))
    }

    pub async fn kube(&self) -> anyhow::Result<Client> {
        let kubeconfig = Kubeconfig::read_from(self.get("KUBECONFIG"))?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        // The bench applies thousands of objects; the default client-side timeouts are fine, but
        // the watch must outlive the longest run.
        config.read_timeout = Some(Duration::from_secs(300));
        Ok(Client::try_from(config)?)
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn tempdir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "consumer-operator-bench-{prefix}-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `uptime`'s load averages, recorded with every figure.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A Keycloak instance: its base URL, management URL, and the admin's token (renewed before it
/// expires, so a long floor run is not cut by the admin token lifetime).
pub struct Keycloak {
    pub url: String,
    pub management_url: String,
    user: String,
    password: String,
    pub http: reqwest::Client,
    token: Mutex<Option<(String, Instant)>>,
    /// The private instance's data directory, stopped on [`Keycloak::stop`].
    private: Option<PathBuf>,
    keycloak_sh: String,
    env: HashMap<String, String>,
    pub logins: std::sync::atomic::AtomicU64,
}

impl Keycloak {
    pub fn shared(env: &Env) -> Self {
        Self::new(
            env,
            env.get("KEYCLOAK_URL"),
            env.get("KEYCLOAK_MANAGEMENT_URL"),
            None,
        )
    }

    fn new(env: &Env, url: String, management_url: String, private: Option<PathBuf>) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            url,
            management_url,
            user: env.get("KEYCLOAK_ADMIN_USER"),
            password: env.get("KEYCLOAK_ADMIN_PASSWORD"),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
            token: Mutex::new(None),
            private,
            keycloak_sh: env.get("KEYCLOAK_SH"),
            env: env.0.clone(),
            logins: Default::default(),
        }
    }

    /// A private Keycloak in a new data directory, started with `stack/keycloak.sh`, so that
    /// its request counters see only this benchmark (the stack's is shared with other tests).
    pub fn start_private(env: &Env) -> anyhow::Result<Self> {
        let dir = tempdir("keycloak");
        let (http, mgmt) = (free_port(), free_port());
        let started = Instant::now();
        let status = Command::new(env.get("KEYCLOAK_SH"))
            .args([
                "start",
                &dir.display().to_string(),
                &http.to_string(),
                &mgmt.to_string(),
            ])
            .envs(&env.0)
            .status()?;
        if !status.success() {
            bail!("stack/keycloak.sh start failed ({status})");
        }
        eprintln!(
            "private Keycloak up in {:.1?} at {}",
            started.elapsed(),
            dir.display()
        );
        Ok(Self::new(
            env,
            format!("http://127.0.0.1:{http}"),
            format!("http://127.0.0.1:{mgmt}"),
            Some(dir),
        ))
    }

    pub fn stop(&self) {
        if let Some(dir) = &self.private {
            let _ = Command::new(&self.keycloak_sh)
                .args(["stop", &dir.display().to_string()])
                .envs(&self.env)
                .status();
        }
    }

    /// The private instance's pid (for the fault tests that kill Keycloak).
    pub fn private_dir(&self) -> Option<&Path> {
        self.private.as_deref()
    }

    pub async fn admin_token(&self) -> anyhow::Result<String> {
        let mut cached = self.token.lock().await;
        if let Some((token, at)) = cached.as_ref()
            && at.elapsed() < Duration::from_secs(40)
        {
            return Ok(token.clone());
        }
        let response = self
            .http
            .post(format!(
                "{}/realms/master/protocol/openid-connect/token",
                self.url
            ))
            .form(&[
                ("grant_type", "password"),
                ("client_id", "admin-cli"),
                ("username", &self.user),
                ("password", &self.password),
            ])
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("admin login: {}", response.status());
        }
        self.logins
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body: Value = response.json().await?;
        let token = body["access_token"]
            .as_str()
            .context("access_token")?
            .to_owned();
        *cached = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    /// An admin API request under `/admin/realms`; the status, the Location header and the body.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Option<String>, Value)> {
        let mut request = self
            .http
            .request(method, format!("{}/admin/realms{path}", self.url))
            .bearer_auth(self.admin_token().await?);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.unwrap_or_default();
        Ok((
            status,
            location,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        ))
    }

    pub async fn create_realm(&self, realm: &str) -> anyhow::Result<()> {
        let body = json!({"realm": realm, "enabled": true});
        let (status, _, body) = self.admin(reqwest::Method::POST, "", Some(&body)).await?;
        if status != 201 && status != 409 {
            bail!("create realm {realm}: {status} {body}");
        }
        Ok(())
    }

    pub async fn delete_realm(&self, realm: &str) {
        let _ = self
            .admin(reqwest::Method::DELETE, &format!("/{realm}"), None)
            .await;
    }

    /// Every client of the realm (paged).
    pub async fn clients(&self, realm: &str) -> anyhow::Result<Vec<Value>> {
        let mut all = Vec::new();
        loop {
            let path = format!("/{realm}/clients?first={}&max=500", all.len());
            let (status, _, body) = self.admin(reqwest::Method::GET, &path, None).await?;
            if status != 200 {
                bail!("list clients of {realm}: {status}");
            }
            let page = body.as_array().cloned().unwrap_or_default();
            let done = page.len() < 500;
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }

    pub async fn metrics(&self) -> anyhow::Result<Scrape> {
        let text = self
            .http
            .get(format!("{}/metrics", self.management_url))
            .send()
            .await?
            .text()
            .await?;
        Ok(Scrape::parse(&text))
    }

    /// A client_credentials token request: whether Keycloak issued a token.
    pub async fn token_works(&self, token_url: &str, client_id: &str, secret: &str) -> bool {
        let response = self
            .http
            .post(token_url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", secret),
            ])
            .send()
            .await;
        response.is_ok_and(|r| r.status().is_success())
    }
}

/// The admin requests in a diff of Keycloak's `http_server_requests_seconds_count`, by
/// `method uri status`.
pub fn admin_requests(before: &Scrape, after: &Scrape) -> std::collections::BTreeMap<String, f64> {
    Scrape::diff_by(
        before,
        after,
        "http_server_requests_seconds_count",
        &["method", "uri", "status"],
        |l| {
            l.get("uri")
                .is_some_and(|u| u.starts_with("/admin/realms/"))
        },
    )
}

/// The operator, run from `target/release/consumer-operator` as a separate process.
pub struct Operator {
    child: Option<Child>,
    pub pid: u32,
    pub log: PathBuf,
    pub metrics_url: String,
    pub health_url: String,
    args: Vec<String>,
    kubeconfig: String,
    extra_env: Vec<(String, String)>,
}

impl Operator {
    pub fn binary() -> PathBuf {
        std::env::var("OPERATOR_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo_root().join("target/release/consumer-operator"))
    }

    pub fn start(
        env: &Env,
        keycloak_url: &str,
        namespaces: &[&str],
        concurrency: u16,
    ) -> anyhow::Result<Self> {
        Self::start_with_env(env, keycloak_url, namespaces, concurrency, &[])
    }

    /// Like [`Operator::start`], with extra environment variables for the process (e.g.
    /// `MALLOC_ARENA_MAX` to see how much of the memory is the allocator's arenas).
    pub fn start_with_env(
        env: &Env,
        keycloak_url: &str,
        namespaces: &[&str],
        concurrency: u16,
        extra_env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let dir = tempdir("operator");
        std::fs::write(dir.join("username"), env.get("KEYCLOAK_ADMIN_USER"))?;
        std::fs::write(dir.join("password"), env.get("KEYCLOAK_ADMIN_PASSWORD"))?;
        let (metrics, health) = (free_port(), free_port());
        let args = vec![
            "run".to_owned(),
            "--keycloak-url".to_owned(),
            keycloak_url.to_owned(),
            "--keycloak-admin-credentials-dir".to_owned(),
            dir.display().to_string(),
            "--watch-namespace".to_owned(),
            namespaces.join(","),
            "--metrics-addr".to_owned(),
            format!("127.0.0.1:{metrics}"),
            "--health-addr".to_owned(),
            format!("127.0.0.1:{health}"),
            "--concurrency".to_owned(),
            concurrency.to_string(),
        ];
        let mut operator = Self {
            child: None,
            pid: 0,
            log: dir.join("operator.log"),
            metrics_url: format!("http://127.0.0.1:{metrics}/metrics"),
            health_url: format!("http://127.0.0.1:{health}"),
            args,
            kubeconfig: env.get("KUBECONFIG"),
            extra_env: extra_env.to_vec(),
        };
        operator.spawn()?;
        Ok(operator)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(Self::binary())
            .args(&self.args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info")
            .envs(self.extra_env.iter().cloned())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("start {}", Self::binary().display()))?;
        self.pid = child.id();
        self.child = Some(child);
        Ok(())
    }

    /// SIGTERM and wait (at most 30 s, then SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL: the operator releases nothing.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process started last is still alive (a fault must not have ended it).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().ok().flatten().is_none())
    }

    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    pub fn respawn_after_kill(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// `VmHWM` and `VmRSS` of the process, in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// CPU time (user + system) of the process so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // Fields 14 and 15 of /proc/pid/stat (utime, stime) are 11 and 12 after the comm.
        (ticks(11) + ticks(12)) / 100.0
    }

    pub async fn metrics(&self, http: &reqwest::Client) -> anyhow::Result<Scrape> {
        let text = http.get(&self.metrics_url).send().await?.text().await?;
        Ok(Scrape::parse(&text))
    }

    /// Waits until `/readyz` answers 200 (caches synced), bounded.
    pub async fn wait_ready(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = http
                .get(format!("{}/readyz", self.health_url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the operator was not ready within {timeout:?}; log {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `consumer_operator_reconciles_total{kind}`.
pub fn reconciles(scrape: &Scrape, kind: &str) -> f64 {
    scrape.sum("consumer_operator_reconciles_total", |l| {
        l.get("kind").is_some_and(|k| k == kind)
    })
}

/// `consumer_operator_keycloak_requests_total{operation}` summed over statuses.
pub fn operator_requests(scrape: &Scrape, operation: Option<&str>) -> f64 {
    scrape.sum(
        "consumer_operator_keycloak_requests_total",
        |l| match operation {
            Some(op) => l.get("operation").is_some_and(|o| o == op),
            None => true,
        },
    )
}

/// The repository's commit when the benchmark started, with `-dirty` when `src/` had
/// uncommitted changes then, and the release binary's modification time (it is built from the
/// working tree, which other engineers change while a run lasts).
pub fn operator_revision() -> &'static str {
    static REVISION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    REVISION.get_or_init(|| {
        let git = |args: &[&str]| {
            Command::new("git")
                .arg("-C")
                .arg(repo_root())
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        };
        let head = git(&["rev-parse", "--short", "HEAD"]);
        let dirty = !git(&[
            "status",
            "--porcelain",
            "--",
            "src",
            "Cargo.toml",
            "Cargo.lock",
        ])
        .is_empty();
        let built = std::fs::metadata(Operator::binary())
            .and_then(|m| m.modified())
            .map(|t| {
                chrono::DateTime::<chrono::Utc>::from(t)
                    .format("%H:%M:%SZ")
                    .to_string()
            })
            .unwrap_or_default();
        format!(
            "{head}{} (binary built {built})",
            if dirty { "-dirty" } else { "" }
        )
    })
}
