//! Folders that live as long as the test process. A `static` is never
//! dropped, so a `TempDir` kept in one (a fixture made once per process)
//! would be left behind in the temporary folder by every test binary.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

static FOLDERS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" fn remove_folders() {
    let folders = std::mem::take(&mut *FOLDERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    for folder in folders {
        let _ = std::fs::remove_dir_all(folder);
    }
}

/// Keep `dir` until the process exits, then remove it (when `main`
/// returns or `std::process::exit` is called, as the test harness does
/// when a test failed; not when the process is killed).
pub fn until_exit(dir: tempfile::TempDir) -> &'static Path {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: `remove_folders` is an `extern "C"` function that never
        // unwinds; `atexit` only records it.
        let registered = unsafe { libc::atexit(remove_folders) };
        assert_eq!(registered, 0, "atexit");
    });
    let path: &'static Path = Box::leak(dir.keep().into_boxed_path());
    FOLDERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(path.to_owned());
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD: &str = "NCPS_TEST_UNTIL_EXIT_CHILD";

    /// Run again as a child process, which keeps a folder until it exits
    /// and says where; the folder is gone once the child has ended.
    #[test]
    fn a_folder_kept_until_exit_is_removed_when_the_process_exits() {
        if let Some(said) = std::env::var_os(CHILD) {
            let kept = until_exit(tempfile::tempdir().unwrap());
            std::fs::write(kept.join("file"), "x").unwrap();
            std::fs::write(said, kept.to_str().unwrap()).unwrap();
            return;
        }
        let said = tempfile::NamedTempFile::new().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "until_exit::tests::a_folder_kept_until_exit_is_removed_when_the_process_exits"])
            .env(CHILD, said.path())
            .status()
            .unwrap();
        assert!(status.success(), "the child failed");
        let kept = std::fs::read_to_string(said.path()).unwrap();
        assert!(!kept.is_empty(), "the child did not say where its folder is");
        assert!(!Path::new(&kept).exists(), "{kept} outlived the process");
    }
}
