//! The TOML configuration: schema, defaults and validation.
//!
//! `load` only reads the file; `from_toml` parses and validates, so tests
//! and reload use the same path. Every key has a named default, and an
//! unknown key is an error that names it (`deny_unknown_fields`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::smtp::{HostMatcher, SessionConfig};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The TOML did not parse or did not fit the schema.
    #[error("{0}")]
    Parse(String),
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Our name in the greeting, EHLO reply and Received header.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// Domains we accept mail for: exact names, `*.example.org`, or `*`.
    #[serde(default = "default_allowed_hosts")]
    pub allowed_hosts: Vec<String>,
    /// Largest message content accepted, in octets.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: u64,
    /// Memory budget for large messages: a message past 1 MiB reserves twice
    /// `max_message_size` from it (its buffer, and the body the pipeline
    /// parses out of it) before it is buffered further, and keeps the
    /// reservation until it is stored; when the budget is taken, the
    /// connection waits (and stops reading) until another is stored.
    #[serde(default = "default_max_inflight_bytes")]
    pub max_inflight_bytes: u64,
    /// Recipients per message.
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
    /// Concurrent connections; the one beyond gets `421 4.7.0`.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// Error replies per connection before `421 4.7.0` and close.
    #[serde(default = "default_max_errors")]
    pub max_errors: u32,
    /// Longest command line accepted, CRLF included (RFC 5321: at least 512).
    #[serde(default = "default_max_line_length")]
    pub max_line_length: usize,
    /// Seconds to wait for a command (and for a reply to be written).
    #[serde(default = "default_command_timeout_secs")]
    pub command_timeout_secs: u64,
    /// Seconds to wait for each read of message content.
    #[serde(default = "default_data_timeout_secs")]
    pub data_timeout_secs: u64,
    /// Refuse message content with a bare CR or LF (`550 5.6.0`).
    #[serde(default = "default_forbid_bare_newline")]
    pub forbid_bare_newline: bool,
    /// On SIGTERM, how long transactions in flight may take to finish.
    #[serde(default = "default_shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
    /// Written at start with our process id, removed at exit.
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
    /// Concurrent connections from one client IP; 0 for no limit.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// MAIL commands per minute from one client IP; 0 for no limit.
    #[serde(default)]
    pub max_messages_per_minute_per_ip: u32,
    /// How long a client has to complete a TLS handshake.
    #[serde(default = "default_tls_handshake_timeout_secs")]
    pub tls_handshake_timeout_secs: u64,
    /// The admin HTTP listener; off when absent.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Log file; standard error when absent. `-l` overrides it.
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// `error`, `warn`, `info`, `debug` or `trace`; `-v` means `debug`.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Where to listen.
    #[serde(default = "default_listeners")]
    pub listener: Vec<ListenerConfig>,
    /// The original's `GM_PRIMARY_MAIL_HOST`: accepted recipients are
    /// rewritten to `user@primary_mail_host` in `new_mail.to` and the hash.
    #[serde(default)]
    pub primary_mail_host: Option<String>,
    /// The ordered steps a message passes before the stores.
    #[serde(default = "default_pipeline")]
    pub pipeline: Vec<Step>,
    /// Where accepted messages go: `[[store]]` entries, or one `[store]`.
    #[serde(default = "default_stores", deserialize_with = "one_or_many_stores")]
    pub store: Vec<StoreConfig>,
    /// Check recipients against a SQL store at RCPT.
    #[serde(default)]
    pub recipient_check: Option<RecipientCheckConfig>,
}

/// A pipeline step (the successor's `save_process`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// Keep our `Received:` header at the top of the stored message.
    Received,
    /// Extract subject, from, body, charset... (mail-parser).
    Parse,
    /// Compute the reference's MD5 `hash` per recipient (needs `parse`).
    Hash,
}

/// Checks recipients with a SQL query against one of the configured stores.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RecipientCheckConfig {
    /// The `kind` of the store whose database is queried: `sqlite`, `mysql`
    /// or `postgres` (the first store of that kind).
    pub store: String,
    /// A query that returns a row for a known recipient; its one parameter
    /// (`?` in SQLite and MySQL, `$1` in PostgreSQL) is the lower-cased address.
    pub query: String,
    /// How long a lookup may take before the recipient gets `451 4.3.0`.
    #[serde(default = "default_check_timeout_ms")]
    pub timeout_ms: u64,
    /// How long an answer is remembered; 0 disables the cache.
    #[serde(default = "default_check_cache_ttl_secs")]
    pub cache_ttl_secs: u64,
}

/// How a listener speaks TLS.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plaintext only; STARTTLS is not offered.
    #[default]
    None,
    /// Plaintext, with STARTTLS offered (RFC 3207): port 25 and 587.
    Starttls,
    /// TLS from the first byte (RFC 8314): port 465.
    Implicit,
}

