//! Protocol detection on a port that did not declare one: is the client speaking HTTP?
//!
//! Decided on the client's first bytes, without consuming them (`peek`), while the
//! upstream connection is made at once: a server-first protocol (a database greeting)
//! is never held up, since the upstream's first bytes decide too (they mean not HTTP).

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// An HTTP/1.x request line.
    Http1,
    /// The h2 connection preface (prior knowledge).
    H2,
    /// Anything else: L4.
    Opaque,
}

/// The h2 client connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The methods a request line may start with (RFC 9110 and PATCH).
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
];

/// Classifies `buf`, the bytes the client sent so far; `None` while they are a prefix of
/// something HTTP and more are needed.
pub fn classify(buf: &[u8]) -> Option<Sniffed> {
    if buf.is_empty() {
        return None;
    }
    if buf.len() >= H2_PREFACE.len() && buf.starts_with(H2_PREFACE) {
        return Some(Sniffed::H2);
    }
    if H2_PREFACE.starts_with(buf) {
        return None;
    }
    let mut undecided = false;
    for m in METHODS {
        if buf.len() >= m.len() {
            if buf.starts_with(m) {
                return Some(Sniffed::Http1);
            }
        } else if m.starts_with(buf) {
            undecided = true;
        }
    }
    if undecided {
        None
    } else {
        Some(Sniffed::Opaque)
    }
}

/// The most bytes [`classify`] needs to decide.
pub const SNIFF_LEN: usize = H2_PREFACE.len();

/// What a connection's first bytes say about TLS (inbound, with an identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// Not a TLS ClientHello: plaintext (or a protocol that is not TLS).
    NotTls,
    /// The start of a ClientHello: more bytes are needed.
    Incomplete,
    /// A ClientHello, with the ALPN protocols it offers (empty: none, or not readable
    /// from the first record) and the server name it asks for (SNI, lower case).
    Tls {
        alpn: Vec<Vec<u8>>,
        sni: Option<String>,
    },
}

impl Hello {
    /// Istio's mTLS: a ClientHello offering `istio` or an `istio-` protocol (Envoy
    /// sidecars always offer one under `ISTIO_MUTUAL`, as does this proxy). Other TLS is
    /// the app's own, passed through.
    pub fn is_istio(&self) -> bool {
        match self {
            Hello::Tls { alpn, .. } => alpn
                .iter()
                .any(|p| p.as_slice() == b"istio" || p.starts_with(b"istio-")),
            _ => false,
        }
    }
}

/// The most bytes peeked for a ClientHello: one TLS record (16 KiB) and its header.
pub const HELLO_MAX: usize = 5 + 16 * 1024;

/// Reads the ClientHello at the start of `buf` (a TLS handshake record) far enough to
/// find its ALPN and server name extensions. Never panics on any input.
pub fn client_hello(buf: &[u8]) -> Hello {
    // Record header: content type 22 (handshake), version 3.x, length.
    match buf {
        [] => return Hello::Incomplete,
        [0x16] | [0x16, 0x03] => return Hello::Incomplete,
        [0x16, 0x03, ..] => {}
        _ => return Hello::NotTls,
    }
    if buf.len() < 5 {
        return Hello::Incomplete;
    }
    let record_len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if record_len == 0 || record_len > 16 * 1024 + 256 {
        return Hello::NotTls;
    }
    let Some(record) = buf.get(5..5 + record_len) else {
        return Hello::Incomplete;
    };
    // Handshake header: type 1 (ClientHello), 24-bit length.
    if record.len() < 4 || record[0] != 0x01 {
        return Hello::NotTls;
    }
    match hello_extensions(&record[4..]) {
        Some((alpn, sni)) => Hello::Tls { alpn, sni },
        // A ClientHello longer than its first record, or malformed: TLS all the same,
        // without a readable ALPN or SNI.
        None => Hello::Tls {
            alpn: Vec::new(),
            sni: None,
        },
    }
}

/// A cursor over a byte slice that fails instead of panicking.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
}

