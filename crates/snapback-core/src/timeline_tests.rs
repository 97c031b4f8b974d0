//! Timeline segments on real repositories: points made from a real
//! SQLite database as a writer changes it, committed over a real snapshot,
//! and every way `commit_segment` must refuse one (nothing written).

use std::path::PathBuf;
use std::sync::Arc;

use rusqlite::Connection;
use snapback_storage::{LocalStore, Store};
use snapback_testkit::db::{checkpointed_image, insert_blobs, update_blob, wal_writer};

use crate::id::Id;
use crate::layout::{timeline_key, CONFIG_KEY, CONFIG_NEXT_KEY, TIMELINE_PREFIX};
use crate::repo::{InitOptions, Repository};
use crate::segment::{Point, Segment};
use crate::snapshot::SnapshotOptions;
use crate::{Error, NoProgress};

pub(crate) struct Fx {
    pub dir: tempfile::TempDir,
    pub repo: Repository,
    pub db: PathBuf,
    pub w: Connection,
}

pub(crate) fn init_opts(format_version: u32, encrypted: bool) -> InitOptions {
    InitOptions {
        format_version,
        encryption: encrypted.then(|| crate::repo::EncryptionOptions {
            passphrase: zeroize::Zeroizing::new("test passphrase".into()),
            kdf: crate::crypto::KdfParams {
                memory_kib: 8 * 1024,
                iterations: 1,
                parallelism: 1,
            },
        }),
        ..InitOptions::default()
    }
}

impl Fx {
    pub fn new(opts: &InitOptions) -> Fx {
        let dir = tempfile::tempdir().expect("tmp");
        let store: Arc<dyn Store> =
            Arc::new(LocalStore::create(dir.path().join("repo")).expect("store"));
        let repo = Repository::init(store, opts).expect("init");
        let db = dir.path().join("app.db");
        let w = wal_writer(&db);
        let fx = Fx { dir, repo, db, w };
        fx.insert(40);
        fx
    }

    pub fn insert(&self, n: u32) {
        insert_blobs(&self.w, n, 700);
    }

    pub fn update(&self, id: i64) {
        update_blob(&self.w, id, 700);
    }

    /// What SQLite has now, byte for byte (the WAL checkpointed into the
    /// file, which is then read).
    pub fn image(&self) -> Vec<u8> {
        checkpointed_image(&self.w, &self.db)
    }

    /// A full snapshot of the database: the base manifest.
    pub fn base(&self) -> Id {
        let opts = SnapshotOptions {
            state_dir: None,
            ..Default::default()
        };
        self.repo
            .snapshot(std::slice::from_ref(&self.db), &opts, &NoProgress)
            .expect("snapshot")
            .id
    }

    pub fn path(&self) -> String {
        self.db.to_str().expect("utf-8 path").to_string()
    }
}

/// The point that turns `prev` into `now`, strictly after every earlier
/// time.
pub(crate) fn point(repo: &Repository, prev: &[u8], now: &[u8]) -> Point {
    std::thread::sleep(std::time::Duration::from_millis(2));
    repo.point_between_images(prev, now, 4096, crate::time::now())
        .expect("point")
}

/// A base snapshot and a segment of three points: an update, growth, and
/// another update; with the image SQLite had at each point.
pub(crate) fn three_points(fx: &Fx) -> (Segment, Vec<Vec<u8>>) {
    let mut images = vec![fx.image()];
    let base = fx.base();
    let mut points = Vec::new();
    let steps: [&dyn Fn(&Fx); 3] = [&|f| f.update(3), &|f| f.insert(30), &|f| f.update(1)];
    for step in steps {
        step(fx);
        let now = fx.image();
        let prev = images.last().expect("prev");
        points.push(point(&fx.repo, prev, &now));
        images.push(now);
    }
    let seg = Segment {
        path: fx.path(),
        base,
        page_size: 4096,
        points,
    };
    (seg, images)
}

