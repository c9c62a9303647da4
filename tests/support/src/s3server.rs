//! A private S3-compatible server (`s3s-fs`) on its own port and folder,
//! for tests that look at what the server holds (such as unfinished
//! multipart uploads).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::S3Bucket;

/// A private `s3s-fs`, killed when dropped.
pub struct PrivateS3 {
    /// Its folder: buckets are folders, unfinished uploads `.upload-*` files.
    pub root: tempfile::TempDir,
    /// `http://127.0.0.1:port`.
    pub endpoint: String,
    child: Child,
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PrivateS3 {
    /// Start one (`s3s-fs` must be on `PATH`, as `.ci/run` installs it).
    pub fn start() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let port = crate::free_port();
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", "AK", "--secret-key", "SK"])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs must be installed (cargo install s3s-fs)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { root, endpoint: format!("http://127.0.0.1:{port}"), child }
    }

    /// A new bucket on it.
    pub async fn bucket(&self) -> S3Bucket {
        let b = S3Bucket {
            endpoint: self.endpoint.clone(),
            bucket: crate::unique("soak").replace('_', "-"),
            access_key: "AK".into(),
            secret_key: "SK".into(),
        };
        b.client().create_bucket().bucket(&b.bucket).send().await.expect("create bucket");
        b
    }

    /// When each unfinished multipart upload the server holds was created
    /// (s3s-fs writes a file per upload when it is created).
    pub fn unfinished_uploads(&self) -> Vec<std::time::SystemTime> {
        let Ok(dir) = std::fs::read_dir(self.root.path()) else { return Vec::new() };
        dir.flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".upload-"))
            .filter_map(|e| e.metadata().ok()?.modified().ok())
            .collect()
    }
}
