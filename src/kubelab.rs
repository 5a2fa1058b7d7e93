//! A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager as local processes, built
//! by `tests/k8s/install-tools.sh`) for tests, and a TCP relay that lets processes in lab namespaces reach it.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use anyhow::{Context, Result, bail};

use crate::netns::Host;

/// The lab's public host address: the apiserver certificate also covers it, for agents behind the relay.
pub const RELAY_IP: &str = "198.18.0.2";

pub struct ControlPlane {
    repo: PathBuf,
    pub dir: PathBuf,
    /// Directory of kubectl, helm, kubeconform.
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:<port>`
    pub server: String,
    pub port: u16,
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
    Ok(out)
}

fn ok(cmd: &mut Command) -> Result<String> {
    let out = run(cmd)?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl ControlPlane {
    /// Builds (once, cached) and starts a fresh control plane in a new directory named after `name`.
    pub fn start(repo: &Path, name: &str) -> Result<ControlPlane> {
        let tools = ok(&mut Command::new(repo.join("tests/k8s/install-tools.sh")))?;
        let bin = PathBuf::from(tools.lines().last().context("install-tools printed nothing")?.trim());
        let dir = std::env::temp_dir().join(format!("rolomesh-k8s-{name}-{}", std::process::id()));
        // Free ports are picked before the components bind them, so two control planes starting at the same
        // moment (parallel tests) can collide; a fresh attempt picks new ports.
        let mut attempt = 0;
        loop {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            let started = ok(Command::new(repo.join("tests/k8s/control-plane.sh"))
                .arg("start")
                .arg(&dir)
                .env("ROLOMESH_K8S_BIN", &bin)
                .env("ROLOMESH_APISERVER_EXTRA_SANS", RELAY_IP));
            match started {
                Ok(_) => break,
                Err(e) if attempt < 2 => {
                    eprintln!("control plane start failed, retrying: {e:#}");
                    attempt += 1;
                }
                Err(e) => return Err(e.context("starting the control plane")),
            }
        }
        let env = std::fs::read_to_string(dir.join("env")).context("reading control plane env")?;
        let server = env
            .lines()
            .find_map(|l| l.strip_prefix("export ROLOMESH_K8S_APISERVER="))
            .context("no apiserver address in env")?
            .trim_matches('\'')
            .to_string();
        let port = server.rsplit(':').next().and_then(|p| p.parse().ok()).context("bad apiserver address")?;
        Ok(ControlPlane {
            repo: repo.to_path_buf(),
            kubeconfig: dir.join("admin.kubeconfig"),
            dir,
            bin,
            server,
            port,
        })
    }

    /// `kubectl` as cluster admin.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(self.bin.join("kubectl"));
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    /// Runs kubectl and returns stdout, failing with its stderr.
    pub fn k(&self, args: &[&str]) -> Result<String> {
        ok(self.kubectl().args(args))
    }

    /// Runs kubectl and returns (success, stdout + stderr), for commands expected to fail.
    pub fn k_try(&self, args: &[&str]) -> Result<(bool, String)> {
        let out = run(self.kubectl().args(args))?;
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), text))
    }

    /// `kubectl apply -f -` with `yaml`; (success, output).
    pub fn apply(&self, yaml: &str) -> Result<(bool, String)> {
        use std::io::Write;
        let mut child = self
            .kubectl()
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().context("kubectl stdin")?.write_all(yaml.as_bytes())?;
        let out = child.wait_with_output()?;
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), text))
    }

    pub fn helm(&self) -> Command {
        let mut c = Command::new(self.bin.join("helm"));
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    /// A kubeconfig that acts as ServiceAccount `ns/sa`, optionally pointing at another server address.
    pub fn sa_kubeconfig(&self, ns: &str, sa: &str, server: Option<&str>) -> Result<PathBuf> {
        let out = self.dir.join(format!("{ns}-{sa}.kubeconfig"));
        ok(Command::new(self.repo.join("tests/k8s/control-plane.sh"))
            .args(["sa-kubeconfig"])
            .arg(&self.dir)
            .args([ns, sa])
            .arg(&out))?;
        if let Some(server) = server {
            ok(Command::new(self.bin.join("kubectl"))
                .arg(format!("--kubeconfig={}", out.display()))
                .args(["config", "set-cluster", "rolomesh", &format!("--server={server}")]))?;
        }
        Ok(out)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new(self.repo.join("tests/k8s/control-plane.sh"))
            .arg("stop")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Forwards TCP connections accepted on `listen` inside `host`'s namespace to `target` in this process's
/// namespace (a socket keeps the namespace it was created in). Stops when dropped.
pub struct Relay {
    stop: Arc<AtomicBool>,
    listen: SocketAddr,
    host_ns: String,
}

impl Relay {
    pub fn start(host: &Host, listen: SocketAddr, target: SocketAddr) -> Result<Relay> {
        let listener = host.in_ns(move || TcpListener::bind(listen))??;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(inbound) = conn else { continue };
                let Ok(outbound) = TcpStream::connect(target) else { continue };
                pipe(inbound, outbound);
            }
        });
        Ok(Relay { stop, listen, host_ns: host.ns.clone() })
    }
}

fn pipe(a: TcpStream, b: TcpStream) {
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
    };
    if let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) {
        copy(a, b2);
        copy(b, a2);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let listen = self.listen;
        let _ = crate::netns::in_netns(&self.host_ns, move || TcpStream::connect(listen));
    }
}
