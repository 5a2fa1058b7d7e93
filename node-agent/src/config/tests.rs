use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use clap::Parser;

use super::*;

/// The binary embeds `Args` in a subcommand; this stands in for it.
#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rolomesh-config-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Self(dir)
    }

    fn write(&self, name: &str, body: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, body).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef\n";

const GOOD: &str = r#"
# a complete agent configuration
network: prod-mesh.eu
secret-file: secret       # relative to this file
name: node-a
addresses:
  - 100.64.0.1/10
  - fd52::1/64
rolodex: [127.0.0.1, "[::1]:7000"]
tun-name: rm1
mtu: 1380
listen-port: 41641
keepalive: 15s
heartbeat: 1m30s
punch-ttl: 3
metrics-listen: 127.0.0.1:9464
log-format: json
"#;

/// Writes `yaml` as agent.yaml next to a good secret and runs the flags (plus `--config`).
fn load(yaml: Option<&str>, flags: &[&str]) -> Result<AgentConfig, String> {
    let dir = TempDir::new();
    dir.write("secret", SECRET);
    let mut argv = vec!["agent".to_string()];
    if let Some(yaml) = yaml {
        let p = dir.write("agent.yaml", yaml.as_bytes());
        argv.extend(["--config".into(), p.display().to_string()]);
    }
    argv.extend(flags.iter().map(|f| f.replace("$DIR", &dir.0.display().to_string())));
    let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    let res = AgentConfig::from_args(cli.args).map_err(|e| e.to_string());
    if let Err(e) = &res {
        assert!(!e.contains('\n'), "multi-line error: {e}");
    }
    res
}

fn ok(yaml: Option<&str>, flags: &[&str]) -> AgentConfig {
    load(yaml, flags).unwrap_or_else(|e| panic!("{e}"))
}

fn err(yaml: Option<&str>, flags: &[&str]) -> String {
    match load(yaml, flags) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e,
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn good_yaml() {
    let c = ok(Some(GOOD), &[]);
    assert_eq!(c.network, "prod-mesh.eu");
    assert_eq!(c.secret.as_bytes(), &SECRET[..32]);
    assert_eq!(c.name, "node-a");
    assert_eq!(c.overlay_v4, Some(net("100.64.0.1/10")));
    assert_eq!(c.overlay_v6, Some(net("fd52::1/64")));
    let addrs: Vec<String> = c.rolodex_addrs().map(|a| a.to_string()).collect();
    assert_eq!(addrs, ["127.0.0.1:6264", "[::1]:7000"]);
    assert_eq!(c.rolodex[0].spec, "127.0.0.1:6264");
    assert_eq!(c.rolodex[1].spec, "[::1]:7000");
    assert_eq!(c.tun_name, "rm1");
    assert_eq!(c.mtu, Mtu::Fixed(1380));
    assert_eq!(c.listen_port, 41641);
    assert_eq!(c.keepalive, Duration::from_secs(15));
    assert_eq!(c.heartbeat, Duration::from_secs(90));
    assert_eq!(c.punch_ttl, 3);
    assert_eq!(c.metrics_listen, "127.0.0.1:9464".parse().ok());
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.overlay_nets(), [net("100.64.0.0/10"), net("fd52::/64")]);
    let t = c.tun_config(false);
    assert_eq!((t.name.as_str(), t.mtu, t.ipv4, t.ipv6), ("rm1", 1380, c.overlay_v4, c.overlay_v6));
    assert!(!format!("{c:?}").contains("0123456789"), "secret leaked into Debug");
}

#[test]
fn defaults_with_flags_only() {
    let c = ok(
        None,
        &[
            "--network",
            "n1",
            "--secret-file",
            "$DIR/secret",
            "--address",
            "100.64.0.2/10",
            "--rolodex",
            "localhost",
        ],
    );
    assert_eq!(c.tun_name, "rm0");
    assert_eq!(c.mtu, Mtu::Auto);
    assert_eq!(c.listen_port, 0);
    assert_eq!(c.keepalive, Duration::from_secs(25));
    assert_eq!(c.heartbeat, Duration::from_secs(10));
    assert_eq!(c.punch_ttl, 2);
    assert_eq!(c.metrics_listen, None);
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.overlay_v6, None);
    assert!(c.rolodex_addrs().all(|a| a.port() == DEFAULT_ROLODEX_PORT && a.ip().is_loopback()));
    assert!(!c.name.is_empty(), "defaults to the hostname");
    let auto = c.tun_config(false).mtu;
    assert!((500..=65535).contains(&auto), "{auto}");
}

