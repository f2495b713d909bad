//! The command line: subcommands `run`, `crd` and `import`, their flags and environment variables.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "consumer-operator",
    version,
    about = "Onboards STOA API consumers into Keycloak"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator: reconcile Consumers and ConsumerCertificates.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions as YAML (or write them into a directory).
    Crd(CrdArgs),
    /// Create or update Consumers from a CSV file, with server-side apply.
    Import(ImportArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Base URL of Keycloak's admin API, e.g. https://keycloak.example.com.
    #[arg(long, env = "KEYCLOAK_URL")]
    pub keycloak_url: String,

    /// Directory of a mounted Secret with the admin credentials: files `client-id` and
    /// `client-secret` (a service-account client, client_credentials grant) or `username` and
    /// `password` (admin-cli, password grant). Never given on the command line.
    #[arg(long, env = "KEYCLOAK_ADMIN_CREDENTIALS_DIR")]
    pub keycloak_admin_credentials_dir: PathBuf,

    /// Realm the admin credentials belong to.
    #[arg(long, env = "KEYCLOAK_ADMIN_REALM", default_value = "master")]
    pub keycloak_admin_realm: String,

    /// Extra PEM bundle of CAs trusted for Keycloak's TLS certificate (besides the system's).
    #[arg(long, env = "KEYCLOAK_CA_FILE")]
    pub keycloak_ca_file: Option<PathBuf>,

    /// Keycloak URL as consumers reach it, written into the credential Secrets' `token_url`.
    /// Defaults to --keycloak-url.
    #[arg(long, env = "TOKEN_URL_BASE")]
    pub token_url_base: Option<String>,

    /// Realm of a tenant; `{tenant}` is replaced by the Consumer's tenantId.
    #[arg(long, env = "REALM_TEMPLATE", default_value = "{tenant}")]
    pub realm_template: String,

    /// How many objects of each kind are reconciled at once.
    #[arg(long, env = "OPERATOR_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,

    /// How often every object is reconciled even when nothing was seen to change (catches drift
    /// in Keycloak), e.g. `10m`.
    #[arg(long, env = "RESYNC_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub resync_interval: std::time::Duration,

    /// Namespaces to watch, comma-separated; empty watches all.
    #[arg(
        long,
        env = "WATCH_NAMESPACE",
        value_delimiter = ',',
        default_value = ""
    )]
    pub watch_namespace: Vec<String>,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Address of the Prometheus endpoint `/metrics`.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Address of `/healthz` and `/readyz`.
    #[arg(long, env = "HEALTH_ADDR", default_value = "0.0.0.0:8081")]
    pub health_addr: SocketAddr,

    /// Take a coordination.k8s.io Lease before reconciling, so that several replicas can run.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = false)]
    pub leader_election: bool,

    /// Namespace of the Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub leader_election_namespace: String,

    /// Name of the Lease.
    #[arg(long, default_value = "consumer-operator")]
    pub leader_election_name: String,

    /// This replica's identity in the Lease; defaults to the host name.
    #[arg(long, env = "POD_NAME")]
    pub leader_election_identity: Option<String>,
}

#[derive(Debug, Args)]
pub struct CrdArgs {
    /// Write one file per CRD into this directory instead of printing them.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Yaml,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// CSV file to import; `-` reads standard input.
    pub file: PathBuf,

    /// Namespace of the Consumers.
    #[arg(long, short = 'n')]
    pub namespace: String,

    /// Tenant of every Consumer in the file.
    #[arg(long)]
    pub tenant: String,

    /// Ask the API server to validate without writing.
    #[arg(long)]
    pub dry_run: bool,

    /// Print the manifests instead of applying them.
    #[arg(long, short = 'o', value_enum)]
    pub output: Option<OutputFormat>,

    /// How many Consumers are applied at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,

    /// Wait until every applied Consumer is Ready.
    #[arg(long)]
    pub wait: bool,

    /// How long --wait waits at most, e.g. `5m`.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub wait_timeout: std::time::Duration,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::api::duration::parse(text).map_err(|e| e.to_string())
}
