//! Two-host fixtures over Linux network namespaces: namespaces with unique names, a veth
//! pair between them, optional nftables loss, optional software GSO before the veth,
//! tcpdump captures, and ferroce devices opened inside a namespace in this process.
//!
//! Everything is made with `ip`, `nft`, `ethtool` and `tcpdump` and removed in `Drop`
//! (a panicking test unwinds through it). Namespaces are named `ferroce-<pid>-<n>`;
//! ones left by a killed run (their pid gone) are removed when the next run starts.
#![allow(dead_code)] // each test uses its own subset
#![allow(clippy::unwrap_used)] // test fixtures fail loudly

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Once};
use std::time::Duration;

use ferroce::{Device, DeviceConfig};

static COUNTER: AtomicU32 = AtomicU32::new(0);
const PREFIX: &str = "ferroce-";

/// Makes sure this machine can run a namespace test needing `tools` (besides `ip`), or
/// fails it saying what is missing. The tests that call this are `#[ignore]`d with the
/// reason, so they only run when asked for (`-- --include-ignored`, the README's test
/// command): missing root is then a failure, and missing tools are installed first
/// (`interop/setup.sh --host-only`, root on Debian).
pub fn require(test: &str, tools: &[&str]) {
    assert!(
        is_root(),
        "{test}: network namespaces need root (run the README's test command as root, or \
         leave out `--include-ignored` to skip the root tests)"
    );
    let tools: Vec<&str> = std::iter::once("ip").chain(tools.iter().copied()).collect();
    if tools.iter().any(|tool| !on_path(tool)) {
        install_host_tools(test);
    }
    let missing: Vec<&str> = tools.into_iter().filter(|tool| !on_path(tool)).collect();
    assert!(
        missing.is_empty(),
        "{test}: missing {} after `interop/setup.sh --host-only` \
         (Debian: apt-get install iproute2 nftables tcpdump ethtool)",
        missing.join(", ")
    );
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    euid == 0
}

/// The repository's root (`tests/..`).
pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `interop/setup.sh` with `args`, its output into `log`; panics with its stderr
/// when it fails. The one way the tests install what they need: the script knows the
/// Debian packages (host tools for namespaces, loss rules and captures; the rxe guest).
pub fn run_setup(test: &str, args: &[&str], log: &Path) {
    assert!(
        on_path("apt-get") && on_path("dpkg"),
        "{test}: interop/setup.sh installs the host tools with apt-get: this is not Debian"
    );
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let err = log.with_extension("err");
    let status = Command::new("bash")
        .arg(repository().join("interop").join("setup.sh"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(log).unwrap())
        .stderr(File::create(&err).unwrap())
        .status()
        .unwrap_or_else(|e| panic!("{test}: bash interop/setup.sh: {e}"));
    assert!(
        status.success(),
        "{test}: interop/setup.sh {} failed ({status}), log in {}:\n{}",
        args.join(" "),
        err.display(),
        std::fs::read_to_string(&err).unwrap_or_default()
    );
}

/// Installs the host tools once per process (`interop/setup.sh --host-only`).
fn install_host_tools(test: &str) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("netns")
            .join("setup-host.log");
        eprintln!("{test}: installing the host tools (interop/setup.sh --host-only)");
        run_setup(test, &["--host-only"], &log);
    });
}

/// Whether `tool` is an executable file on `PATH` (or in the sbin directories).
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(tool).is_file())
}

/// Runs a command to completion; panics with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {}: {}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `args` inside namespace `ns` (`ip netns exec`).
pub fn run_in(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["netns", "exec", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Removes namespaces of earlier runs whose process is gone (a run killed before its
/// `Drop`s ran).
fn sweep_stale() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    });
}

