//! consumer-operator: onboards the API consumers of the STOA platform into Keycloak and keeps their
//! credentials, certificate bindings and status true. See README.md for the architecture.

pub mod api;
pub mod cli;
pub mod controller;
pub mod decide;
pub mod import;
pub mod keycloak;
pub mod lease;
pub mod metrics;
pub mod names;
pub mod server;
pub mod telemetry;
pub mod x509;
