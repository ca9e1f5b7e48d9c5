//! Envoy's `x-forwarded-client-cert` (XFCC) element for a TLS client with a certificate:
//! what an app behind an Istio sidecar or gateway reads to learn who called it.
//!
//! One element is `;`-separated `key=value` pairs, in Envoy's order: `By` (each URI
//! subjectAltName of our own certificate), `Hash` (SHA-256 of the client certificate's
//! DER, lowercase hex), `Cert` (only when asked: its PEM, URL-encoded as Envoy does),
//! `Subject` (RFC 2253, always quoted, empty for the mesh's workload certificates), `URI`
//! (each URI subjectAltName; the key stays, empty, when it has none), `DNS` (each DNS
//! subjectAltName). A value holding `,`, `;`, `=` or `"` is quoted (`"` escaped), as the
//! header's grammar asks. What the HTTP engine does with the element (append to the
//! request's header, or replace it) is `http::headers::forward_client_cert`.
//!
//! Sidecars (inbound) use `By`, `Hash`, `Subject`, `URI`, `DNS`; gateways add `Cert`,
//! as istiod configures Envoy's `set_current_client_cert_details` for each.

use base64::Engine as _;
use rustls::pki_types::CertificateDer;

use super::der;

/// The element for the client certificate `leaf` (already verified) presented to a
/// server whose own certificate has the URI subjectAltNames `by`; `with_cert` adds the
/// certificate itself (`Cert`).
pub fn element(by: &[String], leaf: &CertificateDer<'_>, with_cert: bool) -> String {
    let mut parts: Vec<String> = Vec::with_capacity(6);
    for uri in by {
        parts.push(format!("By={}", value(uri)));
    }
    let hash = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
    parts.push(format!("Hash={}", der::hex(hash.as_ref())));
    if with_cert {
        parts.push(format!("Cert=\"{}\"", url_encoded_pem(leaf.as_ref())));
    }
    // A subject that does not parse (the chain was verified, so this is not expected)
    // is left empty rather than failing the request.
    let subject = der::subject_rfc2253(leaf.as_ref()).unwrap_or_default();
    // RFC 2253 escapes every `"` already.
    parts.push(format!("Subject=\"{subject}\""));
    let (uris, dnss) = match webpki::EndEntityCert::try_from(leaf) {
        Ok(ee) => (
            ee.valid_uri_names().map(str::to_owned).collect::<Vec<_>>(),
            ee.valid_dns_names().map(str::to_owned).collect::<Vec<_>>(),
        ),
        Err(_) => (Vec::new(), Vec::new()),
    };
    if uris.is_empty() {
        parts.push("URI=".to_owned());
    }
    for u in &uris {
        parts.push(format!("URI={}", value(u)));
    }
    for d in &dnss {
        parts.push(format!("DNS={}", value(d)));
    }
    parts.join(";")
}

/// `v` as an XFCC value: quoted (inner `"` escaped) when it holds a separator.
fn value(v: &str) -> String {
    if v.contains([',', ';', '=', '"']) {
        format!("\"{}\"", v.replace('"', "\\\""))
    } else {
        v.to_owned()
    }
}

