#!/usr/bin/env python3
"""mesh-proxy benchmark: direct vs mesh-proxy vs HAProxy, side by side in one run.

Topology (made here, deleted on exit, also on failure):

    world ns  (servers; 198.18.<i>.1 and fd00:198:18:<i>::1 on link i)
      |-- veth -- pod ns "direct"        no capture rules
      |-- veth -- pod ns "mesh"          mesh-init rules + mesh-proxy as shipped (static musl
      |                                  build, default flags) as uid 1337
      |-- veth -- pod ns "mesh-glibc"    the same code built by plain `cargo build --release`
      |-- veth -- pod ns "mesh-splice"   the shipped build with --copy-mode splice
      `-- veth -- pod ns "haproxy"       mesh-init rules + haproxy mode tcp, server 0.0.0.0:0
(BENCH_MODES picks which; see MESH_VARIANTS.)

Clients run in a pod and dial the world address; in the proxied pods the kernel
redirects the connection to :15001 and the proxy forwards it to the original
destination. Every mode is first checked to reach the dialled address (the server
reports the address it was reached at and the peer it saw; a proxied connection is
seen from a different source port than the client's own, a direct one from the same).

The server and the clients are `mesh-loadgen` (bench/loadgen, Rust, blocking sockets);
this script only builds the topology, runs the workloads in turn and reports.
"""

import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time

PORT_ID = 5000  # mesh-loadgen's identity port (its default base port)


