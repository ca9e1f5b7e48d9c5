//! The honoured `traffic.sidecar.istio.io/*` and `sidecar.istio.io/*` annotations, parsed
//! and validated into typed overrides. A malformed value is an error naming the annotation.
//! The list grammar (ports, CIDRs, `*`) is `mesh_common::lists`', the log grammar
//! `mesh_common::log`'s: the binaries that read the injected flags parse the same way.

use std::collections::BTreeMap;

use mesh_common::annotations as ann;
use mesh_common::lists::{self, List, ListError, Star};
use mesh_common::log::LogFilter;

use super::error::InjectError;
use crate::config::InjectConfig;
use crate::quantity::parse_quantity;

/// Istio's per-pod proxy log level, in the grammar of `mesh_common::log`; it wins over
/// the config's `proxyLogLevel`.
pub const LOG_LEVEL: &str = ann::LOG_LEVEL;

/// The annotations that shape the injected containers (and so the status hash).
pub const HONOURED: [&str; 11] = [
    ann::INCLUDE_OUTBOUND_IP_RANGES,
    ann::EXCLUDE_OUTBOUND_IP_RANGES,
    ann::INCLUDE_INBOUND_PORTS,
    ann::EXCLUDE_INBOUND_PORTS,
    ann::EXCLUDE_OUTBOUND_PORTS,
    ann::PROXY_IMAGE,
    ann::PROXY_CPU,
    ann::PROXY_MEMORY,
    ann::PROXY_CPU_LIMIT,
    ann::PROXY_MEMORY_LIMIT,
    LOG_LEVEL,
];

/// Everything per-pod that changes what we inject, already merged with the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overrides {
    pub proxy_image: String,
    pub requests_cpu: Option<String>,
    pub requests_memory: Option<String>,
    pub limits_cpu: Option<String>,
    pub limits_memory: Option<String>,
    /// `-i`: `*` or a CIDR list.
    pub include_outbound_cidrs: String,
    /// `-x`: CIDR list, possibly empty.
    pub exclude_outbound_cidrs: String,
    /// `-b`: `*`, a port list, or empty (no inbound capture).
    pub include_inbound_ports: String,
    /// `-d`: the config's ports plus the annotation's.
    pub exclude_inbound_ports: String,
    /// `-o`: port list, possibly empty.
    pub exclude_outbound_ports: String,
    /// The proxy's log filter (canonical form), from `sidecar.istio.io/logLevel` or the
    /// config's `proxyLogLevel`; `None` keeps the proxy's default.
    pub proxy_log_level: Option<String>,
    /// `-u`: the uid the proxy runs as. The config's `proxyUid` unless the user's own
    /// `istio-proxy` container says otherwise (see [`super::identity`]).
    pub proxy_uid: u32,
    /// `-g` (written when it differs from the uid): the proxy's gid.
    pub proxy_gid: u32,
}

/// A list from an annotation (an error naming it) or, when not annotated, from the config's
/// default (validated when the config was loaded).
fn list_value<T: std::fmt::Display>(
    annotations: &BTreeMap<String, String>,
    key: &str,
    default: &str,
    parse: impl Fn(&str) -> Result<List<T>, ListError>,
) -> Result<String, InjectError> {
    match annotations.get(key) {
        Some(v) => parse(v)
            .map(|l| l.to_arg())
            .map_err(|e| InjectError::InvalidAnnotation {
                annotation: key.to_string(),
                value: v.clone(),
                reason: e.to_string(),
            }),
        None => Ok(parse(default).map(|l| l.to_arg()).unwrap_or_default()),
    }
}

