//! Running the real `snapback` binary: a scratch directory with a
//! repository ([`Env`]), commands that never see the settings of the test
//! process, and runs bounded in time ([`Out`]).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::bin;

/// The variables that carry a passphrase to `snapback`.
pub const PASSWORD_VARS: [&str; 4] = [
    "SNAPBACK_PASSWORD",
    "SNAPBACK_PASSWORD_FILE",
    "SNAPBACK_NEW_PASSWORD",
    "SNAPBACK_PASSWORD_COMMAND",
];

/// Variables of the test process that would change what `snapback` does
/// (which repository and config it uses, where a passphrase comes from,
/// what it logs): never passed on. A test sets what it needs explicitly.
pub const ISOLATED_VARS: [&str; 9] = [
    "SNAPBACK_REPO",
    "SNAPBACK_PASSWORD",
    "SNAPBACK_PASSWORD_FILE",
    "SNAPBACK_NEW_PASSWORD",
    "SNAPBACK_PASSWORD_COMMAND",
    "SNAPBACK_CONFIG",
    "SNAPBACK_LOG",
    "RUST_LOG",
    "NO_COLOR",
];

/// The cheapest setting of the passphrase KDF, to keep the tests fast.
pub const CHEAP_KDF: [&str; 4] = ["--kdf-memory", "8", "--kdf-iterations", "1"];

/// `init` of an encrypted repository, with the cheapest KDF.
pub fn init_encrypted() -> Vec<&'static str> {
    [&["init", "--encrypt"][..], &CHEAP_KDF].concat()
}

/// `snapback --repo REPO`, with none of [`ISOLATED_VARS`] and no config of
/// the user running the tests (`XDG_CONFIG_HOME` points beside the
/// repository, where nothing is); capture state (what WAL-delta snapshots
/// start from) goes beside the repository too, not to ~/.local/state.
pub fn command(repo: &Path) -> Command {
    let mut c = Command::new(bin());
    c.arg("--repo").arg(repo);
    for k in ISOLATED_VARS {
        c.env_remove(k);
    }
    c.env("XDG_CONFIG_HOME", repo.with_file_name("xdg"));
    c.env("XDG_STATE_HOME", repo.with_file_name("xdg-state"));
    c
}

/// A scratch directory with a repository in it (`<dir>/repo`).
pub struct Env {
    pub dir: tempfile::TempDir,
    /// Environment variables set for every command (e.g. the passphrase of
    /// an encrypted repository). Those of the test process itself in
    /// [`ISOLATED_VARS`] are never passed on.
    pub vars: Vec<(String, String)>,
}

impl Default for Env {
    fn default() -> Env {
        Env::new()
    }
}

impl Env {
    /// A scratch directory with a new plain repository.
    pub fn new() -> Env {
        let e = Env::bare();
        e.ok(&["init"]);
        e
    }

    /// A scratch directory without a repository.
    pub fn bare() -> Env {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
            vars: vec![],
        }
    }

    /// A scratch directory with an encrypted repository whose passphrase
    /// is `pass` (given to every command in SNAPBACK_PASSWORD). The KDF is
    /// at its cheapest setting, to keep the tests fast.
    pub fn encrypted(pass: &str) -> Env {
        let mut e = Env::bare();
        e.vars.push(("SNAPBACK_PASSWORD".into(), pass.into()));
        e.ok(&init_encrypted());
        e
    }

    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `snapback --repo <repo> ARGS` with [`Env::vars`] set.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = command(&self.repo());
        c.args(args).envs(self.vars.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run snapback")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "snapback {args:?} failed ({:?}): {}",
            out.status,
            stderr(&out)
        );
        stdout(&out)
    }

    /// Runs and asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "snapback {args:?} should fail but succeeded: {}",
            stdout(&out)
        );
        stderr(&out)
    }

    /// Runs, killing the process after `limit` (a failure of the test).
    pub fn run_bounded(&self, args: &[&str], limit: Duration) -> Out {
        run_bounded(self.cmd(args), limit)
    }

    /// Snapshots `path`; returns the snapshot id.
    pub fn snapshot(&self, path: &Path) -> String {
        self.ok(&["snapshot", path.to_str().expect("utf8")])
            .trim()
            .to_string()
    }

    /// `--json snapshots`, parsed.
    pub fn snapshots_json(&self) -> Vec<serde_json::Value> {
        let s = self.ok(&["--json", "snapshots"]);
        serde_json::from_str::<serde_json::Value>(&s)
            .expect("json")
            .as_array()
            .expect("array")
            .clone()
    }
}

