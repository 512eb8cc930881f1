//! perftest's exchange (`ib_{write,read,send,atomic}_{bw,lat}`), as in perftest
//! 4.5-0.17 (Debian 12), whose version string is `"6.06"`.
//!
//! Source: perftest `src/perftest_communication.c` (`exchange_versions`,
//! `check_version_compatibility`, `check_sys_data`, `check_mtu`, `ctx_hand_shake`,
//! `ethernet_write_keys`/`ethernet_read_keys`, `ctx_xchg_data_ethernet`,
//! `xchg_bw_reports`, `ctx_close_connection`), `perftest_communication.h` (`KEY_*`
//! formats and sizes), and the order of calls in each tool's `main`
//! (`write_bw.c`, `read_bw.c`, `atomic_bw.c`, `send_bw.c`, `write_lat.c`, `read_lat.c`,
//! `atomic_lat.c`, `send_lat.c`). Confirmed byte for byte by `testdata/pcaps/`
//! `write_bw.pcap`, `read_bw.pcap`, `atomic_bw.pcap`, `uc_write_bw.pcap`, `send_bw.pcap`
//! and `ud_send_bw.pcap` (every TCP payload; see `tools/tests/exchange_perftest.rs`), and
//! live against perftest 4.5-0.17 in the rxe guest (`tools/examples/exchange_live.rs`): whole
//! sessions as the client of `ib_{write,read,atomic}_bw` and `ib_{read,atomic}_lat`
//! servers (which printed ferroce's report and exited 0), and the exchanges up to the
//! traffic in both roles for `ib_send_bw`, `ib_write_lat`, `ib_send_lat`, and as client
//! of `ib_write_bw -b`. Not covered by either: the per-port report, several QPs (`-q`).
//!
//! # Exchange primitive
//! Every step is `ctx_xchg_data`: the client writes its message then reads the
//! server's; the server reads, then writes. Each message is one fixed-size `write()`,
//! read by one `read()` that must return it whole. Only the plain-socket path is
//! covered (not `-R`/`--rdma_cm`, which sends the same content over RDMA CM).
//!
//! # Messages, in order
//! 1. **Version** (16 bytes): perftest's version string, NUL-padded (`"6.06"` + 12
//!    NULs). Each side then refuses a peer older than 5.70 (`atof`).
//! 2. **System data** (two messages, 4 bytes each, big-endian `int`): `cycle_buffer`
//!    (page size, 4096: alignment and size of each QP's buffer slot) and
//!    `cache_line_size` (64). Both sides keep the larger value of each.
//! 3. **MTU** (2 bytes): the port's active `ibv_mtu` as `"%d"` plus NUL (`"3\0"` =
//!    1024). Both sides use the smaller MTU.
//! 4. **Keys** (`ctx_hand_shake`): with a GID (always on RoCE, where perftest forces a
//!    GID index) 108 bytes, `"%04x:%04x:%06x:%06x:%08x:%016llx:"` + 16 × `"%02x:"` +
//!    `"%08x:"` + NUL = LID : OUT_READS : QPN : PSN : RKEY : VADDR : GID bytes : SRQN;
//!    without a GID (InfiniBand without `-x`) 59 bytes,
//!    `"%04x:%04x:%06x:%06x:%08x:%016llx:%08x"` and NUL. Which size to read follows the reader's own setting, so both sides must agree.
//!    The same message is sent again for every later synchronisation ("barrier").
//! 5. After the run, bandwidth tests exchange a **report** (`xchg_bw_reports`), field
//!    by field, each its own 8-byte exchange, big-endian: size (`unsigned long`),
//!    iterations (`uint64_t` for peers ≥ 5.33), BW peak, BW average, message rate
//!    (IEEE doubles; MiB/s — Gb/s with `--report_gbits` — and Mpps), and with
//!    `--report-per-port` four more: BW average port 1, message rate port 1, BW average
//!    port 2, message rate port 2. In a one-way test the server's report is an
//!    uninitialised stack struct (garbage in every capture); the server prints the
//!    client's.
//! 6. **Close** (`ctx_close_connection`): one more key exchange, then each side writes
//!    `"done\0"` and closes without reading (so the two `done`s cross, and the closes
//!    end in RSTs).
//!
//! The test parameters (size, iterations, connection type, verb, duplex, …) are never
//! exchanged: both perftest sides must be started with matching options. The size and
//! iteration count appear only in the report. [`TestSpec::plan`] gives, per tool, how
//! many key exchanges come before the QPs are connected, how many barriers follow
//! before traffic, and what follows the run; it covers the default run mode (fixed
//! iteration count; not `-a`, `--run_infinitely`, or `-D` with `ib_send_bw -b`).

use std::io::{self, Read, Write};
use std::net::Ipv6Addr;

use ferroce_transport::engine::PathMtu;
use ferroce_wire::psn::Psn;
use ferroce_wire::{Qpn, Rkey};

use super::{expect_byte, expect_length, parse_hex, put_hex, read_into, write_message};
use super::{MessageError, OobError, Result};

