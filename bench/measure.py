"""One measurement each: iperf3 TCP/UDP and ping between the namespaces, with the CPU spent meanwhile.

CPU is read from /proc: the tunnel endpoints' own utime+stime (/proc/PID/stat, all threads), and the whole
machine's busy time (/proc/stat), because much of a tunnel's cost (TUN, UDP, softirq) is kernel work done
outside the process. Machine CPU also counts everything else running, so on a shared machine it is noisy.
"""

import json
import os
import re
import subprocess

TICK = os.sysconf("SC_CLK_TCK")
IPERF_PORT = 5201


class MeasureError(Exception):
    pass


def ns_run(ns, args, timeout):
    """Runs a command in a namespace; returns stdout, raises MeasureError with its stderr on failure."""
    try:
        p = subprocess.run(
            ["ip", "netns", "exec", ns, *args], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise MeasureError(f"{' '.join(args)}: no result after {timeout}s") from None
    if p.returncode != 0:
        detail = (p.stderr.strip() or p.stdout.strip())[-400:]
        raise MeasureError(f"{' '.join(args)}: exit {p.returncode}: {detail}")
    return p.stdout


def process_ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                # Fields after the ")" that closes the command name: utime and stime are the 12th and 13th.
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError as e:
            raise MeasureError(f"tunnel endpoint {pid} is gone: {e}") from None
        total += int(fields[11]) + int(fields[12])
    return total


def machine_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already inside user)
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    return busy, busy + v[3] + v[4]


def dev_tx_bytes(ns, dev):
    return int(ns_run(ns, ["cat", f"/sys/class/net/{dev}/statistics/tx_bytes"], 10))


class Meter:
    """CPU seconds of the endpoints and of the machine between start() and stop()."""

    def __init__(self, pids):
        self.pids = pids

    def __enter__(self):
        self.p0 = process_ticks(self.pids)
        self.m0 = machine_ticks()
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            m1 = machine_ticks()
            self.endpoint_s = (process_ticks(self.pids) - self.p0) / TICK
            self.machine_s = (m1[0] - self.m0[0]) / TICK
            self.machine_util = (m1[0] - self.m0[0]) / max(1, m1[1] - self.m0[1])
        return False


def iperf(ns, dst, secs, extra):
    out = ns_run(
        ns,
        ["iperf3", "-c", dst, "-p", str(IPERF_PORT), "-t", str(secs), "-J", "--connect-timeout", "5000", *extra],
        secs + 30,
    )
    try:
        doc = json.loads(out)
    except json.JSONDecodeError as e:
        raise MeasureError(f"iperf3 printed no JSON ({e}): {out[-300:]}") from None
    if "error" in doc:
        raise MeasureError(f"iperf3: {doc['error']}")
    return doc["end"]


def tcp(env, secs, streams):
    """Gbit/s received and CPU seconds per Gbit; also checks the bytes went through the tunnel device."""
    tx0 = dev_tx_bytes(env["NS_A"], env["DEV_A"])
    with Meter(env["pids"]) as m:
        end = iperf(env["NS_A"], env["OVERLAY_B"], secs, ["-P", str(streams)] if streams > 1 else [])
    tx = dev_tx_bytes(env["NS_A"], env["DEV_A"]) - tx0
    rx, sent = end["sum_received"], end["sum_sent"]
    gbit = rx["bytes"] * 8 / 1e9
    return {
        "gbps": rx["bits_per_second"] / 1e9,
        "gbit": gbit,
        "retransmits": sent.get("retransmits"),
        "endpoint_cpu_s": m.endpoint_s,
        "machine_cpu_s": m.machine_s,
        "machine_util_pct": 100 * m.machine_util,
        "endpoint_cpu_s_per_gbit": m.endpoint_s / gbit if gbit else None,
        "machine_cpu_s_per_gbit": m.machine_s / gbit if gbit else None,
        "device_tx_bytes": tx,
        # What B received (payload; headers come on top) must have left A through the overlay device.
        "via_device": rx["bytes"] > 0 and tx >= rx["bytes"],
    }


def udp(env, secs, length):
    """Received packets per second and loss for an unlimited-rate stream of `length`-byte datagrams."""
    with Meter(env["pids"]) as m:
        end = iperf(env["NS_A"], env["OVERLAY_B"], secs, ["-u", "-b", "0", "-l", str(length)])
    rx = end["sum_received"]
    got = max(0, rx["packets"] - rx["lost_packets"])
    return {
        "rx_pps": got / rx["seconds"] if rx["seconds"] else 0.0,
        "tx_pps": end["sum_sent"]["packets"] / end["sum_sent"]["seconds"] if end["sum_sent"]["seconds"] else 0.0,
        "loss_pct": rx["lost_percent"],
        "endpoint_cpu_s": m.endpoint_s,
        "machine_util_pct": 100 * m.machine_util,
    }


PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")
PING_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")


def ping(env, count):
    """Idle round-trip time over the overlay, 10 ms apart."""
    # ping exits 1 when replies are missing; the summary still says how many, so parse rather than fail.
    p = subprocess.run(
        ["ip", "netns", "exec", env["NS_A"], "ping", "-q", "-i", "0.01", "-W", "1", "-c", str(count),
         env["OVERLAY_B"]],
        capture_output=True, text=True, timeout=count * 0.01 + 30,
    )
    s, r = PING_SUMMARY.search(p.stdout), PING_RTT.search(p.stdout)
    if not s:
        raise MeasureError(f"ping: {p.stdout.strip()[-200:]} {p.stderr.strip()[-200:]}")
    sent, got = int(s.group(1)), int(s.group(2))
    res = {"sent": sent, "received": got, "loss_pct": 100 * (sent - got) / sent}
    if r:
        res.update({k: float(r.group(i)) * 1000 for i, k in enumerate(["min_us", "avg_us", "max_us", "mdev_us"], 1)})
    return res
