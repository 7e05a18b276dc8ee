//! mTLS with SPIFFE identities on rustls: client-certificate verifiers for the three listeners
//! (the X509-SVID rules of the `spiffe` module, against the bundle of the certificate's own
//! trust domain), a server-certificate verifier for outbound calls that expects one exact SPIFFE
//! ID, the accept loop that reads the peer's identity once per connection, and the outbound
//! connector for hyper's client.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::net::TcpStream;

use super::trust::TrustHandle;
use crate::federation::PeerInfo;
use crate::spiffe::svid::{verify_svid, SvidUsage};
use crate::spiffe::{SpiffeId, TrustDomain};

/// An outbound TLS handshake that takes longer than this is abandoned.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Outbound TCP connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which listener a verifier guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Local agents: a client certificate of the local trust domain is required.
    Internal,
    /// Partner gateways and agents: optional at the TLS layer (the bundle endpoint needs
    /// none); when present, an SVID of a domain with an agreement with us.
    Federation,
    /// Operators: optional (loopback may be allowed); when present, a local SVID.
    Admin,
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn secs(now: UnixTime) -> i64 {
    now.as_secs() as i64
}

fn tls12_signature(
    p: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(message, cert, dss, &p.signature_verification_algorithms)
}

fn tls13_signature(
    p: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &p.signature_verification_algorithms)
}

fn cert_error(e: impl std::fmt::Display) -> rustls::Error {
    tracing::info!(error = %e, "peer certificate refused");
    rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)
}

#[derive(Debug)]
pub struct SpiffeClientVerifier {
    trust: Arc<TrustHandle>,
    local: TrustDomain,
    kind: ListenerKind,
    provider: Arc<CryptoProvider>,
}

impl SpiffeClientVerifier {
    pub fn new(trust: Arc<TrustHandle>, local: TrustDomain, kind: ListenerKind) -> Self {
        SpiffeClientVerifier {
            trust,
            local,
            kind,
            provider: provider(),
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.kind == ListenerKind::Internal
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let trust = self.trust.get();
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let svid = verify_svid(&chain, &trust.bundles, secs(now), SvidUsage::Client)
            .map_err(cert_error)?;
        let ok = match self.kind {
            ListenerKind::Internal | ListenerKind::Admin => svid.id.in_domain(&self.local),
            ListenerKind::Federation => trust.is_partner(svid.id.trust_domain_str()),
        };
        if !ok {
            return Err(cert_error(format!(
                "{} may not connect to the {:?} listener",
                svid.id, self.kind
            )));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_signature(&self.provider, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Accepts exactly one SPIFFE ID as the server, verified against the current bundles (or, with
/// `any_in`, any SVID of that trust domain).
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    trust: Arc<TrustHandle>,
    expected: Option<SpiffeId>,
    any_in: Option<TrustDomain>,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    pub fn exact(trust: Arc<TrustHandle>, expected: SpiffeId) -> Self {
        SpiffeServerVerifier {
            trust,
            expected: Some(expected),
            any_in: None,
            provider: provider(),
        }
    }

    pub fn in_domain(trust: Arc<TrustHandle>, td: TrustDomain) -> Self {
        SpiffeServerVerifier {
            trust,
            expected: None,
            any_in: Some(td),
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let trust = self.trust.get();
        let mut chain = vec![end_entity.clone()];
        chain.extend(intermediates.iter().cloned());
        let svid = verify_svid(&chain, &trust.bundles, secs(now), SvidUsage::Server)
            .map_err(cert_error)?;
        let ok = match (&self.expected, &self.any_in) {
            (Some(e), _) => svid.id == *e,
            (None, Some(td)) => svid.id.in_domain(td),
            _ => false,
        };
        if !ok {
            tracing::warn!(got = %svid.id, "server SVID is not the expected identity");
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_signature(&self.provider, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The gateway's own X509-SVID and key, for serving and for outbound client auth.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

pub fn server_config(
    id: &Identity,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())?;
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(c)
}

pub fn client_config(
    id: Option<&Identity>,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut c = match id {
        Some(id) => b.with_client_auth_cert(id.chain.clone(), id.key.clone_key())?,
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// What a handler knows about the connection it serves.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub peer: Option<Arc<PeerInfo>>,
}

/// Reads the (already verified) peer certificate's SPIFFE ID.
pub fn peer_info(certs: Option<&[CertificateDer<'_>]>) -> Option<PeerInfo> {
    let leaf = certs?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let id = crate::spiffe::svid::leaf_spiffe_id(&cert).ok()?;
    Some(PeerInfo {
        id,
        cert_sha256: crate::crypto::sha256(leaf),
    })
}

/// A TLS connection for hyper's client.
pub struct TlsConn(TokioIo<tokio_rustls::client::TlsStream<TcpStream>>);

impl hyper::rt::Read for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<Result<(), io::Error>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<Result<usize, io::Error>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), io::Error>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connection for TlsConn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// hyper connector: TCP with a timeout, then TLS with the given client config.
#[derive(Clone)]
pub struct MtlsConnector {
    config: Arc<rustls::ClientConfig>,
}

impl MtlsConnector {
    pub fn new(config: rustls::ClientConfig) -> Self {
        MtlsConnector {
            config: Arc::new(config),
        }
    }
}

impl tower::Service<http::Uri> for MtlsConnector {
    type Response = TlsConn;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<TlsConn, io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp =
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(host)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tls = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                tokio_rustls::TlsConnector::from(config).connect(name, tcp),
            )
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
            Ok(TlsConn(TokioIo::new(tls)))
        })
    }
}
