//! Every metric gsmtpd exports, described once with its unit, and the
//! Prometheus recorder behind the admin `/metrics` endpoint.
//!
//! The `metrics` macros are no-ops until a recorder is installed, which
//! happens only when an `[admin]` listener is configured.

use std::sync::OnceLock;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn install() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("gsmtpd_store_commit_seconds".into()),
                &[
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
                ],
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("gsmtpd_store_batch_size".into()),
                    &[
                        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                    ],
                )
            })
            .expect("static bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed by an embedding
        // program; then ours only renders what it was given.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    describe_gauge!("gsmtpd_build_info", "Build information; the value is 1.");
    describe_gauge!(
        "gsmtpd_connections_current",
        Unit::Count,
        "Open SMTP connections."
    );
    describe_counter!(
        "gsmtpd_connections_total",
        Unit::Count,
        "SMTP connections accepted."
    );
    describe_counter!(
        "gsmtpd_connections_rejected_total",
        Unit::Count,
        "Connections refused or dropped before a session, by reason."
    );
    describe_counter!(
        "gsmtpd_messages_accepted_total",
        Unit::Count,
        "Messages answered 250."
    );
    describe_counter!(
        "gsmtpd_messages_rejected_total",
        Unit::Count,
        "Messages refused at the end of data, by reason."
    );
    describe_counter!(
        "gsmtpd_message_bytes_total",
        Unit::Bytes,
        "Octets of accepted messages."
    );
    describe_counter!(
        "gsmtpd_recipients_total",
        Unit::Count,
        "Recipients of accepted messages."
    );
    describe_counter!(
        "gsmtpd_tls_handshakes_total",
        Unit::Count,
        "Completed TLS handshakes."
    );
    describe_counter!(
        "gsmtpd_tls_handshake_failures_total",
        Unit::Count,
        "Failed TLS handshakes."
    );
    describe_histogram!(
        "gsmtpd_store_commit_seconds",
        Unit::Seconds,
        "Time a store takes to commit one batch."
    );
    describe_histogram!(
        "gsmtpd_store_batch_size",
        Unit::Count,
        "Messages per commit."
    );
    describe_counter!(
        "gsmtpd_store_errors_total",
        Unit::Count,
        "Failed commits, by store and kind."
    );
    describe_gauge!(
        "gsmtpd_store_queue_depth",
        Unit::Count,
        "Messages waiting for a store's writer when its last batch was taken."
    );
    gauge!("gsmtpd_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// A connection was accepted on `listener`.
pub fn connection_opened(listener: &str) {
    counter!("gsmtpd_connections_total", "listener" => listener.to_owned()).increment(1);
    gauge!("gsmtpd_connections_current").increment(1.0);
}

/// A connection ended.
pub fn connection_closed() {
    gauge!("gsmtpd_connections_current").decrement(1.0);
}

/// A connection was refused: `max_clients`, `per_ip`, `proxy_untrusted`,
/// `proxy_header`, `tls_handshake`.
pub fn connection_rejected(reason: &'static str) {
    counter!("gsmtpd_connections_rejected_total", "reason" => reason).increment(1);
}

/// A message got its `250`.
pub fn message_accepted(bytes: usize, recipients: usize) {
    counter!("gsmtpd_messages_accepted_total").increment(1);
    counter!("gsmtpd_message_bytes_total").increment(bytes as u64);
    counter!("gsmtpd_recipients_total").increment(recipients as u64);
}

/// A message was refused at its end: `size`, `bare_newline`, `store`.
pub fn message_rejected(reason: &'static str) {
    counter!("gsmtpd_messages_rejected_total", "reason" => reason).increment(1);
}

/// A TLS handshake finished, well or not.
pub fn tls_handshake(ok: bool) {
    if ok {
        counter!("gsmtpd_tls_handshakes_total").increment(1);
    } else {
        counter!("gsmtpd_tls_handshake_failures_total").increment(1);
    }
}

/// A store committed (or failed) a batch.
pub fn store_commit(store: &'static str, batch: usize, seconds: f64, error: Option<&'static str>) {
    histogram!("gsmtpd_store_commit_seconds", "store" => store).record(seconds);
    histogram!("gsmtpd_store_batch_size", "store" => store).record(batch as f64);
    if let Some(kind) = error {
        counter!("gsmtpd_store_errors_total", "store" => store, "kind" => kind).increment(1);
    }
}

/// How many messages were queued for `store` when a batch was taken.
pub fn store_queue_depth(store: &'static str, depth: usize) {
    gauge!("gsmtpd_store_queue_depth", "store" => store).set(depth as f64);
}