fn listed(repo: &Repository, prefix: &str) -> usize {
    repo.store().list(prefix).expect("list").len()
}

fn image_at(repo: &Repository, id: &Id, seg: &Segment, k: usize) -> Vec<u8> {
    let index = repo.index().expect("index");
    let list = repo.point_chunk_list(&index, id, seg, k).expect("replay");
    let mut out = Vec::new();
    for c in list {
        out.extend(repo.read_blob(&index, &c.id).expect("blob"));
    }
    out
}

#[test]
fn committed_segments_list_and_replay_to_what_sqlite_had() {
    for encrypted in [false, true] {
        let fx = Fx::new(&init_opts(2, encrypted));
        let (seg, images) = three_points(&fx);
        assert!(!fx.repo.has_feature("timeline").expect("features"));
        let id = fx.repo.commit_segment(&seg).expect("commit");
        let listed = fx.repo.segments().expect("segments");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, id);
        assert_eq!(*listed[0].1, seg);
        for k in 0..3 {
            assert!(
                image_at(&fx.repo, &id, &seg, k) == images[k + 1],
                "point {k} is what SQLite had"
            );
        }
        // The config lists the feature, and a new handle reads the segment
        // from the store (sealed in an encrypted repository).
        let store = fx.repo.store().clone();
        let config = Repository::read_config(store.as_ref()).expect("config");
        assert_eq!(config.features, vec!["timeline".to_string()]);
        let raw = LocalStore::open(fx.dir.path().join("repo")).expect("raw store");
        let stored = raw.get(&timeline_key(&id)).expect("stored");
        assert_eq!(
            stored.starts_with(b"SNBSEG"),
            !encrypted,
            "sealed whole when encrypted"
        );
        let again = fx.repo.reopen();
        assert_eq!(*again.segment(&id).expect("read"), seg);
        // A second segment does not touch the config again.
        let before = raw.get(CONFIG_KEY).expect("config bytes");
        fx.update(5);
        let mut next = seg.clone();
        let now = fx.image();
        next.points = vec![point(&fx.repo, &images[0], &now)];
        fx.repo.commit_segment(&next).expect("second segment");
        assert_eq!(raw.get(CONFIG_KEY).expect("config bytes"), before);
        assert_eq!(fx.repo.segments().expect("segments").len(), 2);
    }
}

/// Asserts that `seg` is refused with a message containing `why`, and that
/// nothing was written: no segment, the config as it was.
fn refused(fx: &Fx, seg: &Segment, why: &str) {
    let config = fx.repo.store().get(CONFIG_KEY).expect("config");
    let e = fx.repo.commit_segment(seg).expect_err(why);
    assert!(
        e.to_string().contains(why) && e.to_string().contains("nothing was written"),
        "{why}: {e}"
    );
    assert_eq!(e.kind(), crate::Kind::BadInput, "{e}");
    assert_eq!(
        listed(&fx.repo, TIMELINE_PREFIX),
        0,
        "{why}: nothing written"
    );
    assert_eq!(
        fx.repo.store().get(CONFIG_KEY).expect("config"),
        config,
        "{why}: config unchanged"
    );
}

