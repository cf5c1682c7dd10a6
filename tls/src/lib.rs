//! TLS as Lantern's servers speak it, from the two files of a Kubernetes TLS Secret (`tls.crt`:
//! a PEM certificate chain, `tls.key`: its PEM private key).
//!
//! - [`acceptor`]: the serving side of a worker or a router — ALPN offering `h2` and `http/1.1`,
//!   so gRPC and HTTP/1.1 clients share the port.
//! - [`pinned_connector`]: the router's side towards its pods. The pods serve the same Secret
//!   the router does, and are reached by IP, which no certificate of a Service names; so the
//!   router trusts exactly the certificate it serves itself (the chain's first, pinned) and
//!   checks that the pod proves it holds its key — no CA, no name. ALPN asks for `h2`.
//!
//! rustls with its ring provider (tokio-rustls): the TLS stack the operator's Kubernetes client
//! already builds, in memory-safe Rust.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::crypto::{self, CryptoProvider, WebPkiSupportedAlgorithms};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio_rustls::rustls::{self, DigitallySignedStruct, SignatureScheme};

use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::{TlsConnector, client::TlsStream};

pub use tokio_rustls::TlsAcceptor;

/// Why TLS could not be set up: which file, and what was wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the certificates in {path}")]
    Certificates { path: String, source: rustls::pki_types::pem::Error },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error("reading the private key in {path}")]
    Key { path: String, source: rustls::pki_types::pem::Error },
    #[error("the certificate and key do not fit")]
    Mismatch(#[source] rustls::Error),
    #[error("setting up TLS")]
    Config(#[source] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(crypto::ring::default_provider())
}

/// The certificate chain in the PEM file `path`, leaf first.
fn chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let shown = || path.display().to_string();
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|source| Error::Certificates { path: shown(), source })?;
    if chain.is_empty() {
        return Err(Error::NoCertificate { path: shown() });
    }
    Ok(chain)
}

/// Serves the chain in `cert` with the private key in `key` (PKCS#8, PKCS#1 or SEC1).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, Error> {
    let chain = chain(cert)?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|source| Error::Key { path: key.display().to_string(), source })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(Error::Config)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(Error::Mismatch)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Connects to pods by IP, trusting one certificate ([`pinned_connector`]).
#[derive(Clone)]
pub struct PinnedConnector(TlsConnector);

impl std::fmt::Debug for PinnedConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinnedConnector")
    }
}

impl PinnedConnector {
    /// A TLS handshake over `stream` with the server at `ip`; an error when it does not present
    /// the pinned certificate or cannot prove it holds its key.
    pub async fn connect<IO>(&self, ip: std::net::IpAddr, stream: IO) -> std::io::Result<TlsStream<IO>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.0.connect(ServerName::IpAddress(ip.into()), stream).await
    }
}

/// Connects over HTTP/2 to servers that present the first certificate of `cert` (see the
/// crate docs), wherever they are: no name is checked.
pub fn pinned_connector(cert: &Path) -> Result<PinnedConnector, Error> {
    let pinned = chain(cert)?.swap_remove(0);
    let provider = provider();
    let verifier = Pinned { certificate: pinned, algorithms: provider.signature_verification_algorithms };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(PinnedConnector(TlsConnector::from(Arc::new(config))))
}

/// Accepts exactly one certificate, then checks the handshake's signatures with its key as
/// rustls does for any certificate.
#[derive(Debug)]
struct Pinned {
    certificate: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match end_entity.as_ref() == self.certificate.as_ref() {
            true => Ok(ServerCertVerified::assertion()),
            false => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
    }

    /// A handshake over memory between a server of `cert` and `key` and the connector pinned
    /// to `cert.pem`: the protocol ALPN agreed on, or the client's error.
    async fn handshake(cert: &str, key: &str) -> Result<Option<Vec<u8>>, std::io::Error> {
        let acceptor = acceptor(&fixture(cert), &fixture(key)).unwrap();
        let connector = pinned_connector(&fixture("cert.pem")).unwrap();
        let (client, server) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(async move { acceptor.accept(server).await.map(|_| ()) });
        // A pod's IP: no certificate names it, and none has to.
        let connected = connector.connect(std::net::Ipv4Addr::new(10, 1, 2, 3).into(), client).await;
        let _ = served.await;
        connected.map(|stream| stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
    }

    #[tokio::test]
    async fn the_pinned_connector_trusts_its_own_certificate_at_any_address_and_speaks_h2() {
        assert_eq!(handshake("cert.pem", "key.pem").await.unwrap(), Some(b"h2".to_vec()));
    }

    #[tokio::test]
    async fn the_pinned_connector_refuses_any_other_certificate() {
        let refused = handshake("other.pem", "other-key.pem").await.unwrap_err();
        assert!(refused.to_string().contains("invalid peer certificate"), "{refused}");
    }

    /// Why `acceptor` refused `cert` and `key`.
    fn refused(cert: &str, key: &str) -> Error {
        acceptor(&fixture(cert), &fixture(key)).err().expect("refused")
    }

    #[test]
    fn bad_files_say_which_file_and_what_is_wrong() {
        let missing = refused("absent.pem", "key.pem");
        assert!(matches!(&missing, Error::Certificates { path, .. } if path.ends_with("absent.pem")), "{missing}");
        let no_certificate = refused("key.pem", "key.pem");
        assert_eq!(no_certificate.to_string(), format!("{} holds no certificate", fixture("key.pem").display()));
        assert!(matches!(refused("cert.pem", "cert.pem"), Error::Key { .. }));
        assert!(matches!(refused("cert.pem", "other-key.pem"), Error::Mismatch(_)));
    }
}
