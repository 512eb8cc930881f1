//! The Linux rxe peer for interop tests: the vendored harness in `interop/` (QEMU guest
//! with kernel `rdma_rxe`, rdma-core and perftest, on a bridge in a network namespace),
//! a guest that runs the test's shell steps one after another, and `ferroce` processes
//! run inside the namespace.
//!
//! One guest boot takes 10-20 s under TCG, so a [`Guest`] stays up for a whole sequence
//! of cases: its `/init` runs [`AGENT`], which waits for `step.N.sh` in the 9p share,
//! runs it (output in `out.N`, exit status in `rc.N`) and goes on with N+1 until the
//! file `quit` appears. A guest-side server step touches `ready.N` once its TCP port
//! listens, so the host starts its client only then.
#![allow(dead_code)] // each test uses its own subset
#![allow(clippy::unwrap_used)] // test fixtures fail loudly
#![allow(clippy::disallowed_methods)] // deadlines of real waits

use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::netns_util::{is_root, on_path, repository, run_setup, Namespace};

/// The bridge's address in the namespace: ferroce's address and GID.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

/// The guest's shell loop (see the module documentation).
const AGENT: &str = r#"# ferroce interop agent: runs step.N.sh in order until "quit" appears.
n=0
while :; do
  while [ ! -f step.$n.sh ] && [ ! -f quit ]; do sleep 0.1; done
  [ -f step.$n.sh ] || break
  sh step.$n.sh > out.$n 2>&1
  echo $? > rc.$n.tmp
  mv rc.$n.tmp rc.$n
  n=$((n + 1))
done
"#;

/// Where this test keeps its files: `target/tmp/interop/`.
pub fn work_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("interop")
}

/// The vendored harness, set up and ready to boot guests.
#[derive(Debug)]
pub struct Harness {
    /// `interop/` of the repository.
    pub scripts: PathBuf,
    /// The network namespace of this run (deleted with the harness).
    pub namespace: Namespace,
    /// The `ferroce` binary.
    pub ferroce: PathBuf,
}

impl Harness {
    /// Checks root, runs `interop/setup.sh` (which installs what the host lacks and
    /// builds the guest), checks the host tools, builds the `ferroce` binary. Panics
    /// saying what is missing: the tests that call this are `#[ignore]`d with the reason
    /// and run only when asked for.
    pub fn prepare(test: &str) -> Harness {
        assert!(
            is_root(),
            "{test}: the rxe guest needs root (namespaces, taps): run the README's test \
             command as root, or leave out `--include-ignored` to skip the root tests"
        );
        // setup.sh installs what is missing (qemu, busybox, tcpdump, nftables, ...) and
        // builds the guest kernel and initramfs under /var/tmp/rxe; 1-2 s once done.
        run_setup(test, &[], &work_dir().join("setup.log"));
        let missing: Vec<&str> = ["ip", "qemu-system-x86_64", "tcpdump", "nft"]
            .into_iter()
            .filter(|tool| !on_path(tool))
            .collect();
        assert!(
            missing.is_empty(),
            "{test}: {} missing after interop/setup.sh",
            missing.join(", ")
        );
        let ferroce = build_ferroce();
        let namespace = Namespace::new();
        Harness {
            scripts: repository().join("interop"),
            namespace,
            ferroce,
        }
    }

    /// Environment of the harness scripts for guests with netdev MTU `mtu`.
    fn script(&self, name: &str, mtu: u32) -> Command {
        let mut command = Command::new("bash");
        command
            .arg(self.scripts.join(name))
            .env("RXE_NS", &self.namespace.name)
            .env("RXE_MTU", mtu.to_string())
            .env("RXE_KEEP_NS", "1")
            .stdin(Stdio::null());
        command
    }

