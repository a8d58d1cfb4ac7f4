//! The connection under the session: TLS by default, plain TCP only when
//! asked for (`--legacy`, `--insecure-transport`).
//!
//! A server's certificate is checked in one of three ways:
//! - with `--ca FILE`, against those certificate authorities only, names
//!   included, as any TLS client would;
//! - otherwise against the system's roots; and when they do not know the
//!   issuer (a self-signed certificate, as `parlor serve` makes by
//!   default), by **trust on first use** of the server's key, as SSH does
//!   with host keys: the first connection to a `host:port` records the
//!   key's fingerprint in `known_servers` in the data directory and shows
//!   it, later connections must present the same key, and a different one
//!   is refused with both fingerprints and the line to edit.
//!
//! Only the certificate's chain is replaced by the pin: rustls still checks
//! the handshake signature with the certificate's key
//! ([`verify_tls13_signature`]), so a server must hold the pinned private
//! key, not merely show its certificate.
//!
//! Every TLS connection gives the session its channel binding, the exporter
//! value the key registration signs (PROTOCOL.md, "TLS transport").

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::event::UserEvent;
use super::Options;
use parlor_proto::secure::{CHANNEL_BINDING_LABEL, CHANNEL_BINDING_LEN};
use parlor_proto::tls::TlsFingerprint;

/// The file of pinned server keys, in the data directory.
pub const KNOWN_SERVERS: &str = "known_servers";

/// How long a TCP connect and TLS handshake may take before the client
/// gives up, so that a server that accepts and says nothing does not hang
/// the client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A connection to the server, plain or TLS.
pub(crate) trait ServerStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> ServerStream for S {}

/// An open connection, with what the session and the user learn of it.
pub(crate) struct Connected {
    pub(crate) stream: Box<dyn ServerStream>,
    /// The TLS exporter value; `None` over plain TCP.
    pub(crate) channel_binding: Option<[u8; CHANNEL_BINDING_LEN]>,
    /// What to tell the user about the connection.
    pub(crate) shown: UserEvent,
}

/// How the client connects, for the whole run.
pub(crate) enum Transport {
    /// Plain TCP: `--legacy` (which speaks no secure extension) or
    /// `--insecure-transport`.
    Plain {
        legacy: bool,
    },
    Tls(Box<TlsTransport>),
}

pub(crate) struct TlsTransport {
    provider: Arc<CryptoProvider>,
    roots: Roots,
    /// The `--ca` file, to name in refusals.
    ca: Option<PathBuf>,
    known_servers: PathBuf,
}

/// What a certificate chain is checked against.
#[derive(Clone)]
enum Roots {
    /// `--ca FILE`: those authorities, and no pinning.
    Ca(Arc<WebPkiServerVerifier>),
    /// The system's roots (none found: `None`), then the pin.
    System(Option<Arc<WebPkiServerVerifier>>),
}

