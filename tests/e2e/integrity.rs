//! Damage is found and never served; a killed snapshot leaves a repository
//! that still checks and restores.

use std::process::Stdio;
use std::time::{Duration, Instant};

use snapback_testkit::db::make_db;
use snapback_testkit::{flip_byte_in_largest_pack, integrity, stderr, stdout, Env};

#[test]
fn flipped_byte_in_pack_is_named_by_check_and_refused_by_restore() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, 5000);
    let id = env.snapshot(&db);
    assert!(env.run(&["check", "--read-data"]).status.success());
    let pack = flip_byte_in_largest_pack(&env.repo());
    let pack_name = pack
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();

    // The structural check cannot see a flipped byte; --read-data must.
    let out = env.run(&["check", "--read-data"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "check --read-data exits 3 on damage: {}",
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(
        text.contains(&pack_name),
        "check names the damaged pack: {text}"
    );
    assert!(
        text.contains(&id[..8]) && text.contains(db.to_str().expect("utf8")),
        "check names the affected snapshot and file: {text}"
    );

    let json = env.run(&["--json", "check", "--read-data"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert!(!v["problems"].as_array().expect("problems").is_empty());

    let dest = env.path("restored.db");
    let err = env.fails(&["restore", &id, dest.to_str().expect("utf8")]);
    assert!(
        err.contains("corrupt") || err.contains("hash"),
        "restore fails loudly: {err}"
    );
    assert!(
        !dest.exists(),
        "restore wrote nothing when the data was damaged"
    );
    let leftovers: Vec<_> = std::fs::read_dir(env.dir.path())
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no temporary files are left behind: {leftovers:?}"
    );
}

#[test]
fn deleted_pack_is_found_by_structural_check() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, 2000);
    env.snapshot(&db);
    let pack = flip_byte_in_largest_pack(&env.repo());
    std::fs::remove_file(&pack).expect("rm");
    let out = env.run(&["check"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stdout(&out).contains("missing"), "{}", stdout(&out));
}

#[test]
fn snapshot_killed_midway_leaves_a_consistent_repository() {
    let env = Env::new();
    let db = env.path("app.db");
    make_db(&db, 3000);
    let first = env.snapshot(&db);
    // A large file keeps a snapshot busy long enough to be killed part-way.
    let big = env.path("big.bin");
    let data = snapback_testkit::random_bytes(192 << 20, 88172645463325252);
    std::fs::write(&big, &data).expect("write");
    drop(data);
    let mut killed_midway = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    for delay_ms in [30u64, 120, 250, 400, 700] {
        if Instant::now() > deadline {
            break;
        }
        let mut child = snapback_testkit::KillOnDrop::new(
            env.cmd(&[
                "snapshot",
                big.to_str().expect("utf8"),
                db.to_str().expect("utf8"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
        );
        std::thread::sleep(Duration::from_millis(delay_ms));
        let exited_early = child.try_wait().expect("wait").is_some();
        if !exited_early {
            // SIGKILL: no destructor, no cleanup.
            child.kill().expect("kill");
            killed_midway += 1;
        }
        child.wait().expect("reap");
        let out = env.run(&["check", "--read-data"]);
        assert!(
            out.status.success(),
            "after a kill at {delay_ms} ms the repository passes check: {}{}",
            stdout(&out),
            stderr(&out)
        );
        let dest = env.path(&format!("first-{delay_ms}.db"));
        env.ok(&["restore", &first, dest.to_str().expect("utf8")]);
        assert_eq!(integrity(&dest), "ok");
    }
    assert!(
        killed_midway >= 2,
        "at least two snapshots were killed part-way ({killed_midway})"
    );
    // And the operation can simply be run again.
    env.ok(&["snapshot", big.to_str().expect("utf8")]);
    assert!(env.run(&["check", "--read-data"]).status.success());
}

fn count_packs(repo: &std::path::Path) -> usize {
    std::fs::read_dir(repo.join("data"))
        .expect("data")
        .map(|d| {
            std::fs::read_dir(d.expect("d").path())
                .expect("dir")
                .count()
        })
        .sum()
}

#[test]
fn prune_refuses_when_used_data_is_unindexed_until_repair_index() {
    let env = Env::new();
    let a = env.path("a.bin");
    let b = env.path("b.bin");
    std::fs::write(&a, vec![1u8; 300_000]).expect("a");
    env.snapshot(&a);
    std::fs::write(
        &b,
        (0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
    )
    .expect("b");
    env.snapshot(&b);
    // Lose the first snapshot's index object: its pack now looks unreferenced.
    let mut idx: Vec<_> = std::fs::read_dir(env.repo().join("index"))
        .expect("index")
        .map(|e| e.expect("e").path())
        .collect();
    idx.sort_by_key(|p| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .expect("mtime")
    });
    std::fs::remove_file(&idx[0]).expect("rm");
    let packs = count_packs(&env.repo());
    let out = env.run(&["prune"]);
    assert!(!out.status.success(), "prune must refuse: {}", stdout(&out));
    assert!(
        stderr(&out).contains("index"),
        "it says why: {}",
        stderr(&out)
    );
    assert_eq!(count_packs(&env.repo()), packs, "nothing was deleted");
    env.ok(&["repair-index"]);
    env.ok(&["prune"]);
    let out = env.run(&["check", "--read-data"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let dest = env.path("a.out");
    let id = env.snapshots_json()[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    env.ok(&["restore", &id, dest.to_str().expect("utf8")]);
    assert_eq!(std::fs::read(&dest).expect("read"), vec![1u8; 300_000]);
}

#[test]
fn one_damaged_manifest_does_not_hide_the_others_but_blocks_prune() {
    let env = Env::new();
    let f = env.path("f.txt");
    std::fs::write(&f, "one").expect("w");
    let first = env.snapshot(&f);
    std::fs::write(&f, "two").expect("w");
    let second = env.snapshot(&f);
    std::fs::write(env.repo().join("snapshots").join(&first), b"{ damaged").expect("damage");
    let list = env.snapshots_json();
    assert_eq!(list.len(), 1, "the intact snapshot is still listed");
    assert_eq!(list[0]["id"], second.as_str());
    let dest = env.path("out.txt");
    env.ok(&["restore", "latest", dest.to_str().expect("utf8")]);
    assert_eq!(std::fs::read_to_string(&dest).expect("read"), "two");
    let out = env.run(&["prune"]);
    assert!(
        !out.status.success(),
        "prune refuses while a manifest is unreadable: {}",
        stderr(&out)
    );
    assert_eq!(
        env.run(&["check"]).status.code(),
        Some(3),
        "check names the damaged manifest"
    );
}
