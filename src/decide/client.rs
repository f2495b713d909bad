//! The Keycloak client a Consumer should have, and the smallest set of writes that gets the
//! observed client there. Pure: takes what was observed, returns what should be.

use std::collections::{BTreeMap, HashMap};

use keycloak::types::{ClientRepresentation, ProtocolMapperRepresentation};

use crate::{
    api::{Consumer, ConsumerState},
    names::{attributes, claims},
};

const HARDCODED_CLAIM_MAPPER: &str = "oidc-hardcoded-claim-mapper";
const OPENID_CONNECT: &str = "openid-connect";

/// The certificate thumbprints to bind into the consumer's tokens (RFC 8705).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateBinding {
    /// x5t#S256 of the newest accepted certificate.
    pub newest: Option<String>,
    /// Every accepted x5t#S256, sorted.
    pub accepted: Vec<String>,
}

/// `{tenantId}-{externalId}`.
pub fn client_id(consumer: &Consumer) -> String {
    format!("{}-{}", consumer.spec.tenant_id, consumer.spec.external_id)
}

/// `<namespace>/<name>`, the owner attribute of the client.
pub fn owner_key(consumer: &Consumer) -> String {
    let namespace = consumer.metadata.namespace.as_deref().unwrap_or_default();
    let name = consumer.metadata.name.as_deref().unwrap_or_default();
    format!("{namespace}/{name}")
}

/// The realm of a tenant: the template with `{tenant}` replaced.
pub fn realm(template: &str, tenant_id: &str) -> String {
    template.replace("{tenant}", tenant_id)
}

/// The attributes the operator owns on the client. Attributes of other keys are left alone.
pub fn desired_attributes(consumer: &Consumer) -> BTreeMap<String, String> {
    let spec = &consumer.spec;
    let mut wanted = BTreeMap::from([
        (attributes::OWNER.to_owned(), owner_key(consumer)),
        (
            attributes::MANAGED_BY.to_owned(),
            crate::names::MANAGED_BY.to_owned(),
        ),
        (attributes::TENANT.to_owned(), spec.tenant_id.clone()),
        (attributes::EXTERNAL_ID.to_owned(), spec.external_id.clone()),
        (attributes::EMAIL.to_owned(), spec.email.clone()),
    ]);
    if let Some(company) = spec.company.as_ref().filter(|c| !c.is_empty()) {
        wanted.insert(attributes::COMPANY.to_owned(), company.clone());
    }
    for (key, value) in &spec.consumer_metadata {
        wanted.insert(
            format!("{}{key}", attributes::METADATA_PREFIX),
            value.clone(),
        );
    }
    wanted
}

/// Whether an attribute key is one the operator writes (so one it must also remove).
fn is_owned_attribute(key: &str) -> bool {
    [
        attributes::OWNER,
        attributes::MANAGED_BY,
        attributes::TENANT,
        attributes::EXTERNAL_ID,
        attributes::EMAIL,
        attributes::COMPANY,
    ]
    .contains(&key)
        || key.starts_with(attributes::METADATA_PREFIX)
}

/// The protocol mappers the operator owns, by name.
pub fn desired_mappers(
    consumer: &Consumer,
    binding: &CertificateBinding,
) -> BTreeMap<String, ProtocolMapperRepresentation> {
    let mut mappers = BTreeMap::new();
    let mut add = |claim: &str, value: String, json: bool| {
        mappers.insert(claim.to_owned(), hardcoded_claim(claim, value, json));
    };
    add(claims::TENANT_ID, consumer.spec.tenant_id.clone(), false);
    add(
        claims::CONSUMER_ID,
        consumer.spec.external_id.clone(),
        false,
    );
    if let Some(newest) = &binding.newest {
        add(
            claims::CNF,
            serde_json::json!({ claims::CNF_X5T_S256: newest }).to_string(),
            true,
        );
    }
    if !binding.accepted.is_empty() {
        add(
            claims::X5T_S256_ACCEPTED,
            serde_json::json!(binding.accepted).to_string(),
            true,
        );
    }
    mappers
}

fn is_owned_mapper(name: &str) -> bool {
    [
        claims::TENANT_ID,
        claims::CONSUMER_ID,
        claims::CNF,
        claims::X5T_S256_ACCEPTED,
    ]
    .contains(&name)
}