impl Transport {
    /// The transport the options ask for; reads `--ca` and the system's
    /// roots now, so that a bad file is reported at start.
    pub(crate) fn new(options: &Options) -> anyhow::Result<Transport> {
        if options.legacy || options.insecure_transport {
            return Ok(Transport::Plain {
                legacy: options.legacy,
            });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = match &options.ca {
            Some(file) => {
                let store = read_roots(file)?;
                Roots::Ca(verifier(store, &provider).context("cannot use the --ca certificates")?)
            }
            None => {
                let mut store = RootCertStore::empty();
                // A system without roots (or with unreadable ones) still
                // connects to servers it pins; only CA-signed servers need them.
                store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                Roots::System(verifier(store, &provider).ok())
            }
        };
        let data_dir = options.data_dir().context("no data directory")?;
        Ok(Transport::Tls(Box::new(TlsTransport {
            provider,
            roots,
            ca: options.ca.clone(),
            known_servers: data_dir.join(KNOWN_SERVERS),
        })))
    }

    /// Connects to `address` (`HOST:PORT`). The error is a sentence for
    /// the user.
    pub(crate) async fn connect(&self, address: &str) -> Result<Connected, String> {
        let connect = async {
            let tcp = TcpStream::connect(address)
                .await
                .map_err(|err| err.to_string())?;
            // Requests are small and interactive.
            let _ = tcp.set_nodelay(true);
            match self {
                Transport::Plain { legacy } => Ok(Connected {
                    stream: Box::new(tcp),
                    channel_binding: None,
                    shown: UserEvent::Transport {
                        tls: false,
                        fingerprint: None,
                        trust: None,
                        known_servers: None,
                        reason: Some(if *legacy {
                            "legacy"
                        } else {
                            "insecure_transport"
                        }),
                    },
                }),
                Transport::Tls(tls) => tls.connect(address, tcp).await,
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| Err("the server did not complete the connection in time".into()))
    }
}

impl TlsTransport {
    async fn connect(&self, address: &str, tcp: TcpStream) -> Result<Connected, String> {
        let server = ServerName::try_from(host_of(address).to_owned())
            .map_err(|_| format!("'{}' is not a host name or address", host_of(address)))?;
        let known = KnownServers::read(&self.known_servers)
            .map_err(|err| format!("cannot read {}: {err}", self.known_servers.display()))?;
        let check = Arc::new(ServerCheck {
            provider: Arc::clone(&self.provider),
            roots: self.roots.clone(),
            pinned: known.find(address),
            trusted: Mutex::new(None),
        });
        let config = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|err| err.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::clone(&check) as Arc<dyn ServerCertVerifier>)
            .with_no_client_auth();
        let handshake = TlsConnector::from(Arc::new(config))
            .connect(server, tcp)
            .await;
        let trusted = check
            .trusted
            .lock()
            .map(|trusted| trusted.clone())
            .ok()
            .flatten();
        let (stream, fingerprint, how) = match (handshake, trusted) {
            (Ok(stream), Some(Trusted::Key(fingerprint, how))) => (stream, fingerprint, how),
            (Err(_), Some(Trusted::Changed { seen, pinned })) => {
                return Err(key_changed(address, &self.known_servers, seen, &pinned))
            }
            (Ok(_), _) => return Err("the TLS handshake ended without a checked key".into()),
            (Err(err), _) => return Err(handshake_failed(&err, self.ca.as_deref())),
        };
        let known_servers = match how {
            Trust::FirstUse => {
                known
                    .record(&self.known_servers, address, fingerprint)
                    .map_err(|err| {
                        format!(
                            "cannot record the server's key in {}: {err}",
                            self.known_servers.display()
                        )
                    })?;
                Some(self.known_servers.display().to_string())
            }
            Trust::Known => Some(self.known_servers.display().to_string()),
            Trust::Ca | Trust::System => None,
        };
        let binding = stream
            .get_ref()
            .1
            .export_keying_material([0; CHANNEL_BINDING_LEN], CHANNEL_BINDING_LABEL, None)
            .map_err(|err| format!("cannot derive the TLS channel binding: {err}"))?;
        Ok(Connected {
            stream: Box::new(stream),
            channel_binding: Some(binding),
            shown: UserEvent::Transport {
                tls: true,
                fingerprint: Some(fingerprint.to_string()),
                trust: Some(how.name()),
                known_servers,
                reason: None,
            },
        })
    }
}

/// The host of `HOST:PORT`, without the brackets of `[::1]:PORT`.
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host)
}

/// Whether `bytes` begin with a TLS record header (content type 20 to 23,
/// version 3.x): what a TLS server sends a client that spoke plain TCP to
/// it, where a parlor frame would begin with its length.
pub(crate) fn is_tls_record(bytes: &[u8]) -> bool {
    matches!(bytes, [0x14..=0x17, 0x03, 0x00..=0x04, ..])
}

