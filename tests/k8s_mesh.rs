//! The operator, the Helm chart and in-cluster agents against a real kube-apiserver (no mocked API).
//! The operator runs as a local process with the chart's ServiceAccount credentials, which shows the chart's
//! RBAC is enough; agents run in network namespaces standing in for the nodes.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rolomesh::kubelab::{ControlPlane, RELAY_IP, Relay};
use rolomesh::lab::Lab;
use rolomesh::netns::{Spec, wait_until};
use serde_json::Value;

const RELEASE_NS: &str = "rolomesh-system";
const OPERATOR_SA: &str = "rolomesh-operator";
const AGENT_SA: &str = "rolomesh-agent";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rolomesh")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// An operator process, killed on drop.
struct Operator(Child);

impl Operator {
    fn start(cp: &ControlPlane, kubeconfig: &Path, metrics: u16, log: &Path) -> Operator {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(bin())
            .args(["operator", "--agent-service-account", AGENT_SA, "--image", "rolomesh/rolomesh:test"])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}"), "--lease-namespace", RELEASE_NS])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", RELEASE_NS)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting the operator");
        let _ = cp;
        Operator(child)
    }

    fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Installs the chart (CRDs, RBAC, ServiceAccounts, operator Deployment; pods stay Pending without kubelets)
/// and returns a kubeconfig acting as the chart's operator ServiceAccount.
fn install_chart(cp: &ControlPlane) -> std::path::PathBuf {
    let out = cp
        .helm()
        .args(["install", "rolomesh", "charts/rolomesh", "--namespace", RELEASE_NS, "--create-namespace"])
        .args(["--set", "agent.serviceAccount.namespaces={default}"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "helm install failed: {}", String::from_utf8_lossy(&out.stderr));
    cp.k(&["wait", "--for=condition=Established", "--timeout=60s", "crd/meshnetworks.rolomesh.io"]).unwrap();
    cp.sa_kubeconfig(RELEASE_NS, OPERATOR_SA, None).expect("operator kubeconfig")
}

fn node(name: &str, pod_cidr: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/os: linux}}\nspec:\n  podCIDR: {pod_cidr}\n  podCIDRs: [{pod_cidr}]\n"
    )
}

fn json(cp: &ControlPlane, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&cp.k(&a).unwrap_or_default()).unwrap_or(Value::Null)
}

fn members(cp: &ControlPlane, ns: &str) -> Vec<Value> {
    json(cp, &["get", "meshmembers", "-n", ns])["items"].as_array().cloned().unwrap_or_default()
}

/// The distinct first overlay addresses of the members in `default`.
fn distinct_addresses(cp: &ControlPlane) -> Vec<String> {
    let mut addrs: Vec<String> = members(cp, "default")
        .iter()
        .filter_map(|m| m["spec"]["overlayAddresses"][0].as_str().map(String::from))
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

fn exists(cp: &ControlPlane, kind: &str, name: &str, ns: &str) -> bool {
    cp.k_try(&["get", kind, name, "-n", ns]).map(|(ok, _)| ok).unwrap_or(false)
}

fn wait(what: &str, secs: u64, mut cond: impl FnMut() -> bool, log: &Path) {
    if !wait_until(Duration::from_secs(secs), Duration::from_millis(200), &mut cond) {
        let log = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "timed out after {secs} s waiting for {what}\noperator log (last lines, newest first):\n{}",
            tail.join("\n")
        );
    }
}

