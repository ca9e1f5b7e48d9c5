//! mesh-init against the real kernel: a pod namespace linked to a remote one, real TCP
//! connections from chosen uids, listeners that report the `SO_ORIGINAL_DST` they saw.
//! Every case also asks `mesh-init explain` and requires it to predict what the kernel
//! did. The whole scenario runs on the nft and the legacy backend, IPv4 and IPv6.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Output};

use mesh_tests::bins::bin;
use mesh_tests::init_support::{Landing, Server, connect_as, nat_dump, rule_lines};
use mesh_tests::netns::{Netns, link, require_root_and_tools};

const DEFAULT: &[&str] = &mesh_common::DEFAULT_INIT_ARGS;

struct Net {
    pod: Netns,
    remote: Netns,
    pod_if: String,
    v6: bool,
    backend: &'static str,
    pod_ip: IpAddr,
    r1: IpAddr,
    r2: IpAddr,
    lo: IpAddr,
    passthrough: IpAddr,
}

impl Net {
    fn new(backend: &'static str, v6: bool) -> Net {
        let pod = Netns::new("ipod");
        let remote = Netns::new("irem");
        let (pod_addrs, remote_addrs): (Vec<&str>, Vec<&str>) = if v6 {
            (
                vec!["198.18.0.1/24", "fd00:198:18::1/64"],
                vec!["198.18.0.2/24", "fd00:198:18::2/64", "fd00:198:18::3/64"],
            )
        } else {
            (
                vec!["198.18.0.1/24"],
                vec!["198.18.0.2/24", "198.18.0.3/24"],
            )
        };
        let (pod_if, _) = link(&pod, &pod_addrs, &remote, &remote_addrs);
        let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
        let (pod_ip, r1, r2, lo, passthrough) = if v6 {
            (
                ip("fd00:198:18::1"),
                ip("fd00:198:18::2"),
                ip("fd00:198:18::3"),
                ip("::1"),
                ip("::6"),
            )
        } else {
            (
                ip("198.18.0.1"),
                ip("198.18.0.2"),
                ip("198.18.0.3"),
                ip("127.0.0.1"),
                ip("127.0.0.6"),
            )
        };
        Net {
            pod,
            remote,
            pod_if,
            v6,
            backend,
            pod_ip,
            r1,
            r2,
            lo,
            passthrough,
        }
    }

    fn iptables(&self) -> String {
        format!(
            "{}-{}",
            if self.v6 { "ip6tables" } else { "iptables" },
            self.backend
        )
    }

    fn dump(&self) -> String {
        nat_dump(&self.pod, self.backend, self.v6)
    }

    fn init(&self, args: &[&str]) -> Output {
        self.pod.output(bin("mesh-init"), args)
    }

