//! Test harness: a scratch directory with a plan, and the real `lifeboat` binary run in it.
#![allow(dead_code)]
pub mod etcd;
pub mod moto;
pub mod pair;
pub mod pg;
pub mod sites;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Lab {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A `lifeboat serve` (or any child) killed and reaped however the test ends, a failed
/// assertion included.
pub struct Daemon(pub std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Daemon {
    /// SIGKILL, and gone (its lock released) before this returns.
    pub fn kill_now(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lifeboat"))
}

pub const KEY: &str = "correct horse battery staple";

impl Lab {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("test.key"), format!("{KEY}\n")).unwrap();
        Lab { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        let p = self.p(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    pub fn plan(&self, yaml: &str) {
        self.write("lifeboat.yaml", yaml);
    }
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .current_dir(self.path())
            .env("LIFEBOAT_PROGRESS", "0")
            .env("LIFEBOAT_ACTOR", "test")
            .env_remove("LIFEBOAT_PLAN")
            .env_remove("LIFEBOAT_STATE_DIR");
        c
    }
    pub fn run(&self, args: &[&str]) -> Run {
        self.cmd(args).output().unwrap().into()
    }
    /// Run and insist on success.
    pub fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(r.code, 0, "lifeboat {args:?} failed:\n{}", r.all());
        r
    }
    /// `lifeboat serve` in the lab, its stderr into `log`, with `env` set.
    pub fn serve(&self, log: &str, env: &[(&str, &str)]) -> Daemon {
        let mut c = Command::new(bin());
        c.arg("serve")
            .current_dir(self.path())
            .env("LIFEBOAT_PROGRESS", "0")
            .env_remove("LIFEBOAT_PLAN")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(self.p(log)).unwrap());
        for (k, v) in env {
            c.env(k, v);
        }
        Daemon(c.spawn().unwrap())
    }
    pub fn snapshot_count(&self, repo: &str) -> usize {
        let r = self.ok(&["--json", "snapshots", "--repo", repo]);
        r.json().as_array().unwrap().len()
    }
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.ok(&["--json", "audit", "list"])
            .json()
            .as_array()
            .unwrap()
            .clone()
    }
}

/// A plan with one paths service (`data/`) and one command service, one local repository.
pub fn basic_plan(command: &str) -> String {
    format!(
        r#"name: t
tiers:
  std: {{ rpo: 1h, rto: 4h }}
services:
  files: {{ kind: paths, tier: std, paths: [data] }}
  dump: {{ kind: command, tier: std, command: "{command}", filename: dump.txt }}
repositories:
  main: {{ url: repo, key_file: test.key }}
backups:
  files: {{ service: files, retention: {{ last: 2 }} }}
  dump: {{ service: dump }}
"#
    )
}

/// Deterministic pseudo-random bytes.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sample data: text, random, nested dirs, modes and mtimes set.
pub fn make_data(lab: &Lab) {
    use std::os::unix::fs::PermissionsExt;
    for i in 0..20 {
        lab.write(
            &format!("data/text/f{i}.txt"),
            format!("line {i}\n").repeat(200),
        );
    }
    lab.write("data/bin/random.bin", noise(2 << 20, 7));
    lab.write("data/empty", "");
    let script = lab.p("data/bin/run.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o750)).unwrap();
    let secret = lab.p("data/text/secret.conf");
    std::fs::write(&secret, "password=x\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    let f = std::fs::File::options()
        .write(true)
        .open(lab.p("data/text/f3.txt"))
        .unwrap();
    f.set_modified(old).unwrap();
}

/// Compare two trees: content, mode and mtime of every file.
pub fn assert_same_tree(a: &Path, b: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let mut n = 0;
    for entry in std::fs::read_dir(a).unwrap() {
        let entry = entry.unwrap();
        let other = b.join(entry.file_name());
        let ma = entry.metadata().unwrap();
        let mb =
            std::fs::metadata(&other).unwrap_or_else(|_| panic!("{} missing", other.display()));
        assert_eq!(ma.mode(), mb.mode(), "mode of {}", other.display());
        if ma.is_dir() {
            n += assert_same_tree(&entry.path(), &other);
        } else {
            assert_eq!(ma.mtime(), mb.mtime(), "mtime of {}", other.display());
            assert!(
                std::fs::read(entry.path()).unwrap() == std::fs::read(&other).unwrap(),
                "content of {} differs",
                other.display()
            );
            n += 1;
        }
    }
    n
}

/// Where `lifeboat restore` puts a backed-up absolute path inside a target directory.
pub fn restored(target: &Path, original: &Path) -> PathBuf {
    target.join(original.strip_prefix("/").unwrap())
}

/// Flip one bit in the middle of the largest pack of a local repository (data damage).
pub fn flip_largest_pack(repo: &Path) {
    let mut packs = Vec::new();
    for d in std::fs::read_dir(repo.join("data")).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            let f = f.unwrap();
            packs.push((f.metadata().unwrap().len(), f.path()));
        }
    }
    packs.sort();
    let (len, pack) = packs.last().unwrap().clone();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[(len / 2) as usize] ^= 0x01;
    std::fs::write(&pack, bytes).unwrap();
}

