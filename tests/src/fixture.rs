//! Binary caches made by the real `nix copy`, once per test process: a
//! closure with references (leaf ← mid ← top), a large random path, each in
//! xz, zstd and uncompressed caches, plus a path signed by an untrusted key.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::nix::NixEnv;

/// Size of the large path.
pub const BIG_SIZE: usize = 30_000_000;

/// The generated caches.
pub struct Fixture {
    /// Nix environment that made them (its folder lives until the process
    /// exits).
    pub env: NixEnv,
    /// Store holding the original paths.
    pub store: PathBuf,
    /// The trusted upstream key, `fixture-1:…`.
    pub public_key: String,
    /// The untrusted key's public half.
    pub evil_public_key: String,
    /// Closure top (refers to mid and leaf).
    pub top: String,
    /// mid (refers to leaf).
    pub mid: String,
    /// leaf.
    pub leaf: String,
    /// Large random file.
    pub big: String,
    /// Path only in the evil cache.
    pub evil: String,
    /// Cache folders by compression: "xz" (closure only), "zstd", "none".
    pub caches: Vec<(&'static str, PathBuf)>,
    /// Cache signed by the untrusted key.
    pub evil_cache: PathBuf,
}

impl Fixture {
    /// The cache folder for `compression`.
    pub fn cache(&self, compression: &str) -> PathBuf {
        self.caches.iter().find(|(c, _)| *c == compression).map(|(_, p)| p.clone()).expect("no such cache")
    }
}

const CHAIN: &str = r#"
let mk = name: script: builtins.derivation {
  inherit name; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" script ]; PATH = "/usr/bin:/bin";
};
in rec {
  leaf = mk "leaf" "echo leaf > $out";
  mid = mk "mid" "mkdir $out; echo ${leaf} > $out/ref; echo mid > $out/data";
  top = mk "top" "mkdir $out; echo ${mid} > $out/ref; echo ${leaf} >> $out/ref; ln -s ${leaf} $out/link";
  big = mk "big" "head -c BIG_SIZE /dev/urandom > $out";
  evil = mk "evil" "echo evil > $out";
}
"#;

fn build(env: &NixEnv, store: &str, file: &str, attr: &str) -> String {
    let out = env.run(
        "nix-build",
        &[
            "--store",
            store,
            "--option",
            "sandbox-paths",
            "/usr /bin=/usr/bin /lib=/usr/lib /lib64=/usr/lib64",
            file,
            "-A",
            attr,
            "--no-out-link",
        ],
    );
    out.lines().last().unwrap_or_default().to_owned()
}

/// The fixture, generated on first use.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let env = NixEnv::until_exit();
        let store = env.path("store");
        let s = store.display().to_string();
        let file = env.path("chain.nix");
        std::fs::write(&file, CHAIN.replace("BIG_SIZE", &BIG_SIZE.to_string())).unwrap();
        let f = file.display().to_string();
        let (top, big, evil) = (build(&env, &s, &f, "top"), build(&env, &s, &f, "big"), build(&env, &s, &f, "evil"));
        let refs = env.run("nix-store", &["--store", &s, "-q", "--references", &top]);
        let mid = refs.lines().find(|l| l.ends_with("-mid")).expect("mid").to_owned();
        let leaf = refs.lines().find(|l| l.ends_with("-leaf")).expect("leaf").to_owned();
        let key = |name: &str| {
            let (sk, pk) = (env.path(&format!("{name}.sk")), env.path(&format!("{name}.pk")));
            env.run(
                "nix-store",
                &["--generate-binary-cache-key", name, &sk.display().to_string(), &pk.display().to_string()],
            );
            (sk, std::fs::read_to_string(pk).unwrap().trim().to_owned())
        };
        let (sk, public_key) = key("fixture-1");
        let (evil_sk, evil_public_key) = key("evil-1");
        let copy = |name: &str, query: &str, sk: &PathBuf, paths: &[&str]| {
            let dir = env.path(name);
            let to = format!("file://{}?{query}&secret-key={}", dir.display(), sk.display());
            let mut args = vec!["copy", "--store", &s, "--to", &to];
            args.extend_from_slice(paths);
            env.run("nix", &args);
            dir
        };
        let caches = vec![
            ("xz", copy("up-xz", "compression=xz", &sk, &[&top])),
            ("zstd", copy("up-zstd", "compression=zstd", &sk, &[&top, &big])),
            ("none", copy("up-none", "compression=none", &sk, &[&top, &big])),
        ];
        let evil_cache = copy("up-evil", "compression=none", &evil_sk, &[&evil]);
        Fixture { env, store, public_key, evil_public_key, top, mid, leaf, big, evil, caches, evil_cache }
    })
}

/// The hash part of a store path.
pub fn hash_of(store_path: &str) -> &str {
    &store_path["/nix/store/".len().."/nix/store/".len() + 32]
}

/// The `URL:` of `store_path`'s narinfo in `cache`, with a leading slash.
pub fn nar_url(cache: &std::path::Path, store_path: &str) -> String {
    let text = std::fs::read_to_string(cache.join(format!("{}.narinfo", hash_of(store_path)))).unwrap();
    let url = text.lines().find_map(|l| l.strip_prefix("URL: ")).expect("URL line");
    format!("/{url}")
}

/// The NAR file of `store_path` in `cache` (what its narinfo's URL names).
pub fn nar_file(cache: &std::path::Path, store_path: &str) -> PathBuf {
    cache.join(&nar_url(cache, store_path)[1..])
}

/// Many store paths for the soak test, in one uncompressed cache signed by
/// the fixture key: small ones, and a few larger than one S3 part.
pub struct SoakFixture {
    /// Store paths.
    pub paths: Vec<String>,
    /// The cache folder.
    pub cache: PathBuf,
}

/// How many small paths the soak fixture has.
pub const SOAK_SMALL: usize = 240;
/// How many paths larger than one S3 multipart part (8 MiB).
pub const SOAK_LARGE: usize = 3;

/// The soak fixture, generated on first use (with `nix-store --add` and
/// `nix copy`).
pub fn soak_fixture() -> &'static SoakFixture {
    static SOAK: OnceLock<SoakFixture> = OnceLock::new();
    SOAK.get_or_init(|| {
        let fx = fixture();
        let files = fx.env.path("soak-files");
        std::fs::create_dir_all(&files).unwrap();
        let mut names = Vec::new();
        for i in 0..SOAK_SMALL + SOAK_LARGE {
            let size = if i < SOAK_SMALL { 512 + (i * 7919) % 48_000 } else { 9_000_000 + i };
            let bytes: Vec<u8> = (0..size).map(|j| ((i * 131 + j * 7) % 251) as u8 ^ (j >> 8) as u8).collect();
            let name = files.join(format!("soak-{i}"));
            std::fs::write(&name, bytes).unwrap();
            names.push(name.display().to_string());
        }
        let store = fx.env.path("soak-store").display().to_string();
        let mut add = vec!["--store", store.as_str(), "--add"];
        add.extend(names.iter().map(String::as_str));
        let paths: Vec<String> = fx.env.run("nix-store", &add).lines().map(str::to_owned).collect();
        assert_eq!(paths.len(), SOAK_SMALL + SOAK_LARGE);
        let cache = fx.env.path("soak-cache");
        let to =
            format!("file://{}?compression=none&secret-key={}", cache.display(), fx.env.path("fixture-1.sk").display());
        let mut copy = vec!["copy", "--store", store.as_str(), "--to", to.as_str()];
        copy.extend(paths.iter().map(String::as_str));
        fx.env.run("nix", &copy);
        SoakFixture { paths, cache }
    })
}
