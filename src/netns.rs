//! Multi-site NATed test topology built from Linux network namespaces.
//!
//! Used by the end-to-end tests and by `rolomesh demo`. Needs root, iproute2 (`ip`), iptables and
//! conntrack (the `conntrack` tool is only needed for [`Topology::flush_conntrack`] and
//! [`Topology::conntrack_dump`]).
//!
//! ```text
//!                          pub (198.18.0.2, the rolodex host)
//!                           | to-pub 198.18.0.1
//!                         core   (router, forwarding on, no NAT, no routes to 10/8)
//!        to-a 198.18.1.1 /    \ to-b 198.18.2.1
//!        wan 198.18.1.2 /      \ wan 198.18.2.2
//!                   nata        natb          (MASQUERADE on wan + stateful firewall)
//!     lan 10.1.0.1/24 |          | lan 10.2.0.1/24   (a Linux bridge inside the NAT namespace)
//!              a1    a2          b1
//!      10.1.0.11  10.1.0.12   10.2.0.11      (interface eth0, default route via the NAT)
//! ```
//!
//! Site number `i` (0-based, in spec order) gets WAN 198.18.(i+1).2/24 (core side .1) and LAN 10.(i+1).0.0/24
//! with the gateway at .1 and host `j` at .(11+j). The router of site `x` is the node `natx`.
//!
//! Every namespace is named `<family>-<pid>-<n>-<node>` (e.g. `rm-4242-0-a1`) so that concurrent topologies
//! (tests running in parallel, in one process or several) never collide, and so that
//! [`Topology::cleanup_stale`] can remove the leftovers of crashed runs (namespaces whose pid is gone).
//!
//! Dropping a [`Topology`] (also during a panic unwind) kills every process spawned through it (SIGTERM, up to
//! 2 s grace, then SIGKILL of the whole process group), kills any other process still living in its
//! namespaces and deletes the namespaces (which removes their veths and bridges).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// Namespace name family used when a [`Spec`] does not say otherwise.
pub const DEFAULT_FAMILY: &str = "rm";
/// Where iproute2 keeps named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// Grace period between SIGTERM and SIGKILL when stopping spawned processes.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// Name of the iptables chain (in every router's FORWARD) that [`Topology::set_loss`] fills.
pub const LOSS_CHAIN: &str = "RM-LOSS";
/// iptables comment on the NAT routers' rules that drop unsolicited traffic from the WAN.
pub const UNSOLICITED_COMMENT: &str = "rm-unsolicited";

const CORE: &str = "core";
const PUB: &str = "pub";
const MAX_OUTPUT: usize = 16 << 20;

static INSTANCE: AtomicU32 = AtomicU32::new(0);
/// Serialises `ip netns add/del` inside this process (iproute2 sets up the /run/netns mount lazily).
static NETNS_LOCK: Mutex<()> = Mutex::new(());

// ------------------------------------------------------------------------------------------------
// Spec

/// One NATed site: its name (`a`, `b`, ...) and the names of its LAN hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteSpec {
    pub name: String,
    pub hosts: Vec<String>,
}

/// How the NAT routers treat new traffic from the WAN addressed to the router itself (INPUT chain).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WanInput {
    /// Stateful firewall: unsolicited new packets from the WAN are dropped (default). A dropped packet leaves
    /// no conntrack entry behind.
    #[default]
    Drop,
    /// No INPUT firewall on the WAN: an unsolicited packet to the NAT's own address is accepted (the kernel
    /// answers with ICMP port unreachable) and conntrack keeps an entry for it. If a LAN host then opens the
    /// same flow outwards, MASQUERADE finds the port taken and picks a random one: this is what makes
    /// simultaneous hole punching fail (see tests/netns_topology.rs).
    Accept,
}

/// What to build. `Spec::default()` is the standard two-site layout: site `a` with `a1`, `a2` and site `b`
/// with `b1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Namespace name family (first component of every namespace name): 1..=16 chars of `[a-z0-9]`.
    pub family: String,
    pub sites: Vec<SiteSpec>,
    /// INPUT policy of all NAT routers for traffic from the WAN.
    pub wan_input: WanInput,
}

impl Default for Spec {
    fn default() -> Self {
        Spec::empty().site("a", &["a1", "a2"]).site("b", &["b1"])
    }
}

