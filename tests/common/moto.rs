//! A real S3 API on 127.0.0.1: moto's server (`pip install 'moto[server]'`), one per test, and
//! a TCP proxy in front of it that injects the faults a real store shows (500s, connections
//! reset in the middle of an upload).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ACCESS_KEY_ID: &str = "AKIAPOPVAULTTEST";
/// Must never show in any output, log or archive object.
pub const SECRET_ACCESS_KEY: &str = "pv-secret-9f8e7d6c5b4a-never-print";

pub struct Moto {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Moto {
    pub fn start() -> Moto {
        let binary = std::env::var_os("PATH")
            .and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join("moto_server"))
                    .find(|p| p.exists())
            })
            .unwrap_or_else(|| {
                panic!(
                    "moto_server not found: the S3 tests need it; install it with `pip install 'moto[server]'` (tests/run does)"
                )
            });
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("moto.log")).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut moto = Moto {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited with {status}");
            }
            if moto.raw("GET", "/", b"").0 == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An unsigned request (moto does not check signatures): status and body.
    pub fn raw(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        raw_http(self.port, method, path, &[], body)
    }

    /// Creates a bucket with versioning on, so that an overwrite would show as a second version.
    pub fn versioned_bucket(&self, name: &str) {
        assert_eq!(self.raw("PUT", &format!("/{name}"), b"").0, 200);
        let config = b"<VersioningConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Status>Enabled</Status></VersioningConfiguration>";
        let (status, body) = self.raw("PUT", &format!("/{name}?versioning"), config);
        assert_eq!(status, 200, "{body}");
    }

    /// Every key of the bucket with how many versions (and delete markers) it has.
    pub fn versions(&self, bucket: &str) -> Vec<(String, usize)> {
        let (status, body) = self.raw("GET", &format!("/{bucket}?versions"), b"");
        assert_eq!(status, 200, "{body}");
        let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
        for part in body.split("<Key>").skip(1) {
            let key = part.split("</Key>").next().unwrap().to_string();
            *counts.entry(key).or_default() += 1;
        }
        counts.into_iter().collect()
    }

    /// The keys of the bucket and their bodies' sizes.
    pub fn objects(&self, bucket: &str) -> Vec<String> {
        self.versions(bucket).into_iter().map(|(k, _)| k).collect()
    }

    /// A path and signed query for `method` on `key` (moto refuses some unsigned object
    /// requests).
    fn signed(&self, method: &str, bucket: &str, key: &str) -> String {
        use rusty_s3::S3Action;
        let bucket = rusty_s3::Bucket::new(
            self.endpoint().parse().unwrap(),
            rusty_s3::UrlStyle::Path,
            bucket.to_string(),
            "us-east-1",
        )
        .unwrap();
        let credentials = rusty_s3::Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY);
        let ttl = Duration::from_secs(600);
        let url = match method {
            "PUT" => bucket.put_object(Some(&credentials), key).sign(ttl),
            "DELETE" => bucket.delete_object(Some(&credentials), key).sign(ttl),
            "POST" => bucket
                .create_multipart_upload(Some(&credentials), key)
                .sign(ttl),
            _ => bucket.get_object(Some(&credentials), key).sign(ttl),
        };
        format!("{}?{}", url.path(), url.query().unwrap_or(""))
    }

    /// Starts a multipart upload of `key` and leaves it open, as a writer killed mid-upload
    /// does.
    pub fn open_upload(&self, bucket: &str, key: &str) {
        let path = self.signed("POST", bucket, key);
        let (status, body) = raw_http(self.port, "POST", &path, &[], b"");
        assert_eq!(status, 200, "{body}");
    }

    /// The keys of the bucket's open multipart uploads.
    pub fn open_uploads(&self, bucket: &str) -> Vec<String> {
        let (status, body) = self.raw("GET", &format!("/{bucket}?uploads"), b"");
        assert_eq!(status, 200, "{body}");
        body.split("<Upload>")
            .skip(1)
            .filter_map(|u| u.split("<Key>").nth(1)?.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }

    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let path = self.signed("GET", bucket, key);
        let (status, body) = raw_http_bytes(self.port, "GET", &path, &[], b"");
        (status == 200).then_some(body)
    }

    pub fn delete(&self, bucket: &str, key: &str) -> u16 {
        let path = self.signed("DELETE", bucket, key);
        raw_http(self.port, "DELETE", &path, &[], b"").0
    }

    /// Writes an object behind popvault's back, replacing any (a test of damage on the store).
    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) -> u16 {
        let path = self.signed("PUT", bucket, key);
        raw_http(self.port, "PUT", &path, &[], body).0
    }

    /// The environment popvault reads to reach this moto at `endpoint`.
    pub fn env(&self, command: &mut Command, endpoint: &str) {
        command
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", endpoint);
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

fn raw_http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let (status, body) = raw_http_bytes(port, method, path, headers, body);
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// One HTTP/1.1 request on its own connection (`Connection: close`, so the reply ends at EOF).
fn raw_http_bytes(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, Vec::new());
    };
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    if stream.write_all(head.as_bytes()).is_err() || stream.write_all(body).is_err() {
        return (0, Vec::new());
    }
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let Some(end) = reply.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (0, Vec::new());
    };
    let head = String::from_utf8_lossy(&reply[..end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut body = reply[end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = input.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&input[..line_end])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&input[start..(start + size).min(input.len())]);
        input = &input[(start + size + 2).min(input.len())..];
    }
    out
}