#[test]
fn commit_segment_refuses_what_would_not_replay_and_writes_nothing() {
    let fx = Fx::new(&init_opts(2, false));
    let (seg, _) = three_points(&fx);

    let mut absent = seg.clone();
    absent.base = Id::of(b"no such manifest");
    refused(&fx, &absent, "is not in the repository");

    let mut other_path = seg.clone();
    other_path.path = "/srv/other.db".into();
    refused(&fx, &other_path, "does not hold /srv/other.db");

    let mut page_size = seg.clone();
    page_size.page_size = 8192;
    refused(&fx, &page_size, "not as a database of 8192-byte pages");

    let mut order = seg.clone();
    order.points.swap(0, 1);
    refused(&fx, &order, "strictly increasing time order");

    let mut early = seg.clone();
    early.points[0].time = time::OffsetDateTime::UNIX_EPOCH;
    refused(&fx, &early, "is not after its base's time");

    let mut unindexed = seg.clone();
    unindexed.points[1].changes[0].1 = Id::of(b"a page never stored");
    refused(&fx, &unindexed, "is in no index");

    let mut checksum = seg.clone();
    checksum.points[2].db_checksum.0 ^= 1;
    refused(&fx, &checksum, "gives the checksum");

    // A change dropped: the replayed list differs from what the point says.
    let mut dropped = seg.clone();
    dropped.points[0].changes.remove(0);
    refused(&fx, &dropped, "gives the checksum");

    let mut empty = seg.clone();
    empty.points.clear();
    refused(&fx, &empty, "holds no point");

    // The intact segment still commits after all of that.
    fx.repo.commit_segment(&seg).expect("commit");
}

#[test]
fn a_format_1_repository_refuses_segments_and_says_to_upgrade() {
    let fx = Fx::new(&init_opts(1, false));
    let (seg, _) = three_points(&fx);
    refused(&fx, &seg, "upgrade the repository");
}

#[test]
fn a_damaged_segment_is_detected_on_read() {
    let fx = Fx::new(&init_opts(2, false));
    let (seg, _) = three_points(&fx);
    let id = fx.repo.commit_segment(&seg).expect("commit");
    let file = fx.dir.path().join("repo").join(timeline_key(&id));
    let mut bytes = std::fs::read(&file).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&file, &bytes).expect("damage");
    let fresh = fx.repo.reopen();
    let e = fresh.segment(&id).expect_err("damaged");
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("not to its name"), "{e}");
    assert!(
        fresh.segments().expect("listing skips it").is_empty(),
        "skipped with a warning"
    );
    assert!(
        fresh.segments_strict().is_err(),
        "strict listing refuses it"
    );
}

#[test]
fn an_interrupted_feature_change_is_finished_by_the_next_open() {
    let fx = Fx::new(&init_opts(2, false));
    let store = fx.repo.store().clone();
    let mut next = Repository::read_config(store.as_ref()).expect("config");
    next.features = vec!["timeline".into()];
    let bytes = serde_json::to_vec_pretty(&next).expect("json");
    // A crash after `config` was deleted and before it was stored again.
    crate::object::put_verified(store.as_ref(), CONFIG_NEXT_KEY, &bytes).expect("next");
    store.delete(CONFIG_KEY).expect("delete");
    let opened = Repository::open(store.clone()).expect("open finishes it");
    assert_eq!(opened.config().features, vec!["timeline".to_string()]);
    assert_eq!(store.get(CONFIG_KEY).expect("installed"), bytes);
    // init never takes a half-installed repository for an empty store.
    store.delete(CONFIG_KEY).expect("delete");
    let e = Repository::init(store.clone(), &init_opts(2, false)).expect_err("exists");
    assert!(matches!(e, Error::AlreadyInitialised { .. }), "{e}");
    // The leftover `config.next` does not block the next feature change.
    store
        .put_if_absent(CONFIG_KEY, &bytes)
        .expect("config back");
    let fx2 = Fx::new(&init_opts(2, false));
    let (seg, _) = three_points(&fx2);
    fx2.repo
        .store()
        .put_if_absent(CONFIG_NEXT_KEY, b"{}")
        .expect("stale next");
    fx2.repo
        .commit_segment(&seg)
        .expect("commit over a stale config.next");
    assert!(fx2
        .repo
        .store()
        .get(CONFIG_NEXT_KEY)
        .is_err_and(|e| e.is_not_found()));
}

