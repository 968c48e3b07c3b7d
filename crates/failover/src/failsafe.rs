//! Fail-safe mode (`coordinator.failsafe`): when etcd cannot be reached, the leader keeps its
//! server writable only while the agent of every other member answers its call and promises,
//! for one lease's time from when it answered, not to campaign — Patroni's `failsafe_mode`, not
//! a quorum. The leader counts its extension from when it *sent* the round (`ttl − margin`),
//! each member its promise from when it answered (`ttl`), so the leader's writable time always
//! ends before any member may take over. A site's traffic endpoint asks the same way whether
//! the leader it routes to still holds, and for how long.
//!
//! One request and one answer per TCP connection, each a JSON line; both carry an HMAC-SHA256
//! over their fields made with the key every agent shares (`key_file`), the answer also the
//! request's random nonce, so an answer cannot be forged or replayed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use lifeboat_core::plan::FailsafeSpec;
use lifeboat_core::{Error, Kind};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::log::log;

type Sha = Hmac<sha2::Sha256>;

/// The plan's fail-safe section, its key read.
#[derive(Clone)]
pub struct Failsafe {
    pub listen: BTreeMap<String, SocketAddr>,
    key: Arc<Vec<u8>>,
}

impl std::fmt::Debug for Failsafe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failsafe")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl Failsafe {
    /// Read `spec`'s key (relative to `base`). Errors name the file, never its contents.
    pub fn load(spec: &FailsafeSpec, base: &Path) -> Result<Failsafe, Error> {
        let path = base.join(&spec.key_file);
        let key = std::fs::read(&path).map_err(|e| {
            Error::new(
                Kind::Key,
                format!("cannot read the fail-safe key {}: {e}", path.display()),
            )
            .hint("create it on every member's host (the same secret: e.g. `head -c 32 /dev/urandom | base64 > KEYFILE; chmod 600 KEYFILE`) or fix coordinator.failsafe.key_file")
        })?;
        let key: Vec<u8> = key.trim_ascii().to_vec();
        if key.len() < 16 {
            return Err(Error::new(
                Kind::Key,
                format!(
                    "the fail-safe key {} holds {} bytes: use at least 16",
                    path.display(),
                    key.len()
                ),
            )
            .hint("e.g. `head -c 32 /dev/urandom | base64 > KEYFILE`, the same file on every member's host"));
        }
        let mut listen = BTreeMap::new();
        for (site, a) in &spec.listen {
            let addr = a.parse().map_err(|_| {
                Error::new(
                    Kind::Input,
                    format!("coordinator.failsafe.listen.{site}: `{a}` is not an address"),
                )
            })?;
            listen.insert(site.clone(), addr);
        }
        Ok(Failsafe {
            listen,
            key: Arc::new(key),
        })
    }

    fn mac(&self, fields: &str) -> String {
        let mut m = Sha::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(fields.as_bytes());
        hex::encode(m.finalize().into_bytes())
    }

    fn verify(&self, fields: &str, mac: &str) -> bool {
        let Ok(want) = hex::decode(mac) else {
            return false;
        };
        let mut m = Sha::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(fields.as_bytes());
        m.verify_slice(&want).is_ok()
    }
}

/// What is asked: `hold` — a leader asks a member to promise not to campaign; `status` — an
/// endpoint asks the leader whether it still leads under `token`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Request {
    op: String,
    service: String,
    from: String,
    token: i64,
    nonce: String,
    mac: String,
}

