//! The client hop: the connection a client opened to the proxy, plaintext or TLS terminated here, and the
//! start-up negotiation on it (TLS and GSS requests, then the start-up or a cancel request).
//!
//! TLS on this hop is the operator's choice ([`ClientTls`], from a certificate and key): a client's
//! SSLRequest is answered `S` and the handshake runs with rustls; without it, `N`. As in PostgreSQL, each of
//! SSLRequest and GSSENCRequest may come once per connection (neither after TLS is on), and a repeat is
//! answered as an unknown protocol version. Bytes a client sends after its SSLRequest and before the
//! handshake are read as the handshake, never as a start-up, so they cannot be injected in plaintext.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ring::digest;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::protocol::{self, FirstMessage, FirstPacket, Negotiated, StartupError};

/// TLS for the proxy's clients: the server certificate and key, and the channel-binding data
/// (`tls-server-end-point`) a client using SCRAM-SHA-256-PLUS must prove it saw.
#[derive(Clone)]
pub struct ClientTls {
    acceptor: TlsAcceptor,
    /// `None` for a certificate whose signature hash RFC 5929 does not map (Ed25519, RSA-PSS, SHA-224):
    /// SCRAM-SHA-256-PLUS is then not offered, since clients would compute another hash.
    end_point: Option<Arc<[u8]>>,
    binding_required: bool,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

/// Why the client hop's certificate or key cannot be used (names the file; never the key's bytes).
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    /// A file could not be read.
    #[error("{path} cannot be read: {error}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        error: io::Error,
    },
    /// The certificate file holds no PEM certificate, or a malformed one.
    #[error("{path} holds no PEM certificate (BEGIN CERTIFICATE){detail}")]
    NoCertificate {
        /// The file.
        path: String,
        /// What the PEM parser said, if anything.
        detail: String,
    },
    /// The key file holds no PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[error(
        "{path} holds no PEM private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
    )]
    NoKey {
        /// The file.
        path: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate, or an unsupported key type).
    #[error("the certificate and key cannot serve TLS: {0}")]
    Refused(String),
    /// Channel binding is required, but the certificate's signature algorithm has no `tls-server-end-point`
    /// hash clients agree on.
    #[error(
        "channel binding is required, but the certificate is signed with an algorithm whose \
         tls-server-end-point hash clients do not agree on (Ed25519, RSA-PSS, SHA-224): use an ECDSA or \
         RSA certificate signed with SHA-256, SHA-384 or SHA-512"
    )]
    NoChannelBinding,
}

impl ClientTls {
    /// Reads a PEM certificate chain (leaf first) and its PEM private key.
    pub fn from_pem_files(cert_file: &Path, key_file: &Path) -> Result<Self, ClientTlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|error| ClientTlsError::Unreadable {
                path: path.display().to_string(),
                error,
            })
        };
        let cert_pem = read(cert_file)?;
        let key_pem = zeroize::Zeroizing::new(read(key_file)?);
        let no_certificate = |detail: String| ClientTlsError::NoCertificate {
            path: cert_file.display().to_string(),
            detail,
        };
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| no_certificate(format!(": {e}")))?;
        if chain.is_empty() {
            return Err(no_certificate(String::new()));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| ClientTlsError::NoKey {
            path: key_file.display().to_string(),
        })?;
        Self::new(chain, key)
    }

    /// TLS with this certificate chain (leaf first) and key.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, ClientTlsError> {
        let leaf = chain
            .first()
            .ok_or_else(|| ClientTlsError::Refused("no certificate".into()))?;
        let end_point = end_point_hash(leaf);
        if end_point.is_none() {
            tracing::warn!(
                "the proxy's certificate is signed with an algorithm without an agreed channel-binding hash \
                 (Ed25519, RSA-PSS, SHA-224): the local password is offered as SCRAM-SHA-256 only"
            );
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
            .map_err(|e| ClientTlsError::Refused(e.to_string()))?;
        // As PostgreSQL 17: a client that names another protocol (a cross-protocol attack) is refused; one
        // that names none (libpq before 17) is served.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            end_point: end_point.map(Into::into),
            binding_required: false,
        })
    }

    /// Offers the local password only as SCRAM-SHA-256-PLUS over TLS: a client that does not bind the
    /// exchange to this certificate (e.g. one a relay told "no TLS") is refused.
    pub fn require_channel_binding(mut self, required: bool) -> Result<Self, ClientTlsError> {
        if required && self.end_point.is_none() {
            return Err(ClientTlsError::NoChannelBinding);
        }
        self.binding_required = required;
        Ok(self)
    }

    /// The `tls-server-end-point` channel-binding data of this certificate (RFC 5929), if it has one.
    pub(crate) fn end_point(&self) -> Option<&[u8]> {
        self.end_point.as_deref()
    }

    /// Whether only SCRAM-SHA-256-PLUS is offered over TLS.
    pub(crate) fn binding_required(&self) -> bool {
        self.binding_required
    }
}

