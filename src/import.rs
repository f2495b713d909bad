//! `consumer-operator import`: bulk onboarding of Consumers from a CSV file.
//!
//! The file is read twice, as a stream both times, so that memory does not grow with its length
//! (only the set of external ids seen, for the duplicate check, and the errors do):
//!
//! 1. validation: the header, every row against the CRD's rules ([`rows`]), and external ids that
//!    repeat. A file-level error (unreadable, empty, header not UTF-8, a required column missing,
//!    an unknown column) stops here with exit status 2 and nothing applied.
//! 2. output: each valid row is server-side applied (field manager
//!    [`IMPORT_FIELD_MANAGER`](crate::names::IMPORT_FIELD_MANAGER), `force`, `--concurrency` at
//!    once, `dryRun=All` with `--dry-run`), or printed as a YAML document with `-o yaml`.
//!
//! Standard input (`-`) and anything that is not a regular file (a pipe) cannot be read twice, so
//! it is first copied to an unlinked temporary file.
//!
//! Standard output is one JSON [`Summary`]; with `-o yaml` it is the manifests and the summary goes
//! to standard error. Exit status: 0 when no row failed, 1 when a row failed, 2 when nothing was
//! applied because the file, the command line or the connection to the API server is unusable.
//!
//! The imported Consumers carry no managed-by label: they are the platform team's declarations,
//! like a `kubectl apply`, and the importer's ownership of their fields is already recorded in
//! `metadata.managedFields`. A label would also be wrong once the same objects move to a GitOps
//! repository through `-o yaml`, and would stop Helm from adopting them.

mod apply;
pub mod rows;

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{self, IsTerminal, Seek, Write},
    path::Path,
    pin::pin,
};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

pub use apply::{Applied, Waiting, readiness};
pub use rows::{Checked, Columns, FileError, HeaderProblem, Parsed, Row, RowError, Rows, check};

use crate::cli::{ImportArgs, OutputFormat};

/// Exit status when no row failed.
pub const EXIT_OK: u8 = 0;
/// Exit status when at least one row failed.
pub const EXIT_ROWS_FAILED: u8 = 1;
/// Exit status when nothing was applied: the file, the command line or the connection is unusable.
pub const EXIT_NOTHING_APPLIED: u8 = 2;

/// What the importer prints when it is done.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub total: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub failed: u64,
    pub errors: Vec<RowError>,
}

impl Summary {
    /// A summary of an import that applied nothing.
    fn nothing_applied(total: u64, line: Option<u64>, error: String) -> Self {
        Self {
            total,
            errors: vec![RowError {
                line,
                external_id: None,
                error,
            }],
            ..Self::default()
        }
    }

    fn count(&mut self, applied: Applied) {
        *self.counter(applied) += 1;
    }

    fn counter(&mut self, applied: Applied) -> &mut u64 {
        match applied {
            Applied::Created => &mut self.created,
            Applied::Updated => &mut self.updated,
            Applied::Unchanged => &mut self.unchanged,
        }
    }

    fn fail(&mut self, error: RowError) {
        self.failed += 1;
        self.errors.push(error);
    }

    /// 0 when nothing went wrong, 1 otherwise (a file-level error never gets this far).
    pub fn exit_status(&self) -> u8 {
        if self.errors.is_empty() {
            EXIT_OK
        } else {
            EXIT_ROWS_FAILED
        }
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a summary serialises")
    }
}

/// Runs the import and returns the process exit status.
pub async fn run(args: ImportArgs) -> u8 {
    let (summary, status) = match import(&args).await {
        Ok(summary) => {
            let status = summary.exit_status();
            (summary, status)
        }
        Err(summary) => {
            for error in &summary.errors {
                eprintln!("consumer-operator import: {}", error.error);
            }
            (summary, EXIT_NOTHING_APPLIED)
        }
    };

    // With -o yaml, standard output holds the manifests, so the summary goes to standard error.
    if args.output == Some(OutputFormat::Yaml) {
        eprintln!("{}", summary.to_json());
    } else {
        println!("{}", summary.to_json());
    }
    status
}

