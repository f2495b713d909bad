//! Every name that crosses the operator's boundary: API group, labels, annotations, finalizers,
//! field managers, condition types, reasons and event reasons. Nobody types these strings twice.

/// API group of both custom resources.
pub const GROUP: &str = "gostoa.dev";
/// Served version of both custom resources.
pub const VERSION: &str = "v1alpha1";

/// Field manager of the operator's server-side applies.
pub const FIELD_MANAGER: &str = "consumer-operator";
/// Field manager of `consumer-operator import`.
pub const IMPORT_FIELD_MANAGER: &str = "consumer-operator-import";

/// Label on everything the operator creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "consumer-operator";
/// Label selector for the objects the operator manages.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=consumer-operator";

/// Label a certificate Secret carries so that the operator watches it (cert-manager users put it
/// in `secretTemplate.labels`).
pub const WATCH_LABEL: &str = "gostoa.dev/watch";
/// Selector for [`WATCH_LABEL`].
pub const WATCH_SELECTOR: &str = "gostoa.dev/watch=true";
/// Namespace label that pins a namespace to one tenant (checked by the admission policy).
pub const TENANT_LABEL: &str = "gostoa.dev/tenant";

/// Annotation that lets a Consumer adopt an ownerless Keycloak client of the same clientId.
pub const ADOPT_ANNOTATION: &str = "gostoa.dev/adopt";
/// Annotation choosing what deletion does to the Keycloak client (`Delete` or `Orphan`).
pub const DELETION_POLICY_ANNOTATION: &str = "gostoa.dev/deletion-policy";
/// Value of [`DELETION_POLICY_ANNOTATION`] that leaves the client in Keycloak.
pub const DELETION_POLICY_ORPHAN: &str = "Orphan";

/// Finalizer of a Consumer: the Keycloak client and the Secret go first.
pub const CONSUMER_FINALIZER: &str = "gostoa.dev/consumer-cleanup";
/// Finalizer of a ConsumerCertificate: its thumbprints leave the binding first.
pub const CERTIFICATE_FINALIZER: &str = "gostoa.dev/certificate-unbind";

/// Keycloak client attributes written by the operator.
pub mod attributes {
    /// `<namespace>/<name>` of the Consumer that owns the client.
    pub const OWNER: &str = "gostoa.dev/owner";
    pub const TENANT: &str = "gostoa.dev/tenant";
    pub const EXTERNAL_ID: &str = "gostoa.dev/external-id";
    pub const EMAIL: &str = "gostoa.dev/email";
    pub const COMPANY: &str = "gostoa.dev/company";
    /// Marks clients the operator manages; the secret-rotation client policy selects on it.
    pub const MANAGED_BY: &str = "gostoa.dev/managed-by";
    /// Prefix of the attributes that carry `consumerMetadata`.
    pub const METADATA_PREFIX: &str = "gostoa.dev/metadata.";
}

/// Keys and annotations of the credentials Secret.
pub mod secret {
    pub const CLIENT_ID: &str = "client_id";
    pub const CLIENT_SECRET: &str = "client_secret";
    pub const PREVIOUS_CLIENT_SECRET: &str = "previous_client_secret";
    pub const TOKEN_URL: &str = "token_url";
    /// The `credentials.revision` the Secret's `client_secret` belongs to.
    pub const REVISION_ANNOTATION: &str = "gostoa.dev/credentials-revision";
    /// When the rotation to that revision happened (RFC 3339).
    pub const ROTATED_AT_ANNOTATION: &str = "gostoa.dev/rotated-at";
    /// Until when `previous_client_secret` keeps working (RFC 3339).
    pub const PREVIOUS_VALID_UNTIL_ANNOTATION: &str = "gostoa.dev/previous-valid-until";
}

/// Token claim names.
pub mod claims {
    pub const TENANT_ID: &str = "tenant_id";
    pub const CONSUMER_ID: &str = "consumer_id";
    pub const CNF: &str = "cnf";
    pub const X5T_S256_ACCEPTED: &str = "x5t_s256_accepted";
    /// The member of `cnf` that carries the certificate thumbprint (RFC 8705).
    pub const CNF_X5T_S256: &str = "x5t#S256";
}

/// Condition types.
pub mod condition {
    pub const READY: &str = "Ready";
    pub const CLIENT_SYNCED: &str = "ClientSynced";
    pub const CREDENTIALS_READY: &str = "CredentialsReady";
    pub const EXPIRING_SOON: &str = "ExpiringSoon";
}

/// Condition reasons (also used as Warning event reasons where they match).
pub mod reason {
    pub const RECONCILED: &str = "Reconciled";
    pub const PENDING: &str = "Pending";
    pub const KEYCLOAK_UNAVAILABLE: &str = "KeycloakUnavailable";
    pub const KEYCLOAK_ERROR: &str = "KeycloakError";
    pub const REALM_NOT_FOUND: &str = "RealmNotFound";
    pub const CONFLICT: &str = "Conflict";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const DELETING: &str = "Deleting";
    pub const KUBERNETES_ERROR: &str = "KubernetesError";
    pub const CONSUMER_NOT_FOUND: &str = "ConsumerNotFound";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const INVALID_CERTIFICATE: &str = "InvalidCertificate";
    pub const PRIVATE_KEY_INCLUDED: &str = "PrivateKeyIncluded";
    pub const CA_CERTIFICATE: &str = "CACertificate";
    pub const EXPIRED: &str = "Expired";
    pub const REVOKED: &str = "Revoked";
    pub const FINGERPRINT_CONFLICT: &str = "FingerprintConflict";
    pub const EXPIRING_SOON: &str = "ExpiringSoon";
    pub const VALID: &str = "Valid";
}

/// Event reasons that are not condition reasons.
pub mod event {
    pub const CLIENT_CREATED: &str = "ClientCreated";
    pub const CLIENT_UPDATED: &str = "ClientUpdated";
    pub const CREDENTIALS_ROTATED: &str = "CredentialsRotated";
    pub const CLIENT_DELETED: &str = "ClientDeleted";
    pub const DRIFT_CORRECTED: &str = "DriftCorrected";
    pub const CERTIFICATE_ROTATED: &str = "CertificateRotated";
    pub const CERTIFICATE_GRACE_ENDED: &str = "CertificateGraceEnded";
}
