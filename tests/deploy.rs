//! Installing and operating consumer-operator as DESIGN.md's "Deployment" and "Runtime" say,
//! against the real stack: the Helm chart and the kustomize manifests render, apply and install;
//! the operator's ClusterRole is enough for a Consumer lifecycle and no more; the user roles; the
//! tenant-isolation admission policy; the metrics the Grafana dashboard reads.
//!
//! The stack has no kubelet and no scheduler: the operator's pods are created but never run. In
//! a namespace that enforces the "restricted" Pod Security Standard, their creation shows that
//! they meet it. Every test installs under release
//! and namespace names of its own, so that cluster-scoped objects (ClusterRoles, the admission
//! policy) never collide, and removes them when it ends. CRDs are never deleted: other tests use
//! them.

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use common::{
    Keycloak, Operator, create_namespace, env, eventually, impersonating_kubeconfig, kube_client,
    repo_root, tempdir, unique, wait_consumer_ready,
};
use consumer_operator::{
    api::{Consumer, ConsumerCertificate},
    names,
};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Pod, Secret},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::wait::{await_condition, conditions},
};
use serde_json::{Value, json};

const CHART: &str = "deploy/helm/consumer-operator";
const TEST_VALUES: &str = "deploy/helm/consumer-operator/ci/test-values.yaml";
/// The field manager of `common::apply_crds`: applying the same CRDs again shares their fields
/// instead of conflicting.
const FIELD_MANAGER: &str = "consumer-operator-tests";
/// Generous: other engineers' tests share the two cores.
const WAIT: Duration = Duration::from_secs(120);
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
/// Replicas in ci/test-values.yaml and in the plain manifests.
const REPLICAS: usize = 2;

// ------------------------------------------------------------------------------------------
// Harness: kubectl, helm, releases and applied files that clean up after themselves.

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .env("KUBECONFIG", env("KUBECONFIG"))
        .env("HELM", env("HELM"))
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

/// Runs the command and returns its standard output; a failure fails the test with its output.
fn run_ok(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{program} {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn kubectl(args: &[&str]) -> String {
    run_ok(&env("KUBECTL"), args)
}

fn helm(args: &[&str]) -> String {
    run_ok(&env("HELM"), args)
}

/// Subresources `can_i` asks about as `kind/sub`; any other `kind/name` names one object.
const SUBRESOURCES: [&str; 4] = ["exec", "log", "status", "token"];

/// `kubectl auth can-i VERB RESOURCE --as USER` in `namespace` (None: all namespaces). A resource
/// type the server does not know fails the test, so that a typo cannot pass as a "no".
fn can_i(user: &str, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((kind, sub)) if SUBRESOURCES.contains(&sub) => (kind, Some(sub)),
        _ => (resource, None),
    };
    let mut args = vec!["auth", "can-i", verb, resource, "--as", user];
    if let Some(sub) = subresource {
        args.extend(["--subresource", sub]);
    }
    match namespace {
        Some(ns) => args.extend(["-n", ns]),
        None => args.push("--all-namespaces"),
    }
    let output = run(&env("KUBECTL"), &args);
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("doesn't have a resource type"),
        "kubectl auth can-i {verb} {resource}: {stderr}"
    );
    match stdout.as_str() {
        "yes" => true,
        "no" => false,
        _ => panic!("kubectl auth can-i {}: {stdout} {stderr}", args.join(" ")),
    }
}

/// Asserts every `(verb, resource)` for `user` in `namespace`, collecting all mismatches first.
fn assert_can(user: &str, namespace: Option<&str>, expected: bool, checks: &[(&str, &str)]) {
    let wrong: Vec<String> = checks
        .iter()
        .filter(|(verb, resource)| can_i(user, verb, resource, namespace) != expected)
        .map(|(verb, resource)| format!("{verb} {resource}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "{user} in {namespace:?} should{} be allowed to: {wrong:?}",
        if expected { "" } else { " not" }
    );
}

/// A Helm release of the chart, uninstalled (with its namespace) when dropped.
struct Release {
    name: String,
    namespace: String,
}

impl Release {
    /// `helm install` with ci/test-values.yaml and `extra` arguments, in a new namespace.
    fn install(prefix: &str, extra: &[&str]) -> Self {
        let release = Self {
            name: unique(prefix),
            namespace: unique(&format!("{prefix}-ns")),
        };
        let mut args = vec![
            "install",
            &release.name,
            CHART,
            "--namespace",
            &release.namespace,
            "--create-namespace",
            "--values",
            TEST_VALUES,
        ];
        args.extend(extra);
        helm(&args);
        release
    }

    /// The chart's fullname: `<release>-consumer-operator`, the name of most of its objects.
    fn fullname(&self) -> String {
        format!("{}-consumer-operator", self.name)
    }

    /// The operator's ServiceAccount as an RBAC user name.
    fn service_account_user(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace,
            self.fullname()
        )
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let kubectl = env("KUBECTL");
        let _ = run(
            &env("HELM"),
            &["uninstall", &self.name, "--namespace", &self.namespace],
        );
        let _ = run(
            &kubectl,
            &["delete", "namespace", &self.namespace, "--wait=false"],
        );
    }
}

/// The objects of a rendered file applied with kubectl; deleted when dropped, except the CRDs.
struct Applied {
    objects: PathBuf,
    namespace: String,
}