fn hardcoded_claim(claim: &str, value: String, json: bool) -> ProtocolMapperRepresentation {
    let config = HashMap::from([
        ("claim.name".to_owned(), claim.to_owned()),
        ("claim.value".to_owned(), value),
        (
            "jsonType.label".to_owned(),
            if json { "JSON" } else { "String" }.to_owned(),
        ),
        ("access.token.claim".to_owned(), "true".to_owned()),
        ("introspection.token.claim".to_owned(), "true".to_owned()),
        ("id.token.claim".to_owned(), "false".to_owned()),
        ("userinfo.token.claim".to_owned(), "false".to_owned()),
    ]);
    ProtocolMapperRepresentation {
        name: Some(claim.to_owned()),
        protocol: Some(OPENID_CONNECT.to_owned()),
        protocol_mapper: Some(HARDCODED_CLAIM_MAPPER.to_owned()),
        config: Some(config),
        ..Default::default()
    }
}

/// The client to create for a Consumer that has none: confidential, service accounts only.
pub fn desired_client(consumer: &Consumer, binding: &CertificateBinding) -> ClientRepresentation {
    let spec = &consumer.spec;
    ClientRepresentation {
        client_id: Some(client_id(consumer)),
        name: Some(spec.name.clone()),
        description: Some(spec.description.clone().unwrap_or_default()),
        enabled: Some(spec.state == ConsumerState::Active),
        protocol: Some(OPENID_CONNECT.to_owned()),
        public_client: Some(false),
        bearer_only: Some(false),
        client_authenticator_type: Some("client-secret".to_owned()),
        service_accounts_enabled: Some(true),
        standard_flow_enabled: Some(false),
        implicit_flow_enabled: Some(false),
        direct_access_grants_enabled: Some(false),
        attributes: Some(desired_attributes(consumer).into_iter().collect()),
        protocol_mappers: Some(desired_mappers(consumer, binding).into_values().collect()),
        ..Default::default()
    }
}

/// Who owns an existing client of the Consumer's clientId.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// This Consumer: the client is ours to change.
    Ours,
    /// Nobody (made by hand): ours only with the adopt annotation.
    Unowned,
    /// Another Consumer, named by its `<namespace>/<name>`.
    Other(String),
}

pub fn ownership(observed: &ClientRepresentation, consumer: &Consumer) -> Ownership {
    let owner = observed
        .attributes
        .as_ref()
        .and_then(|a| a.get(attributes::OWNER));
    match owner.map(|o| o.as_str()) {
        None | Some("") => Ownership::Unowned,
        Some(owner) if owner == owner_key(consumer) => Ownership::Ours,
        Some(other) => Ownership::Other(other.to_owned()),
    }
}

/// The writes that bring an observed client to the desired one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientChanges {
    /// The full representation to PUT (the observed one with our fields corrected), if any of
    /// our fields differ.
    pub update: Option<ClientRepresentation>,
    pub create_mappers: Vec<ProtocolMapperRepresentation>,
    /// Mappers to replace, each carrying the observed mapper's id.
    pub update_mappers: Vec<ProtocolMapperRepresentation>,
    /// Ids of mappers to delete.
    pub delete_mappers: Vec<String>,
}

impl ClientChanges {
    pub fn is_empty(&self) -> bool {
        self.update.is_none()
            && self.create_mappers.is_empty()
            && self.update_mappers.is_empty()
            && self.delete_mappers.is_empty()
    }
}

/// Compares only what the operator owns: attributes of other keys, mappers of other names and
/// Keycloak's own bookkeeping are left as they are.
pub fn changes(
    observed: &ClientRepresentation,
    consumer: &Consumer,
    binding: &CertificateBinding,
) -> ClientChanges {
    ClientChanges {
        update: client_update(observed, consumer),
        ..mapper_changes(observed, consumer, binding)
    }
}

