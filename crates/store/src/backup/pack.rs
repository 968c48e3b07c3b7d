//! Packs, index files and snapshot files in the restic format (repository version 2).
//!
//! A pack is its blobs, each encrypted on its own (IV, AES-256-CTR, Poly1305-AES), then the
//! encrypted header listing them (type, stored length, length before compression, SHA-256 of
//! the plaintext), then the header's length as four little-endian bytes; its name is the
//! SHA-256 of its bytes. An index file lists packs and their blobs as JSON; snapshot and index
//! files are stored as a version byte 2 and zstd, encrypted, named by the SHA-256 of what is
//! stored. Packs are uploaded by several threads at once; the index names a pack only once it
//! is stored, and the snapshot is written only after its index.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use rustic_core::Id;

use crate::error::{Error, Kind, Result};
use crate::lock::RepoKey;
use crate::objects::ObjectStore;

/// A pack is sent off once it holds this much. restic's default is 16 MiB; half of it keeps
/// the packs in memory (one filling, one waiting, two uploading) within a base backup's 64 MB.
pub const DATA_PACK_SIZE: usize = 8 << 20;
pub const TREE_PACK_SIZE: usize = 4 << 20;
/// At most this many packs in one index file.
const PACKS_PER_INDEX: usize = 2000;

pub type BlobId = [u8; 32];

/// An error reported again (the first one stays where it was recorded).
pub fn copy_err(e: &Error) -> Error {
    let mut c = Error::new(e.kind, e.message.clone());
    c.hint = e.hint.clone();
    c.retryable = e.retryable;
    c
}

pub fn sha256(data: &[u8]) -> BlobId {
    sha2::Sha256::digest(data).into()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    Data,
    Tree,
}

/// Where a blob is stored.
#[derive(Clone, Debug)]
pub struct Location {
    pub pack: BlobId,
    pub offset: u32,
    pub length: u32,
    pub uncompressed_length: Option<u32>,
}

#[derive(Serialize, Deserialize)]
struct IndexJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    supersedes: Option<Vec<String>>,
    #[serde(default)]
    packs: Vec<IndexPackJson>,
}

#[derive(Serialize, Deserialize)]
pub struct IndexPackJson {
    id: String,
    blobs: Vec<IndexBlobJson>,
}

#[derive(Serialize, Deserialize)]
struct IndexBlobJson {
    id: String,
    #[serde(rename = "type")]
    kind: BlobKind,
    offset: u32,
    length: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uncompressed_length: Option<u32>,
}

fn hex32(s: &str) -> Option<BlobId> {
    hex::decode(s).ok()?.try_into().ok()
}

fn corrupt(what: &str, why: &str) -> Error {
    Error::new(
        Kind::Integrity,
        format!("{what} is damaged or not a restic file: {why}"),
    )
    .hint("run `lifeboat verify --read-data` on this repository to see what else is affected")
}

/// A restic file (index, snapshot) from its stored bytes: authenticated, decrypted, unpacked.
pub fn decode_file(key: &RepoKey, what: &str, stored: &[u8]) -> Result<Vec<u8>> {
    let plain = key
        .decrypt(stored)
        .ok_or_else(|| corrupt(what, "its authentication (MAC) check failed"))?;
    match plain.first() {
        Some(b'{') | Some(b'[') => Ok(plain),
        Some(2) => zstd::stream::decode_all(&plain[1..]).map_err(|e| corrupt(what, &e.to_string())),
        _ => Err(corrupt(what, "unknown format version")),
    }
}

/// A restic file's stored bytes (version 2: compressed), and its name.
pub fn encode_file(key: &RepoKey, plain: &[u8]) -> Result<(Vec<u8>, String)> {
    let mut v = vec![2u8];
    v.extend(
        zstd::bulk::compress(plain, 3)
            .map_err(|e| Error::new(Kind::Internal, format!("compressing: {e}")))?,
    );
    let stored = key.encrypt(&v);
    let id = hex::encode(sha256(&stored));
    Ok((stored, id))
}

/// What the repository already holds, from its index files.
#[derive(Default)]
pub struct KnownBlobs {
    pub data: HashSet<Id>,
    pub trees: HashMap<Id, Location>,
}

