//! `ferroce decode FILE`: every RoCEv2 packet of a pcap/pcapng capture, one line each,
//! checked the way a receiver would check it.
//!
//! Each packet is parsed with [`ferroce_wire::packet::parse`], its ICRC recomputed from
//! the IP/UDP envelope, and held to the rules a single packet (or its flow) must keep:
//! FIRST and MIDDLE packets carry exactly one path MTU, MIDDLE packets as much as their
//! flow's FIRST, LAST and ONLY packets at most 4096 bytes, CNPs carry BECN. Datagrams to
//! QP1 are MADs; for the connection manager's the attribute is named.
//!
//! Exit status: 0 when every RoCEv2 packet is well formed with a good ICRC, 1 when one
//! is not, 2 when the file cannot be read as a capture.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ferroce_wire::opcode::OpInfo;
use ferroce_wire::packet::{self, Parsed, Repr, PATH_MTUS};
use ferroce_wire::{bth, icrc, AckSyndrome, OpCode, Position, Qpn, Transport};
use ferroce_wire::{ICRC_LEN, ROCEV2_UDP_PORT};
use serde_json::{json, Map, Value};

use crate::capture::{CaptureError, Datagram, Frame, FrameContent, Reader};

/// Arguments of `ferroce decode`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The capture to decode (pcap or pcapng).
    pub file: PathBuf,
    /// Print one JSON object per packet and a final summary object, one per line.
    #[arg(long)]
    pub json: bool,
    /// The UDP destination port that carries RoCEv2.
    #[arg(long, default_value_t = ROCEV2_UDP_PORT)]
    pub port: u16,
}

/// How to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// JSON lines instead of text.
    pub json: bool,
    /// The UDP destination port that carries RoCEv2.
    pub port: u16,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            json: false,
            port: ROCEV2_UDP_PORT,
        }
    }
}

/// Runs `ferroce decode`: reads the file, prints to stdout, returns the exit status.
pub fn run(args: &Args) -> ExitCode {
    let path = args.file.display();
    let bytes = match std::fs::read(&args.file) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("ferroce decode: cannot read {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let options = Options {
        json: args.json,
        port: args.port,
    };
    let mut out = io::BufWriter::new(io::stdout().lock());
    let result = decode(&bytes, options, &mut out).and_then(|summary| {
        out.flush()?;
        Ok(summary)
    });
    match result {
        Ok(summary) => {
            if let Some(error) = &summary.error {
                eprintln!("ferroce decode: {path}: {error}");
            }
            ExitCode::from(summary.exit_status())
        }
        // `ferroce decode … | head` closes the pipe: nothing left to say.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::from(2),
        Err(e) => {
            eprintln!("ferroce decode: writing output: {e}");
            ExitCode::from(2)
        }
    }
}

/// Counts over a whole capture.
#[derive(Debug, Default)]
pub struct Summary {
    /// Packet records in the capture.
    pub frames: u64,
    /// UDP datagrams to the RoCEv2 port.
    pub rocev2: u64,
    /// UDP GSO runs captured before segmentation, decoded as their datagrams.
    pub gso_runs: u64,
    /// RoCEv2 packets whose ICRC matches.
    pub icrc_ok: u64,
    /// RoCEv2 packets whose ICRC does not match.
    pub icrc_bad: u64,
    /// Frames or packets that break a rule (see the module documentation).
    pub malformed: u64,
    /// Frames that are not RoCEv2 (TCP, ARP, other UDP ports…).
    pub other: u64,
    /// RoCEv2 packets per BTH opcode.
    pub opcodes: BTreeMap<u8, u64>,
    /// Connection manager MADs per attribute.
    pub cm_attributes: BTreeMap<u16, u64>,
    /// Why the capture could not be read (to its end).
    pub error: Option<CaptureError>,
    opened: bool,
}

impl Summary {
    /// True when every RoCEv2 packet is well formed with a good ICRC and the whole
    /// capture could be read.
    pub fn is_clean(&self) -> bool {
        self.error.is_none() && self.malformed == 0 && self.icrc_bad == 0
    }

