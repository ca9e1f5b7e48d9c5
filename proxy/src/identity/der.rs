//! Just enough DER to describe a certificate: its serial, validity and subject, for
//! renewal times, `/certs` and logs. Path building, signatures and the subjectAltName
//! URIs are rustls-webpki's ([`super::verify`]); this module never decides trust.
//!
//! Every read is bounds-checked and returns [`DerError`] on anything unexpected:
//! certificates come from the CA and from peers, and must never make the proxy panic.

/// What [`describe`] reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The serial number's content octets (big-endian, as encoded).
    pub serial: Vec<u8>,
    /// `notBefore`, in seconds since the Unix epoch.
    pub not_before: i64,
    /// `notAfter`, in seconds since the Unix epoch.
    pub not_after: i64,
    /// The subject as `CN=..., O=...` (attributes in encoded order).
    pub subject: String,
    /// The issuer, same form.
    pub issuer: String,
}

/// Why a certificate could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DerError {
    #[error("truncated DER")]
    Truncated,
    #[error("unsupported DER length encoding")]
    Length,
    #[error("expected {what} (tag {expected:#04x}), found tag {found:#04x}")]
    Tag {
        what: &'static str,
        expected: u8,
        found: u8,
    },
    #[error("bytes after the end of {0}")]
    Trailing(&'static str),
    #[error("malformed time")]
    Time,
    #[error("malformed object identifier")]
    Oid,
}

// DER tags, read here and written by `csr`.
pub(super) const BOOLEAN: u8 = 0x01;
pub(super) const INTEGER: u8 = 0x02;
pub(super) const BIT_STRING: u8 = 0x03;
pub(super) const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
pub(super) const SEQUENCE: u8 = 0x30;
pub(super) const SET: u8 = 0x31;
/// `[0]`, constructed (a certificate's version; a request's attributes).
pub(super) const CONTEXT_0: u8 = 0xa0;

/// A cursor over DER bytes.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn peek(&self) -> Option<u8> {
        self.buf.first().copied()
    }

    /// The next element: its tag and its content.
    fn next(&mut self) -> Result<(u8, &'a [u8]), DerError> {
        let (&tag, rest) = self.buf.split_first().ok_or(DerError::Truncated)?;
        if tag & 0x1f == 0x1f {
            // High tag numbers never occur in the parts we read.
            return Err(DerError::Length);
        }
        let (&first, mut rest) = rest.split_first().ok_or(DerError::Truncated)?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            // 0x80 is BER's indefinite length; more than 4 octets is never a certificate.
            if n == 0 || n > 4 {
                return Err(DerError::Length);
            }
            let (octets, after) = rest.split_at_checked(n).ok_or(DerError::Truncated)?;
            rest = after;
            octets
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
        };
        let (content, after) = rest.split_at_checked(len).ok_or(DerError::Truncated)?;
        self.buf = after;
        Ok((tag, content))
    }

    fn expect(&mut self, expected: u8, what: &'static str) -> Result<&'a [u8], DerError> {
        let (found, content) = self.next()?;
        if found != expected {
            return Err(DerError::Tag {
                what,
                expected,
                found,
            });
        }
        Ok(content)
    }
}

/// Reads the serial, validity, subject and issuer of a DER X.509 certificate.
pub fn describe(cert: &[u8]) -> Result<CertInfo, DerError> {
    let f = fields(cert)?;
    Ok(CertInfo {
        serial: f.serial.to_vec(),
        not_before: f.not_before,
        not_after: f.not_after,
        subject: name(f.subject)?,
        issuer: name(f.issuer)?,
    })
}

/// A certificate's subject as RFC 2253 writes a distinguished name (and OpenSSL's
/// `XN_FLAG_RFC2253`, which Envoy's `x-forwarded-client-cert` uses): the last RDN
/// first, `CN=client,O=Example\, Inc.`; empty for an empty subject (the mesh's
/// workload certificates).
pub fn subject_rfc2253(cert: &[u8]) -> Result<String, DerError> {
    rfc2253(fields(cert)?.subject)
}

/// The parts of a TBSCertificate [`describe`] reads; names as their content octets.
struct Fields<'a> {
    serial: &'a [u8],
    issuer: &'a [u8],
    not_before: i64,
    not_after: i64,
    subject: &'a [u8],
}

fn fields(cert: &[u8]) -> Result<Fields<'_>, DerError> {
    let mut outer = Reader::new(cert);
    let certificate = outer.expect(SEQUENCE, "Certificate")?;
    if !outer.is_empty() {
        return Err(DerError::Trailing("Certificate"));
    }
    let mut c = Reader::new(certificate);
    let mut tbs = Reader::new(c.expect(SEQUENCE, "TBSCertificate")?);
    if tbs.peek() == Some(CONTEXT_0) {
        tbs.next()?; // version
    }
    let serial = tbs.expect(INTEGER, "serialNumber")?;
    tbs.expect(SEQUENCE, "signature")?;
    let issuer = tbs.expect(SEQUENCE, "issuer")?;
    let mut validity = Reader::new(tbs.expect(SEQUENCE, "validity")?);
    let not_before = time(&mut validity)?;
    let not_after = time(&mut validity)?;
    if !validity.is_empty() {
        return Err(DerError::Trailing("validity"));
    }
    let subject = tbs.expect(SEQUENCE, "subject")?;
    Ok(Fields {
        serial,
        issuer,
        not_before,
        not_after,
        subject,
    })
}

