//! Istio's `ProxyConfig` as far as the injector honours it: the pod annotation
//! `proxy.istio.io/config` (a YAML or JSON fragment) and the injection config's
//! `defaultConfig` (Istio's `meshConfig.defaultConfig`), which the annotation is merged
//! over, field by field and `proxyMetadata` key by key, as Istio merges them.
//!
//! Honoured fields ([`HONOURED_FIELDS`]) and what they become in the injected pod:
//! - `concurrency` → `mesh-proxy --worker-threads N` (1-64, the proxy's range); `0`, Istio's
//!   "all cores", is one worker per CPU of the proxy container's CPU limit (rounded up,
//!   at most 64), or the proxy's default (2) when it has no limit. Unset: no flag.
//! - `terminationDrainDuration` → `mesh-proxy --drain-delay D` (how long the proxy keeps
//!   accepting after SIGTERM before it drains), in [`mesh_common::duration`]'s syntax
//!   (`30s`, `1.5s`, `500ms`, `2m`; Istio's protobuf form `30s` is one of them).
//! - `proxyMetadata` → env on `istio-proxy` (a user's own `istio-proxy` env still wins);
//!   `ISTIO_META_DNS_CAPTURE` (Go's boolean spellings, as Istio reads it) also turns the
//!   DNS capture on or off (`--dns-capture` on both containers).
//! - `holdApplicationUntilProxyStarts` → with native sidecars, what the injector already
//!   does (the proxy's startup probe holds the app containers); a regular sidecar goes
//!   first with a `postStart` hook `mesh-proxy wait`, as Istio's (`pilot-agent wait`).
//!
//! Field names are Istio's JSON names, or the proto names (`proxy_metadata`) that Istio's
//! parser accepts too. A value of the wrong type or out of range is an error naming the
//! field path (`proxyMetadata.FOO`). Any other field parses as "ignored": the annotation's
//! become warnings (Istio ignores the fields injection does not use; a pod written for
//! Istio must not be refused), the config's are errors (a config key that would do
//! nothing is refused, as elsewhere in the config).

use std::collections::BTreeMap;
use std::time::Duration;

