//! `rolomesh bench k8s-scale`: the operator and the agents' MeshMember status writers against a real
//! kube-apiserver (tests/k8s/control-plane.sh) with many Nodes.
//!
//! 1. Allocation: N Node objects, the real `rolomesh operator` process and one MeshNetwork selecting them;
//!    time from applying the MeshNetwork until N MeshMembers exist with distinct addresses, and until the
//!    network's status counts them.
//! 2. Status writes: M real status writers (`agent::kube::writer`) fed synthetic snapshots of an M-member full
//!    mesh ([`sim`]: links coming up, quiet, then nodes restarting); the API server's own request counter
//!    says how many status writes arrived in each phase, next to the bound the writer's design implies.

mod report;
mod sim;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::kube::Snapshot;
use agent::kube::status::{self, HEARTBEAT};
use agent::kube::writer::Writer;
use anyhow::{Context, Result, bail};
use crds::{MeshMember, MeshNetwork};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::kubelab::ControlPlane;
pub use report::{Allocation, Phase, Report, Writes};

const NAMESPACE: &str = "default";
const NETWORK: &str = "scale";
/// The pool members are allocated from (`allocateFrom`), inside the overlay 100.64.0.0/10.
const POOL: (Ipv4Addr, u32) = (Ipv4Addr::new(100, 64, 0, 0), 16);
/// The most Nodes the bench can name distinct pod CIDRs (10.x.y.0/24) and addresses for.
const MAX_NODES: usize = 60_000;
/// Requests in flight while creating Nodes.
const CREATE_CONCURRENCY: usize = 32;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Node objects to create (each gets a MeshMember)
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Status writers to run (one per member, at most --nodes; 0 skips the write phase)
    #[arg(long, default_value_t = 1000)]
    pub members_for_writes: usize,
    /// The agents' --status-interval
    #[arg(long, default_value = "10s", value_parser = agent::config::parse_duration)]
    pub status_interval: Duration,
    /// Links come up within this time of the writers' start
    #[arg(long, default_value = "40s", value_parser = agent::config::parse_duration)]
    pub ramp: Duration,
    /// Quiet window after the ramp (at least the 60 s heartbeat to see the steady rate)
    #[arg(long, default_value = "75s", value_parser = agent::config::parse_duration)]
    pub steady: Duration,
    /// Churn window: one node restarts every --flap-every
    #[arg(long, default_value = "60s", value_parser = agent::config::parse_duration)]
    pub churn: Duration,
    #[arg(long, default_value = "2s", value_parser = agent::config::parse_duration)]
    pub flap_every: Duration,
    /// Write the results as JSON here
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the results as Markdown here (also printed)
    #[arg(long)]
    pub md: Option<PathBuf>,
    /// The rolomesh repository (for tests/k8s/*.sh)
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// Run the operator from this rolomesh binary instead of this one (to compare operator versions)
    #[arg(long)]
    pub operator_bin: Option<PathBuf>,
}

/// What to measure; see [`Args`].
#[derive(Clone, Debug)]
pub struct Options {
    pub nodes: usize,
    pub writers: usize,
    pub status_interval: Duration,
    pub ramp: Duration,
    pub steady: Duration,
    pub churn: Duration,
    pub flap_every: Duration,
}

impl From<&Args> for Options {
    fn from(a: &Args) -> Self {
        Options {
            nodes: a.nodes,
            writers: a.members_for_writes,
            status_interval: a.status_interval,
            ramp: a.ramp,
            steady: a.steady,
            churn: a.churn,
            flap_every: a.flap_every,
        }
    }
}