/// The import; `Err` is a summary of an import that applied nothing.
async fn import(args: &ImportArgs) -> Result<Summary, Summary> {
    check_arguments(args).map_err(|error| Summary::nothing_applied(0, None, error))?;
    let file_error =
        |total, error: FileError| Summary::nothing_applied(total, error.line(), error.to_string());

    let mut file = open(&args.file).map_err(|error| file_error(0, error))?;
    let bar = progress_bar(None, "validating");
    let checked = rows::check_with_progress(&file, &args.tenant, |read| bar.set_position(read))
        .map_err(|error| file_error(0, error))?;
    bar.finish_and_clear();
    file.rewind()
        .map_err(|error| file_error(checked.total, error.into()))?;

    let failed_lines: HashSet<u64> = checked.errors.iter().filter_map(|e| e.line).collect();
    let mut summary = Summary {
        total: checked.total,
        failed: checked.errors.len() as u64,
        errors: checked.errors,
        ..Summary::default()
    };

    match args.output {
        Some(OutputFormat::Yaml) => print_manifests(file, args, &failed_lines, &mut summary)
            .map_err(|error| Summary::nothing_applied(summary.total, None, error))?,
        None => {
            let api = apply::consumers(&args.namespace)
                .await
                .map_err(|error| Summary::nothing_applied(summary.total, None, error))?;
            apply_rows(&api, file, args, checked.valid, &failed_lines, &mut summary).await;
        }
    }

    summary
        .errors
        .sort_by_key(|error| error.line.unwrap_or(u64::MAX));
    Ok(summary)
}

fn check_arguments(args: &ImportArgs) -> Result<(), String> {
    if args.concurrency == 0 {
        return Err("--concurrency must be at least 1".to_owned());
    }
    if args.output.is_some() && (args.dry_run || args.wait) {
        return Err(
            "-o yaml prints the manifests without contacting the API server; \
                    it cannot be combined with --dry-run or --wait"
                .to_owned(),
        );
    }
    if args.dry_run && args.wait {
        return Err("--dry-run writes nothing, so there is nothing to --wait for".to_owned());
    }
    rows::check_tenant(&args.tenant)
}

/// Opens the input as a file that can be read twice: a regular file as it is, standard input
/// (`-`) and pipes copied into an unlinked temporary file first.
fn open(path: &Path) -> Result<File, FileError> {
    if path == Path::new("-") {
        return spool(&mut io::stdin().lock());
    }
    let file = File::open(path).map_err(|error| {
        FileError::Read(io::Error::new(
            error.kind(),
            format!("{}: {error}", path.display()),
        ))
    })?;
    if file.metadata()?.is_file() {
        Ok(file)
    } else {
        spool(&mut &file)
    }
}

