//! What `RUST_LOG` shows from the `ferroce` binary: at `warn`, a healthy run prints
//! nothing (the receive that moves between threads is cancelled on purpose); at `debug`,
//! the engine's events name the QP they happened to.

use std::process::{Command, Output};

/// `ferroce perf send lat --loopback` on 127.79.`net`.1 and .2 with `RUST_LOG=filter`.
fn send_lat(net: u8, filter: &str) -> Output {
    let (a, b) = (format!("127.79.{net}.1"), format!("127.79.{net}.2"));
    let output = Command::new(env!("CARGO_BIN_EXE_ferroce"))
        .args([
            "perf",
            "send",
            "lat",
            "-n",
            "2000",
            "--loopback",
            "--addresses",
            &a,
            &b,
        ])
        .env("RUST_LOG", filter)
        .output()
        .expect("ferroce runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The multishot receive follows the thread that drives the device; the cancelled
/// one's `ECANCELED` completion is expected and must not be a warning (it printed
/// dozens per run).
#[test]
fn a_healthy_run_prints_no_warning() {
    let output = send_lat(1, "warn");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.trim().is_empty(),
        "warnings from a healthy run:\n{stderr}"
    );
}

/// `RUST_LOG=debug` shows the engine's trace points (what the README promises), each
/// with its QP.
#[test]
fn debug_shows_the_engine_events_with_the_qpn() {
    let output = send_lat(2, "debug");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let changes: Vec<&str> = stderr
        .lines()
        .filter(|line| {
            line.contains("ferroce_transport::engine") && line.contains("QP state changed")
        })
        .collect();
    // Two QPs, each RESET → INIT → RTR → RTS.
    assert_eq!(changes.len(), 6, "{stderr}");
    assert!(
        changes.iter().all(|line| line.contains("0x000011")),
        "{stderr}"
    );
}
