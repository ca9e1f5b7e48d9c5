//! `mesh-bookstore serve` answers every request with which service, version and pod it is,
//! httpbin-style (`/status/<codes>`, `/delay/<ms>`, a share of failures on purpose,
//! `/stats`, a graceful SIGTERM: `serve.rs`); `mesh-bookstore load` sends requests from C
//! concurrent connections and prints, as one JSON line, how many answers came from each
//! version with each status, which the client's sidecar refused, and the latencies
//! (`load.rs`); `mesh-bookstore get` prints one answer's body.
//!
//! ```text
//! mesh-bookstore serve [--port 9080] [--service reviews] [--version v1]
//!                      [--fail-rate 0..1] [--fail-status 503] [--shutdown-delay 5]
//!     GET /status/503            answers 503 (/status/200:7,503:3: 503 three times in ten)
//!     GET /delay/250             answers after 250 ms
//!     GET /stats                 connections accepted, open, max open at once, requests served
//!     GET /ready                 200, 503 once SIGTERM arrived
//!     anything else              200 {"service":"reviews","version":"v1","pod":"...","path":"/x","headers":{...}}
//! mesh-bookstore load URL [--count N | --duration S] [--concurrency C] [--rate R/s]
//!                         [--header 'K: V']... [--timeout 10s] [--trace]
//!     {"sent":N,"ok":..,"errors":..,"versions":{"v1":..},"statuses":{"200":..},"by":{"v1 200":..},
//!      "overloaded":..,"p50_ms":..,"p90_ms":..,"p99_ms":..,"max_ms":..,"error_samples":[..],...}
//! mesh-bookstore get URL [--method GET] [--include] [--header 'K: V']... [--timeout 10s]
//!     the answer's body; with --include the status line and headers first (curl -i)
//! ```
//! Service, version and pod also come from `SERVICE_NAME`, `VERSION` and `POD_NAME`; the
//! fail rate, fail status and shutdown delay from `FAIL_RATE`, `FAIL_STATUS` and
//! `SHUTDOWN_DELAY` (flags win).
#![forbid(unsafe_code)]

mod http;
mod load;
mod serve;

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage:
  mesh-bookstore serve [--port 9080] [--service NAME] [--version V] [--fail-rate 0..1] [--fail-status 503] [--shutdown-delay SECONDS]
  mesh-bookstore load URL [--count N | --duration SECONDS] [--concurrency C] [--rate PER_SECOND] [--header 'K: V']... [--timeout SECONDS] [--trace]
  mesh-bookstore get URL [--method M] [--include] [--header 'K: V']... [--timeout SECONDS]";

/// Flags that take no value.
const SWITCHES: &[&str] = &["trace", "include"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve::serve(serve::Options::parse(flags(&args[1..])?)?),
        Some("load") => {
            let url = args.get(1).with_context(|| USAGE.to_owned())?;
            let line = load::run(load::Options::parse(url, flags(&args[2..])?)?);
            println!("{line}");
            Ok(())
        }
        Some("get") => {
            let url = args.get(1).with_context(|| USAGE.to_owned())?;
            load::get(url, flags(&args[2..])?)
        }
        Some("--version" | "-V") => {
            println!("mesh-bookstore {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

/// `--name value` pairs (`--name=value` too; a switch takes no value and gets `""`).
fn flags(args: &[String]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let name = a
            .strip_prefix("--")
            .with_context(|| format!("unexpected argument {a:?}\n{USAGE}"))?;
        if let Some((name, v)) = name.split_once('=') {
            out.push((name.to_owned(), v.to_owned()));
            continue;
        }
        if SWITCHES.contains(&name) {
            out.push((name.to_owned(), String::new()));
            continue;
        }
        let v = it
            .next()
            .with_context(|| format!("--{name} needs a value"))?;
        out.push((name.to_owned(), v.clone()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    /// Polls `probe` for up to 5 s.
    pub fn eventually<T>(mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(v) = probe() {
                return v;
            }
            assert!(Instant::now() < deadline, "not within 5 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn flag_pairs_switches_and_equals() {
        let args: Vec<String> = ["--count", "5", "--trace", "--rate=10"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let f = super::flags(&args).unwrap_or_else(|e| panic!("{e:#}"));
        let want: Vec<(String, String)> = [("count", "5"), ("trace", ""), ("rate", "10")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(f, want);
        assert!(super::flags(&["x".to_owned()]).is_err());
        assert!(super::flags(&["--count".to_owned()]).is_err());
    }
}
