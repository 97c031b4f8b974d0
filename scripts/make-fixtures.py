#!/usr/bin/env python3
"""Builds the format-compatibility fixtures: small repositories of today's
repository format, written by today's `snapback` binary.

    scripts/make-fixtures.py [--bin PATH] [--out DIR] [--only NAME]

    --bin   the snapback binary (default: $CARGO_TARGET_DIR/debug/snapback,
            else target/debug/snapback)
    --out   where to write (default: fixtures/repos/v<format_version>)
    --only  write only this repository (timeline, dicts or
            encrypted-timeline) into an OUT that
            exists, adding its entry to OUT/expected.json; for a format
            feature added after OUT was written

It writes, under OUT:

    plain/          an unencrypted repository
    encrypted/      the same story in an encrypted repository (passphrase
                    below, cheapest KDF so that tests stay fast)
    damaged/        a copy of plain/ with one byte flipped in a pack and
                    another pack deleted
    timeline/       (format 2) a database watched by `snapback watch`: a base
                    manifest and two timeline segments of several points
    dicts/          (format 2) a database whose pages are compressed with a
                    zstd dictionary, in two snapshots (a full scan that
                    trains it, a WAL delta that reuses it)
    encrypted-timeline/
                    (format 2) the timeline story in an encrypted
                    repository, on a database big enough for a dictionary
    expected.json   what the tests compare with: every snapshot (id, tags,
                    paths) and the SHA-256 of each file it restores, and
                    what `check --read-data` reports for each repository

The story, the same in plain/ and encrypted/ (sources under SRC, a fixed
path so that the manifests name the same paths every time):

    A  app.db (WAL mode) + notes/ + settings.conf       --tag daily
    B  a few rows updated, notes/a.txt appended          --tag hourly
    C  rows updated and inserted, settings.conf changed  --tag hourly
    D  a bad migration overwrites `status` in 10% rows   --tag hourly
    forget --keep-last 2 --keep-tag daily --prune        (B is forgotten)
    repair from C (update_changed on items.status)       (a pre-repair
                                                          snapshot P and an
                                                          audit entry)
    E  after the repair, a new file notes/c.txt          --tag hourly
    check --read-data                                    (a check record)

The sources, the writes and the commands are fixed, so a run gives the same
story every time; the ids and times differ (the repositories' ids, the
clock), and expected.json records what this run wrote. Fixtures of a format
version are written once and never regenerated: the script refuses an OUT
that exists (with --only, a repository that exists). When the format version changes, run it
again with the new binary: it writes fixtures/repos/v<new version> next to
the old ones, and the old ones must keep passing (docs/format.md,
"Compatibility fixtures").
"""
import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile

PASSPHRASE = "snapback fixture passphrase"
SRC = "/tmp/snapback-fixture-src"
ROWS = 2000
CHEAP_KDF = ["--kdf-memory", "8", "--kdf-iterations", "1"]
# Set by main: a scratch directory for each repository's XDG directories.
XDG_ROOT = None


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