/// The version string of perftest 4.5-0.17 (Debian 12), sent by ferroce. Keep it
/// below 6.28: perftest 6.28 and later (upstream `negotiate_params`) add an exchange of
/// a parameter struct when the peer announces 6.28 or more, which this module does not
/// speak; to an older announced version they fall back to this exchange (read in the
/// source, not tested).
pub const PERFTEST_VERSION: &str = "6.06";
/// The oldest version perftest (and ferroce) accepts from a peer.
pub const MINIMUM_VERSION: &str = "5.70";
const MINIMUM_VERSION_NUMBER: f64 = 5.70;
/// Size of the version message.
pub const VERSION_LEN: usize = 16;
/// Size of the key message without a GID, NUL included.
pub const KEYS_LEN: usize = 59;
/// Size of the key message with a GID, NUL included.
pub const KEYS_WITH_GID_LEN: usize = 108;
/// The last message of each side.
pub const DONE_MESSAGE: [u8; 5] = *b"done\0";

const VERSION: &str = "perftest version message";
const CYCLE_BUFFER: &str = "perftest cycle buffer (page size) message";
const CACHE_LINE: &str = "perftest cache line size message";
const MTU: &str = "perftest MTU message";
const KEYS: &str = "perftest key message";
const REPORT: &str = "perftest bandwidth report field";
const DONE: &str = "perftest \"done\" message";

type CallbackResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Which end of the TCP connection: the client (given the server's name) always writes
/// first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Connects; writes first in every exchange.
    Client,
    /// Listens; reads first in every exchange.
    Server,
}

/// A perftest version string (at most 15 printable ASCII bytes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PerftestVersion(String);

impl PerftestVersion {
    /// A version string; `None` unless it has 1 to 15 printable ASCII bytes.
    pub fn new(text: &str) -> Option<PerftestVersion> {
        let valid = (1..VERSION_LEN).contains(&text.len())
            && text.bytes().all(|byte| byte.is_ascii_graphic());
        valid.then(|| PerftestVersion(text.to_owned()))
    }

    /// The version ferroce announces ([`PERFTEST_VERSION`]).
    pub fn ferroce() -> PerftestVersion {
        PerftestVersion(PERFTEST_VERSION.to_owned())
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number perftest compares (`atof`): the longest leading decimal number, 0 if
    /// there is none.
    pub fn number(&self) -> f64 {
        let text = self.0.as_str();
        let integer_digits = text.bytes().take_while(u8::is_ascii_digit).count();
        let mut end = integer_digits;
        if text.as_bytes().get(end) == Some(&b'.') {
            end += 1 + text[end + 1..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
        }
        text[..end].parse().unwrap_or(0.0)
    }

    /// Whether perftest would talk to a peer of this version (≥ 5.70).
    pub fn is_compatible(&self) -> bool {
        self.number() >= MINIMUM_VERSION_NUMBER
    }

    /// The 16-byte message: the string, NUL-padded (perftest's `strncpy`).
    pub fn encode(&self) -> [u8; VERSION_LEN] {
        let mut out = [0u8; VERSION_LEN];
        out[..self.0.len()].copy_from_slice(self.0.as_bytes());
        out
    }

    /// Parses a 16-byte version message. perftest reads it as a C string, so the bytes
    /// after the first NUL are ignored; there must be a NUL, and the string must be
    /// printable ASCII.
    pub fn decode(bytes: &[u8]) -> std::result::Result<PerftestVersion, MessageError> {
        expect_length(bytes, VERSION_LEN, VERSION)?;
        let Some(end) = bytes.iter().position(|&byte| byte == 0) else {
            return Err(MessageError::Value {
                message: VERSION,
                field: "version",
                reason: "has no terminating NUL",
            });
        };
        if let Some(offset) = bytes[..end]
            .iter()
            .position(|byte| !byte.is_ascii_graphic())
        {
            return Err(MessageError::Layout {
                message: VERSION,
                offset,
                found: bytes[offset],
                expected: "printable ASCII",
            });
        }
        // Printable ASCII is valid UTF-8; an empty string is refused as well.
        match std::str::from_utf8(&bytes[..end])
            .ok()
            .and_then(PerftestVersion::new)
        {
            Some(version) => Ok(version),
            None => Err(MessageError::Value {
                message: VERSION,
                field: "version",
                reason: "is empty",
            }),
        }
    }
}

impl std::fmt::Display for PerftestVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which key message layout both sides use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyFormat {
    /// 108 bytes with the GID: RoCE (perftest always picks a GID index there).
    #[default]
    WithGid,
    /// 59 bytes without GID: InfiniBand without `-x`.
    WithoutGid,
}

impl KeyFormat {
    /// Message size, NUL included.
    pub const fn message_len(self) -> usize {
        match self {
            KeyFormat::WithGid => KEYS_WITH_GID_LEN,
            KeyFormat::WithoutGid => KEYS_LEN,
        }
    }
}

/// One QP's connection data (perftest's `struct pingpong_dest`, as sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PerftestKeys {
    /// Port LID; 0 on RoCE.
    pub lid: u16,
    /// The sender's outstanding RDMA READ/atomic limit (`-o`, default the device's
    /// `max_qp_rd_atom`: 0x80 on rxe for READ/atomic tests, 1 otherwise). Only printed
    /// by the peer.
    pub out_reads: u16,
    /// The sender's QP number.
    pub qpn: Qpn,
    /// The sender's first PSN.
    pub psn: Psn,
    /// The rkey of the sender's buffer (0 in SEND tests, which do not register it for
    /// remote access).
    pub rkey: Rkey,
    /// Address of the sender's buffer: the target of RDMA WRITE/READ/atomics.
    pub vaddr: u64,
    /// The sender's GID; `::` in the GID-less format.
    pub gid: Ipv6Addr,
    /// The sender's XRC SRQ number; 0 unless `--use_xrc`.
    pub srqn: u32,
}

// Offsets shared by both key layouts.
const KEY_LID: usize = 0;
const KEY_OUT_READS: usize = 5;
const KEY_QPN: usize = 10;
const KEY_PSN: usize = 17;
const KEY_RKEY: usize = 24;
const KEY_VADDR: usize = 33;
/// Where the GID bytes (with a GID) or the SRQN (without) start.
const KEY_TAIL: usize = 50;
const KEY_GID_SRQN: usize = KEY_TAIL + 16 * 3;

impl PerftestKeys {
    /// The key message in `format`.
    pub fn encode(&self, format: KeyFormat) -> Vec<u8> {
        let mut out = vec![0u8; format.message_len()];
        put_hex(&mut out[KEY_LID..], u64::from(self.lid), 4);
        put_hex(&mut out[KEY_OUT_READS..], u64::from(self.out_reads), 4);
        put_hex(&mut out[KEY_QPN..], u64::from(self.qpn.value()), 6);
        put_hex(&mut out[KEY_PSN..], u64::from(self.psn.value()), 6);
        put_hex(&mut out[KEY_RKEY..], u64::from(self.rkey.0), 8);
        put_hex(&mut out[KEY_VADDR..], self.vaddr, 16);
        for offset in [
            KEY_OUT_READS,
            KEY_QPN,
            KEY_PSN,
            KEY_RKEY,
            KEY_VADDR,
            KEY_TAIL,
        ] {
            out[offset - 1] = b':';
        }
        match format {
            KeyFormat::WithoutGid => put_hex(&mut out[KEY_TAIL..], u64::from(self.srqn), 8),
            KeyFormat::WithGid => {
                for (index, byte) in self.gid.octets().iter().enumerate() {
                    let offset = KEY_TAIL + 3 * index;
                    put_hex(&mut out[offset..], u64::from(*byte), 2);
                    out[offset + 2] = b':';
                }
                put_hex(&mut out[KEY_GID_SRQN..], u64::from(self.srqn), 8);
                out[KEY_GID_SRQN + 8] = b':';
            }
        }
        out
    }

