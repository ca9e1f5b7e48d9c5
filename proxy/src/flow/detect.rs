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
