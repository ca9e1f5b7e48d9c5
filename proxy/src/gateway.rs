//! An ingress gateway's config (`--role gateway`), compiled when it arrives
//! ([`CompiledGateway::compile`]): per listener port, the plaintext HTTP virtual hosts
//! and the TLS servers, each terminating server's certificate parsed into a rustls config
//! (`MUTUAL` and `OPTIONAL_MUTUAL`: with a client verifier over the credential's CA and
//! CRLs, then the server's `subjectAltNames` and certificate hashes, [`ClientCheck`]) and
//! each passthrough server's clusters ready for load balancing, or a TCP server's route
//! and clusters. A certificate, key, CA or CRL that does not parse refuses (NACKs) the
//! whole config, so the gateway keeps serving the last good one; a server mesh-control
//! sent no certificate for fails its handshakes, saying why. Pure: the flow
//! (`flow/gateway.rs`) accepts, reads the ClientHello and calls into this, and the
//! listener set (`listener::gateway_listeners`) binds the ports.

use std::sync::Arc;

use mesh_config::gateway::{
    Gateway, TlsServerMode, most_specific, passthrough_service, tcp_service,
};
use mesh_config::{Certificate, ClientCertificates, ValidationError};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::http::{CompiledService, LbStates, VirtualHosts};

/// ALPN a gateway's HTTPS servers offer.
const HTTPS_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A gateway's listeners, ready for connections.
#[derive(Debug)]
pub struct CompiledGateway {
    pub listeners: Vec<CompiledListener>,
}

/// One port.
#[derive(Debug)]
pub struct CompiledListener {
    /// The port bound.
    pub port: u16,
    /// The Gateway's port number.
    pub number: u16,
    /// Plaintext HTTP, when a server of this port takes it.
    pub http: Option<Arc<VirtualHosts>>,
    pub tls: Vec<CompiledTlsServer>,
    /// A TCP server's port: every connection to a cluster of this route.
    pub tcp: Option<CompiledTcp>,
}

/// A TCP server's route and its clusters.
#[derive(Debug)]
pub struct CompiledTcp {
    /// The route, as a passthrough route without SNI hosts.
    pub route: CompiledTlsRoute,
    /// Its clusters (a Service without ports, for their load balancing).
    pub clusters: Arc<CompiledService>,
}

/// One TLS server.
#[derive(Debug)]
pub struct CompiledTlsServer {
    pub name: String,
    pub hosts: Vec<String>,
    pub mode: CompiledTlsMode,
}

/// What a TLS server does with a connection whose SNI chose it.
pub enum CompiledTlsMode {
    /// Terminate with `config` (`Err`: no certificate, and why), then HTTP with `hosts`.
    Simple {
        config: Result<Arc<rustls::ServerConfig>, String>,
        hosts: Arc<VirtualHosts>,
        /// The URI subjectAltNames of the server's own certificate (`By` of the
        /// `x-forwarded-client-cert` element for a client certificate).
        own_uris: Arc<[String]>,
    },
    /// Forward the bytes as they are, to a cluster of `clusters` chosen by `routes`.
    Passthrough {
        routes: Vec<CompiledTlsRoute>,
        /// The routes' clusters (a Service without ports, for their load balancing).
        clusters: Arc<CompiledService>,
    },
}

impl std::fmt::Debug for CompiledTlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CompiledTlsMode::Simple { config, hosts, .. } => f
                .debug_struct("Simple")
                .field("certificate", &config.as_ref().map(|_| "loaded"))
                .field("hosts", hosts)
                .finish(),
            CompiledTlsMode::Passthrough { routes, .. } => f
                .debug_struct("Passthrough")
                .field("routes", routes)
                .finish_non_exhaustive(),
        }
    }
}

/// One VirtualService `tls[]` route.
#[derive(Debug)]
pub struct CompiledTlsRoute {
    pub virtual_service: String,
    pub sni_hosts: Vec<String>,
    /// (cluster name, weight).
    pub destinations: Vec<(String, u32)>,
}

impl CompiledTlsRoute {
    /// A destination cluster by weight.
    pub fn pick(&self, rng: &mut fastrand::Rng) -> Option<&str> {
        let weight = |d: &(String, u32)| u64::from(d.1);
        let total = self.destinations.iter().map(weight).sum();
        crate::http::by_weight(&self.destinations, total, weight, rng).map(|(c, _)| c.as_str())
    }
}

impl CompiledListener {
    /// The TLS server a ClientHello asking for `sni` goes to: the one whose hosts match
    /// it best (the first of equals).
    pub fn tls_server(&self, sni: Option<&str>) -> Option<&CompiledTlsServer> {
        most_specific(&self.tls, |s| &s.hosts, sni)
    }
}

impl CompiledTlsMode {
    /// A passthrough server's route for `sni`: the one whose `sniHosts` match it most
    /// specifically (the first of equals).
    pub fn tls_route(&self, sni: Option<&str>) -> Option<&CompiledTlsRoute> {
        match self {
            CompiledTlsMode::Passthrough { routes, .. } => {
                most_specific(routes, |r| &r.sni_hosts, sni)
            }
            CompiledTlsMode::Simple { .. } => None,
        }
    }
}

