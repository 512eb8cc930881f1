//! Shared receive queues.

use std::sync::Arc;

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
        let id = self.id;
        let _ = self
            .pd
            .device
            .call(move |core, ns| core.engine.destroy_srq(ns, id));
    }
}

/// A shared receive queue (`ibv_srq`). QPs created with it keep it alive.
#[derive(Debug, Clone)]
pub struct SharedReceiveQueue {
    pub(crate) inner: Arc<SrqInner>,
}

impl SharedReceiveQueue {
    pub(crate) fn create(pd: Arc<PdInner>, max_wr: u32, max_sge: u32) -> Result<Self> {
        let pd_id = pd.pd;
        let attr = SrqAttr {
            max_wr,
            max_sge,
            srq_limit: 0,
        };
        let id = pd
            .device
            .call(move |core, ns| core.engine.create_srq(ns, pd_id, attr))??;
        Ok(SharedReceiveQueue {
            inner: Arc::new(SrqInner { pd, id }),
        })
    }

    /// Posts a receive (`ibv_post_srq_recv`); refused synchronously when full.
    pub fn post_recv(&self, wr: RecvRequest) -> Result<()> {
        let id = self.inner.id;
        let wr = wr.into_engine();
        self.inner
            .pd
            .device
            .call(move |core, ns| core.post_srq_recv(ns, id, wr))??;
        Ok(())
    }

    /// Arms the limit event (`ibv_modify_srq` with `IBV_SRQ_LIMIT`); 0 disarms.
    pub fn modify(&self, srq_limit: u32) -> Result<()> {
        let id = self.inner.id;
        self.inner
            .pd
            .device
            .call(move |core, ns| core.engine.modify_srq(ns, id, srq_limit))??;
        Ok(())
    }

    /// The engine's identifier of this SRQ, as async events (`SrqLimitReached`) name it.
    pub fn id(&self) -> SharedReceiveQueueId {
        self.inner.id
    }

    /// Attributes (`ibv_query_srq`).
    pub fn query(&self) -> Result<SrqAttr> {
        let id = self.inner.id;
        Ok(self
            .inner
            .pd
            .device
            .call(move |core, ns| core.engine.query_srq(ns, id))??)
    }
}
