//! `rolomesh bench rolodex`: one real rolodex process and N simulated members ([`rolodex::loadgen`]) on
//! 127.0.0.1; no TUN, no namespaces. Per N, a fresh rolodex: the time to register everyone and for every
//! view to be complete, the rolodex's CPU, datagrams and bytes per heartbeat interval in steady state, its
//! RSS, and how long two members joining together take to learn of each other.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rolodex::loadgen::{Counters, Swarm, SwarmConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod report;

pub use report::Row;

const NETWORK: &str = "bench";

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Member counts to measure, each against a fresh rolodex
    #[arg(long, value_delimiter = ',', default_value = "1000,2500,5000,10000")]
    pub members: Vec<usize>,
    /// Steady-state heartbeat intervals measured per member count
    #[arg(long, default_value_t = 3)]
    pub intervals: u32,
    /// Heartbeat interval in seconds, told to members by the rolodex (at least 1, like the client's)
    #[arg(long, default_value_t = 5.0)]
    pub heartbeat: f64,
    /// Pairs of real clients joined together to time introductions
    #[arg(long, default_value_t = 5)]
    pub pairs: usize,
    /// Seconds over which the members start [default: one heartbeat interval (as when every member
    /// re-registers after a rolodex restart), longer for large N: members/250]. Every member must receive
    /// every other one's entry, N² entries in all, and the load generator does that work for all N members
    /// on one core: faster waves measure it rather than the rolodex.
    #[arg(long)]
    pub ramp: Option<f64>,
    /// Seconds to wait for all members to register and learn each other
    #[arg(long, default_value_t = 300.0)]
    pub timeout: f64,
    /// Also write the results as JSON to this file
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// The rolomesh binary to run the rolodex from [default: this one]
    #[arg(long, value_name = "PATH")]
    pub rolodex_bin: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let rows = measure_all(&args)?;
    print!("{}", report::markdown(&args, &rows));
    if let Some(path) = &args.json {
        let doc = report::json(&args, &rows);
        let text = serde_json::to_string_pretty(&doc)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Measures every member count in `args.members`, one fresh rolodex each.
pub fn measure_all(args: &Args) -> Result<Vec<Row>> {
    ensure!(!args.members.is_empty() && args.members.iter().all(|n| *n >= 2), "--members: at least 2 each");
    ensure!(args.intervals >= 1, "--intervals must be at least 1");
    ensure!((1.0..=300.0).contains(&args.heartbeat), "--heartbeat must be 1-300 seconds");
    ensure!(args.ramp.is_none_or(|r| (0.0..=3600.0).contains(&r)), "--ramp must be 0-3600 seconds");
    ensure!(args.timeout > 0.0 && args.timeout.is_finite(), "--timeout must be positive");
    let bin = match &args.rolodex_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("locating the rolomesh binary")?,
    };
    let most = args.members.iter().max().copied().unwrap_or(0) + 2 * args.pairs;
    raise_nofile(most as u64 + 256)?;
    let mut rows = Vec::new();
    for &n in &args.members {
        eprintln!("== {n} members");
        let row = measure(args, &bin, n).with_context(|| format!("benchmark with {n} members"))?;
        eprintln!("{}", report::summary(&row));
        rows.push(row);
    }
    Ok(rows)
}

