//! One integration-test binary: the real server on loopback ports, spoken
//! to over real TCP, with the real SQLite store read back.

mod harness;
#[cfg(feature = "mysql")]
mod mysql;
mod process;
#[cfg(feature = "mysql")]
mod proxy;
mod smtp;
mod store;