    /// 0 clean, 1 a packet is malformed or has a bad ICRC, 2 the capture is unreadable.
    pub fn exit_status(&self) -> u8 {
        if self.error.is_some() {
            2
        } else if self.is_clean() {
            0
        } else {
            1
        }
    }

    fn text(&self) -> String {
        let mut line = format!(
            "summary: frames={} rocev2={} icrc_ok={} icrc_bad={} malformed={} other={}",
            self.frames, self.rocev2, self.icrc_ok, self.icrc_bad, self.malformed, self.other
        );
        if self.gso_runs > 0 {
            let _ = write!(line, " gso_runs={}", self.gso_runs);
        }
        let mut sep = " |";
        for (&opcode, count) in &self.opcodes {
            let _ = write!(line, "{sep} {}={count}", OpCode::from(opcode));
            sep = ",";
        }
        for (&attribute, count) in &self.cm_attributes {
            let _ = write!(line, "{sep} CM {}={count}", CmAttribute(attribute));
            sep = ",";
        }
        line
    }

    fn json(&self) -> Value {
        let opcodes: Vec<Value> = self
            .opcodes
            .iter()
            .map(|(&opcode, count)| {
                json!({"opcode": opcode, "name": OpCode::from(opcode).to_string(), "count": count})
            })
            .collect();
        let cm: Vec<Value> = self
            .cm_attributes
            .iter()
            .map(|(&attribute, count)| {
                json!({"attribute": attribute, "name": CmAttribute(attribute).to_string(), "count": count})
            })
            .collect();
        json!({
            "type": "summary",
            "frames": self.frames,
            "rocev2": self.rocev2,
            "gso_runs": self.gso_runs,
            "icrc_ok": self.icrc_ok,
            "icrc_bad": self.icrc_bad,
            "malformed": self.malformed,
            "other": self.other,
            "opcodes": opcodes,
            "cm_attributes": cm,
            "error": self.error.as_ref().map(|e| e.to_string()),
        })
    }
}

/// Decodes a capture held in memory, writing one line per RoCEv2 packet (or malformed
/// frame) and a summary line to `out`. A capture that cannot be read, or not to its
/// end, is reported in [`Summary::error`]; only failures to write are `Err`.
pub fn decode(capture: &[u8], options: Options, out: &mut dyn Write) -> io::Result<Summary> {
    let mut decoder = Decoder::default();
    let reader = match Reader::new(capture) {
        Ok(reader) => reader.with_port(options.port),
        Err(e) => {
            decoder.summary.error = Some(e);
            return Ok(decoder.summary);
        }
    };
    decoder.summary.opened = true;
    for frame in reader {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                decoder.summary.error = Some(e);
                break;
            }
        };
        for report in decoder.handle_frame(&frame) {
            if options.json {
                writeln!(out, "{}", report.json())?;
            } else {
                writeln!(out, "{report}")?;
            }
        }
    }
    let summary = decoder.summary;
    if summary.opened {
        if options.json {
            writeln!(out, "{}", summary.json())?;
        } else {
            writeln!(out, "{}", summary.text())?;
        }
    }
    Ok(summary)
}

/// A flow for the segmentation rules: source, destination, destination QP.
type FlowKey = (IpAddr, IpAddr, u32);

#[derive(Debug, Default)]
struct Decoder {
    first_timestamp: Option<Duration>,
    /// The payload length of each flow's FIRST (or, before one is seen, MIDDLE) packet.
    path_mtus: HashMap<FlowKey, usize>,
    summary: Summary,
}

/// The ICRC verdict of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IcrcCheck {
    Ok(u32),
    Bad {
        carried: u32,
        computed: u32,
    },
    /// Shorter than a BTH and an ICRC.
    Unavailable,
}

