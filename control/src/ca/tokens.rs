//! Who is calling the CA: a TokenReview of the bearer token (audience `istio-ca`).
//!
//! [`KubeTokenReviewer`] asks the API server (`authentication.k8s.io/v1` TokenReview,
//! `spec.audiences: [istio-ca]`) whether the caller's projected ServiceAccount token is
//! valid; the API server checks the signature, the expiry, the audience and, for bound
//! tokens, that the ServiceAccount (and the pod it is bound to) still exists. What it says
//! is judged by [`verdict`], a pure function: accepted only when `authenticated` is true,
//! the audiences it returns (if any) include `istio-ca`, and the user is
//! `system:serviceaccount:<ns>:<sa>` ([`parse_service_account`]).
//!
//! - **No caching here.** Every call is one TokenReview: a proxy asks for a certificate at
//!   start and then once per rotation, so the load is small, and a revoked token (its
//!   ServiceAccount or pod deleted) is refused as soon as the API server refuses it. The
//!   API server itself caches a successful review for about 10 s (kube-apiserver's token
//!   cache), so a token of a ServiceAccount deleted a moment ago may pass for those seconds.
//! - **Bounded.** Each review times out ([`REVIEW_TIMEOUT`], 5 s by default) with
//!   [`AuthError::Api`], so a slow or unreachable API server fails the caller's request
//!   (it retries) instead of hanging a proxy's start.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::{Api, Client};
use mesh_common::identity::TOKEN_AUDIENCE;

/// The ServiceAccount a token was issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub namespace: String,
    pub service_account: String,
}

/// Why a caller is not authenticated. Each names what was wrong, for the log and the
/// gRPC status (the caller sees the message).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token in the request's authorization metadata")]
    NoToken,
    #[error("token not authenticated: {0}")]
    Unauthenticated(String),
    #[error("token is not for audience {want:?} (it is for {got:?})")]
    WrongAudience { want: String, got: Vec<String> },
    #[error("token belongs to {0:?}, not to a ServiceAccount")]
    NotAServiceAccount(String),
    #[error("TokenReview failed: {0}")]
    Api(String),
}

/// The future an [`Authenticator`] returns.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<Caller, AuthError>> + Send + 'a>>;

/// Authenticates a bearer token (the seam tests plug a fake into).
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a>;
}

/// How long one TokenReview may take before the caller is refused with
/// [`AuthError::Api`].
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// The username prefix of a ServiceAccount (`system:serviceaccount:<ns>:<sa>`).
const SA_PREFIX: &str = "system:serviceaccount:";

/// The real [`Authenticator`]: a TokenReview per call (no cache), audience `istio-ca`.
/// mesh-control needs `create` on `tokenreviews.authentication.k8s.io`.
#[derive(Clone)]
pub struct KubeTokenReviewer {
    api: Api<TokenReview>,
    timeout: Duration,
}

impl std::fmt::Debug for KubeTokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeTokenReviewer")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl KubeTokenReviewer {
    pub fn new(client: Client) -> Self {
        KubeTokenReviewer {
            api: Api::all(client),
            timeout: REVIEW_TIMEOUT,
        }
    }

    /// The same reviewer with another time-out per review.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn review(&self, token: &str) -> Result<Caller, AuthError> {
        if token.is_empty() {
            return Err(AuthError::NoToken);
        }
        let review = TokenReview {
            metadata: Default::default(),
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![TOKEN_AUDIENCE.to_owned()]),
            },
            status: None,
        };
        let answer = tokio::time::timeout(
            self.timeout,
            self.api.create(&PostParams::default(), &review),
        )
        .await
        .map_err(|_| {
            AuthError::Api(format!(
                "the API server did not answer within {:?}",
                self.timeout
            ))
        })?
        .map_err(|e| AuthError::Api(kube_error_text(&e)))?;
        verdict(answer.status.as_ref())
    }
}

impl Authenticator for KubeTokenReviewer {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        Box::pin(self.review(token))
    }
}

/// A kube error, said shortly: the API server's own message for an API error (e.g. RBAC's
/// "tokenreviews.authentication.k8s.io is forbidden: ..."), else the client's.
pub(crate) fn kube_error_text(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} (HTTP {} {})", s.message, s.code, s.reason),
        e => e.to_string(),
    }
}

/// What a TokenReview's status means for the CA (pure): the caller, or why not.
///
/// - `authenticated` must be `true`; otherwise the API server's `error` text (e.g.
///   "token audiences [\"other\"] is invalid for the target audiences [\"istio-ca\"]",
///   "Token has expired.", "serviceaccounts \"x\" not found") is the reason;
/// - `audiences`, when the server returns any, must include `istio-ca` (an
///   audience-unaware server returns none; the request asked for `istio-ca` anyway);
/// - the user must be a ServiceAccount, `system:serviceaccount:<ns>:<sa>`.
pub fn verdict(status: Option<&TokenReviewStatus>) -> Result<Caller, AuthError> {
    let Some(status) = status else {
        return Err(AuthError::Api(
            "the TokenReview answer has no status".into(),
        ));
    };
    if status.authenticated != Some(true) {
        let why = status
            .error
            .as_deref()
            .filter(|e| !e.is_empty())
            .unwrap_or("the API server did not authenticate it");
        return Err(AuthError::Unauthenticated(why.to_owned()));
    }
    if let Some(got) = status.audiences.as_deref()
        && !got.is_empty()
        && !got.iter().any(|a| a == TOKEN_AUDIENCE)
    {
        return Err(AuthError::WrongAudience {
            want: TOKEN_AUDIENCE.to_owned(),
            got: got.to_vec(),
        });
    }
    let username = status
        .user
        .as_ref()
        .and_then(|u| u.username.as_deref())
        .unwrap_or_default();
    parse_service_account(username).ok_or_else(|| AuthError::NotAServiceAccount(username.into()))
}

