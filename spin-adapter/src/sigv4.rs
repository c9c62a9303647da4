//! AWS Signature Version 4 for S3 requests.
//!
//! Written here rather than taken from `aws-sigv4`: that crate brings the
//! AWS SDK's runtime into a component that must stay small, and the
//! algorithm is a fixed chain of HMAC-SHA256 steps over text. It is checked
//! against AWS's published S3 examples (tests below) and against s3s-fs,
//! which verifies every signature, in the end-to-end tests.

use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

/// Characters SigV4 leaves as they are: `A-Z a-z 0-9 - _ . ~`.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
/// As [`QUERY`], and `/` too (object paths).
const PATH: &AsciiSet = &QUERY.remove(b'/');

/// `x-amz-content-sha256` of a body that is not hashed.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// The credentials and scope a request is signed for.
#[derive(Debug, Clone)]
pub struct Signer {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Region, e.g. `us-east-1`.
    pub region: String,
}

/// A request to sign.
pub struct Signable<'a> {
    /// `GET`, `PUT`, …
    pub method: &'a str,
    /// The `Host` header.
    pub host: &'a str,
    /// The path, not yet encoded.
    pub path: &'a str,
    /// Query parameters, not yet encoded.
    pub query: &'a [(&'a str, String)],
    /// Other headers to sign, names in lower case.
    pub headers: &'a [(String, String)],
    /// Hex SHA-256 of the body, or [`UNSIGNED_PAYLOAD`].
    pub payload_hash: &'a str,
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: &'a str,
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// The encoded path of `path`.
pub fn encode_path(path: &str) -> String {
    utf8_percent_encode(path, PATH).to_string()
}

/// The canonical (sorted, encoded) query string of `query`.
pub fn encode_query(query: &[(&str, String)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (utf8_percent_encode(k, QUERY).to_string(), utf8_percent_encode(v, QUERY).to_string()))
        .collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

impl Signer {
    /// Every header the request must carry: `host`, `x-amz-date`,
    /// `x-amz-content-sha256`, `req.headers` and `authorization`.
    pub fn sign(&self, req: &Signable<'_>) -> Vec<(String, String)> {
        let mut headers: Vec<(String, String)> = req.headers.to_vec();
        headers.push(("host".into(), req.host.into()));
        headers.push(("x-amz-content-sha256".into(), req.payload_hash.into()));
        headers.push(("x-amz-date".into(), req.amz_date.into()));
        headers.sort();
        let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{}\n", v.trim())).collect();
        let signed_headers = headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(";");
        let canonical = format!(
            "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
            req.method,
            encode_path(req.path),
            encode_query(req.query),
            req.payload_hash
        );
        let date = &req.amz_date[..8];
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let to_sign = format!("AWS4-HMAC-SHA256\n{}\n{scope}\n{}", req.amz_date, sha256_hex(canonical.as_bytes()));
        let key = hmac(format!("AWS4{}", self.secret_access_key).as_bytes(), date);
        let key = hmac(&hmac(&hmac(&key, &self.region), "s3"), "aws4_request");
        let signature = hex(&hmac(&key, &to_sign));
        headers.push((
            "authorization".into(),
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
                self.access_key_id
            ),
        ));
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Signer {
        Signer {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            region: "us-east-1".into(),
        }
    }

    fn signature(headers: &[(String, String)]) -> String {
        let auth = &headers.iter().find(|(k, _)| k == "authorization").unwrap().1;
        auth.rsplit("Signature=").next().unwrap().to_owned()
    }

    /// AWS's "GET Object" example of the S3 SigV4 documentation.
    #[test]
    fn signs_the_get_object_example() {
        let headers = example().sign(&Signable {
            method: "GET",
            host: "examplebucket.s3.amazonaws.com",
            path: "/test.txt",
            query: &[],
            headers: &[("range".into(), "bytes=0-9".into())],
            payload_hash: &sha256_hex(b""),
            amz_date: "20130524T000000Z",
        });
        assert_eq!(signature(&headers), "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
    }

    /// AWS's "GET Bucket (List Objects)" example.
    #[test]
    fn signs_the_list_objects_example() {
        let headers = example().sign(&Signable {
            method: "GET",
            host: "examplebucket.s3.amazonaws.com",
            path: "/",
            query: &[("max-keys", "2".into()), ("prefix", "J".into())],
            headers: &[],
            payload_hash: &sha256_hex(b""),
            amz_date: "20130524T000000Z",
        });
        assert_eq!(signature(&headers), "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7");
    }

    #[test]
    fn encodes_queries_as_sigv4_wants() {
        assert_eq!(
            encode_query(&[("uploadId", "a+b/c=".into()), ("partNumber", "1".into())]),
            "partNumber=1&uploadId=a%2Bb%2Fc%3D"
        );
        assert_eq!(encode_path("/b/store/nar/a b~"), "/b/store/nar/a%20b~");
    }
}
