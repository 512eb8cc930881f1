//! `ferroced`'s configuration file (TOML): where tenants attach, where metrics are
//! served, and the namespaces tenants attach to, each with its addresses (its GIDs),
//! who may attach, and its share of the device.
//!
//! ```toml
//! socket = "/run/ferroce/ferroced.sock"   # where tenants attach
//! metrics = "127.0.0.1:9464"               # optional; Prometheus text at /metrics
//!
//! [[namespace]]
//! name = "blue"
//! addresses = ["10.77.0.1"]                # its GIDs; must exist on the host
//! allow_uids = [0, 1000]                   # who may attach (SO_PEERCRED)
//! allow_gids = []
//! limits = { qps = 1024, cqs = 1024, mrs = 4096, mr_bytes = "1GiB", wrs = 65536 }
//! ```
//!
//! [`Config::parse`] checks everything the file alone can show and reports every
//! problem at once (an operator fixes a file in one pass); [`Config::check_host`] checks
//! what depends on the machine (the addresses are assigned to an interface that is up).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use ferroce_transport::engine::Quotas;
use serde::Deserialize;

/// A checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The Unix socket tenants attach to.
    pub socket: PathBuf,
    /// Where Prometheus text is served at `/metrics`, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// The namespaces, in the file's order.
    pub namespaces: Vec<NamespaceConfig>,
}

/// One tenant namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceConfig {
    /// Its name: what tenants attach by, and the label of its metrics.
    pub name: String,
    /// Its GIDs: the addresses its QPs send from and receive on.
    pub addresses: Vec<IpAddr>,
    /// Users who may attach (by the peer credentials of the connection).
    pub allow_uids: BTreeSet<u32>,
    /// Groups whose members may attach.
    pub allow_gids: BTreeSet<u32>,
    /// Its share of the device.
    pub quotas: Quotas,
}

impl NamespaceConfig {
    /// Whether a tenant with these credentials may attach.
    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        self.allow_uids.contains(&uid) || self.allow_gids.contains(&gid)
    }
}

/// What is wrong with a configuration: every problem found, each a sentence that names
/// the key and the namespace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The problems, in the file's order.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// The longest namespace name (it is a metrics label and a command-line argument).
pub const MAX_NAME_LEN: usize = 32;

// What the file says, before it is checked. Unknown keys are refused, so a misspelt
// limit is an error rather than no limit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    socket: PathBuf,
    metrics: Option<String>,
    #[serde(rename = "namespace", default)]
    namespaces: Vec<RawNamespace>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNamespace {
    name: String,
    addresses: Vec<String>,
    #[serde(default)]
    allow_uids: Vec<u32>,
    #[serde(default)]
    allow_gids: Vec<u32>,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    qps: Option<u64>,
    cqs: Option<u64>,
    srqs: Option<u64>,
    mrs: Option<u64>,
    mr_bytes: Option<ByteCount>,
    wrs: Option<u64>,
}

/// A number of bytes, as a plain integer or with a binary unit (`"1GiB"`, `"512 MiB"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ByteCount {
    Plain(u64),
    WithUnit(String),
}

impl ByteCount {
    fn bytes(&self) -> Result<u64, String> {
        let text = match self {
            ByteCount::Plain(bytes) => return Ok(*bytes),
            ByteCount::WithUnit(text) => text.trim(),
        };
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let shift = match unit.trim() {
            "" | "B" => 0,
            "K" | "KiB" => 10,
            "M" | "MiB" => 20,
            "G" | "GiB" => 30,
            "T" | "TiB" => 40,
            _ => {
                return Err(format!(
                    "\"{text}\" is not a size (a number of bytes, or with KiB, MiB, GiB or TiB)"
                ))
            }
        };
        number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1 << shift))
            .ok_or_else(|| format!("\"{text}\" is not a size that fits in 64 bits"))
    }
}