/// RFC 5929's `tls-server-end-point`: the certificate's hash with the hash of its signature algorithm,
/// SHA-256 when that is MD5 or SHA-1, as PostgreSQL computes it; `None` for an algorithm without one
/// (Ed25519, RSA-PSS) or one ring lacks (SHA-224), and for bytes that are not a certificate.
pub(super) fn end_point_hash(certificate: &[u8]) -> Option<Vec<u8>> {
    // DER of the OIDs' prefixes: {md5,sha1,sha256,sha384,sha512}WithRSAEncryption (1.2.840.113549.1.1.n),
    // ecdsa-with-SHA256/384/512 (1.2.840.10045.4.3.n), ecdsa-with-SHA1 (1.2.840.10045.4.1).
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    let oid = signature_algorithm(certificate)?;
    let algorithm = match oid.split_last()? {
        _ if oid == ECDSA_SHA1 => &digest::SHA256,
        (0x04 | 0x05 | 0x0b, prefix) if prefix == RSA => &digest::SHA256,
        (0x0c, prefix) if prefix == RSA => &digest::SHA384,
        (0x0d, prefix) if prefix == RSA => &digest::SHA512,
        (0x02, prefix) if prefix == ECDSA_SHA2 => &digest::SHA256,
        (0x03, prefix) if prefix == ECDSA_SHA2 => &digest::SHA384,
        (0x04, prefix) if prefix == ECDSA_SHA2 => &digest::SHA512,
        _ => return None,
    };
    Some(digest::digest(algorithm, certificate).as_ref().to_vec())
}

/// The OID of a certificate's `signatureAlgorithm` (Certificate ::= SEQUENCE { tbsCertificate,
/// signatureAlgorithm AlgorithmIdentifier, signature }).
pub(super) fn signature_algorithm(certificate: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = der_element(certificate, 0x30)?;
    let (_, after_tbs) = der_element(certificate, 0x30)?;
    let (algorithm, _) = der_element(after_tbs, 0x30)?;
    let (oid, _) = der_element(algorithm, 0x06)?;
    Some(oid)
}