impl Spec {
    /// No sites yet (core and pub are always built).
    pub fn empty() -> Self {
        Spec { family: DEFAULT_FAMILY.to_string(), sites: Vec::new(), wan_input: WanInput::Drop }
    }

    /// Adds a site with the given LAN hosts.
    pub fn site(mut self, name: &str, hosts: &[&str]) -> Self {
        self.sites
            .push(SiteSpec { name: name.to_string(), hosts: hosts.iter().map(|h| h.to_string()).collect() });
        self
    }

    /// Uses another namespace name family.
    pub fn family(mut self, family: &str) -> Self {
        self.family = family.to_string();
        self
    }

    /// Sets the NAT routers' INPUT policy for the WAN.
    pub fn wan_input(mut self, wan_input: WanInput) -> Self {
        self.wan_input = wan_input;
        self
    }

    fn validate(&self) -> Result<()> {
        let ok_name = |s: &str, max: usize| {
            !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        if !ok_name(&self.family, 16) {
            bail!("family {:?} must be 1..=16 chars of [a-z0-9]", self.family);
        }
        if self.sites.len() > 250 {
            bail!("at most 250 sites");
        }
        let mut seen: HashSet<String> = [CORE.to_string(), PUB.to_string()].into();
        for site in &self.sites {
            // interface `to-<site>` in core must fit IFNAMSIZ (15 chars)
            if !ok_name(&site.name, 12) {
                bail!("site name {:?} must be 1..=12 chars of [a-z0-9]", site.name);
            }
            if !seen.insert(format!("nat{}", site.name)) {
                bail!("duplicate node name nat{}", site.name);
            }
            if site.hosts.len() > 200 {
                bail!("site {}: at most 200 hosts", site.name);
            }
        }
        for site in &self.sites {
            for h in &site.hosts {
                // interface `h-<host>` in the NAT namespace must fit IFNAMSIZ
                if !ok_name(h, 13) {
                    bail!("host name {h:?} must be 1..=13 chars of [a-z0-9]");
                }
                if !seen.insert(h.clone()) {
                    bail!(
                        "duplicate node name {h} (names must differ from each other, core, pub and nat<site>)"
                    );
                }
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------------
// Nodes

/// What a node is in the topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// The core ("internet") router.
    Core,
    /// The public host (rolodex host), directly on the core.
    Public,
    /// The NAT router of a site.
    Router { site: String },
    /// A LAN host behind a site's NAT.
    Host { site: String },
}

/// One namespace of the topology (a host, the pub host or a router).
#[derive(Debug)]
pub struct Host {
    /// Short node name: `a1`, `pub`, `core`, `nata`.
    pub name: String,
    /// Full network namespace name (for `ip netns exec`).
    pub ns: String,
    /// Main address: the LAN address of a host, the public address of `pub`, the LAN gateway address of a NAT
    /// router, 198.18.0.1 for the core.
    pub lan_ip: Ipv4Addr,
    /// Default gateway, if the node has a default route.
    pub gateway: Option<Ipv4Addr>,
    pub role: Role,
    registry: Arc<Registry>,
}

impl Host {
    /// `ip netns exec <ns> <cmd>` as a [`Command`], to add arguments, environment, stdio as needed.
    pub fn command(&self, cmd: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.arg("netns").arg("exec").arg(&self.ns).arg(cmd);
        c
    }

    /// Runs a command in the namespace and waits for it (stdin is null, output is captured).
    pub fn exec(&self, cmd: impl AsRef<OsStr>, args: &[&str]) -> io::Result<Output> {
        self.command(cmd).args(args).stdin(Stdio::null()).output()
    }

    /// Like [`Host::exec`] but fails unless the command succeeds; returns its stdout.
    pub fn run(&self, cmd: impl AsRef<OsStr>, args: &[&str]) -> Result<String> {
        let cmd = cmd.as_ref();
        let out = self.exec(cmd, args).with_context(|| format!("{}: running {cmd:?}", self.name))?;
        if !out.status.success() {
            bail!(
                "{}: `{} {}` failed ({}): {}",
                self.name,
                cmd.to_string_lossy(),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One ICMP echo to `target` with a 1 s reply timeout.
    pub fn ping_once(&self, target: Ipv4Addr) -> bool {
        let t = target.to_string();
        self.exec("ping", &["-n", "-q", "-c", "1", "-W", "1", &t])
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Starts a background process in the namespace. Its stdout/stderr are collected (see [`NsChild::stdout`]);
    /// it runs in its own process group. Dropping the returned handle, or the topology, stops it.
    pub fn spawn(&self, cmd: impl AsRef<OsStr>, args: &[&str], env: &[(&str, &str)]) -> io::Result<NsChild> {
        let mut c = self.command(cmd);
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        self.spawn_command(c)
    }

    /// Spawns a prepared command (normally from [`Host::command`]) and ties its lifetime to the topology.
    /// stdin is set to null and stdout/stderr are always captured (see [`NsChild::stdout`]); the process gets
    /// its own process group.
    pub fn spawn_command(&self, mut cmd: Command) -> io::Result<NsChild> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        let label = format!("{}: {:?}", self.name, cmd);
        let mut child = cmd.spawn()?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            collect(out, stdout.clone());
        }
        if let Some(err) = child.stderr.take() {
            collect(err, stderr.clone());
        }
        let state = Arc::new(ChildState {
            pid: child.id(),
            label,
            child: Mutex::new(child),
            status: Mutex::new(None),
            stdout,
            stderr,
        });
        let mut reg = lock(&self.registry.children);
        reg.retain(|w| w.strong_count() > 0);
        reg.push(Arc::downgrade(&state));
        Ok(NsChild { state })
    }

    /// Runs `f` on a fresh thread that has joined this namespace (`setns`), and returns its result.
    /// Sockets created inside `f` belong to the namespace for their whole life, so this is the way to get
    /// a `std::net::UdpSocket`/`TcpStream` "on" a host, then use it from any thread.
    /// A panic in `f` is propagated.
    pub fn in_ns<F, R>(&self, f: F) -> io::Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        in_netns(&self.ns, f)
    }

    /// Writes a sysctl of this namespace, e.g. `set_sysctl("net/ipv4/ip_forward", "1")`.
    pub fn set_sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.in_ns(|| fs::write(&path, value))?
            .map_err(|e| io::Error::new(e.kind(), format!("{}: writing {path}: {e}", self.name)))
    }

    /// Reads a sysctl of this namespace.
    pub fn sysctl(&self, key: &str) -> io::Result<String> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        Ok(self.in_ns(|| fs::read_to_string(&path))??.trim().to_string())
    }

    fn is_router(&self) -> bool {
        matches!(self.role, Role::Core | Role::Router { .. })
    }
}

/// A NATed site.
#[derive(Clone, Debug)]
pub struct Site {
    pub name: String,
    /// Node name of its NAT router (`nat<name>`), usable with [`Topology::host`].
    pub router: String,
    /// Namespace of its NAT router.
    pub router_ns: String,
    /// The NAT's public (WAN) address: what peers on the internet see.
    pub public_ip: Ipv4Addr,
    /// The core router's address on the link to this site.
    pub core_ip: Ipv4Addr,
    /// LAN gateway address (on the NAT router's bridge `lan`).
    pub lan_gateway: Ipv4Addr,
    /// LAN prefix length (24).
    pub lan_prefix_len: u8,
    /// Node names of the hosts of this site.
    pub hosts: Vec<String>,
}

// ------------------------------------------------------------------------------------------------
// Spawned processes

#[derive(Debug, Default)]
struct Registry {
    children: Mutex<Vec<Weak<ChildState>>>,
}

#[derive(Debug)]
struct ChildState {
    pid: u32,
    label: String,
    child: Mutex<Child>,
    status: Mutex<Option<ExitStatus>>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl ChildState {
    /// Has the process exited? Does not reap it (so its pid, which is also its process-group id, stays
    /// reserved and the group can still be signalled safely).
    fn exited_nowait(&self, _child: &MutexGuard<'_, Child>) -> bool {
        if lock(&self.status).is_some() {
            return true;
        }
        // SAFETY: plain syscall on our own child, with a zeroed out-parameter.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let rc = libc::waitid(
                libc::P_PID,
                self.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            rc != 0 || info.si_pid() != 0
        }
    }

    fn signal_group(&self, sig: libc::c_int) {
        // The child was started with process_group(0): its pid is its process-group id. It is only signalled
        // while not yet reaped, so the id cannot have been reused.
        // SAFETY: kill(2) has no memory-safety requirements.
        unsafe {
            libc::kill(-(self.pid as libc::pid_t), sig);
        }
    }

    /// Kills the group with SIGKILL and reaps the leader. Caller holds the child lock.
    fn kill_and_reap(&self, child: &mut MutexGuard<'_, Child>) -> Option<ExitStatus> {
        if let Some(st) = *lock(&self.status) {
            return Some(st);
        }
        self.signal_group(libc::SIGKILL);
        let st = child.wait().ok();
        *lock(&self.status) = st;
        st
    }

    fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        let mut child = lock(&self.child);
        if let Some(st) = *lock(&self.status) {
            return Ok(Some(st));
        }
        if self.exited_nowait(&child) {
            // leader is gone: make sure nothing of its group survives, then reap
            return Ok(self.kill_and_reap(&mut child));
        }
        Ok(None)
    }

    fn terminate(&self, grace: Duration) -> Option<ExitStatus> {
        let mut child = lock(&self.child);
        if let Some(st) = *lock(&self.status) {
            return Some(st);
        }
        if !self.exited_nowait(&child) {
            self.signal_group(libc::SIGTERM);
            let deadline = Instant::now() + grace;
            while !self.exited_nowait(&child) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
        }
        self.kill_and_reap(&mut child)
    }
}

/// A process running in a namespace. Dropping it stops it: SIGTERM to its process group, up to 2 s grace,
/// then SIGKILL, and reaps it. The topology also stops it when dropped, whichever comes first.
#[derive(Debug)]
pub struct NsChild {
    state: Arc<ChildState>,
}

impl NsChild {
    pub fn pid(&self) -> u32 {
        self.state.pid
    }

    /// Everything written to stdout so far (lossy UTF-8).
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&lock(&self.state.stdout)).into_owned()
    }

