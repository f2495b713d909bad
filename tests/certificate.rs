//! ConsumerCertificate against the real stack: certificates generated here (their private keys
//! never leave the test), their status compared with what openssl prints, and their thumbprints
//! read back from real Keycloak access tokens through rotation with a grace period, Secret
//! renewals, revocation, expiry, rejected inputs and an operator restart.

mod common;

use std::time::{Duration, SystemTime};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, TimeDelta, Utc};
use common::{World, eventually};
use consumer_operator::api::{CertificateState, Consumer, ConsumerCertificate};
use futures::StreamExt as _;
use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::{
        WatchStreamExt,
        wait::{await_condition, conditions},
        watcher,
    },
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair,
};
use serde::Deserialize as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// How long a reconcile may take on a loaded machine.
const WAIT: Duration = Duration::from_secs(60);
/// How late a grace end, an expiry or an expiry warning may be seen (DESIGN.md: within 2 s).
const ON_TIME: TimeDelta = TimeDelta::seconds(2);
const DAY: Duration = Duration::from_secs(24 * 3600);
const HOUR: Duration = Duration::from_secs(3600);

impl World {
    fn consumers(&self) -> Api<Consumer> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn certificates(&self) -> Api<ConsumerCertificate> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Declares a Consumer of the tenant, waits until it is Ready and returns its credentials.
    async fn consumer(&self, name: &str) -> Credentials {
        let manifest = common::consumer_manifest(name, &self.tenant, json!({}));
        let params = PatchParams::apply("tests").force();
        self.consumers()
            .patch(name, &params, &Patch::Apply(manifest))
            .await
            .unwrap();
        self.wait_consumer(name).await
    }

    /// Waits until the Consumer is Ready and returns its credentials.
    async fn wait_consumer(&self, name: &str) -> Credentials {
        let ready = await_condition(self.consumers(), name, |c: Option<&Consumer>| {
            c.is_some_and(|c| consumer_ready(c) == Some("True"))
        });
        if tokio::time::timeout(WAIT, ready).await.is_err() {
            panic!("Consumer {name} is not Ready\n{}", self.log_tail());
        }
        let secret = self
            .secrets()
            .get(&format!("{name}-credentials"))
            .await
            .unwrap();
        Credentials::from(secret)
    }

    /// Server-side applies a ConsumerCertificate of `consumer`; `spec` adds to `consumerRef`.
    async fn apply_certificate(
        &self,
        name: &str,
        consumer: &str,
        spec: Value,
    ) -> Result<ConsumerCertificate, kube::Error> {
        let mut full = json!({ "consumerRef": { "name": consumer } });
        full.as_object_mut()
            .unwrap()
            .extend(spec.as_object().cloned().unwrap_or_default());
        let manifest = json!({
            "apiVersion": "gostoa.dev/v1alpha1",
            "kind": "ConsumerCertificate",
            "metadata": { "name": name },
            "spec": full,
        });
        let params = PatchParams::apply("tests").force();
        self.certificates()
            .patch(name, &params, &Patch::Apply(manifest))
            .await
    }

