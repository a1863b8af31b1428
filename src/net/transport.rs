//! Connections shared by the POP3 client and the IMAP restore: plain TCP, implicit TLS, or an
//! upgrade after STLS/STARTTLS, with rustls and the ring provider.
//!
//! Trust is [`super::tls`]'s. TLS 1.2 is the minimum. Every socket gets read and write
//! timeouts, so a server that stops talking ends in a timeout error, never a hang.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConnection, ProtocolVersion, StreamOwned};

use super::tls::{self, CaFileError, CertificateInfo, TlsProblem};
use crate::stop::Stop;

/// Why a connection could not be made. No variant holds a secret (none reaches this layer).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot resolve {host}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// The server's certificate is not trusted; `certificate` describes it when the server got
    /// as far as presenting one.
    #[error("the TLS certificate of {host} is not trusted: {problem}")]
    Certificate {
        host: String,
        problem: TlsProblem,
        certificate: Option<Box<CertificateInfo>>,
    },
    #[error("the TLS handshake with {host} failed: {reason}")]
    Tls { host: String, reason: String },
    /// The first bytes back were no TLS record: a port that starts in plain text, most likely.
    #[error("{host} port {port} answered in plain text, not TLS")]
    NotTls { host: String, port: u16 },
    #[error(transparent)]
    CaFile(#[from] CaFileError),
    #[error("{host:?} is not a valid server name")]
    BadHost { host: String },
    #[error("stopped by a signal while connecting")]
    Cancelled,
    #[error("i/o error while connecting")]
    Io(#[from] io::Error),
}

type Result<T, E = TransportError> = std::result::Result<T, E>;

/// How TLS is used on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS from the first byte (POP3S, port 995; RFC 8314)
    Implicit,
    /// Plain TCP upgraded with STLS (RFC 2595); a server not offering STLS is refused
    StartTls,
    /// No TLS at all: everything, passwords included, is readable on the network
    None,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// PEM file of CA certificates that replaces the system roots
    pub ca_file: Option<PathBuf>,
    /// SHA-256 of the server's leaf certificate (DER). When set it replaces the chain and
    /// host name check: a match is trusted, a mismatch is [`TransportError::CertificatePin`].
    pub fingerprint: Option<[u8; 32]>,
    /// Limit for connecting and for each read or write; a reply that brings fewer than
    /// [`STALL_BYTES`] in this long counts as stalled too (see the POP3 connection)
    pub timeout: Duration,
    /// Checked while waiting for the server, so a stop request is noticed within about
    /// [`POLL_INTERVAL`]
    pub stop: Stop,
}

/// A reply that brings fewer bytes than this in `timeout` is a stalled server (one trickling a
/// byte every few seconds would otherwise hold a run for hours).
pub const STALL_BYTES: usize = 1024;

/// How often a blocked read wakes up to look at the clock and the stop request.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

impl ConnectOptions {
    pub fn new(host: impl Into<String>, port: u16, tls: TlsMode) -> Self {
        ConnectOptions {
            host: host.into(),
            port,
            tls,
            ca_file: None,
            fingerprint: None,
            timeout: Duration::from_secs(60),
            stop: Stop::new(),
        }
    }
}

/// What was negotiated, for display (`server-info`) and audit.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// e.g. "TLSv1.3"
    pub protocol_version: String,
    /// e.g. "TLS13_AES_256_GCM_SHA384"
    pub cipher_suite: String,
    /// The server's chain as sent, leaf first (DER)
    pub peer_certificates: Vec<CertificateDer<'static>>,
}

impl TlsInfo {
    /// SHA-256 of the leaf certificate, the value `fingerprint` pins.
    pub fn leaf_fingerprint(&self) -> Option<[u8; 32]> {
        self.peer_certificates.first().map(|c| tls::fingerprint(c))
    }
}