impl Drop for Applied {
    fn drop(&mut self) {
        let objects = self.objects.display().to_string();
        let kubectl = env("KUBECTL");
        let _ = run(
            &kubectl,
            &[
                "delete",
                "-f",
                &objects,
                "--ignore-not-found",
                "--wait=false",
            ],
        );
        let _ = run(
            &kubectl,
            &["delete", "namespace", &self.namespace, "--wait=false"],
        );
    }
}

/// The YAML documents of a multi-document text, without empty ones.
fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|document| serde::Deserialize::deserialize(document).expect("a YAML document"))
        .filter(|document: &Value| !document.is_null())
        .collect()
}

fn kind(document: &Value) -> &str {
    document["kind"].as_str().unwrap_or_default()
}

/// Writes the documents except CRDs and Namespaces (shared with other tests or handled
/// separately) into a file: what the test creates and deletes.
fn objects_file(documents: &[Value], dir: &Path) -> PathBuf {
    let text: String = documents
        .iter()
        .filter(|d| !matches!(kind(d), "CustomResourceDefinition" | "Namespace"))
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
        .collect();
    let path = dir.join("objects.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Server-side dry run of `manifest`, which must create nothing; then the real apply, after which
/// every object exists; then the Deployment's pods appear, admitted under the namespace's Pod
/// Security Standard.
async fn apply_dry_run_then_for_real(client: &Client, manifest: &Path, namespace: &str) -> Applied {
    let rendered = std::fs::read_to_string(manifest).unwrap();
    let documents = documents(&rendered);
    let applied = Applied {
        objects: objects_file(&documents, manifest.parent().unwrap()),
        namespace: namespace.to_owned(),
    };
    let manifest = manifest.display().to_string();
    let objects = applied.objects.display().to_string();
    let apply = [
        "apply",
        "--server-side",
        "--field-manager",
        FIELD_MANAGER,
        "-f",
        &manifest,
    ];

    kubectl(&[&apply[..], &["--dry-run=server"]].concat());
    let after_dry_run = kubectl(&["get", "-f", &objects, "--ignore-not-found", "-o", "name"]);
    kubectl(&apply);

    assert_eq!(
        after_dry_run.trim(),
        "",
        "the server dry run created objects"
    );
    let created = kubectl(&["get", "-f", &objects, "-o", "name"]);
    let expected = documents
        .iter()
        .filter(|d| !matches!(kind(d), "CustomResourceDefinition" | "Namespace"))
        .count();
    assert_eq!(
        created.lines().count(),
        expected,
        "objects after apply:\n{created}"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    eventually("the operator's pods", WAIT, || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default()).await.ok()?;
            (list.items.len() == REPLICAS).then_some(())
        }
    })
    .await;
    applied
}

/// `to` relative to `from` (both absolute directories): kustomize refuses absolute bases.
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for component in &to[common..] {
        path.push(component);
    }
    path
}

fn pod_security_restricted() -> [(&'static str, &'static str); 1] {
    [("pod-security.kubernetes.io/enforce", "restricted")]
}

// ------------------------------------------------------------------------------------------
// 1. The chart and the manifests.

#[test]
fn chart_lints_and_chart_and_manifests_carry_the_generated_crds() {
    let crds = repo_root().join("crds");
    let copies = [
        repo_root().join(CHART).join("crds"),
        repo_root().join("deploy/manifests/crds"),
    ];

    let lint = helm(&["lint", "--strict", CHART, "--values", TEST_VALUES]);
    let rendered = run(
        &repo_root()
            .join("deploy/render-manifests.sh")
            .display()
            .to_string(),
        &["--check"],
    );

    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    assert!(
        rendered.status.success(),
        "deploy/manifests is not what the chart renders:\n{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let names = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    for copy in &copies {
        assert_eq!(names(copy), names(&crds), "CRD files in {}", copy.display());
        for file in names(&crds) {
            let original = std::fs::read(crds.join(&file)).unwrap();
            let copied = std::fs::read(copy.join(&file)).unwrap();
            assert!(
                original == copied,
                "{} differs from crds/{file}: run deploy/sync-crds.sh",
                copy.join(&file).display()
            );
        }
    }
}

#[test]
fn chart_rejects_bad_values_before_anything_is_installed() {
    let template = |extra: &[&str]| {
        let mut args = vec!["template", "bad", CHART, "--values", TEST_VALUES];
        args.extend(extra);
        run(&env("HELM"), &args)
    };

    let wrong_type = template(&["--set", "replicaCount=two"]);
    let unknown_key = template(&["--set", "replicas=2"]);
    let no_keycloak = template(&["--set", "keycloak.url="]);
    let single_replica_without_election = template(&[
        "--set",
        "replicaCount=1",
        "--set",
        "leaderElection.enabled=false",
    ]);

    for (output, field) in [
        (&wrong_type, "replicaCount"),
        (&unknown_key, "replicas"),
        (&no_keycloak, "keycloak/url"),
    ] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{field}: accepted");
        assert!(stderr.contains(field), "{field}: {stderr}");
    }
    assert!(
        single_replica_without_election.status.success(),
        "a valid combination was rejected: {}",
        String::from_utf8_lossy(&single_replica_without_election.stderr)
    );
}

