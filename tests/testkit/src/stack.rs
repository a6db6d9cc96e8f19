//! The local stack: three PostgreSQL clusters and Apache Kafka, started
//! once per test process by `scripts/stack up --quiet`.
//!
//! The script holds a lock while it checks or starts servers, so test processes may
//! call it in parallel (nextest runs one process per test). It leaves the servers
//! running; `scripts/stack down` stops them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::Context;

/// The running local stack, as described by `$FERRY_STACK_DIR/stack.env`.
#[derive(Debug, Clone)]
pub struct Stack {
    /// The state dir (`$FERRY_STACK_DIR` or `<repo>/.ferry-stack`).
    pub dir: PathBuf,
    pub source: Cluster,
    pub target: Cluster,
    pub source_replica: Cluster,
    /// `host:port` of the broker's PLAINTEXT listener, for `bootstrap.servers`.
    pub kafka_bootstrap: String,
    /// The broker's Apache Kafka version.
    pub kafka_version: String,
    /// The same broker's SASL_SSL listener.
    pub kafka_sasl: SaslListener,
    /// The CA certificate (PEM) that signed the clusters' certificates (and the
    /// broker's): the clusters run with `ssl = on` and a certificate for `127.0.0.1`
    /// and `localhost`, and take plaintext sessions too.
    pub pg_ca: PathBuf,
}

/// The broker's SASL_SSL listener: SCRAM-SHA-512 over TLS with a certificate signed by
/// the stack's own CA.
#[derive(Debug, Clone)]
pub struct SaslListener {
    /// `host:port`.
    pub bootstrap: String,
    /// The SCRAM user.
    pub user: String,
    /// Its password.
    pub password: String,
    /// The CA certificate (PEM) that signed the broker's certificate.
    pub ca_location: PathBuf,
}

/// One PostgreSQL cluster of the stack. The user is a superuser with REPLICATION,
/// reachable over TCP with its password (scram-sha-256).
#[derive(Debug, Clone)]
pub struct Cluster {
    /// `source`, `target` or `source-replica`.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

static STACK: OnceLock<Stack> = OnceLock::new();

impl Stack {
    /// Starts the local stack once per process by running `scripts/stack up --quiet`
    /// (the repository root is found from this crate's manifest dir), then parses
    /// `$DIR/stack.env`. Cached for the life of the process.
    ///
    /// # Panics
    ///
    /// When the script fails (with its output) or stack.env cannot be read: no
    /// integration test can run without the stack.
    #[allow(clippy::panic)]
    pub fn get() -> &'static Stack {
        crate::watchdog::watch_current_test();
        STACK.get_or_init(|| match start() {
            Ok(stack) => stack,
            Err(e) => panic!("the local test stack is not available: {e:#}"),
        })
    }

    /// The CA file to give as `sslrootcert` for `sslmode = "verify-ca"` or
    /// `"verify-full"` against the clusters (host `127.0.0.1` or `localhost`).
    pub fn ca_file(&self) -> &Path {
        &self.pg_ca
    }

    /// A ferry.toml for one test: migration id `migration_id`, the three databases by
    /// name (each on its own cluster), the broker, and the coordinator listening on
    /// `coordinator_listen` (e.g. `format!("127.0.0.1:{}", free_port())`) with a random
    /// API token of its own (`coordinator.token`; every Ferry client reads it from
    /// the config).
    pub fn config_toml(
        &self,
        migration_id: &str,
        source_db: &str,
        target_db: &str,
        source_replica_db: &str,
        coordinator_listen: &str,
    ) -> String {
        let kafka = format!("bootstrap_servers = {}\n", toml_str(&self.kafka_bootstrap));
        self.config_toml_with_kafka(
            migration_id,
            source_db,
            target_db,
            source_replica_db,
            coordinator_listen,
            &kafka,
        )
    }

    /// [`Stack::config_toml`] with `kafka` as the body of its `[kafka]` section (another
    /// broker, or the SASL_SSL listener: see [`Stack::sasl_kafka_toml`]).
    pub fn config_toml_with_kafka(
        &self,
        migration_id: &str,
        source_db: &str,
        target_db: &str,
        source_replica_db: &str,
        coordinator_listen: &str,
        kafka: &str,
    ) -> String {
        let mut out = String::new();
        out.push_str(&format!("[migration]\nid = {}\n", toml_str(migration_id)));
        for (section, cluster, db) in [
            ("source", &self.source, source_db),
            ("target", &self.target, target_db),
            ("source_replica", &self.source_replica, source_replica_db),
        ] {
            out.push_str(&format!(
                "\n[{section}]\nhost = {}\nport = {}\nuser = {}\npassword = {}\ndatabase = {}\nschemas = [\"public\"]\nsslmode = \"disable\"\n",
                toml_str(&cluster.host),
                cluster.port,
                toml_str(&cluster.user),
                toml_str(&cluster.password),
                toml_str(db),
            ));
        }
        out.push_str(&format!(
            "\n[kafka]\n{kafka}\n[coordinator]\nlisten = {}\ntoken = {}\n",
            toml_str(coordinator_listen),
            toml_str(&coordinator_token()),
        ));
        out
    }

