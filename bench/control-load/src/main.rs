//! `mesh-control-load`: the driver of `bench/control/run.sh` (not part of the mesh).
//!
//! - `run`: fill the API server with one scale ([`layout::Layout`]), start mesh-control,
//!   time its initial sync, open one stream per simulated proxy and time the first
//!   answers, then make changes one at a time (EndpointSlice edits and VirtualService
//!   edits, each to a Service a few proxies watch and to the hub every proxy watches) and
//!   time each affected proxy's arrival; memory and CPU from /proc throughout. Prints a
//!   table, writes JSON.
//! - `report`: several `run` JSONs side by side, with the targets.
//! - `free-ports N`: N free loopback ports (for a private kube-local).

mod cluster;
mod control;
mod layout;
mod proxies;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::control::MeshControl;
use crate::layout::{HUB, Layout};
use crate::proxies::{Probe, Spec};

const TARGET_MEMORY_MB: f64 = 150.0;
const TARGET_PUSH_P99_MS: f64 = 1000.0;
/// Quiet time between changes: above mesh-control's debounce (100 ms), so every change is
/// its own build and push.
const GAP: Duration = Duration::from_millis(300);

#[derive(Parser)]
#[command(
    name = "mesh-control-load",
    about = "mesh-control scale benchmark driver"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Populate one scale, run mesh-control against it, measure.
    Run(RunArgs),
    /// Print several `run` results side by side; write them as one JSON file.
    Report {
        #[arg(long)]
        json: String,
        #[arg(long, default_value = "")]
        note: String,
        files: Vec<String>,
    },
    /// Print N free loopback TCP ports.
    FreePorts { n: usize },
}

#[derive(Args, Clone)]
struct RunArgs {
    #[arg(long)]
    mesh_control: String,
    #[arg(long)]
    kubeconfig: String,
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    endpoints_per_service: usize,
    #[arg(long, default_value_t = 1000)]
    proxies: usize,
    /// Skip the Pods (then every endpoint's peer is unknown and Workload keys answer NotFound).
    #[arg(long)]
    no_pods: bool,
    /// Changes of each narrow kind (a Service about 4 proxies watch).
    #[arg(long, default_value_t = 20)]
    narrow_rounds: usize,
    /// Changes of each hub kind (the Service every proxy watches).
    #[arg(long, default_value_t = 10)]
    hub_rounds: usize,
    /// Delete the objects afterwards.
    #[arg(long)]
    cleanup: bool,
    #[arg(long)]
    json: String,
    /// mesh-control's log.
    #[arg(long)]
    log: String,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::FreePorts { n } => {
            let ls: Vec<std::net::TcpListener> = (0..n)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
                .collect::<Result<_, _>>()?;
            let ports: Vec<String> = ls
                .iter()
                .map(|l| l.local_addr().map(|a| a.port().to_string()))
                .collect::<Result<_, _>>()?;
            println!("{}", ports.join(" "));
            Ok(())
        }
        Cmd::Report { json, note, files } => report(&json, &note, &files),
        Cmd::Run(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let out = rt.block_on(run(a.clone()))?;
            std::fs::write(&a.json, serde_json::to_vec_pretty(&out)?)?;
            print_table(&[out]);
            eprintln!("wrote {}", a.json);
            // The proxies' tasks are still winding down; the runtime is dropped here.
            rt.shutdown_timeout(Duration::from_secs(1));
            Ok(())
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    SliceNarrow,
    VsNarrow,
    SliceHub,
    VsHub,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::SliceNarrow => "endpointslice-edit-narrow",
            Kind::VsNarrow => "virtualservice-edit-narrow",
            Kind::SliceHub => "endpointslice-edit-hub",
            Kind::VsHub => "virtualservice-edit-hub",
        }
    }
}

