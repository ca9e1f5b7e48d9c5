//! The API server side: fill it with a [`Layout`], make the measured changes, clean up.
//! Direct API calls (kube's client, many in flight), not kubectl: 4,000 objects in
//! seconds, and a change's timestamp is taken right before its request is sent.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use futures_util::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

use crate::layout::Layout;

/// Requests in flight while creating objects.
const IN_FLIGHT: usize = 32;

pub struct Cluster {
    client: Client,
    slices: ApiResource,
    vs: ApiResource,
}

/// How long populating took, per kind.
#[derive(Debug, Default)]
pub struct Populated {
    pub timings: Vec<(&'static str, usize, Duration)>,
    /// Service index → ClusterIP.
    pub cluster_ips: HashMap<usize, String>,
}

impl Cluster {
    pub async fn connect(kubeconfig: &str) -> Result<Cluster> {
        let kc = Kubeconfig::read_from(kubeconfig).context("reading the kubeconfig")?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        let client = Client::try_from(config)?;
        // v1.20 serves EndpointSlices as v1beta1 only; newer servers as v1.
        let slice_version = match client.list_api_group_resources("discovery.k8s.io/v1").await {
            Ok(r) if r.resources.iter().any(|r| r.name == "endpointslices") => "v1",
            _ => "v1beta1",
        };
        let ar = |group: &str, version: &str, kind: &str, plural: &str| ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: format!("{group}/{version}"),
            kind: kind.into(),
            plural: plural.into(),
        };
        Ok(Cluster {
            client,
            slices: ar(
                "discovery.k8s.io",
                slice_version,
                "EndpointSlice",
                "endpointslices",
            ),
            vs: ar(
                "networking.istio.io",
                "v1",
                "VirtualService",
                "virtualservices",
            ),
        })
    }

    pub fn slice_api_version(&self) -> &str {
        &self.slices.api_version
    }

    fn slices(&self, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, &self.slices)
    }

    fn vss(&self, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, &self.vs)
    }

    /// Creates everything of `l`; returns the ClusterIPs.
    pub async fn populate(&self, l: &Layout) -> Result<Populated> {
        let mut out = Populated::default();
        let pp = PostParams::default();

        let t = Instant::now();
        let nss = Api::<Namespace>::all(self.client.clone());
        for ns in l.all_namespaces() {
            let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
            match nss.create(&pp, &obj).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e).context("creating namespace"),
            }
        }
        out.timings.push(("Namespace", l.namespaces, t.elapsed()));

        let t = Instant::now();
        let ips: Vec<(usize, String)> = each(0..l.services, |i| {
            let api = Api::<Service>::namespaced(self.client.clone(), &l.ns(i));
            let pp = pp.clone();
            async move {
                let svc: Service = serde_json::from_value(l.service(i))?;
                let made = api.create(&pp, &svc).await.context("creating a Service")?;
                let ip = made
                    .spec
                    .and_then(|s| s.cluster_ip)
                    .context("no ClusterIP allocated")?;
                Ok((i, ip))
            }
        })
        .await?;
        out.cluster_ips = ips.into_iter().collect();
        out.timings.push(("Service", l.services, t.elapsed()));

        let t = Instant::now();
        let api_version = self.slice_api_version().to_owned();
        each(0..l.services, |i| {
            let api = self.slices(&l.ns(i));
            let pp = pp.clone();
            let obj = l.slice(i, &api_version);
            async move {
                let obj: DynamicObject = serde_json::from_value(obj)?;
                api.create(&pp, &obj)
                    .await
                    .context("creating an EndpointSlice")?;
                Ok(())
            }
        })
        .await?;
        out.timings.push(("EndpointSlice", l.services, t.elapsed()));

        if l.pods {
            let t = Instant::now();
            each(0..l.services, |i| {
                let api = Api::<Pod>::namespaced(self.client.clone(), &l.ns(i));
                let pp = pp.clone();
                async move {
                    let pod: Pod = serde_json::from_value(l.pod(i))?;
                    api.create(&pp, &pod).await.context("creating a Pod")?;
                    // No kubelet: the pod IP is set as a kubelet would, on /status.
                    api.patch_status(
                        &Layout::pod_name(i),
                        &PatchParams::default(),
                        &Patch::Merge(l.pod_status(i)),
                    )
                    .await
                    .context("setting a Pod's status.podIP")?;
                    Ok(())
                }
            })
            .await?;
            out.timings
                .push(("Pod (+ /status)", l.services, t.elapsed()));
        }

        let t = Instant::now();
        let with_vs: Vec<usize> = (0..l.services).filter(|&i| l.has_baseline_vs(i)).collect();
        let n = with_vs.len();
        each(with_vs, |i| {
            let api = self.vss(&l.ns(i));
            let pp = pp.clone();
            let obj = l.vs(i, "r-0");
            async move {
                let obj: DynamicObject = serde_json::from_value(obj)?;
                api.create(&pp, &obj)
                    .await
                    .context("creating a VirtualService")?;
                Ok(())
            }
        })
        .await?;
        out.timings.push(("VirtualService", n, t.elapsed()));
        Ok(out)
    }

    /// Change: Service `i`'s last endpoint moves to `ip`. Returns when the API server
    /// answered.
    pub async fn move_endpoint(&self, l: &Layout, i: usize, ip: std::net::Ipv4Addr) -> Result<()> {
        let patch = json!({"endpoints": l.endpoints(i, Some(ip))});
        self.slices(&l.ns(i))
            .patch(
                &Layout::slice_name(i),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
            .context("patching an EndpointSlice")?;
        Ok(())
    }

    /// Change: Service `i`'s VirtualService gets canary header value `marker` (created if
    /// `exists` is false).
    pub async fn set_vs(&self, l: &Layout, i: usize, marker: &str, exists: bool) -> Result<()> {
        let api = self.vss(&l.ns(i));
        if exists {
            let patch = json!({"spec": l.vs_spec(i, marker)});
            api.patch(
                &Layout::vs_name(i),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
            .context("patching a VirtualService")?;
        } else {
            let obj: DynamicObject = serde_json::from_value(l.vs(i, marker))?;
            api.create(&PostParams::default(), &obj)
                .await
                .context("creating a VirtualService")?;
        }
        Ok(())
    }

    /// Deletes every object of `l` (the namespaces stay: without a controller-manager a
    /// deleted namespace never finishes terminating).
    pub async fn cleanup(&self, l: &Layout) -> Result<()> {
        let dp = DeleteParams::default();
        let lp = ListParams::default();
        // Services have no deletecollection: one by one.
        each(0..l.services, |i| {
            let api = Api::<Service>::namespaced(self.client.clone(), &l.ns(i));
            let dp = dp.clone();
            async move {
                match api.delete(&Layout::name(i), &dp).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                    Err(e) => Err(e).context("deleting a Service"),
                }
            }
        })
        .await?;
        for ns in l.all_namespaces() {
            Api::<Pod>::namespaced(self.client.clone(), &ns)
                .delete_collection(&DeleteParams::default().grace_period(0), &lp)
                .await
                .context("deleting Pods")?;
            self.slices(&ns)
                .delete_collection(&dp, &lp)
                .await
                .context("deleting EndpointSlices")?;
            self.vss(&ns)
                .delete_collection(&dp, &lp)
                .await
                .context("deleting VirtualServices")?;
        }
        Ok(())
    }
}

/// Runs `f` for every item, [`IN_FLIGHT`] at a time; stops at the first error.
async fn each<I, F, Fut, T>(items: I, f: F) -> Result<Vec<T>>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    futures_util::stream::iter(items)
        .map(f)
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await
}
