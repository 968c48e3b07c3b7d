//! Coordination through etcd: who may make a service's PostgreSQL writable. One key per
//! service (`/lifeboat/PLAN/SERVICE/leader`) held on a lease; the key's create revision is the
//! fencing token — it only grows, so anything that remembers the last token it saw can refuse
//! an older leader (etcd's own advice: a lease alone cannot give mutual exclusion across
//! process pauses). A leader renews its lease and knows, on a monotonic clock, the instant by
//! which it must stop acting: the time it *sent* its last acknowledged renewal plus the TTL,
//! minus a margin — not the time the answer came back.
//!
//! Nothing here touches PostgreSQL: the agents (`lifeboat_failover::agent`) act on what this
//! says.

use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use lifeboat_core::{Error, Kind};

fn etcd_err(what: &str, e: etcd_client::Error) -> Error {
    let mut err = Error::new(Kind::Backend, format!("etcd: {what}: {e}"))
        .hint("is etcd reachable from here (a quorum of its members up)?");
    err.retryable = true;
    err
}

fn lost() -> Error {
    Error::new(
        Kind::Conflict,
        "etcd: the lease expired: this member no longer leads",
    )
}

/// A renewal's error: the lease gone (this member lost the leadership) or etcd unreachable.
fn renew_err(e: etcd_client::Error) -> Error {
    if e.to_string().contains("lease not found") {
        lost()
    } else {
        etcd_err("renew the lease", e)
    }
}

/// Whether an error is etcd's answer (the request reached a member that decided), rather than
/// a member that could not be reached or could not decide (no quorum, a timeout): only the
/// latter is worth sending to another member.
fn answered(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => matches!(
            format!("{:?}", s.code()).as_str(),
            "NotFound"
                | "FailedPrecondition"
                | "InvalidArgument"
                | "PermissionDenied"
                | "Unauthenticated"
                | "AlreadyExists"
                | "OutOfRange"
        ),
        etcd_client::Error::InvalidArgs(_) | etcd_client::Error::LeaseKeepAliveError(_) => true,
        _ => false,
    }
}

/// A connection to the etcd cluster: one client per member, requests going to one of them
/// until it fails to answer within `per_try` (cut off, down, without quorum), then to the
/// next. (One client balancing over every member keeps sending some requests to a member that
/// a partition cut off, each waiting for its timeout.)
pub struct Coordinator {
    clients: Vec<Client>,
    at: usize,
    per_try: Duration,
}

/// Who holds a leader key, and its fencing token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub member: String,
    /// The key's create revision: a later leader always has a larger one.
    pub token: i64,
    /// The lease the key lives on.
    pub lease: i64,
}

/// A leadership this process holds.
pub struct Leadership {
    key: String,
    lease: i64,
    ttl: Duration,
    pub token: i64,
    /// When the last acknowledged renewal (or the grant) was sent.
    sent: Instant,
}

