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
