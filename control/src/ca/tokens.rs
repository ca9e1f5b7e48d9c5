//! Who is calling the CA: a TokenReview of the bearer token (audience `istio-ca`).

use std::future::Future;
use std::pin::Pin;

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
