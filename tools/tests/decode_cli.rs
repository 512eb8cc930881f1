//! The `ferroce decode` binary: exit statuses, output streams, flags.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferroce_tools::capture::{FrameContent, Reader};

fn pcaps() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/pcaps")
}

fn ferroce(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferroce"))
        .args(args)
        .output()
        .expect("ferroce runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8 stdout")
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("UTF-8 stderr")
}

/// A file under Cargo's scratch directory for integration tests.
fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, bytes).expect("write scratch file");
    path
}

fn shared_captures() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(pcaps())
        .expect("testdata/pcaps")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 10);
    paths
}

#[test]
fn every_shared_capture_exits_0_with_every_icrc_ok() {
    for path in shared_captures() {
        let output = ferroce(&["decode", path.to_str().expect("UTF-8 path")]);
        let out = stdout(&output);
        assert_eq!(output.status.code(), Some(0), "{}:\n{out}", path.display());
        let (packets, summary) = out.trim_end().rsplit_once('\n').expect("lines");
        assert!(summary.starts_with("summary: frames="), "{summary}");
        assert!(summary.contains(" icrc_bad=0 malformed=0 "), "{summary}");
        assert!(packets
            .lines()
            .all(|l| l.starts_with('#') && l.ends_with(" icrc=ok")));
        assert!(stderr(&output).is_empty(), "{}", stderr(&output));
    }
}

#[test]
fn a_flipped_payload_byte_exits_1_with_icrc_bad() {
    let original = std::fs::read(pcaps().join("rc_pingpong.pcap")).expect("capture");
    let mut bytes = original.clone();
    let frame = Reader::new(&original)
        .expect("capture")
        .map(|f| f.expect("frame"))
        .find(|f| matches!(f.content, FrameContent::RoceV2(_)))
        .expect("a RoCEv2 frame");
    // The frame borrows from `original`: its offset in the file.
    let offset = frame.data.as_ptr() as usize - original.as_ptr() as usize;
    bytes[offset + 14 + 20 + 8 + 12 + 10] ^= 0x01;
    let path = scratch("rc_pingpong_flipped.pcap", &bytes);
    let output = ferroce(&["decode", path.to_str().expect("UTF-8 path")]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("#{} ", frame.number)))
        .expect("the flipped frame's line");
    assert!(
        line.contains("RC Send First") && line.contains("icrc=BAD"),
        "{line}"
    );
    assert!(out.contains(" icrc_bad=1 "), "{out}");
}

#[test]
fn unreadable_files_exit_2_with_a_message() {
    let output = ferroce(&["decode", "/nonexistent/ferroce.pcap"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("cannot read /nonexistent/ferroce.pcap"));

    let path = scratch("not_a_capture.txt", b"hello, this is not a capture\n");
    let output = ferroce(&["decode", path.to_str().expect("UTF-8 path")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("not a pcap or pcapng capture"),
        "{}",
        stderr(&output)
    );
    assert!(stdout(&output).is_empty());

    let bytes = std::fs::read(pcaps().join("write_bw.pcap")).expect("capture");
    let path = scratch("write_bw_truncated.pcap", &bytes[..bytes.len() / 2]);
    let output = ferroce(&["decode", path.to_str().expect("UTF-8 path")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("cut short"), "{}", stderr(&output));
    // The frames before the cut are still shown, then the summary.
    let out = stdout(&output);
    assert!(
        out.lines().next().is_some_and(|l| l.starts_with('#')),
        "{out}"
    );
    assert!(out
        .lines()
        .last()
        .is_some_and(|l| l.starts_with("summary:")));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(ferroce(&["decode"]).status.code(), Some(2));
    assert_eq!(
        ferroce(&["decode", "--port", "x", "f"]).status.code(),
        Some(2)
    );
    assert_eq!(ferroce(&["no-such-command"]).status.code(), Some(2));
    let help = ferroce(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(stdout(&help).contains("decode"));
}

#[test]
fn json_lines_and_port_flag() {
    let path = pcaps().join("rping_cm.pcap");
    let path = path.to_str().expect("UTF-8 path");
    let output = ferroce(&["decode", "--json", "--port", "4791", path]);
    assert_eq!(output.status.code(), Some(0));
    let values: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    assert_eq!(values.len(), 42); // 41 packets and the summary
    assert_eq!(values[0]["mad"]["cm"], "ConnectRequest");
    assert_eq!(values[41]["type"], "summary");
    assert_eq!(values[41]["rocev2"], 41);
    // Nothing is RoCEv2 on another port.
    let output = ferroce(&["decode", "--port", "4792", path]);
    assert_eq!(output.status.code(), Some(0));
    assert!(stdout(&output).starts_with("summary: frames=41 rocev2=0 "));
}