/// Everything said about one RoCEv2 packet or malformed frame.
#[derive(Debug)]
struct PacketReport<'a> {
    frame: u64,
    /// Nanoseconds since the capture's first frame.
    time_ns: i128,
    timestamp: Duration,
    datagram: Option<Datagram<'a>>,
    /// Segment `i` of `n` of a GSO run captured before segmentation.
    gso: Option<(usize, usize)>,
    /// The BTH, when at least that could be read.
    bth: Option<bth::Repr>,
    repr: Option<Repr>,
    payload_len: Option<usize>,
    icrc: IcrcCheck,
    mad: Option<Mad>,
    problems: Vec<String>,
}

impl Decoder {
    /// The reports of one frame: none for non-RoCE frames, one per datagram otherwise
    /// (a GSO run captured before segmentation is several datagrams).
    fn handle_frame<'a>(&mut self, frame: &Frame<'a>) -> Vec<PacketReport<'a>> {
        self.summary.frames += 1;
        let first = *self.first_timestamp.get_or_insert(frame.timestamp);
        let report = || PacketReport {
            frame: frame.number,
            time_ns: frame.timestamp.as_nanos() as i128 - first.as_nanos() as i128,
            timestamp: frame.timestamp,
            datagram: None,
            gso: None,
            bth: None,
            repr: None,
            payload_len: None,
            icrc: IcrcCheck::Unavailable,
            mad: None,
            problems: Vec::new(),
        };
        let mut reports = Vec::new();
        match frame.content {
            FrameContent::Other => self.summary.other += 1,
            FrameContent::Malformed(e) => {
                let mut r = report();
                r.problems.push(e.to_string());
                reports.push(r);
            }
            FrameContent::RoceV2(datagram) => match datagram.gso_segments() {
                Some(segments) => {
                    self.summary.gso_runs += 1;
                    let count = segments.len();
                    for (i, segment) in segments.iter().enumerate() {
                        self.summary.rocev2 += 1;
                        let mut r = report();
                        r.gso = Some((i, count));
                        self.handle_datagram(segment, &mut r);
                        reports.push(r);
                    }
                }
                None => {
                    self.summary.rocev2 += 1;
                    let mut r = report();
                    self.handle_datagram(&datagram, &mut r);
                    reports.push(r);
                }
            },
        }
        self.summary.malformed += reports.iter().filter(|r| !r.problems.is_empty()).count() as u64;
        reports
    }

    fn handle_datagram<'a>(&mut self, datagram: &Datagram<'a>, report: &mut PacketReport<'a>) {
        report.datagram = Some(*datagram);
        let bytes = datagram.payload;
        if bytes.len() >= bth::HEADER_LEN + ICRC_LEN {
            if let (Ok(computed), Ok(carried)) = (
                icrc::compute(&datagram.envelope, bytes),
                icrc::carried(bytes),
            ) {
                report.icrc = if computed == carried {
                    self.summary.icrc_ok += 1;
                    IcrcCheck::Ok(carried)
                } else {
                    self.summary.icrc_bad += 1;
                    IcrcCheck::Bad { carried, computed }
                };
            }
        }
        report.bth = bth::Packet::new_checked(bytes)
            .ok()
            .and_then(|view| bth::Repr::parse(&view).ok());
        if let Some(&opcode) = bytes.first() {
            *self.summary.opcodes.entry(opcode).or_default() += 1;
        }
        match packet::parse(bytes) {
            Ok(parsed) => {
                report.repr = Some(parsed.repr);
                report.payload_len = Some(parsed.payload.len());
                self.check_rules(datagram, &parsed, report);
            }
            Err(e) => report.problems.push(diagnose(bytes, e)),
        }
    }

    /// The rules beyond `packet::parse`: segment sizes (per flow), CNP flags, MADs.
    fn check_rules(
        &mut self,
        datagram: &Datagram<'_>,
        parsed: &Parsed<'_>,
        report: &mut PacketReport<'_>,
    ) {
        let Ok(info) = parsed.repr.info() else {
            return; // parse only accepts known opcodes
        };
        let bth = parsed.repr.bth;
        let len = parsed.payload.len();
        let key = (
            datagram.source().ip(),
            datagram.destination().ip(),
            bth.dest_qp.value(),
        );
        if info.payload {
            if let Some(problem) = self.check_segment(info, len, key) {
                report.problems.push(problem);
            }
        }
        if info.transport == Transport::Cnp && !bth.becn {
            report.problems.push("CNP without BECN".into());
        }
        if info.transport == Transport::Ud && bth.dest_qp == Qpn::GSI {
            match Mad::parse(parsed.payload) {
                Some(mad) => {
                    if mad.class == MAD_CLASS_CM {
                        *self.summary.cm_attributes.entry(mad.attribute).or_default() += 1;
                    }
                    report.mad = Some(mad);
                }
                None => report.problems.push(format!(
                    "QP1 datagram of {len} bytes is shorter than a MAD header ({MAD_HEADER_LEN})"
                )),
            }
        }
    }

    fn check_segment(&mut self, info: OpInfo, len: usize, key: FlowKey) -> Option<String> {
        let position = position_name(info.position);
        match info.position {
            Position::First | Position::Middle => {
                if !PATH_MTUS.contains(&len) {
                    return Some(format!(
                        "{position} payload {len} is not a path MTU (256, 512, 1024, 2048, 4096)"
                    ));
                }
                if info.position == Position::First {
                    self.path_mtus.insert(key, len);
                    return None;
                }
                match self.path_mtus.get(&key) {
                    Some(&mtu) if mtu != len => Some(format!(
                        "MIDDLE payload {len} differs from the flow's FIRST payload {mtu}"
                    )),
                    Some(_) => None,
                    None => {
                        // The capture began mid-message: this MIDDLE sets the size.
                        self.path_mtus.insert(key, len);
                        None
                    }
                }
            }
            Position::Last | Position::Only => {
                let largest = PATH_MTUS[PATH_MTUS.len() - 1];
                if len > largest {
                    return Some(format!(
                        "{position} payload {len} exceeds the largest path MTU {largest}"
                    ));
                }
                let mtu = self.path_mtus.get(&key).copied()?;
                if len > mtu {
                    Some(format!(
                        "{position} payload {len} exceeds the flow's path MTU {mtu}"
                    ))
                } else if info.position == Position::Last && len == 0 {
                    Some("LAST packet without payload".into())
                } else {
                    None
                }
            }
        }
    }
}