/// What the proxy does to a request a rule picks.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Answers `500 Internal Server Error` and closes.
    Status500,
    /// Reads the request head and a little of its body, then resets the connection.
    ResetMidUpload,
}

struct Rule {
    method: &'static str,
    path_contains: &'static str,
    fault: Fault,
    /// `None`: every matching request.
    remaining: Option<usize>,
}

/// An HTTP proxy to moto that sees each request: one request per connection (it answers with
/// `Connection: close`), so that every request can be faulted, the first matching rule decides.
pub struct FaultProxy {
    pub port: u16,
    rules: Arc<Mutex<Vec<Rule>>>,
}

impl FaultProxy {
    pub fn start(target: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let rules: Arc<Mutex<Vec<Rule>>> = Default::default();
        let shared = rules.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let rules = shared.clone();
                std::thread::spawn(move || serve(client, target, &rules));
            }
        });
        FaultProxy { port, rules }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Faults the next `times` requests (`None`: all) whose method is `method` and whose path
    /// holds `path_contains`.
    pub fn fail(
        &self,
        method: &'static str,
        path_contains: &'static str,
        fault: Fault,
        times: Option<usize>,
    ) {
        self.rules.lock().unwrap().push(Rule {
            method,
            path_contains,
            fault,
            remaining: times,
        });
    }

    pub fn heal(&self) {
        self.rules.lock().unwrap().clear();
    }
}

fn serve(mut client: TcpStream, target: u16, rules: &Mutex<Vec<Rule>>) {
    let head = read_head(&mut client);
    let text = String::from_utf8_lossy(&head).to_string();
    let mut words = text.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let fault = {
        let mut rules = rules.lock().unwrap();
        let picked = rules.iter_mut().find(|r| {
            r.method == method && path.contains(r.path_contains) && r.remaining != Some(0)
        });
        picked.map(|r| {
            if let Some(n) = &mut r.remaining {
                *n -= 1;
            }
            r.fault
        })
    };
    let length: usize = text
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    match fault {
        Some(Fault::Status500) => {
            let mut body = vec![0u8; length];
            let _ = client.read_exact(&mut body);
            let _ = client.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\nContent-Length: 69\r\nConnection: close\r\n\r\n<Error><Code>InternalError</Code><Message>injected</Message></Error>",
            );
        }
        Some(Fault::ResetMidUpload) => {
            let mut some = vec![0u8; length.min(100)];
            let _ = client.read_exact(&mut some);
            // SO_LINGER 0: close sends a RST, as a connection dropped mid-upload does.
            use std::os::fd::AsFd;
            let _ = rustix::net::sockopt::set_socket_linger(client.as_fd(), Some(Duration::ZERO));
        }
        None => {
            let mut body = vec![0u8; length];
            if client.read_exact(&mut body).is_err() {
                return;
            }
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)) else {
                return;
            };
            let head = close_connection(&text);
            let _ = server.write_all(head.as_bytes());
            let _ = server.write_all(&body);
            let mut reply = Vec::new();
            let _ = server.read_to_end(&mut reply);
            let reply = match reply.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(end) => {
                    let head = close_connection(&String::from_utf8_lossy(&reply[..end + 4]));
                    [head.as_bytes(), &reply[end + 4..]].concat()
                }
                None => reply,
            };
            let _ = client.write_all(&reply);
            let _ = client.shutdown(Shutdown::Write);
        }
    }
}

/// An HTTP head with `Connection: close` in place of any Connection header.
fn close_connection(head: &str) -> String {
    let mut out: String = head
        .trim_end()
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    out.push_str("Connection: close\r\n\r\n");
    out
}

fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 << 10 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    head
}