    /// Parses a key message; its length (59 or 108) says which format it is.
    pub fn decode(bytes: &[u8]) -> std::result::Result<PerftestKeys, MessageError> {
        let format = match bytes.len() {
            KEYS_LEN => KeyFormat::WithoutGid,
            KEYS_WITH_GID_LEN => KeyFormat::WithGid,
            actual => {
                return Err(MessageError::Length {
                    message: KEYS,
                    expected: KEYS_WITH_GID_LEN,
                    actual,
                })
            }
        };
        for offset in [
            KEY_OUT_READS,
            KEY_QPN,
            KEY_PSN,
            KEY_RKEY,
            KEY_VADDR,
            KEY_TAIL,
        ] {
            expect_byte(bytes, offset - 1, b':', KEYS)?;
        }
        let lid = parse_hex(bytes, KEY_LID, 4, KEYS)?;
        let out_reads = parse_hex(bytes, KEY_OUT_READS, 4, KEYS)?;
        let qpn = parse_hex(bytes, KEY_QPN, 6, KEYS)?;
        let psn = parse_hex(bytes, KEY_PSN, 6, KEYS)?;
        let rkey = parse_hex(bytes, KEY_RKEY, 8, KEYS)?;
        let vaddr = parse_hex(bytes, KEY_VADDR, 16, KEYS)?;
        let (gid, srqn) = match format {
            KeyFormat::WithoutGid => {
                let srqn = parse_hex(bytes, KEY_TAIL, 8, KEYS)?;
                expect_byte(bytes, KEYS_LEN - 1, 0, KEYS)?;
                (Ipv6Addr::UNSPECIFIED, srqn)
            }
            KeyFormat::WithGid => {
                let mut octets = [0u8; 16];
                for (index, octet) in octets.iter_mut().enumerate() {
                    let offset = KEY_TAIL + 3 * index;
                    *octet = u8::try_from(parse_hex(bytes, offset, 2, KEYS)?).unwrap_or(u8::MAX);
                    expect_byte(bytes, offset + 2, b':', KEYS)?;
                }
                let srqn = parse_hex(bytes, KEY_GID_SRQN, 8, KEYS)?;
                expect_byte(bytes, KEY_GID_SRQN + 8, b':', KEYS)?;
                expect_byte(bytes, KEYS_WITH_GID_LEN - 1, 0, KEYS)?;
                (Ipv6Addr::from(octets), srqn)
            }
        };
        // Field widths bound every value to its type; the fallbacks are unreachable.
        Ok(PerftestKeys {
            lid: u16::try_from(lid).unwrap_or(u16::MAX),
            out_reads: u16::try_from(out_reads).unwrap_or(u16::MAX),
            qpn: Qpn::new(u32::try_from(qpn).unwrap_or(Qpn::MAX)),
            psn: Psn::new(u32::try_from(psn).unwrap_or(Psn::MASK)),
            rkey: Rkey(u32::try_from(rkey).unwrap_or(u32::MAX)),
            vaddr,
            gid,
            srqn: u32::try_from(srqn).unwrap_or(u32::MAX),
        })
    }
}

/// perftest's `ipv6_addr_v4mapped`: `::ffff:a.b.c.d`, or the IPv4-encoded multicast
/// `ff0e::ffff:a.b.c.d`.
fn is_ipv4_gid(gid: Ipv6Addr) -> bool {
    let segments = gid.segments();
    let tail_mapped = segments[2..6] == [0, 0, 0, 0xffff];
    tail_mapped && (segments[..2] == [0, 0] || segments[..2] == [0xff0e, 0])
}

/// `ibv_mtu` number of an MTU (256 → 1 … 4096 → 5).
pub const fn mtu_code(mtu: PathMtu) -> u8 {
    match mtu {
        PathMtu::Mtu256 => 1,
        PathMtu::Mtu512 => 2,
        PathMtu::Mtu1024 => 3,
        PathMtu::Mtu2048 => 4,
        PathMtu::Mtu4096 => 5,
    }
}

/// The MTU of an `ibv_mtu` number.
pub const fn mtu_from_code(code: u8) -> Option<PathMtu> {
    match code {
        1 => Some(PathMtu::Mtu256),
        2 => Some(PathMtu::Mtu512),
        3 => Some(PathMtu::Mtu1024),
        4 => Some(PathMtu::Mtu2048),
        5 => Some(PathMtu::Mtu4096),
        _ => None,
    }
}

/// The 2-byte MTU message: `"%d"` of the `ibv_mtu` number and a NUL.
pub fn encode_mtu(mtu: PathMtu) -> [u8; 2] {
    [b'0' + mtu_code(mtu), 0]
}

/// Parses the 2-byte MTU message.
pub fn decode_mtu(bytes: &[u8]) -> std::result::Result<PathMtu, MessageError> {
    expect_length(bytes, 2, MTU)?;
    expect_byte(bytes, 1, 0, MTU)?;
    let code = bytes[0].wrapping_sub(b'0');
    mtu_from_code(code).ok_or(MessageError::Layout {
        message: MTU,
        offset: 0,
        found: bytes[0],
        expected: "an ibv_mtu digit 1 to 5",
    })
}

/// Encodes a system-data value (`int`, big-endian).
pub fn encode_system_value(value: u32) -> [u8; 4] {
    value.to_be_bytes()
}

/// Parses a system-data value; a value that is negative as a C `int` is refused.
pub fn decode_system_value(
    bytes: [u8; 4],
    message: &'static str,
) -> std::result::Result<u32, MessageError> {
    let value = u32::from_be_bytes(bytes);
    if i32::try_from(value).is_err() {
        return Err(MessageError::Value {
            message,
            field: "value",
            reason: "is negative as a C int",
        });
    }
    Ok(value)
}

/// What each side announces before any QP exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerftestConfig {
    /// The version string sent ([`PERFTEST_VERSION`] by default).
    pub version: PerftestVersion,
    /// Page size: alignment and size of each QP's slot in the test buffer (4096).
    pub cycle_buffer: u32,
    /// CPU cache line size (64).
    pub cache_line_size: u32,
    /// The local port's active MTU (1024 on rxe with a 1500-byte netdev).
    pub mtu: PathMtu,
    /// Key message layout; must match the peer's (GIDs on RoCE).
    pub key_format: KeyFormat,
    /// `--report-per-port` (adds four report fields); must match the peer's.
    pub report_per_port: bool,
}

