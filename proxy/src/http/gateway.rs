//! An ingress gateway's HTTP routing: the virtual hosts of one listener port (or of one
//! TLS server on it), each compiled as the one-port Service it is routed as
//! ([`mesh_config::VirtualHost::as_service`]), so a gateway's requests go through the
//! same route selection, faults, retries, pools and metrics as a sidecar's.

use std::sync::Arc;

use mesh_config::gateway::most_specific;
use mesh_config::{Cluster, ValidationError, VirtualHost};

use super::compile::CompiledService;
use super::lb::LbStates;

/// One virtual host, ready for requests.
#[derive(Debug)]
pub struct CompiledVirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    /// Every request gets a 301 to `https://`.
    pub https_redirect: bool,
    pub service: Arc<CompiledService>,
}

/// The virtual hosts a gateway connection's requests choose from.
#[derive(Debug)]
pub struct VirtualHosts {
    /// The Gateway's port number (what routes' `match.port` was compared with).
    pub number: u16,
    /// Whether the connection was TLS-terminated by the gateway (`x-forwarded-proto`).
    pub https: bool,
    pub hosts: Vec<CompiledVirtualHost>,
}

impl VirtualHosts {
    /// Compiles `hosts` (validated as Services, regexes compiled) against the gateway's
    /// `clusters`, load-balancing state taken over from `states`.
    pub fn compile(
        number: u16,
        https: bool,
        hosts: &[VirtualHost],
        clusters: &[Cluster],
        states: &LbStates,
    ) -> Result<VirtualHosts, ValidationError> {
        let hosts = hosts
            .iter()
            .map(|v| {
                let service = CompiledService::compile_in(&v.as_service(number, clusters), states)
                    .map_err(|e| ValidationError {
                        what: format!("gateway port {number}, virtual host {}: {}", v.name, e.what),
                        why: e.why,
                    })?;
                Ok(CompiledVirtualHost {
                    name: v.name.clone(),
                    domains: v.domains.clone(),
                    https_redirect: v.https_redirect,
                    service: Arc::new(service),
                })
            })
            .collect::<Result<Vec<_>, ValidationError>>()?;
        Ok(VirtualHosts {
            number,
            https,
            hosts,
        })
    }

    /// The virtual host a request for `host` (normalised: lower case, no port) goes to:
    /// an exact domain, else the longest matching wildcard, else `*`.
    pub fn pick(&self, host: &str) -> Option<&CompiledVirtualHost> {
        most_specific(&self.hosts, |v| &v.domains, Some(host))
    }
}

/// How a gateway connection finds its virtual hosts: asked at every request, so a
/// config change reaches kept-alive connections too. `None`: the port or server is no
/// longer configured (the request gets 404 `NR`).
pub trait GatewayRoutes: Send + Sync {
    fn hosts(&self) -> Option<Arc<VirtualHosts>>;
}

/// Fixed virtual hosts (tests, and a connection that needs no updates).
impl GatewayRoutes for Arc<VirtualHosts> {
    fn hosts(&self) -> Option<Arc<VirtualHosts>> {
        Some(self.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn vh(name: &str, domains: &[&str]) -> VirtualHost {
        VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            https_redirect: false,
            routes: Vec::new(),
        }
    }

    #[test]
    fn picks_the_most_specific_host() {
        let hosts = VirtualHosts::compile(
            80,
            false,
            &[
                vh("*", &["*"]),
                vh("*.example.com", &["*.example.com"]),
                vh("shop.example.com", &["shop.example.com"]),
            ],
            &[],
            &LbStates::default(),
        )
        .unwrap();
        let pick = |h| hosts.pick(h).map(|v| v.name.as_str());
        assert_eq!(pick("shop.example.com"), Some("shop.example.com"));
        assert_eq!(pick("a.example.com"), Some("*.example.com"));
        assert_eq!(pick("example.org"), Some("*"));
    }
}
