//! The honoured `traffic.sidecar.istio.io/*` and `sidecar.istio.io/*` annotations, and the
//! honoured fields of Istio's `proxy.istio.io/config` (see [`crate::proxy_config`]), parsed
//! and validated into typed overrides. A malformed value is an error naming the annotation
//! (and, in a ProxyConfig, the field). The list grammar (ports, CIDRs, `*`) is
//! `mesh_common::lists`', the log grammar `mesh_common::log`'s: the binaries that read the
//! injected flags parse the same way.

use std::collections::BTreeMap;

use mesh_common::annotations as ann;
use mesh_common::lists::{self, List, ListError, Star};
use mesh_common::log::LogFilter;

use super::error::InjectError;
use crate::config::InjectConfig;
use crate::proxy_config::{self, ProxyConfig};
use crate::quantity::parse_quantity;

/// Istio's per-pod proxy log level, in the grammar of `mesh_common::log`; it wins over
/// the config's `proxyLogLevel`.
pub const LOG_LEVEL: &str = ann::LOG_LEVEL;

/// Istio's per-pod ProxyConfig (YAML or JSON), merged over the config's `defaultConfig`.
pub const PROXY_CONFIG: &str = proxy_config::ANNOTATION;

/// The annotations that shape the injected containers (and so the status hash).
pub const HONOURED: [&str; 12] = [
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
    PROXY_CONFIG,
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
    /// `mesh-proxy --worker-threads`, from ProxyConfig `concurrency`; `None` keeps the
    /// proxy's default (2).
    pub worker_threads: Option<u16>,
    /// `mesh-proxy --drain-delay`, from ProxyConfig `terminationDrainDuration` (as written,
    /// validated); `None` keeps the proxy's default (5s, Istio's default too).
    pub drain_delay: Option<String>,
    /// ProxyConfig `proxyMetadata`: env on `istio-proxy`, by name.
    pub proxy_metadata: BTreeMap<String, String>,
    /// `--dns-capture` on both containers: `proxyMetadata.ISTIO_META_DNS_CAPTURE` when it
    /// is a boolean, else the config's `dnsCapture`.
    pub dns_capture: bool,
    /// ProxyConfig `holdApplicationUntilProxyStarts`: a regular sidecar goes first, with a
    /// `postStart` hook (`mesh-proxy wait`) that holds the app until it is ready.
    pub hold_application: bool,
}

/// Everything [`Overrides::read_all`] learns from the annotations.
#[derive(Debug, Clone)]
pub struct Reading {
    pub overrides: Overrides,
    /// The annotation's ProxyConfig over the config's `defaultConfig`.
    pub proxy_config: ProxyConfig,
    /// The annotation's ProxyConfig alone (to say where a field came from).
    pub annotated: ProxyConfig,
    /// What was accepted but not (fully) honoured, for the user: each names where it
    /// comes from (`proxy.istio.io/config` or `defaultConfig`).
    pub warnings: Vec<String>,
}

