//! The TLS listener's certificate: the operator's own (`tls_cert` and
//! `tls_key`), or one the server makes itself on first start and keeps in
//! `state_dir`.
//!
//! A self-signed certificate proves nothing by itself; what makes it useful
//! is that its key stays the same from one start to the next. The server
//! logs the key's fingerprint ([`TlsFingerprint`]) at every start, so an
//! operator can tell users what to expect, and the reference client pins it
//! on first use (PROTOCOL.md, "TLS transport"). The certificate names
//! `localhost`, `127.0.0.1`, `::1` and the machine's host name, so that
//! clients which do check names against a certificate they were given
//! (`parlor client --ca`) accept it for those.
//!
//! The handshake of each connection is in `connection.rs`; this file only
//! prepares the [`TlsAcceptor`] they share.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{CertificateParams, DnType, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ParsedCertificate;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tracing::info;

use crate::config::Config;
use parlor_proto::tls::TlsFingerprint;

/// The self-signed certificate's file in `state_dir`.
pub const CERT_FILE: &str = "tls-cert.pem";
/// Its private key's file in `state_dir`, readable by the owner only.
pub const KEY_FILE: &str = "tls-key.pem";

/// What every TLS connection of one server shares.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) acceptor: TlsAcceptor,
    /// Of the server's own certificate, the first of the chain.
    pub(crate) fingerprint: TlsFingerprint,
}

impl Tls {
    /// Loads the configured certificate, or the one kept in `state_dir`,
    /// making it on first start. Every error names the file concerned.
    pub(crate) fn load(config: &Config) -> io::Result<Tls> {
        let (chain, key) = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => (read_chain(cert)?, read_key(key)?),
            _ => {
                let dir = config.state_dir().ok_or_else(|| {
                    invalid(
                        "no state directory for the TLS certificate: set state_dir, \
                         XDG_STATE_HOME or HOME, or give tls_cert and tls_key"
                            .to_owned(),
                    )
                })?;
                kept_or_made(&dir)?
            }
        };
        let own = chain
            .first()
            .ok_or_else(|| invalid("the TLS certificate file holds no certificate".to_owned()))?;
        let parsed = ParsedCertificate::try_from(own)
            .map_err(|err| invalid(format!("the TLS certificate is unusable: {err}")))?;
        let fingerprint = TlsFingerprint::of_spki(&parsed.subject_public_key_info());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| invalid(format!("TLS: {err}")))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|err| {
                invalid(format!(
                    "the TLS certificate and key do not go together: {err}"
                ))
            })?;
        // A chat connection lasts for hours and is made again rarely:
        // resumption would save one handshake now and then, and tickets
        // cost every new connection a write and the server their state.
        server.send_tls13_tickets = 0;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            fingerprint,
        })
    }
}

/// The certificate and key in `dir`, made there first if neither exists.
fn kept_or_made(dir: &Path) -> io::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let mut state_dir = DirBuilder::new();
    state_dir.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut state_dir, 0o700);
    state_dir
        .create(dir)
        .map_err(|err| about(err, "cannot create the state directory", dir))?;
    let _lock = lock_state(dir)?;
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok((read_chain(&cert)?, read_key(&key)?)),
        (false, false) => {}
        (has_cert, _) => {
            let (there, missing) = if has_cert {
                (&cert, &key)
            } else {
                (&key, &cert)
            };
            return Err(invalid(format!(
                "{} is there but {} is not: restore it, or delete both to make a new \
                 self-signed certificate (clients that pinned the old key will refuse the new one)",
                there.display(),
                missing.display()
            )));
        }
    }
    let (cert_pem, key_pem) = self_signed()?;
    // The key first: a crash in between leaves a key without a
    // certificate, which the next start reports instead of making a new key
    // behind the operator's back.
    write_new(&key, key_pem.as_bytes(), 0o600)?;
    write_new(&cert, cert_pem.as_bytes(), 0o644)?;
    info!(cert = %cert.display(), key = %key.display(), "made a self-signed TLS certificate");
    Ok((read_chain(&cert)?, read_key(&key)?))
}

