//! The request body as it goes upstream: the downstream body, streamed frame by frame
//! with its data bytes counted, or a body held whole so that a retry can send it again.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use hyper::HeaderMap;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};

/// Bodies up to this size, announced by `content-length`, are read whole before the
/// request goes upstream so that it can be retried after it was sent.
pub(crate) const REPLAY_LIMIT: u64 = 64 << 10;

#[derive(Debug)]
enum Inner {
    Stream(Incoming),
    Full {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    Empty,
}

/// A downstream request body on its way upstream (or nothing).
#[derive(Debug)]
pub struct RequestBody {
    inner: Inner,
    bytes: Arc<AtomicU64>,
}

/// A request body read whole: what each try of a retried request sends.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeldBody {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl HeldBody {
    pub(crate) fn body(&self) -> RequestBody {
        RequestBody {
            inner: Inner::Full {
                data: (!self.data.is_empty()).then(|| self.data.clone()),
                trailers: self.trailers.clone(),
            },
            bytes: Arc::default(),
        }
    }
}

impl RequestBody {
    pub fn new(inner: Incoming, bytes: Arc<AtomicU64>) -> RequestBody {
        RequestBody {
            inner: Inner::Stream(inner),
            bytes,
        }
    }

    /// No body (a request the proxy makes up, such as an upgrade's).
    pub fn empty() -> RequestBody {
        RequestBody {
            inner: Inner::Empty,
            bytes: Arc::default(),
        }
    }

    /// Reads the body whole when it is short enough to hold ([`REPLAY_LIMIT`], or
    /// none at all), counting its bytes once; `Ok(None)`: too long or of unknown
    /// length, left to stream (this body is unchanged). `Err`: the client broke off.
    pub(crate) async fn hold(&mut self) -> Result<Option<HeldBody>, hyper::Error> {
        let Inner::Stream(b) = &mut self.inner else {
            return Ok(match &self.inner {
                Inner::Empty => Some(HeldBody::default()),
                _ => None,
            });
        };
        if !b.is_end_stream() && b.size_hint().exact().is_none_or(|n| n > REPLAY_LIMIT) {
            return Ok(None);
        }
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut *b).poll_frame(cx)).await {
            let frame = frame?;
            match frame.into_data() {
                Ok(d) => {
                    self.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
                    data.extend_from_slice(&d);
                }
                Err(f) => {
                    if let Ok(t) = f.into_trailers() {
                        trailers = Some(t);
                    }
                }
            }
        }
        let held = HeldBody {
            data: Bytes::from(data),
            trailers,
        };
        *self = held.body();
        Ok(Some(held))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        match &mut this.inner {
            Inner::Empty => Poll::Ready(None),
            Inner::Full { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            Inner::Stream(inner) => {
                let polled = Pin::new(inner).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled
                    && let Some(d) = frame.data_ref()
                {
                    this.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Empty => true,
            Inner::Full { data, trailers } => data.is_none() && trailers.is_none(),
            Inner::Stream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Inner::Stream(b) => b.size_hint(),
        }
    }
}
