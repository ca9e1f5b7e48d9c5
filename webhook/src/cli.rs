//! Command-line definition (clap derive) and dispatch. Owned by the injection-core work;
//! the `serve` arguments live in `admission::ServeArgs`.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "mesh-webhook", version, about = "Sidecar injector: admission webhook and offline kube-inject")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTPS mutating admission webhook.
    Serve(crate::admission::ServeArgs),
}

pub fn run(cli: Cli) -> std::process::ExitCode {
    match cli.command {
        Command::Serve(args) => match crate::admission::run(args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mesh-webhook serve: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}
