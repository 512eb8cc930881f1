//! `ferroce decode FILE`: every RoCEv2 packet of a pcap/pcapng capture, one line each,
//! checked the way a receiver would check it.
//!
//! Each packet is parsed with [`ferroce_wire::packet::parse`], its ICRC recomputed from
//! the IP/UDP envelope, and held to the rules a single packet (or its flow) must keep:
//! FIRST and MIDDLE packets carry exactly one path MTU, MIDDLE packets as much as their
//! flow's FIRST, LAST and ONLY packets at most 4096 bytes, CNPs carry BECN. Datagrams to
//! QP1 are MADs; a connection manager MAD is read with [`ferroce_wire::cm`] (names,
//! comm IDs, QPs, PSNs, service IDs and RDMA CM addresses), and one that does not parse
//! is malformed.
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

use ferroce_wire::mad::{self, MgmtClass};
use ferroce_wire::opcode::OpInfo;
use ferroce_wire::packet::{self, Parsed, Repr, PATH_MTUS};
use ferroce_wire::{bth, cm, cma, icrc, AckSyndrome, OpCode, Position, Qpn, ServiceId, Transport};
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
            let _ = write!(line, "{sep} CM {}={count}", cm_attribute_name(attribute));
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
                json!({"attribute": attribute, "name": cm_attribute_name(attribute), "count": count})
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
    mad: Option<Mad<'a>>,
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
    fn check_rules<'a>(
        &mut self,
        datagram: &Datagram<'_>,
        parsed: &Parsed<'a>,
        report: &mut PacketReport<'a>,
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
            if let Ok(view) = mad::Packet::new_checked(parsed.payload) {
                if view.mgmt_class() == MgmtClass::CommunicationManagement {
                    *self
                        .summary
                        .cm_attributes
                        .entry(view.attribute_id())
                        .or_default() += 1;
                }
            }
            match Mad::parse(parsed.payload) {
                Ok(mad) => report.mad = Some(mad),
                Err(problem) => report.problems.push(problem),
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

/// What a datagram to QP1 carries: a MAD and, for the connection manager, its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mad<'a> {
    header: mad::Repr,
    /// The CM message, when the MAD is a CM connection message that parsed.
    cm: Option<cm::Message<'a>>,
}