impl KnownBlobs {
    /// Read every index file (on a few threads: on S3 each is a request).
    pub fn load(objects: &Arc<dyn ObjectStore>, key: &RepoKey) -> Result<Self> {
        let names = objects.list("index")?;
        let next = AtomicU64::new(0);
        let out = Mutex::new(Self::default());
        let first_err: Mutex<Option<Error>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..4.min(names.len().max(1)) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(name) = names.get(i) else { break };
                    let res = (|| -> Result<()> {
                        let what = format!("index file {}", &name[..name.len().min(8)]);
                        let Some(stored) = objects.get(&format!("index/{name}"))? else {
                            return Ok(()); // removed by a prune meanwhile
                        };
                        let plain = decode_file(key, &what, &stored)?;
                        let idx: IndexJson = serde_json::from_slice(&plain)
                            .map_err(|e| corrupt(&what, &e.to_string()))?;
                        let mut known = out.lock().expect("index");
                        for p in idx.packs {
                            let pack = hex32(&p.id).ok_or_else(|| corrupt(&what, "bad pack id"))?;
                            for b in p.blobs {
                                let id = Id::new(
                                    hex32(&b.id).ok_or_else(|| corrupt(&what, "bad blob id"))?,
                                );
                                match b.kind {
                                    BlobKind::Data => {
                                        known.data.insert(id);
                                    }
                                    BlobKind::Tree => {
                                        known.trees.insert(
                                            id,
                                            Location {
                                                pack,
                                                offset: b.offset,
                                                length: b.length,
                                                uncompressed_length: b.uncompressed_length,
                                            },
                                        );
                                    }
                                }
                            }
                        }
                        Ok(())
                    })();
                    if let Err(e) = res {
                        first_err.lock().expect("err").get_or_insert(e);
                        break;
                    }
                });
            }
        });
        if let Some(e) = first_err.into_inner().expect("err") {
            return Err(e);
        }
        Ok(out.into_inner().expect("index"))
    }
}

pub fn pack_key(id: &BlobId) -> String {
    let h = hex::encode(id);
    format!("data/{}/{h}", &h[..2])
}

/// One blob read back from its pack: authenticated, decrypted, decompressed, and checked
/// against its id.
pub fn read_blob(
    objects: &dyn ObjectStore,
    key: &RepoKey,
    id: &Id,
    loc: &Location,
) -> Result<Vec<u8>> {
    let what = format!("blob {id}");
    let stored = objects
        .get_range(&pack_key(&loc.pack), loc.offset as u64, loc.length as usize)?
        .ok_or_else(|| corrupt(&what, "its pack is missing"))?;
    let plain = key
        .decrypt(&stored)
        .ok_or_else(|| corrupt(&what, "its authentication (MAC) check failed"))?;
    let data = match loc.uncompressed_length {
        Some(n) => zstd::bulk::decompress(&plain, n as usize)
            .map_err(|e| corrupt(&what, &e.to_string()))?,
        None => plain,
    };
    if Id::new(sha256(&data)) != *id {
        return Err(corrupt(&what, "its content does not match its id"));
    }
    Ok(data)
}

/// A blob ready to go into a pack.
pub struct SealedBlob {
    pub id: BlobId,
    pub kind: BlobKind,
    pub stored: Vec<u8>,
    pub uncompressed_length: Option<u32>,
}

/// Compress (when that makes it smaller) and encrypt one blob.
pub fn seal(
    key: &RepoKey,
    compressor: &mut zstd::bulk::Compressor<'_>,
    id: BlobId,
    kind: BlobKind,
    data: &[u8],
) -> Result<SealedBlob> {
    let compressed = compressor
        .compress(data)
        .map_err(|e| Error::new(Kind::Internal, format!("compressing a blob: {e}")))?;
    let (plain, uncompressed_length) = if compressed.len() < data.len() {
        (compressed.as_slice(), Some(data.len() as u32))
    } else {
        (data, None)
    };
    Ok(SealedBlob {
        id,
        kind,
        stored: key.encrypt(plain),
        uncompressed_length,
    })
}

struct OpenPack {
    buf: Vec<u8>,
    blobs: Vec<(BlobId, u32, u32, Option<u32>)>,
}

/// Pack buffers handed back by the uploaders: the few that are in use at any time are reused
/// for the whole run instead of a new 16 MiB allocation per pack, which the allocator would
/// keep around in every thread's arena.
type Spare = Arc<Mutex<Vec<Vec<u8>>>>;

impl OpenPack {
    fn new(kind: BlobKind, spare: &Spare) -> Self {
        let size = match kind {
            BlobKind::Data => DATA_PACK_SIZE,
            BlobKind::Tree => TREE_PACK_SIZE,
        };
        let reused = match kind {
            BlobKind::Data => spare.lock().expect("spare").pop(),
            BlobKind::Tree => None,
        };
        Self {
            // Room for the header of a pack of small blobs too.
            buf: reused.unwrap_or_else(|| Vec::with_capacity(size + (256 << 10))),
            blobs: Vec::new(),
        }
    }
}