fn position_name(position: Position) -> &'static str {
    match position {
        Position::First => "FIRST",
        Position::Middle => "MIDDLE",
        Position::Last => "LAST",
        Position::Only => "ONLY",
    }
}

/// Says which rule a packet `packet::parse` refused breaks, as precisely as possible.
fn diagnose(bytes: &[u8], error: ferroce_wire::Error) -> String {
    let len = bytes.len();
    let Some(view) = bth::Packet::new_checked(bytes).ok() else {
        return format!("truncated: {len} bytes, a BTH needs {}", bth::HEADER_LEN);
    };
    if view.tver() != 0 {
        return format!("BTH transport version {} (must be 0)", view.tver());
    }
    let opcode = view.opcode();
    let Some(info) = opcode.info() else {
        return format!("unknown opcode {:#04x}", u8::from(opcode));
    };
    let header_len = bth::HEADER_LEN + info.headers.len();
    if len < header_len + ICRC_LEN {
        return format!(
            "truncated: {len} bytes, {} needs {} for its headers and ICRC",
            info.name,
            header_len + ICRC_LEN
        );
    }
    if len % 4 != 0 {
        return format!("length {len} is not a multiple of 4 (payload + pad must be)");
    }
    let body = len - header_len - ICRC_LEN;
    let pad = usize::from(view.pad_count());
    if !info.payload && body != 0 {
        return format!(
            "{} carries no payload but has {body} bytes after its headers",
            info.name
        );
    }
    if pad > body {
        return format!("pad count {pad} exceeds the {body} bytes after the headers");
    }
    if let Some(&byte) = aeth_offset(info).and_then(|at| bytes.get(at)) {
        if AckSyndrome::from_byte(byte).is_err() {
            return format!("AETH syndrome {byte:#04x} is reserved");
        }
    }
    format!("{} ({error})", info.name)
}

