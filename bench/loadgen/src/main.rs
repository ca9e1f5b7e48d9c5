//! `mesh-loadgen server [BASE_PORT]` (in the world namespace) and
//! `mesh-loadgen client WORKLOAD HOST ...` (in a pod); see `bench/proxy/README.md`.
//! `mesh-loadgen http-server PORT` and `mesh-loadgen client http ...`: the HTTP/1.1
//! workload of `bench/http/README.md`.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mesh_loadgen::http::{BODY, http_get, http_load, serve_http};
use mesh_loadgen::{Ports, bulk, connrate, hold, identity, latency, open_json, serve};

const USAGE: &str = "usage:
  mesh-loadgen server [BASE_PORT]                       serve every workload (default base 5000)
  mesh-loadgen client identity HOST
  mesh-loadgen client bulk HOST STREAMS SECONDS
  mesh-loadgen client latency HOST SECONDS
  mesh-loadgen client connrate HOST SECONDS [CLIENTS]
  mesh-loadgen client hold HOST COUNT HOLD_FILE         hold COUNT connections while HOLD_FILE exists
  mesh-loadgen http-server PORT [BODY_BYTES]            HTTP/1.1 keep-alive, BODY_BYTES (1024) per answer
  mesh-loadgen client http HOST PORT AUTHORITY CONNS RATE SECONDS
                                                        GET / on CONNS keep-alive connections, RATE
                                                        req/s in total (0: as fast as they go)
  mesh-loadgen client http-get HOST PORT AUTHORITY [PATH]   one request: status and headers
Each client prints one JSON line; BASE_PORT in the environment moves the ports.";

fn arg<T: FromStr>(args: &[String], i: usize, name: &str) -> Result<T> {
    let raw = args
        .get(i)
        .with_context(|| format!("missing {name}\n{USAGE}"))?;
    raw.parse()
        .map_err(|_| anyhow::anyhow!("{name}: `{raw}` is not valid\n{USAGE}"))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut ports = Ports::default();
    if let Ok(base) = std::env::var("BASE_PORT") {
        ports.base = base
            .parse()
            .with_context(|| format!("BASE_PORT: `{base}` is not a port"))?;
    }
    match args.first().map(String::as_str) {
        Some("server") => {
            if args.len() > 1 {
                ports.base = arg(&args, 1, "BASE_PORT")?;
            }
            let any: [IpAddr; 2] = ["0.0.0.0".parse()?, "::".parse()?];
            serve(&any, ports).context("starting the server")?;
            println!("ready");
            loop {
                thread::sleep(Duration::from_secs(3600));
            }
        }
        Some("http-server") => {
            let port: u16 = arg(&args, 1, "PORT")?;
            let body = if args.len() > 2 {
                arg(&args, 2, "BODY_BYTES")?
            } else {
                BODY
            };
            serve_http(port, body).context("starting the HTTP server")?;
            println!("ready");
            loop {
                thread::sleep(Duration::from_secs(3600));
            }
        }
        Some("client") => {
            let workload: String = arg(&args, 1, "WORKLOAD")?;
            let host: IpAddr = arg(&args, 2, "HOST")?;
            let line = match workload.as_str() {
                "identity" => identity(host, ports)?.to_json(),
                "bulk" => bulk(
                    host,
                    ports,
                    arg(&args, 3, "STREAMS")?,
                    arg(&args, 4, "SECONDS")?,
                )?
                .to_json(),
                "latency" => latency(host, ports, arg(&args, 3, "SECONDS")?)?.to_json(),
                "connrate" => {
                    let clients = if args.len() > 4 {
                        arg(&args, 4, "CLIENTS")?
                    } else {
                        1
                    };
                    connrate(host, ports, arg(&args, 3, "SECONDS")?, clients)?.to_json()
                }
                "http" => http_load(
                    host,
                    arg(&args, 3, "PORT")?,
                    &arg::<String>(&args, 4, "AUTHORITY")?,
                    arg(&args, 5, "CONNS")?,
                    arg(&args, 6, "RATE")?,
                    arg(&args, 7, "SECONDS")?,
                )?
                .to_json(),
                "http-get" => {
                    let path = if args.len() > 5 {
                        arg(&args, 5, "PATH")?
                    } else {
                        "/".to_owned()
                    };
                    http_get(
                        host,
                        arg(&args, 3, "PORT")?,
                        &arg::<String>(&args, 4, "AUTHORITY")?,
                        &path,
                    )?
                }
                "hold" => {
                    let count: usize = arg(&args, 3, "COUNT")?;
                    let file: String = arg(&args, 4, "HOLD_FILE")?;
                    let closed = hold(host, ports, count, Path::new(&file), |n| {
                        println!("{}", open_json(n));
                    })?;
                    format!("{{\"closed\":{closed}}}")
                }
                other => bail!("unknown workload `{other}`\n{USAGE}"),
            };
            println!("{line}");
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}