    /// Waits (by a watch) until the certificate satisfies `check`; returns it and when it was
    /// seen, an upper bound of when the operator wrote it.
    async fn wait_certificate(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&ConsumerCertificate) -> bool,
    ) -> (ConsumerCertificate, DateTime<Utc>) {
        let condition = |c: Option<&ConsumerCertificate>| c.is_some_and(&check);
        let seen = await_condition(self.certificates(), name, condition);
        match tokio::time::timeout(WAIT, seen).await {
            Ok(result) => (result.unwrap().unwrap(), Utc::now()),
            Err(_) => panic!(
                "{name}: timed out waiting for {what}; status: {:?}\n{}",
                self.certificates().get(name).await.map(|c| c.status),
                self.log_tail()
            ),
        }
    }

    /// Waits until the certificate's `Ready` (for its latest generation) has `status` and
    /// `reason`.
    async fn wait_ready(&self, name: &str, status: &str, reason: &str) -> ConsumerCertificate {
        let what = format!("Ready={status} ({reason})");
        let expected = (status, reason);
        self.wait_certificate(name, &what, |c| ready(c) == Some(expected))
            .await
            .0
    }

    /// A fresh access token of the consumer, its claims decoded.
    async fn claims(&self, credentials: &Credentials) -> Value {
        let Credentials {
            client_id,
            client_secret,
            token_url,
        } = credentials;
        let token = self
            .keycloak
            .token(token_url, client_id, client_secret)
            .await;
        token.unwrap_or_else(|status| panic!("token request for {client_id}: HTTP {status}"))
    }

    /// Requests fresh tokens until one satisfies `check`, for at most `timeout`; returns its
    /// claims and when it was obtained.
    async fn wait_claims(
        &self,
        credentials: &Credentials,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> (Value, DateTime<Utc>) {
        let check = &check;
        eventually(what, timeout, || async move {
            let claims = self.claims(credentials).await;
            check(&claims).then(|| (claims, Utc::now()))
        })
        .await
    }

    /// Requests fresh tokens until `until`, every 200 ms; each one must satisfy `check`.
    /// Returns how many were checked.
    async fn assert_claims_until(
        &self,
        credentials: &Credentials,
        what: &str,
        until: DateTime<Utc>,
        check: impl Fn(&Value) -> bool,
    ) -> usize {
        let mut checked = 0;
        while Utc::now() < until {
            let claims = self.claims(credentials).await;
            assert!(check(&claims), "{what}, at {}: {claims}", Utc::now());
            checked += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        checked
    }

    /// Every version of the certificate the API server reports until `until`, from a watch
    /// started now, in the background.
    fn watch_certificate(
        &self,
        name: &str,
        until: tokio::time::Instant,
    ) -> tokio::task::JoinHandle<Vec<ConsumerCertificate>> {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut stream = watcher(self.certificates(), config)
            .applied_objects()
            .boxed();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Ok(Some(next)) = tokio::time::timeout_at(until, stream.next()).await {
                seen.push(next.expect("the watch of the certificate"));
            }
            seen
        })
    }

    /// No line of any of these private keys appears in the operator's log, in an event of the
    /// namespace, or in the status of a ConsumerCertificate.
    async fn assert_no_private_key_leaked(&self, certificates: &[&TestCertificate]) {
        let logs = self.operator.logs();
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let events = events.list(&ListParams::default()).await.unwrap().items;
        let events = serde_json::to_string(&events).unwrap();
        let objects = self
            .certificates()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        let statuses: Vec<_> = objects.iter().map(|c| &c.status).collect();
        let statuses = serde_json::to_string(&statuses).unwrap();

        for line in certificates
            .iter()
            .flat_map(|c| private_key_lines(&c.key_pem))
        {
            assert!(
                !logs.contains(line),
                "a private key line is in the operator's log"
            );
            assert!(!events.contains(line), "a private key line is in an event");
            assert!(
                !statuses.contains(line),
                "a private key line is in a status"
            );
        }
    }

    /// Deletes a ConsumerCertificate and waits until it is gone (its finalizer has run).
    async fn delete_certificate(&self, name: &str) {
        let uid = self.certificates().get(name).await.unwrap().uid().unwrap();
        self.certificates()
            .delete(name, &Default::default())
            .await
            .unwrap();
        let gone = await_condition(self.certificates(), name, conditions::is_deleted(&uid));
        tokio::time::timeout(WAIT, gone)
            .await
            .unwrap_or_else(|_| panic!("{name} was not deleted\n{}", self.log_tail()))
            .unwrap();
    }

    fn log_tail(&self) -> String {
        let logs = self.operator.logs();
        let start = logs.len().saturating_sub(6_000);
        let start = (start..logs.len())
            .find(|i| logs.is_char_boundary(*i))
            .unwrap_or(0);
        format!("operator log (tail):\n{}", &logs[start..])
    }
}

#[derive(Debug, Clone)]
struct Credentials {
    client_id: String,
    client_secret: String,
    token_url: String,
}

impl From<Secret> for Credentials {
    fn from(secret: Secret) -> Self {
        let data = secret.data.unwrap_or_default();
        let text = |key: &str| String::from_utf8(data[key].0.clone()).unwrap();
        Self {
            client_id: text("client_id"),
            client_secret: text("client_secret"),
            token_url: text("token_url"),
        }
    }
}

fn consumer_ready(consumer: &Consumer) -> Option<&str> {
    let status = consumer.status.as_ref()?;
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    (ready.observed_generation == consumer.metadata.generation).then_some(ready.status.as_str())
}

fn condition<'a>(certificate: &'a ConsumerCertificate, type_: &str) -> Option<&'a Condition> {
    let status = certificate.status.as_ref()?;
    let condition = status.conditions.iter().find(|c| c.type_ == type_)?;
    (condition.observed_generation == certificate.metadata.generation).then_some(condition)
}

/// `Ready`'s status and reason, once the operator has seen the latest generation.
fn ready(certificate: &ConsumerCertificate) -> Option<(&str, &str)> {
    condition(certificate, "Ready").map(|c| (c.status.as_str(), c.reason.as_str()))
}

fn state(certificate: &ConsumerCertificate) -> Option<CertificateState> {
    certificate.status.as_ref()?.state
}

fn current_x5t(certificate: &ConsumerCertificate) -> Option<&str> {
    Some(
        certificate
            .status
            .as_ref()?
            .current
            .as_ref()?
            .x5t_s256
            .as_str(),
    )
}

fn accepted_in_status(certificate: &ConsumerCertificate) -> Vec<String> {
    let mut accepted = certificate
        .status
        .clone()
        .unwrap_or_default()
        .accepted_x5t_s256;
    accepted.sort();
    accepted
}

/// The token's `cnf.x5t#S256`.
fn cnf(claims: &Value) -> Option<&str> {
    claims["cnf"]["x5t#S256"].as_str()
}

/// The token's `x5t_s256_accepted`, sorted; empty when the claim is absent.
fn accepted_in_token(claims: &Value) -> Vec<String> {
    let values = claims["x5t_s256_accepted"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut accepted: Vec<String> = values
        .iter()
        .map(|v| v.as_str().expect("a thumbprint").to_owned())
        .collect();
    accepted.sort();
    accepted
}

fn sorted(thumbprints: &[&str]) -> Vec<String> {
    let mut thumbprints: Vec<String> = thumbprints.iter().map(|t| t.to_string()).collect();
    thumbprints.sort();
    thumbprints
}

/// A certificate made for one test. The private key is only kept to check that it never leaks.
struct TestCertificate {
    pem: String,
    der: Vec<u8>,
    key_pem: String,
}

impl TestCertificate {
    /// SHA-256 of the DER, base64url without padding, computed here independently.
    fn x5t_s256(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(&self.der))
    }
}

/// A certificate authority that issues the tests' client certificates.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    certificate: TestCertificate,
}

