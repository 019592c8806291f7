//! The probe listener: `/health`, `/ready`, `/startup` and `/metrics` on
//! `metrics.host:metrics.port`, served by a thread of its own with a single-threaded runtime.
//!
//! Every kind of process runs one (the ingress also answers the probes on its API port). Under
//! load the API runtime's workers have long run queues; a liveness probe queued behind them
//! reads as a hang. On its own thread a probe waits only for the OS scheduler, so it answers
//! within milliseconds while the process is saturated, and still stops answering if the process
//! is wedged (it shares the process's dependencies for `/ready`).
//!
//! Invariants: the listener is bound before `spawn` returns (a bind failure is the caller's
//! error, not the thread's); the thread ends when `shutdown` is cancelled and its open
//! connections finish.

use super::Server;
use crate::app::Deps;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Connections the probe listener serves at once: kubelet probes and metrics scrapers need a
/// few; the bound keeps a misbehaving client from taking the process's file descriptors.
const PROBE_CONNECTIONS: usize = 64;

/// A running probe listener.
pub struct Probes {
    addr: SocketAddr,
    thread: std::thread::JoinHandle<()>,
}

impl Probes {
    /// Binds `metrics.host:metrics.port` and serves the probes from a new thread.
    pub fn spawn(deps: Arc<Deps>, shutdown: CancellationToken) -> std::io::Result<Probes> {
        let addr = format!("{}:{}", deps.settings.metrics.host, deps.settings.metrics.port);
        let listener = std::net::TcpListener::bind(&addr)
            .map_err(|e| std::io::Error::new(e.kind(), format!("probe listener on {addr} (metrics.port): {e}")))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new().name("probes".into()).spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => {
                        tracing::info!(addr = %addr, "probes and metrics listening");
                        let max_connections = PROBE_CONNECTIONS;
                        Server { deps, listener, tls: None, probes_only: true, max_connections }.serve(shutdown).await
                    }
                    Err(e) => tracing::error!(error = %e, "probe listener not registered; probes unavailable"),
                }
            })
        })?;
        Ok(Probes { addr, thread })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits (off the async workers) for the thread to end after shutdown.
    pub async fn join(self) {
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}
