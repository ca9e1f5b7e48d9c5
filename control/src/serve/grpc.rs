//! `mesh.config.v1.ConfigService` by hand (no codegen, no protoc): a tower service that
//! routes [`STREAM_PATH`] to tonic's generic server with the prost codec, and answers
//! every other path `UNIMPLEMENTED`, as generated services do. [`TlsServices`] puts it
//! and the CA ([`crate::ca::grpc::CaService`]) on one server, routed by path (the TLS
//! port); the plaintext port serves [`ConfigService`] alone.
//!
//! The stream's codec ([`StreamCodec`]) starts with 1 KiB buffers instead of tonic's
//! 8 KiB (one to decode, one to encode, per stream): a proxy sends only small requests
//! (subscriptions, ACKs), and each stream's buffers live as long as it does. A buffer
//! still grows to the message it holds.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use mesh_config::wire::{SERVICE_NAME, STREAM_PATH, StreamRequest, StreamResponse};
use tonic::body::Body;
use tonic::codec::{BufferSettings, Codec};
use tonic::server::{Grpc, NamedService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::{ProstDecoder, ProstEncoder};

use crate::ca::grpc::CaService;
use crate::ca::tls::PeerInfo;
use crate::serve::stream::{self, Context, Outbound};

/// The service; cheap to clone (one per connection).
#[derive(Clone)]
pub struct ConfigService {
    ctx: Arc<Context>,
}

impl ConfigService {
    pub fn new(ctx: Arc<Context>) -> ConfigService {
        ConfigService { ctx }
    }
}

impl NamedService for ConfigService {
    const NAME: &'static str = SERVICE_NAME;
}

/// Initial size of the decode buffer (per stream): a request is a few hundred bytes.
const DECODE_BUFFER: usize = 1024;
/// Initial size of the encode buffer (per stream); a response grows it as it needs.
const ENCODE_BUFFER: usize = 1024;
/// How many encoded bytes tonic gathers before it hands them to h2 (its default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// The prost codec of the config stream, with small initial buffers.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamCodec;

impl Codec for StreamCodec {
    type Encode = StreamResponse;
    type Decode = StreamRequest;
    type Encoder = ProstEncoder<StreamResponse>;
    type Decoder = ProstDecoder<StreamRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(DECODE_BUFFER, YIELD_THRESHOLD))
    }
}

/// The `Stream` method, as tonic's generic server calls it.
struct StreamMethod(Arc<Context>);

impl tower::Service<Request<Streaming<StreamRequest>>> for StreamMethod {
    type Response = Response<Outbound>;
    type Error = Status;
    type Future = std::future::Ready<Result<Response<Outbound>, Status>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Streaming<StreamRequest>>) -> Self::Future {
        // The TLS port's connections carry the verified client identity; the plaintext
        // port's none.
        let identity = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.identity.clone());
        std::future::ready(Ok(Response::new(stream::open(
            self.0.clone(),
            req.into_inner(),
            identity,
        ))))
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

impl<B> tower::Service<http::Request<B>> for ConfigService
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
        if req.uri().path() == STREAM_PATH {
            let method = StreamMethod(self.ctx.clone());
            return Box::pin(async move {
                let mut grpc = Grpc::new(StreamCodec);
                Ok(grpc.streaming(method, req).await)
            });
        }
        Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) })
    }
}

/// The TLS port's server: the CA's paths (`/istio.v1.auth.IstioCertificateService/...`)
/// to the CA, everything else to the config service.
#[derive(Clone)]
pub struct TlsServices {
    pub config: ConfigService,
    pub ca: CaService,
}

impl<B> tower::Service<http::Request<B>> for TlsServices
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
        let ca = req
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(<CaService as NamedService>::NAME))
            .is_some_and(|rest| rest.starts_with('/'));
        if ca {
            self.ca.call(req)
        } else {
            self.config.call(req)
        }
    }
}