/// One listening socket.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address and port, e.g. `0.0.0.0:25`.
    pub addr: SocketAddr,
    /// Our name on this listener; the global `hostname` when absent.
    #[serde(default)]
    pub hostname: Option<String>,
    /// `none`, `starttls` or `implicit`.
    #[serde(default)]
    pub tls: TlsMode,
    /// PEM certificate chain (needed unless `tls = "none"`).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (needed unless `tls = "none"`).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Refuse MAIL before STARTTLS (`530 5.7.0`).
    #[serde(default)]
    pub require_tls: bool,
    /// Expect a PROXY protocol header (v1 or v2) from `proxy_networks`.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Networks the PROXY header is accepted from, e.g. `["10.0.0.0/8"]`.
    #[serde(default)]
    pub proxy_networks: Vec<ipnet::IpNet>,
    /// How long a proxy has to send its header.
    #[serde(default = "default_proxy_timeout_secs")]
    pub proxy_timeout_secs: u64,
    /// Overrides the global `max_message_size` on this listener.
    #[serde(default)]
    pub max_message_size: Option<u64>,
    /// Overrides the global `command_timeout_secs` on this listener.
    #[serde(default)]
    pub command_timeout_secs: Option<u64>,
    /// Overrides the global `data_timeout_secs` on this listener.
    #[serde(default)]
    pub data_timeout_secs: Option<u64>,
}

impl ListenerConfig {
    /// A plain listener on `addr` with every default.
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            hostname: None,
            tls: TlsMode::None,
            tls_cert: None,
            tls_key: None,
            require_tls: false,
            proxy_protocol: false,
            proxy_networks: Vec::new(),
            proxy_timeout_secs: default_proxy_timeout_secs(),
            max_message_size: None,
            command_timeout_secs: None,
            data_timeout_secs: None,
        }
    }
}

/// The admin HTTP listener: `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Where to listen, e.g. `127.0.0.1:8025`. Keep it off the internet.
    pub addr: SocketAddr,
}

/// One store a message is committed to before its `250`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// Best effort: failures are logged and counted, never answered `451`.
    pub optional: bool,
    /// Messages waiting for this store's writer before connections wait.
    pub queue_size: usize,
    /// Most messages in one commit.
    pub max_batch: usize,
    /// The backend and its own settings.
    pub backend: Backend,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            optional: false,
            queue_size: default_queue_size(),
            max_batch: default_max_batch(),
            backend: Backend::Sqlite(SqliteConfig::default()),
        }
    }
}

/// The backend of a store, chosen by `kind`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Backend {
    /// Embedded SQLite (the default).
    Sqlite(SqliteConfig),
    /// MySQL/MariaDB, the original `new_mail` table.
    Mysql(MysqlConfig),
    /// PostgreSQL.
    Postgres(PostgresConfig),
    /// Redis.
    Redis(RedisConfig),
    /// Memcached.
    Memcached(MemcachedConfig),
    /// NATS JetStream.
    Nats(NatsConfig),
    /// Maildir directories.
    Maildir(MaildirConfig),
    /// Accepts and discards: for load tests only.
    Null(NullConfig),
}

/// The `null` store has no settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct NullConfig {}

impl Backend {
    /// The `kind` as written in the configuration.
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Sqlite(_) => "sqlite",
            Backend::Mysql(_) => "mysql",
            Backend::Postgres(_) => "postgres",
            Backend::Redis(_) => "redis",
            Backend::Memcached(_) => "memcached",
            Backend::Nats(_) => "nats",
            Backend::Maildir(_) => "maildir",
            Backend::Null(_) => "null",
        }
    }

    /// The cargo feature that compiles this backend in.
    fn compiled_in(&self) -> bool {
        match self {
            Backend::Sqlite(_) => cfg!(feature = "sqlite"),
            Backend::Mysql(_) => cfg!(feature = "mysql"),
            Backend::Postgres(_) => cfg!(feature = "postgres"),
            Backend::Redis(_) => cfg!(feature = "redis"),
            Backend::Memcached(_) => cfg!(feature = "memcached"),
            Backend::Nats(_) => cfg!(feature = "nats"),
            Backend::Maildir(_) | Backend::Null(_) => true,
        }
    }

    /// Pipeline steps the backend's records need.
    fn needs(&self) -> &'static [Step] {
        match self {
            Backend::Mysql(_) => &[Step::Parse, Step::Hash],
            Backend::Memcached(_) => &[Step::Parse, Step::Hash],
            _ => &[],
        }
    }
}

