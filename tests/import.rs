//! `consumer-operator import` against the local stack's real kube-apiserver: the binary is run as
//! a user runs it, and what it reports is checked against the Consumers the API server holds.

mod common;

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use common::{apply_crds, create_namespace, eventually, kube_client, tempdir, unique};
use consumer_operator::{
    api::{Consumer, ConsumerState},
    names,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};

const TENANT: &str = "acme";

fn example_csv() -> PathBuf {
    common::repo_root().join("examples/consumers.csv")
}

fn write_csv(content: &str) -> PathBuf {
    let path = tempdir("import").join("consumers.csv");
    std::fs::write(&path, content).unwrap();
    path
}

/// A fresh namespace with the CRDs installed.
async fn setup() -> (Client, String) {
    let client = kube_client().await;
    apply_crds(&client).await;
    let namespace = unique("import");
    create_namespace(&client, &namespace, &[]).await;
    (client, namespace)
}

async fn consumers(client: &Client, namespace: &str) -> BTreeMap<String, Consumer> {
    let api: Api<Consumer> = Api::namespaced(client.clone(), namespace);
    let list = api
        .list(&ListParams::default())
        .await
        .expect("list Consumers");
    list.items
        .into_iter()
        .map(|consumer| (consumer.name_any(), consumer))
        .collect()
}

