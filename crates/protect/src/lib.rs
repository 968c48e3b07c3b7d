//! Protection: everything that makes and proves copies of the data — backup jobs of every kind
//! (`backup`), PostgreSQL base backups and dumps (`pgbackup`), retention, verification, copies
//! and integrity checks (`ops`), the WAL archive (`wal`), point-in-time recovery and sandbox
//! restores (`pitr`), replicated buckets (`bucket`).
//!
//! Above `store` (repositories), `pg` (PostgreSQL) and `context` (plan, state, evidence); knows
//! nothing of failover. All PostgreSQL programs and connections go through `lifeboat-pg`.

pub mod backup;
pub mod bucket;
pub mod ops;
pub mod pgbackup;
pub mod pitr;
pub mod wal;
pub mod walsock;
pub mod walstream;