impl Request {
    fn fields(&self) -> String {
        format!(
            "req|{}|{}|{}|{}|{}",
            self.op, self.service, self.from, self.token, self.nonce
        )
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Answer {
    ok: bool,
    site: String,
    /// For `status`: how much longer the leader stays writable, in ms.
    valid_ms: u64,
    why: String,
    nonce: String,
    mac: String,
}

impl Answer {
    fn fields(&self) -> String {
        format!(
            "ans|{}|{}|{}|{}|{}",
            self.ok, self.site, self.valid_ms, self.why, self.nonce
        )
    }
}

/// What an agent's listener needs to answer: shared with the agent's loop.
#[derive(Default)]
pub struct State {
    /// The promise this member gave: no campaign before `until`, for `leader` at `token`.
    pub pledge: Option<(Instant, String, i64)>,
    /// This agent leads under a token; in fail-safe, writable until then.
    pub leading: Option<(i64, Option<Instant>)>,
    /// The largest token this agent has seen in etcd (a call under a smaller one is stale).
    pub seen_token: i64,
}

impl State {
    /// Whether this member promised not to campaign now.
    pub fn pledged(&self) -> bool {
        self.pledge.as_ref().is_some_and(|p| Instant::now() < p.0)
    }
}

pub type Shared = Arc<Mutex<State>>;

/// Take `site`'s fail-safe address (before anything else starts: an address in use stops the
/// agent's start).
pub async fn bind(
    fs: &Failsafe,
    service: &str,
    site: &str,
) -> Result<tokio::net::TcpListener, Error> {
    let addr = fs.listen.get(site).copied().ok_or_else(|| {
        Error::new(
            Kind::Input,
            format!("coordinator.failsafe.listen has no address for {site}"),
        )
        .hint("give every site with a member an address in coordinator.failsafe.listen")
    })?;
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::new(
            Kind::Io,
            format!("agent for {service} at {site}: cannot listen for fail-safe calls on {addr}: {e}"),
        )
        .hint("another process has the address, or it is not this host's: correct coordinator.failsafe.listen")
    })
}

/// Answer calls for `service`'s member at `site` until the task is dropped.
pub async fn serve(
    l: tokio::net::TcpListener,
    fs: Failsafe,
    service: String,
    site: String,
    ttl: Duration,
    state: Shared,
) {
    loop {
        let Ok((sock, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (fs, service, site, state) = (fs.clone(), service.clone(), site.clone(), state.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                answer_one(sock, &fs, &service, &site, ttl, &state),
            )
            .await;
        });
    }
}

async fn answer_one(
    sock: tokio::net::TcpStream,
    fs: &Failsafe,
    service: &str,
    site: &str,
    ttl: Duration,
    state: &Shared,
) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut line = String::new();
    BufReader::new(r.take(4096)).read_line(&mut line).await?;
    let Ok(req) = serde_json::from_str::<Request>(&line) else {
        return Ok(());
    };
    if !fs.verify(&req.fields(), &req.mac) {
        log(
            "failsafe_call_refused",
            service,
            serde_json::json!({"member": site, "from": req.from, "why": "the call's signature does not match the shared key"}),
        );
        return Ok(());
    }
    let (ok, valid_ms, why) = decide(&req, service, site, ttl, state);
    let mut a = Answer {
        ok,
        site: site.to_string(),
        valid_ms,
        why,
        nonce: req.nonce.clone(),
        mac: String::new(),
    };
    a.mac = fs.mac(&a.fields());
    let mut out = serde_json::to_string(&a).unwrap_or_default();
    out.push('\n');
    w.write_all(out.as_bytes()).await
}

/// The answer to a verified call.
fn decide(
    req: &Request,
    service: &str,
    site: &str,
    ttl: Duration,
    state: &Shared,
) -> (bool, u64, String) {
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    if req.service != service {
        return (false, 0, format!("this agent keeps {service}"));
    }
    match req.op.as_str() {
        "hold" => {
            if let Some((token, _)) = st.leading {
                return (false, 0, format!("{site} leads (token {token})"));
            }
            if req.token < st.seen_token {
                return (
                    false,
                    0,
                    format!(
                        "token {} is stale: {} was seen in etcd",
                        req.token, st.seen_token
                    ),
                );
            }
            let fresh = !st.pledged();
            st.pledge = Some((Instant::now() + ttl, req.from.clone(), req.token));
            drop(st);
            if fresh {
                log(
                    "failsafe_pledged",
                    service,
                    serde_json::json!({"member": site, "leader": req.from, "token": req.token, "for_ms": ttl.as_millis() as u64}),
                );
            }
            (true, 0, String::new())
        }
        "status" => match st.leading {
            Some((token, until)) if token == req.token => {
                let left = until.map_or(Duration::MAX, |u| {
                    u.saturating_duration_since(Instant::now())
                });
                if left.is_zero() {
                    (false, 0, "the fail-safe hold ran out".into())
                } else {
                    let ms = left.as_millis().min(u128::from(u32::MAX)) as u64;
                    (true, ms, String::new())
                }
            }
            Some((token, _)) => (false, 0, format!("{site} leads under token {token}")),
            None => (false, 0, format!("{site} does not lead")),
        },
        other => (false, 0, format!("no such call `{other}`")),
    }
}