#[test]
fn chart_operator_members_restart_and_replicas() {
    let cp = ControlPlane::start(repo(), "operator").expect("control plane");
    let kubeconfig = install_chart(&cp);
    let log = cp.dir.join("operator.log");
    let op = Operator::start(&cp, &kubeconfig, 18080, &log);
    for (i, n) in ["node-1", "node-2", "node-3"].iter().enumerate() {
        let (ok, out) = cp.apply(&node(n, &format!("10.244.{}.0/24", i + 1))).unwrap();
        assert!(ok, "{out}");
    }
    let t0 = Instant::now();
    let (ok, out) =
        cp.apply(&std::fs::read_to_string(repo().join("examples/meshnetwork.yaml")).unwrap()).unwrap();
    assert!(ok, "example refused: {out}");
    let mn = json(&cp, &["get", "meshnetworks", "-n", "default"])["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    wait(
        "three MeshMembers with addresses",
        60,
        || {
            let m = members(&cp, "default");
            m.len() == 3
                && m.iter().all(|x| x["spec"]["overlayAddresses"].as_array().is_some_and(|a| !a.is_empty()))
        },
        &log,
    );
    eprintln!("3 members allocated {:?} after the MeshNetwork was applied", t0.elapsed());
    let addrs = distinct_addresses(&cp);
    assert_eq!(addrs.len(), 3, "duplicate addresses: {addrs:?}");
    for a in &addrs {
        assert!(a.starts_with("100.64."), "{a} outside allocateFrom 100.64.0.0/16");
    }
    let routes: Vec<String> = members(&cp, "default")
        .iter()
        .map(|m| m["spec"]["routes"][0].as_str().unwrap_or("").to_string())
        .collect();
    assert!(routes.iter().all(|r| r.starts_with("10.244.")), "pod CIDRs not advertised: {routes:?}");
    for (kind, name) in [
        ("secret", format!("{mn}-secret")),
        ("secret", format!("{mn}-rolodex-key")),
        ("deployment", format!("{mn}-rolodex")),
        ("service", format!("{mn}-rolodex")),
        ("daemonset", format!("{mn}-agent")),
    ] {
        wait(&format!("{kind}/{name}"), 30, || exists(&cp, kind, &name, "default"), &log);
    }
    // The secret never appears in the CR; the rolodex gets only its derived key.
    let cr = cp.k(&["get", "meshnetwork", &mn, "-n", "default", "-o", "yaml"]).unwrap();
    let secret = json(&cp, &["get", "secret", &format!("{mn}-secret"), "-n", "default"]);
    let secret_b64 = secret["data"]["secret"].as_str().unwrap();
    assert!(!cr.contains(secret_b64));
    let key = json(&cp, &["get", "secret", &format!("{mn}-rolodex-key"), "-n", "default"]);
    assert_ne!(key["data"]["key"], secret["data"]["secret"]);
    // The DaemonSet: host network, NET_ADMIN without privilege, /dev/net/tun, NODE_NAME from the downward API.
    let ds = json(&cp, &["get", "daemonset", &format!("{mn}-agent"), "-n", "default"]);
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["serviceAccountName"], AGENT_SA);
    let c = &pod["containers"][0];
    assert!(
        c["securityContext"]["capabilities"]["add"].as_array().unwrap().contains(&Value::from("NET_ADMIN"))
    );
    assert_ne!(c["securityContext"]["privileged"], true);
    assert!(pod["volumes"].to_string().contains("/dev/net/tun"));
    assert!(c["env"].to_string().contains("spec.nodeName"));
    // Status and printer columns.
    wait(
        "MeshNetwork status",
        30,
        || json(&cp, &["get", "meshnetwork", &mn, "-n", "default"])["status"]["members"] == 3,
        &log,
    );
    let table = cp.k(&["get", "meshnetworks", "-n", "default"]).unwrap();
    assert!(table.contains("MEMBERS"), "{table}");

    // Nodes come and go.
    cp.k(&["delete", "node", "node-2"]).unwrap();
    wait("node-2's member to go", 30, || members(&cp, "default").len() == 2, &log);
    let survivors: Vec<String> = members(&cp, "default")
        .iter()
        .map(|m| m["spec"]["overlayAddresses"][0].as_str().unwrap().to_string())
        .collect();
    cp.apply(&node("node-4", "10.244.4.0/24")).unwrap();
    wait("node-4's member", 30, || members(&cp, "default").len() == 3, &log);
    let now: Vec<String> = members(&cp, "default")
        .iter()
        .map(|m| m["spec"]["overlayAddresses"][0].as_str().unwrap().to_string())
        .collect();
    for s in &survivors {
        assert!(now.contains(s), "existing member's address changed: {survivors:?} -> {now:?}");
    }

    // Restart mid-reconcile: kill the operator right after a change, start it again; it converges.
    cp.apply(&node("node-5", "10.244.5.0/24")).unwrap();
    op.kill();
    let op = Operator::start(&cp, &kubeconfig, 18080, &log);
    wait("convergence after restart", 60, || members(&cp, "default").len() == 4, &log);

    // Two replicas: both run, one holds the lease, and they do not fight (objects stop changing).
    let log2 = cp.dir.join("operator2.log");
    let op2 = Operator::start(&cp, &kubeconfig, 18081, &log2);
    std::thread::sleep(Duration::from_secs(1));
    let holder =
        cp.k(&["get", "lease", "-n", RELEASE_NS, "-o", "jsonpath={.items[*].spec.holderIdentity}"]).unwrap();
    assert!(!holder.trim().is_empty() && !holder.contains(' '), "expected one lease holder, got {holder:?}");
    let rv = |kind: &str, name: &str| {
        cp.k(&["get", kind, name, "-n", "default", "-o", "jsonpath={.metadata.resourceVersion}"])
            .unwrap_or_default()
    };
    let before = (rv("daemonset", &format!("{mn}-agent")), rv("deployment", &format!("{mn}-rolodex")));
    cp.apply(&node("node-6", "10.244.6.0/24")).unwrap();
    wait("node-6's member with two replicas", 30, || members(&cp, "default").len() == 5, &log);
    let addrs = distinct_addresses(&cp);
    assert_eq!(addrs.len(), 5, "two replicas allocated a duplicate: {addrs:?}");
    let after = (rv("daemonset", &format!("{mn}-agent")), rv("deployment", &format!("{mn}-rolodex")));
    assert_eq!(
        before, after,
        "owned objects keep being rewritten (replicas fighting or apply not idempotent)"
    );
    // Metrics.
    let metrics = Command::new("python3")
        .args(["-c", "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:18080/metrics').read().decode())"])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout).to_string();
    let m2 = Command::new("python3")
        .args(["-c", "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:18081/metrics').read().decode())"])
        .output()
        .unwrap();
    let m2 = String::from_utf8_lossy(&m2.stdout).to_string();
    assert!(metrics.contains("reconcil") || m2.contains("reconcil"), "no reconcile metrics:\n{metrics}");

    // Deleting the MeshNetwork cleans everything up.
    cp.k(&["delete", "meshnetwork", &mn, "-n", "default", "--wait=true", "--timeout=60s"]).unwrap();
    wait(
        "cleanup",
        60,
        || {
            members(&cp, "default").is_empty()
                && !exists(&cp, "daemonset", &format!("{mn}-agent"), "default")
                && !exists(&cp, "deployment", &format!("{mn}-rolodex"), "default")
                && !exists(&cp, "service", &format!("{mn}-rolodex"), "default")
                && !exists(&cp, "secret", &format!("{mn}-rolodex-key"), "default")
        },
        &log,
    );
    drop(op2);
    drop(op);
}

