//! The `ConsumerCertificate` custom resource: one client certificate a consumer presents for mTLS,
//! with the validation the API server enforces (size limit, exactly one source, duration bounds,
//! an immutable consumer reference, a revocation that cannot be undone) and the status the
//! operator keeps true (thumbprints, validity, rotation and what is accepted right now).
//!
//! Timestamps in the status are `DateTime<Utc>` fields, written as RFC 3339 strings.
// NB: kube-derive takes one `printcolumn(...)` per column; clippy reads them as duplicates.
#![allow(clippy::duplicated_attributes)]

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::Duration;

/// Largest accepted `pem`, in characters: a certificate with a long chain fits easily.
pub const PEM_MAX: usize = 65_536;
/// Pattern of an object name (a DNS-1123 subdomain), for the Consumer and Secret references.
pub const OBJECT_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
pub const OBJECT_NAME_MAX: usize = 253;
/// Pattern of a key in a Secret's data.
pub const SECRET_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";
/// The key cert-manager writes the certificate (and its chain) to.
pub const DEFAULT_SECRET_KEY: &str = "tls.crt";
pub const DEFAULT_GRACE_PERIOD: &str = "24h";
pub const DEFAULT_EXPIRY_WARNING: &str = "336h";

/// CEL: the grace period is from 1 second to 30 days.
const GRACE_PERIOD_RULE: &str =
    "duration(self) >= duration('1s') && duration(self) <= duration('720h')";
const GRACE_PERIOD_MESSAGE: &str = "gracePeriod must be from 1s to 720h";
/// CEL: exactly one source of the certificate.
const ONE_SOURCE_RULE: &str = "has(self.pem) != has(self.secretRef)";
const ONE_SOURCE_MESSAGE: &str = "exactly one of pem and secretRef must be set";
/// CEL transition rule: `revoked` never goes back to false (or away).
const REVOKED_RULE: &str =
    "!has(oldSelf.revoked) || !oldSelf.revoked || (has(self.revoked) && self.revoked)";
const REVOKED_MESSAGE: &str = "revoked cannot be undone: once true it stays true";
const IMMUTABLE_RULE: &str = "self == oldSelf";
const CONSUMER_REF_MESSAGE: &str = "consumerRef.name is immutable";

/// A client certificate of a consumer, bound into that consumer's access tokens (RFC 8705).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "gostoa.dev",
    version = "v1alpha1",
    kind = "ConsumerCertificate",
    plural = "consumercertificates",
    shortname = "ccert",
    category = "stoa",
    namespaced,
    status = "ConsumerCertificateStatus",
    doc = "A client certificate of an API consumer, bound into its access tokens (RFC 8705)",
    printcolumn(name = "Consumer", type_ = "string", json_path = ".spec.consumerRef.name"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(
        name = "Fingerprint",
        type_ = "string",
        json_path = ".status.current.sha256Fingerprint"
    ),
    // NB: a string, not a date: kubectl prints a date column in the future as `<invalid>`.
    printcolumn(name = "Not After", type_ = "string", json_path = ".status.current.notAfter"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new(ONE_SOURCE_RULE).message(ONE_SOURCE_MESSAGE))]
#[x_kube(validation = Rule::new(REVOKED_RULE).message(REVOKED_MESSAGE).field_path(".revoked"))]
#[serde(rename_all = "camelCase")]
pub struct ConsumerCertificateSpec {
    /// The Consumer, in the same namespace, that presents this certificate. Immutable.
    pub consumer_ref: ConsumerRef,

    /// The certificate as PEM text: the client certificate first, its chain (ignored) after.
    /// Never a private key. Exactly one of `pem` and `secretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = PEM_MAX))]
    pub pem: Option<String>,

    /// A Secret in the same namespace holding the PEM text, such as the one cert-manager writes.
    /// Exactly one of `pem` and `secretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,

    /// How long a replaced certificate stays accepted (default `24h`, from `1s` to `720h`).
    #[serde(default = "default_grace_period")]
    #[x_kube(validation = Rule::new(GRACE_PERIOD_RULE).message(GRACE_PERIOD_MESSAGE))]
    pub grace_period: Duration,

    /// How long before `notAfter` the `ExpiringSoon` condition turns true (default `336h`).
    #[serde(default = "default_expiry_warning")]
    pub expiry_warning: Duration,

    /// Withdraws every thumbprint of this object from the tokens at once. Cannot be undone.
    #[serde(default)]
    pub revoked: bool,
}

