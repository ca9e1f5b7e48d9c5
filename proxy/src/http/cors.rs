//! A route's `corsPolicy`, as Envoy's CORS filter applies it (and Istio configures it):
//! before faults, on the proxy that routes the request.
//!
//! - No `Origin` (or an empty one): not a CORS request, nothing happens.
//! - A preflight (`OPTIONS` with a non-empty `Access-Control-Request-Method`) from an
//!   allowed origin is answered here: 200, `Access-Control-Allow-Origin: <that origin>`,
//!   `-Allow-Credentials: true` when allowed, `-Allow-Methods`, `-Allow-Headers` (a
//!   `*` list: what the preflight asked for), `-Max-Age` when the policy has them. From
//!   an origin not allowed it goes upstream like any request, or, with
//!   `unmatchedPreflights: IGNORE`, is answered 200 the same way but without
//!   `-Allow-Origin`. A matcher that takes the literal `*` allows every origin.
//! - Any other request from an allowed origin is routed as usual, and its response
//!   (upstream's, or the proxy's own: a fault, a 503) gets
//!   `Access-Control-Allow-Origin`, `-Allow-Credentials`, `-Expose-Headers`.

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request};
use mesh_config::CorsPolicy;

use super::compile::Matcher;

/// A compiled `corsPolicy`: origin matchers and the header values it sends.
#[derive(Debug)]
pub(crate) struct CompiledCors {
    origins: Vec<Matcher>,
    /// A matcher takes the literal `*` (`exact: "*"`, `regex: ".*"`): as Envoy, every
    /// origin is allowed.
    any_origin: bool,
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    allow_credentials: bool,
    answer_unmatched_preflights: bool,
}

/// What the policy does with one request.
#[derive(Debug)]
pub(crate) enum Cors {
    /// Not a CORS request, or its origin is not allowed: routed as usual, the response
    /// left alone.
    Pass,
    /// A preflight the proxy answers itself, 200, with these headers.
    Answer(HeaderMap),
    /// Routed as usual; its response gets the CORS headers for this origin.
    Decorate(HeaderValue),
}