/// `rolomesh bench k8s-scale`: runs, prints the Markdown report, and writes the files asked for.
pub fn main(args: Args) -> Result<()> {
    if !args.repo.join("tests/k8s/control-plane.sh").exists() {
        bail!(
            "{} is not the rolomesh repository (no tests/k8s/control-plane.sh); pass --repo",
            args.repo.display()
        );
    }
    // The status writers log their failures (RUST_LOG=debug shows every write).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let exe = match &args.operator_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating the rolomesh binary")?,
    };
    let report = run(&args.repo, &exe, &Options::from(&args))?;
    let md = report.markdown();
    print!("{md}");
    if let Some(p) = &args.json {
        let text = serde_json::to_string_pretty(&report).context("encoding the report")?;
        write_file(p, &(text + "\n"))?;
    }
    if let Some(p) = &args.md {
        write_file(p, &md)?;
    }
    Ok(())
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Starts a control plane from `repo`, runs both phases with the operator binary `exe`, stops everything.
pub fn run(repo: &Path, exe: &Path, o: &Options) -> Result<Report> {
    if o.nodes == 0 || o.nodes > MAX_NODES {
        bail!("--nodes must be between 1 and {MAX_NODES}, not {}", o.nodes);
    }
    if o.writers > o.nodes {
        bail!("--members-for-writes ({}) cannot exceed --nodes ({})", o.writers, o.nodes);
    }
    let cp = ControlPlane::start(repo, "scale").context("starting the control plane")?;
    cp.k(&["apply", "-f", &repo.join("crds/rolomesh.yaml").to_string_lossy()])?;
    cp.k(&["wait", "--for=condition=Established", "--timeout=60s", "crd/meshnetworks.rolomesh.io"])?;
    cp.k(&["wait", "--for=condition=Established", "--timeout=60s", "crd/meshmembers.rolomesh.io"])?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    rt.block_on(async {
        let client = client(&cp.kubeconfig).await?;
        let t = Instant::now();
        create_nodes(&client, o.nodes).await?;
        eprintln!("created {} Nodes in {:.1} s", o.nodes, t.elapsed().as_secs_f64());
        let op = Operator::start(exe, &cp)?;
        let allocation = allocate(&client, &op, o.nodes).await?;
        eprintln!(
            "allocation: {} members in {:.1} s, counted in the network status after {:.1} s",
            allocation.members, allocation.members_secs, allocation.status_secs
        );
        let writes = if o.writers > 0 { Some(status_writes(&client, &op, o).await?) } else { None };
        Ok(Report::new(o, allocation, writes))
    })
}

async fn client(kubeconfig: &Path) -> Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).context("reading the admin kubeconfig")?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Client::try_from(config).context("building the Kubernetes client")
}

pub fn node_name(i: usize) -> String {
    format!("node-{i:05}")
}

/// A Node as a kubelet and the IPAM controller would leave it: labels, pod CIDR, an InternalIP.
fn node(i: usize) -> (Node, NodeStatus) {
    let mut n = Node::default();
    n.metadata.name = Some(node_name(i));
    n.metadata.labels = Some(BTreeMap::from([
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/hostname".to_string(), node_name(i)),
    ]));
    let cidr = format!("10.{}.{}.0/24", i >> 8, i & 255);
    n.spec =
        Some(NodeSpec { pod_cidr: Some(cidr.clone()), pod_cidrs: Some(vec![cidr]), ..Default::default() });
    let ip = format!("172.16.{}.{}", i >> 8, i & 255);
    let status = NodeStatus {
        addresses: Some(vec![NodeAddress { type_: "InternalIP".into(), address: ip }]),
        ..Default::default()
    };
    (n, status)
}