#[test]
fn agents_in_namespaces_build_the_mesh_from_api_objects() {
    if !is_root() {
        eprintln!("skipped: needs root (namespaces, TUN)");
        return;
    }
    let cp = ControlPlane::start(repo(), "mesh").expect("control plane");
    let kubeconfig = install_chart(&cp);
    let log = cp.dir.join("operator.log");
    let _op = Operator::start(&cp, &kubeconfig, 18090, &log);
    let mut lab = Lab::new(Path::new(bin()), Spec::default()).expect("topology");
    let _relay = Relay::start(
        lab.host("pub"),
        format!("{RELAY_IP}:6443").parse::<SocketAddr>().unwrap(),
        SocketAddr::from(([127, 0, 0, 1], cp.port)),
    )
    .expect("relay");
    let hosts: Vec<String> = lab.members.iter().map(|m| m.host.clone()).collect();
    for (i, h) in hosts.iter().enumerate() {
        cp.apply(&node(h, &format!("10.250.{i}.0/24"))).unwrap();
    }
    let mn = format!(
        "apiVersion: rolomesh.io/v1alpha1\nkind: MeshNetwork\nmetadata: {{name: lab, namespace: default}}\nspec:\n  overlay:\n    cidrs: [100.64.0.0/10]\n  rolodex:\n    external:\n      endpoints: [\"{}:6264\"]\n",
        lab.topo.public_ip()
    );
    let (ok, out) = cp.apply(&mn).unwrap();
    assert!(ok, "{out}");
    wait(
        "members allocated",
        60,
        || {
            let m = members(&cp, "default");
            m.len() == hosts.len()
                && m.iter().all(|x| x["spec"]["overlayAddresses"].as_array().is_some_and(|a| !a.is_empty()))
        },
        &log,
    );
    wait(
        "secrets",
        30,
        || {
            exists(&cp, "secret", "lab-secret", "default")
                && exists(&cp, "secret", "lab-rolodex-key", "default")
        },
        &log,
    );
    let b64 = |name: &str, key: &str| {
        let v = json(&cp, &["get", "secret", name, "-n", "default"]);
        let enc = v["data"][key].as_str().unwrap().to_string();
        let out =
            Command::new("base64").arg("-d").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().and_then(
                |mut c| {
                    use std::io::Write;
                    c.stdin.take().unwrap().write_all(enc.as_bytes())?;
                    c.wait_with_output()
                },
            );
        String::from_utf8_lossy(&out.unwrap().stdout).into_owned()
    };
    lab.write_secret("secret", &b64("lab-secret", "secret")).unwrap();
    lab.write_secret("rolodex.key", &b64("lab-rolodex-key", "key")).unwrap();
    lab.start_rolodex().unwrap();
    let agent_kubeconfig = cp
        .sa_kubeconfig("default", AGENT_SA, Some(&format!("https://{RELAY_IP}:6443")))
        .expect("agent kubeconfig");
    let kc = agent_kubeconfig.to_string_lossy().into_owned();
    let secret = lab.path("secret");
    for h in &hosts {
        let child = lab
            .host(h)
            .spawn(
                bin(),
                &[
                    "agent",
                    "--kube",
                    "--mesh-network",
                    "lab",
                    "--secret-file",
                    &secret,
                    "--tun-name",
                    "rm0",
                    "--metrics-listen",
                    rolomesh::lab::METRICS,
                    "--status-interval",
                    "2s",
                ],
                &[
                    ("KUBECONFIG", kc.as_str()),
                    ("NODE_NAME", h.as_str()),
                    ("POD_NAMESPACE", "default"),
                    ("RUST_LOG", "info"),
                ],
            )
            .unwrap();
        lab.agents.insert(h.clone(), child);
    }
    let connected = wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
        let m = members(&cp, "default");
        m.len() == hosts.len()
            && m.iter().all(|x| {
                let conds = x["status"]["conditions"].as_array().cloned().unwrap_or_default();
                let links = x["status"]["links"].as_array().cloned().unwrap_or_default();
                conds.iter().any(|c| c["type"] == "Connected" && c["status"] == "True")
                    && links.len() == hosts.len() - 1
                    && links.iter().all(|l| l["state"] == "Connected")
            })
    });
    let table = cp.k(&["get", "meshmembers", "-n", "default", "-o", "wide"]).unwrap_or_default();
    assert!(connected, "members not all Connected:\n{table}\n{}", lab.logs());
    eprintln!("{table}");
    // The overlay really carries traffic between the nodes the API describes.
    for a in &hosts {
        for b in hosts.iter().filter(|b| *b != a) {
            let addr: String = members(&cp, "default")
                .iter()
                .find(|m| m["spec"]["nodeName"] == b.as_str())
                .map(|m| m["spec"]["overlayAddresses"][0].as_str().unwrap().to_string())
                .unwrap();
            assert!(lab.host(a).ping_once(addr.parse().unwrap()), "{a} -> {b} ({addr}) over the overlay");
        }
    }
    wait(
        "MeshNetwork status",
        30,
        || {
            let s = &json(&cp, &["get", "meshnetwork", "lab", "-n", "default"])["status"];
            s["connectedMembers"] == hosts.len() && s["connectedLinks"] == 3
        },
        &log,
    );
}
