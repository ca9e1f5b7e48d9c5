//! The build loop: once the core watchers have synced, build a snapshot; then on every
//! (debounced) change, build again and publish it to every stream through a `watch`
//! channel (a slow stream skips to the newest snapshot).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::serve::changes::Changes;
use crate::serve::diagnostics::Reporter;
use crate::serve::metrics::Metrics;
use crate::serve::translator::{Translator, View};
use crate::serve::watch::Watchers;
use crate::translate::MeshSettings;

/// One built snapshot.
pub struct Published {
    /// Counts builds since start.
    pub seq: u64,
    pub view: Arc<dyn View>,
    /// When the first change this build includes was seen (`None` for the first build).
    pub changed_at: Option<Instant>,
}

pub type Snapshots = watch::Receiver<Option<Arc<Published>>>;

pub struct Engine {
    pub watchers: Arc<Watchers>,
    pub changes: Arc<Changes>,
    pub translator: Arc<dyn Translator>,
    pub settings: MeshSettings,
    pub debounce: Duration,
    pub metrics: Arc<Metrics>,
    pub reporter: Reporter,
}

impl Engine {
    /// Runs forever, publishing into `tx`.
    pub async fn run(mut self, tx: watch::Sender<Option<Arc<Published>>>) {
        self.watchers.synced().await;
        tracing::info!(
            endpoint_slices = self.watchers.slice_version(),
            "core watchers synced"
        );
        let mut seq = 0;
        self.build(&tx, &mut seq, None).await;
        loop {
            let first = self.changes.next(self.debounce).await;
            self.build(&tx, &mut seq, Some(first)).await;
        }
    }

    async fn build(
        &mut self,
        tx: &watch::Sender<Option<Arc<Published>>>,
        seq: &mut u64,
        changed_at: Option<Instant>,
    ) {
        let objects = self.watchers.objects();
        let translator = self.translator.clone();
        let settings = self.settings.clone();
        let started = Instant::now();
        let built = tokio::task::spawn_blocking(move || translator.build(objects, &settings)).await;
        let (view, diags) = match built {
            Ok(b) => b,
            Err(e) => {
                // A bug in the translation must not take the control plane down: keep
                // serving the last snapshot.
                tracing::error!(error = %e, "snapshot build failed; keeping the previous one");
                return;
            }
        };
        self.metrics.builds.fetch_add(1, Ordering::Relaxed);
        if !diags.is_empty() {
            let objects = self.watchers.objects();
            self.reporter.report(&diags, &objects);
        } else {
            self.reporter.clean();
        }
        *seq += 1;
        tracing::debug!(
            seq = *seq,
            took_ms = started.elapsed().as_millis() as u64,
            diagnostics = diags.len(),
            "snapshot built"
        );
        tx.send_replace(Some(Arc::new(Published {
            seq: *seq,
            view,
            changed_at,
        })));
    }
}