impl<'de> Deserialize<'de> for StoreConfig {
    /// The keys every store has are taken out first; the rest must fit the
    /// backend named by `kind` exactly (`deny_unknown_fields`).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let mut common = StoreConfig::default();
        if let Some(v) = table.remove("optional") {
            common.optional = v
                .as_bool()
                .ok_or_else(|| D::Error::custom("optional must be true or false"))?;
        }
        for (key, slot) in [
            ("queue_size", &mut common.queue_size),
            ("max_batch", &mut common.max_batch),
        ] {
            if let Some(v) = table.remove(key) {
                *slot = v
                    .as_integer()
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| D::Error::custom(format!("{key} must be a positive integer")))?;
            }
        }
        common.backend = Backend::deserialize(toml::Value::Table(table))
            .map_err(|e| D::Error::custom(e.message().trim().to_owned()))?;
        Ok(common)
    }
}

fn one_or_many_stores<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<StoreConfig>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<toml::Table>),
        One(toml::Table),
    }
    use serde::de::Error;
    let tables = match OneOrMany::deserialize(d)? {
        OneOrMany::Many(v) => v,
        OneOrMany::One(t) => vec![t],
    };
    tables
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            StoreConfig::deserialize(toml::Value::Table(t))
                .map_err(|e| D::Error::custom(format!("store #{}: {}", i + 1, e.message().trim())))
        })
        .collect()
}

/// `synchronous` pragma: how hard SQLite works to make a commit durable.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync the WAL at every commit: a `250` survives power loss.
    #[default]
    Full,
    /// fsync at checkpoints only: survives a crash of gsmtpd, not of the OS.
    Normal,
}

/// The SQLite store.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SqliteConfig {
    /// Database file; its directory is created if missing.
    #[serde(default = "default_sqlite_path")]
    pub path: PathBuf,
    /// Durability of a commit.
    #[serde(default)]
    pub synchronous: Synchronous,
    /// How long a commit waits for a lock held by another process.
    #[serde(default = "default_busy_timeout_ms")]
    pub busy_timeout_ms: u64,
}

/// The MySQL/MariaDB store (the original `new_mail` table).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MysqlConfig {
    /// `mysql://user:password@host:port/database`
    pub url: String,
    /// The table the original daemon wrote.
    #[serde(default = "default_mysql_table")]
    pub table: String,
    /// Create `new_mail` and `gm2_setting` (original DDL) if missing.
    #[serde(default = "default_true")]
    pub create_tables: bool,
    /// Connect and statement timeout; past it the message gets `451`.
    #[serde(default = "default_db_timeout_secs")]
    pub timeout_secs: u64,
}

/// A table name that needs no quoting rules between backticks: ASCII
/// letters, digits, `_` and `$`, 1 to 64 characters (MySQL's limit), not
/// only digits (which MySQL would read as a number).
pub fn is_plain_identifier(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
        && !name.bytes().all(|b| b.is_ascii_digit())
}

/// A NATS stream or bucket name, or one token of a subject: not empty, no
/// white space, control characters, `.`, `*`, `>`, `/` or `\`.
fn is_nats_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c))
}

/// The PostgreSQL store.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user@host:port/database`
    pub url: String,
    /// Create the tables if missing.
    #[serde(default = "default_true")]
    pub create_tables: bool,
    /// Connect and statement timeout; past it the message gets `451`.
    #[serde(default = "default_db_timeout_secs")]
    pub timeout_secs: u64,
}

/// Compression of message values in Redis.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Store the raw bytes.
    #[default]
    None,
    /// zlib (RFC 1950), as go-guerrilla's compressor wrote.
    Zlib,
}

/// The Redis store.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db`
    pub url: String,
    /// Prepended to every key.
    #[serde(default = "default_redis_prefix")]
    pub prefix: String,
    /// Expiry of every key written.
    #[serde(default = "default_ttl_secs")]
    pub ttl_secs: u64,
    /// Compression of the stored message.
    #[serde(default)]
    pub compression: Compression,
    /// Connect and command timeout; past it the message gets `451`.
    #[serde(default = "default_db_timeout_secs")]
    pub timeout_secs: u64,
}

/// The Memcached store.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemcachedConfig {
    /// `tcp://host:port`
    pub url: String,
    /// Expiry of every key written.
    #[serde(default = "default_ttl_secs")]
    pub ttl_secs: u64,
    /// Connect and command timeout; past it the message gets `451`.
    #[serde(default = "default_db_timeout_secs")]
    pub timeout_secs: u64,
    /// Largest message cached, in octets; larger ones are logged and not
    /// sent (memcached refuses items above its `-I` limit, 1 MiB by default).
    #[serde(default = "default_max_value_size")]
    pub max_value_size: usize,
}

