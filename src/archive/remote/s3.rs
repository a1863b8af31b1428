//! An S3-compatible object store (AWS S3, Backblaze B2, Wasabi, Cloudflare R2, MinIO, Garage,
//! Ceph), spoken synchronously: rusty-s3 signs each request (a presigned URL, so the secret key
//! never travels and never reaches an error message) and ureq sends it over rustls with ring,
//! the TLS stack POP3 uses.
//!
//! Transient failures (5xx, 429, timeouts, dropped connections) are retried with exponential
//! backoff, honouring `Retry-After`, then reported. A retried create-only write may find the
//! key taken by its own first attempt; the caller tells that apart by comparing content.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusty_s3::{Bucket, Credentials, S3Action};
use ureq::Agent;
use ureq::http::Response;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

use super::{Listed, ObjectStore, RemoteError};

/// How a request names the bucket: in the path (`http://host/bucket/key`) or in the host name
/// (`https://bucket.host/key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlStyle {
    Path,
    VirtualHost,
}

/// Everything needed to reach one archive in a bucket; built by the CLI from the environment
/// and `~/.aws`, the way the AWS tools read them.
#[derive(Clone)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
    pub endpoint: url::Url,
    pub region: String,
    pub style: UrlStyle,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// DER certificates to trust instead of the built-in roots (`--ca-file`).
    pub roots: Option<Vec<Vec<u8>>>,
    pub timeout: Duration,
    /// Attempts for a request failing transiently (1 = no retry).
    pub attempts: u32,
    /// Objects over twice this size go up in a multipart upload of parts this size.
    pub part_size: usize,
}

/// The default part of a multipart upload. A pack closes once it holds 64 MiB, so only a pack
/// whose last message is itself over 64 MiB is over twice this and goes up in parts (each
/// retried alone on a flaky link); every other object, in one PUT (one request, not six).
pub const DEFAULT_PART_SIZE: usize = 64 << 20;
/// S3's smallest part (all but the last) and its most parts.
pub const MIN_PART_SIZE: usize = 5 << 20;
const MAX_PARTS: usize = 10_000;

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint.as_str())
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// The style a demanding user expects when they did not choose: path-style for an IP
    /// address or `localhost` (MinIO, moto, a NAS), virtual-hosted otherwise (AWS and most
    /// providers).
    pub fn default_style(endpoint: &url::Url) -> UrlStyle {
        match endpoint.host() {
            Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => UrlStyle::Path,
            Some(url::Host::Domain(d)) if d == "localhost" || d.ends_with(".localhost") => {
                UrlStyle::Path
            }
            _ => UrlStyle::VirtualHost,
        }
    }
}

pub struct S3Store {
    bucket: Bucket,
    credentials: Credentials,
    prefix: String,
    agent: Agent,
    endpoint: String,
    attempts: u32,
    requests: AtomicU64,
    /// Lets tests shorten the backoff.
    backoff: Duration,
    part_size: usize,
    /// Uploads of packs left open at least this long are aborted (see [`S3Store::sweep`]).
    stale_after: Duration,
    swept: std::sync::atomic::AtomicBool,
}

/// No pack upload of a live writer takes this long; one open longer was left by a writer that
/// died (kill -9, power loss) and only costs storage.
const STALE_UPLOAD: Duration = Duration::from_secs(12 * 3600);

/// How long a signed URL stays valid: long enough for a slow upload of one pack.
const SIGNED_FOR: Duration = Duration::from_secs(3600);
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

