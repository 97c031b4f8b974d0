//! Snapshot selectors: ids, prefixes, latest, and @TIME around exact
//! snapshot times.

use snapback_testkit::Env;

#[test]
fn at_time_selects_the_newest_snapshot_at_or_before() {
    let env = Env::new();
    let f = env.path("f.txt");
    let mut ids = vec![];
    for i in 0..3 {
        std::fs::write(&f, format!("version {i}")).expect("write");
        ids.push(env.snapshot(&f));
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
    let snaps = env.snapshots_json();
    assert_eq!(snaps.len(), 3);
    let time_of = |id: &str| {
        snaps.iter().find(|s| s["id"] == id).expect("listed")["time"]
            .as_str()
            .expect("time")
            .to_string()
    };
    let restore_at = |sel: &str, name: &str| -> String {
        let dest = env.path(name);
        let out = env.run(&["restore", sel, dest.to_str().expect("utf8")]);
        assert!(
            out.status.success(),
            "restore {sel}: {}",
            snapback_testkit::stderr(&out)
        );
        let said = snapback_testkit::stderr(&out);
        assert!(
            said.contains("using snapshot"),
            "the chosen snapshot is named: {said}"
        );
        std::fs::read_to_string(dest).expect("read")
    };
    // Exactly at the second snapshot's time: the second.
    let t1 = time_of(&ids[1]);
    assert_eq!(restore_at(&format!("@{t1}"), "a"), "version 1");
    // A nanosecond earlier: the first.
    let t1_parsed: Vec<&str> = t1.trim_end_matches('Z').split('.').collect();
    let nanos: u64 = format!("{:0<9}", t1_parsed.get(1).copied().unwrap_or("0"))
        .parse()
        .expect("nanos");
    assert!(nanos > 0, "times carry sub-second precision: {t1}");
    let earlier = format!("@{}.{:09}Z", t1_parsed[0], nanos - 1);
    assert_eq!(restore_at(&earlier, "b"), "version 0");
    assert_eq!(restore_at("latest", "c"), "version 2");
    assert_eq!(restore_at(&ids[0][..12], "d"), "version 0");
    // Before the first snapshot: a clear error.
    let err = env.fails(&[
        "restore",
        "@2000-01-01T00:00:00Z",
        env.path("e").to_str().expect("utf8"),
    ]);
    assert!(err.contains("no snapshot was taken at or before"), "{err}");
    // Time zones are honoured.
    let err = env.fails(&[
        "restore",
        "@2000-01-01T00:00:00+05:00",
        env.path("e").to_str().expect("utf8"),
    ]);
    assert!(err.contains("1999-12-31T19:00:00Z"), "{err}");
}

#[test]
fn snapshots_filter_by_path_and_tag() {
    let env = Env::new();
    let a = env.path("a.txt");
    let b = env.path("b.txt");
    std::fs::write(&a, "a").expect("a");
    std::fs::write(&b, "b").expect("b");
    env.ok(&["snapshot", a.to_str().expect("utf8"), "--tag", "hourly"]);
    env.ok(&["snapshot", b.to_str().expect("utf8"), "--tag", "daily"]);
    let tagged = env.ok(&["--json", "snapshots", "--tag", "daily"]);
    let v: serde_json::Value = serde_json::from_str(&tagged).expect("json");
    assert_eq!(v.as_array().expect("arr").len(), 1);
    assert_eq!(v[0]["tags"][0], "daily");
    let by_path = env.ok(&["--json", "snapshots", "--path", a.to_str().expect("utf8")]);
    let v: serde_json::Value = serde_json::from_str(&by_path).expect("json");
    assert_eq!(v.as_array().expect("arr").len(), 1);
    assert_eq!(v[0]["tags"][0], "hourly");
    let table = env.ok(&["snapshots"]);
    assert!(
        table.contains("hourly") && table.contains("daily"),
        "{table}"
    );
}