/// Where a ProxyConfig field came from, for messages.
pub fn source(in_annotation: bool) -> &'static str {
    if in_annotation {
        PROXY_CONFIG
    } else {
        "injection config defaultConfig"
    }
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
    /// [`Overrides::read_all`], the overrides only.
    pub fn read(
        annotations: &BTreeMap<String, String>,
        cfg: &InjectConfig,
    ) -> Result<Self, InjectError> {
        Self::read_all(annotations, cfg).map(|r| r.overrides)
    }

    /// The overrides, the effective ProxyConfig, and the warnings about what the
    /// annotations ask for and this injector does not do.
    pub fn read_all(
        annotations: &BTreeMap<String, String>,
        cfg: &InjectConfig,
    ) -> Result<Reading, InjectError> {
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

        let mut warnings = Vec::new();
        let annotated = match get(PROXY_CONFIG) {
            None => ProxyConfig::default(),
            Some(v) => {
                let parsed =
                    ProxyConfig::parse(v).map_err(|e| bad(PROXY_CONFIG, v, e.to_string()))?;
                if !parsed.ignored.is_empty() {
                    warnings.push(format!(
                        "{PROXY_CONFIG}: ignored (not honoured by this injector): {}; honoured: {}",
                        parsed.ignored.join(", "),
                        proxy_config::HONOURED_FIELDS.join(", ")
                    ));
                }
                parsed.config
            }
        };
        let pc = annotated.merged_over(&cfg.default_config);
        // What the config says: its defaultConfig's ISTIO_META_DNS_CAPTURE (checked at
        // load, and consistent with dnsCapture), else dnsCapture.
        let cfg_dns = match cfg.default_config.dns_capture() {
            Some(Ok(on)) => on,
            _ => cfg.dns_capture,
        };
        let dns_capture = match pc.dns_capture() {
            None => cfg_dns,
            Some(Ok(on)) => on,
            Some(Err(v)) => {
                // Only the annotation's can be bad: the config's was checked at load.
                warnings.push(format!(
                    "{PROXY_CONFIG}: proxyMetadata.{}: {v:?} is not a boolean (Istio reads \
                     true/false, 1/0, t/f): DNS capture stays {}, as the config says",
                    proxy_config::DNS_CAPTURE_KEY,
                    if cfg_dns { "on" } else { "off" }
                ));
                cfg_dns
            }
        };
        let worker_threads = match pc.concurrency {
            None => None,
            Some(0) => {
                // Istio's "all cores": the cores this container may use.
                let cores = limits_cpu.as_deref().and_then(|q| parse_quantity(q).ok());
                match cores {
                    Some(c) => Some(cpu_workers(c)),
                    None => {
                        warnings.push(format!(
                            "{}: concurrency 0 (one worker per core): the proxy has no CPU \
                             limit to count cores by; it keeps its default of 2 worker threads",
                            source(annotated.concurrency.is_some())
                        ));
                        None
                    }
                }
            }
            Some(n) => Some(n),
        };
        let drain_delay = pc.termination_drain_duration.clone();
        let proxy_metadata = pc.proxy_metadata.clone();

        let overrides = Overrides {
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
            worker_threads,
            drain_delay,
            proxy_metadata,
            dns_capture,
            hold_application: pc.hold_application_until_proxy_starts == Some(true),
        };
        Ok(Reading {
            overrides,
            proxy_config: pc,
            annotated,
            warnings,
        })
    }
}

