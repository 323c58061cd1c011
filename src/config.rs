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
    /// Log file; standard error when absent. `-l` overrides it.
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// `error`, `warn`, `info`, `debug` or `trace`; `-v` means `debug`.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Where to listen.
    #[serde(default = "default_listeners")]
    pub listener: Vec<ListenerConfig>,
    /// Where accepted messages go.
    #[serde(default)]
    pub store: StoreConfig,
}

/// One listening socket.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address and port, e.g. `0.0.0.0:25`.
    pub addr: SocketAddr,
}

/// The store a message is committed to before its `250`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// Embedded SQLite (the default).
    Sqlite(SqliteConfig),
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Sqlite(SqliteConfig::default())
    }
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
    /// Messages waiting for the writer before connections wait too.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// Most messages in one transaction.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            path: default_sqlite_path(),
            synchronous: Synchronous::Full,
            busy_timeout_ms: default_busy_timeout_ms(),
            queue_size: default_queue_size(),
            max_batch: default_max_batch(),
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
    vec![ListenerConfig {
        addr: SocketAddr::from(([127, 0, 0, 1], 2525)),
    }]
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
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return bad(format!("log_level {:?}: {e}", self.log_level));
        }
        match &self.store {
            StoreConfig::Sqlite(s) => {
                if s.queue_size == 0 || s.max_batch == 0 {
                    return bad("store queue_size and max_batch must be greater than 0".into());
                }
            }
        }
        Ok(())
    }

    /// The part of the configuration a session works with.
    pub fn session_config(&self) -> SessionConfig {
        SessionConfig {
            hostname: self.hostname.clone(),
            max_message_size: self.max_message_size,
            max_recipients: self.max_recipients,
            max_errors: self.max_errors,
            max_line_length: self.max_line_length,
            forbid_bare_newline: self.forbid_bare_newline,
            allowed_hosts: HostMatcher::new(&self.allowed_hosts).expect("validated"),
        }
    }

    /// Limits the connection task enforces around a session.
    pub fn conn_limits(&self) -> ConnLimits {
        ConnLimits {
            session: Arc::new(self.session_config()),
            command_timeout: Duration::from_secs(self.command_timeout_secs),
            data_timeout: Duration::from_secs(self.data_timeout_secs),
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
        assert_eq!(
            c.store,
            StoreConfig::Sqlite(SqliteConfig {
                path: "data/gsmtpd.db".into(),
                ..SqliteConfig::default()
            })
        );
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
            "max_message_size = -1",
        ] {
            assert!(Config::from_toml(toml).is_err(), "{toml}");
        }
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
    }
}
