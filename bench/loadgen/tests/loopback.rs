//! Every workload against the real server on loopback: what the benchmark relies on
//! (the identity answer, byte counts, ordered quantiles, held connections) holds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use mesh_loadgen::{Ports, bulk, connrate, hold, identity, latency, serve};

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// One server for the whole test binary, on the first free block of five ports.
fn server() -> Ports {
    static PORTS: OnceLock<Ports> = OnceLock::new();
    *PORTS.get_or_init(|| {
        for base in (21000..40000).step_by(97) {
            let ports = Ports { base };
            // Both families bind all five ports before anything is spawned, so a busy
            // port leaves nothing behind; IPv6 may be missing on some machines.
            if serve(&[V4], ports).is_ok() {
                let _ = serve(&[V6], ports);
                return ports;
            }
        }
        panic!("no free block of five ports between 21000 and 40000");
    })
}

#[test]
fn identity_reports_the_address_reached_and_the_peer() {
    let ports = server();
    let id = identity(V4, ports).expect("identity");
    assert_eq!(id.dialled, SocketAddr::new(V4, ports.identity()));
    assert_eq!(id.reached, id.dialled);
    // No proxy in between: the server sees the client's own socket.
    assert_eq!(id.server_saw, id.client_local);
    let json = id.to_json();
    assert!(
        json.starts_with(&format!(
            "{{\"dialled\":[\"127.0.0.1\",{}],\"reached\":[\"127.0.0.1\",{}]",
            ports.identity(),
            ports.identity()
        )),
        "{json}"
    );
}

#[test]
fn bulk_streams_are_counted_by_the_server() {
    let ports = server();
    let r = bulk(V4, ports, 3, 0.3).expect("bulk");
    // At least one 1 MiB chunk per stream, and the server's counts matched the sends
    // (bulk fails otherwise).
    assert!(r.bytes >= 3 << 20, "{r:?}");
    assert!(r.seconds >= 0.3, "{r:?}");
    assert!(r.gbit_s() > 0.0);
}

#[test]
fn latency_quantiles_are_ordered() {
    let ports = server();
    let r = latency(V4, ports, 0.2).expect("latency");
    assert!(r.samples_ns.len() > 10, "{} samples", r.samples_ns.len());
    let (p50, p99, p999) = (
        r.quantile_us(0.5),
        r.quantile_us(0.99),
        r.quantile_us(0.999),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= p999, "{p50} {p99} {p999}");
}

#[test]
fn connrate_counts_completed_exchanges_from_every_client() {
    let ports = server();
    let r = connrate(V4, ports, 0.3, 3).expect("connrate");
    assert!(r.conns >= 3, "{r:?}");
    assert!(r.per_s() > 0.0);
}

#[test]
fn connrate_fails_when_nothing_answers() {
    // Nothing listens on the conn port (65533) of this block: refused at once, and the
    // workload fails instead of counting.
    let ports = Ports { base: 65530 };
    let e = connrate(V4, ports, 0.2, 2).expect_err("nothing listens on 65533");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
}

#[test]
fn hold_keeps_connections_open_until_the_file_is_gone() {
    let ports = server();
    let file = std::env::temp_dir().join(format!("mesh-loadgen-hold-{}", std::process::id()));
    std::fs::write(&file, b"").expect("hold file");
    let path = file.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        hold(V4, ports, 50, &path, |n| {
            let _ = tx.send(n);
        })
    });
    let opened = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("all opened");
    assert_eq!(opened, 50);
    // Still holding while the file exists.
    std::thread::sleep(Duration::from_millis(150));
    assert!(!holder.is_finished());
    std::fs::remove_file(&file).expect("remove hold file");
    assert_eq!(holder.join().expect("holder").expect("hold"), 50);
}

#[test]
fn identity_over_ipv6() {
    let ports = server();
    // IPv6 on loopback is expected (CI runs on a fresh Debian); without it this fails
    // loudly rather than pass without checking.
    let id = identity(V6, ports).expect("IPv6 loopback identity");
    assert_eq!(id.reached, SocketAddr::new(V6, ports.identity()));
    assert!(id.to_json().contains("[\"::1\","), "{}", id.to_json());
}

#[test]
fn the_binary_names_what_is_wrong_with_its_arguments() {
    let bin = env!("CARGO_BIN_EXE_mesh-loadgen");
    let out = Command::new(bin)
        .args(["client", "bulk", "not-an-ip", "1", "1"])
        .output()
        .expect("run mesh-loadgen");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HOST: `not-an-ip` is not valid"), "{err}");

    let out = Command::new(bin)
        .args(["client", "teleport", "127.0.0.1"])
        .output()
        .expect("run mesh-loadgen");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown workload `teleport`"), "{err}");
}

/// The HTTP server on a free port of 127.0.0.1 (once per test binary).
fn http_server() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        for port in (40000..50000).step_by(89) {
            if mesh_loadgen::http::serve_http(port, mesh_loadgen::http::BODY).is_ok() {
                return port;
            }
        }
        panic!("no free port for the HTTP server between 40000 and 50000");
    })
}

#[test]
fn http_get_reports_the_status_body_and_the_peer_the_server_saw() {
    let port = http_server();
    let json = mesh_loadgen::http::http_get(V4, port, "bench:8080", "/").expect("http-get");
    assert!(
        json.starts_with("{\"status\":200,\"body_len\":1024,"),
        "{json}"
    );
    // No proxy in between: the server saw the client's own socket.
    let local = json
        .split("\"client_local\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("client_local");
    assert!(
        json.contains(&format!("[\"x-peer\",\"{local}\"]")),
        "{json}"
    );
    assert!(
        json.contains(&format!("[\"x-local\",\"127.0.0.1:{port}\"]")),
        "{json}"
    );
}

#[test]
fn http_load_keeps_its_rate_and_counts_every_body() {
    let port = http_server();
    let r = mesh_loadgen::http::http_load(V4, port, "bench", 4, 400.0, 0.5).expect("fixed rate");
    // 4 connections x 50 scheduled sends in 0.5 s (each on its own staggered schedule).
    assert_eq!(r.samples_ns.len(), 200, "{}", r.to_json());
    assert_eq!(r.late_ns.len(), 200);
    assert_eq!(r.non_200, 0);
    assert_eq!(r.body_bytes, 200 * 1024);
    assert!(r.quantile_us(0.5) <= r.quantile_us(0.99));
    let u = mesh_loadgen::http::http_load(V4, port, "bench", 2, 0.0, 0.2).expect("unbounded");
    assert!(u.samples_ns.len() > 10, "{}", u.to_json());
    assert!(u.late_ns.is_empty());
    assert!(
        u.to_json().contains("\"late_p99_us\":null"),
        "{}",
        u.to_json()
    );
}