impl Default for PerftestConfig {
    fn default() -> PerftestConfig {
        PerftestConfig {
            version: PerftestVersion::ferroce(),
            cycle_buffer: 4096,
            cache_line_size: 64,
            mtu: PathMtu::Mtu1024,
            key_format: KeyFormat::WithGid,
            report_per_port: false,
        }
    }
}

/// What both sides settled on before creating their resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The peer's version string.
    pub remote_version: PerftestVersion,
    /// The larger of both page sizes.
    pub cycle_buffer: u32,
    /// The larger of both cache line sizes.
    pub cache_line_size: u32,
    /// The peer's announced MTU.
    pub remote_mtu: PathMtu,
    /// The smaller of both MTUs: the path MTU to give the QPs.
    pub mtu: PathMtu,
}

/// The operation a perftest tool measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `ib_send_*`.
    Send,
    /// `ib_write_*`.
    Write,
    /// `ib_read_*`.
    Read,
    /// `ib_atomic_*`.
    Atomic,
}

/// Bandwidth (`*_bw`) or latency (`*_lat`) tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TestKind {
    /// `ib_*_bw`.
    Bandwidth,
    /// `ib_*_lat`.
    Latency,
}

/// The perftest tool being run on both sides; together with the number of QPs it fixes
/// the sequence of exchanges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TestSpec {
    /// The operation.
    pub verb: Verb,
    /// Bandwidth or latency.
    pub kind: TestKind,
    /// `-b`: both sides send (bandwidth tools only).
    pub duplex: bool,
}

/// One exchange after the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PostRunStep {
    /// A key exchange used as a barrier ("server waits for the client to finish").
    Barrier,
    /// The bandwidth report exchange.
    BwReport,
    /// A key exchange, then both sides write `"done\0"` and close.
    Close,
}

/// The sequence of exchanges after the negotiation, for one tool and QP count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Key exchanges before the QPs are connected: the index of the local QP whose keys
    /// each one carries. The last one received for each QP is its remote keys.
    pub key_rounds: Vec<usize>,
    /// Barrier exchanges after the QPs are connected and before traffic (each sends
    /// again the keys of the QP with that index).
    pub barriers: Vec<usize>,
    /// What follows the traffic.
    pub post_run: Vec<PostRunStep>,
}

