//! Validating each field of the merged configuration into its final type.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use super::file::FileConfig;
use super::{AgentConfig, ConfigError, KubeSettings, KubeValues, LogFormat, Mtu, Rolodex, Secret};
use crate::routes::IpNet;
use crate::tun::{self, TunError};

pub const DEFAULT_ROLODEX_PORT: u16 = 6264;
const DEFAULT_TUN_NAME: &str = "rm0";
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(25);
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
const DEFAULT_PUNCH_TTL: u8 = 2;
const MIN_SECRET: usize = 16;
/// Secrets are short; a huge file is a wrong path.
const MAX_SECRET_FILE: u64 = 64 * 1024;
const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=9000;
const INTERVAL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);
const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);
const STATUS_INTERVAL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);

/// Looks up an environment variable (`--kube` reads NODE_NAME and POD_NAMESPACE); injectable for tests.
pub(super) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn invalid(field: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, value: value.to_owned(), reason: reason.into() }
}

fn missing(field: &'static str, hint: &'static str) -> ConfigError {
    ConfigError::Missing { field, hint }
}

/// The merged file and flags: a complete static configuration, or with `--kube` the part that does not
/// come from the API (see [`validate_kube`]).
pub(super) fn validate(raw: FileConfig, env: Env<'_>) -> Result<AgentConfig, ConfigError> {
    if raw.kube == Some(true) {
        return validate_kube(raw, env);
    }
    let kube_only = [
        ("mesh-network", &raw.mesh_network),
        ("node-name", &raw.node_name),
        ("namespace", &raw.namespace),
        ("status-interval", &raw.status_interval),
    ];
    for (field, v) in kube_only {
        if let Some(v) = v {
            return Err(invalid(field, v, "only used with --kube"));
        }
    }
    build(raw)
}

/// `--kube`: network, name, addresses and rolodexes come from the API, so giving them is an error. Every
/// other value is checked now, so that a bad flag fails before the API is asked anything; the result
/// carries placeholders until [`complete_kube`].
fn validate_kube(raw: FileConfig, env: Env<'_>) -> Result<AgentConfig, ConfigError> {
    const FROM_API: &str = "not allowed with --kube: the MeshNetwork and MeshMember objects set it";
    let given = [
        ("network", raw.network.clone()),
        ("name", raw.name.clone()),
        ("address", raw.addresses.first().cloned()),
        ("rolodex", raw.rolodex.first().cloned()),
    ];
    for (field, v) in given {
        if let Some(v) = v {
            return Err(invalid(field, &v, FROM_API));
        }
    }
    let mesh_network = raw.mesh_network.clone().ok_or_else(|| {
        missing("mesh-network", "--kube needs --mesh-network NAME (or mesh-network: in the config file)")
    })?;
    check_object_name("mesh-network", &mesh_network, 253, true)?;
    let node_name =
        raw.node_name.clone().or_else(|| env("NODE_NAME").filter(|v| !v.is_empty())).ok_or_else(|| {
            missing(
                "node-name",
                "set --node-name or the NODE_NAME environment variable (downward API spec.nodeName)",
            )
        })?;
    // The node name is also the member name on the wire, which allows at most 63 characters.
    check_object_name("node-name", &node_name, 63, true)?;
    if mesh_network.len() + 1 + node_name.len() > 253 {
        return Err(invalid(
            "mesh-network",
            &mesh_network,
            "too long: the MeshMember name <mesh-network>-<node-name> exceeds 253 characters",
        ));
    }
    let namespace = raw.namespace.clone().or_else(|| env("POD_NAMESPACE").filter(|v| !v.is_empty()));
    if let Some(ns) = &namespace {
        check_object_name("namespace", ns, 63, false)?;
    }
    let status_interval = match &raw.status_interval {
        None => DEFAULT_STATUS_INTERVAL,
        Some(v) => {
            let d = parse_duration(v).map_err(|reason| invalid("status-interval", v, reason))?;
            if !STATUS_INTERVAL_RANGE.contains(&d) {
                return Err(invalid("status-interval", v, "must be between 1s and 1h"));
            }
            d
        }
    };
    let probe = FileConfig {
        network: Some("kube".into()),
        name: Some(node_name.clone()),
        addresses: vec!["100.64.0.1/10".into()],
        rolodex: vec!["127.0.0.1".into()],
        ..raw.clone()
    };
    let mut cfg = build(probe)?;
    cfg.network.clear();
    (cfg.overlay_v4, cfg.overlay_v6) = (None, None);
    cfg.rolodex.clear();
    cfg.kube = Some(KubeSettings { mesh_network, node_name, namespace, status_interval, raw });
    Ok(cfg)
}