/// Where the AETH starts: after the BTH and the headers that precede it in wire order.
fn aeth_offset(info: OpInfo) -> Option<usize> {
    let h = info.headers;
    if !h.aeth {
        return None;
    }
    let before = ferroce_wire::HeaderSet {
        deth: h.deth,
        reth: h.reth,
        atomic_eth: h.atomic_eth,
        ..Default::default()
    };
    Some(bth::HEADER_LEN + before.len())
}

const MAD_HEADER_LEN: usize = 24;
const MAD_CLASS_CM: u8 = 0x07;

/// The common MAD header (IBA 13.4.3): what a datagram to QP1 carries first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mad {
    base_version: u8,
    class: u8,
    class_version: u8,
    method: u8,
    status: u16,
    transaction_id: u64,
    attribute: u16,
    /// What a CM message says about the connection, when it is long enough to say it.
    cm: Option<CmFields>,
}

/// The connection identifiers of a CM message (IBA 12.6; offsets after the MAD header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct CmFields {
    local_comm_id: u32,
    /// Zero in a REQ, which has none yet.
    remote_comm_id: u32,
    /// REQ: service ID (RDMA CM: 0x0106_0000 | port).
    service_id: Option<u64>,
    /// REQ and REP: the sender's QPN and starting PSN.
    qpn: Option<u32>,
    starting_psn: Option<u32>,
}

const CM_REQUEST: u16 = 0x10;
const CM_REPLY: u16 = 0x13;

impl CmFields {
    fn parse(attribute: u16, data: &[u8]) -> Option<CmFields> {
        let u32_at = |at: usize| -> Option<u32> {
            let b = data.get(at..at + 4)?;
            Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        let u24_at = |at: usize| u32_at(at).map(|v| v >> 8);
        let mut fields = CmFields {
            local_comm_id: u32_at(0)?,
            ..CmFields::default()
        };
        match attribute {
            CM_REQUEST => {
                let high = u64::from(u32_at(8)?);
                let low = u64::from(u32_at(12)?);
                fields.service_id = Some(high << 32 | low);
                fields.qpn = Some(u24_at(32)?);
                fields.starting_psn = Some(u24_at(44)?);
            }
            CM_REPLY => {
                fields.remote_comm_id = u32_at(4)?;
                fields.qpn = Some(u24_at(12)?);
                fields.starting_psn = Some(u24_at(20)?);
            }
            _ => fields.remote_comm_id = u32_at(4)?,
        }
        Some(fields)
    }

    fn json(&self) -> Value {
        json!({
            "local_comm_id": self.local_comm_id,
            "remote_comm_id": self.remote_comm_id,
            "service_id": self.service_id,
            "qpn": self.qpn,
            "starting_psn": self.starting_psn,
        })
    }
}

impl fmt::Display for CmFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "comm_id={:#010x}", self.local_comm_id)?;
        if self.remote_comm_id != 0 {
            write!(f, " remote_comm_id={:#010x}", self.remote_comm_id)?;
        }
        if let Some(service_id) = self.service_id {
            write!(f, " service_id={service_id:#x}")?;
        }
        if let Some(qpn) = self.qpn {
            write!(f, " qpn={}", Qpn::new(qpn))?;
        }
        if let Some(psn) = self.starting_psn {
            write!(f, " start_psn={}", ferroce_wire::Psn::new(psn))?;
        }
        Ok(())
    }
}