impl TestCa {
    fn new() -> Self {
        let now = SystemTime::now();
        let mut params = subject("Partner Issuing CA", now - DAY, now + 3650 * DAY);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key generation");
        let certificate = params.self_signed(&key).expect("CA certificate");
        let certificate = TestCertificate {
            pem: certificate.pem(),
            der: certificate.der().to_vec(),
            key_pem: key.serialize_pem(),
        };
        Self {
            issuer: Issuer::new(params, key),
            certificate,
        }
    }

    /// A client certificate valid from `not_before` to `not_after`.
    fn issue(
        &self,
        common_name: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> TestCertificate {
        let mut params = subject(common_name, not_before, not_after);
        params.subject_alt_names = CertificateParams::new(vec![format!("{common_name}.example")])
            .expect("a DNS name")
            .subject_alt_names;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("key generation");
        let certificate = params
            .signed_by(&key, &self.issuer)
            .expect("client certificate");
        TestCertificate {
            pem: certificate.pem(),
            der: certificate.der().to_vec(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A client certificate valid from an hour ago for `ahead`.
    fn issue_for(&self, common_name: &str, ahead: Duration) -> TestCertificate {
        let now = SystemTime::now();
        self.issue(common_name, now - HOUR, now + ahead)
    }
}

fn subject(common_name: &str, not_before: SystemTime, not_after: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CountryName, "FR");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Partner SA");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params
}

/// The base64 lines of a PEM private key: any of them in a log would be a leak.
fn private_key_lines(key_pem: &str) -> impl Iterator<Item = &str> {
    key_pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
}

/// `openssl x509 -noout <args>` on the PEM text: what it prints.
fn openssl_x509(pem: &str, args: &[&str]) -> String {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new("openssl")
        .args(["x509", "-noout"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl is installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "openssl x509 {args:?} failed");
    String::from_utf8(output.stdout).unwrap()
}

/// The value after `prefix` on the line of openssl's output that starts with it.
fn openssl_field<'a>(printed: &'a str, prefix: &str) -> &'a str {
    printed
        .lines()
        .find_map(|line| line.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in {printed:?}"))
        .trim()
}

/// A Secret as cert-manager writes it: the certificate and its chain in `tls.crt`, the key in
/// `tls.key` (which the operator never reads), the issuer in `ca.crt`.
fn tls_secret(name: &str, certificate: &TestCertificate, ca: &TestCa) -> Secret {
    let mut secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": name },
        "type": "kubernetes.io/tls",
    }))
    .unwrap();
    secret.data = Some(tls_data(certificate, ca));
    secret
}

