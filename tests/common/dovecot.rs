//! A private Dovecot on 127.0.0.1 for real-server tests: POP3, POP3S, IMAP and IMAPS on free
//! ports, a test CA and a leaf certificate for IP 127.0.0.1, user `alice` / `secret`.
//!
//! Started with `dovecot -F -c CONF` in its own process group and stopped on drop. When the
//! tests run as root, Dovecot drops privileges: mail belongs to `nobody` and the temp dir is
//! world-traversable; otherwise everything runs as the current user.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};

pub const USER: &str = "alice";
pub const PASSWORD: &str = "secret";

/// A test CA and a server certificate it signed, valid for 127.0.0.1 and localhost.
pub struct TestPki {
    pub ca_pem: String,
    pub leaf_pem: String,
    pub leaf_der: Vec<u8>,
    pub leaf_key_pem: String,
}

impl TestPki {
    pub fn generate(ca_name: &str) -> TestPki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ca_name);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

        let mut leaf_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        leaf_params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "popvault test server");
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        TestPki {
            ca_pem: ca.pem(),
            leaf_pem: leaf.pem(),
            leaf_der: leaf.der().to_vec(),
            leaf_key_pem: leaf_key.serialize_pem(),
        }
    }
}

/// A running Dovecot. Dropping it stops the server and removes its directory.
pub struct Dovecot {
    child: Child,
    dir: tempfile::TempDir,
    pki: TestPki,
    mail_owner: (u32, u32),
    pub pop3_port: u16,
    pub pop3s_port: u16,
    pub imap_port: u16,
    pub imaps_port: u16,
    /// A POP3 listener that takes the client's address from a HAProxy PROXY header (see
    /// [`Dovecot::remote_pop3_port`]).
    proxied_port: u16,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Dovecot {
    /// Starts a Dovecot with an empty Maildir and waits until all four ports accept.
    /// Panics with a clear message when Dovecot is not installed: these tests never skip.
    pub fn start() -> Dovecot {
        Dovecot::start_with(&[])
    }

    /// Like [`Dovecot::start`], with settings as providers change them, e.g.
    /// `("pop3_uidl_format", "%u")` or `("auth_mechanisms", "cram-md5")`: each replaces the
    /// default line of that name (or is added).
    pub fn start_with(settings: &[(&str, &str)]) -> Dovecot {
        Dovecot::start_configured(settings, "")
    }

    /// Like [`Dovecot::start_with`], with `extra` appended to the configuration as it is
    /// (blocks such as a second `passdb`).
    pub fn start_configured(settings: &[(&str, &str)], extra: &str) -> Dovecot {
        let binary = ["/usr/sbin/dovecot", "/usr/local/sbin/dovecot"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!(
                    "dovecot not found: these tests need a real Dovecot; \
                     install it with `apt-get install dovecot-pop3d dovecot-imapd`"
                )
            });

        // Unix sockets live under base_dir, and their paths must stay under ~100 bytes.
        let dir = tempfile::Builder::new()
            .prefix("pv")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path().to_owned();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();

        let running_as_root = current_uid() == 0;
        let mail_owner = if running_as_root {
            passwd_ids("nobody").expect("no user `nobody` in /etc/passwd")
        } else {
            (current_uid(), current_gid())
        };

        let pki = TestPki::generate("popvault test CA");
        fs::write(root.join("ca.pem"), &pki.ca_pem).unwrap();
        fs::write(root.join("cert.pem"), &pki.leaf_pem).unwrap();
        fs::write(root.join("key.pem"), &pki.leaf_key_pem).unwrap();
        fs::set_permissions(root.join("key.pem"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(
            root.join("passwd"),
            format!("{USER}:{{PLAIN}}{PASSWORD}::::::\n"),
        )
        .unwrap();

        let home = root.join("home");
        let maildir = home.join("Maildir");
        for sub in ["", "new", "cur", "tmp"] {
            fs::create_dir_all(maildir.join(sub)).unwrap();
        }
        for path in [
            &home,
            &maildir,
            &maildir.join("new"),
            &maildir.join("cur"),
            &maildir.join("tmp"),
        ] {
            chown(path, Some(mail_owner.0), Some(mail_owner.1)).unwrap();
        }

        let ports: Vec<u16> = {
            // Bound together so the five are distinct; released just before Dovecot binds them.
            let listeners: Vec<TcpListener> = (0..5)
                .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
                .collect();
            listeners
                .iter()
                .map(|l| l.local_addr().unwrap().port())
                .collect()
        };
        let users = if running_as_root {
            String::new()
        } else {
            let me = current_user_name();
            format!("default_login_user = {me}\ndefault_internal_user = {me}\n")
        };
        let instance = format!(
            "pv{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let r = root.display();
        let conf = format!(
            r#"instance_name = {instance}
base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
listen = 127.0.0.1
protocols = pop3 imap
{users}ssl = yes
ssl_cert = <{r}/cert.pem
ssl_key = <{r}/key.pem
ssl_dh = </usr/share/dovecot/dh.pem
disable_plaintext_auth = no
auth_mechanisms = plain login apop
auth_failure_delay = 0
first_valid_uid = 1
mail_location = maildir:{maildir}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {r}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={home}
}}
# No growing delay after failed logins (the anvil auth penalty), so wrong-password tests are quick.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
haproxy_trusted_networks = 127.0.0.1
service pop3-login {{
  inet_listener pop3 {{
    port = {p0}
  }}
  inet_listener pop3-proxied {{
    port = {p4}
    haproxy = yes
  }}
  inet_listener pop3s {{
    port = {p1}
    ssl = yes
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = {p2}
  }}
  inet_listener imaps {{
    port = {p3}
    ssl = yes
  }}
}}
"#,
            maildir = maildir.display(),
            home = home.display(),
            uid = mail_owner.0,
            gid = mail_owner.1,
            p0 = ports[0],
            p1 = ports[1],
            p2 = ports[2],
            p3 = ports[3],
            p4 = ports[4],
        );
        let mut conf = conf;
        for (name, value) in settings {
            let line = format!("{name} = {value}\n");
            let prefix = format!("\n{name} = ");
            match conf.find(&prefix) {
                Some(at) => {
                    let start = at + 1;
                    let end = start + conf[start..].find('\n').unwrap() + 1;
                    conf.replace_range(start..end, &line);
                }
                None => conf.push_str(&line),
            }
        }
        conf.push_str(extra);
        let conf_path = root.join("dovecot.conf");
        fs::write(&conf_path, conf).unwrap();

        let child = Command::new(binary)
            .arg("-F")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(root.join("stderr.log")).unwrap())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let mut dovecot = Dovecot {
            child,
            dir,
            pki,
            mail_owner,
            pop3_port: ports[0],
            pop3s_port: ports[1],
            imap_port: ports[2],
            imaps_port: ports[3],
            proxied_port: ports[4],
        };
        dovecot.wait_ready();
        dovecot
    }