    fn init_ok(&self, args: &[&str]) {
        let out = self.init(args);
        assert!(
            out.status.success(),
            "mesh-init {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The rules `--dry-run` says it would write for this family, as iptables-save
    /// prints them (sorted).
    fn dry_run_rules(&self, args: &[&str]) -> Vec<String> {
        let mut all = vec!["--dry-run"];
        all.extend_from_slice(args);
        let out = self.pod.output_ok(bin("mesh-init"), &all);
        let text = String::from_utf8(out.stdout).expect("utf8");
        let section = if self.v6 { "# IPv6" } else { "# IPv4" };
        let mut in_section = false;
        let mut v = Vec::new();
        for line in text.lines() {
            if line.starts_with("# IPv") {
                in_section = line.starts_with(section);
            } else if in_section {
                if let Some(rest) = line.strip_prefix("-I PREROUTING ") {
                    let spec = rest.split_once(' ').expect("position").1;
                    v.push(format!("-A PREROUTING {spec}"));
                } else if line.starts_with("-A ") {
                    v.push(line.to_owned());
                }
            }
        }
        v.sort();
        v
    }

    /// Our rules in the kernel now: the dump's rules minus the baseline's.
    fn our_rules(&self, baseline: &str) -> Vec<String> {
        let base = rule_lines(baseline);
        rule_lines(&self.dump())
            .into_iter()
            .filter(|l| !base.contains(l))
            .collect()
    }

    /// `mesh-init --backend <this backend> <args>`, which must succeed.
    fn init_on_backend(&self, args: &[&str]) {
        let mut all = vec!["--backend", self.backend];
        all.extend_from_slice(args);
        self.init_ok(&all);
    }

    /// The rules of `chain` in the kernel now, in the order the kernel walks them (in a
    /// built-in chain, only ours: those with our comment).
    fn chain_in_kernel(&self, chain: &str) -> Vec<String> {
        let prefix = format!("-A {chain} ");
        self.dump()
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .filter(|l| chain.starts_with("ISTIO_") || l.contains("--comment mesh-init "))
            .map(str::to_owned)
            .collect()
    }

    /// The rules of `chain` that `--dry-run` renders, in order, as `iptables-save`
    /// prints them (`-I PREROUTING n` inserts come first, in their final order).
    fn chain_rendered(&self, args: &[&str], chain: &str) -> Vec<String> {
        let mut all = vec!["--dry-run"];
        all.extend_from_slice(args);
        let out = self.pod.output_ok(bin("mesh-init"), &all);
        let text = String::from_utf8(out.stdout).expect("utf8");
        let section = if self.v6 { "# IPv6" } else { "# IPv4" };
        let mut in_section = false;
        let mut inserted = Vec::new();
        let mut appended = Vec::new();
        for line in text.lines() {
            if line.starts_with("# IPv") {
                in_section = line.starts_with(section);
            } else if in_section {
                if let Some(rest) = line.strip_prefix(&format!("-I {chain} ")) {
                    let spec = rest.split_once(' ').expect("position").1;
                    inserted.push(format!("-A {chain} {spec}"));
                } else if line.starts_with(&format!("-A {chain} ")) {
                    appended.push(line.to_owned());
                }
            }
        }
        inserted.extend(appended);
        inserted
    }

    fn sock(&self, ip: IpAddr, port: u16) -> SocketAddr {
        SocketAddr::new(ip, port)
    }

    fn any(&self, port: u16) -> SocketAddr {
        if self.v6 {
            SocketAddr::from(([0u16; 8], port))
        } else {
            SocketAddr::from(([0, 0, 0, 0], port))
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Who {
    /// A process in the pod with this uid and gid.
    Pod(u32, u32),
    /// The proxy reaching the app from the passthrough source.
    Passthrough,
    /// A peer in the remote namespace.
    Remote,
}

/// Connects, checks where it landed (and the original destination when redirected),
/// and checks that `mesh-init explain` with the same capture flags predicted it.
fn expect(net: &Net, flags: &[&str], who: Who, dst: SocketAddr, want: &str) {
    let landing: Landing = match who {
        Who::Pod(uid, gid) => connect_as(&net.pod, uid, gid, None, dst),
        Who::Passthrough => connect_as(&net.pod, 1337, 1337, Some(net.passthrough), dst),
        Who::Remote => connect_as(&net.remote, 0, 0, None, dst),
    };
    let ctx = format!(
        "[{} {}] {who:?} -> {dst} with {flags:?}",
        net.backend,
        if net.v6 { "v6" } else { "v4" }
    );
    assert_eq!(landing.name, want, "{ctx}: landed on {landing:?}");
    if want == "outbound" || want == "inbound" {
        assert_eq!(landing.orig, Some(dst), "{ctx}: SO_ORIGINAL_DST");
    }

    let dst_s = dst.to_string();
    let pod_ip = net.pod_ip.to_string();
    let mut args = vec!["explain"];
    args.extend_from_slice(flags);
    args.extend(["--dst", dst_s.as_str()]);
    let (uid_s, gid_s, src_s);
    match who {
        Who::Pod(uid, gid) => {
            uid_s = uid.to_string();
            gid_s = gid.to_string();
            args.extend(["--uid", &uid_s, "--gid", &gid_s, "--local", &pod_ip]);
        }
        Who::Passthrough => {
            src_s = net.passthrough.to_string();
            args.extend(["--uid", "1337", "--src", &src_s, "--local", &pod_ip]);
        }
        Who::Remote => args.extend(["--inbound", "--iface", &net.pod_if]),
    }
    let out = net.pod.output_ok(bin("mesh-init"), &args);
    let text = String::from_utf8(out.stdout).expect("utf8");
    let predicted = text.lines().next().unwrap_or_default();
    let kernel = match want {
        "outbound" => "outcome: redirect 15001",
        "inbound" => "outcome: redirect 15006",
        _ => "outcome: pass",
    };
    assert_eq!(
        predicted, kernel,
        "{ctx}: explain disagrees with the kernel:\n{text}"
    );
}

fn which(tool: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(tool))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{tool} not on PATH"))
}

fn assert_one_line_error(out: &Output, needle: &str, what: &str) {
    assert_eq!(out.status.code(), Some(1), "{what}: exit status");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: want one line, got {err}");
    assert!(lines[0].contains(needle), "{what}: {err}");
}

fn scenario(backend: &'static str, v6: bool) {
    let fam = if v6 { "ip6tables" } else { "iptables" };
    require_root_and_tools(&[
        "ip",
        "setpriv",
        &format!("{fam}-{backend}"),
        &format!("{fam}-{backend}-save"),
        &format!("iptables-{backend}-restore"),
    ]);
    let net = Net::new(backend, v6);

    // Foreign rules, written with this backend's own tool (which is also how mesh-init
    // tells which backend the host uses: no --backend flag below).
    let foreign_dst = if v6 {
        "2001:db8::7/128"
    } else {
        "203.0.113.7/32"
    };
    for tool in [format!("iptables-{backend}"), net.iptables()] {
        let dst = if tool.starts_with("ip6") {
            "2001:db8::7/128"
        } else {
            "203.0.113.7/32"
        };
        net.pod.output_ok(
            &tool,
            &["-w", "-t", "nat", "-A", "OUTPUT", "-d", dst, "-j", "RETURN"],
        );
        net.pod.output_ok(
            &tool,
            &[
                "-w",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-s",
                dst,
                "-j",
                "RETURN",
            ],
        );
    }
    let baseline = net.dump();
    assert!(baseline.contains(foreign_dst));

    // --dry-run touches nothing.
    let mut dry = vec!["--dry-run"];
    dry.extend_from_slice(DEFAULT);
    let out = net.init(&dry);
    assert!(out.status.success());
    assert_eq!(net.dump(), baseline, "--dry-run changed the nat table");

    // Errors: one line naming the cause, exit 1, tables unchanged.
    let out = net.init(&["-x", "10.0.0.0/33"]);
    assert_one_line_error(&out, "-x/--exclude-outbound-cidrs", "bad CIDR");
    let out = net.init(&["-b", "8080,http"]);
    assert_one_line_error(&out, "-b/--inbound-ports", "bad port");
    let out = Command::new(which("ip"))
        .args(["netns", "exec", net.pod.name()])
        .arg(bin("mesh-init"))
        .env("PATH", "/nonexistent")
        .output()
        .expect("run mesh-init");
    assert_one_line_error(
        &out,
        "iptables-restore not found",
        "missing iptables-restore",
    );
    let out = net
        .pod
        .command("setpriv", &["--bounding-set=-net_admin", "--"])
        .arg(bin("mesh-init"))
        .output()
        .expect("run setpriv");
    assert_one_line_error(&out, "CAP_NET_ADMIN", "missing CAP_NET_ADMIN");
    assert_eq!(net.dump(), baseline, "a failed run changed the nat table");

    // Apply the injected defaults, and prove it with --verify (the init runs as root,
    // whose connection to the sentinel must land on a temporary 15001 listener).
    let verify_dst = SocketAddr::new(net.r1, 80).to_string();
    let verify_v4 = "198.18.0.2:80".to_string();
    let mut args: Vec<&str> = DEFAULT.to_vec();
    args.extend(["--verify", "--verify-dst", &verify_dst]);
    if v6 {
        args.extend(["--verify-dst", &verify_v4]);
    }
    net.init_ok(&args);
    let installed = net.dump();
    assert!(
        installed.contains(foreign_dst),
        "foreign rules must survive apply"
    );
    assert_eq!(
        net.our_rules(&baseline),
        net.dry_run_rules(DEFAULT),
        "the kernel holds exactly the rendered rules"
    );
    if v6 {
        let lo = net.pod.ip(&["-6", "addr", "show", "dev", "lo"]);
        assert!(
            String::from_utf8_lossy(&lo.stdout).contains("::6/128"),
            "::6 on lo"
        );
    }

    // Re-run: identical ruleset.
    net.init_ok(DEFAULT);
    assert_eq!(net.dump(), installed, "re-run is not idempotent");

    // Listeners: the proxy's two ports, the app, the admin port, a loopback-only
    // service in the pod; a service on two addresses in the remote namespace.
    let _servers = [
        Server::start(&net.pod, net.any(15001), "outbound"),
        Server::start(&net.pod, net.any(15006), "inbound"),
        Server::start(&net.pod, net.any(8080), "app"),
        Server::start(&net.pod, net.any(15021), "admin"),
        Server::start(&net.pod, net.sock(net.lo, 9000), "local"),
        Server::start(&net.remote, net.any(80), "remote"),
        Server::start(&net.remote, net.any(5432), "remote"),
    ];
    let r1_80 = net.sock(net.r1, 80);
    let r2_80 = net.sock(net.r2, 80);
    let r1_5432 = net.sock(net.r1, 5432);
    let pod_8080 = net.sock(net.pod_ip, 8080);
    let pod_8081 = net.sock(net.pod_ip, 8081);

    let f = DEFAULT;
    expect(&net, f, Who::Pod(1000, 1000), r1_80, "outbound");
    expect(&net, f, Who::Pod(1337, 1337), r1_80, "remote");
    expect(&net, f, Who::Pod(1000, 1337), r1_80, "remote"); // gid exemption
    expect(
        &net,
        f,
        Who::Pod(1000, 1000),
        net.sock(net.lo, 9000),
        "local",
    );
    expect(&net, f, Who::Remote, pod_8080, "inbound");
    expect(&net, f, Who::Remote, net.sock(net.pod_ip, 15021), "admin");
    expect(&net, f, Who::Passthrough, pod_8080, "app");
    expect(&net, f, Who::Pod(1337, 1337), pod_8080, "inbound"); // proxy -> own pod IP
    expect(&net, f, Who::Pod(1000, 1000), pod_8080, "app"); // app -> own pod IP, on lo
    expect(&net, f, Who::Pod(1000, 1337), pod_8080, "app"); // proxy gid only: direct (Istio)
    expect(&net, f, Who::Pod(1337, 1000), pod_8080, "inbound"); // proxy uid only

    // Excludes; a re-run with other flags replaces our rules cleanly.
    let r2_net = format!("{}/{}", net.r2, if v6 { 128 } else { 32 });
    let f: &[&str] = &[
        "-u",
        "1337",
        "-i",
        "*",
        "-x",
        &r2_net,
        "-b",
        "*",
        "-d",
        "15090,15021,8080",
        "-o",
        "5432,",
    ];
    net.init_ok(f);
    assert_eq!(
        net.our_rules(&baseline),
        net.dry_run_rules(f),
        "flags changed: rules replaced"
    );
    expect(&net, f, Who::Pod(1000, 1000), r1_80, "outbound");
    expect(&net, f, Who::Pod(1000, 1000), r2_80, "remote"); // -x
    expect(&net, f, Who::Pod(1000, 1000), r1_5432, "remote"); // -o
    expect(&net, f, Who::Remote, pod_8080, "app"); // -d
    expect(&net, f, Who::Remote, pod_8081, "inbound");

    // Includes: CIDR list, port include, inbound port list, uid list.
    let f: &[&str] = &[
        "-u",
        "1337,1500",
        "-i",
        &r2_net,
        "-q",
        "5432",
        "-b",
        "8081",
        "-d",
        "8081",
    ];
    net.init_ok(f);
    assert_eq!(net.our_rules(&baseline), net.dry_run_rules(f));
    expect(&net, f, Who::Pod(1000, 1000), r1_80, "remote"); // not in -i
    expect(&net, f, Who::Pod(1000, 1000), r2_80, "outbound");
    expect(&net, f, Who::Pod(1000, 1000), r1_5432, "outbound"); // -q
    expect(&net, f, Who::Pod(1500, 1500), r2_80, "remote"); // second proxy uid
    expect(&net, f, Who::Remote, pod_8080, "app"); // not in -b
    expect(&net, f, Who::Remote, pod_8081, "inbound"); // -d ignored without -b '*'

    // An -i of the other family only captures nothing in this one; -i '' neither.
    let other = if v6 {
        "198.18.0.0/24"
    } else {
        "fd00:198:18::/64"
    };
    for f in [&["-i", other][..], &["-i", ""][..]] {
        net.init_ok(f);
        expect(&net, f, Who::Pod(1000, 1000), r1_80, "remote");
    }
    // -b '': no inbound capture.
    let f: &[&str] = &["-b", ""];
    net.init_ok(f);
    expect(&net, f, Who::Remote, pod_8080, "app");
    expect(&net, f, Who::Pod(1000, 1000), r1_80, "outbound");

    // -k: traffic arriving on a kube-virt interface is never inbound-captured; it is
    // the VM's outbound traffic, captured only for included destinations.
    let pod_if = net.pod_if.clone();
    let f: &[&str] = &["-k", &pod_if];
    net.init_ok(f);
    expect(&net, f, Who::Remote, pod_8080, "outbound");
    let f: &[&str] = &["-k", &pod_if, "-i", &r2_net];
    net.init_ok(f);
    expect(&net, f, Who::Remote, pod_8080, "app");
    let dump = net.dump();
    let first_rule = dump
        .lines()
        .find(|l| l.starts_with("-A PREROUTING"))
        .unwrap_or_default();
    assert!(
        first_rule.contains(&format!("-i {pod_if}")),
        "-k rules go to the top of PREROUTING: {dump}"
    );

    // Cleanup: no trace, foreign rules intact; twice is fine.
    net.init_ok(&["--cleanup"]);
    assert_eq!(net.dump(), baseline, "--cleanup left a trace");
    net.init_ok(&["--cleanup"]);
    assert_eq!(net.dump(), baseline);
    if v6 {
        let lo = net.pod.ip(&["-6", "addr", "show", "dev", "lo"]);
        assert!(
            !String::from_utf8_lossy(&lo.stdout).contains("::6/128"),
            "::6 left on lo"
        );
    }
}

fn tools_for(backend: &str, v6: bool) {
    let fam = if v6 { "ip6tables" } else { "iptables" };
    require_root_and_tools(&[
        "ip",
        &format!("{fam}-{backend}"),
        &format!("{fam}-{backend}-save"),
        &format!("{fam}-{backend}-restore"),
    ]);
}

/// Istio's owner rules in the kernel: per proxy uid, then per gid, "to a local
/// non-loopback address -> inbound capture", "on lo but not this owner -> direct",
/// "this owner -> exempt"; `-o` ports before all of them.
fn owners(backend: &'static str, v6: bool) {
    tools_for(backend, v6);
    let net = Net::new(backend, v6);
    let _servers = [
        Server::start(&net.pod, net.any(15001), "outbound"),
        Server::start(&net.pod, net.any(15006), "inbound"),
        Server::start(&net.pod, net.any(8080), "app"),
        Server::start(&net.pod, net.any(5432), "pod-db"),
        Server::start(&net.remote, net.any(80), "remote"),
    ];
    let pod_8080 = net.sock(net.pod_ip, 8080);
    let pod_5432 = net.sock(net.pod_ip, 5432);
    let r1_80 = net.sock(net.r1, 80);

    let f = DEFAULT;
    net.init_on_backend(f);
    assert_eq!(
        net.chain_in_kernel("ISTIO_OUTPUT"),
        net.chain_rendered(f, "ISTIO_OUTPUT"),
        "the kernel walks ISTIO_OUTPUT in the rendered (Istio's) order"
    );
    // Another uid with the proxy's gid, to the pod's own IP: not captured (before the
    // fix, the gid's inbound rule came before the uid's lo RETURN and captured it).
    expect(&net, f, Who::Pod(1000, 1337), pod_8080, "app");
    // The proxy's uid to the pod's own IP is inbound-captured whatever its gid.
    expect(&net, f, Who::Pod(1337, 1000), pod_8080, "inbound");
    expect(&net, f, Who::Pod(1337, 1337), pod_8080, "inbound");
    expect(&net, f, Who::Pod(1000, 1000), pod_8080, "app");
    // Leaving the pod: the uid and the gid each exempt, the app is captured.
    expect(&net, f, Who::Pod(1337, 1337), r1_80, "remote");
    expect(&net, f, Who::Pod(1337, 1000), r1_80, "remote");
    expect(&net, f, Who::Pod(1000, 1337), r1_80, "remote");
    expect(&net, f, Who::Pod(1000, 1000), r1_80, "outbound");
    expect(&net, f, Who::Passthrough, pod_8080, "app");

    // -o comes first: the proxy calling its own pod IP on an excluded port goes direct.
    let f: &[&str] = &["-o", "5432"];
    net.init_on_backend(f);
    assert_eq!(
        net.chain_in_kernel("ISTIO_OUTPUT"),
        net.chain_rendered(f, "ISTIO_OUTPUT")
    );
    expect(&net, f, Who::Pod(1337, 1337), pod_5432, "pod-db");
    expect(&net, f, Who::Pod(1337, 1337), pod_8080, "inbound");

    // Two proxy uids: as in Istio, the first uid's lo RETURN lets the second uid's call
    // to the pod's own IP go direct; leaving the pod, both are exempt.
    let f: &[&str] = &["-u", "1337,1500"];
    net.init_on_backend(f);
    expect(&net, f, Who::Pod(1337, 1337), pod_8080, "inbound");
    expect(&net, f, Who::Pod(1500, 1500), pod_8080, "app");
    expect(&net, f, Who::Pod(1500, 1500), r1_80, "remote");
    expect(&net, f, Who::Pod(1000, 1000), r1_80, "outbound");

    net.init_on_backend(&["--cleanup"]);
    assert!(
        net.chain_in_kernel("ISTIO_OUTPUT").is_empty(),
        "--cleanup left rules"
    );
}

/// `-k`: what arrives on a KubeVirt interface is the VM's outbound traffic: captured to
/// the outbound port (for `-i`'s destinations of this family), never inbound-captured.
fn kube_virt(backend: &'static str, v6: bool) {
    tools_for(backend, v6);
    let net = Net::new(backend, v6);
    let _servers = [
        Server::start(&net.pod, net.any(15001), "outbound"),
        Server::start(&net.pod, net.any(15006), "inbound"),
        Server::start(&net.pod, net.any(8080), "app"),
    ];
    let pod_8080 = net.sock(net.pod_ip, 8080);
    let pod_if = net.pod_if.clone();
    let host = if v6 { 128 } else { 32 };
    let pod_net = format!("{}/{host}", net.pod_ip);
    let r2_net = format!("{}/{host}", net.r2);
    let other_family = if v6 {
        "198.18.0.0/24"
    } else {
        "fd00:198:18::/64"
    };

    // Without -k, a peer's connection is inbound.
    net.init_on_backend(DEFAULT);
    expect(&net, DEFAULT, Who::Remote, pod_8080, "inbound");

    let f: &[&str] = &["-k", &pod_if];
    net.init_on_backend(f);
    let prerouting = net.chain_in_kernel("PREROUTING");
    assert_eq!(prerouting, net.chain_rendered(f, "PREROUTING"));
    assert!(
        prerouting[0].contains(&format!("-i {pod_if} "))
            && prerouting[0].ends_with("-j ISTIO_REDIRECT")
            && prerouting[1].contains(&format!("-i {pod_if} "))
            && prerouting[1].ends_with("-j RETURN"),
        "-k capture, then -k RETURN, at the top of PREROUTING: {prerouting:?}"
    );
    expect(&net, f, Who::Remote, pod_8080, "outbound");

    // -i of this family: included destinations are captured, the rest go direct.
    let f: &[&str] = &["-k", &pod_if, "-i", &pod_net];
    net.init_on_backend(f);
    expect(&net, f, Who::Remote, pod_8080, "outbound");
    let f: &[&str] = &["-k", &pod_if, "-i", &r2_net];
    net.init_on_backend(f);
    expect(&net, f, Who::Remote, pod_8080, "app");
    // -i of the other family only: nothing of this family is captured from the VM.
    let f: &[&str] = &["-k", &pod_if, "-i", other_family];
    net.init_on_backend(f);
    expect(&net, f, Who::Remote, pod_8080, "app");
    // -x plays no part on -k, as in Istio: with -i '*' the VM's traffic is captured.
    let f: &[&str] = &["-k", &pod_if, "-x", &pod_net];
    net.init_on_backend(f);
    expect(&net, f, Who::Remote, pod_8080, "outbound");

    net.init_on_backend(&["--cleanup"]);
    assert!(
        net.chain_in_kernel("PREROUTING").is_empty(),
        "--cleanup left rules"
    );
}

#[test]
fn owners_nft_ipv4() {
    owners("nft", false);
}

#[test]
fn owners_nft_ipv6() {
    owners("nft", true);
}

#[test]
fn owners_legacy_ipv4() {
    owners("legacy", false);
}

#[test]
fn owners_legacy_ipv6() {
    owners("legacy", true);
}

#[test]
fn kube_virt_nft_ipv4() {
    kube_virt("nft", false);
}

#[test]
fn kube_virt_nft_ipv6() {
    kube_virt("nft", true);
}

#[test]
fn kube_virt_legacy_ipv4() {
    kube_virt("legacy", false);
}

#[test]
fn kube_virt_legacy_ipv6() {
    kube_virt("legacy", true);
}

#[test]
fn init_nft_ipv4() {
    scenario("nft", false);
}

#[test]
fn init_legacy_ipv4() {
    scenario("legacy", false);
}

#[test]
fn init_nft_ipv6() {
    scenario("nft", true);
}

#[test]
fn init_legacy_ipv6() {
    scenario("legacy", true);
}