use mesh_common::contract::proxy::env as proxy_env;
use mesh_common::log::LogFilter;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The pod annotation (Istio's `annotation.ProxyConfig`).
pub const ANNOTATION: &str = "proxy.istio.io/config";

/// The ProxyConfig fields the injector honours (Istio's JSON names).
pub const HONOURED_FIELDS: [&str; 4] = [
    CONCURRENCY,
    TERMINATION_DRAIN_DURATION,
    PROXY_METADATA,
    HOLD_APPLICATION,
];

pub const CONCURRENCY: &str = "concurrency";
pub const TERMINATION_DRAIN_DURATION: &str = "terminationDrainDuration";
pub const PROXY_METADATA: &str = "proxyMetadata";
pub const HOLD_APPLICATION: &str = "holdApplicationUntilProxyStarts";

/// The `proxyMetadata` key by which Istio turns on DNS capture.
pub const DNS_CAPTURE_KEY: &str = "ISTIO_META_DNS_CAPTURE";

/// The largest `concurrency`: the proxy's `--worker-threads` range is 1-64.
pub const MAX_CONCURRENCY: u16 = 64;

/// A field that cannot be used: its path inside the ProxyConfig (empty: the whole value)
/// and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", if field.is_empty() { String::new() } else { format!("field {field}: ") })]
pub struct ProxyConfigError {
    pub field: String,
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> ProxyConfigError {
    ProxyConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The honoured part of a ProxyConfig, validated. Unset fields are `None` / empty, so a
/// fragment can be merged over another ([`ProxyConfig::merged_over`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// 0-64; 0 is Istio's "all cores".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u16>,
    /// As written (trimmed), valid in [`mesh_common::duration`]'s syntax: the proxy parses
    /// the same grammar, so it is handed exactly what was checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_drain_duration: Option<String>,
    /// Environment for `istio-proxy`, by name (written in this order, as Istio's
    /// template ranges over the map in key order).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub proxy_metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_application_until_proxy_starts: Option<bool>,
}

/// A parsed fragment and the top-level fields it had that the injector does not honour.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub config: ProxyConfig,
    /// Field names as written, in the fragment's order.
    pub ignored: Vec<String>,
}

impl ProxyConfig {
    /// Nothing set.
    pub fn is_empty(&self) -> bool {
        *self == ProxyConfig::default()
    }

    /// Parse the annotation's text: YAML or JSON (JSON is YAML's flow style), a mapping of
    /// ProxyConfig fields. Empty text (or `null`) sets nothing.
    pub fn parse(text: &str) -> Result<Parsed, ProxyConfigError> {
        if text.trim().is_empty() {
            return Ok(Parsed::default());
        }
        let value: Value = serde_saphyr::from_str(text)
            .map_err(|e| bad("", format!("not YAML or JSON: {}", e.without_snippet())))?;
        Self::from_value(&value)
    }

    /// Read an already parsed fragment (see [`ProxyConfig::parse`]).
    pub fn from_value(value: &Value) -> Result<Parsed, ProxyConfigError> {
        let map = match value {
            Value::Null => return Ok(Parsed::default()),
            Value::Object(m) => m,
            other => {
                return Err(bad(
                    "",
                    format!(
                        "must be a mapping of ProxyConfig fields (YAML or JSON), not {}",
                        kind(other)
                    ),
                ));
            }
        };
        let mut out = Parsed::default();
        let mut seen: BTreeMap<&'static str, &str> = BTreeMap::new();
        for (key, v) in map {
            let Some(field) = canonical_field(key) else {
                out.ignored.push(key.clone());
                continue;
            };
            if let Some(first) = seen.insert(field, key) {
                return Err(bad(key.as_str(), format!("given twice (also as {first})")));
            }
            let c = &mut out.config;
            match field {
                CONCURRENCY => c.concurrency = concurrency(key, v)?,
                TERMINATION_DRAIN_DURATION => c.termination_drain_duration = duration(key, v)?,
                PROXY_METADATA => c.proxy_metadata = metadata(key, v)?,
                _ => c.hold_application_until_proxy_starts = boolean(key, v)?,
            }
        }
        Ok(out)
    }

    /// `self` (the annotation's) over `base` (the config's `defaultConfig`): a field set
    /// here wins; `proxyMetadata` merges key by key, this one's values winning.
    pub fn merged_over(&self, base: &ProxyConfig) -> ProxyConfig {
        let mut proxy_metadata = base.proxy_metadata.clone();
        proxy_metadata.extend(
            self.proxy_metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        ProxyConfig {
            concurrency: self.concurrency.or(base.concurrency),
            termination_drain_duration: self
                .termination_drain_duration
                .clone()
                .or_else(|| base.termination_drain_duration.clone()),
            proxy_metadata,
            hold_application_until_proxy_starts: self
                .hold_application_until_proxy_starts
                .or(base.hold_application_until_proxy_starts),
        }
    }

    /// What `proxyMetadata.ISTIO_META_DNS_CAPTURE` says: `None` when absent, `Err(value)`
    /// when it is not one of Go's boolean spellings (Istio's reader would ignore it).
    pub fn dns_capture(&self) -> Option<Result<bool, &str>> {
        self.proxy_metadata
            .get(DNS_CAPTURE_KEY)
            .map(|v| go_bool(v).ok_or(v.as_str()))
    }

    /// `terminationDrainDuration` as a duration (validated when parsed).
    pub fn drain_duration(&self) -> Option<Duration> {
        self.termination_drain_duration
            .as_deref()
            .and_then(|d| mesh_common::duration::parse(d).ok())
    }
}

/// The config's `defaultConfig`: parsed like the annotation, but a field the injector does
/// not honour is an error (a config key that would do nothing is refused).
impl<'de> Deserialize<'de> for ProxyConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        let at = |e: ProxyConfigError| {
            let path = if e.field.is_empty() {
                "defaultConfig".to_string()
            } else {
                format!("defaultConfig.{}", e.field)
            };
            serde::de::Error::custom(format!("field `{path}`: {}", e.reason))
        };
        let parsed = ProxyConfig::from_value(&value).map_err(at)?;
        if let Some(field) = parsed.ignored.first() {
            return Err(at(bad(
                field.as_str(),
                format!(
                    "not a ProxyConfig field this injector honours ({}); remove it",
                    HONOURED_FIELDS.join(", ")
                ),
            )));
        }
        Ok(parsed.config)
    }
}