impl TestSpec {
    /// The exchanges perftest makes for this tool with `queue_pairs` QPs (`-q`), from
    /// each tool's `main` in the default run mode.
    pub fn plan(&self, queue_pairs: usize) -> Plan {
        let each: Vec<usize> = (0..queue_pairs).collect();
        let mut key_rounds = Vec::new();
        let mut barriers = Vec::new();
        let post_run;
        match (self.kind, self.verb) {
            (TestKind::Bandwidth, Verb::Send) => {
                // send_bw.c: keys per QP; ctx_connect; one sync; one per QP ("print
                // remote"); one after the server posted its receives.
                key_rounds.extend(&each);
                barriers.push(0);
                barriers.extend(&each);
                barriers.push(0);
                post_run = if self.duplex {
                    vec![PostRunStep::BwReport, PostRunStep::Close]
                } else {
                    vec![PostRunStep::Close]
                };
            }
            (TestKind::Bandwidth, _) => {
                // write_bw.c / read_bw.c / atomic_bw.c: keys per QP; ctx_connect; one per
                // QP; one "after moving qp to RTR"; with -b one more before the run.
                key_rounds.extend(&each);
                barriers.extend(&each);
                barriers.push(0);
                if self.duplex {
                    barriers.push(0);
                    post_run = vec![PostRunStep::BwReport, PostRunStep::Close];
                } else {
                    post_run = vec![
                        PostRunStep::Barrier,
                        PostRunStep::BwReport,
                        PostRunStep::Close,
                    ];
                }
            }
            (TestKind::Latency, Verb::Send) => {
                // send_lat.c: keys per QP; ctx_connect; one sync; one per QP; one after
                // posting the receives; ctx_close_connection at the end.
                key_rounds.extend(&each);
                barriers.push(0);
                barriers.extend(&each);
                barriers.push(0);
                post_run = vec![PostRunStep::Close];
            }
            (TestKind::Latency, verb) => {
                // write_lat.c / read_lat.c / atomic_lat.c: one exchange of QP 0, then keys
                // per QP; ctx_connect; one per QP; one "after moving qp to RTR".
                key_rounds.push(0);
                key_rounds.extend(&each);
                barriers.extend(&each);
                barriers.push(0);
                // write_lat never closes (the processes just exit); read_lat and
                // atomic_lat close (their server right away: same messages).
                post_run = if verb == Verb::Write {
                    Vec::new()
                } else {
                    vec![PostRunStep::Close]
                };
            }
        }
        Plan {
            key_rounds,
            barriers,
            post_run,
        }
    }
}

/// A bandwidth report (`struct bw_report_data`, the fields that are exchanged).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BwReport {
    /// Message size in bytes.
    pub size: u64,
    /// Iterations counted.
    pub iterations: u64,
    /// Peak bandwidth (MiB/s, or Gb/s with `--report_gbits`).
    pub bw_peak: f64,
    /// Average bandwidth (same unit).
    pub bw_average: f64,
    /// Average message rate (Mpps).
    pub message_rate_average: f64,
    /// With `--report-per-port`: per-port averages.
    pub per_port: Option<PerPortReport>,
}

/// The `--report-per-port` part of a [`BwReport`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PerPortReport {
    /// Average bandwidth on port 1.
    pub bw_average_port1: f64,
    /// Message rate on port 1.
    pub message_rate_port1: f64,
    /// Average bandwidth on port 2.
    pub bw_average_port2: f64,
    /// Message rate on port 2.
    pub message_rate_port2: f64,
}

impl BwReport {
    /// The 8-byte big-endian fields in exchange order (5, or 9 with per-port fields).
    pub fn encode_fields(&self, per_port: bool) -> Vec<[u8; 8]> {
        let mut fields = vec![
            self.size.to_be_bytes(),
            self.iterations.to_be_bytes(),
            self.bw_peak.to_bits().to_be_bytes(),
            self.bw_average.to_bits().to_be_bytes(),
            self.message_rate_average.to_bits().to_be_bytes(),
        ];
        if per_port {
            let ports = self.per_port.unwrap_or_default();
            fields.extend([
                ports.bw_average_port1.to_bits().to_be_bytes(),
                ports.message_rate_port1.to_bits().to_be_bytes(),
                ports.bw_average_port2.to_bits().to_be_bytes(),
                ports.message_rate_port2.to_bits().to_be_bytes(),
            ]);
        }
        fields
    }

    /// A report from its fields in exchange order; `None` unless there are 5 or 9.
    /// Any bit pattern is accepted (a one-way server sends uninitialised memory).
    pub fn decode_fields(fields: &[[u8; 8]]) -> Option<BwReport> {
        let float = |field: &[u8; 8]| f64::from_bits(u64::from_be_bytes(*field));
        let per_port = match fields.len() {
            5 => None,
            9 => Some(PerPortReport {
                bw_average_port1: float(&fields[5]),
                message_rate_port1: float(&fields[6]),
                bw_average_port2: float(&fields[7]),
                message_rate_port2: float(&fields[8]),
            }),
            _ => return None,
        };
        Some(BwReport {
            size: u64::from_be_bytes(fields[0]),
            iterations: u64::from_be_bytes(fields[1]),
            bw_peak: float(&fields[2]),
            bw_average: float(&fields[3]),
            message_rate_average: float(&fields[4]),
            per_port,
        })
    }
}