/// Ask `site`'s agent (`op`: `hold` or `status`) within `limit`; its answer — `Ok(valid_ms)`
/// when it agreed, `Err(why)` otherwise (not answering, refusing, a forged answer).
pub async fn ask(
    fs: &Failsafe,
    service: &str,
    from: &str,
    site: &str,
    op: &str,
    token: i64,
    limit: Duration,
) -> Result<u64, String> {
    let addr = *fs
        .listen
        .get(site)
        .ok_or_else(|| format!("{site} has no fail-safe address"))?;
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| e.to_string())?;
    let mut req = Request {
        op: op.to_string(),
        service: service.to_string(),
        from: from.to_string(),
        token,
        nonce: hex::encode(nonce),
        mac: String::new(),
    };
    req.mac = fs.mac(&req.fields());
    let call = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("{site} does not answer: {e}"))?;
        let mut line = serde_json::to_string(&req).unwrap_or_default();
        line.push('\n');
        s.write_all(line.as_bytes())
            .await
            .map_err(|e| format!("{site}: {e}"))?;
        let mut back = String::new();
        BufReader::new(s.take(4096))
            .read_line(&mut back)
            .await
            .map_err(|e| format!("{site}: {e}"))?;
        let a: Answer =
            serde_json::from_str(&back).map_err(|_| format!("{site} gave no answer"))?;
        if a.nonce != req.nonce || a.site != site || !fs.verify(&a.fields(), &a.mac) {
            return Err(format!(
                "{site}'s answer is not signed with the shared key (or answers another call)"
            ));
        }
        if a.ok {
            Ok(a.valid_ms)
        } else {
            Err(format!("{site} refused: {}", a.why))
        }
    };
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| format!("{site} did not answer within {} ms", limit.as_millis()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(key: &str) -> Failsafe {
        Failsafe {
            listen: BTreeMap::new(),
            key: Arc::new(key.as_bytes().to_vec()),
        }
    }

    #[test]
    fn a_signature_made_with_another_key_or_over_other_fields_does_not_verify() {
        let a = fs("0123456789abcdef-one");
        let b = fs("0123456789abcdef-two");
        let mac = a.mac("req|hold|db|a|7|n");
        assert!(a.verify("req|hold|db|a|7|n", &mac));
        assert!(!b.verify("req|hold|db|a|7|n", &mac));
        assert!(!a.verify("req|hold|db|a|8|n", &mac));
        assert!(!a.verify("req|hold|db|a|7|n", "zz"));
    }

    fn req(op: &str, from: &str, token: i64) -> Request {
        Request {
            op: op.into(),
            service: "db".into(),
            from: from.into(),
            token,
            nonce: "n".into(),
            mac: String::new(),
        }
    }

    #[test]
    fn a_member_promises_only_when_it_does_not_lead_and_the_token_is_not_stale() {
        let st: Shared = Arc::default();
        let ttl = Duration::from_secs(3);
        let (ok, _, _) = decide(&req("hold", "a", 7), "db", "b", ttl, &st);
        assert!(ok);
        assert!(st.lock().unwrap().pledged());
        st.lock().unwrap().seen_token = 9;
        let (ok, _, why) = decide(&req("hold", "a", 7), "db", "b", ttl, &st);
        assert!(!ok && why.contains("stale"), "{why}");
        st.lock().unwrap().leading = Some((11, None));
        let (ok, _, why) = decide(&req("hold", "a", 12), "db", "b", ttl, &st);
        assert!(!ok && why.contains("leads"), "{why}");
        let (ok, _, _) = decide(&req("hold", "a", 12), "other", "b", ttl, &st);
        assert!(!ok);
    }

    #[test]
    fn a_leader_tells_an_endpoint_how_long_it_holds_under_its_own_token_only() {
        let st: Shared = Arc::default();
        let ttl = Duration::from_secs(3);
        let (ok, _, _) = decide(&req("status", "east", 5), "db", "a", ttl, &st);
        assert!(!ok, "not leading");
        st.lock().unwrap().leading = Some((5, Some(Instant::now() + Duration::from_secs(2))));
        let (ok, ms, _) = decide(&req("status", "east", 5), "db", "a", ttl, &st);
        assert!(ok && ms > 1000 && ms <= 2000, "{ms}");
        let (ok, _, _) = decide(&req("status", "east", 4), "db", "a", ttl, &st);
        assert!(!ok, "another token");
        st.lock().unwrap().leading = Some((5, Some(Instant::now())));
        let (ok, _, _) = decide(&req("status", "east", 5), "db", "a", ttl, &st);
        assert!(!ok, "ran out");
    }
}