#[test]
fn points_resolve_by_time_name_and_latest_and_restore_what_sqlite_had() {
    let fx = Fx::new(&init_opts(2, false));
    let (seg, images) = three_points(&fx);
    let id = fx.repo.commit_segment(&seg).expect("commit");
    let all = fx.repo.snapshots_and_points().expect("list");
    assert_eq!(all.len(), 4, "the base and three points");
    assert_eq!(fx.repo.snapshots().expect("manifests").len(), 1);
    let restore = |sel: &str, name: &str| -> (Vec<u8>, crate::Snapshot) {
        let snap = fx
            .repo
            .resolve(&sel.parse().expect("selector"), |_| true)
            .expect(sel);
        let dest = fx.dir.path().join(name);
        let f = snap.file(&fx.path()).expect("the database").clone();
        fx.repo
            .restore_file(&f, &dest, false, &NoProgress)
            .expect("restore");
        (std::fs::read(&dest).expect("read"), snap)
    };
    for k in 0..3 {
        let name = format!("{}/{k}", &id.to_hex()[..8]);
        let (got, snap) = restore(&name, &format!("by-name-{k}"));
        assert!(
            got == images[k + 1],
            "point {name} restores what SQLite had"
        );
        assert_eq!(snap.name(), name);
        assert_eq!(snap.point.expect("a point").base, seg.base);
        // @T at the point's time selects it; a nanosecond before, the one
        // before it (the base, for the first).
        let t = seg.points[k].time;
        let at = format!("@{}", crate::time::format_rfc3339(t));
        assert!(restore(&at, &format!("at-{k}")).0 == images[k + 1], "{at}");
        let before = format!(
            "@{}",
            crate::time::format_rfc3339(t - time::Duration::nanoseconds(1))
        );
        assert!(
            restore(&before, &format!("before-{k}")).0 == images[k],
            "{before}"
        );
    }
    assert!(
        restore("latest", "latest").0 == images[3],
        "latest is the newest point"
    );
    // The base's id still names the base; a point is never selected by an id.
    let (got, snap) = restore(&seg.base.to_hex()[..8], "base");
    assert!(got == images[0] && snap.point.is_none());
    let e = fx
        .repo
        .resolve(
            &format!("{}/3", &id.to_hex()[..8]).parse().expect("sel"),
            |_| true,
        )
        .expect_err("no point 3");
    assert!(e.to_string().contains("there is no point 3"), "{e}");
}

#[test]
fn a_point_whose_replay_does_not_give_its_checksum_restores_nothing() {
    let fx = Fx::new(&init_opts(2, false));
    let (seg, _) = three_points(&fx);
    let id = fx.repo.commit_segment(&seg).expect("commit");
    let snap = fx
        .repo
        .resolve(
            &format!("{}/1", &id.to_hex()[..8]).parse().expect("sel"),
            |_| true,
        )
        .expect("point");
    // The view of point 1 with the changes of point 0 only: what a replay
    // that skipped a point would give.
    let mut f = snap.file(&fx.path()).expect("db").clone();
    f.point = Some(crate::manifest::PointSource {
        segment: id,
        index: 0,
    });
    let dest = fx.dir.path().join("wrong");
    let e = fx
        .repo
        .restore_file(&f, &dest, false, &NoProgress)
        .expect_err("checksum");
    assert_eq!(e.kind(), crate::Kind::Damaged, "{e}");
    assert!(!dest.exists(), "no file left behind");
}

fn restore_point(fx: &Fx, seg_id: &Id, k: usize, name: &str) -> crate::Result<Vec<u8>> {
    let sel = format!("{}/{k}", &seg_id.to_hex()[..8]);
    let snap = fx.repo.resolve(&sel.parse()?, |_| true)?;
    let dest = fx.dir.path().join(name);
    let f = snap.file(&fx.path()).expect("the database").clone();
    fx.repo.restore_file(&f, &dest, false, &NoProgress)?;
    Ok(std::fs::read(&dest).expect("read"))
}

