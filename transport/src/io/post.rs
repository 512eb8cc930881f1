//! Work requests applications post ([`Post`]), and what becomes of one the engine
//! refuses when it takes it: an error completion on the QP's CQ (status `LocQpOpErr`,
//! `vendor_err` one of the `POST_ERR_*` codes), never more than the CQ holds.

use std::sync::Arc;

use ferroce_wire::Qpn;

use super::core::Core;
use super::rings::CompletionRing;
use crate::engine::{NamespaceId, RecvWr, SendWr, VerbsError, WcOpcode, WcStatus, WorkCompletion};

/// `vendor_err` of the error completion for a work request the engine refused at post
/// time: the QP state does not accept it.
pub const POST_ERR_STATE: u32 = 0x100;
/// … the work queue is full.
pub const POST_ERR_QUEUE_FULL: u32 = 0x101;
/// … a limit (SGEs, inline bytes) is exceeded.
pub const POST_ERR_LIMIT: u32 = 0x102;
/// … any other refusal (invalid argument, unknown QP).
pub const POST_ERR_OTHER: u32 = 0x103;

/// Work an application posts to a QP; a refusal becomes an error completion in `errors`
/// (status `LocQpOpErr`, `vendor_err` one of the `POST_ERR_*` codes).
#[derive(Debug)]
pub enum Post {
    /// `post_send`.
    Send {
        /// Namespace.
        ns: NamespaceId,
        /// QP.
        qpn: Qpn,
        /// The work request.
        wr: SendWr,
        /// The QP's send CQ.
        errors: Arc<CompletionRing>,
    },
    /// `post_recv`.
    Recv {
        /// Namespace.
        ns: NamespaceId,
        /// QP.
        qpn: Qpn,
        /// The work request.
        wr: RecvWr,
        /// The QP's receive CQ.
        errors: Arc<CompletionRing>,
    },
}

impl Core {
    /// Hands `post` to the engine; a refusal becomes an error completion.
    pub(super) fn apply(&mut self, post: Post) {
        let (result, wr_id, opcode, qpn, errors) = match post {
            Post::Send {
                ns,
                qpn,
                wr,
                errors,
            } => {
                let wr_id = wr.wr_id;
                let opcode = wr.op.wc_opcode();
                (
                    self.engine.post_send(ns, qpn, wr),
                    wr_id,
                    opcode,
                    qpn,
                    errors,
                )
            }
            Post::Recv {
                ns,
                qpn,
                wr,
                errors,
            } => {
                let wr_id = wr.wr_id;
                (
                    self.engine.post_recv(ns, qpn, wr),
                    wr_id,
                    WcOpcode::Recv,
                    qpn,
                    errors,
                )
            }
        };
        if let Err(error) = result {
            self.counters.refused_posts += 1;
            let vendor_err = match error {
                VerbsError::InvalidState(_) => POST_ERR_STATE,
                VerbsError::QueueFull => POST_ERR_QUEUE_FULL,
                VerbsError::LimitExceeded(_) => POST_ERR_LIMIT,
                _ => POST_ERR_OTHER,
            };
            // An application posting into a full queue without polling must not grow
            // the CQ past its depth.
            if errors.room() == 0 {
                self.counters.lost_post_errors += 1;
                tracing::warn!(qpn = %qpn, wr_id, "a refused post's error completion found its CQ full; dropped");
                return;
            }
            errors.deliver([WorkCompletion {
                wr_id,
                status: WcStatus::LocQpOpErr,
                opcode,
                byte_len: 0,
                imm_data: None,
                invalidated_rkey: None,
                qp_num: qpn,
                src_qp: Qpn::new(0),
                grh: false,
                pkey_index: 0,
                vendor_err,
            }]);
        }
    }
}
