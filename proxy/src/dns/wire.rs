//! The DNS wire format (RFC 1035 §4, EDNS0 from RFC 6891), as far as the proxy needs it:
//! parsing the queries apps send, building the few responses the proxy writes itself.
//! Upstream answers are never parsed: they are relayed byte for byte, compression
//! pointers and all ([`Check`] only looks at their header and question bytes).
//!
//! The parser is total: every input gives a [`Parsed`], no index is unchecked, and no
//! compression pointer is followed (in a question they are refused; in the other
//! sections of a query they end a name, which is all skipping a record needs), so a
//! query can neither loop nor read out of bounds.

use std::net::IpAddr;

pub const HEADER_LEN: usize = 12;
pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_OPT: u16 = 41;
pub const CLASS_IN: u16 = 1;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
/// BADVERS (16): the low 4 bits go in the header (0), the high 8 in the OPT record (1).
const EXT_RCODE_BADVERS: u8 = 1;

pub const FLAG_QR: u16 = 0x8000;
pub const OPCODE_MASK: u16 = 0x7800;
pub const FLAG_TC: u16 = 0x0200;
pub const FLAG_RD: u16 = 0x0100;
pub const FLAG_RA: u16 = 0x0080;
pub const FLAG_CD: u16 = 0x0010;
pub const RCODE_MASK: u16 = 0x000f;

/// Longest name on the wire (RFC 1035 §2.3.4), labels' length octets and root included.
const MAX_NAME_WIRE: usize = 255;
/// Classic UDP limit without EDNS (RFC 1035 §4.2.1).
pub const MIN_UDP_PAYLOAD: usize = 512;
/// The largest UDP response the proxy relays or writes, whatever the client advertises
/// (it bounds the buffers of in-flight queries; bigger answers go over TCP).
pub const MAX_UDP_PAYLOAD: usize = 4096;
/// The UDP payload size the proxy advertises in its own OPT records (DNS flag day 2020).
pub const ADVERTISED_UDP_PAYLOAD: u16 = 1232;
/// Length of the minimal OPT record: root name, type, class, TTL, RDLENGTH 0.
const OPT_LEN: usize = 11;

/// A message header (RFC 1035 §4.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    pub flags: u16,
    pub qdcount: u16,
    pub ancount: u16,
    pub nscount: u16,
    pub arcount: u16,
}

impl Header {
    pub fn parse(msg: &[u8]) -> Option<Header> {
        let h = msg.get(..HEADER_LEN)?;
        let word = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
        Some(Header {
            id: word(0),
            flags: word(2),
            qdcount: word(4),
            ancount: word(6),
            nscount: word(8),
            arcount: word(10),
        })
    }

    pub fn is_response(&self) -> bool {
        self.flags & FLAG_QR != 0
    }

    pub fn opcode(&self) -> u8 {
        ((self.flags & OPCODE_MASK) >> 11) as u8
    }

    #[cfg(test)]
    pub fn rcode(&self) -> u8 {
        (self.flags & RCODE_MASK) as u8
    }

    pub fn truncated(&self) -> bool {
        self.flags & FLAG_TC != 0
    }
}

/// The one question of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The name in lower case, labels joined by `.`, no trailing dot (the root is `""`);
    /// `None` when a label holds a byte no host name has (anything but letters, digits,
    /// `-` and `_`): such a name is never a mesh name and is forwarded as is.
    pub name: Option<String>,
    pub qtype: u16,
    pub qclass: u16,
    /// Where the question ends in the message: `msg[HEADER_LEN..end]` is its wire form,
    /// copied into answers so that they echo the question's case.
    pub end: usize,
}

/// What the query's OPT record says (RFC 6891 §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub udp_payload: u16,
    pub version: u8,
}

/// A standard query (opcode QUERY) with one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query<'a> {
    pub raw: &'a [u8],
    pub header: Header,
    pub question: Question,
    pub edns: Option<Edns>,
}

