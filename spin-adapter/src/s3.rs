//! A small S3 client over `wasi:http`: the calls the storage interface
//! needs, each SigV4-signed ([`crate::sigv4`]) and bounded by a deadline.
//!
//! Variables: `s3_bucket`, `s3_endpoint` (none: AWS, virtual-hosted),
//! `s3_region` (`us-east-1`), `s3_access_key_id`, `s3_secret_access_key`,
//! `s3_force_path_style` (on by itself with an endpoint's IP address),
//! `backend_timeout_ms` (3000, as `--cache-backend-timeout`).

use std::cell::OnceCell;
use std::rc::Rc;
use std::time::Duration;

use crate::bindings::wasi::clocks::wall_clock;
use crate::bindings::wasi::http::types::Method;
use crate::bindings::wasi::io::streams::InputStream;
use crate::breaker::{self, Backend};
use crate::error::{Error, Result};
use crate::http::{self, HttpError, Response};
use crate::settings;
use crate::sigv4::{sha256_hex, Signable, Signer};

/// Largest XML answer read (listings, errors).
const MAX_XML: usize = 4 << 20;

/// A bucket and how to reach it.
pub struct S3 {
    https: bool,
    authority: String,
    /// `/<bucket>` with path-style addressing, empty otherwise.
    bucket_path: String,
    signer: Signer,
    timeout: Duration,
}

/// One listed object.
pub struct Listed {
    /// Its object path.
    pub key: String,
    /// Its size.
    pub size: u64,
}

fn method_name(m: &Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Put => "PUT",
        Method::Post => "POST",
        Method::Delete => "DELETE",
        _ => "GET",
    }
}

fn http_error(e: HttpError) -> Error {
    match e {
        HttpError::Timeout(m) => Error::Timeout("s3", m),
        HttpError::Bad(m) => Error::Invalid(m),
        HttpError::Transport(m) => Error::unreachable("s3", &m),
    }
}

/// The `<Code>` of an S3 error document, for messages.
fn error_code(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    roxmltree::Document::parse(&text)
        .ok()
        .and_then(|d| d.descendants().find(|n| n.has_tag_name("Code")).and_then(|n| n.text()).map(str::to_owned))
        .unwrap_or_default()
}

fn amz_date() -> String {
    let now = wall_clock::now();
    chrono::DateTime::from_timestamp(now.seconds as i64, 0)
        .map(|t| t.format("%Y%m%dT%H%M%SZ").to_string())
        .unwrap_or_else(|| "19700101T000000Z".into())
}

thread_local! {
    static BUCKET: OnceCell<Rc<S3>> = const { OnceCell::new() };
}

/// This instance's bucket, read from the variables on first use.
pub fn bucket() -> Result<Rc<S3>> {
    BUCKET.with(|cell| {
        if let Some(s3) = cell.get() {
            return Ok(s3.clone());
        }
        let s3 = Rc::new(S3::from_settings()?);
        let _ = cell.set(s3.clone());
        Ok(s3)
    })
}

impl S3 {
    /// The bucket the variables name.
    fn from_settings() -> Result<Self> {
        let bucket = settings::required("s3_bucket")?;
        let region = settings::var("s3_region").unwrap_or_else(|| "us-east-1".into());
        let signer = Signer {
            access_key_id: settings::required("s3_access_key_id")?,
            secret_access_key: settings::required("s3_secret_access_key")?,
            region: region.clone(),
        };
        let timeout = settings::backend_timeout();
        let (https, host) = match settings::var("s3_endpoint") {
            Some(endpoint) => match endpoint.split_once("://") {
                Some(("http", rest)) => (false, rest.trim_end_matches('/').to_owned()),
                Some(("https", rest)) => (true, rest.trim_end_matches('/').to_owned()),
                _ => return Err(Error::Invalid(format!("s3_endpoint {endpoint:?} is not an http(s) URL"))),
            },
            None => (true, format!("s3.{region}.amazonaws.com")),
        };
        let path_style = settings::flag("s3_force_path_style", false)
            || host.split(':').next().is_some_and(|h| h.parse::<std::net::IpAddr>().is_ok() || h == "localhost");
        let (authority, bucket_path) =
            if path_style { (host, format!("/{bucket}")) } else { (format!("{bucket}.{host}"), String::new()) };
        Ok(Self { https, authority, bucket_path, signer, timeout })
    }