/// One end of a perftest TCP exchange: each method is one step of perftest's, in the
/// order of [`TestSpec::plan`]. [`client_handshake`]/[`server_handshake`] run the steps
/// up to the traffic, [`PerftestSession::finish`] the ones after it.
#[derive(Debug)]
pub struct PerftestSession<S> {
    stream: S,
    role: Role,
    test: TestSpec,
    config: PerftestConfig,
    negotiated: Option<Negotiated>,
    local: Vec<PerftestKeys>,
    remote: Vec<PerftestKeys>,
}

impl<S: Read + Write> PerftestSession<S> {
    /// A session over a connected stream; nothing is sent yet.
    pub fn new(
        stream: S,
        role: Role,
        test: TestSpec,
        config: PerftestConfig,
    ) -> PerftestSession<S> {
        PerftestSession {
            stream,
            role,
            test,
            config,
            negotiated: None,
            local: Vec::new(),
            remote: Vec::new(),
        }
    }

    /// Which end this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The outcome of [`PerftestSession::negotiate`], once done.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// The peer's keys per QP, once [`PerftestSession::connect`] is done.
    pub fn remote_keys(&self) -> &[PerftestKeys] {
        &self.remote
    }

    /// The stream, to close it or read its statistics.
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// `ctx_xchg_data`: the client writes then reads, the server reads then writes.
    fn exchange(&mut self, ours: &[u8], theirs: &mut [u8], message: &'static str) -> Result<()> {
        match self.role {
            Role::Client => {
                write_message(&mut self.stream, ours, message)?;
                read_into(&mut self.stream, theirs, message)
            }
            Role::Server => {
                read_into(&mut self.stream, theirs, message)?;
                write_message(&mut self.stream, ours, message)
            }
        }
    }

    fn exchange_array<const N: usize>(
        &mut self,
        ours: &[u8; N],
        message: &'static str,
    ) -> Result<[u8; N]> {
        let mut theirs = [0u8; N];
        self.exchange(ours, &mut theirs, message)?;
        Ok(theirs)
    }

    /// `exchange_versions` + `check_version_compatibility`: swaps version strings and
    /// refuses a peer older than 5.70 (after the exchange, as perftest does).
    pub fn exchange_versions(&mut self) -> Result<PerftestVersion> {
        let ours = self.config.version.encode();
        let theirs = self.exchange_array(&ours, VERSION)?;
        let remote = PerftestVersion::decode(&theirs)?;
        if !remote.is_compatible() {
            return Err(OobError::IncompatibleVersion {
                remote: remote.as_str().to_owned(),
                minimum: MINIMUM_VERSION,
            });
        }
        Ok(remote)
    }

    /// `check_sys_data`: swaps page size and cache line size; returns the peer's.
    pub fn exchange_system_data(&mut self) -> Result<(u32, u32)> {
        let cycle_buffer =
            self.exchange_array(&encode_system_value(self.config.cycle_buffer), CYCLE_BUFFER)?;
        let cycle_buffer = decode_system_value(cycle_buffer, CYCLE_BUFFER)?;
        let cache_line = self.exchange_array(
            &encode_system_value(self.config.cache_line_size),
            CACHE_LINE,
        )?;
        let cache_line = decode_system_value(cache_line, CACHE_LINE)?;
        Ok((cycle_buffer, cache_line))
    }

    /// `check_mtu`: swaps the active MTUs; returns the peer's.
    pub fn exchange_mtu(&mut self) -> Result<PathMtu> {
        let theirs = self.exchange_array(&encode_mtu(self.config.mtu), MTU)?;
        Ok(decode_mtu(&theirs)?)
    }

    /// Versions, system data and MTU: everything before the QPs exist. The caller sizes
    /// its buffers with the result (`cycle_buffer` per QP) and gives its QPs `mtu`.
    pub fn negotiate(&mut self) -> Result<Negotiated> {
        let remote_version = self.exchange_versions()?;
        let (remote_cycle_buffer, remote_cache_line) = self.exchange_system_data()?;
        let remote_mtu = self.exchange_mtu()?;
        let negotiated = Negotiated {
            remote_version,
            cycle_buffer: self.config.cycle_buffer.max(remote_cycle_buffer),
            cache_line_size: self.config.cache_line_size.max(remote_cache_line),
            remote_mtu,
            mtu: self.config.mtu.min(remote_mtu),
        };
        self.negotiated = Some(negotiated.clone());
        Ok(negotiated)
    }

    /// `ctx_hand_shake`: swaps one key message.
    pub fn exchange_keys(&mut self, local: &PerftestKeys) -> Result<PerftestKeys> {
        let ours = local.encode(self.config.key_format);
        let mut theirs = vec![0u8; self.config.key_format.message_len()];
        self.exchange(&ours, &mut theirs, KEYS)?;
        Ok(PerftestKeys::decode(&theirs)?)
    }

