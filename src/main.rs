//! `rolomesh`: one binary for every role.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use rolodex::keys::{self, KeyUse};
use rolodex::service::shutdown_signal;

mod bench;
mod demo;

#[derive(Parser)]
#[command(name = "rolomesh", version, about = "Encrypted L3 mesh VPN for Kubernetes clusters and hosts")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the discovery server
    Rolodex(RolodexArgs),
    /// Run a mesh member: TUN device plus encrypted tunnels to every peer
    Agent(agent::config::Args),
    /// Create secrets and derive keys
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Print an agent's status (from its metrics listener)
    Status {
        /// The agent's --metrics-listen address
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics: SocketAddr,
    },
    /// Build a NATed multi-site mesh in network namespaces on this machine and show it working (root)
    Demo(demo::DemoArgs),
    /// Print the CustomResourceDefinitions (YAML)
    Crdgen,
    /// Run the Kubernetes operator: reconcile MeshNetworks into rolodex, agents and members
    Operator(operator::Args),
    /// Benchmarks on a namespace lab on this machine (root)
    #[command(subcommand)]
    Bench(bench::BenchCmd),
}

#[derive(clap::Args)]
struct RolodexArgs {
    /// UDP address to listen on
    #[arg(long, default_value = "0.0.0.0:6264")]
    listen: SocketAddr,
    /// A network this rolodex serves, as NAME=FILE where FILE holds the hex rolodex key from
    /// `rolomesh keys rolodex-key`; repeatable
    #[arg(long = "network", value_name = "NAME=KEYFILE", required = true)]
    networks: Vec<String>,
    /// Heartbeat interval told to members
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Members silent for this long are removed
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Serve Prometheus metrics and health checks on ADDR:PORT
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Log format: text or json
    #[arg(long, default_value = "text")]
    log_format: String,
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Generate a new network secret (64 hex characters) on stdout
    Generate,
    /// Print the rolodex key for a network: give this, not the secret, to the rolodex
    RolodexKey {
        #[arg(long)]
        network: String,
        #[arg(long, value_name = "FILE")]
        secret_file: PathBuf,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    agent::config::parse_duration(s)
}

fn init_logs(format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        "json" => b.json().init(),
        "text" => b.init(),
        other => bail!("invalid log format {other:?}: expected text or json"),
    }
    Ok(())
}

fn read_key_file(network: &str, path: &str) -> anyhow::Result<[u8; 32]> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read rolodex key file {path}"))?;
    let bytes = keys::from_hex(&text).with_context(|| format!("rolodex key file {path} is not hex"))?;
    bytes.try_into().map_err(|_| {
        anyhow::anyhow!("rolodex key file {path} for network {network} must hold 32 bytes (64 hex digits)")
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Rolodex(a) => {
            init_logs(&a.log_format)?;
            let mut networks = Vec::new();
            for spec in &a.networks {
                let (name, path) = spec
                    .split_once('=')
                    .with_context(|| format!("invalid --network {spec:?}: expected NAME=KEYFILE"))?;
                if name.is_empty() || name.len() > rolodex::proto::MAX_NAME {
                    bail!("invalid --network {spec:?}: name must be 1-63 bytes");
                }
                networks.push((name.to_string(), read_key_file(name, path)?));
            }
            if a.timeout <= a.heartbeat {
                bail!("--timeout ({:?}) must be longer than --heartbeat ({:?})", a.timeout, a.heartbeat);
            }
            let cfg = rolodex::service::ServiceConfig {
                listen: a.listen,
                networks,
                server: rolodex::server::ServerConfig {
                    heartbeat: a.heartbeat,
                    timeout: a.timeout,
                    ..Default::default()
                },
                metrics: a.metrics_listen,
            };
            runtime()?.block_on(rolodex::service::run(cfg, shutdown_signal()))
        }
        Cmd::Agent(args) => {
            let cfg = agent::config::AgentConfig::from_args(args)?;
            init_logs(match cfg.log_format {
                agent::config::LogFormat::Json => "json",
                agent::config::LogFormat::Text => "text",
            })?;
            let run = agent::driver::RunConfig::from_agent_config(&cfg);
            runtime()?.block_on(agent::driver::run(run, shutdown_signal()))
        }
        Cmd::Keys(KeysCmd::Generate) => {
            let mut secret = [0u8; 32];
            rand_fill(&mut secret)?;
            println!("{}", keys::to_hex(&secret));
            Ok(())
        }
        Cmd::Keys(KeysCmd::RolodexKey { network, secret_file }) => {
            let secret = agent::config::read_secret(&secret_file)?;
            println!("{}", keys::to_hex(&keys::derive(secret.as_bytes(), &network, KeyUse::Rolodex)));
            Ok(())
        }
        Cmd::Status { metrics } => {
            let body = http_get(metrics, "/status")?;
            println!("{body}");
            Ok(())
        }
        Cmd::Demo(a) => demo::run(a),
        Cmd::Bench(c) => bench::run(c),
        Cmd::Crdgen => {
            print!("{}", crds::crds_yaml().map_err(anyhow::Error::msg)?);
            Ok(())
        }
        Cmd::Operator(a) => {
            init_logs(&a.log_format)?;
            runtime()?.block_on(operator::run(a))
        }
    }
}

fn rand_fill(buf: &mut [u8]) -> anyhow::Result<()> {
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf)).context("reading /dev/urandom")
}

/// A tiny HTTP GET for the agent's local status endpoint.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("cannot connect to agent metrics at {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{addr}{path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rolomesh: {e:#}");
            ExitCode::FAILURE
        }
    }
}