class Repo:
    def __init__(self, binary, path, passphrase=None):
        self.binary = binary
        self.path = path
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("SNAPBACK_") and k not in ("RUST_LOG", "NO_COLOR")}
        # Local capture state and config in a scratch directory of this
        # repository, never the user's: every run starts from the same
        # (empty) state.
        xdg = tempfile.mkdtemp(prefix="xdg-", dir=XDG_ROOT)
        for k in ("XDG_STATE_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
            self.env[k] = os.path.join(xdg, k.lower())
        if passphrase is not None:
            self.env["SNAPBACK_PASSWORD"] = passphrase

    def run(self, *args, ok=True):
        p = subprocess.run(
            [self.binary, "--repo", self.path, *args],
            env=self.env,
            capture_output=True,
            text=True,
        )
        if ok and p.returncode != 0:
            sys.exit(f"snapback {' '.join(args)} failed ({p.returncode}): {p.stderr}")
        return p

    def json(self, *args, ok=True):
        return json.loads(self.run("--json", *args, ok=ok).stdout)

    def snapshot(self, paths, tag):
        out = self.json("snapshot", "--tag", tag, *paths)
        return out["id"]


def db():
    c = sqlite3.connect(os.path.join(SRC, "app.db"), isolation_level=None)
    c.execute("PRAGMA busy_timeout = 10000")
    return c


def write(rel, text, mode="w"):
    with open(os.path.join(SRC, rel), mode) as f:
        f.write(text)


def build_sources():
    shutil.rmtree(SRC, ignore_errors=True)
    os.makedirs(os.path.join(SRC, "notes"))
    c = db()
    c.execute("PRAGMA journal_mode = WAL")
    c.execute(
        """CREATE TABLE items(
             id INTEGER PRIMARY KEY,
             name TEXT NOT NULL,
             status TEXT NOT NULL,
             payload TEXT NOT NULL,
             updated_at TEXT NOT NULL)"""
    )
    c.execute("CREATE INDEX items_status ON items(status)")
    c.execute("BEGIN")
    for i in range(1, ROWS + 1):
        c.execute(
            "INSERT INTO items VALUES (?, ?, ?, ?, ?)",
            (i, f"item-{i:04}", ["new", "active", "done"][i % 3], f"payload {i} " * 10,
             "2026-01-01T00:00:00Z"),
        )
    c.execute("COMMIT")
    c.close()
    write("notes/a.txt", "first note\n")
    write("notes/b.txt", "second note\n" * 50)
    write("settings.conf", "retention = 7\n")


def paths():
    return [os.path.join(SRC, p) for p in ("app.db", "notes", "settings.conf")]


REPAIR_SCRIPT = """description = "fixture: put back items.status from snapshot C"
snapshot = "{snap}"
live = "{live}"

[[table]]
name = "items"
columns = ["status"]
actions = ["update_changed"]
batch_size = 100
"""


def story(repo, work):
    """Runs the story against `repo`; returns the ids by letter."""
    build_sources()
    ids = {}
    ids["A"] = repo.snapshot(paths(), "daily")
    c = db()
    c.execute("UPDATE items SET status = 'active', updated_at = '2026-01-02T00:00:00Z' "
              "WHERE id IN (5, 6, 7, 8, 9)")
    c.close()
    write("notes/a.txt", "appended in B\n", "a")
    ids["B"] = repo.snapshot(paths(), "hourly")
    c = db()
    c.execute("BEGIN")
    c.execute("UPDATE items SET payload = 'changed in C', updated_at = '2026-01-03T00:00:00Z' "
              "WHERE id % 500 = 1")
    for i in range(ROWS + 1, ROWS + 11):
        c.execute("INSERT INTO items VALUES (?, ?, 'new', 'inserted in C', "
                  "'2026-01-03T00:00:00Z')", (i, f"item-{i:04}"))
    c.execute("COMMIT")
    c.close()
    write("settings.conf", "retention = 14\n")
    ids["C"] = repo.snapshot(paths(), "hourly")
    c = db()
    c.execute("UPDATE items SET status = 'cancelled' WHERE id % 10 = 3")
    c.close()
    ids["D"] = repo.snapshot(paths(), "hourly")
    forgot = repo.json("forget", "--keep-last", "2", "--keep-tag", "daily")
    repo.run("prune")
    script = os.path.join(work, "repair.toml")
    with open(script, "w") as f:
        f.write(REPAIR_SCRIPT.format(snap=ids["C"], live=os.path.join(SRC, "app.db")))
    repo.run("repair", script, "--apply", "--yes")
    audit = repo.json("audit")
    write("notes/c.txt", "written after the repair\n")
    before_e = objects(repo.path)
    ids["E"] = repo.snapshot(paths(), "hourly")
    new_in_e = sorted(objects(repo.path) - before_e)
    check = repo.run("--json", "check", "--read-data")
    if check.returncode != 0:
        sys.exit(f"check of the fresh repository failed: {check.stdout} {check.stderr}")
    return ids, forgot, audit, new_in_e


def objects(repo):
    out = set()
    for root, _, files in os.walk(repo):
        for f in files:
            out.add(os.path.relpath(os.path.join(root, f), repo))
    return out


def expected_snapshots(repo, work, ids):
    """Restores every snapshot; returns its entry for expected.json."""
    letters = {v: k for k, v in ids.items()}
    out = []
    for s in repo.json("snapshots"):
        dest = os.path.join(work, "restore-" + s["short_id"])
        files = restore_files(repo, s, dest)
        if "pre-repair" in s["tags"]:
            letter = "P"
        else:
            letter = letters.get(s["id"])
        if letter is None:
            sys.exit(f"snapshot {s['id']} is not one the story took")
        out.append(entry_of(s, letter, files))
    return out


def restore_files(repo, s, dest):
    """Restores snapshot (or point) entry `s` of `snapshots --json` under
    dest/; returns source path -> SHA-256 of each restored file, each
    checked against the manifest where it records one."""
    repo.run("restore", s["id"], dest + "/")
    files = {}
    for f in s["files"]:
        got = sha256_file(dest + f["path"])
        if f["sha256"] is not None and got != f["sha256"]:
            sys.exit(f"{f['path']} of {s['short_id']} restores to {got}, "
                     f"the manifest says {f['sha256']}")
        files[f["path"]] = got
    return files


def entry_of(s, story, files):
    return {
        "story": story,
        "id": s["id"],
        "time": s["time"],
        "tags": s["tags"],
        "paths": s["paths"],
        "files": files,
    }


def query_one(path, sql):
    """The first column of the first row of `sql` on the database at `path`,
    opened read-only."""
    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return c.execute(sql).fetchone()[0]
    finally:
        c.close()


def integrity(path):
    return query_one(path, "PRAGMA integrity_check")


# The timeline story: a database of accounts under snapback watch; each step
# is one transaction that changes one account (a distinct row per step, its
# note "step K"), spaced by three ticks so that each is its own point.
TIMELINE_ROWS = 2000
# Steps per run of the watcher. The first run gives a base manifest (before
# the steps) and a segment of 4 points; the second (a restart) a segment of
# the steps after it: 3 points over a new base manifest holding its first
# step (the binary that wrote v2/timeline), or 4 over the same base (a
# watcher that continues from its local capture state).
TIMELINE_RUNS = [4, 4]
WATCH_ARGS = ["--interval", "200ms", "--upload-interval", "60s", "--tag", "continuous"]


def timeline_db():
    return os.path.join(SRC, "live.db")


def steps_in(path):
    """How many of the story's steps the database image at `path` holds."""
    return query_one(path, "SELECT count(*) FROM acct WHERE note LIKE 'step %'")


def wait_for(what, cond, timeout=20.0):
    import time
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.05)


