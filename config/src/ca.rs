//! Istio's certificate protocol, `istio.v1.auth.IstioCertificateService/CreateCertificate`
//! (istio/api `security/v1alpha1/ca.proto`): one unary gRPC call, served by mesh-control
//! on its TLS port and called by mesh-proxy, so either side can talk to istiod's.
//!
//! The caller authenticates with `authorization: Bearer <projected ServiceAccount token>`
//! (audience `istio-ca`) in the call's metadata. The answer is the signed chain, leaf
//! first, root last, each a PEM string.

/// The gRPC method path.
pub const CREATE_CERTIFICATE_PATH: &str =
    "/istio.v1.auth.IstioCertificateService/CreateCertificate";
/// The gRPC service name.
pub const SERVICE_NAME: &str = "istio.v1.auth.IstioCertificateService";
/// The metadata key carrying the bearer token.
pub const AUTHORIZATION: &str = "authorization";

/// Proxy → CA.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// A PEM PKCS#10 request whose only SAN is the caller's SPIFFE URI.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested lifetime in seconds; 0 or less: the CA's default.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    // Field 4, `google.protobuf.Struct metadata` (impersonation by node agents), is not
    // decoded: prost skips it, and an identity is never taken from it.
}

/// CA → proxy.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    /// PEM certificates: the leaf, any intermediates, the root last.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The bytes Istio's Go types produce for the same values (field numbers 1 and 3):
    /// hand-encoded so a renumbering here cannot pass unnoticed.
    #[test]
    fn wire_numbers_match_istios_proto() {
        let req = IstioCertificateRequest {
            csr: "C".into(),
            validity_duration: 60,
        };
        assert_eq!(req.encode_to_vec(), vec![0x0a, 1, b'C', 0x18, 60]);
        // A request carrying metadata (field 4, a Struct) still decodes.
        let with_meta = [0x0a, 1, b'C', 0x18, 60, 0x22, 2, 0x0a, 0];
        assert_eq!(
            IstioCertificateRequest::decode(&with_meta[..]).expect("decodes"),
            req
        );
        let resp = IstioCertificateResponse {
            cert_chain: vec!["a".into(), "b".into()],
        };
        assert_eq!(resp.encode_to_vec(), vec![0x0a, 1, b'a', 0x0a, 1, b'b']);
    }
}
