//! Full restore through `Repository::restore_file`: blobs are decompressed
//! and hashed where they land in the window, a blob the file holds several
//! times is fetched once and copied into its other places, and the file is
//! proven from the chunk list (no whole-file hash is needed).

use std::sync::Arc;

use snapback_storage::{LocalStore, Store};

use crate::repo::{InitOptions, Repository};
use crate::snapshot::SnapshotOptions;
use crate::NoProgress;

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    // xorshift64*: incompressible enough that FastCDC cuts it anywhere.
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

fn repo_with(
    dir: &std::path::Path,
    name: &str,
    content: &[u8],
) -> (Repository, crate::manifest::FileEntry) {
    let store: Arc<dyn Store> = Arc::new(LocalStore::create(dir.join("repo")).expect("store"));
    let repo = Repository::init(store, &InitOptions::default()).expect("init");
    let src = dir.join(name);
    std::fs::write(&src, content).expect("write");
    let r = repo
        .snapshot(
            std::slice::from_ref(&src),
            &SnapshotOptions::default(),
            &NoProgress,
        )
        .expect("snapshot");
    let snap = repo
        .snapshots()
        .expect("list")
        .into_iter()
        .find(|s| s.id == r.id)
        .expect("listed");
    let file = snap.manifest.files[0].clone();
    (repo, file)
}

fn restores_exactly(
    repo: &Repository,
    file: &crate::manifest::FileEntry,
    dest: &std::path::Path,
    content: &[u8],
) {
    repo.restore_file(file, dest, false, &NoProgress)
        .expect("restore");
    assert!(
        std::fs::read(dest).expect("read") == content,
        "restored bytes differ"
    );
}

#[test]
fn full_restore_fills_every_place_of_a_chunk_the_file_repeats() {
    let dir = tempfile::tempdir().expect("tmp");
    let block = random_bytes(6 << 20, 7);
    let content: Vec<u8> = [&block[..], &block[..], &block[..], b"tail"].concat();
    let (repo, file) = repo_with(dir.path(), "repeats.bin", &content);
    let index = repo.index().expect("index");
    let chunks = repo.proven_chunks(&index, &file).expect("chunks");
    let distinct: std::collections::HashSet<_> = chunks.iter().map(|c| c.id).collect();
    assert!(
        distinct.len() < chunks.len(),
        "the file must hold some chunk more than once ({} chunks, {} distinct)",
        chunks.len(),
        distinct.len()
    );
    restores_exactly(&repo, &file, &dir.path().join("out.bin"), &content);
}

#[test]
fn full_restore_proves_a_file_from_its_chunk_list_without_a_whole_file_hash() {
    let dir = tempfile::tempdir().expect("tmp");
    let content = random_bytes(3 << 20, 11);
    let (repo, mut file) = repo_with(dir.path(), "plain.bin", &content);
    // A format-2 manifest of a WAL-delta capture has no whole-file SHA-256:
    // the chunk list, proven by db_checksum, and every chunk's id prove it.
    file.sha256 = None;
    restores_exactly(&repo, &file, &dir.path().join("out.bin"), &content);
    // A chunk list that does not add up to the manifest's checksum is
    // refused before anything is created.
    let mut wrong = file.clone();
    wrong.db_checksum = "0".repeat(wrong.db_checksum.len());
    let dest2 = dir.path().join("out2.bin");
    let err = repo
        .restore_file(&wrong, &dest2, false, &NoProgress)
        .expect_err("a wrong checksum must be refused");
    assert!(err.to_string().contains("checksum"), "{err}");
    assert!(!dest2.exists(), "nothing may appear at the destination");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn full_restore_writes_unaligned_chunks_zero_holes_and_a_short_tail_exactly() {
    // Content-defined chunks of random bytes end anywhere, so the windows
    // after the first start off the direct-write alignment; a zero run is
    // left as a hole (not written); the tail is not a whole block. Every
    // byte must land where it belongs, through direct writes or not.
    let dir = tempfile::tempdir().expect("tmp");
    let content: Vec<u8> = [
        random_bytes(20 << 20, 3),
        vec![0u8; 5 << 20],
        random_bytes((17 << 20) + 1234, 5),
    ]
    .concat();
    let (repo, file) = repo_with(dir.path(), "mixed.bin", &content);
    let index = repo.index().expect("index");
    let chunks = repo.proven_chunks(&index, &file).expect("chunks");
    assert!(
        chunks.iter().any(|c| c.len % 4096 != 0),
        "some chunk must be of a length that is not a whole block"
    );
    restores_exactly(&repo, &file, &dir.path().join("out.bin"), &content);
}