impl CompiledGateway {
    /// Validates and compiles `g`, load-balancing state taken over from `states`.
    pub fn compile(g: &Gateway, states: &LbStates) -> Result<CompiledGateway, ValidationError> {
        mesh_config::Resource::Gateway(g.clone()).validate()?;
        let mut listeners = Vec::with_capacity(g.listeners.len());
        for l in &g.listeners {
            let http = if l.http.is_empty() {
                None
            } else {
                Some(Arc::new(VirtualHosts::compile(
                    l.number,
                    false,
                    &l.http,
                    &g.clusters,
                    states,
                )?))
            };
            let mut tls = Vec::with_capacity(l.tls.len());
            for s in &l.tls {
                let what = || format!("gateway port {}, server {}", l.number, s.name);
                let mode = match &s.mode {
                    TlsServerMode::Simple {
                        credential_name,
                        certificate,
                        why,
                        client_certificates,
                        virtual_hosts,
                    } => {
                        let config = match certificate {
                            Some(c) => Ok(server_config(c, client_certificates.as_ref()).map_err(
                                |why| ValidationError {
                                    what: format!("{}, credential {credential_name}", what()),
                                    why,
                                },
                            )?),
                            None if why.is_empty() => {
                                Err(format!("no certificate for credential {credential_name}"))
                            }
                            None => Err(format!("credential {credential_name}: {why}")),
                        };
                        let hosts = VirtualHosts::compile(
                            l.number,
                            true,
                            virtual_hosts,
                            &g.clusters,
                            states,
                        )?;
                        CompiledTlsMode::Simple {
                            config,
                            hosts: Arc::new(hosts),
                            own_uris: certificate
                                .as_ref()
                                .map(|c| leaf_uris(&c.chain_pem))
                                .unwrap_or_default()
                                .into(),
                        }
                    }
                    TlsServerMode::Passthrough { routes } => {
                        let svc = passthrough_service(&s.name, routes, &g.clusters);
                        CompiledTlsMode::Passthrough {
                            routes: routes
                                .iter()
                                .map(|r| CompiledTlsRoute {
                                    virtual_service: r.virtual_service.clone(),
                                    sni_hosts: r.sni_hosts.clone(),
                                    destinations: r
                                        .destinations
                                        .iter()
                                        .map(|d| (d.cluster.clone(), d.weight))
                                        .collect(),
                                })
                                .collect(),
                            clusters: Arc::new(CompiledService::compile_in(&svc, states)?),
                        }
                    }
                };
                tls.push(CompiledTlsServer {
                    name: s.name.clone(),
                    hosts: s.hosts.clone(),
                    mode,
                });
            }
            let tcp = match &l.tcp {
                None => None,
                Some(t) => {
                    let name = format!("gateway port {} tcp", l.number);
                    let svc = tcp_service(&name, t, &g.clusters);
                    Some(CompiledTcp {
                        route: CompiledTlsRoute {
                            virtual_service: t.virtual_service.clone(),
                            sni_hosts: Vec::new(),
                            destinations: t
                                .clusters
                                .iter()
                                .map(|c| (c.cluster.clone(), c.weight))
                                .collect(),
                        },
                        clusters: Arc::new(CompiledService::compile_in(&svc, states)?),
                    })
                }
            };
            listeners.push(CompiledListener {
                port: l.port,
                number: l.number,
                http,
                tls,
                tcp,
            });
        }
        Ok(CompiledGateway { listeners })
    }

    /// The listener bound to `port`.
    pub fn listener(&self, port: u16) -> Option<&CompiledListener> {
        self.listeners.iter().find(|l| l.port == port)
    }

    /// The ports to listen on.
    pub fn ports(&self) -> Vec<u16> {
        self.listeners.iter().map(|l| l.port).collect()
    }
}

