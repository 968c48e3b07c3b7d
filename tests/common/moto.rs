//! moto's S3-protocol server on loopback, with a bucket `lifeboat-test`.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Stop or continue the server (SIGSTOP: it accepts connections and never answers).
    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

fn http(port: u16, request: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    if s.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// moto's server on a free port, with `env`, once its port accepts.
fn spawn(env: &[(&str, &str)]) -> Moto {
    let port = free_port();
    let child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server is installed (`pip install 'moto[server]'`; .ci/run installs it)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto { child, port }
}

pub fn moto() -> Moto {
    let m = spawn(&[]);
    let port = m.port;
    let deadline = Instant::now() + Duration::from_secs(30);
    // The port accepts before the app answers: retry until the bucket is created.
    let mut created = String::new();
    while Instant::now() < deadline {
        created = http(port, "PUT /lifeboat-test HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        if created.starts_with("HTTP/1.1 200") {
            return m;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("bucket creation failed: {created}");
}

/// A moto server that checks signatures (as S3 does): a user with full access is made through
/// its IAM API before authentication starts, and a bucket with that user's keys. Returns the
/// server and the user's access key id and secret.
pub fn moto_with_auth(bucket: &str) -> (Moto, String, String) {
    // The three IAM calls below are the only unauthenticated ones.
    let m = spawn(&[("INITIAL_NO_AUTH_ACTION_COUNT", "3")]);
    let port = m.port;
    let script = format!(
        r#"
import boto3, json, time
kw = dict(endpoint_url="http://127.0.0.1:{port}", region_name="us-east-1")
iam = boto3.client("iam", aws_access_key_id="setup", aws_secret_access_key="setup", **kw)
for _ in range(50):
    try:
        iam.create_user(UserName="replicator")
        break
    except Exception:
        time.sleep(0.2)
k = iam.create_access_key(UserName="replicator")["AccessKey"]
iam.put_user_policy(UserName="replicator", PolicyName="all", PolicyDocument=json.dumps(
    {{"Version": "2012-10-17", "Statement": [{{"Effect": "Allow", "Action": "*", "Resource": "*"}}]}}))
s3 = boto3.client("s3", aws_access_key_id=k["AccessKeyId"], aws_secret_access_key=k["SecretAccessKey"], **kw)
s3.create_bucket(Bucket="{bucket}")
print(k["AccessKeyId"], k["SecretAccessKey"])
"#
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "moto IAM setup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut it = text.split_whitespace();
    let (id, secret) = (
        it.next().unwrap().to_string(),
        it.next().unwrap().to_string(),
    );
    (m, id, secret)
}
