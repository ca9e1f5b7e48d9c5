//! `istio.v1.auth.IstioCertificateService/CreateCertificate` by hand (tonic's generic
//! server, the prost codec, no codegen), as [`crate::serve::grpc`] serves the config
//! stream. Served on the TLS port only.
//!
//! One call: the bearer token of `authorization` is authenticated ([`Authenticator`]), the
//! caller's identity is `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`,
//! and the CSR is signed for that identity and no other ([`Authority::sign`]). Status
//! codes, each with a message that says what was wrong:
//! - `UNAUTHENTICATED`: no token, or the TokenReview did not accept it;
//! - `INVALID_ARGUMENT`: a CSR that does not parse or verify, a TTL above the maximum;
//! - `PERMISSION_DENIED`: a CSR for another identity (or with more SANs than it);
//! - `INTERNAL`: signing failed on our side.
//!
//! Issued and refused requests are counted (`mesh_control_ca_certificates_issued_total`,
//! `mesh_control_ca_requests_refused_total{reason}`); refusals are logged with the caller
//! (or the peer address when the caller is unknown) and the reason.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context as TaskContext, Poll};
use std::time::SystemTime;

use mesh_common::identity::spiffe_id;
use mesh_config::ca::{
    AUTHORIZATION, CREATE_CERTIFICATE_PATH, IstioCertificateRequest, IstioCertificateResponse,
    SERVICE_NAME,
};
use tonic::body::Body;
use tonic::server::{Grpc, NamedService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::ca::authority::{Authority, SignError, TtlPolicy};
use crate::ca::tokens::{AuthError, Authenticator};
use crate::serve::metrics::{CaRefusal, Metrics};

/// What every call shares.
pub struct CaContext {
    pub authority: Arc<Authority>,
    pub authenticator: Arc<dyn Authenticator>,
    pub trust_domain: String,
    pub ttl: TtlPolicy,
    pub metrics: Arc<Metrics>,
}

/// The service; cheap to clone (one per connection).
#[derive(Clone)]
pub struct CaService {
    ctx: Arc<CaContext>,
}

impl CaService {
    pub fn new(ctx: Arc<CaContext>) -> CaService {
        CaService { ctx }
    }
}

impl NamedService for CaService {
    const NAME: &'static str = SERVICE_NAME;
}

/// The bearer token of `authorization` metadata (`Bearer <token>`, the scheme in any
/// case, as Istio reads it).
pub fn bearer_token<T>(req: &Request<T>) -> Result<&str, AuthError> {
    let v = req
        .metadata()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(AuthError::NoToken)?;
    let (scheme, token) = v.trim().split_once(' ').ok_or(AuthError::NoToken)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::NoToken);
    }
    Ok(token)
}

fn refusal(e: &SignError) -> (CaRefusal, Status) {
    let msg = e.to_string();
    match e {
        SignError::BadCsr(_) => (CaRefusal::BadCsr, Status::invalid_argument(msg)),
        SignError::Ttl { .. } => (CaRefusal::Ttl, Status::invalid_argument(msg)),
        SignError::Identity { .. } => (CaRefusal::Identity, Status::permission_denied(msg)),
        SignError::Internal(_) => (CaRefusal::Internal, Status::internal(msg)),
    }
}

/// One `CreateCertificate`.
async fn create(
    ctx: Arc<CaContext>,
    req: Request<IstioCertificateRequest>,
) -> Result<Response<IstioCertificateResponse>, Status> {
    let peer = req
        .extensions()
        .get::<crate::ca::tls::PeerInfo>()
        .and_then(|p| p.remote_addr)
        .or_else(|| req.remote_addr())
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    let refuse = |why: CaRefusal, caller: &str, status: Status| {
        ctx.metrics.ca_refused(why);
        tracing::warn!(
            %caller,
            %peer,
            reason = why.label(),
            error = status.message(),
            "certificate request refused"
        );
        Err(status)
    };
    let caller = match bearer_token(&req) {
        Ok(token) => ctx.authenticator.authenticate(token).await,
        Err(e) => Err(e),
    };
    let caller = match caller {
        Ok(c) => c,
        Err(e) => {
            return refuse(
                CaRefusal::Unauthenticated,
                "unknown",
                Status::unauthenticated(e.to_string()),
            );
        }
    };
    let who = format!("{}/{}", caller.namespace, caller.service_account);
    let identity = spiffe_id(
        &ctx.trust_domain,
        &caller.namespace,
        &caller.service_account,
    );
    let body = req.into_inner();
    let ttl = match ctx.ttl.pick(body.validity_duration) {
        Ok(t) => t,
        Err(e) => {
            let (why, status) = refusal(&e);
            return refuse(why, &who, status);
        }
    };
    let authority = ctx.authority.clone();
    let id = identity.clone();
    // Signing is CPU work (an RSA CA key takes milliseconds): off the async workers.
    let signed =
        tokio::task::spawn_blocking(move || authority.sign(&body.csr, &id, ttl, SystemTime::now()))
            .await
            .unwrap_or_else(|e| Err(SignError::Internal(format!("signing task: {e}"))));
    match signed {
        Ok(cert_chain) => {
            ctx.metrics.ca_issued.fetch_add(1, Ordering::Relaxed);
            tracing::info!(caller = %who, %identity, ttl_secs = ttl.as_secs(), "issued a workload certificate");
            Ok(Response::new(IstioCertificateResponse { cert_chain }))
        }
        Err(e) => {
            let (why, status) = refusal(&e);
            refuse(why, &who, status)
        }
    }
}

type MethodFuture =
    Pin<Box<dyn Future<Output = Result<Response<IstioCertificateResponse>, Status>> + Send>>;

/// The `CreateCertificate` method, as tonic's generic server calls it.
struct CreateMethod(Arc<CaContext>);

impl tower::Service<Request<IstioCertificateRequest>> for CreateMethod {
    type Response = Response<IstioCertificateResponse>;
    type Error = Status;
    type Future = MethodFuture;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<IstioCertificateRequest>) -> Self::Future {
        Box::pin(create(self.0.clone(), req))
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

impl<B> tower::Service<http::Request<B>> for CaService
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() == CREATE_CERTIFICATE_PATH {
            let method = CreateMethod(self.ctx.clone());
            return Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::<
                    IstioCertificateResponse,
                    IstioCertificateRequest,
                >::default());
                Ok(grpc.unary(method, req).await)
            });
        }
        Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn bearer_tokens() {
        let with = |v: &str| {
            let mut r = Request::new(());
            r.metadata_mut().insert(AUTHORIZATION, v.parse().unwrap());
            r
        };
        assert_eq!(bearer_token(&with("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer_token(&with("bearer  abc ")).unwrap(), "abc");
        for bad in ["abc", "Basic abc", "Bearer ", "Bearer"] {
            assert!(
                matches!(bearer_token(&with(bad)), Err(AuthError::NoToken)),
                "{bad}"
            );
        }
        assert!(matches!(
            bearer_token(&Request::new(())),
            Err(AuthError::NoToken)
        ));
    }
}