async fn create_nodes(client: &Client, n: usize) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let (node, status) = node(i);
                let name = node_name(i);
                api.create(&PostParams::default(), &node)
                    .await
                    .with_context(|| format!("creating {name}"))?;
                let patch = serde_json::json!({ "status": status });
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .with_context(|| format!("setting {name}'s addresses"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect::<()>()
        .await
}

/// The operator process (`rolomesh operator`, no leader election), killed on drop.
struct Operator {
    child: Child,
    metrics_port: u16,
}

impl Operator {
    fn start(exe: &Path, cp: &ControlPlane) -> Result<Operator> {
        let metrics_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        // Outside the control plane's directory, which goes with it.
        let path = std::env::temp_dir().join("rolomesh-k8s-scale-operator.log");
        let log = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        eprintln!("operator log: {}", path.display());
        let child = Command::new(exe)
            .args(["operator", "--leader-election=false", "--image", "rolomesh/rolomesh:bench"])
            .args(["--namespace", NAMESPACE, "--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .env("KUBECONFIG", &cp.kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} operator", exe.display()))?;
        Ok(Operator { child, metrics_port })
    }

    /// Reconciles so far and the process's CPU seconds.
    async fn sample(&self) -> (u64, f64) {
        let text = http_get(self.metrics_port, "/metrics").await.unwrap_or_default();
        let reconciles = metric(&text, "rolomesh_operator_reconciliations_total").unwrap_or(0.0) as u64;
        (reconciles, cpu_seconds(self.child.id()).unwrap_or(0.0))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn http_get(port: u16, path: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await??;
    Ok(out)
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// User plus system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks / hz as f64)
}

/// What the API server counted so far.
#[derive(Clone, Debug, Default)]
struct ApiCounts {
    status_writes: u64,
    status_failures: u64,
    /// Status writes by HTTP code.
    status_codes: BTreeMap<String, u64>,
    member_applies: u64,
    events: u64,
    cpu_secs: f64,
}

/// The API server's /metrics, retried: under load a large response is sometimes cut off.
async fn api_metrics(client: &Client) -> Result<String> {
    let mut attempt = 0;
    loop {
        let req = http::Request::get("/metrics").body(Vec::new()).context("building the /metrics request")?;
        match client.request_text(req).await {
            Ok(text) => return Ok(text),
            Err(e) if attempt < 4 => {
                eprintln!("reading the API server's /metrics failed, retrying: {e}");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).context("reading the API server's /metrics"),
        }
    }
}

async fn api_counts(client: &Client) -> Result<ApiCounts> {
    let text = api_metrics(client).await?;
    let mut c = ApiCounts {
        cpu_secs: metric(&text, "process_cpu_seconds_total").unwrap_or(0.0),
        ..Default::default()
    };
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        let Ok(v) = value.parse::<f64>() else { continue };
        let v = v as u64;
        let has = |l: &str| labels.contains(l);
        let write = has("verb=\"APPLY\"") || has("verb=\"PATCH\"");
        if has("resource=\"meshmembers\"") && write {
            if has("subresource=\"status\"") {
                c.status_writes += v;
                if let Some(code) = labels.split("code=\"").nth(1).and_then(|r| r.split('"').next()) {
                    *c.status_codes.entry(code.to_string()).or_default() += v;
                }
                if !has("code=\"200\"") {
                    c.status_failures += v;
                }
            } else if has("subresource=\"\"") {
                c.member_applies += v;
            }
        }
        if has("resource=\"events\"") && (has("verb=\"POST\"") || write) {
            c.events += v;
        }
    }
    Ok(c)
}

fn in_pool(addr: &str) -> bool {
    let (base, prefix) = POOL;
    addr.parse::<Ipv4Addr>().is_ok_and(|a| u32::from(a) >> (32 - prefix) == u32::from(base) >> (32 - prefix))
}

/// Phase 1: apply the MeshNetwork, wait for every member and for the status to count them, check them.
async fn allocate(client: &Client, op: &Operator, nodes: usize) -> Result<Allocation> {
    let networks: Api<MeshNetwork> = Api::namespaced(client.clone(), NAMESPACE);
    let members: Api<MeshMember> = Api::namespaced(client.clone(), NAMESPACE);
    let before = api_counts(client).await?;
    let (_, cpu0) = op.sample().await;
    let mn = serde_json::json!({
        "apiVersion": "rolomesh.io/v1alpha1",
        "kind": "MeshNetwork",
        "metadata": { "name": NETWORK, "namespace": NAMESPACE },
        "spec": {
            "overlay": { "cidrs": ["100.64.0.0/10"], "allocateFrom": [format!("{}/{}", POOL.0, POOL.1)] },
            "rolodex": { "external": { "endpoints": ["192.0.2.1:6264"] } },
            "agent": { "advertisePodCIDRs": true },
        },
    });
    let t0 = Instant::now();
    networks.patch(NETWORK, &PatchParams::apply("rolomesh-bench"), &Patch::Apply(&mn)).await?;

    // Watch (not poll) the members, so the measurement does not load the API server.
    let timeout = Duration::from_secs(120).max(Duration::from_millis(100 * nodes as u64));
    let mut seen: HashMap<String, bool> = HashMap::new();
    let stream = watcher(members.clone(), watcher::Config::default());
    let mut stream = std::pin::pin!(stream);
    let counted = |seen: &HashMap<String, bool>| seen.values().filter(|has| **has).count();
    let done = tokio::time::timeout(timeout, async {
        while let Some(ev) = stream.next().await {
            match ev? {
                watcher::Event::Apply(m) | watcher::Event::InitApply(m) => {
                    seen.insert(m.name_any(), !m.spec.overlay_addresses.is_empty());
                }
                watcher::Event::Delete(m) => {
                    seen.remove(&m.name_any());
                }
                watcher::Event::Init | watcher::Event::InitDone => {}
            }
            if counted(&seen) >= nodes {
                return anyhow::Ok(());
            }
        }
        bail!("the MeshMember watch ended")
    })
    .await;
    match done {
        Ok(r) => r?,
        Err(_) => bail!("only {} of {nodes} members had addresses after {timeout:?}", counted(&seen)),
    }
    let members_secs = t0.elapsed().as_secs_f64();

    let counted_in_status = wait_for(timeout, || async {
        let mn = networks.get(NETWORK).await.ok()?;
        (mn.status?.members as usize >= nodes).then_some(())
    })
    .await;
    if counted_in_status.is_none() {
        bail!("the MeshNetwork status did not count {nodes} members within {timeout:?}");
    }
    let status_secs = t0.elapsed().as_secs_f64();
    let after = api_counts(client).await?;
    let (reconciles, cpu1) = op.sample().await;

    let list = members.list(&ListParams::default()).await?.items;
    let mut per_node: HashMap<String, usize> = HashMap::new();
    let mut addresses = HashSet::new();
    let mut outside_pool = 0;
    for m in &list {
        *per_node.entry(m.spec.node_name.clone().unwrap_or_default()).or_default() += 1;
        for a in &m.spec.overlay_addresses {
            addresses.insert(a.clone());
            outside_pool += usize::from(!in_pool(a));
        }
    }
    let names: Vec<String> = (0..nodes).map(node_name).collect();
    Ok(Allocation {
        members: list.len(),
        members_secs,
        status_secs,
        distinct_addresses: addresses.len(),
        outside_pool,
        nodes_without_member: names.iter().filter(|n| !per_node.contains_key(*n)).count(),
        nodes_with_several: per_node.values().filter(|c| **c > 1).count(),
        member_applies: after.member_applies - before.member_applies,
        events: after.events - before.events,
        operator_reconciles: reconciles,
        operator_cpu_secs: cpu1 - cpu0,
    })
}

/// Polls `probe` every 250 ms until it returns `Some`, or `timeout` passes.
async fn wait_for<T, F: Future<Output = Option<T>>>(
    timeout: Duration,
    mut probe: impl FnMut() -> F,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One sample of the counters during phase 2.
#[derive(Clone, Debug)]
struct Sample {
    at: f64,
    api: ApiCounts,
    reconciles: u64,
    operator_cpu: f64,
}

/// Phase 2: one real status writer per member, fed by [`sim::Mesh`], sampled every 5 s.
async fn status_writes(client: &Client, op: &Operator, o: &Options) -> Result<Writes> {
    let members: Api<MeshMember> = Api::namespaced(client.clone(), NAMESPACE);
    let mut list = members.list(&ListParams::default()).await?.items;
    list.retain(|m| m.spec.node_name.is_some());
    list.sort_by(|a, b| a.spec.node_name.cmp(&b.spec.node_name));
    list.truncate(o.writers);
    if list.len() < o.writers {
        bail!("only {} members to write the status of, {} asked", list.len(), o.writers);
    }
    let names: Vec<String> = list.iter().filter_map(|m| m.spec.node_name.clone()).collect();

    // Phase boundaries, in seconds since the writers start. The ramp phase runs until the last link change
    // can have been written (one jittered interval after the ramp), so the steady phase is quiet.
    // The writers' least gap grows with the mesh (agent::kube::status::interval_for).
    let interval = status::interval_for(o.status_interval, o.writers.saturating_sub(1)).as_secs_f64();
    let ramp_end = o.ramp.as_secs_f64() + 1.2 * interval + 2.0;
    let steady_end = ramp_end + o.steady.as_secs_f64();
    let churn_end = steady_end + o.churn.as_secs_f64();
    let mesh = Arc::new(sim::Mesh::new(names, o.ramp, (steady_end, churn_end), o.flap_every));

    let start = tokio::time::Instant::now();
    let end = start + Duration::from_secs_f64(churn_end);
    // A Node joins during the churn: how long until it has a member, with every agent writing?
    let probe_at = start + Duration::from_secs_f64(steady_end + (o.churn.as_secs_f64() / 3.0).min(10.0));
    let probe = tokio::spawn(new_node_latency(client.clone(), o.nodes, probe_at));
    let mut writers = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let (tx, rx) = watch::channel(Snapshot::default());
        let api = Api::namespaced(client.clone(), NAMESPACE);
        let w = Writer::new(api, m.name_any(), o.status_interval, m.metadata.generation, vec![]);
        writers.push(tokio::spawn(w.run(rx)));
        tokio::spawn(feed(mesh.clone(), i, tx, start, end));
    }

    let sample = |at: f64| async move {
        let api = api_counts(client).await?;
        let (reconciles, operator_cpu) = op.sample().await;
        anyhow::Ok(Sample { at, api, reconciles, operator_cpu })
    };
    let mut samples = vec![sample(0.0).await?];
    let networks: Api<MeshNetwork> = Api::namespaced(client.clone(), NAMESPACE);
    let mut connected_secs = None;
    let mut member_bytes = 0;
    let boundaries = [ramp_end, steady_end, churn_end];
    let mut next = 5.0f64;
    loop {
        let at = boundaries
            .iter()
            .copied()
            .filter(|b| *b > samples.last().map_or(0.0, |s| s.at))
            .fold(next, f64::min);
        tokio::time::sleep_until(start + Duration::from_secs_f64(at)).await;
        samples.push(sample(at).await?);
        if at >= next {
            next += 5.0;
        }
        if connected_secs.is_none()
            && let Ok(mn) = networks.get(NETWORK).await
            && mn.status.is_some_and(|s| s.connected_members as usize >= o.writers)
        {
            connected_secs = Some(start.elapsed().as_secs_f64());
        }
        if member_bytes == 0 && at >= ramp_end {
            // One member's object as stored once its links are all up: what every write and watch carries.
            let m = members.get(&list[0].name_any()).await?;
            member_bytes = serde_json::to_vec(&m)?.len();
        }
        if at >= churn_end {
            break;
        }
    }
    let mut writer_writes = 0;
    let mut writer_failures = 0;
    for w in writers {
        let w = w.await.context("a status writer panicked")?;
        writer_writes += w.writes;
        writer_failures += w.failures;
    }
    let new_node_member_secs = probe.await.context("the new-Node probe panicked")??;
    let list_bytes = members
        .list(&ListParams::default())
        .await
        .map(|l| serde_json::to_vec(&l.items).map_or(0, |v| v.len()))?;

    let last = samples.last().cloned().context("no samples")?;
    let at = |t: f64| samples.iter().find(|s| s.at >= t - 1e-6).unwrap_or(&last);
    let m = o.writers as f64;
    let change_bound = |secs: f64| m * ((secs / (0.8 * interval)).floor() + 1.0);
    let heartbeat_bound = |secs: f64| m * ((secs / HEARTBEAT.as_secs_f64()).floor() + 1.0);
    let phase = |name: &str, from: f64, to: f64, bound: f64| {
        let (a, b) = (at(from), at(to));
        Phase::new(name, to - from, b.api.status_writes - a.api.status_writes, bound as u64)
            .with_failures(b.api.status_failures - a.api.status_failures)
            .with_cpu(b.api.cpu_secs - a.api.cpu_secs, b.operator_cpu - a.operator_cpu)
            .with_reconciles(b.reconciles - a.reconciles)
    };
    let phases = vec![
        phase("ramp (links coming up)", 0.0, ramp_end, change_bound(ramp_end)),
        phase("steady (nothing changes)", ramp_end, steady_end, heartbeat_bound(steady_end - ramp_end)),
        phase(
            &format!("churn (a node restarts every {:?})", o.flap_every),
            steady_end,
            churn_end,
            change_bound(churn_end - steady_end),
        ),
    ];
    let series: Vec<(f64, u64)> =
        samples.windows(2).map(|w| (w[1].at, w[1].api.status_writes - w[0].api.status_writes)).collect();
    // The busiest sample interval (full 5 s ones only: a short one before a boundary would overstate).
    let peak_writes_per_sec = samples
        .windows(2)
        .filter(|w| w[1].at - w[0].at >= 4.9)
        .map(|w| (w[1].api.status_writes - w[0].api.status_writes) as f64 / (w[1].at - w[0].at))
        .fold(0.0, f64::max);
    Ok(Writes {
        writers: o.writers,
        status_interval_secs: o.status_interval.as_secs_f64(),
        effective_interval_secs: interval,
        heartbeat_secs: HEARTBEAT.as_secs_f64(),
        flaps: mesh.flap_count,
        phases,
        writer_writes,
        writer_failures,
        status_codes: last.api.status_codes.clone(),
        bench_cpu_secs: cpu_seconds(std::process::id()).unwrap_or(0.0),
        member_bytes,
        members_list_bytes: list_bytes,
        network_connected_secs: connected_secs,
        links_up_by_secs: o.ramp.as_secs_f64(),
        new_node_member_secs,
        peak_writes_per_sec,
        series,
    })
}

/// Creates Node number `index` at `at`; seconds until its member has an address (`None`: not within 120 s).
async fn new_node_latency(client: Client, index: usize, at: tokio::time::Instant) -> Result<Option<f64>> {
    tokio::time::sleep_until(at).await;
    let (node, _) = node(index);
    let name = format!("{NETWORK}-{}", node_name(index));
    let t = Instant::now();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .context("creating a Node")?;
    let members: Api<MeshMember> = Api::namespaced(client, NAMESPACE);
    let found = wait_for(Duration::from_secs(120), || async {
        let m = members.get_opt(&name).await.ok()??;
        (!m.spec.overlay_addresses.is_empty()).then_some(())
    })
    .await;
    Ok(found.map(|()| t.elapsed().as_secs_f64()))
}

/// Agent `i`'s driver: a new snapshot every second (ticks not aligned across agents) until `end`.
async fn feed(
    mesh: Arc<sim::Mesh>,
    i: usize,
    tx: watch::Sender<Snapshot>,
    start: tokio::time::Instant,
    end: tokio::time::Instant,
) {
    tokio::time::sleep(Duration::from_secs_f64(sim::unit(i as u64))).await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let now = tick.tick().await;
        if now >= end {
            return;
        }
        let t = now.duration_since(start).as_secs_f64();
        tx.send_modify(|s| mesh.update(i, t, s));
    }
}