impl Leadership {
    /// The instant by which the leader must have stopped acting as one (`margin` before its
    /// lease can expire, counted from when its last acknowledged renewal was sent).
    pub fn deadline(&self, margin: Duration) -> Instant {
        self.sent + self.ttl.saturating_sub(margin)
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Coordinator {
    /// Connect to any of `endpoints` (`host:port`), within `timeout`.
    /// One try of a request goes to one member for at most an eighth of `timeout` (at least
    /// 150 ms); a request that member cannot answer goes to the next one. Short tries matter
    /// while etcd elects a leader: the request that lands after the election must not be
    /// queued behind one still waiting.
    pub async fn connect(endpoints: &[String], timeout: Duration) -> Result<Coordinator, Error> {
        let per_try = (timeout / 8).max(Duration::from_millis(150));
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(per_try)
            .with_timeout(per_try);
        let mut clients = Vec::new();
        for e in endpoints {
            clients.push(
                Client::connect([e.as_str()], Some(opts.clone()))
                    .await
                    .map_err(|err| etcd_err("connect", err))?,
            );
        }
        if clients.is_empty() {
            return Err(Error::new(Kind::Input, "etcd: no member to connect to"));
        }
        Ok(Coordinator {
            clients,
            at: 0,
            per_try,
        })
    }

    /// Run a request on the current member, moving to the next one while a member does not
    /// answer (each member tried once).
    async fn call<T, F, Fut>(&mut self, mut f: F) -> Result<T, etcd_client::Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut last = None;
        for _ in 0..self.clients.len() {
            let c = self.clients[self.at].clone();
            match tokio::time::timeout(self.per_try, f(c)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if answered(&e) => return Err(e),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(etcd_client::Error::IoError(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no answer in time",
                    )))
                }
            }
            self.at = (self.at + 1) % self.clients.len();
        }
        Err(last.expect("at least one member"))
    }

    /// The key of a service's leader.
    pub fn leader_key(plan: &str, service: &str) -> String {
        format!("/lifeboat/{plan}/{service}/leader")
    }

    /// The key of the synchronous standbys a service's leader published.
    pub fn sync_key(leader_key: &str) -> String {
        match leader_key.strip_suffix("/leader") {
            Some(p) => format!("{p}/sync"),
            None => format!("{leader_key}.sync"),
        }
    }

    /// Publish the standbys PostgreSQL lists as synchronous now (once
    /// `synchronous_standby_names` has taken effect), as the leader holding `l`: written only
    /// while `l`'s token is still the leader key's, in one transaction, so a fenced leader
    /// cannot change who may succeed it. `Ok(false)`: `l` no longer leads.
    pub async fn publish_sync(
        &mut self,
        l: &Leadership,
        member: &str,
        sync: &[String],
    ) -> Result<bool, Error> {
        let doc = serde_json::json!({"leader": member, "token": l.token, "sync": sync}).to_string();
        let txn = Txn::new()
            .when([Compare::create_revision(
                l.key.as_str(),
                CompareOp::Equal,
                l.token,
            )])
            .and_then([TxnOp::put(Self::sync_key(&l.key), doc, None)]);
        let r = self
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(|e| etcd_err("publish the synchronous standbys", e))?;
        Ok(r.succeeded())
    }

    /// The last published synchronous set: (the leader that published it, its token, the
    /// synchronous standbys).
    pub async fn sync_set(
        &mut self,
        leader_key: &str,
    ) -> Result<Option<(String, i64, Vec<String>)>, Error> {
        let k = Self::sync_key(leader_key);
        let r = self
            .call(|mut c| {
                let k = k.clone();
                async move { c.get(k, None).await }
            })
            .await
            .map_err(|e| etcd_err("read the synchronous standbys", e))?;
        let Some(kv) = r.kvs().first() else {
            return Ok(None);
        };
        let v: serde_json::Value = serde_json::from_slice(kv.value()).unwrap_or_default();
        let sync = v["sync"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some((
            v["leader"].as_str().unwrap_or_default().to_string(),
            v["token"].as_i64().unwrap_or(0),
            sync,
        )))
    }

    /// Whether `member` may campaign in a sync tier: it was the last leader, or the last
    /// leader listed it as synchronous (Patroni's rule). With nothing published (a new
    /// service), anyone may: nothing acknowledged can be lost yet.
    pub async fn may_campaign(&mut self, leader_key: &str, member: &str) -> Result<bool, Error> {
        Ok(match self.sync_set(leader_key).await? {
            None => true,
            Some((leader, _, sync)) => leader == member || sync.iter().any(|s| s == member),
        })
    }

    /// One transaction: put `value` at `key` if the key does not exist, else read it.
    async fn create(
        &mut self,
        key: &str,
        value: &str,
        opts: Option<PutOptions>,
        what: &str,
    ) -> Result<etcd_client::TxnResponse, Error> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, opts)])
            .or_else([TxnOp::get(key, None)]);
        self.call(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
        .map_err(|e| etcd_err(what, e))
    }

    /// Write `value` at `key` unless the key exists (no lease: it stays). Returns what the
    /// key holds afterwards: `value`, or what another writer put there first.
    pub async fn put_if_absent(&mut self, key: &str, value: &str) -> Result<String, Error> {
        let r = self.create(key, value, None, "write a key").await?;
        if r.succeeded() {
            return Ok(value.to_string());
        }
        for op in r.op_responses() {
            if let etcd_client::TxnOpResponse::Get(g) = op {
                if let Some(kv) = g.kvs().first() {
                    return Ok(String::from_utf8_lossy(kv.value()).into_owned());
                }
            }
        }
        Ok(value.to_string())
    }

    /// What `key` holds, if it exists.
    pub async fn value(&mut self, key: &str) -> Result<Option<String>, Error> {
        let r = self
            .call(|mut c| async move { c.get(key, None).await })
            .await
            .map_err(|e| etcd_err("read a key", e))?;
        Ok(r.kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Who leads now, if anyone.
    pub async fn holder(&mut self, key: &str) -> Result<Option<Holder>, Error> {
        let r = self
            .call(|mut c| async move { c.get(key, None).await })
            .await
            .map_err(|e| etcd_err("read the leader", e))?;
        Ok(r.kvs().first().map(|kv| Holder {
            member: String::from_utf8_lossy(kv.value()).into_owned(),
            token: kv.create_revision(),
            lease: kv.lease(),
        }))
    }

    /// Become leader if nobody is: the key is created on a fresh lease of `ttl` only when it
    /// does not exist (one transaction). `Ok(None)`: someone else leads (their lease keeps it).
    pub async fn campaign(
        &mut self,
        key: &str,
        member: &str,
        ttl: Duration,
    ) -> Result<Result<Leadership, Holder>, Error> {
        let sent = Instant::now();
        let secs = ttl.as_secs().max(1) as i64;
        let lease = self
            .call(|mut c| async move { c.lease_grant(secs, None).await })
            .await
            .map_err(|e| etcd_err("grant a lease", e))?
            .id();
        let r = self
            .create(
                key,
                member,
                Some(PutOptions::new().with_lease(lease)),
                "campaign",
            )
            .await?;
        if r.succeeded() {
            // The key's create revision is the transaction's revision.
            let token = r.header().map(|h| h.revision()).unwrap_or(0);
            return Ok(Ok(Leadership {
                key: key.to_string(),
                lease,
                ttl: Duration::from_secs(secs as u64),
                token,
                sent,
            }));
        }
        let _ = self
            .call(|mut c| async move { c.lease_revoke(lease).await })
            .await;
        let holder = self.holder(key).await?.unwrap_or(Holder {
            member: String::new(),
            token: 0,
            lease: 0,
        });
        Ok(Err(holder))
    }

    /// Renew the lease once. On success the deadline moves to the time this renewal was sent
    /// plus the TTL; an error (or a lease etcd no longer knows) leaves it where it was, so the
    /// leader keeps counting down.
    pub async fn renew(&mut self, l: &mut Leadership) -> Result<(), Error> {
        let sent = Instant::now();
        let lease = l.lease;
        // The keep-alive stream, one renewal and its answer, on one member.
        let ttl = self
            .call(|mut c| async move {
                let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
                keeper.keep_alive().await?;
                Ok(stream.message().await?.map(|r| r.ttl()))
            })
            .await
            .map_err(renew_err)?;
        match ttl {
            Some(t) if t > 0 => {
                l.sent = sent;
                Ok(())
            }
            _ => Err(lost()),
        }
    }

    /// Give the leadership up at once (a clean stop, or PostgreSQL crashed under the agent):
    /// the next candidate need not wait for the lease to expire.
    pub async fn resign(&mut self, l: Leadership) -> Result<(), Error> {
        let lease = l.lease;
        self.call(|mut c| async move { c.lease_revoke(lease).await })
            .await
            .map(|_| ())
            .map_err(|e| etcd_err("resign", e))
    }

    /// End a holder's lease (its keys go with it): for an agent that took over from a dead
    /// predecessor at its own member, whose lease would otherwise hold until it runs out.
    pub async fn revoke(&mut self, h: &Holder) -> Result<(), Error> {
        let lease = h.lease;
        match self
            .call(|mut c| async move { c.lease_revoke(lease).await })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("lease not found") => Ok(()),
            Err(e) => Err(etcd_err("end a stale lease", e)),
        }
    }

    /// The key naming where a service's traffic goes (written by the leader once its server
    /// takes writes, read by the endpoints).
    pub fn route_key(leader_key: &str) -> String {
        match leader_key.strip_suffix("/leader") {
            Some(p) => format!("{p}/route"),
            None => format!("{leader_key}.route"),
        }
    }

    /// As the leader holding `l`: say that traffic may come to `member` (its server takes
    /// writes now). Written on the leader's lease (it goes with it) and only while `l`'s token
    /// is the leader key's, so a fenced or stale leader can never write a route.
    /// `Ok(false)`: `l` no longer leads.
    pub async fn publish_route(&mut self, l: &Leadership, member: &str) -> Result<bool, Error> {
        let doc = serde_json::json!({"member": member, "token": l.token}).to_string();
        let txn = Txn::new()
            .when([Compare::create_revision(
                l.key.as_str(),
                CompareOp::Equal,
                l.token,
            )])
            .and_then([TxnOp::put(
                Self::route_key(&l.key),
                doc,
                Some(PutOptions::new().with_lease(l.lease)),
            )]);
        let r = self
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(|e| etcd_err("publish the route", e))?;
        Ok(r.succeeded())
    }

    /// Where traffic may go now: the leader and its token, when the leader key and the route
    /// the leader published agree (read together, in one linearizable transaction). `None`:
    /// nobody leads, or the leader's server does not take writes yet.
    pub async fn route(&mut self, leader_key: &str) -> Result<Option<Holder>, Error> {
        let route_key = Self::route_key(leader_key);
        let txn = Txn::new().and_then([
            TxnOp::get(leader_key, None),
            TxnOp::get(route_key.as_str(), None),
        ]);
        let r = self
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(|e| etcd_err("read the route", e))?;
        let mut kvs = r.op_responses().into_iter().map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        let (Some(Some(leader)), Some(Some(route))) = (kvs.next(), kvs.next()) else {
            return Ok(None);
        };
        let v: serde_json::Value = serde_json::from_slice(route.value()).unwrap_or_default();
        let member = String::from_utf8_lossy(leader.value()).into_owned();
        if v["token"].as_i64() != Some(leader.create_revision())
            || v["member"].as_str() != Some(member.as_str())
        {
            return Ok(None);
        }
        Ok(Some(Holder {
            member,
            token: leader.create_revision(),
            lease: leader.lease(),
        }))
    }

    /// Whether `token` is still the leader's: the check anything that acts for a leader makes
    /// (the traffic endpoint before it routes, a standby before it follows).
    pub async fn is_current(&mut self, key: &str, token: i64) -> Result<bool, Error> {
        Ok(self.holder(key).await?.is_some_and(|h| h.token == token))
    }
}
