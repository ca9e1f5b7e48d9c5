//! The honoured `traffic.sidecar.istio.io/*` and `sidecar.istio.io/*` annotations, parsed
//! and validated into typed overrides. A malformed value is an error naming the annotation.

use std::collections::BTreeMap;

use ipnet::IpNet;
use mesh_common::annotations as ann;

use super::InjectError;
use crate::config::InjectConfig;

/// The annotations that shape the injected containers (and so the status hash).
pub const HONOURED: [&str; 10] = [
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
        let cidrs = |k: &str, default: &str, allow_star: bool| -> Result<String, InjectError> {
            match get(k) {
                Some(v) => parse_cidr_list(v, allow_star).map_err(|r| bad(k, v, r)),
                None => Ok(parse_cidr_list(default, allow_star).unwrap_or_default()),
            }
        };
        let ports = |k: &str, default: &str, allow_star: bool| -> Result<String, InjectError> {
            match get(k) {
                Some(v) => parse_port_list(v, allow_star).map_err(|r| bad(k, v, r)),
                None => Ok(parse_port_list(default, allow_star).unwrap_or_default()),
            }
        };

        let include_outbound_cidrs = cidrs(
            ann::INCLUDE_OUTBOUND_IP_RANGES,
            &cfg.include_outbound_ip_ranges,
            true,
        )?;
        let exclude_outbound_cidrs = cidrs(
            ann::EXCLUDE_OUTBOUND_IP_RANGES,
            &cfg.exclude_outbound_ip_ranges,
            false,
        )?;
        let include_inbound_ports =
            ports(ann::INCLUDE_INBOUND_PORTS, &cfg.include_inbound_ports, true)?;
        let exclude_outbound_ports = ports(
            ann::EXCLUDE_OUTBOUND_PORTS,
            &cfg.exclude_outbound_ports,
            false,
        )?;
        // The proxy's own ports are always excluded from inbound capture; the annotation adds.
        let base = parse_port_list(&cfg.exclude_inbound_ports, false).unwrap_or_default();
        let extra = ports(ann::EXCLUDE_INBOUND_PORTS, "", false)?;
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

/// Splits a comma-separated list into trimmed, non-empty items; `None` stands for `*`
/// (alone, and only when `allow_star`). `what` names the items in the mixed-`*` error.
fn list_items<'a>(
    s: &'a str,
    allow_star: bool,
    what: &str,
) -> Result<Option<Vec<&'a str>>, String> {
    let items: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .collect();
    if !items.contains(&"*") {
        return Ok(Some(items));
    }
    if !allow_star {
        return Err("`*` is not allowed in an exclude list".into());
    }
    if items.len() > 1 {
        return Err(format!("`*` cannot be combined with other {what}"));
    }
    Ok(None)
}

/// Validate a comma-separated CIDR list; `*` (alone) means all when `allow_star`.
/// Returns the normalized list (trimmed items joined with `,`).
pub fn parse_cidr_list(s: &str, allow_star: bool) -> Result<String, String> {
    let Some(items) = list_items(s, allow_star, "ranges")? else {
        return Ok("*".into());
    };
    for i in &items {
        i.parse::<IpNet>()
            .map_err(|_| format!("{i:?} is not a CIDR (like 10.0.0.0/8 or fd00::/8)"))?;
    }
    Ok(items.join(","))
}

/// Validate a comma-separated port list (1-65535); `*` (alone) means all when `allow_star`.
pub fn parse_port_list(s: &str, allow_star: bool) -> Result<String, String> {
    let Some(items) = list_items(s, allow_star, "ports")? else {
        return Ok("*".into());
    };
    let mut out = Vec::with_capacity(items.len());
    for i in items {
        match i.parse::<u16>() {
            Ok(p) if p > 0 => out.push(p.to_string()),
            _ => return Err(format!("{i:?} is not a port (1-65535)")),
        }
    }
    Ok(out.join(","))
}

/// Validate a Kubernetes resource quantity (`100m`, `1.5`, `128Mi`, `1e3`, `2G`) and return
/// its approximate value, for comparisons. Negative quantities are refused.
pub fn parse_quantity(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let err = || format!("{s:?} is not a Kubernetes quantity (like 100m, 0.5, 128Mi, 1G)");
    let num_end = t
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || (i == 0 && c == '+')))
        .map_or(t.len(), |(i, _)| i);
    let (num, suffix) = t.split_at(num_end);
    let num = num.strip_prefix('+').unwrap_or(num);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return Err(err());
    }
    let value: f64 = num.parse().map_err(|_| err())?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => {
            let exp = &e[1..];
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
                return Err(err());
            }
            let exp: i32 = exp.parse().map_err(|_| err())?;
            10f64.powi(exp)
        }
        _ => return Err(err()),
    };
    Ok(value * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in [
            "100m", "0.5", "1", "128Mi", "1Gi", "2G", "1e3", "1E-2", "+1", ".5", "10k",
        ] {
            assert!(parse_quantity(ok).is_ok(), "{ok}");
        }
        for bad in ["", "lots", "-1", "1.2.3", "10mb", "1e", "Mi", "1 Mi", "1ki"] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_quantity("1Ki").unwrap(), 1024.0);
        assert!(parse_quantity("100m").unwrap() < parse_quantity("1").unwrap());
    }

    #[test]
    fn ports_and_cidrs() {
        assert_eq!(parse_port_list(" 80, 443 ", false).unwrap(), "80,443");
        assert_eq!(parse_port_list("*", true).unwrap(), "*");
        assert_eq!(parse_port_list("", true).unwrap(), "");
        assert!(parse_port_list("*", false).is_err());
        assert!(parse_port_list("0", false).is_err());
        assert!(parse_port_list("65536", false).is_err());
        assert!(parse_port_list("http", false).is_err());
        assert!(parse_port_list("*,80", true).is_err());
        assert_eq!(
            parse_cidr_list("10.0.0.0/8, fd00::/8", false).unwrap(),
            "10.0.0.0/8,fd00::/8"
        );
        assert!(parse_cidr_list("10.0.0.0/33", true).is_err());
        assert!(parse_cidr_list("10.0.0.1", true).is_err());
        assert!(parse_cidr_list("*", false).is_err());
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