impl Query<'_> {
    /// The question's wire bytes.
    pub fn question_bytes(&self) -> &[u8] {
        self.raw.get(HEADER_LEN..self.question.end).unwrap_or(&[])
    }

    /// The largest UDP response this client takes: 512 without EDNS, its advertised
    /// size with it (never less than 512, never more than [`MAX_UDP_PAYLOAD`]).
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => usize::from(e.udp_payload).clamp(MIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD),
            None => MIN_UDP_PAYLOAD,
        }
    }
}

/// What a message received from a client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// Shorter than a header, or a response (QR set): no answer is sent (answering a
    /// response could start a loop between two resolvers).
    Ignore,
    /// A header, then something wrong: the answer is FORMERR.
    Malformed(Header),
    /// A standard query.
    Query(Query<'a>),
    /// Another opcode (NOTIFY, UPDATE...): not parsed further, forwarded as is.
    OtherOpcode(Header),
}

/// Why a query is malformed (for debug logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformation {
    QuestionCount,
    Truncated,
    Pointer,
    LabelType,
    NameTooLong,
    OptName,
    TwoOpts,
}

/// Parses a message from a client.
pub fn parse(msg: &[u8]) -> Parsed<'_> {
    let Some(header) = Header::parse(msg) else {
        return Parsed::Ignore;
    };
    if header.is_response() {
        return Parsed::Ignore;
    }
    if header.opcode() != 0 {
        return Parsed::OtherOpcode(header);
    }
    match parse_query(msg, header) {
        Ok(q) => Parsed::Query(q),
        Err(_) => Parsed::Malformed(header),
    }
}

/// [`parse`], saying why a query is malformed.
pub fn parse_query(msg: &[u8], header: Header) -> Result<Query<'_>, Malformation> {
    if header.qdcount != 1 {
        return Err(Malformation::QuestionCount);
    }
    let (name, pos) = question_name(msg, HEADER_LEN)?;
    let fixed = msg.get(pos..pos + 4).ok_or(Malformation::Truncated)?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
    let end = pos + 4;
    let question = Question {
        name,
        qtype,
        qclass,
        end,
    };
    // The other sections: skipped record by record, looking for the OPT record in the
    // additional one. Bytes after the last record are ignored.
    let mut pos = end;
    for _ in 0..u32::from(header.ancount) + u32::from(header.nscount) {
        pos = skip_record(msg, pos)?.0;
    }
    let mut edns = None;
    for _ in 0..header.arcount {
        let (next, opt) = skip_record(msg, pos)?;
        if let Some(opt) = opt {
            if edns.is_some() {
                return Err(Malformation::TwoOpts);
            }
            edns = Some(opt);
        }
        pos = next;
    }
    Ok(Query {
        raw: msg,
        header,
        question,
        edns,
    })
}

/// Reads the question's name: labels only, no pointer (a pointer in the first
/// question could only point into the header, or forward, or at itself).
fn question_name(msg: &[u8], mut pos: usize) -> Result<(Option<String>, usize), Malformation> {
    let start = pos;
    let mut name = String::new();
    let mut host_like = true;
    loop {
        let len = *msg.get(pos).ok_or(Malformation::Truncated)?;
        match len & 0xc0 {
            0x00 => {}
            0xc0 => return Err(Malformation::Pointer),
            _ => return Err(Malformation::LabelType),
        }
        let len = usize::from(len);
        if pos + 1 + len - start > MAX_NAME_WIRE {
            return Err(Malformation::NameTooLong);
        }
        if len == 0 {
            let name = host_like.then_some(name);
            return Ok((name, pos + 1));
        }
        let label = msg
            .get(pos + 1..pos + 1 + len)
            .ok_or(Malformation::Truncated)?;
        if host_like {
            if label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
            {
                if !name.is_empty() {
                    name.push('.');
                }
                name.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
            } else {
                host_like = false;
            }
        }
        pos += 1 + len;
    }
}

