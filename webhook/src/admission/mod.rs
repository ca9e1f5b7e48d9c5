//! The HTTPS admission server (owned by the webhook-server work).

use std::net::SocketAddr;
use std::path::PathBuf;

/// Arguments of `mesh-webhook serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// PEM certificate chain served to the API server; re-read when it changes on disk.
    #[arg(long)]
    pub cert: PathBuf,
    /// PEM private key matching --cert; re-read when it changes on disk.
    #[arg(long)]
    pub key: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:9443")]
    pub addr: SocketAddr,
    /// Injection config (YAML); built-in defaults when absent. Re-read when it changes.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn run(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("serve: work in progress")
}