impl Mad {
    fn parse(payload: &[u8]) -> Option<Mad> {
        let h = payload.get(..MAD_HEADER_LEN)?;
        let mut tid = [0u8; 8];
        tid.copy_from_slice(&h[8..16]);
        let attribute = u16::from_be_bytes([h[16], h[17]]);
        let cm = if h[1] == MAD_CLASS_CM {
            CmFields::parse(attribute, &payload[MAD_HEADER_LEN..])
        } else {
            None
        };
        Some(Mad {
            base_version: h[0],
            class: h[1],
            class_version: h[2],
            method: h[3],
            status: u16::from_be_bytes([h[4], h[5]]),
            transaction_id: u64::from_be_bytes(tid),
            attribute,
            cm,
        })
    }

    fn json(&self) -> Value {
        let mut object = json!({
            "base_version": self.base_version,
            "class": self.class,
            "class_version": self.class_version,
            "method": self.method,
            "status": self.status,
            "tid": format!("{:#018x}", self.transaction_id),
            "attribute": self.attribute,
        });
        if self.class == MAD_CLASS_CM {
            object["cm"] = json!(CmAttribute(self.attribute).to_string());
        }
        if let Some(cm) = &self.cm {
            object["cm_fields"] = cm.json();
        }
        object
    }
}

impl fmt::Display for Mad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.class == MAD_CLASS_CM {
            write!(f, "CM {}", CmAttribute(self.attribute))?;
        } else {
            write!(
                f,
                "MAD class={:#04x} method={:#04x} attr={:#06x}",
                self.class, self.method, self.attribute
            )?;
        }
        write!(f, " tid={:#x}", self.transaction_id)?;
        if self.status != 0 {
            write!(f, " status={:#06x}", self.status)?;
        }
        if let Some(cm) = &self.cm {
            write!(f, " {cm}")?;
        }
        Ok(())
    }
}

/// A connection manager attribute ID (IBA 12.6).
struct CmAttribute(u16);

impl fmt::Display for CmAttribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            0x10 => "ConnectRequest",
            0x11 => "MessageReceiptAcknowledgement",
            0x12 => "ConnectReject",
            0x13 => "ConnectReply",
            0x14 => "ReadyToUse",
            0x15 => "DisconnectRequest",
            0x16 => "DisconnectReply",
            0x17 => "ServiceIdResolutionRequest",
            0x18 => "ServiceIdResolutionReply",
            0x19 => "LoadAlternatePath",
            0x1a => "AlternatePathResponse",
            other => return write!(f, "attribute {other:#06x}"),
        })
    }
}

/// Relative time as seconds with microseconds, like `0.000123` or `-0.250000`.
fn format_time(ns: i128) -> String {
    let sign = if ns < 0 { "-" } else { "" };
    let ns = ns.unsigned_abs();
    format!(
        "{sign}{}.{:06}",
        ns / 1_000_000_000,
        (ns % 1_000_000_000) / 1000
    )
}

fn ecn_name(ecn: u8) -> &'static str {
    match ecn & 3 {
        0 => "Not-ECT",
        1 => "ECT(1)",
        2 => "ECT(0)",
        _ => "CE",
    }
}

impl fmt::Display for PacketReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} {}", self.frame, format_time(self.time_ns))?;
        if let Some(d) = &self.datagram {
            write!(f, " {} -> {}", d.source(), d.destination())?;
        }
        if let Some((i, n)) = self.gso {
            write!(f, " gso={}/{n}", i + 1)?;
        }
        // The wire Display starts with "BTH "; the opcode name says enough here.
        let headers = match (&self.repr, &self.bth) {
            (Some(repr), _) => Some(repr.to_string()),
            (None, Some(bth)) => Some(bth.to_string()),
            (None, None) => None,
        };
        if let Some(headers) = headers {
            write!(f, " {}", headers.strip_prefix("BTH ").unwrap_or(&headers))?;
        }
        if let Some(len) = self.payload_len {
            write!(f, " len={len}")?;
        }
        if let Some(mad) = &self.mad {
            write!(f, " {mad}")?;
        }
        if let Some(d) = &self.datagram {
            if d.ecn != 0 {
                write!(f, " ecn={}", ecn_name(d.ecn))?;
            }
            match self.icrc {
                IcrcCheck::Ok(_) => f.write_str(" icrc=ok")?,
                IcrcCheck::Bad { carried, computed } => write!(
                    f,
                    " icrc=BAD(carried {carried:#010x}, computed {computed:#010x})"
                )?,
                IcrcCheck::Unavailable => f.write_str(" icrc=n/a")?,
            }
        }
        if !self.problems.is_empty() {
            write!(f, " MALFORMED({})", self.problems.join("; "))?;
        }
        Ok(())
    }
}

