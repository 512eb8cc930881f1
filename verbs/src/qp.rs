//! Queue pairs.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use ferroce_transport::control::Command;
use ferroce_transport::engine::{
    AccessFlags, AddressVector, PathMtu, QpAttr, QpCap, QpInfo, QpInitAttr, QpState, QpType,
    VerbsError,
};
use ferroce_transport::io::thread::Post;
use ferroce_transport::wire::{Psn, Qpn};

use crate::cq::{CompletionQueue, CqInner};
use crate::error::{Error, PostListError, Result};
use crate::pd::PdInner;
use crate::srq::{SharedReceiveQueue, SrqInner};
use crate::wr::{RecvRequest, SendRequest};

/// What `create_qp` needs (`ibv_qp_init_attr`).
#[derive(Debug, Clone, Copy)]
pub struct QpInitAttributes<'a> {
    /// RC, UC or UD.
    pub qp_type: QpType,
    /// CQ for send completions.
    pub send_cq: &'a CompletionQueue,
    /// CQ for receive completions.
    pub recv_cq: &'a CompletionQueue,
    /// Receives come from this SRQ instead of the QP's own queue.
    pub srq: Option<&'a SharedReceiveQueue>,
    /// Queue sizes.
    pub cap: QpCap,
    /// Every send WR completes, signaled or not.
    pub sq_sig_all: bool,
}

impl<'a> QpInitAttributes<'a> {
    /// `qp_type` with one CQ for both queues, 256 WRs and 4 SGEs each way, 64 inline bytes.
    pub fn new(qp_type: QpType, cq: &'a CompletionQueue) -> QpInitAttributes<'a> {
        QpInitAttributes {
            qp_type,
            send_cq: cq,
            recv_cq: cq,
            srq: None,
            cap: QpCap {
                max_send_wr: 256,
                max_recv_wr: 256,
                max_send_sge: 4,
                max_recv_sge: 4,
                max_inline_data: 64,
            },
            sq_sig_all: false,
        }
    }
}

/// The other end of a connection, as an out-of-band exchange tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteEndpoint {
    /// The peer's GID.
    pub address: IpAddr,
    /// The peer's QPN.
    pub qpn: Qpn,
    /// The peer's first send PSN (our expected receive PSN).
    pub psn: Psn,
}

/// A queue pair (`ibv_qp`). Posting never blocks and needs no other thread: when the
/// device's engine is free, the caller's thread runs a round of it (so the request
/// reaches the kernel before `post_send` returns); when another thread is running one,
/// the request goes into a lock-free queue that thread empties before it lets go. A
/// work request the engine refuses when it takes it (a full queue, a QP that entered
/// the error state meanwhile) completes with `WcStatus::LocQpOpErr` and a `vendor_err`
/// from `ferroce_transport::io::thread`'s `POST_ERR_*` codes. Destroyed when dropped
/// (outstanding work is dropped with it).
#[derive(Debug)]
pub struct QueuePair {
    pd: Arc<PdInner>,
    send_cq: Arc<CqInner>,
    recv_cq: Arc<CqInner>,
    srq: Option<Arc<SrqInner>>,
    qpn: Qpn,
    qp_type: QpType,
    cap: QpCap,
    /// The state as last set by `modify` or seen by `query` (the engine may move an RC
    /// QP to ERR on its own; then posts complete with flush errors).
    state: AtomicU8,
}

impl QueuePair {
    pub(crate) fn create(pd: Arc<PdInner>, attr: &QpInitAttributes<'_>) -> Result<QueuePair> {
        for cq in [attr.send_cq, attr.recv_cq] {
            if !Arc::ptr_eq(&cq.inner.device, &pd.device) {
                return Err(Error::InvalidArgument("CQ of another device"));
            }
        }
        if let Some(srq) = attr.srq {
            if !Arc::ptr_eq(&srq.inner.pd, &pd) {
                return Err(Error::InvalidArgument("SRQ of another protection domain"));
            }
        }
        let init = QpInitAttr {
            qp_type: attr.qp_type,
            pd: pd.pd,
            send_cq: attr.send_cq.inner.id,
            recv_cq: attr.recv_cq.inner.id,
            srq: attr.srq.map(|s| s.inner.id),
            cap: attr.cap,
            sq_sig_all: attr.sq_sig_all,
        };
        let qpn = pd.device.execute(Command::CreateQp { init })?;
        Ok(QueuePair {
            send_cq: attr.send_cq.inner.clone(),
            recv_cq: attr.recv_cq.inner.clone(),
            srq: attr.srq.map(|s| s.inner.clone()),
            pd,
            qpn,
            qp_type: attr.qp_type,
            cap: attr.cap,
            state: AtomicU8::new(QpState::Reset.ibv_code()),
        })
    }

    /// The QP number.
    pub fn qp_num(&self) -> Qpn {
        self.qpn
    }

    /// The transport service.
    pub fn qp_type(&self) -> QpType {
        self.qp_type
    }

    /// Queue sizes.
    pub fn cap(&self) -> QpCap {
        self.cap
    }

    /// The state as last modified or queried.
    pub fn state(&self) -> QpState {
        QpState::from_ibv_code(self.state.load(Ordering::SeqCst)).unwrap_or(QpState::Err)
    }

    /// Changes attributes and state (`ibv_modify_qp`): the set fields of `attr` are the
    /// attribute mask.
    pub fn modify(&self, attr: &QpAttr) -> Result<()> {
        self.pd.device.execute::<()>(Command::ModifyQp {
            qpn: self.qpn,
            attr: *attr,
        })?;
        if let Some(state) = attr.state {
            self.state.store(state.ibv_code(), Ordering::SeqCst);
        }
        Ok(())
    }

