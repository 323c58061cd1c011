//! gsmtpd: a receive-only SMTP server that stores every message durably
//! before it answers `250`, and lets the client go as fast as possible.
//!
//! The pieces, in the order a message meets them:
//! - [`smtp`]: the sans-IO protocol core (bytes in, replies and events out);
//! - [`server`]: the accept loop and the tokio connection task that drives
//!   a session;
//! - [`message`]: the envelope, ids and the Received header;
//! - [`store`]: the `Store` trait, the group-commit writer and the backends;
//! - [`config`]: the TOML configuration.
//!
//! Embedding it takes a bound listener, a configuration, a store and a
//! shutdown future:
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! let config = gsmtpd::Config::default();
//! let store = gsmtpd::store::sqlite::SqliteStore::open(&Default::default()).unwrap();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:2525").await?;
//! gsmtpd::run(listener, config, store, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod admin;
pub mod check;
pub mod config;
pub mod message;
pub mod metrics;
pub mod pipeline;
pub mod server;
pub mod smtp;
pub mod store;

pub use config::Config;
pub use message::{Envelope, MessageId};
pub use server::{Backends, Server, ServerError, run, serve};
pub use store::{Store, StoreError};
