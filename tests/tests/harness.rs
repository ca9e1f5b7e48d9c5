//! The harness itself: namespaces are isolated, linked, and gone after drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use mesh_tests::netns::{Netns, link, require_root_and_tools};

#[test]
fn linked_namespaces_talk_and_vanish() {
    require_root_and_tools(&["ip"]);
    let name;
    {
        let a = Netns::new("hra");
        let b = Netns::new("hrb");
        name = a.name().to_owned();
        link(
            &a,
            &["198.18.0.1/24", "fd00:198:18::1/64"],
            &b,
            &["198.18.0.2/24", "fd00:198:18::2/64"],
        );
        for server_addr in ["198.18.0.2:7000", "[fd00:198:18::2]:7000"] {
            let listener = b.run(|| TcpListener::bind(server_addr).expect("bind in b"));
            let server = std::thread::spawn(move || {
                let (mut s, peer) = listener.accept().expect("accept");
                let mut buf = [0u8; 4];
                s.read_exact(&mut buf).expect("read");
                s.write_all(&buf).expect("echo");
                peer
            });
            a.run(|| {
                let mut c = TcpStream::connect(server_addr).expect("connect from a");
                c.write_all(b"ping").expect("write");
                let mut buf = [0u8; 4];
                c.read_exact(&mut buf).expect("read echo");
                assert_eq!(&buf, b"ping");
            });
            let seen = server.join().expect("server thread");
            assert!(
                seen.ip().to_string().ends_with(":1") || seen.ip().to_string() == "198.18.0.1",
                "peer seen as {seen}"
            );
        }
        // A third namespace, not linked to b, cannot reach b's address: isolation is real.
        let c = Netns::new("hrc");
        let reached = c.run(|| {
            std::net::TcpStream::connect_timeout(
                &"198.18.0.2:7000".parse().expect("addr"),
                std::time::Duration::from_millis(200),
            )
            .is_ok()
        });
        assert!(!reached, "an unlinked namespace reached 198.18.0.2");
    }
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&name),
        "namespace {name} survived its guard"
    );
}
