//! The `ferroced` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ferroced::config::Config;

/// The ferroce soft-HCA daemon: tenants in isolated namespaces share this host's
/// RoCEv2 ports.
#[derive(Debug, Parser)]
#[command(name = "ferroced", version)]
struct Args {
    /// Check a configuration file (syntax, values, and that its addresses are on this
    /// host), print what it defines, and exit: 0 when it is usable, 1 when not.
    #[arg(long, value_name = "FILE")]
    check_config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let path = args.check_config;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("ferroced: cannot read {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let config = match Config::parse(&text).and_then(|config| {
        config.check_host()?;
        Ok(config)
    }) {
        Ok(config) => config,
        Err(error) => {
            for problem in &error.problems {
                eprintln!("{}: {problem}", path.display());
            }
            return ExitCode::FAILURE;
        }
    };
    println!("{}: OK", path.display());
    println!("socket:  {}", config.socket.display());
    match config.metrics {
        Some(address) => println!("metrics: http://{address}/metrics"),
        None => println!("metrics: off"),
    }
    for ns in &config.namespaces {
        let addresses: Vec<String> = ns.addresses.iter().map(ToString::to_string).collect();
        let q = &ns.quotas;
        let limits: Vec<String> = [
            ("qps", q.qps),
            ("cqs", q.cqs),
            ("srqs", q.srqs),
            ("mrs", q.mrs),
            ("mr_bytes", q.registered_bytes),
            ("wrs", q.work_requests),
        ]
        .into_iter()
        .filter_map(|(key, limit)| Some(format!("{key} {}", limit?)))
        .collect();
        println!(
            "namespace {}: addresses {}; uids {:?}, gids {:?}; limits: {}",
            ns.name,
            addresses.join(", "),
            ns.allow_uids,
            ns.allow_gids,
            if limits.is_empty() {
                "none".to_string()
            } else {
                limits.join(", ")
            }
        );
    }
    ExitCode::SUCCESS
}
