//! kube-inject throughput on a generated file of 2,000 Deployments (plus a Service every
//! tenth document, passed through). Run: `cargo bench -p mesh-webhook --bench kube_inject`.
//! Prints documents per second and the time for the whole file; the target is
//! "well under a second" for the 2,000 Deployments.

use std::time::{Duration, Instant};

use mesh_webhook::config::InjectConfig;
use mesh_webhook::kube_inject::{self, Mode, generate_deployments};

const DEPLOYMENTS: usize = 2_000;
const RUNS: usize = 7;

fn main() {
    let input = generate_deployments(DEPLOYMENTS);
    let docs = input.matches("\n---\n").count() + 1;
    let cfg = InjectConfig::default();
    let mode = Mode::Inject {
        cfg: &cfg,
        native_sidecars: false,
    };

    // Warm up (page in, allocator), and check the work is real.
    let first = kube_inject::rewrite(&input, mode).expect("kube-inject failed");
    assert_eq!(first.changed, DEPLOYMENTS);

    let mut times: Vec<Duration> = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        let out =
            kube_inject::rewrite(std::hint::black_box(&input), mode).expect("kube-inject failed");
        times.push(t.elapsed());
        std::hint::black_box(out);
    }
    times.sort();
    let median = times[RUNS / 2];
    let best = times[0];

    // The idempotent path: re-running on injected output (every template unchanged).
    let injected = first.output;
    let t = Instant::now();
    let again = kube_inject::rewrite(&injected, mode).expect("kube-inject failed");
    let rerun = t.elapsed();
    assert_eq!(again.changed, 0);

    println!(
        "kube_inject: {DEPLOYMENTS} Deployments ({docs} documents, {:.1} MiB in, {:.1} MiB out)",
        input.len() as f64 / (1024.0 * 1024.0),
        injected.len() as f64 / (1024.0 * 1024.0)
    );
    println!(
        "kube_inject: median {:.1} ms, best {:.1} ms over {RUNS} runs = {:.0} docs/s (median)",
        median.as_secs_f64() * 1e3,
        best.as_secs_f64() * 1e3,
        docs as f64 / median.as_secs_f64()
    );
    println!(
        "kube_inject: re-run on already injected output: {:.1} ms ({:.0} docs/s)",
        rerun.as_secs_f64() * 1e3,
        docs as f64 / rerun.as_secs_f64()
    );
}