def watch_run(repo, first_step, steps, db_path):
    """Runs `snapback watch` on the database `db_path` while `steps` steps
    are written, then stops it with SIGTERM (it uploads its pending points
    as one segment on the way out)."""
    import signal
    import time

    def count(sub):
        d = os.path.join(repo.path, sub)
        return len(os.listdir(d)) if os.path.isdir(d) else 0

    def segments():
        return count("timeline")

    before = segments()
    manifests = count("snapshots")
    p = subprocess.Popen([repo.binary, "--repo", repo.path, "watch", db_path, *WATCH_ARGS],
                         env=repo.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if manifests == 0:
            # The first tick writes the base manifest; the steps come after.
            wait_for("the watcher's base manifest", lambda: count("snapshots") > manifests)
        else:
            # A restarted watcher takes nothing until the database changes;
            # its first change is a new base manifest (a WAL delta from the
            # newest point), the others points over it.
            time.sleep(1.5)
        time.sleep(0.6)
        c = sqlite3.connect(db_path, isolation_level=None)
        c.execute("PRAGMA busy_timeout = 10000")
        for k in range(first_step, first_step + steps):
            c.execute("UPDATE acct SET balance = balance + ?, note = ? WHERE id = ?",
                      (k * 100, f"step {k}", 10 * k + 1))
            time.sleep(0.6)
        c.close()
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    if p.returncode != 0:
        sys.exit(f"snapback watch exited {p.returncode}: {err}")
    if segments() != before + 1:
        sys.exit(f"the watcher's run wrote {segments() - before} segments, expected one: {err}")


def wal_db(path, schema, page_size=None):
    """A new WAL-mode database at `path` holding `schema`, in pages of
    `page_size` bytes (SQLite's default when None); returns a connection
    in autocommit mode."""
    c = sqlite3.connect(path, isolation_level=None)
    if page_size:
        c.execute(f"PRAGMA page_size = {page_size}")
    c.execute("PRAGMA journal_mode = WAL")
    c.execute(schema)
    return c


def timeline(binary, out, work):
    """A format-2 repository written by `snapback watch`: a base manifest
    and one segment per run of the watcher, each of several points."""
    repo = fresh(binary, out, "timeline", work)
    path = repo.path
    c = wal_db(timeline_db(), "CREATE TABLE acct(id INTEGER PRIMARY KEY, owner TEXT NOT NULL, "
               "balance INTEGER NOT NULL, note TEXT NOT NULL)")
    c.execute("BEGIN")
    for i in range(1, TIMELINE_ROWS + 1):
        c.execute("INSERT INTO acct VALUES (?, ?, 1000, 'opened')", (i, f"owner-{i:04}"))
    c.execute("COMMIT")
    c.close()
    out_bases, out_points = watched(repo, timeline_db(), work)
    return {
        "encrypted": False,
        "features": config_features(path),
        "check": {"exit_code": 0, "problems": []},
        "audit_entries": 0,
        "database": timeline_db(),
        "snapshots": out_bases,
        "points": out_points,
    }


def watched(repo, db_path, work):
    """Runs the watcher story on `db_path` (a table `acct` as the timeline
    story's): the runs of TIMELINE_RUNS, then `check --read-data`; checks
    the base manifests and the points it wrote, restoring each (a point by
    name and by `@TIME`); returns their entries for expected.json."""
    step = 1
    for steps in TIMELINE_RUNS:
        watch_run(repo, step, steps, db_path)
        step += steps
    check = repo.run("--json", "check", "--read-data", ok=False)
    if check.returncode != 0:
        sys.exit(f"check of {repo.path} failed: {check.stdout} {check.stderr}")
    path = repo.path
    listed = repo.json("snapshots", "--points")
    bases = [s for s in listed if "/" not in s["id"]]
    points = [s for s in listed if "/" in s["id"]]
    # A restarted watcher either writes a new base manifest or continues
    # from its local capture state over the previous one; either way each
    # run is one segment.
    if not bases:
        sys.exit("the watcher wrote no base manifest")
    segs = sorted(os.listdir(os.path.join(path, "timeline")))
    by_seg = {}
    for s in points:
        by_seg.setdefault(s["id"].split("/")[0], []).append(s)
    if len(by_seg) != len(TIMELINE_RUNS) or len(points) < sum(TIMELINE_RUNS) - len(bases) + 1:
        sys.exit(f"expected a segment per run holding the steps as points, got "
                 f"{ {k: len(v) for k, v in by_seg.items()} } and {len(bases)} base manifest(s)")
    out_bases = []
    for n, base in enumerate(bases):
        dest = os.path.join(work, f"restore-base{n + 1}")
        files = restore_files(repo, base, dest)
        held = steps_in(dest + db_path)
        if n == 0 and held != 0:
            sys.exit(f"the first base manifest holds {held} steps")
        e = entry_of(base, f"base{n + 1}", files)
        e["steps"] = held
        out_bases.append(e)
    out_points = []
    for n, s in enumerate(points):
        dest = os.path.join(work, "restore-" + s["id"].replace("/", "-"))
        files = restore_files(repo, s, dest)
        at = os.path.join(work, "at-" + s["id"].replace("/", "-"))
        repo.run("restore", "@" + s["time"], at + "/")
        for f, sha in files.items():
            if sha256_file(at + f) != sha:
                sys.exit(f"restore @{s['time']} is not point {s['id']}")
            if integrity(dest + f) != "ok":
                sys.exit(f"point {s['id']}: {f} fails the integrity check")
        held = steps_in(dest + db_path)
        # Each step is its own point (or in a base manifest): every point
        # holds more steps than the one before it, the last one all.
        if out_points and held <= out_points[-1]["steps"]:
            sys.exit(f"point {s['id']} holds {held} steps, the one before it "
                     f"{out_points[-1]['steps']}")
        if n == len(points) - 1 and held != sum(TIMELINE_RUNS):
            sys.exit(f"the newest point holds {held} steps, not all {sum(TIMELINE_RUNS)}")
        seg_short, index = s["id"].split("/")
        segment = [x for x in segs if x.startswith(seg_short)]
        if len(segment) != 1:
            sys.exit(f"point {s['id']}: no single segment {seg_short}: {segs}")
        out_points.append({
            "name": s["id"],
            "segment": segment[0],
            "index": int(index),
            "time": s["time"],
            "files": files,
            "steps": held,
        })
    return out_bases, out_points


def fresh(binary, out, name, work, passphrase=None):
    """A new repository OUT/NAME (encrypted with `passphrase` when given),
    an empty source directory and the scratch directory `work`."""
    os.makedirs(work)
    repo = Repo(binary, os.path.join(out, name), passphrase)
    repo.run(*(["init", "--encrypt", *CHEAP_KDF] if passphrase else ["init"]))
    shutil.rmtree(SRC, ignore_errors=True)
    os.makedirs(SRC)
    return repo


def config_features(path):
    with open(os.path.join(path, "config")) as f:
        return json.load(f).get("features", [])


# The dictionary story: a database of orders in 1 KiB pages (more than the
# 512 pages a database needs to get a dictionary, in a few hundred KiB).
DICT_ROWS = 8000


def dicts(binary, out, work):
    """A format-2 repository whose database pages are compressed with a
    zstd dictionary: snapshot A trains it (a full scan), snapshot B (a WAL
    delta after an update of 50 rows) reuses it."""
    repo = fresh(binary, out, "dicts", work)
    path = repo.path
    db_path = os.path.join(SRC, "orders.db")
    c = wal_db(db_path, "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT NOT NULL, "
               "status TEXT NOT NULL, note TEXT NOT NULL)", page_size=1024)
    c.execute("BEGIN")
    for i in range(DICT_ROWS):
        c.execute("INSERT INTO orders VALUES (?, ?, ?, ?)",
                  (i, f"customer-{i % 97:03}", ["open", "paid", "shipped"][i % 3],
                   f"order {i} for customer {i % 97} placed via web"))
    c.execute("COMMIT")
    # The connection stays open, as an application's does, so that the WAL
    # is not deleted between the snapshots and B can be a WAL delta.
    ids = {"A": repo.snapshot([db_path], "daily")}
    c.execute("UPDATE orders SET status = 'refunded' WHERE id % 40 = 0 AND id < 2000")
    ids["B"] = repo.snapshot([db_path], "hourly")
    c.close()
    check = repo.run("--json", "check", "--read-data", ok=False)
    if check.returncode != 0:
        sys.exit(f"check of the dictionary repository failed: {check.stdout} {check.stderr}")
    names = sorted(os.listdir(os.path.join(path, "dicts")))
    if len(names) != 1:
        sys.exit(f"expected one dictionary, got {names}")
    letters = {v: k for k, v in ids.items()}
    snaps = []
    for s in repo.json("snapshots"):
        sq = s["files"][0]["sqlite"]
        if (sq.get("dict") or {}).get("id") != names[0]:
            sys.exit(f"snapshot {s['short_id']} does not name dictionary {names[0]}: {sq}")
        letter = letters[s["id"]]
        method = sq["capture"]["method"]
        if method != {"A": "full-scan", "B": "wal-delta"}[letter]:
            sys.exit(f"snapshot {letter} was captured by {method}")
        dest = os.path.join(work, "restore-" + s["short_id"])
        snaps.append(entry_of(s, letter, restore_files(repo, s, dest)))
    if "zstd-dict" not in config_features(path):
        sys.exit("the config does not name the feature zstd-dict")
    return {
        "encrypted": False,
        "features": config_features(path),
        "check": {"exit_code": 0, "problems": []},
        "audit_entries": 0,
        "database": db_path,
        "dicts": names,
        "snapshots": snaps,
    }


# The encrypted watcher story: the timeline story's runs on a database big
# enough for a dictionary (1 KiB pages, more than 512 of them), in an
# encrypted repository: segments and dictionaries, both sealed.
SEALED_ROWS = 8000


def encrypted_timeline(binary, out, work):
    """A format-2 encrypted repository written by `snapback watch`: base
    manifests whose pages are compressed with a zstd dictionary, and one
    segment per run of the watcher, each of several points."""
    repo = fresh(binary, out, "encrypted-timeline", work, PASSPHRASE)
    path = repo.path
    db_path = os.path.join(SRC, "ledger.db")
    c = wal_db(db_path, "CREATE TABLE acct(id INTEGER PRIMARY KEY, owner TEXT NOT NULL, "
               "balance INTEGER NOT NULL, note TEXT NOT NULL, memo TEXT NOT NULL)",
               page_size=1024)
    c.execute("BEGIN")
    for i in range(1, SEALED_ROWS + 1):
        c.execute("INSERT INTO acct VALUES (?, ?, 1000, 'opened', ?)",
                  (i, f"owner-{i % 211:03}", f"ledger account {i} of branch {i % 13} opened by web"))
    c.execute("COMMIT")
    c.close()
    out_bases, out_points = watched(repo, db_path, work)
    names = sorted(os.listdir(os.path.join(path, "dicts")))
    if not names:
        sys.exit("the encrypted watcher story stored no dictionary")
    for s in repo.json("snapshots"):
        d = (s["files"][0]["sqlite"].get("dict") or {}).get("id")
        if d not in names:
            sys.exit(f"base manifest {s['short_id']} names no stored dictionary: {d}")
    for f in ("zstd-dict", "timeline"):
        if f not in config_features(path):
            sys.exit(f"the config does not name the feature {f}")
    return {
        "encrypted": True,
        "features": config_features(path),
        "check": {"exit_code": 0, "problems": []},
        "audit_entries": 0,
        "database": db_path,
        "dicts": names,
        "snapshots": out_bases,
        "points": out_points,
    }


def has_patch(repo_path):
    """Whether a manifest of an unencrypted repository refers to a chunk-list
    patch (the fixtures must cover incremental chunk lists)."""
    for name in os.listdir(os.path.join(repo_path, "snapshots")):
        with open(os.path.join(repo_path, "snapshots", name)) as f:
            m = json.load(f)
        if any(f["chunks"]["patch"] for f in m["files"]):
            return True
    return False


def make(binary, out, name, passphrase, work):
    os.makedirs(work)
    path = os.path.join(out, name)
    repo = Repo(binary, path, passphrase)
    init = ["init", "--encrypt", *CHEAP_KDF] if passphrase else ["init"]
    repo.run(*init)
    ids, forgot, audit, new_in_e = story(repo, work)
    snaps = expected_snapshots(repo, work, ids)
    if sorted(s["story"] for s in snaps) != ["A", "C", "D", "E", "P"]:
        sys.exit(f"the story left {[s['story'] for s in snaps]}, forget said {forgot}")
    if len(audit) != 1:
        sys.exit(f"expected one audit entry, got {audit}")
    entry = {
        "encrypted": passphrase is not None,
        "check": {"exit_code": 0, "problems": []},
        "audit_entries": len(audit),
        "snapshots": snaps,
    }
    return repo, entry, new_in_e


def damage(binary, out, plain_entry, new_in_e, work):
    """Copies plain/ to damaged/ with one byte flipped in the pack that
    snapshot E wrote and the smallest other pack deleted; records what
    `check --read-data` reports and which snapshots still restore."""
    os.makedirs(work)
    src = os.path.join(out, "plain")
    dst = os.path.join(out, "damaged")
    shutil.copytree(src, dst)
    flipped = [o for o in new_in_e if o.startswith("data/")]
    if len(flipped) != 1:
        sys.exit(f"snapshot E wrote {flipped}, expected one pack")
    flipped = flipped[0]
    with open(os.path.join(dst, flipped), "r+b") as f:
        data = f.read()
        at = len(data) * 2 // 3
        f.seek(at)
        f.write(bytes([data[at] ^ 0x55]))
    packs = sorted(
        (os.path.getsize(os.path.join(dst, o)), o)
        for o in objects(dst)
        if o.startswith("data/") and o != flipped
    )
    deleted = packs[0][1]
    os.remove(os.path.join(dst, deleted))
    repo = Repo(binary, dst)
    p = repo.run("--json", "check", "--read-data", ok=False)
    if p.returncode != 3:
        sys.exit(f"check of the damaged copy exited {p.returncode}: {p.stdout} {p.stderr}")
    report = json.loads(p.stdout)
    problems = [
        {"object": x["object"], "affects": sorted({a["snapshot"] for a in x.get("affects", [])})}
        for x in report["problems"]
    ]
    objs = {x["object"] for x in problems}
    for o in (flipped, deleted):
        if o not in objs:
            sys.exit(f"check of the damaged copy does not name {o}: {report}")
    affected = set()
    for x in problems:
        affected.update(x["affects"])
    restores = {}
    for s in plain_entry["snapshots"]:
        dest = os.path.join(work, "restore-" + s["id"][:8])
        r = repo.run("restore", s["id"], dest + "/", ok=False)
        restores[s["id"]] = r.returncode == 0
        if r.returncode == 0:
            for path, sha in s["files"].items():
                if sha256_file(dest + path) != sha:
                    sys.exit(f"the damaged copy restored a wrong {path} of {s['id'][:8]}")
        if restores[s["id"]] == (s["id"][:8] in affected):
            sys.exit(f"restore of {s['id'][:8]} from the damaged copy "
                     f"{'succeeded' if restores[s['id']] else 'failed'}; check said {problems}")
    if all(restores.values()) or not any(restores.values()):
        sys.exit(f"the damage should leave some snapshots whole and break others: {restores}")
    return {
        "copy_of": "plain",
        "encrypted": False,
        "damage": [
            {"object": flipped, "how": f"byte {at} xor 0x55"},
            {"object": deleted, "how": "deleted"},
        ],
        "check": {"exit_code": 3, "problems": problems},
        "restores": restores,
        "audit_entries": plain_entry["audit_entries"],
        "snapshots": plain_entry["snapshots"],
    }


# The repositories of format 2 and later, each its own story.
FORMAT2 = {"timeline": timeline, "dicts": dicts, "encrypted-timeline": encrypted_timeline}


def main():
    global XDG_ROOT
    ap = argparse.ArgumentParser()
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    ap.add_argument("--bin", default=os.path.join(target, "debug", "snapback"))
    ap.add_argument("--out")
    ap.add_argument("--only", choices=sorted(FORMAT2))
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    with tempfile.TemporaryDirectory() as work:
        XDG_ROOT = work
        probe = Repo(binary, os.path.join(work, "probe"))
        probe.run("init")
        with open(os.path.join(work, "probe", "config")) as f:
            fmt = json.load(f)["format_version"]
        out = args.out or os.path.join("fixtures", "repos", f"v{fmt}")
        if args.only:
            if fmt < 2:
                sys.exit(f"{args.only} needs format version 2; this binary writes {fmt}")
            if os.path.exists(os.path.join(out, args.only)):
                sys.exit(f"{out}/{args.only} exists: fixtures are never regenerated "
                         "(docs/format.md, Compatibility fixtures)")
            with open(os.path.join(out, "expected.json")) as f:
                expected = json.load(f)
            expected["repositories"][args.only] = FORMAT2[args.only](
                binary, out, os.path.join(work, args.only))
            expected.setdefault("added", {})[args.only] = {
                "written_by": version, "written_by_commit": commit}
        else:
            if os.path.exists(out):
                sys.exit(f"{out} exists: fixtures of a format version are never regenerated "
                         "(docs/format.md, Compatibility fixtures)")
            os.makedirs(out)
            repos = {}
            plain, repos["plain"], new_in_e = make(binary, out, "plain", None,
                                                   os.path.join(work, "plain"))
            if not has_patch(plain.path):
                sys.exit("no snapshot of plain/ uses a chunk-list patch")
            _, repos["encrypted"], _ = make(binary, out, "encrypted", PASSPHRASE,
                                            os.path.join(work, "encrypted"))
            repos["damaged"] = damage(binary, out, repos["plain"], new_in_e,
                                      os.path.join(work, "damaged"))
            if fmt >= 2:
                for name, story_of in FORMAT2.items():
                    repos[name] = story_of(binary, out, os.path.join(work, name))
            expected = {
                "format_version": fmt,
                "written_by": version,
                "written_by_commit": commit,
                "passphrase": PASSPHRASE,
                "source_root": SRC,
                "repositories": repos,
            }
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")
    shutil.rmtree(SRC, ignore_errors=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