/// The PEM of a DER certificate (64-column base64), then the five replacements Envoy
/// makes to URL-encode it: newline, space, `+`, `/`, `=`.
fn url_encoded_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    pem.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    let mut out = String::with_capacity(pem.len() * 11 / 10);
    for c in pem.chars() {
        match c {
            '\n' => out.push_str("%0A"),
            ' ' => out.push_str("%20"),
            '+' => out.push_str("%2B"),
            '/' => out.push_str("%2F"),
            '=' => out.push_str("%3D"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cert(dn: &[(rcgen::DnType, &str)], sans: Vec<rcgen::SanType>) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in dn {
            p.distinguished_name.push(t.clone(), *v);
        }
        p.subject_alt_names = sans;
        p.self_signed(&key).unwrap().der().clone()
    }

    fn uri(u: &str) -> rcgen::SanType {
        rcgen::SanType::URI(rcgen::string::Ia5String::try_from(u).unwrap())
    }

    fn sha256_hex(c: &CertificateDer<'_>) -> String {
        der::hex(ring::digest::digest(&ring::digest::SHA256, c.as_ref()).as_ref())
    }

    #[test]
    fn a_workload_certificate_as_an_istio_sidecar_writes_it() {
        let c = cert(&[], vec![uri("spiffe://cluster.local/ns/foo/sa/sleep")]);
        let e = element(
            &["spiffe://cluster.local/ns/foo/sa/httpbin".to_owned()],
            &c,
            false,
        );
        assert_eq!(
            e,
            format!(
                "By=spiffe://cluster.local/ns/foo/sa/httpbin;Hash={};Subject=\"\";\
                 URI=spiffe://cluster.local/ns/foo/sa/sleep",
                sha256_hex(&c)
            )
        );
        assert_eq!(sha256_hex(&c).len(), 64);
    }

    #[test]
    fn a_client_certificate_at_a_gateway_with_its_pem_subject_and_dns_names() {
        let c = cert(
            &[
                (rcgen::DnType::OrganizationName, "client organization"),
                (rcgen::DnType::CommonName, "client.example.com"),
            ],
            vec![
                rcgen::SanType::DnsName("client.example.com".try_into().unwrap()),
                rcgen::SanType::DnsName("alt.example.com".try_into().unwrap()),
            ],
        );
        let e = element(&[], &c, true);
        let parts: Vec<&str> = e.split(';').collect();
        assert_eq!(parts.len(), 6, "{e}");
        assert_eq!(parts[0], format!("Hash={}", sha256_hex(&c)));
        assert!(parts[1].starts_with("Cert=\"-----BEGIN%20CERTIFICATE-----%0A"));
        assert!(parts[1].ends_with("-----END%20CERTIFICATE-----%0A\""));
        assert!(!parts[1][6..parts[1].len() - 1].contains(['+', '/', '=', ' ', '\n', '"']));
        // Decoding the URL encoding gives back the certificate.
        let pem = parts[1][6..parts[1].len() - 1]
            .replace("%0A", "\n")
            .replace("%20", " ")
            .replace("%2B", "+")
            .replace("%2F", "/")
            .replace("%3D", "=");
        use rustls::pki_types::pem::PemObject as _;
        assert_eq!(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap(), c);
        assert!(pem.lines().all(|l| l.len() <= 64));
        assert_eq!(
            parts[2],
            "Subject=\"CN=client.example.com,O=client organization\""
        );
        assert_eq!(parts[3], "URI=");
        assert_eq!(parts[4], "DNS=client.example.com");
        assert_eq!(parts[5], "DNS=alt.example.com");
    }

    #[test]
    fn separators_in_values_are_quoted() {
        assert_eq!(value("spiffe://td/ns/a/sa/b"), "spiffe://td/ns/a/sa/b");
        assert_eq!(value("urn:a=b;c"), "\"urn:a=b;c\"");
        assert_eq!(value("x\"y,"), "\"x\\\"y,\"");
    }

    #[test]
    fn rfc2253_escapes_and_orders_the_subject() {
        let c = cert(
            &[
                (rcgen::DnType::CountryName, "US"),
                (rcgen::DnType::OrganizationName, "Example, Inc."),
                (rcgen::DnType::OrganizationalUnitName, " #ops;\"x\" "),
                (rcgen::DnType::CommonName, "a+b<c>"),
            ],
            Vec::new(),
        );
        assert_eq!(
            der::subject_rfc2253(c.as_ref()).unwrap(),
            "CN=a\\+b\\<c\\>,OU=\\ #ops\\;\\\"x\\\"\\ ,O=Example\\, Inc.,C=US"
        );
        let empty = cert(&[], Vec::new());
        assert_eq!(der::subject_rfc2253(empty.as_ref()).unwrap(), "");
    }
}
