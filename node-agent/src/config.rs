//! Agent configuration: command-line flags and an optional YAML file (flags win), validated into
//! an [`AgentConfig`].
//!
//! YAML keys are the flag names without `--` (`listen-port: 41641`), except `addresses` (flag
//! `--address`, repeatable). Every error is one line naming the field and the offending value.

mod file;
mod parse;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::routes::IpNet;
use crate::tun::TunConfig;

pub use parse::{DEFAULT_ROLODEX_PORT, parse_duration, read_secret};

/// `rolomesh agent` flags. Every flag may instead be given in the `--config` file.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// YAML configuration file; flags override its values
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Mesh network name: 1-63 characters of a-z, 0-9, '-' and '.'
    #[arg(long)]
    pub network: Option<String>,
    /// File holding the network secret (at least 16 bytes; trailing whitespace is ignored)
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// This member's name [default: the hostname]
    #[arg(long)]
    pub name: Option<String>,
    /// Overlay address with the overlay prefix, e.g. 100.64.0.1/10; one IPv4 and/or one IPv6
    #[arg(long = "address", value_name = "CIDR", value_delimiter = ',')]
    pub addresses: Vec<String>,
    /// Rolodex HOST[:PORT] (port 6264 if omitted); repeatable
    #[arg(long, value_name = "HOST[:PORT]", value_delimiter = ',')]
    pub rolodex: Vec<String>,
    /// TUN interface name [default: rm0]
    #[arg(long, value_name = "NAME")]
    pub tun_name: Option<String>,
    /// TUN MTU: auto (underlay MTU minus tunnel overhead) or 576-9000 [default: auto]
    #[arg(long, value_name = "auto|BYTES")]
    pub mtu: Option<String>,
    /// UDP port of the agent's one socket, used for the rolodex and all peers [default: 0 = any]
    #[arg(long, value_name = "PORT")]
    pub listen_port: Option<String>,
    /// Keepalive interval toward peers, e.g. 25s, 500ms, 2m [default: 25s]
    #[arg(long, value_name = "DURATION")]
    pub keepalive: Option<String>,
    /// Heartbeat interval toward the rolodex [default: 10s]
    #[arg(long, value_name = "DURATION")]
    pub heartbeat: Option<String>,
    /// IP TTL of hole-punching probes, low so they open our NAT without reaching theirs [default: 2]
    #[arg(long, value_name = "HOPS")]
    pub punch_ttl: Option<String>,
    /// Serve Prometheus metrics on ADDR:PORT, e.g. 127.0.0.1:9464 ("none" disables) [default: none]
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<String>,
    /// Log format: text or json [default: text]
    #[arg(long, value_name = "text|json")]
    pub log_format: Option<String>,
    /// Keep polling for packets this long after the last one instead of sleeping, e.g. 100us: lower
    /// latency for some CPU while traffic flows; 0 disables, at most 10ms [default: 0]
    #[arg(long, value_name = "DURATION", env = "ROLOMESH_BUSY_POLL")]
    pub busy_poll: Option<String>,
    /// `--kube` and the flags that go with it (boxed: the binary's subcommand enum stays small).
    #[command(flatten)]
    pub kube: Box<KubeArgs>,
}

/// `rolomesh agent --kube` flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// Kubernetes mode: network, overlay addresses, routes and rolodexes come from the MeshNetwork and
    /// MeshMember objects, and the agent writes its MeshMember's status
    #[arg(long)]
    pub kube: bool,
    /// With --kube: the MeshNetwork object to join (in --namespace)
    #[arg(long, value_name = "NAME")]
    pub mesh_network: Option<String>,
    /// With --kube: this node's name, also the member name on the wire [default: env NODE_NAME]
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// With --kube: namespace of the MeshNetwork and MeshMember [default: env POD_NAMESPACE, else the
    /// kubeconfig's or in-cluster namespace]
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// With --kube: least time between MeshMember status writes, jittered ±20% [default: 10s]
    #[arg(long, value_name = "DURATION")]
    pub status_interval: Option<String>,
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    pub network: String,
    pub secret: Secret,
    pub name: String,
    /// Our IPv4 overlay address; its prefix is the IPv4 overlay network.
    pub overlay_v4: Option<IpNet>,
    /// Our IPv6 overlay address; its prefix is the IPv6 overlay network.
    pub overlay_v6: Option<IpNet>,
    pub rolodex: Vec<Rolodex>,
    pub tun_name: String,
    pub mtu: Mtu,
    pub listen_port: u16,
    pub keepalive: Duration,
    pub heartbeat: Duration,
    pub punch_ttl: u8,
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    /// Zero: sleep in epoll as soon as the queues are empty.
    pub busy_poll: Duration,
    /// `--kube`: until [`KubeSettings::complete`] has filled them in from the API, `network` is empty,
    /// `overlay_v4`/`overlay_v6` are `None` and `rolodex` is empty.
    pub kube: Option<KubeSettings>,
}

