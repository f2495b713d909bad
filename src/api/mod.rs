//! The custom resources, their schema and validation, and their conditions. Knows nothing about
//! Keycloak.

pub mod certificate;
pub mod condition;
pub mod consumer;
pub mod duration;

pub use consumer::{Consumer, ConsumerSpec, ConsumerState, ConsumerStatus};

use kube::CustomResourceExt;

/// The CRDs as YAML documents: `(file name, yaml)` in the order `crds/` lists them.
pub fn crd_documents() -> Vec<(String, String)> {
    let crds = [Consumer::crd()];
    crds.into_iter()
        .map(|crd| {
            let file = format!("{}.yaml", kube::ResourceExt::name_any(&crd));
            let yaml = serde_yaml::to_string(&crd).expect("a CRD serialises");
            (file, yaml)
        })
        .collect()
}