    /// Ready means every port accepts and both plain ports have sent their greeting: a login
    /// process greets only once the auth service answers it, and a client arriving before
    /// that may be dropped, which a test would misread as the behaviour it looks for.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for (port, greeting) in [
            (self.pop3_port, Some("+OK")),
            (self.pop3s_port, None),
            (self.imap_port, Some("* OK")),
            (self.imaps_port, None),
        ] {
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("dovecot exited with {status}:\n{}", self.logs());
                }
                if let Ok(stream) = TcpStream::connect(("127.0.0.1", port))
                    && greeting.is_none_or(|g| greets_with(stream, g))
                {
                    break;
                }
                if Instant::now() > deadline {
                    panic!(
                        "dovecot was not ready on port {port} in 20 s:\n{}",
                        self.logs()
                    );
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    }

    /// A port on 127.0.0.1 where Dovecot sees the client as a remote host (192.0.2.10), not
    /// as itself: Dovecot counts a client on its own address as secured, so settings such as
    /// `disable_plaintext_auth` only show through this port. A thread relays each connection,
    /// after a HAProxy PROXY header naming the remote address; no packet leaves 127.0.0.1.
    pub fn remote_pop3_port(&self) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = self.proxied_port;
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)) else {
                    return;
                };
                use std::io::Write;
                let header = format!("PROXY TCP4 192.0.2.10 127.0.0.1 40000 {target}\r\n");
                if server.write_all(header.as_bytes()).is_err() {
                    continue;
                }
                relay(client, server);
            }
        });
        port
    }

    pub fn user(&self) -> &'static str {
        USER
    }

    pub fn password(&self) -> &'static str {
        PASSWORD
    }

    /// PEM of the CA that signed the server certificate, for `ca_file`.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server certificate (DER), e.g. to compute a fingerprint pin.
    pub fn leaf_der(&self) -> &[u8] {
        &self.pki.leaf_der
    }

    /// The served Maildir (it has `new/`, `cur/`, `tmp/`).
    pub fn maildir(&self) -> PathBuf {
        self.dir.path().join("home/Maildir")
    }

    /// How many messages the mailbox holds (files in `new/` and `cur/`).
    pub fn messages_held(&self) -> usize {
        ["new", "cur"]
            .iter()
            .map(|sub| fs::read_dir(self.maildir().join(sub)).unwrap().count())
            .sum()
    }

    /// Delivers a message into `new/` (written to `tmp/` first, then renamed, as Maildir
    /// requires) owned by the mail user; Dovecot sees it at the next login. Dovecot serves
    /// files with CRLF line endings on the wire whatever the file has, so write CRLF files
    /// when comparing bytes.
    pub fn add_message(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let tmp = self.maildir().join("tmp").join(name);
        fs::write(&tmp, bytes).unwrap();
        chown(&tmp, Some(self.mail_owner.0), Some(self.mail_owner.1)).unwrap();
        let dest = self.maildir().join("new").join(name);
        fs::rename(&tmp, &dest).unwrap();
        dest
    }

    /// Empties the mailbox and forgets its UIDs, as an index rebuild or a migration does:
    /// the messages delivered after this get UIDs from 1 again (with `pop3_uidl_format = %u`
    /// their UIDLs are the old ones), or a new UIDVALIDITY (with the default format, all UIDLs
    /// new).
    pub fn reset_mailbox(&self) {
        for sub in ["new", "cur", "tmp"] {
            for e in fs::read_dir(self.maildir().join(sub)).unwrap() {
                fs::remove_file(e.unwrap().path()).unwrap();
            }
        }
        for e in fs::read_dir(self.maildir()).unwrap() {
            let path = e.unwrap().path();
            if path.is_file() {
                fs::remove_file(path).unwrap();
            }
        }
    }

    /// Dovecot's log and stderr, for failure messages.
    pub fn logs(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("dovecot.log"), read("stderr.log"))
    }
}