    /// Everything written to stderr so far (lossy UTF-8).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&lock(&self.state.stderr)).into_owned()
    }

    /// The exit status if the process has exited (and then reaps it). When it has, whatever is left of its
    /// process group (background children) is SIGKILLed.
    pub fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        self.state.try_wait()
    }

    pub fn is_running(&self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_timeout(&self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the process now (SIGTERM, [`KILL_GRACE`], SIGKILL) and returns its exit status.
    pub fn stop(&self) -> Option<ExitStatus> {
        self.state.terminate(KILL_GRACE)
    }

    /// Describes the process (node and command line), for messages.
    pub fn label(&self) -> &str {
        &self.state.label
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        self.state.terminate(KILL_GRACE);
    }
}

fn collect(mut r: impl Read + Send + 'static, buf: Arc<Mutex<Vec<u8>>>) {
    thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut b = lock(&buf);
                    if b.len() + n <= MAX_OUTPUT {
                        b.extend_from_slice(&chunk[..n]);
                    }
                }
            }
        }
    });
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // a panic while holding one of these locks must not break cleanup
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ------------------------------------------------------------------------------------------------
// Topology

/// A built topology. See the module documentation for the layout.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    nodes: Vec<Host>,
    sites: Vec<Site>,
    /// Namespaces created so far (also on a half-finished build), deleted on drop.
    namespaces: Vec<String>,
    registry: Arc<Registry>,
    torn_down: bool,
}

