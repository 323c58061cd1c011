//! The admin HTTP listener: `/metrics` (Prometheus text format), `/healthz`
//! (the process answers) and `/readyz` (every required store can commit).
//! Off unless `[admin] addr` is set; bind it to loopback or a private
//! network, it has no authentication.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::store::FanOut;

/// How long `/readyz` waits for the stores.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
struct AdminState {
    stores: Arc<FanOut>,
    metrics: &'static metrics_exporter_prometheus::PrometheusHandle,
}

/// Serves the admin endpoints on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, stores: Arc<FanOut>, stop: CancellationToken) {
    let state = AdminState {
        stores,
        metrics: crate::metrics::install(),
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "admin listener failed");
    }
}

async fn metrics(State(s): State<AdminState>) -> String {
    s.metrics.render()
}

async fn ready(State(s): State<AdminState>) -> (StatusCode, String) {
    match tokio::time::timeout(READY_TIMEOUT, s.stores.ready()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".into()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: stores did not answer in time\n".into(),
        ),
    }
}