fn tls_data(
    certificate: &TestCertificate,
    ca: &TestCa,
) -> std::collections::BTreeMap<String, ByteString> {
    let chain = format!("{}{}", certificate.pem, ca.certificate.pem);
    [
        ("tls.crt", chain),
        ("tls.key", certificate.key_pem.clone()),
        ("ca.crt", ca.certificate.pem.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
    .collect()
}

#[tokio::test]
async fn a_valid_certificate_is_active_matches_openssl_and_its_thumbprint_is_in_the_tokens() {
    let world = World::new("ccert").await;
    let credentials = world.consumer("partner-a").await;
    let ca = TestCa::new();
    let certificate = ca.issue_for("partner-a", 90 * DAY);

    world
        .apply_certificate(
            "partner-a-mtls",
            "partner-a",
            json!({ "pem": certificate.pem }),
        )
        .await
        .unwrap();

    let ready = world.wait_ready("partner-a-mtls", "True", "Valid").await;
    let status = ready.status.unwrap();
    assert_eq!(status.state, Some(CertificateState::Active));
    let current = status.current.expect("the current certificate");
    let printed = openssl_x509(
        &certificate.pem,
        &[
            "-fingerprint",
            "-sha256",
            "-serial",
            "-subject",
            "-issuer",
            "-startdate",
            "-enddate",
            "-nameopt",
            "RFC2253",
            "-dateopt",
            "iso_8601",
        ],
    );
    let fingerprint = openssl_field(&printed, "sha256 Fingerprint=").replace(':', "");
    assert_eq!(current.sha256_fingerprint, fingerprint.to_lowercase());
    assert_eq!(current.subject, openssl_field(&printed, "subject="));
    assert_eq!(current.issuer, openssl_field(&printed, "issuer="));
    assert_eq!(
        current.serial_number,
        openssl_field(&printed, "serial=").to_lowercase()
    );
    let openssl_time = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%SZ").to_string();
    assert_eq!(
        openssl_time(current.not_before),
        openssl_field(&printed, "notBefore=")
    );
    assert_eq!(
        openssl_time(current.not_after),
        openssl_field(&printed, "notAfter=")
    );
    assert_eq!(current.x5t_s256, certificate.x5t_s256());
    assert_eq!(status.accepted_x5t_s256, [current.x5t_s256.as_str()]);
    let (claims, _) = world
        .wait_claims(&credentials, "cnf in a token", WAIT, |c| cnf(c).is_some())
        .await;
    assert_eq!(cnf(&claims), Some(current.x5t_s256.as_str()));
    assert_eq!(accepted_in_token(&claims), [current.x5t_s256.as_str()]);
    assert_eq!(claims["consumer_id"], "partner-a");
    world.assert_no_private_key_leaked(&[&certificate]).await;
}

/// Declares `<consumer>-mtls` with `old`, rotates it to `new` and returns the old certificate's
/// `acceptedUntil` once the status and a token show both thumbprints accepted.
async fn rotate(
    world: &World,
    credentials: &Credentials,
    consumer: &str,
    old: &TestCertificate,
    new: &TestCertificate,
    grace_period: &str,
) -> DateTime<Utc> {
    let name = &format!("{consumer}-mtls");
    world
        .apply_certificate(
            name,
            consumer,
            json!({ "pem": old.pem, "gracePeriod": grace_period }),
        )
        .await
        .unwrap();
    world
        .wait_certificate(name, "state Active", |c| {
            state(c) == Some(CertificateState::Active)
        })
        .await;
    let old_in_token = |c: &Value| cnf(c) == Some(old.x5t_s256().as_str());
    world
        .wait_claims(
            credentials,
            "the first certificate in a token",
            WAIT,
            old_in_token,
        )
        .await;

    world
        .apply_certificate(
            name,
            consumer,
            json!({ "pem": new.pem, "gracePeriod": grace_period }),
        )
        .await
        .unwrap();

    let is_rotating = |c: &ConsumerCertificate| state(c) == Some(CertificateState::Rotating);
    let (rotating, _) = world
        .wait_certificate(name, "state Rotating", is_rotating)
        .await;
    let status = rotating.status.unwrap();
    let both = sorted(&[&old.x5t_s256(), &new.x5t_s256()]);
    assert_eq!(status.current.as_ref().unwrap().x5t_s256, new.x5t_s256());
    assert_eq!(status.previous.len(), 1, "{:?}", status.previous);
    let previous = &status.previous[0];
    assert_eq!(previous.x5t_s256, old.x5t_s256());
    assert_eq!(status.rotation_count, 1);
    let grace = TimeDelta::from_std(duration(grace_period)).unwrap();
    assert_eq!(
        Some(previous.accepted_until),
        status.last_rotation_time.map(|t| t + grace)
    );
    let mut accepted = status.accepted_x5t_s256.clone();
    accepted.sort();
    assert_eq!(accepted, both);
    let accepted_until = previous.accepted_until;
    let until_grace_end = (accepted_until - Utc::now()).to_std().unwrap_or_default();
    let (claims, _) = world
        .wait_claims(
            credentials,
            "both thumbprints in a token",
            until_grace_end,
            |c| accepted_in_token(c) == both,
        )
        .await;
    assert_eq!(
        cnf(&claims),
        Some(new.x5t_s256().as_str()),
        "cnf names the new certificate"
    );
    accepted_until
}

fn duration(text: &str) -> Duration {
    consumer_operator::api::duration::parse(text).unwrap()
}

/// Waits for the grace of `old` in `<consumer>-mtls` to end and checks that the status and a
/// fresh token drop it within 2 s of `accepted_until`.
async fn assert_grace_ends_on_time(
    world: &World,
    credentials: &Credentials,
    consumer: &str,
    old: &TestCertificate,
    new: &TestCertificate,
    accepted_until: DateTime<Utc>,
) {
    let name = &format!("{consumer}-mtls");
    let settled = |c: &ConsumerCertificate| {
        state(c) == Some(CertificateState::Active)
            && c.status.as_ref().is_some_and(|s| s.previous.is_empty())
    };
    let (active, status_seen) = world
        .wait_certificate(name, "the grace to end", settled)
        .await;
    let old_gone = |c: &Value| !accepted_in_token(c).contains(&old.x5t_s256());
    let (claims, token_seen) = world
        .wait_claims(
            credentials,
            "the old thumbprint to leave the tokens",
            WAIT,
            old_gone,
        )
        .await;

    let status_late = status_seen - accepted_until;
    let token_late = token_seen - accepted_until;
    eprintln!(
        "{name}: grace end seen in status {} ms, in a token {} ms after acceptedUntil",
        status_late.num_milliseconds(),
        token_late.num_milliseconds()
    );
    assert!(
        status_late >= TimeDelta::zero(),
        "the old certificate left before its acceptedUntil"
    );
    assert!(
        status_late <= ON_TIME,
        "status dropped the old certificate {status_late} late"
    );
    assert!(
        token_late <= ON_TIME,
        "a token still had the old thumbprint {token_late} late"
    );
    assert_eq!(accepted_in_status(&active), [new.x5t_s256()]);
    assert_eq!(accepted_in_token(&claims), [new.x5t_s256()]);
    assert_eq!(cnf(&claims), Some(new.x5t_s256().as_str()));
}

#[tokio::test]
async fn a_rotated_certificate_stays_accepted_for_the_grace_period_and_leaves_on_time() {
    let world = World::new("ccert").await;
    let credentials = world.consumer("partner-r").await;
    let ca = TestCa::new();
    let old = ca.issue_for("partner-r", 90 * DAY);
    let new = ca.issue_for("partner-r", 180 * DAY);

    let accepted_until = rotate(&world, &credentials, "partner-r", &old, &new, "10s").await;

    assert_grace_ends_on_time(
        &world,
        &credentials,
        "partner-r",
        &old,
        &new,
        accepted_until,
    )
    .await;

    // The same certificate again, with its chain this time, is no rotation.
    let with_chain = format!("{}{}", new.pem, ca.certificate.pem);
    let applied = world
        .apply_certificate(
            "partner-r-mtls",
            "partner-r",
            json!({ "pem": with_chain, "gracePeriod": "10s" }),
        )
        .await
        .unwrap();
    let generation = applied.metadata.generation;
    let seen = |c: &ConsumerCertificate| {
        c.status
            .as_ref()
            .is_some_and(|s| s.observed_generation == generation)
    };
    let (again, _) = world
        .wait_certificate("partner-r-mtls", "the chain to be read", seen)
        .await;
    let status = again.status.as_ref().unwrap();
    assert_eq!(status.rotation_count, 1);
    assert_eq!(status.state, Some(CertificateState::Active));
    assert_eq!(status.previous, []);
    assert_eq!(ready(&again), Some(("True", "Valid")));
    world.assert_no_private_key_leaked(&[&old, &new]).await;
}

#[tokio::test]
async fn a_secret_ref_certificate_rotates_when_the_secret_is_renewed() {
    let world = World::new("ccert").await;
    let credentials = world.consumer("partner-s").await;
    let ca = TestCa::new();
    let first = ca.issue_for("partner-s", 90 * DAY);
    let renewed = ca.issue_for("partner-s", 180 * DAY);
    world
        .secrets()
        .create(
            &PostParams::default(),
            &tls_secret("partner-s-tls", &first, &ca),
        )
        .await
        .unwrap();
    let spec = json!({ "secretRef": { "name": "partner-s-tls" }, "gracePeriod": "1h" });
    world
        .apply_certificate("partner-s-mtls", "partner-s", spec)
        .await
        .unwrap();
    let (active, _) = world
        .wait_certificate("partner-s-mtls", "the Secret's certificate", |c| {
            current_x5t(c) == Some(first.x5t_s256().as_str())
        })
        .await;
    assert_eq!(state(&active), Some(CertificateState::Active));
    let labelled = world.secrets().get("partner-s-tls").await.unwrap();
    assert_eq!(
        labelled
            .labels()
            .get("gostoa.dev/watch")
            .map(String::as_str),
        Some("true")
    );

    // cert-manager renews: a new key and certificate in the same Secret.
    let renewal = json!({ "data": tls_data(&renewed, &ca) });
    world
        .secrets()
        .patch(
            "partner-s-tls",
            &PatchParams::default(),
            &Patch::Merge(renewal),
        )
        .await
        .unwrap();

    let is_rotating = |c: &ConsumerCertificate| state(c) == Some(CertificateState::Rotating);
    let (rotating, _) = world
        .wait_certificate("partner-s-mtls", "state Rotating", is_rotating)
        .await;
    let status = rotating.status.as_ref().unwrap();
    assert_eq!(
        status.current.as_ref().unwrap().x5t_s256,
        renewed.x5t_s256()
    );
    assert_eq!(status.previous[0].x5t_s256, first.x5t_s256());
    assert_eq!(status.rotation_count, 1);
    let both = sorted(&[&first.x5t_s256(), &renewed.x5t_s256()]);
    assert_eq!(accepted_in_status(&rotating), both);
    let (claims, _) = world
        .wait_claims(&credentials, "both thumbprints in a token", WAIT, |c| {
            accepted_in_token(c) == both
        })
        .await;
    assert_eq!(cnf(&claims), Some(renewed.x5t_s256().as_str()));
    world
        .assert_no_private_key_leaked(&[&first, &renewed])
        .await;
}

#[tokio::test]
async fn a_revoked_certificate_leaves_the_tokens_at_once_and_cannot_be_unrevoked() {
    let world = World::new("ccert").await;
    let credentials = world.consumer("partner-v").await;
    let ca = TestCa::new();
    let old = ca.issue_for("partner-v", 90 * DAY);
    let new = ca.issue_for("partner-v", 180 * DAY);
    rotate(&world, &credentials, "partner-v", &old, &new, "1h").await;

    let revoked = json!({ "pem": new.pem, "gracePeriod": "1h", "revoked": true });
    world
        .apply_certificate("partner-v-mtls", "partner-v", revoked)
        .await
        .unwrap();

    let revoked = world.wait_ready("partner-v-mtls", "False", "Revoked").await;
    let status = revoked.status.as_ref().unwrap();
    assert_eq!(status.state, Some(CertificateState::Revoked));
    assert_eq!(status.accepted_x5t_s256, Vec::<String>::new());
    assert_eq!(status.previous, []);
    let (claims, _) = world
        .wait_claims(&credentials, "no thumbprint in a token", WAIT, |c| {
            accepted_in_token(c).is_empty()
        })
        .await;
    assert_eq!(cnf(&claims), None);
    assert!(
        claims.get("cnf").is_none() && claims.get("x5t_s256_accepted").is_none(),
        "{claims}"
    );

    let unrevoke = json!({ "pem": new.pem, "gracePeriod": "1h", "revoked": false });
    let refused = world
        .apply_certificate("partner-v-mtls", "partner-v", unrevoke)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("revoked cannot be undone"),
        "{refused}"
    );
    let still = world.certificates().get("partner-v-mtls").await.unwrap();
    assert!(still.spec.revoked);
    assert_eq!(state(&still), Some(CertificateState::Revoked));
}

#[tokio::test]
async fn a_certificate_warns_before_it_expires_then_expires_and_leaves_the_tokens() {
    let world = World::new("ccert").await;
    let credentials = world.consumer("partner-e").await;
    let ca = TestCa::new();
    let certificate = ca.issue_for("partner-e", Duration::from_secs(40));
    let spec = json!({ "pem": certificate.pem, "expiryWarning": "25s" });

    world
        .apply_certificate("partner-e-mtls", "partner-e", spec)
        .await
        .unwrap();

    let active = world.wait_ready("partner-e-mtls", "True", "Valid").await;
    let not_after = active
        .status
        .as_ref()
        .unwrap()
        .current
        .as_ref()
        .unwrap()
        .not_after;
    let warning_at = not_after - TimeDelta::seconds(25);
    assert!(
        Utc::now() < warning_at,
        "the test needs the certificate Ready before the warning"
    );
    assert_eq!(
        condition(&active, "ExpiringSoon").map(|c| c.status.as_str()),
        Some("False")
    );
    let (claims, _) = world
        .wait_claims(&credentials, "cnf in a token", WAIT, |c| cnf(c).is_some())
        .await;
    assert_eq!(cnf(&claims), Some(certificate.x5t_s256().as_str()));

    let expiring_soon =
        |c: &ConsumerCertificate| condition(c, "ExpiringSoon").is_some_and(|c| c.status == "True");
    let (warned, warned_seen) = world
        .wait_certificate("partner-e-mtls", "ExpiringSoon=True", expiring_soon)
        .await;
    let is_expired = |c: &ConsumerCertificate| state(c) == Some(CertificateState::Expired);
    let (expired, expired_seen) = world
        .wait_certificate("partner-e-mtls", "state Expired", is_expired)
        .await;
    let (claims, token_seen) = world
        .wait_claims(&credentials, "no cnf in a token", WAIT, |c| {
            cnf(c).is_none()
        })
        .await;

    let warning_late = warned_seen - warning_at;
    let status_late = expired_seen - not_after;
    let token_late = token_seen - not_after;
    eprintln!(
        "partner-e-mtls: ExpiringSoon seen {} ms after notAfter - expiryWarning; expiry seen in \
         status {} ms, in a token {} ms after notAfter",
        warning_late.num_milliseconds(),
        status_late.num_milliseconds(),
        token_late.num_milliseconds()
    );
    assert_eq!(
        state(&warned),
        Some(CertificateState::Active),
        "warned before it expired"
    );
    assert!(
        warning_late >= TimeDelta::zero(),
        "warned before notAfter - expiryWarning"
    );
    assert!(warning_late <= ON_TIME, "warned {warning_late} late");
    assert!(
        status_late >= TimeDelta::zero(),
        "expired before its notAfter"
    );
    assert!(status_late <= ON_TIME, "expired {status_late} late");
    assert!(token_late <= ON_TIME, "still in a token {token_late} late");
    assert_eq!(ready(&expired), Some(("False", "Expired")));
    assert_eq!(
        expired.status.as_ref().unwrap().accepted_x5t_s256,
        Vec::<String>::new()
    );
    assert_eq!(accepted_in_token(&claims), Vec::<String>::new());
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(world.client.clone(), &world.namespace);
    let events = events.list(&ListParams::default()).await.unwrap().items;
    let expired_event = events.iter().any(|e| {
        e.type_.as_deref() == Some("Warning")
            && e.reason.as_deref() == Some("Expired")
            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("partner-e-mtls")
    });
    assert!(expired_event, "a Warning event Expired: {events:?}");
}

#[tokio::test]
async fn bad_inputs_are_rejected_with_their_reason_and_nothing_of_them_is_bound() {
    let world = World::new("ccert").await;
    let credentials = world.consumer("partner-b").await;
    let ca = TestCa::new();
    let with_key = ca.issue_for("partner-b-keyed", 90 * DAY);
    let now = SystemTime::now();
    let expired = ca.issue("partner-b-old", now - 30 * DAY, now - DAY);
    let good = ca.issue_for("partner-b", 90 * DAY);
    let cases = [
        (
            "garbage",
            "this is not a certificate\n".to_owned(),
            "InvalidCertificate",
        ),
        (
            "with-key",
            format!("{}{}", with_key.pem, with_key.key_pem),
            "PrivateKeyIncluded",
        ),
        ("ca", ca.certificate.pem.clone(), "CACertificate"),
        ("expired", expired.pem.clone(), "Expired"),
    ];

    for (name, pem, _) in &cases {
        world
            .apply_certificate(name, "partner-b", json!({ "pem": pem }))
            .await
            .unwrap();
    }
    let oversized = format!("{}{}", good.pem, "#".repeat(65 * 1024));
    let too_long = world
        .apply_certificate("oversized", "partner-b", json!({ "pem": oversized }))
        .await;

    for (name, _, reason) in &cases {
        let rejected = world.wait_ready(name, "False", reason).await;
        let status = rejected.status.unwrap();
        assert_eq!(status.state, None, "{name}");
        assert_eq!(status.current, None, "{name}");
        assert_eq!(status.accepted_x5t_s256, Vec::<String>::new(), "{name}");
    }
    let too_long = too_long.expect_err("the API server refuses a 65 KiB pem");
    assert!(too_long.to_string().contains("spec.pem"), "{too_long}");
    assert!(too_long.to_string().contains("65536"), "{too_long}");
    assert!(
        world
            .certificates()
            .get_opt("oversized")
            .await
            .unwrap()
            .is_none()
    );

    // A good certificate of the same consumer, bound last: the token then holds it alone.
    world
        .apply_certificate("good", "partner-b", json!({ "pem": good.pem }))
        .await
        .unwrap();
    world.wait_ready("good", "True", "Valid").await;
    let (claims, _) = world
        .wait_claims(&credentials, "the good certificate in a token", WAIT, |c| {
            cnf(c).is_some()
        })
        .await;
    assert_eq!(cnf(&claims), Some(good.x5t_s256().as_str()));
    assert_eq!(accepted_in_token(&claims), [good.x5t_s256()]);
    world
        .assert_no_private_key_leaked(&[&with_key, &expired, &good])
        .await;
}

#[tokio::test]
async fn a_thumbprint_of_another_consumer_of_the_tenant_is_a_conflict_and_is_not_bound() {
    let world = World::new("ccert").await;
    let first = world.consumer("partner-one").await;
    let second = world.consumer("partner-two").await;
    let ca = TestCa::new();
    let shared = ca.issue_for("partner-one", 90 * DAY);
    let own = ca.issue_for("partner-two", 90 * DAY);
    world
        .apply_certificate("one-mtls", "partner-one", json!({ "pem": shared.pem }))
        .await
        .unwrap();
    world.wait_ready("one-mtls", "True", "Valid").await;

    world
        .apply_certificate("two-mtls", "partner-two", json!({ "pem": shared.pem }))
        .await
        .unwrap();

    let conflict = world
        .wait_ready("two-mtls", "False", "FingerprintConflict")
        .await;
    assert_eq!(
        conflict.status.as_ref().unwrap().accepted_x5t_s256,
        Vec::<String>::new()
    );
    // The second consumer's own certificate, bound after the conflict, is all its tokens hold.
    world
        .apply_certificate("two-own", "partner-two", json!({ "pem": own.pem }))
        .await
        .unwrap();
    world.wait_ready("two-own", "True", "Valid").await;
    let (claims, _) = world
        .wait_claims(&second, "its own certificate in a token", WAIT, |c| {
            cnf(c).is_some()
        })
        .await;
    assert_eq!(cnf(&claims), Some(own.x5t_s256().as_str()));
    assert_eq!(accepted_in_token(&claims), [own.x5t_s256()]);
    let claims = world.claims(&first).await;
    assert_eq!(cnf(&claims), Some(shared.x5t_s256().as_str()));
    assert_eq!(accepted_in_token(&claims), [shared.x5t_s256()]);
    let first_still = world.certificates().get("one-mtls").await.unwrap();
    assert_eq!(ready(&first_still), Some(("True", "Valid")));
}

#[tokio::test]
async fn an_operator_restarted_during_a_grace_period_still_ends_it_on_time() {
    let mut world = World::new("ccert").await;
    let credentials = world.consumer("partner-t").await;
    let ca = TestCa::new();
    let old = ca.issue_for("partner-t", 90 * DAY);
    let new = ca.issue_for("partner-t", 180 * DAY);
    let accepted_until = rotate(&world, &credentials, "partner-t", &old, &new, "20s").await;

    world.operator.restart();
    world.operator.metrics().await;
    let restarted_at = Utc::now();

    let left = accepted_until - restarted_at;
    eprintln!(
        "partner-t-mtls: restarted {} ms before acceptedUntil",
        left.num_milliseconds()
    );
    assert!(
        left > TimeDelta::seconds(3),
        "the restart must fall within the grace ({left})"
    );
    let both = sorted(&[&old.x5t_s256(), &new.x5t_s256()]);
    let checked = world
        .assert_claims_until(
            &credentials,
            "a token after the restart lacks a thumbprint still in its grace",
            accepted_until - TimeDelta::seconds(1),
            |c| accepted_in_token(c) == both,
        )
        .await;
    assert!(
        checked > 0,
        "tokens were checked between the restart and the grace end"
    );
    assert_grace_ends_on_time(
        &world,
        &credentials,
        "partner-t",
        &old,
        &new,
        accepted_until,
    )
    .await;
}

/// The documents of a multi-document YAML file of `examples/`, moved into `namespace`.
fn example(file: &str, namespace: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(common::repo_root().join("examples").join(file)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|document| !document.is_null())
        .map(|mut document| {
            document["metadata"]["namespace"] = json!(namespace);
            document
        })
        .collect()
}

#[tokio::test]
async fn the_certificate_examples_apply_and_bind_their_certificates() {
    let world = World::new("ccert").await;
    let documents: Vec<Value> = ["certificate-inline.yaml", "certificate-secret.yaml"]
        .into_iter()
        .flat_map(|file| example(file, &world.namespace))
        .collect();
    let certificates: Vec<(String, String)> = documents
        .iter()
        .filter(|d| d["kind"] == "ConsumerCertificate")
        .map(|d| {
            let name = d["metadata"]["name"].as_str().unwrap();
            let consumer = d["spec"]["consumerRef"]["name"].as_str().unwrap();
            (name.to_owned(), consumer.to_owned())
        })
        .collect();
    // The examples' Consumers come from 10-consumers.yaml; here they belong to the test's tenant.
    let mut credentials = std::collections::BTreeMap::new();
    for (_, consumer) in &certificates {
        credentials.insert(consumer.clone(), world.consumer(consumer).await);
    }
    let params = PatchParams::apply("tests").force();

    for document in documents {
        let name = document["metadata"]["name"].as_str().unwrap().to_owned();
        let applied = match document["kind"].as_str().unwrap() {
            "ConsumerCertificate" => world
                .certificates()
                .patch(&name, &params, &Patch::Apply(document))
                .await
                .map(drop),
            "Secret" => world
                .secrets()
                .patch(&name, &params, &Patch::Apply(document))
                .await
                .map(drop),
            other => panic!("{name}: an example of kind {other} is not expected here"),
        };
        applied.unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    assert_eq!(certificates.len(), 2, "one ConsumerCertificate per example");
    for (name, consumer) in &certificates {
        let active = world.wait_ready(name, "True", "Valid").await;
        assert_eq!(state(&active), Some(CertificateState::Active));
        let x5t = current_x5t(&active).unwrap();
        let (claims, _) = world
            .wait_claims(
                &credentials[consumer],
                "the example's thumbprint in a token",
                WAIT,
                |c| cnf(c) == Some(x5t) && !accepted_in_token(c).is_empty(),
            )
            .await;
        assert_eq!(accepted_in_token(&claims), [x5t]);
    }
}

/// `consumer_operator_reconciles_total` of `kind` in the operator's metrics text.
fn reconciles(metrics: &str, kind: &str) -> u64 {
    let prefix = format!("consumer_operator_reconciles_total{{kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |count| count.trim().parse().expect("a counter"))
}

#[tokio::test]
async fn a_fingerprint_conflict_holds_across_an_operator_restart() {
    let mut world = World::new("ccert").await;
    world.consumer("partner-one").await;
    let second = world.consumer("partner-two").await;
    let ca = TestCa::new();
    let shared = ca.issue_for("partner-one", 90 * DAY);
    let pem = json!({ "pem": shared.pem });
    world
        .apply_certificate("one-mtls", "partner-one", pem.clone())
        .await
        .unwrap();
    world.wait_ready("one-mtls", "True", "Valid").await;
    world
        .apply_certificate("two-mtls", "partner-two", pem)
        .await
        .unwrap();
    world
        .wait_ready("two-mtls", "False", "FingerprintConflict")
        .await;
    let window = Duration::from_secs(12);
    let versions = world.watch_certificate("two-mtls", tokio::time::Instant::now() + window);

    world.operator.restart();

    let window_end = Utc::now() + TimeDelta::from_std(window).unwrap();
    let checked = world
        .assert_claims_until(
            &second,
            "the shared thumbprint in the second consumer's token",
            window_end,
            |c| !accepted_in_token(c).contains(&shared.x5t_s256()),
        )
        .await;
    let versions = versions.await.unwrap();
    let metrics = world.operator.metrics().await;
    assert!(
        reconciles(&metrics, "ConsumerCertificate") >= 2,
        "the restarted operator reconciled both certificates within the window:\n{metrics}"
    );
    assert!(checked > 0);
    for version in &versions {
        let status = version.status.as_ref().unwrap();
        assert_eq!(status.accepted_x5t_s256, Vec::<String>::new(), "{status:?}");
    }
    let last = versions.last().expect("the watch saw the certificate");
    assert_eq!(ready(last), Some(("False", "FingerprintConflict")));
}

#[tokio::test]
async fn a_deleted_certificate_leaves_the_tokens_before_the_object_goes() {
    let world = World::new("ccert").await;
    let credentials = world.consumer("partner-del").await;
    let ca = TestCa::new();
    let kept = ca.issue_for("partner-del", 90 * DAY);
    let deleted = ca.issue_for("partner-del", 180 * DAY);
    for (name, certificate) in [("kept", &kept), ("deleted", &deleted)] {
        let spec = json!({ "pem": certificate.pem });
        world
            .apply_certificate(name, "partner-del", spec)
            .await
            .unwrap();
        world.wait_ready(name, "True", "Valid").await;
    }
    let both = sorted(&[&kept.x5t_s256(), &deleted.x5t_s256()]);
    world
        .wait_claims(&credentials, "both thumbprints in a token", WAIT, |c| {
            accepted_in_token(c) == both
        })
        .await;

    world.delete_certificate("deleted").await;

    // The finalizer unbinds before it lets the object go: the first token afterwards is clean.
    let claims = world.claims(&credentials).await;
    assert_eq!(accepted_in_token(&claims), vec![kept.x5t_s256()]);
    assert_eq!(cnf(&claims), Some(kept.x5t_s256().as_str()));

    world.delete_certificate("kept").await;
    let claims = world.claims(&credentials).await;
    assert!(
        claims.get("cnf").is_none() && claims.get("x5t_s256_accepted").is_none(),
        "no binding is left once the last certificate is gone: {claims}"
    );
}

#[tokio::test]
async fn the_api_server_enforces_the_certificate_rules_with_the_field_named() {
    let world = World::new("ccert").await;
    let ca = TestCa::new();
    let pem = ca.issue_for("partner-rules", 90 * DAY).pem;
    let source = json!({ "name": "partner-rules-tls" });
    let cases = [
        ("no source", json!({}), "exactly one of pem and secretRef"),
        (
            "two sources",
            json!({ "pem": pem, "secretRef": source }),
            "exactly one of pem and secretRef",
        ),
        (
            "a grace below 1s",
            json!({ "pem": pem, "gracePeriod": "500ms" }),
            "gracePeriod",
        ),
        (
            "a grace over 720h",
            json!({ "pem": pem, "gracePeriod": "721h" }),
            "gracePeriod",
        ),
    ];

    for (what, spec, expected) in cases {
        let error = world
            .apply_certificate("rules", "partner-rules", spec)
            .await
            .unwrap_err();
        assert!(error.to_string().contains(expected), "{what}: {error}");
    }

    world
        .apply_certificate("rules", "partner-rules", json!({ "pem": pem }))
        .await
        .unwrap();
    let moved = world
        .apply_certificate("rules", "someone-else", json!({ "pem": pem }))
        .await
        .unwrap_err();
    assert!(
        moved.to_string().contains("consumerRef.name is immutable"),
        "{moved}"
    );
}