impl Overrides {
    pub fn read(
        annotations: &BTreeMap<String, String>,
        cfg: &InjectConfig,
    ) -> Result<Self, InjectError> {
        let get = |k: &str| annotations.get(k).map(String::as_str);
        let bad = |k: &str, v: &str, reason: String| InjectError::InvalidAnnotation {
            annotation: k.to_string(),
            value: v.to_string(),
            reason,
        };
        let cidrs = |k: &str, default: &str, star: Star| {
            list_value(annotations, k, default, |s| lists::cidrs(s, star))
        };
        let ports = |k: &str, default: &str, star: Star| {
            list_value(annotations, k, default, |s| lists::ports(s, star))
        };

        let include_outbound_cidrs = cidrs(
            ann::INCLUDE_OUTBOUND_IP_RANGES,
            &cfg.include_outbound_ip_ranges,
            Star::Allowed,
        )?;
        let exclude_outbound_cidrs = cidrs(
            ann::EXCLUDE_OUTBOUND_IP_RANGES,
            &cfg.exclude_outbound_ip_ranges,
            Star::Refused,
        )?;
        let include_inbound_ports = ports(
            ann::INCLUDE_INBOUND_PORTS,
            &cfg.include_inbound_ports,
            Star::Allowed,
        )?;
        let exclude_outbound_ports = ports(
            ann::EXCLUDE_OUTBOUND_PORTS,
            &cfg.exclude_outbound_ports,
            Star::Refused,
        )?;
        // The proxy's own ports are always excluded from inbound capture; the annotation adds.
        let base = lists::ports(&cfg.exclude_inbound_ports, Star::Refused)
            .map(|l| l.to_arg())
            .unwrap_or_default();
        let extra = ports(ann::EXCLUDE_INBOUND_PORTS, "", Star::Refused)?;
        let mut merged: Vec<&str> = Vec::new();
        for p in base.split(',').chain(extra.split(',')) {
            if !p.is_empty() && !merged.contains(&p) {
                merged.push(p);
            }
        }
        let exclude_inbound_ports = merged.join(",");

        let proxy_image = match get(ann::PROXY_IMAGE) {
            Some(v) => {
                let t = v.trim();
                if t.is_empty() || t.chars().any(char::is_whitespace) {
                    return Err(bad(
                        ann::PROXY_IMAGE,
                        v,
                        "must be a non-empty image reference without spaces".into(),
                    ));
                }
                t.to_string()
            }
            None => cfg.proxy_image.clone(),
        };

        // Written in its canonical form (`warning` -> `warn`): what the proxy is handed is
        // exactly what was validated here.
        let proxy_log_level = match get(LOG_LEVEL) {
            Some(v) => Some(
                LogFilter::parse(v)
                    .map_err(|e| bad(LOG_LEVEL, v, e.to_string()))?
                    .to_string(),
            ),
            None => cfg.proxy_log_level.as_deref().map(|v| {
                LogFilter::parse(v).map_or_else(|_| v.trim().to_string(), |f| f.to_string())
            }),
        };

        let r = &cfg.proxy_resources;
        let (requests_cpu, limits_cpu) = resource_pair(
            (ann::PROXY_CPU, get(ann::PROXY_CPU)),
            (ann::PROXY_CPU_LIMIT, get(ann::PROXY_CPU_LIMIT)),
            r.requests.cpu.as_deref(),
            r.limits.cpu.as_deref(),
        )?;
        let (requests_memory, limits_memory) = resource_pair(
            (ann::PROXY_MEMORY, get(ann::PROXY_MEMORY)),
            (ann::PROXY_MEMORY_LIMIT, get(ann::PROXY_MEMORY_LIMIT)),
            r.requests.memory.as_deref(),
            r.limits.memory.as_deref(),
        )?;

        Ok(Overrides {
            proxy_image,
            requests_cpu,
            requests_memory,
            limits_cpu,
            limits_memory,
            include_outbound_cidrs,
            exclude_outbound_cidrs,
            include_inbound_ports,
            exclude_inbound_ports,
            exclude_outbound_ports,
            proxy_log_level,
            proxy_uid: cfg.proxy_uid,
            proxy_gid: cfg.proxy_gid,
        })
    }
}

type Pair = (Option<String>, Option<String>);