impl S3Store {
    pub fn new(config: S3Config) -> Result<S3Store, RemoteError> {
        let style = match config.style {
            UrlStyle::Path => rusty_s3::UrlStyle::Path,
            UrlStyle::VirtualHost => rusty_s3::UrlStyle::VirtualHost,
        };
        let endpoint = config.endpoint.to_string();
        let bucket = Bucket::new(
            config.endpoint.clone(),
            style,
            config.bucket.clone(),
            config.region.clone(),
        )
        .map_err(|e| RemoteError::Unreachable {
            endpoint: endpoint.clone(),
            reason: format!("cannot address bucket {:?} there: {e}", config.bucket),
        })?;
        let credentials = match &config.session_token {
            Some(token) => {
                Credentials::new_with_token(&config.access_key_id, &config.secret_access_key, token)
            }
            None => Credentials::new(&config.access_key_id, &config.secret_access_key),
        };
        let mut tls = TlsConfig::builder();
        if let Some(roots) = &config.roots {
            let certs = roots
                .iter()
                .map(|der| Certificate::from_der(der).to_owned())
                .collect();
            tls = tls.root_certs(RootCerts::Specific(Arc::new(certs)));
        }
        // Timeouts per phase, not for the whole request: a pack on a slow uplink takes as long
        // as it takes while bytes move (the body's own limit is set per request, by size).
        let agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(config.timeout.min(Duration::from_secs(30))))
            .timeout_send_request(Some(config.timeout))
            .timeout_recv_response(Some(config.timeout))
            .timeout_recv_body(Some(config.timeout.max(Duration::from_secs(600))))
            // Proxies from the environment are not picked up behind the user's back, and an
            // object store does not redirect where popvault should follow.
            .proxy(None)
            .max_redirects(0)
            .tls_config(tls.build())
            .build()
            .into();
        Ok(S3Store {
            bucket,
            credentials,
            prefix: config.prefix,
            agent,
            endpoint,
            attempts: config.attempts.max(1),
            requests: AtomicU64::new(0),
            backoff: Duration::from_millis(200),
            part_size: config.part_size.max(MIN_PART_SIZE),
            stale_after: STALE_UPLOAD,
            swept: Default::default(),
        })
    }

    /// For tests of the sweep: the age from which an open upload counts as left behind.
    pub fn with_stale_after(mut self, age: Duration) -> S3Store {
        self.stale_after = age;
        self
    }

    /// For tests of the retries: the first backoff (it doubles each time).
    pub fn with_backoff(mut self, first: Duration) -> S3Store {
        self.backoff = first;
        self
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn object_name(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket.name(), self.full_key(key))
    }

    /// Sends a request until it gets an answer that is not transient, or attempts run out.
    /// `send` gets a freshly signed URL each time.
    fn send(
        &self,
        object: &str,
        operation: &'static str,
        send: &dyn Fn(&Agent) -> Result<Response<ureq::Body>, ureq::Error>,
    ) -> Result<Response<ureq::Body>, RemoteError> {
        let mut wait = self.backoff;
        let mut attempt = 1;
        loop {
            self.requests.fetch_add(1, Ordering::Relaxed);
            let outcome = send(&self.agent);
            let last = attempt >= self.attempts;
            match outcome {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let transient = status == 429 || status == 408 || (500..=599).contains(&status);
                    if !transient || last {
                        return Ok(response);
                    }
                    let asked = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    std::thread::sleep(asked.unwrap_or(wait).min(MAX_RETRY_AFTER));
                }
                Err(e) => {
                    if last {
                        return Err(RemoteError::Unreachable {
                            endpoint: self.endpoint.clone(),
                            reason: format!(
                                "{operation} {object}: {} (tried {attempt} times)",
                                transport_reason(&e)
                            ),
                        });
                    }
                    std::thread::sleep(wait);
                }
            }
            wait *= 2;
            attempt += 1;
        }
    }

    /// `create` for a large object: a multipart upload (create, parts, complete), each request
    /// retried alone. The store may not honour `If-None-Match` on completion (moto does not),
    /// so an existing key is looked for first; a pack's name is its SHA-256, so a writer racing
    /// past that look writes the same bytes. An upload that fails is aborted, so no parts are
    /// left behind to pay for.
    fn create_in_parts(&self, key: &str, body: &[u8]) -> Result<bool, RemoteError> {
        let full = self.full_key(key);
        let object = self.object_name(key);
        if self.exists(key)? {
            return Ok(false);
        }
        if !self.swept.swap(true, Ordering::Relaxed) {
            self.sweep();
        }
        let response = self.send(&object, "CREATE MULTIPART UPLOAD", &|agent| {
            let url = self
                .bucket
                .create_multipart_upload(Some(&self.credentials), &full)
                .sign(SIGNED_FOR);
            agent.post(url.as_str()).send_empty()
        })?;
        if response.status().as_u16() != 200 {
            return Err(self.refused(object, "CREATE MULTIPART UPLOAD", response));
        }
        let text = reply_text(&object, response, 64 << 10)?;
        let upload_id = rusty_s3::actions::CreateMultipartUpload::parse_response(&text)
            .map_err(|e| read_error(&object, format!("no upload id in the reply: {e}")))?
            .upload_id()
            .to_string();
        let uploaded = self.upload_parts(key, &upload_id, body);
        // Not completed (an error, or the key taken meanwhile): the parts go.
        if !matches!(uploaded, Ok(true)) {
            self.abort(&full, &object, &upload_id);
        }
        uploaded
    }

    /// Best effort, once per process, before its first multipart upload: aborts the uploads of
    /// this archive's packs left open by a writer that died mid-upload, which S3 keeps (and
    /// bills) until a lifecycle rule removes them. Only uploads open longer than any live one
    /// are touched; the first page of the listing is enough, as every later run sweeps again.
    fn sweep(&self) {
        let prefix = self.full_key("packs/");
        let object = self.object_name("packs/");
        let Ok(response) = self.send(&object, "LIST MULTIPART UPLOADS", &|agent| {
            // rusty-s3 has no action for this request; it signs it all the same.
            let query = [("prefix", prefix.as_str()), ("uploads", "")];
            let url = rusty_s3::signing::sign(
                &jiff::Timestamp::now(),
                rusty_s3::Method::Get,
                self.bucket.base_url().clone(),
                self.credentials.key(),
                self.credentials.secret(),
                self.credentials.token(),
                self.bucket.region(),
                SIGNED_FOR.as_secs(),
                query.into_iter(),
                std::iter::empty(),
            );
            agent.get(url.as_str()).call()
        }) else {
            return;
        };
        if response.status().as_u16() != 200 {
            return;
        }
        let Ok(text) = reply_text(&object, response, 4 << 20) else {
            return;
        };
        let now = chrono::Utc::now();
        for upload in text.split("<Upload>").skip(1) {
            let (Some(key), Some(id), Some(initiated)) = (
                xml_field(upload, "Key").map(|k| xml_unescape(&k)),
                xml_field(upload, "UploadId").map(|k| xml_unescape(&k)),
                xml_field(upload, "Initiated")
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok()),
            ) else {
                continue;
            };
            let age = (now - initiated.with_timezone(&chrono::Utc))
                .to_std()
                .unwrap_or_default();
            if key.starts_with(&prefix) && age >= self.stale_after {
                self.abort(&key, &object, &id);
            }
        }
    }

    fn upload_parts(&self, key: &str, upload_id: &str, body: &[u8]) -> Result<bool, RemoteError> {
        let full = &self.full_key(key);
        let object = &self.object_name(key);
        let part_size = self.part_size.max(body.len().div_ceil(MAX_PARTS));
        let mut etags = Vec::new();
        for (index, part) in body.chunks(part_size).enumerate() {
            let number = u16::try_from(index + 1).expect("at most 10,000 parts");
            let response = self.send(object, "UPLOAD PART", &|agent| {
                let url = self
                    .bucket
                    .upload_part(Some(&self.credentials), full, number, upload_id)
                    .sign(SIGNED_FOR);
                agent
                    .put(url.as_str())
                    .config()
                    .timeout_send_body(Some(send_time(part.len())))
                    .build()
                    .send(part)
            })?;
            if response.status().as_u16() != 200 {
                return Err(self.refused(object.to_string(), "UPLOAD PART", response));
            }
            let etag = response
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| read_error(object, "a part's reply has no ETag"))?;
            etags.push(etag.to_string());
        }
        let complete = self
            .bucket
            .complete_multipart_upload(
                Some(&self.credentials),
                full,
                upload_id,
                etags.iter().map(String::as_str),
            )
            .body();
        let response = self.send(object, "COMPLETE MULTIPART UPLOAD", &|agent| {
            let url = self
                .bucket
                .complete_multipart_upload(
                    Some(&self.credentials),
                    full,
                    upload_id,
                    etags.iter().map(String::as_str),
                )
                .sign(SIGNED_FOR);
            agent
                .post(url.as_str())
                .header("If-None-Match", "*")
                .send(complete.as_bytes())
        })?;
        match response.status().as_u16() {
            // S3 may answer 200 and put an error in the body (a completion that failed late).
            200 => {
                let text = reply_text(object, response, 64 << 10)?;
                // Told by the error element alone: compatibles name the result element
                // differently (moto: CompleteMultipartUploadResponse).
                if text.contains("<Error>") {
                    return Err(RemoteError::Refused {
                        object: object.to_string(),
                        operation: "COMPLETE MULTIPART UPLOAD",
                        status: 200,
                        code: xml_field(&text, "Code"),
                    });
                }
                Ok(true)
            }
            412 | 409 => Ok(false),
            // A retry after a completion whose answer was lost finds the upload gone: the
            // object is there if that completion made it.
            404 if self.exists(key)? => Ok(true),
            _ => Err(self.refused(object.to_string(), "COMPLETE MULTIPART UPLOAD", response)),
        }
    }

    /// Best effort: an upload left open holds its parts (and costs) until a lifecycle rule
    /// removes them; the error that made us abort is the one reported.
    fn abort(&self, full: &str, object: &str, upload_id: &str) {
        let _ = self.send(object, "ABORT MULTIPART UPLOAD", &|agent| {
            let url = self
                .bucket
                .abort_multipart_upload(Some(&self.credentials), full, upload_id)
                .sign(SIGNED_FOR);
            agent.delete(url.as_str()).call()
        });
    }

    /// Whether an object exists under `key` (HEAD).
    fn exists(&self, key: &str) -> Result<bool, RemoteError> {
        let full = self.full_key(key);
        let object = self.object_name(key);
        let response = self.send(&object, "HEAD", &|agent| {
            let url = self
                .bucket
                .head_object(Some(&self.credentials), &full)
                .sign(SIGNED_FOR);
            agent.head(url.as_str()).call()
        })?;
        match response.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.refused(object, "HEAD", response)),
        }
    }

    fn refused(
        &self,
        object: String,
        operation: &'static str,
        response: Response<ureq::Body>,
    ) -> RemoteError {
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .with_config()
            .limit(64 << 10)
            .read_to_string()
            .unwrap_or_default();
        RemoteError::Refused {
            object,
            operation,
            status,
            code: xml_field(&body, "Code"),
        }
    }
}