/// A reference to a Consumer in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct ConsumerRef {
    #[schemars(regex(pattern = OBJECT_NAME_PATTERN), length(min = 1, max = OBJECT_NAME_MAX))]
    #[x_kube(validation = Rule::new(IMMUTABLE_RULE).message(CONSUMER_REF_MESSAGE))]
    pub name: String,
}

/// A key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    #[schemars(regex(pattern = OBJECT_NAME_PATTERN), length(min = 1, max = OBJECT_NAME_MAX))]
    pub name: String,

    /// The data key holding the PEM text (default `tls.crt`).
    #[serde(default = "default_secret_key")]
    #[schemars(regex(pattern = SECRET_KEY_PATTERN), length(max = OBJECT_NAME_MAX))]
    pub key: String,
}

fn default_grace_period() -> Duration {
    Duration::new(DEFAULT_GRACE_PERIOD)
}

fn default_expiry_warning() -> Duration {
    Duration::new(DEFAULT_EXPIRY_WARNING)
}

fn default_secret_key() -> String {
    DEFAULT_SECRET_KEY.to_owned()
}

/// What the operator observed and bound, kept true.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerCertificateStatus {
    /// Unset until a certificate has been accepted or the object is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<CertificateState>,

    /// The certificate the object holds now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<CurrentCertificate>,

    /// Replaced certificates still within their grace period, most recently replaced first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous: Vec<PreviousCertificate>,

    /// Every thumbprint (`x5t#S256`) of this object accepted right now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted_x5t_s256: Vec<String>,

    #[serde(default)]
    pub rotation_count: i64,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<DateTime<Utc>>,

    /// `Ready` and `ExpiringSoon`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CertificateState {
    /// The current certificate is accepted and no replaced one is.
    Active,
    /// A replaced certificate is still accepted, until its `acceptedUntil`.
    Rotating,
    /// Nothing of this object is accepted, for good.
    Revoked,
    /// The current certificate is past its `notAfter`.
    Expired,
}