/// Skips a name in a section after the question: a pointer ends it (not followed).
/// Returns the position after the name and whether it was the root name.
fn skip_name(msg: &[u8], mut pos: usize) -> Result<(usize, bool), Malformation> {
    let start = pos;
    loop {
        let len = *msg.get(pos).ok_or(Malformation::Truncated)?;
        match len & 0xc0 {
            0x00 => {}
            0xc0 => {
                msg.get(pos + 1).ok_or(Malformation::Truncated)?;
                return Ok((pos + 2, false));
            }
            _ => return Err(Malformation::LabelType),
        }
        if len == 0 {
            return Ok((pos + 1, pos == start));
        }
        pos += 1 + usize::from(len);
        if pos - start > MAX_NAME_WIRE {
            return Err(Malformation::NameTooLong);
        }
    }
}

/// Skips a resource record; returns the position after it, and what it says if it is
/// an OPT record.
fn skip_record(msg: &[u8], pos: usize) -> Result<(usize, Option<Edns>), Malformation> {
    let (pos, root) = skip_name(msg, pos)?;
    let fixed = msg.get(pos..pos + 10).ok_or(Malformation::Truncated)?;
    let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    let end = pos + 10 + rdlen;
    if end > msg.len() {
        return Err(Malformation::Truncated);
    }
    if rtype != TYPE_OPT {
        return Ok((end, None));
    }
    if !root {
        return Err(Malformation::OptName);
    }
    let edns = Edns {
        udp_payload: u16::from_be_bytes([fixed[2], fixed[3]]),
        version: fixed[5],
    };
    Ok((end, Some(edns)))
}

/// The flags of a response to a query with `query_flags`: QR, the query's opcode, RD
/// and CD, RA (the proxy recurses, through its upstreams), not AA, and `rcode`.
fn response_flags(query_flags: u16, rcode: u8) -> u16 {
    FLAG_QR
        | (query_flags & (OPCODE_MASK | FLAG_RD | FLAG_CD))
        | FLAG_RA
        | (u16::from(rcode) & RCODE_MASK)
}

fn push_header(out: &mut Vec<u8>, h: &Header) {
    for w in [h.id, h.flags, h.qdcount, h.ancount, h.nscount, h.arcount] {
        out.extend_from_slice(&w.to_be_bytes());
    }
}

fn push_opt(out: &mut Vec<u8>, ext_rcode: u8) {
    out.push(0); // root
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&ADVERTISED_UDP_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&[ext_rcode, 0, 0, 0]); // version 0, no DO: no DNSSEC here
    out.extend_from_slice(&0u16.to_be_bytes());
}

fn header_only(id: u16, flags: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    push_header(
        &mut out,
        &Header {
            id,
            flags,
            qdcount: 0,
            ancount: 0,
            nscount: 0,
            arcount: 0,
        },
    );
    out
}

/// FORMERR for a query that could not be parsed: the header alone (its question
/// cannot be echoed, and an OPT record of its is not trusted).
pub fn format_error(query: &Header) -> Vec<u8> {
    header_only(query.id, response_flags(query.flags, RCODE_FORMERR))
}

/// SERVFAIL with the header alone, for a query of another opcode.
pub fn server_failure_header(query: &Header) -> Vec<u8> {
    header_only(query.id, response_flags(query.flags, RCODE_SERVFAIL))
}

/// An upstream response's header alone, TC set: the stand-in for a response of
/// another opcode too big for the client's UDP limit.
pub fn truncated_header(response: &Header) -> Vec<u8> {
    header_only(response.id, response.flags | FLAG_TC)
}

/// A response to `query` with no records: SERVFAIL, or NOERROR with no answer (NODATA).
/// The question is echoed; an OPT record answers the query's.
pub fn empty_response(query: &Query<'_>, rcode: u8) -> Vec<u8> {
    answer(query, rcode, &[], 0, usize::MAX)
}

