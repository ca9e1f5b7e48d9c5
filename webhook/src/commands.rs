//! Running the parsed command line: `serve` (see [`crate::admission`]), and
//! `kube-inject` / `kube-uninject` (files and standard streams around
//! [`crate::kube_inject`]).

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;

use crate::cli::{Cli, Command, KubeInjectArgs, KubeUninjectArgs};
use crate::config::InjectConfig;
use crate::kube_inject::{self, Mode};

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