impl Topology {
    /// Builds the topology. Removes stale namespaces of the same family first (see
    /// [`Topology::cleanup_stale`]). On error everything created so far is removed again.
    pub fn build(spec: Spec) -> Result<Topology> {
        spec.validate()?;
        if let Err(e) = Topology::cleanup_stale(&spec.family) {
            eprintln!("netns: cleaning up stale namespaces failed: {e:#}");
        }
        let prefix =
            format!("{}-{}-{}", spec.family, std::process::id(), INSTANCE.fetch_add(1, Ordering::Relaxed));
        let registry = Arc::new(Registry::default());
        let mut topo = Topology {
            prefix: prefix.clone(),
            nodes: Vec::new(),
            sites: Vec::new(),
            namespaces: Vec::new(),
            registry: registry.clone(),
            torn_down: false,
        };
        let node = |name: &str, lan_ip: Ipv4Addr, gateway: Option<Ipv4Addr>, role: Role| Host {
            name: name.to_string(),
            ns: format!("{prefix}-{name}"),
            lan_ip,
            gateway,
            role,
            registry: registry.clone(),
        };

        let core_pub = Ipv4Addr::new(198, 18, 0, 1);
        let pub_ip = Ipv4Addr::new(198, 18, 0, 2);
        topo.nodes.push(node(CORE, core_pub, None, Role::Core));
        topo.nodes.push(node(PUB, pub_ip, Some(core_pub), Role::Public));
        for (i, s) in spec.sites.iter().enumerate() {
            let n = (i + 1) as u8;
            let site = Site {
                name: s.name.clone(),
                router: format!("nat{}", s.name),
                router_ns: format!("{prefix}-nat{}", s.name),
                public_ip: Ipv4Addr::new(198, 18, n, 2),
                core_ip: Ipv4Addr::new(198, 18, n, 1),
                lan_gateway: Ipv4Addr::new(10, n, 0, 1),
                lan_prefix_len: 24,
                hosts: s.hosts.clone(),
            };
            topo.nodes.push(node(
                &site.router,
                site.lan_gateway,
                Some(site.core_ip),
                Role::Router { site: s.name.clone() },
            ));
            for (j, h) in s.hosts.iter().enumerate() {
                let ip = Ipv4Addr::new(10, n, 0, 11 + j as u8);
                topo.nodes.push(node(h, ip, Some(site.lan_gateway), Role::Host { site: s.name.clone() }));
            }
            topo.sites.push(site);
        }

        // From here on, an error return drops `topo`, which deletes what was created.
        topo.create_all(spec.wan_input).with_context(|| format!("building topology {prefix}"))?;
        Ok(topo)
    }