fn spool(input: &mut impl io::Read) -> Result<File, FileError> {
    let path = std::env::temp_dir().join(format!(
        "consumer-operator-import-{}-{}.csv",
        std::process::id(),
        rand::random::<u64>()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path)?;
    // NB: unlinked at once, so that nothing is left behind whatever happens next; the open
    // handle keeps the data readable.
    let _ = std::fs::remove_file(&path);

    io::copy(input, &mut file)?;
    file.rewind()?;
    Ok(file)
}

/// The second pass with `-o yaml`: one YAML document per valid row.
fn print_manifests(
    file: File,
    args: &ImportArgs,
    failed_lines: &HashSet<u64>,
    summary: &mut Summary,
) -> Result<(), String> {
    let cannot_write = |error: io::Error| format!("cannot write the manifests: {error}");
    let mut out = io::BufWriter::new(io::stdout().lock());

    for parsed in Rows::open(file, &args.tenant).map_err(|error| error.to_string())? {
        match parsed.map_err(|error| error.to_string())? {
            Parsed::Valid(row) if failed_lines.contains(&row.line) => {}
            Parsed::Valid(row) => {
                let yaml = serde_yaml::to_string(&row.manifest(&args.namespace))
                    .expect("a manifest serialises");
                write!(out, "---\n{yaml}").map_err(cannot_write)?;
            }
            Parsed::Invalid(error) => {
                if let Some(error) = changed_since_validation(failed_lines, error) {
                    summary.fail(error);
                }
            }
        }
    }
    out.flush().map_err(cannot_write)
}

/// A row that passed the first pass but not the second: the file was edited in between.
fn changed_since_validation(failed_lines: &HashSet<u64>, row: RowError) -> Option<RowError> {
    if row.line.is_some_and(|line| failed_lines.contains(&line)) {
        return None;
    }
    let error = format!("the file changed while importing: {}", row.error);
    Some(RowError { error, ..row })
}

/// The result of one row of the second pass.
enum Done {
    Applied {
        line: u64,
        name: String,
        applied: Applied,
    },
    Failed(RowError),
    Skipped,
}

/// The second pass without `-o yaml`: applies every valid row, `--concurrency` at once, then
/// waits for them with `--wait`. Rows are read on a blocking thread and handed over through a
/// bounded channel, so that reading never runs far ahead of applying.
async fn apply_rows(
    api: &kube::Api<crate::api::Consumer>,
    file: File,
    args: &ImportArgs,
    valid: u64,
    failed_lines: &HashSet<u64>,
    summary: &mut Summary,
) {
    let (sender, receiver) = tokio::sync::mpsc::channel(args.concurrency.clamp(1, 4096) * 2);
    let tenant = args.tenant.clone();
    let reader = tokio::task::spawn_blocking(move || -> Result<(), FileError> {
        for parsed in Rows::open(file, &tenant)? {
            if sender.blocking_send(parsed?).is_err() {
                break;
            }
        }
        Ok(())
    });

    let rows = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|parsed| (parsed, receiver))
    });
    let results = rows
        .map(|parsed| apply_one(api, parsed, args, failed_lines))
        .buffer_unordered(args.concurrency);
    let mut results = pin!(results);

    let bar = progress_bar(
        Some(valid),
        if args.dry_run { "dry run" } else { "applying" },
    );
    let mut waiting = HashMap::new();
    while let Some(done) = results.next().await {
        match done {
            Done::Applied {
                line,
                name,
                applied,
            } => {
                summary.count(applied);
                bar.inc(1);
                if args.wait {
                    waiting.insert(
                        name,
                        Waiting {
                            line,
                            applied,
                            last_seen: None,
                        },
                    );
                }
            }
            Done::Failed(error) => {
                summary.fail(error);
                bar.inc(1);
            }
            Done::Skipped => {}
        }
    }
    bar.finish_and_clear();
    if let Err(error) = reader.await.expect("the CSV reader does not panic") {
        summary.errors.push(RowError {
            line: error.line(),
            external_id: None,
            error: format!("stopped reading the file after it was validated: {error}"),
        });
    }

    if args.wait && !waiting.is_empty() {
        wait(api, waiting, args, summary).await;
    }
}

async fn apply_one(
    api: &kube::Api<crate::api::Consumer>,
    parsed: Parsed,
    args: &ImportArgs,
    failed_lines: &HashSet<u64>,
) -> Done {
    match parsed {
        Parsed::Valid(row) if failed_lines.contains(&row.line) => Done::Skipped,
        Parsed::Valid(row) => match apply::apply(api, &row, &args.namespace, args.dry_run).await {
            Ok(applied) => Done::Applied {
                line: row.line,
                name: row.spec.external_id,
                applied,
            },
            Err(error) => Done::Failed(RowError {
                line: Some(row.line),
                external_id: Some(row.spec.external_id),
                error,
            }),
        },
        Parsed::Invalid(error) => {
            changed_since_validation(failed_lines, error).map_or(Done::Skipped, Done::Failed)
        }
    }
}

/// `--wait`: a Consumer not Ready in time moves from its count to `failed`, with what its Ready
/// condition last said.
async fn wait(
    api: &kube::Api<crate::api::Consumer>,
    waiting: HashMap<String, Waiting>,
    args: &ImportArgs,
    summary: &mut Summary,
) {
    let bar = progress_bar(Some(waiting.len() as u64), "waiting for Ready");
    let not_ready = apply::wait_ready(api.clone(), waiting, args.wait_timeout, || bar.inc(1)).await;
    bar.finish_and_clear();

    for (name, waiting) in not_ready {
        *summary.counter(waiting.applied) -= 1;
        let last_seen = waiting
            .last_seen
            .unwrap_or_else(|| "no Ready condition yet".to_owned());
        summary.fail(RowError {
            line: Some(waiting.line),
            external_id: Some(name),
            error: format!(
                "{} but not Ready within {}s: {last_seen}",
                waiting.applied.as_str(),
                args.wait_timeout.as_secs()
            ),
        });
    }
}

/// A progress bar on standard error when it is a terminal; hidden otherwise, so that logs and
/// pipelines get no control characters.
fn progress_bar(length: Option<u64>, message: &'static str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    match length {
        Some(length) => ProgressBar::new(length).with_style(
            ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)")
                .expect("a valid template")
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg}: {pos} rows").expect("a valid template"),
        ),
    }
    .with_message(message)
}