/// The NATS JetStream store.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// `nats://[user:password@]host:port`; several, comma-separated, for a
    /// cluster.
    #[serde(default = "default_nats_url")]
    pub url: String,
    /// The stream the subjects belong to.
    #[serde(default = "default_nats_stream")]
    pub stream: String,
    /// Subject prefix; the recipient domain is appended after a `.`.
    #[serde(default = "default_nats_subject")]
    pub subject: String,
    /// Create the stream at start if it does not exist (or check it).
    #[serde(default)]
    pub create_stream: bool,
    /// Stream limit when created: oldest messages go past this age (0: none).
    #[serde(default)]
    pub max_age_secs: u64,
    /// Stream limit when created: total size in octets (0: none).
    #[serde(default)]
    pub max_bytes: u64,
    /// Stream replicas when created (1, 3 or 5 in a cluster).
    #[serde(default = "default_nats_replicas")]
    pub replicas: usize,
    /// Connect, publish and acknowledgement timeout; past it, `451`.
    #[serde(default = "default_db_timeout_secs")]
    pub timeout_secs: u64,
    /// What happens to a message larger than the server's max payload.
    #[serde(default)]
    pub oversize: Oversize,
    /// Object store bucket for `oversize = "object_store"`.
    #[serde(default = "default_nats_bucket")]
    pub object_bucket: String,
}

/// What the NATS store does with a message larger than a NATS message.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Oversize {
    /// The SIZE limit shrinks to fit: `552 5.3.4` at MAIL or end of data.
    #[default]
    Reject,
    /// The content goes to a JetStream object store; the stream message
    /// carries the envelope and a reference to the object.
    ObjectStore,
}

/// The Maildir store.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MaildirConfig {
    /// Root directory: mailboxes are `<path>/<domain>/<local part>/`.
    #[serde(default = "default_maildir_path")]
    pub path: PathBuf,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            path: default_sqlite_path(),
            synchronous: Synchronous::Full,
            busy_timeout_ms: default_busy_timeout_ms(),
        }
    }
}

fn default_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
fn default_allowed_hosts() -> Vec<String> {
    vec!["*".to_owned()]
}
fn default_max_message_size() -> u64 {
    26_214_400
}
fn default_max_inflight_bytes() -> u64 {
    268_435_456
}
fn default_max_recipients() -> usize {
    100
}
fn default_max_clients() -> usize {
    10_000
}
fn default_max_errors() -> u32 {
    10
}
fn default_max_line_length() -> usize {
    512
}
fn default_command_timeout_secs() -> u64 {
    60
}
fn default_data_timeout_secs() -> u64 {
    300
}
fn default_forbid_bare_newline() -> bool {
    true
}
fn default_shutdown_timeout_secs() -> u64 {
    30
}
fn default_log_level() -> String {
    "info".to_owned()
}
fn default_listeners() -> Vec<ListenerConfig> {
    vec![ListenerConfig::plain(SocketAddr::from((
        [127, 0, 0, 1],
        2525,
    )))]
}
fn default_proxy_timeout_secs() -> u64 {
    5
}
fn default_max_connections_per_ip() -> usize {
    50
}
fn default_tls_handshake_timeout_secs() -> u64 {
    10
}
fn default_sqlite_path() -> PathBuf {
    PathBuf::from("data/gsmtpd.db")
}
fn default_busy_timeout_ms() -> u64 {
    5_000
}
fn default_queue_size() -> usize {
    1_024
}
fn default_max_batch() -> usize {
    512
}
fn default_pipeline() -> Vec<Step> {
    vec![Step::Received, Step::Parse, Step::Hash]
}
fn default_stores() -> Vec<StoreConfig> {
    vec![StoreConfig::default()]
}
fn default_check_timeout_ms() -> u64 {
    2_000
}
fn default_check_cache_ttl_secs() -> u64 {
    60
}
fn default_mysql_table() -> String {
    "new_mail".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_db_timeout_secs() -> u64 {
    5
}
fn default_redis_prefix() -> String {
    "gsmtpd:".to_owned()
}
fn default_ttl_secs() -> u64 {
    86_400
}
fn default_max_value_size() -> usize {
    1_048_576
}
fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".to_owned()
}
fn default_nats_stream() -> String {
    "MAIL".to_owned()
}
fn default_nats_subject() -> String {
    "gsmtpd.mail".to_owned()
}
fn default_nats_replicas() -> usize {
    1
}
fn default_nats_bucket() -> String {
    "MAIL_LARGE".to_owned()
}
fn default_maildir_path() -> PathBuf {
    PathBuf::from("data/maildir")
}

