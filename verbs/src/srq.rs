//! Shared receive queues.

use std::sync::Arc;

use ferroce_transport::control::Command;
use ferroce_transport::engine::{SharedReceiveQueueId, SrqAttr};

use crate::error::Result;
use crate::pd::PdInner;
use crate::wr::RecvRequest;

pub(crate) struct SrqInner {
    pub(crate) pd: Arc<PdInner>,
    pub(crate) id: SharedReceiveQueueId,
}

impl std::fmt::Debug for SrqInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedReceiveQueue")
            .field("id", &self.id.0)
            .finish()
    }
}

impl Drop for SrqInner {
    fn drop(&mut self) {
        // QPs using the SRQ hold it, so none does by now.
        let _ = self
            .pd
            .device
            .execute::<()>(Command::DestroySrq { srq: self.id });
    }
}

/// A shared receive queue (`ibv_srq`). QPs created with it keep it alive.
#[derive(Debug, Clone)]
pub struct SharedReceiveQueue {
    pub(crate) inner: Arc<SrqInner>,
}

impl SharedReceiveQueue {
    pub(crate) fn create(pd: Arc<PdInner>, max_wr: u32, max_sge: u32) -> Result<Self> {
        let attr = SrqAttr {
            max_wr,
            max_sge,
            srq_limit: 0,
        };
        let id = pd.device.execute(Command::CreateSrq { pd: pd.pd, attr })?;
        Ok(SharedReceiveQueue {
            inner: Arc::new(SrqInner { pd, id }),
        })
    }

    /// Posts a receive (`ibv_post_srq_recv`); refused synchronously when full.
    pub fn post_recv(&self, wr: RecvRequest) -> Result<()> {
        self.inner.pd.device.execute(Command::PostSrqRecv {
            srq: self.inner.id,
            wr: wr.into_engine(),
        })
    }

    /// Arms the limit event (`ibv_modify_srq` with `IBV_SRQ_LIMIT`); 0 disarms.
    pub fn modify(&self, srq_limit: u32) -> Result<()> {
        self.inner.pd.device.execute(Command::ModifySrq {
            srq: self.inner.id,
            srq_limit,
        })
    }

    /// The engine's identifier of this SRQ, as async events (`SrqLimitReached`) name it.
    pub fn id(&self) -> SharedReceiveQueueId {
        self.inner.id
    }

    /// Attributes (`ibv_query_srq`).
    pub fn query(&self) -> Result<SrqAttr> {
        self.inner
            .pd
            .device
            .execute(Command::QuerySrq { srq: self.inner.id })
    }
}
