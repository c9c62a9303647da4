//! Running Debian's `nix` (2.8) without a daemon, each call with a private
//! config and narinfo cache.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// A private Nix configuration directory.
pub struct NixEnv {
    root: PathBuf,
    /// The folder, removed with this environment; none when it lives
    /// until the process exits ([`NixEnv::until_exit`]).
    _dir: Option<tempfile::TempDir>,
}

impl Default for NixEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl NixEnv {
    /// A fresh config (no substituters, signatures required), removed when
    /// dropped.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::configured(dir.path().to_owned(), Some(dir))
    }

    /// The same, for a `static` (never dropped): removed when the process
    /// exits.
    pub fn until_exit() -> Self {
        let root = ncps_edge_test_support::until_exit(tempfile::tempdir().expect("tempdir"));
        Self::configured(root.to_owned(), None)
    }

    fn configured(root: PathBuf, dir: Option<tempfile::TempDir>) -> Self {
        std::fs::create_dir_all(root.join("conf")).unwrap();
        std::fs::write(
            root.join("conf/nix.conf"),
            "experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters =\nrequire-sigs = true\n\
             narinfo-cache-negative-ttl = 0\nnarinfo-cache-positive-ttl = 0\n",
        )
        .unwrap();
        Self { root, _dir: dir }
    }

    /// A folder of this environment for stores and files.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// A `Command` for `program` in this environment.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("NIX_CONF_DIR", self.root.join("conf"))
            .env("XDG_CACHE_HOME", self.root.join("xdg"))
            .env("HOME", &self.root)
            .env_remove("NIX_REMOTE");
        c
    }

    /// Run `program args…`; panic with its output when it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self.try_run(program, args);
        assert!(out.status.success(), "{program} {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Run `program args…` and return its output.
    pub fn try_run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e} (is nix-bin installed?)"))
    }

    /// `nix copy --from url --to store path`, trusting only `key`, one
    /// download attempt (a 5xx fails at once).
    pub fn copy_from(&self, url: &str, key: &str, store: &Path, path: &str) -> Output {
        let store = store.display().to_string();
        let to = ["copy", "--from", url, "--to", &store, "--option", "trusted-public-keys", key];
        self.try_run("nix", &[&to[..], &["--option", "download-attempts", "1", path]].concat())
    }

    /// sha256 of `nix-store --dump` of `path` in `store`: equal iff the paths are byte-identical.
    pub fn dump_hash(&self, store: &Path, path: &str) -> String {
        // A chroot store keeps `/nix/store/x` at `<store>/nix/store/x`.
        let real = store.join(path.trim_start_matches('/'));
        let out = self.command("nix-store").arg("--dump").arg(&real).output().unwrap();
        assert!(out.status.success(), "dump of {path} failed: {}", String::from_utf8_lossy(&out.stderr));
        format!("{:x}", Sha256::digest(&out.stdout))
    }
}