/// What a run added to the repository.
#[derive(Default, Debug, Clone)]
pub struct PackStats {
    pub data_blobs: u64,
    pub tree_blobs: u64,
    pub data_added: u64,
    pub data_added_packed: u64,
    pub trees_added: u64,
    pub trees_added_packed: u64,
    pub packs: u64,
}

/// Blobs in, stored packs out: several uploads in flight, the index written at the end.
pub struct Packer {
    objects: Arc<dyn ObjectStore>,
    key: RepoKey,
    open: [Mutex<OpenPack>; 2],
    upload: Mutex<Option<crossbeam_channel::Sender<(BlobKind, OpenPack)>>>,
    uploaders: Mutex<Vec<std::thread::JoinHandle<()>>>,
    stored: Arc<Mutex<Vec<IndexPackJson>>>,
    error: Arc<Mutex<Option<Error>>>,
    stats: Mutex<PackStats>,
    spare: Spare,
}

fn slot(kind: BlobKind) -> usize {
    match kind {
        BlobKind::Data => 0,
        BlobKind::Tree => 1,
    }
}

impl Packer {
    /// `uploads`: how many packs may be uploading at once.
    pub fn new(objects: Arc<dyn ObjectStore>, key: RepoKey, uploads: usize) -> Self {
        // No queue: a full pack goes straight to a free uploader, so at most `uploads` packs
        // are uploading, one waits for them and one is being filled.
        let (tx, rx) = crossbeam_channel::bounded::<(BlobKind, OpenPack)>(0);
        let spare: Spare = Arc::new(Mutex::new(Vec::new()));
        let stored = Arc::new(Mutex::new(Vec::new()));
        let error = Arc::new(Mutex::new(None));
        let uploaders = (0..uploads.max(1))
            .map(|_| {
                let rx = rx.clone();
                let objects = objects.clone();
                let key = key.clone();
                let stored = stored.clone();
                let error = error.clone();
                let spare = spare.clone();
                std::thread::spawn(move || {
                    for (kind, pack) in rx {
                        if error.lock().expect("err").is_some() {
                            continue; // drain: the run has failed
                        }
                        match store_pack(&*objects, &key, kind, pack, &spare) {
                            Ok(p) => stored.lock().expect("stored").push(p),
                            Err(e) => {
                                error.lock().expect("err").get_or_insert(e);
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            objects,
            key,
            open: [
                Mutex::new(OpenPack::new(BlobKind::Data, &spare)),
                Mutex::new(OpenPack::new(BlobKind::Tree, &spare)),
            ],
            upload: Mutex::new(Some(tx)),
            uploaders: Mutex::new(uploaders),
            stored,
            error,
            stats: Mutex::new(PackStats::default()),
            spare,
        }
    }

    pub fn key(&self) -> &RepoKey {
        &self.key
    }

    /// The first error of an upload, if one failed.
    pub fn failed(&self) -> Option<String> {
        self.error
            .lock()
            .expect("err")
            .as_ref()
            .map(|e| e.to_string())
    }

    pub fn add(&self, blob: SealedBlob) -> Result<()> {
        if let Some(e) = self.error.lock().expect("err").as_ref() {
            return Err(copy_err(e));
        }
        {
            let mut st = self.stats.lock().expect("stats");
            let plain = blob
                .uncompressed_length
                .map_or(blob.stored.len() as u64 - 32, u64::from);
            match blob.kind {
                BlobKind::Data => {
                    st.data_blobs += 1;
                    st.data_added += plain;
                    st.data_added_packed += blob.stored.len() as u64;
                }
                BlobKind::Tree => {
                    st.tree_blobs += 1;
                    st.trees_added += plain;
                    st.trees_added_packed += blob.stored.len() as u64;
                }
            }
        }
        let limit = match blob.kind {
            BlobKind::Data => DATA_PACK_SIZE,
            BlobKind::Tree => TREE_PACK_SIZE,
        };
        // A pack is sent off before the blob that would take it past its size, so its buffer
        // never grows beyond what it was given. It is sent while the lock is held: a second
        // sealer waits here with its blob instead of filling and holding another pack.
        let mut open = self.open[slot(blob.kind)].lock().expect("pack");
        if !open.blobs.is_empty() && open.buf.len() + blob.stored.len() > limit {
            let full = std::mem::replace(&mut *open, OpenPack::new(blob.kind, &self.spare));
            self.send(blob.kind, full)?;
        }
        let offset = open.buf.len() as u32;
        open.buf.extend_from_slice(&blob.stored);
        open.blobs.push((
            blob.id,
            offset,
            blob.stored.len() as u32,
            blob.uncompressed_length,
        ));
        Ok(())
    }

    fn send(&self, kind: BlobKind, pack: OpenPack) -> Result<()> {
        let tx = self.upload.lock().expect("upload").clone();
        match tx {
            Some(tx) => tx
                .send((kind, pack))
                .map_err(|_| Error::new(Kind::Internal, "the pack uploaders stopped")),
            None => Err(Error::new(Kind::Internal, "the packer is finished")),
        }
    }

    /// Close the uploaders' queue and wait until each has stored what it took.
    fn stop_uploaders(&self) {
        self.upload.lock().expect("upload").take();
        for h in self.uploaders.lock().expect("uploaders").drain(..) {
            let _ = h.join();
        }
    }

    /// Store the last packs, wait for every upload, then write the index naming them.
    pub fn finish(&self) -> Result<PackStats> {
        for kind in [BlobKind::Data, BlobKind::Tree] {
            let pack = std::mem::replace(
                &mut *self.open[slot(kind)].lock().expect("pack"),
                OpenPack::new(kind, &self.spare),
            );
            if !pack.blobs.is_empty() {
                self.send(kind, pack)?;
            }
        }
        self.stop_uploaders();
        if let Some(e) = self.error.lock().expect("err").take() {
            return Err(e);
        }
        let packs = std::mem::take(&mut *self.stored.lock().expect("stored"));
        let mut stats = self.stats.lock().expect("stats").clone();
        stats.packs = packs.len() as u64;
        let mut packs = packs.into_iter().peekable();
        while packs.peek().is_some() {
            let chunk: Vec<_> = packs.by_ref().take(PACKS_PER_INDEX).collect();
            let json = serde_json::to_vec(&IndexJson {
                supersedes: None,
                packs: chunk,
            })
            .map_err(|e| Error::new(Kind::Internal, format!("index: {e}")))?;
            let (stored, id) = encode_file(&self.key, &json)?;
            self.objects.put(&format!("index/{id}"), &stored)?;
        }
        Ok(stats)
    }
}

impl Drop for Packer {
    fn drop(&mut self) {
        // A run that failed: stop the uploaders (what they stored is unreferenced, as after an
        // interrupted restic backup; prune removes it).
        self.stop_uploaders();
    }
}

fn store_pack(
    objects: &dyn ObjectStore,
    key: &RepoKey,
    kind: BlobKind,
    mut pack: OpenPack,
    spare: &Spare,
) -> Result<IndexPackJson> {
    let compressed_type = |c: bool| match (kind, c) {
        (BlobKind::Data, false) => 0u8,
        (BlobKind::Tree, false) => 1,
        (BlobKind::Data, true) => 2,
        (BlobKind::Tree, true) => 3,
    };
    let mut header = Vec::with_capacity(pack.blobs.len() * 41);
    for (id, _, len, ulen) in &pack.blobs {
        header.push(compressed_type(ulen.is_some()));
        header.extend_from_slice(&len.to_le_bytes());
        if let Some(u) = ulen {
            header.extend_from_slice(&u.to_le_bytes());
        }
        header.extend_from_slice(id);
    }
    let header = key.encrypt(&header);
    pack.buf.extend_from_slice(&header);
    pack.buf
        .extend_from_slice(&(header.len() as u32).to_le_bytes());
    let id = sha256(&pack.buf);
    objects.put(&pack_key(&id), &pack.buf)?;
    if kind == BlobKind::Data {
        let mut buf = std::mem::take(&mut pack.buf);
        buf.clear();
        spare.lock().expect("spare").push(buf);
    }
    Ok(IndexPackJson {
        id: hex::encode(id),
        blobs: pack
            .blobs
            .into_iter()
            .map(|(id, offset, length, uncompressed_length)| IndexBlobJson {
                id: hex::encode(id),
                kind,
                offset,
                length,
                uncompressed_length,
            })
            .collect(),
    })
}

/// A chunk's bytes and its id, on their way to a worker.
pub struct PlainBlob {
    pub id: BlobId,
    pub kind: BlobKind,
    pub data: Bytes,
}
