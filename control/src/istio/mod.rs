//! Istio's networking kinds (`VirtualService`, `DestinationRule`, `Gateway`) and security
//! kinds, as the API server returns them in every version Istio serves (one schema).
//!
//! The types follow `istio.io/api/networking/v1alpha3` field for field where mesh-control
//! reads the field, in the JSON spelling (camelCase); fields we do not read yet are not
//! declared and are ignored, so objects using them still parse. `null` is read as the
//! field's default, as Go's protojson does, and an integer may be a JSON number or a
//! string of digits, as protojson reads `int32`/`uint32` (kept as `i64`).
//! Semantic checks (regexes, durations, ranges, signs) are the translation's, so that one
//! bad rule does not cost the whole object; a value of the wrong type (a duration that is
//! not a string, a number that is not an integer) does.
//!
//! Modules: [`virtual_service`], [`destination_rule`], [`gateway`] (`networking.istio.io`),
//! [`peer_authentication`], [`authorization_policy`] (`security.istio.io`); each uses [`Meta`] and [`ParseError`]
//! from here.

pub mod authorization_policy;
pub mod destination_rule;
pub mod gateway;
pub mod peer_authentication;
pub mod virtual_service;

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

pub use authorization_policy::AuthorizationPolicy;
pub use destination_rule::DestinationRule;
pub use gateway::Gateway;
pub use peer_authentication::PeerAuthentication;
pub use virtual_service::VirtualService;

/// Who an Istio object is, and how old (the oldest wins where Istio picks one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub namespace: String,
    pub name: String,
    /// `metadata.creationTimestamp`; `None` sorts first (the API server always sets it).
    pub created: Option<k8s_openapi::jiff::Timestamp>,
}

impl Meta {
    /// Istio's order: creation time, then name, then namespace.
    pub fn age_key(&self) -> (Option<k8s_openapi::jiff::Timestamp>, &str, &str) {
        (self.created, &self.name, &self.namespace)
    }
}

/// An object that does not parse; it is skipped whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {namespace}/{name}: {field}: {message}")]
pub struct ParseError {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// `spec.http[0].match[1].port`.
    pub field: String,
    pub message: String,
}

/// `metadata` of `obj`: namespace (`default` when absent, as kubectl assumes), name
/// (required) and creation time.
pub fn parse_meta(kind: &'static str, obj: &Value) -> Result<Meta, ParseError> {
    let md = obj.get("metadata");
    let str_at = |k: &str| md.and_then(|m| m.get(k)).and_then(Value::as_str);
    let namespace = str_at("namespace")
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_owned();
    let name = str_at("name").unwrap_or_default().to_owned();
    let err = |field: &str, message: String| ParseError {
        kind,
        namespace: namespace.clone(),
        name: name.clone(),
        field: field.to_owned(),
        message,
    };
    if name.is_empty() {
        return Err(err("metadata.name", "missing".into()));
    }
    let created = match str_at("creationTimestamp") {
        None => None,
        Some(t) => Some(t.parse::<k8s_openapi::jiff::Timestamp>().map_err(|e| {
            err(
                "metadata.creationTimestamp",
                format!("not an RFC 3339 time: {e}"),
            )
        })?),
    };
    Ok(Meta {
        namespace,
        name,
        created,
    })
}

/// `spec` of `obj` as `T`, with the failing field's path in the error.
fn parse_spec<T: for<'de> Deserialize<'de>>(
    kind: &'static str,
    meta: &Meta,
    obj: &Value,
) -> Result<T, ParseError> {
    let err = |field: String, message: String| ParseError {
        kind,
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        field,
        message,
    };
    let Some(spec) = obj.get("spec").filter(|s| !s.is_null()) else {
        return Err(err("spec".into(), "missing".into()));
    };
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "spec".to_owned()
        } else {
            format!("spec.{path}")
        };
        err(field, e.into_inner().to_string())
    })
}

/// `null` (or absent, with `#[serde(default)]`) as the type's default.
pub(crate) fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An `int32`/`uint32` field (or its wrapper), as Go's protojson reads it: a JSON number
/// or a string of digits (`"5"`); `null` is 0. Kept as `i64`, so that a negative or
/// too large value is the translation's to report (one rule at a time), not a parse
/// error that costs the whole object.
pub(crate) fn int<'de, D>(d: D) -> Result<i64, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(opt_int(d)?.unwrap_or_default())
}

/// [`int`] for a field whose absence means something (a `UInt32Value` wrapper):
/// `null` is `None`, as absent.
pub(crate) fn opt_int<'de, D>(d: D) -> Result<Option<i64>, D::Error>
where
    D: Deserializer<'de>,
{
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an integer (a number or a string of digits)")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            i64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom(format!("{v} is out of range")))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            v.trim()
                .parse::<i64>()
                .map(Some)
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(v), &self))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(V)
        }
    }
    d.deserialize_any(V)
}

/// A label map (`sourceLabels`, subset `labels`, `workloadSelector.matchLabels`).
pub type Labels = BTreeMap<String, String>;

/// `PortSelector`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PortSelector {
    #[serde(deserialize_with = "nullable")]
    pub number: u32,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    struct Ints {
        #[serde(default, deserialize_with = "int")]
        a: i64,
        #[serde(default, deserialize_with = "opt_int")]
        b: Option<i64>,
    }

    #[test]
    fn ints_are_numbers_or_strings() {
        let p = |v: Value| serde_json::from_value::<Ints>(v).map(|i| (i.a, i.b));
        assert_eq!(p(json!({})).unwrap(), (0, None));
        assert_eq!(p(json!({"a": null, "b": null})).unwrap(), (0, None));
        assert_eq!(p(json!({"a": 3, "b": "7"})).unwrap(), (3, Some(7)));
        assert_eq!(p(json!({"a": "-2", "b": 0})).unwrap(), (-2, Some(0)));
        let e = p(json!({"a": "three"})).unwrap_err().to_string();
        assert!(e.contains("an integer"), "{e}");
        assert!(p(json!({"a": 1.5})).is_err());
        assert!(p(json!({"b": true})).is_err());
    }

    #[test]
    fn meta_defaults_and_errors() {
        let m = parse_meta("VirtualService", &json!({"metadata": {"name": "a"}})).unwrap();
        assert_eq!(m.namespace, "default");
        assert_eq!(m.created, None);
        let e = parse_meta("VirtualService", &json!({"metadata": {}})).unwrap_err();
        assert_eq!(e.field, "metadata.name");
        let e = parse_meta(
            "VirtualService",
            &json!({"metadata": {"name": "a", "namespace": "x", "creationTimestamp": "yesterday"}}),
        )
        .unwrap_err();
        assert_eq!(e.field, "metadata.creationTimestamp");
        assert!(e.to_string().starts_with("VirtualService x/a: "), "{e}");
    }
}