impl CertificateState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "Active",
            Self::Rotating => "Rotating",
            Self::Revoked => "Revoked",
            Self::Expired => "Expired",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CurrentCertificate {
    /// Lowercase hex of the SHA-256 of the DER, no colons.
    pub sha256_fingerprint: String,
    /// The same digest, base64url without padding (RFC 8705).
    #[serde(rename = "x5tS256")]
    pub x5t_s256: String,
    /// RFC 4514.
    pub subject: String,
    /// RFC 4514.
    pub issuer: String,
    /// Hex.
    pub serial_number: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviousCertificate {
    pub sha256_fingerprint: String,
    #[serde(rename = "x5tS256")]
    pub x5t_s256: String,
    pub subject: String,
    pub not_after: DateTime<Utc>,
    /// The instant the certificate stops being accepted.
    pub accepted_until: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;
    use serde_json::{Value, json};

    use super::*;

    fn crd() -> Value {
        serde_json::to_value(ConsumerCertificate::crd()).expect("the CRD serialises")
    }

    fn schema() -> Value {
        crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    }

    fn rules(schema: &Value) -> Vec<(String, String)> {
        schema["x-kubernetes-validations"]
            .as_array()
            .unwrap_or_else(|| panic!("no x-kubernetes-validations in {schema}"))
            .iter()
            .map(|r| {
                (
                    r["rule"].as_str().unwrap().into(),
                    r["message"].as_str().unwrap().into(),
                )
            })
            .collect()
    }

    #[test]
    fn the_crd_has_the_fixed_names() {
        let crd = crd();

        assert_eq!(crd["metadata"]["name"], "consumercertificates.gostoa.dev");
        assert_eq!(crd["spec"]["group"], "gostoa.dev");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["kind"], "ConsumerCertificate");
        assert_eq!(crd["spec"]["names"]["plural"], "consumercertificates");
        assert_eq!(crd["spec"]["names"]["shortNames"], json!(["ccert"]));
        assert_eq!(crd["spec"]["names"]["categories"], json!(["stoa"]));
        assert_eq!(crd["spec"]["versions"][0]["name"], "v1alpha1");
        assert_eq!(
            crd["spec"]["versions"][0]["subresources"]["status"],
            json!({})
        );
    }

    #[test]
    fn the_printer_columns_show_consumer_state_fingerprint_not_after_and_age() {
        let crd = crd();

        let columns: Vec<(&str, &str)> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap(), c["jsonPath"].as_str().unwrap()))
            .collect();

        assert_eq!(
            columns,
            [
                ("Consumer", ".spec.consumerRef.name"),
                ("State", ".status.state"),
                ("Fingerprint", ".status.current.sha256Fingerprint"),
                ("Not After", ".status.current.notAfter"),
                ("Age", ".metadata.creationTimestamp"),
            ]
        );
    }

    #[test]
    fn the_spec_requires_exactly_one_source_and_keeps_revocation() {
        let spec = &schema()["properties"]["spec"];

        let rules = rules(spec);

        assert!(
            rules.contains(&(ONE_SOURCE_RULE.into(), ONE_SOURCE_MESSAGE.into())),
            "{rules:?}"
        );
        assert!(
            rules.contains(&(REVOKED_RULE.into(), REVOKED_MESSAGE.into())),
            "{rules:?}"
        );
        assert!(ONE_SOURCE_MESSAGE.contains("pem") && ONE_SOURCE_MESSAGE.contains("secretRef"));
        assert!(REVOKED_MESSAGE.contains("revoked"));
        assert_eq!(spec["required"], json!(["consumerRef"]));
    }

    #[test]
    fn the_consumer_reference_is_required_and_immutable() {
        let consumer_ref = &schema()["properties"]["spec"]["properties"]["consumerRef"];

        let name = &consumer_ref["properties"]["name"];

        assert_eq!(consumer_ref["required"], json!(["name"]));
        assert_eq!(
            rules(name),
            [(IMMUTABLE_RULE.into(), CONSUMER_REF_MESSAGE.into())]
        );
        assert_eq!(name["maxLength"], 253);
        assert_eq!(name["pattern"], OBJECT_NAME_PATTERN);
    }

    #[test]
    fn pem_is_limited_to_64_kib() {
        let pem = &schema()["properties"]["spec"]["properties"]["pem"];

        assert_eq!(pem["maxLength"], 65_536);
        assert_eq!(pem["type"], "string");
    }

    #[test]
    fn durations_have_defaults_and_the_grace_period_is_bounded() {
        let properties = &schema()["properties"]["spec"]["properties"];

        let grace = &properties["gracePeriod"];
        let warning = &properties["expiryWarning"];

        assert_eq!(grace["default"], "24h");
        assert_eq!(grace["pattern"], super::super::duration::PATTERN);
        assert_eq!(
            rules(grace),
            [(GRACE_PERIOD_RULE.into(), GRACE_PERIOD_MESSAGE.into())]
        );
        assert_eq!(warning["default"], "336h");
        assert_eq!(properties["revoked"]["default"], false);
    }

    #[test]
    fn the_secret_key_defaults_to_what_cert_manager_writes() {
        let secret_ref = &schema()["properties"]["spec"]["properties"]["secretRef"];

        assert_eq!(secret_ref["properties"]["key"]["default"], "tls.crt");
        assert_eq!(secret_ref["required"], json!(["name"]));
    }

    #[test]
    fn the_status_states_are_an_enum_and_timestamps_are_date_times() {
        let status = &schema()["properties"]["status"]["properties"];

        assert_eq!(
            status["state"]["enum"],
            json!(["Active", "Rotating", "Revoked", "Expired"])
        );
        assert_eq!(
            status["current"]["properties"]["notAfter"]["format"],
            "date-time"
        );
        let previous = &status["previous"]["items"]["properties"];
        assert_eq!(previous["acceptedUntil"]["format"], "date-time");
        assert!(previous["x5tS256"].is_object(), "{previous}");
        assert!(status["acceptedX5tS256"].is_object(), "{status}");
    }

    #[test]
    fn a_minimal_manifest_reads_with_its_defaults() {
        let manifest = json!({
            "apiVersion": "gostoa.dev/v1alpha1",
            "kind": "ConsumerCertificate",
            "metadata": {"name": "partner-1-2025", "namespace": "acme"},
            "spec": {"consumerRef": {"name": "partner-1"}, "secretRef": {"name": "partner-1-tls"}},
        });

        let certificate: ConsumerCertificate = serde_json::from_value(manifest).unwrap();

        let spec = certificate.spec;
        assert_eq!(spec.secret_ref.unwrap().key, "tls.crt");
        assert_eq!(spec.grace_period, Duration::new("24h"));
        assert_eq!(spec.expiry_warning, Duration::new("336h"));
        assert!(!spec.revoked);
        assert_eq!(spec.pem, None);
    }

    #[test]
    fn status_timestamps_round_trip_as_rfc_3339() {
        let status = ConsumerCertificateStatus {
            last_rotation_time: Some("2025-06-01T12:00:00Z".parse().unwrap()),
            ..Default::default()
        };

        let value = serde_json::to_value(&status).unwrap();

        assert_eq!(value["lastRotationTime"], "2025-06-01T12:00:00Z");
        assert_eq!(
            serde_json::from_value::<ConsumerCertificateStatus>(value).unwrap(),
            status
        );
    }
}