#[test]
fn deployment_uses_only_environment_variables_the_operator_reads() {
    let help = run_ok(env!("CARGO_BIN_EXE_consumer-operator"), &["run", "--help"]);
    let rendered = helm(&[
        "template",
        "envcheck",
        CHART,
        "--values",
        TEST_VALUES,
        "--show-only",
        "templates/deployment.yaml",
    ]);

    let deployment = &documents(&rendered)[0];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let known = |name: &str| help.contains(&format!("[env: {name}=")) || name == "RUST_LOG";
    let unknown: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .filter(|name| !known(name))
        .collect();
    assert!(unknown.is_empty(), "the operator reads no {unknown:?}");
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    for arg in &args[1..] {
        let flag = arg.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{flag} ")),
            "the operator has no {flag}"
        );
    }
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], json!(true));
    assert_eq!(security["allowPrivilegeEscalation"], json!(false));
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
}

#[test]
fn service_monitor_scrapes_the_metrics_service_port() {
    let rendered = helm(&[
        "template",
        "scrape",
        CHART,
        "--values",
        TEST_VALUES,
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--show-only",
        "templates/servicemonitor.yaml",
        "--show-only",
        "templates/service.yaml",
    ]);

    let documents = documents(&rendered);
    let of_kind = |k: &str| documents.iter().find(|d| kind(d) == k).unwrap().clone();
    let (monitor, service) = (of_kind("ServiceMonitor"), of_kind("Service"));
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    for (label, value) in selector {
        assert_eq!(
            &service["metadata"]["labels"][label], value,
            "label {label}"
        );
    }
    let port = &monitor["spec"]["endpoints"][0]["port"];
    let ports = service["spec"]["ports"].as_array().unwrap();
    assert!(
        ports.iter().any(|p| &p["name"] == port),
        "no Service port {port}"
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
}

#[tokio::test]
async fn helm_template_output_applies_with_a_server_dry_run_and_then_for_real() {
    let client = kube_client().await;
    let namespace = unique("co-template");
    create_namespace(&client, &namespace, &pod_security_restricted()).await;
    let dir = tempdir("template");
    let manifest = dir.join("rendered.yaml");
    let rendered = helm(&[
        "template",
        &unique("tpl"),
        CHART,
        "--namespace",
        &namespace,
        "--values",
        TEST_VALUES,
        "--include-crds",
    ]);
    std::fs::write(&manifest, &rendered).unwrap();

    let _applied = apply_dry_run_then_for_real(&client, &manifest, &namespace).await;

    let kinds: BTreeSet<String> = documents(&rendered)
        .iter()
        .map(|d| kind(d).to_owned())
        .collect();
    for expected in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        assert!(
            kinds.contains(expected),
            "no {expected} in the chart: {kinds:?}"
        );
    }
}

#[tokio::test]
async fn kustomize_output_applies_with_a_server_dry_run_and_then_for_real() {
    let client = kube_client().await;
    let namespace = unique("co-kustomize");
    // The server dry run of namespaced objects needs their namespace to exist already.
    create_namespace(&client, &namespace, &[]).await;
    let overlay = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("kustomize-overlay"));
    std::fs::create_dir_all(&overlay).unwrap();
    let base = relative_path(&overlay, &repo_root().join("deploy/manifests"));
    // An overlay as deploy/manifests/kustomization.yaml tells users to write, plus a name prefix
    // that keeps this test's cluster-scoped objects apart from every other install.
    let kustomization = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         namespace: {namespace}\nnamePrefix: {prefix}-\nresources:\n  - {base}\n\
         patches:\n  - patch: |-\n      apiVersion: apps/v1\n      kind: Deployment\n      \
         metadata: {{name: consumer-operator, namespace: consumer-operator}}\n      spec:\n        \
         template:\n          spec:\n            containers:\n              - name: operator\n\
         \x20               env:\n                  - name: KEYCLOAK_URL\n\
         \x20                   value: https://keycloak.example.org\n",
        prefix = unique("kz"),
        base = base.display(),
    );
    std::fs::write(overlay.join("kustomization.yaml"), kustomization).unwrap();
    let rendered = kubectl(&["kustomize", &overlay.display().to_string()]);
    let manifest = overlay.join("rendered.yaml");
    std::fs::write(&manifest, &rendered).unwrap();

    let _applied = apply_dry_run_then_for_real(&client, &manifest, &namespace).await;

    let labels = kubectl(&[
        "get",
        "namespace",
        &namespace,
        "-o",
        "jsonpath={.metadata.labels}",
    ]);
    assert!(
        labels.contains(r#""pod-security.kubernetes.io/enforce":"restricted""#),
        "the manifests' namespace labels were not applied: {labels}"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let deployment = &deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items[0];
    let env = serde_json::to_value(&deployment.spec.template).unwrap();
    assert!(
        env.to_string().contains("https://keycloak.example.org"),
        "the patch was lost"
    );
}

#[tokio::test]
async fn helm_install_upgrade_and_uninstall_create_change_and_remove_the_objects() {
    let client = kube_client().await;

    let release = Release::install("inst", &[]);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &release.namespace);
    let installed = deployments.get(&release.fullname()).await.unwrap();
    let cluster_objects = [
        format!("clusterrole/{}", release.fullname()),
        format!("clusterrole/{}-viewer", release.fullname()),
        format!("clusterrole/{}-devops", release.fullname()),
        format!("clusterrole/{}-tenant-admin", release.fullname()),
        format!("clusterrole/{}-cpi-admin", release.fullname()),
        format!("clusterrolebinding/{}", release.fullname()),
        format!(
            "validatingadmissionpolicy/{}-tenant-isolation",
            release.fullname()
        ),
        format!(
            "validatingadmissionpolicybinding/{}-tenant-isolation",
            release.fullname()
        ),
    ];
    let namespaced_objects = [
        format!("serviceaccount/{}", release.fullname()),
        format!("service/{}-metrics", release.fullname()),
        format!("role/{}-leader-election", release.fullname()),
        format!("rolebinding/{}-leader-election", release.fullname()),
        format!("poddisruptionbudget/{}", release.fullname()),
    ];
    for object in cluster_objects.iter().chain(&namespaced_objects) {
        kubectl(&["get", "-n", &release.namespace, object, "-o", "name"]);
    }
    assert_eq!(installed.spec.replicas, Some(REPLICAS as i32));
    assert_eq!(
        container_env(&installed, "RESYNC_INTERVAL").as_deref(),
        Some("5m")
    );

    helm(&[
        "upgrade",
        &release.name,
        CHART,
        "--namespace",
        &release.namespace,
        "--values",
        TEST_VALUES,
        "--set",
        "operator.resyncInterval=7m",
        "--set",
        "replicaCount=3",
    ]);

    let upgraded = deployments.get(&release.fullname()).await.unwrap();
    assert_eq!(upgraded.spec.replicas, Some(3));
    assert_eq!(
        container_env(&upgraded, "RESYNC_INTERVAL").as_deref(),
        Some("7m")
    );
    assert!(upgraded.metadata.generation > installed.metadata.generation);
    let status = helm(&[
        "status",
        &release.name,
        "-n",
        &release.namespace,
        "-o",
        "json",
    ]);
    assert_eq!(
        serde_json::from_str::<Value>(&status).unwrap()["version"],
        2
    );

    helm(&[
        "uninstall",
        &release.name,
        "--namespace",
        &release.namespace,
    ]);

    let (name, uid) = (release.fullname(), installed.metadata.uid.clone().unwrap());
    let gone = await_condition(deployments.clone(), &name, conditions::is_deleted(&uid));
    tokio::time::timeout(WAIT, gone)
        .await
        .expect("Deployment deleted")
        .unwrap();

    for object in cluster_objects.iter().chain(&namespaced_objects) {
        let left = kubectl(&[
            "get",
            "-n",
            &release.namespace,
            object,
            "--ignore-not-found",
        ]);
        assert_eq!(left.trim(), "", "{object} is left after helm uninstall");
    }
    kubectl(&["get", "crd", "consumers.gostoa.dev", "-o", "name"]);
}

