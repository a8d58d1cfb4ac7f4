//! TLS for bench connections (`--tls-pin`), driven by the same readiness
//! loop as plain TCP.
//!
//! The workloads wait for the socket to be readable or writable and then
//! read and write without waiting (`try_read`, `try_write`), so that one
//! task serves both directions without a lock. tokio-rustls's streams only
//! offer `AsyncRead`/`AsyncWrite`, so this module drives rustls's own
//! [`ClientConnection`] directly instead: records are read from and
//! written to the socket without waiting, and the plaintext goes into the
//! connection's input buffer as plain TCP's bytes do. A write hands the
//! whole batch to rustls at once, which seals it into as few records as
//! the 16 KiB record limit allows, as a real client's batched writes
//! would.
//!
//! The bench checks the server by its key alone: `--tls-pin` is the
//! `SHA256:` fingerprint `parlor serve` logs at every start. The handshake
//! signature is still verified against that key, so a server that does not
//! hold it is refused.

use std::io::{self, Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme,
};
use tokio::net::TcpStream;

use parlor_proto::secure::{CHANNEL_BINDING_LABEL, CHANNEL_BINDING_LEN};
use parlor_proto::tls::TlsFingerprint;

/// The client configuration every TLS connection of a run shares: rustls
/// on ring, TLS 1.2 and 1.3, and only the server key `pin` accepted.
pub(crate) fn client_config(pin: TlsFingerprint) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedKey {
        pin,
        provider: Arc::clone(&provider),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts the one server key whose fingerprint is `pin`.
#[derive(Debug)]
struct PinnedKey {
    pin: TlsFingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        if TlsFingerprint::of_spki(&parsed.subject_public_key_info()) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, signature, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, signature, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One connection's TLS state: what rustls has decrypted but not handed
/// over, and records it has sealed but the socket has not taken yet.
pub(crate) struct TlsSession {
    connection: ClientConnection,
}

/// The socket as `std::io` sees it: reads and writes that never wait, so
/// that rustls gets `WouldBlock` where the socket would block.
struct Socket<'a>(&'a TcpStream);

impl io::Read for Socket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl io::Write for Socket<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn invalid(err: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

impl TlsSession {
    /// A session to `server`, named by its address: the pin, not the name,
    /// says which server is right.
    pub(crate) fn new(config: &Arc<ClientConfig>, server: SocketAddr) -> anyhow::Result<Self> {
        let name = ServerName::IpAddress(server.ip().into());
        let connection = ClientConnection::new(Arc::clone(config), name)?;
        Ok(TlsSession { connection })
    }

    /// Runs the handshake to its end, waiting on the socket as it needs.
    pub(crate) async fn handshake(&mut self, stream: &TcpStream) -> io::Result<()> {
        while self.connection.is_handshaking() {
            if self.connection.wants_write() {
                stream.writable().await?;
                self.flush(stream)?;
                continue;
            }
            stream.readable().await?;
            match self.connection.read_tls(&mut Socket(stream)) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {
                    self.connection.process_new_packets().map_err(invalid)?;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
        }
        self.flush_all(stream).await
    }

    /// The exporter value the server derives too (PROTOCOL.md §12.1), which
    /// a registration's possession proof signs.
    pub(crate) fn channel_binding(&self) -> io::Result<[u8; CHANNEL_BINDING_LEN]> {
        self.connection
            .export_keying_material([0; CHANNEL_BINDING_LEN], CHANNEL_BINDING_LABEL, None)
            .map_err(invalid)
    }

    /// Reads the records the socket has, without waiting, and appends
    /// their plaintext to `input`, stopping once `chunk` bytes came.
    /// Returns how many bytes it appended; `Ok(0)` is the end of the
    /// stream; `WouldBlock` when the socket had nothing whole to decrypt.
    pub(crate) fn read(
        &mut self,
        stream: &TcpStream,
        input: &mut BytesMut,
        chunk: usize,
    ) -> io::Result<usize> {
        let mut appended = 0;
        let mut ended = false;
        while appended < chunk {
            match self.connection.read_tls(&mut Socket(stream)) {
                Ok(0) => ended = true,
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => return Err(err),
            }
            // Decrypt and take the plaintext after every read: rustls
            // holds at most 16 KiB of it and refuses to read more.
            let state = self.connection.process_new_packets().map_err(invalid)?;
            let available = state.plaintext_bytes_to_read();
            if available > 0 {
                let start = input.len();
                input.resize(start + available, 0);
                self.connection.reader().read_exact(&mut input[start..])?;
                appended += available;
            }
            if ended || state.peer_has_closed() {
                ended = true;
                break;
            }
        }
        match (appended, ended) {
            (0, true) => Ok(0),
            (0, false) => Err(io::ErrorKind::WouldBlock.into()),
            (appended, _) => Ok(appended),
        }
    }

    /// Hands `bytes` to rustls once the records sealed before have all
    /// gone, and writes what the socket takes. Returns how many bytes
    /// rustls took; `WouldBlock` while earlier records still wait.
    pub(crate) fn write(&mut self, stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
        if !self.flush(stream)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let taken = self.connection.writer().write(bytes)?;
        self.flush(stream)?;
        Ok(taken)
    }

    /// Writes sealed records without waiting; `true` when none are left.
    pub(crate) fn flush(&mut self, stream: &TcpStream) -> io::Result<bool> {
        while self.connection.wants_write() {
            match self.connection.write_tls(&mut Socket(stream)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(err) => return Err(err),
            }
        }
        Ok(true)
    }

    /// Writes every sealed record, waiting for the socket as needed.
    pub(crate) async fn flush_all(&mut self, stream: &TcpStream) -> io::Result<()> {
        while !self.flush(stream)? {
            stream.writable().await?;
        }
        Ok(())
    }

    /// Whether records wait for the socket.
    pub(crate) fn has_unsent(&self) -> bool {
        self.connection.wants_write()
    }

    /// Sends the `close_notify` alert that ends the TLS stream cleanly.
    pub(crate) async fn close(&mut self, stream: &TcpStream) -> io::Result<()> {
        self.connection.send_close_notify();
        self.flush_all(stream).await
    }
}