/// A byte stream to the server, with or without TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => &tls.sock,
        }
    }

    /// Limits each read; a reader that wants to look at the clock or a stop request while it
    /// waits sets a short one and counts the waits itself.
    pub fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.tcp().set_read_timeout(Some(timeout))
    }

    /// Asks the kernel to acknowledge received data at once instead of delaying the ACK (Linux
    /// `TCP_QUICKACK`, which lasts until the next read). Against a server that sends a reply in
    /// several small writes without `TCP_NODELAY`, a delayed ACK holds its last segment back by
    /// about 40 ms (Nagle's algorithm waits for that ACK): one command at a time, that is most
    /// of the time a message takes.
    pub fn quick_ack(&self) {
        #[cfg(target_os = "linux")]
        let _ = rustix::net::sockopt::set_tcp_quickack(self.tcp(), true);
    }

    /// Closes both directions at once, without a QUIT: used when the session is abandoned.
    pub fn shutdown(&self) {
        // Already closed by the peer is fine: the goal is only that nothing more is exchanged.
        let _ = self.tcp().shutdown(Shutdown::Both);
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Opens the TCP connection, trying each resolved address in turn, with timeouts set.
pub fn connect_tcp(opts: &ConnectOptions) -> Result<TcpStream> {
    let addrs = (opts.host.as_str(), opts.port)
        .to_socket_addrs()
        .map_err(|source| TransportError::Resolve {
            host: opts.host.clone(),
            source,
        })?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, opts.timeout) {
            Ok(tcp) => {
                tcp.set_read_timeout(Some(opts.timeout))?;
                tcp.set_write_timeout(Some(opts.timeout))?;
                // Commands are small and written in batches; Nagle would only add latency.
                tcp.set_nodelay(true)?;
                return Ok(tcp);
            }
            Err(e) => last = Some((addr, e)),
        }
    }
    let (addr, source) = match last {
        Some((addr, e)) => (addr.to_string(), e),
        None => (
            format!("{}:{}", opts.host, opts.port),
            io::Error::new(io::ErrorKind::NotFound, "no address found"),
        ),
    };
    Err(TransportError::Connect { addr, source })
}

/// Runs the TLS handshake on `tcp` to completion, so certificate errors surface here rather
/// than at the first read.
pub fn handshake(tcp: TcpStream, opts: &ConnectOptions) -> Result<(Stream, TlsInfo)> {
    let (config, verifier) = tls::client_config(opts.ca_file.as_deref(), opts.fingerprint)?;
    let name = ServerName::try_from(opts.host.clone()).map_err(|_| TransportError::BadHost {
        host: opts.host.clone(),
    })?;
    let conn = ClientConnection::new(config, name).map_err(|e| TransportError::Tls {
        host: opts.host.clone(),
        reason: e.to_string(),
    })?;
    // The whole handshake gets `timeout`: a server trickling its certificate a byte at a time
    // must not hold a run for hours, and a stop request is looked at while waiting. Driven one
    // read at a time (rustls' complete_io would go on reading as long as bytes trickle in).
    tcp.set_read_timeout(Some(opts.timeout.min(POLL_INTERVAL)))?;
    let deadline = std::time::Instant::now() + opts.timeout;
    let mut tls = StreamOwned::new(conn, tcp);
    let rustls_error = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
    while tls.conn.is_handshaking() {
        while tls.conn.wants_write() {
            tls.conn.write_tls(&mut tls.sock)?;
        }
        if tls.conn.wants_read() {
            match tls.conn.read_tls(&mut tls.sock) {
                Ok(0) => return Err(TransportError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {
                    if let Err(e) = tls.conn.process_new_packets() {
                        // The alert telling the server why goes out first.
                        let _ = tls.conn.write_tls(&mut tls.sock);
                        return Err(handshake_error(rustls_error(e), opts, &verifier));
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(TransportError::Io(e)),
            }
        }
        if opts.stop.requested() {
            return Err(TransportError::Cancelled);
        }
        if tls.conn.is_handshaking() && std::time::Instant::now() >= deadline {
            return Err(TransportError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "the TLS handshake took longer than the timeout",
            )));
        }
    }
    while tls.conn.wants_write() {
        tls.conn.write_tls(&mut tls.sock)?;
    }
    tls.sock.set_read_timeout(Some(opts.timeout))?;
    let info = TlsInfo {
        protocol_version: match tls.conn.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".into(),
            Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".into(),
            other => format!("{other:?}"),
        },
        cipher_suite: tls
            .conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
        peer_certificates: tls
            .conn
            .peer_certificates()
            .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default(),
    };
    Ok((Stream::Tls(Box::new(tls)), info))
}

/// rustls reports handshake failures as an `io::Error` wrapping a `rustls::Error`: a refused
/// certificate becomes [`TransportError::Certificate`], with the certificate the server showed.
fn handshake_error(
    e: io::Error,
    opts: &ConnectOptions,
    verifier: &tls::Verifier,
) -> TransportError {
    let Some(tls_error) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return TransportError::Io(e);
    };
    let certificate = verifier
        .presented()
        .map(|der| Box::new(CertificateInfo::from_der(&der)));
    match tls_error {
        rustls::Error::InvalidCertificate(problem) => TransportError::Certificate {
            host: opts.host.clone(),
            problem: TlsProblem::from_rustls(problem, &opts.host, certificate.as_deref()),
            certificate,
        },
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
            TransportError::NotTls {
                host: opts.host.clone(),
                port: opts.port,
            }
        }
        other => TransportError::Tls {
            host: opts.host.clone(),
            reason: other.to_string(),
        },
    }
}
