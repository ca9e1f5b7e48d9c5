//! The request body as it goes upstream: the downstream body, streamed frame by frame,
//! with its data bytes counted.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};

/// A downstream request body on its way upstream (or nothing).
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<Incoming>,
    bytes: Arc<AtomicU64>,
}

impl RequestBody {
    pub fn new(inner: Incoming, bytes: Arc<AtomicU64>) -> RequestBody {
        RequestBody {
            inner: Some(inner),
            bytes,
        }
    }

    /// No body (a request the proxy makes up, such as an upgrade's).
    pub fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            bytes: Arc::default(),
        }
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
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(d) = frame.data_ref()
        {
            this.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(b) => b.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}
