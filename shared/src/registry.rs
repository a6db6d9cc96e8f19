//! Talking to a Confluent-compatible schema registry.
//!
//! Schemas are registered and fetched with `schema_registry_converter`'s registry client,
//! so the same code works against Ferry's built-in registry (served by the coordinator)
//! and any external one (Confluent, Karapace, Apicurio, Redpanda). Values are framed the
//! Confluent way: byte 0 = 0, four bytes of schema id (big-endian), then the Avro datum.
//! Any Kafka tool with a registry-aware Avro deserializer reads Ferry's topics.
//!
//! Encoding and decoding of rows use Ferry's own Avro codec ([`crate::avro`]), which
//! writes standard Avro binary (checked against apache-avro and the converter's decoder
//! in the tests) without building a generic value tree per row.

use std::collections::HashMap;
use std::sync::Arc;

use schema_registry_converter::async_impl::schema_registry::{
    get_schema_by_id, post_schema, SrSettings,
};
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use tokio::sync::RwLock;

use crate::avro::{self, AvroError, AvroType};

/// Why the registry or a framed record failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry refused or could not be reached.
    #[error("schema registry at {url}: {message}")]
    Registry {
        /// Registry URL.
        url: String,
        /// What it said.
        message: String,
        /// Worth retrying.
        retriable: bool,
        /// The HTTP status of its answer, when it answered.
        status: Option<u16>,
    },
    /// A schema from the registry is not one Ferry can read.
    #[error("schema {id} from the registry")]
    Schema {
        /// Schema id.
        id: u32,
        /// Why.
        #[source]
        source: AvroError,
    },
    /// Bytes not in the Confluent wire format.
    #[error("record is not in the Confluent wire format: {0}")]
    Framing(String),
    /// The Avro datum could not be written or read.
    #[error(transparent)]
    Avro(#[from] AvroError),
    /// The envelope does not have Ferry's layout.
    #[error("record is not a Ferry change envelope: {0}")]
    Envelope(String),
}

/// A registry client with caches (schemas by id; ids by subject and schema text).
#[derive(Clone)]
pub struct RegistryClient {
    url: String,
    settings: Arc<SrSettings>,
    /// Parsed schemas by id: read for every record decoded, so a plain lock, never
    /// held across an await (a tokio lock cost more than the lookup).
    by_id: Arc<std::sync::RwLock<HashMap<u32, Arc<AvroType>>>>,
    ids: Arc<RwLock<HashMap<(String, String), u32>>>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("url", &self.url)
            .finish()
    }
}

impl RegistryClient {
    /// A client for the registry at `url`, with optional basic auth.
    pub fn new(url: &str, basic_auth: Option<(&str, Option<&str>)>) -> Result<Self, RegistryError> {
        let mut builder = SrSettings::new_builder(url.trim_end_matches('/').to_owned());
        if let Some((user, password)) = basic_auth {
            builder.set_basic_authorization(user, password);
        }
        Self::with_settings(url, builder.build())
    }

    /// A client for the coordinator's built-in registry at `url`: the coordinator's
    /// token as a bearer token (when one is known) and its CA file trusted
    /// ([`crate::coordinator_access`]).
    pub fn for_coordinator(
        url: &str,
        coordinator: &crate::config::CoordinatorConfig,
    ) -> Result<Self, RegistryError> {
        use crate::coordinator_access::{client_token, http_client_builder};
        let refused = |e: crate::coordinator_access::AccessError| RegistryError::Registry {
            url: url.to_owned(),
            message: e.to_string(),
            retriable: false,
            status: None,
        };
        let token = client_token(coordinator).map_err(refused)?;
        let http = http_client_builder(coordinator).map_err(refused)?;
        let mut builder = SrSettings::new_builder(url.trim_end_matches('/').to_owned());
        if let Some(token) = &token {
            builder.set_token_authorization(token.expose().trim());
        }
        Self::with_settings(url, builder.build_with(http))
    }

    fn with_settings(
        url: &str,
        settings: Result<SrSettings, schema_registry_converter::error::SRCError>,
    ) -> Result<Self, RegistryError> {
        let settings = settings.map_err(|e| RegistryError::Registry {
            url: url.to_owned(),
            message: e.error.clone(),
            retriable: false,
            status: None,
        })?;
        Ok(RegistryClient {
            url: url.to_owned(),
            settings: Arc::new(settings),
            by_id: Arc::default(),
            ids: Arc::default(),
        })
    }