    fn call(
        &self,
        method: Method,
        object: &str,
        query: &[(&str, String)],
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Response> {
        let path = match (object, self.bucket_path.as_str()) {
            ("", "") => "/".to_owned(),
            ("", bucket) => bucket.to_owned(),
            (object, bucket) => format!("{bucket}/{object}"),
        };
        let payload = sha256_hex(body);
        let date = amz_date();
        let signed = self.signer.sign(&Signable {
            method: method_name(&method),
            host: &self.authority,
            path: &path,
            query,
            headers,
            payload_hash: &payload,
            amz_date: &date,
        });
        let encoded_query = crate::sigv4::encode_query(query);
        let mut path_and_query = crate::sigv4::encode_path(&path);
        if !encoded_query.is_empty() {
            path_and_query = format!("{path_and_query}?{encoded_query}");
        }
        // wasi:http sets Host from the authority itself.
        let headers: Vec<(String, String)> = signed.into_iter().filter(|(k, _)| k != "host").collect();
        let request = http::Request {
            method,
            https: self.https,
            authority: &self.authority,
            path_and_query: &path_and_query,
            headers: &headers,
            body,
            timeout: self.timeout,
        };
        breaker::guarded(Backend::Storage, || http::send(&request).map_err(http_error))
    }

    /// An answer no call expects: the status and S3's error code.
    fn unexpected(&self, what: &str, response: Response) -> Error {
        let status = response.status;
        let code = response.bytes(MAX_XML).map(|b| error_code(&b)).unwrap_or_default();
        Error::Unavailable("s3", format!("{what}: HTTP {status} {code}"))
    }

    /// Size of `object`, none when absent.
    pub fn head(&self, object: &str) -> Result<Option<u64>> {
        let r = self.call(Method::Head, object, &[], &[], &[])?;
        match r.status {
            200 => Ok(Some(r.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0))),
            404 => Ok(None),
            _ => Err(self.unexpected("HEAD", r)),
        }
    }

    /// The bytes of `object` (`range`: an HTTP `Range` value), none when absent.
    pub fn get(&self, object: &str, range: Option<String>) -> Result<Option<InputStream>> {
        let headers: Vec<(String, String)> = range.into_iter().map(|r| ("range".to_owned(), r)).collect();
        Ok(self.fetch(object, &headers)?.map(|(_, stream)| stream))
    }

    /// The whole `object` and its size (the answer's `content-length`),
    /// none when absent: one request where `head` and `get` are two.
    pub fn open(&self, object: &str) -> Result<Option<(u64, InputStream)>> {
        let Some((length, stream)) = self.fetch(object, &[])? else { return Ok(None) };
        let size = length.ok_or_else(|| Error::Unavailable("s3", "GET: an answer without a content-length".into()))?;
        Ok(Some((size, stream)))
    }

    /// GET `object` with `headers`: the answer's `content-length` (when it
    /// has one) and its body, none when absent.
    fn fetch(&self, object: &str, headers: &[(String, String)]) -> Result<Option<(Option<u64>, InputStream)>> {
        let r = self.call(Method::Get, object, &[], headers, &[])?;
        match r.status {
            200 | 206 => {
                let length = r.header("content-length").and_then(|v| v.parse().ok());
                Ok(Some((length, r.into_stream().map_err(http_error)?)))
            }
            404 => Ok(None),
            _ => Err(self.unexpected("GET", r)),
        }
    }

    /// Store `body` at `object`; with `if_absent`, false when it exists.
    pub fn put(&self, object: &str, body: &[u8], if_absent: bool) -> Result<bool> {
        let headers: Vec<(String, String)> =
            if if_absent { vec![("if-none-match".into(), "*".into())] } else { Vec::new() };
        let r = self.call(Method::Put, object, &[], &headers, body)?;
        match r.status {
            200 => Ok(true),
            412 => Ok(false),
            _ => Err(self.unexpected("PUT", r)),
        }
    }

    /// Delete `object` (absent is fine).
    pub fn delete(&self, object: &str) -> Result<()> {
        let r = self.call(Method::Delete, object, &[], &[], &[])?;
        match r.status {
            200 | 204 | 404 => Ok(()),
            _ => Err(self.unexpected("DELETE", r)),
        }
    }