impl Default for Config {
    fn default() -> Self {
        Self::from_toml("").expect("the defaults are valid")
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Parses and validates a configuration.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            // toml's message spans several lines with a source excerpt; the
            // first line names the key and the problem.
            ConfigError::Parse(e.message().trim().to_owned())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.hostname.is_empty()
            || self
                .hostname
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return bad(format!("hostname {:?} must be one word", self.hostname));
        }
        if self.allowed_hosts.is_empty() {
            return bad(
                "allowed_hosts is empty: no mail could be accepted (use [\"*\"] for any)".into(),
            );
        }
        if let Err(p) = HostMatcher::new(&self.allowed_hosts) {
            return bad(format!(
                "allowed_hosts: {p:?} is not a domain, *.domain or *"
            ));
        }
        if self.max_line_length < 512 {
            return bad(format!(
                "max_line_length = {} is below the 512 octets RFC 5321 requires",
                self.max_line_length
            ));
        }
        for (name, v) in [
            ("max_message_size", self.max_message_size),
            ("max_recipients", self.max_recipients as u64),
            ("max_clients", self.max_clients as u64),
            ("max_errors", u64::from(self.max_errors)),
            ("command_timeout_secs", self.command_timeout_secs),
            ("data_timeout_secs", self.data_timeout_secs),
        ] {
            if v == 0 {
                return bad(format!("{name} must be greater than 0"));
            }
        }
        if self.listener.is_empty() {
            return bad("at least one [[listener]] is needed".into());
        }
        let largest = self
            .listener
            .iter()
            .filter_map(|l| l.max_message_size)
            .chain([self.max_message_size])
            .max()
            .unwrap_or(self.max_message_size);
        if self.max_inflight_bytes < largest.saturating_mul(2) {
            return bad(format!(
                "max_inflight_bytes = {} must hold one large message: twice max_message_size ({largest})",
                self.max_inflight_bytes
            ));
        }
        for (i, l) in self.listener.iter().enumerate() {
            if self.listener[..i]
                .iter()
                .any(|o| o.addr == l.addr && l.addr.port() != 0)
            {
                return bad(format!("listener {} appears twice", l.addr));
            }
            let tls = l.tls != TlsMode::None;
            if tls && (l.tls_cert.is_none() || l.tls_key.is_none()) {
                return bad(format!(
                    "listener {}: tls needs tls_cert and tls_key",
                    l.addr
                ));
            }
            if l.require_tls && l.tls != TlsMode::Starttls {
                return bad(format!(
                    "listener {}: require_tls needs tls = \"starttls\"",
                    l.addr
                ));
            }
            if l.proxy_protocol && l.proxy_networks.is_empty() {
                return bad(format!(
                    "listener {}: proxy_protocol needs proxy_networks (who may send the header)",
                    l.addr
                ));
            }
            if let Some(h) = &l.hostname
                && (h.is_empty() || h.chars().any(|c| c.is_whitespace() || c.is_control()))
            {
                return bad(format!(
                    "listener {}: hostname {h:?} must be one word",
                    l.addr
                ));
            }
            for (name, v) in [
                ("max_message_size", l.max_message_size),
                ("command_timeout_secs", l.command_timeout_secs),
                ("data_timeout_secs", l.data_timeout_secs),
                ("proxy_timeout_secs", Some(l.proxy_timeout_secs)),
            ] {
                if v == Some(0) {
                    return bad(format!(
                        "listener {}: {name} must be greater than 0",
                        l.addr
                    ));
                }
            }
        }
        if self.tls_handshake_timeout_secs == 0 {
            return bad("tls_handshake_timeout_secs must be greater than 0".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return bad(format!("log_level {:?}: {e}", self.log_level));
        }
        self.validate_pipeline_and_stores()
    }