fn container_env(deployment: &Deployment, name: &str) -> Option<String> {
    let spec = deployment.spec.template.spec.as_ref()?;
    let env = spec.containers[0].env.as_ref()?;
    env.iter().find(|e| e.name == name)?.value.clone()
}

// ------------------------------------------------------------------------------------------
// 2. The operator's rights: enough, and no more.

#[tokio::test]
async fn operator_runs_a_consumer_lifecycle_with_only_its_service_accounts_rights() {
    let client = kube_client().await;
    common::apply_crds(&client).await;
    let workspace = unique("co-rbac-work");
    create_namespace(&client, &workspace, &[]).await;
    let release = Release::install(
        "rbac",
        &[
            "--set",
            &format!("operator.watchNamespaces={{{workspace}}}"),
        ],
    );
    let tenant = unique("tenant");
    let keycloak = Keycloak::from_stack();
    keycloak.create_realm(&tenant).await;
    let kubeconfig = impersonating_kubeconfig(&release.service_account_user());
    let operator = Operator::start_with_kubeconfig(
        &kubeconfig,
        &[&workspace],
        &[
            "--leader-election",
            "--leader-election-namespace",
            &release.namespace,
            "--leader-election-name",
            &release.fullname(),
            "--leader-election-identity",
            "replica-a",
        ],
    );
    let consumers: Api<Consumer> = Api::namespaced(client.clone(), &workspace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &workspace);

    consumers
        .create(&PostParams::default(), &consumer("partner-r", &tenant))
        .await
        .unwrap();

    let ready = wait_consumer_ready(&consumers, "partner-r", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", operator.logs()));
    let secret = secrets.get("partner-r-credentials").await.unwrap();
    let data = secret.data.clone().unwrap_or_default();
    let text = |key: &str| String::from_utf8(data[key].0.clone()).unwrap();
    let claims = keycloak
        .token(
            &text(names::secret::TOKEN_URL),
            &text(names::secret::CLIENT_ID),
            &text(names::secret::CLIENT_SECRET),
        )
        .await
        .expect("a token with the Secret's credentials");
    assert_eq!(claims[names::claims::CONSUMER_ID], "partner-r");
    let client_id = format!("{tenant}-partner-r");
    assert_eq!(keycloak.clients(&tenant, &client_id).await.len(), 1);

    consumers
        .delete("partner-r", &DeleteParams::default())
        .await
        .unwrap();

    let uid = ready.metadata.uid.clone().unwrap();
    let deleted = await_condition(consumers.clone(), "partner-r", conditions::is_deleted(&uid));
    tokio::time::timeout(WAIT, deleted)
        .await
        .unwrap_or_else(|_| panic!("the Consumer was not deleted:\n{}", operator.logs()))
        .unwrap();
    assert!(
        keycloak.clients(&tenant, &client_id).await.is_empty(),
        "client left"
    );
    eventually("the credentials Secret deleted", WAIT, || {
        let secrets = secrets.clone();
        async move {
            secrets
                .get_opt("partner-r-credentials")
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;
    let events = kubectl(&[
        "get",
        "events.events.k8s.io",
        "-n",
        &workspace,
        "-o",
        "json",
    ]);
    assert!(
        events.contains(names::event::CLIENT_CREATED),
        "no event published"
    );
    let logs = operator.logs();
    assert!(
        logs.contains("leading"),
        "the operator never took its Lease:\n{logs}"
    );
    assert!(
        !logs.to_lowercase().contains("forbidden"),
        "a call was forbidden:\n{logs}"
    );
    keycloak.delete_realm(&tenant).await;
}

fn consumer(name: &str, tenant: &str) -> Consumer {
    serde_json::from_value(common::consumer_manifest(name, tenant, json!({}))).unwrap()
}

/// What no behaviour of DESIGN.md needs, anywhere.
const NEVER_NEEDED: &[(&str, &str)] = &[
    ("get", "pods"),
    ("list", "pods"),
    ("create", "pods"),
    ("create", "pods/exec"),
    ("get", "pods/log"),
    ("get", "configmaps"),
    ("list", "namespaces"),
    ("get", "nodes"),
    ("create", "serviceaccounts/token"),
    ("create", "deployments.apps"),
    ("deletecollection", "secrets"),
    ("create", "consumers.gostoa.dev"),
    ("delete", "consumers.gostoa.dev"),
    ("delete", "consumercertificates.gostoa.dev"),
    ("create", "events"),
    // Every write of the operator is a server-side apply or a JSON patch.
    ("update", "secrets"),
    ("update", "consumers.gostoa.dev"),
    ("update", "consumercertificates.gostoa.dev"),
    ("update", "customresourcedefinitions.apiextensions.k8s.io"),
    ("update", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"),
    ("impersonate", "users"),
    (
        "update",
        "validatingadmissionpolicies.admissionregistration.k8s.io",
    ),
];

/// What the reconcilers do in a namespace they watch.
const RECONCILING: &[(&str, &str)] = &[
    ("list", "consumers.gostoa.dev"),
    ("watch", "consumers.gostoa.dev"),
    ("patch", "consumers.gostoa.dev"),
    ("patch", "consumers.gostoa.dev/status"),
    ("list", "consumercertificates.gostoa.dev"),
    ("patch", "consumercertificates.gostoa.dev/status"),
    ("get", "secrets"),
    ("watch", "secrets"),
    ("create", "secrets"),
    ("patch", "secrets"),
    ("delete", "secrets"),
    ("create", "events.events.k8s.io"),
];

#[tokio::test]
async fn operator_service_account_may_do_nothing_design_does_not_need() {
    let client = kube_client().await;
    let (watched, other) = (unique("co-least-watched"), unique("co-least-other"));
    create_namespace(&client, &watched, &[]).await;
    create_namespace(&client, &other, &[]).await;
    let scoped = Release::install(
        "least",
        &["--set", &format!("operator.watchNamespaces={{{watched}}}")],
    );
    let cluster_wide = Release::install("leastall", &[]);
    let (scoped_sa, wide_sa) = (
        scoped.service_account_user(),
        cluster_wide.service_account_user(),
    );
    let own_lease = format!("leases.coordination.k8s.io/{}", scoped.fullname());

    assert_can(&scoped_sa, Some(&watched), true, RECONCILING);
    assert_can(
        &scoped_sa,
        Some(&scoped.namespace),
        true,
        &[
            ("create", "leases.coordination.k8s.io"),
            ("get", &own_lease),
            ("update", &own_lease),
        ],
    );
    assert_can(&wide_sa, None, true, RECONCILING);

    for namespace in [&watched, &other, &scoped.namespace] {
        assert_can(&scoped_sa, Some(namespace), false, NEVER_NEEDED);
    }
    assert_can(&wide_sa, None, false, NEVER_NEEDED);
    assert_can(&scoped_sa, Some(&other), false, RECONCILING);
    assert_can(
        &scoped_sa,
        None,
        false,
        &[("list", "secrets"), ("list", "consumers.gostoa.dev")],
    );
    assert_can(
        &scoped_sa,
        Some(&scoped.namespace),
        false,
        &[
            ("get", "leases.coordination.k8s.io/someone-else"),
            ("update", "leases.coordination.k8s.io/someone-else"),
            ("delete", &own_lease),
            ("get", "secrets"),
        ],
    );
    assert_can(
        &scoped_sa,
        Some(&other),
        false,
        &[("create", "leases.coordination.k8s.io")],
    );
}

// ------------------------------------------------------------------------------------------
// 3. The user roles.

#[tokio::test]
async fn user_roles_let_viewers_read_tenant_admins_manage_their_namespace_and_cpi_admins_all() {
    let client = kube_client().await;
    let (a, b) = (unique("co-roles-a"), unique("co-roles-b"));
    create_namespace(&client, &a, &[]).await;
    create_namespace(&client, &b, &[]).await;
    let [
        viewer,
        devops,
        tenant_admin,
        cpi_admin,
        view_user,
        edit_user,
    ] = [
        "viewer",
        "devops",
        "tenant-admin",
        "cpi-admin",
        "view",
        "edit",
    ]
    .map(unique);
    let values = tempdir("roles").join("values.yaml");
    let user = |name: &str| json!({ "kind": "User", "name": name, "apiGroup": RBAC_GROUP });
    let roles = json!({ "userRoles": {
        "tenantAdminBindings": [{ "namespace": a, "subjects": [user(&tenant_admin)] }],
        "cpiAdminSubjects": [user(&cpi_admin)],
    }});
    std::fs::write(&values, serde_yaml::to_string(&roles).unwrap()).unwrap();
    let release = Release::install("roles", &["--values", &values.display().to_string()]);
    let fullname = release.fullname();
    for (user, role) in [
        (&viewer, format!("{fullname}-viewer")),
        (&devops, format!("{fullname}-devops")),
        (&view_user, "view".to_owned()),
        (&edit_user, "edit".to_owned()),
    ] {
        let name = format!("{user}-binding");
        let role = format!("--clusterrole={role}");
        let user = format!("--user={user}");
        kubectl(&["create", "rolebinding", &name, "-n", &a, &role, &user]);
    }
    let read = [
        ("get", "consumers.gostoa.dev"),
        ("list", "consumers.gostoa.dev"),
        ("watch", "consumers.gostoa.dev"),
        ("get", "consumercertificates.gostoa.dev"),
        ("list", "consumercertificates.gostoa.dev"),
    ];
    let manage = [
        ("create", "consumers.gostoa.dev"),
        ("update", "consumers.gostoa.dev"),
        ("patch", "consumers.gostoa.dev"),
        ("delete", "consumers.gostoa.dev"),
        ("create", "consumercertificates.gostoa.dev"),
        ("patch", "consumercertificates.gostoa.dev"),
        ("delete", "consumercertificates.gostoa.dev"),
    ];
    let credentials = [("get", "secrets")];
    let operator_only = [
        ("patch", "consumers.gostoa.dev/status"),
        ("update", "consumers.gostoa.dev/status"),
        ("patch", "consumercertificates.gostoa.dev/status"),
    ];
    // The built-in roles gain the rules through aggregation, a controller's work: wait for it.
    eventually("aggregation into view and edit", WAIT, || {
        let ok = can_i(&view_user, "list", "consumers.gostoa.dev", Some(&a))
            && can_i(&edit_user, "create", "consumers.gostoa.dev", Some(&a));
        async move { ok.then_some(()) }
    })
    .await;

    for user in [&viewer, &devops, &view_user] {
        assert_can(user, Some(&a), true, &read);
        assert_can(
            user,
            Some(&a),
            false,
            &[&manage[..], &credentials[..], &operator_only[..]].concat(),
        );
        assert_can(user, Some(&b), false, &read);
    }
    assert_can(
        &edit_user,
        Some(&a),
        true,
        &[&read[..], &manage[..]].concat(),
    );
    assert_can(
        &tenant_admin,
        Some(&a),
        true,
        &[&read[..], &manage[..], &credentials[..]].concat(),
    );
    assert_can(&tenant_admin, Some(&a), false, &operator_only);
    assert_can(
        &tenant_admin,
        Some(&b),
        false,
        &[&read[..], &manage[..], &credentials[..]].concat(),
    );
    for namespace in [&a, &b] {
        assert_can(
            &cpi_admin,
            Some(namespace),
            true,
            &[&read[..], &manage[..], &credentials[..]].concat(),
        );
        assert_can(&cpi_admin, Some(namespace), false, &operator_only);
    }
}

// ------------------------------------------------------------------------------------------
// 4. Tenant isolation.

#[tokio::test]
async fn admission_policy_rejects_a_consumer_of_another_tenant_than_its_namespaces_label() {
    let client = kube_client().await;
    common::apply_crds(&client).await;
    let (tenant, other_tenant) = (unique("tenant"), unique("intruder"));
    let (labelled, unlabelled) = (unique("co-vap-labelled"), unique("co-vap-plain"));
    create_namespace(&client, &labelled, &[(names::TENANT_LABEL, &tenant)]).await;
    create_namespace(&client, &unlabelled, &[]).await;
    let _release = Release::install("vap", &[]);
    let in_labelled: Api<Consumer> = Api::namespaced(client.clone(), &labelled);
    let in_unlabelled: Api<Consumer> = Api::namespaced(client.clone(), &unlabelled);
    // A new policy takes effect once the API server has loaded and type-checked it.
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    eventually("the admission policy in force", WAIT, || {
        let api = in_labelled.clone();
        let params = dry_run.clone();
        let intruder = consumer("probe", &other_tenant);
        async move { api.create(&params, &intruder).await.is_err().then_some(()) }
    })
    .await;

    let rejected = in_labelled
        .create(&PostParams::default(), &consumer("intruder", &other_tenant))
        .await;
    let matching = in_labelled
        .create(&PostParams::default(), &consumer("member", &tenant))
        .await;
    let anywhere = in_unlabelled
        .create(&PostParams::default(), &consumer("visitor", &other_tenant))
        .await;

    let kube::Error::Api(status) = rejected.expect_err("a Consumer of another tenant was created")
    else {
        panic!("not an API error");
    };
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    for part in ["spec.tenantId", &other_tenant, &tenant, &labelled] {
        assert!(
            status.message.contains(part),
            "{part} missing: {}",
            status.message
        );
    }
    matching.expect("the matching tenant was rejected");
    anywhere.expect("an unlabelled namespace rejected a Consumer");
}

#[tokio::test]
async fn admission_policy_lets_a_consumer_go_after_its_namespace_changed_tenant() {
    let client = kube_client().await;
    common::apply_crds(&client).await;
    let tenant = unique("tenant");
    let namespace = unique("co-vap-relabel");
    create_namespace(&client, &namespace, &[(names::TENANT_LABEL, &tenant)]).await;
    let _release = Release::install("vaprelabel", &[]);
    let consumers: Api<Consumer> = Api::namespaced(client.clone(), &namespace);
    let mut held = consumer("held", &tenant);
    held.metadata.finalizers = Some(vec!["tests.gostoa.dev/hold".to_owned()]);
    let held = consumers
        .create(&PostParams::default(), &held)
        .await
        .unwrap();
    kubectl(&[
        "label",
        "namespace",
        &namespace,
        "--overwrite",
        &format!("{}={}", names::TENANT_LABEL, unique("new-owner")),
    ]);
    eventually("the policy rejecting the old tenant", WAIT, || {
        let consumers = consumers.clone();
        let patch = json!({ "metadata": { "labels": { "touched": "yes" } } });
        async move {
            let params = PatchParams {
                dry_run: true,
                ..Default::default()
            };
            consumers
                .patch("held", &params, &Patch::Merge(&patch))
                .await
                .is_err()
                .then_some(())
        }
    })
    .await;

    consumers
        .delete("held", &DeleteParams::default())
        .await
        .unwrap();
    let released = consumers
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
        )
        .await;

    released.expect("the finalizer of a deleted Consumer could not be removed");
    let uid = held.uid().unwrap();
    let gone = await_condition(consumers.clone(), "held", conditions::is_deleted(&uid));
    tokio::time::timeout(WAIT, gone)
        .await
        .expect("deleted")
        .unwrap();
}

// ------------------------------------------------------------------------------------------
// 6. Metrics and the dashboard.

/// The sample names a family exposes, from its `# TYPE` line (OpenMetrics text).
fn sample_names(family: &str, type_: &str) -> Vec<String> {
    match type_ {
        "counter" => vec![format!("{family}_total")],
        "histogram" => ["_bucket", "_sum", "_count"]
            .map(|s| format!("{family}{s}"))
            .to_vec(),
        _ => vec![family.to_owned()],
    }
}

struct Exposition {
    /// Every sample name the families declare.
    declared: BTreeSet<String>,
    /// The sample names with at least one sample.
    sampled: BTreeSet<String>,
    /// The label names of all samples.
    labels: BTreeSet<String>,
}

fn parse_exposition(text: &str) -> Exposition {
    let label_name = regex::Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)=""#).unwrap();
    let mut exposition = Exposition {
        declared: BTreeSet::new(),
        sampled: BTreeSet::new(),
        labels: BTreeSet::new(),
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, type_) = rest.split_once(' ').unwrap();
            exposition.declared.extend(sample_names(family, type_));
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap();
            exposition.sampled.insert(name.to_owned());
            if let Some((_, labels)) = line.split_once('{') {
                let labels = labels.rsplit_once('}').unwrap().0;
                for captures in label_name.captures_iter(labels) {
                    exposition.labels.insert(captures[1].to_owned());
                }
            }
        }
    }
    exposition
}

/// Every PromQL query of a Grafana dashboard (panel targets and template variables).
fn dashboard_queries(value: &Value, queries: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("expr" | "query" | "definition", Value::String(query)) => {
                        queries.push(query.clone())
                    }
                    _ => dashboard_queries(child, queries),
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| dashboard_queries(item, queries)),
        _ => {}
    }
}