/// Istio's JSON name for a field written with it or with its proto name.
fn canonical_field(key: &str) -> Option<&'static str> {
    Some(match key {
        CONCURRENCY => CONCURRENCY,
        TERMINATION_DRAIN_DURATION | "termination_drain_duration" => TERMINATION_DRAIN_DURATION,
        PROXY_METADATA | "proxy_metadata" => PROXY_METADATA,
        HOLD_APPLICATION | "hold_application_until_proxy_starts" => HOLD_APPLICATION,
        _ => return None,
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// An int32 as protobuf's JSON reads one: a number or a string of one.
fn concurrency(field: &str, v: &Value) -> Result<Option<u16>, ProxyConfigError> {
    let want = format!(
        "a whole number of worker threads, 1-{MAX_CONCURRENCY} (0: one per CPU of the proxy's CPU limit)"
    );
    let n: i64 = match v {
        Value::Null => return Ok(None),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i,
            None => return Err(bad(field, format!("{n} is not {want}"))),
        },
        Value::String(s) => match s.trim().parse::<i64>() {
            Ok(i) => i,
            Err(_) => return Err(bad(field, format!("{s:?} is not {want}"))),
        },
        other => return Err(bad(field, format!("must be {want}, not {}", kind(other)))),
    };
    match u16::try_from(n) {
        Ok(c) if c <= MAX_CONCURRENCY => Ok(Some(c)),
        _ => Err(bad(field, format!("{n} is out of range: expected {want}"))),
    }
}

/// A duration string, as protobuf's JSON writes one (`30s`), in our wider syntax.
fn duration(field: &str, v: &Value) -> Result<Option<String>, ProxyConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => mesh_common::duration::parse(s)
            .map(|_| Some(s.trim().to_string()))
            .map_err(|e| bad(field, e.to_string())),
        other => Err(bad(
            field,
            format!(
                "must be a duration string such as \"30s\", not {}",
                kind(other)
            ),
        )),
    }
}

fn boolean(field: &str, v: &Value) -> Result<Option<bool>, ProxyConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        other => Err(bad(
            field,
            format!("must be true or false, not {}", kind(other)),
        )),
    }
}

/// `map<string, string>`: names Kubernetes takes for env vars, string values (the ones
/// the proxy parses itself checked as it will).
fn metadata(field: &str, v: &Value) -> Result<BTreeMap<String, String>, ProxyConfigError> {
    let map = match v {
        Value::Null => return Ok(BTreeMap::new()),
        Value::Object(m) => m,
        other => {
            return Err(bad(
                field,
                format!(
                    "must be a mapping of environment variable names to strings, not {}",
                    kind(other)
                ),
            ));
        }
    };
    let mut out = BTreeMap::new();
    for (name, value) in map {
        let path = format!("{PROXY_METADATA}.{name}");
        if !env_name_ok(name) {
            return Err(bad(
                path,
                "is not an environment variable name (letters, digits, '_', '-' and '.', \
                 not starting with a digit)",
            ));
        }
        let s = match value {
            Value::String(s) => s.clone(),
            Value::Bool(_) | Value::Number(_) => {
                return Err(bad(
                    path,
                    format!("must be a string: quote it (\"{value}\")"),
                ));
            }
            other => return Err(bad(path, format!("must be a string, not {}", kind(other)))),
        };
        check_proxy_env(name, &s).map_err(|reason| bad(path, reason))?;
        out.insert(name.clone(), s);
    }
    Ok(out)
}

/// Kubernetes' rule for env var names (`IsEnvVarName`).
fn env_name_ok(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b"_-.".contains(&b))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// A value for one of the variables mesh-proxy parses (`mesh_common::contract::proxy::env`),
/// checked as the proxy checks it: a bad one would stop the proxy from starting.
fn check_proxy_env(name: &str, value: &str) -> Result<(), String> {
    match name {
        proxy_env::SECRET_TTL => match mesh_common::duration::parse(value) {
            Ok(d) if d >= Duration::from_secs(1) => Ok(()),
            Ok(_) => Err(format!(
                "{value:?}: the certificate lifetime is at least 1s"
            )),
            Err(e) => Err(e.to_string()),
        },
        proxy_env::LOG => LogFilter::parse(value).map(drop).map_err(|e| e.to_string()),
        proxy_env::INSTANCE_IP => {
            let v = value.trim();
            if v.is_empty() || v.parse::<std::net::IpAddr>().is_ok() {
                Ok(())
            } else {
                Err(format!("{value:?} is not an IP address"))
            }
        }
        _ => Ok(()),
    }
}

