//! Change notification and the debounce: watchers [`Changes::mark`] every event; the
//! engine waits in [`Changes::next`] until the cluster has been quiet for the debounce
//! (or at most five debounces after the first change, so that steady churn elsewhere,
//! such as a namespace being torn down, delays an update by 0.5 s at most with the
//! default 100 ms), so a burst becomes one build.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Pending {
    /// The first change not yet built (push latency is measured from here).
    first: Option<Instant>,
    last: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct Changes {
    pending: Mutex<Pending>,
    notify: Notify,
}

impl Changes {
    /// Something changed now.
    pub fn mark(&self) {
        let now = Instant::now();
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.first.get_or_insert(now);
            p.last = Some(now);
        }
        self.notify.notify_one();
    }

    /// Waits for changes, then for the debounce; returns when the first of them was seen.
    pub async fn next(&self, debounce: Duration) -> Instant {
        let max = debounce.saturating_mul(5);
        loop {
            self.notify.notified().await;
            loop {
                let (first, last) = {
                    let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                    (p.first, p.last)
                };
                let (Some(first), Some(last)) = (first, last) else {
                    break;
                };
                let deadline = (last + debounce).min(first + max);
                if Instant::now() >= deadline {
                    let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                    p.first = None;
                    p.last = None;
                    return first;
                }
                tokio::time::sleep_until(deadline.into()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_burst_is_one_change_after_the_quiet_period() {
        let c = Arc::new(Changes::default());
        let c2 = c.clone();
        let start = Instant::now();
        tokio::spawn(async move {
            for _ in 0..5 {
                c2.mark();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let first = c.next(Duration::from_millis(100)).await;
        let waited = start.elapsed();
        assert!(
            first - start < Duration::from_millis(20),
            "{:?}",
            first - start
        );
        // 5 marks 20 ms apart, then 100 ms quiet.
        assert!(waited >= Duration::from_millis(180), "{waited:?}");
        assert!(waited < Duration::from_millis(600), "{waited:?}");
        // Nothing pending: the next call waits for a new mark.
        let r = tokio::time::timeout(
            Duration::from_millis(150),
            c.next(Duration::from_millis(10)),
        )
        .await;
        assert!(r.is_err(), "no change, no build");
    }

    #[tokio::test]
    async fn a_steady_stream_still_builds_within_five_debounces() {
        let c = Arc::new(Changes::default());
        let c2 = c.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        tokio::spawn(async move {
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                c2.mark();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let start = Instant::now();
        c.next(Duration::from_millis(20)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(
            start.elapsed() < Duration::from_millis(300),
            "{:?}",
            start.elapsed()
        );
    }
}