#[tokio::test]
async fn metrics_show_every_family_and_the_dashboard_reads_only_metrics_that_exist() {
    let client = kube_client().await;
    common::apply_crds(&client).await;
    let namespace = unique("co-metrics");
    create_namespace(&client, &namespace, &[]).await;
    let tenant = unique("tenant");
    let keycloak = Keycloak::from_stack();
    keycloak.create_realm(&tenant).await;
    let relay = Relay::to(&keycloak.url).await;
    let operator = Operator::start_with_keycloak(&relay.url, &[&namespace], &[]);
    let consumers: Api<Consumer> = Api::namespaced(client.clone(), &namespace);
    let certificates: Api<ConsumerCertificate> = Api::namespaced(client.clone(), &namespace);
    let create = PostParams::default();
    // A full lifecycle; a consumer with a rotated certificate (notAfter and acceptedUntil); a
    // consumer created while Keycloak is unreachable (reconcile errors), Ready once it is back.
    consumers
        .create(&create, &consumer("short-lived", &tenant))
        .await
        .unwrap();
    consumers
        .create(&create, &consumer("certified", &tenant))
        .await
        .unwrap();
    let lived = wait_consumer_ready(&consumers, "short-lived", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", operator.logs()));
    consumers
        .delete("short-lived", &DeleteParams::default())
        .await
        .unwrap();
    let uid = lived.metadata.uid.unwrap();
    let gone = await_condition(
        consumers.clone(),
        "short-lived",
        conditions::is_deleted(&uid),
    );
    tokio::time::timeout(WAIT, gone)
        .await
        .expect("deleted")
        .unwrap();
    wait_consumer_ready(&consumers, "certified", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", operator.logs()));
    let certificate: ConsumerCertificate = serde_json::from_value(json!({
        "apiVersion": "gostoa.dev/v1alpha1",
        "kind": "ConsumerCertificate",
        "metadata": { "name": "certified-mtls" },
        "spec": { "consumerRef": { "name": "certified" }, "pem": self_signed_pem() },
    }))
    .unwrap();
    certificates.create(&create, &certificate).await.unwrap();
    wait_certificate(&certificates, "certified-mtls", |s| s.current.is_some()).await;
    let rotate = json!({ "spec": { "pem": self_signed_pem() } });
    let params = PatchParams::default();
    certificates
        .patch("certified-mtls", &params, &Patch::Merge(&rotate))
        .await
        .unwrap();
    wait_certificate(&certificates, "certified-mtls", |s| !s.previous.is_empty()).await;
    relay.set_down(true);
    consumers
        .create(&create, &consumer("unlucky", &tenant))
        .await
        .unwrap();
    let url = operator.metrics_url.clone();
    eventually("a reconcile error counted", WAIT, || {
        let url = url.clone();
        async move {
            let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
            text.contains("consumer_operator_reconcile_errors_total{")
                .then_some(())
        }
    })
    .await;
    relay.set_down(false);
    wait_consumer_ready(&consumers, "unlucky", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", operator.logs()));

    let text = operator.metrics().await;
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/grafana/consumer-operator.json"))
            .unwrap(),
    )
    .unwrap();

    let exposition = parse_exposition(&text);
    for family in [
        ("consumer_operator_reconciles", "counter"),
        ("consumer_operator_reconcile_errors", "counter"),
        ("consumer_operator_reconcile_duration_seconds", "histogram"),
        ("consumer_operator_keycloak_requests", "counter"),
        (
            "consumer_operator_keycloak_request_duration_seconds",
            "histogram",
        ),
        (
            "consumer_operator_certificate_not_after_timestamp_seconds",
            "gauge",
        ),
        (
            "consumer_operator_certificate_accepted_until_timestamp_seconds",
            "gauge",
        ),
    ] {
        for name in sample_names(family.0, family.1) {
            assert!(
                exposition.sampled.contains(&name),
                "no sample of {name} in:\n{text}"
            );
        }
    }
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    let metric = regex::Regex::new(r"\bconsumer_operator_[a-z0-9_]+").unwrap();
    let selector = regex::Regex::new(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{").unwrap();
    let grouping = regex::Regex::new(r"\b(?:by|without)\s*\(([^)]*)\)").unwrap();
    let used: BTreeSet<String> = queries
        .iter()
        .flat_map(|q| {
            let names = metric.find_iter(q).map(|m| m.as_str().to_owned());
            names
                .chain(selector.captures_iter(q).map(|c| c[1].to_owned()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        !used.is_empty(),
        "no metric found in the dashboard's queries"
    );
    let missing: Vec<_> = used.difference(&exposition.declared).collect();
    assert!(
        missing.is_empty(),
        "the dashboard reads metrics that do not exist: {missing:?}"
    );
    let grouped: BTreeSet<String> = queries
        .iter()
        .flat_map(|q| {
            grouping
                .captures_iter(q)
                .map(|c| c[1].to_owned())
                .collect::<Vec<_>>()
        })
        .flat_map(|labels| {
            labels
                .split(',')
                .map(|l| l.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.is_empty())
        .collect();
    // `le` is the histogram bucket label, `job` the one Prometheus adds when it scrapes.
    let known: BTreeSet<String> = exposition
        .labels
        .iter()
        .cloned()
        .chain(["le".into(), "job".into()])
        .collect();
    let unknown: Vec<_> = grouped.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard groups by labels no metric has: {unknown:?}"
    );
    keycloak.delete_realm(&tenant).await;
}

#[tokio::test]
async fn operator_reports_ready_once_its_caches_are_synced() {
    let client = kube_client().await;
    common::apply_crds(&client).await;
    let namespace = unique("co-ready");
    create_namespace(&client, &namespace, &[]).await;

    let operator = Operator::start(&[&namespace], &[]);

    let healthz = format!("{}/healthz", operator.health_url());
    assert_eq!(common::http_status(&healthz).await, 200);
    let readyz = format!("{}/readyz", operator.health_url());
    eventually("/readyz ready", WAIT, || async {
        (common::http_status(&readyz).await == 200).then_some(())
    })
    .await;
}

/// A TCP relay to Keycloak that can drop every connection, so that Keycloak becomes unreachable
/// for one operator without disturbing the other tests.
struct Relay {
    url: String,
    down: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    async fn to(keycloak_url: &str) -> Self {
        let target = keycloak_url.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (down, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (target, mut watch) = (target.clone(), watch.clone());
                if *watch.borrow() {
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watch.wait_for(|down| *down) => {}
                    }
                });
            }
        });
        Self { url, down }
    }

    /// Down: open connections are cut and new ones closed at once.
    fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }
}

fn self_signed_pem() -> String {
    let key = rcgen::generate_simple_self_signed(vec!["partner.example".to_owned()]).unwrap();
    key.cert.pem()
}

async fn wait_certificate(
    api: &Api<ConsumerCertificate>,
    name: &str,
    done: fn(&consumer_operator::api::ConsumerCertificateStatus) -> bool,
) {
    let condition = await_condition(api.clone(), name, move |c: Option<&ConsumerCertificate>| {
        c.and_then(|c| c.status.as_ref()).is_some_and(done)
    });
    if tokio::time::timeout(WAIT, condition).await.is_err() {
        let status = api.get(name).await.ok().and_then(|c| c.status);
        panic!("ConsumerCertificate {name}: {status:?}");
    }
}
