//! The `Consumer` custom resource: an application that calls the platform's APIs, with the
//! validation the API server enforces (OpenAPI patterns and CEL rules) and the same rules as plain
//! functions for callers that validate before anything reaches the API server (the importer).
// NB: kube-derive takes one `printcolumn(...)` per column; clippy reads them as duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::Duration;

/// Pattern of `externalId` and `tenantId`: a DNS-1123 subdomain label of 1 to 63 characters, so
/// that an externalId is also a valid object name.
pub const ID_PATTERN: &str = "^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$";
/// Pattern of `email`: one `@`, no blanks, a dot in the domain.
pub const EMAIL_PATTERN: &str = r"^[^@\s]+@[^@\s]+\.[^@\s]+$";
pub const NAME_MAX: usize = 255;
pub const COMPANY_MAX: usize = 255;
pub const DESCRIPTION_MAX: usize = 4096;
pub const METADATA_MAX_ENTRIES: usize = 64;

/// The declared state of a consumer and its Keycloak client.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "gostoa.dev",
    version = "v1alpha1",
    kind = "Consumer",
    plural = "consumers",
    shortname = "cons",
    category = "stoa",
    namespaced,
    status = "ConsumerStatus",
    doc = "An API consumer of the STOA platform: an OAuth2 client in Keycloak and its credentials",
    printcolumn(name = "External ID", type_ = "string", json_path = ".spec.externalId"),
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenantId"),
    printcolumn(name = "State", type_ = "string", json_path = ".spec.state"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Client ID",
        type_ = "string",
        json_path = ".status.keycloakClientId"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(
    "!has(oldSelf.state) || oldSelf.state != 'Blocked' \
     || (has(self.state) && self.state == 'Blocked')"
).message("state: Blocked is final; a blocked consumer cannot change state").field_path(".state"))]
#[serde(rename_all = "camelCase")]
pub struct ConsumerSpec {
    /// The consumer's identifier in the platform, unique within its tenant. Immutable.
    #[schemars(regex(pattern = ID_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("externalId is immutable"))]
    pub external_id: String,

    /// The tenant the consumer belongs to; selects the Keycloak realm. Immutable.
    #[schemars(regex(pattern = ID_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("tenantId is immutable"))]
    pub tenant_id: String,

    /// Display name, 1 to 255 characters.
    #[schemars(length(min = 1, max = NAME_MAX))]
    pub name: String,

    /// Contact email address.
    #[schemars(regex(pattern = EMAIL_PATTERN), length(max = 254))]
    pub email: String,

    /// Company, at most 255 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = COMPANY_MAX))]
    pub company: Option<String>,

    /// Free text, at most 4096 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = DESCRIPTION_MAX))]
    pub description: Option<String>,

    /// `Active` (the default), `Suspended` or `Blocked`. Only an active consumer's client is
    /// enabled. `Blocked` is final.
    #[serde(default)]
    pub state: ConsumerState,

    /// Free key/value pairs copied into the client's attributes; at most 64 entries.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = METADATA_MAX_ENTRIES))]
    pub consumer_metadata: BTreeMap<String, String>,

    /// Where the credentials go and when they rotate.
    #[serde(default)]
    pub credentials: CredentialsSpec,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConsumerState {
    #[default]
    Active,
    Suspended,
    Blocked,
}

impl ConsumerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "Active",
            Self::Suspended => "Suspended",
            Self::Blocked => "Blocked",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.revision >= oldSelf.revision")
    .message("credentials.revision can never go down").field_path(".revision"))]
pub struct CredentialsSpec {
    /// Name of the Secret that receives the credentials; default `<metadata.name>-credentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = ID_PATTERN))]
    pub secret_name: Option<String>,

    /// Raising it rotates the client secret. It can never go down.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub revision: i64,

    /// How long the previous client secret keeps working after a rotation (default `24h`).
    #[serde(default = "default_grace_period")]
    pub rotation_grace_period: Duration,
}

impl Default for CredentialsSpec {
    fn default() -> Self {
        Self {
            secret_name: None,
            revision: 0,
            rotation_grace_period: default_grace_period(),
        }
    }
}

fn default_grace_period() -> Duration {
    Duration::new("24h")
}

/// What the operator observed and did, kept true.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ConsumerPhase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keycloak_client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keycloak_client_uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsStatus>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConsumerPhase {
    Pending,
    Active,
    Suspended,
    Blocked,
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsStatus {
    /// The `credentials.revision` the Secret's client secret belongs to.
    pub revision: i64,
    /// When the client secret was last rotated (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<String>,
    /// Until when the previous client secret keeps working (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_valid_until: Option<String>,
}