/// How long the body of an upload may take: two minutes, and more for a large one, down to
/// 32 KiB/s (a 64 MiB pack may take 34 minutes).
fn send_time(len: usize) -> Duration {
    Duration::from_secs(120 + (len as u64 >> 15))
}

/// A transport failure in words, without the request's URL: a signed URL carries a signature
/// that works for an hour and the access key's id.
fn transport_reason(e: &ureq::Error) -> String {
    let text = match e {
        ureq::Error::Io(io) => io.to_string(),
        ureq::Error::Timeout(_) => "timed out".to_string(),
        ureq::Error::HostNotFound => "host not found".to_string(),
        ureq::Error::ConnectionFailed => "connection refused or failed".to_string(),
        other => other.to_string(),
    };
    match text.find("X-Amz-") {
        Some(at) => text[..at].to_string() + "(request hidden)",
        None => text,
    }
}

/// The text of the first `<name>` element of an S3 error document.
fn xml_field(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = body.find(&open)? + open.len();
    let end = start + body[start..].find('<')?;
    Some(body[start..end].trim().to_string()).filter(|s| !s.is_empty())
}

/// The text of an XML element with its five predefined entities replaced.
fn xml_unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The body of a reply, at most `limit` bytes (an XML document, never an object).
fn reply_text(
    object: &str,
    response: Response<ureq::Body>,
    limit: u64,
) -> Result<String, RemoteError> {
    response
        .into_body()
        .with_config()
        .limit(limit)
        .read_to_string()
        .map_err(|e| read_error(object, e))
}

