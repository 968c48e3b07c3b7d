//! The WAL archive: PostgreSQL's archived WAL files beside the restic data of a repository,
//! under `lifeboat/wal/<service>/`, on the same backend (local directory or S3).
//!
//! Each object is compressed (zstd) and encrypted with restic's scheme (AES-256-CTR +
//! Poly1305-AES) under a key derived from the repository's master key. Layout:
//!
//! ```text
//! "LBWAL\x01\0\0" | u32 LE meta length | encrypted meta (JSON) | encrypted zstd(WAL bytes)
//! ```
//!
//! The meta holds a keyed hash of the plaintext (so a retried push of the same segment is
//! recognised without downloading it) and what the segment holds for recovery targets (commit
//! times, restore points), read by [`lifeboat_core::wal::scan_segment`] at push time.
//! `archive.json` (encrypted too) pins the archive to one cluster's system identifier.

use std::sync::Arc;

use lifeboat_core::wal::{scan_segment, SegmentSummary, WalFile, DEFAULT_SEGMENT_SIZE};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Kind, Result};
use crate::lock::RepoKey;
use crate::objects::ObjectStore;

const MAGIC: &[u8; 8] = b"LBWAL\x01\0\0";
const HEAD_READ: usize = 64 * 1024;

/// The archive's identity, written by the first segment pushed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArchiveMeta {
    pub version: u32,
    /// PostgreSQL's system identifier (as a string: JSON numbers lose u64 precision).
    pub system_id: String,
    pub seg_size: u64,
    /// Proves which key wrote the archive without revealing it.
    pub key_check: String,
    pub created: String,
}

/// What the archive knows about one stored file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EntryMeta {
    pub name: String,
    pub size: u64,
    /// Keyed hash of the plaintext.
    pub mac: String,
    /// Unix microseconds.
    pub pushed_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<SegmentSummary>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    Stored {
        bytes: u64,
    },
    /// The same content was archived before (a retried `archive_command`).
    AlreadyArchived,
}

pub struct WalArchive {
    objects: Arc<dyn ObjectStore>,
    prefix: String,
    key: RepoKey,
    pub service: String,
    pub compression: i32,
}

/// The WAL key for a repository key.
pub fn wal_key(repo_key: &RepoKey) -> RepoKey {
    repo_key.derive("lifeboat-wal-archive-v1")
}

fn now_micros() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

/// Below this a file is compressed as one frame.
const SPLIT_FROM: usize = 1 << 20;

/// zstd in two frames, the halves compressed on two threads (zstd level 1 is most of a
/// segment's push time). Readers decode concatenated frames as one stream, so objects written
/// as one frame and as two read the same way.
fn compress_in_frames(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    if data.len() < SPLIT_FROM {
        return zstd::bulk::compress(data, level);
    }
    let (first, second) = data.split_at(data.len() / 2);
    std::thread::scope(|scope| {
        let tail = scope.spawn(move || zstd::bulk::compress(second, level));
        let mut out = zstd::bulk::compress(first, level)?;
        let tail = tail
            .join()
            .map_err(|_| std::io::Error::other("compression thread panicked"))??;
        out.extend_from_slice(&tail);
        Ok(out)
    })
}

impl WalArchive {
    pub fn new(objects: Arc<dyn ObjectStore>, service: &str, key: RepoKey) -> Self {
        Self {
            objects,
            prefix: format!("lifeboat/wal/{service}"),
            key,
            service: service.into(),
            compression: 1,
        }
    }

    fn object(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }

    pub fn key_check(&self) -> String {
        hex::encode(&self.key.mac("key-check", b"")[..16])
    }

    fn corrupt(&self, name: &str, why: &str) -> Error {
        Error::new(
            Kind::Integrity,
            format!(
                "archived WAL file {name} of service {} is unreadable: {why}",
                self.service
            ),
        )
        .hint("if the repository key is right, the object is damaged: take a new base backup so recovery no longer needs it, and run `lifeboat wal verify` to see the recoverable window")
    }

