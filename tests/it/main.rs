//! One integration-test binary: the real server on loopback ports, spoken
//! to over real TCP, with the real SQLite store read back.

mod check;
mod harness;
mod kv;
mod maildir;
mod mime;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "postgres")]
mod postgres;
mod process;
mod production;
mod proxy;
mod smtp;
#[cfg(any(feature = "mysql", feature = "postgres"))]
mod sql;
mod store;
mod tls;