def busy_cpu_seconds():
    """CPU seconds the whole machine has spent busy (all CPUs, everything but idle and
    iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------- orchestrator

def sh(*args, check=True, **kw):
    r = subprocess.run(list(args), capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {r.stderr.strip()}")
    return r


class Bench:
    def __init__(self, proxy_bin, init_bin, loadgen_bin, seconds, reps):
        self.proxy_bin, self.init_bin, self.loadgen = proxy_bin, init_bin, loadgen_bin
        self.seconds, self.reps = seconds, reps
        tag = f"{os.getpid() % 100000}"
        self.world = f"mbw{tag}"
        self.modes = os.environ.get("BENCH_MODES",
                                    "direct,mesh,mesh-glibc,mesh-splice,haproxy").split(",")
        unknown = [m for m in self.modes if m not in MESH_VARIANTS and m not in ("direct", "haproxy")]
        if unknown or self.modes[0] != "direct":
            raise SystemExit(f"BENCH_MODES must start with direct; unknown: {unknown}")
        self.pods = {m: f"mbp{i}x{tag}" for i, m in enumerate(self.modes)}
        self.procs = {}
        self.namespaces = []
        self.tmp = f"/tmp/mesh-bench-{tag}"

    def ns_exec(self, ns, *args):
        return ["ip", "netns", "exec", ns, *args]

    def setup(self):
        os.makedirs(self.tmp, exist_ok=True)
        sh("ip", "netns", "add", self.world)
        self.namespaces.append(self.world)
        sh("ip", "-n", self.world, "link", "set", "lo", "up")
        for i, mode in enumerate(self.modes, start=1):
            pod = self.pods[mode]
            sh("ip", "netns", "add", pod)
            self.namespaces.append(pod)
            sh("ip", "-n", pod, "link", "set", "lo", "up")
            a, b = f"vp{i}{self.world[3:]}"[:15], f"vw{i}{self.world[3:]}"[:15]
            sh("ip", "link", "add", a, "netns", pod, "type", "veth", "peer", "name", b,
               "netns", self.world)
            sh("ip", "-n", pod, "addr", "add", f"198.18.{i}.2/24", "dev", a)
            sh("ip", "-n", pod, "-6", "addr", "add", f"fd00:198:18:{i}::2/64", "dev", a, "nodad")
            sh("ip", "-n", self.world, "addr", "add", f"198.18.{i}.1/24", "dev", b)
            sh("ip", "-n", self.world, "-6", "addr", "add", f"fd00:198:18:{i}::1/64", "dev", b,
               "nodad")
            sh("ip", "-n", pod, "link", "set", a, "up")
            sh("ip", "-n", self.world, "link", "set", b, "up")
            # Many short connections: let the client reuse TIME_WAIT ports.
            sh(*self.ns_exec(pod, "sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"))
            sh(*self.ns_exec(pod, "sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=10000 65000"))
            if mode != "direct":
                sh(*self.ns_exec(pod, self.init_bin, "-p", "15001", "-z", "15006", "-u", "1337",
                                 "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
                                 "-d", "15090,15021"))
        srv = subprocess.Popen(self.ns_exec(self.world, self.loadgen, "server"),
                               stdout=subprocess.PIPE, text=True)
        self.procs["server"] = srv
        if srv.stdout.readline().strip() != "ready":
            raise RuntimeError("bench server did not start")
        as_proxy = ["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups"]
        common = ["--admin-addr", "127.0.0.1:15021", "--metrics-addr", "127.0.0.1:15090"]
        for m in self.modes:
            if m in MESH_VARIANTS:
                binary = self.proxy_bin
                if m in ALT_BINARIES:
                    binary = os.environ.get(ALT_BINARIES[m], "")
                    if not binary:
                        raise SystemExit(f"mode {m} needs {ALT_BINARIES[m]}")
                self.start(m, as_proxy + [binary] + MESH_VARIANTS[m] + common)
        if "haproxy" in self.modes:
            cfg = os.path.join(self.tmp, "haproxy.cfg")
            with open(cfg, "w") as f:
                f.write(HAPROXY_CFG)
            self.start("haproxy", as_proxy + [shutil.which("haproxy") or "/usr/sbin/haproxy",
                                              "-f", cfg, "-db"])
        time.sleep(1.0)
        for m in self.modes[1:]:
            if self.procs[m].poll() is not None:
                raise RuntimeError(f"{m} exited at start")

    def start(self, mode, cmd):
        self.procs[mode] = subprocess.Popen(self.ns_exec(self.pods[mode], *cmd),
                                            stdin=subprocess.DEVNULL)

    def teardown(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def client(self, mode, *args, timeout=120):
        r = sh(*self.ns_exec(self.pods[mode], self.loadgen, "client", *args),
               timeout=timeout)
        return json.loads(r.stdout.strip().splitlines()[-1])

    def world_ip(self, mode, v6=False):
        i = self.modes.index(mode) + 1
        return f"fd00:198:18:{i}::1" if v6 else f"198.18.{i}.1"

    def pod_ip(self, mode, v6=False):
        i = self.modes.index(mode) + 1
        return f"fd00:198:18:{i}::2" if v6 else f"198.18.{i}.2"

    def proxy_pid(self, mode):
        return self.procs[mode].pid  # ip netns exec and setpriv both exec

    def cpu_seconds(self, mode):
        if mode == "direct":
            return 0.0
        with open(f"/proc/{self.proxy_pid(mode)}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kb(self, mode):
        with open(f"/proc/{self.proxy_pid(mode)}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return -1

    def check_path(self, mode, v6):
        host = self.world_ip(mode, v6)
        try:
            r = self.client(mode, "identity", host, timeout=20)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            return (mode, "v6" if v6 else "v4", False, {"error": str(e).splitlines()[-1][:200]})
        ok_dst = r["reached"][0] == host and r["reached"][1] == PORT_ID
        ok_src = r["server_saw"][0] == self.pod_ip(mode, v6)
        via_proxy = r["server_saw"][1] != r["client_local"][1]
        ok = ok_dst and ok_src and via_proxy == (mode != "direct")
        return (mode, "v6" if v6 else "v4", ok, r)

    def prove_paths(self):
        """Every mode must reach the dialled address over IPv4 (the measured family), and
        every mode but HAProxy over IPv6 too. HAProxy's IPv6 check runs last (see
        `prove_haproxy_v6`): if it fails by looping, it must not disturb the measurements."""
        rows = []
        for mode in self.modes:
            for v6 in (False, True):
                if mode == "haproxy" and v6:
                    continue
                row = self.check_path(mode, v6)
                rows.append(row)
                if not row[2]:
                    raise RuntimeError(f"{mode} {row[1]}: path check failed: {row[3]}")
        return rows

    def run(self):
        results = {m: {"bulk1": [], "bulk8": [], "lat": [], "conn": [], "conn4": [], "cpu_per_gb": [],
                      "machine1": [], "machine8": []}
                   for m in self.modes}
        s = self.seconds
        for rep in range(self.reps):
            order = self.modes[:]
            random.shuffle(order)
            for mode in order:
                host = self.world_ip(mode)
                c0, m0 = self.cpu_seconds(mode), busy_cpu_seconds()
                b1 = self.client(mode, "bulk", host, "1", str(s))
                c1, m1 = self.cpu_seconds(mode), busy_cpu_seconds()
                results[mode]["bulk1"].append(b1["gbit_s"])
                results[mode]["machine1"].append((m1 - m0) / (b1["bytes"] / 1e9))
                if mode != "direct":
                    results[mode]["cpu_per_gb"].append((c1 - c0) / (b1["bytes"] / 1e9))
                b8 = self.client(mode, "bulk", host, "8", str(s))
                m8 = busy_cpu_seconds()
                results[mode]["bulk8"].append(b8["gbit_s"])
                results[mode]["machine8"].append((m8 - m1) / (b8["bytes"] / 1e9))
                results[mode]["lat"].append(self.client(mode, "latency", host, str(s)))
                results[mode]["conn"].append(self.client(mode, "connrate", host, str(s))["per_s"])
                results[mode]["conn4"].append(
                    self.client(mode, "connrate", host, str(s), "4")["per_s"])
                print(f"  rep {rep + 1}/{self.reps} {mode:13s} bulk1 {b1['gbit_s']:6.2f} Gbit/s",
                      file=sys.stderr, flush=True)
        rss = {}
        for mode in self.modes[1:]:
            idle = self.rss_kb(mode)
            hold_file = os.path.join(self.tmp, f"hold-{mode}")
            open(hold_file, "w").close()
            p = subprocess.Popen(self.ns_exec(self.pods[mode], self.loadgen, "client",
                                              "hold", self.world_ip(mode), "1000", hold_file),
                                 stdout=subprocess.PIPE, text=True)
            line = p.stdout.readline()
            if json.loads(line).get("open") != 1000:
                raise RuntimeError(f"{mode}: could not open 1000 connections: {line}")
            time.sleep(0.5)
            busy = self.rss_kb(mode)
            os.unlink(hold_file)
            p.wait(timeout=60)
            rss[mode] = (idle, busy)
        return results, rss


# mesh-proxy variants a run can include (BENCH_MODES); "mesh" is the default build.
MESH_VARIANTS = {
    "mesh": [],
    "mesh-glibc": [],  # same flags, dynamically linked glibc build (MESH_PROXY_GLIBC_BIN)
    "mesh-base": [],  # same flags, another build to compare against (MESH_PROXY_BASE_BIN)
    "mesh-base-splice": ["--copy-mode", "splice"],  # that build with splice
    "mesh-splice": ["--copy-mode", "splice"],
    "mesh-buffered": ["--copy-mode", "buffered"],
    "mesh-1t": ["--worker-threads", "1"],
}

# Modes that run another mesh-proxy binary, named by an environment variable.
ALT_BINARIES = {"mesh-glibc": "MESH_PROXY_GLIBC_BIN", "mesh-base": "MESH_PROXY_BASE_BIN",
                "mesh-base-splice": "MESH_PROXY_BASE_BIN"}

HAPROXY_CFG = """global
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend capture
    bind 0.0.0.0:15001
    bind :::15001 v6only
    default_backend original_dst