/// A network namespace, deleted when dropped.
#[derive(Debug)]
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    /// A new namespace with a unique name and its loopback up.
    pub fn new() -> Namespace {
        sweep_stale();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{PREFIX}{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Namespace { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> …`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> String {
        run_in(&self.name, args)
    }

    /// Drops `percent`% of the UDP datagrams to port 4791 arriving in this namespace, at
    /// random (`numgen random mod 100 < N drop`; netem is not in every kernel), counted.
    pub fn add_loss(&self, percent: u8) {
        self.exec(&["nft", "add", "table", "inet", "ferroce_loss"]);
        self.exec(&[
            "nft",
            "add chain inet ferroce_loss input { type filter hook input priority 0; }",
        ]);
        let rule = format!(
            "add rule inet ferroce_loss input udp dport 4791 numgen random mod 100 < {percent} counter drop"
        );
        self.exec(&["nft", &rule]);
    }

    /// Packets the loss rule dropped so far.
    pub fn dropped(&self) -> u64 {
        let rules = self.exec(&["nft", "list", "table", "inet", "ferroce_loss"]);
        rules
            .split_whitespace()
            .skip_while(|word| *word != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter in:\n{rules}"))
    }

    /// Turns off checksum and segmentation offloads of `interface`, so the kernel cuts
    /// GSO runs into segments in software before the device (and its capture tap) sees
    /// them: a capture then shows every segment with the IPv4 ID it really carries.
    pub fn software_gso(&self, interface: &str) {
        self.exec(&[
            "ethtool",
            "-K",
            interface,
            "tx",
            "off",
            "gso",
            "off",
            "tx-udp-segmentation",
            "off",
        ]);
    }

    /// Opens a ferroce device inside this namespace. A helper thread enters the
    /// namespace and opens the device there: its sockets belong to the namespace for
    /// good, and the engine thread it spawns inherits the namespace.
    pub fn open_device(&self, config: DeviceConfig) -> Device {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    enter_namespace(&path);
                    Device::open(config)
                })
                .join()
                .expect("the opening thread")
        })
        .unwrap_or_else(|e| panic!("open a device in {}: {e}", self.name))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Sockets still open keep the namespace alive until they close; the name goes now.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Moves the calling thread into the network namespace bound at `path`.
fn enter_namespace(path: &str) {
    let file = File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: `file` is an open namespace file for the duration of the call; setns only
    // changes this thread's network namespace.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// A /24 of 10.0.0.0/8 unique to this test in this process (the namespaces isolate
/// them anyway; distinct subnets keep captures of different tests apart).
fn subnet() -> [u8; 3] {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    [10, 64 + (std::process::id() % 128) as u8, (n % 250) as u8]
}

/// One end of a link: namespace, interface, address.
#[derive(Debug)]
pub struct Host {
    pub ns: Namespace,
    pub interface: String,
    pub address: Ipv4Addr,
}

impl Host {
    /// The address as a GID.
    pub fn gid(&self) -> IpAddr {
        IpAddr::V4(self.address)
    }
}

/// How to build a [`VethPair`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkOptions {
    /// Percentage of RoCEv2 datagrams each namespace drops on input (0: none).
    pub loss_percent: u8,
    /// Segment GSO runs in software before each veth (see [`Namespace::software_gso`]).
    pub software_gso: bool,
}

/// Two namespaces joined by a veth pair, addresses .1 and .2 of a private /24, links up.
#[derive(Debug)]
pub struct VethPair {
    pub a: Host,
    pub b: Host,
}

impl VethPair {
    pub fn new(options: LinkOptions) -> VethPair {
        let (ns_a, ns_b) = (Namespace::new(), Namespace::new());
        // Made straight inside the namespaces: nothing appears in the host's namespace,
        // and deleting either namespace deletes the pair.
        run(
            "ip",
            &[
                "link", "add", "veth-a", "netns", &ns_a.name, "type", "veth", "peer", "name",
                "veth-b", "netns", &ns_b.name,
            ],
        );
        let [x, y, z] = subnet();
        let mut hosts =
            [(ns_a, "veth-a", 1u8), (ns_b, "veth-b", 2u8)].map(|(ns, interface, host)| {
                let address = Ipv4Addr::new(x, y, z, host);
                ns.ip(&["addr", "add", &format!("{address}/24"), "dev", interface]);
                ns.ip(&["link", "set", interface, "up"]);
                if options.loss_percent > 0 {
                    ns.add_loss(options.loss_percent);
                }
                if options.software_gso {
                    ns.software_gso(interface);
                }
                Some(Host {
                    ns,
                    interface: interface.to_string(),
                    address,
                })
            });
        let a = hosts[0].take().unwrap();
        let b = hosts[1].take().unwrap();
        VethPair { a, b }
    }
}

/// One namespace whose loopback carries two addresses of a private /24: two hosts
/// that talk over `lo`.
#[derive(Debug)]
pub struct LoopbackHosts {
    pub ns: Namespace,
    pub addresses: [Ipv4Addr; 2],
}

impl LoopbackHosts {
    pub fn new() -> LoopbackHosts {
        let ns = Namespace::new();
        let [x, y, z] = subnet();
        let addresses = [Ipv4Addr::new(x, y, z, 1), Ipv4Addr::new(x, y, z, 2)];
        for address in addresses {
            ns.ip(&["addr", "add", &format!("{address}/24"), "dev", "lo"]);
        }
        LoopbackHosts { ns, addresses }
    }
}

/// A tcpdump of RoCEv2 traffic on one interface of a namespace, written to a pcap.
#[derive(Debug)]
pub struct Capture {
    child: Option<Child>,
    stderr: Option<BufReader<ChildStderr>>,
    pub path: PathBuf,
}

impl Capture {
    /// Starts tcpdump and returns once it listens (its "listening on" line).
    pub fn start(ns: &Namespace, interface: &str, path: &Path) -> Capture {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        let _ = std::fs::remove_file(path);
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", &ns.name, "tcpdump", "-i", interface, "-n", "-s", "0",
            ])
            .args(["-U", "--immediate-mode", "-w"])
            .arg(path)
            .args(["udp", "port", "4791"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpdump");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        // Wait for the line in a helper thread, so a tcpdump that hangs cannot hang us.
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let mut seen = String::new();
            let mut line = String::new();
            loop {
                line.clear();
                match stderr.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        seen.push_str(&line);
                        if line.contains("listening on") {
                            let _ = tx.send(Ok(()));
                            return (stderr, seen);
                        }
                    }
                }
            }
            let _ = tx.send(Err(seen.clone()));
            (stderr, seen)
        });
        let mut capture = Capture {
            child: Some(child),
            stderr: None,
            path: path.to_path_buf(),
        };
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {
                capture.stderr = Some(waiter.join().expect("stderr reader").0);
                capture
            }
            Ok(Err(output)) => panic!("tcpdump did not start: {output}"),
            Err(_) => panic!("tcpdump did not say it listens within 10 s"),
        }
    }

    /// Stops tcpdump (SIGINT, so it flushes the file) and returns the capture and what
    /// tcpdump said at exit (its packet counts).
    pub fn stop(mut self) -> (Vec<u8>, String) {
        // tcpdump stops reading at SIGINT, leaving what the kernel buffered for it
        // unwritten: first wait until the file (written per packet with -U) stops growing.
        let size = || std::fs::metadata(&self.path).map_or(0, |m| m.len());
        let mut last = size();
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(200));
            let now = size();
            if now == last {
                break;
            }
            last = now;
        }
        let said = self.interrupt();
        let bytes =
            std::fs::read(&self.path).unwrap_or_else(|e| panic!("{}: {e}", self.path.display()));
        (bytes, said)
    }

    fn interrupt(&mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return String::new();
        };
        // `ip netns exec` execs tcpdump in place, so the child's pid is tcpdump's.
        let pid = libc::pid_t::try_from(child.id()).unwrap_or(0);
        // SAFETY: kill has no memory effects; `pid` is our own unreaped child.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        let _ = child.wait();
        let mut said = String::new();
        if let Some(mut stderr) = self.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut said);
        }
        said
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.interrupt();
    }
}

/// Where a test keeps its captures: `target/tmp/netns/`. A [`KeepOnFailure`] guard
/// deletes them when the test passes and prints their paths when it fails.
pub fn capture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("netns")
        .join(format!("{name}-{}.pcap", std::process::id()))
}

/// Deletes the listed files when dropped normally; keeps them (and says where) when
/// dropped by a panic.
#[derive(Debug, Default)]
pub struct KeepOnFailure(pub Vec<PathBuf>);

impl Drop for KeepOnFailure {
    fn drop(&mut self) {
        for path in &self.0 {
            if std::thread::panicking() {
                eprintln!("capture kept for debugging: {}", path.display());
            } else {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
