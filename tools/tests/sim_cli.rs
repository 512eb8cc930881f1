//! The `ferroce sim` binary: determinism, the integrity verdict and exit statuses.

use std::process::{Command, Output};

fn ferroce(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferroce"))
        .args(args)
        .output()
        .expect("ferroce runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8 stdout")
}

fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{text}"))
}

/// The number after `label` in `text` (e.g. "lost 12").
fn number_after(text: &str, label: &str) -> u64 {
    let start = text
        .find(label)
        .unwrap_or_else(|| panic!("no `{label}` in {text}"))
        + label.len();
    text[start..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("no number after `{label}` in {text}"))
}

const LOSSY: &[&str] = &[
    "sim",
    "--loss",
    "5%",
    "--reorder",
    "2%",
    "--dup",
    "2%",
    "--op",
    "write",
    "--size",
    "8K",
    "--count",
    "40",
    "--qps",
    "2",
];

#[test]
fn same_seed_same_output() {
    let with_seed = |seed: &str| {
        let mut args = LOSSY.to_vec();
        args.extend(["--seed", seed]);
        ferroce(&args)
    };
    let first = with_seed("7");
    let second = with_seed("7");
    assert!(first.status.success(), "{}", stdout(&first));
    assert_eq!(stdout(&first), stdout(&second));
    let other = with_seed("8");
    assert_ne!(
        line(&stdout(&first), "network:"),
        line(&stdout(&other), "network:"),
        "another seed loses other packets"
    );
}

#[test]
fn lossy_link_still_delivers_every_byte() {
    let output = ferroce(LOSSY);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert_eq!(
        line(&text, "data integrity:"),
        "data integrity: OK (80 operations verified)"
    );
    assert_eq!(line(&text, "completions:"), "completions:      Success 80");
    let network = line(&text, "network:");
    assert!(number_after(network, "lost") > 0, "{text}");
    assert!(number_after(network, "duplicated") > 0, "{text}");
    assert!(
        number_after(line(&text, "retransmissions:"), "retransmissions:") > 0,
        "{text}"
    );
    assert_eq!(number_after(line(&text, "goodput:"), "("), 80 * 8192);
}

#[test]
fn every_operation_and_corruption() {
    for op in ["write", "read", "send", "atomic"] {
        let output = ferroce(&[
            "sim",
            "--op",
            op,
            "--size",
            "3000",
            "--count",
            "60",
            "--loss",
            "3%",
            "--corrupt",
            "5%",
            "--reorder",
            "3%",
            "--dup",
            "3%",
            "--mtu",
            "512",
            "--seed",
            "3",
        ]);
        let text = stdout(&output);
        assert_eq!(output.status.code(), Some(0), "{op}: {text}");
        assert!(
            text.contains("data integrity: OK (60 operations verified)"),
            "{op}: {text}"
        );
        assert!(
            number_after(line(&text, "retransmissions:"), "ICRC errors") > 0,
            "{op}: corruption must be caught by the ICRC: {text}"
        );
    }
}

#[test]
fn json_report() {
    let mut args = LOSSY.to_vec();
    args.push("--json");
    let output = ferroce(&args);
    assert!(output.status.success());
    let report: serde_json::Value =
        serde_json::from_str(&stdout(&output)).expect("one JSON object");
    assert_eq!(report["integrity"], "OK");
    assert_eq!(report["verified"], 80);
    assert_eq!(report["completions"]["Success"], 80);
    assert!(report["goodput_bits_per_sec"].as_f64().unwrap_or(0.0) > 0.0);
}

#[test]
fn nothing_gets_through_is_an_integrity_failure() {
    let output = ferroce(&[
        "sim",
        "--loss",
        "100%",
        "--count",
        "3",
        "--time-limit",
        "50ms",
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("data integrity: FAILED (0 of 3 operations verified"),
        "{text}"
    );
    assert!(text.contains("run ended early"), "{text}");
}

/// A link that loses everything, with the default retry count (for ever): the run
/// meets its time limit and says so, with the virtual time it reached (not 0), that
/// nothing completed and what was left waiting, and how to make the requester give up.
#[test]
fn total_loss_reports_the_time_limit_and_what_completed() {
    let output = ferroce(&[
        "sim",
        "--loss",
        "1",
        "--count",
        "20",
        "--time-limit",
        "50ms",
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert_eq!(
        line(&text, "virtual time:"),
        "virtual time:     50.000000 ms"
    );
    assert_eq!(line(&text, "completions:"), "completions:      none");
    // The window holds 16 of the 20 operations.
    assert_eq!(
        line(&text, "run ended early:"),
        "run ended early:  time limit reached (50ms of virtual time, --time-limit): 0 of 20 \
         operations completed, 16 posted and waiting, 4 never posted"
    );
    assert!(
        line(&text, "note:").contains("--retry-cnt 7 (the default) retries for ever"),
        "{text}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the time limit, 50ms of virtual time, took ")
            && stderr.contains(" s of wall time"),
        "{stderr}"
    );
}

/// `--retry-cnt 2`: the requester retransmits twice, then fails the request with
/// RetryExcErr and flushes the rest — in virtual milliseconds, not at the time limit.
#[test]
fn retry_cnt_ends_a_dead_link() {
    for op in ["write", "send"] {
        let output = ferroce(&[
            "sim",
            "--loss",
            "1",
            "--count",
            "3",
            "--retry-cnt",
            "2",
            "--op",
            op,
        ]);
        let text = stdout(&output);
        assert_eq!(output.status.code(), Some(1), "{op}: {text}");
        assert_eq!(
            line(&text, "completions:"),
            "completions:      RetryExcErr 1, WrFlushErr 2",
            "{op}"
        );
        let timeouts = number_after(line(&text, "retransmissions:"), "retransmit timeouts");
        assert_eq!(timeouts, 3, "{op}: the first try and two retries: {text}");
        assert!(!text.contains("run ended early"), "{op}: {text}");
        assert!(
            text.contains("data integrity: FAILED (0 of 3 operations verified"),
            "{op}: {text}"
        );
        // Three ACK timeouts of 4.2 ms each.
        let ms: f64 = line(&text, "virtual time:")
            .trim_start_matches("virtual time:")
            .trim()
            .trim_end_matches(" ms")
            .parse()
            .expect("milliseconds");
        assert!((12.0..13.0).contains(&ms), "{op}: {ms}");
    }
}

#[test]
fn bad_flags_exit_2() {
    for args in [
        &["sim", "--loss", "1.5"][..],
        &["sim", "--op", "teleport"],
        &["sim", "--mtu", "1500"],
        &["sim", "--delay", "5 parsecs"],
        &["sim", "--rate", "fast"],
        &["sim", "--count", "0"],
        &["sim", "--size", "0"],
        &["sim", "--retry-cnt", "8"],
    ] {
        let output = ferroce(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}
