//! The JSON log lines of this test process, as a node writes them in
//! production, for suites that check what was logged. Installing the
//! capture makes it this process's log subscriber (call it before any node
//! starts, or a test subscriber may be installed first).

use std::sync::{Arc, Mutex, OnceLock};

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

/// Capture every log line from now on, at `filter` (an `EnvFilter`
/// directive; the first caller's filter holds for the whole process).
pub fn capture(filter: &str) {
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let installed = ncps_edge::logs::init(filter, move || Capture(writer.clone()));
        assert!(installed, "another log subscriber was installed first");
        buf
    });
}

/// Everything captured so far, as written.
pub fn text() -> String {
    let buf = LOGS.get().expect("logs::capture was not called").lock().unwrap().clone();
    String::from_utf8_lossy(&buf).into_owned()
}

/// Every line captured so far, parsed (a line that is no JSON fails the test).
pub fn lines() -> Vec<serde_json::Value> {
    text().lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"))).collect()
}

/// The captured lines whose `message` is `message`.
pub fn with_message(message: &str) -> Vec<serde_json::Value> {
    lines().into_iter().filter(|v| v["message"] == message).collect()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