    fn create_all(&mut self, wan_input: WanInput) -> Result<()> {
        for i in 0..self.nodes.len() {
            let ns = self.nodes[i].ns.clone();
            {
                let _g = lock(&NETNS_LOCK);
                ip(&["netns", "add", &ns])?;
            }
            self.namespaces.push(ns.clone());
            let n = &self.nodes[i];
            // keep the namespaces IPv4-only: no DAD / router solicitations noise
            let _ = n.set_sysctl("net/ipv6/conf/all/disable_ipv6", "1");
            let _ = n.set_sysctl("net/ipv6/conf/default/disable_ipv6", "1");
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        let core = self.ns_of(CORE).to_string();
        let pubns = self.ns_of(PUB).to_string();

        // core <-> pub
        veth("to-pub", &core, "eth0", &pubns)?;
        addr_up(&core, "to-pub", "198.18.0.1/24")?;
        addr_up(&pubns, "eth0", "198.18.0.2/24")?;
        ip(&["-n", &pubns, "route", "add", "default", "via", "198.18.0.1"])?;
        self.host(CORE).set_sysctl("net/ipv4/ip_forward", "1")?;
        iptables_restore(
            &core,
            &format!(
                "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:{LOSS_CHAIN} - [0:0]\n\
             -A FORWARD -j {LOSS_CHAIN}\nCOMMIT\n"
            ),
        )?;

        for site in self.sites.clone() {
            let nat = site.router_ns.clone();
            let to = format!("to-{}", site.name);
            veth(&to, &core, "wan", &nat)?;
            addr_up(&core, &to, &format!("{}/24", site.core_ip))?;
            addr_up(&nat, "wan", &format!("{}/24", site.public_ip))?;
            ip(&["-n", &nat, "route", "add", "default", "via", &site.core_ip.to_string()])?;
            ip(&[
                "-n",
                &nat,
                "link",
                "add",
                "lan",
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
            ])?;
            addr_up(&nat, "lan", &format!("{}/{}", site.lan_gateway, site.lan_prefix_len))?;
            for h in &site.hosts {
                let host = self.host(h);
                let hns = host.ns.clone();
                let port = format!("h-{h}");
                veth(&port, &nat, "eth0", &hns)?;
                ip(&["-n", &nat, "link", "set", &port, "master", "lan", "up"])?;
                addr_up(&hns, "eth0", &format!("{}/{}", host.lan_ip, site.lan_prefix_len))?;
                ip(&["-n", &hns, "route", "add", "default", "via", &site.lan_gateway.to_string()])?;
            }
            self.host(&site.router).set_sysctl("net/ipv4/ip_forward", "1")?;
            iptables_restore(&nat, &nat_rules(wan_input))?;
        }
        Ok(())
    }

    fn ns_of(&self, node: &str) -> &str {
        &self.host(node).ns
    }

    /// Namespace prefix of this instance, e.g. `rm-4242-0` (every namespace name starts with it and a `-`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Names of all namespaces of this topology.
    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces.clone()
    }

    /// All nodes: core, pub, then per site its router and hosts.
    pub fn nodes(&self) -> &[Host] {
        &self.nodes
    }