/// One `Time`: UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`), as RFC 5280 restricts them.
fn time(r: &mut Reader<'_>) -> Result<i64, DerError> {
    let (tag, content) = r.next()?;
    let (year, rest) = match (tag, content.len()) {
        (UTC_TIME, 13) => {
            let yy = digits(&content[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &content[2..])
        }
        (GENERALIZED_TIME, 15) => (digits(&content[..4])?, &content[4..]),
        _ => return Err(DerError::Time),
    };
    if rest.last() != Some(&b'Z') {
        return Err(DerError::Time);
    }
    let month = digits(&rest[0..2])?;
    let day = digits(&rest[2..4])?;
    let (h, m, s) = (
        digits(&rest[4..6])?,
        digits(&rest[6..8])?,
        digits(&rest[8..10])?,
    );
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || h > 23
        || m > 59
        || s > 59
    {
        return Err(DerError::Time);
    }
    Ok(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

fn digits(b: &[u8]) -> Result<i64, DerError> {
    b.iter().try_fold(0i64, |acc, &c| {
        if c.is_ascii_digit() {
            Ok(acc * 10 + i64::from(c - b'0'))
        } else {
            Err(DerError::Time)
        }
    })
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    // Count from March, so the leap day ends the year.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count from 1970-01-01 (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Seconds since the epoch as RFC 3339 UTC, `2025-01-31T12:00:00Z`.
pub fn rfc3339(secs: i64) -> String {
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// A `Name` (RDNSequence) as `CN=a, O=b`.
fn name(content: &[u8]) -> Result<String, DerError> {
    let mut parts = Vec::new();
    let mut rdns = Reader::new(content);
    while !rdns.is_empty() {
        let mut set = Reader::new(rdns.expect(SET, "RelativeDistinguishedName")?);
        while !set.is_empty() {
            let mut atv = Reader::new(set.expect(SEQUENCE, "AttributeTypeAndValue")?);
            let oid = atv.expect(OID, "attribute type")?;
            let (_string_tag, value) = atv.next()?;
            let key = match oid {
                [0x55, 0x04, 0x03] => "CN".to_owned(),
                [0x55, 0x04, 0x06] => "C".to_owned(),
                [0x55, 0x04, 0x07] => "L".to_owned(),
                [0x55, 0x04, 0x08] => "ST".to_owned(),
                [0x55, 0x04, 0x0a] => "O".to_owned(),
                [0x55, 0x04, 0x0b] => "OU".to_owned(),
                other => dotted_oid(other)?,
            };
            parts.push(format!("{key}={}", String::from_utf8_lossy(value)));
        }
    }
    Ok(parts.join(", "))
}

/// The short names RFC 2253 and OpenSSL print for an attribute type (content octets
/// of its OBJECT IDENTIFIER).
fn short_name(oid: &[u8]) -> Option<&'static str> {
    Some(match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x04] => "SN",
        [0x55, 0x04, 0x05] => "serialNumber",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x09] => "street",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        [0x55, 0x04, 0x0c] => "title",
        [0x55, 0x04, 0x2a] => "GN",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress",
        _ => return None,
    })
}

const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
const TELETEX_STRING: u8 = 0x14;
const IA5_STRING: u8 = 0x16;
const BMP_STRING: u8 = 0x1e;

/// A `Name`'s content in RFC 2253 form: RDNs last to first, joined by `,`; the
/// attributes of a multi-valued RDN by `+`; a string value escaped (`,+"\<>;`, a
/// leading `#` or space, a trailing space, control characters as `\XX`), an attribute
/// type without a short name as its dotted OID, a value of another type as `#` and the
/// hex of its DER.
fn rfc2253(content: &[u8]) -> Result<String, DerError> {
    let mut rdns: Vec<String> = Vec::new();
    let mut r = Reader::new(content);
    while !r.is_empty() {
        let mut set = Reader::new(r.expect(SET, "RelativeDistinguishedName")?);
        let mut atvs: Vec<String> = Vec::new();
        while !set.is_empty() {
            let mut atv = Reader::new(set.expect(SEQUENCE, "AttributeTypeAndValue")?);
            let oid = atv.expect(OID, "attribute type")?;
            let whole = atv.buf;
            let (tag, value) = atv.next()?;
            let key = match short_name(oid) {
                Some(k) => k.to_owned(),
                None => dotted_oid(oid)?,
            };
            let text = match tag {
                UTF8_STRING | PRINTABLE_STRING | IA5_STRING | TELETEX_STRING => {
                    std::str::from_utf8(value).ok().map(str::to_owned)
                }
                BMP_STRING if value.len() % 2 == 0 => {
                    let units = value
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]));
                    char::decode_utf16(units)
                        .collect::<Result<String, _>>()
                        .ok()
                }
                _ => None,
            };
            atvs.push(match text {
                Some(t) => format!("{key}={}", escape_2253(&t)),
                None => format!("{key}=#{}", hex(whole)),
            });
        }
        rdns.push(atvs.join("+"));
    }
    rdns.reverse();
    Ok(rdns.join(","))
}

