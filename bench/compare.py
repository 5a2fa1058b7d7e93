#!/usr/bin/env python3
"""Measures every selected system between two network namespaces, one system after another, and writes
results.md, results.json and chart.png. bench/run builds everything first and then runs this.

Each system gets a fresh pair of namespaces joined by one veth pair; its endpoints are started by
bench/peers/NAME.sh, then iperf3 and ping run over the overlay addresses and everything is torn down again.
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import measure
import report

BENCH = Path(__file__).resolve().parent
PEERS = ["veth", "rolomesh", "nebula-deb", "nebula", "wireguard-go", "boringtun", "meshboi", "tailscale"]
NS_A, NS_B = os.environ.get("NS_A", "rmb-a"), os.environ.get("NS_B", "rmb-b")
UNDER_A, UNDER_B = os.environ.get("UNDER_A", "192.168.77.1"), os.environ.get("UNDER_B", "192.168.77.2")
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def sh(*args, check=True):
    p = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise measure.MeasureError(f"{' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def topology_down():
    for ns in (NS_A, NS_B):
        sh("ip", "netns", "del", ns, check=False)


def topology_up():
    topology_down()
    for ns in (NS_A, NS_B):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", "under0", "netns", NS_A, "type", "veth", "peer", "name", "under0", "netns", NS_B)
    for ns, addr in ((NS_A, UNDER_A), (NS_B, UNDER_B)):
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "under0")
        sh("ip", "-n", ns, "link", "set", "under0", "up")


def kill_all(pidfile):
    """SIGTERM everything the peer started (so daemons remove their devices), SIGKILL what lingers after 5 s."""
    try:
        pids = [int(x) for x in pidfile.read_text().split()]
    except OSError:
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    for pid in pids:
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_until(what, secs, fn):
    deadline = time.monotonic() + secs
    while True:
        try:
            if fn():
                return
        except measure.MeasureError:
            pass
        if time.monotonic() > deadline:
            raise measure.MeasureError(f"timed out after {secs}s waiting for {what}")
        time.sleep(0.2)


def start_peer(name, work):
    script = BENCH / "peers" / f"{name}.sh"
    env = dict(os.environ, NS_A=NS_A, NS_B=NS_B, UNDER_A=UNDER_A, UNDER_B=UNDER_B)
    try:
        p = subprocess.run(["bash", str(script), "start", str(work)], env=env, capture_output=True, text=True,
                           timeout=180)
    except subprocess.TimeoutExpired:
        raise measure.MeasureError(f"{script.name} start: no result after 180s") from None
    if p.returncode != 0:
        raise measure.MeasureError(f"{script.name} start failed: {p.stderr.strip()[-800:]}")
    penv = {}
    for line in (work / "peer.env").read_text().splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            penv[k] = v
    penv.update(NS_A=NS_A, NS_B=NS_B, pids=[int(x) for x in penv.get("ENDPOINT_PIDS", "").split()])
    return penv


def median_of(runs):
    """Per-key median over runs; non-numeric values (flags) must hold in every run."""
    out = {}
    for k in runs[0]:
        vals = [r[k] for r in runs if r.get(k) is not None]
        if not vals:
            out[k] = None
        elif isinstance(vals[0], bool):
            out[k] = all(vals)
        else:
            out[k] = statistics.median(vals)
    return out | {"runs": runs}


def run_system(name, args, work):
    res = {"name": name, "title": report.TITLES[name], "status": "failed"}
    work.mkdir(parents=True)
    topology_up()
    try:
        env = start_peer(name, work)
        res.update(version=env.get("VERSION"), note=env.get("NOTE"))
        wait_until("a ping over the overlay", args.ready_timeout,
                   lambda: measure.ping(env, 1)["received"] == 1)
        res["mtu"] = int(measure.ns_run(NS_A, ["cat", f"/sys/class/net/{env['DEV_A']}/mtu"], 10))
        # iperf3 server bound to B's overlay address only, so a test cannot take another path.
        server = subprocess.Popen(["ip", "netns", "exec", NS_B, "iperf3", "-s", "-B", env["OVERLAY_B"],
                                   "-p", str(measure.IPERF_PORT)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        with open(work / "pids", "a") as f:
            f.write(f"{server.pid}\n")
        wait_until("the iperf3 server", 10, lambda: f":{measure.IPERF_PORT}" in measure.ns_run(
            NS_B, ["ss", "-ltnH"], 10))
        measure.ping(env, 3)  # warm-up: lets lazy paths (handshakes, punching) settle
        # What the rest of the machine is doing meanwhile (others' builds): machine CPU figures include it.
        with measure.Meter([]) as idle:
            time.sleep(1)
        res["background_util_pct"] = 100 * idle.machine_util
        # Ping first, while the tunnel is idle: after a UDP flood, queues may still be draining.
        steps = [
            ("ping", lambda: measure.ping(env, args.ping_count)),
            ("tcp1", lambda: measure.tcp(env, args.duration, 1)),
            ("tcp4", lambda: measure.tcp(env, args.duration, 4)),
            ("udp64", lambda: measure.udp(env, args.duration, 64)),
            ("udp200", lambda: measure.udp(env, args.duration, 200)),
        ]
        for key, fn in steps:
            runs = []
            for _ in range(args.repeats):
                runs.append(fn())
                print(f"  {name} {key}: {report.brief(key, runs[-1])}", flush=True)
            res[key] = median_of(runs)
        res["checks"] = {
            "tcp_via_overlay_device": bool(res["tcp1"]["via_device"] and res["tcp4"]["via_device"]),
            "tcp_bytes": res["tcp1"]["gbit"] > 0 and res["tcp4"]["gbit"] > 0,
            "udp_packets": res["udp64"]["rx_pps"] > 0 and res["udp200"]["rx_pps"] > 0,
            "ping_replies": res["ping"]["loss_pct"] <= 10,
        }
        res["status"] = "ok"
    except measure.MeasureError as e:
        res["error"] = str(e)
        print(f"  {name}: FAILED: {e}", flush=True)
        for log in sorted(work.glob("*.log")):
            print(f"  --- {log.name} (tail)\n" + "".join(log.read_text(errors="replace").splitlines(True)[-8:]))
    finally:
        # Tear down even when interrupted: signals wait until it is done.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            kill_all(work / "pids")
            topology_down()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--systems", required=True, help="comma-separated, from: " + ",".join(PEERS))
    ap.add_argument("--build-failures", type=Path, help="dir with one file per peer that did not build: why")
    ap.add_argument("--duration", type=int, default=10, help="seconds per iperf3 run")
    ap.add_argument("--repeats", type=int, default=3, help="runs per measurement (the median is reported)")
    ap.add_argument("--ping-count", type=int, default=300)
    ap.add_argument("--ready-timeout", type=int, default=60)
    ap.add_argument("--work", type=Path, required=True, help="scratch dir (configs, logs, pids)")
    ap.add_argument("--out", type=Path, default=BENCH / "results")
    ap.add_argument("--smoke", action="store_true", help="fail (exit 1) unless every system worked")
    ap.add_argument("--command", default="", help="the command line, for the report")
    args = ap.parse_args()
    names = [n for n in args.systems.split(",") if n]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        sys.exit(f"unknown system(s) {','.join(unknown)}; known: {','.join(PEERS)}")
    build_errors = {}
    if args.build_failures:
        build_errors = {f.name: f.read_text().strip() for f in args.build_failures.iterdir()}
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the `finally` above tears the namespaces down.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)

    meta = report.machine_info() | {"params": vars(args) | {"systems": names}}
    meta["params"] = {k: str(v) if isinstance(v, Path) else v for k, v in meta["params"].items()}
    results = []
    try:
        for name in names:
            print(f"== {report.TITLES[name]}", flush=True)
            if name in build_errors:
                print(f"  not built: {build_errors[name]}", flush=True)
                results.append({"name": name, "title": report.TITLES[name], "status": "not built",
                                "error": build_errors[name]})
                continue
            results.append(run_system(name, args, args.work / name))
    except KeyboardInterrupt:
        sys.exit("interrupted: no results written; namespaces and processes are cleaned up")
    meta["finished"] = report.now()
    meta["loadavg_end"] = report.loadavg()
    out_dir = report.write_all(args.out, meta, results)
    print(f"results: {out_dir}")

    if args.smoke:
        problems = report.smoke_problems(out_dir, results)
        if problems:
            print("SMOKE FAILED:\n  " + "\n  ".join(problems))
            sys.exit(1)
        print(f"smoke: {len(results)} passed, 0 failed")


if __name__ == "__main__":
    main()
