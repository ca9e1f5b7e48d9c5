#!/usr/bin/env python3
"""L7 benchmark: HTTP/1.1 through two sidecar hops (client pod out, server pod in),
direct vs mesh-proxy (config from the real mesh-control) vs nginx vs HAProxy (mode
http), side by side in one run.

Topology (made here, deleted on exit, also on failure):

    router ns  (198.18.<i>.1 on link i, ip_forward; mesh-control here, its API server
      |         reached through a socat bridge: 127.0.0.1:6443 in this namespace ->
      |         a unix socket -> kube-local's 127.0.0.1:6443 on the host)
      |-- veth -- pod "direct-c" 198.18.1.2   no capture rules
      |-- veth -- pod "direct-s" 198.18.2.2   no capture rules, the HTTP server
      |-- veth -- pod "mesh-c"   198.18.3.2   mesh-init rules + mesh-proxy (uid 1337)
      |-- veth -- pod "mesh-s"   198.18.4.2   mesh-init rules + mesh-proxy + the server
      |-- ...       "mesh-mtls-c/-s": as mesh, with workload identities (certificates
      |             from mesh-control's CA, mTLS between the two proxies);
      |-- ...       "nginx-c/-s", "haproxy-c/-s": the same rules, nginx / HAProxy as
                    uid 1337 on 15001 (outbound) and 15006 (inbound)

Every pod has a default route to the router. The client app (mesh-loadgen, root) in a
client pod dials:
  direct   the server pod's IP:8080;
  mesh     the Service `bench`'s ClusterIP:8080 (kube-local's range, never routed: the
           pod's nat OUTPUT rule sends it to mesh-proxy on 15001, which knows the
           ClusterIP from mesh-control, routes per the VirtualService `bench` and picks
           the endpoint of the EndpointSlice, the server pod's IP; the server pod's nat
           PREROUTING rule sends that to its mesh-proxy on 15006, which passes it to the
           app from 127.0.0.6);
  nginx / haproxy   the server pod's IP:8080, captured the same way; these proxies cannot
           ask mesh-control, so their upstream is written in their config (client side:
           the server pod's IP:8080; server side: 127.0.0.1:8080).
Each mode proves its path first (the server answers with the address it was reached at
and the peer it saw; the mesh proxies' request metrics moved on both sides; nginx and
HAProxy add a response header per hop).

The ingress gateway modes (#14) add one pod:
    |-- veth -- pod "gw"       198.18.99.2  no capture rules: `mesh-proxy --role gateway`
                (uid 1337, config from mesh-control: the Gateway's port 80 bound at 8080,
                the targetPort of the Service istio-ingressgateway that selects the pod)
  gateway       client pod (outside the mesh: no rules, no proxy, not a kube Pod) -> the
                gateway pod's IP:8080 (Host bench.example.com; the VirtualService bound to
                the Gateway routes `/` to Service bench-gw) -> the backend pod's IP:8080,
                the backend without a sidecar;
  gateway-mesh  the same gateway (Host bench-mesh.example.com, VirtualService bench-gwm,
                Service bench-gwm) to a backend pod with its sidecar (mesh-init's rules,
                the inbound mesh-proxy delivers from 127.0.0.6).
A LoadBalancer or a nodePort ends at that pod IP and targetPort too (kube-local has no
kube-proxy, so the Service's port 80 is not dialled).

The load is mesh-loadgen's HTTP mode (bench/loadgen/src/http.rs): 16 keep-alive
connections, 1 KB responses, (a) 1,000 req/s in total, (b) as fast as they go. Then, for
direct, mesh and mesh-mtls, its TCP workloads on the Services' tcp-* ports: bulk, 64-byte
request/response, new connections.
"""

import json
import os
import random
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

APP_PORT = 8080
CONNS = int(os.environ.get("BENCH_CONNS", "16"))
# The answer's body, bytes (the issue's workload: 1 KB).
BODY = int(os.environ.get("BENCH_BODY_BYTES", "1024"))
RATE = float(os.environ.get("BENCH_RATE", "1000"))
SERVICES_SMALL = 10
IDLE_CPU_WINDOW = 3.0
SERVICES_LARGE = int(os.environ.get("BENCH_SERVICES", "1000"))
MODES_ALL = ("direct", "mesh", "mesh-policy", "mesh-mtls", "nginx", "haproxy", "gateway",
             "gateway-mesh")
# `mesh-mtls` is `mesh` with workload identities: its own pair of pods (label
# security.istio.io/tlsMode=istio, ServiceAccounts bench-client / bench-server), proxies
# given a root certificate and a TokenRequest token, certificates from mesh-control's CA
# (TokenReview against kube-local), so the client proxy originates mTLS to the server
# pod's proxy, which terminates it; its own Service `bench-mtls`. The modes whose proxies
# are mesh-proxy:
MESH_MODES = ("mesh", "mesh-mtls")
# The TCP workloads (mesh-loadgen server: identity, bulk, echo, one-shot conn, hold on
# TCP_BASE..+4), run for these modes: nginx and HAProxy are configured for HTTP only.
TCP_MODES = ("direct", "mesh", "mesh-mtls")
TCP_BASE = 5000
TCP_PORTS = (("tcp-id", 0), ("tcp-bulk", 1), ("tcp-echo", 2), ("tcp-conn", 3), ("tcp-hold", 4))
TOKEN_AUDIENCE = "istio-ca"
CONTROL_PLANE_SAN = "mesh-control.mesh-system.svc"
# `mesh-policy` is `mesh` (same pods, proxies and Service) with a DestinationRule whose
# connectionPool limits and outlierDetection are on but never tripped, and the
# VirtualService's route with a timeout and explicit retries: applied before each of its
# load runs and removed after, so the two are measured side by side in one run.
POLICY_DR = """---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: bench
  namespace: {ns}
spec:
  host: bench
  trafficPolicy:
    connectionPool:
      tcp: {{maxConnections: 1000, connectTimeout: 5s}}
      http: {{http1MaxPendingRequests: 1000, http2MaxRequests: 1000, maxRetries: 100}}
    outlierDetection:
      consecutive5xxErrors: 5
      interval: 10s
      baseEjectionTime: 30s
      maxEjectionPercent: 100
"""


# The ingress gateway (#14): one gateway pod (link GW_LINK, no capture rules) running
# `mesh-proxy --role gateway` as the injector's gateway template would (the identity env
# of a pod of Deployment istio-ingressgateway in namespace `<bench namespace>-ingress`,
# labels istio: ingressgateway, app: istio-ingressgateway), config over mesh-control's
# plaintext stream (the Gateway serves plain HTTP, no certificate is needed). Gateway
# `bench-gw` (selector istio: ingressgateway, port 80 HTTP, hosts *) and the Service
# istio-ingressgateway (80 -> 8080): the gateway binds 8080. `gateway` routes to a
# backend without a sidecar, `gateway-mesh` (same gateway pod, another host) to a backend
# with its sidecar. Their clients are outside the mesh: no rules, no proxy, no kube Pod.
GATEWAY_MODES = ("gateway", "gateway-mesh")
GW_LINK = 99
GW_NUMBER = 80               # the Gateway server's port.number (the Service's port)
GW_PORT = 8080               # its targetPort: what the gateway binds, what clients dial
GW_WORKLOAD = "istio-ingressgateway"
# As a pod of the Deployment's ReplicaSet (its owner reference names one, which does not
# exist: kube-local has no controllers, nor a garbage collector), so mesh-control's peer
# metadata of the pod says workload istio-ingressgateway, as the gateway says of itself.
GW_HASH = "5c8d9f7b6d"
GW_POD = f"istio-ingressgateway-{GW_HASH}-bench"
GW_OWNER_UID = "00000000-0000-4000-8000-00000000b14c"
GW_LABELS = "{app: istio-ingressgateway, istio: ingressgateway}"
GW_POD_LABELS = ("{app: istio-ingressgateway, istio: ingressgateway, "
                 f"pod-template-hash: {GW_HASH}}}")
GW_HOST = {"gateway": "bench.example.com", "gateway-mesh": "bench-mesh.example.com"}
GW_SERVICE = {"gateway": "bench-gw", "gateway-mesh": "bench-gwm"}
GW_BACKEND = {"gateway": "bench-backend-gw", "gateway-mesh": "bench-backend-gwm"}
# mesh-loadgen's unmeasured requests per connection before each run (WARMUP in
# bench/loadgen/src/http.rs): the gateway counts them too.
LOADGEN_WARMUP = 20


def base(mode):
    """The mode whose pods and proxies `mode` uses."""
    return "mesh" if mode == "mesh-policy" else mode


def is_mesh(mode):
    return base(mode) in MESH_MODES


def is_gateway(mode):
    return mode in GATEWAY_MODES


def sides_of(mode):
    """The proxies a mode's requests cross, in path order: `gw` is the ingress gateway."""
    if mode == "direct":
        return ()
    if mode == "gateway":
        return ("gw",)
    if mode == "gateway-mesh":
        return ("gw", "in")
    return ("out", "in")


def captured(mode, side):
    """Whether a pod of `mode` gets mesh-init's rules (a client outside the mesh, a
    gateway pod and a backend without a sidecar do not)."""
    if mode == "direct" or mode == "gateway" or side == "g":
        return False
    if mode == "gateway-mesh":
        return side == "s"
    return True


def service_of(mode):
    """The kube Service a mesh mode's client dials (a gateway mode's route goes to)."""
    if is_gateway(mode):
        return GW_SERVICE[mode]
    return "bench-mtls" if base(mode) == "mesh-mtls" else "bench"


def pod_names(mode):
    """(client, server) pod names in kube of a mesh mode."""
    sfx = "-mtls" if base(mode) == "mesh-mtls" else ""
    return f"bench-client{sfx}", f"bench-server{sfx}"
INIT_ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*",
             "-x", "", "-b", "*", "-d", "15090,15021"]
AS_PROXY = ["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups"]
TARGETS = {"added_p99_us": 600, "cpu_s_per_1k": 0.05, "rss_idle_kb": 3 * 1024,
           "rss_load_kb": 8 * 1024, "rss_growth_kb": 1024}
CLK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sh(*args, check=True, input=None, timeout=120, **kw):
    r = subprocess.run(list(args), capture_output=True, text=True, input=input,
                       timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)[:300]} failed: {r.stderr.strip()[-2000:]}")
    return r


def busy_cpu_seconds():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK


def proc_stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(") ", 1)[1].split()


