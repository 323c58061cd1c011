//! One integration-test binary: the real server on loopback ports, spoken
//! to over real TCP, with the real SQLite store read back.

mod harness;
mod mime;
mod process;
mod smtp;
mod store;