backend original_dst
    server s 0.0.0.0:0
"""


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def report(results, rss, paths, reps, seconds):
    d = results["direct"]
    base = {"bulk1": med(d["bulk1"]), "bulk8": med(d["bulk8"]),
            "p50": med([x["p50_us"] for x in d["lat"]]), "p99": med([x["p99_us"] for x in d["lat"]]),
            "p999": med([x["p999_us"] for x in d["lat"]]), "conn": med(d["conn"]),
            "conn4": med(d["conn4"])}
    out = []
    out.append(f"mesh-proxy benchmark: {reps} interleaved repetitions, {seconds:g} s per workload, "
               f"medians (ratio to direct)\n")
    out.append("path check (server reached at the dialled address, seen from the pod; proxied "
               "modes seen from another source port):")
    for mode, fam, ok, r in paths:
        if "error" in r:
            out.append(f"  {mode:13s} {fam}: FAILED ({r['error']})")
            continue
        out.append(f"  {mode:13s} {fam}: {'ok' if ok else 'FAILED'}  dialled {r['dialled'][0]}"
                   f":{r['dialled'][1]} reached {r['reached'][0]}:{r['reached'][1]} "
                   f"client port {r['client_local'][1]} server saw port {r['server_saw'][1]}")
    out.append("")
    hdr = ("| mode | bulk 1 stream Gbit/s | bulk 8 streams Gbit/s | RR p50 µs | RR p99 µs | "
           "RR p99.9 µs | new conn/s 1 client | new conn/s 4 clients | CPU s/GB | RSS idle KiB "
           "| RSS 1000 conns KiB |")
    out.append(hdr)
    out.append("|" + "---|" * 11)
    for mode in results:
        r = results[mode]
        b1, b8 = med(r["bulk1"]), med(r["bulk8"])
        p50 = med([x["p50_us"] for x in r["lat"]])
        p99 = med([x["p99_us"] for x in r["lat"]])
        p999 = med([x["p999_us"] for x in r["lat"]])
        conn, conn4 = med(r["conn"]), med(r["conn4"])
        cpu = med(r["cpu_per_gb"]) if r["cpu_per_gb"] else None
        idle, busy = rss.get(mode, (None, None))
        out.append(
            f"| {mode} | {b1:.2f} ({b1 / base['bulk1']:.2f}) | {b8:.2f} ({b8 / base['bulk8']:.2f}) "
            f"| {p50:.1f} ({p50 / base['p50']:.2f}) | {p99:.1f} ({p99 / base['p99']:.2f}) "
            f"| {p999:.1f} ({p999 / base['p999']:.2f}) | {conn:.0f} ({conn / base['conn']:.2f}) "
            f"| {conn4:.0f} ({conn4 / base['conn4']:.2f}) "
            f"| {'-' if cpu is None else f'{cpu:.2f}'} | {'-' if idle is None else idle} "
            f"| {'-' if busy is None else busy} |")
    ncpu = os.cpu_count() or 1
    out.append("")
    out.append(f"whole machine ({ncpu} CPUs) during bulk: busy CPU seconds per GB moved "
               f"(client + server + proxy + kernel), and the share of the machine that was busy:")
    for mode in results:
        r = results[mode]
        parts = []
        for key, label, tp in (("machine1", "1 stream", "bulk1"), ("machine8", "8 streams", "bulk8")):
            per_gb = med(r[key])
            busy_share = per_gb * med(r[tp]) / 8 / ncpu  # s/GB * GB/s / CPUs
            parts.append(f"{label} {per_gb:.2f} s/GB ({busy_share:.0%} busy)")
        out.append(f"  {mode:13s} " + ", ".join(parts))
    return "\n".join(out)


def run_main(argv):
    proxy_bin, init_bin, loadgen_bin = argv[0], argv[1], argv[2]
    raise_nofile()  # the servers and the hold client inherit it
    seconds = float(os.environ.get("BENCH_SECONDS", "2"))
    reps = int(os.environ.get("BENCH_REPS", "3"))
    b = Bench(proxy_bin, init_bin, loadgen_bin, seconds, reps)

    def on_signal(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        b.setup()
        paths = b.prove_paths()
        results, rss = b.run()
        if "haproxy" in b.modes:
            paths.append(b.check_path("haproxy", True))
        print(report(results, rss, paths, reps, seconds))
        if os.environ.get("BENCH_JSON"):
            with open(os.environ["BENCH_JSON"], "w") as f:
                json.dump({"results": results, "rss_kb": rss}, f, indent=1)
    finally:
        b.teardown()


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "run":
        raise SystemExit("usage: bench.py run PROXY_BIN INIT_BIN LOADGEN_BIN (see run.sh)")
    run_main(sys.argv[2:])
