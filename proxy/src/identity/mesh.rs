//! The mTLS data path's TLS: one [`MeshTls`] per proxy, built from the identity store,
//! that terminates Istio mTLS inbound and originates it outbound. Client configs are
//! made once per destination identity set and protocol, and kept (a handful per proxy:
//! one per Service it talks to over mTLS, not per connection).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io;
use std::sync::{Arc, Mutex};

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use super::exchange::{self, NodeMetadata, PeerExchange};
use super::store::IdentityStore;
use super::tls;
use crate::copy::read_ahead::ReadAhead;

/// What an mTLS connection carries, for the ALPN the client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alpn {
    Http10,
    Http11,
    H2,
    Tcp,
}

impl Alpn {
    fn protocols(self) -> &'static [&'static [u8]] {
        match self {
            Alpn::Http10 => tls::CLIENT_ALPN_HTTP10,
            Alpn::Http11 => tls::CLIENT_ALPN_HTTP11,
            Alpn::H2 => tls::CLIENT_ALPN_H2,
            Alpn::Tcp => tls::CLIENT_ALPN_TCP,
        }
    }
}

/// Where an mTLS connection goes: the SNI to send and the SPIFFE ids the server may
/// present (empty: any of the trust domain's).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsTarget {
    pub sni: String,
    pub identities: Vec<String>,
}

impl TlsTarget {
    /// Istio's SNI for the cluster (or its DestinationRule's `tls.sni`), and the
    /// identities mesh-control listed for it.
    pub fn for_cluster(c: &mesh_config::Cluster) -> TlsTarget {
        TlsTarget {
            sni: c
                .tls
                .sni
                .clone()
                .unwrap_or_else(|| tls::sni(c.port, c.subset.as_deref(), &c.host)),
            identities: c.tls.identities.clone(),
        }
    }

    /// A non-zero key telling targets apart (for connection pools).
    pub fn key(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish() | 1
    }
}

/// Client configs by ALPN, then by server identities (looked up by slice, so a
/// connection to a known destination allocates nothing to find its config).
type ClientConfigs = HashMap<Alpn, HashMap<Vec<String>, Arc<rustls::ClientConfig>>>;

/// The TLS of the mTLS data path.
pub struct MeshTls {
    store: Arc<IdentityStore>,
    server: TlsAcceptor,
    clients: Mutex<ClientConfigs>,
    /// Our `istio-peer-exchange` frame, written first on a connection that agreed on it.
    exchange_frame: Vec<u8>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("spiffe_id", &self.store.spiffe_id())
            .finish_non_exhaustive()
    }
}

/// An originated mTLS connection. The socket is read through [`ReadAhead`]: rustls reads
/// 4 KiB at a time. [`PeerExchange`] drops the server's metadata frame when the
/// connection agreed on `istio-peer-exchange` (opaque TCP), and passes everything
/// through otherwise.
pub type ClientStream = PeerExchange<client::TlsStream<ReadAhead<TcpStream>>>;
/// A terminated mTLS connection (see [`ClientStream`]).
pub type ServerStream = PeerExchange<server::TlsStream<ReadAhead<TcpStream>>>;

impl ClientStream {
    /// The socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        self.get_ref().get_ref().0.get_ref()
    }

    /// The server's verified SPIFFE id.
    pub fn peer_identity(&self) -> Option<String> {
        self.get_ref()
            .get_ref()
            .1
            .peer_certificates()
            .and_then(tls::peer_identity)
    }
}

/// A terminated inbound mTLS connection and who the client is.
pub struct Accepted {
    pub stream: ServerStream,
    /// The client's verified SPIFFE id.
    pub peer: Option<Arc<str>>,
    /// The client certificate's `x-forwarded-client-cert` element, by our SPIFFE id.
    pub client_cert: Option<Arc<str>>,
    /// The ALPN protocol agreed (`h2`, `http/1.1`, `istio-peer-exchange` or `istio`, as
    /// [`tls::SERVER_ALPN`] prefers them among what the client offered).
    pub alpn: Option<Vec<u8>>,
}

impl MeshTls {
    /// `meta`: what this proxy says about its workload to peers that agree on
    /// `istio-peer-exchange`.
    pub fn new(
        store: Arc<IdentityStore>,
        meta: &NodeMetadata,
    ) -> Result<Arc<MeshTls>, rustls::Error> {
        let server = tls::server_config(&store, tls::SERVER_ALPN)?;
        Ok(Arc::new(MeshTls {
            store,
            server: TlsAcceptor::from(server),
            clients: Mutex::new(HashMap::new()),
            exchange_frame: exchange::frame(meta),
        }))
    }

    /// After the handshake: with `istio-peer-exchange` agreed, our frame goes first and
    /// the peer's is expected first.
    async fn exchange<S>(&self, mut stream: S, alpn: Option<&[u8]>) -> io::Result<PeerExchange<S>>
    where
        S: tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::AsyncWriteExt as _;
        if alpn != Some(tls::ALPN_PEER_EXCHANGE) {
            return Ok(PeerExchange::passthrough(stream));
        }
        stream.write_all(&self.exchange_frame).await?;
        stream.flush().await?;
        Ok(PeerExchange::expecting(stream))
    }

    /// This proxy's SPIFFE id.
    pub fn spiffe_id(&self) -> &str {
        self.store.spiffe_id()
    }

    /// Whether a certificate is held (without one, no handshake can succeed).
    pub fn ready(&self) -> bool {
        self.store.has_cert()
    }

    fn client(&self, identities: &[String], alpn: Alpn) -> io::Result<Arc<rustls::ClientConfig>> {
        let mut map = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let by_ids = map.entry(alpn).or_default();
        if let Some(c) = by_ids.get(identities) {
            return Ok(c.clone());
        }
        let c = tls::client_config(&self.store, identities.to_vec(), alpn.protocols())
            .map_err(io::Error::other)?;
        by_ids.insert(identities.to_vec(), c.clone());
        Ok(c)
    }

    /// Originates mTLS on `tcp` to `target`.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        target: &TlsTarget,
        alpn: Alpn,
    ) -> io::Result<ClientStream> {
        let config = self.client(&target.identities, alpn)?;
        let name = ServerName::try_from(target.sni.clone()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("SNI {:?}: {e}", target.sni),
            )
        })?;
        let stream = TlsConnector::from(config)
            .connect(name, ReadAhead::new(tcp))
            .await?;
        let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        self.exchange(stream, alpn.as_deref()).await
    }

    /// Terminates mTLS on `tcp` (a client certificate is required and verified).
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<Accepted> {
        let stream = self.server.accept(ReadAhead::new(tcp)).await?;
        let (_, conn) = stream.get_ref();
        let certs = conn.peer_certificates();
        let peer = certs.and_then(tls::peer_identity).map(Arc::from);
        let client_cert = certs.and_then(|c| c.first()).map(|leaf| {
            let by = [self.spiffe_id().to_owned()];
            Arc::from(super::xfcc::element(&by, leaf, false))
        });
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let stream = self.exchange(stream, alpn.as_deref()).await?;
        Ok(Accepted {
            stream,
            peer,
            client_cert,
            alpn,
        })
    }
}
