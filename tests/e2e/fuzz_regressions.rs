//! Replays every input the fuzzers found a crash with
//! (`fixtures/fuzz-regressions/<target>/`) and the seed corpora
//! (`fuzz/seeds/<target>/`) through the same checks the fuzz targets run
//! (`fuzz/src/lib.rs`), so that a fixed parser stays fixed without
//! cargo-fuzz or a nightly toolchain.

use std::path::Path;

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;

#[test]
fn fuzz_regressions_and_seeds_replay_without_a_crash() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut replayed = 0;
    for target in harness::TARGETS {
        for dir in ["fixtures/fuzz-regressions", "fuzz/seeds"] {
            let Ok(rd) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            let mut files: Vec<_> = rd.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files {
                let data = std::fs::read(&f).expect("read");
                let r = std::panic::catch_unwind(|| harness::run(target, &data));
                assert!(
                    r.is_ok(),
                    "{target}: {} makes the parser fail its checks",
                    f.display()
                );
                replayed += 1;
            }
        }
    }
    assert!(
        replayed >= harness::TARGETS.len(),
        "every target has inputs ({replayed})"
    );
}