    /// Objects under `prefix` after `start_after`, at most `max`.
    pub fn list(&self, prefix: &str, start_after: Option<String>, max: u32) -> Result<Vec<Listed>> {
        let mut query =
            vec![("list-type", "2".to_owned()), ("max-keys", max.to_string()), ("prefix", prefix.to_owned())];
        if let Some(after) = start_after {
            query.push(("start-after", after));
        }
        let r = self.call(Method::Get, "", &query, &[], &[])?;
        if r.status != 200 {
            return Err(self.unexpected("LIST", r));
        }
        let body = r.bytes(MAX_XML).map_err(http_error)?;
        let text = String::from_utf8_lossy(&body);
        let doc = roxmltree::Document::parse(&text).map_err(|e| Error::Unavailable("s3", format!("listing: {e}")))?;
        let child = |n: roxmltree::Node<'_, '_>, tag: &str| {
            n.children().find(|c| c.has_tag_name(tag)).and_then(|c| c.text()).map(str::to_owned)
        };
        Ok(doc
            .descendants()
            .filter(|n| n.has_tag_name("Contents"))
            .filter_map(|n| {
                Some(Listed { key: child(n, "Key")?, size: child(n, "Size").and_then(|s| s.parse().ok()).unwrap_or(0) })
            })
            .collect())
    }

    /// Start a multipart upload of `object`: its upload id.
    pub fn create_upload(&self, object: &str) -> Result<String> {
        let r = self.call(Method::Post, object, &[("uploads", String::new())], &[], &[])?;
        if r.status != 200 {
            return Err(self.unexpected("CreateMultipartUpload", r));
        }
        let body = r.bytes(MAX_XML).map_err(http_error)?;
        let text = String::from_utf8_lossy(&body);
        roxmltree::Document::parse(&text)
            .ok()
            .and_then(|d| {
                d.descendants().find(|n| n.has_tag_name("UploadId")).and_then(|n| n.text()).map(str::to_owned)
            })
            .ok_or_else(|| Error::Unavailable("s3", "CreateMultipartUpload answered no UploadId".into()))
    }

    /// Upload part `number` of upload `id`: its ETag.
    pub fn upload_part(&self, object: &str, id: &str, number: usize, body: &[u8]) -> Result<String> {
        let query = [("partNumber", number.to_string()), ("uploadId", id.to_owned())];
        let r = self.call(Method::Put, object, &query, &[], body)?;
        if r.status != 200 {
            return Err(self.unexpected("UploadPart", r));
        }
        r.header("etag")
            .map(str::to_owned)
            .ok_or_else(|| Error::Unavailable("s3", "UploadPart answered no ETag".into()))
    }

    /// Complete upload `id` from `etags`, only if `object` does not exist:
    /// false when it did.
    pub fn complete_upload(&self, object: &str, id: &str, etags: &[String]) -> Result<bool> {
        let parts: String = etags
            .iter()
            .enumerate()
            .map(|(i, etag)| format!("<Part><PartNumber>{}</PartNumber><ETag>{etag}</ETag></Part>", i + 1))
            .collect();
        let body = format!("<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>");
        let headers = [("if-none-match".to_owned(), "*".to_owned())];
        let r = self.call(Method::Post, object, &[("uploadId", id.to_owned())], &headers, body.as_bytes())?;
        match r.status {
            // S3 may answer 200 with an error document.
            200 => {
                let answer = r.bytes(MAX_XML).map_err(http_error)?;
                match error_code(&answer).as_str() {
                    "" => Ok(true),
                    "PreconditionFailed" => Ok(false),
                    code => Err(Error::Unavailable("s3", format!("CompleteMultipartUpload: {code}"))),
                }
            }
            412 => Ok(false),
            _ => Err(self.unexpected("CompleteMultipartUpload", r)),
        }
    }

    /// Abort upload `id`, best effort.
    pub fn abort_upload(&self, object: &str, id: &str) {
        if let Err(e) = self.call(Method::Delete, object, &[("uploadId", id.to_owned())], &[], &[]) {
            crate::log::warn("aborting a multipart upload failed", &[("object", object), ("error", &e.to_string())]);
        }
    }
}