/// The ALPN list and the SNI host name of a ClientHello body (after the handshake header).
fn hello_extensions(body: &[u8]) -> Option<(Vec<Vec<u8>>, Option<String>)> {
    let mut b = Bytes(body);
    b.take(2 + 32)?; // client_version, random
    let n = b.u8()?;
    b.take(n)?; // session id
    let n = b.u16()?;
    b.take(n)?; // cipher suites
    let n = b.u8()?;
    b.take(n)?; // compression methods
    let (mut alpn, mut sni) = (Vec::new(), None);
    if b.0.is_empty() {
        return Some((alpn, sni)); // no extensions
    }
    let n = b.u16()?;
    let mut exts = Bytes(b.take(n)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = exts.u16()?;
        let data = exts.take(len)?;
        match kind {
            // application_layer_protocol_negotiation (RFC 7301)
            0x0010 => {
                let mut d = Bytes(data);
                let n = d.u16()?;
                let mut list = Bytes(d.take(n)?);
                while !list.0.is_empty() {
                    let n = list.u8()?;
                    alpn.push(list.take(n)?.to_vec());
                }
            }
            // server_name (RFC 6066 §3): the first host_name entry
            0x0000 => {
                let mut d = Bytes(data);
                let n = d.u16()?;
                let mut list = Bytes(d.take(n)?);
                while !list.0.is_empty() {
                    let kind = list.u8()?;
                    let n = list.u16()?;
                    let name = list.take(n)?;
                    if kind == 0 && sni.is_none() {
                        sni = std::str::from_utf8(name)
                            .ok()
                            .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
                    }
                }
            }
            _ => {}
        }
    }
    Some((alpn, sni))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_and_preface() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Sniffed::Http1));
        assert_eq!(classify(b"PATCH /x HTTP/1.1\r\n"), Some(Sniffed::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Sniffed::H2));
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Sniffed::Opaque)); // TLS
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(Sniffed::Opaque));
        assert_eq!(classify(b"GETX"), Some(Sniffed::Opaque));
        assert_eq!(classify(b"get / HTTP/1.1"), Some(Sniffed::Opaque));
    }

    /// A ClientHello as rustls writes it, with `alpn`.
    fn rustls_hello(alpn: &[&[u8]]) -> Vec<u8> {
        use std::sync::Arc;
        let roots = rustls::RootCertStore::empty();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from("outbound_.9080_._.reviews").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        c.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn client_hellos_and_their_alpn() {
        let h = rustls_hello(&[b"istio-http/1.1", b"istio", b"http/1.1"]);
        let got = client_hello(&h);
        assert_eq!(
            got,
            Hello::Tls {
                alpn: vec![
                    b"istio-http/1.1".to_vec(),
                    b"istio".to_vec(),
                    b"http/1.1".to_vec()
                ],
                sni: Some("outbound_.9080_._.reviews".into()),
            }
        );
        assert!(got.is_istio());
        let app_tls = client_hello(&rustls_hello(&[b"h2", b"http/1.1"]));
        assert!(matches!(app_tls, Hello::Tls { .. }) && !app_tls.is_istio());
        assert_eq!(
            client_hello(&rustls_hello(&[])),
            Hello::Tls {
                alpn: vec![],
                sni: Some("outbound_.9080_._.reviews".into()),
            }
        );
        // Every prefix is incomplete, never a wrong answer.
        for n in 0..h.len() {
            assert_eq!(client_hello(&h[..n]), Hello::Incomplete, "{n}");
        }
        assert_eq!(client_hello(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(client_hello(b"\x16\x01"), Hello::NotTls);
        assert_eq!(client_hello(b"\x17\x03\x03\x00\x10"), Hello::NotTls);
        // Garbage after a plausible header: TLS without ALPN, no panic.
        let mut junk = vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x01];
        junk.extend(std::iter::repeat_n(0xff, 0x3f));
        assert_eq!(
            client_hello(&junk),
            Hello::Tls {
                alpn: vec![],
                sni: None
            }
        );
        let mut rng = 0x2545_f491_u64;
        for _ in 0..2000 {
            let mut b = h.clone();
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let i = (rng as usize) % b.len();
            b[i] = (rng >> 32) as u8;
            let _ = client_hello(&b);
        }
    }

    #[test]
    fn prefixes_wait_for_more() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"G"), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"P"), None); // POST, PUT, PATCH or the h2 preface
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(classify(b"OPTIONS"), None);
    }
}