    /// A client for the registry `config` names (`schema_registry.url`, or the
    /// coordinator's built-in one), with its basic-auth credentials (or, for the
    /// built-in one, the coordinator's token and CA file).
    pub fn from_config(config: &crate::config::Config) -> Result<Self, RegistryError> {
        let sr = &config.schema_registry;
        if sr.url.is_none() {
            return Self::for_coordinator(&config.registry_url(), &config.coordinator);
        }
        let url = config.registry_url();
        let mut builder = SrSettings::new_builder(url.clone());
        if let Some(user) = &sr.username {
            builder.set_basic_authorization(user, sr.password.as_ref().map(|p| p.expose()));
        }
        let http = match &sr.ca_file {
            Some(path) => trusting(path).map_err(|message| RegistryError::Registry {
                url: url.clone(),
                message,
                retriable: false,
                status: None,
            })?,
            None => reqwest::Client::builder(),
        };
        Self::with_settings(&url, builder.build_with(http))
    }

    /// The registry URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn error(&self, e: schema_registry_converter::error::SRCError) -> RegistryError {
        let mut message = match &e.cause {
            Some(cause) => format!("{}: {cause}", e.error),
            None => e.error.clone(),
        };
        let status = http_status(&e.error);
        if status == Some(401) {
            message.push_str(
                "; the registry wants credentials: for the coordinator's built-in registry pass \
                 its token (coordinator.token, FERRY_COORDINATOR__TOKEN or coordinator.token_file), \
                 for an external one schema_registry.username and schema_registry.password",
            );
        }
        RegistryError::Registry {
            url: self.url.clone(),
            status,
            message,
            retriable: e.retriable,
        }
    }

    /// Registers `schema` (Avro JSON) under `subject` and returns its id; registering the
    /// same schema again returns the same id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let key = (subject.to_owned(), schema.to_owned());
        if let Some(id) = self.ids.read().await.get(&key) {
            return Ok(*id);
        }
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned());
        let registered = post_schema(&self.settings, subject.to_owned(), supplied)
            .await
            .map_err(|e| self.error(e))?;
        let parsed = avro::parse_schema(schema).map_err(|source| RegistryError::Schema {
            id: registered.id,
            source,
        })?;
        self.by_id
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(registered.id, Arc::new(parsed));
        self.ids.write().await.insert(key, registered.id);
        Ok(registered.id)
    }

    /// The schema with id `id`, parsed (fetched once, then cached).
    pub async fn schema(&self, id: u32) -> Result<Arc<AvroType>, RegistryError> {
        let cached = self
            .by_id
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned();
        if let Some(ty) = cached {
            return Ok(ty);
        }
        let registered = get_schema_by_id(id, &self.settings)
            .await
            .map_err(|e| self.error(e))?;
        let parsed = Arc::new(
            avro::parse_schema(&registered.schema)
                .map_err(|source| RegistryError::Schema { id, source })?,
        );
        self.by_id
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, parsed.clone());
        Ok(parsed)
    }
}

/// The status in the client's "HTTP request to schema registry failed with status 409
/// Conflict" (the only place it reports one).
/// An HTTP client that trusts the CA certificates in the PEM file `path`
/// (`schema_registry.ca_file`) besides the system's. Err: why not, naming the setting.
fn trusting(path: &str) -> Result<reqwest::ClientBuilder, String> {
    let refused = |why: String| {
        format!("cannot use schema_registry.ca_file \"{path}\": {why}; give a PEM file with the CA certificate that signed the registry's certificate")
    };
    let pem = std::fs::read(path).map_err(|e| refused(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| refused(format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(refused("it holds no PEM certificate".to_owned()));
    }
    Ok(certs
        .into_iter()
        .fold(reqwest::Client::builder(), |b, cert| {
            b.add_root_certificate(cert)
        }))
}

fn http_status(error: &str) -> Option<u16> {
    let (_, rest) = error.split_once("with status ")?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_status_is_read_from_the_clients_message() {
        assert_eq!(
            http_status("HTTP request to schema registry failed with status 409 Conflict"),
            Some(409)
        );
        assert_eq!(http_status("http call to schema registry failed"), None);
    }
}
