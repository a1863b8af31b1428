//! Whom a TLS connection trusts, and what to say when it trusts nobody.
//!
//! Trust, in order:
//! - `fingerprint` (a SHA-256 pin of the leaf certificate) replaces every other check: the
//!   pinned certificate is trusted, any other refused. The handshake signatures are still
//!   verified, so the server must hold the pinned certificate's key.
//! - otherwise the chain is checked against `ca_file` (which replaces the system roots) or the
//!   system roots (rustls-native-certs, else webpki-roots), with the host name;
//! - and a leaf certificate that is itself in `ca_file` is trusted as that exact certificate,
//!   with its validity and host name still checked. That is how a self-signed server made the
//!   usual way (`openssl req -x509`, which marks it `CA:TRUE`, which webpki refuses as a leaf)
//!   is trusted, as mpop and fetchmail do.
//!
//! The verifier keeps the leaf it was shown, so a refusal can describe the certificate
//! ([`CertificateInfo`]) and why it is not trusted ([`TlsProblem`]) in plain words.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore,
    SignatureScheme,
};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// What a certificate says of itself, for a user deciding whether to trust it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateInfo {
    pub subject: String,
    pub issuer: String,
    pub not_before: Option<DateTime<Utc>>,
    pub not_after: Option<DateTime<Utc>>,
    /// DNS names and IP addresses it is for (subjectAltName).
    pub names: Vec<String>,
    /// SHA-256 of the DER, the value a pin (`tls_fingerprint`) holds, lower-case hex.
    pub sha256: String,
    /// Its issuer is itself.
    pub self_signed: bool,
}

impl CertificateInfo {
    pub fn from_der(der: &[u8]) -> CertificateInfo {
        let sha256 = hex::encode(Sha256::digest(der));
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return CertificateInfo {
                subject: "(unreadable certificate)".into(),
                issuer: String::new(),
                not_before: None,
                not_after: None,
                names: Vec::new(),
                sha256,
                self_signed: false,
            };
        };
        let when = |t: x509_parser::time::ASN1Time| DateTime::from_timestamp(t.timestamp(), 0);
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => {
                        names.push(ip_text(ip));
                    }
                    _ => {}
                }
            }
        }
        CertificateInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_before: when(cert.validity().not_before),
            not_after: when(cert.validity().not_after),
            names,
            sha256,
            self_signed: cert.subject() == cert.issuer(),
        }
    }
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).unwrap_or_default()).to_string(),
        16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).unwrap_or_default()).to_string(),
        _ => hex::encode(bytes),
    }
}

/// Why a server certificate is not trusted, in the words a user acts on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsProblem {
    #[error("it is self-signed, and not among the trusted certificates")]
    SelfSigned,
    #[error("its issuer ({issuer}) is not a trusted certificate authority")]
    UnknownIssuer { issuer: String },
    #[error("it expired on {0}")]
    Expired(String),
    #[error("it is not valid before {0}")]
    NotYetValid(String),
    #[error("it is for {names}, not for {host}")]
    WrongName { host: String, names: String },
    #[error("its SHA-256 fingerprint is {got}, not the pinned {expected}")]
    PinMismatch { expected: String, got: String },
    #[error("{0}")]
    Other(String),
}

impl TlsProblem {
    /// Reads a rustls certificate error, with what the certificate itself says.
    pub(crate) fn from_rustls(
        error: &CertificateError,
        host: &str,
        cert: Option<&CertificateInfo>,
    ) -> TlsProblem {
        let date = |d: Option<DateTime<Utc>>| {
            d.map_or("an unknown date".into(), |d| {
                d.format("%Y-%m-%d %H:%M UTC").to_string()
            })
        };
        let names = || {
            cert.map(|c| c.names.join(", "))
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "other names".into())
        };
        let unknown = || match cert {
            Some(c) if c.self_signed => TlsProblem::SelfSigned,
            Some(c) => TlsProblem::UnknownIssuer {
                issuer: c.issuer.clone(),
            },
            None => TlsProblem::UnknownIssuer {
                issuer: "unknown".into(),
            },
        };
        match error {
            CertificateError::UnknownIssuer => unknown(),
            // webpki checks a self-signed leaf's signature against roots that do not hold it.
            CertificateError::BadSignature if cert.is_some_and(|c| c.self_signed) => unknown(),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                TlsProblem::Expired(date(cert.and_then(|c| c.not_after)))
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                TlsProblem::NotYetValid(date(cert.and_then(|c| c.not_before)))
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                TlsProblem::WrongName {
                    host: host.to_string(),
                    names: names(),
                }
            }
            CertificateError::Other(OtherError(other)) => {
                if let Some(pin) = other.downcast_ref::<PinMismatch>() {
                    return TlsProblem::PinMismatch {
                        expected: hex::encode(pin.expected),
                        got: hex::encode(pin.got),
                    };
                }
                match other.downcast_ref::<webpki::Error>() {
                    // `openssl req -x509` marks a self-signed certificate CA:TRUE.
                    Some(webpki::Error::CaUsedAsEndEntity) => unknown(),
                    Some(e) => TlsProblem::Other(format!("it was refused ({e})")),
                    None => TlsProblem::Other(format!("it was refused ({other})")),
                }
            }
            CertificateError::BadSignature => {
                TlsProblem::Other("its signature does not verify".into())
            }
            CertificateError::Revoked => TlsProblem::Other("it was revoked".into()),
            other => TlsProblem::Other(format!("it was refused ({other})")),
        }
    }
}

