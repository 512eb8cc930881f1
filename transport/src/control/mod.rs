//! The control plane: every resource operation is a typed [`Command`] answered by a
//! [`Reply`], executed in one place, between rounds, by the engine thread's core
//! ([`Core::execute`](crate::io::Core::execute)). Embedded, commands are passed in
//! memory; across a process boundary (the daemon's socket) they travel in the stable
//! binary encoding of [`codec`]. No closure reaches the engine.
//!
//! It lives apart from `engine` (which it drives, and which stays sans-IO and free of
//! encodings) and from `io` (which executes it): the protocol is what a daemon and its
//! clients share, and neither end's internals.
//!
//! What cannot be encoded — registering the caller's own memory, attaching in-process
//! completion rings and event channels — is not here: those are operations of the
//! embedded engine thread ([`LocalCommand`](crate::io::LocalCommand)).
//!
//! ```
//! use ferroce_transport::control::{Command, Reply};
//! use ferroce_transport::engine::ProtectionDomain;
//!
//! let mut message = Vec::new();
//! Command::DeallocPd { pd: ProtectionDomain(7) }.emit(42, &mut message)?;
//! assert_eq!(message.len(), 16 + 4);
//! let (request_id, command) = Command::parse(&message)?;
//! assert_eq!((request_id, command), (42, Command::DeallocPd { pd: ProtectionDomain(7) }));
//!
//! let mut answer = Vec::new();
//! Reply::Done.emit(request_id, &mut answer)?;
//! assert_eq!(Reply::parse(&answer)?, (42, Reply::Done));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod codec;
mod command;
mod fields;
mod reasons;
#[cfg(test)]
mod tests;

pub use codec::{DecodeError, EncodeError, Header};
pub use command::{Command, PortStatus, Reply, ReplyError};
