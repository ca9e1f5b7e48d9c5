//! Command-line definition (clap derive) and dispatch. Owned by the injection-core work;
//! the `serve` arguments live in `admission::ServeArgs`.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::InjectConfig;
use crate::kube_inject::{self, Mode};

#[derive(Debug, Parser)]
#[command(
    name = "mesh-webhook",
    version,
    about = "Sidecar injector: admission webhook and offline kube-inject"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTPS mutating admission webhook.
    Serve(crate::admission::ServeArgs),
    /// Add the sidecar to every workload in a multi-document YAML file.
    KubeInject(KubeInjectArgs),
    /// Remove what a previous injection added (as its status annotation records).
    KubeUninject(KubeUninjectArgs),
}

/// Arguments of `mesh-webhook kube-inject`.
#[derive(Debug, Clone, Args)]
pub struct KubeInjectArgs {
    /// Input YAML file, or `-` for standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE|-")]
    pub file: String,
    /// Write here instead of standard output (replaced atomically; untouched on error).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Injection config (YAML); built-in defaults when absent. `nativeSidecars: auto`
    /// means regular sidecars here (there is no API server to ask).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Arguments of `mesh-webhook kube-uninject`.
#[derive(Debug, Clone, Args)]
pub struct KubeUninjectArgs {
    /// Input YAML file, or `-` for standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE|-")]
    pub file: String,
    /// Write here instead of standard output (replaced atomically; untouched on error).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
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
        Command::KubeInject(args) => exit("kube-inject", kube_inject_cmd(&args)),
        Command::KubeUninject(args) => exit("kube-uninject", kube_uninject_cmd(&args)),
    }
}

fn exit(name: &str, r: anyhow::Result<()>) -> std::process::ExitCode {
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-webhook {name}: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn kube_inject_cmd(args: &KubeInjectArgs) -> anyhow::Result<()> {
    let cfg = match &args.config {
        Some(p) => InjectConfig::load(p)?,
        None => InjectConfig::default(),
    };
    let native_sidecars = cfg.native_sidecars.resolve(None);
    let input = read_input(&args.file)?;
    let mode = Mode::Inject {
        cfg: &cfg,
        native_sidecars,
    };
    let r = kube_inject::rewrite(&input, mode).with_context(|| source_name(&args.file))?;
    for n in &r.notes {
        eprintln!("{n}");
    }
    write_output(args.output.as_deref(), &r.output)
}

fn kube_uninject_cmd(args: &KubeUninjectArgs) -> anyhow::Result<()> {
    let input = read_input(&args.file)?;
    let r =
        kube_inject::rewrite(&input, Mode::Uninject).with_context(|| source_name(&args.file))?;
    for n in &r.notes {
        eprintln!("{n}");
    }
    write_output(args.output.as_deref(), &r.output)
}

fn source_name(file: &str) -> String {
    if file == "-" {
        "<stdin>".to_string()
    } else {
        file.to_string()
    }
}

fn read_input(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))
    }
}

/// Standard output, or a temporary file next to `path` renamed over it, so a failure never
/// leaves a half-written file.
fn write_output(path: Option<&Path>, text: &str) -> anyhow::Result<()> {
    let Some(path) = path else {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .context("cannot write standard output")?;
        return Ok(());
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    // A temporary file is private (0600); give the result the mode the file had, or the
    // usual 0644 for a new one.
    let mode = match std::fs::metadata(path) {
        Ok(m) => m.permissions(),
        Err(_) => std::fs::Permissions::from_mode(0o644),
    };
    tmp.write_all(text.as_bytes())
        .and_then(|()| tmp.as_file().set_permissions(mode))
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn kube_inject_flags() {
        let cli = Cli::try_parse_from([
            "mesh-webhook",
            "kube-inject",
            "-f",
            "-",
            "-o",
            "out.yaml",
            "--config",
            "c.yaml",
        ])
        .unwrap();
        let Command::KubeInject(a) = cli.command else {
            panic!("wrong subcommand")
        };
        assert_eq!(a.file, "-");
        assert_eq!(a.output.as_deref(), Some(Path::new("out.yaml")));
        assert_eq!(a.config.as_deref(), Some(Path::new("c.yaml")));
        assert!(Cli::try_parse_from(["mesh-webhook", "kube-inject"]).is_err());
        assert!(Cli::try_parse_from(["mesh-webhook", "kube-uninject", "-f", "x.yaml"]).is_ok());
    }
}