#[test]
fn flags_override_the_file() {
    let c = ok(
        Some(GOOD),
        &[
            "--network",
            "other",
            "--name",
            "node-b",
            "--address",
            "100.64.0.9/10",
            "--rolodex",
            "127.0.0.2:1,127.0.0.3",
            "--tun-name",
            "rmx",
            "--mtu",
            "auto",
            "--listen-port",
            "0",
            "--keepalive",
            "500ms",
            "--heartbeat",
            "2m",
            "--punch-ttl",
            "1",
            "--metrics-listen",
            "none",
            "--log-format",
            "text",
        ],
    );
    assert_eq!((c.network.as_str(), c.name.as_str()), ("other", "node-b"));
    // A list from flags replaces the file's list.
    assert_eq!((c.overlay_v4, c.overlay_v6), (Some(net("100.64.0.9/10")), None));
    let addrs: Vec<String> = c.rolodex_addrs().map(|a| a.to_string()).collect();
    assert_eq!(addrs, ["127.0.0.2:1", "127.0.0.3:6264"]);
    assert_eq!((c.tun_name.as_str(), c.mtu, c.listen_port), ("rmx", Mtu::Auto, 0));
    assert_eq!((c.keepalive, c.heartbeat), (Duration::from_millis(500), Duration::from_secs(120)));
    assert_eq!((c.punch_ttl, c.metrics_listen, c.log_format), (1, None, LogFormat::Text));
    assert_eq!(c.busy_poll, Duration::ZERO, "busy polling is off unless asked for");
    // Untouched fields keep the file's values.
    assert_eq!(c.secret.as_bytes(), &SECRET[..32]);
}

#[test]
fn yaml_scalars_and_lists() {
    // Single values where lists are expected, quoted numbers, an empty list.
    let yaml = "network: n\nsecret-file: secret\nname: a\naddresses: 100.64.0.1/10\n\
                rolodex: 127.0.0.1:9\nmtu: '1400'\nlisten-port: \"5\"\n";
    let c = ok(Some(yaml), &[]);
    assert_eq!((c.mtu, c.listen_port), (Mtu::Fixed(1400), 5));
    assert_eq!(c.rolodex_addrs().map(|a| a.port()).collect::<Vec<_>>(), [9]);
    // Empty and comment-only files are empty configurations.
    let flags = [
        "--network",
        "n",
        "--secret-file",
        "$DIR/secret",
        "--name",
        "a",
        "--address",
        "fd52::1/64",
        "--rolodex",
        "::1",
    ];
    assert_eq!(ok(Some(""), &flags).overlay_v6, Some(net("fd52::1/64")));
    assert_eq!(ok(Some("# nothing\n"), &flags).network, "n");
}

#[test]
fn unknown_yaml_keys_are_rejected() {
    let e = err(Some(&format!("{GOOD}listen_port: 5\n")), &[]);
    assert!(e.starts_with("config file \""), "{e}");
    assert!(e.contains("unknown field `listen_port`"), "{e}");
    assert!(e.contains("line 18"), "{e}");
}