    /// State and every attribute (`ibv_query_qp`).
    pub fn query(&self) -> Result<QpInfo> {
        let info: QpInfo = self.pd.device.execute(Command::QueryQp { qpn: self.qpn })?;
        self.state.store(info.state.ibv_code(), Ordering::SeqCst);
        Ok(info)
    }

    /// RESET → INIT → RTR → RTS for an RC or UC QP, as rc_pingpong does: remote access
    /// `access`, path MTU `mtu`, our first send PSN `local_psn`, and the peer's QPN,
    /// address and first PSN. RC gets timeout 14, 7 retries, infinite RNR retries and
    /// 16 outstanding READ/atomics each way.
    pub fn connect(
        &self,
        remote: RemoteEndpoint,
        local_psn: Psn,
        mtu: PathMtu,
        access: AccessFlags,
    ) -> Result<()> {
        let rc = self.qp_type == QpType::Rc;
        if self.qp_type == QpType::Ud {
            return Err(Error::InvalidArgument("connect is for RC and UC QPs"));
        }
        self.modify(&QpAttr {
            state: Some(QpState::Init),
            pkey_index: Some(0),
            port_num: Some(1),
            access: Some(access),
            ..QpAttr::default()
        })?;
        self.modify(&QpAttr {
            state: Some(QpState::Rtr),
            path_mtu: Some(mtu),
            dest_qpn: Some(remote.qpn),
            rq_psn: Some(remote.psn),
            max_dest_rd_atomic: rc.then_some(16),
            min_rnr_timer: rc.then_some(12),
            av: Some(AddressVector {
                remote: remote.address,
                local: None,
            }),
            ..QpAttr::default()
        })?;
        self.modify(&QpAttr {
            state: Some(QpState::Rts),
            sq_psn: Some(local_psn),
            timeout: rc.then_some(14),
            retry_cnt: rc.then_some(7),
            rnr_retry: rc.then_some(7),
            max_rd_atomic: rc.then_some(16),
            ..QpAttr::default()
        })
    }

    /// RESET → INIT → RTR → RTS for a UD QP with Q_Key `qkey`.
    pub fn activate_ud(&self, qkey: u32, local_psn: Psn) -> Result<()> {
        if self.qp_type != QpType::Ud {
            return Err(Error::InvalidArgument("activate_ud is for UD QPs"));
        }
        self.modify(&QpAttr {
            state: Some(QpState::Init),
            pkey_index: Some(0),
            port_num: Some(1),
            qkey: Some(qkey),
            ..QpAttr::default()
        })?;
        self.modify(&QpAttr {
            state: Some(QpState::Rtr),
            ..QpAttr::default()
        })?;
        self.modify(&QpAttr {
            state: Some(QpState::Rts),
            sq_psn: Some(local_psn),
            ..QpAttr::default()
        })
    }

    /// Posts a send work request (`ibv_post_send`). Refused here when the QP is not
    /// ready to send or the request has too many SGEs.
    pub fn post_send(&self, wr: SendRequest) -> Result<()> {
        self.post_send_list([wr]).map_err(|refused| refused.error)
    }

    /// Posts a list of send work requests at once (`ibv_post_send` with a chain): all
    /// are checked first, so either every one is posted or none, and they reach the
    /// engine together, which sends them in one batch. A refusal names the request
    /// ([`PostListError::bad_wr`], an index into the list).
    pub fn post_send_list(
        &self,
        wrs: impl IntoIterator<Item = SendRequest>,
    ) -> std::result::Result<(), PostListError> {
        let refuse = |bad_wr: usize, error: Error| PostListError { bad_wr, error };
        match self.state() {
            QpState::Rts | QpState::Sqd | QpState::Err => {}
            state => return Err(refuse(0, VerbsError::InvalidState(state).into())),
        }
        let wrs: Vec<SendRequest> = wrs.into_iter().collect();
        if let Some(bad_wr) = wrs
            .iter()
            .position(|wr| wr.sge_count() > self.cap.max_send_sge as usize)
        {
            return Err(refuse(
                bad_wr,
                VerbsError::LimitExceeded("max_send_sge").into(),
            ));
        }
        if !self.pd.device.backend.is_alive() {
            return Err(refuse(0, Error::DeviceStopped));
        }
        let device = &self.pd.device;
        device
            .backend
            .post_list(wrs.into_iter().map(|wr| Post::Send {
                ns: device.ns,
                qpn: self.qpn,
                wr: wr.into_engine(),
                errors: self.send_cq.ring.clone(),
            }));
        Ok(())
    }

    /// Posts a receive work request (`ibv_post_recv`). Refused here for a QP in RESET or
    /// attached to an SRQ, or with too many SGEs.
    pub fn post_recv(&self, wr: RecvRequest) -> Result<()> {
        if self.srq.is_some() {
            return Err(VerbsError::InvalidArgument("QP uses an SRQ").into());
        }
        if self.state() == QpState::Reset {
            return Err(VerbsError::InvalidState(QpState::Reset).into());
        }
        if wr.sge_count() > self.cap.max_recv_sge as usize {
            return Err(VerbsError::LimitExceeded("max_recv_sge").into());
        }
        if !self.pd.device.backend.is_alive() {
            return Err(Error::DeviceStopped);
        }
        self.pd.device.backend.post(Post::Recv {
            ns: self.pd.device.ns,
            qpn: self.qpn,
            wr: wr.into_engine(),
            errors: self.recv_cq.ring.clone(),
        });
        Ok(())
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        let _ = self
            .pd
            .device
            .execute::<()>(Command::DestroyQp { qpn: self.qpn });
    }
}
