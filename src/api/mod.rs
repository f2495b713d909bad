//! The custom resources, their schema and validation, and their conditions. Knows nothing about
//! Keycloak.

pub mod certificate;
pub mod condition;
pub mod consumer;
pub mod duration;

pub use certificate::{
    CertificateState, ConsumerCertificate, ConsumerCertificateSpec, ConsumerCertificateStatus,
};
pub use consumer::{Consumer, ConsumerSpec, ConsumerState, ConsumerStatus};

use kube::CustomResourceExt;

/// The CRDs as YAML documents: `(file name, yaml)` in the order `crds/` lists them, each
/// starting with `---`, so that `cat crds/*.yaml` is exactly what `consumer-operator crd` prints.
pub fn crd_documents() -> Vec<(String, String)> {
    let crds = [ConsumerCertificate::crd(), Consumer::crd()];
    crds.into_iter()
        .map(|crd| {
            let file = format!("{}.yaml", kube::ResourceExt::name_any(&crd));
            let yaml = serde_yaml::to_string(&crd).expect("a CRD serialises");
            (file, format!("---\n{yaml}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_committed_crds_are_what_the_binary_prints() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");

        for (file, yaml) in super::crd_documents() {
            let committed = std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
            assert!(
                committed == yaml,
                "crds/{file} differs from `consumer-operator crd`: run `make crds`"
            );
        }
    }
}