    /// The archive's identity, if any segment was pushed yet.
    pub fn meta(&self) -> Result<Option<ArchiveMeta>> {
        let Some(raw) = self.objects.get(&self.object("archive.json"))? else {
            return Ok(None);
        };
        let plain = self.key.decrypt(&raw).ok_or_else(|| {
            Error::new(
                Kind::Key,
                format!(
                    "the WAL archive of service {} was written with another repository key",
                    self.service
                ),
            )
            .hint("use the key of the repository the archive belongs to")
        })?;
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|e| self.corrupt("archive.json", &e.to_string()))
    }

    fn write_meta(&self, m: &ArchiveMeta) -> Result<()> {
        let plain = serde_json::to_vec(m).expect("serialisable");
        self.objects
            .put(&self.object("archive.json"), &self.key.encrypt(&plain))
    }

    /// The stored meta of one file (reads only the object's head).
    pub fn entry(&self, name: &str) -> Result<Option<EntryMeta>> {
        let Some(head) = self.objects.get_head(&self.object(name), HEAD_READ)? else {
            return Ok(None);
        };
        self.parse_head(name, &head).map(|(m, _)| Some(m))
    }

    fn parse_head(&self, name: &str, data: &[u8]) -> Result<(EntryMeta, usize)> {
        if data.len() < 12 || &data[..8] != MAGIC {
            return Err(self.corrupt(name, "not a Lifeboat WAL object"));
        }
        let len = u32::from_le_bytes(data[8..12].try_into().expect("4")) as usize;
        let end = 12 + len;
        if data.len() < end {
            return Err(self.corrupt(name, "truncated header"));
        }
        let plain = self.key.decrypt(&data[12..end]).ok_or_else(|| {
            self.corrupt(
                name,
                "authentication failed (wrong repository key, or damaged)",
            )
        })?;
        let meta: EntryMeta =
            serde_json::from_slice(&plain).map_err(|e| self.corrupt(name, &e.to_string()))?;
        if meta.name != name {
            return Err(self.corrupt(name, &format!("it holds {} instead", meta.name)));
        }
        Ok((meta, end))
    }

    /// Archive one file. Returns only once the object is durable. The same name with the same
    /// content is a no-op; with different content it is refused and the stored one kept.
    pub fn push(&self, name: &str, data: &[u8]) -> Result<PushOutcome> {
        let archive = self.meta()?;
        let seg_size = archive
            .as_ref()
            .map_or(DEFAULT_SEGMENT_SIZE, |m| m.seg_size);
        let file = WalFile::parse(name, seg_size).ok_or_else(|| {
            Error::new(
                Kind::Input,
                format!("`{name}` is not a WAL file name PostgreSQL archives"),
            )
            .hint("archive_command must pass %p (the path of the file to archive)")
        })?;
        // Already there (a retry, or a segment the streaming archive stored first): only
        // confirm that the content is the same, without compressing it again.
        let existing = self.entry(name)?;
        // Compress on other threads while this one hashes, checks and scans (archive_command
        // latency is what PostgreSQL waits for).
        let level = self.compression;
        let prepared = std::thread::scope(|scope| -> Result<Option<(EntryMeta, Vec<u8>)>> {
            let compressing = existing
                .is_none()
                .then(|| scope.spawn(move || compress_in_frames(data, level)));
            let mac = hex::encode(self.key.mac("wal-content", data));
            if let Some(existing) = existing {
                if existing.mac == mac {
                    return Ok(None);
                }
                return Err(Error::new(
                    Kind::Conflict,
                    format!(
                        "WAL file {name} of service {} is already archived with different content ({} bytes stored at {}, {} bytes offered): refusing to overwrite it",
                        self.service,
                        existing.size,
                        jiff::Timestamp::from_microsecond(existing.pushed_at)
                            .map(|t| t.to_string())
                            .unwrap_or_default(),
                        data.len()
                    ),
                )
                .hint("two clusters may be archiving into one service's archive, or a restored cluster re-used its timeline: give each cluster its own service, and check archive_command on every member"));
            }
            let summary = match file {
                WalFile::Segment { .. } | WalFile::Partial { .. } => {
                    let s = scan_segment(data).map_err(|e| {
                        Error::new(Kind::Input, format!("{name} is not a WAL segment: {e}"))
                    })?;
                    self.check_cluster(archive.as_ref(), &s)?;
                    Some(s)
                }
                _ => None,
            };
            let meta = EntryMeta {
                name: name.into(),
                size: data.len() as u64,
                mac,
                pushed_at: now_micros(),
                summary,
            };
            let compressed = compressing
                .expect("compressing a file not archived yet")
                .join()
                .map_err(|_| Error::new(Kind::Internal, "compression thread panicked"))?
                .map_err(|e| Error::new(Kind::Internal, format!("compressing {name}: {e}")))?;
            Ok(Some((meta, compressed)))
        })?;
        let Some((meta, compressed)) = prepared else {
            return Ok(PushOutcome::AlreadyArchived);
        };
        let obj = self.object_bytes(&meta, &compressed);
        self.objects.put(&self.object(name), &obj)?;
        Ok(PushOutcome::Stored {
            bytes: obj.len() as u64,
        })
    }

    /// An archive object: magic, the encrypted meta's length, the encrypted meta, the
    /// encrypted compressed content.
    fn object_bytes(&self, meta: &EntryMeta, compressed: &[u8]) -> Vec<u8> {
        let meta_ct = self
            .key
            .encrypt(&serde_json::to_vec(meta).expect("serialisable"));
        let body = self.key.encrypt(compressed);
        let mut obj = Vec::with_capacity(12 + meta_ct.len() + body.len());
        obj.extend_from_slice(MAGIC);
        obj.extend_from_slice(&(meta_ct.len() as u32).to_le_bytes());
        obj.extend_from_slice(&meta_ct);
        obj.extend_from_slice(&body);
        obj
    }

    fn live_object(&self, name: &str) -> String {
        format!("{}/{name}", self.live_prefix())
    }

    fn live_prefix(&self) -> String {
        format!("lifeboat/wal-live/{}", self.service)
    }

    /// Store the segment being streamed as received so far (PostgreSQL's streamed partial
    /// segments are zero-filled to full size): it replaces the previous copy of the same
    /// segment, and older segments' copies are removed once a newer one is stored. The
    /// archive's own copy (`push`) is what counts once the segment is complete.
    pub fn push_live(&self, name: &str, data: &[u8]) -> Result<u64> {
        let archive = self.meta()?;
        let summary = scan_segment(data)
            .map_err(|e| Error::new(Kind::Input, format!("{name} is not a WAL segment: {e}")))?;
        self.check_cluster(archive.as_ref(), &summary)?;
        let meta = EntryMeta {
            name: name.into(),
            size: data.len() as u64,
            mac: hex::encode(self.key.mac("wal-content", data)),
            pushed_at: now_micros(),
            summary: Some(summary),
        };
        let compressed = compress_in_frames(data, self.compression)
            .map_err(|e| Error::new(Kind::Internal, format!("compressing {name}: {e}")))?;
        let obj = self.object_bytes(&meta, &compressed);
        self.objects.put(&self.live_object(name), &obj)?;
        for older in self.objects.list(&self.live_prefix())? {
            if older.as_str() < name {
                self.objects.delete(&self.live_object(&older))?;
            }
        }
        Ok(obj.len() as u64)
    }

    /// The streamed copy of the newest segment, if any: its name and meta (head only).
    pub fn live_entry(&self) -> Result<Option<EntryMeta>> {
        let Some(name) = self.objects.list(&self.live_prefix())?.into_iter().max() else {
            return Ok(None);
        };
        let Some(head) = self.objects.get_head(&self.live_object(&name), HEAD_READ)? else {
            return Ok(None);
        };
        self.parse_head(&name, &head).map(|(m, _)| Some(m))
    }

    /// The streamed copy of segment `name`, checked, if there is one.
    pub fn fetch_live(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.fetch_object(&self.live_object(name), name)
    }

    /// Remove the streamed copy of `name` (its complete segment is archived).
    pub fn drop_live(&self, name: &str) -> Result<()> {
        self.objects.delete(&self.live_object(name))
    }

    /// A segment must come from the cluster the archive belongs to.
    fn check_cluster(&self, archive: Option<&ArchiveMeta>, s: &SegmentSummary) -> Result<()> {
        match archive {
            Some(m) => {
                if m.key_check != self.key_check() {
                    return Err(Error::new(
                        Kind::Key,
                        format!(
                            "the WAL archive of service {} was written with another repository key",
                            self.service
                        ),
                    ));
                }
                if m.system_id != s.system_id.to_string() {
                    return Err(Error::new(
                        Kind::Conflict,
                        format!(
                            "this segment comes from cluster {} but the WAL archive of service {} belongs to cluster {}: refusing to mix them",
                            s.system_id, self.service, m.system_id
                        ),
                    )
                    .hint("each cluster needs its own service (and archive); a cluster re-created with initdb is a new cluster"));
                }
                Ok(())
            }
            None => self.write_meta(&ArchiveMeta {
                version: 1,
                system_id: s.system_id.to_string(),
                seg_size: s.seg_size,
                key_check: self.key_check(),
                created: jiff::Timestamp::now().to_string(),
            }),
        }
    }

    /// Fetch and check one file: `None` when it is not archived.
    pub fn fetch(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.fetch_object(&self.object(name), name)
    }

    fn fetch_object(&self, key: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let Some(obj) = self.objects.get(key)? else {
            return Ok(None);
        };
        let (meta, body_at) = self.parse_head(name, &obj)?;
        let compressed = self
            .key
            .decrypt(&obj[body_at..])
            .ok_or_else(|| self.corrupt(name, "authentication failed (damaged data)"))?;
        let plain = zstd::bulk::decompress(&compressed, meta.size as usize + 1)
            .map_err(|e| self.corrupt(name, &format!("decompression failed: {e}")))?;
        if plain.len() as u64 != meta.size
            || hex::encode(self.key.mac("wal-content", &plain)) != meta.mac
        {
            return Err(self.corrupt(name, "content does not match its recorded hash"));
        }
        Ok(Some(plain))
    }

    /// Names of everything archived (not `archive.json`).
    pub fn names(&self) -> Result<Vec<String>> {
        let mut v: Vec<String> = self
            .objects
            .list(&self.prefix)?
            .into_iter()
            .filter(|n| n != "archive.json")
            .collect();
        v.sort();
        Ok(v)
    }

    pub fn delete(&self, name: &str) -> Result<()> {
        self.objects.delete(&self.object(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::LocalObjects;

    fn archive(dir: &std::path::Path) -> WalArchive {
        std::fs::write(dir.join("config"), b"a repository").expect("config");
        let key = RepoKey::from_hex(&"5a".repeat(64)).expect("64 bytes");
        WalArchive::new(Arc::new(LocalObjects::new(dir)), "db", wal_key(&key))
    }

    #[test]
    fn a_file_compressed_in_two_frames_reads_back_whole_and_a_retry_is_recognised() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = archive(dir.path());
        // 3 MiB + 7 bytes: split in two frames, halves not on a round boundary.
        let data: Vec<u8> = (0..(3 << 20) + 7u32)
            .map(|i| {
                (i.wrapping_mul(2654435761) >> 24) as u8 & if i % 3 == 0 { 0xff } else { 0x0f }
            })
            .collect();
        let one = zstd::bulk::compress(&data, 1).expect("compress");
        let two = compress_in_frames(&data, 1).expect("compress");
        assert_ne!(one, two, "a large file is written as two frames");
        assert!(matches!(
            wal.push("00000002.history", &data).expect("push"),
            PushOutcome::Stored { .. }
        ));
        assert_eq!(
            wal.fetch("00000002.history").expect("fetch"),
            Some(data.clone())
        );
        assert_eq!(
            wal.push("00000002.history", &data).expect("retry"),
            PushOutcome::AlreadyArchived
        );
        let mut other = data.clone();
        other[(3 << 20) - 1] ^= 1;
        let refused = wal
            .push("00000002.history", &other)
            .expect_err("different content");
        assert_eq!(refused.kind, Kind::Conflict);
        // A small file stays one frame and reads back too.
        assert_eq!(
            compress_in_frames(&data[..1000], 1).expect("compress"),
            zstd::bulk::compress(&data[..1000], 1).expect("compress")
        );
        assert!(matches!(
            wal.push("00000003.history", &data[..1000]).expect("push"),
            PushOutcome::Stored { .. }
        ));
        assert_eq!(
            wal.fetch("00000003.history").expect("fetch").as_deref(),
            Some(&data[..1000])
        );
    }

    #[test]
    fn a_damaged_second_frame_is_reported_not_returned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = archive(dir.path());
        let data = vec![7u8; 2 << 20];
        wal.push("00000004.history", &data).expect("push");
        let path = dir.path().join("lifeboat/wal/db/00000004.history");
        let mut obj = std::fs::read(&path).expect("read");
        let at = obj.len() - 40;
        obj[at] ^= 0x55;
        std::fs::write(&path, &obj).expect("write");
        let err = wal.fetch("00000004.history").expect_err("damaged");
        assert_eq!(err.kind, Kind::Integrity);
    }
}