/// Lets one process hold a socket per member.
fn raise_nofile(want: u64) -> Result<()> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        bail!("getrlimit(NOFILE): {}", std::io::Error::last_os_error());
    }
    if lim.rlim_cur >= want {
        return Ok(());
    }
    let new = libc::rlimit { rlim_cur: want, rlim_max: lim.rlim_max.max(want) };
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        bail!(
            "need {want} open files (one socket per member) but the limit is {} (hard {}): {}",
            lim.rlim_cur,
            lim.rlim_max,
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn measure(args: &Args, bin: &Path, n: usize) -> Result<Row> {
    let dir = std::env::temp_dir().join(format!("rolomesh-bench-rolodex-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let key: [u8; 32] = rand::random();
    let heartbeat = Duration::from_secs_f64(args.heartbeat);
    let result = Rolodex::start(bin, &dir, &key, heartbeat).and_then(|r| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, drive(args, &r, key, n))
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn drive(args: &Args, rolodex: &Rolodex, key: [u8; 32], n: usize) -> Result<Row> {
    let hb = Duration::from_secs_f64(args.heartbeat);
    let ramp = ramp_for(args, n);
    let timeout = Duration::from_secs_f64(args.timeout);
    let swarm = Swarm::new(SwarmConfig {
        server: rolodex.udp,
        network: NETWORK.into(),
        key,
        capacity: n + 2 * args.pairs,
        seed: rand::random(),
    });
    let mut row = Row { members: n, ramp_s: ramp.as_secs_f64(), ..Row::default() };
    let udp_errors0 = udp_rcvbuf_errors();
    let self0 = cpu_ticks("self")?;
    let s0 = rolodex.sample().await?;
    let start = swarm.add_members(n, ramp).await?;
    // Registration: poll the swarm's own state (cheap) until every member is acked and knows everyone.
    let deadline = start + ramp + timeout;
    loop {
        let p = swarm.progress();
        if row.register_s.is_none() && p.registered == n {
            row.register_s = Some(start.elapsed().as_secs_f64());
        }
        if p.complete == n {
            row.converge_s = Some(start.elapsed().as_secs_f64());
            break;
        }
        if Instant::now() >= deadline {
            eprintln!("   gave up: {} registered, {} complete of {n}", p.registered, p.complete);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s1 = rolodex.sample().await?;
    let p = swarm.progress();
    (row.registered, row.complete) = (p.registered, p.complete);
    row.join_frames = s1.sent_frames - s0.sent_frames;
    row.join_bytes = s1.sent_bytes - s0.sent_bytes;
    row.join_cpu_s = ticks_to_s(s1.cpu_ticks - s0.cpu_ticks);
    row.loadgen_join_cpu_s = ticks_to_s(cpu_ticks("self")? - self0);

    // Steady state: one interval to settle, then whole intervals.
    tokio::time::sleep(hb).await;
    let (s2, c2) = (rolodex.sample().await?, swarm.counters());
    tokio::time::sleep(hb * args.intervals).await;
    let (s3, c3) = (rolodex.sample().await?, swarm.counters());
    let intervals = s3.at.duration_since(s2.at).as_secs_f64() / hb.as_secs_f64();
    let per = |a: u64, b: u64| (b - a) as f64 / intervals;
    row.cpu_ms_per_interval = per(s2.cpu_ticks, s3.cpu_ticks) * 1000.0 / clk_tck();
    row.frames_per_interval = per(s2.sent_frames, s3.sent_frames);
    row.bytes_per_interval = per(s2.sent_bytes, s3.sent_bytes);
    row.received_per_interval = per(s2.received, s3.received);
    row.steady_listing_pages = c3.listing_pages - c2.listing_pages;
    row.rss_mib = s3.rss_kib as f64 / 1024.0;

    for _ in 0..args.pairs {
        match swarm.join_pair(Duration::from_secs(30).max(timeout / 10)).await {
            Ok(t) => {
                row.intro_ms.push(t.a_learned.max(t.b_learned).as_secs_f64() * 1000.0);
                row.all_knew_ms.push(t.all_knew.map(|d| d.as_secs_f64() * 1000.0));
            }
            Err(e) => {
                eprintln!("   pair: {e:#}");
                row.all_knew_ms.push(None);
            }
        }
    }
    let s4 = rolodex.sample().await?;
    row.hwm_mib = s4.hwm_kib as f64 / 1024.0;
    row.dropped = s4.dropped;
    let c: Counters = swarm.counters();
    row.anomalies = c.anomalies;
    row.listing_pages = c.listing_pages;
    row.udp_rcvbuf_errors = udp_rcvbuf_errors().zip(udp_errors0).map(|(b, a)| b.saturating_sub(a));
    Ok(row)
}

/// How long members take to start, see `Args::ramp`.
pub fn ramp_for(args: &Args, n: usize) -> Duration {
    let hb = Duration::from_secs_f64(args.heartbeat);
    args.ramp.map_or(hb.max(Duration::from_secs_f64(n as f64 / 250.0)), Duration::from_secs_f64)
}

/// A rolodex process on free loopback ports; stopped when dropped.
struct Rolodex {
    child: Child,
    udp: SocketAddr,
    metrics: SocketAddr,
}

/// The rolodex's counters at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    cpu_ticks: u64,
    rss_kib: u64,
    hwm_kib: u64,
    sent_frames: u64,
    sent_bytes: u64,
    received: u64,
    dropped: u64,
}

impl Rolodex {
    fn start(bin: &Path, dir: &Path, key: &[u8; 32], heartbeat: Duration) -> Result<Self> {
        let key_file = dir.join("rolodex.key");
        std::fs::write(&key_file, rolodex::keys::to_hex(key))
            .with_context(|| format!("writing {}", key_file.display()))?;
        // Free ports: bind port 0, note it, release it for the rolodex.
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?;
        let metrics = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?;
        let log = dir.join("rolodex.log");
        let ms = heartbeat.as_millis();
        let mut cmd = Command::new(bin);
        // SAFETY: prctl is async-signal-safe; it makes the rolodex die with this process, however it ends.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            })
        };
        let child = cmd
            .arg("rolodex")
            .args(["--listen", &udp.to_string(), "--metrics-listen", &metrics.to_string()])
            .args(["--network", &format!("{NETWORK}={}", key_file.display())])
            .args(["--heartbeat", &format!("{ms}ms"), "--timeout", &format!("{}ms", ms * 3)])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut r = Self { child, udp, metrics };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = r.child.try_wait()? {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("the rolodex exited ({status}): {}", tail.trim());
            }
            if std::net::TcpStream::connect(metrics).is_ok() {
                return Ok(r);
            }
            if Instant::now() >= deadline {
                bail!("the rolodex did not open its metrics port {metrics} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    async fn sample(&self) -> Result<Sample> {
        let at = Instant::now();
        let pid = self.child.id().to_string();
        let cpu_ticks = cpu_ticks(&pid)?;
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading rolodex status")?;
        let kib = |field: &str| {
            status.lines().find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
        };
        let text = http_get(self.metrics, "/metrics").await?;
        let metric = |name: &str| -> u64 {
            let full = format!("rolomesh_rolodex_{name}");
            text.lines()
                .filter(|l| l.starts_with(&full))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        Ok(Sample {
            at,
            cpu_ticks,
            rss_kib: kib("VmRSS:").context("no VmRSS")?,
            hwm_kib: kib("VmHWM:").context("no VmHWM")?,
            sent_frames: metric("frames_sent_total"),
            sent_bytes: metric("bytes_sent_total"),
            received: metric("frames_received_total"),
            dropped: metric("frames_dropped_total"),
        })
    }
}

impl Drop for Rolodex {
    fn drop(&mut self) {
        // SAFETY: signals our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        anyhow::Ok(out)
    };
    let resp = tokio::time::timeout(Duration::from_secs(30), get)
        .await
        .with_context(|| format!("GET {addr}{path} timed out"))?
        .with_context(|| format!("GET {addr}{path}"))?;
    match resp.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => bail!("GET {addr}{path}: {}", resp.lines().next().unwrap_or("no answer")),
    }
}

/// utime + stime of a process (`self` or a pid), in clock ticks.
fn cpu_ticks(pid: &str) -> Result<u64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).context("malformed stat");
    Ok(num(11)? + num(12)?)
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn ticks_to_s(t: u64) -> f64 {
    t as f64 / clk_tck()
}

/// Datagrams dropped machine-wide because a receive buffer was full (other processes' too).
fn udp_rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}