/// The proxy's own answer to `query`: `ips`' records of the question's type (A for
/// IPv4, AAAA for IPv6; none for other types), each named by a pointer to the
/// question's name, with `ttl`. Records that would push the response over `limit` bytes
/// are left out and TC is set (the client asks again over TCP). A query with EDNS gets
/// a minimal OPT record; one of an EDNS version other than 0 gets BADVERS.
pub fn answer(query: &Query<'_>, rcode: u8, ips: &[IpAddr], ttl: u32, limit: usize) -> Vec<u8> {
    let badvers = query.edns.is_some_and(|e| e.version != 0);
    let question = query.question_bytes();
    let mut out = Vec::with_capacity(HEADER_LEN + question.len() + OPT_LEN + 28 * ips.len());
    let mut header = Header {
        id: query.header.id,
        flags: response_flags(query.header.flags, rcode),
        qdcount: 1,
        ancount: 0,
        nscount: 0,
        arcount: u16::from(query.edns.is_some()),
    };
    push_header(&mut out, &header);
    out.extend_from_slice(question);
    let reserve = if query.edns.is_some() { OPT_LEN } else { 0 };
    if !badvers && query.question.qclass == CLASS_IN {
        for ip in ips {
            let (rtype, data): (u16, &[u8]) = match (query.question.qtype, ip) {
                (TYPE_A, IpAddr::V4(v4)) => (TYPE_A, &v4.octets()[..]),
                (TYPE_AAAA, IpAddr::V6(v6)) => (TYPE_AAAA, &v6.octets()[..]),
                _ => continue,
            };
            let record_len = 2 + 10 + data.len();
            if out.len() + record_len + reserve > limit || header.ancount == u16::MAX {
                header.flags |= FLAG_TC;
                break;
            }
            out.extend_from_slice(&[0xc0, HEADER_LEN as u8]); // the question's name
            out.extend_from_slice(&rtype.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&(data.len() as u16).to_be_bytes());
            out.extend_from_slice(data);
            header.ancount += 1;
        }
    }
    if query.edns.is_some() {
        push_opt(&mut out, if badvers { EXT_RCODE_BADVERS } else { 0 });
    }
    let mut head = Vec::with_capacity(HEADER_LEN);
    push_header(&mut head, &header);
    out[..HEADER_LEN].copy_from_slice(&head);
    out
}

/// A stand-in for an upstream response too big for the client's UDP limit: its header
/// with TC set and the question of `query`, nothing else (RFC 2181 §9: the client
/// retries over TCP).
pub fn truncated_stub(response: &Header, query: &Query<'_>) -> Vec<u8> {
    let question = query.question_bytes();
    let mut out = Vec::with_capacity(HEADER_LEN + question.len());
    push_header(
        &mut out,
        &Header {
            id: response.id,
            flags: response.flags | FLAG_TC,
            qdcount: 1,
            ancount: 0,
            nscount: 0,
            arcount: 0,
        },
    );
    out.extend_from_slice(question);
    out
}

/// Which upstream datagrams answer a forwarded query: the same ID, QR set, and (when
/// the response has a question) the same question, compared case-insensitively. Stray
/// or spoofed datagrams that fail it are ignored.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    pub id: u16,
    pub question: Option<&'a [u8]>,
}

impl Check<'_> {
    pub fn matches(&self, response: &[u8]) -> bool {
        let Some(h) = Header::parse(response) else {
            return false;
        };
        if h.id != self.id || !h.is_response() {
            return false;
        }
        match self.question {
            Some(q) if h.qdcount > 0 => response
                .get(HEADER_LEN..HEADER_LEN + q.len())
                .is_some_and(|r| r.eq_ignore_ascii_case(q)),
            _ => true,
        }
    }
}