/// `--kube`: the configuration with the API's values filled in; keepalive, MTU and listen port given
/// locally (flags or file) win over the MeshNetwork's.
pub(super) fn complete_kube(k: &KubeSettings, v: KubeValues) -> Result<AgentConfig, ConfigError> {
    let mut raw = k.raw.clone();
    raw.network = Some(v.network);
    raw.name = Some(k.node_name.clone());
    raw.addresses = v.addresses;
    raw.rolodex = v.rolodex;
    raw.keepalive = raw.keepalive.or(v.keepalive);
    raw.mtu = raw.mtu.or(v.mtu);
    raw.listen_port = raw.listen_port.or(v.listen_port);
    let mut cfg = build(raw)?;
    cfg.kube = Some(k.clone());
    Ok(cfg)
}

/// A Kubernetes object name: 1..=max of a-z, 0-9, '-' (and '.' if `dots`), alphanumeric at both ends.
fn check_object_name(field: &'static str, v: &str, max: usize, dots: bool) -> Result<(), ConfigError> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.');
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if v.is_empty() || v.len() > max {
        return Err(invalid(field, v, format!("must be 1-{max} characters long")));
    }
    if !v.chars().all(ok_char) || !edge(v.chars().next()) || !edge(v.chars().last()) {
        let set = if dots { "a-z, 0-9, '-' and '.'" } else { "a-z, 0-9 and '-'" };
        return Err(invalid(
            field,
            v,
            format!("not a Kubernetes name: use {set}, starting and ending with a letter or digit"),
        ));
    }
    Ok(())
}

/// Syntax checks first, then the slower I/O (secret file, name resolution).
fn build(raw: FileConfig) -> Result<AgentConfig, ConfigError> {
    let network =
        raw.network.ok_or_else(|| missing("network", "set --network (or network: in the config file)"))?;
    check_label("network", &network, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'
    })?;
    let name = match raw.name {
        Some(n) => n,
        None => hostname()?,
    };
    check_label("name", &name, |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))?;
    let (overlay_v4, overlay_v6) = overlay_addresses(&raw.addresses)?;
    let tun_name = raw.tun_name.unwrap_or_else(|| DEFAULT_TUN_NAME.into());
    if let Err(TunError::BadName { reason, .. }) = tun::validate_name(&tun_name) {
        return Err(invalid("tun-name", &tun_name, reason));
    }
    let mtu = match raw.mtu {
        Some(v) => parse_mtu(&v, overlay_v6.is_some())?,
        None => Mtu::Auto,
    };
    let listen_port = match raw.listen_port {
        Some(v) => parse_number("listen-port", &v, 0..=u16::MAX, "a port number 0-65535")?,
        None => 0,
    };
    let keepalive = parse_interval("keepalive", raw.keepalive, DEFAULT_KEEPALIVE)?;
    let heartbeat = parse_interval("heartbeat", raw.heartbeat, DEFAULT_HEARTBEAT)?;
    let punch_ttl = match raw.punch_ttl {
        Some(v) => parse_number("punch-ttl", &v, 1..=u8::MAX, "a hop count 1-255")?,
        None => DEFAULT_PUNCH_TTL,
    };
    let metrics_listen = match raw.metrics_listen.as_deref().map(str::trim) {
        None | Some("" | "none") => None,
        Some(v) => Some(
            v.parse::<SocketAddr>()
                .map_err(|_| invalid("metrics-listen", v, "expected ADDR:PORT, e.g. 127.0.0.1:9464"))?,
        ),
    };
    let log_format = match raw.log_format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(v) => return Err(invalid("log-format", v, "expected text or json")),
    };
    let busy_poll = match raw.busy_poll {
        None => Duration::ZERO,
        Some(v) => {
            let d = parse_duration(&v).map_err(|reason| invalid("busy-poll", &v, reason))?;
            if d > Duration::from_millis(10) {
                return Err(invalid("busy-poll", &v, "must be at most 10ms"));
            }
            d
        }
    };
    let specs = raw
        .rolodex
        .iter()
        .map(|s| rolodex_spec(s).map_err(|reason| invalid("rolodex", s, reason)))
        .collect::<Result<Vec<_>, _>>()?;
    if specs.is_empty() {
        return Err(missing("rolodex", "set --rolodex HOST[:PORT] (or rolodex: in the config file)"));
    }
    let secret_file = raw
        .secret_file
        .ok_or_else(|| missing("secret-file", "set --secret-file (or secret-file: in the config file)"))?;
    let secret = read_secret(&secret_file)?;
    let rolodex =
        specs.into_iter().map(|(host, port)| resolve(&host, port)).collect::<Result<Vec<_>, _>>()?;
    Ok(AgentConfig {
        network,
        secret,
        name,
        overlay_v4,
        overlay_v6,
        rolodex,
        tun_name,
        mtu,
        listen_port,
        keepalive,
        heartbeat,
        punch_ttl,
        metrics_listen,
        log_format,
        busy_poll,
        kube: None,
    })
}

