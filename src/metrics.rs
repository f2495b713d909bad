//! Prometheus metrics: reconciles, errors and durations by kind; Keycloak requests by operation
//! and status; certificate `notAfter` and `acceptedUntil` as timestamps. No label ever carries a
//! secret.

use std::{sync::atomic::AtomicI64, time::Duration};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub operation: &'static str,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AcceptedLabels {
    pub namespace: String,
    pub name: String,
    pub fingerprint: String,
}

fn duration_buckets() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<KindLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    pub keycloak_requests: Family<RequestLabels, Counter>,
    pub keycloak_duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
    pub certificate_not_after: Family<CertificateLabels, Gauge<i64, AtomicI64>>,
    pub certificate_accepted_until: Family<AcceptedLabels, Gauge<i64, AtomicI64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("consumer_operator");
        let metrics = Self {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(duration_buckets),
            keycloak_requests: Family::default(),
            keycloak_duration: Family::new_with_constructor(duration_buckets),
            certificate_not_after: Family::default(),
            certificate_accepted_until: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "reconciles",
            "Reconciles by kind",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by kind and reason",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration by kind",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "keycloak_requests",
            "Keycloak admin API requests by operation and HTTP status (0: no answer)",
            metrics.keycloak_requests.clone(),
        );
        registry.register(
            "keycloak_request_duration_seconds",
            "Keycloak admin API request duration by operation",
            metrics.keycloak_duration.clone(),
        );
        registry.register(
            "certificate_not_after_timestamp_seconds",
            "notAfter of each ConsumerCertificate's current certificate (Unix time)",
            metrics.certificate_not_after.clone(),
        );
        registry.register(
            "certificate_accepted_until_timestamp_seconds",
            "Until when each rotated-out certificate is still accepted (Unix time)",
            metrics.certificate_accepted_until.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    pub fn keycloak_request(&self, operation: &'static str, status: u16, elapsed: Duration) {
        let labels = RequestLabels {
            operation,
            status: status.to_string(),
        };
        self.keycloak_requests.get_or_create(&labels).inc();
        let labels = OperationLabels { operation };
        self.keycloak_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    pub fn reconciled(&self, kind: &'static str, elapsed: Duration) {
        self.reconciles.get_or_create(&KindLabels { kind }).inc();
        self.reconcile_duration
            .get_or_create(&KindLabels { kind })
            .observe(elapsed.as_secs_f64());
    }

    pub fn failed(&self, kind: &'static str, reason: &'static str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { kind, reason })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