impl PacketReport<'_> {
    fn json(&self) -> Value {
        let mut o = Map::new();
        o.insert("type".into(), json!("packet"));
        o.insert("frame".into(), json!(self.frame));
        if let Some((i, n)) = self.gso {
            o.insert("gso_segment".into(), json!(i + 1));
            o.insert("gso_segments".into(), json!(n));
        }
        o.insert("time".into(), json!(self.time_ns as f64 / 1e9));
        o.insert(
            "epoch_ns".into(),
            json!(u64::try_from(self.timestamp.as_nanos()).unwrap_or(u64::MAX)),
        );
        if let Some(d) = &self.datagram {
            o.insert("src".into(), json!(d.source().ip().to_string()));
            o.insert("src_port".into(), json!(d.source().port()));
            o.insert("dst".into(), json!(d.destination().ip().to_string()));
            o.insert("dst_port".into(), json!(d.destination().port()));
            if let icrc::IpFields::V4 {
                ident, flags_frag, ..
            } = d.envelope.ip
            {
                o.insert("ip_id".into(), json!(ident));
                o.insert("ip_flags_frag".into(), json!(flags_frag));
            }
            o.insert("ecn".into(), json!(d.ecn));
            o.insert("udp_payload_len".into(), json!(d.payload.len()));
        }
        if let Some(bth) = &self.bth {
            o.insert("opcode".into(), json!(u8::from(bth.opcode)));
            o.insert("opcode_name".into(), json!(bth.opcode.to_string()));
            o.insert(
                "bth".into(),
                json!({
                    "se": bth.solicited,
                    "m": bth.migreq,
                    "pad": bth.pad_count,
                    "pkey": bth.pkey,
                    "fecn": bth.fecn,
                    "becn": bth.becn,
                    "dest_qp": bth.dest_qp.value(),
                    "ack_req": bth.ack_req,
                    "psn": bth.psn.value(),
                }),
            );
        }
        if let Some(repr) = &self.repr {
            extended_headers_json(repr, &mut o);
        }
        if let Some(len) = self.payload_len {
            o.insert("payload_len".into(), json!(len));
        }
        if let Some(mad) = &self.mad {
            o.insert("mad".into(), mad.json());
        }
        if self.datagram.is_some() {
            let (verdict, carried, computed) = match self.icrc {
                IcrcCheck::Ok(v) => ("ok", Some(v), Some(v)),
                IcrcCheck::Bad { carried, computed } => ("bad", Some(carried), Some(computed)),
                IcrcCheck::Unavailable => ("unavailable", None, None),
            };
            o.insert("icrc".into(), json!(verdict));
            o.insert(
                "icrc_carried".into(),
                json!(carried.map(|v| format!("{v:#010x}"))),
            );
            o.insert(
                "icrc_computed".into(),
                json!(computed.map(|v| format!("{v:#010x}"))),
            );
        }
        o.insert("malformed".into(), json!(self.problems));
        Value::Object(o)
    }
}