    /// The body of a `[kafka]` section for the broker's SASL_SSL listener, with
    /// `password` as the SCRAM password (the right one is `self.kafka_sasl.password`).
    pub fn sasl_kafka_toml(&self, password: &str) -> String {
        let l = &self.kafka_sasl;
        format!(
            "bootstrap_servers = {}\nsecurity_protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = {}\nsasl_password = {}\nssl_ca_location = {}\n",
            toml_str(&l.bootstrap),
            toml_str(&l.user),
            toml_str(password),
            toml_str(&l.ca_location.to_string_lossy()),
        )
    }
}

impl Cluster {
    /// A libpq-style connection string for database `db`:
    /// `host=.. port=.. user=.. password=.. dbname=..`.
    pub fn conn_string(&self, db: &str) -> String {
        format!(
            "host={} port={} user={} password={} dbname={}",
            self.host, self.port, self.user, self.password, db
        )
    }

    /// Connects to database `db` (no TLS) and spawns the connection task on the
    /// current tokio runtime.
    pub async fn connect(&self, db: &str) -> anyhow::Result<tokio_postgres::Client> {
        let (client, connection) =
            tokio_postgres::connect(&self.conn_string(db), tokio_postgres::NoTls)
                .await
                .with_context(|| {
                    format!(
                        "connecting to database {db} on cluster {} (port {})",
                        self.name, self.port
                    )
                })?;
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("testkit: connection to cluster {name} ended: {e}");
            }
        });
        Ok(client)
    }

    /// Creates a database with a fresh unique name starting with `prefix` (see
    /// [`crate::unique_name`]) and returns the name.
    pub async fn create_database(&self, prefix: &str) -> anyhow::Result<String> {
        let name = crate::unique_name(prefix);
        let client = self.connect("postgres").await?;
        client
            .batch_execute(&format!(
                "CREATE DATABASE \"{}\"",
                name.replace('"', "\"\"")
            ))
            .await
            .with_context(|| format!("creating database {name} on cluster {}", self.name))?;
        Ok(name)
    }
}

/// 32 random letters and digits: a coordinator token for one test configuration.
pub fn coordinator_token() -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..32)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The repository root: the folder two levels above this crate's manifest dir that
/// holds `scripts/stack`.
pub(crate) fn repo_root() -> anyhow::Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|d| d.join("scripts").join("stack").is_file())
        .map(Path::to_path_buf)
        .with_context(|| format!("no scripts/stack above {}", manifest.display()))
}

/// The state dir the script uses: `$FERRY_STACK_DIR` (relative to the current dir,
/// where the script also runs) or `<repo>/.ferry-stack`.
fn state_dir(repo: &Path) -> anyhow::Result<PathBuf> {
    match std::env::var_os("FERRY_STACK_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                Ok(d)
            } else {
                Ok(std::env::current_dir()?.join(d))
            }
        }
        _ => Ok(repo.join(".ferry-stack")),
    }
}

fn start() -> anyhow::Result<Stack> {
    let repo = repo_root()?;
    let script = repo.join("scripts").join("stack");
    let out = Command::new("bash")
        .arg(&script)
        .args(["up", "--quiet"])
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "`{} up --quiet` failed ({}):\n{}{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = state_dir(&repo)?;
    let env_file = dir.join("stack.env");
    let text = std::fs::read_to_string(&env_file)
        .with_context(|| format!("reading {}", env_file.display()))?;
    parse_env(&text).with_context(|| format!("parsing {}", env_file.display()))
}

