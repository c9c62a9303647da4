//! The reconcile pass's listing of local storage: every object, page by
//! page (500 a page, as the pass reads it), against one plain walk of the
//! same tree in the same run (the floor: what reading the tree once costs).
//!
//! `cargo bench -p ncps-edge-host-services --bench listing` prints a
//! markdown table for 20k, 40k and 80k objects.

use std::path::Path;
use std::time::{Duration, Instant};

use ncps_edge_host_services::storage::local::LocalStore;
use ncps_edge_host_services::storage::{BlobStore, StorageKey};
use sha2::Digest as _;

/// Objects read per listing call by the reconcile pass.
const PAGE: u32 = 500;

fn populate(store: &LocalStore, n: usize) {
    for i in 0..n {
        let name = nix_base32::to_nix_base32(&sha2::Sha256::digest(i.to_le_bytes()));
        let key = StorageKey::parse(&format!("nar/{name}.nar")).unwrap();
        let path = store.path_of(&key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }
}

/// One walk of every file under `dir`, with its size.
fn walk(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.file_type().unwrap().is_dir() {
            n += walk(&entry.path());
        } else {
            let _ = entry.metadata().unwrap().len();
            n += 1;
        }
    }
    n
}

async fn paged(store: &LocalStore) -> usize {
    let (mut n, mut after) = (0, None::<String>);
    loop {
        let page = store.list(after.as_deref(), PAGE).await.unwrap();
        n += page.len();
        match page.last() {
            Some(last) if page.len() == PAGE as usize => after = Some(last.key.clone()),
            _ => return n,
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

#[tokio::main]
async fn main() {
    println!("| objects | paged listing (pages of {PAGE}), s | one walk of the tree, s | ratio |");
    println!("| --- | --- | --- | --- |");
    for n in [20_000, 40_000, 80_000] {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).await.unwrap();
        populate(&store, n);
        let t = Instant::now();
        let walked = walk(&dir.path().join("store/nar"));
        let once = t.elapsed();
        let t = Instant::now();
        let listed = paged(&store).await;
        let pages = t.elapsed();
        assert_eq!((walked, listed), (n, n), "both must see every object");
        println!("| {n} | {} | {} | {:.2}x |", secs(pages), secs(once), pages.as_secs_f64() / once.as_secs_f64());
    }
}
