//! Benchmarks and fault tests of consumer-operator against the real local stack, with the
//! operator as a separate release process: onboarding time against the Keycloak floor, restart
//! steady state, memory, and faults ending with an audit. Every result is one JSON line on
//! standard output, with the machine's load averages at the time.

mod prom;
mod scenario;
mod stack;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "consumer-operator-bench",
    about = "Benchmarks and fault tests of consumer-operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// For each size: the Keycloak floor, the onboarding through the operator, and a restart.
    Onboard(scenario::OnboardArgs),
    /// Operator memory with many Consumers and many unrelated Secrets.
    Memory(scenario::MemoryArgs),
    /// An onboarding interrupted by faults, then the audit.
    Faults(scenario::FaultArgs),
    /// Certificates rotated at once with a short grace: removal time against acceptedUntil.
    Certificates(scenario::CertArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    eprintln!("operator {}", stack::operator_revision());
    match Cli::parse().command {
        Command::Onboard(args) => scenario::onboard(args).await,
        Command::Memory(args) => scenario::memory(args).await,
        Command::Faults(args) => scenario::faults(args).await,
        Command::Certificates(args) => scenario::certificates(args).await,
    }
}
