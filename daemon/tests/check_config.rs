//! `ferroced --check-config`: the repository's example is usable on any machine, and a
//! broken file is refused with every problem named.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn check_config(path: &str) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferroced"))
        .args(["--check-config", path])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn the_example_configuration_checks_out() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/ferroced.example.toml");
    let (ok, stdout, stderr) = check_config(example);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("namespace blue: addresses 127.0.0.11"),
        "{stdout}"
    );
    assert!(
        stdout.contains("namespace red: addresses 127.0.0.12"),
        "{stdout}"
    );
    assert!(stdout.contains("mr_bytes 1073741824"), "{stdout}");
}

#[test]
fn a_broken_file_fails_with_each_problem_on_its_own_line() {
    let dir = std::env::temp_dir().join(format!("ferroced-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "socket = \"/run/f.sock\"\n[[namespace]]\nname = \"blue\"\naddresses = [\"192.0.2.1\"]\nallow_uids = [0]\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = check_config(path.to_str().unwrap());
    assert!(!ok && stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains(
            "bad.toml: namespace \"blue\": address 192.0.2.1 is on no interface that is up"
        ),
        "{stderr}"
    );
    std::fs::write(&path, "socket = \"/run/f.sock\"\nsokcet = 1\n").unwrap();
    let (ok, _, stderr) = check_config(path.to_str().unwrap());
    assert!(!ok && stderr.contains("unknown field `sokcet`"), "{stderr}");
    let (ok, _, stderr) = check_config(dir.join("missing.toml").to_str().unwrap());
    assert!(!ok && stderr.contains("cannot read"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