/// 1..=63 characters from an allowed set (names appear in DNS-like contexts and in the
/// `;`-separated PSK identity).
fn check_label(field: &'static str, v: &str, allowed: impl Fn(char) -> bool) -> Result<(), ConfigError> {
    if v.is_empty() || v.len() > 63 {
        return Err(invalid(field, v, "must be 1-63 characters long"));
    }
    if let Some(c) = v.chars().find(|c| !allowed(*c)) {
        let set =
            if field == "network" { "a-z, 0-9, '-' and '.'" } else { "letters, digits, '-', '.' and '_'" };
        return Err(invalid(field, v, format!("{c:?} is not allowed; use {set}")));
    }
    Ok(())
}

fn hostname() -> Result<String, ConfigError> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its full length; the result is NUL-terminated or
    // fills the buffer, and we stop at the first NUL either way.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if rc != 0 || end == 0 {
        return Err(missing("name", "the hostname is unavailable; set --name (or name: in the config file)"));
    }
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// One IPv4 and/or one IPv6 address, each with the overlay prefix length.
fn overlay_addresses(list: &[String]) -> Result<(Option<IpNet>, Option<IpNet>), ConfigError> {
    let (mut v4, mut v6) = (None, None);
    for s in list {
        let net: IpNet =
            s.trim().parse().map_err(|e: crate::routes::IpNetError| invalid("address", s, e.reason()))?;
        let a = net.addr();
        if a.is_unspecified() || a.is_loopback() || a.is_multicast() {
            return Err(invalid("address", s, "not a unicast host address"));
        }
        if net.is_host() {
            return Err(invalid(
                "address",
                s,
                "the prefix is the overlay network and must leave room for other members, e.g. /10 or /64",
            ));
        }
        let too_small = if net.is_ipv4() { 31 } else { 127 };
        if net.prefix_len() < too_small && net.network().addr() == a {
            return Err(invalid("address", s, "this is the network address, not a host address"));
        }
        let slot = if net.is_ipv4() { &mut v4 } else { &mut v6 };
        if slot.replace(net).is_some() {
            let family = if net.is_ipv4() { "IPv4" } else { "IPv6" };
            return Err(invalid(
                "address",
                s,
                format!("a second {family} address; give at most one IPv4 and one IPv6"),
            ));
        }
    }
    if v4.is_none() && v6.is_none() {
        return Err(missing(
            "address",
            "set --address CIDR (or addresses: in the config file), e.g. 100.64.0.1/10",
        ));
    }
    Ok((v4, v6))
}

fn parse_mtu(v: &str, ipv6_overlay: bool) -> Result<Mtu, ConfigError> {
    let t = v.trim();
    if t.eq_ignore_ascii_case("auto") {
        return Ok(Mtu::Auto);
    }
    let m: u32 = parse_number("mtu", v, MTU_RANGE, "auto or a number 576-9000")?;
    if ipv6_overlay && m < tun::IPV6_MIN_MTU {
        return Err(invalid("mtu", v, "an IPv6 overlay address needs at least 1280"));
    }
    Ok(Mtu::Fixed(m))
}

