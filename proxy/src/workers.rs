//! Extra event-loop threads (`--worker-threads` above 1). Each runs a single-threaded
//! runtime with capture listeners of its own on the same addresses (`SO_REUSEPORT`), so
//! the kernel spreads new connections over the threads and a connection lives on one
//! thread from accept to close: no task moves between threads and no thread wakes
//! another. A gateway's threads each run the gateway listener set
//! ([`gateway_listeners`]), which joins every Gateway port's group the same way. The threads share only the metrics, the connection count and the drain.

use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::direction::Direction;
use crate::flow::Shared;
use crate::listener::{ConnTracker, accept_loop, gateway_listeners};

/// A worker thread whose listeners are registered, waiting for [`Worker::start`].
#[derive(Debug)]
pub struct Worker {
    start: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl Worker {
    /// Starts a thread for `listeners` and waits until its runtime holds them. Dropping
    /// the returned worker without starting it ends the thread and closes them.
    pub async fn spawn(
        index: usize,
        listeners: Vec<(std::net::TcpListener, Direction)>,
        shared: Arc<Shared>,
        tracker: Arc<ConnTracker>,
        drain: watch::Receiver<bool>,
        mut stop: watch::Receiver<bool>,
    ) -> io::Result<Worker> {
        let (ready_tx, ready_rx) = oneshot::channel::<io::Result<()>>();
        let (start_tx, start_rx) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name(format!("mesh-proxy-{index}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let mut registered = Vec::with_capacity(listeners.len());
                    for (l, direction) in listeners {
                        match TcpListener::from_std(l) {
                            Ok(l) => registered.push((l, direction)),
                            Err(e) => {
                                let _ = ready_tx.send(Err(e));
                                return;
                            }
                        }
                    }
                    let _ = ready_tx.send(Ok(()));
                    if start_rx.await.is_err() {
                        return; // the proxy was dropped before it ran
                    }
                    let mut loops: Vec<_> = registered
                        .into_iter()
                        .map(|(l, direction)| {
                            tokio::spawn(accept_loop(
                                l,
                                direction,
                                shared.clone(),
                                tracker.clone(),
                                drain.clone(),
                            ))
                        })
                        .collect();
                    if shared.config.gateway.is_some() {
                        loops.push(tokio::spawn(gateway_listeners(
                            shared.clone(),
                            tracker.clone(),
                            drain.clone(),
                        )));
                    }
                    for l in loops {
                        let _ = l.await;
                    }
                    // Listeners closed for the drain: keep this thread's connections
                    // moving until every connection has ended or the proxy stops
                    // waiting (drain timeout); dropping the runtime closes the rest.
                    tokio::select! {
                        () = tracker.wait_idle() => {}
                        _ = stop.wait_for(|stopped| *stopped) => {}
                    }
                });
            })?;
        match ready_rx.await {
            Ok(Ok(())) => Ok(Worker {
                start: start_tx,
                thread,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(io::Error::other("worker thread ended during startup"))
            }
        }
    }

    /// Lets the worker accept; returns the thread to join once the proxy stops.
    pub fn start(self) -> JoinHandle<()> {
        let _ = self.start.send(());
        self.thread
    }
}