fn extended_headers_json(repr: &Repr, o: &mut Map<String, Value>) {
    if let Some(h) = repr.deth {
        o.insert(
            "deth".into(),
            json!({"qkey": h.qkey, "src_qp": h.src_qp.value()}),
        );
    }
    if let Some(h) = repr.reth {
        o.insert(
            "reth".into(),
            json!({"va": h.virtual_address, "rkey": h.rkey.0, "dma_length": h.dma_length}),
        );
    }
    if let Some(h) = repr.atomic_eth {
        o.insert(
            "atomic_eth".into(),
            json!({"va": h.virtual_address, "rkey": h.rkey.0, "swap_add": h.swap_add, "compare": h.compare}),
        );
    }
    if let Some(h) = repr.aeth {
        let (kind, value) = match h.syndrome {
            AckSyndrome::Ack { credits } => ("ack", json!({"credits": credits})),
            AckSyndrome::RnrNak { timer } => ("rnr_nak", json!({"timer": timer})),
            AckSyndrome::Nak(code) => (
                "nak",
                json!({"code": u8::from(code), "name": format!("{code:?}")}),
            ),
        };
        o.insert(
            "aeth".into(),
            json!({"syndrome": h.syndrome.to_byte(), "kind": kind, "detail": value, "msn": h.msn}),
        );
    }
    if let Some(h) = repr.atomic_ack_eth {
        o.insert("atomic_ack_eth".into(), json!({"original": h.original}));
    }
    if let Some(h) = repr.imm {
        o.insert("imm".into(), json!(h.imm));
    }
    if let Some(h) = repr.ieth {
        o.insert("ieth".into(), json!({"rkey": h.rkey.0}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times() {
        assert_eq!(format_time(123_456), "0.000123");
        assert_eq!(format_time(2_000_001_000), "2.000001");
        assert_eq!(format_time(-250_000_000), "-0.250000");
    }

    #[test]
    fn cm_attribute_names() {
        assert_eq!(CmAttribute(0x10).to_string(), "ConnectRequest");
        assert_eq!(CmAttribute(0x16).to_string(), "DisconnectReply");
        assert_eq!(CmAttribute(0x42).to_string(), "attribute 0x0042");
    }

    #[test]
    fn diagnoses_name_the_rule() {
        // RC Send Only, pad count 3, nothing between the BTH and the ICRC.
        let mut p = vec![0x04, 0x30, 0xff, 0xff, 0, 0, 0, 0x11, 0x80, 0, 0, 1];
        p.extend_from_slice(&[0; 4]);
        let e = packet::parse(&p).unwrap_err();
        assert_eq!(
            diagnose(&p, e),
            "pad count 3 exceeds the 0 bytes after the headers"
        );
        // An ACK with 4 bytes of payload.
        p[0] = 0x11;
        p[1] = 0;
        p.extend_from_slice(&[0; 8]);
        let e = packet::parse(&p).unwrap_err();
        assert_eq!(
            diagnose(&p, e),
            "RC Acknowledge carries no payload but has 4 bytes after its headers"
        );
        // An ACK whose syndrome is of the reserved class.
        p.truncate(20);
        p[12] = 0x40;
        let e = packet::parse(&p).unwrap_err();
        assert_eq!(diagnose(&p, e), "AETH syndrome 0x40 is reserved");
        p[1] = 0x01;
        let e = packet::parse(&p).unwrap_err();
        assert_eq!(diagnose(&p, e), "BTH transport version 1 (must be 0)");
        p[1] = 0;
        p[0] = 0x15;
        let e = packet::parse(&p).unwrap_err();
        assert_eq!(diagnose(&p, e), "unknown opcode 0x15");
        p[0] = 0x04;
        p.push(0);
        let e = packet::parse(&p).unwrap_err();
        assert!(diagnose(&p, e).contains("multiple of 4"));
        p[0] = 0x0a; // RDMA Write Only needs a RETH
        let e = packet::parse(&p).unwrap_err();
        assert!(diagnose(&p, e).starts_with("truncated: 21 bytes, RC RDMA Write Only needs 32"));
        let e = packet::parse(&p[..7]).unwrap_err();
        assert_eq!(diagnose(&p[..7], e), "truncated: 7 bytes, a BTH needs 12");
    }
}