fn read_error(object: &str, e: impl std::fmt::Display) -> RemoteError {
    RemoteError::Damaged {
        object: object.to_string(),
        reason: format!("reading the reply failed: {e}"),
    }
}

impl ObjectStore for S3Store {
    fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket.name())
        } else {
            format!("s3://{}/{}", self.bucket.name(), self.prefix)
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        let mut body = Vec::new();
        Ok(self.get_into(key, &mut body)?.then_some(body))
    }

    fn get_into(&self, key: &str, out: &mut dyn Write) -> Result<bool, RemoteError> {
        let full = self.full_key(key);
        let object = self.object_name(key);
        let response = self.send(&object, "GET", &|agent| {
            let url = self
                .bucket
                .get_object(Some(&self.credentials), &full)
                .sign(SIGNED_FOR);
            agent.get(url.as_str()).call()
        })?;
        match response.status().as_u16() {
            200 => {
                let mut reader = response.into_body().into_reader();
                io::copy(&mut reader, out).map_err(|e| read_error(&object, e))?;
                Ok(true)
            }
            404 => {
                let err = self.refused(object, "GET", response);
                match &err {
                    RemoteError::Refused { code: Some(c), .. } if c == "NoSuchBucket" => Err(err),
                    _ => Ok(false),
                }
            }
            _ => Err(self.refused(object, "GET", response)),
        }
    }

    fn create(&self, key: &str, body: &[u8]) -> Result<bool, RemoteError> {
        if body.len() > 2 * self.part_size {
            return self.create_in_parts(key, body);
        }
        let full = self.full_key(key);
        let object = self.object_name(key);
        let response = self.send(&object, "PUT", &|agent| {
            let url = self
                .bucket
                .put_object(Some(&self.credentials), &full)
                .sign(SIGNED_FOR);
            agent
                .put(url.as_str())
                .config()
                .timeout_send_body(Some(send_time(body.len())))
                .build()
                .header("If-None-Match", "*")
                .send(body)
        })?;
        match response.status().as_u16() {
            200 | 201 | 204 => Ok(true),
            // 412: the key exists. 409: a concurrent conditional write to it is in flight,
            // which for an immutable object means it exists as far as this writer cares.
            412 | 409 => Ok(false),
            _ => Err(self.refused(object, "PUT", response)),
        }
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<Listed>, RemoteError> {
        let full_prefix = self.full_key(prefix);
        let strip = self.full_key("").len();
        let object = self.object_name(prefix);
        let start_after = start_after.map(|s| self.full_key(s));
        let mut listed = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let response = self.send(&object, "LIST", &|agent| {
                let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
                action.with_prefix(full_prefix.as_str());
                if let Some(after) = &start_after {
                    action.with_start_after(after.as_str());
                }
                if let Some(t) = &token {
                    action.with_continuation_token(t.as_str());
                }
                agent.get(action.sign(SIGNED_FOR).as_str()).call()
            })?;
            if response.status().as_u16() != 200 {
                return Err(self.refused(object, "LIST", response));
            }
            let text = reply_text(&object, response, 64 << 20)?;
            let page = rusty_s3::actions::ListObjectsV2::parse_response(&text).map_err(|e| {
                RemoteError::Damaged {
                    object: object.clone(),
                    reason: format!("the listing is not valid XML: {e}"),
                }
            })?;
            for item in page.contents {
                if let Some(key) = item.key.get(strip..) {
                    listed.push(Listed {
                        key: key.to_string(),
                        size: item.size.unwrap_or(0),
                        etag: item.etag.map(|e| e.trim_matches('"').to_ascii_lowercase()),
                    });
                }
            }
            match page.next_continuation_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => break,
            }
        }
        listed.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listed)
    }

    fn delete(&self, key: &str) -> Result<(), RemoteError> {
        let full = self.full_key(key);
        let object = self.object_name(key);
        let response = self.send(&object, "DELETE", &|agent| {
            let url = self
                .bucket
                .delete_object(Some(&self.credentials), &full)
                .sign(SIGNED_FOR);
            agent.delete(url.as_str()).call()
        })?;
        match response.status().as_u16() {
            200 | 204 | 404 => Ok(()),
            _ => Err(self.refused(object, "DELETE", response)),
        }
    }

    fn create_bucket(&self) -> Result<bool, RemoteError> {
        let object = format!("s3://{}", self.bucket.name());
        let response = self.send(&object, "HEAD", &|agent| {
            let url = self
                .bucket
                .head_bucket(Some(&self.credentials))
                .sign(SIGNED_FOR);
            agent.head(url.as_str()).call()
        })?;
        match response.status().as_u16() {
            200 => return Ok(false),
            404 => {}
            _ => return Err(self.refused(object, "HEAD", response)),
        }
        let action = self.bucket.create_bucket(&self.credentials);
        let body = action.body();
        let response = self.send(&object, "CREATE BUCKET", &|agent| {
            let url = self
                .bucket
                .create_bucket(&self.credentials)
                .sign(SIGNED_FOR);
            agent.put(url.as_str()).send(body.as_bytes())
        })?;
        match response.status().as_u16() {
            200 | 204 => Ok(true),
            409 => Ok(false),
            _ => Err(self.refused(object, "CREATE BUCKET", response)),
        }
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_style_follows_the_endpoint() {
        let style = |u: &str| S3Config::default_style(&u.parse().unwrap());
        assert_eq!(style("http://127.0.0.1:9000"), UrlStyle::Path);
        assert_eq!(style("http://[::1]:9000"), UrlStyle::Path);
        assert_eq!(style("http://localhost:9000"), UrlStyle::Path);
        assert_eq!(
            style("https://s3.eu-west-1.amazonaws.com"),
            UrlStyle::VirtualHost
        );
    }

    #[test]
    fn error_codes_are_read_from_the_reply() {
        let body =
            "<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>x</Message></Error>";
        assert_eq!(xml_field(body, "Code").as_deref(), Some("NoSuchBucket"));
        assert_eq!(xml_field("<Error/>", "Code"), None);
    }
}