impl<'a> Mad<'a> {
    /// Reads a QP1 datagram; the error says why it is malformed.
    fn parse(payload: &'a [u8]) -> Result<Mad<'a>, String> {
        let view = mad::Packet::new_checked(payload).map_err(|_| {
            format!(
                "QP1 datagram of {} bytes is shorter than a MAD header ({})",
                payload.len(),
                mad::HEADER_LEN
            )
        })?;
        let header = mad::Repr::parse(&view).map_err(|e| format!("MAD header: {e}"))?;
        let attribute = cm::AttributeId::from(header.attribute_id);
        if header.mgmt_class != MgmtClass::CommunicationManagement
            || !attribute.is_connection_message()
        {
            return Ok(Mad { header, cm: None });
        }
        match cm::Message::parse(attribute, view.data()) {
            Ok(message) => Ok(Mad {
                header,
                cm: Some(message),
            }),
            Err(ferroce_wire::Error::Truncated) => Err(format!(
                "CM {attribute} of {} bytes is shorter than a CM MAD ({})",
                payload.len(),
                mad::MAD_LEN
            )),
            // The only rule a CM message of full length can break.
            Err(ferroce_wire::Error::Malformed) => Err(format!(
                "CM {attribute} has an information length longer than its field"
            )),
            Err(e) => Err(format!("CM {attribute}: {e}")),
        }
    }

    fn is_cm(&self) -> bool {
        self.header.mgmt_class == MgmtClass::CommunicationManagement
    }

    fn json(&self) -> Value {
        let h = &self.header;
        let mut object = json!({
            "base_version": h.base_version,
            "class": u8::from(h.mgmt_class),
            "class_version": h.class_version,
            "method": u8::from(h.method),
            "status": h.status,
            "tid": format!("{:#018x}", h.transaction_id),
            "attribute": h.attribute_id,
        });
        if self.is_cm() {
            object["cm"] = json!(cm_attribute_name(h.attribute_id));
        }
        if let Some(message) = &self.cm {
            object["cm_fields"] = cm_fields_json(message);
        }
        object
    }
}

/// The name of a CM attribute, or its number.
fn cm_attribute_name(attribute: u16) -> String {
    match cm::AttributeId::from(attribute) {
        cm::AttributeId::Unknown(other) => format!("attribute {other:#06x}"),
        known => known.to_string(),
    }
}

/// The RDMA CM IP header at the start of a REQ's or SIDR_REQ's private data, when it
/// is one (its service ID names an RDMA CM port space).
fn cma_header(service_id: ServiceId, private_data: &[u8]) -> Option<cma::Repr> {
    service_id.rdma_ip_parts()?;
    cma::Repr::parse(&cma::Packet::new_checked(private_data).ok()?).ok()
}

/// The service ID, its RDMA CM port space and port, and the RDMA CM IP header.
fn json_service(o: &mut Value, service_id: ServiceId, private_data: &[u8]) {
    o["service_id"] = json!(service_id.0);
    if let Some((space, port)) = service_id.rdma_ip_parts() {
        o["port_space"] = json!(space.to_string());
        o["port"] = json!(port);
    }
    if let Some(cma) = cma_header(service_id, private_data) {
        o["cma"] = json!({
            "version": cma.cma_version,
            "src": cma.src().to_string(),
            "src_port": cma.port,
            "dst": cma.dst().to_string(),
        });
    }
}

fn cm_fields_json(message: &cm::Message<'_>) -> Value {
    let mut o = json!({
        "local_comm_id": message.local_comm_id(),
        "remote_comm_id": message.remote_comm_id().unwrap_or(0),
        "service_id": null,
        "qpn": null,
        "starting_psn": null,
    });
    match message {
        cm::Message::Req(m) => {
            json_service(&mut o, m.service_id, m.private_data);
            o["qpn"] = json!(m.local_qpn.value());
            o["starting_psn"] = json!(m.starting_psn.value());
            o["path_mtu"] = json!(m.path_mtu);
            o["responder_resources"] = json!(m.responder_resources);
            o["initiator_depth"] = json!(m.initiator_depth);
            o["retry_count"] = json!(m.retry_count);
            o["rnr_retry_count"] = json!(m.rnr_retry_count);
            o["local_gid"] = json!(m.primary_path.local_gid.to_string());
            o["remote_gid"] = json!(m.primary_path.remote_gid.to_string());
        }
        cm::Message::Rep(m) => {
            o["qpn"] = json!(m.local_qpn.value());
            o["starting_psn"] = json!(m.starting_psn.value());
            o["responder_resources"] = json!(m.responder_resources);
            o["initiator_depth"] = json!(m.initiator_depth);
            o["rnr_retry_count"] = json!(m.rnr_retry_count);
        }
        cm::Message::Rej(m) => {
            o["reason"] = json!(u16::from(m.reason));
            o["reason_name"] = json!(m.reason.to_string());
            o["message_rejected"] = json!(m.message_rejected.to_string());
        }
        cm::Message::Mra(m) => {
            o["message_mraed"] = json!(m.message_mraed.to_string());
            o["service_timeout"] = json!(m.service_timeout);
        }
        cm::Message::Dreq(m) => o["remote_qpn"] = json!(m.remote_qpn.value()),
        cm::Message::Lap(m) => o["remote_qpn"] = json!(m.remote_qpn.value()),
        cm::Message::Apr(m) => o["status"] = json!(m.status.to_string()),
        cm::Message::SidrReq(m) => json_service(&mut o, m.service_id, m.private_data),
        cm::Message::SidrRep(m) => {
            o["service_id"] = json!(m.service_id.0);
            o["qpn"] = json!(m.qpn.value());
            o["status"] = json!(m.status.to_string());
            o["qkey"] = json!(m.qkey);
        }
        cm::Message::Rtu(_) | cm::Message::Drep(_) => {}
    }
    o
}

/// Writes ` service=TCP:7174 cma=SRC:PORT->DST` for a service ID and private data.
fn write_service(
    f: &mut fmt::Formatter<'_>,
    service_id: ServiceId,
    private_data: &[u8],
) -> fmt::Result {
    if let Some((space, port)) = service_id.rdma_ip_parts() {
        write!(f, " service={space}:{port}")?;
    }
    if let Some(cma) = cma_header(service_id, private_data) {
        write!(f, " cma={}->{}", cma.source(), cma.dst())?;
    }
    Ok(())
}

/// The connection identifiers and what the message says about the connection.
struct CmFields<'m, 'a>(&'m cm::Message<'a>);

impl fmt::Display for CmFields<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = self.0;
        match message {
            cm::Message::SidrReq(_) | cm::Message::SidrRep(_) => {
                write!(f, "request_id={:#010x}", message.local_comm_id())?
            }
            _ => write!(f, "comm_id={:#010x}", message.local_comm_id())?,
        }
        if let Some(remote) = message.remote_comm_id().filter(|&id| id != 0) {
            write!(f, " remote_comm_id={remote:#010x}")?;
        }
        match message {
            cm::Message::Req(m) => {
                write!(
                    f,
                    " service_id={} qpn={} start_psn={}",
                    m.service_id, m.local_qpn, m.starting_psn
                )?;
                write_service(f, m.service_id, m.private_data)?;
            }
            cm::Message::Rep(m) => write!(f, " qpn={} start_psn={}", m.local_qpn, m.starting_psn)?,
            cm::Message::Rej(m) => write!(
                f,
                " of={} reason={} ({})",
                m.message_rejected,
                u16::from(m.reason),
                m.reason
            )?,
            cm::Message::Mra(m) => write!(
                f,
                " of={} service_timeout={}",
                m.message_mraed, m.service_timeout
            )?,
            cm::Message::Dreq(m) => write!(f, " remote_qpn={}", m.remote_qpn)?,
            cm::Message::Lap(m) => write!(f, " remote_qpn={}", m.remote_qpn)?,
            cm::Message::Apr(m) => write!(f, " status={}", m.status)?,
            cm::Message::SidrReq(m) => {
                write!(f, " service_id={}", m.service_id)?;
                write_service(f, m.service_id, m.private_data)?;
            }
            cm::Message::SidrRep(m) => write!(
                f,
                " status={} service_id={} qpn={} qkey={:#010x}",
                m.status, m.service_id, m.qpn, m.qkey
            )?,
            cm::Message::Rtu(_) | cm::Message::Drep(_) => {}
        }
        Ok(())
    }
}

impl fmt::Display for Mad<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = &self.header;
        if self.is_cm() {
            write!(f, "CM {}", cm_attribute_name(h.attribute_id))?;
        } else {
            write!(
                f,
                "MAD class={:#04x} method={:#04x} attr={:#06x}",
                u8::from(h.mgmt_class),
                u8::from(h.method),
                h.attribute_id
            )?;
        }
        write!(f, " tid={:#x}", h.transaction_id)?;
        if h.status != 0 {
            write!(f, " status={:#06x}", h.status)?;
        }
        if let Some(message) = &self.cm {
            write!(f, " {}", CmFields(message))?;
        }
        Ok(())
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
        assert_eq!(cm_attribute_name(0x10), "ConnectRequest");
        assert_eq!(cm_attribute_name(0x16), "DisconnectReply");
        assert_eq!(cm_attribute_name(0x01), "ClassPortInfo");
        assert_eq!(cm_attribute_name(0x42), "attribute 0x0042");
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
