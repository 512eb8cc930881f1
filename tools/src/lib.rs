//! The `ferroce` command-line tool, built on the `ferroce` library.
//!
//! One module per subcommand, each with an `Args` struct (clap-derived) and a
//! `run(&Args) -> ExitCode`: [`perf`] (perftest's bandwidth and latency tests),
//! [`pingpong`] (rdma-core's `ibv_rc_pingpong`/`ibv_ud_pingpong`), [`devinfo`]
//! (`ibv_devinfo`), [`sim`] (two engines over a simulated lossy link) and [`decode`]
//! (RoCEv2 packets of a capture). Beside them, what the tools share and what tests and
//! fuzz targets use on their own: [`exchange`], the out-of-band TCP exchanges of perftest
//! and rdma-core; [`capture`], the pcap/pcapng reader; [`address`], opening a device on
//! the addresses given on the command line.

use std::process::ExitCode;

pub mod address;
pub mod capture;
pub mod decode;
pub mod devinfo;
pub mod exchange;
pub mod perf;
pub mod pingpong;
pub mod sim;

/// ferroce: a software RoCEv2 stack and its tools.
#[derive(Debug, clap::Parser)]
#[command(name = "ferroce", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Decode and check every RoCEv2 packet of a pcap/pcapng capture.
    Decode(decode::Args),
    /// Run two engines over a simulated lossy link and check every byte (deterministic).
    Sim(sim::Args),
    /// perftest's bandwidth and latency tests (`perf write bw --loopback -s 65536`).
    Perf(perf::Args),
    /// rdma-core's ibv_rc_pingpong / ibv_ud_pingpong (`pingpong rc [SERVER]`).
    Pingpong(pingpong::Args),
    /// The device, as ibv_devinfo prints it.
    Devinfo(devinfo::Args),
}

impl Command {
    /// Runs the subcommand and returns the process exit status.
    pub fn run(&self) -> ExitCode {
        match self {
            Command::Decode(args) => decode::run(args),
            Command::Sim(args) => sim::run(args),
            Command::Perf(args) => perf::run(args),
            Command::Pingpong(args) => pingpong::run(args),
            Command::Devinfo(args) => devinfo::run(args),
        }
    }
}
