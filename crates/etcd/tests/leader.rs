//! The leader key against a real etcd (Debian's `etcd-server`, one member on loopback): one
//! leader at a time; a successor's fencing token is larger; resigning hands over at once; a
//! leader that stops renewing loses the key when its lease expires and cannot renew it back;
//! with etcd gone a renewal fails and the leader's deadline stays where it was.

use std::time::{Duration, Instant};

use lifeboat_etcd::Coordinator;

#[path = "../../../tests/common/etcd.rs"]
mod common_etcd;
use common_etcd::{cluster, etcd, Etcd};

async fn connect(e: &Etcd) -> Coordinator {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut c) =
            Coordinator::connect(std::slice::from_ref(&e.client), Duration::from_secs(2)).await
        {
            if c.holder("/probe").await.is_ok() {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "etcd did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `who` campaigns and must win.
async fn leads(c: &mut Coordinator, key: &str, who: &str, secs: u64) -> lifeboat_etcd::Leadership {
    match c
        .campaign(key, who, Duration::from_secs(secs))
        .await
        .unwrap()
    {
        Ok(l) => l,
        Err(h) => panic!("{who} should lead; {} does (token {})", h.member, h.token),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn one_leader_at_a_time_and_a_successor_has_a_larger_token() {
    let e = etcd();
    rt().block_on(async {
        let (mut a, mut b) = (connect(&e).await, connect(&e).await);
        let key = Coordinator::leader_key("shop", "db");
        let la = leads(&mut a, &key, "east", 5).await;
        let held = b
            .campaign(&key, "west", Duration::from_secs(5))
            .await
            .unwrap()
            .err()
            .expect("west does not");
        assert_eq!(held.member, "east");
        assert_eq!(held.token, la.token);
        assert!(b.is_current(&key, la.token).await.unwrap());
        a.resign(la).await.unwrap();
        let lb = leads(&mut b, &key, "west", 5).await;
        assert!(lb.token > held.token, "{} > {}", lb.token, held.token);
        assert!(
            !a.is_current(&key, held.token).await.unwrap(),
            "the old token is fenced"
        );
        assert_eq!(a.holder(&key).await.unwrap().unwrap().member, "west");
    });
}

#[test]
fn a_leader_that_stops_renewing_loses_the_key_and_cannot_renew_it_back() {
    let e = etcd();
    rt().block_on(async {
        let (mut a, mut b) = (connect(&e).await, connect(&e).await);
        let key = Coordinator::leader_key("shop", "db");
        let ttl = Duration::from_secs(2);
        let mut la = a
            .campaign(&key, "east", ttl)
            .await
            .unwrap()
            .expect("east leads");
        let before = Instant::now();
        a.renew(&mut la).await.unwrap();
        // The deadline counts from when the renewal was sent, minus the margin.
        let d = la.deadline(Duration::from_millis(500));
        assert!(
            d >= before + Duration::from_millis(1500)
                && d <= Instant::now() + Duration::from_millis(1500)
        );
        // East stops renewing (it paused): west takes over once the lease ran out, not before.
        assert!(b.campaign(&key, "west", ttl).await.unwrap().is_err());
        let deadline = Instant::now() + Duration::from_secs(15);
        let lb = loop {
            if let Ok(l) = b.campaign(&key, "west", ttl).await.unwrap() {
                break l;
            }
            assert!(Instant::now() < deadline, "the lease never expired");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(lb.token > la.token);
        let err = a.renew(&mut la).await.unwrap_err();
        assert!(err.to_string().contains("no longer leads"), "{err}");
    });
}

#[test]
fn with_etcd_gone_a_renewal_fails_and_the_deadline_stays() {
    let mut e = etcd();
    rt().block_on(async {
        let mut a = connect(&e).await;
        let key = Coordinator::leader_key("shop", "db");
        let mut la = leads(&mut a, &key, "east", 3).await;
        let d = la.deadline(Duration::from_millis(500));
        let _ = e.child.kill();
        let _ = e.child.wait();
        let r = tokio::time::timeout(Duration::from_secs(10), a.renew(&mut la)).await;
        assert!(
            matches!(r, Ok(Err(_)) | Err(_)),
            "a renewal without etcd succeeded"
        );
        assert_eq!(
            la.deadline(Duration::from_millis(500)),
            d,
            "the deadline moved"
        );
    });
}

#[test]
fn only_the_last_leader_or_its_synchronous_standby_may_succeed_and_a_fenced_leader_cannot_change_that(
) {
    let e = etcd();
    rt().block_on(async {
        let (mut a, mut b) = (connect(&e).await, connect(&e).await);
        let key = Coordinator::leader_key("shop", "db");
        assert!(
            b.may_campaign(&key, "west").await.unwrap(),
            "nothing published yet"
        );
        let la = leads(&mut a, &key, "east", 1).await;
        assert!(a.publish_sync(&la, "east", &["west".into()]).await.unwrap());
        assert!(
            b.may_campaign(&key, "west").await.unwrap(),
            "west is synchronous"
        );
        assert!(
            !b.may_campaign(&key, "north").await.unwrap(),
            "north is not"
        );
        assert!(
            b.may_campaign(&key, "east").await.unwrap(),
            "the last leader may"
        );
        // East stops renewing (paused); its lease expires; west leads.
        let old = la.token;
        let deadline = Instant::now() + Duration::from_secs(15);
        let lb = loop {
            if let Ok(l) = b
                .campaign(&key, "west", Duration::from_secs(5))
                .await
                .unwrap()
            {
                break l;
            }
            assert!(Instant::now() < deadline, "east's lease never expired");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // East wakes: fenced, it can neither lead nor rewrite who may succeed.
        assert!(a
            .campaign(&key, "east", Duration::from_secs(5))
            .await
            .unwrap()
            .is_err());
        assert!(
            !a.publish_sync(&la, "east", &["north".into()])
                .await
                .unwrap(),
            "a fenced leader published"
        );
        assert!(!a.may_campaign(&key, "north").await.unwrap());
        assert!(b.publish_sync(&lb, "west", &[]).await.unwrap());
        let (leader, token, sync) = a.sync_set(&key).await.unwrap().unwrap();
        assert_eq!((leader.as_str(), sync.len()), ("west", 0));
        assert!(token > old);
        assert!(!a.may_campaign(&key, "north").await.unwrap());
    });
}

/// Three etcd members on loopback, one per site: (the members, their client addresses).
#[test]
fn a_three_member_etcd_keeps_the_leader_through_one_member_lost_and_not_through_two() {
    let (mut members, clients) = cluster(&["east", "west", "witness"]);
    rt().block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut a = loop {
            if let Ok(mut c) = Coordinator::connect(&clients, Duration::from_secs(2)).await {
                if c.holder("/probe").await.is_ok() {
                    break c;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the etcd cluster did not come up"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let key = Coordinator::leader_key("shop", "db");
        let mut la = leads(&mut a, &key, "east", 3).await;
        // One member gone (a site lost): a quorum of two remains; renewals go on.
        let _ = members[1].child.kill();
        let _ = members[1].child.wait();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match a.renew(&mut la).await {
                Ok(()) => break,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "no renewal with two of three members: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        assert!(a.is_current(&key, la.token).await.unwrap());
        // Two gone: no quorum; a renewal fails (or never answers) and the deadline stays.
        let _ = members[2].child.kill();
        let _ = members[2].child.wait();
        // etcd serves a renewal from its raft leader without a quorum round: a leader that has
        // not yet noticed it lost its quorum (an election timeout, 500 ms here) still renews.
        // Past that, nothing does. (Why the fencing token, not the lease, is the guard.)
        tokio::time::sleep(Duration::from_secs(3)).await;
        let d = la.deadline(Duration::from_millis(500));
        let r = tokio::time::timeout(Duration::from_secs(5), a.renew(&mut la)).await;
        assert!(
            matches!(r, Ok(Err(_)) | Err(_)),
            "a renewal without a quorum succeeded"
        );
        assert_eq!(la.deadline(Duration::from_millis(500)), d);
    });
}

/// The route the endpoints follow: only the current leader can write it, it goes with the
/// leader's lease, and a stale leader (its lease ended, a successor elected) can never write
/// it again.
#[test]
fn only_the_current_leader_publishes_the_route_and_a_stale_one_never_again() {
    let e = etcd();
    rt().block_on(async {
        let (mut a, mut b) = (connect(&e).await, connect(&e).await);
        let key = Coordinator::leader_key("shop", "db");
        assert_eq!(a.route(&key).await.unwrap(), None, "nobody leads");
        let la = leads(&mut a, &key, "east", 2).await;
        // Leading is not enough: the route appears once the leader publishes it.
        assert_eq!(a.route(&key).await.unwrap(), None);
        assert!(a.publish_route(&la, "east").await.unwrap());
        let r = b.route(&key).await.unwrap().expect("a route");
        assert_eq!((r.member.as_str(), r.token), ("east", la.token));
        // east stops renewing; its lease ends, the route with it; west leads.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(
            b.route(&key).await.unwrap(),
            None,
            "the route went with the lease"
        );
        let lb = leads(&mut b, &key, "west", 5).await;
        assert!(lb.token > la.token);
        // The stale leader cannot route traffic back to itself.
        assert!(!a.publish_route(&la, "east").await.unwrap());
        assert_eq!(b.route(&key).await.unwrap(), None);
        assert!(b.publish_route(&lb, "west").await.unwrap());
        let r = a.route(&key).await.unwrap().expect("a route");
        assert_eq!((r.member.as_str(), r.token), ("west", lb.token));
        assert!(!a.publish_route(&la, "east").await.unwrap());
        assert_eq!(
            a.route(&key).await.unwrap().map(|h| h.token),
            Some(lb.token)
        );
    });
}
