//! A running mesh in a namespace topology: the rolodex on the public host and an agent per LAN host.
//! Shared by `rolomesh demo` and the end-to-end tests.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::netns::{Host, NsChild, Spec, Topology, wait_until};

pub const NETWORK: &str = "lab";
pub const ROLODEX_PORT: u16 = 6264;
pub const METRICS: &str = "127.0.0.1:9464";

pub struct Member {
    pub host: String,
    pub overlay: Ipv4Addr,
    pub overlay6: Ipv6Addr,
}

pub struct Lab {
    pub topo: Topology,
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub members: Vec<Member>,
    pub rolodex: Option<NsChild>,
    /// A second, independent rolodex (port 6265) that agents also register with, when enabled.
    pub standby: Option<NsChild>,
    pub standby_enabled: bool,
    pub agents: HashMap<String, NsChild>,
}

impl Lab {
    /// Builds the topology and writes a fresh network secret; starts nothing yet.
    pub fn new(bin: &Path, spec: Spec) -> Result<Lab> {
        let topo = Topology::build(spec)?;
        let dir = std::env::temp_dir().join(format!("rolomesh-{}", topo.prefix()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut members = Vec::new();
        for (i, site) in topo.sites().iter().enumerate() {
            for (j, h) in site.hosts.iter().enumerate() {
                let n = (i * 50 + j + 1) as u8;
                let overlay6 = Ipv6Addr::new(0xfd52, 0, 0, 0, 0, 0, 0, n.into());
                members.push(Member { host: h.clone(), overlay: Ipv4Addr::new(100, 64, 0, n), overlay6 });
            }
        }
        let lab = Lab {
            topo,
            bin: bin.to_path_buf(),
            dir,
            members,
            rolodex: None,
            standby: None,
            standby_enabled: false,
            agents: HashMap::new(),
        };
        lab.write_secret("secret", &lab.cmd_stdout(&["keys", "generate"])?)?;
        let key = lab.cmd_stdout(&[
            "keys",
            "rolodex-key",
            "--network",
            NETWORK,
            "--secret-file",
            &lab.path("secret"),
        ])?;
        lab.write_secret("rolodex.key", &key)?;
        Ok(lab)
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    pub fn write_secret(&self, name: &str, content: &str) -> Result<()> {
        std::fs::write(self.dir.join(name), content).with_context(|| format!("writing {name}"))
    }

    fn cmd_stdout(&self, args: &[&str]) -> Result<String> {
        let out = std::process::Command::new(&self.bin).args(args).output().context("running rolomesh")?;
        if !out.status.success() {
            bail!("rolomesh {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub fn rolodex_addr(&self) -> String {
        format!("{}:{ROLODEX_PORT}", self.topo.public_ip())
    }

    fn spawn_rolodex(&self, port: u16, metrics_port: u16) -> Result<NsChild> {
        let net = format!("{NETWORK}={}", self.path("rolodex.key"));
        let listen = format!("0.0.0.0:{port}");
        let metrics = format!("127.0.0.1:{metrics_port}");
        let bin = self.bin.to_string_lossy().into_owned();
        Ok(self.topo.pub_host().spawn(
            &bin,
            &["rolodex", "--listen", &listen, "--network", &net, "--metrics-listen", &metrics],
            &[("RUST_LOG", "info")],
        )?)
    }

    pub fn start_rolodex(&mut self) -> Result<()> {
        self.rolodex = Some(self.spawn_rolodex(ROLODEX_PORT, 9465)?);
        Ok(())
    }

    /// Starts the standby rolodex on port 6265 (metrics on 9466).
    pub fn start_standby(&mut self) -> Result<()> {
        self.standby = Some(self.spawn_rolodex(ROLODEX_PORT + 1, 9466)?);
        Ok(())
    }

    pub fn stop_rolodex(&mut self) {
        if let Some(c) = self.rolodex.take() {
            c.stop();
        }
    }

    pub fn member(&self, host: &str) -> Result<&Member> {
        self.members.iter().find(|m| m.host == host).with_context(|| format!("no member {host}"))
    }

    /// Starts the agent on `host` with the lab's secret, or with the secret file `secret`.
    pub fn start_agent_with(&mut self, host: &str, secret: &str, extra: &[&str]) -> Result<()> {
        let m = self.member(host)?;
        let addr = format!("{}/10", m.overlay);
        let addr6 = format!("{}/64", m.overlay6);
        // The lab turns IPv6 off on its underlay links; the overlay device gets it back.
        self.topo.host(host).set_sysctl("net/ipv6/conf/default/disable_ipv6", "0")?;
        let secret = self.path(secret);
        let rolodex = self.rolodex_addr();
        let bin = self.bin.to_string_lossy().into_owned();
        let mut args = vec![
            "agent",
            "--network",
            NETWORK,
            "--secret-file",
            &secret,
            "--name",
            host,
            "--address",
            &addr,
            "--address",
            &addr6,
            "--rolodex",
            &rolodex,
            "--tun-name",
            "rm0",
            "--metrics-listen",
            METRICS,
        ];
        let standby = format!("{}:{}", self.topo.public_ip(), ROLODEX_PORT + 1);
        if self.standby_enabled {
            args.extend_from_slice(&["--rolodex", &standby]);
        }
        args.extend_from_slice(extra);
        let child = self.topo.host(host).spawn(&bin, &args, &[("RUST_LOG", "info")])?;
        self.agents.insert(host.to_string(), child);
        Ok(())
    }

    pub fn start_agent(&mut self, host: &str) -> Result<()> {
        self.start_agent_with(host, "secret", &[])
    }

    pub fn start_all(&mut self) -> Result<()> {
        self.start_rolodex()?;
        if self.standby_enabled {
            self.start_standby()?;
        }
        let hosts: Vec<String> = self.members.iter().map(|m| m.host.clone()).collect();
        for h in hosts {
            self.start_agent(&h)?;
        }
        Ok(())
    }

    pub fn stop_agent(&mut self, host: &str) {
        if let Some(c) = self.agents.remove(host) {
            c.stop();
        }
    }

    pub fn host(&self, name: &str) -> &Host {
        self.topo.host(name)
    }

    /// The agent's `/status` document.
    pub fn status(&self, host: &str) -> Result<Value> {
        let bin = self.bin.to_string_lossy().into_owned();
        let out = self.host(host).run(&bin, &["status", "--metrics", METRICS])?;
        serde_json::from_str(&out).with_context(|| format!("{host}: bad status JSON"))
    }

    /// The state of `host`'s link to `peer` ("up", "punching", ...), if it knows the peer.
    pub fn link(&self, host: &str, peer: &str) -> Option<Value> {
        let s = self.status(host).ok()?;
        s["peers"].as_array()?.iter().find(|p| p["name"] == peer).cloned()
    }

    pub fn link_up(&self, host: &str, peer: &str) -> bool {
        self.link(host, peer).is_some_and(|l| l["state"] == "up")
    }

    /// Waits until every running agent has an up link to every other running agent.
    pub fn wait_full_mesh(&self, timeout: Duration) -> bool {
        let running: Vec<&String> = self.agents.keys().collect();
        wait_until(timeout, Duration::from_millis(100), || {
            running.iter().all(|a| running.iter().all(|b| a == b || self.link_up(a, b)))
        })
    }

    /// One IPv6 overlay ping from `from` to `to`'s overlay address.
    pub fn overlay_ping6(&self, from: &str, to: &str) -> Result<bool> {
        let t = self.member(to)?.overlay6.to_string();
        let out = self.host(from).exec("ping", &["-6", "-n", "-q", "-c", "1", "-W", "1", &t])?;
        Ok(out.status.success())
    }

    /// One overlay ping from `from` to `to`'s overlay address.
    pub fn overlay_ping(&self, from: &str, to: &str) -> Result<bool> {
        Ok(self.host(from).ping_once(self.member(to)?.overlay))
    }

    /// Logs of every process, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Some(r) = &self.rolodex {
            s += &format!("--- rolodex\n{}\n", tail(&r.stderr()));
        }
        for (h, a) in &self.agents {
            s += &format!("--- agent {h}\n{}\n", tail(&a.stderr()));
        }
        s
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, a) in self.agents.drain() {
            a.stop();
        }
        self.stop_rolodex();
        if let Some(c) = self.standby.take() {
            c.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
