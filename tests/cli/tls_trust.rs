//! Certificates made the usual ways (`openssl req -x509`, which marks a self-signed certificate
//! CA:TRUE; the same with CA:FALSE; a leaf signed by a private CA), on POP3S, STLS, IMAPS and
//! STARTTLS; and what a user is told when a certificate is not trusted.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::dovecot::Dovecot;
use crate::support::{Rng, Sandbox, generated_message};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is needed for these tests (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A server certificate and key, and what a user gives as `--ca-file` to trust it.
struct ServerCert {
    cert: PathBuf,
    key: PathBuf,
    trust: PathBuf,
    kind: &'static str,
}

fn self_signed(dir: &Path, kind: &'static str, extra: &[&str]) -> ServerCert {
    let (cert, key) = (format!("{kind}.pem"), format!("{kind}.key"));
    let mut args = vec![
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "-days",
        "30",
        "-keyout",
        &key,
        "-out",
        &cert,
    ];
    args.extend_from_slice(extra);
    openssl(dir, &args);
    ServerCert {
        cert: dir.join(&cert),
        key: dir.join(&key),
        trust: dir.join(&cert),
        kind,
    }
}

fn private_ca_leaf(dir: &Path) -> ServerCert {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=Private Office CA",
            "-days",
            "30",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
        ],
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "leaf.ext",
            "-out",
            "leaf.pem",
        ],
    );
    ServerCert {
        cert: dir.join("leaf.pem"),
        key: dir.join("leaf.key"),
        trust: dir.join("ca.pem"),
        kind: "private CA",
    }
}

fn dovecot_with(cert: &ServerCert) -> Dovecot {
    let c = format!("<{}", cert.cert.display());
    let k = format!("<{}", cert.key.display());
    Dovecot::start_with(&[("ssl_cert", &c), ("ssl_key", &k)])
}

fn backup(sandbox: &Sandbox, url: &str, extra: &[&str]) -> Output {
    let mut args = vec!["backup", url];
    args.extend_from_slice(extra);
    sandbox.run_with_password(&args, "secret")
}

fn fingerprint(cert: &Path) -> String {
    let pem = std::fs::read_to_string(cert).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    crate::support::sha256_hex(&der)
}