    /// The key rounds of the plan for `local` (one entry per QP), then `before_sync` with
    /// the peer's keys per QP — connect the QPs (RTR, RTS) and, in SEND tests, post the
    /// receives there — then the barriers. Traffic may start when this returns.
    pub fn connect<F>(
        &mut self,
        local: &[PerftestKeys],
        before_sync: F,
    ) -> Result<Vec<PerftestKeys>>
    where
        F: FnOnce(&[PerftestKeys]) -> CallbackResult,
    {
        if local.is_empty() {
            return Err(OobError::Usage("perftest needs at least one QP's keys"));
        }
        let plan = self.test.plan(local.len());
        let mut remote = vec![None; local.len()];
        for &index in &plan.key_rounds {
            remote[index] = Some(self.exchange_keys(&local[index])?);
        }
        // Every index appears in the key rounds, so every entry is filled.
        let remote: Vec<PerftestKeys> = remote.into_iter().flatten().collect();
        if let (Some(ours), Some(theirs)) = (local.first(), remote.first()) {
            // ctx_check_gid_compatibility: both IPv4 or both IPv6.
            if self.config.key_format == KeyFormat::WithGid
                && is_ipv4_gid(ours.gid) != is_ipv4_gid(theirs.gid)
            {
                return Err(MessageError::Value {
                    message: KEYS,
                    field: "GID",
                    reason: "is of the other IP version than the local GID",
                }
                .into());
            }
        }
        before_sync(&remote).map_err(OobError::Callback)?;
        for &index in &plan.barriers {
            self.exchange_keys(&local[index])?;
        }
        self.local = local.to_vec();
        self.remote = remote.clone();
        Ok(remote)
    }

    /// `xchg_bw_reports`: swaps the report field by field; returns the peer's.
    pub fn exchange_bw_report(&mut self, local: &BwReport) -> Result<BwReport> {
        let per_port = self.config.report_per_port;
        let mut theirs = Vec::new();
        for field in local.encode_fields(per_port) {
            theirs.push(self.exchange_array(&field, REPORT)?);
        }
        // encode_fields gives 5 or 9 fields, which decode_fields always takes.
        BwReport::decode_fields(&theirs).ok_or(OobError::Message(MessageError::Length {
            message: REPORT,
            expected: 5,
            actual: theirs.len(),
        }))
    }

    /// `ctx_close_connection`: one more key exchange, then `"done\0"`. perftest writes
    /// its `done` and closes without reading ours, so the peer's `done` is read if it
    /// comes, and a close or reset before it is accepted; anything else is an error.
    pub fn close(&mut self) -> Result<()> {
        let keys = self.first_local()?;
        self.exchange_keys(&keys)?;
        write_message(&mut self.stream, &DONE_MESSAGE, DONE)?;
        let mut done = [0u8; DONE_MESSAGE.len()];
        let mut received = 0;
        while received < done.len() {
            match self.stream.read(&mut done[received..]) {
                Ok(0) => break,
                Ok(count) => received += count,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if received == 0 && error.kind() == io::ErrorKind::ConnectionReset => {
                    break
                }
                Err(error) if super::is_timeout(&error) => {
                    return Err(OobError::TimedOut { message: DONE })
                }
                Err(error) => return Err(error.into()),
            }
        }
        if done[..received] != DONE_MESSAGE[..received] || (received != 0 && received != done.len())
        {
            let offset = done[..received]
                .iter()
                .zip(DONE_MESSAGE.iter())
                .position(|(found, expected)| found != expected)
                .unwrap_or(received);
            return Err(MessageError::Layout {
                message: DONE,
                offset,
                found: done.get(offset).copied().unwrap_or(0),
                expected: "\"done\\0\"",
            }
            .into());
        }
        Ok(())
    }

    /// The exchanges after the run, per the plan. `report` is this side's result (a
    /// one-way server may pass `BwReport::default()`: perftest ignores it). Returns the
    /// peer's report if the plan exchanges one.
    pub fn finish(&mut self, report: &BwReport) -> Result<Option<BwReport>> {
        let mut remote_report = None;
        for step in self.test.plan(self.local.len().max(1)).post_run {
            match step {
                PostRunStep::Barrier => {
                    let keys = self.first_local()?;
                    self.exchange_keys(&keys)?;
                }
                PostRunStep::BwReport => remote_report = Some(self.exchange_bw_report(report)?),
                PostRunStep::Close => self.close()?,
            }
        }
        Ok(remote_report)
    }

    fn first_local(&self) -> Result<PerftestKeys> {
        self.local
            .first()
            .copied()
            .ok_or(OobError::Usage("perftest session used before connect"))
    }
}

/// The client's steps up to the traffic: [`PerftestSession::negotiate`], then
/// `local_keys` (create the buffers and QPs with the negotiated sizes and return one
/// key set per QP), then [`PerftestSession::connect`] with `before_sync`.
pub fn client_handshake<S, K, F>(
    stream: S,
    test: TestSpec,
    config: PerftestConfig,
    local_keys: K,
    before_sync: F,
) -> Result<PerftestSession<S>>
where
    S: Read + Write,
    K: FnOnce(
        &Negotiated,
    )
        -> std::result::Result<Vec<PerftestKeys>, Box<dyn std::error::Error + Send + Sync>>,
    F: FnOnce(&[PerftestKeys]) -> CallbackResult,
{
    handshake(
        PerftestSession::new(stream, Role::Client, test, config),
        local_keys,
        before_sync,
    )
}