/// The contents of the DER element of type `tag` at the start of `bytes`, and what follows it.
fn der_element(bytes: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = bytes.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0_usize, |len, &b| (len << 8) | usize::from(b));
        (len, &rest[count..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// A client's connection: as accepted, or inside TLS once the client asked for it.
pub(crate) enum ClientConn<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
    /// Only while the handshake runs, or after it failed.
    Gone,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientConn<S> {
    /// Whether the client's bytes are inside TLS.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, ClientConn::Tls(_))
    }

    /// Answers a client's SSLRequest: `S` and the handshake with `tls`, else `N`.
    async fn answer_ssl_request(&mut self, tls: Option<&ClientTls>) -> io::Result<()> {
        let Some(tls) = tls else {
            return self.write_all(b"N").await;
        };
        self.write_all(b"S").await?;
        let ClientConn::Plain(stream) = std::mem::replace(self, ClientConn::Gone) else {
            return Err(io::Error::other("TLS asked for twice"));
        };
        *self = ClientConn::Tls(Box::new(tls.acceptor.accept(stream).await?));
        Ok(())
    }

    /// Reads the client's start-up or cancel request, answering its TLS request with `tls` (else `N`) and
    /// its GSS encryption request `N`.
    pub(crate) async fn negotiate(
        &mut self,
        tls: Option<&ClientTls>,
    ) -> Result<FirstMessage, StartupError> {
        let mut negotiated = Negotiated::default();
        loop {
            let packet = protocol::read_first_packet(self).await?;
            negotiated.request(&packet)?;
            match packet {
                FirstPacket::SslRequest => {
                    self.answer_ssl_request(tls).await?;
                    // Inside TLS, neither request may come again.
                    negotiated.gss_done |= self.is_tls();
                }
                FirstPacket::GssEncRequest => self.write_all(b"N").await?,
                FirstPacket::Cancel(key) => return Ok(FirstMessage::Cancel(key)),
                FirstPacket::Startup { version, params } => {
                    return Ok(FirstMessage::Startup { version, params });
                }
            }
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the TLS handshake failed")
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientConn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientConn::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            ClientConn::Tls(stream) => Pin::new(stream).poll_read(cx, buf),
            ClientConn::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientConn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientConn::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            ClientConn::Tls(stream) => Pin::new(stream).poll_write(cx, buf),
            ClientConn::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientConn::Plain(stream) => Pin::new(stream).poll_flush(cx),
            ClientConn::Tls(stream) => Pin::new(stream).poll_flush(cx),
            ClientConn::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientConn::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            ClientConn::Tls(stream) => Pin::new(stream).poll_shutdown(cx),
            ClientConn::Gone => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_point_hash_follows_the_certificate_signature_and_survives_garbage() {
        // Proves: an ECDSA-SHA256 certificate (what rcgen makes) is hashed with SHA-256 and an
        // ECDSA-SHA384 one with SHA-384, as RFC 5929 says; an Ed25519 one, truncated or non-DER bytes give
        // no hash (no channel binding offered) without a panic; an over-long DER length is refused rather
        // than read past the end.
        let signature_oid_sha256 = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
        let algorithm = [&[0x30, 0x0a, 0x06, 0x08][..], &signature_oid_sha256].concat();
        let tbs = [0x30, 0x00];
        let inner = [&tbs[..], &algorithm, &[0x03, 0x01, 0x00]].concat();
        let cert = [&[0x30, inner.len() as u8][..], &inner].concat();
        assert_eq!(signature_algorithm(&cert), Some(&signature_oid_sha256[..]));
        assert_eq!(end_point_hash(&cert).map(|h| h.len()), Some(32));
        for garbage in [
            &[][..],
            &[0x30],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &cert[..5],
        ] {
            assert_eq!(signature_algorithm(garbage), None);
            assert_eq!(end_point_hash(garbage), None);
        }
        let sha384 = [
            &[0x30, 0x0a, 0x06, 0x08][..],
            &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
        ]
        .concat();
        let inner = [&tbs[..], &sha384].concat();
        let cert = [&[0x30, inner.len() as u8][..], &inner].concat();
        assert_eq!(end_point_hash(&cert).map(|h| h.len()), Some(48));
        // Ed25519 (1.3.101.112): no agreed hash, so no channel binding.
        let ed25519 = [0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];
        let inner = [&tbs[..], &ed25519].concat();
        let cert = [&[0x30, inner.len() as u8][..], &inner].concat();
        assert_eq!(end_point_hash(&cert), None);
    }

    /// TLS for the proxy with a fresh self-signed certificate for `localhost`, and a client config that
    /// trusts it.
    fn tls_pair() -> (ClientTls, Arc<rustls::ClientConfig>) {
        let own = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
        let cert = own.cert.der().clone();
        let key = PrivateKeyDer::try_from(own.signing_key.serialize_der()).expect("key");
        let server = ClientTls::new(vec![cert.clone()], key).expect("server TLS");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        (server, Arc::new(client))
    }

    /// Runs the proxy's negotiation on one end of a pipe; the other end, after an SSLRequest answered.
    async fn negotiating(
        tls: ClientTls,
    ) -> (
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<Result<FirstMessage, StartupError>>,
    ) {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let negotiation = tokio::spawn(async move {
            let mut conn = ClientConn::Plain(server);
            conn.negotiate(Some(&tls)).await
        });
        client
            .write_all(&protocol::ssl_request())
            .await
            .expect("SSLRequest");
        let mut answer = [0_u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut answer)
            .await
            .expect("answer");
        assert_eq!(&answer, b"S");
        (client, negotiation)
    }

    #[tokio::test]
    async fn inside_tls_a_second_encryption_request_is_refused_and_plaintext_is_no_start_up() {
        // Proves: after TLS is on, another SSLRequest or a GSSENCRequest inside it is PostgreSQL's
        // "unsupported protocol" error; a start-up sent in plaintext after the `S` (an injection before
        // the handshake) fails the handshake instead of being read as the client's start-up.
        let gss = protocol::with_length(None, protocol::GSSENC_REQUEST.to_be_bytes().to_vec());
        for (second, code) in [
            (protocol::ssl_request(), protocol::SSL_REQUEST),
            (gss, protocol::GSSENC_REQUEST),
        ] {
            let (server, client_config) = tls_pair();
            let (client, negotiation) = negotiating(server).await;
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let mut tls = tokio_rustls::TlsConnector::from(client_config)
                .connect(name, client)
                .await
                .expect("handshake");
            tls.write_all(&second).await.expect("second request");
            tls.flush().await.expect("flush");
            let result = negotiation.await.expect("join");
            assert!(
                matches!(result, Err(StartupError::Version(c)) if c == code),
                "{result:?}"
            );
        }

        let (server, _) = tls_pair();
        let (mut client, negotiation) = negotiating(server).await;
        let mut startup = 196_608_i32.to_be_bytes().to_vec();
        startup.extend(b"user\0app\0\0");
        client
            .write_all(&protocol::with_length(None, startup))
            .await
            .expect("plaintext start-up");
        drop(client);
        let result = negotiation.await.expect("join");
        assert!(matches!(result, Err(StartupError::Io(_))), "{result:?}");
    }
}