/// Worker threads for `cores` CPUs of limit: rounded up, 1-64.
fn cpu_workers(cores: f64) -> u16 {
    // The quantity is approximate (`3000m` is 3.0000000000000004): round up what is
    // clearly more than a whole number only.
    let n = (cores - 1e-6).ceil();
    if n >= f64::from(proxy_config::MAX_CONCURRENCY) {
        proxy_config::MAX_CONCURRENCY
    } else if n <= 1.0 {
        1
    } else {
        // In 2..64: exact.
        n as u16
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

    fn with_config(text: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(PROXY_CONFIG.to_string(), text.to_string())])
    }

    #[test]
    fn proxy_config_becomes_flags_env_and_dns_capture() {
        let cfg = InjectConfig::default();
        let r = Overrides::read_all(
            &with_config(
                "concurrency: 4\nterminationDrainDuration: 30s\n\
                 proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"true\", FOO: bar}\n",
            ),
            &cfg,
        )
        .unwrap();
        let o = &r.overrides;
        assert_eq!(o.worker_threads, Some(4));
        assert_eq!(o.drain_delay.as_deref(), Some("30s"));
        assert!(o.dns_capture);
        assert_eq!(
            o.proxy_metadata.keys().collect::<Vec<_>>(),
            ["FOO", "ISTIO_META_DNS_CAPTURE"]
        );
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        // Nothing set: nothing written, the config's dnsCapture.
        let o = Overrides::read(&BTreeMap::new(), &cfg).unwrap();
        assert_eq!((o.worker_threads, o.drain_delay.as_deref()), (None, None));
        assert!(!o.dns_capture && o.proxy_metadata.is_empty());
    }

    #[test]
    fn concurrency_zero_counts_the_cpu_limit() {
        let cfg = InjectConfig::default();
        let workers = |limit: Option<&str>| {
            let mut a = with_config("concurrency: 0");
            if let Some(l) = limit {
                a.insert(ann::PROXY_CPU_LIMIT.to_string(), l.to_string());
                // Keep the request under the limit.
                a.insert(ann::PROXY_CPU.to_string(), "10m".to_string());
            }
            Overrides::read(&a, &cfg).unwrap().worker_threads
        };
        assert_eq!(workers(None), Some(2), "the config's 2000m");
        for (limit, want) in [
            ("1500m", 1 + 1),
            ("3000m", 3),
            ("3001m", 4),
            ("100m", 1),
            ("1", 1),
            ("250", 64),
        ] {
            assert_eq!(workers(Some(limit)), Some(want), "{limit}");
        }
        // No limit at all: the proxy's default, and a warning naming the source.
        let mut none = InjectConfig::default();
        none.proxy_resources.limits.cpu = None;
        let r = Overrides::read_all(&with_config("concurrency: 0"), &none).unwrap();
        assert_eq!(r.overrides.worker_threads, None);
        assert!(
            r.warnings.len() == 1
                && r.warnings[0].starts_with(PROXY_CONFIG)
                && r.warnings[0].contains("no CPU limit"),
            "{:?}",
            r.warnings
        );
        none.default_config.concurrency = Some(0);
        let r = Overrides::read_all(&BTreeMap::new(), &none).unwrap();
        assert!(
            r.warnings[0].starts_with("injection config defaultConfig"),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn dns_capture_follows_the_pods_metadata_over_the_config() {
        let on = InjectConfig {
            dns_capture: true,
            ..InjectConfig::default()
        };
        let dns = |text: &str, cfg: &InjectConfig| {
            let r = Overrides::read_all(&with_config(text), cfg).unwrap();
            (r.overrides.dns_capture, r.warnings)
        };
        let off = dns("proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"false\"}", &on);
        assert!(
            !off.0 && off.1.is_empty(),
            "the pod's \"false\" wins: {off:?}"
        );
        let default = InjectConfig::default();
        let one = dns("proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"1\"}", &default);
        assert!(one.0 && one.1.is_empty(), "Go's \"1\": {one:?}");
        let (capture, warnings) = dns("proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"yes\"}", &on);
        assert!(capture, "the config's");
        assert!(
            warnings.len() == 1 && warnings[0].contains("\"yes\" is not a boolean"),
            "{warnings:?}"
        );
    }

    #[test]
    fn proxy_config_errors_name_the_annotation_and_the_field_and_others_warn() {
        let cfg = InjectConfig::default();
        for (text, field) in [
            ("concurrency: 65", "field concurrency: 65 is out of range"),
            (
                "terminationDrainDuration: soon",
                "field terminationDrainDuration",
            ),
            ("proxyMetadata: {FOO: 1}", "field proxyMetadata.FOO"),
            (
                "holdApplicationUntilProxyStarts: yes please",
                "field holdApplicationUntilProxyStarts",
            ),
            ("- concurrency", "must be a mapping"),
        ] {
            let e = Overrides::read(&with_config(text), &cfg).unwrap_err();
            let msg = e.to_string();
            assert!(
                matches!(&e, InjectError::InvalidAnnotation { annotation, .. } if annotation == PROXY_CONFIG)
                    && msg.contains(field),
                "{text}: {msg}"
            );
        }
        let r = Overrides::read_all(
            &with_config("{tracing: {}, image: {imageType: distroless}}"),
            &cfg,
        )
        .unwrap();
        assert_eq!(
            r.warnings,
            [
                "proxy.istio.io/config: ignored (not honoured by this injector): tracing, image; \
              honoured: concurrency, terminationDrainDuration, proxyMetadata, \
              holdApplicationUntilProxyStarts"
            ]
        );
        assert_eq!(
            r.overrides,
            Overrides::read(&BTreeMap::new(), &cfg).unwrap()
        );
    }

    #[test]
    fn the_annotation_is_merged_over_the_configs_default_config() {
        let cfg = InjectConfig::from_yaml_str(
            "defaultConfig: {concurrency: 2, terminationDrainDuration: 10s, proxyMetadata: {A: mesh, B: mesh}}",
            "t",
        )
        .unwrap();
        let r = Overrides::read_all(
            &with_config("{concurrency: 6, proxyMetadata: {B: pod}}"),
            &cfg,
        )
        .unwrap();
        assert_eq!(r.overrides.worker_threads, Some(6));
        assert_eq!(r.overrides.drain_delay.as_deref(), Some("10s"));
        assert_eq!(
            r.overrides.proxy_metadata,
            BTreeMap::from([("A".into(), "mesh".into()), ("B".into(), "pod".into())])
        );
        assert_eq!(r.annotated.termination_drain_duration, None);
        let o = Overrides::read(&BTreeMap::new(), &cfg).unwrap();
        assert_eq!(o.worker_threads, Some(2));
    }
}
