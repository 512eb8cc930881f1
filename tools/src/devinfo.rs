//! `ferroce devinfo [-v]`: the device as `ibv_devinfo` prints an rdma-core device
//! (rdma-core `libibverbs/examples/devinfo.c`, same labels, tabs and value formats).
//!
//! The device is the one `ferroce pingpong` would open as a server: every non-loopback
//! address of the host (or 127.0.0.1) on UDP 4791, or the `--bind` addresses. ferroce
//! reports what rxe reports where the field exists in software (transport InfiniBand,
//! vendor 0xffffff, link layer Ethernet, one port, RoCE v2 GIDs); the node GUID is
//! derived from the GIDs, as there is no NIC to take a MAC from. Unlike `ibv_devinfo`,
//! the GID table is printed without `-v` too (for a software device it is the one thing
//! worth knowing). `-v` adds the device limits, the drivers, and the engine's counters.
//! When UDP 4791 is taken (kernel rxe, another ferroce), the port shows `PORT_DOWN`.
//!
//! Exit status: 0 on success, 1 when the device cannot be opened, 2 on bad flags.

use std::net::IpAddr;
use std::process::ExitCode;

use ferroce::transport::io::thread::ThreadCounters;
use ferroce::{Counters, Device, DeviceConfig, DeviceLimits, PathMtu};

use crate::address::{self, OpenError};

/// The name of ferroce's device (`hca_id`, `-d`).
pub const DEVICE_NAME: &str = "ferroce0";

/// rxe's vendor id (`RXE_VENDOR_ID`).
const VENDOR_ID: u32 = 0xff_ffff;

/// Arguments of `ferroce devinfo`, spelled as `ibv_devinfo` spells them.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Use this device (ferroce has one: ferroce0).
    #[arg(short = 'd', long = "ib-dev")]
    pub ib_dev: Option<String>,
    /// Show this port only (ferroce devices have one port: 1).
    #[arg(short = 'i', long = "ib-port", value_parser = clap::value_parser!(u32).range(1..))]
    pub ib_port: Option<u32>,
    /// Print only the device names.
    #[arg(short = 'l', long = "list")]
    pub list: bool,
    /// Print every attribute, the drivers and the engine's counters.
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// The device's addresses (default: every non-loopback address, or 127.0.0.1).
    #[arg(long = "bind", value_name = "ADDR")]
    pub bind: Vec<IpAddr>,
}

/// Runs `ferroce devinfo`.
pub fn run(args: &Args) -> ExitCode {
    if args.list {
        print!("1 HCA found:\n\t{DEVICE_NAME}\n\n");
        return ExitCode::SUCCESS;
    }
    if let Some(name) = &args.ib_dev {
        if name != DEVICE_NAME {
            eprintln!("IB device '{name}' wasn't found");
            return ExitCode::from(1);
        }
    }
    if args.ib_port.is_some_and(|port| port != 1) {
        eprintln!("Invalid port requested for device");
        return ExitCode::from(1);
    }
    let addresses = if args.bind.is_empty() {
        address::server_addresses()
    } else {
        args.bind.clone()
    };
    let (device, active) = match address::open_device(&addresses) {
        Ok(device) => (device, true),
        Err(OpenError::PortBusy { address, port }) => {
            eprintln!("ferroce devinfo: UDP {port} on {address} is in use: the port is down");
            // The attributes do not depend on the port: read them from a device on
            // ephemeral ports.
            let mut config = DeviceConfig::with_address(address);
            config.addresses = addresses.clone();
            config.active_mtu = address::active_mtu(&addresses);
            config.port = 0;
            match Device::open(config) {
                Ok(device) => (device, false),
                Err(error) => {
                    eprintln!("ferroce devinfo: {error}");
                    return ExitCode::from(1);
                }
            }
        }
        Err(error) => {
            eprintln!("ferroce devinfo: {error}");
            return ExitCode::from(1);
        }
    };
    match describe(&device, active, args.verbose) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("ferroce devinfo: {error}");
            ExitCode::from(1)
        }
    }
}

