//! Thin entry point: parse the command line, start logging, dispatch.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = mesh_webhook::cli::Cli::parse();
    mesh_webhook::commands::run(cli)
}
