//! `rolomesh demo`: a NATed two-site mesh in network namespaces, shown working, then torn down.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rolomesh::lab::Lab;
use rolomesh::netns::Spec;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Keep the mesh running until Ctrl-C instead of tearing it down after the checks
    #[arg(long)]
    keep: bool,
    /// Also measure ping RTT and iperf3 throughput (a1 -> a2), overlay against the same LAN underlay
    #[arg(long)]
    measure: bool,
}

pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo builds network namespaces and TUN devices: run it as root");
    }
    let bin = std::env::current_exe().context("finding the rolomesh binary")?;
    println!("Building sites a (a1, a2) and b (b1), each behind its own NAT and stateful firewall,");
    println!("a core router between them, and a public host for the rolodex...");
    let mut lab = Lab::new(&bin, Spec::default())?;
    let start = Instant::now();
    lab.start_all()?;
    if !lab.wait_full_mesh(Duration::from_secs(30)) {
        bail!("mesh did not come up within 30 s\n{}", lab.logs());
    }
    println!("Full mesh up {:.2} s after start.\n", start.elapsed().as_secs_f64());
    println!("{:<4} {:<4} {:<24} {:>8} {:>10}", "from", "to", "endpoint (direct)", "rtt ms", "connect ms");
    let hosts: Vec<String> = lab.members.iter().map(|m| m.host.clone()).collect();
    for a in &hosts {
        for b in hosts.iter().filter(|b| *b != a) {
            let l = lab.link(a, b).context("link vanished")?;
            println!(
                "{:<4} {:<4} {:<24} {:>8.2} {:>10.1}",
                a,
                b,
                l["endpoint"].as_str().unwrap_or("-"),
                l["rtt_ms"].as_f64().unwrap_or(f64::NAN),
                l["connect_ms"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    println!();
    let mut failed = 0;
    for a in &hosts {
        for b in hosts.iter().filter(|b| *b != a) {
            let ok = lab.overlay_ping(a, b)?;
            failed += usize::from(!ok);
            println!("ping {a} -> {b} ({}): {}", lab.member(b)?.overlay, if ok { "ok" } else { "FAILED" });
        }
    }
    if failed > 0 {
        bail!("{failed} overlay pings failed\n{}", lab.logs());
    }
    println!("\nEvery pair reaches every other over the encrypted overlay, through both NATs, peer to peer.");
    if a.measure {
        measure(&lab)?;
    }
    if a.keep {
        println!("Mesh kept running; namespaces are {:?}. Ctrl-C to tear down.", lab.topo.namespaces());
        let (tx, rx) = std::sync::mpsc::channel();
        ctrlc_wait(tx);
        let _ = rx.recv();
    }
    println!("Tearing down.");
    Ok(())
}

/// Blocks SIGINT/SIGTERM and waits for one on a thread, so Drop still cleans up.
fn ctrlc_wait(tx: std::sync::mpsc::Sender<()>) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
        if let Ok(rt) = rt {
            rt.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
        }
        let _ = tx.send(());
    });
}

/// Average RTT in ms of `count` pings from `from` to `to`.
fn ping_avg(lab: &Lab, from: &str, to: &str, count: u32) -> anyhow::Result<f64> {
    let c = count.to_string();
    let out = lab.host(from).run("ping", &["-n", "-q", "-i", "0.01", "-c", &c, to])?;
    // rtt min/avg/max/mdev = 0.031/0.045/0.098/0.010 ms
    let stats = out.lines().find(|l| l.contains("min/avg")).context("no ping summary")?;
    let avg = stats.split('=').nth(1).and_then(|v| v.trim().split('/').nth(1)).context("bad ping summary")?;
    Ok(avg.parse()?)
}

/// iperf3 single-stream TCP throughput in Gbit/s from `from` to the iperf3 server at `to`.
fn iperf(lab: &Lab, from: &str, server_host: &str, to: &str) -> anyhow::Result<f64> {
    let server = lab.host(server_host).spawn("iperf3", &["-s", "-1", "-B", to], &[])?;
    let mut last = String::from("iperf3 never ran");
    // The server may not listen yet: iperf3 then fails, or reports an error in its JSON.
    for _ in 0..50 {
        if let Ok(out) = lab.host(from).run("iperf3", &["-c", to, "-t", "5", "-J"]) {
            let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 JSON")?;
            if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
                drop(server);
                return Ok(bps / 1e9);
            }
            last = v["error"].as_str().unwrap_or("no result in iperf3 output").to_owned();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(server);
    anyhow::bail!("iperf3 {from} -> {to}: {last}")
}

fn measure(lab: &Lab) -> anyhow::Result<()> {
    let a2_lan = lab.host("a2").lan_ip.to_string();
    let a2_overlay = lab.member("a2")?.overlay.to_string();
    let b1_overlay = lab.member("b1")?.overlay.to_string();
    println!("\nMeasurements (a1 -> a2 share a LAN, so the underlay path is the same):");
    let under = ping_avg(lab, "a1", &a2_lan, 200)?;
    let over = ping_avg(lab, "a1", &a2_overlay, 200)?;
    println!(
        "  ping RTT underlay {under:.3} ms, overlay {over:.3} ms, added {:.0} us",
        (over - under) * 1000.0
    );
    let cross = ping_avg(lab, "a1", &b1_overlay, 200)?;
    println!("  ping RTT a1 -> b1 across both NATs over the overlay: {cross:.3} ms");
    let t_under = iperf(lab, "a1", "a2", &a2_lan)?;
    let t_over = iperf(lab, "a1", "a2", &a2_overlay)?;
    println!(
        "  iperf3 TCP underlay {t_under:.2} Gbit/s, overlay {t_over:.2} Gbit/s ({:.1}%)",
        t_over / t_under * 100.0
    );
    let t_cross = iperf(lab, "a1", "b1", &b1_overlay)?;
    println!("  iperf3 TCP a1 -> b1 across both NATs over the overlay: {t_cross:.2} Gbit/s");
    Ok(())
}