/// The refusal of a server whose key is not the one pinned.
fn key_changed(address: &str, file: &Path, seen: TlsFingerprint, pinned: &Pin) -> String {
    format!(
        "the server's TLS key has changed. {file} line {line} records {known} for {address}, \
         but the server presented {seen}. Someone may be intercepting the connection, so \
         nothing was sent. If the server's key really changed (ask its operator for the \
         fingerprint it logs at start), delete line {line} of {file} and connect again.",
        file = file.display(),
        line = pinned.line,
        known = pinned.fingerprint,
    )
}

/// Why a handshake failed, in the user's terms; a server that answers in
/// anything but TLS is most likely a plain parlor port.
fn handshake_failed(err: &io::Error, ca: Option<&Path>) -> String {
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        // A parlor plain port answers a ClientHello with a `9a 01`
        // frame, which is no TLS record.
        Some(rustls::Error::InvalidMessage(_)) => format!(
            "the server does not speak TLS on this port ({err}): it may be a plain parlor \
             port. Connect to its TLS port (4171 unless configured otherwise), or use \
             --insecure-transport to connect without TLS"
        ),
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => match ca {
            Some(file) => format!(
                "the server's TLS certificate was refused: no certificate authority of \
                     --ca {} issued it",
                file.display()
            ),
            None => "the server's TLS certificate was refused: unknown issuer".to_owned(),
        },
        Some(rustls::Error::InvalidCertificate(cert)) => {
            format!("the server's TLS certificate was refused: {cert:?}")
        }
        _ => format!("TLS handshake failed: {err}"),
    }
}

/// How a server's key came to be trusted.
#[derive(Clone, Copy, Debug)]
enum Trust {
    /// Its chain leads to a `--ca` certificate.
    Ca,
    /// Its chain leads to a root of the system's.
    System,
    /// It is the key pinned in `known_servers`.
    Known,
    /// Nothing was pinned for the server: the key is pinned now.
    FirstUse,
}

impl Trust {
    /// As `trust` in the `transport` event.
    fn name(self) -> &'static str {
        match self {
            Trust::Ca => "ca",
            Trust::System => "system",
            Trust::Known => "known",
            Trust::FirstUse => "first_use",
        }
    }
}

/// What the certificate check concluded, for the caller to read after the
/// handshake (rustls keeps only a yes or no).
#[derive(Clone, Debug)]
enum Trusted {
    Key(TlsFingerprint, Trust),
    Changed { seen: TlsFingerprint, pinned: Pin },
}

/// The certificate check of one connection.
#[derive(Debug)]
struct ServerCheck {
    provider: Arc<CryptoProvider>,
    roots: Roots,
    /// The key pinned for this `host:port`, if any.
    pinned: Option<Pin>,
    trusted: Mutex<Option<Trusted>>,
}

impl std::fmt::Debug for Roots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Roots::Ca(_) => "Roots::Ca",
            Roots::System(_) => "Roots::System",
        })
    }
}

impl ServerCheck {
    fn conclude(&self, trusted: Trusted) {
        if let Ok(mut slot) = self.trusted.lock() {
            *slot = Some(trusted);
        }
    }

