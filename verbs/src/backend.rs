//! Where a [`Device`](crate::Device)'s engine runs, behind one seam.
//!
//! Every control operation of the verbs API is a [`Command`] given to
//! [`Backend::execute`]; the data path is [`Post`] messages in, completions out through
//! [`CompletionRing`]s, and rounds driven by whoever polls. A backend answers both, plus
//! what only it can do with memory and rings of this process:
//!
//! - **embedded** (today's only one): the engine runs in this process, on its engine
//!   thread and on the application threads that post and poll. Commands are passed in
//!   memory; caller memory and rings are attached as [`LocalCommand`]s.
//! - a daemon client (to come) sends the same commands, encoded, over the daemon's
//!   socket, and keeps rings and registered memory in memory it shares with the daemon.
//!
//! An enum rather than a trait object: the data-path calls (`post`, `drive`) stay
//! static calls, and a new backend is a new variant every method must answer.

use std::net::SocketAddr;
use std::sync::Arc;

use ferroce_transport::control::{Command, Reply};
use ferroce_transport::engine::{
    self, AccessFlags, AsyncEvent, CompletionQueueId, NamespaceId, ProtectionDomain, RegionMemory,
};
use ferroce_transport::io::thread::{
    CompletionRing, EngineThread, EventChannel, LocalCommand, Post,
};
use ferroce_transport::io::DriverKind;

use crate::error::Result;

/// How a device reaches its engine.
#[derive(Debug)]
pub(crate) enum Backend {
    /// An engine thread of this process.
    Embedded(EngineThread),
}

impl Backend {
    /// Executes `command` on namespace `ns`; `Err` only when the engine has stopped (a
    /// refusal is [`Reply::Error`]).
    pub(crate) fn execute(&self, ns: NamespaceId, command: Command) -> Result<Reply> {
        match self {
            Backend::Embedded(thread) => Ok(thread.execute(ns, command)?),
        }
    }

    /// Registers memory of this process (a buffer handed over, or the application's own)
    /// in the PD `pd`.
    pub(crate) fn reg_mr_backed(
        &self,
        ns: NamespaceId,
        pd: ProtectionDomain,
        memory: RegionMemory,
        access: AccessFlags,
    ) -> Result<engine::MemoryRegion> {
        let command = LocalCommand::RegMrBacked { pd, memory, access };
        match self {
            Backend::Embedded(thread) => Ok(thread.execute_local(ns, command)?.try_into()?),
        }
    }

    /// From now on, completions of the CQ `cq` come to `ring`.
    pub(crate) fn attach_ring(
        &self,
        ns: NamespaceId,
        cq: CompletionQueueId,
        ring: Arc<CompletionRing>,
    ) -> Result<()> {
        let command = LocalCommand::AttachRing { cq, ring };
        match self {
            Backend::Embedded(thread) => Ok(thread.execute_local(ns, command)?.try_into()?),
        }
    }

    /// From now on, the namespace's async events come to `channel`.
    pub(crate) fn attach_events(
        &self,
        ns: NamespaceId,
        channel: Arc<EventChannel<AsyncEvent>>,
    ) -> Result<()> {
        let command = LocalCommand::AttachEvents { channel };
        match self {
            Backend::Embedded(thread) => Ok(thread.execute_local(ns, command)?.try_into()?),
        }
    }

    /// Posts a work request (refusals come back as error completions).
    pub(crate) fn post(&self, post: Post) {
        match self {
            Backend::Embedded(thread) => thread.post(post),
        }
    }

    /// Posts work requests together.
    pub(crate) fn post_list(&self, posts: impl IntoIterator<Item = Post>) {
        match self {
            Backend::Embedded(thread) => thread.post_list(posts),
        }
    }

    /// Runs a round on this thread if the engine is free (a poll found nothing).
    pub(crate) fn drive(&self) -> bool {
        match self {
            Backend::Embedded(thread) => thread.drive(),
        }
    }

    /// A poll found completions waiting.
    pub(crate) fn note_poll(&self) {
        match self {
            Backend::Embedded(thread) => thread.note_poll(),
        }
    }

    /// The caller is about to block: someone else drives meanwhile.
    pub(crate) fn hand_off(&self) {
        match self {
            Backend::Embedded(thread) => thread.hand_off(),
        }
    }

    /// True while the engine runs.
    pub(crate) fn is_alive(&self) -> bool {
        match self {
            Backend::Embedded(thread) => thread.is_alive(),
        }
    }

    /// The bound socket addresses and the driver kind each got.
    pub(crate) fn drivers(&self) -> &[(SocketAddr, DriverKind)] {
        match self {
            Backend::Embedded(thread) => thread.drivers(),
        }
    }

    /// Ends the engine as an engine bug would (for tests of what that looks like).
    #[cfg(test)]
    pub(crate) fn inject_panic(&self, ns: NamespaceId) {
        match self {
            Backend::Embedded(thread) => {
                let _ = thread.execute_local(ns, LocalCommand::InjectPanic);
            }
        }
    }
}