    /// Any node by name (`a1`, `pub`, `core`, `nata`). Panics with a clear message if there is none.
    pub fn host(&self, name: &str) -> &Host {
        self.try_host(name).unwrap_or_else(|| {
            let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            panic!("topology {} has no node {name:?} (nodes: {names:?})", self.prefix)
        })
    }

    pub fn try_host(&self, name: &str) -> Option<&Host> {
        self.nodes.iter().find(|n| n.name == name || n.ns == name)
    }

    /// The public host (rolodex host).
    pub fn pub_host(&self) -> &Host {
        self.host(PUB)
    }

    /// The core router.
    pub fn core(&self) -> &Host {
        self.host(CORE)
    }

    /// Address of the public host (rolodex host): 198.18.0.2.
    pub fn public_ip(&self) -> Ipv4Addr {
        self.pub_host().lan_ip
    }

    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// A site by name. Panics with a clear message if there is none.
    pub fn site(&self, name: &str) -> &Site {
        self.sites
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("topology {} has no site {name:?}", self.prefix))
    }

    /// The public (NAT WAN) address of a site.
    pub fn site_public_ip(&self, site: &str) -> Ipv4Addr {
        self.site(site).public_ip
    }

    /// The NAT router node of a site.
    pub fn router(&self, site: &str) -> &Host {
        self.host(&self.site(site).router)
    }

    fn router_node(&self, router: &str) -> Result<&Host> {
        let node = self
            .try_host(router)
            .or_else(|| self.sites.iter().find(|s| s.name == router).map(|s| self.host(&s.router)))
            .ok_or_else(|| anyhow!("no router {router:?} in topology {}", self.prefix))?;
        if !node.is_router() {
            bail!("{router:?} is not a router (core or nat<site>)");
        }
        Ok(node)
    }

    /// Drops `percent` % of the packets forwarded by a router (both directions), using the iptables
    /// `statistic` match in its FORWARD path (no netem needed). `router` is `core`, a NAT router node name
    /// (`nata`), a site name (`a`) or a full namespace name. `0` removes the loss.
    pub fn set_loss(&self, router: &str, percent: f64) -> Result<()> {
        if !(0.0..=100.0).contains(&percent) {
            bail!("loss percent {percent} out of 0..=100");
        }
        let node = self.router_node(router)?;
        node.run("iptables", &["-w", "-F", LOSS_CHAIN])?;
        if percent > 0.0 {
            let p = format!("{:.6}", percent / 100.0);
            node.run(
                "iptables",
                &[
                    "-w",
                    "-A",
                    LOSS_CHAIN,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ],
            )?;
        }
        Ok(())
    }

    /// Packets dropped so far by a router's loss rule.
    pub fn loss_dropped(&self, router: &str) -> Result<u64> {
        let node = self.router_node(router)?;
        let saved = node.run("iptables-save", &["-c", "-t", "filter"])?;
        Ok(counter_sum(&saved, &format!("-A {LOSS_CHAIN} ")))
    }

    /// Packets a site's NAT router dropped because they arrived unsolicited from the WAN (INPUT + FORWARD).
    pub fn unsolicited_dropped(&self, site: &str) -> Result<u64> {
        let saved = self.router(site).run("iptables-save", &["-c", "-t", "filter"])?;
        Ok(counter_sum(&saved, &format!("--comment {UNSOLICITED_COMMENT} ")))
    }

    /// Empties the conntrack tables of every router (core and NATs), e.g. between independent trials.
    pub fn flush_conntrack(&self) -> Result<()> {
        for n in self.nodes.iter().filter(|n| n.is_router()) {
            n.run("conntrack", &["-F"])?;
        }
        Ok(())
    }

    /// `conntrack -L` of a router, for diagnostics.
    pub fn conntrack_dump(&self, router: &str) -> Result<String> {
        let node = self.router_node(router)?;
        let out = node.exec("conntrack", &["-L"])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Human-readable description of the topology (for `rolomesh demo`).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "topology {} (namespaces {}-*)", self.prefix, self.prefix);
        let _ = writeln!(s, "  core   198.18.0.1 (ns {})", self.core().ns);
        let _ = writeln!(s, "  pub    {} (ns {})", self.public_ip(), self.pub_host().ns);
        for site in &self.sites {
            let _ = writeln!(
                s,
                "  site {}: NAT {} public {} LAN {}/{} (ns {})",
                site.name, site.router, site.public_ip, site.lan_gateway, site.lan_prefix_len, site.router_ns
            );
            for h in &site.hosts {
                let h = self.host(h);
                let _ = writeln!(s, "    {:<6} {} (ns {})", h.name, h.lan_ip, h.ns);
            }
        }
        s
    }

    /// Tears down now and reports errors (dropping does the same but can only print them).
    pub fn close(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        // 1. processes spawned through the topology: SIGTERM to all, shared grace, then SIGKILL
        let children: Vec<Arc<ChildState>> =
            lock(&self.registry.children).drain(..).filter_map(|w| w.upgrade()).collect();
        stop_all(&children, KILL_GRACE);
        // 2. anything else still living in our namespaces
        kill_pids_in(&self.namespaces);
        // 3. the namespaces (their veths and bridges go with them)
        let mut errors = Vec::new();
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = delete_netns(&ns) {
                errors.push(format!("{e:#}"));
            }
        }
        if errors.is_empty() { Ok(()) } else { bail!("teardown of {}: {}", self.prefix, errors.join("; ")) }
    }

    /// Removes namespaces of `family` (named `<family>-<pid>-<n>-<node>`) whose creating process is no
    /// longer alive, killing any process still inside them. Returns the removed namespace names.
    pub fn cleanup_stale(family: &str) -> Result<Vec<String>> {
        let stale: Vec<String> = list_namespaces()
            .into_iter()
            .filter(|ns| match parse_ns_name(family, ns) {
                Some(pid) => !pid_alive(pid),
                None => false,
            })
            .collect();
        if stale.is_empty() {
            return Ok(stale);
        }
        kill_pids_in(&stale);
        let mut removed = Vec::new();
        for ns in stale {
            match delete_netns(&ns) {
                Ok(()) => removed.push(ns),
                // a concurrent cleanup may have removed it already
                Err(_) if !namespace_exists(&ns) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("netns: {e:#}");
        }
    }
}