fn client_update(
    observed: &ClientRepresentation,
    consumer: &Consumer,
) -> Option<ClientRepresentation> {
    let wanted = desired_client(consumer, &CertificateBinding::default());
    let mut corrected = observed.clone();
    corrected.protocol_mappers = None;
    corrected.name = wanted.name;
    corrected.description = wanted.description;
    corrected.enabled = wanted.enabled;
    corrected.public_client = wanted.public_client;
    corrected.bearer_only = wanted.bearer_only;
    corrected.client_authenticator_type = wanted.client_authenticator_type;
    corrected.service_accounts_enabled = wanted.service_accounts_enabled;
    corrected.standard_flow_enabled = wanted.standard_flow_enabled;
    corrected.implicit_flow_enabled = wanted.implicit_flow_enabled;
    corrected.direct_access_grants_enabled = wanted.direct_access_grants_enabled;

    let desired = desired_attributes(consumer);
    let mut attributes = observed.attributes.clone().unwrap_or_default();
    attributes.retain(|key, value| !is_owned_attribute(key) || !value.is_empty());
    for key in attributes.keys().cloned().collect::<Vec<_>>() {
        if is_owned_attribute(&key) && !desired.contains_key(&key) {
            // NB: Keycloak removes an attribute that is sent with an empty value; leaving it
            // out of the PUT would keep it.
            attributes.insert(key, String::new());
        }
    }
    attributes.extend(desired);
    corrected.attributes = Some(attributes);

    let mut observed_cmp = observed.clone();
    observed_cmp.protocol_mappers = None;
    if let Some(a) = observed_cmp.attributes.as_mut() {
        a.retain(|key, value| !is_owned_attribute(key) || !value.is_empty());
    }
    let mut corrected_cmp = corrected.clone();
    if let Some(a) = corrected_cmp.attributes.as_mut() {
        a.retain(|key, value| !is_owned_attribute(key) || !value.is_empty());
    }
    (observed_cmp != corrected_cmp).then_some(corrected)
}

fn mapper_changes(
    observed: &ClientRepresentation,
    consumer: &Consumer,
    binding: &CertificateBinding,
) -> ClientChanges {
    let mut desired = desired_mappers(consumer, binding);
    let mut result = ClientChanges::default();
    for mapper in observed.protocol_mappers.iter().flatten() {
        let Some(name) = mapper.name.as_deref().filter(|n| is_owned_mapper(n)) else {
            continue;
        };
        let id = mapper.id.clone().unwrap_or_default();
        match desired.remove(name) {
            None => result.delete_mappers.push(id),
            Some(wanted) if same_mapper(mapper, &wanted) => {}
            Some(mut wanted) => {
                wanted.id = Some(id);
                result.update_mappers.push(wanted);
            }
        }
    }
    result.create_mappers = desired.into_values().collect();
    result
}

