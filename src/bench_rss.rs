//! `rolomesh bench agent-rss`: the memory of one real agent (TUN device, own network namespace) with N peers,
//! read from /proc when it is idle, once every link is up, and after overlay traffic.
//!
//! One peer is a second real agent (`sink`), the other N-1 are simulated ([`crate::peersim`]). Traffic: pings
//! to a few simulated peers (they answer), then TCP bulk transfers to and from the sink, which fill the data
//! path's batches with full-size (offloaded) packets in both directions.
//!
//! Layout: the rolodex on the public host; the agent, the sink and the simulated peers on three hosts of one
//! NATed LAN.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::lab::{Lab, NETWORK};
use crate::netns::{self, Host, Spec, wait_until};
use crate::peersim::{PeerSim, SimConfig};

const AGENT: &str = "agent";
const SINK: &str = "sink";
const PEERS: &str = "peers";
/// The bound from the performance issue ("agent RSS with 100 peers: at most 50 MB"), read as MiB.
pub const LIMIT_KIB: u64 = 50 * 1024;
/// Peers pinged after the links are up, and pings (1200-byte payload) to each.
const PINGED: usize = 5;
const PINGS: u32 = 50;
/// Length of each TCP bulk transfer, and its port on the receiving side.
const BULK: Duration = Duration::from_secs(2);
const BULK_PORT: u16 = 5201;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Number of peers: one second real agent and N-1 simulated ones (2 to 1000)
    #[arg(long, default_value_t = 100)]
    pub peers: usize,
    /// Also write the report as JSON to this file
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// The rolomesh binary the agent runs from [default: this one]
    #[arg(long, value_name = "PATH")]
    pub agent_bin: Option<PathBuf>,
}

/// Memory figures of one process, from /proc/<pid>/status (KiB).
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    pub vm_rss: u64,
    pub vm_hwm: u64,
    pub rss_anon: u64,
    pub rss_file: u64,
    pub threads: u64,
}

impl Mem {
    pub fn read(pid: u32) -> Result<Mem> {
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        Mem::parse(&text).with_context(|| format!("{path} lacks VmRSS/VmHWM"))
    }

    fn parse(status: &str) -> Option<Mem> {
        let field = |name: &str| {
            status.lines().find_map(|l| {
                let v = l.strip_prefix(name)?.strip_prefix(':')?;
                v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
            })
        };
        Some(Mem {
            vm_rss: field("VmRSS")?,
            vm_hwm: field("VmHWM")?,
            rss_anon: field("RssAnon").unwrap_or(0),
            rss_file: field("RssFile").unwrap_or(0),
            threads: field("Threads").unwrap_or(0),
        })
    }

    fn to_json(self) -> Value {
        json!({
            "vm_rss_kib": self.vm_rss,
            "vm_hwm_kib": self.vm_hwm,
            "rss_anon_kib": self.rss_anon,
            "rss_file_kib": self.rss_file,
            "threads": self.threads,
        })
    }

    fn line(self) -> String {
        let mib = |k: u64| k as f64 / 1024.0;
        format!(
            "VmRSS {:6.1} MiB (anon {:5.1}, file {:5.1})  VmHWM {:6.1} MiB  threads {}",
            mib(self.vm_rss),
            mib(self.rss_anon),
            mib(self.rss_file),
            mib(self.vm_hwm),
            self.threads
        )
    }
}

pub struct Report {
    pub peers: usize,
    pub agent_bin: PathBuf,
    /// Registered with the rolodex, no peers yet.
    pub idle: Mem,
    /// Every link up.
    pub linked: Mem,
    pub after_traffic: Mem,
    pub link_time: Duration,
    pub pings_sent: u32,
    pub pings_received: u32,
    /// TCP goodput from the agent to the sink and back, Mbit/s (noisy: a shared 2-core machine).
    pub tcp_send_mbps: f64,
    pub tcp_recv_mbps: f64,
}

impl Report {
    /// The highest RSS seen, including start-up and traffic peaks.
    pub fn peak_kib(&self) -> u64 {
        self.after_traffic.vm_hwm.max(self.after_traffic.vm_rss)
    }

    /// Anonymous memory each link added. (File-backed RSS also grows, once, as code runs for the first time.)
    pub fn per_peer_kib(&self) -> f64 {
        (self.linked.rss_anon as f64 - self.idle.rss_anon as f64) / self.peers as f64
    }