/// `--kube` mode: which objects hold the rest of the configuration, and how often to write status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeSettings {
    pub mesh_network: String,
    /// Also the member name on the wire.
    pub node_name: String,
    /// `None`: the Kubernetes client configuration's namespace (in a pod: its own).
    pub namespace: Option<String>,
    pub status_interval: Duration,
    /// The merged file and flag values, completed with the API's values by [`KubeSettings::complete`].
    raw: file::FileConfig,
}

/// What the MeshNetwork and MeshMember objects say, in flag syntax.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeValues {
    pub network: String,
    /// Overlay addresses with the overlay prefix, e.g. `100.64.0.7/10`.
    pub addresses: Vec<String>,
    /// `HOST:PORT` of each rolodex.
    pub rolodex: Vec<String>,
    pub keepalive: Option<String>,
    pub mtu: Option<String>,
    pub listen_port: Option<String>,
}

impl KubeSettings {
    /// The full configuration from the API's values. `--keepalive`, `--mtu` and `--listen-port` given as
    /// flags or in the file win over the MeshNetwork's `spec.agent` (e.g. to run two agents on one host).
    pub fn complete(&self, values: KubeValues) -> Result<AgentConfig, ConfigError> {
        parse::complete_kube(self, values)
    }
}

/// One configured rolodex and what its name resolved to at startup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rolodex {
    /// `host:port` as configured, with the default port filled in.
    pub spec: String,
    pub addrs: Vec<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mtu {
    Auto,
    Fixed(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The network secret; `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path:?}: {reason}")]
    ReadFile { path: PathBuf, reason: String },
    #[error("config file {path:?}: {reason}")]
    ParseFile { path: PathBuf, reason: String },
    #[error("{field} is required: {hint}")]
    Missing { field: &'static str, hint: &'static str },
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid { field: &'static str, value: String, reason: String },
    #[error("secret file {path:?}: {reason}")]
    Secret { path: PathBuf, reason: String },
    #[error("cannot resolve rolodex {spec:?}: {reason}")]
    Resolve { spec: String, reason: String },
}

impl AgentConfig {
    /// Reads the `--config` file if given, applies the flags over it, reads the secret file,
    /// resolves the rolodex names and validates everything.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => file::load(path)?,
            None => file::FileConfig::default(),
        };
        parse::validate(file.merge(args), &|var| std::env::var(var).ok())
    }

    /// The overlay networks (host bits cleared), for routing and for skipping our own addresses.
    pub fn overlay_nets(&self) -> Vec<IpNet> {
        [self.overlay_v4, self.overlay_v6].into_iter().flatten().map(|n| n.network()).collect()
    }

    /// Every resolved rolodex address, in configuration order.
    pub fn rolodex_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.rolodex.iter().flat_map(|r| r.addrs.iter().copied())
    }

    /// The TUN device to create, with `auto` MTU resolved for the given underlay family.
    pub fn tun_config(&self, ipv6_underlay: bool) -> TunConfig {
        TunConfig {
            name: self.tun_name.clone(),
            ipv4: self.overlay_v4,
            ipv6: self.overlay_v6,
            mtu: self.mtu.resolve(ipv6_underlay),
            offload: true,
        }
    }
}

impl Mtu {
    /// The fixed value, or the underlay MTU minus tunnel overhead.
    pub fn resolve(self, ipv6_underlay: bool) -> u32 {
        match self {
            Mtu::Fixed(m) => m,
            Mtu::Auto => crate::tun::auto_mtu(crate::tun::underlay_mtu(), ipv6_underlay),
        }
    }
}
