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
//! Embedding it takes a configuration (the stores it names are opened) and
//! a shutdown signal:
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let config = gsmtpd::Config::default();
//! let backends = gsmtpd::Backends::open(&config).await?;
//! let server = gsmtpd::Server::bind(config, backends).await?;
//! tokio::signal::ctrl_c().await?;
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! or, with a store of your own, [`run`] (see `examples/embed.rs`).

pub mod admin;
pub mod check;
pub mod config;
pub mod logsink;
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