fn nat_rules(wan_input: WanInput) -> String {
    let input_drop = match wan_input {
        WanInput::Drop => format!("-A INPUT -i wan -m comment --comment {UNSOLICITED_COMMENT} -j DROP\n"),
        WanInput::Accept => String::new(),
    };
    format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         -A POSTROUTING -o wan -j MASQUERADE\n\
         COMMIT\n\
         *filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:{LOSS_CHAIN} - [0:0]\n\
         -A INPUT -i lo -j ACCEPT\n\
         -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
         -A INPUT -i lan -j ACCEPT\n\
         {input_drop}\
         -A FORWARD -j {LOSS_CHAIN}\n\
         -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
         -A FORWARD -i lan -j ACCEPT\n\
         -A FORWARD -i wan -m comment --comment {UNSOLICITED_COMMENT} -j DROP\n\
         COMMIT\n"
    )
}

/// Sums the packet counters of `iptables-save -c` lines containing `needle`.
fn counter_sum(saved: &str, needle: &str) -> u64 {
    saved
        .lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| l.strip_prefix('[')?.split(':').next()?.parse::<u64>().ok())
        .sum()
}

fn stop_all(children: &[Arc<ChildState>], grace: Duration) {
    let mut guards: Vec<(&Arc<ChildState>, MutexGuard<'_, Child>)> =
        children.iter().map(|c| (c, lock(&c.child))).collect();
    for (c, g) in &guards {
        if !c.exited_nowait(g) {
            c.signal_group(libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && guards.iter().any(|(c, g)| !c.exited_nowait(g)) {
        thread::sleep(Duration::from_millis(5));
    }
    for (c, g) in guards.iter_mut() {
        c.kill_and_reap(g);
    }
}

// ------------------------------------------------------------------------------------------------
// Free helpers

/// Polls `cond` every `poll_interval` until it returns true (→ `true`) or `timeout` has passed (→ `false`).
/// `cond` is always evaluated at least once and once more at the deadline.
pub fn wait_until(timeout: Duration, poll_interval: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep(poll_interval.min(deadline - now));
    }
}

/// Why a topology cannot be built here (not root), or `None` if it can be tried.
pub fn unsupported_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!("network namespaces need root (running as uid {euid})"));
    }
    None
}

