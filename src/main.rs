use std::process::ExitCode;

use clap::Parser;
use consumer_operator::{
    api,
    cli::{Cli, Command, CrdArgs, LogFormat},
    controller, import, telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            telemetry::init(args.log_format);
            match controller::run(*args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "operator stopped");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Crd(args) => crd(args),
        Command::Import(args) => {
            telemetry::init(LogFormat::Text);
            ExitCode::from(import::run(args).await)
        }
    }
}

fn crd(args: CrdArgs) -> ExitCode {
    let documents = api::crd_documents();
    match args.out_dir {
        None => {
            let all: String = documents.into_iter().map(|(_, yaml)| yaml).collect();
            print!("{all}");
            ExitCode::SUCCESS
        }
        Some(dir) => {
            if let Err(error) = std::fs::create_dir_all(&dir) {
                eprintln!("cannot create {}: {error}", dir.display());
                return ExitCode::FAILURE;
            }
            for (file, yaml) in documents {
                if let Err(error) = std::fs::write(dir.join(&file), yaml) {
                    eprintln!("cannot write {}: {error}", dir.join(&file).display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
    }
}