fn same_mapper(
    observed: &ProtocolMapperRepresentation,
    wanted: &ProtocolMapperRepresentation,
) -> bool {
    observed.protocol_mapper == wanted.protocol_mapper
        && observed.protocol == wanted.protocol
        && observed.config == wanted.config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ConsumerSpec;

    fn consumer() -> Consumer {
        let mut consumer = Consumer::new(
            "partner-1",
            ConsumerSpec {
                company: Some("Partner Inc".into()),
                consumer_metadata: BTreeMap::from([("tier".into(), "gold".into())]),
                ..crate::api::consumer::example_spec()
            },
        );
        consumer.metadata.namespace = Some("tenant-acme".into());
        consumer
    }

    /// What Keycloak returns for a client created from `desired_client`: ids filled in and
    /// attributes of its own added.
    fn as_keycloak_returns(mut client: ClientRepresentation) -> ClientRepresentation {
        client.id = Some("uuid-1".into());
        client
            .attributes
            .get_or_insert_default()
            .insert("client.secret.creation.time".into(), "1700000000".into());
        for (i, mapper) in client.protocol_mappers.iter_mut().flatten().enumerate() {
            mapper.id = Some(format!("mapper-{i}"));
        }
        client
    }

    #[test]
    fn the_client_is_confidential_with_only_the_client_credentials_flow() {
        let client = desired_client(&consumer(), &CertificateBinding::default());

        assert_eq!(client.client_id.as_deref(), Some("acme-partner-1"));
        assert_eq!(client.public_client, Some(false));
        assert_eq!(client.service_accounts_enabled, Some(true));
        assert_eq!(client.standard_flow_enabled, Some(false));
        assert_eq!(client.direct_access_grants_enabled, Some(false));
        let attributes = client.attributes.unwrap();
        assert_eq!(attributes[attributes::OWNER], "tenant-acme/partner-1");
        assert_eq!(attributes["gostoa.dev/metadata.tier"], "gold");
    }

    #[test]
    fn a_suspended_consumer_gets_a_disabled_client() {
        let mut suspended = consumer();
        suspended.spec.state = ConsumerState::Suspended;

        let client = desired_client(&suspended, &CertificateBinding::default());

        assert_eq!(client.enabled, Some(false));
    }

    #[test]
    fn an_unchanged_consumer_needs_no_write() {
        let observed =
            as_keycloak_returns(desired_client(&consumer(), &CertificateBinding::default()));

        let changes = changes(&observed, &consumer(), &CertificateBinding::default());

        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn a_renamed_consumer_updates_the_client_and_keeps_keycloaks_attributes() {
        let observed =
            as_keycloak_returns(desired_client(&consumer(), &CertificateBinding::default()));
        let mut renamed = consumer();
        renamed.spec.name = "Partner 1".into();

        let update = changes(&observed, &renamed, &CertificateBinding::default())
            .update
            .unwrap();

        assert_eq!(update.name.as_deref(), Some("Partner 1"));
        assert!(
            update
                .attributes
                .unwrap()
                .contains_key("client.secret.creation.time")
        );
    }

    #[test]
    fn removed_metadata_is_sent_empty_so_that_keycloak_drops_it() {
        let observed =
            as_keycloak_returns(desired_client(&consumer(), &CertificateBinding::default()));
        let mut trimmed = consumer();
        trimmed.spec.consumer_metadata.clear();

        let update = changes(&observed, &trimmed, &CertificateBinding::default())
            .update
            .unwrap();

        assert_eq!(update.attributes.unwrap()["gostoa.dev/metadata.tier"], "");
    }

    #[test]
    fn a_new_certificate_binding_adds_mappers_without_touching_the_client() {
        let observed =
            as_keycloak_returns(desired_client(&consumer(), &CertificateBinding::default()));
        let binding = CertificateBinding {
            newest: Some("abc".into()),
            accepted: vec!["abc".into()],
        };

        let changes = changes(&observed, &consumer(), &binding);

        assert!(changes.update.is_none());
        let names: Vec<_> = changes
            .create_mappers
            .iter()
            .map(|m| m.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["cnf", "x5t_s256_accepted"]);
        let cnf = &changes.create_mappers[0].config.as_ref().unwrap()["claim.value"];
        assert_eq!(cnf, r#"{"x5t#S256":"abc"}"#);
    }

    #[test]
    fn an_unbound_certificate_deletes_its_mappers_by_id() {
        let binding = CertificateBinding {
            newest: Some("abc".into()),
            accepted: vec!["abc".into()],
        };
        let observed = as_keycloak_returns(desired_client(&consumer(), &binding));

        let changes = changes(&observed, &consumer(), &CertificateBinding::default());

        assert_eq!(changes.delete_mappers.len(), 2);
        assert!(changes.create_mappers.is_empty() && changes.update_mappers.is_empty());
    }

    #[test]
    fn ownership_is_read_from_the_owner_attribute() {
        let mut observed =
            as_keycloak_returns(desired_client(&consumer(), &CertificateBinding::default()));
        assert_eq!(ownership(&observed, &consumer()), Ownership::Ours);

        observed
            .attributes
            .as_mut()
            .unwrap()
            .insert(attributes::OWNER.into(), "b/x".into());
        assert_eq!(
            ownership(&observed, &consumer()),
            Ownership::Other("b/x".into())
        );

        observed
            .attributes
            .as_mut()
            .unwrap()
            .remove(attributes::OWNER);
        assert_eq!(ownership(&observed, &consumer()), Ownership::Unowned);
    }

    #[test]
    fn the_realm_comes_from_the_template() {
        assert_eq!(realm("{tenant}", "acme"), "acme");
        assert_eq!(realm("stoa-{tenant}", "acme"), "stoa-acme");
    }
}