/// The `ibv_mtu` value of an MTU.
fn mtu_code(mtu: PathMtu) -> u32 {
    match mtu {
        PathMtu::Mtu256 => 1,
        PathMtu::Mtu512 => 2,
        PathMtu::Mtu1024 => 3,
        PathMtu::Mtu2048 => 4,
        PathMtu::Mtu4096 => 5,
    }
}

/// `node_guid` as `%04x:%04x:%04x:%04x`.
fn guid_string(guid: u64) -> String {
    format!(
        "{:04x}:{:04x}:{:04x}:{:04x}",
        (guid >> 48) & 0xffff,
        (guid >> 32) & 0xffff,
        (guid >> 16) & 0xffff,
        guid & 0xffff
    )
}

/// A stable GUID from the GIDs (FNV-1a), marked locally administered like a software
/// MAC's EUI-64.
fn node_guid(gids: &[IpAddr]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for gid in gids {
        for byte in address::gid(*gid).octets() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    (hash & 0x00ff_ffff_ffff_ffff) | 0x0200_0000_0000_0000
}

/// The whole report.
fn describe(device: &Device, active: bool, verbose: bool) -> Result<String, ferroce::Error> {
    use std::fmt::Write as _;
    let attributes = device.query_device()?;
    let port = device.query_port()?;
    let gids = device.config().addresses.clone();
    let limits = attributes.limits;
    let guid = guid_string(node_guid(&gids));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "hca_id:\t{DEVICE_NAME}");
    let _ = writeln!(out, "\ttransport:\t\t\tInfiniBand (0)");
    let _ = writeln!(out, "\tfw_ver:\t\t\t\t{}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(out, "\tnode_guid:\t\t\t{guid}");
    let _ = writeln!(out, "\tsys_image_guid:\t\t\t{guid}");
    let _ = writeln!(out, "\tvendor_id:\t\t\t0x{VENDOR_ID:04x}");
    let _ = writeln!(out, "\tvendor_part_id:\t\t\t0");
    let _ = writeln!(out, "\thw_ver:\t\t\t\t0x0");
    let _ = writeln!(out, "\tphys_port_cnt:\t\t\t1");
    if verbose {
        write_limits(&mut out, &limits);
    }
    let _ = writeln!(out, "\t\tport:\t1");
    // Down also when the address is off a working link (`query_port`).
    let (state, code) = if active && port.state == ferroce::PortState::Active {
        ("PORT_ACTIVE", 4)
    } else {
        ("PORT_DOWN", 1)
    };
    let _ = writeln!(out, "\t\t\tstate:\t\t\t{state} ({code})");
    let _ = writeln!(
        out,
        "\t\t\tmax_mtu:\t\t{} ({})",
        port.max_mtu.bytes(),
        mtu_code(port.max_mtu)
    );
    let _ = writeln!(
        out,
        "\t\t\tactive_mtu:\t\t{} ({})",
        port.active_mtu.bytes(),
        mtu_code(port.active_mtu)
    );
    let _ = writeln!(out, "\t\t\tsm_lid:\t\t\t0");
    let _ = writeln!(out, "\t\t\tport_lid:\t\t0");
    let _ = writeln!(out, "\t\t\tport_lmc:\t\t0x00");
    let _ = writeln!(out, "\t\t\tlink_layer:\t\tEthernet");
    let counters = if verbose {
        Some(device.counters()?)
    } else {
        None
    };
    if let Some((engine, _)) = &counters {
        let _ = writeln!(out, "\t\t\tmax_msg_sz:\t\t0x{:x}", limits.max_mr_size);
        // IB_PORT_CM_SUP, as rxe.
        let _ = writeln!(out, "\t\t\tport_cap_flags:\t\t0x{:08x}", 0x0001_0000);
        let _ = writeln!(out, "\t\t\tport_cap_flags2:\t0x0000");
        let _ = writeln!(out, "\t\t\tmax_vl_num:\t\t1 (1)");
        let _ = writeln!(
            out,
            "\t\t\tbad_pkey_cntr:\t\t0x{:x}",
            engine.drops.pkey_mismatch
        );
        let _ = writeln!(
            out,
            "\t\t\tqkey_viol_cntr:\t\t0x{:x}",
            engine.drops.qkey_mismatch
        );
        let _ = writeln!(out, "\t\t\tsm_sl:\t\t\t0");
        let _ = writeln!(out, "\t\t\tpkey_tbl_len:\t\t{}", port.pkey_tbl_len);
        let _ = writeln!(out, "\t\t\tgid_tbl_len:\t\t{}", port.gid_tbl_len);
        let _ = writeln!(out, "\t\t\tsubnet_timeout:\t\t0");
        let _ = writeln!(out, "\t\t\tinit_type_reply:\t0");
        let _ = writeln!(out, "\t\t\tactive_width:\t\t1X (1)");
        let phys_state = match port.state {
            ferroce::PortState::Active => "LINK_UP (5)",
            ferroce::PortState::Down => "DISABLED (3)",
        };
        let _ = writeln!(out, "\t\t\tphys_state:\t\t{phys_state}");
    }
    for index in 0..port.gid_tbl_len {
        let gid = device.query_gid(index)?;
        let _ = writeln!(
            out,
            "\t\t\tGID[{index:3}]:\t\t{}, RoCE v2",
            address::gid(gid)
        );
    }
    if let Some((engine, thread)) = &counters {
        let _ = writeln!(out, "\tdrivers:");
        for (address, kind) in device.drivers() {
            let _ = writeln!(out, "\t\t\t{address}\t{kind:?}");
        }
        write_counters(&mut out, engine, thread);
    }
    let _ = writeln!(out);
    Ok(out)
}

fn write_limits(out: &mut String, limits: &DeviceLimits) {
    use std::fmt::Write as _;
    let lines: [(&str, String); 17] = [
        ("max_mr_size:\t\t\t", format!("0x{:x}", limits.max_mr_size)),
        ("page_size_cap:\t\t\t", "0x1000".into()),
        ("max_qp:\t\t\t\t", limits.max_qp.to_string()),
        ("max_qp_wr:\t\t\t", limits.max_qp_wr.to_string()),
        ("max_sge:\t\t\t", limits.max_sge.to_string()),
        ("max_sge_rd:\t\t\t", limits.max_sge.to_string()),
        ("max_cq:\t\t\t\t", limits.max_cq.to_string()),
        ("max_cqe:\t\t\t", limits.max_cqe.to_string()),
        ("max_mr:\t\t\t\t", limits.max_mr.to_string()),
        ("max_pd:\t\t\t\t", limits.max_pd.to_string()),
        ("max_qp_rd_atom:\t\t\t", limits.max_qp_rd_atom.to_string()),
        (
            "max_qp_init_rd_atom:\t\t",
            limits.max_qp_init_rd_atom.to_string(),
        ),
        ("atomic_cap:\t\t\t", "ATOMIC_HCA (1)".into()),
        ("max_srq:\t\t\t", limits.max_srq.to_string()),
        ("max_srq_wr:\t\t\t", limits.max_srq_wr.to_string()),
        ("max_srq_sge:\t\t\t", limits.max_srq_sge.to_string()),
        ("max_pkeys:\t\t\t", "1".into()),
    ];
    for (label, value) in lines {
        let _ = writeln!(out, "\t{label}{value}");
    }
    let _ = writeln!(out, "\tmax_inline_data:\t\t{}", limits.max_inline_data);
}

fn write_counters(out: &mut String, engine: &Counters, thread: &ThreadCounters) {
    use std::fmt::Write as _;
    let naks = |n: &ferroce::transport::engine::NakCounters| {
        [
            ("psn_sequence", n.psn_sequence),
            ("rnr", n.rnr),
            ("invalid_request", n.invalid_request),
            ("remote_access", n.remote_access),
            ("remote_operational", n.remote_operational),
            ("other", n.other),
        ]
    };
    let d = &engine.drops;
    let mut rows: Vec<(String, u64)> = [
        ("packets_in", engine.packets_in),
        ("packets_out", engine.packets_out),
        ("bytes_in", engine.bytes_in),
        ("bytes_out", engine.bytes_out),
        ("retransmits", engine.retransmits),
        ("timeouts", engine.timeouts),
        ("duplicates", engine.duplicates),
        ("icrc_errors", engine.icrc_errors),
        ("cnps_received", engine.cnps_received),
        ("ecn_ce_received", engine.ecn_ce_received),
        ("cq_overflows", engine.completion_queue_overflows),
        ("async_events_dropped", engine.async_events_dropped),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value))
    .collect();
    rows.extend(
        naks(&engine.naks_sent)
            .into_iter()
            .map(|(name, value)| (format!("naks_sent.{name}"), value)),
    );
    rows.extend(
        naks(&engine.naks_received)
            .into_iter()
            .map(|(name, value)| (format!("naks_received.{name}"), value)),
    );
    rows.extend(
        [
            ("malformed", d.malformed),
            ("unknown_address", d.unknown_address),
            ("unknown_qp", d.unknown_qp),
            ("wrong_transport", d.wrong_transport),
            ("wrong_state", d.wrong_state),
            ("address_mismatch", d.address_mismatch),
            ("qkey_mismatch", d.qkey_mismatch),
            ("pkey_mismatch", d.pkey_mismatch),
            ("no_receive_buffer", d.no_receive_buffer),
            ("out_of_sequence", d.out_of_sequence),
            ("unexpected_response", d.unexpected_response),
            ("duplicate_response", d.duplicate_response),
            ("duplicate_not_replayed", d.duplicate_not_replayed),
            ("refused", d.refused),
            ("too_long", d.too_long),
        ]
        .into_iter()
        .map(|(name, value)| (format!("drops.{name}"), value)),
    );
    rows.extend(
        [
            ("thread.rounds", thread.rounds),
            ("thread.sleeps", thread.sleeps),
            ("thread.ident_zero", thread.ident_zero),
            ("thread.ident_nonzero", thread.ident_nonzero),
            ("thread.ident_unrecovered", thread.ident_unrecovered),
            ("thread.ident_over_budget", thread.ident_over_budget),
            ("thread.ident_solvers_built", thread.ident_solvers_built),
            ("thread.ip_header_seen", thread.ip_header_seen),
            ("thread.ip_header_missing", thread.ip_header_missing),
            ("thread.ip_raw_unmatched", thread.ip_raw_unmatched),
            ("thread.truncated", thread.truncated),
            ("thread.unroutable", thread.unroutable),
            ("thread.io_errors", thread.io_errors),
            ("thread.refused_posts", thread.refused_posts),
            ("thread.lost_post_errors", thread.lost_post_errors),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value)),
    );
    let _ = writeln!(out, "\tcounters:");
    // One column for the values, two spaces past the longest name.
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0) + 2;
    for (name, value) in rows {
        let _ = writeln!(out, "\t\t\t{name:<width$}{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_format_and_stability() {
        assert_eq!(guid_string(0x0011_2233_4455_6677), "0011:2233:4455:6677");
        let gids = ["10.0.0.1".parse().expect("literal")];
        assert_eq!(node_guid(&gids), node_guid(&gids));
        assert_eq!(node_guid(&gids) >> 56, 0x02);
        assert_ne!(
            node_guid(&gids),
            node_guid(&["10.0.0.2".parse().expect("literal")])
        );
    }
}
