//! Pure decisions: what Keycloak and the cluster should look like, from what was observed. No I/O.

pub mod certificate;
pub mod client;
pub mod credentials;