#[test]
fn malformed_yaml_is_one_line() {
    for bad in ["network: [unclosed\n", "- a list\n", "network: a\nnetwork: b\n", "rolodex: [[a]]\n"] {
        let e = err(Some(bad), &[]);
        assert!(e.starts_with("config file \""), "{bad}: {e}");
    }
    let e = err(None, &["--config", "/nonexistent/agent.yaml"]);
    assert!(e.starts_with(r#"cannot read config file "/nonexistent/agent.yaml": "#), "{e}");
}

/// Each bad value, given as a flag over the good file, with the exact message.
#[test]
fn every_bad_field() {
    let cases: &[(&[&str], &str)] = &[
        (&["--network", "Prod"], r#"invalid network "Prod": 'P' is not allowed; use a-z, 0-9, '-' and '.'"#),
        (&["--network", ""], r#"invalid network "": must be 1-63 characters long"#),
        (&["--network", &"a".repeat(64)], "must be 1-63 characters long"),
        (
            &["--name", "a;b"],
            r#"invalid name "a;b": ';' is not allowed; use letters, digits, '-', '.' and '_'"#,
        ),
        (&["--address", "100.64.0.1/33"], r#"invalid address "100.64.0.1/33": prefix length 33 exceeds 32"#),
        (&["--address", "100.64.0.1"], r#"invalid address "100.64.0.1": missing /prefix length"#),
        (&["--address", "100.64.0.1/32"], "must leave room for other members"),
        (&["--address", "100.64.0.0/10"], "this is the network address"),
        (
            &["--address", "100.64.0.1/10,100.64.0.2/10"],
            r#"invalid address "100.64.0.2/10": a second IPv4 address"#,
        ),
        (&["--address", "fd52::1/64,fd53::1/64"], "a second IPv6 address"),
        (&["--address", "127.0.0.1/8"], "not a unicast host address"),
        (&["--rolodex", "foo.invalid"], r#"cannot resolve rolodex "foo.invalid:6264": "#),
        (&["--rolodex", "host:http"], r#"invalid rolodex "host:http": port "http" is not a number 1-65535"#),
        (&["--rolodex", "host:0"], "port 0 is not a rolodex port"),
        (&["--rolodex", "fd00::1:99999"], "write IPv6 addresses with a port as [addr]:port"),
        (&["--rolodex", "[fd00::zz]"], "is not an IPv6 address"),
        (&["--rolodex", "a b:1"], "expected HOST[:PORT]"),
        (
            &["--tun-name", "rolomesh-overlay0"],
            r#"invalid tun-name "rolomesh-overlay0": longer than 15 bytes"#,
        ),
        (&["--tun-name", "rm/0"], "invalid tun-name"),
        (&["--mtu", "575"], r#"invalid mtu "575": expected auto or a number 576-9000"#),
        (&["--mtu", "9001"], "expected auto or a number 576-9000"),
        (&["--mtu", "big"], "expected auto or a number 576-9000"),
        (&["--mtu", "1200"], r#"invalid mtu "1200": an IPv6 overlay address needs at least 1280"#),
        (&["--listen-port", "65536"], r#"invalid listen-port "65536": expected a port number 0-65535"#),
        (&["--listen-port=-1"], "expected a port number"),
        (&["--keepalive", "25"], r#"invalid keepalive "25": missing unit (e.g. 25s, 500ms, 2m)"#),
        (&["--keepalive", "10ms"], r#"invalid keepalive "10ms": must be between 100ms and 1h"#),
        (&["--heartbeat", "2d"], r#"invalid heartbeat "2d": unknown unit "d" (use us, ms, s, m or h)"#),
        (&["--heartbeat", "2h"], "must be between 100ms and 1h"),
        (&["--punch-ttl", "0"], r#"invalid punch-ttl "0": expected a hop count 1-255"#),
        (&["--busy-poll", "1s"], r#"invalid busy-poll "1s": must be at most 10ms"#),
        (&["--busy-poll", "fast"], r#"invalid busy-poll "fast": expected a number"#),
        (&["--punch-ttl", "256"], "expected a hop count 1-255"),
        (
            &["--metrics-listen", "9464"],
            r#"invalid metrics-listen "9464": expected ADDR:PORT, e.g. 127.0.0.1:9464"#,
        ),
        (&["--log-format", "xml"], r#"invalid log-format "xml": expected text or json"#),
    ];
    for (flags, want) in cases {
        let e = err(Some(GOOD), flags);
        assert!(e.contains(want), "{flags:?}:\n  got  {e}\n  want {want}");
    }
}

#[test]
fn bad_values_in_the_file_name_the_field() {
    let e = err(Some(&GOOD.replace("listen-port: 41641", "listen-port: 70000")), &[]);
    assert_eq!(e, r#"invalid listen-port "70000": expected a port number 0-65535"#);
    let e = err(Some(&GOOD.replace("keepalive: 15s", "keepalive: soon")), &[]);
    assert!(e.starts_with(r#"invalid keepalive "soon": expected a number"#), "{e}");
}

#[test]
fn required_fields() {
    let base = [
        "--network",
        "n",
        "--secret-file",
        "$DIR/secret",
        "--address",
        "100.64.0.1/10",
        "--rolodex",
        "127.0.0.1",
    ];
    let without = |flag: &str| -> Vec<&str> {
        let i = base.iter().position(|f| *f == flag).unwrap_or_else(|| panic!("{flag}"));
        base.iter().enumerate().filter(|(j, _)| *j != i && *j != i + 1).map(|(_, f)| *f).collect()
    };
    assert!(err(None, &without("--network")).starts_with("network is required: set --network"));
    assert!(err(None, &without("--secret-file")).starts_with("secret-file is required"));
    assert!(err(None, &without("--address")).starts_with("address is required"));
    assert!(err(None, &without("--rolodex")).starts_with("rolodex is required"));
}

#[test]
fn secret_file_problems() {
    let flags =
        |path: &str| -> Vec<String> { ["--secret-file", path].iter().map(|s| s.to_string()).collect() };
    let run = |dir: &TempDir, body: Option<&[u8]>| {
        let path = match body {
            Some(b) => dir.write("s", b),
            None => dir.0.join("absent"),
        };
        let f = flags(&path.display().to_string());
        let f: Vec<&str> = f.iter().map(String::as_str).collect();
        (path, load(Some(GOOD), &f))
    };
    let dir = TempDir::new();
    let (path, r) = run(&dir, None);
    let want = format!("secret file {:?}: cannot read it: No such file or directory (os error 2)", path);
    assert_eq!(r.err(), Some(want));
    let (path, r) = run(&dir, Some(b"short secret \n\n"));
    let want = format!(
        "secret file {path:?}: holds 12 bytes (after trimming trailing whitespace); at least 16 are needed"
    );
    assert_eq!(r.err(), Some(want));
    // Leading whitespace is part of the secret; only trailing whitespace goes.
    let (_, r) = run(&dir, Some(b"  sixteen bytes!!\r\n"));
    assert_eq!(r.map(|c| c.secret.as_bytes().to_vec()).ok(), Some(b"  sixteen bytes!!".to_vec()));
    let (_, r) = run(&dir, Some(&vec![b'x'; 70_000]));
    assert!(r.err().is_some_and(|e| e.contains("larger than 64 KiB")));
    let e = err(Some(GOOD), &["--secret-file", "/"]);
    assert!(e.starts_with(r#"secret file "/": cannot read it: "#), "{e}");
}

#[test]
fn relative_secret_path_in_file_is_relative_to_the_file() {
    let dir = TempDir::new();
    std::fs::create_dir_all(dir.0.join("etc")).unwrap_or_else(|e| panic!("{e}"));
    dir.write("etc/secret", SECRET);
    let cfg = dir.write("etc/agent.yaml", GOOD.as_bytes());
    let args = Args { config: Some(cfg), ..Args::default() };
    let c = AgentConfig::from_args(args).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.secret.as_bytes(), &SECRET[..32]);
}

#[test]
fn durations() {
    let d = |s: &str| parse_duration(s);
    assert_eq!(d("25s"), Ok(Duration::from_secs(25)));
    assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(d("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(d("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(d("1m30s"), Ok(Duration::from_secs(90)));
    assert_eq!(d(" 1s500ms "), Ok(Duration::from_millis(1500)));
    assert_eq!(d("0s"), Ok(Duration::ZERO));
    for bad in
        ["", "25", "s", "1.5s", "-1s", "1 s", "10d", "1sm", "99999999999999999999s", "18446744073709551615h"]
    {
        assert!(d(bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(d("150us"), Ok(Duration::from_micros(150)));
    assert_eq!(d("10x"), Err(r#"unknown unit "x" (use us, ms, s, m or h)"#.into()));
}

#[test]
fn rolodex_forms() {
    let c = ok(Some(GOOD), &["--rolodex", "127.0.0.1:1,[::1],::1,localhost:7"]);
    let specs: Vec<&str> = c.rolodex.iter().map(|r| r.spec.as_str()).collect();
    assert_eq!(specs, ["127.0.0.1:1", "[::1]:6264", "[::1]:6264", "localhost:7"]);
    assert!(c.rolodex[3].addrs.iter().all(|a| a.port() == 7 && a.ip().is_loopback()));
}

// --kube: the flags that stay local, and what the API fills in.

/// `--kube` with a secret, a mesh network and a node name (unless `extra` gives them), plus `extra`.
fn kube_flags<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut f = vec!["--kube"];
    for (flag, default) in
        [("--secret-file", "$DIR/secret"), ("--mesh-network", "mesh"), ("--node-name", "node-1")]
    {
        if !extra.iter().any(|e| e.starts_with(flag)) {
            f.extend([flag, default]);
        }
    }
    f.extend(extra);
    f
}

/// Like [`ok`] for `--kube`, with a secret that stays readable for [`KubeSettings::complete`].
fn kube_ok(dir: &TempDir, extra: &[&str]) -> (AgentConfig, KubeSettings) {
    let secret = dir.write("secret", SECRET).display().to_string();
    let flags: Vec<&str> =
        kube_flags(extra).into_iter().map(|f| if f == "$DIR/secret" { secret.as_str() } else { f }).collect();
    let c = ok(None, &flags);
    let k = c.kube.clone().unwrap_or_else(|| panic!("not kube mode"));
    (c, k)
}

fn api_values() -> KubeValues {
    KubeValues {
        network: "prod".into(),
        addresses: vec!["100.64.3.7/10".into()],
        rolodex: vec!["127.0.0.1:7000".into()],
        keepalive: Some("15s".into()),
        mtu: Some("1380".into()),
        listen_port: Some("51820".into()),
    }
}

#[test]
fn kube_mode_defers_to_the_api() {
    let dir = TempDir::new();
    let (c, k) = kube_ok(&dir, &["--namespace", "rolomesh", "--tun-name", "rmk"]);
    assert_eq!((k.mesh_network.as_str(), k.node_name.as_str()), ("mesh", "node-1"));
    assert_eq!((k.namespace.as_deref(), k.status_interval), (Some("rolomesh"), Duration::from_secs(10)));
    // Placeholders until the API's values arrive; local settings are already checked and kept.
    assert_eq!((c.network.as_str(), c.overlay_v4, c.rolodex.len()), ("", None, 0));
    assert_eq!((c.name.as_str(), c.tun_name.as_str()), ("node-1", "rmk"));

    let full = k.complete(api_values()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((full.network.as_str(), full.name.as_str()), ("prod", "node-1"));
    assert_eq!(full.overlay_v4, Some(net("100.64.3.7/10")));
    assert_eq!(full.rolodex_addrs().map(|a| a.to_string()).collect::<Vec<_>>(), ["127.0.0.1:7000"]);
    assert_eq!(
        (full.keepalive, full.mtu, full.listen_port),
        (Duration::from_secs(15), Mtu::Fixed(1380), 51820)
    );
    assert_eq!((full.tun_name.as_str(), full.kube.as_ref()), ("rmk", Some(&k)));
    assert_eq!(full.secret.as_bytes(), &SECRET[..32]);
}

#[test]
fn kube_local_flags_win_over_the_network_spec() {
    // Two agents on one host need their own port and TUN name whatever the MeshNetwork says.
    let dir = TempDir::new();
    let flags = ["--listen-port", "41000", "--mtu", "auto", "--keepalive", "5s", "--status-interval", "2s"];
    let (_, k) = kube_ok(&dir, &flags);
    assert_eq!(k.status_interval, Duration::from_secs(2));
    let full = k.complete(api_values()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((full.listen_port, full.mtu, full.keepalive), (41000, Mtu::Auto, Duration::from_secs(5)));
    // Bad values from the API are reported like flags.
    let bad = KubeValues { addresses: vec!["100.64.0.0/10".into()], ..api_values() };
    assert!(k.complete(bad).unwrap_err().to_string().contains("this is the network address"));
}

#[test]
fn kube_settings_in_the_file() {
    let yaml = "kube: true\nmesh-network: mesh\nnode-name: n1\nnamespace: ns\nstatus-interval: 30s\n\
                secret-file: secret\ntun-name: rm7\n";
    let k = ok(Some(yaml), &[]).kube.unwrap_or_else(|| panic!("not kube mode"));
    assert_eq!((k.node_name.as_str(), k.namespace.as_deref()), ("n1", Some("ns")));
    assert_eq!(k.status_interval, Duration::from_secs(30));
    // Flags override the file.
    let k = ok(Some(yaml), &["--node-name", "n2"]).kube.unwrap_or_else(|| panic!("not kube mode"));
    assert_eq!(k.node_name, "n2");
}

#[test]
fn kube_node_and_namespace_from_the_environment() {
    let env = |var: &str| match var {
        "NODE_NAME" => Some("worker-3".to_string()),
        "POD_NAMESPACE" => Some("rolomesh-system".to_string()),
        _ => None,
    };
    let raw = |node: Option<&str>| file::FileConfig {
        kube: Some(true),
        mesh_network: Some("mesh".into()),
        node_name: node.map(Into::into),
        secret_file: Some(PathBuf::from("/dev/null")),
        ..Default::default()
    };
    let dir = TempDir::new();
    let secret = dir.write("secret", SECRET);
    let with_secret = |node| file::FileConfig { secret_file: Some(secret.clone()), ..raw(node) };
    let k = parse::validate(with_secret(None), &env).unwrap_or_else(|e| panic!("{e}")).kube;
    let k = k.unwrap_or_else(|| panic!("not kube mode"));
    assert_eq!((k.node_name.as_str(), k.namespace.as_deref()), ("worker-3", Some("rolomesh-system")));
    // The flag wins over the environment.
    let k = parse::validate(with_secret(Some("n9")), &env).ok().and_then(|c| c.kube);
    assert_eq!(k.map(|k| k.node_name), Some("n9".into()));
    // Neither: a clear error; no namespace is fine (the kubeconfig's is used).
    let none = |_: &str| None;
    let e = parse::validate(with_secret(None), &none).unwrap_err().to_string();
    assert_eq!(
        e,
        "node-name is required: set --node-name or the NODE_NAME environment variable (downward API spec.nodeName)"
    );
    let k = parse::validate(with_secret(Some("n1")), &none).ok().and_then(|c| c.kube);
    assert_eq!(k.map(|k| k.namespace), Some(None));
}

#[test]
fn kube_bad_flags() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--network", "x"],
            r#"invalid network "x": not allowed with --kube: the MeshNetwork and MeshMember objects set it"#,
        ),
        (&["--name", "x"], r#"invalid name "x": not allowed with --kube"#),
        (&["--address", "100.64.0.1/10"], r#"invalid address "100.64.0.1/10": not allowed with --kube"#),
        (&["--rolodex", "127.0.0.1"], r#"invalid rolodex "127.0.0.1": not allowed with --kube"#),
        (&["--node-name", "Node_1"], r#"invalid node-name "Node_1": not a Kubernetes name"#),
        (&["--node-name", &"n".repeat(64)], "invalid node-name"),
        (&["--mesh-network=mesh-"], r#"invalid mesh-network "mesh-": not a Kubernetes name"#),
        (&["--mesh-network=Mesh"], r#"invalid mesh-network "Mesh": not a Kubernetes name"#),
        (&["--namespace", "a.b"], r#"invalid namespace "a.b": not a Kubernetes name: use a-z, 0-9 and '-'"#),
        (&["--status-interval", "500ms"], r#"invalid status-interval "500ms": must be between 1s and 1h"#),
        (&["--status-interval", "soon"], r#"invalid status-interval "soon": expected a number"#),
        (
            &["--tun-name", "rolomesh-overlay0"],
            r#"invalid tun-name "rolomesh-overlay0": longer than 15 bytes"#,
        ),
        (&["--secret-file", "/nonexistent"], r#"secret file "/nonexistent": cannot read it"#),
    ];
    for (flags, want) in cases {
        let e = err(None, &kube_flags(flags));
        assert!(e.contains(want), "{flags:?}:\n  got  {e}\n  want {want}");
    }
    let e = err(None, &["--kube", "--node-name", "n", "--secret-file", "$DIR/secret"]);
    assert!(e.starts_with("mesh-network is required: --kube needs --mesh-network NAME"), "{e}");
    // The kube-only flags without --kube.
    let e = err(Some(GOOD), &["--mesh-network", "mesh"]);
    assert_eq!(e, r#"invalid mesh-network "mesh": only used with --kube"#);
    let e = err(Some(GOOD), &["--status-interval", "5s"]);
    assert_eq!(e, r#"invalid status-interval "5s": only used with --kube"#);
}