/// Go's `strconv.ParseBool`, which Istio reads `ISTIO_META_DNS_CAPTURE` with.
fn go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ProxyConfig {
        let p = ProxyConfig::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(p.ignored.is_empty(), "{text}: {:?}", p.ignored);
        p.config
    }

    fn err(text: &str) -> String {
        ProxyConfig::parse(text)
            .map(|p| panic!("{text}: parsed as {p:?}"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_istio_example_parses_as_yaml_and_as_json() {
        let yaml = "concurrency: 4\nterminationDrainDuration: 30s\nproxyMetadata:\n  \
                    ISTIO_META_DNS_CAPTURE: \"true\"\n  FOO: bar\n\
                    holdApplicationUntilProxyStarts: true\n";
        let json = r#"{"concurrency": 4, "terminationDrainDuration": "30s",
            "proxyMetadata": {"ISTIO_META_DNS_CAPTURE": "true", "FOO": "bar"},
            "holdApplicationUntilProxyStarts": true}"#;
        let want = ProxyConfig {
            concurrency: Some(4),
            termination_drain_duration: Some("30s".into()),
            proxy_metadata: BTreeMap::from([
                ("FOO".into(), "bar".into()),
                ("ISTIO_META_DNS_CAPTURE".into(), "true".into()),
            ]),
            hold_application_until_proxy_starts: Some(true),
        };
        assert_eq!(parse(yaml), want);
        assert_eq!(parse(json), want);
        assert_eq!(want.dns_capture(), Some(Ok(true)));
        assert_eq!(want.drain_duration(), Some(Duration::from_secs(30)));
        // Proto names, as Istio's parser takes them too; a quoted int32 as protobuf's JSON.
        assert_eq!(
            parse("{concurrency: \"2\", termination_drain_duration: 1.5s, proxy_metadata: {A: b}}"),
            ProxyConfig {
                concurrency: Some(2),
                termination_drain_duration: Some("1.5s".into()),
                proxy_metadata: BTreeMap::from([("A".into(), "b".into())]),
                ..ProxyConfig::default()
            }
        );
    }

    #[test]
    fn empty_and_null_set_nothing() {
        for t in [
            "",
            "  \n",
            "~",
            "null",
            "{}",
            "concurrency: null\nproxyMetadata: null",
        ] {
            assert!(parse(t).is_empty(), "{t}");
        }
    }

    #[test]
    fn other_fields_are_ignored_and_named() {
        let p = ProxyConfig::parse(
            "tracing: {sampling: 10}\nconcurrency: 1\ndiscoveryAddress: istiod:15012\nfutureField: [1]\n",
        )
        .unwrap();
        assert_eq!(p.config.concurrency, Some(1));
        assert_eq!(p.ignored, ["tracing", "discoveryAddress", "futureField"]);
    }

    #[test]
    fn concurrency_range_and_types() {
        assert_eq!(parse("concurrency: 0").concurrency, Some(0));
        assert_eq!(parse("concurrency: 64").concurrency, Some(64));
        for (t, why) in [
            (
                "concurrency: 65",
                "65 is out of range: expected a whole number of worker threads, 1-64",
            ),
            ("concurrency: -1", "-1 is out of range"),
            ("concurrency: 1.5", "1.5 is not a whole number"),
            ("concurrency: \"four\"", "\"four\" is not a whole number"),
            (
                "concurrency: true",
                "must be a whole number of worker threads, 1-64 (0: one per CPU of the proxy's CPU limit), not a boolean",
            ),
            ("concurrency: [4]", "not a list"),
            ("concurrency: 99999999999999999999", "is not a whole number"),
        ] {
            let e = err(t);
            assert!(
                e.starts_with("field concurrency: ") && e.contains(why),
                "{t}: {e}"
            );
        }
    }

    #[test]
    fn drain_duration_is_a_duration_string() {
        assert_eq!(
            parse("terminationDrainDuration: 500ms").drain_duration(),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse("terminationDrainDuration: \" 2m \"")
                .termination_drain_duration
                .as_deref(),
            Some("2m")
        );
        for (t, why) in [
            (
                "terminationDrainDuration: 30",
                "must be a duration string such as \"30s\", not a number",
            ),
            ("terminationDrainDuration: 5d", "unknown duration unit `d`"),
            ("terminationDrainDuration: \"-1s\"", "not a duration"),
            ("terminationDrainDuration: {seconds: 5}", "not a mapping"),
        ] {
            let e = err(t);
            assert!(
                e.starts_with("field terminationDrainDuration: ") && e.contains(why),
                "{t}: {e}"
            );
        }
    }

    #[test]
    fn metadata_names_and_values() {
        for (t, field, why) in [
            (
                "proxyMetadata: {FOO: 1}",
                "proxyMetadata.FOO",
                "must be a string: quote it (\"1\")",
            ),
            (
                "proxyMetadata: {ISTIO_META_DNS_CAPTURE: true}",
                "proxyMetadata.ISTIO_META_DNS_CAPTURE",
                "quote it (\"true\")",
            ),
            (
                "proxyMetadata: {FOO: null}",
                "proxyMetadata.FOO",
                "not null",
            ),
            (
                "proxyMetadata: {FOO: [a]}",
                "proxyMetadata.FOO",
                "not a list",
            ),
            (
                "proxyMetadata: {\"1FOO\": a}",
                "proxyMetadata.1FOO",
                "not an environment variable name",
            ),
            (
                "proxyMetadata: {\"A B\": a}",
                "proxyMetadata.A B",
                "not an environment variable name",
            ),
            (
                "proxyMetadata: [FOO]",
                "proxyMetadata",
                "must be a mapping of environment variable names",
            ),
            // What mesh-proxy parses itself is checked as it will.
            (
                "proxyMetadata: {SECRET_TTL: soon}",
                "proxyMetadata.SECRET_TTL",
                "not a duration",
            ),
            (
                "proxyMetadata: {SECRET_TTL: 500ms}",
                "proxyMetadata.SECRET_TTL",
                "at least 1s",
            ),
            (
                "proxyMetadata: {MESH_PROXY_LOG: loud}",
                "proxyMetadata.MESH_PROXY_LOG",
                "not a log level",
            ),
            (
                "proxyMetadata: {INSTANCE_IP: pod}",
                "proxyMetadata.INSTANCE_IP",
                "not an IP address",
            ),
        ] {
            let e = err(t);
            assert!(
                e.starts_with(&format!("field {field}: ")) && e.contains(why),
                "{t}: {e}"
            );
        }
        let c = parse("proxyMetadata: {SECRET_TTL: 12h, MESH_PROXY_LOG: debug, a.b-c_D: \"\"}");
        assert_eq!(c.proxy_metadata.len(), 3);
    }

    #[test]
    fn hold_is_a_boolean() {
        assert_eq!(
            parse("holdApplicationUntilProxyStarts: false").hold_application_until_proxy_starts,
            Some(false)
        );
        let e = err("holdApplicationUntilProxyStarts: \"true\"");
        assert_eq!(
            e,
            "field holdApplicationUntilProxyStarts: must be true or false, not a string"
        );
    }

    #[test]
    fn not_a_mapping_or_not_yaml() {
        assert!(err("[concurrency]").contains("must be a mapping of ProxyConfig fields"));
        assert!(err("{concurrency: 4").starts_with("not YAML or JSON"));
        let e = err("concurrency: 4\ntermination_drain_duration: 1s\nterminationDrainDuration: 2s");
        assert!(e.contains("given twice"), "{e}");
    }

    #[test]
    fn dns_capture_reads_go_booleans() {
        let with = |v: &str| ProxyConfig {
            proxy_metadata: BTreeMap::from([(DNS_CAPTURE_KEY.to_string(), v.to_string())]),
            ..ProxyConfig::default()
        };
        for v in ["true", "1", "T", "True", "TRUE"] {
            assert_eq!(with(v).dns_capture(), Some(Ok(true)), "{v}");
        }
        for v in ["false", "0", "f", "False"] {
            assert_eq!(with(v).dns_capture(), Some(Ok(false)), "{v}");
        }
        assert_eq!(with("yes").dns_capture(), Some(Err("yes")));
        assert_eq!(ProxyConfig::default().dns_capture(), None);
    }

    #[test]
    fn the_annotation_wins_field_by_field_and_key_by_key() {
        let base = parse(
            "{concurrency: 2, terminationDrainDuration: 10s, holdApplicationUntilProxyStarts: true, \
             proxyMetadata: {A: base, B: base}}",
        );
        let pod = parse("{concurrency: 4, proxyMetadata: {B: pod, C: pod}}");
        let m = pod.merged_over(&base);
        assert_eq!(m.concurrency, Some(4));
        assert_eq!(m.termination_drain_duration.as_deref(), Some("10s"));
        assert_eq!(m.hold_application_until_proxy_starts, Some(true));
        assert_eq!(
            m.proxy_metadata,
            BTreeMap::from([
                ("A".into(), "base".into()),
                ("B".into(), "pod".into()),
                ("C".into(), "pod".into())
            ])
        );
        assert_eq!(ProxyConfig::default().merged_over(&base), base);
    }

    #[test]
    fn default_config_refuses_what_it_would_ignore() {
        let de = |t: &str| serde_saphyr::from_str::<ProxyConfig>(t).map_err(|e| e.to_string());
        assert_eq!(de("concurrency: 3").unwrap().concurrency, Some(3));
        let e = de("tracing: {}").unwrap_err();
        assert!(
            e.contains(
                "field `defaultConfig.tracing`: not a ProxyConfig field this injector honours"
            ),
            "{e}"
        );
        let e = de("concurrency: 100").unwrap_err();
        assert!(
            e.contains("field `defaultConfig.concurrency`: 100 is out of range"),
            "{e}"
        );
    }
}