fn greets_with(mut stream: TcpStream, greeting: &str) -> bool {
    use std::io::Read;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut first = vec![0; greeting.len()];
    stream.read_exact(&mut first).is_ok() && first == greeting.as_bytes()
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // The whole process group: the master and the login/auth/pop3 children it started.
        let group = format!("-{}", self.child.id());
        let kill = |signal: &str| {
            let _ = Command::new("kill")
                .args([signal, "--", &group])
                .stderr(Stdio::null())
                .status();
        };
        kill("-TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        kill("-KILL");
        let _ = self.child.wait();
    }
}

fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

fn current_gid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self")
        .map(|m| m.gid())
        .unwrap_or(u32::MAX)
}

fn current_user_name() -> String {
    let out = Command::new("id")
        .arg("-un")
        .output()
        .expect("cannot run `id -un`");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// (uid, gid) of a user from /etc/passwd.
fn passwd_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&user))
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))?
    })
}

/// Copies bytes both ways between `client` and `server`, each direction on a thread of its own,
/// passing each end-of-stream on as a shutdown.
pub fn relay(client: TcpStream, server: TcpStream) {
    let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (mut client, mut server) = (client, server);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut s2);
        let _ = s2.shutdown(std::net::Shutdown::Write);
    });
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut server, &mut client);
        let _ = client.shutdown(std::net::Shutdown::Write);
    });
}