#[test]
fn forget_keeps_a_base_that_points_replay_from_and_prune_keeps_their_pages() {
    let fx = Fx::new(&init_opts(2, false));
    let (seg, images) = three_points(&fx);
    let id = fx.repo.commit_segment(&seg).expect("commit");
    // A newer full snapshot: `--keep-last 1` alone would remove the base.
    fx.update(9);
    fx.base();
    let snaps = fx.repo.snapshots_strict().expect("list");
    let policy = crate::KeepPolicy {
        last: Some(1),
        ..Default::default()
    };
    let mut plan = crate::plan_forget(&snaps, &policy, &Default::default(), false).expect("plan");
    assert_eq!(
        plan.removals().count(),
        1,
        "the plan alone removes the base"
    );
    let unguarded = plan.clone();
    fx.repo.keep_timeline_bases(&mut plan).expect("guard");
    assert_eq!(plan.removals().count(), 0);
    let kept = plan.groups[0]
        .keep
        .iter()
        .find(|d| d.id == seg.base.to_hex())
        .expect("the base is kept");
    assert!(
        kept.reasons
            .iter()
            .any(|r| r.contains("base of timeline points")),
        "{:?}",
        kept.reasons
    );
    // apply_forget guards too, given a plan made without the guard.
    assert_eq!(fx.repo.apply_forget(&unguarded).expect("forget"), 0);
    assert!(fx.repo.load_manifest(&seg.base).is_ok(), "the base stays");
    // Prune with no grace period: the pages only points name are live.
    let (plan, _) = fx
        .repo
        .prune(&crate::PruneOptions {
            lock_wait: std::time::Duration::from_secs(5),
            dry_run: false,
            min_pack_age: std::time::Duration::ZERO,
        })
        .expect("prune");
    assert!(plan.used_blobs > 0);
    let fresh = Fx {
        repo: fx.repo.reopen(),
        ..fx
    };
    for k in 0..3 {
        let got = restore_point(&fresh, &id, k, &format!("after-prune-{k}")).expect("restore");
        assert!(got == images[k + 1], "point {k} survives forget and prune");
    }
}

#[test]
fn check_verifies_segments_and_names_the_points_a_lost_page_affects() {
    let fx = Fx::new(&init_opts(2, false));
    let (seg, _) = three_points(&fx);
    let id = fx.repo.commit_segment(&seg).expect("commit");
    let opts = crate::CheckOptions {
        read_data: true,
        ..Default::default()
    };
    let report = fx.repo.check(&opts, &NoProgress).expect("check");
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!((report.segments, report.points), (1, 3));
    // Lose the pack of a page that point 1 changed.
    let index = fx.repo.index().expect("index");
    let page = seg.points[1].changes[0].1;
    let pack = index.get(&page).expect("indexed").pack;
    let file = fx
        .dir
        .path()
        .join("repo")
        .join(crate::layout::pack_key(&pack));
    std::fs::remove_file(&file).expect("lose the pack");
    let report = fx.repo.reopen().check(&opts, &NoProgress).expect("check");
    let short = &id.to_hex()[..8];
    let affected: Vec<String> = report
        .problems
        .iter()
        .flat_map(|p| p.affects.iter().map(|a| a.snapshot.clone()))
        .collect();
    assert!(
        affected.contains(&format!("{short}/1")),
        "{:?}",
        report.problems
    );
    assert!(
        affected.contains(&format!("{short}/2")),
        "{:?}",
        report.problems
    );
    assert!(
        !affected.contains(&format!("{short}/0")),
        "{:?}",
        report.problems
    );
    // A damaged segment object is reported as such.
    let seg_file = fx.dir.path().join("repo").join(timeline_key(&id));
    let mut bytes = std::fs::read(&seg_file).expect("read");
    bytes[10] ^= 1;
    std::fs::write(&seg_file, &bytes).expect("damage");
    let report = fx.repo.reopen().check(&opts, &NoProgress).expect("check");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.object == timeline_key(&id)
                && p.problem.contains("unreadable timeline segment")),
        "{:?}",
        report.problems
    );
}
