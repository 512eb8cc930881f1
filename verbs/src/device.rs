//! Opening a device: an engine thread with one UDP driver per GID address.

use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use ferroce_transport::control::{Command, PortStatus, Reply, ReplyError};
use ferroce_transport::engine::{
    AsyncEvent, Counters, DeviceAttributes, DeviceLimits, EngineConfig, NamespaceId, PathMtu,
    SourcePortPolicy,
};
use ferroce_transport::io::thread::{
    EngineThread, EngineThreadConfig, EventChannel, ThreadCounters,
};
use ferroce_transport::io::{DriverKind, ReceiveIntegrity};

use crate::backend::Backend;
use crate::cq::{CompletionChannel, CompletionQueue};
use crate::error::{Error, Result};
use crate::pd::ProtectionDomain;

/// How to open a [`Device`]. `Default` is [`DeviceConfig::loopback`]; change fields of
/// [`DeviceConfig::with_address`] or of the default for other settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// The GIDs: one UDP socket is bound per address (port [`DeviceConfig::port`]).
    pub addresses: Vec<IpAddr>,
    /// UDP port (RoCEv2: 4791). Peers are always sent to 4791.
    pub port: u16,
    /// Packet driver (io_uring with fallback by default).
    pub driver: DriverKind,
    /// How received IPv4 datagrams' ICRCs are checked (see [`ReceiveIntegrity`]).
    pub receive_integrity: ReceiveIntegrity,
    /// Resource limits.
    pub limits: DeviceLimits,
    /// The port's active MTU.
    pub active_mtu: PathMtu,
    /// How long the engine thread polls with nothing to do before it blocks (latency
    /// against CPU).
    pub busy_poll: Duration,
    /// How long an RC responder may hold a plain ACK to send it with its next reply or
    /// fold it into the next ACK (`EngineConfig::ack_delay`; zero: one ACK per AckReq,
    /// as rxe). Completions of the peer's signaled requests wait up to this long.
    pub ack_delay: Duration,
    /// Seed of the key generator (`None`: random per device).
    pub seed: Option<u64>,
}

impl DeviceConfig {
    /// A device on `address`:4791 with default limits and a 1024-byte MTU.
    pub fn with_address(address: IpAddr) -> DeviceConfig {
        DeviceConfig {
            addresses: vec![address],
            port: ferroce_transport::wire::ROCEV2_UDP_PORT,
            driver: DriverKind::Auto,
            receive_integrity: ReceiveIntegrity::default(),
            limits: DeviceLimits::default(),
            active_mtu: PathMtu::Mtu1024,
            busy_poll: Duration::from_micros(50),
            ack_delay: Duration::from_micros(20),
            seed: None,
        }
    }

    /// The loopback device: 127.0.0.1:4791. Needs no root and no configuration.
    pub fn loopback() -> DeviceConfig {
        DeviceConfig::with_address(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }
}

impl Default for DeviceConfig {
    /// [`DeviceConfig::loopback`]: 127.0.0.1:4791, default limits, MTU 1024.
    fn default() -> DeviceConfig {
        DeviceConfig::loopback()
    }
}

/// Port state (`ibv_port_state`): a ferroce port is active while its sockets' addresses
/// are on a working link (an interface up with carrier), checked about once a second;
/// each change is also an async event (`PortActive`, `PortErr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortState {
    /// Active.
    Active,
    /// Down (`IBV_PORT_DOWN`): an address is gone or its link is down.
    Down,
}

/// What `query_port` reports (`ibv_port_attr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortAttributes {
    /// State.
    pub state: PortState,
    /// Largest MTU the port supports.
    pub max_mtu: PathMtu,
    /// The port's active MTU.
    pub active_mtu: PathMtu,
    /// Entries in the GID table.
    pub gid_tbl_len: u32,
    /// P_Key table entries (one partition).
    pub pkey_tbl_len: u16,
}

pub(crate) struct DeviceInner {
    pub(crate) backend: Backend,
    pub(crate) ns: NamespaceId,
    pub(crate) config: DeviceConfig,
    /// The namespace's async events, moved here by the engine's rounds.
    pub(crate) events: Arc<EventChannel<AsyncEvent>>,
    /// `DeviceFatal` was handed out (once, after the engine thread ended).
    pub(crate) fatal_reported: AtomicBool,
}

impl std::fmt::Debug for DeviceInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("addresses", &self.config.addresses)
            .field("drivers", &self.backend.drivers())
            .finish()
    }
}