/// Locks `dir` itself (no file of its own: the state directory holds the
/// certificate and key and nothing else) against other servers looking for
/// or making their certificate there, until the returned handle is
/// dropped, so that servers started together with one state directory make
/// one certificate and share it, instead of one failing on the other's
/// half-made pair.
fn lock_state(dir: &Path) -> io::Result<std::fs::File> {
    let handle = std::fs::File::open(dir).map_err(|err| about(err, "cannot open", dir))?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open for as long as `handle` lives;
        // flock only reads it. The lock goes with the descriptor on drop.
        if unsafe { libc::flock(handle.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(about(io::Error::last_os_error(), "cannot lock", dir));
        }
    }
    Ok(handle)
}

/// A fresh ECDSA P-256 key and a self-signed certificate for it, as PEM.
fn self_signed() -> io::Result<(String, String)> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(host_name());
    let failed = |err: rcgen::Error| invalid(format!("cannot make a TLS certificate: {err}"));
    let mut params = CertificateParams::new(names).map_err(failed)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "parlor server");
    let key = KeyPair::generate().map_err(failed)?;
    let cert = params.self_signed(&key).map_err(failed)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The machine's host name, when it is one a certificate can name (ASCII)
/// and not one it names already.
#[cfg(unix)]
fn host_name() -> Option<String> {
    let mut name = [0u8; 256];
    // SAFETY: the buffer is valid for writes of its whole length, which is
    // what gethostname is told it may write.
    let failed = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) } != 0;
    if failed {
        return None;
    }
    let end = name.iter().position(|&byte| byte == 0)?;
    let name = std::str::from_utf8(&name[..end]).ok()?;
    let usable = !name.is_empty() && name.is_ascii() && name != "localhost";
    usable.then(|| name.to_owned())
}

#[cfg(not(unix))]
fn host_name() -> Option<String> {
    None
}

/// Creates `path`, which must not exist, with `mode` and `contents`.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    let mut file = options
        .open(path)
        .map_err(|err| about(err, "cannot create", path))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|err| about(err, "cannot write", path))
}

fn read_chain(path: &PathBuf) -> io::Result<Vec<CertificateDer<'static>>> {
    let bytes =
        fs::read(path).map_err(|err| about(err, "cannot read the TLS certificate", path))?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| invalid(format!("{}: not a PEM certificate: {err}", path.display())))?;
    if chain.is_empty() {
        return Err(invalid(format!(
            "{}: no CERTIFICATE block in the file",
            path.display()
        )));
    }
    Ok(chain)
}

fn read_key(path: &PathBuf) -> io::Result<PrivateKeyDer<'static>> {
    let bytes = fs::read(path).map_err(|err| about(err, "cannot read the TLS key", path))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|err| invalid(format!("{}: not a PEM private key: {err}", path.display())))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Prefixes an I/O error with what was being done, and to which file.
fn about(err: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{what} {}: {err}", path.display()))
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("parlor-tls-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn servers_started_together_with_one_state_dir_make_one_certificate() {
        let dir = scratch("together").join("state");
        let config = Config {
            state_dir: Some(dir.clone()),
            ..Config::default()
        };
        let fingerprints: Vec<_> = std::thread::scope(|scope| {
            let starts: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| Tls::load(&config).map(|tls| tls.fingerprint)))
                .collect();
            starts
                .into_iter()
                .map(|start| start.join().unwrap())
                .collect()
        });
        let first = *fingerprints[0].as_ref().expect("the first start");
        for fingerprint in &fingerprints {
            assert_eq!(fingerprint.as_ref().ok(), Some(&first), "{fingerprints:?}");
        }
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_certificate_is_made_once_with_a_private_key_and_then_kept() {
        let dir = scratch("kept").join("state");
        let config = Config {
            state_dir: Some(dir.clone()),
            ..Config::default()
        };
        let first = Tls::load(&config).unwrap().fingerprint;
        let mode = |name| fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(KEY_FILE), 0o600);
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(Tls::load(&config).unwrap().fingerprint, first, "kept");

        fs::remove_file(dir.join(CERT_FILE)).unwrap();
        let err = Tls::load(&config).err().unwrap().to_string();
        assert!(
            err.contains(KEY_FILE) && err.contains("delete both"),
            "{err}"
        );
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }
}