    fn validate_pipeline_and_stores(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        for (i, step) in self.pipeline.iter().enumerate() {
            if self.pipeline[..i].contains(step) {
                return bad(format!("pipeline: {step:?} appears twice"));
            }
        }
        let has = |s: Step| self.pipeline.contains(&s);
        if has(Step::Hash)
            && self.pipeline.iter().position(|&s| s == Step::Hash)
                < self.pipeline.iter().position(|&s| s == Step::Parse)
        {
            return bad("pipeline: \"hash\" needs \"parse\" before it".into());
        }
        if self.store.is_empty() {
            return bad("at least one store is needed".into());
        }
        if self.store.iter().all(|s| s.optional) {
            return bad("every store is optional: a 250 would promise nothing".into());
        }
        for s in &self.store {
            let kind = s.backend.kind();
            let zero = match &s.backend {
                Backend::Sqlite(_) | Backend::Null(_) | Backend::Maildir(_) => None,
                Backend::Nats(c) => (c.timeout_secs == 0)
                    .then_some("timeout_secs")
                    .or((c.replicas == 0).then_some("replicas")),
                Backend::Mysql(c) => (c.timeout_secs == 0).then_some("timeout_secs"),
                Backend::Postgres(c) => (c.timeout_secs == 0).then_some("timeout_secs"),
                Backend::Redis(c) => (c.timeout_secs == 0).then_some("timeout_secs"),
                Backend::Memcached(c) => (c.timeout_secs == 0)
                    .then_some("timeout_secs")
                    .or((c.max_value_size == 0).then_some("max_value_size")),
            };
            if let Some(key) = zero {
                return bad(format!("store {kind:?}: {key} must be greater than 0"));
            }
            if !s.backend.compiled_in() {
                return bad(format!(
                    "store kind {kind:?} is not compiled in; build with --features {kind}"
                ));
            }
            for need in s.backend.needs() {
                if !has(*need) {
                    return bad(format!("store {kind:?} needs the pipeline step {need:?}"));
                }
            }
            if let Backend::Nats(n) = &s.backend {
                if !is_nats_name(&n.stream) {
                    return bad(format!(
                        "store \"nats\": stream {:?} must be a name without white space, '.', '*', '>', '/' or '\\'",
                        n.stream
                    ));
                }
                if !is_nats_name(&n.object_bucket) {
                    return bad(format!(
                        "store \"nats\": object_bucket {:?} must be a name without white space, '.', '*', '>', '/' or '\\'",
                        n.object_bucket
                    ));
                }
                if n.subject.is_empty() || !n.subject.split('.').all(is_nats_name) {
                    return bad(format!(
                        "store \"nats\": subject {:?} must be dot-separated tokens without white space or wildcards",
                        n.subject
                    ));
                }
            }
            if let Backend::Mysql(m) = &s.backend
                && !is_plain_identifier(&m.table)
            {
                return bad(format!(
                    "store \"mysql\": table {:?} must be a plain identifier \
                     (ASCII letters, digits, _ or $, at most 64, not only digits)",
                    m.table
                ));
            }
        }
        if let Some(check) = &self.recipient_check {
            if !["sqlite", "mysql", "postgres"].contains(&check.store.as_str()) {
                return bad(format!(
                    "recipient_check.store {:?}: must be sqlite, mysql or postgres",
                    check.store
                ));
            }
            if !self.store.iter().any(|s| s.backend.kind() == check.store) {
                return bad(format!(
                    "recipient_check.store {:?}: no [[store]] of that kind",
                    check.store
                ));
            }
            if check.timeout_ms == 0 {
                return bad("recipient_check.timeout_ms must be greater than 0".into());
            }
        }
        Ok(())
    }

    /// The part of the configuration a session works with, for the
    /// first listener (tests and embedders with one listener).
    pub fn session_config(&self) -> SessionConfig {
        self.session_config_for(&self.listener[0])
    }

    /// The session configuration on listener `l`: the global values with
    /// the listener's overrides.
    pub fn session_config_for(&self, l: &ListenerConfig) -> SessionConfig {
        SessionConfig {
            hostname: l.hostname.clone().unwrap_or_else(|| self.hostname.clone()),
            max_message_size: l.max_message_size.unwrap_or(self.max_message_size),
            max_recipients: self.max_recipients,
            max_errors: self.max_errors,
            max_line_length: self.max_line_length,
            forbid_bare_newline: self.forbid_bare_newline,
            allowed_hosts: HostMatcher::new(&self.allowed_hosts).expect("validated"),
            check_recipients: self.recipient_check.is_some(),
            starttls: l.tls == TlsMode::Starttls,
            require_tls: l.require_tls,
            mail_rate: None,
        }
    }

    /// Limits the connection task enforces around a session, for the first
    /// listener.
    pub fn conn_limits(&self) -> ConnLimits {
        self.conn_limits_for(&self.listener[0])
    }

    /// Limits the connection task enforces on listener `l`.
    pub fn conn_limits_for(&self, l: &ListenerConfig) -> ConnLimits {
        ConnLimits {
            session: Arc::new(self.session_config_for(l)),
            command_timeout: Duration::from_secs(
                l.command_timeout_secs.unwrap_or(self.command_timeout_secs),
            ),
            data_timeout: Duration::from_secs(
                l.data_timeout_secs.unwrap_or(self.data_timeout_secs),
            ),
        }
    }
}