def children(pid):
    """Direct children of `pid` (nginx's workers)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if int(proc_stat(d)[1]) == pid:
                    out.append(int(d))
            except (OSError, IndexError):
                pass
    return out


def status_fields(path, *keys):
    """The first number of each of `keys` in a `/proc/.../status` file (0 when absent
    or the file is gone)."""
    got = dict.fromkeys(keys, 0)
    try:
        with open(path) as f:
            for line in f:
                k = line.split(":", 1)[0]
                if k in got:
                    got[k] = int(line.split()[1])
    except OSError:
        pass
    return got


def vmrss_kb(pid):
    return status_fields(f"/proc/{pid}/status", "VmRSS")["VmRSS"]


def rss_split_kb(pid):
    """(RssAnon, RssFile) from /proc/PID/status."""
    got = status_fields(f"/proc/{pid}/status", "RssAnon", "RssFile")
    return got["RssAnon"], got["RssFile"]


def resident_pages(pid):
    """Which pages of each of a process's mappings are resident, from /proc/PID/pagemap
    (root): one entry per mapping, with its file offset and the resident pages as
    [page index, 1 if private/anonymous (bit 61 clear: copied on write, or anonymous)].
    proxy/link/resident.py attributes them to the binary's sections and crates."""
    out = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pm:
        for line in maps:
            f = line.split()
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            path = f[5] if len(f) > 5 else ""
            if path == "[vsyscall]":
                continue
            pm.seek(lo // 4096 * 8)
            raw = pm.read((hi - lo) // 4096 * 8)
            pages = []
            for i in range(len(raw) // 8):
                e = int.from_bytes(raw[8 * i:8 * i + 8], "little")
                if e >> 63:
                    pages.append([i, 0 if (e >> 61) & 1 else 1])
            out.append({"start": lo, "end": hi, "perms": f[1], "offset": int(f[2], 16),
                        "path": path, "pages": pages})
    return out


def binary_id(path):
    """Size and a short sha256 of a binary: the target dir is shared, say what ran."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"{os.path.getsize(path)} bytes, sha256 {h.hexdigest()[:12]}"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Proc:
    """A process this script started (ip netns exec and setpriv exec, so the Popen's PID
    is the program's own); `tree` also counts its children (nginx's workers)."""

    def __init__(self, name, popen, tree=False, stop_signal=signal.SIGTERM):
        self.name, self.p, self.tree, self.stop_signal = name, popen, tree, stop_signal

    def pids(self):
        return [self.p.pid] + (children(self.p.pid) if self.tree else [])

    def cpu(self):
        return sum(self.cpu_split())

    def cpu_split(self):
        """(user, system) CPU seconds (utime, stime of /proc/PID/stat)."""
        user = system = 0
        for pid in self.pids():
            try:
                f = proc_stat(pid)
                user, system = user + int(f[11]), system + int(f[12])
            except (OSError, IndexError):
                pass
        return user / CLK, system / CLK

    def rss(self):
        return sum(vmrss_kb(pid) for pid in self.pids())

    def events(self):
        """Minor and major page faults (/proc/PID/stat) and voluntary and involuntary
        context switches summed over every thread (/proc/PID/task/*/status), for the
        process and, with `tree`, its children."""
        got = {"minflt": 0, "majflt": 0, "vcsw": 0, "ivcsw": 0}
        pids = self.pids()
        for pid in pids:
            try:
                f = proc_stat(pid)
                got["minflt"] += int(f[7])
                got["majflt"] += int(f[9])
                tasks = os.listdir(f"/proc/{pid}/task")
            except (OSError, IndexError, ValueError):
                continue
            for t in tasks:
                sw = status_fields(f"/proc/{pid}/task/{t}/status",
                                   "voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")
                got["vcsw"] += sw["voluntary_ctxt_switches"]
                got["ivcsw"] += sw["nonvoluntary_ctxt_switches"]
        # TCP segments sent in the process's network namespace (its pod: the app's
        # segments too, the same in every mode), from /proc/PID/net/snmp.
        got["tcp_out_segs"] = 0
        try:
            with open(f"/proc/{pids[0]}/net/snmp") as f:
                rows = [line.split() for line in f if line.startswith("Tcp:")]
            got["tcp_out_segs"] = int(rows[1][rows[0].index("OutSegs")])
        except (OSError, IndexError, ValueError):
            pass
        return got

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(self.stop_signal)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


class Bench:
    def __init__(self, bins):
        self.tag = os.environ.get("BENCH_TAG") or str(os.getpid() % 100000)
        self.modes = os.environ.get("BENCH_MODES", ",".join(MODES_ALL)).split(",")
        bad = [m for m in self.modes if m not in MODES_ALL]
        if "mesh-policy" in self.modes and "mesh" not in self.modes:
            bad.append("mesh-policy (needs mesh)")
        if "gateway-mesh" in self.modes and "gateway" not in self.modes:
            bad.append("gateway-mesh (needs gateway: it shares its gateway pod)")
        if bad or self.modes[0] != "direct":
            raise SystemExit(f"BENCH_MODES must start with direct and name only {MODES_ALL}; "
                             f"unknown: {bad}")
        self.seconds = float(os.environ.get("BENCH_SECONDS", "5"))
        self.useconds = float(os.environ.get("BENCH_UNBOUNDED_SECONDS", "3"))
        self.reps = int(os.environ.get("BENCH_REPS", "3"))
        self.router = f"mhr{self.tag}"
        self.namespaces = []
        self.procs = []            # every Proc, for teardown (reverse order)
        self.proxies = {}          # mode -> {"out": Proc, "in": Proc}
        self.tmp = tempfile.mkdtemp(prefix=f"mesh-bench-http-{self.tag}-")
        os.chmod(self.tmp, 0o755)  # uid 1337 reads its config and writes its temp files
        # The target dir is shared with other builds, which may replace a binary while we
        # run: measure copies, taken once (and readable by uid 1337 wherever the checkout is).
        self.bins = dict(bins)
        for name in ("proxy", "control"):
            copy = os.path.join(self.tmp, os.path.basename(bins[name]))
            shutil.copy2(bins[name], copy)
            os.chmod(copy, 0o755)
            self.bins[name] = copy
        self.bin_ids = {n: f"{bins[n]} ({binary_id(self.bins[n])})" for n in ("proxy", "control")}
        self.kns = f"bench-http-{self.tag}-{int(time.time()) % 100000}"
        # The gateway pod's namespace, one per run (as istio-ingress is for the chart's
        # gateway): a namespace deleted in kube-local stays Terminating (no
        # controller-manager), so a fixed name could not be used twice.
        self.gw_ns = f"{self.kns}-ingress"
        self.kube_created = False
        self.gw_ns_created = False
        self.gw_checks = []        # per gateway load run: requests counted vs sent
        self.kubectl_bin = os.environ["KUBECTL"]
        self.cluster_ip = None
        self.mc = None
        self.ready_rss = {}

    # ------------------------------------------------------------ topology
    def link_of(self, mode, side):
        if side == "g":
            return GW_LINK
        return 2 * self.modes.index(base(mode)) + (1 if side == "c" else 2)

    def pod(self, mode, side):
        return f"mh{self.link_of(mode, side)}x{self.tag}"

    def ip(self, mode, side):
        return f"198.18.{self.link_of(mode, side)}.2"

    def ns_exec(self, ns, *args):
        return ["ip", "netns", "exec", ns, *args]

    def setup_netns(self):
        sh("ip", "netns", "add", self.router)
        self.namespaces.append(self.router)
        sh("ip", "-n", self.router, "link", "set", "lo", "up")
        sh(*self.ns_exec(self.router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"))
        pods = [(mode, side) for mode in self.modes if base(mode) == mode for side in "cs"]
        if "gateway" in self.modes:
            pods.append(("gateway", "g"))
        for mode, side in pods:
            i, pod = self.link_of(mode, side), self.pod(mode, side)
            sh("ip", "netns", "add", pod)
            self.namespaces.append(pod)
            sh("ip", "-n", pod, "link", "set", "lo", "up")
            a, b = f"hp{i}x{self.tag}"[:15], f"hr{i}x{self.tag}"[:15]
            sh("ip", "link", "add", a, "netns", pod, "type", "veth", "peer", "name", b,
               "netns", self.router)
            sh("ip", "-n", pod, "addr", "add", f"198.18.{i}.2/24", "dev", a)
            sh("ip", "-n", self.router, "addr", "add", f"198.18.{i}.1/24", "dev", b)
            sh("ip", "-n", pod, "link", "set", a, "up")
            sh("ip", "-n", self.router, "link", "set", b, "up")
            sh("ip", "-n", pod, "route", "add", "default", "via", f"198.18.{i}.1")
            if captured(mode, side):
                sh(*self.ns_exec(pod, self.bins["init"], *INIT_ARGS))

    def spawn(self, name, ns, cmd, tree=False, stop_signal=signal.SIGTERM, log_file=None,
              stdout=None):
        out = open(os.path.join(self.tmp, log_file or f"{name}.log"), "w")
        p = subprocess.Popen(self.ns_exec(ns, *cmd) if ns else cmd, stdin=subprocess.DEVNULL,
                             stdout=stdout or out, stderr=out, text=True)
        proc = Proc(name, p, tree, stop_signal)
        self.procs.append(proc)
        return proc

    def start_servers(self):
        for mode in self.modes:
            if base(mode) != mode:
                continue
            p = self.spawn(f"server-{mode}", self.pod(mode, "s"),
                           [self.bins["loadgen"], "http-server", str(APP_PORT), str(BODY)],
                           stdout=subprocess.PIPE)
            if p.p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"HTTP server in {mode} did not start")
            if mode in TCP_MODES:
                p = self.spawn(f"tcp-server-{mode}", self.pod(mode, "s"),
                               [self.bins["loadgen"], "server", str(TCP_BASE)],
                               stdout=subprocess.PIPE)
                if p.p.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"TCP server in {mode} did not start")

    # ------------------------------------------------------------ kube + mesh-control
    def kubectl(self, *args, input=None, check=True, timeout=300):
        return sh(self.kubectl_bin, *args, input=input, check=check, timeout=timeout)

    def service_yaml(self, name, endpoint_ip, selector=None, tcp=False):
        """A Service and its slice; `selector` names the server pod (its `app` label and
        name); `tcp`: also the TCP workloads' ports."""
        sel = f"\n  selector:\n    app: {selector}" if selector else ""
        target = (f"\n  targetRef: {{kind: Pod, name: {selector}, namespace: {self.kns}}}"
                  if selector else "")
        svc_tcp = "".join(f"\n  - {{name: {n}, port: {TCP_BASE + o}, targetPort: {TCP_BASE + o}, "
                          f"protocol: TCP}}" for n, o in TCP_PORTS) if tcp else ""
        slice_tcp = "".join(f"\n- {{name: {n}, port: {TCP_BASE + o}, protocol: TCP}}"
                            for n, o in TCP_PORTS) if tcp else ""
        return f"""---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {self.kns}
spec:{sel}
  ports:
  - {{name: http, port: {APP_PORT}, targetPort: {APP_PORT}, protocol: TCP}}{svc_tcp}
---
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: {self.kns}
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
endpoints:
- addresses: [{endpoint_ip}]
  conditions: {{ready: true}}{target}
ports:
- {{name: http, port: {APP_PORT}, protocol: TCP}}{slice_tcp}
"""

    def filler_yaml(self, start, count):
        # Endpoints in 198.18.250.0/24: never dialled (nothing talks to these Services).
        return "".join(self.service_yaml(f"fill-{i}", f"198.18.250.{i % 250 + 1}")
                       for i in range(start, start + count))

    def pod_yaml(self, name, app, account=None):
        """A pod; with `account` (a ServiceAccount), the label an injected pod with a
        workload identity carries, so mesh-control tells clients to use mTLS to it."""
        tls = ", security.istio.io/tlsMode: istio" if account else ""
        sa = f"\n  serviceAccountName: {account}" if account else ""
        return f"""---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {self.kns}
  labels: {{app: {app}, version: v1{tls}}}
spec:{sa}
  containers:
  - name: app
    image: mesh-bench/app
    ports: [{{name: http, containerPort: {APP_PORT}}}]
"""

    def set_pod_ip(self, name, ip, namespace=None):
        """kube-local has no kubelet: the pod stays Pending without an IP. mesh-control
        only knows a pod (labels, peer metadata, which Services front it) by its
        status.podIP, so it is written through the status subresource."""
        ns = namespace or self.kns
        pod = json.loads(self.kubectl("-n", ns, "get", "pod", name, "-o", "json").stdout)
        pod["status"].update({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                              "hostIP": "198.18.0.254"})
        path = f"{self.tmp}/{name}-status.json"
        with open(path, "w") as f:
            json.dump(pod, f)
        self.kubectl("replace", "--raw",
                     f"/api/v1/namespaces/{ns}/pods/{name}/status", "-f", path)

    def gateway_yaml(self):
        """The ingress gateway's objects: in its own namespace the pod (labels as the
        istio/gateway chart's, container ports as deploy/overlays/gateway's) and the
        Service istio-ingressgateway (80 -> 8080, 443 -> 8443, as that overlay's);
        in the bench namespace the Gateway bench-gw and, per gateway mode, its backend
        (Service, slice, Pod) and the VirtualService bound to the Gateway."""
        gw = self.gw_ns
        docs = f"""---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {GW_WORKLOAD}
  namespace: {gw}
---
apiVersion: v1
kind: Pod
metadata:
  name: {GW_POD}
  generateName: {GW_WORKLOAD}-{GW_HASH}-
  namespace: {gw}
  labels: {GW_POD_LABELS}
  ownerReferences:
  - {{apiVersion: apps/v1, kind: ReplicaSet, name: {GW_WORKLOAD}-{GW_HASH}, uid: {GW_OWNER_UID},
     controller: true}}
spec:
  serviceAccountName: {GW_WORKLOAD}
  containers:
  - name: istio-proxy
    image: mesh-bench/mesh-proxy
    args: [--role, gateway]
    ports:
    - {{name: http2, containerPort: {GW_PORT}, protocol: TCP}}
    - {{name: https, containerPort: 8443, protocol: TCP}}
    - {{name: http-envoy-prom, containerPort: 15090, protocol: TCP}}
---
apiVersion: v1
kind: Service
metadata:
  name: {GW_WORKLOAD}
  namespace: {gw}
  labels: {GW_LABELS}
spec:
  type: LoadBalancer
  selector: {GW_LABELS}
  ports:
  - {{name: status-port, port: 15021, targetPort: 15021, protocol: TCP}}
  - {{name: http2, port: {GW_NUMBER}, targetPort: {GW_PORT}, protocol: TCP}}
  - {{name: https, port: 443, targetPort: 8443, protocol: TCP}}
---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata:
  name: bench-gw
  namespace: {self.kns}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {GW_NUMBER}, name: http, protocol: HTTP}}
    hosts: ["*"]
"""
        for mode in GATEWAY_MODES:
            if mode not in self.modes:
                continue
            svc, backend = GW_SERVICE[mode], GW_BACKEND[mode]
            hosts = '"*"' if mode == "gateway" else GW_HOST[mode]
            docs += (self.service_yaml(svc, self.ip(mode, "s"), selector=backend)
                     + self.pod_yaml(backend, backend) + f"""---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: {svc}
  namespace: {self.kns}
spec:
  hosts: [{hosts}]
  gateways: [bench-gw]
  http:
  - name: {svc}-all
    match:
    - uri: {{prefix: /}}
    route:
    - destination: {{host: {svc}, port: {{number: {APP_PORT}}}}}
""")
        return docs

    def create_kube_objects(self):
        self.kubectl("create", "namespace", self.kns)
        self.kube_created = True
        if "mesh" in self.modes:
            mc, ms = self.ip("mesh", "c"), self.ip("mesh", "s")
            docs = (self.service_yaml("bench", ms, selector="bench-server", tcp=True)
                    + self.filler_yaml(0, SERVICES_SMALL - 1)
                    + self.pod_yaml("bench-client", "bench-client")
                    + self.pod_yaml("bench-server", "bench-server") + self.vs_yaml(False))
        else:
            # Without `mesh` (its Service `bench`), still 10 Services in the namespace.
            docs = self.filler_yaml(0, SERVICES_SMALL)
        if "gateway" in self.modes:
            self.kubectl("create", "namespace", self.gw_ns)
            self.gw_ns_created = True
            docs += self.gateway_yaml()
        mtls = "mesh-mtls" in self.modes
        if mtls:
            docs += "".join(f"""---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {sa}
  namespace: {self.kns}
""" for sa in ("bench-client", "bench-server"))
            docs += (self.service_yaml("bench-mtls", self.ip("mesh-mtls", "s"),
                                       selector="bench-server-mtls", tcp=True)
                     + self.pod_yaml("bench-client-mtls", "bench-client-mtls", "bench-client")
                     + self.pod_yaml("bench-server-mtls", "bench-server-mtls", "bench-server")
                     + self.vs_yaml(False, "bench-mtls"))
        path = f"{self.tmp}/objects.yaml"
        with open(path, "w") as f:
            f.write(docs)
        self.kubectl("apply", "-f", path)
        if "mesh" in self.modes:
            self.set_pod_ip("bench-client", mc)
            self.set_pod_ip("bench-server", ms)
        if "gateway" in self.modes:
            self.set_pod_ip(GW_POD, self.ip("gateway", "g"), self.gw_ns)
            for mode in GATEWAY_MODES:
                if mode in self.modes:
                    self.set_pod_ip(GW_BACKEND[mode], self.ip(mode, "s"))
        self.cluster_ips = {}
        for mode in self.modes:
            if is_mesh(mode) and mode == base(mode):
                c, srv = pod_names(mode)
                if mode != "mesh":
                    self.set_pod_ip(c, self.ip(mode, "c"))
                    self.set_pod_ip(srv, self.ip(mode, "s"))
                self.cluster_ips[mode] = self.kubectl(
                    "-n", self.kns, "get", "service", service_of(mode), "-o",
                    "jsonpath={.spec.clusterIP}").stdout.strip()
        if "mesh" in self.modes:
            self.cluster_ip = self.kubectl("-n", self.kns, "get", "service", "bench", "-o",
                                           "jsonpath={.spec.clusterIP}").stdout.strip()

    def start_mesh_control(self):
        sock = os.path.join(self.tmp, "kube.sock")
        host, port = "127.0.0.1", "6443"
        self.spawn("kube-bridge-host", None,
                   ["socat", f"UNIX-LISTEN:{sock},fork,mode=600", f"TCP:{host}:{port}"])
        for _ in range(50):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        self.spawn("kube-bridge-router", self.router,
                   ["socat", f"TCP-LISTEN:{port},bind={host},reuseaddr,fork",
                    f"UNIX-CONNECT:{sock}"])
        # With mesh-mtls, the CA too (its root in Secret istio-ca-secret of mesh-system,
        # made at first start and kept: the shared API server's other users see the same
        # root) and the TLS port 15012, which serves the config stream and the CA; the
        # plaintext port 15010 still serves the `mesh` mode's proxies.
        ca = (["--addr", "0.0.0.0:15012"] if "mesh-mtls" in self.modes else ["--no-ca"])
        if "mesh-mtls" in self.modes:
            self.kubectl("create", "namespace", "mesh-system", check=False)
        self.mc = self.spawn("mesh-control", self.router,
                             ["env", f"KUBECONFIG={os.environ['KUBECONFIG']}",
                              self.bins["control"], "serve", *ca,
                              "--plaintext-addr", "0.0.0.0:15010",
                              "--metrics-addr", "127.0.0.1:15014", "--log", "warn",
                              "--debounce", "50ms"])
        self.wait_for(lambda: self.mc_get("/readyz")[0] == "200", 60, "mesh-control ready")
        for mode, ip in self.cluster_ips.items():
            client, _ = pod_names(mode)
            # The Service with its endpoint, as the client pod's proxy will be told.
            key = f"addr/{ip}"
            self.wait_for(lambda: self.ip(mode, "s") in self.mc_get(
                f"/debug/config?proxy={self.kns}/{client}&key={key}")[1], 30,
                f"mesh-control serving {key} with the server pod's endpoint")
            self.wait_for(lambda: "bench-all" in self.mc_get(
                f"/debug/config?proxy={self.kns}/{client}&key={key}")[1], 30,
                "mesh-control serving the VirtualService's route")
            if mode == "mesh-mtls":
                self.wait_for(lambda: '"mtls":true' in self.mc_get(
                    f"/debug/config?proxy={self.kns}/{client}&key={key}")[1].replace(" ", ""),
                    30, "mesh-control marking the server pod's endpoint for mTLS")
        if "gateway" in self.modes:
            self.wait_for(self.gateway_served, 30,
                          f"mesh-control serving key `gateway` to {self.gw_ns}/{GW_POD} "
                          f"(listener {GW_PORT} for port {GW_NUMBER}, the backends' endpoints)")
        if "mesh-mtls" in self.modes:
            self.identity_files()

    def gateway_served(self):
        """mesh-control's answer for the gateway pod's key `gateway` has the listener
        on the targetPort with our Gateway and every gateway mode's backend endpoint."""
        cfg = json.loads(self.mc_get(
            f"/debug/config?proxy={self.gw_ns}/{GW_POD}&key=gateway")[1] or "{}")
        if cfg.get("kind") != "gateway" or f"{self.kns}/bench-gw" not in cfg.get("gateways", []):
            return False
        if not any(l.get("port") == GW_PORT and l.get("number") == GW_NUMBER
                   for l in cfg.get("listeners", [])):
            return False
        eps = json.dumps(cfg.get("clusters", []))
        return all(f'"{self.ip(m, "s")}:{APP_PORT}"' in eps for m in GATEWAY_MODES
                   if m in self.modes)

    def identity_files(self):
        """The mesh-mtls proxies' root certificate (ConfigMap istio-ca-root-cert, which
        mesh-control publishes in every namespace) and their ServiceAccount tokens
        (TokenRequest, audience istio-ca), as the kubelet would project them."""
        def root():
            r = self.kubectl("-n", self.kns, "get", "configmap", "istio-ca-root-cert", "-o",
                             "jsonpath={.data.root-cert\\.pem}", check=False)
            return r.stdout if "BEGIN CERTIFICATE" in r.stdout else None
        self.wait_for(root, 30, "ConfigMap istio-ca-root-cert in the bench namespace")
        self.root_cert = os.path.join(self.tmp, "root-cert.pem")
        with open(self.root_cert, "w") as f:
            f.write(root())
        self.tokens = {}
        req = os.path.join(self.tmp, "token-request.json")
        with open(req, "w") as f:
            json.dump({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                       "spec": {"audiences": [TOKEN_AUDIENCE], "expirationSeconds": 3600}}, f)
        for sa in ("bench-client", "bench-server"):
            out = self.kubectl("create", "--raw",
                               f"/api/v1/namespaces/{self.kns}/serviceaccounts/{sa}/token",
                               "-f", req).stdout
            path = os.path.join(self.tmp, f"token-{sa}")
            with open(path, "w") as f:
                f.write(json.loads(out)["status"]["token"])
            os.chown(path, 1337, 1337)
            os.chmod(path, 0o400)
            self.tokens[sa] = path

    def mc_get(self, path):
        r = sh(*self.ns_exec(self.router, "curl", "-s", "-o", "-", "-w", "\n%{http_code}",
                             "--max-time", "5", f"http://127.0.0.1:15014{path}"), check=False)
        body, _, code = r.stdout.rpartition("\n")
        return code.strip(), body

    def mc_counts(self):
        return json.loads(self.mc_get("/debug/objects")[1])["counts"]

    @staticmethod
    def wait_for(cond, timeout, what):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if cond():
                    return
            except (RuntimeError, ValueError, KeyError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}")

    # ------------------------------------------------------------ proxies
    def pod_get(self, ns, url):
        r = sh(*self.ns_exec(ns, "curl", "-s", "--max-time", "5", url), check=False)
        return r.stdout

    def start_mesh_proxies(self, mode="mesh"):
        procs = {}
        for side, name in zip(("out", "in"), pod_names(mode)):
            s = "c" if side == "out" else "s"
            ns = self.pod(mode, s)
            router = f"198.18.{self.link_of(mode, s)}.1"
            if mode == "mesh-mtls":
                # As the injector writes them under controlPlaneAuthPolicy MUTUAL_TLS, the
                # address being the router's IP (so the SAN is given).
                sa = "bench-client" if side == "out" else "bench-server"
                plane = ["--control-plane", f"{router}:15012",
                         "--control-plane-san", CONTROL_PLANE_SAN,
                         "--root-cert", self.root_cert, "--token-file", self.tokens[sa],
                         "--service-account", sa]
            else:
                plane = ["--control-plane", f"{router}:15010"]
            procs[side] = self.spawn(
                f"{mode}-proxy-{side}", ns,
                AS_PROXY + self.proxy_cmd(f"{mode}-{side}") + [*plane,
                            "--pod-name", name, "--pod-namespace", self.kns,
                            "--instance-ip", self.ip(mode, s),
                            "--admin-addr", "127.0.0.1:15021",
                            "--metrics-addr", "127.0.0.1:15090",
                            "--debug-addr", "127.0.0.1:15000"],
                stop_signal=signal.SIGINT)  # SIGINT: drain at once, no drain delay
        for side, s in (("out", "c"), ("in", "s")):
            ns = self.pod(mode, s)
            self.wait_for(lambda: sh(*self.ns_exec(ns, "curl", "-sf", "--max-time", "1",
                                                   "http://127.0.0.1:15021/healthz/ready"),
                                     check=False).returncode == 0, 20,
                          f"{mode} proxy {side} ready")
        self.proxies[mode] = procs

    def wait_ready(self, ns, what):
        self.wait_for(lambda: sh(*self.ns_exec(ns, "curl", "-sf", "--max-time", "1",
                                               "http://127.0.0.1:15021/healthz/ready"),
                                 check=False).returncode == 0, 20, f"{what} ready")

    def start_gateway(self):
        """The ingress gateway pod's only container, as the injector's gateway template
        writes it (`--role gateway`, the capture ports it passes but a gateway does not
        bind, the pod's identity as env), its control plane the plaintext stream; then
        until it listens on the Gateway's port (8080, from its config)."""
        if "gateway" in self.proxies:
            return
        ns, router = self.pod("gateway", "g"), f"198.18.{GW_LINK}.1"
        env = ["env", f"POD_NAME={GW_POD}", f"POD_NAMESPACE={self.gw_ns}",
               f"INSTANCE_IP={self.ip('gateway', 'g')}", f"SERVICE_ACCOUNT={GW_WORKLOAD}",
               f"ISTIO_META_WORKLOAD_NAME={GW_WORKLOAD}",
               f"ISTIO_META_OWNER=kubernetes://apis/apps/v1/namespaces/{self.gw_ns}"
               f"/deployments/{GW_WORKLOAD}",
               f"CANONICAL_SERVICE={GW_WORKLOAD}", "CANONICAL_REVISION=latest",
               f"APP_NAME={GW_WORKLOAD}"]
        gw = self.spawn("gateway-proxy", ns,
                        AS_PROXY + env + self.proxy_cmd("gateway") + ["--role", "gateway",
                                          "--outbound-port", "15001", "--inbound-port", "15006",
                                          "--admin-addr", "127.0.0.1:15021",
                                          "--metrics-addr", "127.0.0.1:15090",
                                          "--debug-addr", "127.0.0.1:15000",
                                          "--control-plane", f"{router}:15010"],
                        stop_signal=signal.SIGINT)
        self.wait_ready(ns, "gateway proxy")
        self.wait_for(lambda: f":{GW_PORT}" in sh(*self.ns_exec(
            ns, "ss", "-Hltn", f"sport = :{GW_PORT}"), check=False).stdout, 20,
            f"gateway listening on {GW_PORT}")
        self.proxies["gateway"] = {"gw": gw}

    def start_backend_sidecar(self):
        """gateway-mesh: the gateway (shared with `gateway`) and the backend pod's
        sidecar, inbound only (the backend sends nothing out)."""
        self.start_gateway()
        mode = "gateway-mesh"
        ns, router = self.pod(mode, "s"), f"198.18.{self.link_of(mode, 's')}.1"
        p = self.spawn(f"{mode}-proxy-in", ns,
                       AS_PROXY + self.proxy_cmd(f"{mode}-in") + [
                                   "--control-plane", f"{router}:15010",
                                   "--pod-name", GW_BACKEND[mode], "--pod-namespace", self.kns,
                                   "--instance-ip", self.ip(mode, "s"),
                                   "--admin-addr", "127.0.0.1:15021",
                                   "--metrics-addr", "127.0.0.1:15090",
                                   "--debug-addr", "127.0.0.1:15000"],
                       stop_signal=signal.SIGINT)
        self.wait_ready(ns, f"{mode} backend sidecar")
        self.proxies[mode] = {"gw": self.proxies["gateway"]["gw"], "in": p}

    def proxy_cmd(self, name):
        """mesh-proxy's command, behind MESH_PROXY_WRAP when it is set (a command prefix;
        `{name}` in it becomes the proxy's name: `mesh-out`, `gateway`...), as
        proxy/link/generate.sh runs the proxies under callgrind."""
        wrap = [w.replace("{name}", name)
                for w in shlex.split(os.environ.get("MESH_PROXY_WRAP", ""))]
        return wrap + [self.bins["proxy"]]

    def stop_mesh_proxies(self):
        for p in self.proxies.pop("mesh").values():
            p.stop()
            self.procs.remove(p)

    def start_nginx(self):
        procs = {}
        for side, s, port, upstream in (("out", "c", 15001, f"{self.ip('nginx', 's')}:{APP_PORT}"),
                                        ("in", "s", 15006, f"127.0.0.1:{APP_PORT}")):
            d = os.path.join(self.tmp, f"nginx-{side}")
            os.makedirs(d)
            os.chown(d, 1337, 1337)
            cfg = os.path.join(self.tmp, f"nginx-{side}.conf")
            with open(cfg, "w") as f:
                f.write(NGINX_CFG.format(dir=d, port=port, upstream=upstream, side=side))
            procs[side] = self.spawn(f"nginx-{side}", self.pod("nginx", s),
                                     AS_PROXY + [shutil.which("nginx") or "/usr/sbin/nginx",
                                                 "-c", cfg, "-p", d, "-e", f"{d}/error.log"],
                                     tree=True, stop_signal=signal.SIGTERM)
        self.proxies["nginx"] = procs

    def start_haproxy(self):
        procs = {}
        for side, s, port, upstream in (("out", "c", 15001, f"{self.ip('haproxy', 's')}:{APP_PORT}"),
                                        ("in", "s", 15006, f"127.0.0.1:{APP_PORT}")):
            cfg = os.path.join(self.tmp, f"haproxy-{side}.cfg")
            with open(cfg, "w") as f:
                f.write(HAPROXY_CFG.format(port=port, upstream=upstream, side=side))
            procs[side] = self.spawn(f"haproxy-{side}", self.pod("haproxy", s),
                                     AS_PROXY + [shutil.which("haproxy") or "/usr/sbin/haproxy",
                                                 "-f", cfg, "-db"])
        self.proxies["haproxy"] = procs

    # ------------------------------------------------------------ clients
    def target(self, mode):
        """(address the app dials, its port, Host header)."""
        if is_gateway(mode):
            # The gateway pod's IP and the Service's targetPort: where a LoadBalancer or a
            # nodePort delivers in the end (kube-local has no kube-proxy for port 80).
            return self.ip("gateway", "g"), GW_PORT, GW_HOST[mode]
        authority = f"{service_of(mode)}:{APP_PORT}"
        if is_mesh(mode):
            return self.cluster_ips[base(mode)], APP_PORT, authority
        return self.ip(mode, "s"), APP_PORT, authority

    def client(self, mode, *args, timeout=120):
        r = sh(*self.ns_exec(self.pod(mode, "c"), self.bins["loadgen"], "client", *args),
               timeout=timeout)
        return json.loads(r.stdout.strip().splitlines()[-1])

    def http_get(self, mode):
        host, port, auth = self.target(mode)
        r = self.client(mode, "http-get", host, str(port), auth, timeout=20)
        r["headers"] = dict(r["headers"])
        return r

    def load(self, mode, rate, seconds, sample_rss=False):
        """One load run; proxy CPU seconds over it and, if asked, the proxies' highest
        VmRSS sampled every 100 ms while it ran."""
        host, port, auth = self.target(mode)
        procs = self.proxies.get(base(mode), {})
        if mode == "mesh-policy":
            self.policy(True)
        gw_before = self.mesh_series("gw", mode)[0] if is_gateway(mode) else None
        cpu0 = {k: p.cpu_split() for k, p in procs.items()}
        ev0 = {k: p.events() for k, p in procs.items()}
        m0, w0 = busy_cpu_seconds(), time.monotonic()
        cmd = self.ns_exec(self.pod(mode, "c"), self.bins["loadgen"], "client", "http", host,
                           str(port), auth, str(CONNS), f"{rate:g}", f"{seconds:g}")
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak = {k: 0 for k in procs}
        while p.poll() is None:
            if sample_rss:
                for k, pr in procs.items():
                    peak[k] = max(peak[k], pr.rss())
            time.sleep(0.1)
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"{mode} load failed: {err.strip()[-500:]}")
        r = json.loads(out.strip().splitlines()[-1])
        if not r.get("requests"):
            raise RuntimeError(f"{mode}: no request was answered in {seconds} s of load "
                               f"(the client said: {err.strip()[-300:]})")
        r["loadavg"] = float(open("/proc/loadavg").read().split()[0])
        # Over the client's whole life (its warm-up included), so a lower bound.
        r["machine_busy"] = (busy_cpu_seconds() - m0) / ((os.cpu_count() or 1)
                                                         * (time.monotonic() - w0))
        split = {k: [a - b for a, b in zip(p.cpu_split(), cpu0[k])] for k, p in procs.items()}
        r["cpu_user_sys_s"] = split
        r["cpu_s"] = {k: sum(v) for k, v in split.items()}
        r["cpu_s_per_1k"] = {k: v / (r["requests"] / 1000) for k, v in r["cpu_s"].items()}
        # Per request, over the client's whole life (warm-up included), like the CPU.
        r["events_per_req"] = {k: {e: (n - ev0[k][e]) / r["requests"]
                                   for e, n in p.events().items()}
                               for k, p in procs.items()}
        if sample_rss:
            r["rss_peak_kb"] = peak
        if gw_before is not None:
            # The gateway's istio_requests_total (reporter=source, the backend's Service)
            # against what the client sent: the measured requests and the warm-up ones.
            # (Scraped after the CPU reading above, so not charged to the requests.)
            sent = r["requests"] + LOADGEN_WARMUP * CONNS
            deadline = time.time() + 3
            while True:
                counted = self.mesh_series("gw", mode)[0] - gw_before
                if counted >= sent or time.time() > deadline:
                    break
                time.sleep(0.1)
            r["gw_counted"], r["gw_sent"] = counted, sent
            self.gw_checks.append({"mode": mode, "rate": rate, "counted": counted, "sent": sent})
            if counted != sent:
                log(f"  {mode}: the gateway counted {counted} requests, {sent} were sent")
        if mode == "mesh-policy":
            self.policy(False)
        if r["non_200"]:
            raise RuntimeError(f"{mode}: {r['non_200']} answers were not 200")
        return r

    def vs_yaml(self, policy, host="bench"):
        """The VirtualService `host` (of Service `host`); with `policy`, its route gets
        mesh-policy's timeout and retries."""
        extra = ("\n    timeout: 5s\n    retries: {attempts: 2, perTryTimeout: 2s, "
                 "retryOn: \"5xx,reset,connect-failure\"}") if policy else ""
        return f"""---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: {host}
  namespace: {self.kns}
spec:
  hosts: [{host}]
  http:
  - name: bench-all
    match:
    - uri: {{prefix: /}}
    route:
    - destination: {{host: {host}, port: {{number: {APP_PORT}}}}}{extra}
"""

    def policy(self, on):
        """Applies (or removes) mesh-policy's objects and waits until the client pod's
        proxy holds (or no longer holds) them."""
        path = f"{self.tmp}/policy.yaml"
        with open(path, "w") as f:
            f.write(self.vs_yaml(on) + (POLICY_DR.format(ns=self.kns) if on else ""))
        self.kubectl("apply", "-f", path)
        if not on:
            self.kubectl("-n", self.kns, "delete", "destinationrule", "bench",
                         "--ignore-not-found")

        def held():
            dump = self.pod_get(self.pod("mesh", "c"), "http://127.0.0.1:15000/config_dump")
            svc = [x for x in json.loads(dump or "{}").get("resources", [])
                   if x["key"] == f"addr/{self.cluster_ip}"]
            text = json.dumps(svc)
            return ("maxConnections" in text and "perTryTimeoutMs" in text) == on

        self.wait_for(held, 30, f"client proxy {'holding' if on else 'without'} the policy")

    # ------------------------------------------------------------ TCP (L4)
    def tcp_host(self, mode):
        """What the TCP client dials: the Service's ClusterIP in the mesh modes (the
        outbound proxy picks the endpoint), the server pod's IP in direct."""
        return self.cluster_ips[mode] if is_mesh(mode) else self.ip(mode, "s")

    def tcp_client(self, mode, *args, timeout=120):
        env = ["env", f"BASE_PORT={TCP_BASE}"]
        r = sh(*self.ns_exec(self.pod(mode, "c"), *env, self.bins["loadgen"], "client",
                             args[0], self.tcp_host(mode), *args[1:]), timeout=timeout)
        return json.loads(r.stdout.strip().splitlines()[-1])

    def prove_tcp_path(self, mode):
        """One connection to the identity port: reached at the server pod's IP, seen from
        the client (direct) or from 127.0.0.6 (mesh: the inbound proxy delivered it); in
        the mesh modes the server-side proxy counted one more TCP connection, with
        mTLS and the client's SPIFFE id in mesh-mtls, without in mesh."""
        metric = "istio_tcp_connections_opened_total"
        sec = ('connection_security_policy="mutual_tls"' if mode == "mesh-mtls"
               else 'connection_security_policy="none"')
        before = self.mesh_series("in", mode, metric, ()) if is_mesh(mode) else (0, [])
        r = self.tcp_client(mode, "identity")
        reached, saw = r["reached"][0], r["server_saw"][0]
        ok = reached == self.ip(mode, "s")
        why = [f"reached {reached}:{r['reached'][1]}, server saw {saw}:{r['server_saw'][1]}"]
        if is_mesh(mode):
            ok &= saw == "127.0.0.6"
            # The proxy reports a connection once it closed or on the next scrape.
            time.sleep(0.3)
            after = self.mesh_series("in", mode, metric, ())
            moved = after[0] - before[0]
            ok &= moved == 1
            line = next((x for x in after[1] if x not in before[1]), after[1][-1]
                        if after[1] else "")
            ok &= sec in line
            why.append(f"server proxy {metric} +{moved}, {sec}")
            if mode == "mesh-mtls":
                principal = (f'source_principal="spiffe://cluster.local/ns/{self.kns}'
                             f'/sa/bench-client"')
                ok &= principal in line
                why.append(principal)
            r["server_side_series"] = line
        else:
            ok &= saw == self.ip(mode, "c")
        r["ok"], r["why"] = ok, "; ".join(why)
        if not ok:
            raise RuntimeError(f"{mode}: TCP path check failed: {json.dumps(r)}")
        return r

    def tcp_run(self):
        """Per repetition, the modes in a random order: one bulk stream, 64-byte
        request/response on one connection, new connections (one client, then 4), each
        for BENCH_TCP_SECONDS; the proxies' CPU over the bulk run."""
        modes = [m for m in self.modes if m in TCP_MODES]
        secs = str(float(os.environ.get("BENCH_TCP_SECONDS", "5")))
        res = {m: {"bulk": [], "cpu_per_gb": [], "lat": [], "conn": [], "conn4": []}
               for m in modes}
        for rep in range(self.reps):
            order = modes[:]
            random.shuffle(order)
            for mode in order:
                procs = self.proxies.get(mode, {})
                c0 = {k: p.cpu() for k, p in procs.items()}
                b = self.tcp_client(mode, "bulk", "1", secs)
                res[mode]["bulk"].append(b["gbit_s"])
                res[mode]["cpu_per_gb"].append(
                    {k: (p.cpu() - c0[k]) / (b["bytes"] / 1e9) for k, p in procs.items()})
                res[mode]["lat"].append(self.tcp_client(mode, "latency", secs))
                res[mode]["conn"].append(self.tcp_client(mode, "connrate", secs)["per_s"])
                res[mode]["conn4"].append(self.tcp_client(mode, "connrate", secs, "4")["per_s"])
                l = res[mode]["lat"][-1]
                log(f"  tcp rep {rep + 1}/{self.reps} {mode:9s} bulk {b['gbit_s']:6.2f} Gbit/s  "
                    f"64 B RR p50 {l['p50_us']:7.1f} p99 {l['p99_us']:7.1f} µs  conn/s "
                    f"{res[mode]['conn'][-1]:7.0f} / {res[mode]['conn4'][-1]:7.0f}")
        return res

    # ------------------------------------------------------------ checks
    def mesh_series(self, side, mode="mesh", metric="istio_requests_total", extra=()):
        """The sum and the lines of `metric` on one of `mode`'s proxies for its Service,
        at that proxy's reporter, with every label of `extra` too."""
        if side == "gw":
            ns, reporter = self.pod("gateway", "g"), "source"
        else:
            ns = self.pod(mode, "c" if side == "out" else "s")
            reporter = "source" if side == "out" else "destination"
        text = self.pod_get(ns, "http://127.0.0.1:15090/stats/prometheus")
        dest = f'destination_service="{service_of(mode)}.{self.kns}.svc.cluster.local"'
        total, lines = 0, []
        for line in text.splitlines():
            if (line.startswith(metric + "{") and f'reporter="{reporter}"' in line
                    and dest in line and all(e in line for e in extra)):
                total += int(float(line.rsplit(" ", 1)[1]))
                lines.append(line)
        return total, lines

    def mesh_requests(self, side, mode="mesh"):
        """`istio_requests_total` answered 200, on one of `mode`'s proxies."""
        return self.mesh_series(side, mode, "istio_requests_total", ('response_code="200"',))

    def prove_gateway_path(self, mode):
        """One GET through the gateway: 200 with the backend's 1 KB, reached at the
        backend pod's IP, seen from the gateway pod (gateway) or from 127.0.0.6 (the
        backend's sidecar delivered it: gateway-mesh); the gateway's
        istio_requests_total (reporter=source, the backend Service, 200) moved by exactly
        one with the gateway's workload labels, and the sidecar's (reporter=destination)
        too in gateway-mesh; the gateway holds our Gateway's listener on 8080 for port 80."""
        sides = sides_of(mode)
        before = {s: self.mesh_requests(s, mode)[0] for s in sides}
        r = self.http_get(mode)
        h = r["headers"]
        ok, why = r["status"] == 200 and r["body_len"] == BODY, []
        peer_ip = h.get("x-peer", ":").rsplit(":", 1)[0]
        ok &= h.get("x-local", "") == f"{self.ip(mode, 's')}:{APP_PORT}"
        ok &= peer_ip == (self.ip("gateway", "g") if mode == "gateway" else "127.0.0.6")
        # Reported when the exchange ends: give the proxies a moment.
        deadline = time.time() + 3
        while True:
            after = {s: self.mesh_requests(s, mode) for s in sides}
            moved = {s: after[s][0] - before[s] for s in sides}
            if all(v >= 1 for v in moved.values()) or time.time() > deadline:
                break
            time.sleep(0.1)
        for s in sides:
            ok &= moved[s] == 1
            why.append(f"{s}: istio_requests_total +{moved[s]}")
        line = next((x for x in after["gw"][1]), "")
        for label in (f'source_workload="{GW_WORKLOAD}"',
                      f'source_workload_namespace="{self.gw_ns}"'):
            ok &= label in line
            why.append(label)
        r["gateway_series"] = line
        if "in" in sides:
            r["server_side_series"] = next((x for x in after["in"][1]), "")
        dump = json.loads(self.pod_get(self.pod("gateway", "g"),
                                       "http://127.0.0.1:15000/config_dump") or "{}")
        res = next((x["resource"] for x in dump.get("resources", [])
                    if x["key"] == "gateway"), {})
        names = res.get("gateways", [])
        ours = f"{self.kns}/bench-gw"
        listeners = [(l.get("port"), l.get("number")) for l in res.get("listeners", [])]
        ok &= ours in names and (GW_PORT, GW_NUMBER) in listeners
        foreign = [n for n in names if n != ours]
        r["gateway_config"] = {"gateways": names, "listeners": listeners}
        why.append(f"gateway holds Gateway {ours}, listener {GW_PORT} for port {GW_NUMBER}")
        if foreign:
            # The API server is shared: a Gateway of anyone's that selects
            # istio: ingressgateway selects this pod too (merged, as Istio does).
            why.append(f"also selected by Gateways of other users of kube-local: "
                       f"{', '.join(foreign)} (listeners {listeners})")
        r["ok"], r["why"] = ok, "; ".join(why)
        if not ok:
            raise RuntimeError(f"{mode}: path check failed: {json.dumps(r)}")
        return r

    def prove_path(self, mode):
        if is_gateway(mode):
            return self.prove_gateway_path(mode)
        if base(mode) != mode:
            self.policy(True)
            r = self.prove_path(base(mode))
            self.policy(False)
            r["why"] += "; with the policy DestinationRule and route retries/timeout held"
            return r
        before = ({s: self.mesh_requests(s, mode)[0] for s in ("out", "in")}
                  if is_mesh(mode) else {})
        r = self.http_get(mode)
        h = r["headers"]
        ok, why = r["status"] == 200 and r["body_len"] == BODY, []
        peer_ip = h.get("x-peer", ":").rsplit(":", 1)[0]
        local = h.get("x-local", "")
        client_port = r["client_local"].rsplit(":", 1)[1]
        if mode == "direct":
            ok &= peer_ip == self.ip(mode, "c") and h["x-peer"].rsplit(":", 1)[1] == client_port
            ok &= local == f"{self.ip(mode, 's')}:{APP_PORT}"
        elif is_mesh(mode):
            after = {s: self.mesh_requests(s, mode) for s in ("out", "in")}
            # The outbound proxy chose the endpoint (the server pod, from the EndpointSlice)
            # and the inbound proxy delivered it from Istio's passthrough source.
            ok &= local == f"{self.ip(mode, 's')}:{APP_PORT}" and peer_ip == "127.0.0.6"
            for s in ("out", "in"):
                moved = after[s][0] - before[s]
                ok &= moved == 1
                why.append(f"{s}: istio_requests_total +{moved}")
            labels = after["in"][1][0] if after["in"][1] else ""
            r["server_side_series"] = labels
            # mTLS, as the server side saw it: the client's verified SPIFFE id.
            sec = ('connection_security_policy="mutual_tls"' if mode == "mesh-mtls"
                   else 'connection_security_policy="none"')
            ok &= sec in labels
            why.append(sec)
            if mode == "mesh-mtls":
                principal = (f'source_principal="spiffe://cluster.local/ns/{self.kns}'
                             f'/sa/bench-client"')
                ok &= principal in labels
                why.append(principal)
            # The outbound proxy holds the ClusterIP's Service with the VirtualService's
            # rule (a catch-all prefix match, so every request takes it). (/debug/route would
            # say so per request, but mesh-proxy's admin parser drops the query string, so
            # it answers "host= is required" to every query.)
            dump = self.pod_get(self.pod(mode, "c"), "http://127.0.0.1:15000/config_dump")
            held = [x for x in json.loads(dump)["resources"]
                    if x["key"] == f"addr/{self.cluster_ips[mode]}"]
            ok &= bool(held) and "bench-all" in json.dumps(held)
            why.append("client proxy holds route bench-all of VirtualService bench")
        else:
            ok &= local == f"127.0.0.1:{APP_PORT}" and peer_ip == "127.0.0.1"
            ok &= h.get("x-via-out") == f"{mode}-out" and h.get("x-via-in") == f"{mode}-in"
            why.append(f"x-via-out={h.get('x-via-out')} x-via-in={h.get('x-via-in')}")
        r["ok"], r["why"] = ok, "; ".join(why)
        if not ok:
            raise RuntimeError(f"{mode}: path check failed: {json.dumps(r)}")
        return r

    def config_keys(self, side):
        ns = self.pod("mesh", "c" if side == "out" else "s")
        d = json.loads(self.pod_get(ns, "http://127.0.0.1:15000/config_dump") or "{}")
        return [x["key"] for x in d.get("resources", [])]

    # ------------------------------------------------------------ phases
    def run(self):
        res = {m: {"fixed": [], "unbounded": []} for m in self.modes}
        for rep in range(self.reps):
            order = self.modes[:]
            random.shuffle(order)
            for mode in order:
                f = self.load(mode, RATE, self.seconds, sample_rss=True)
                u = self.load(mode, 0, self.useconds)
                res[mode]["fixed"].append(f)
                res[mode]["unbounded"].append(u)
                log(f"  rep {rep + 1}/{self.reps} {mode:8s} 1k/s p50 {f['p50_us']:7.1f} "
                    f"p99 {f['p99_us']:7.1f} µs ({f['rps']:.0f} req/s)   unbounded "
                    f"{u['rps']:8.0f} req/s")
        return res

    def idle_rss(self):
        return {m: {k: p.rss() for k, p in procs.items()} for m, procs in self.proxies.items()}

    def scale_point(self, label):
        """Fresh mesh proxies: path check, idle RSS, then 1,000 req/s with RSS sampled."""
        self.start_mesh_proxies()
        self.prove_path("mesh")
        time.sleep(0.5)
        idle = {k: p.rss() for k, p in self.proxies["mesh"].items()}
        f = self.load("mesh", RATE, self.seconds, sample_rss=True)
        keys = {s: self.config_keys(s) for s in ("out", "in")}
        counts = self.mc_counts()
        log(f"  {label}: cluster Services {counts['services']}, proxy keys out "
            f"{len(keys['out'])} in {len(keys['in'])}, RSS idle {idle}, at 1k/s "
            f"{f['rss_peak_kb']}")
        return {"idle_kb": idle, "load_kb": f["rss_peak_kb"], "keys": keys,
                "cluster_services": counts["services"], "p99_us": f["p99_us"]}

    def services_phase(self):
        small = self.scale_point(f"{SERVICES_SMALL} Services in the namespace")
        # The proxies of the first point stay up through the change: a proxy subscribed
        # to a few keys must not be pushed the new Services at all.
        running_before = {k: p.rss() for k, p in self.proxies["mesh"].items()}
        before = self.mc_counts()
        path = f"{self.tmp}/more-services.yaml"
        with open(path, "w") as f:
            f.write(self.filler_yaml(SERVICES_SMALL - 1, SERVICES_LARGE - SERVICES_SMALL))
        t = time.time()
        self.kubectl("apply", "-f", path, timeout=600)
        applied_s = time.time() - t
        last = f"host/fill-{SERVICES_LARGE - 2}.{self.kns}"
        self.wait_for(lambda: "198.18.250." in self.mc_get(
            f"/debug/config?proxy={self.kns}/bench-client&key={last}")[1], 120,
            f"mesh-control serving the last Service applied ({last})")
        log(f"  applied {SERVICES_LARGE - SERVICES_SMALL} Services + slices in {applied_s:.1f} s; "
            f"mesh-control sees {self.mc_counts()['services']} Services")
        time.sleep(1.0)
        after_apply = {k: p.rss() for k, p in self.proxies["mesh"].items()}
        f = self.load("mesh", RATE, self.seconds, sample_rss=True)
        running = {"idle_before_kb": running_before, "idle_after_apply_kb": after_apply,
                   "idle_after_load_kb": {k: p.rss() for k, p in self.proxies["mesh"].items()},
                   "load_after_kb": f["rss_peak_kb"],
                   "keys_after": {s: len(self.config_keys(s)) for s in ("out", "in")}}
        self.stop_mesh_proxies()
        large = self.scale_point(f"{SERVICES_LARGE} Services in the namespace")
        return {"small": small, "large": large, "running": running, "apply_s": applied_s,
                "services_in_namespace": [SERVICES_SMALL, SERVICES_LARGE]}

    def setup(self):
        self.setup_netns()
        self.create_kube_objects()
        self.start_mesh_control()
        self.start_servers()
        for mode in self.modes[1:]:
            if base(mode) != mode:
                continue
            {"mesh": self.start_mesh_proxies,
             "mesh-mtls": lambda: self.start_mesh_proxies("mesh-mtls"),
             "nginx": self.start_nginx, "haproxy": self.start_haproxy,
             "gateway": self.start_gateway, "gateway-mesh": self.start_backend_sidecar}[mode]()
        time.sleep(0.5)
        for mode, procs in self.proxies.items():
            for side, p in procs.items():
                if not p.alive():
                    raise RuntimeError(f"{mode} {side} exited at start; see {self.tmp}")
        # Before any request: the mesh proxies hold only their own pod's key.
        self.ready_rss = self.idle_rss()

    def teardown(self):
        for p in reversed(self.procs):
            try:
                p.stop()
            except Exception as e:  # noqa: BLE001 - keep cleaning up
                log(f"stopping {p.name}: {e}")
        for ns in self.namespaces:
            # Anything left in our namespaces was started by this script.
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
            sh("ip", "netns", "del", ns, check=False)
        if self.kube_created:
            # No controller-manager in kube-local: delete what is inside ourselves, so the
            # shared API server (and everyone's mesh-control) does not keep 1,000
            # Services; the namespace itself then stays Terminating.
            for kind in ("virtualservices.networking.istio.io", "gateways.networking.istio.io",
                         "endpointslices.discovery.k8s.io", "services", "pods",
                         "serviceaccounts"):
                self.kubectl("-n", self.kns, "delete", kind, "--all", "--grace-period=0",
                             "--force", "--wait=false", check=False, timeout=300)
            self.kubectl("delete", "namespace", self.kns, "--wait=false", check=False)
        if self.gw_ns_created:
            for kind in ("services", "pods", "serviceaccounts"):
                self.kubectl("-n", self.gw_ns, "delete", kind, "--all", "--grace-period=0",
                             "--force", "--wait=false", check=False, timeout=300)
            self.kubectl("delete", "namespace", self.gw_ns, "--wait=false", check=False)
        if os.environ.get("BENCH_KEEP_LOGS"):
            log(f"logs kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


NGINX_CFG = """worker_processes 2;
daemon off;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    upstream app {{
        server {upstream};
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {port} reuseport;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            add_header x-via-{side} nginx-{side};
        }}
    }}
}}
"""

HAPROXY_CFG = """global
    maxconn 8000
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
frontend capture
    bind 0.0.0.0:{port}
    http-response add-header x-via-{side} haproxy-{side}
    default_backend app
backend app
    server s {upstream}
"""


# ---------------------------------------------------------------- report

def fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def verdict(value, limit):
    if value is None:
        return "n/a"
    return "met" if value <= limit else "MISSED"


def summarize(res, idle, ready, idle_cpu):
    s = {}
    for mode, r in res.items():
        f, u = r["fixed"], r["unbounded"]
        row = {q: med([x[f"{q}_us"] for x in f]) for q in ("p50", "p90", "p99", "p999", "mean")}
        row["rate"] = med([x["rps"] for x in f])
        row["late_p99"] = med([x["late_p99_us"] for x in f])
        row["p99_best"] = min(x["p99_us"] for x in f)
        row["busy_fixed"] = med([x["machine_busy"] for x in f])
        row["loadavg_fixed"] = med([x.get("loadavg") for x in f])
        sides = sides_of(mode)
        cpu_tot = {k: sum(sum(x["cpu_user_sys_s"][k]) for x in f) for k in sides}
        row["sys_share_fixed"] = {k: (sum(x["cpu_user_sys_s"][k][1] for x in f) / v if v else None)
                                  for k, v in cpu_tot.items()}
        row["max_rps"] = med([x["rps"] for x in u])
        row["u_p50"] = med([x["p50_us"] for x in u])
        row["u_p99"] = med([x["p99_us"] for x in u])
        row["u_busy"] = med([x["machine_busy"] for x in u])
        row["cpu_1k"] = {k: med([x["cpu_s_per_1k"][k] for x in f]) for k in sides}
        row["cpu_1k_u"] = {k: med([x["cpu_s_per_1k"][k] for x in u]) for k in sides}
        row["events_fixed"] = {k: {e: med([x["events_per_req"][k][e] for x in f])
                                   for e in ("minflt", "majflt", "vcsw", "ivcsw",
                                             "tcp_out_segs")}
                               for k in sides if all(k in x.get("events_per_req", {}) for x in f)}
        row["rss_idle"] = idle.get(mode, {})
        row["rss_ready"] = ready.get(mode, {})
        row["idle_cpu_s"] = idle_cpu.get(mode, {})
        row["rss_load"] = {k: max(x["rss_peak_kb"][k] for x in f) for k in sides}
        if is_gateway(mode):
            row["gw_counted"] = sum(x["gw_counted"] for x in f + u)
            row["gw_sent"] = sum(x["gw_sent"] for x in f + u)
            row["gw_runs_exact"] = sum(x["gw_counted"] == x["gw_sent"] for x in f + u)
            row["gw_runs"] = len(f + u)
        s[mode] = row
    d = s["direct"]
    for mode, row in s.items():
        row["added"] = {q: (row[q] - d[q]) if row[q] is not None else None
                        for q in ("p50", "p90", "p99")}
        row["added_p99_best"] = row["p99_best"] - d["p99_best"]
    return s


def report(s, scale, paths, meta):
    out = []
    out.append(f"HTTP/1.1 benchmark: {meta['reps']} interleaved repetitions; {CONNS} keep-alive "
               f"connections, {BODY} B answers; {meta['seconds']:g} s at {RATE:g} req/s and "
               f"{meta['useconds']:g} s unbounded per repetition; medians of the repetitions.")
    out.append(f"{meta['date']}, {meta['cpus']} CPUs, commit {meta['commit']}")
    out.append(f"mesh-proxy {meta['proxy_bin']}; mesh-control {meta['control_bin']}")
    out.append(f"kube-local namespace {meta['kns']}"
               + (f", Service bench ClusterIP {meta['cluster_ip']}" if meta['cluster_ip'] else "")
               + (f", gateway pod {meta['gw_ns']}/{GW_POD}" if meta.get('gw_ns') else "")
               + "; Pods with status.podIP set (peer labels known)")
    out.append("")
    out.append("path check:")
    for mode, r in paths.items():
        h = r["headers"]
        out.append(f"  {mode:8s} {'ok' if r['ok'] else 'FAILED'}: 200, {r['body_len']} B, server "
                   f"reached at {h.get('x-local')} saw {h.get('x-peer')} (client "
                   f"{r['client_local']}) {r['why']}")
    if "mesh" in paths and paths["mesh"].get("server_side_series"):
        out.append(f"  server-side proxy's series: {paths['mesh']['server_side_series'][:400]}")
    for m in GATEWAY_MODES:
        if m in paths:
            out.append(f"  {m}: gateway's series: {paths[m]['gateway_series'][:500]}")
            if paths[m].get("server_side_series"):
                out.append(f"  {m}: backend sidecar's series: "
                           f"{paths[m]['server_side_series'][:500]}")
    out.append("")
    out.append(f"at {RATE:g} req/s (latency of a request from its write to the end of its body; "
               "added = minus direct; CPU s per 1,000 requests and RSS for the outbound / "
               "inbound proxy; gateway: the gateway proxy; gateway-mesh: the gateway / the "
               "backend's inbound sidecar):")
    out.append("")
    out.append("| mode | req/s (send lag p99 µs) | p50 µs | p90 µs | p99 µs | p99.9 µs | added p50 / p90 / p99 µs "
               "| CPU s/1k req out / in | RSS idle KiB out / in | RSS at 1k/s KiB out / in |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for mode, r in s.items():
        a = r["added"]
        two = lambda dct, spec: " / ".join(fmt(dct.get(k), spec) for k in sides_of(mode)) \
            if dct else "-"
        out.append(f"| {mode} | {fmt(r['rate'], '.0f')} ({fmt(r['late_p99'], '.0f')}) | {fmt(r['p50'])} | {fmt(r['p90'])} "
                   f"| {fmt(r['p99'])} | {fmt(r['p999'])} | "
                   f"{'-' if mode == 'direct' else ' / '.join(fmt(a[q]) for q in ('p50', 'p90', 'p99'))} "
                   f"| {two(r['cpu_1k'], '.4f')} | {two(r['rss_idle'], 'd')} "
                   f"| {two(r['rss_load'], 'd')} |")
    out.append("")
    out.append("")
    out.append("whole machine busy during the 1,000 req/s runs (every tenant of the shared VM; "
               "this benchmark alone needs a fraction of one CPU), and the proxies' kernel share "
               "of their CPU time (stime / (utime + stime)), out / in:")
    for mode, r in s.items():
        # None: no CPU seen (a proxy behind MESH_PROXY_WRAP is measured as its wrapper).
        ks = " / ".join("-" if r["sys_share_fixed"].get(k) is None
                        else f"{r['sys_share_fixed'][k]:.0%}" for k in sides_of(mode)) \
            if r["sys_share_fixed"] else "-"
        out.append(f"  {mode:8s} machine {r['busy_fixed']:.0%}   kernel share {ks}   "
                   f"p99 of the best repetition {r['p99_best']:.1f} µs")
    out.append(f"load average at start / end: {meta['loadavg'][0]} / {meta['loadavg'][1]}")
    for m in MESH_MODES + GATEWAY_MODES:
        if s.get(m, {}).get("rss_idle_anon_file"):
            sp = s[m]["rss_idle_anon_file"]
            out.append(f"{m} proxy idle RSS split (anonymous + file pages, KiB): "
                       + ", ".join(f"{k} {sp[k][0]} + {sp[k][1]}" for k in sides_of(m)))
    out.append(f"proxy RSS KiB at ready, before any request (out / in; gateway: gw; "
               f"gateway-mesh: gw / in), and CPU s used while idle for {IDLE_CPU_WINDOW:g} s "
               f"after the path check:")
    for mode, r in s.items():
        if r["rss_ready"]:
            sd = sides_of(mode)
            out.append(f"  {mode:8s} ready {' / '.join(str(r['rss_ready'][k]) for k in sd)}   "
                       f"idle CPU {' / '.join(format(r['idle_cpu_s'][k], '.2f') for k in sd)} s")
    out.append("per request at the fixed rate, per proxy (out / in; median of repetitions): "
               "minor / major page faults, voluntary / involuntary context switches, "
               "TCP segments sent in its pod:")
    for mode, r in s.items():
        if r.get("events_fixed"):
            out.append(f"  {mode:8s} " + "   ".join(
                f"{k} {e['minflt']:.3f} / {e['majflt']:.3f}, {e['vcsw']:.2f} / {e['ivcsw']:.2f}, "
                f"{e['tcp_out_segs']:.2f}"
                for k, e in r["events_fixed"].items()))
    out.append("")
    out.append(f"unbounded ({CONNS} connections as fast as they go; the whole machine's busy share):")
    out.append("")
    out.append("| mode | max req/s (ratio) | p50 µs | p99 µs | CPU s/1k req out / in | machine busy |")
    out.append("|---|---|---|---|---|---|")
    base = s["direct"]["max_rps"]
    for mode, r in s.items():
        cpu = " / ".join(fmt(r["cpu_1k_u"].get(k), ".4f") for k in sides_of(mode)) \
            if r["cpu_1k_u"] else "-"
        out.append(f"| {mode} | {fmt(r['max_rps'], '.0f')} ({r['max_rps'] / base:.2f}) "
                   f"| {fmt(r['u_p50'])} | {fmt(r['u_p99'])} | {cpu} | {r['u_busy']:.0%} |")
    gw_modes = [m for m in GATEWAY_MODES if m in s]
    if gw_modes:
        out.append("")
        out.extend(gateway_report(s, gw_modes, paths))
    if scale:
        sm, lg, rn = scale["small"], scale["large"], scale["running"]
        out.append("")
        out.append(f"mesh-proxy RSS with {SERVICES_SMALL} vs {SERVICES_LARGE} Services in the "
                   f"namespace (whole cluster: {sm['cluster_services']} vs "
                   f"{lg['cluster_services']} Services; {SERVICES_LARGE - SERVICES_SMALL} more "
                   f"applied in {scale['apply_s']:.1f} s), fresh proxies each, KiB out / in:")
        out.append("")
        out.append("| Services | keys held out / in | RSS idle | RSS at 1k/s | p99 µs at 1k/s |")
        out.append("|---|---|---|---|---|")
        for n, p in ((SERVICES_SMALL, sm), (SERVICES_LARGE, lg)):
            out.append(f"| {n} | {len(p['keys']['out'])} / {len(p['keys']['in'])} "
                       f"| {p['idle_kb']['out']} / {p['idle_kb']['in']} "
                       f"| {p['load_kb']['out']} / {p['load_kb']['in']} | {p['p99_us']:.1f} |")
        out.append(f"  keys the outbound proxy holds: {', '.join(sm['keys']['out'])}")
        kb = lambda d: f"{d['out']} / {d['in']}"
        out.append(f"  the first point's proxies, kept running through the apply: "
                   f"{kb(rn['idle_before_kb'])} after their 1k/s run, "
                   f"{kb(rn['idle_after_apply_kb'])} once mesh-control had the new Services, "
                   f"{kb(rn['load_after_kb'])} during another 1k/s run, "
                   f"{kb(rn['idle_after_load_kb'])} after it; keys held "
                   f"{rn['keys_after']['out']} / {rn['keys_after']['in']}")
    # Targets, for mesh-proxy (the others' numbers beside them for comparison).
    out.append("")
    out.append("targets (mesh-proxy; worst of the two proxies where per proxy):")
    m = s.get("mesh")
    if m:
        worst = lambda d: max(d.values()) if d else None
        rows = [
            (f"added p99 at {RATE:g} req/s <= 0.6 ms", m["added"]["p99"], TARGETS["added_p99_us"],
             f"{fmt(m['added']['p99'])} µs (median of repetitions; best repetition "
             f"{m['added_p99_best']:.1f} µs)"),
            (f"CPU <= 0.05 vCPU per 1,000 req/s per proxy", worst(m["cpu_1k"]),
             TARGETS["cpu_s_per_1k"], f"{fmt(worst(m['cpu_1k']), '.4f')} s per 1,000 requests"),
            ("RSS idle <= 3 MB", worst(m["rss_idle"]), TARGETS["rss_idle_kb"],
             f"{worst(m['rss_idle'])} KiB"),
            (f"RSS at {RATE:g} req/s <= 8 MB", worst(m["rss_load"]), TARGETS["rss_load_kb"],
             f"{worst(m['rss_load'])} KiB"),
        ]
        if scale:
            g = max(scale["large"]["load_kb"][k] - scale["small"]["load_kb"][k]
                    for k in ("out", "in"))
            gi = max(scale["large"]["idle_kb"][k] - scale["small"]["idle_kb"][k]
                     for k in ("out", "in"))
            rows.append((f"RSS growth {SERVICES_SMALL} -> {SERVICES_LARGE} Services <= 1 MB",
                         max(g, gi), TARGETS["rss_growth_kb"],
                         f"{gi:+d} KiB idle, {g:+d} KiB at 1k/s"))
        for what, v, limit, shown in rows:
            out.append(f"  {what}: {shown} -> {verdict(v, limit)}")
    return "\n".join(out)


def gateway_report(s, gw_modes, paths):
    """Ingress gateway vs direct, same run (#14)."""
    d = s["direct"]
    out = [f"ingress gateway vs direct to the backend, same run (client outside the mesh; "
           f"gateway = mesh-proxy --role gateway at its pod IP:{GW_PORT}, the targetPort of "
           f"Service istio-ingressgateway's port {GW_NUMBER}; gateway: backend without a "
           f"sidecar, gateway-mesh: backend with its sidecar; CPU and RSS of the gateway "
           f"proxy, gateway-mesh's sidecar after the slash):", ""]
    out.append(f"| mode | req/s at {RATE:g}/s | p50 µs | p90 µs | p99 µs | added p50 / p90 / p99 µs "
               "| max req/s (ratio) | unbounded p50 / p99 µs | CPU s/1k req at 1k/s | CPU s/1k "
               "req unbounded | RSS ready / idle / at 1k/s KiB | requests counted / sent |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode in ["direct"] + gw_modes:
        r = s[mode]
        sd = sides_of(mode)
        j = lambda dct, spec: " / ".join(fmt(dct.get(k), spec) for k in sd) if sd else "-"
        rss = "; ".join(f"{r['rss_ready'][k]} / {r['rss_idle'][k]} / {r['rss_load'][k]}"
                        + (f" ({k})" if len(sd) > 1 else "") for k in sd) or "-"
        added = ("-" if mode == "direct" else
                 " / ".join(fmt(r["added"][q]) for q in ("p50", "p90", "p99")))
        counted = (f"{r['gw_counted']} / {r['gw_sent']} "
                   f"({'exact' if r['gw_counted'] == r['gw_sent'] else 'MISMATCH'} in "
                   f"{r['gw_runs_exact']} of {r['gw_runs']} runs)" if sd else "-")
        out.append(f"| {mode} | {fmt(r['rate'], '.0f')} | {fmt(r['p50'])} | {fmt(r['p90'])} "
                   f"| {fmt(r['p99'])} | {added} | {fmt(r['max_rps'], '.0f')} "
                   f"({r['max_rps'] / d['max_rps']:.2f}) | {fmt(r['u_p50'])} / {fmt(r['u_p99'])} "
                   f"| {j(r['cpu_1k'], '.4f')} | {j(r['cpu_1k_u'], '.4f')} | {rss} | {counted} |")
    out.append("")
    out.append(f"  direct: p99 of the best repetition {d['p99_best']:.1f} µs; machine busy "
               f"{d['busy_fixed']:.0%} at 1k/s, {d['u_busy']:.0%} unbounded; load average "
               f"(1 min) at its 1k/s runs {fmt(d['loadavg_fixed'], '.2f')}")
    for mode in gw_modes:
        r = s[mode]
        out.append(f"  {mode}: p99 of the best repetition {r['p99_best']:.1f} µs; machine busy "
                   f"{r['busy_fixed']:.0%} at 1k/s, {r['u_busy']:.0%} unbounded; load average "
                   f"(1 min) at its 1k/s runs {fmt(r['loadavg_fixed'], '.2f')}")
    gc = paths[gw_modes[0]]["gateway_config"]
    out.append(f"  the gateway's config (Gateways that select it, listeners bound / port.number): "
               f"{', '.join(gc['gateways'])}; {gc['listeners']}")
    return out


def tcp_report(tcp, paths, s):
    secs = float(os.environ.get("BENCH_TCP_SECONDS", "5"))
    out = [""]
    out.append(f"TCP (L4) through the same pods, {secs:g} s per workload per repetition, medians "
               f"of the repetitions; mesh: spliced plaintext, mesh-mtls: TLS 1.3 between the "
               f"two proxies (the apps speak plaintext to their own proxy):")
    out.append("")
    for mode, r in paths.items():
        out.append(f"  {mode:9s} path {'ok' if r['ok'] else 'FAILED'}: {r['why']}")
    out.append("")
    out.append("| mode | bulk 1 stream Gbit/s (ratio) | proxy CPU s/GB out / in | 64 B RR p50 µs "
               "| p99 µs | p99.9 µs | new conn/s 1 client (ratio) | 4 clients (ratio) |")
    out.append("|---|---|---|---|---|---|---|---|")
    d = tcp["direct"]
    db, dc, dc4 = med(d["bulk"]), med(d["conn"]), med(d["conn4"])
    rows = {}
    for mode, r in tcp.items():
        bulk, conn, conn4 = med(r["bulk"]), med(r["conn"]), med(r["conn4"])
        lat = {q: med([x[f"{q}_us"] for x in r["lat"]]) for q in ("p50", "p99", "p999")}
        cpu = {k: med([x[k] for x in r["cpu_per_gb"]]) for k in ("out", "in")} \
            if r["cpu_per_gb"] and r["cpu_per_gb"][0] else {}
        rows[mode] = {"bulk": bulk, "conn": conn, "conn4": conn4, **lat}
        cpus = " / ".join(fmt(cpu[k], ".2f") for k in ("out", "in")) if cpu else "-"
        out.append(f"| {mode} | {bulk:.2f} ({bulk / db:.2f}) | {cpus} | {fmt(lat['p50'])} "
                   f"| {fmt(lat['p99'])} | {fmt(lat['p999'])} | {conn:.0f} ({conn / dc:.2f}) "
                   f"| {conn4:.0f} ({conn4 / dc4:.2f}) |")
    if "mesh" in s and "mesh-mtls" in s and "mesh" in rows and "mesh-mtls" in rows:
        p, m = s["mesh"], s["mesh-mtls"]
        tp, tm = rows["mesh"], rows["mesh-mtls"]
        out.append("")
        out.append("plaintext (mesh) vs mTLS (mesh-mtls), same run:")
        out.append(f"  HTTP p50 / p99 at {RATE:g} req/s: {fmt(p['p50'])} / {fmt(p['p99'])} vs "
                   f"{fmt(m['p50'])} / {fmt(m['p99'])} µs: mTLS adds {m['p50'] - p['p50']:+.1f} / "
                   f"{m['p99'] - p['p99']:+.1f} µs (target: p99 within +100 µs -> "
                   f"{verdict(m['p99'] - p['p99'], 100)}); best repetitions' p99 "
                   f"{p['p99_best']:.1f} vs {m['p99_best']:.1f} µs")
        out.append(f"  HTTP max req/s: {p['max_rps']:.0f} vs {m['max_rps']:.0f} "
                   f"({m['max_rps'] / p['max_rps']:.2f}); CPU s/1k req at {RATE:g} req/s out / "
                   f"in: {p['cpu_1k']['out']:.4f} / {p['cpu_1k']['in']:.4f} vs "
                   f"{m['cpu_1k']['out']:.4f} / {m['cpu_1k']['in']:.4f}")
        out.append(f"  TCP bulk {tp['bulk']:.2f} vs {tm['bulk']:.2f} Gbit/s "
                   f"({tm['bulk'] / tp['bulk']:.2f}); 64 B RR p99 {tp['p99']:.1f} vs "
                   f"{tm['p99']:.1f} µs ({tm['p99'] - tp['p99']:+.1f}); new conn/s "
                   f"{tp['conn']:.0f} vs {tm['conn']:.0f} ({tm['conn'] / tp['conn']:.2f}), "
                   f"4 clients {tp['conn4']:.0f} vs {tm['conn4']:.0f} "
                   f"({tm['conn4'] / tp['conn4']:.2f})")
        w = lambda d: max(d.values()) if d else None
        out.append(f"  RSS idle KiB out / in: {p['rss_idle']['out']} / {p['rss_idle']['in']} vs "
                   f"{m['rss_idle']['out']} / {m['rss_idle']['in']} (with a certificate; "
                   f"target <= 3 MB -> {verdict(w(m['rss_idle']), TARGETS['rss_idle_kb'])}); "
                   f"at {RATE:g} req/s {p['rss_load']['out']} / {p['rss_load']['in']} vs "
                   f"{m['rss_load']['out']} / {m['rss_load']['in']}")
    return "\n".join(out)


def run_main(argv):
    bins = dict(zip(("proxy", "control", "init", "loadgen"), argv))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    b = Bench(bins)

    def on_signal(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    t0 = time.time()
    load0 = open("/proc/loadavg").read().split()[0]
    try:
        log(f"setting up: namespaces {b.router} + {2 * len(b.modes)} pods, kube namespace {b.kns}")
        b.setup()
        paths = {m: b.prove_path(m) for m in b.modes}
        tcp_paths = {m: b.prove_tcp_path(m) for m in b.modes if m in TCP_MODES}
        # Idle with the config of the path loaded; and the proxies' CPU while idle, which
        # the CPU per request below would otherwise include.
        time.sleep(0.5)
        idle = b.idle_rss()
        split = {m: {k: rss_split_kb(p.p.pid) for k, p in b.proxies.get(m, {}).items()}
                 for m in MESH_MODES + GATEWAY_MODES}
        if os.environ.get("BENCH_SMAPS"):
            # For memory work: each proxy's /proc/PID/smaps at this idle point.
            os.makedirs(os.environ["BENCH_SMAPS"], exist_ok=True)
            for m in MESH_MODES + GATEWAY_MODES:
                for k, p in b.proxies.get(m, {}).items():
                    with open(f"/proc/{p.p.pid}/smaps") as src, \
                            open(os.path.join(os.environ["BENCH_SMAPS"], f"{m}-{k}.smaps"), "w") as dst:
                        dst.write(src.read())
                    with open(os.path.join(os.environ["BENCH_SMAPS"], f"{m}-{k}.pages.json"), "w") as dst:
                        json.dump(resident_pages(p.p.pid), dst)
        cpu0 = {m: {k: p.cpu() for k, p in pr.items()} for m, pr in b.proxies.items()}
        time.sleep(IDLE_CPU_WINDOW)
        idle_cpu = {m: {k: p.cpu() - cpu0[m][k] for k, p in pr.items()}
                    for m, pr in b.proxies.items()}
        log(f"paths ok; measuring ({b.reps} reps)")
        res = b.run()
        tcp = b.tcp_run() if len(tcp_paths) > 1 else None
        scale = None
        if "mesh" in b.modes and SERVICES_LARGE > SERVICES_SMALL:
            b.stop_mesh_proxies()
            scale = b.services_phase()
        s = summarize(res, idle, b.ready_rss, idle_cpu)
        for m in MESH_MODES + GATEWAY_MODES:
            if m in s:
                s[m]["rss_idle_anon_file"] = split[m]
        meta = {"reps": b.reps, "seconds": b.seconds, "useconds": b.useconds, "kns": b.kns,
                "body_bytes": BODY, "conns": CONNS, "rate": RATE,
                "cluster_ip": b.cluster_ip,
                "gw_ns": b.gw_ns if "gateway" in b.modes else None,
                "loadavg": [load0, open("/proc/loadavg").read().split()[0]],
                "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "cpus": os.cpu_count(),
                "commit": os.environ.get("BENCH_COMMIT", "unknown"),
                "proxy_bin": b.bin_ids["proxy"], "control_bin": b.bin_ids["control"]}
        print(report(s, scale, paths, meta))
        if tcp:
            print(tcp_report(tcp, tcp_paths, s))
        log(f"done in {time.time() - t0:.0f} s")
        path = os.environ.get("BENCH_JSON") or f"/tmp/bench-http-{b.tag}.json"
        with open(path, "w") as f:
            json.dump({"meta": meta, "summary": s, "runs": res, "services": scale,
                       "gateway_counts": b.gw_checks,
                       "paths": paths, "tcp": tcp, "tcp_paths": tcp_paths}, f, indent=1)
        log(f"JSON written to {path}")
    finally:
        b.teardown()


if __name__ == "__main__":
    if len(sys.argv) != 6 or sys.argv[1] != "run":
        raise SystemExit("usage: bench.py run PROXY_BIN CONTROL_BIN INIT_BIN LOADGEN_BIN "
                         "(see run.sh)")
    run_main(sys.argv[2:])