/// Builds a query's wire form (tests, and nothing on the data path).
#[cfg(test)]
pub fn build_query(id: u16, name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut out = Vec::new();
    push_header(
        &mut out,
        &Header {
            id,
            flags: FLAG_RD,
            qdcount: 1,
            ancount: 0,
            nscount: 0,
            arcount: u16::from(edns.is_some()),
        },
    );
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    if let Some(size) = edns {
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0x80, 0, 0, 0]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn query(msg: &[u8]) -> Query<'_> {
        match parse(msg) {
            Parsed::Query(q) => q,
            other => panic!("not a query: {other:?}"),
        }
    }

    /// Reads a response's answer records (pointer names only, as the proxy writes).
    fn answers(msg: &[u8]) -> Vec<(u16, u32, Vec<u8>)> {
        let h = Header::parse(msg).unwrap();
        let (_, mut pos) = question_name(msg, HEADER_LEN).unwrap();
        pos += 4;
        let mut out = Vec::new();
        for _ in 0..h.ancount {
            assert_eq!(&msg[pos..pos + 2], &[0xc0, 12]);
            let rtype = u16::from_be_bytes([msg[pos + 2], msg[pos + 3]]);
            let ttl = u32::from_be_bytes(msg[pos + 6..pos + 10].try_into().unwrap());
            let len = usize::from(u16::from_be_bytes([msg[pos + 10], msg[pos + 11]]));
            out.push((rtype, ttl, msg[pos + 12..pos + 12 + len].to_vec()));
            pos += 12 + len;
        }
        out
    }

    #[test]
    fn parses_a_query_with_edns() {
        let msg = build_query(
            0xbeef,
            "Reviews.Default.svc.cluster.local",
            TYPE_A,
            Some(4096),
        );
        let q = query(&msg);
        assert_eq!(q.header.id, 0xbeef);
        assert_eq!(
            q.question.name.as_deref(),
            Some("reviews.default.svc.cluster.local")
        );
        assert_eq!((q.question.qtype, q.question.qclass), (TYPE_A, CLASS_IN));
        assert_eq!(
            q.edns,
            Some(Edns {
                udp_payload: 4096,
                version: 0
            })
        );
        assert_eq!(q.udp_limit(), 4096);
        assert_eq!(&q.question_bytes()[1..8], b"Reviews");
    }

    #[test]
    fn root_and_odd_names() {
        let msg = build_query(1, "", TYPE_A, None);
        assert_eq!(query(&msg).question.name.as_deref(), Some(""));
        let mut msg = build_query(1, "a.b", TYPE_A, None);
        msg[13] = b'.'; // a label holding a dot: not a host name
        assert_eq!(query(&msg).question.name, None);
        assert_eq!(query(&msg).udp_limit(), 512);
    }

    #[test]
    fn refuses_pointers_and_bad_labels_in_the_question() {
        let mut msg = build_query(1, "x", TYPE_A, None);
        msg.truncate(HEADER_LEN);
        msg.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]); // points at the header
        assert_eq!(
            parse_query(&msg, Header::parse(&msg).unwrap()),
            Err(Malformation::Pointer)
        );
        msg[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&[0xc0, 13]); // points at itself
        assert!(matches!(parse(&msg), Parsed::Malformed(_)));
        msg[HEADER_LEN] = 0x41; // extended label type
        assert_eq!(
            parse_query(&msg, Header::parse(&msg).unwrap()),
            Err(Malformation::LabelType)
        );
    }

    #[test]
    fn refuses_long_names_counts_and_truncation() {
        let long = vec!["a".repeat(63); 4].join(".");
        let msg = build_query(1, &long, TYPE_A, None); // 4 * 64 + 1 = 257 > 255
        assert_eq!(
            parse_query(&msg, Header::parse(&msg).unwrap()),
            Err(Malformation::NameTooLong)
        );
        let ok = [
            "a".repeat(63),
            "a".repeat(63),
            "a".repeat(63),
            "a".repeat(61),
        ]
        .join(".");
        assert!(matches!(
            parse(&build_query(1, &ok, TYPE_A, None)),
            Parsed::Query(_)
        ));

        let mut msg = build_query(1, "x", TYPE_A, None);
        msg[5] = 2;
        assert!(matches!(parse(&msg), Parsed::Malformed(_)));
        msg[5] = 0;
        assert!(matches!(parse(&msg), Parsed::Malformed(_)));
        let msg = build_query(1, "x", TYPE_A, Some(1232));
        for n in HEADER_LEN..msg.len() {
            assert!(matches!(parse(&msg[..n]), Parsed::Malformed(_)), "{n}");
        }
        assert_eq!(parse(&msg[..11]), Parsed::Ignore);
    }

    #[test]
    fn responses_and_other_opcodes() {
        let mut msg = build_query(1, "x", TYPE_A, None);
        msg[2] |= 0x80;
        assert_eq!(parse(&msg), Parsed::Ignore);
        msg[2] = 0x28; // UPDATE
        assert!(matches!(parse(&msg), Parsed::OtherOpcode(h) if h.opcode() == 5));
    }

    #[test]
    fn edns_rules() {
        let mut msg = build_query(1, "x", TYPE_A, Some(100));
        assert_eq!(query(&msg).udp_limit(), 512); // never below 512
        // A second OPT record.
        let opt = msg[msg.len() - 11..].to_vec();
        msg.extend_from_slice(&opt);
        msg[11] = 2;
        assert_eq!(
            parse_query(&msg, Header::parse(&msg).unwrap()),
            Err(Malformation::TwoOpts)
        );
        // An OPT record that is not owned by the root.
        let mut msg = build_query(1, "x", TYPE_A, None);
        msg[11] = 1;
        msg.extend_from_slice(&[0xc0, 12, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            parse_query(&msg, Header::parse(&msg).unwrap()),
            Err(Malformation::OptName)
        );
        // Other records may use pointers: skipped, not followed.
        let mut msg = build_query(1, "x", TYPE_A, None);
        msg[11] = 1;
        msg.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4]);
        assert_eq!(query(&msg).edns, None);
    }

    #[test]
    fn builds_answers() {
        let msg = build_query(7, "Reviews", TYPE_A, None);
        let q = query(&msg);
        let ips = [
            IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::new(10, 96, 0, 11)),
        ];
        let resp = answer(&q, RCODE_NOERROR, &ips, 30, 512);
        let h = Header::parse(&resp).unwrap();
        assert_eq!(h.id, 7);
        assert!(h.is_response() && !h.truncated());
        assert_eq!(h.flags & (FLAG_RD | FLAG_RA | 0x0400), FLAG_RD | FLAG_RA); // not AA
        assert_eq!((h.qdcount, h.ancount, h.arcount), (1, 2, 0));
        assert_eq!(&resp[HEADER_LEN..q.question.end], q.question_bytes()); // case kept
        assert_eq!(
            answers(&resp),
            vec![
                (TYPE_A, 30, vec![10, 96, 0, 10]),
                (TYPE_A, 30, vec![10, 96, 0, 11])
            ]
        );
        // AAAA; EDNS gets a minimal OPT.
        let msg = build_query(8, "reviews", TYPE_AAAA, Some(1232));
        let resp = answer(&query(&msg), RCODE_NOERROR, &ips, 30, 1232);
        let h = Header::parse(&resp).unwrap();
        assert_eq!((h.ancount, h.arcount), (1, 1));
        assert_eq!(answers(&resp)[0].2, Ipv6Addr::LOCALHOST.octets().to_vec());
        assert_eq!(
            &resp[resp.len() - 11..],
            &[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]
        );
        assert!(matches!(
            parse(&build_query(1, "x", TYPE_A, None)),
            Parsed::Query(_)
        ));
    }

    #[test]
    fn truncates_answers_over_the_limit() {
        let msg = build_query(7, "svc", TYPE_A, Some(512));
        let q = query(&msg);
        let ips: Vec<IpAddr> = (0..100u8)
            .map(|i| IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)))
            .collect();
        let resp = answer(&q, RCODE_NOERROR, &ips, 30, 512);
        let h = Header::parse(&resp).unwrap();
        assert!(resp.len() <= 512);
        assert!(h.truncated());
        assert_eq!(usize::from(h.ancount), answers(&resp).len());
        assert_eq!(h.arcount, 1);
        assert_eq!(
            resp.len(),
            q.question.end + 16 * usize::from(h.ancount) + 11
        );
    }

    #[test]
    fn error_responses() {
        let msg = build_query(9, "x", TYPE_MX, Some(1232));
        let q = query(&msg);
        let resp = empty_response(&q, RCODE_SERVFAIL);
        let h = Header::parse(&resp).unwrap();
        assert_eq!((h.rcode(), h.qdcount, h.ancount, h.arcount), (2, 1, 0, 1));
        let resp = format_error(&q.header);
        let h = Header::parse(&resp).unwrap();
        assert_eq!((h.id, h.rcode(), h.qdcount, resp.len()), (9, 1, 0, 12));
        let h = Header::parse(&server_failure_header(&q.header)).unwrap();
        assert_eq!((h.rcode(), h.qdcount), (2, 0));
        let upstream = Header {
            flags: FLAG_QR | FLAG_RA | 0x2800, // an UPDATE response
            ..q.header
        };
        let h = Header::parse(&truncated_header(&upstream)).unwrap();
        assert_eq!(h.flags, upstream.flags | FLAG_TC);
        assert_eq!((h.qdcount, h.ancount, h.arcount), (0, 0, 0));
        // EDNS version 1: BADVERS, no records.
        let mut msg = build_query(9, "x", TYPE_A, Some(1232));
        let at = msg.len() - 5;
        msg[at] = 1;
        let resp = answer(&query(&msg), 0, &[IpAddr::V4(Ipv4Addr::LOCALHOST)], 30, 512);
        let h = Header::parse(&resp).unwrap();
        assert_eq!((h.rcode(), h.ancount), (0, 0));
        assert_eq!(resp[resp.len() - 6], 1);
    }

    const TYPE_MX: u16 = 15;

    #[test]
    fn checks_upstream_responses() {
        let msg = build_query(5, "Example.COM", TYPE_A, None);
        let q = query(&msg);
        let check = Check {
            id: 5,
            question: Some(q.question_bytes()),
        };
        let mut resp = msg.clone();
        resp[2] |= 0x80;
        assert!(check.matches(&resp));
        resp[HEADER_LEN + 1] = b'e'; // case differs: still the same question
        assert!(check.matches(&resp));
        resp[HEADER_LEN + 2] = b'y';
        assert!(!check.matches(&resp));
        assert!(!check.matches(&msg)); // not a response
        let mut other_id = msg.clone();
        other_id[2] |= 0x80;
        other_id[1] = 6;
        assert!(!check.matches(&other_id));
        let stub = truncated_stub(&Header::parse(&resp).unwrap(), &q);
        assert!(Header::parse(&stub).unwrap().truncated());
        assert!(check.matches(&stub));
    }

    /// A small xorshift generator: the tests need no `rand`.
    pub(crate) struct Rng(u64);

    impl Rng {
        pub(crate) fn new(seed: u64) -> Rng {
            Rng(seed | 1)
        }

        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Random and mutated inputs: the parser never panics, and every response built
    /// from what it accepts is itself a well-formed message.
    #[test]
    fn random_inputs_never_panic() {
        let mut rng = Rng::new(0x5eed_1234_abcd);
        let seeds = [
            build_query(1, "reviews.default.svc.cluster.local", TYPE_A, Some(1232)),
            build_query(2, "example.com", TYPE_AAAA, None),
            build_query(3, "", 255, Some(65535)),
        ];
        let ips = [
            IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ];
        for i in 0..200_000 {
            let msg: Vec<u8> = if i % 2 == 0 {
                let len = rng.below(64);
                (0..len).map(|_| rng.next() as u8).collect()
            } else {
                let mut m = seeds[rng.below(seeds.len())].clone();
                for _ in 0..1 + rng.below(4) {
                    match rng.below(3) {
                        0 if !m.is_empty() => {
                            let at = rng.below(m.len());
                            m[at] = rng.next() as u8;
                        }
                        1 => m.truncate(rng.below(m.len() + 1)),
                        _ => m.push(rng.next() as u8),
                    }
                }
                m
            };
            match parse(&msg) {
                Parsed::Query(q) => {
                    assert!(q.question.end <= msg.len());
                    for resp in [
                        answer(&q, 0, &ips, 30, q.udp_limit()),
                        empty_response(&q, RCODE_SERVFAIL),
                    ] {
                        assert!(resp.len() <= q.udp_limit());
                        let h = Header::parse(&resp).unwrap();
                        assert_eq!(h.id, q.header.id);
                        assert!(h.is_response());
                        assert!(
                            Check {
                                id: h.id,
                                question: Some(q.question_bytes())
                            }
                            .matches(&resp)
                        );
                        let _ = answers(&resp);
                    }
                }
                Parsed::Malformed(h) => {
                    assert!(Header::parse(&format_error(&h)).unwrap().is_response());
                }
                Parsed::Ignore | Parsed::OtherOpcode(_) => {}
            }
        }
    }
}