    /// Trust on first use: the key must be the pinned one, if there is one.
    fn pin(&self, end_entity: &CertificateDer<'_>) -> Result<ServerCertVerified, rustls::Error> {
        let seen = fingerprint(end_entity)?;
        match &self.pinned {
            Some(pin) if pin.fingerprint != seen => {
                self.conclude(Trusted::Changed {
                    seen,
                    pinned: pin.clone(),
                });
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
            Some(_) => {
                self.conclude(Trusted::Key(seen, Trust::Known));
                Ok(ServerCertVerified::assertion())
            }
            None => {
                self.conclude(Trusted::Key(seen, Trust::FirstUse));
                Ok(ServerCertVerified::assertion())
            }
        }
    }
}

fn fingerprint(cert: &CertificateDer<'_>) -> Result<TlsFingerprint, rustls::Error> {
    let parsed = ParsedCertificate::try_from(cert)?;
    Ok(TlsFingerprint::of_spki(&parsed.subject_public_key_info()))
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let by_roots = |roots: &WebPkiServerVerifier, trust| {
            let verified = roots.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            )?;
            self.conclude(Trusted::Key(fingerprint(end_entity)?, trust));
            Ok(verified)
        };
        match &self.roots {
            Roots::Ca(roots) => by_roots(roots, Trust::Ca),
            Roots::System(Some(roots)) => match by_roots(roots, Trust::System) {
                // Self-signed, or signed by an authority the system does
                // not know: the case trust on first use is for. Anything
                // else (expired, wrong name for a known authority) stays
                // refused.
                Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
                    self.pin(end_entity)
                }
                verified => verified,
            },
            Roots::System(None) => self.pin(end_entity),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn verifier(
    store: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, rustls::client::VerifierBuilderError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), Arc::clone(provider)).build()
}

/// The certificates of a `--ca` file, each of which must be usable.
fn read_roots(file: &Path) -> anyhow::Result<RootCertStore> {
    let pem = fs::read(file).with_context(|| format!("cannot read --ca {}", file.display()))?;
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert =
            cert.with_context(|| format!("--ca {}: not a PEM certificate", file.display()))?;
        store
            .add(cert)
            .with_context(|| format!("--ca {}: an unusable certificate", file.display()))?;
    }
    anyhow::ensure!(
        !store.is_empty(),
        "--ca {}: no certificate in the file",
        file.display()
    );
    Ok(store)
}

/// A key pinned in `known_servers`, and where.
#[derive(Clone, Debug)]
struct Pin {
    fingerprint: TlsFingerprint,
    /// 1-based, for the user to find.
    line: usize,
}

/// The contents of `known_servers`: lines `host:port SHA256:<hex>`; blank
/// lines and lines starting with `#` are skipped, as are lines this client
/// cannot read (they name no key it could check against).
struct KnownServers {
    text: String,
}

impl KnownServers {
    fn read(path: &Path) -> io::Result<KnownServers> {
        match fs::read_to_string(path) {
            Ok(text) => Ok(KnownServers { text }),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(KnownServers {
                text: String::new(),
            }),
            Err(err) => Err(err),
        }
    }

    /// The key pinned for `server`: the first line naming it.
    fn find(&self, server: &str) -> Option<Pin> {
        self.text.lines().enumerate().find_map(|(index, line)| {
            // A comment's first word starts with `#`, so it names no server.
            let (name, fingerprint) = line.trim().split_once(char::is_whitespace)?;
            if name != server {
                return None;
            }
            Some(Pin {
                fingerprint: fingerprint.trim().parse().ok()?,
                line: index + 1,
            })
        })
    }

    /// Pins `fingerprint` for `server`: appends its line, making the data
    /// directory (mode 0700) and the file (0600) if need be.
    fn record(&self, path: &Path, server: &str, fingerprint: TlsFingerprint) -> io::Result<()> {
        if let Some(dir) = path.parent() {
            create_private_dir(dir)?;
        }
        let mut options = OpenOptions::new();
        options.append(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path)?;
        // A file whose last line has no newline (edited by hand) must not
        // have the new line glued to it.
        let separator = if self.text.is_empty() || self.text.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        file.write_all(format!("{separator}{server} {fingerprint}\n").as_bytes())
    }
}