    /// Creates the namespace and bridge (bridge MTU `mtu`).
    pub fn network_up(&self, mtu: u32) {
        let output = self.script("netns.sh", mtu).arg("up").output().unwrap();
        assert!(
            output.status.success(),
            "netns.sh up: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs `args` in the namespace to completion; its stdout.
    pub fn exec(&self, args: &[&str]) -> String {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.namespace.name])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `f` on a thread inside the namespace: devices it opens bind there (their
    /// engine threads inherit the namespace), and its sockets reach the guests.
    pub fn in_namespace<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.namespace.name);
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                    // SAFETY: `file` is an open namespace file for the duration of the
                    // call; setns only changes this thread's network namespace.
                    #[allow(unsafe_code)]
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Drops `percent`% of the RoCEv2 datagrams (UDP to 4791) at random, both to and
    /// from the namespace's host side (nftables `numgen`: this kernel has no netem).
    /// The output hook sees ferroce's UDP GSO runs before segmentation, so what it drops
    /// there is a whole run (up to 64 KiB of consecutive packets): burstier than 1%.
    pub fn add_loss(&self, percent: u8) {
        let run = |rule: &str| {
            let output = Command::new("ip")
                .args(["netns", "exec", &self.namespace.name, "nft", rule])
                .output()
                .unwrap();
            assert!(output.status.success(), "nft {rule}: {output:?}");
        };
        run("add table inet ferroce_rxe_loss");
        for hook in ["input", "output"] {
            run(&format!(
                "add chain inet ferroce_rxe_loss {hook} {{ type filter hook {hook} priority 0; }}"
            ));
            run(&format!(
                "add rule inet ferroce_rxe_loss {hook} udp dport 4791 numgen random mod 100 < {percent} counter drop"
            ));
        }
    }

    /// Datagrams the loss rules dropped so far (both hooks).
    pub fn dropped(&self) -> u64 {
        let rules = self.exec(&["nft", "list", "table", "inet", "ferroce_rxe_loss"]);
        let words: Vec<&str> = rules.split_whitespace().collect();
        words
            .windows(2)
            .filter(|pair| pair[0] == "packets")
            .filter_map(|pair| pair[1].parse::<u64>().ok())
            .sum()
    }

    /// Removes the loss rules.
    pub fn remove_loss(&self) {
        self.exec(&["nft", "delete", "table", "inet", "ferroce_rxe_loss"]);
    }

    /// Whether something listens on TCP `port` in the namespace.
    pub fn listening(&self, port: u16) -> bool {
        let filter = format!("sport = :{port}");
        !self.exec(&["ss", "-Hltn", &filter]).trim().is_empty()
    }

    /// Starts `ferroce args…` inside the namespace, stdout and stderr (its `RUST_LOG=debug`
    /// trace) into `<base>.host.out` / `<base>.host.log`.
    pub fn ferroce(&self, base: &Path, args: &[String]) -> HostProcess {
        let out = base.with_extension("host.out");
        let log = base.with_extension("host.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.namespace.name])
            .arg(&self.ferroce)
            .args(args)
            .env("RUST_LOG", "debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        HostProcess {
            child: Some(child),
            out,
            log,
        }
    }
}

/// Builds the `ferroce` binary of this workspace in this test's profile (a no-op when it
/// is up to date, as under `cargo test --workspace`) and returns its path.
fn build_ferroce() -> PathBuf {
    // target/<profile>/deps/interop_rxe-<hash> → target/<profile>/ferroce
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let release = profile_dir
        .file_name()
        .is_some_and(|name| name == "release");
    let target = profile_dir.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
    let mut command = Command::new(cargo);
    command
        .current_dir(repository())
        .args(["build", "-q", "-p", "ferroce-tools", "--bin", "ferroce"])
        .env("CARGO_TARGET_DIR", target);
    if release {
        command.arg("--release");
    }
    let status = command.status().unwrap();
    assert!(status.success(), "cargo build of the ferroce binary failed");
    let binary = profile_dir.join("ferroce");
    assert!(binary.is_file(), "no {}", binary.display());
    binary
}

/// A `ferroce` process in the namespace.
#[derive(Debug)]
pub struct HostProcess {
    child: Option<Child>,
    pub out: PathBuf,
    pub log: PathBuf,
}

impl HostProcess {
    /// Waits up to `limit` for the exit (then kills it: None).
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().unwrap().is_none())
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A booted guest running [`AGENT`].
#[derive(Debug)]
pub struct Guest {
    child: Option<Child>,
    /// The 9p share (cwd of the guest's commands).
    pub share: PathBuf,
    /// The guest's address (10.77.0.(10+index)).
    pub address: Ipv4Addr,
    /// The guest's tap in the namespace (where captures run).
    pub tap: String,
    /// Netdev MTU.
    pub mtu: u32,
    next: u32,
}

impl Guest {
    /// Boots guest `index` with netdev MTU `mtu` and waits until its first step ran
    /// (`ibv_devinfo`); Err(why) if it did not come up.
    pub fn boot(harness: &Harness, index: u8, mtu: u32) -> Result<Guest, String> {
        harness.network_up(mtu);
        let share = work_dir().join(format!("guest{index}-mtu{mtu}"));
        let _ = fs::remove_dir_all(&share);
        fs::create_dir_all(&share).unwrap();
        let agent = work_dir().join("agent.sh");
        fs::write(&agent, AGENT).unwrap();
        let log = work_dir().join(format!("guest{index}-mtu{mtu}.log"));
        let child = harness
            .script("run-guest.sh", mtu)
            .args(["-q", "-n", &index.to_string(), "-t", "3000", "-o"])
            .arg(&share)
            .arg("-f")
            .arg(&agent)
            .stdout(File::create(&log).unwrap())
            .stderr(Stdio::from(
                File::options().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .unwrap();
        let mut guest = Guest {
            child: Some(child),
            share,
            address: Ipv4Addr::new(10, 77, 0, 10 + index),
            tap: format!("rxetap{index}"),
            mtu,
            next: 0,
        };
        let step = guest.submit("ibv_devinfo -v | grep -E 'active_mtu|state'; cat /sys/class/infiniband/rxe0/ports/1/gids/1");
        match step.wait(Duration::from_secs(240)) {
            Some((0, _)) => Ok(guest),
            Some((rc, output)) => Err(format!("first guest step failed ({rc}): {output}")),
            None => {
                let console =
                    fs::read_to_string(guest.share.join("console.log")).unwrap_or_default();
                let run = fs::read_to_string(&log).unwrap_or_default();
                Err(format!(
                    "the guest did not run its first step in 240 s\nrun-guest.sh: {run}\nconsole tail: {}",
                    tail(&console, 20)
                ))
            }
        }
    }

    /// Hands the guest the shell text `script` as its next step.
    pub fn submit(&mut self, script: &str) -> Step {
        let n = self.next;
        self.next += 1;
        let temporary = self.share.join(format!("step.{n}.tmp"));
        fs::write(&temporary, script).unwrap();
        // Renamed whole, so the guest never runs half a script.
        fs::rename(&temporary, self.share.join(format!("step.{n}.sh"))).unwrap();
        Step {
            share: self.share.clone(),
            n,
        }
    }

    /// The number the next submitted step gets (a server step names its `ready.N`).
    pub fn next_step(&self) -> u32 {
        self.next
    }

    /// Whether the guest (qemu) still runs.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().unwrap().is_none())
    }

    /// Asks the agent to stop, waits for the power-off; kills the guest after 60 s.
    pub fn shut_down(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = fs::write(self.share.join("quit"), "");
        for _ in 0..600 {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // run-guest.sh's trap kills qemu and removes the tap on SIGTERM.
        let pid = libc::pid_t::try_from(child.id()).unwrap_or(0);
        // SAFETY: kill has no memory effects; `pid` is our own unreaped child.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let _ = child.wait();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// One submitted guest step.
#[derive(Debug)]
pub struct Step {
    share: PathBuf,
    pub n: u32,
}

impl Step {
    /// Waits up to `limit` for `ready.N` (a server step's port listens).
    pub fn wait_ready(&self, limit: Duration) -> bool {
        let ready = self.share.join(format!("ready.{}", self.n));
        let done = self.share.join(format!("rc.{}", self.n));
        let start = Instant::now();
        while start.elapsed() < limit {
            if ready.exists() {
                return true;
            }
            if done.exists() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Waits up to `limit` for the step's end: (exit status, output).
    pub fn wait(&self, limit: Duration) -> Option<(i32, String)> {
        let done = self.share.join(format!("rc.{}", self.n));
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(text) = fs::read_to_string(&done) {
                let rc = text.trim().parse().unwrap_or(-1);
                return Some((rc, self.output()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// What the step printed so far.
    pub fn output(&self) -> String {
        fs::read_to_string(self.share.join(format!("out.{}", self.n))).unwrap_or_default()
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
