//! Buckets on the S3-compatible test server (`s3s-fs`, started by `.ci/run`).

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

/// One bucket on the test server and what a node needs to reach it.
#[derive(Debug, Clone)]
pub struct S3Bucket {
    /// `NCPS_TEST_S3_ENDPOINT`.
    pub endpoint: String,
    /// The bucket's name.
    pub bucket: String,
    /// `NCPS_TEST_S3_ACCESS_KEY`.
    pub access_key: String,
    /// `NCPS_TEST_S3_SECRET_KEY`.
    pub secret_key: String,
}

impl S3Bucket {
    /// `ncps-edge serve` flags that store NARs in this bucket.
    pub fn flags(&self) -> Vec<String> {
        vec![
            format!("--cache-storage-s3-bucket={}", self.bucket),
            format!("--cache-storage-s3-endpoint={}", self.endpoint),
            format!("--cache-storage-s3-access-key-id={}", self.access_key),
            format!("--cache-storage-s3-secret-access-key={}", self.secret_key),
            "--cache-storage-s3-force-path-style".into(),
        ]
    }

    /// This bucket reached through a proxy in front of its server (a
    /// [`crate::StallProxy`] made for `host_port(&self.endpoint)`).
    pub fn through(&self, proxy: &crate::StallProxy) -> S3Bucket {
        S3Bucket { endpoint: crate::via(&self.endpoint, &proxy.addr()), ..self.clone() }
    }

    /// A client of the test server (path-style, `us-east-1`).
    pub fn client(&self) -> aws_sdk_s3::Client {
        let creds = Credentials::new(&self.access_key, &self.secret_key, None, None, "ncps-edge-tests");
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(creds)
            .force_path_style(true)
            .endpoint_url(&self.endpoint)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }
}

/// A new, empty bucket on the test server.
pub async fn fresh_bucket() -> S3Bucket {
    let b = S3Bucket {
        endpoint: crate::env("NCPS_TEST_S3_ENDPOINT", "http://127.0.0.1:9000"),
        bucket: crate::unique("ncps-test").replace('_', "-"),
        access_key: crate::env("NCPS_TEST_S3_ACCESS_KEY", "ncps-test"),
        secret_key: crate::env("NCPS_TEST_S3_SECRET_KEY", "ncps-test-secret"),
    };
    b.client()
        .create_bucket()
        .bucket(&b.bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("the S3 server at {} must be reachable: {e:?}", b.endpoint));
    b
}