impl Config {
    /// Parses and checks a configuration file's text (nothing about the host).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|error| ConfigError {
            problems: vec![error.to_string().trim_end().to_string()],
        })?;
        let mut problems = Vec::new();
        if !raw.socket.is_absolute() {
            problems.push(format!(
                "socket: \"{}\" must be an absolute path",
                raw.socket.display()
            ));
        }
        let metrics = raw.metrics.as_deref().and_then(|text| {
            text.parse::<SocketAddr>()
                .map_err(|_| {
                    problems.push(format!(
                        "metrics: \"{text}\" is not an address and port (e.g. \"127.0.0.1:9464\")"
                    ))
                })
                .ok()
        });
        if raw.namespaces.is_empty() {
            problems.push("no [[namespace]]: tenants would have nothing to attach to".into());
        }
        // Which namespace claimed each name and address first.
        let mut names = BTreeSet::new();
        let mut owners: BTreeMap<IpAddr, String> = BTreeMap::new();
        let mut namespaces = Vec::new();
        for raw in raw.namespaces {
            let ns = check_namespace(raw, &mut problems);
            if !names.insert(ns.name.clone()) {
                problems.push(format!("namespace \"{}\" is defined twice", ns.name));
            }
            for address in &ns.addresses {
                if let Some(owner) = owners.insert(*address, ns.name.clone()) {
                    if owner != ns.name {
                        problems.push(format!(
                            "namespace \"{}\": address {address} is already namespace \"{owner}\"'s \
                             (a GID belongs to one namespace)",
                            ns.name
                        ));
                    }
                }
            }
            namespaces.push(ns);
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(Config {
            socket: raw.socket,
            metrics,
            namespaces,
        })
    }

    /// Checks what depends on this machine: each namespace address is assigned to an
    /// interface that is up (or inside a loopback interface's subnet).
    pub fn check_host(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        for ns in &self.namespaces {
            for &address in &ns.addresses {
                match ferroce_transport::io::link::address_usable(address) {
                    Ok(true) => {}
                    Ok(false) => problems.push(format!(
                        "namespace \"{}\": address {address} is on no interface that is up \
                         (add it, e.g. `ip address add {address}/24 dev eth0`)",
                        ns.name
                    )),
                    Err(error) => problems.push(format!(
                        "namespace \"{}\": cannot list this host's addresses: {error}",
                        ns.name
                    )),
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

fn check_namespace(raw: RawNamespace, problems: &mut Vec<String>) -> NamespaceConfig {
    let name = raw.name;
    let valid_name = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_name {
        problems.push(format!(
            "namespace name \"{name}\": use 1 to {MAX_NAME_LEN} letters, digits, '-' or '_', \
             starting with a letter or digit"
        ));
    }
    let mut addresses = Vec::new();
    for text in &raw.addresses {
        match text.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() || ip.is_multicast() => problems.push(format!(
                "namespace \"{name}\": address {ip} cannot be a GID (unspecified or multicast)"
            )),
            Ok(ip) => {
                let ip = ip.to_canonical();
                if addresses.contains(&ip) {
                    problems.push(format!(
                        "namespace \"{name}\": address {ip} is listed twice"
                    ));
                } else {
                    addresses.push(ip);
                }
            }
            Err(_) => problems.push(format!(
                "namespace \"{name}\": \"{text}\" is not an IPv4 or IPv6 address"
            )),
        }
    }
    if raw.addresses.is_empty() {
        problems.push(format!(
            "namespace \"{name}\": addresses is empty: its QPs would have no GID"
        ));
    }
    if raw.allow_uids.is_empty() && raw.allow_gids.is_empty() {
        problems.push(format!(
            "namespace \"{name}\": allow_uids and allow_gids are both empty: no tenant could attach"
        ));
    }
    let limits = raw.limits;
    let registered_bytes = match limits.mr_bytes.as_ref().map(ByteCount::bytes) {
        Some(Err(why)) => {
            problems.push(format!("namespace \"{name}\": limits.mr_bytes: {why}"));
            None
        }
        Some(Ok(bytes)) => Some(bytes),
        None => None,
    };
    let mut quota = |key: &str, value: Option<u64>| match value {
        Some(0) => {
            problems.push(format!(
                "namespace \"{name}\": limits.{key} = 0 would refuse everything \
                 (leave it out for no limit)"
            ));
            None
        }
        other => other,
    };
    let quotas = Quotas {
        qps: quota("qps", limits.qps),
        cqs: quota("cqs", limits.cqs),
        srqs: quota("srqs", limits.srqs),
        mrs: quota("mrs", limits.mrs),
        registered_bytes: quota("mr_bytes", registered_bytes),
        work_requests: quota("wrs", limits.wrs),
    };
    NamespaceConfig {
        name,
        addresses,
        allow_uids: raw.allow_uids.into_iter().collect(),
        allow_gids: raw.allow_gids.into_iter().collect(),
        quotas,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        socket = "/run/ferroce/ferroced.sock"
        metrics = "127.0.0.1:9464"

        [[namespace]]
        name = "blue"
        addresses = ["10.77.0.1", "fd00::1"]
        allow_uids = [0, 1000]
        limits = { qps = 1024, cqs = 1024, mrs = 4096, mr_bytes = "1GiB", wrs = 65536 }

        [[namespace]]
        name = "red"
        addresses = ["10.77.0.2"]
        allow_gids = [100]
    "#;

    fn problems(text: &str) -> Vec<String> {
        Config::parse(text).unwrap_err().problems
    }

    #[test]
    fn the_documented_example_parses() {
        let config = Config::parse(EXAMPLE).unwrap();
        assert_eq!(config.socket, PathBuf::from("/run/ferroce/ferroced.sock"));
        assert_eq!(config.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        let [blue, red] = &config.namespaces[..] else {
            panic!("{config:?}")
        };
        assert_eq!(blue.name, "blue");
        assert_eq!(
            blue.addresses,
            [
                "10.77.0.1".parse::<IpAddr>().unwrap(),
                "fd00::1".parse().unwrap()
            ]
        );
        assert_eq!(
            blue.quotas,
            Quotas {
                qps: Some(1024),
                cqs: Some(1024),
                srqs: None,
                mrs: Some(4096),
                registered_bytes: Some(1 << 30),
                work_requests: Some(65536),
            }
        );
        assert!(blue.allows(1000, 5) && !blue.allows(1001, 5));
        assert_eq!(red.quotas, Quotas::UNLIMITED);
        assert!(red.allows(4242, 100) && !red.allows(0, 0));
    }

    #[test]
    fn sizes_take_binary_units() {
        let bytes = |text: &str| ByteCount::WithUnit(text.into()).bytes();
        assert_eq!(bytes("1GiB"), Ok(1 << 30));
        assert_eq!(bytes("512 MiB"), Ok(512 << 20));
        assert_eq!(bytes("4K"), Ok(4096));
        assert_eq!(bytes("100"), Ok(100));
        assert!(bytes("1GB").unwrap_err().contains("not a size"));
        assert!(bytes("GiB").unwrap_err().contains("fits"));
        assert!(bytes("99999999999TiB").unwrap_err().contains("fits"));
        assert_eq!(ByteCount::Plain(7).bytes(), Ok(7));
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_namespace() {
        let found = problems(
            r#"
            socket = "ferroced.sock"
            metrics = "localhost"
            [[namespace]]
            name = "blue"
            addresses = ["10.77.0.1", "10.77.0.1", "10.77.0.300", "0.0.0.0"]
            limits = { qps = 0, mr_bytes = "lots" }
            [[namespace]]
            name = "bad name"
            addresses = ["10.77.0.1"]
            allow_uids = [0]
            [[namespace]]
            name = "blue"
            addresses = []
            allow_uids = [0]
            "#,
        );
        let expected = [
            "socket: \"ferroced.sock\" must be an absolute path",
            "metrics: \"localhost\" is not an address and port",
            "namespace \"blue\": address 10.77.0.1 is listed twice",
            "namespace \"blue\": \"10.77.0.300\" is not an IPv4 or IPv6 address",
            "namespace \"blue\": address 0.0.0.0 cannot be a GID",
            "namespace \"blue\": allow_uids and allow_gids are both empty",
            "namespace \"blue\": limits.mr_bytes: \"lots\" is not a size",
            "namespace \"blue\": limits.qps = 0 would refuse everything",
            "namespace name \"bad name\": use 1 to 32 letters",
            "namespace \"bad name\": address 10.77.0.1 is already namespace \"blue\"'s",
            "namespace \"blue\": addresses is empty",
            "namespace \"blue\" is defined twice",
        ];
        assert_eq!(found.len(), expected.len(), "{found:#?}");
        for (found, expected) in found.iter().zip(expected) {
            assert!(found.starts_with(expected), "{found:?} vs {expected:?}");
        }
    }

    #[test]
    fn syntax_errors_and_unknown_keys_name_the_line() {
        let found = problems("socket = \"/s\"\n[[namespace]]\nname = \"a\"\naddresses = [\"10.0.0.1\"]\nallow_uids = [0]\nlimits = { qp = 4 }\n");
        assert!(
            found[0].contains("line 6") && found[0].contains("unknown field `qp`"),
            "{found:?}"
        );
        let found = problems("socket = \"/s\"\n[[namespace]\n");
        assert!(found[0].contains("line 2"), "{found:?}");
        let found = problems("[[namespace]]\nname = \"a\"\naddresses = []\n");
        assert!(found[0].contains("missing field `socket`"), "{found:?}");
        assert_eq!(
            problems("socket = \"/s\"\n"),
            ["no [[namespace]]: tenants would have nothing to attach to"]
        );
    }

    #[test]
    fn the_host_check_finds_addresses_no_interface_holds() {
        let text = |address: &str| {
            format!(
                "socket = \"/s\"\n[[namespace]]\nname = \"a\"\naddresses = [\"{address}\"]\nallow_uids = [0]\n"
            )
        };
        // 127.0.0.0/8 is on `lo`; 192.0.2.0/24 is TEST-NET-1, on no host.
        Config::parse(&text("127.0.0.9"))
            .unwrap()
            .check_host()
            .unwrap();
        let error = Config::parse(&text("192.0.2.77"))
            .unwrap()
            .check_host()
            .unwrap_err();
        assert!(
            error.problems[0]
                .starts_with("namespace \"a\": address 192.0.2.77 is on no interface that is up"),
            "{error}"
        );
    }
}