/// A decimal integer within `range` (digits only: no sign, no hex).
fn parse_number<T>(
    field: &'static str,
    v: &str,
    range: std::ops::RangeInclusive<T>,
    expected: &str,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd,
{
    let t = v.trim();
    let n = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) { t.parse::<T>().ok() } else { None };
    n.filter(|n| range.contains(n)).ok_or_else(|| invalid(field, v, format!("expected {expected}")))
}

fn parse_interval(
    field: &'static str,
    v: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    let d = parse_duration(&v).map_err(|reason| invalid(field, &v, reason))?;
    if !INTERVAL_RANGE.contains(&d) {
        return Err(invalid(field, &v, "must be between 100ms and 1h"));
    }
    Ok(d)
}

/// Humane durations: one or more `<integer><unit>` with unit ms, s, m or h, e.g. `25s`,
/// `500ms`, `2m`, `1m30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const HINT: &str = "e.g. 25s, 500ms, 2m";
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(format!("empty duration ({HINT})"));
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("expected a number at {rest:?} ({HINT})"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| "number too large".to_string())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = rest.split_at(unit_len);
        rest = tail;
        let part = match unit {
            "us" => Some(Duration::from_micros(n)),
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            "" => return Err(format!("missing unit ({HINT})")),
            _ => return Err(format!("unknown unit {unit:?} (use us, ms, s, m or h)")),
        };
        total = part.and_then(|p| total.checked_add(p)).ok_or_else(|| "duration too large".to_string())?;
    }
    Ok(total)
}

/// `host`, `host:port`, `1.2.3.4[:port]`, `fd00::1`, `[fd00::1]` or `[fd00::1]:port`.
fn rolodex_spec(s: &str) -> Result<(String, u16), String> {
    let s = s.trim();
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return nonzero(sa.ip().to_string(), sa.port());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok((ip.to_string(), DEFAULT_ROLODEX_PORT));
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        let ip: std::net::Ipv6Addr =
            inner.parse().map_err(|_| format!("{inner:?} is not an IPv6 address"))?;
        return Ok((ip.to_string(), DEFAULT_ROLODEX_PORT));
    }
    let (host, port) = match s.rsplit_once(':') {
        None => (s, DEFAULT_ROLODEX_PORT),
        Some((h, _)) if h.contains(':') || h.starts_with('[') => {
            return Err("write IPv6 addresses with a port as [addr]:port".into());
        }
        Some((h, p)) => {
            let ok = !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
            let port = p.parse::<u16>().ok().filter(|_| ok);
            (h, port.ok_or_else(|| format!("port {p:?} is not a number 1-65535"))?)
        }
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/' || c == '@') {
        return Err("expected HOST[:PORT]".into());
    }
    nonzero(host.to_owned(), port)
}

fn nonzero(host: String, port: u16) -> Result<(String, u16), String> {
    if port == 0 {
        return Err("port 0 is not a rolodex port".into());
    }
    Ok((host, port))
}

fn resolve(host: &str, port: u16) -> Result<Rolodex, ConfigError> {
    let spec = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let fail = |reason: String| ConfigError::Resolve { spec: spec.clone(), reason };
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for a in (host, port).to_socket_addrs().map_err(|e| fail(e.to_string()))? {
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    if addrs.is_empty() {
        return Err(fail("no addresses".into()));
    }
    Ok(Rolodex { spec, addrs })
}

/// Reads a network secret file: trailing whitespace trimmed, at least 16 bytes, at most 64 KiB.
pub fn read_secret(path: &Path) -> Result<Secret, ConfigError> {
    let fail = |reason: String| ConfigError::Secret { path: path.to_owned(), reason };
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SECRET_FILE + 1).read_to_end(&mut buf))
        .map_err(|e| fail(format!("cannot read it: {e}")))?;
    if buf.len() as u64 > MAX_SECRET_FILE {
        return Err(fail("larger than 64 KiB; is this the right file?".into()));
    }
    // Editors and `echo` add a newline; it must not become part of the key.
    let len = buf.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
    buf.truncate(len);
    if buf.len() < MIN_SECRET {
        return Err(fail(format!(
            "holds {} bytes (after trimming trailing whitespace); at least {MIN_SECRET} are needed",
            buf.len()
        )));
    }
    Ok(Secret(buf))
}