/// Why a trust setting could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot load CA certificates from {path}: {reason}")]
pub struct CaFileError {
    pub path: std::path::PathBuf,
    pub reason: String,
}

/// The client configuration for one connection, and the verifier that will know what the
/// server presented.
pub(crate) fn client_config(
    ca_file: Option<&Path>,
    fingerprint: Option<[u8; 32]>,
) -> Result<(Arc<ClientConfig>, Arc<Verifier>), CaFileError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (chain, exact) = match fingerprint {
        Some(_) => (None, Vec::new()),
        None => {
            let (roots, exact) = roots(ca_file)?;
            let chain =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| CaFileError {
                        path: ca_file.map(Path::to_path_buf).unwrap_or_default(),
                        reason: e.to_string(),
                    })?;
            (Some(chain), exact)
        }
    };
    let verifier = Arc::new(Verifier {
        chain,
        pin: fingerprint,
        exact,
        algorithms: provider.signature_verification_algorithms,
        presented: Mutex::new(None),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| CaFileError {
            path: Default::default(),
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    Ok((Arc::new(config), verifier))
}

/// The roots to check chains against, and the certificates of `ca_file` (trusted verbatim).
fn roots(
    ca_file: Option<&Path>,
) -> Result<(RootCertStore, Vec<CertificateDer<'static>>), CaFileError> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = ca_file {
        let ca_error = |reason: String| CaFileError {
            path: path.to_owned(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_error(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ca_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("no PEM certificate in the file".into()));
        }
        // A certificate webpki cannot use as a root (unusual extensions) may still be the
        // server's own, trusted verbatim.
        roots.add_parsable_certificates(certs.iter().cloned());
        return Ok((roots, certs));
    }
    // Unreadable entries in the system store are skipped: one bad file must not stop a backup.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    Ok((roots, Vec::new()))
}

/// Carried inside the rustls error so the refusal can name both fingerprints.
#[derive(Debug)]
struct PinMismatch {
    expected: [u8; 32],
    got: [u8; 32],
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate fingerprint {} is not the pinned {}",
            hex::encode(self.got),
            hex::encode(self.expected)
        )
    }
}

impl std::error::Error for PinMismatch {}

/// The trust rules of this module, for one connection; it remembers the leaf it was shown.
#[derive(Debug)]
pub(crate) struct Verifier {
    /// Chain and name check against the roots; `None` when a pin replaces it.
    chain: Option<Arc<WebPkiServerVerifier>>,
    pin: Option<[u8; 32]>,
    /// Certificates of the CA file, each trusted as that exact leaf too.
    exact: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
    presented: Mutex<Option<CertificateDer<'static>>>,
}

impl Verifier {
    /// The leaf certificate the server presented, once the handshake got that far.
    pub(crate) fn presented(&self) -> Option<CertificateDer<'static>> {
        self.presented
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The rules for a leaf found verbatim in the CA file: valid now, and for this name.
    fn check_exact(
        &self,
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        if now_secs < cert.validity().not_before.timestamp() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet,
            ));
        }
        if now_secs > cert.validity().not_after.timestamp() {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
        }
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        ee.verify_is_valid_for_subject_name(server_name)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.presented.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(end_entity.clone().into_owned());
        if let Some(expected) = self.pin {
            let got: [u8; 32] = Sha256::digest(end_entity).into();
            return if got == expected {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(PinMismatch { expected, got })),
                )))
            };
        }
        let Some(chain) = &self.chain else {
            return Err(rustls::Error::General("no trust configured".into()));
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            // A leaf found verbatim in the CA file is judged by the rules for exactly it.
            Err(_) if self.exact.iter().any(|c| c.as_ref() == end_entity.as_ref()) => self
                .check_exact(end_entity, server_name, now)
                .map(|()| ServerCertVerified::assertion()),
            verdict => verdict,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The SHA-256 of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ca_file_names_the_path() {
        let err = roots(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn empty_ca_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        assert!(roots(Some(&path)).is_err());
    }

    #[test]
    fn system_roots_are_never_empty() {
        assert!(!roots(None).unwrap().0.is_empty());
    }

    #[test]
    fn problems_are_said_in_plain_words() {
        let cert = CertificateInfo {
            subject: "CN=mail".into(),
            issuer: "CN=mail".into(),
            not_before: DateTime::from_timestamp(0, 0),
            not_after: DateTime::from_timestamp(1_700_000_000, 0),
            names: vec!["mail.example.com".into(), "127.0.0.1".into()],
            sha256: "ab".repeat(32),
            self_signed: true,
        };
        let say = |e: CertificateError| {
            TlsProblem::from_rustls(&e, "pop.example.org", Some(&cert)).to_string()
        };
        assert_eq!(
            say(CertificateError::UnknownIssuer),
            "it is self-signed, and not among the trusted certificates"
        );
        assert_eq!(
            say(CertificateError::Expired),
            "it expired on 2023-11-14 22:13 UTC"
        );
        assert_eq!(
            say(CertificateError::NotValidForName),
            "it is for mail.example.com, 127.0.0.1, not for pop.example.org"
        );
        let ca_as_leaf =
            CertificateError::Other(OtherError(Arc::new(webpki::Error::CaUsedAsEndEntity)));
        assert!(say(ca_as_leaf).contains("self-signed"));
        for text in [
            say(CertificateError::BadSignature),
            say(CertificateError::Revoked),
        ] {
            assert!(!text.contains("Other(") && !text.contains('{'), "{text}");
        }
    }
}
