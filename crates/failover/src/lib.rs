//! Failover: keeping one writable primary and clients pointed at it — the agent on each member
//! coordinated through etcd (`agent`), the single daemon's per-service monitor
//! around `lifeboat_core::decide` (`daemon`), the failover state and its on-disk records
//! (`coord`), the world a decision is made on (`world`), the failover sequence (`sequence`), requests from commands to a running daemon (`control`), the traffic endpoint
//! (`traffic`) and its per-site form that follows etcd (`site_endpoint`), the DNS responder (`dns`), Patroni-style health endpoints (`healthapi`), manual
//! failover (`manual`), switchover (`switchover`), rejoin (`rejoin`), and the built-in runbook
//! actions the runbook executor reaches through its trait (`actions`).
//!
//! Above `pg`, `context` and `runbook`; knows nothing of backups (`lifeboat-protect`).

pub mod actions;
pub mod agent;
pub mod app;
pub mod control;
pub mod coord;
pub mod daemon;
pub mod dns;
pub mod failsafe;
pub mod healthapi;
pub mod log;
pub mod manual;
pub mod rejoin;
pub mod sequence;
pub mod site_endpoint;
pub mod switchover;
pub mod traffic;
pub mod world;