/// A terminating server's rustls config: TLS 1.3 and 1.2 (outside clients are not all
/// recent), ALPN `h2` and `http/1.1`, the chain and key of the credential; with
/// `clients` (`MUTUAL`, `OPTIONAL_MUTUAL`), client certificates asked for and checked
/// ([`ClientCheck`]).
fn server_config(
    c: &Certificate,
    clients: Option<&ClientCertificates>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(c.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("the certificate chain does not parse: {e}"))?;
    if chain.is_empty() {
        return Err("the certificate chain holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())
        .map_err(|e| format!("the private key does not parse: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(cc) => builder.with_client_cert_verifier(client_verifier(cc, provider)?),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key do not make a server certificate: {e}"))?;
    config.alpn_protocols = HTTPS_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The URI subjectAltNames of a chain's leaf (`By` of the `x-forwarded-client-cert`
/// element a terminating server adds).
fn leaf_uris(chain_pem: &str) -> Vec<String> {
    CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .map(|leaf| crate::identity::verify::uri_sans(&leaf))
        .unwrap_or_default()
}

/// rustls-webpki's client verifier over the credential's CA certificates and CRLs (every
/// certificate of the chain checked against them, unknown status refused: Envoy's
/// defaults), anonymous clients allowed unless `required`, then [`ClientCheck`].
fn client_verifier(
    cc: &ClientCertificates,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for (i, der) in CertificateDer::pem_slice_iter(cc.ca_pem.as_bytes()).enumerate() {
        let der = der.map_err(|e| format!("the client CA certificates do not parse: {e}"))?;
        roots
            .add(der)
            .map_err(|e| format!("client CA certificate {}: {e}", i + 1))?;
    }
    if roots.is_empty() {
        return Err("no client CA certificate: a client certificate cannot be checked".into());
    }
    let crls = CertificateRevocationListDer::pem_slice_iter(cc.crl_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the client CRLs do not parse: {e}"))?;
    let mut b =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .with_crls(crls);
    if !cc.required {
        b = b.allow_unauthenticated();
    }
    let inner = b.build().map_err(|e| format!("client certificates: {e}"))?;
    if cc.subject_alt_names.is_empty() && cc.certificate_hashes.is_empty() {
        return Ok(inner);
    }
    Ok(Arc::new(ClientCheck {
        inner,
        subject_alt_names: cc.subject_alt_names.clone(),
        certificate_hashes: cc.certificate_hashes.clone(),
    }))
}

/// A client certificate that chains to the CA must also carry one of
/// `subject_alt_names` (as a DNS or URI name, exactly) and hash to one of
/// `certificate_hashes` (SHA-256 of its DER, lowercase hex), each list when not empty.
#[derive(Debug)]
struct ClientCheck {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    subject_alt_names: Vec<String>,
    certificate_hashes: Vec<String>,
}

impl rustls::server::danger::ClientCertVerifier for ClientCheck {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if !self.certificate_hashes.is_empty() {
            let d = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
            let hash = crate::identity::der::hex(d.as_ref());
            if !self.certificate_hashes.contains(&hash) {
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ));
            }
        }
        if !self.subject_alt_names.is_empty() {
            let ee = webpki::EndEntityCert::try_from(end_entity)
                .map_err(crate::identity::verify::to_rustls)?;
            let named = ee
                .valid_dns_names()
                .chain(ee.valid_uri_names())
                .any(|n| self.subject_alt_names.iter().any(|want| want == n));
            if !named {
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName,
                ));
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use mesh_config::{GatewayListener, TlsServer, VirtualHost};

    fn cert(name: &str) -> Certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let c = params.self_signed(&key).unwrap();
        Certificate {
            chain_pem: c.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn gateway(certificate: Option<Certificate>) -> Gateway {
        Gateway {
            gateways: vec!["shop/gw".into()],
            listeners: vec![GatewayListener {
                tcp: None,
                port: 8443,
                number: 443,
                http: Vec::new(),
                tls: vec![
                    TlsServer {
                        name: "shop/gw servers[0]".into(),
                        hosts: vec!["*.example.com".into()],
                        mode: TlsServerMode::Simple {
                            credential_name: "shop-cert".into(),
                            certificate,
                            why: String::new(),
                            client_certificates: None,
                            virtual_hosts: vec![VirtualHost {
                                name: "*.example.com".into(),
                                domains: vec!["*.example.com".into()],
                                https_redirect: false,
                                routes: Vec::new(),
                            }],
                        },
                    },
                    TlsServer {
                        name: "shop/gw servers[1]".into(),
                        hosts: vec!["db.example.com".into()],
                        mode: TlsServerMode::Passthrough { routes: Vec::new() },
                    },
                ],
            }],
            clusters: Vec::new(),
        }
    }

    #[test]
    fn servers_by_sni() {
        let g =
            CompiledGateway::compile(&gateway(Some(cert("a.example.com"))), &LbStates::default())
                .unwrap();
        let l = g.listener(8443).unwrap();
        assert_eq!(
            l.tls_server(Some("db.example.com")).unwrap().name,
            "shop/gw servers[1]"
        );
        assert_eq!(
            l.tls_server(Some("a.example.com")).unwrap().name,
            "shop/gw servers[0]"
        );
        assert!(l.tls_server(Some("example.org")).is_none());
        assert!(l.tls_server(None).is_none(), "no SNI matches only *");
        assert!(matches!(
            &l.tls_server(Some("a.example.com")).unwrap().mode,
            CompiledTlsMode::Simple { config: Ok(_), .. }
        ));
    }

    #[test]
    fn a_missing_certificate_fails_its_server_only_and_a_bad_one_refuses_the_config() {
        let g = CompiledGateway::compile(&gateway(None), &LbStates::default()).unwrap();
        let CompiledTlsMode::Simple { config, .. } = &g.listeners[0].tls[0].mode else {
            panic!()
        };
        assert!(config.as_ref().unwrap_err().contains("shop-cert"));
        let mut bad = cert("a.example.com");
        bad.key_pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
        let e = CompiledGateway::compile(&gateway(Some(bad)), &LbStates::default()).unwrap_err();
        assert!(e.to_string().contains("credential shop-cert"), "{e}");
    }
}