impl CompiledCors {
    pub(crate) fn compile(p: &CorsPolicy) -> Result<CompiledCors, String> {
        let origins = p
            .allow_origins
            .iter()
            .map(|m| Matcher::compile(m, false).map_err(|e| format!("cors allowOrigins: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        // The lists go out as Istio writes them into Envoy's policy: joined by commas.
        let list = |field: &str, v: &[String]| -> Result<Option<HeaderValue>, String> {
            if v.is_empty() {
                return Ok(None);
            }
            HeaderValue::from_str(&v.join(","))
                .map(Some)
                .map_err(|_| format!("cors {field} {v:?} is not a header value"))
        };
        Ok(CompiledCors {
            any_origin: origins.iter().any(|m| m.matches("*", false)),
            origins,
            allow_methods: list("allowMethods", &p.allow_methods)?,
            allow_headers: list("allowHeaders", &p.allow_headers)?,
            expose_headers: list("exposeHeaders", &p.expose_headers)?,
            max_age: p.max_age_s.map(HeaderValue::from),
            allow_credentials: p.allow_credentials,
            answer_unmatched_preflights: p.answer_unmatched_preflights,
        })
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        origin
            .to_str()
            .is_ok_and(|o| self.any_origin || self.origins.iter().any(|m| m.matches(o, false)))
    }

    /// What this request gets (see the module's documentation).
    pub(crate) fn check<B>(&self, req: &Request<B>) -> Cors {
        self.check_parts(req.method().as_str(), req.headers())
    }

    /// [`CompiledCors::check`] on a request's method and headers.
    pub(crate) fn check_parts(&self, method: &str, h: &HeaderMap) -> Cors {
        let Some(origin) = h.get(header::ORIGIN).filter(|o| !o.is_empty()) else {
            return Cors::Pass;
        };
        let preflight = method == Method::OPTIONS.as_str()
            && h.get(header::ACCESS_CONTROL_REQUEST_METHOD)
                .is_some_and(|m| !m.is_empty());
        let allowed = self.allows(origin);
        match (preflight, allowed) {
            (true, true) => Cors::Answer(self.preflight_answer(h, Some(origin))),
            (true, false) if self.answer_unmatched_preflights => {
                Cors::Answer(self.preflight_answer(h, None))
            }
            (_, true) => Cors::Decorate(origin.clone()),
            (_, false) => Cors::Pass,
        }
    }

    /// The headers of a preflight's answer: the origin when it is allowed, and the
    /// policy's credentials, methods, headers and max age in any case (Envoy answers an
    /// origin not allowed so, under `unmatchedPreflights: IGNORE`). A `*` list answers
    /// with what the preflight asked for.
    fn preflight_answer(&self, req: &HeaderMap, origin: Option<&HeaderValue>) -> HeaderMap {
        let mut out = HeaderMap::new();
        if let Some(o) = origin {
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
        }
        if self.allow_credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        for (name, v, asked) in [
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                &self.allow_methods,
                header::ACCESS_CONTROL_REQUEST_METHOD,
            ),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                &self.allow_headers,
                header::ACCESS_CONTROL_REQUEST_HEADERS,
            ),
        ] {
            match v {
                Some(v) if v == "*" => {
                    if let Some(a) = req.get(&asked) {
                        out.insert(name, a.clone());
                    }
                }
                Some(v) => {
                    out.insert(name, v.clone());
                }
                None => {}
            }
        }
        if let Some(v) = &self.max_age {
            out.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
        }
        out
    }

    /// For `/debug/route`: what the policy does with a request with this method and
    /// these headers; `None` when the request has no `Origin` (not a CORS request).
    pub(crate) fn verdict(&self, method: &str, h: &HeaderMap) -> Option<&'static str> {
        match self.check_parts(method, h) {
            Cors::Pass if h.get(header::ORIGIN).is_some_and(|o| !o.is_empty()) => {
                Some("origin_not_allowed")
            }
            Cors::Pass => None,
            Cors::Answer(a) if a.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) => {
                Some("preflight_answered")
            }
            Cors::Answer(_) => Some("preflight_answered_origin_not_allowed"),
            Cors::Decorate(_) => Some("origin_allowed"),
        }
    }

    /// Adds the response headers for an allowed `origin` ([`Cors::Decorate`]).
    pub(crate) fn decorate(&self, origin: HeaderValue, h: &mut HeaderMap) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if self.allow_credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(v) = &self.expose_headers {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use mesh_config::StringMatch;

    use super::*;

    fn policy() -> CompiledCors {
        CompiledCors::compile(&CorsPolicy {
            allow_origins: vec![
                StringMatch::Exact("https://example.com".into()),
                StringMatch::Regex(r"https://.*\.example\.org".into()),
            ],
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["x-custom".into(), "content-type".into()],
            expose_headers: vec!["x-trace".into()],
            max_age_s: Some(86400),
            allow_credentials: true,
            answer_unmatched_preflights: false,
        })
        .unwrap()
    }

    fn req(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/api");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn preflight_from_an_allowed_origin_is_answered() {
        let r = req(
            Method::OPTIONS,
            &[
                ("origin", "https://a.example.org"),
                ("access-control-request-method", "POST"),
            ],
        );
        let Cors::Answer(h) = policy().check(&r) else {
            panic!("not answered");
        };
        assert_eq!(h["access-control-allow-origin"], "https://a.example.org");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-allow-methods"], "GET,POST");
        assert_eq!(h["access-control-allow-headers"], "x-custom,content-type");
        assert_eq!(h["access-control-max-age"], "86400");
        assert!(h.get("access-control-expose-headers").is_none());
    }

    #[test]
    fn other_requests_and_origins() {
        let p = policy();
        // An allowed origin, not a preflight: decorated.
        let r = req(Method::GET, &[("origin", "https://example.com")]);
        let Cors::Decorate(o) = p.check(&r) else {
            panic!("not decorated");
        };
        let mut h = HeaderMap::new();
        p.decorate(o, &mut h);
        assert_eq!(h["access-control-allow-origin"], "https://example.com");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-expose-headers"], "x-trace");
        assert!(h.get("access-control-allow-methods").is_none());
        // OPTIONS without Access-Control-Request-Method is no preflight.
        let r = req(Method::OPTIONS, &[("origin", "https://example.com")]);
        assert!(matches!(p.check(&r), Cors::Decorate(_)));
        // Exact is case-sensitive, the regex must match the whole origin.
        for o in [
            "https://EXAMPLE.com",
            "https://example.com.evil",
            "https://a.example.org.evil",
        ] {
            let r = req(Method::GET, &[("origin", o)]);
            assert!(matches!(p.check(&r), Cors::Pass), "{o}");
            let r = req(
                Method::OPTIONS,
                &[("origin", o), ("access-control-request-method", "GET")],
            );
            assert!(matches!(p.check(&r), Cors::Pass), "{o}: forwarded");
        }
        assert!(matches!(p.check(&req(Method::GET, &[])), Cors::Pass));
        assert!(matches!(
            p.check(&req(Method::GET, &[("origin", "")])),
            Cors::Pass
        ));
    }

    #[test]
    fn unmatched_preflights_can_be_answered() {
        let mut c = CorsPolicy {
            allow_origins: vec![StringMatch::Prefix("https://".into())],
            answer_unmatched_preflights: true,
            ..Default::default()
        };
        let p = CompiledCors::compile(&c).unwrap();
        let r = req(
            Method::OPTIONS,
            &[
                ("origin", "http://plain.example"),
                ("access-control-request-method", "GET"),
            ],
        );
        let Cors::Answer(h) = p.check(&r) else {
            panic!("not answered");
        };
        assert!(h.is_empty(), "no CORS headers for an origin not allowed");
        // Envoy still sends the policy's lists, never the origin; `*` echoes the ask.
        c.allow_methods = vec!["*".into()];
        c.allow_headers = vec!["*".into()];
        c.allow_credentials = true;
        let p = CompiledCors::compile(&c).unwrap();
        let r = req(
            Method::OPTIONS,
            &[
                ("origin", "http://plain.example"),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "x-a, x-b"),
            ],
        );
        let Cors::Answer(h) = p.check(&r) else {
            panic!("not answered");
        };
        assert!(h.get("access-control-allow-origin").is_none());
        assert_eq!(h["access-control-allow-methods"], "PUT");
        assert_eq!(h["access-control-allow-headers"], "x-a, x-b");
        assert_eq!(h["access-control-allow-credentials"], "true");
        // A matcher that takes `*` itself allows any origin.
        let any = CompiledCors::compile(&CorsPolicy {
            allow_origins: vec![StringMatch::Exact("*".into())],
            ..Default::default()
        })
        .unwrap();
        let r = req(Method::GET, &[("origin", "https://anyone.example")]);
        assert!(matches!(any.check(&r), Cors::Decorate(_)));
        c.allow_origins.clear();
        let p = CompiledCors::compile(&c).unwrap();
        let r = req(Method::GET, &[("origin", "https://x")]);
        assert!(
            matches!(p.check(&r), Cors::Pass),
            "no origins: none allowed"
        );
    }
}
