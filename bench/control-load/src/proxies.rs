//! The simulated proxies: one gRPC stream each (its own TCP connection, as real proxies),
//! first request with the node and the keys, every response ACKed at once and
//! timestamped. A [`Probe`] armed by the driver says which keys and which content a
//! change must bring; each proxy's first matching response is its arrival.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use http::uri::PathAndQuery;
use mesh_config::Resource;
use mesh_config::wire::{Node, STREAM_PATH, StreamRequest, StreamResponse};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;

/// One proxy's identity and keys.
#[derive(Debug, Clone)]
pub struct Spec {
    pub pod: String,
    pub namespace: String,
    pub ip: String,
    pub keys: Vec<String>,
}

/// What one change must bring: any of `keys` with `marker` in its body.
struct Armed {
    keys: HashSet<String>,
    marker: Vec<u8>,
    t0: Instant,
    /// Per proxy: arrival, since `t0`.
    got: Vec<Option<Duration>>,
    expected: usize,
    arrived: usize,
}

/// Shared by every proxy task and the driver.
pub struct Probe {
    armed: Mutex<Option<Armed>>,
    done: Notify,
    pub responses: AtomicU64,
    pub resources: AtomicU64,
    /// First responses.
    first: Mutex<Vec<First>>,
    first_done: Notify,
    pub failures: AtomicU64,
    proxies: usize,
}

/// One proxy's first response.
#[derive(Debug, Clone, Copy)]
pub struct First {
    /// When its connection was up and the stream's first request went out.
    pub sent: Instant,
    /// When the answer arrived.
    pub answered: Instant,
    pub kinds: Kinds,
}

/// Kinds of the resources of a first response.
#[derive(Debug, Default, Clone, Copy)]
pub struct Kinds {
    pub service: usize,
    pub workload: usize,
    pub not_found: usize,
}

impl Probe {
    pub fn new(proxies: usize) -> Arc<Probe> {
        Arc::new(Probe {
            armed: Mutex::new(None),
            done: Notify::new(),
            responses: AtomicU64::new(0),
            resources: AtomicU64::new(0),
            first: Mutex::new(Vec::new()),
            first_done: Notify::new(),
            failures: AtomicU64::new(0),
            proxies,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Armed>> {
        self.armed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Arms the probe for a change made at `t0`, expected at `expected` proxies.
    pub fn arm(&self, keys: HashSet<String>, marker: String, t0: Instant, expected: usize) {
        *self.lock() = Some(Armed {
            keys,
            marker: marker.into_bytes(),
            t0,
            got: vec![None; self.proxies],
            expected,
            arrived: 0,
        });
    }

    /// Waits until every expected proxy got the change, or `timeout`; disarms and returns
    /// the arrivals (since the change).
    pub async fn wait(&self, timeout: Duration) -> Vec<Duration> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.done.notified();
            {
                let g = self.lock();
                if g.as_ref().is_none_or(|a| a.arrived >= a.expected) {
                    break;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        self.lock()
            .take()
            .map(|a| a.got.into_iter().flatten().collect())
            .unwrap_or_default()
    }

    fn observe(&self, proxy: usize, resp: &StreamResponse, now: Instant) {
        let mut g = self.lock();
        let Some(a) = g.as_mut() else { return };
        if a.got[proxy].is_some() {
            return;
        }
        let hit = resp.resources.iter().any(|r| {
            a.keys.contains(&r.key) && r.body.windows(a.marker.len()).any(|w| w == a.marker)
        });
        if hit {
            a.got[proxy] = Some(now.saturating_duration_since(a.t0));
            a.arrived += 1;
            if a.arrived >= a.expected {
                self.done.notify_one();
            }
        }
    }

    fn first(&self, sent: Instant, answered: Instant, resp: &StreamResponse) {
        let mut k = Kinds::default();
        for r in &resp.resources {
            match Resource::from_json(&r.body) {
                Ok(Resource::Service(_)) => k.service += 1,
                Ok(Resource::Workload(_)) => k.workload += 1,
                _ => k.not_found += 1,
            }
        }
        let mut f = self.first.lock().unwrap_or_else(|e| e.into_inner());
        f.push(First {
            sent,
            answered,
            kinds: k,
        });
        if f.len() >= self.proxies {
            self.first_done.notify_one();
        }
    }

    /// Waits until every proxy has its first response (or `timeout`); returns them.
    pub async fn wait_first(&self, timeout: Duration) -> Vec<First> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.first_done.notified();
            let n = self.first.lock().unwrap_or_else(|e| e.into_inner()).len()
                + usize::try_from(self.failures.load(Ordering::Relaxed)).unwrap_or(0);
            if n >= self.proxies {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        self.first.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Runs proxy `index` until its stream ends.
pub async fn run(index: usize, addr: SocketAddr, spec: Spec, probe: Arc<Probe>) {
    if let Err(e) = stream(index, addr, spec, &probe).await {
        probe.failures.fetch_add(1, Ordering::Relaxed);
        probe.first_done.notify_one();
        eprintln!("proxy {index}: {e:#}");
    }
}

async fn stream(index: usize, addr: SocketAddr, spec: Spec, probe: &Probe) -> Result<()> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    // 1,000 connects at once can overflow the listen backlog: retry a few times.
    let mut tries = 0;
    let channel = loop {
        match endpoint.connect().await {
            Ok(c) => break c,
            Err(e) if tries < 5 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                let _ = e;
            }
            Err(e) => return Err(e).context("connecting"),
        }
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.context("channel not ready")?;
    let (tx, rx) = mpsc::channel(16);
    tx.send(StreamRequest {
        node: Some(Node {
            pod_name: spec.pod,
            namespace: spec.namespace,
            ip: spec.ip,
            proxy_version: "mesh-control-load".into(),
        }),
        subscribe: spec.keys,
        ..Default::default()
    })
    .await?;
    let sent = Instant::now();
    let resp = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(STREAM_PATH),
            tonic_prost::ProstCodec::<StreamRequest, StreamResponse>::default(),
        )
        .await
        .context("opening the stream")?;
    let mut inbound = resp.into_inner();
    let mut first = true;
    loop {
        let msg = match inbound.message().await {
            Ok(Some(m)) => m,
            // mesh-control stopped: the end of the benchmark.
            Ok(None) | Err(_) if !first => return Ok(()),
            Ok(None) => bail!("the stream ended before the first response"),
            Err(s) => bail!("stream error before the first response: {s}"),
        };
        let now = Instant::now();
        probe.responses.fetch_add(1, Ordering::Relaxed);
        probe
            .resources
            .fetch_add(msg.resources.len() as u64, Ordering::Relaxed);
        if first {
            probe.first(sent, now, &msg);
            first = false;
        }
        probe.observe(index, &msg, now);
        let ack = StreamRequest {
            response_nonce: msg.nonce,
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            return Ok(());
        }
    }
}