fn parse_env(text: &str) -> anyhow::Result<Stack> {
    let vars: HashMap<&str, String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                k.trim(),
                v.trim().trim_matches(|c| c == '\'' || c == '"').to_owned(),
            )
        })
        .collect();
    let get = |k: &str| {
        vars.get(k)
            .cloned()
            .with_context(|| format!("{k} is missing"))
    };
    let user = get("FERRY_STACK_PG_USER")?;
    let password = get("FERRY_STACK_PG_PASSWORD")?;
    let cluster = |name: &str, key: &str| -> anyhow::Result<Cluster> {
        let port = get(key)?
            .parse()
            .with_context(|| format!("{key} is not a port"))?;
        Ok(Cluster {
            name: name.to_owned(),
            host: "127.0.0.1".to_owned(),
            port,
            user: user.clone(),
            password: password.clone(),
        })
    };
    Ok(Stack {
        dir: PathBuf::from(get("FERRY_STACK_DIR")?),
        source: cluster("source", "FERRY_STACK_SOURCE_PORT")?,
        target: cluster("target", "FERRY_STACK_TARGET_PORT")?,
        source_replica: cluster("source-replica", "FERRY_STACK_SOURCE_REPLICA_PORT")?,
        kafka_bootstrap: get("FERRY_STACK_KAFKA_BOOTSTRAP")?,
        kafka_version: get("FERRY_STACK_KAFKA_VERSION")?,
        kafka_sasl: SaslListener {
            bootstrap: get("FERRY_STACK_KAFKA_SASL_BOOTSTRAP")?,
            user: get("FERRY_STACK_KAFKA_SASL_USER")?,
            password: get("FERRY_STACK_KAFKA_SASL_PASSWORD")?,
            ca_location: PathBuf::from(get("FERRY_STACK_KAFKA_CA")?),
        },
        pg_ca: PathBuf::from(get("FERRY_STACK_PG_CA")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENV: &str = "FERRY_STACK_DIR='/tmp/s'\nFERRY_STACK_SOURCE_PORT=5001\nFERRY_STACK_TARGET_PORT=5002\nFERRY_STACK_SOURCE_REPLICA_PORT=5003\nFERRY_STACK_KAFKA_BOOTSTRAP=127.0.0.1:9092\nFERRY_STACK_KAFKA_VERSION=4.1.1\nFERRY_STACK_KAFKA_SASL_BOOTSTRAP=127.0.0.1:9093\nFERRY_STACK_KAFKA_SASL_USER=ferry\nFERRY_STACK_KAFKA_SASL_PASSWORD=pw\nFERRY_STACK_KAFKA_CA=/tmp/s/tls/ca.pem\nFERRY_STACK_PG_USER=ferry\nFERRY_STACK_PG_PASSWORD=ferry\nFERRY_STACK_PG_CA=/tmp/s/tls/ca.pem\n";

    #[test]
    fn parses_stack_env() {
        let s = parse_env(ENV).unwrap();
        assert_eq!(s.dir, PathBuf::from("/tmp/s"));
        assert_eq!(s.source.port, 5001);
        assert_eq!(s.source_replica.name, "source-replica");
        assert_eq!(s.source_replica.port, 5003);
        assert_eq!(s.kafka_bootstrap, "127.0.0.1:9092");
        assert_eq!(s.kafka_version, "4.1.1");
        assert_eq!(s.kafka_sasl.bootstrap, "127.0.0.1:9093");
        assert_eq!(s.kafka_sasl.ca_location, PathBuf::from("/tmp/s/tls/ca.pem"));
        assert_eq!(s.ca_file(), Path::new("/tmp/s/tls/ca.pem"));
        assert_eq!(
            s.target.conn_string("db1"),
            "host=127.0.0.1 port=5002 user=ferry password=ferry dbname=db1"
        );
    }

    #[test]
    fn config_toml_has_the_agreed_keys() {
        let s = parse_env(ENV).unwrap();
        let text = s.config_toml("m_1", "a", "b", "c", "127.0.0.1:9999");
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(v["migration"]["id"].as_str(), Some("m_1"));
        assert_eq!(v["source"]["database"].as_str(), Some("a"));
        assert_eq!(v["target"]["port"].as_integer(), Some(5002));
        assert_eq!(v["source_replica"]["database"].as_str(), Some("c"));
        assert_eq!(v["source_replica"]["schemas"][0].as_str(), Some("public"));
        assert_eq!(v["source"]["sslmode"].as_str(), Some("disable"));
        assert_eq!(
            v["kafka"]["bootstrap_servers"].as_str(),
            Some("127.0.0.1:9092")
        );
        assert_eq!(v["coordinator"]["listen"].as_str(), Some("127.0.0.1:9999"));
        let token = v["coordinator"]["token"].as_str().unwrap();
        assert_eq!(token.len(), 32);
        let other = s.config_toml("m_1", "a", "b", "c", "127.0.0.1:9999");
        assert!(!other.contains(token), "every config gets its own token");
    }
}
