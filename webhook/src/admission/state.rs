//! What every request reads: the current injection config, the native-sidecar decision,
//! readiness and metrics. Reload tasks write it; handlers only read.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use crate::config::{InjectConfig, NativeSidecars};

use super::metrics::Metrics;

pub use crate::cli::NativeMode;

impl From<NativeSidecars> for NativeMode {
    fn from(n: NativeSidecars) -> Self {
        match n {
            NativeSidecars::Auto => NativeMode::Auto,
            NativeSidecars::True => NativeMode::True,
            NativeSidecars::False => NativeMode::False,
        }
    }
}

/// What the API server's version told us about native sidecars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterSupport {
    /// Not asked yet, or could not tell: regular sidecars.
    Unknown,
    Native,
    NotNative,
}

/// Default time allowed to receive a request body; the API server's own webhook timeout is
/// at most 30 s, and a review is a few kilobytes.
pub const DEFAULT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

const UNKNOWN: u8 = 0;
const NATIVE: u8 = 1;
const NOT_NATIVE: u8 = 2;

/// Shared state of one running admission server.
#[derive(Debug)]
pub struct AppState {
    config: RwLock<Arc<InjectConfig>>,
    native_override: Option<NativeMode>,
    cluster: AtomicU8,
    /// Set once the first version probe finished (or when none is needed).
    probe_settled: AtomicBool,
    tls_loaded: AtomicBool,
    /// Set on SIGTERM: /readyz fails while requests are still served (shutdown delay).
    shutting_down: AtomicBool,
    pub metrics: Metrics,
    pub max_body_bytes: usize,
    /// How long a client may take to send its request body (slow senders get 408).
    pub body_timeout: std::time::Duration,
}

impl AppState {
    pub fn new(
        config: InjectConfig,
        native_override: Option<NativeMode>,
        max_body_bytes: usize,
    ) -> Self {
        AppState {
            config: RwLock::new(Arc::new(config)),
            native_override,
            cluster: AtomicU8::new(UNKNOWN),
            probe_settled: AtomicBool::new(native_override.is_some()),
            tls_loaded: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            metrics: Metrics::default(),
            max_body_bytes,
            body_timeout: DEFAULT_BODY_TIMEOUT,
        }
    }

    /// Replace the body timeout (default [`DEFAULT_BODY_TIMEOUT`]).
    pub fn with_body_timeout(mut self, t: std::time::Duration) -> Self {
        self.body_timeout = t;
        self
    }

    pub fn config(&self) -> Arc<InjectConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_config(&self, cfg: InjectConfig) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(cfg);
    }

    pub fn native_override(&self) -> Option<NativeMode> {
        self.native_override
    }

    /// The mode in force: the flag if given, else the config's `nativeSidecars`.
    pub fn native_mode(&self, cfg: &InjectConfig) -> NativeMode {
        self.native_override
            .unwrap_or_else(|| NativeMode::from(cfg.native_sidecars))
    }

    /// Whether this request's proxy goes in as a native sidecar.
    pub fn native_sidecars(&self, cfg: &InjectConfig) -> bool {
        match self.native_mode(cfg) {
            NativeMode::True => true,
            NativeMode::False => false,
            NativeMode::Auto => self.cluster_support() == ClusterSupport::Native,
        }
    }

    pub fn cluster_support(&self) -> ClusterSupport {
        match self.cluster.load(Ordering::Acquire) {
            NATIVE => ClusterSupport::Native,
            NOT_NATIVE => ClusterSupport::NotNative,
            _ => ClusterSupport::Unknown,
        }
    }

    pub fn set_cluster_support(&self, s: ClusterSupport) {
        let v = match s {
            ClusterSupport::Unknown => UNKNOWN,
            ClusterSupport::Native => NATIVE,
            ClusterSupport::NotNative => NOT_NATIVE,
        };
        self.cluster.store(v, Ordering::Release);
    }

    pub fn set_probe_settled(&self) {
        self.probe_settled.store(true, Ordering::Release);
    }

    pub fn set_tls_loaded(&self) {
        self.tls_loaded.store(true, Ordering::Release);
    }

    /// From now on /readyz fails, so the Service stops routing here; serving goes on.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Whether the shutdown delay has begun (SIGTERM).
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Ready once the certificate is loaded and, when the cluster's version matters, the
    /// first attempt to learn it has finished (whatever it found), so early pods do not
    /// get regular sidecars merely because we had not asked yet.
    pub fn ready(&self) -> Result<(), &'static str> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err("shutting down");
        }
        if !self.tls_loaded.load(Ordering::Acquire) {
            return Err("serving certificate not loaded");
        }
        if !self.probe_settled.load(Ordering::Acquire) {
            return Err("waiting for the API server version (nativeSidecars: auto)");
        }
        Ok(())
    }
}