/// `system:serviceaccount:<ns>:<sa>` → the ServiceAccount (pure); `None` for any other
/// user. Both names must look like Kubernetes names (lowercase letters, digits, `-`, and
/// `.` in the ServiceAccount's), so the SPIFFE id made of them has no `/` or `:`.
pub fn parse_service_account(username: &str) -> Option<Caller> {
    let rest = username.strip_prefix(SA_PREFIX)?;
    let (namespace, service_account) = rest.split_once(':')?;
    let name_ok = |s: &str, dots: bool, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.')
            })
            && !s.starts_with(['-', '.'])
            && !s.ends_with(['-', '.'])
    };
    (name_ok(namespace, false, 63) && name_ok(service_account, true, 253)).then(|| Caller {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    fn status(
        authenticated: Option<bool>,
        username: Option<&str>,
        audiences: Option<&[&str]>,
        error: Option<&str>,
    ) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated,
            audiences: audiences.map(|a| a.iter().map(|s| s.to_string()).collect()),
            error: error.map(str::to_owned),
            user: username.map(|u| UserInfo {
                username: Some(u.to_owned()),
                ..Default::default()
            }),
        }
    }

    fn caller(ns: &str, sa: &str) -> Caller {
        Caller {
            namespace: ns.into(),
            service_account: sa.into(),
        }
    }

    #[test]
    fn service_account_usernames_parse() {
        assert_eq!(
            parse_service_account("system:serviceaccount:shop:cart"),
            Some(caller("shop", "cart"))
        );
        assert_eq!(
            parse_service_account("system:serviceaccount:a-1:build.bot-2"),
            Some(caller("a-1", "build.bot-2"))
        );
    }

    #[test]
    fn other_usernames_are_not_service_accounts() {
        for u in [
            "",
            "admin",
            "system:admin",
            "system:serviceaccount:",
            "system:serviceaccount:shop",
            "system:serviceaccount:shop:",
            "system:serviceaccount::cart",
            "system:serviceaccount:shop:cart:extra",
            "system:serviceaccounts:shop",
            "system:node:worker-1",
            "system:serviceaccount:Shop:cart",
            "system:serviceaccount:shop:cart/x",
            "system:serviceaccount:sh.op:cart",
            "system:serviceaccount:-shop:cart",
            "system:serviceaccount:shop:cart.",
            "SYSTEM:SERVICEACCOUNT:shop:cart",
            " system:serviceaccount:shop:cart",
        ] {
            assert_eq!(parse_service_account(u), None, "{u:?}");
        }
        let long = format!("system:serviceaccount:{}:cart", "a".repeat(64));
        assert_eq!(parse_service_account(&long), None);
    }

    #[test]
    fn an_authenticated_service_account_for_istio_ca_is_the_caller() {
        let s = status(
            Some(true),
            Some("system:serviceaccount:shop:cart"),
            Some(&["istio-ca"]),
            None,
        );
        assert_eq!(verdict(Some(&s)).unwrap(), caller("shop", "cart"));
        // Among other audiences.
        let s = status(
            Some(true),
            Some("system:serviceaccount:shop:cart"),
            Some(&["api", "istio-ca"]),
            None,
        );
        assert_eq!(verdict(Some(&s)).unwrap(), caller("shop", "cart"));
    }

    #[test]
    fn no_audiences_in_the_answer_is_accepted() {
        for aud in [None, Some(&[][..])] {
            let s = status(
                Some(true),
                Some("system:serviceaccount:shop:cart"),
                aud,
                None,
            );
            assert_eq!(
                verdict(Some(&s)).unwrap(),
                caller("shop", "cart"),
                "{aud:?}"
            );
        }
    }

    #[test]
    fn not_authenticated_carries_the_api_servers_reason() {
        let s = status(Some(false), None, None, Some("Token has expired."));
        match verdict(Some(&s)) {
            Err(AuthError::Unauthenticated(m)) => assert_eq!(m, "Token has expired."),
            other => panic!("{other:?}"),
        }
        // No `authenticated` at all, and no error text: still refused, saying so.
        let s = status(
            None,
            Some("system:serviceaccount:shop:cart"),
            None,
            Some(""),
        );
        match verdict(Some(&s)) {
            Err(AuthError::Unauthenticated(m)) => {
                assert_eq!(m, "the API server did not authenticate it")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn another_audience_is_refused() {
        let s = status(
            Some(true),
            Some("system:serviceaccount:shop:cart"),
            Some(&["https://kubernetes.default.svc.cluster.local"]),
            None,
        );
        let e = verdict(Some(&s)).unwrap_err();
        assert!(
            matches!(&e, AuthError::WrongAudience { want, got }
                if want == "istio-ca" && got == &["https://kubernetes.default.svc.cluster.local"]),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "token is not for audience \"istio-ca\" (it is for [\"https://kubernetes.default.svc.cluster.local\"])"
        );
    }

    #[test]
    fn a_user_that_is_not_a_service_account_is_refused() {
        let s = status(Some(true), Some("admin"), Some(&["istio-ca"]), None);
        let e = verdict(Some(&s)).unwrap_err();
        assert!(
            matches!(&e, AuthError::NotAServiceAccount(u) if u == "admin"),
            "{e:?}"
        );
        let s = status(Some(true), None, Some(&["istio-ca"]), None);
        assert!(matches!(
            verdict(Some(&s)),
            Err(AuthError::NotAServiceAccount(u)) if u.is_empty()
        ));
    }

    #[test]
    fn an_answer_without_status_is_an_api_failure() {
        assert!(matches!(verdict(None), Err(AuthError::Api(_))));
    }
}
