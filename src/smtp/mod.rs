//! The SMTP protocol core, sans IO: command and address parsing, replies,
//! the DATA reader and the session state machine. Nothing in here touches
//! a socket or a runtime; the server module moves bytes in and out.

pub mod address;
pub mod command;
pub mod data;
pub mod reply;
pub mod session;

pub use command::{BodyType, Command, Verb};
pub use reply::Reply;
pub use session::{
    DeliveryOutcome, Event, HostMatcher, Peer, RecipientVerdict, Session, SessionConfig, TlsInfo,
};

#[cfg(test)]
mod session_tests;
