//! DNS proxying, as Istio's sidecars offer it (`ISTIO_META_DNS_CAPTURE`).
//!
//! With DNS capture on, `mesh-init --dns-capture` redirects the app's UDP and TCP
//! port 53 to the proxy on [`mesh_common::DNS_CAPTURE_PORT`] (uid 1337, the proxy's,
//! is exempt, so the proxy's own upstream queries escape the redirect). The proxy
//! answers A and AAAA for the mesh's Service names from the control plane's table
//! ([`ServiceNames`]) and forwards everything else to the pod's `resolv.conf`
//! nameservers, relaying their answers byte for byte. Apps then call `reviews:9080`
//! by name on clusters without cluster DNS.
//!
//! # Interface
//!
//! - [`ServiceNames`]: the mesh's names, implemented over the control plane's store.
//! - [`DnsConfig`]: listen addresses, upstreams, search list, timeouts;
//!   [`DnsConfig::from_resolv_conf`] reads the pod's `resolv.conf`.
//! - [`DnsServer::bind`] binds UDP and TCP on every listen address (bind errors surface
//!   at startup, with the proxy's other listeners), [`DnsServer::run`] serves until its
//!   shutdown signal; [`serve`] does both. Signal the shutdown when the proxy exits, not
//!   when its drain begins: a draining app still resolves names.
//! - [`DnsMetrics`]: answered / forwarded / failed / malformed / dropped counters.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use mesh_proxy::dns::{DnsConfig, DnsServer, ServiceNames};
//! # async fn start(names: Arc<dyn ServiceNames>) -> Result<(), Box<dyn std::error::Error>> {
//! let text = std::fs::read_to_string("/etc/resolv.conf")?;
//! let config = DnsConfig::from_resolv_conf(&text, DnsConfig::default_listen());
//! let server = DnsServer::bind(config, names).await?;
//! let (stop, shutdown) = tokio::sync::watch::channel(false);
//! tokio::spawn(server.run(shutdown));
//! // ... at exit:
//! stop.send_replace(true);
//! # Ok(()) }
//! ```
//!
//! # What a query gets
//!
//! - Shorter than a header, or a response (QR set): nothing.
//! - A standard query (opcode QUERY) that does not parse (not exactly one question,
//!   a compression pointer or a reserved label type in the question, a name over 255
//!   octets, records running past the end, two OPT records...): FORMERR.
//! - Class IN, and the name itself or the name with a suffix of the search list
//!   stripped (see [`DnsConfig::ndots`]) is a mesh name: the proxy answers, RA set, AA
//!   clear (like a recursive resolver), the question echoed in its own case, TTL
//!   [`DnsConfig::ttl`]: A records for the Service's IPv4 addresses, AAAA for its IPv6
//!   ones, and NOERROR with no records (NODATA, never NXDOMAIN) when it has none of the
//!   asked family or for any other type. A query with EDNS gets a minimal OPT record
//!   (version 0, 1232 bytes, no DO), and BADVERS if it asked for another version.
//!   Over UDP, records past the client's size (512, or its EDNS size) are left out
//!   and TC is set.
//! - Anything else, other opcodes included, is forwarded unchanged to the upstreams in
//!   order, `attempts` rounds, each try given `timeout`: UDP queries over UDP (a TC
//!   answer is asked again over TCP), TCP queries over TCP. The first answer carrying
//!   the query's ID and question is relayed unchanged; if none, SERVFAIL.
//!
//! # Modules (in dependency order)
//!
//! `wire` (the message format) → `config` (resolv.conf) → `metrics` → `answer` (mesh
//! name or not, the proxy's answers) → `upstream` (forwarding) → `server` (sockets,
//! tasks, limits).

mod answer;
mod config;
mod metrics;
mod server;
mod upstream;
mod wire;

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;

pub use config::DnsConfig;
pub use metrics::{DnsCounts, DnsMetrics};
pub use server::DnsServer;

/// The mesh's Service names.
pub trait ServiceNames: Send + Sync + 'static {
    /// Given a normalized name (lower case, labels joined by `.`, no trailing dot),
    /// the Service's ClusterIPs if the mesh has a Service of that name, in any of the
    /// forms `name`, `name.ns`, `name.ns.svc`, `name.ns.svc.cluster.local`; `None` if it
    /// is not a mesh name. May wait briefly (the first config), up to
    /// [`DnsConfig::lookup_timeout`]. `Some` of an empty list is a mesh name without
    /// addresses: NODATA.
    fn lookup(&self, name: &str) -> Pin<Box<dyn Future<Output = Option<Vec<IpAddr>>> + Send + '_>>;
}

/// Starting the DNS proxy failed.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot listen for DNS on {addr} ({proto}): {source}")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("no address to listen for DNS on")]
    NoListener,
}

/// [`DnsServer::bind`], then [`DnsServer::run`] until `shutdown` turns true.
pub async fn serve(
    config: DnsConfig,
    names: Arc<dyn ServiceNames>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), DnsError> {
    DnsServer::bind(config, names).await?.run(shutdown).await;
    Ok(())
}