struct Round {
    kind: Kind,
    service: usize,
    expected: usize,
    got: Vec<Duration>,
    api: Duration,
    responses: u64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn mb(kb: u64) -> f64 {
    (kb as f64 / 1024.0 * 10.0).round() / 10.0
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    json!({
        "n": v.len(),
        "p50_ms": pct(&v, 50.0),
        "p90_ms": pct(&v, 90.0),
        "p99_ms": pct(&v, 99.0),
        "max_ms": v.last().copied().unwrap_or(f64::NAN),
    })
}

/// The bucket bound below which a fraction `q` of the observations in `delta` fall.
fn bucket_quantile(delta: &[(f64, u64)], q: f64) -> f64 {
    let total = delta.last().map_or(0, |b| b.1);
    if total == 0 {
        return f64::NAN;
    }
    let want = (q * total as f64).ceil() as u64;
    delta
        .iter()
        .find(|(_, c)| *c >= want)
        .map_or(f64::INFINITY, |(le, _)| le * 1000.0)
}

/// The host's TcpExt ListenOverflows counter (every listener on the machine).
fn listen_overflows() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/net/netstat") else {
        return 0;
    };
    let mut lines = s.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let names = names.split_whitespace();
        let values = values.split_whitespace();
        for (n, v) in names.zip(values) {
            if n == "ListenOverflows" {
                return v.parse().unwrap_or(0);
            }
        }
    }
    0
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn run(a: RunArgs) -> Result<Value> {
    let l = Layout {
        services: a.services.max(2),
        eps: a.endpoints_per_service.max(1),
        namespaces: (a.services / 100).max(1),
        pods: !a.no_pods,
    };
    let load_at_start = loadavg();
    let cluster = Cluster::connect(&a.kubeconfig).await?;
    eprintln!(
        "[{} Services] populating: {} Services, {} endpoints, {} Pods, EndpointSlices {}",
        l.services,
        l.services,
        l.services * l.eps,
        if l.pods { l.services } else { 0 },
        cluster.slice_api_version()
    );
    // Leftovers of an interrupted run would make the creates fail.
    cluster.cleanup(&l).await.context("removing leftovers")?;
    let t = Instant::now();
    let populated = cluster.populate(&l).await?;
    let populate_total = t.elapsed();
    for (kind, n, d) in &populated.timings {
        eprintln!("  {kind}: {n} in {:.1} s", d.as_secs_f64());
    }
    let cip = |i: usize| populated.cluster_ips.get(&i).cloned().unwrap_or_default();

    // Each proxy: its own pod IP, the hub, and four Services in four key forms.
    let mut subscribers: Vec<HashSet<usize>> = vec![HashSet::new(); l.services];
    let specs: Vec<Spec> = (0..a.proxies)
        .map(|j| {
            let (pod, namespace, ip) = l.proxy_identity(j);
            let mut keys = vec![format!("addr/{ip}"), format!("addr/{}", cip(HUB))];
            subscribers[HUB].insert(j);
            for (n, i) in l.proxy_services(j).into_iter().enumerate() {
                subscribers[i].insert(j);
                keys.push(match n % 4 {
                    0 => format!("host/{}", l.fqdn(i)),
                    1 | 3 => format!("addr/{}", cip(i)),
                    _ => format!("host/{}.{}", Layout::name(i), l.ns(i)),
                });
            }
            Spec {
                pod,
                namespace,
                ip: ip.to_string(),
                keys,
            }
        })
        .collect();
    let keys_per_proxy = specs.first().map_or(0, |s| s.keys.len());
    let key_forms = |i: usize| -> HashSet<String> {
        [
            format!("host/{}", l.fqdn(i)),
            format!("addr/{}", cip(i)),
            format!("host/{}.{}", Layout::name(i), l.ns(i)),
        ]
        .into_iter()
        .collect()
    };

    // Initial sync.
    eprintln!("[{} Services] starting mesh-control", l.services);
    let mut mc = MeshControl::spawn(&a.mesh_control, &a.kubeconfig, &a.log)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let ready = loop {
        if let Ok((200, _)) = control::get(mc.metrics, "/readyz").await {
            break mc.started.elapsed();
        }
        if !mc.alive() {
            bail!("mesh-control exited during the initial sync; see {}", a.log);
        }
        if Instant::now() > deadline {
            bail!("mesh-control not ready within 120 s; see {}", a.log);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // The Istio kinds' watchers sync on their own (they never block readiness): wait until
    // no build for 1.5 s, so the measured changes start from a settled state.
    let settle_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = mc.builds().last().map(|b| b.0);
        if last.is_some_and(|t| t.elapsed() > Duration::from_millis(1500))
            || Instant::now() > settle_deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let startup_builds = mc.builds();
    let since_start =
        |l: Option<control::Line>| l.map(|l| ms(l.at.saturating_duration_since(mc.started)));
    let sync = json!({
        "listening_ms": since_start(mc.find("listening")),
        "core_watchers_synced_ms": since_start(mc.find("core watchers synced")),
        "ready_ms": ms(ready),
        "first_build_ms": startup_builds.first().map(|b| b.1),
        "last_startup_build_ms": startup_builds.last().map(|b| ms(b.0.saturating_duration_since(mc.started))),
        "startup_builds": startup_builds.len(),
    });
    let rss_idle = mc.rss_kb();
    let breakdown_idle = mc.rss_breakdown_kb();
    let cpu_sync = mc.cpu_seconds();
    eprintln!(
        "[{} Services] ready after {:.0} ms, {:.1} MB; connecting {} proxies",
        l.services,
        ms(ready),
        mb(rss_idle),
        a.proxies
    );

    // First subscriptions: every proxy at once, as after a mesh-control restart.
    let probe = Probe::new(a.proxies);
    let t_conn = Instant::now();
    let mut tasks = Vec::new();
    for (j, spec) in specs.into_iter().enumerate() {
        tasks.push(tokio::spawn(proxies::run(
            j,
            mc.plaintext,
            spec,
            probe.clone(),
        )));
    }
    let overflows0 = listen_overflows();
    let firsts = probe.wait_first(Duration::from_secs(120)).await;
    let overflows = listen_overflows().saturating_sub(overflows0);
    let mut first_ms: Vec<f64> = firsts
        .iter()
        .map(|f| ms(f.answered.saturating_duration_since(t_conn)))
        .collect();
    first_ms.sort_by(f64::total_cmp);
    let mut connect_ms: Vec<f64> = firsts
        .iter()
        .map(|f| ms(f.sent.saturating_duration_since(t_conn)))
        .collect();
    connect_ms.sort_by(f64::total_cmp);
    let mut answer_ms: Vec<f64> = firsts
        .iter()
        .map(|f| ms(f.answered.saturating_duration_since(f.sent)))
        .collect();
    answer_ms.sort_by(f64::total_cmp);
    let mut kinds = proxies::Kinds::default();
    for f in &firsts {
        kinds.service += f.kinds.service;
        kinds.workload += f.kinds.workload;
        kinds.not_found += f.kinds.not_found;
    }
    let failures = probe.failures.load(std::sync::atomic::Ordering::Relaxed);
    let cpu_connected = mc.cpu_seconds();
    let first = json!({
        "proxies": a.proxies,
        "answered": firsts.len(),
        "failed": failures,
        "all_answered_ms": first_ms.last().copied(),
        "p50_ms": pct(&first_ms, 50.0),
        "p99_ms": pct(&first_ms, 99.0),
        "connected_p50_ms": pct(&connect_ms, 50.0),
        "connected_p99_ms": pct(&connect_ms, 99.0),
        "request_to_answer_p50_ms": pct(&answer_ms, 50.0),
        "request_to_answer_p99_ms": pct(&answer_ms, 99.0),
        "listen_overflows_host_wide": overflows,
        "resources": {"service": kinds.service, "workload": kinds.workload, "not_found": kinds.not_found},
        "cpu_s": cpu_connected - cpu_sync,
    });
    eprintln!(
        "[{} Services] {} of {} proxies answered, the last after {:.0} ms ({} failed)",
        l.services,
        firsts.len(),
        a.proxies,
        first_ms.last().copied().unwrap_or(f64::NAN),
        failures
    );
    if firsts.len() < a.proxies {
        bail!("not every proxy got its first answer; see {}", a.log);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_connected = mc.rss_kb();
    let (_, m) = control::get(mc.metrics, "/metrics").await?;
    let connected_gauge = control::metric(&m, "mesh_control_connected_proxies");
    let pushes0 = control::metric(&m, "mesh_control_pushes_total").unwrap_or(0.0);
    let buckets0 = control::push_buckets(&m);

    // Changes, one at a time.
    let mut has_vs: HashSet<usize> = (0..l.services).filter(|&i| l.has_baseline_vs(i)).collect();
    let others = l.services - 1;
    let pick = |n: usize| 1 + (n * 7919) % others;
    let mut rounds: Vec<Round> = Vec::new();
    let mut k = 0usize;
    let cpu_rounds0 = mc.cpu_seconds();
    let builds_before = mc.builds().len();
    eprintln!(
        "[{} Services] changes: {} narrow and {} hub rounds of each kind",
        l.services, a.narrow_rounds, a.hub_rounds
    );
    for r in 0..a.narrow_rounds.max(a.hub_rounds) {
        for kind in [
            Kind::SliceNarrow,
            Kind::VsNarrow,
            Kind::SliceHub,
            Kind::VsHub,
        ] {
            let narrow = matches!(kind, Kind::SliceNarrow | Kind::VsNarrow);
            if (narrow && r >= a.narrow_rounds) || (!narrow && r >= a.hub_rounds) {
                continue;
            }
            k += 1;
            let i = match kind {
                Kind::SliceNarrow => pick(2 * r),
                Kind::VsNarrow => pick(2 * r + 1),
                Kind::SliceHub | Kind::VsHub => HUB,
            };
            let expected = subscribers[i].len();
            let marker_ip = Layout::marker_ip(k);
            let vs_marker = format!("r-{k}");
            let marker = match kind {
                Kind::SliceNarrow | Kind::SliceHub => {
                    format!("\"{marker_ip}:{}\"", layout::HTTP_PORT)
                }
                Kind::VsNarrow | Kind::VsHub => format!("\"{vs_marker}\""),
            };
            let responses0 = probe.responses.load(std::sync::atomic::Ordering::Relaxed);
            let t0 = Instant::now();
            probe.arm(key_forms(i), marker, t0, expected);
            match kind {
                Kind::SliceNarrow | Kind::SliceHub => {
                    cluster.move_endpoint(&l, i, marker_ip).await?;
                }
                Kind::VsNarrow | Kind::VsHub => {
                    cluster
                        .set_vs(&l, i, &vs_marker, has_vs.contains(&i))
                        .await?;
                    has_vs.insert(i);
                }
            }
            let api = t0.elapsed();
            let got = probe.wait(Duration::from_secs(10)).await;
            tokio::time::sleep(GAP).await;
            let responses = probe.responses.load(std::sync::atomic::Ordering::Relaxed) - responses0;
            if got.len() < expected {
                eprintln!(
                    "  change {k} ({}, svc-{i}): only {} of {expected} proxies got it within 10 s",
                    kind.name(),
                    got.len()
                );
            }
            rounds.push(Round {
                kind,
                service: i,
                expected,
                got,
                api,
                responses,
            });
        }
    }
    let cpu_rounds = mc.cpu_seconds() - cpu_rounds0;
    let builds_in_rounds: Vec<u64> = mc.builds()[builds_before..].iter().map(|b| b.1).collect();
    let (_, m) = control::get(mc.metrics, "/metrics").await?;
    let pushes1 = control::metric(&m, "mesh_control_pushes_total").unwrap_or(0.0);
    let buckets1 = control::push_buckets(&m);
    let delta: Vec<(f64, u64)> = buckets1
        .iter()
        .map(|(le, c)| {
            let before = buckets0.iter().find(|b| b.0 == *le).map_or(0, |b| b.1);
            (*le, c.saturating_sub(before))
        })
        .collect();

    // Steady state: everything pushed and ACKed, nothing changing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut samples = Vec::new();
    for _ in 0..5 {
        samples.push(mc.rss_kb());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    samples.sort_unstable();
    let rss_steady = samples[samples.len() / 2];
    let hwm = mc.hwm_kb();
    let (heap, anon, file) = mc.rss_breakdown_kb();
    let rss_max = mc
        .rss_max_kb
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(hwm);
    let threads = mc.threads();
    let cpu_total = mc.cpu_seconds();
    let alive = mc.alive();

    let mut push = serde_json::Map::new();
    let mut by_kind: BTreeMap<Kind, Vec<&Round>> = BTreeMap::new();
    for r in &rounds {
        by_kind.entry(r.kind).or_default().push(r);
    }
    let mut all = Vec::new();
    let mut worst_p99: f64 = 0.0;
    let mut missed_total = 0;
    for (kind, rs) in &by_kind {
        let lat: Vec<f64> = rs
            .iter()
            .flat_map(|r| r.got.iter().map(|d| ms(*d)))
            .collect();
        all.extend(lat.iter().copied());
        let expected: usize = rs.iter().map(|r| r.expected).sum();
        let missed = expected - lat.len();
        missed_total += missed;
        let mut s = summary(lat);
        let mut api: Vec<f64> = rs.iter().map(|r| ms(r.api)).collect();
        api.sort_by(f64::total_cmp);
        s["changes"] = json!(rs.len());
        s["affected_per_change"] = json!(expected as f64 / rs.len() as f64);
        s["missed"] = json!(missed);
        s["responses_per_change"] =
            json!(rs.iter().map(|r| r.responses).sum::<u64>() as f64 / rs.len() as f64);
        s["api_call_p50_ms"] = json!(pct(&api, 50.0));
        worst_p99 = worst_p99.max(s["p99_ms"].as_f64().unwrap_or(f64::INFINITY));
        push.insert(kind.name().into(), s);
    }
    push.insert("all".into(), summary(all));
    let per_change: Vec<Value> = rounds
        .iter()
        .map(|r| {
            let mut v: Vec<f64> = r.got.iter().map(|d| ms(*d)).collect();
            v.sort_by(f64::total_cmp);
            json!({
                "kind": r.kind.name(),
                "service": r.service,
                "expected": r.expected,
                "reached": r.got.len(),
                "responses": r.responses,
                "api_ms": ms(r.api),
                "p50_ms": pct(&v, 50.0),
                "max_ms": v.last().copied(),
            })
        })
        .collect();
    if missed_total > 0 {
        worst_p99 = f64::INFINITY;
    }
    let mut builds_sorted: Vec<f64> = builds_in_rounds.iter().map(|&b| b as f64).collect();
    builds_sorted.sort_by(f64::total_cmp);

    let peak_mb = mb(rss_max);
    let out = json!({
        "label": format!("{} Services / {} endpoints / {} proxies", l.services, l.services * l.eps, a.proxies),
        "loadavg_at_start": load_at_start,
        "scale": {
            "services": l.services,
            "endpoints": l.services * l.eps,
            "endpoint_slices": l.services,
            "pods": if l.pods { l.services } else { 0 },
            "namespaces": l.namespaces,
            "virtual_services_at_start": (0..l.services).filter(|&i| l.has_baseline_vs(i)).count(),
            "proxies": a.proxies,
            "keys_per_proxy": keys_per_proxy,
        },
        "populate_s": {
            "total": populate_total.as_secs_f64(),
            "by_kind": populated.timings.iter().map(|(k, n, d)| json!({"kind": k, "n": n, "s": d.as_secs_f64()})).collect::<Vec<_>>(),
        },
        "sync": sync,
        "first_subscriptions": first,
        "push_latency": push,
        "changes": per_change,
        "loadavg_at_end": loadavg(),
        "server_push_histogram": {
            "pushes": pushes1 - pushes0,
            "p50_le_ms": bucket_quantile(&delta, 0.5),
            "p99_le_ms": bucket_quantile(&delta, 0.99),
        },
        "builds_during_changes": {
            "n": builds_sorted.len(),
            "p50_ms": pct(&builds_sorted, 50.0),
            "max_ms": builds_sorted.last().copied(),
        },
        "memory_mb": {
            "after_sync_no_proxies": mb(rss_idle),
            "after_sync_by_mapping": {"brk_heap": mb(breakdown_idle.0), "other_anonymous": mb(breakdown_idle.1), "file": mb(breakdown_idle.2)},
            "connected": mb(rss_connected),
            "steady": mb(rss_steady),
            "peak": peak_mb,
            "vm_hwm": mb(hwm),
            "steady_by_mapping": {"brk_heap": mb(heap), "other_anonymous": mb(anon), "file": mb(file)},
        },
        "cpu_s": {
            "initial_sync": cpu_sync,
            "first_subscriptions": cpu_connected - cpu_sync,
            "changes": cpu_rounds,
            "per_change_ms": (cpu_rounds * 1000.0 / rounds.len().max(1) as f64).round(),
            "total": cpu_total,
        },
        "threads": threads,
        "connected_gauge": connected_gauge,
        "mesh_control_alive": alive,
        "targets": {
            "memory_mb": TARGET_MEMORY_MB,
            "memory_met": peak_mb < TARGET_MEMORY_MB,
            "push_p99_ms": TARGET_PUSH_P99_MS,
            "worst_push_p99_ms": if worst_p99.is_finite() { json!(worst_p99) } else { json!(null) },
            "push_met": worst_p99 < TARGET_PUSH_P99_MS,
        },
    });

    mc.stop().context("stopping mesh-control")?;
    for t in tasks {
        t.abort();
    }
    if a.cleanup
        && let Err(e) = cluster.cleanup(&l).await
    {
        eprintln!("warning: cleaning up: {e:#}");
    }
    Ok(out)
}

/// The table's rows: (label, JSON pointer of the value, target).
fn rows() -> Vec<(String, String, &'static str)> {
    let row = |l: &str, p: &str, t: &'static str| (l.to_owned(), p.to_owned(), t);
    let mut r = vec![
        row("Services / endpoints / Pods", "", ""),
        row("proxies x keys each", "", ""),
        row("populate (API calls), s", "/populate_s/total", ""),
        row(
            "initial sync: core watchers synced, ms",
            "/sync/core_watchers_synced_ms",
            "",
        ),
        row(
            "initial sync: /readyz 200 (first snapshot), ms",
            "/sync/ready_ms",
            "",
        ),
        row("first snapshot build, ms", "/sync/first_build_ms", ""),
        row(
            "first subscriptions: all answered, ms",
            "/first_subscriptions/all_answered_ms",
            "",
        ),
        row(
            "  per proxy, from the start: p50, ms",
            "/first_subscriptions/p50_ms",
            "",
        ),
        row(
            "  per proxy, from the start: p99, ms",
            "/first_subscriptions/p99_ms",
            "",
        ),
        row(
            "  connection up (TCP + h2): p99, ms",
            "/first_subscriptions/connected_p99_ms",
            "",
        ),
        row(
            "  first request to answer: p50, ms",
            "/first_subscriptions/request_to_answer_p50_ms",
            "",
        ),
        row(
            "  first request to answer: p99, ms",
            "/first_subscriptions/request_to_answer_p99_ms",
            "",
        ),
        row(
            "  listen queue overflows (host-wide counter)",
            "/first_subscriptions/listen_overflows_host_wide",
            "",
        ),
        row("first answers: Service / Workload / NotFound", "", ""),
    ];
    for (k, what) in [
        (Kind::SliceNarrow, "EndpointSlice edit, one Service"),
        (Kind::VsNarrow, "VirtualService edit, one Service"),
        (Kind::SliceHub, "EndpointSlice edit, hub Service"),
        (Kind::VsHub, "VirtualService edit, hub Service"),
    ] {
        let p = format!("/push_latency/{}", k.name());
        r.push(row(
            &format!("push p50 ({what}), ms"),
            &format!("{p}/p50_ms"),
            "",
        ));
        r.push(row(
            &format!("push p99 ({what}), ms"),
            &format!("{p}/p99_ms"),
            "< 1000",
        ));
        r.push(row(PER_CHANGE, &p, ""));
    }
    r.extend([
        row(
            "push p99, all changes, ms",
            "/push_latency/all/p99_ms",
            "< 1000",
        ),
        row(
            "server-side push p99 (bucket bound), ms",
            "/server_push_histogram/p99_le_ms",
            "",
        ),
        row(
            "snapshot build during changes p50, ms",
            "/builds_during_changes/p50_ms",
            "",
        ),
        row(
            "mesh-control CPU per change, ms",
            "/cpu_s/per_change_ms",
            "",
        ),
        row(
            "RSS after sync, no proxies, MB",
            "/memory_mb/after_sync_no_proxies",
            "",
        ),
        row("RSS with proxies connected, MB", "/memory_mb/connected", ""),
        row(
            "RSS steady (after changes), MB",
            "/memory_mb/steady",
            "< 150",
        ),
        row("RSS peak, MB", "/memory_mb/peak", "< 150"),
        row("CPU s: sync / first subs / changes", "", ""),
        row("memory target met", "/targets/memory_met", ""),
        row("push latency target met", "/targets/push_met", ""),
    ]);
    r
}

const PER_CHANGE: &str = "  changes x proxies reached (responses/change)";

fn cell(v: &Value, label: &str, ptr: &str) -> String {
    let g = |p: &str| v.pointer(p).cloned().unwrap_or(Value::Null);
    let num = |x: &Value| match x {
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            if f.fract() == 0.0 || f >= 100.0 {
                format!("{f:.0}")
            } else {
                format!("{f:.1}")
            }
        }
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    match label {
        "Services / endpoints / Pods" => format!(
            "{} / {} / {}",
            num(&g("/scale/services")),
            num(&g("/scale/endpoints")),
            num(&g("/scale/pods"))
        ),
        "proxies x keys each" => format!(
            "{} x {}",
            num(&g("/scale/proxies")),
            num(&g("/scale/keys_per_proxy"))
        ),
        "first answers: Service / Workload / NotFound" => format!(
            "{} / {} / {}",
            num(&g("/first_subscriptions/resources/service")),
            num(&g("/first_subscriptions/resources/workload")),
            num(&g("/first_subscriptions/resources/not_found"))
        ),
        "CPU s: sync / first subs / changes" => format!(
            "{} / {} / {}",
            num(&g("/cpu_s/initial_sync")),
            num(&g("/cpu_s/first_subscriptions")),
            num(&g("/cpu_s/changes"))
        ),
        PER_CHANGE => format!(
            "{} x {} ({})",
            num(&g(&format!("{ptr}/changes"))),
            num(&g(&format!("{ptr}/affected_per_change"))),
            num(&g(&format!("{ptr}/responses_per_change")))
        ),
        _ => num(&g(ptr)),
    }
}

fn print_table(runs: &[Value]) {
    let rows = rows();
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let heads: Vec<String> = runs
        .iter()
        .map(|r| {
            format!(
                "{} svc",
                r.pointer("/scale/services").cloned().unwrap_or(Value::Null)
            )
        })
        .collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|(label, ptr, _)| runs.iter().map(|r| cell(r, label, ptr)).collect())
        .collect();
    let wc = cells
        .iter()
        .flatten()
        .chain(heads.iter())
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max(8);
    let mut out = format!("{:<w0$}", "");
    for h in &heads {
        out.push_str(&format!("  {h:>wc$}"));
    }
    out.push_str("  target\n");
    for ((label, _, target), row) in rows.iter().zip(&cells) {
        out.push_str(&format!("{label:<w0$}"));
        for c in row {
            out.push_str(&format!("  {c:>wc$}"));
        }
        out.push_str(&format!("  {target}\n"));
    }
    println!("{out}");
}

fn report(json_out: &str, note: &str, files: &[String]) -> Result<()> {
    let runs: Vec<Value> = files
        .iter()
        .map(|f| {
            let s = std::fs::read(f).with_context(|| format!("reading {f}"))?;
            serde_json::from_slice(&s).with_context(|| format!("parsing {f}"))
        })
        .collect::<Result<_>>()?;
    if !note.is_empty() {
        println!("{note}");
    }
    print_table(&runs);
    let met = |k: &str| {
        runs.iter()
            .all(|r| r.pointer(k) == Some(&Value::Bool(true)))
    };
    let out = json!({
        "note": note,
        "targets": {
            "memory_mb": TARGET_MEMORY_MB,
            "push_p99_ms": TARGET_PUSH_P99_MS,
            "memory_met": met("/targets/memory_met"),
            "push_met": met("/targets/push_met"),
        },
        "runs": runs,
    });
    std::fs::write(json_out, serde_json::to_vec_pretty(&out)?)?;
    println!(
        "memory < {TARGET_MEMORY_MB} MB: {}; push p99 < {TARGET_PUSH_P99_MS} ms: {}",
        if met("/targets/memory_met") {
            "met"
        } else {
            "MISSED"
        },
        if met("/targets/push_met") {
            "met"
        } else {
            "MISSED"
        }
    );
    println!("wrote {json_out}");
    if !(met("/targets/memory_met") && met("/targets/push_met")) {
        std::process::exit(1);
    }
    Ok(())
}