impl DeviceInner {
    /// Executes `command` on the device's namespace and returns what its reply carries
    /// (`T`: the payload of the reply kind the command gets, `()` for `Done`).
    pub(crate) fn execute<T>(&self, command: Command) -> Result<T>
    where
        T: TryFrom<Reply, Error = ReplyError>,
    {
        Ok(self.backend.execute(self.ns, command)?.try_into()?)
    }
}

/// An open RDMA device (`ibv_context`): an engine thread owning the RoCEv2 engine and
/// one UDP socket per GID. Every handle created from it keeps it alive; the thread
/// stops when the device and all its handles are dropped.
#[derive(Debug, Clone)]
pub struct Device {
    pub(crate) inner: Arc<DeviceInner>,
}

impl Device {
    /// Binds the addresses and starts the engine thread.
    pub fn open(mut config: DeviceConfig) -> Result<Device> {
        // An IPv4-mapped GID is the IPv4 address: bind an IPv4 socket for it.
        for address in &mut config.addresses {
            *address = address.to_canonical();
        }
        if config.addresses.is_empty() {
            return Err(Error::InvalidArgument(
                "a device needs at least one address",
            ));
        }
        let seed = config.seed.unwrap_or_else(|| {
            // A per-process random key: rkeys must not be guessable.
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        });
        let engine = EngineConfig {
            limits: config.limits,
            active_mtu: config.active_mtu,
            default_gids: config.addresses.clone(),
            // The sockets send from their bound port, and the ICRC covers it.
            udp_src_port: SourcePortPolicy::Fixed(config.port),
            ack_delay: config.ack_delay,
        };
        let thread = EngineThread::spawn(EngineThreadConfig {
            engine,
            seed,
            addresses: config
                .addresses
                .iter()
                .map(|ip| SocketAddr::new(*ip, config.port))
                .collect(),
            driver: config.driver,
            receive_integrity: config.receive_integrity,
            busy_poll: config.busy_poll,
            name: format!("ferroce-{}", config.addresses[0]),
        })?;
        let backend = Backend::Embedded(thread);
        let ns = NamespaceId::DEFAULT;
        let events = Arc::new(EventChannel::new());
        backend.attach_events(ns, events.clone())?;
        Ok(Device {
            inner: Arc::new(DeviceInner {
                backend,
                ns,
                config,
                events,
                fatal_reported: AtomicBool::new(false),
            }),
        })
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &DeviceConfig {
        &self.inner.config
    }

    /// The bound socket addresses and the driver kind each got.
    pub fn drivers(&self) -> Vec<(SocketAddr, DriverKind)> {
        self.inner.backend.drivers().to_vec()
    }

    /// Device attributes and limits (`ibv_query_device`).
    pub fn query_device(&self) -> Result<DeviceAttributes> {
        self.inner.execute(Command::QueryDevice)
    }

    /// Port attributes (`ibv_query_port`); ferroce devices have one port, number 1.
    pub fn query_port(&self) -> Result<PortAttributes> {
        let port: PortStatus = self.inner.execute(Command::QueryPort)?;
        Ok(PortAttributes {
            state: if port.active {
                PortState::Active
            } else {
                PortState::Down
            },
            max_mtu: PathMtu::Mtu4096,
            active_mtu: port.active_mtu,
            gid_tbl_len: port.gid_tbl_len,
            pkey_tbl_len: 1,
        })
    }

    /// The GID at `index` (`ibv_query_gid`). RoCEv2 GIDs are IP addresses (IPv4 ones are
    /// IPv4-mapped on the wire).
    pub fn query_gid(&self, index: u32) -> Result<IpAddr> {
        let gids: Vec<IpAddr> = self.inner.execute(Command::QueryGids)?;
        gids.get(index as usize)
            .copied()
            .ok_or(Error::InvalidArgument("GID index"))
    }

    /// Allocates a protection domain (`ibv_alloc_pd`).
    pub fn alloc_pd(&self) -> Result<ProtectionDomain> {
        ProtectionDomain::alloc(self.inner.clone())
    }

    /// A completion channel (`ibv_create_comp_channel`).
    pub fn create_comp_channel(&self) -> CompletionChannel {
        CompletionChannel {
            inner: Arc::new(EventChannel::new()),
        }
    }

    /// A completion queue of `cqe` entries (`ibv_create_cq`), reporting armed
    /// notifications to `channel`.
    pub fn create_cq(
        &self,
        cqe: u32,
        channel: Option<&CompletionChannel>,
    ) -> Result<CompletionQueue> {
        CompletionQueue::create(self.inner.clone(), cqe, channel)
    }

    /// The engine's counters and the engine thread's own.
    pub fn counters(&self) -> Result<(Counters, ThreadCounters)> {
        self.inner.execute(Command::QueryCounters)
    }
}