/// Makes `dir` and its parents as needed, readable by the owner only.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use rustls::pki_types::PrivateKeyDer;
    use rustls::ServerConfig;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use super::*;

    /// The options `parlor client` would have with these flags.
    fn options(flags: &[&str]) -> Options {
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            options: Options,
        }
        let args = std::iter::once("parlor-client").chain(flags.iter().copied());
        Cli::try_parse_from(args).unwrap().options
    }

    /// A TLS server on a loopback port with a fresh self-signed key, which
    /// accepts one connection and sends back the channel binding it derives.
    async fn binding_server() -> (std::net::SocketAddr, TlsFingerprint) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = made.cert.der().clone();
        let key = PrivateKeyDer::try_from(made.signing_key.serialize_der()).unwrap();
        let fingerprint = fingerprint(&cert).unwrap();
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = TlsAcceptor::from(Arc::new(config))
                .accept(tcp)
                .await
                .unwrap();
            let binding = tls
                .get_ref()
                .1
                .export_keying_material([0; CHANNEL_BINDING_LEN], CHANNEL_BINDING_LABEL, None)
                .unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut tls, &binding)
                .await
                .unwrap();
            tokio::io::AsyncWriteExt::flush(&mut tls).await.unwrap();
        });
        (addr, fingerprint)
    }

    #[tokio::test]
    async fn a_tls_connection_brings_the_servers_channel_binding_and_pins_a_new_key() {
        let dir = std::env::temp_dir().join(format!("parlor-transport-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let data_dir = dir.join("data");
        let transport =
            Transport::new(&options(&["--data-dir", data_dir.to_str().unwrap()])).unwrap();
        let (addr, key) = binding_server().await;
        let address = addr.to_string();
        let mut connected = transport.connect(&address).await.unwrap();
        let mut theirs = [0; CHANNEL_BINDING_LEN];
        tokio::io::AsyncReadExt::read_exact(&mut connected.stream, &mut theirs)
            .await
            .unwrap();
        assert_eq!(connected.channel_binding, Some(theirs));
        let UserEvent::Transport {
            tls: true,
            fingerprint: Some(shown),
            trust: Some("first_use"),
            ..
        } = connected.shown
        else {
            panic!("{:?}", connected.shown);
        };
        assert_eq!(shown, key.to_string());
        let pinned = std::fs::read_to_string(data_dir.join(KNOWN_SERVERS)).unwrap();
        assert_eq!(pinned, format!("{address} {key}\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn plain_transports_have_no_binding_and_say_why() {
        for (flag, why) in [
            ("--legacy", "legacy"),
            ("--insecure-transport", "insecure_transport"),
        ] {
            let transport = Transport::new(&options(&[flag])).unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap().to_string();
            let connected = transport.connect(&address).await.unwrap();
            assert_eq!(connected.channel_binding, None);
            assert!(
                matches!(connected.shown, UserEvent::Transport { tls: false, reason: Some(reason), .. } if reason == why),
                "{:?}",
                connected.shown
            );
        }
    }

    const A: &str = "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn a_tls_alert_is_a_tls_record_and_a_parlor_frame_is_not() {
        assert!(is_tls_record(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32]));
        assert!(!is_tls_record(&[0x00, 0x00, 0x00, 0x05, 0x04, 0x17, 0x9a]));
        assert!(!is_tls_record(&[0x15]));
    }

    #[test]
    fn hosts_come_without_port_or_brackets() {
        assert_eq!(host_of("example.org:4171"), "example.org");
        assert_eq!(host_of("127.0.0.1:4171"), "127.0.0.1");
        assert_eq!(host_of("[::1]:4171"), "::1");
    }

    #[test]
    fn a_pin_is_the_first_readable_line_naming_the_server_exactly() {
        let known = KnownServers {
            text: format!(
                "# comment\n\nlocalhost:4171 {A}\n127.0.0.1:4171 garbage\n127.0.0.1:4171  {A}\n"
            ),
        };
        let pin = known.find("127.0.0.1:4171").unwrap();
        assert_eq!((pin.fingerprint.to_string().as_str(), pin.line), (A, 5));
        assert_eq!(known.find("localhost:4171").unwrap().line, 3);
        assert!(known.find("localhost:4170").is_none());
        assert!(known.find("# comment").is_none());
    }
}