    pub fn to_json(&self) -> Value {
        json!({
            "peers": self.peers,
            "agent_bin": self.agent_bin.to_string_lossy(),
            "link_time_s": self.link_time.as_secs_f64(),
            "idle": self.idle.to_json(),
            "linked": self.linked.to_json(),
            "after_traffic": self.after_traffic.to_json(),
            "per_peer_anon_kib": self.per_peer_kib(),
            "pings_sent": self.pings_sent,
            "pings_received": self.pings_received,
            "tcp_send_mbps": self.tcp_send_mbps,
            "tcp_recv_mbps": self.tcp_recv_mbps,
            "peak_kib": self.peak_kib(),
            "limit_kib": LIMIT_KIB,
            "within_limit": self.peak_kib() <= LIMIT_KIB,
        })
    }

    pub fn summary(&self) -> String {
        format!(
            "agent RSS with {} peers ({} simulated, 1 real; agent binary {})\n  \
             idle, registered:            {}\n  \
             all links up after {:5.1} s:  {}\n  \
             after traffic:               {}\n  \
             ({}/{} pings answered; TCP {:.0} Mbit/s out, {:.0} Mbit/s in)\n  \
             per peer: {:.1} KiB anonymous; peak {:.1} MiB, limit {} MiB: {}",
            self.peers,
            self.peers - 1,
            self.agent_bin.display(),
            self.idle.line(),
            self.link_time.as_secs_f64(),
            self.linked.line(),
            self.after_traffic.line(),
            self.pings_received,
            self.pings_sent,
            self.tcp_send_mbps,
            self.tcp_recv_mbps,
            self.per_peer_kib(),
            self.peak_kib() as f64 / 1024.0,
            LIMIT_KIB / 1024,
            if self.peak_kib() <= LIMIT_KIB { "ok" } else { "EXCEEDED" },
        )
    }
}

pub fn run(args: Args) -> Result<()> {
    let bin = match args.agent_bin {
        Some(b) => b,
        None => std::env::current_exe().context("finding the rolomesh binary")?,
    };
    let report = measure(&bin, args.peers)?;
    println!("{}", report.summary());
    if let Some(path) = args.json {
        let text = serde_json::to_string_pretty(&report.to_json()).context("encoding the report")?;
        std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Builds the lab, meshes the agent with `peers` peers, pushes traffic, and reads the agent's memory along
/// the way. Everything is torn down on return, also on error.
pub fn measure(bin: &Path, peers: usize) -> Result<Report> {
    if let Some(why) = netns::unsupported_reason() {
        bail!("{why}");
    }
    if !(2..=1000).contains(&peers) {
        bail!("invalid --peers {peers}: expected 2 to 1000");
    }
    let mut lab = Lab::new(bin, Spec::empty().family("rss").site("a", &[AGENT, SINK, PEERS]))?;
    lab.start_rolodex()?;
    lab.start_agent(AGENT)?;
    let pid = agent_pid(&lab)?;
    let registered =
        |s: &Value| s["rolodexes"].as_array().is_some_and(|r| r.iter().any(|r| r["registered"] == true));
    if !wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        lab.status(AGENT).is_ok_and(|s| registered(&s))
    }) {
        bail!("the agent did not register with the rolodex\n{}", lab.logs());
    }
    let idle = Mem::read(pid)?;

    let started = Instant::now();
    lab.start_agent(SINK)?;
    let secret = agent::config::read_secret(Path::new(&lab.path("secret")))?;
    let sims = peers - 1;
    let sim = PeerSim::start(
        lab.host(PEERS),
        SimConfig {
            network: NETWORK.to_string(),
            secret: secret.as_bytes().to_vec(),
            rolodex: lab.rolodex_addr().parse().context("rolodex address")?,
            members: vec![AGENT.to_string(), SINK.to_string()],
            count: sims,
        },
    )?;
    // Every end must agree: both real agents' status (refreshed once a second) and the simulated peers.
    let timeout = Duration::from_secs(30) + Duration::from_millis(300) * peers as u32;
    let all_up = wait_until(timeout, Duration::from_millis(250), || {
        !sim.is_running()
            || (sim.links_up() == 2 * sims
                && [AGENT, SINK].iter().all(|h| lab.status(h).is_ok_and(|s| up_count(&s) == peers)))
    });
    if !all_up || !sim.is_running() {
        let states = |h| lab.status(h).map(|s| state_counts(&s)).unwrap_or_default();
        let (agent, sink, sim_up) = (states(AGENT), states(SINK), sim.links_up());
        let sim_err = sim.stop().err().map(|e| format!("; simulator: {e:#}")).unwrap_or_default();
        bail!(
            "not all {peers} links came up within {timeout:?}: agent sees {agent}; sink sees {sink}; \
             simulated peers have {sim_up} of {} links up{sim_err}\n{}",
            2 * sims,
            lab.logs()
        );
    }
    let link_time = started.elapsed();
    let linked = Mem::read(pid)?;

    let (mut pings_sent, mut pings_received) = (0, 0);
    let step = (sims / PINGED).max(1);
    for addr in sim.overlays().iter().step_by(step).take(PINGED) {
        let (s, r) = ping(&lab, *addr)?;
        pings_sent += s;
        pings_received += r;
    }
    let (agent_ip, sink_ip) = (lab.member(AGENT)?.overlay, lab.member(SINK)?.overlay);
    let tcp_send_mbps = tcp_bulk(lab.host(AGENT), lab.host(SINK), sink_ip)?;
    let tcp_recv_mbps = tcp_bulk(lab.host(SINK), lab.host(AGENT), agent_ip)?;
    let after_traffic = Mem::read(pid)?;
    if !lab.agents.get(AGENT).is_some_and(|a| a.is_running()) {
        bail!("the agent exited during the measurement\n{}", lab.logs());
    }
    sim.stop()?;
    Ok(Report {
        peers,
        agent_bin: bin.to_path_buf(),
        idle,
        linked,
        after_traffic,
        link_time,
        pings_sent,
        pings_received,
        tcp_send_mbps,
        tcp_recv_mbps,
    })
}