/// Request and limit of one resource. An annotated value wins over the config; when only one
/// side is annotated and it conflicts with the config's other side, the config's side gives
/// way (Kubernetes rejects request > limit); two annotations that conflict are an error.
fn resource_pair(
    request: (&str, Option<&str>),
    limit: (&str, Option<&str>),
    cfg_request: Option<&str>,
    cfg_limit: Option<&str>,
) -> Result<Pair, InjectError> {
    let parsed = |(k, v): (&str, Option<&str>)| -> Result<Option<(String, f64)>, InjectError> {
        match v {
            None => Ok(None),
            Some(v) => {
                let q = parse_quantity(v).map_err(|reason| InjectError::InvalidAnnotation {
                    annotation: k.to_string(),
                    value: v.to_string(),
                    reason,
                })?;
                Ok(Some((v.trim().to_string(), q)))
            }
        }
    };
    let from_cfg =
        |v: Option<&str>| v.and_then(|s| parse_quantity(s).ok().map(|q| (s.to_string(), q)));
    let ann_req = parsed(request)?;
    let ann_lim = parsed(limit)?;
    let out = match (ann_req, ann_lim) {
        (Some(rq), Some(lm)) => {
            if rq.1 > lm.1 {
                return Err(InjectError::InvalidAnnotation {
                    annotation: request.0.to_string(),
                    value: rq.0,
                    reason: format!("request is larger than the limit {} ({})", lm.0, limit.0),
                });
            }
            (Some(rq), Some(lm))
        }
        (Some(rq), None) => {
            let lm = from_cfg(cfg_limit).map(|lm| if rq.1 > lm.1 { rq.clone() } else { lm });
            (Some(rq), lm)
        }
        (None, Some(lm)) => {
            let rq = from_cfg(cfg_request).map(|rq| if rq.1 > lm.1 { lm.clone() } else { rq });
            (rq, Some(lm))
        }
        (None, None) => (from_cfg(cfg_request), from_cfg(cfg_limit)),
    };
    Ok((out.0.map(|x| x.0), out.1.map(|x| x.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_common::lists;

    #[test]
    fn ports_and_cidrs() {
        // The list grammar is mesh_common::lists'; these are the injector's uses of it.
        let ports = |s: &str, star| lists::ports(s, star).map(|l| l.to_arg());
        let cidrs = |s: &str, star| lists::cidrs(s, star).map(|l| l.to_arg());
        assert_eq!(ports(" 80, 443 ", Star::Refused).unwrap(), "80,443");
        assert_eq!(ports("*", Star::Allowed).unwrap(), "*");
        assert_eq!(ports("", Star::Allowed).unwrap(), "");
        assert!(ports("*", Star::Refused).is_err());
        assert!(ports("0", Star::Refused).is_err());
        assert!(ports("65536", Star::Refused).is_err());
        assert!(ports("http", Star::Refused).is_err());
        assert!(ports("*,80", Star::Allowed).is_err());
        assert_eq!(
            cidrs("10.0.0.0/8, fd00::/8", Star::Refused).unwrap(),
            "10.0.0.0/8,fd00::/8"
        );
        assert!(cidrs("10.0.0.0/33", Star::Allowed).is_err());
        assert!(cidrs("10.0.0.1", Star::Allowed).is_err());
        assert!(cidrs("*", Star::Refused).is_err());
    }

    #[test]
    fn annotated_lists_are_errors_naming_the_annotation() {
        let cfg = InjectConfig::default();
        for (k, v, why) in [
            (
                ann::INCLUDE_OUTBOUND_IP_RANGES,
                "10.0.0.1",
                "write 10.0.0.1/32",
            ),
            (ann::EXCLUDE_OUTBOUND_IP_RANGES, "*", "exclude list"),
            (ann::INCLUDE_INBOUND_PORTS, "80,*", "combined"),
            (ann::EXCLUDE_INBOUND_PORTS, "http", "not a port"),
            (ann::EXCLUDE_OUTBOUND_PORTS, "0", "not a port"),
        ] {
            let a = BTreeMap::from([(k.to_string(), v.to_string())]);
            let e = Overrides::read(&a, &cfg).unwrap_err().to_string();
            assert!(e.contains(k) && e.contains(why), "{k}={v}: {e}");
        }
    }

    #[test]
    fn log_level_annotation_overrides_the_config() {
        let cfg = InjectConfig {
            proxy_log_level: Some("info".into()),
            ..InjectConfig::default()
        };
        let o = Overrides::read(&BTreeMap::new(), &cfg).unwrap();
        assert_eq!(o.proxy_log_level.as_deref(), Some("info"));
        let a = BTreeMap::from([(
            LOG_LEVEL.to_string(),
            "Warning, mesh_proxy=debug".to_string(),
        )]);
        let o = Overrides::read(&a, &cfg).unwrap();
        assert_eq!(o.proxy_log_level.as_deref(), Some("warn,mesh_proxy=debug"));
        let a = BTreeMap::from([(LOG_LEVEL.to_string(), "loud".to_string())]);
        let e = Overrides::read(&a, &cfg).unwrap_err().to_string();
        assert!(e.contains(LOG_LEVEL) && e.contains("loud"), "{e}");
        assert!(
            Overrides::read(&BTreeMap::new(), &InjectConfig::default())
                .unwrap()
                .proxy_log_level
                .is_none()
        );
    }

    #[test]
    fn resource_conflicts() {
        let cfg = InjectConfig::default();
        let mut a = BTreeMap::new();
        // A limit below the config's request lowers the request.
        a.insert(ann::PROXY_CPU_LIMIT.to_string(), "50m".to_string());
        let o = Overrides::read(&a, &cfg).unwrap();
        assert_eq!(o.requests_cpu.as_deref(), Some("50m"));
        assert_eq!(o.limits_cpu.as_deref(), Some("50m"));
        // A request above the config's limit raises the limit.
        let mut a = BTreeMap::new();
        a.insert(ann::PROXY_MEMORY.to_string(), "2Gi".to_string());
        let o = Overrides::read(&a, &cfg).unwrap();
        assert_eq!(o.limits_memory.as_deref(), Some("2Gi"));
        // Two annotations that conflict: error naming the request annotation.
        a.insert(ann::PROXY_MEMORY_LIMIT.to_string(), "1Gi".to_string());
        let e = Overrides::read(&a, &cfg).unwrap_err();
        assert!(e.to_string().contains(ann::PROXY_MEMORY), "{e}");
    }

    #[test]
    fn exclude_inbound_ports_merge_with_config() {
        let cfg = InjectConfig::default();
        let mut a = BTreeMap::new();
        a.insert(
            ann::EXCLUDE_INBOUND_PORTS.to_string(),
            "8081,15021".to_string(),
        );
        let o = Overrides::read(&a, &cfg).unwrap();
        assert_eq!(o.exclude_inbound_ports, "15090,15021,8081");
    }
}