/// What a connection task needs to know, cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// The session's own limits.
    pub session: Arc<SessionConfig>,
    /// Wait for a command, or for a reply to be written.
    pub command_timeout: Duration,
    /// Wait for each read of message content.
    pub data_timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.allowed_hosts, ["*"]);
        assert_eq!(c.max_message_size, 26_214_400);
        assert_eq!(c.max_recipients, 100);
        assert_eq!(c.max_clients, 10_000);
        assert_eq!(c.max_errors, 10);
        assert_eq!(c.command_timeout_secs, 60);
        assert_eq!(c.data_timeout_secs, 300);
        assert_eq!(c.max_line_length, 512);
        assert_eq!(c.listener[0].addr, "127.0.0.1:2525".parse().unwrap());
        assert_eq!(c.store.len(), 1);
        assert_eq!(
            c.store[0].backend,
            Backend::Sqlite(SqliteConfig {
                path: "data/gsmtpd.db".into(),
                ..SqliteConfig::default()
            })
        );
        assert!(!c.store[0].optional);
        assert_eq!(c.pipeline, [Step::Received, Step::Parse, Step::Hash]);
        assert_eq!(c.primary_mail_host, None);
        assert_eq!(c.recipient_check, None);
    }

    #[test]
    fn store_list_and_single_store_table() {
        let many = Config::from_toml(
            r#"
            primary_mail_host = "example.com"
            [[store]]
            kind = "sqlite"
            path = "a.db"
            queue_size = 10
            [[store]]
            kind = "sqlite"
            path = "b.db"
            optional = true
            max_batch = 3
            "#,
        )
        .unwrap();
        assert_eq!(many.store.len(), 2);
        assert_eq!(many.store[0].queue_size, 10);
        assert!(many.store[1].optional);
        assert_eq!(many.store[1].max_batch, 3);
        assert_eq!(many.primary_mail_host.as_deref(), Some("example.com"));
        let one = Config::from_toml("[store]\nkind = \"sqlite\"\npath = \"a.db\"").unwrap();
        assert_eq!(one.store.len(), 1);
        assert_eq!(one.store[0].backend, many.store[0].backend);
    }

    #[test]
    fn issue_three_example_parses_when_backends_are_built() {
        let text = r#"
            primary_mail_host = "example.com"
            [[store]]
            kind = "sqlite"
            path = "data/gsmtpd.db"
            [[store]]
            kind = "mysql"
            url = "mysql://root@127.0.0.1:3306/test"
            table = "new_mail"
            [[store]]
            kind = "redis"
            url = "redis://127.0.0.1:6379/"
            ttl_secs = 86400
            optional = true
        "#;
        let result = Config::from_toml(text);
        if cfg!(all(feature = "mysql", feature = "redis")) {
            let c = result.unwrap();
            assert_eq!(c.store[1].backend.kind(), "mysql");
            assert!(c.store[2].optional);
        } else {
            // Without the features, the error says which to enable.
            let e = result.unwrap_err().to_string();
            assert!(e.contains("--features"), "{e}");
        }
    }

    #[test]
    fn pipeline_and_store_rules() {
        for (toml, words) in [
            ("pipeline = [\"hash\", \"parse\"]", "needs \"parse\""),
            ("pipeline = [\"parse\", \"parse\"]", "twice"),
            ("pipeline = [\"compress\"]", "compress"),
            ("[[store]]\nkind = \"sqlite\"\noptional = true", "optional"),
            ("store = []", "at least one store"),
            ("[[store]]\nkind = \"sqlite\"\nqueue_size = 0", "queue_size"),
            ("[[store]]\nkind = \"sqlite\"\nbogus = 1", "bogus"),
            (
                "[recipient_check]\nstore = \"mysql\"\nquery = \"SELECT 1\"",
                "no [[store]]",
            ),
            (
                "[recipient_check]\nstore = \"redis\"\nquery = \"SELECT 1\"",
                "must be sqlite",
            ),
        ] {
            let err = Config::from_toml(toml).unwrap_err().to_string();
            assert!(err.contains(words), "{toml}: {err}");
        }
        let c = Config::from_toml(
            "pipeline = [\"received\"]\n[recipient_check]\nstore = \"sqlite\"\nquery = \"SELECT 1 FROM users WHERE address = ?\"",
        )
        .unwrap();
        assert_eq!(c.recipient_check.as_ref().unwrap().timeout_ms, 2000);
        assert!(c.session_config().check_recipients);
    }

    #[test]
    fn issue_example_parses() {
        let c = Config::from_toml(
            r#"
            hostname = "mx.example.com"
            allowed_hosts = ["example.com", "*.example.org"]
            max_message_size = 26214400
            max_recipients = 100
            max_clients = 10000
            max_errors = 10
            command_timeout_secs = 60
            data_timeout_secs = 300

            [[listener]]
            addr = "127.0.0.1:2525"

            [store]
            kind = "sqlite"
            path = "data/gsmtpd.db"
            "#,
        )
        .unwrap();
        assert_eq!(c.hostname, "mx.example.com");
        assert!(c.session_config().allowed_hosts.matches("a.example.org"));
    }

    #[test]
    fn unknown_keys_are_named() {
        for (toml, key) in [
            ("max_recipient = 5", "max_recipient"),
            ("[[listener]]\naddr = \"127.0.0.1:25\"\nport = 25", "port"),
            ("[store]\nkind = \"sqlite\"\nurl = \"x\"", "url"),
            ("[[store]]\nkind = \"sqlite\"\nurl = \"x\"", "url"),
        ] {
            let err = Config::from_toml(toml).unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
        let err = Config::from_toml("[store]\nkind = \"oracle\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("oracle"), "{err}");
    }

    #[test]
    fn invalid_values_are_refused() {
        for toml in [
            "allowed_hosts = []",
            "allowed_hosts = [\"bad domain\"]",
            "allowed_hosts = [\"*.\"]",
            "max_line_length = 100",
            "max_recipients = 0",
            "command_timeout_secs = 0",
            "hostname = \"two words\"",
            "listener = []",
            "log_level = \"gsmtpd=loudest\"",
            "[store]\nkind = \"sqlite\"\nmax_batch = 0",
            "[store]\nkind = \"mysql\"",
            "max_message_size = -1",
            "max_message_size = 2000\nmax_inflight_bytes = 3000",
        ] {
            assert!(Config::from_toml(toml).is_err(), "{toml}");
        }
    }

    /// The commented examples in the sample are valid too: uncomment every
    /// `# key = value` and `# [table]` line and parse the result.
    #[test]
    #[cfg(all(
        feature = "sqlite",
        feature = "mysql",
        feature = "postgres",
        feature = "redis",
        feature = "memcached",
        feature = "nats"
    ))]
    fn sample_config_with_every_example_uncommented_parses() {
        let text: String = include_str!("../gsmtpd.toml.sample")
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.starts_with('[')
                        || rest.split_once(" = ").is_some_and(|(k, _)| {
                            k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        }) =>
                {
                    rest
                }
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let c = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let kinds: Vec<&str> = c.store.iter().map(|s| s.backend.kind()).collect();
        assert_eq!(
            kinds,
            [
                "sqlite",
                "mysql",
                "postgres",
                "redis",
                "memcached",
                "nats",
                "maildir",
                "null"
            ]
        );
        assert!(c.recipient_check.is_some());
        assert_eq!(c.primary_mail_host.as_deref(), Some("example.com"));
    }

    #[cfg(feature = "nats")]
    #[test]
    fn nats_names_are_checked() {
        let nats = |extra: &str| Config::from_toml(&format!("[[store]]\nkind = \"nats\"\n{extra}"));
        let c = nats("").unwrap();
        match &c.store[0].backend {
            Backend::Nats(n) => {
                assert_eq!(
                    (n.stream.as_str(), n.subject.as_str()),
                    ("MAIL", "gsmtpd.mail")
                );
                assert_eq!(n.oversize, Oversize::Reject);
            }
            other => panic!("{other:?}"),
        }
        for (extra, words) in [
            ("stream = \"MA.IL\"", "stream"),
            ("stream = \"\"", "stream"),
            ("subject = \"mail.*\"", "subject"),
            ("subject = \"mail..x\"", "subject"),
            ("subject = \"mail.>\"", "subject"),
            ("object_bucket = \"a b\"", "object_bucket"),
            ("replicas = 0", "replicas"),
            ("timeout_secs = 0", "timeout_secs"),
            ("oversize = \"truncate\"", "truncate"),
        ] {
            let e = nats(extra).unwrap_err().to_string();
            assert!(e.contains(words), "{extra}: {e}");
        }
    }

    #[cfg(feature = "memcached")]
    #[test]
    fn memcached_max_value_size_defaults_to_memcached_item_limit() {
        let store = |extra: &str| {
            let c = Config::from_toml(&format!(
                "[[store]]\nkind = \"sqlite\"\n[[store]]\nkind = \"memcached\"\nurl = \"tcp://127.0.0.1:11211\"\n{extra}"
            ))
            .unwrap();
            match &c.store[1].backend {
                Backend::Memcached(m) => m.clone(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(store("").max_value_size, 1_048_576);
        assert_eq!(store("max_value_size = 4096").max_value_size, 4096);
    }

    #[test]
    fn production_example_parses() {
        let c = Config::from_toml(include_str!("../contrib/gsmtpd.production.toml")).unwrap();
        assert_eq!(c.listener.len(), 3);
        assert_eq!(c.listener[0].tls, TlsMode::Starttls);
        assert_eq!(c.listener[1].tls, TlsMode::Implicit);
        assert!(c.listener[2].proxy_protocol);
        assert!(c.admin.is_some());
    }

    #[test]
    fn sample_config_parses() {
        let text = include_str!("../gsmtpd.toml.sample");
        let c = Config::from_toml(text).unwrap();
        // The sample documents the defaults: it must not drift from them.
        let d = Config::default();
        assert_eq!(c.max_message_size, d.max_message_size);
        assert_eq!(c.max_recipients, d.max_recipients);
        assert_eq!(c.max_errors, d.max_errors);
        assert_eq!(c.command_timeout_secs, d.command_timeout_secs);
        assert_eq!(c.data_timeout_secs, d.data_timeout_secs);
        assert_eq!(c.max_line_length, d.max_line_length);
        assert_eq!(c.store, d.store);
        assert_eq!(c.pipeline, d.pipeline);
    }
}
