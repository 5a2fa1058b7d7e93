"""Writes a run's results: results.json (everything, every run), results.md (the table) and chart.png
(gnuplot), into OUT/latest and a timestamped copy OUT/YYYYmmdd-HHMMSS."""

import datetime
import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

TITLES = {
    "veth": "raw veth",
    "rolomesh": "Rolomesh",
    "nebula-deb": "Nebula (Debian)",
    "nebula": "Nebula (release)",
    "wireguard-go": "wireguard-go",
    "boringtun": "boringtun",
    "meshboi": "meshboi",
    "tailscale": "Tailscale",
}
STARTED = datetime.datetime.now().astimezone()


def now():
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def machine_info():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    iperf = subprocess.run(["iperf3", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return {
        "machine": {
            "cpu": model,
            "cores": os.cpu_count(),
            "memory_gib": round(mem_kb / 2**20, 1),
            "kernel": platform.release(),
            "iperf3": iperf.strip(),
        },
        "started": STARTED.isoformat(timespec="seconds"),
        "loadavg_start": loadavg(),
    }


def brief(key, r):
    if key.startswith("tcp"):
        return f"{r['gbps']:.2f} Gbit/s, endpoints {r['endpoint_cpu_s']:.2f} CPU-s, machine {r['machine_util_pct']:.0f}%"
    if key.startswith("udp"):
        return f"{r['rx_pps'] / 1e3:.0f} kpps received, {r['loss_pct']:.1f}% lost"
    return f"avg {r.get('avg_us', float('nan')):.0f} us, {r['loss_pct']:.0f}% lost"


def scrub(text):
    """Error text is kept for the report, minus URLs (registry host names stay out of files we write)."""
    return re.sub(r"https?://\S+", "<url>", text)


def one_line(text, limit=400):
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fmt(v, spec, scale=1.0):
    return "–" if v is None else format(v * scale, spec)


def markdown(meta, results):
    m, p = meta["machine"], meta["params"]
    veth = next((r for r in results if r["name"] == "veth" and r["status"] == "ok"), None)
    lines = [
        "# Data-plane comparison",
        "",
        f"Run {meta['started']} – {meta['finished']}: `{p['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, kernel {m['kernel']}, {m['iperf3']}. "
        f"Load average at start {meta['loadavg_start']}, at end {meta['loadavg_end']} "
        "(a shared machine: numbers taken while others build are noisy).",
        "",
        f"Two network namespaces joined by one veth pair; each system's two endpoints run one per namespace; "
        f"iperf3 and ping over the overlay addresses. Systems ran one after another. Each figure is the median of "
        f"{p['repeats']} run(s) of {p['duration']} s (ping: {p['ping_count']} echoes 10 ms apart).",
        "",
        "| system | version | MTU | TCP 1 stream Gbit/s | TCP 4 streams Gbit/s | endpoint CPU-s/Gbit (1 / 4) "
        "| machine CPU-s/Gbit (1 / 4) | UDP 64 B kpps rx (loss) | UDP 200 B kpps rx (loss) "
        "| ping avg µs | ping Δ vs veth µs | machine busy before % |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        if r["status"] != "ok":
            continue
        t1, t4, u1, u2, pg = r["tcp1"], r["tcp4"], r["udp64"], r["udp200"], r["ping"]
        delta = pg.get("avg_us") - veth["ping"]["avg_us"] if veth and pg.get("avg_us") is not None else None
        r["ping"]["delta_vs_veth_us"] = delta
        lines.append(
            f"| {r['title']} | {r.get('version') or ''} | {r.get('mtu', '')} | {fmt(t1['gbps'], '.2f')} "
            f"| {fmt(t4['gbps'], '.2f')} "
            f"| {fmt(t1['endpoint_cpu_s_per_gbit'], '.2f')} / {fmt(t4['endpoint_cpu_s_per_gbit'], '.2f')} "
            f"| {fmt(t1['machine_cpu_s_per_gbit'], '.2f')} / {fmt(t4['machine_cpu_s_per_gbit'], '.2f')} "
            f"| {fmt(u1['rx_pps'], '.0f', 1e-3)} ({fmt(u1['loss_pct'], '.0f')}%) "
            f"| {fmt(u2['rx_pps'], '.0f', 1e-3)} ({fmt(u2['loss_pct'], '.0f')}%) "
            f"| {fmt(pg.get('avg_us'), '.0f')} | {fmt(delta, '+.0f')} | {fmt(r.get('background_util_pct'), '.0f')} |"
        )
    failed = [r for r in results if r["status"] != "ok"]
    if failed:
        lines += ["", "Not measured:", ""]
        lines += [f"- **{r['title']}** ({r['status']}): {one_line(r.get('error', ''))}" for r in failed]
    notes = [r for r in results if r.get("note")]
    bad = [(r, [k for k, ok in r["checks"].items() if not ok]) for r in results if r["status"] == "ok"]
    bad = [(r, ks) for r, ks in bad if ks]
    if notes or bad:
        lines += ["", "Notes:", ""]
        lines += [f"- {r['title']}: {r['note']}" for r in notes]
        lines += [f"- {r['title']}: failed checks: {', '.join(ks)}" for r, ks in bad]
    lines += [
        "",
        "CPU-s/Gbit: CPU seconds spent per Gbit received. *Endpoint* counts the two tunnel processes "
        "(/proc/PID/stat utime+stime); *machine* counts all busy time in /proc/stat, which adds the kernel work "
        "(TUN, UDP, softirq), iperf3 itself and anything else running. UDP: iperf3 `-u -b 0` (unlimited), "
        "received datagrams per second. *Machine busy before*: whole-machine CPU use during 1 s with the tunnel "
        "up but idle, just before the system's runs (other work on the machine; 100% means its figures are "
        "unreliable). Full data per run: results.json.",
    ]
    return "\n".join(lines) + "\n"


def chart(out, results):
    ok = [r for r in results if r["status"] == "ok"]
    data = out / "chart.dat"
    with open(data, "w") as f:
        f.write("system tcp1 tcp4 ep1 ep4 mach1 mach4\n")
        for r in ok:
            t1, t4 = r["tcp1"], r["tcp4"]
            vals = [t1["gbps"], t4["gbps"], t1["endpoint_cpu_s_per_gbit"], t4["endpoint_cpu_s_per_gbit"],
                    t1["machine_cpu_s_per_gbit"], t4["machine_cpu_s_per_gbit"]]
            f.write(f'"{r["title"]}" ' + " ".join("0" if v is None else f"{v:.4f}" for v in vals) + "\n")
    script = f"""
set terminal pngcairo size 1200,900 font "sans,10"
set output "{out / 'chart.png'}"
set datafile separator whitespace
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set key top right autotitle columnheader
set grid ytics
set xtics nomirror rotate by -20
set multiplot layout 2,1 title "Data plane, two namespaces over one veth ({STARTED:%Y-%m-%d %H:%M})"
set title "TCP throughput (Gbit/s, log scale)"
set logscale y
set yrange [0.01:*]
# Two bars per cluster, each 1/3 wide: centres at x-1/6 and x+1/6.
plot "{data}" using 2:xtic(1) lc rgb "#1f77b4" title "1 stream", "" using 3 lc rgb "#aec7e8" title "4 streams", \\
     "" using ($0-1.0/6):2:(sprintf("%.2f",$2)) with labels offset 0,0.6 notitle, \\
     "" using ($0+1.0/6):3:(sprintf("%.2f",$3)) with labels offset 0,0.6 notitle
unset logscale y
set yrange [0:*]
set title "CPU seconds per Gbit received (lower is better)"
plot "{data}" using 4:xtic(1) lc rgb "#d62728" title "endpoints, 1 stream", \\
     "" using 5 lc rgb "#ff9896" title "endpoints, 4 streams", \\
     "" using 6 lc rgb "#2ca02c" title "machine, 1 stream", \\
     "" using 7 lc rgb "#98df8a" title "machine, 4 streams"
unset multiplot
"""
    (out / "chart.gp").write_text(script)
    p = subprocess.run(["gnuplot", str(out / "chart.gp")], capture_output=True, text=True)
    if p.returncode != 0:
        print(f"gnuplot failed: {p.stderr.strip()}")


def write_all(root, meta, results):
    for r in results:
        if r.get("error"):
            r["error"] = scrub(r["error"])
    stamp = root / STARTED.strftime("%Y%m%d-%H%M%S")
    stamp.mkdir(parents=True, exist_ok=True)
    md = markdown(meta, results)  # also fills in the ping deltas
    (stamp / "results.json").write_text(json.dumps(meta | {"systems": results}, indent=2) + "\n")
    (stamp / "results.md").write_text(md)
    if any(r["status"] == "ok" for r in results):
        chart(stamp, results)
    latest = root / "latest"
    shutil.rmtree(latest, ignore_errors=True)
    shutil.copytree(stamp, latest)
    return latest


def smoke_problems(out, results):
    """What a user would notice: a system that did not carry traffic, or an output missing or unreadable."""
    problems = [f"{r['name']}: {r['status']}: {r.get('error', '')}" for r in results if r["status"] != "ok"]
    for r in results:
        problems += [f"{r['name']}: check {k} failed" for k, ok in r.get("checks", {}).items() if not ok]
    try:
        doc = json.loads((out / "results.json").read_text())
        if [s["name"] for s in doc["systems"]] != [r["name"] for r in results]:
            problems.append("results.json does not list the systems run")
    except (OSError, ValueError, KeyError) as e:
        problems.append(f"results.json unreadable: {e}")
    md = out / "results.md"
    if not md.is_file() or "| Rolomesh |" not in md.read_text() and any(r["name"] == "rolomesh" for r in results):
        problems.append("results.md missing or without a Rolomesh row")
    png = out / "chart.png"
    if not png.is_file() or png.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        problems.append("chart.png missing or not a PNG")
    return problems