#[test]
fn self_signed_and_private_ca_certificates_are_trusted_on_every_kind_of_connection() {
    let dir = tempfile::tempdir().unwrap();
    let certs = [
        self_signed(dir.path(), "ca-true", &[]),
        self_signed(
            dir.path(),
            "ca-false",
            &["-addext", "basicConstraints=critical,CA:FALSE"],
        ),
        private_ca_leaf(dir.path()),
    ];
    for cert in &certs {
        let dovecot = dovecot_with(cert);
        let mut rng = Rng(3);
        for n in 0..3 {
            dovecot.add_message(&format!("m{n}"), &generated_message(n, &mut rng));
        }
        let sandbox = Sandbox::new();
        let trust = cert.trust.to_str().unwrap();
        let pop3s = format!("pop3s://alice@127.0.0.1:{}", dovecot.pop3s_port);
        let stls = format!("pop3://alice@127.0.0.1:{}", dovecot.pop3_port);
        for url in [&pop3s, &stls] {
            let out = backup(&sandbox, url, &["--ca-file", trust]);
            assert!(
                out.status.success(),
                "{} {url}: {}",
                cert.kind,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for url in [
            format!("imaps://alice@127.0.0.1:{}/Restored", dovecot.imaps_port),
            format!("imap://alice@127.0.0.1:{}/Restored2", dovecot.imap_port),
        ] {
            let out =
                sandbox.run_with_password(&["restore", "--to", &url, "--ca-file", trust], "secret");
            assert!(
                out.status.success(),
                "{} {url}: {}",
                cert.kind,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Without --ca-file: refused, in plain words, with what would trust it.
        let out = backup(&sandbox, &pop3s, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let why = if cert.kind == "private CA" {
            "its issuer (CN=Private Office CA) is not a trusted certificate authority"
        } else {
            "it is self-signed"
        };
        assert!(
            stderr.contains(&format!("is not trusted: {why}")),
            "{}: {stderr}",
            cert.kind
        );
        assert!(
            stderr.contains(&format!(
                "--tls-fingerprint sha256:{}",
                fingerprint(&cert.cert)
            )),
            "{stderr}"
        );
        for debug in [
            "Other(",
            "OtherError",
            "CaUsedAsEndEntity",
            "InvalidCertificate",
        ] {
            assert!(!stderr.contains(debug), "{stderr}");
        }
        // The pin it names works.
        let pin = format!("sha256:{}", fingerprint(&cert.cert));
        let out = backup(&sandbox, &pop3s, &["--tls-fingerprint", &pin]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_wrong_name_or_an_expired_certificate_is_said_so_even_when_given_as_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let other_name = {
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=mail.example.org",
                "-addext",
                "subjectAltName=DNS:mail.example.org",
                "-days",
                "30",
                "-keyout",
                "o.key",
                "-out",
                "o.pem",
            ],
        );
        ServerCert {
            cert: dir.path().join("o.pem"),
            key: dir.path().join("o.key"),
            trust: dir.path().join("o.pem"),
            kind: "other name",
        }
    };
    let dovecot = dovecot_with(&other_name);
    let sandbox = Sandbox::new();
    let url = format!("pop3s://alice@127.0.0.1:{}", dovecot.pop3s_port);
    let out = backup(
        &sandbox,
        &url,
        &["--ca-file", other_name.trust.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is not trusted: it is for mail.example.org, not for 127.0.0.1"),
        "{stderr}"
    );
    // server-info without the CA: self-signed is the first problem, the name is said too, and
    // --ca-file, which could not help, is not offered.
    let out = sandbox.run(&["server-info", &url]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("and it is for mail.example.org, not for 127.0.0.1"),
        "{stdout}"
    );
    assert!(!stdout.contains("--ca-file"), "{stdout}");
    drop(dovecot);

    // Expired: made with rcgen, since openssl 3.0 cannot backdate a certificate.
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("x.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("x.key"), key.serialize_pem()).unwrap();
    let expired = ServerCert {
        cert: dir.path().join("x.pem"),
        key: dir.path().join("x.key"),
        trust: dir.path().join("x.pem"),
        kind: "expired",
    };
    let dovecot = dovecot_with(&expired);
    let url = format!("pop3s://alice@127.0.0.1:{}", dovecot.pop3s_port);
    let out = backup(
        &sandbox,
        &url,
        &["--ca-file", expired.trust.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is not trusted: it expired on 2021-01-01"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: the server's certificate must be renewed"),
        "{stderr}"
    );
}

/// `server-info` is what a user runs to learn how to trust a server: it shows the certificate
/// even when it is not trusted, says why, and the exact flag that would trust it.
#[test]
fn server_info_shows_an_untrusted_certificate_and_how_to_trust_it() {
    let dir = tempfile::tempdir().unwrap();
    let cert = self_signed(dir.path(), "ca-true", &[]);
    let dovecot = dovecot_with(&cert);
    let sandbox = Sandbox::new();
    let url = format!("pop3s://alice@127.0.0.1:{}", dovecot.pop3s_port);
    let out = sandbox.run(&["server-info", &url]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let sha = fingerprint(&cert.cert);
    assert!(stdout.contains("CN=localhost"), "{stdout}");
    assert!(stdout.contains(&format!("sha256      {sha}")), "{stdout}");
    assert!(
        stdout.contains("NOT TRUSTED: it is self-signed"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("--tls-fingerprint sha256:{sha}")),
        "{stdout}"
    );
    assert!(
        stdout.contains("(or --ca-file with this certificate or its CA)"),
        "{stdout}"
    );
    let out = sandbox.run(&[
        "server-info",
        &url,
        "--tls-fingerprint",
        &format!("sha256:{sha}"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `setup` against such a server shows the certificate and pins it when told to (trust on
/// first use); its default account name is the one an ad hoc backup uses, user@host.
#[test]
fn setup_offers_to_pin_an_untrusted_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = self_signed(dir.path(), "ca-true", &[]);
    let dovecot = dovecot_with(&cert);
    let sandbox = Sandbox::new();
    let config = sandbox.path().join("config.toml");
    let url = format!("pop3s://alice@127.0.0.1:{}", dovecot.pop3s_port);
    let setup = format!(
        "{} --config {} setup --server {url} --password-command 'echo secret'",
        env!("CARGO_BIN_EXE_popvault"),
        config.display()
    );
    // Answers on a terminal: the account name (default), then "yes" to the pin.
    let mut child = Command::new("script")
        .args(["-qec", &setup, "/dev/null"])
        .env("HOME", sandbox.path())
        .env("POPVAULT_ARCHIVE", sandbox.archive())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let stdin = child.stdin.as_mut().unwrap();
        // A write fails only when setup already ended; its output then says why.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let _ = stdin.write_all(b"\n");
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let _ = stdin.write_all(b"yes\n");
    }
    let out = child.wait_with_output().unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains("NOT TRUSTED: it is self-signed"),
        "{screen}"
    );
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.contains("name = \"alice@127.0.0.1\""), "{written}");
    assert!(
        written.contains(&format!(
            "tls_fingerprint = \"sha256:{}\"",
            fingerprint(&cert.cert)
        )),
        "{written}"
    );
    let out = sandbox
        .command()
        .arg("--config")
        .arg(&config)
        .args(["backup", "-q"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// pop3s:// or imaps:// pointed at a port that starts in plain text is said in words, with the
/// URL that fits, not as a TLS record-layer error.
#[test]
fn tls_to_a_plain_text_port_is_said_in_plain_words() {
    let dovecot = Dovecot::start();
    let sandbox = Sandbox::new();
    let url = format!("pop3s://alice@127.0.0.1:{}", dovecot.pop3_port);
    let out = backup(&sandbox, &url, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "127.0.0.1 port {} answered in plain text, not TLS",
            dovecot.pop3_port
        )),
        "{stderr}"
    );
    assert!(stderr.contains("hint: a port that starts in plain text takes a pop3:// URL"));
    assert!(!stderr.contains("InvalidContentType"), "{stderr}");

    // The same for a restore to imaps:// at the plain IMAP port.
    let eml = sandbox.path().join("one.eml");
    std::fs::write(&eml, generated_message(1, &mut Rng(7))).unwrap();
    sandbox.ok(&["import", &format!("eml:{}", eml.display())]);
    let to = format!("imaps://alice@127.0.0.1:{}/INBOX", dovecot.imap_port);
    let out = sandbox.run_with_password(&["restore", "--to", &to], "secret");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("answered in plain text, not TLS"),
        "{stderr}"
    );
}
