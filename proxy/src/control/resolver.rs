//! The HTTP engine's view of the store ([`crate::http::Resolver`]): what it knows now,
//! and for what it does not, a bounded wait for mesh-control's answer.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_config::{Key, PeerMeta};

use super::store::{Answer, Store};
use crate::http::{BoxFuture, CompiledService, LocalService, Resolver};

/// How long a request or a connection waits for mesh-control to answer a key the proxy
/// has not met yet (only while the stream is up; a local round trip takes milliseconds).
pub const LOOKUP_WAIT: Duration = Duration::from_secs(1);

/// [`Resolver`] over the store, for a pod at `own_ip`.
#[derive(Debug, Clone)]
pub struct StoreResolver {
    pub store: Arc<Store>,
    /// The pod's IP: its own Workload (`addr/<ip>`) says which Services front it.
    pub own_ip: Option<IpAddr>,
    pub wait: Duration,
}

impl StoreResolver {
    async fn answer(&self, key: Key) -> Option<Answer> {
        self.store.resolve(key, self.wait).await
    }
}

impl Resolver for StoreResolver {
    fn service_for_host<'a>(
        &'a self,
        host: &'a str,
    ) -> BoxFuture<'a, Option<Arc<CompiledService>>> {
        Box::pin(async move {
            if let Some(svc) = self.store.service_for_authority(host) {
                return Some(svc);
            }
            // An IP authority names a ClusterIP, not a host key.
            if let Some(ip) = mesh_config::key::ip_literal(host) {
                return match self.answer(Key::Address(ip)).await? {
                    Answer::Service(s) => Some(s),
                    _ => None,
                };
            }
            match self.answer(Key::host(host)).await? {
                Answer::Service(s) => Some(s),
                _ => None,
            }
        })
    }

    fn service_for_addr(&self, ip: IpAddr) -> BoxFuture<'_, Option<Arc<CompiledService>>> {
        Box::pin(async move {
            match self.answer(Key::Address(ip)).await? {
                Answer::Service(s) => Some(s),
                _ => None,
            }
        })
    }

    fn peer(&self, ip: IpAddr) -> BoxFuture<'_, Option<PeerMeta>> {
        Box::pin(async move {
            match self.answer(Key::Address(ip)).await? {
                Answer::Workload(w) => Some(w.meta.clone()),
                _ => None,
            }
        })
    }

    fn own_workload(&self) -> BoxFuture<'_, Option<Arc<crate::authz::CompiledWorkload>>> {
        Box::pin(async move {
            let ip = self.own_ip?;
            match self.answer(Key::Address(ip)).await? {
                Answer::Workload(w) => Some(w),
                _ => None,
            }
        })
    }

    fn inbound_service(&self, target_port: u16) -> BoxFuture<'_, Option<LocalService>> {
        Box::pin(async move {
            let w = self.own_workload().await?;
            // The first Service (mesh-control sorts them) with a port targeting this one.
            // (Through `own_workload`'s answer, so both read one Workload.)
            w.services.iter().find_map(|s| {
                let port = s.ports.iter().find(|p| p.target_port == target_port)?;
                Some(LocalService {
                    host: s.host.clone(),
                    name: s.name.clone(),
                    namespace: s.namespace.clone(),
                    protocol: port.protocol,
                })
            })
        })
    }
}

/// The DNS proxy's view of the store: a name mesh-control resolves to a Service answers
/// with its ClusterIPs; anything else (`NotFound`, or mesh-control away) is not a mesh
/// name and is forwarded.
#[derive(Debug, Clone)]
pub struct StoreNames {
    pub store: Option<Arc<Store>>,
    pub wait: Duration,
}

impl crate::dns::ServiceNames for StoreNames {
    fn lookup(
        &self,
        name: &str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Option<Vec<IpAddr>>> + Send + '_>> {
        let key = Key::host(name);
        Box::pin(async move {
            let store = self.store.as_ref()?;
            match store.resolve(key, self.wait).await? {
                Answer::Service(s) => Some(s.service().addresses.clone()),
                _ => None,
            }
        })
    }
}
