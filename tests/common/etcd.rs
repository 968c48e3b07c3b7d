//! A real etcd (Debian's `etcd-server`) on loopback for tests: one member, or a cluster of
//! several. Shared by the agent tests and the etcd crate's own tests (which include this file
//! by path), so it needs nothing else from `common`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Etcd {
    pub child: Child,
    /// `127.0.0.1:PORT`, the client address.
    pub client: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Etcd {
    /// Stop it as a crash would (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Block until its `/health` answers healthy (a quorum elected a leader), within 20 s.
    pub fn await_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = std::net::TcpStream::connect(&self.client)
                .and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(2)))?;
                    s.write_all(b"GET /health HTTP/1.0\r\n\r\n")?;
                    let mut t = String::new();
                    s.read_to_string(&mut t)?;
                    Ok(t)
                })
                .is_ok_and(|t| t.contains("\"health\":\"true\""));
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd at {} did not come up",
                self.client
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One etcd member `name` on loopback, in a cluster of `initial` (`name=peer-url,…`).
pub fn member(name: &str, client_port: u16, peer_port: u16, initial: &str) -> Etcd {
    let dir = tempfile::tempdir().unwrap();
    let client = format!("127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let child = Command::new("etcd")
        .args(["--name", name, "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &format!("http://{client}"),
            "--advertise-client-urls",
            &format!("http://{client}"),
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            initial,
            "--initial-cluster-state",
            "new",
            "--heartbeat-interval",
            "100",
            "--election-timeout",
            "500",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd (Debian etcd-server) is installed by scripts/install-deps.sh");
    Etcd {
        child,
        client,
        _dir: dir,
    }
}

/// A one-member etcd.
pub fn etcd() -> Etcd {
    let (c, p) = (free_port(), free_port());
    member("one", c, p, &format!("one=http://127.0.0.1:{p}"))
}

/// A cluster of one member per name; also the client addresses.
pub fn cluster(names: &[&str]) -> (Vec<Etcd>, Vec<String>) {
    let ports: Vec<(u16, u16)> = names.iter().map(|_| (free_port(), free_port())).collect();
    let initial = names
        .iter()
        .zip(&ports)
        .map(|(n, (_, p))| format!("{n}=http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let members: Vec<Etcd> = names
        .iter()
        .zip(&ports)
        .map(|(n, (c, p))| member(n, *c, *p, &initial))
        .collect();
    let clients = members.iter().map(|m| m.client.clone()).collect();
    (members, clients)
}