/// A free TCP port on loopback.
pub use etcd::free_port;

/// The real `restic` (Debian package) pointed at the lab's local repository `repo`.
pub fn restic(lab: &Lab) -> Command {
    let mut c = Command::new("restic");
    c.arg("--repo")
        .arg(lab.p("repo"))
        .arg("--password-file")
        .arg(lab.p("test.key"))
        .arg("--no-cache");
    c
}

/// A lab with `basic_plan(command)`, sample data and an initialised repository.
pub fn ready_lab(command: &str) -> Lab {
    let lab = Lab::new();
    lab.plan(&basic_plan(command));
    make_data(&lab);
    lab.ok(&["repo", "init"]);
    lab
}

/// A webhook receiver on a free port: every request body, answered 200.
pub fn webhook_receiver() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut r = BufReader::new(c);
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            let _ = r.read_exact(&mut body);
            g.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            let _ = r
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (port, got)
}

/// Run `cmd` to its end, but at most `secs` seconds: `Err(())` (the child killed) when it is
/// still running then. stdout and stderr are captured.
pub fn run_bounded(mut cmd: Command, secs: u64) -> Result<std::process::Output, ()> {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    Ok(child.wait_with_output().unwrap())
}

/// One HTTP/1.1 request on loopback (Connection: close): the status and the body. `token` is
/// sent as a bearer token; `body` as JSON.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(30)));
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, rest) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (code, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `http`, the body parsed as JSON (Null when it is not).
pub fn api(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let (code, b) = http(port, method, path, token, body);
    (code, serde_json::from_str(&b).unwrap_or_default())
}

/// A tmpfs mounted for a test (a small disk that fills up), unmounted when dropped.
pub struct Tmpfs(pub PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Mount a tmpfs of `size` (e.g. `1536k`) on `dir` (created), open to every user; `None`, said
/// loudly, where this process may not mount (not root, or a container without CAP_SYS_ADMIN).
#[allow(dead_code)]
pub fn tmpfs(dir: &Path, size: &str) -> Option<Tmpfs> {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: mounting a small tmpfs needs root (CI runs as root)");
        return None;
    }
    std::fs::create_dir_all(dir).unwrap();
    let mount = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0777"),
            "tmpfs",
        ])
        .arg(dir)
        .output()
        .unwrap();
    if !mount.status.success() {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here: {}",
            String::from_utf8_lossy(&mount.stderr)
        );
        return None;
    }
    Some(Tmpfs(dir.to_path_buf()))
}

/// Ask the DNS responder on `port` for `name`'s A record with `dig` over UDP (`+notcp`) or TCP
/// (`+tcp`): the response status, the answer (the last field of the first answer line) and
/// dig's whole output.
pub fn dig(port: u16, name: &str, transport: &str) -> (String, Option<String>, String) {
    let o = std::process::Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            name,
            "A",
            "+tries=1",
            "+time=2",
            transport,
        ])
        .output()
        .expect("dig (bind9-dnsutils) is installed by scripts/install-deps.sh");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let status = out
        .split("status: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or("?")
        .to_string();
    let answer = out
        .split(";; ANSWER SECTION:")
        .nth(1)
        .and_then(|r| r.lines().nth(1))
        .and_then(|l| l.split_whitespace().last())
        .map(str::to_string);
    (status, answer, out)
}