/// The agent's own pid (`ip netns exec` replaces itself with the command; wait until it has).
fn agent_pid(lab: &Lab) -> Result<u32> {
    let child = lab.agents.get(AGENT).context("the agent is not running")?;
    let pid = child.pid();
    let bin = lab.bin.canonicalize().with_context(|| format!("resolving {}", lab.bin.display()))?;
    let is_agent = || std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == bin);
    if !wait_until(Duration::from_secs(5), Duration::from_millis(10), is_agent) {
        bail!("process {pid} ({}) did not become the agent", child.label());
    }
    Ok(pid)
}

fn up_count(status: &Value) -> usize {
    status["peers"].as_array().map_or(0, |p| p.iter().filter(|p| p["state"] == "up").count())
}

/// "up: 97, punching: 3" from the agent's status.
fn state_counts(status: &Value) -> String {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for p in status["peers"].as_array().into_iter().flatten() {
        *counts.entry(p["state"].as_str().unwrap_or("?").to_string()).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    if parts.is_empty() { "no peers".into() } else { parts.join(", ") }
}

/// [`PINGS`] overlay pings from the agent's namespace to `addr`; (sent, received).
fn ping(lab: &Lab, addr: Ipv4Addr) -> Result<(u32, u32)> {
    let (count, target) = (PINGS.to_string(), addr.to_string());
    let out = lab
        .host(AGENT)
        .exec("ping", &["-n", "-q", "-c", &count, "-i", "0.01", "-s", "1200", "-W", "1", &target])
        .context("running ping")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let received = text
        .lines()
        .find_map(|l| l.split(", ").find_map(|p| p.strip_suffix(" received")?.parse::<u32>().ok()))
        .unwrap_or(0);
    Ok((PINGS, received))
}

/// Sends TCP data for [`BULK`] from `from`'s namespace to a listener at `to_ip` in `to`'s; the goodput in
/// Mbit/s.
fn tcp_bulk(from: &Host, to: &Host, to_ip: Ipv4Addr) -> Result<f64> {
    let io_timeout = Some(Duration::from_secs(5));
    let listener = to
        .in_ns(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, BULK_PORT)))?
        .with_context(|| format!("{}: listening on TCP port {BULK_PORT}", to.name))?;
    let target = SocketAddr::from((to_ip, BULK_PORT));
    let mut out = from
        .in_ns(|| TcpStream::connect_timeout(&target, Duration::from_secs(5)))?
        .with_context(|| format!("{}: connecting to {target} over the overlay", from.name))?;
    // Connected, so the accept does not wait.
    let (mut conn, _) = listener.accept().context("accepting the bulk transfer")?;
    conn.set_read_timeout(io_timeout)?;
    out.set_write_timeout(io_timeout)?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0;
        loop {
            match conn.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let chunk = vec![0x5a; 1 << 16];
    let start = Instant::now();
    while start.elapsed() < BULK {
        out.write_all(&chunk).with_context(|| format!("sending to {target}"))?;
    }
    out.shutdown(Shutdown::Write).context("closing the bulk transfer")?;
    let received = match reader.join() {
        Ok(r) => r.with_context(|| format!("receiving at {target}"))?,
        Err(_) => bail!("the bulk transfer receiver panicked"),
    };
    Ok(received as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let s = "Name:\trolomesh\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nRssAnon:\t    4096 kB\n\
                 RssFile:\t    6144 kB\nThreads:\t3\n";
        let m = Mem::parse(s).expect("parses");
        assert_eq!((m.vm_rss, m.vm_hwm, m.rss_anon, m.rss_file, m.threads), (10240, 20480, 4096, 6144, 3));
        assert!(Mem::parse("Name:\tx\n").is_none());
    }
}