/// The result of a bounded run, as text, with its exit code (-1 when a
/// signal ended it).
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Out {
    /// Asserts exit code 0.
    pub fn ok(&self) -> &Out {
        assert_eq!(self.code, 0, "{self:?}");
        self
    }
}

/// A test's child process (a watcher, a writer, a server), killed
/// (SIGKILL) and reaped when the guard is dropped, so that a test that
/// fails or panics half-way leaves no orphan behind: an orphan would keep
/// the descriptors it inherited (a build lock among them) and the files
/// it holds. It derefs to the [`Child`]; [`KillOnDrop::into_inner`]
/// disarms it.
#[derive(Debug)]
pub struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    pub fn new(child: Child) -> KillOnDrop {
        KillOnDrop(Some(child))
    }

    /// The child, no longer killed on drop.
    pub fn into_inner(mut self) -> Child {
        self.0.take().expect("the child is there until into_inner")
    }

    /// Sends the child a signal by name (`TERM`, `KILL`, `STOP`, `CONT`).
    pub fn signal(&self, sig: &str) {
        signal(self.id(), sig);
    }

    /// Sends `sig`, then waits for the child's output (see [`wait_out`]:
    /// past `limit` it is killed and the test fails).
    pub fn stop_with(self, sig: &str, limit: Duration) -> Out {
        self.signal(sig);
        wait_out(self, limit)
    }
}

/// Sends process `pid` a signal by name (`kill -SIG PID`); the test fails
/// when it cannot be sent.
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(st.success(), "kill -{sig} {pid}");
}

impl From<Child> for KillOnDrop {
    fn from(child: Child) -> KillOnDrop {
        KillOnDrop::new(child)
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0
            .as_ref()
            .expect("the child is there until into_inner")
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        self.0
            .as_mut()
            .expect("the child is there until into_inner")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// Starts `cmd` with stdin closed and stdout and stderr piped; the child
/// is killed when the returned guard is dropped.
pub fn spawn(mut cmd: Command) -> KillOnDrop {
    KillOnDrop::new(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program())),
    )
}

/// Waits for `child`, reading its output; kills it and fails the test when
/// it runs longer than `limit` (or when this panics: the guard kills it).
pub fn wait_out(child: impl Into<KillOnDrop>, limit: Duration) -> Out {
    let mut child = child.into();
    let start = Instant::now();
    let mut so = child.stdout.take().expect("stdout piped");
    let mut se = child.stderr.take().expect("stderr piped");
    let t1 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t2 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the command took longer than {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Out {
        code: status.code().unwrap_or(-1),
        stdout: t1.join().expect("stdout thread"),
        stderr: t2.join().expect("stderr thread"),
    }
}

/// [`spawn`] then [`wait_out`].
pub fn run_bounded(cmd: Command, limit: Duration) -> Out {
    wait_out(spawn(cmd), limit)
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Flips one byte in the middle of the largest pack of a local repository;
/// returns the pack's path.
pub fn flip_byte_in_largest_pack(repo: &Path) -> PathBuf {
    let mut packs = vec![];
    for d in std::fs::read_dir(repo.join("data")).expect("data dir") {
        for f in std::fs::read_dir(d.expect("ent").path()).expect("pack dir") {
            let p = f.expect("ent").path();
            let len = std::fs::metadata(&p).expect("stat").len();
            packs.push((len, p));
        }
    }
    packs.sort();
    let (len, p) = packs.pop().expect("a pack");
    let mut b = std::fs::read(&p).expect("read");
    let i = (len as usize) * 2 / 3;
    b[i] ^= 0x55;
    std::fs::write(&p, b).expect("write");
    p
}

/// This host's name as `hostname` prints it, trimmed (what snapback writes
/// into the locks it takes here).
pub fn hostname() -> String {
    let out = Command::new("hostname").output().expect("hostname");
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string()
}