/// Runs `f` on a new thread inside the named network namespace (see [`Host::in_ns`]).
pub fn in_netns<F, R>(ns: &str, f: F) -> io::Result<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let file = File::open(Path::new(NETNS_DIR).join(ns))?;
    thread::scope(|s| {
        let h = s.spawn(move || -> io::Result<R> {
            // SAFETY: setns on a valid fd; only this (fresh, short-lived) thread changes namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            drop(file);
            Ok(f())
        });
        match h.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Names of all named network namespaces (entries of /run/netns).
pub fn list_namespaces() -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(NETNS_DIR) {
        Ok(rd) => rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

pub fn namespace_exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// `<family>-<pid>-<n>-<node>` → pid.
fn parse_ns_name(family: &str, ns: &str) -> Option<u32> {
    let rest = ns.strip_prefix(family)?.strip_prefix('-')?;
    let mut parts = rest.splitn(3, '-');
    let pid = parts.next()?.parse::<u32>().ok()?;
    let n = parts.next()?;
    let node = parts.next()?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !node.is_empty()).then_some(pid)
}

fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks existence.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// SIGKILLs every process (other than ourselves) whose network namespace is one of `namespaces`.
fn kill_pids_in(namespaces: &[String]) {
    let ids: HashSet<(u64, u64)> = namespaces
        .iter()
        .filter_map(|ns| fs::metadata(Path::new(NETNS_DIR).join(ns)).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    if ids.is_empty() {
        return;
    }
    let me = std::process::id();
    let Ok(rd) = fs::read_dir("/proc") else { return };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        if let Ok(m) = fs::metadata(format!("/proc/{pid}/ns/net"))
            && ids.contains(&(m.dev(), m.ino()))
        {
            // SAFETY: kill(2) has no memory-safety requirements.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

fn delete_netns(ns: &str) -> Result<()> {
    let _g = lock(&NETNS_LOCK);
    ip(&["netns", "del", ns])
}

fn ip(args: &[&str]) -> Result<()> {
    let out =
        Command::new("ip").args(args).stdin(Stdio::null()).output().context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn veth(a: &str, a_ns: &str, b: &str, b_ns: &str) -> Result<()> {
    ip(&["link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns])
}

fn addr_up(ns: &str, dev: &str, cidr: &str) -> Result<()> {
    ip(&["-n", ns, "addr", "add", cidr, "dev", dev])?;
    ip(&["-n", ns, "link", "set", dev, "up"])
}

fn iptables_restore(ns: &str, rules: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "iptables-restore", "-w"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running iptables-restore")?;
    child.stdin.take().expect("piped stdin").write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("iptables-restore in {ns} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_namespace_names() {
        assert_eq!(parse_ns_name("rm", "rm-123-0-core"), Some(123));
        assert_eq!(parse_ns_name("rm", "rm-123-17-a1"), Some(123));
        assert_eq!(parse_ns_name("rm", "rmx-123-0-a1"), None);
        assert_eq!(parse_ns_name("rm", "rm-abc-0-a1"), None);
        assert_eq!(parse_ns_name("rm", "rm-123-0-"), None);
        assert_eq!(parse_ns_name("rm", "rm-123-core"), None);
        assert_eq!(parse_ns_name("rm", "other"), None);
    }

    #[test]
    fn validates_specs() {
        assert!(Spec::default().validate().is_ok());
        assert!(Spec::empty().site("a", &["a1"]).site("a", &["a2"]).validate().is_err());
        assert!(Spec::empty().site("a", &["pub"]).validate().is_err());
        assert!(Spec::empty().site("a", &["nata"]).validate().is_err());
        assert!(Spec::empty().site("A", &["a1"]).validate().is_err());
        assert!(Spec::empty().site("a", &["averyveryverylongname"]).validate().is_err());
        assert!(Spec::default().family("r-m").validate().is_err());
    }

    #[test]
    fn sums_counters() {
        let saved = "[3:100] -A INPUT -i wan -m comment --comment rm-unsolicited -j DROP\n\
                     [4:200] -A FORWARD -i wan -m comment --comment rm-unsolicited -j DROP\n\
                     [9:9] -A FORWARD -i lan -j ACCEPT\n";
        assert_eq!(counter_sum(saved, "--comment rm-unsolicited "), 7);
    }

    #[test]
    fn wait_until_times_out_and_succeeds() {
        let start = Instant::now();
        assert!(!wait_until(Duration::from_millis(50), Duration::from_millis(10), || false));
        assert!(start.elapsed() >= Duration::from_millis(50));
        let mut n = 0;
        assert!(wait_until(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            n >= 3
        }));
    }
}