fn escape_2253(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                out.push('\\');
                out.push(c);
            }
            '#' | ' ' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == last => out.push_str("\\ "),
            c if c.is_ascii_control() => out.push_str(&format!("\\{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// An OBJECT IDENTIFIER's content as `2.5.4.3`.
fn dotted_oid(content: &[u8]) -> Result<String, DerError> {
    let mut arcs: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    let mut len = 0;
    for &b in content {
        if len == 0 && b == 0x80 {
            return Err(DerError::Oid); // not minimal
        }
        len += 1;
        if len > 9 {
            return Err(DerError::Oid); // beyond 63 bits
        }
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (acc / 40).min(2);
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
            len = 0;
        }
    }
    if len != 0 || arcs.is_empty() {
        return Err(DerError::Oid);
    }
    Ok(arcs
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join("."))
}

/// Bytes as lowercase hex, `0a1b`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "cluster.local");
        p.distinguished_name.push(rcgen::DnType::CommonName, "root");
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x01, 0x02, 0xff]));
        p.not_before = rcgen::date_time_ymd(2024, 2, 29);
        p.not_after = rcgen::date_time_ymd(2051, 1, 1); // GeneralizedTime from 2050
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_what_rcgen_wrote() {
        let info = describe(&sample()).unwrap();
        assert_eq!(hex(&info.serial), "0102ff");
        assert_eq!(rfc3339(info.not_before), "2024-02-29T00:00:00Z");
        assert_eq!(rfc3339(info.not_after), "2051-01-01T00:00:00Z");
        assert_eq!(info.subject, "O=cluster.local, CN=root");
        assert_eq!(info.issuer, info.subject);
    }

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn times() {
        let t = |tag: u8, s: &str| {
            let mut v = vec![tag, s.len() as u8];
            v.extend_from_slice(s.as_bytes());
            time(&mut Reader::new(&v))
        };
        assert_eq!(t(UTC_TIME, "491231235959Z"), Ok(2_524_607_999));
        assert_eq!(t(UTC_TIME, "500101000000Z"), Ok(-631_152_000));
        assert_eq!(t(GENERALIZED_TIME, "20240229120000Z"), Ok(1_709_208_000));
        for bad in [
            "240230000000Z", // no 30 February
            "241301000000Z",
            "240101246000Z",
            "2401010000000",
            "24010100000Z",
            "24a101000000Z",
        ] {
            assert_eq!(t(UTC_TIME, bad), Err(DerError::Time), "{bad}");
        }
        assert_eq!(t(GENERALIZED_TIME, "20230229000000Z"), Err(DerError::Time));
        assert_eq!(t(INTEGER, "491231235959Z"), Err(DerError::Time));
    }

    #[test]
    fn oids() {
        assert_eq!(dotted_oid(&[0x55, 0x04, 0x03]).unwrap(), "2.5.4.3");
        assert_eq!(
            dotted_oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]).unwrap(),
            "1.2.840.113549"
        );
        assert_eq!(dotted_oid(&[]), Err(DerError::Oid));
        assert_eq!(dotted_oid(&[0x2a, 0x86]), Err(DerError::Oid));
        assert_eq!(dotted_oid(&[0x80, 0x01]), Err(DerError::Oid));
        assert_eq!(dotted_oid(&[0xff; 12]), Err(DerError::Oid));
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let good = sample();
        assert!(describe(&[]).is_err());
        assert_eq!(describe(&[0x30]), Err(DerError::Truncated));
        assert_eq!(describe(&[0x30, 0x80, 0, 0]), Err(DerError::Length));
        assert_eq!(
            describe(&[0x30, 0x85, 1, 1, 1, 1, 1]),
            Err(DerError::Length)
        );
        assert_eq!(
            describe(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            Err(DerError::Truncated)
        );
        assert_eq!(describe(&[0x1f, 0x01, 0x00]), Err(DerError::Length));
        assert!(matches!(
            describe(&[0x02, 0x01, 0x00]),
            Err(DerError::Tag { .. })
        ));
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(describe(&trailing), Err(DerError::Trailing("Certificate")));
        // Every truncation, and every single-byte corruption: errors or (for bytes we
        // do not read) the same answer, and no panic.
        for n in 0..good.len() {
            assert!(describe(&good[..n]).is_err(), "prefix {n}");
        }
        for i in 0..good.len() {
            for x in [0x00, 0xff, 0x80, 0x1f] {
                let mut bad = good.clone();
                bad[i] = x;
                let _ = describe(&bad);
            }
        }
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let len = rng.usize(0..64);
            let mut v: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if let Some(b) = v.first_mut() {
                *b = 0x30;
            }
            let _ = describe(&v);
        }
    }

    #[test]
    fn hex_is_lowercase_pairs() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(hex(&[]), "");
    }
}