impl Consumer {
    /// The Secret that receives the credentials.
    pub fn secret_name(&self) -> String {
        match &self.spec.credentials.secret_name {
            Some(name) => name.clone(),
            None => format!("{}-credentials", kube::ResourceExt::name_any(self)),
        }
    }
}

/// One rule a field breaks, in the words the API server would use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field from the spec, e.g. `spec.email`.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Checks a new spec against the same rules as the CRD schema (the transition rules need an old
/// object and are left to the API server). Returns every broken rule, not only the first.
pub fn validate_spec(spec: &ConsumerSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut fail = |field: &str, message: String| {
        errors.push(FieldError {
            field: field.to_owned(),
            message,
        });
    };
    let id = regex_id();

    if !id.is_match(&spec.external_id) {
        fail("spec.externalId", id_message(&spec.external_id));
    }
    if !id.is_match(&spec.tenant_id) {
        fail("spec.tenantId", id_message(&spec.tenant_id));
    }
    let name_len = spec.name.chars().count();
    if name_len == 0 || name_len > NAME_MAX {
        fail(
            "spec.name",
            format!("must be 1 to {NAME_MAX} characters, got {name_len}"),
        );
    }
    if !regex_email().is_match(&spec.email) || spec.email.len() > 254 {
        fail(
            "spec.email",
            format!("{:?} is not an email address", spec.email),
        );
    }
    if let Some(company) = &spec.company
        && company.chars().count() > COMPANY_MAX
    {
        fail(
            "spec.company",
            format!("must be at most {COMPANY_MAX} characters"),
        );
    }
    if let Some(description) = &spec.description
        && description.chars().count() > DESCRIPTION_MAX
    {
        fail(
            "spec.description",
            format!("must be at most {DESCRIPTION_MAX} characters"),
        );
    }
    if spec.consumer_metadata.len() > METADATA_MAX_ENTRIES {
        fail(
            "spec.consumerMetadata",
            format!("must have at most {METADATA_MAX_ENTRIES} entries"),
        );
    }
    errors
}

fn id_message(value: &str) -> String {
    format!(
        "{value:?} must be 1 to 63 lower-case letters, digits, '.' or '-', \
         starting and ending with a letter or digit"
    )
}

fn regex_id() -> &'static regex::Regex {
    static ID: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    ID.get_or_init(|| regex::Regex::new(ID_PATTERN).expect("valid pattern"))
}

fn regex_email() -> &'static regex::Regex {
    static EMAIL: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    EMAIL.get_or_init(|| regex::Regex::new(EMAIL_PATTERN).expect("valid pattern"))
}

/// A valid spec for the unit tests of every layer: consumer `partner-1` of tenant `acme`.
#[cfg(test)]
pub fn example_spec() -> ConsumerSpec {
    ConsumerSpec {
        external_id: "partner-1".into(),
        tenant_id: "acme".into(),
        name: "Partner One".into(),
        email: "ops@partner.example".into(),
        company: None,
        description: None,
        state: ConsumerState::Active,
        consumer_metadata: BTreeMap::new(),
        credentials: CredentialsSpec::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ConsumerSpec {
        example_spec()
    }

    #[test]
    fn a_complete_spec_is_valid() {
        assert_eq!(validate_spec(&spec()), vec![]);
    }

    #[test]
    fn every_broken_rule_is_reported_with_its_field() {
        let mut bad = spec();
        bad.external_id = "Partner_1".into();
        bad.name = String::new();
        bad.email = "not-an-email".into();

        let fields: Vec<_> = validate_spec(&bad).into_iter().map(|e| e.field).collect();

        assert_eq!(fields, ["spec.externalId", "spec.name", "spec.email"]);
    }

    #[test]
    fn ids_follow_the_object_name_rules() {
        for good in ["a", "a.b-c", "0abc9", &"a".repeat(63)] {
            assert!(regex_id().is_match(good), "{good} should be accepted");
        }
        for bad in ["", "-a", "a-", "A", "a_b", &"a".repeat(64)] {
            assert!(!regex_id().is_match(bad), "{bad} should be rejected");
        }
    }

    #[test]
    fn the_default_secret_name_follows_the_object_name() {
        let consumer = Consumer::new("partner-1", spec());

        assert_eq!(consumer.secret_name(), "partner-1-credentials");
    }
}
