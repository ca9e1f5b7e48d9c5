//! Which version of a group serves a resource, asked of the API server's discovery
//! endpoints (every authenticated client may read them: no RBAC on CRDs needed).

use kube::Client;

/// Istio's versions of `networking.istio.io` kinds, preferred first (one schema).
pub const ISTIO_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
/// `discovery.k8s.io` for EndpointSlices: v1 from Kubernetes 1.21, v1beta1 before.
pub const SLICE_VERSIONS: &[&str] = &["v1", "v1beta1"];

/// One served version of a group and the resources (plural names) it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub version: String,
    pub resources: Vec<String>,
}

/// The most preferred version in `preference` that serves `plural`.
pub fn pick(served: &[Served], plural: &str, preference: &[&str]) -> Option<String> {
    preference
        .iter()
        .find(|v| {
            served
                .iter()
                .any(|s| s.version == **v && s.resources.iter().any(|r| r == plural))
        })
        .map(|v| (*v).to_owned())
}

/// What `group` serves now; empty when the group is not there. A version whose resource
/// list fails (a CRD being established) is left out until the next ask.
pub async fn served(client: &Client, group: &str) -> Result<Vec<Served>, kube::Error> {
    let groups = client.list_api_groups().await?;
    let Some(g) = groups.groups.into_iter().find(|g| g.name == group) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for v in g.versions {
        match client.list_api_group_resources(&v.group_version).await {
            Ok(list) => out.push(Served {
                version: v.version,
                resources: list
                    .resources
                    .into_iter()
                    .map(|r| r.name)
                    .filter(|n| !n.contains('/'))
                    .collect(),
            }),
            Err(e) => tracing::debug!(group_version = %v.group_version, error = %e, "discovery"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(version: &str, resources: &[&str]) -> Served {
        Served {
            version: version.into(),
            resources: resources.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    #[test]
    fn picks_the_preferred_version_that_serves_the_kind() {
        let all = [
            s("v1alpha3", &["virtualservices", "destinationrules"]),
            s("v1beta1", &["virtualservices", "destinationrules"]),
            s("v1", &["destinationrules"]),
        ];
        assert_eq!(
            pick(&all, "virtualservices", ISTIO_VERSIONS).as_deref(),
            Some("v1beta1")
        );
        assert_eq!(
            pick(&all, "destinationrules", ISTIO_VERSIONS).as_deref(),
            Some("v1")
        );
        assert_eq!(pick(&all, "gateways", ISTIO_VERSIONS), None);
        assert_eq!(pick(&[], "virtualservices", ISTIO_VERSIONS), None);
        assert_eq!(
            pick(
                &[s("v1beta1", &["endpointslices"])],
                "endpointslices",
                SLICE_VERSIONS
            )
            .as_deref(),
            Some("v1beta1")
        );
    }
}