/// One run of the importer.
struct Run {
    status: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The JSON summary printed on standard output.
    fn summary(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|error| {
            panic!(
                "stdout is not one JSON object ({error}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

fn import_command(file: &str, namespace: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_consumer-operator"));
    command
        .args(["import", file, "--namespace", namespace, "--tenant", TENANT])
        .args(extra)
        .env("KUBECONFIG", common::env("KUBECONFIG"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn finish(output: Output) -> Run {
    Run {
        status: output
            .status
            .code()
            .expect("the importer exits, it is not killed"),
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
    }
}

fn import(file: &Path, namespace: &str, extra: &[&str]) -> Run {
    let output = import_command(&file.display().to_string(), namespace, extra).output();
    finish(output.expect("run the importer"))
}

fn import_stdin(input: &[u8], namespace: &str) -> Run {
    let mut child = import_command("-", namespace, &[])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    finish(child.wait_with_output().unwrap())
}

fn counts(created: u64, updated: u64, unchanged: u64) -> Value {
    json!({
        "total": created + updated + unchanged,
        "created": created, "updated": updated, "unchanged": unchanged,
        "failed": 0, "errors": [],
    })
}

#[tokio::test]
async fn the_example_file_is_created_then_unchanged_then_one_edited_row_is_updated() {
    let (client, namespace) = setup().await;
    let example = std::fs::read_to_string(example_csv()).unwrap();
    let edited = write_csv(&example.replace("Initech Payments,", "Initech Payments EMEA,"));

    let first = import(&example_csv(), &namespace, &[]);
    let second = import(&example_csv(), &namespace, &[]);
    let third = import(&edited, &namespace, &[]);

    assert_eq!(
        (first.status, first.summary()),
        (0, counts(3, 0, 0)),
        "{}",
        first.stderr
    );
    assert_eq!(
        (second.status, second.summary()),
        (0, counts(0, 0, 3)),
        "{}",
        second.stderr
    );
    assert_eq!(
        (third.status, third.summary()),
        (0, counts(0, 1, 2)),
        "{}",
        third.stderr
    );
    let stored = consumers(&client, &namespace).await;
    let names: Vec<_> = stored.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["globex-logistics", "initech-payments", "muller-soehne"]
    );
    assert_eq!(
        stored["initech-payments"].spec.name,
        "Initech Payments EMEA"
    );
    let muller = &stored["muller-soehne"].spec;
    assert_eq!(muller.name, "Müller & Söhne, Zürich");
    assert_eq!(muller.state, ConsumerState::Suspended);
    assert_eq!(muller.tenant_id, TENANT);
    assert_eq!(muller.consumer_metadata["tier"], "bronze");
    assert!(
        muller
            .description
            .as_deref()
            .unwrap()
            .contains("read-only catalogue access\nuntil")
    );
    let managers: Vec<_> = stored["globex-logistics"]
        .managed_fields()
        .iter()
        .filter_map(|entry| Some((entry.manager.clone()?, entry.operation.clone()?)))
        .collect();
    assert_eq!(
        managers,
        [(names::IMPORT_FIELD_MANAGER.to_owned(), "Apply".to_owned())]
    );
}

#[tokio::test]
async fn good_rows_are_created_and_each_bad_row_is_reported_with_its_line_and_reason() {
    let (client, namespace) = setup().await;
    let csv = write_csv(
        "external_id,name,email,state\n\
         good-1,Good One,one@good.example,active\n\
         bad-email,Bad Email,not-an-email,\n\
         no-name,,nobody@good.example,\n\
         Bad_ID,Bad Id,id@good.example,\n\
         good-1,Again,again@good.example,\n\
         bad-state,Bad State,state@good.example,paused\n\
         good-2,\"Good, Two\",two@good.example,SUSPENDED\n",
    );

    let run = import(&csv, &namespace, &[]);

    assert_eq!(run.status, 1, "{}", run.stderr);
    let summary = run.summary();
    assert_eq!(
        (&summary["total"], &summary["created"], &summary["failed"]),
        (&json!(7), &json!(2), &json!(5))
    );
    let errors: Vec<(u64, String, String)> = summary["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let id = e["externalId"].as_str().unwrap().to_owned();
            (
                e["line"].as_u64().unwrap(),
                id,
                e["error"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let prefixes = [
        (
            3,
            "bad-email",
            "email: \"not-an-email\" is not an email address",
        ),
        (4, "no-name", "name: must be 1 to 255 characters"),
        (
            5,
            "Bad_ID",
            "external_id: \"Bad_ID\" must be 1 to 63 lower-case",
        ),
        (
            6,
            "good-1",
            "external_id: \"good-1\" is already used on line 2",
        ),
        (
            7,
            "bad-state",
            "state: \"paused\" is not one of active, suspended, blocked",
        ),
    ];
    assert_eq!(errors.len(), prefixes.len(), "{errors:?}");
    for ((line, id, error), (want_line, want_id, want_error)) in errors.iter().zip(prefixes) {
        assert_eq!((*line, id.as_str()), (want_line, want_id));
        assert!(error.starts_with(want_error), "line {line}: {error}");
    }
    let stored = consumers(&client, &namespace).await;
    assert_eq!(stored.keys().collect::<Vec<_>>(), ["good-1", "good-2"]);
    assert_eq!(stored["good-1"].spec.name, "Good One");
    assert_eq!(stored["good-2"].spec.state, ConsumerState::Suspended);
}

#[tokio::test]
async fn a_missing_required_column_exits_2_and_creates_nothing() {
    let (client, namespace) = setup().await;
    let csv = write_csv("external_id,name\nfine-1,Fine One\nfine-2,Fine Two\n");

    let run = import(&csv, &namespace, &[]);

    assert_eq!(run.status, 2, "{}", run.stderr);
    let error = &run.summary()["errors"][0];
    assert_eq!(error["line"], 1);
    assert_eq!(
        error["error"],
        "line 1: required column \"email\" is missing"
    );
    assert!(consumers(&client, &namespace).await.is_empty());
}

#[tokio::test]
async fn an_unknown_column_exits_2_and_creates_nothing() {
    let (client, namespace) = setup().await;
    let csv = write_csv("external_id,name,email,phone\nfine-1,Fine,fine@x.example,+3312345678\n");

    let run = import(&csv, &namespace, &[]);

    assert_eq!(run.status, 2, "{}", run.stderr);
    let error = run.summary()["errors"][0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.starts_with("line 1: unknown column \"phone\""),
        "{error}"
    );
    assert!(consumers(&client, &namespace).await.is_empty());
}

#[tokio::test]
async fn a_dry_run_creates_nothing_and_counts_what_it_would_do() {
    let (client, namespace) = setup().await;
    let example = std::fs::read_to_string(example_csv()).unwrap();
    let edited = write_csv(&example.replace("Globex Logistics,", "Globex Logistics Ltd,"));

    let on_empty = import(&example_csv(), &namespace, &["--dry-run"]);
    let nothing_created = consumers(&client, &namespace).await;
    assert_eq!(import(&example_csv(), &namespace, &[]).status, 0);
    let on_existing = import(&edited, &namespace, &["--dry-run"]);

    assert_eq!(
        (on_empty.status, on_empty.summary()),
        (0, counts(3, 0, 0)),
        "{}",
        on_empty.stderr
    );
    assert!(nothing_created.is_empty());
    assert_eq!(
        on_existing.summary(),
        counts(0, 1, 2),
        "{}",
        on_existing.stderr
    );
    let stored = consumers(&client, &namespace).await;
    assert_eq!(stored["globex-logistics"].spec.name, "Globex Logistics");
}

#[tokio::test]
async fn yaml_output_applied_with_kubectl_creates_the_same_consumers_as_the_importer() {
    let (client, by_kubectl) = setup().await;
    let by_importer = unique("import");
    create_namespace(&client, &by_importer, &[]).await;

    let yaml = import(&example_csv(), &by_kubectl, &["-o", "yaml"]);
    let manifests = tempdir("import").join("consumers.yaml");
    std::fs::write(&manifests, &yaml.stdout).unwrap();
    let kubectl = Command::new(common::env("KUBECTL"))
        .args(["apply", "-f"])
        .arg(&manifests)
        .env("KUBECONFIG", common::env("KUBECONFIG"))
        .output()
        .unwrap();
    let imported = import(&example_csv(), &by_importer, &[]);
    let reimported = import(&example_csv(), &by_kubectl, &[]);

    assert_eq!(yaml.status, 0, "{}", yaml.stderr);
    assert_eq!(yaml.stdout.matches("---\n").count(), 3);
    let summary: Value = serde_json::from_str(yaml.stderr.trim().lines().last().unwrap()).unwrap();
    assert_eq!(summary["total"], 3);
    assert!(
        kubectl.status.success(),
        "{}",
        String::from_utf8_lossy(&kubectl.stderr)
    );
    assert_eq!(imported.status, 0, "{}", imported.stderr);
    let specs = |consumers: BTreeMap<String, Consumer>| {
        consumers
            .into_iter()
            .map(|(name, c)| (name, c.spec))
            .collect::<Vec<_>>()
    };
    let applied_by_kubectl = specs(consumers(&client, &by_kubectl).await);
    assert_eq!(applied_by_kubectl.len(), 3);
    assert_eq!(
        applied_by_kubectl,
        specs(consumers(&client, &by_importer).await)
    );
    assert_eq!(
        reimported.summary(),
        counts(0, 0, 3),
        "{}",
        reimported.stderr
    );
}

#[tokio::test]
async fn standard_input_with_a_byte_order_mark_and_crlf_is_imported() {
    let (client, namespace) = setup().await;
    let input = "\u{feff}external_id,name,email\r\nstdin-1,Ståle Øye,s@x.example\r\n\
                 stdin-2,\"Line\r\nbreak\",b@x.example\r\n";

    let run = import_stdin(input.as_bytes(), &namespace);

    assert_eq!(
        (run.status, run.summary()),
        (0, counts(2, 0, 0)),
        "{}",
        run.stderr
    );
    let stored = consumers(&client, &namespace).await;
    assert_eq!(stored["stdin-1"].spec.name, "Ståle Øye");
    assert_eq!(stored["stdin-2"].spec.name, "Line\r\nbreak");
}

#[tokio::test]
async fn the_api_servers_own_rejection_is_reported_on_its_row() {
    let (client, namespace) = setup().await;
    let blocked = write_csv("external_id,name,email,state\nfrozen,Frozen,f@x.example,blocked\n");
    let reactivated = write_csv(
        "external_id,name,email,state\n\
         frozen,Frozen,f@x.example,active\n\
         fresh,Fresh,n@x.example,\n",
    );
    assert_eq!(import(&blocked, &namespace, &[]).status, 0);

    let run = import(&reactivated, &namespace, &[]);

    assert_eq!(run.status, 1, "{}", run.stderr);
    let summary = run.summary();
    assert_eq!(
        (&summary["created"], &summary["failed"]),
        (&json!(1), &json!(1))
    );
    let error = &summary["errors"][0];
    assert_eq!(
        (&error["line"], &error["externalId"]),
        (&json!(2), &json!("frozen"))
    );
    let message = error["error"].as_str().unwrap();
    assert!(
        message.contains("rejected by the API server (422"),
        "{message}"
    );
    assert!(message.contains("Blocked is final"), "{message}");
    let stored = consumers(&client, &namespace).await;
    assert_eq!(stored["frozen"].spec.state, ConsumerState::Blocked);
    assert!(stored.contains_key("fresh"));
}

#[tokio::test]
async fn a_reimport_keeps_a_credentials_revision_raised_by_someone_else() {
    let (client, namespace) = setup().await;
    assert_eq!(import(&example_csv(), &namespace, &[]).status, 0);
    let api: Api<Consumer> = Api::namespaced(client.clone(), &namespace);
    let rotate = json!({"spec": {"credentials": {"revision": 1}}});
    api.patch(
        "initech-payments",
        &PatchParams::default(),
        &Patch::Merge(&rotate),
    )
    .await
    .unwrap();

    let run = import(&example_csv(), &namespace, &[]);

    assert_eq!(
        (run.status, run.summary()),
        (0, counts(0, 0, 3)),
        "{}",
        run.stderr
    );
    let stored = consumers(&client, &namespace).await;
    assert_eq!(stored["initech-payments"].spec.credentials.revision, 1);
}

fn spawn_import(file: &Path, namespace: &str, extra: &[&str]) -> Child {
    import_command(&file.display().to_string(), namespace, extra)
        .spawn()
        .unwrap()
}

/// Sets Ready=True for the Consumer's current generation, as the operator would.
async fn mark_ready(api: &Api<Consumer>, consumer: &Consumer) {
    let status = json!({"status": {"conditions": [{
        "type": names::condition::READY,
        "status": "True",
        "reason": names::reason::RECONCILED,
        "message": "set by the test",
        "observedGeneration": consumer.metadata.generation,
        "lastTransitionTime": "2025-01-01T00:00:00Z",
    }]}});
    api.patch_status(
        &consumer.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn wait_returns_once_every_applied_consumer_is_ready() {
    let (client, namespace) = setup().await;
    let api: Api<Consumer> = Api::namespaced(client.clone(), &namespace);
    let child = spawn_import(
        &example_csv(),
        &namespace,
        &["--wait", "--wait-timeout", "60s"],
    );

    let applied = eventually("the three Consumers", Duration::from_secs(30), || async {
        let stored = consumers(&client, &namespace).await;
        (stored.len() == 3).then_some(stored)
    })
    .await;
    for consumer in applied.values() {
        mark_ready(&api, consumer).await;
    }
    let run = finish(
        tokio::task::spawn_blocking(|| child.wait_with_output())
            .await
            .unwrap()
            .unwrap(),
    );

    assert_eq!(
        (run.status, run.summary()),
        (0, counts(3, 0, 0)),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn wait_reports_every_consumer_not_ready_in_time() {
    let (_client, namespace) = setup().await;

    let run = import(
        &example_csv(),
        &namespace,
        &["--wait", "--wait-timeout", "2s"],
    );

    assert_eq!(run.status, 1, "{}", run.stderr);
    let summary = run.summary();
    assert_eq!(
        (&summary["created"], &summary["failed"]),
        (&json!(0), &json!(3))
    );
    let lines: Vec<_> = summary["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].clone())
        .collect();
    assert_eq!(lines, [json!(2), json!(3), json!(4)]);
    let error = summary["errors"][0]["error"].as_str().unwrap();
    assert_eq!(
        error,
        "created but not Ready within 2s: no Ready condition yet"
    );
}

#[tokio::test]
async fn an_unreachable_api_server_exits_2_before_applying_anything() {
    let kubeconfig = tempdir("import").join("kubeconfig");
    let port = common::free_port();
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: c, cluster: {{server: \"https://127.0.0.1:{port}\"}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\n\
             contexts: [{{name: c, context: {{cluster: c, user: u}}}}]\n"
        ),
    )
    .unwrap();

    let output = import_command(&example_csv().display().to_string(), "nowhere", &[])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    let run = finish(output);

    assert_eq!(run.status, 2, "{}", run.stderr);
    let summary = run.summary();
    assert_eq!(summary["total"], 3);
    let error = summary["errors"][0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("cannot list Consumers in namespace \"nowhere\""),
        "{error}"
    );
}
