//! The librdkafka client configuration.

use rdkafka::ClientConfig;

use super::KafkaConfig;

impl KafkaConfig {
    /// A librdkafka configuration with the bootstrap servers, security protocol, SASL
    /// and TLS settings, then `properties` (which win). It holds the SASL password:
    /// never log it (`ClientConfig`'s `Debug` prints every property).
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("security.protocol", self.security_protocol.as_str());
        if let Some(mechanism) = self.sasl_mechanism {
            config.set("sasl.mechanism", mechanism.as_str());
        }
        if let Some(user) = &self.sasl_username {
            config.set("sasl.username", user);
        }
        if let Some(password) = &self.sasl_password {
            config.set("sasl.password", password.expose());
        }
        if let Some(ca) = &self.ssl_ca_location {
            config.set("ssl.ca.location", ca);
        }
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}