/// The server's steps up to the traffic; the same as [`client_handshake`] with each
/// exchange read first.
pub fn server_handshake<S, K, F>(
    stream: S,
    test: TestSpec,
    config: PerftestConfig,
    local_keys: K,
    before_sync: F,
) -> Result<PerftestSession<S>>
where
    S: Read + Write,
    K: FnOnce(
        &Negotiated,
    )
        -> std::result::Result<Vec<PerftestKeys>, Box<dyn std::error::Error + Send + Sync>>,
    F: FnOnce(&[PerftestKeys]) -> CallbackResult,
{
    handshake(
        PerftestSession::new(stream, Role::Server, test, config),
        local_keys,
        before_sync,
    )
}

fn handshake<S, K, F>(
    mut session: PerftestSession<S>,
    local_keys: K,
    before_sync: F,
) -> Result<PerftestSession<S>>
where
    S: Read + Write,
    K: FnOnce(
        &Negotiated,
    )
        -> std::result::Result<Vec<PerftestKeys>, Box<dyn std::error::Error + Send + Sync>>,
    F: FnOnce(&[PerftestKeys]) -> CallbackResult,
{
    let negotiated = session.negotiate()?;
    let local = local_keys(&negotiated).map_err(OobError::Callback)?;
    session.connect(&local, before_sync)?;
    Ok(session)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `write_bw.pcap` frame 15 (client → server).
    const CLIENT_KEYS: &[u8] = b"0000:0001:000011:00da5e:0000024f:00005557def34000:00:00:00:00:00:00:00:00:00:00:ff:ff:0a:4d:00:0b:00000000:\0";

    #[test]
    fn keys_round_trip_both_formats() {
        let keys = PerftestKeys::decode(CLIENT_KEYS).expect("captured keys");
        assert_eq!(keys.out_reads, 1);
        assert_eq!(keys.qpn, Qpn::new(0x11));
        assert_eq!(keys.psn, Psn::new(0xda5e));
        assert_eq!(keys.rkey, Rkey(0x24f));
        assert_eq!(keys.vaddr, 0x5557_def3_4000);
        assert_eq!(
            keys.gid,
            "::ffff:10.77.0.11".parse::<Ipv6Addr>().expect("literal")
        );
        assert_eq!(keys.encode(KeyFormat::WithGid), CLIENT_KEYS);
        let short = keys.encode(KeyFormat::WithoutGid);
        assert_eq!(
            &short[..],
            b"0000:0001:000011:00da5e:0000024f:00005557def34000:00000000\0"
        );
        let back = PerftestKeys::decode(&short).expect("short format");
        assert_eq!(back.gid, Ipv6Addr::UNSPECIFIED);
        assert_eq!(back.qpn, keys.qpn);
    }

    #[test]
    fn version_number_follows_atof() {
        let number = |text: &str| PerftestVersion::new(text).expect("valid").number();
        assert_eq!(number("6.06"), 6.06);
        assert_eq!(number("5.70"), 5.70);
        assert_eq!(number("6.06-1"), 6.06);
        assert_eq!(number("x"), 0.0);
        assert!(PerftestVersion::new("5.70").is_some_and(|v| v.is_compatible()));
        assert!(PerftestVersion::new("5.6").is_some_and(|v| !v.is_compatible()));
        assert!(PerftestVersion::new("").is_none());
        assert!(PerftestVersion::new("0123456789abcdef").is_none());
    }

    #[test]
    fn ipv4_gids_as_perftest_sees_them() {
        let gid = |text: &str| text.parse::<Ipv6Addr>().expect("literal");
        assert!(is_ipv4_gid(gid("::ffff:10.77.0.11")));
        assert!(is_ipv4_gid(gid("ff0e::ffff:239.1.2.3")));
        assert!(!is_ipv4_gid(gid("::10.77.0.11")));
        assert!(!is_ipv4_gid(gid("fe80::ffff:a4d:b")));
        assert!(!is_ipv4_gid(gid("fe80::1")));
    }

    #[test]
    fn mtu_message() {
        assert_eq!(encode_mtu(PathMtu::Mtu1024), *b"3\0");
        assert_eq!(decode_mtu(b"5\0"), Ok(PathMtu::Mtu4096));
        assert!(decode_mtu(b"6\0").is_err());
        assert!(decode_mtu(b"33").is_err());
    }

    #[test]
    fn plans_match_captured_message_counts() {
        let bw = |verb, duplex| TestSpec {
            verb,
            kind: TestKind::Bandwidth,
            duplex,
        };
        // write_bw.pcap: 3 key messages each way before the run.
        let write = bw(Verb::Write, false).plan(1);
        assert_eq!(write.key_rounds.len() + write.barriers.len(), 3);
        assert_eq!(
            write.post_run,
            [
                PostRunStep::Barrier,
                PostRunStep::BwReport,
                PostRunStep::Close
            ]
        );
        // send_bw.pcap: 4 before, only the close after.
        let send = bw(Verb::Send, false).plan(1);
        assert_eq!(send.key_rounds.len() + send.barriers.len(), 4);
        assert_eq!(send.post_run, [PostRunStep::Close]);
        let two = bw(Verb::Read, true).plan(2);
        assert_eq!(two.key_rounds, [0, 1]);
        assert_eq!(two.barriers, [0, 1, 0, 0]);
        let lat = TestSpec {
            verb: Verb::Write,
            kind: TestKind::Latency,
            duplex: false,
        }
        .plan(1);
        assert_eq!(lat.key_rounds, [0, 0]);
        assert!(lat.post_run.is_empty());
    }
}
