//! PostgreSQL write-ahead log, as the archive sees it: file names, LSNs, and what a segment
//! holds (system identifier, commit times, restore points) read straight from its pages.
//!
//! Pure code over bytes: the archive (store crate) and recovery planning (engine) call it, and
//! unit tests drive it with synthetic segments. Layouts follow PostgreSQL 15's
//! `access/xlog_internal.h` and `access/xlogrecord.h`.

use std::fmt;

/// A WAL location (`16/B374D848`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::str::FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (hi, lo) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not an LSN (expected HEX/HEX, e.g. 0/3000028)"))?;
        let p = |x: &str| {
            u32::from_str_radix(x, 16)
                .map_err(|_| format!("`{s}` is not an LSN (expected HEX/HEX, e.g. 0/3000028)"))
        };
        Ok(Lsn(((p(hi)? as u64) << 32) | p(lo)? as u64))
    }
}

pub const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// What a file in the WAL archive is, by its name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum WalFile {
    /// `000000010000000000000003`: timeline 1, segment number 3.
    Segment { timeline: u32, segno: u64 },
    /// `000000010000000000000003.partial`: the last, incomplete segment of a timeline that was
    /// left by a promotion.
    Partial { timeline: u32, segno: u64 },
    /// `00000002.history`: how timeline 2 branched off.
    History { timeline: u32 },
    /// `000000010000000000000003.00000028.backup`: a backup's start/stop record.
    BackupLabel {
        timeline: u32,
        segno: u64,
        offset: u32,
    },
}

fn hex32(s: &str) -> Option<u32> {
    (s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(s, 16).ok())
        .flatten()
}

impl WalFile {
    /// Parse an archive file name; `None` for anything PostgreSQL would not archive.
    pub fn parse(name: &str, seg_size: u64) -> Option<WalFile> {
        let per_log = 0x1_0000_0000 / seg_size;
        let seg = |s: &str| -> Option<(u32, u64)> {
            if s.len() != 24 {
                return None;
            }
            let tli = hex32(&s[..8])?;
            let log = hex32(&s[8..16])? as u64;
            let seg = hex32(&s[16..24])? as u64;
            (seg < per_log).then_some((tli, log * per_log + seg))
        };
        if let Some(t) = name.strip_suffix(".history") {
            return Some(WalFile::History {
                timeline: hex32(t)?,
            });
        }
        if let Some(s) = name.strip_suffix(".partial") {
            let (timeline, segno) = seg(s)?;
            return Some(WalFile::Partial { timeline, segno });
        }
        if let Some(s) = name.strip_suffix(".backup") {
            let (s, off) = s.split_once('.')?;
            let (timeline, segno) = seg(s)?;
            return Some(WalFile::BackupLabel {
                timeline,
                segno,
                offset: hex32(off)?,
            });
        }
        let (timeline, segno) = seg(name)?;
        Some(WalFile::Segment { timeline, segno })
    }
}

/// The file name of a segment.
pub fn segment_name(timeline: u32, segno: u64, seg_size: u64) -> String {
    let per_log = 0x1_0000_0000 / seg_size;
    format!(
        "{timeline:08X}{:08X}{:08X}",
        segno / per_log,
        segno % per_log
    )
}

/// The segment number holding `lsn`.
pub fn segno_of(lsn: Lsn, seg_size: u64) -> u64 {
    lsn.0 / seg_size
}

/// Microseconds since 2000-01-01 UTC (PostgreSQL's `TimestampTz`) to Unix microseconds.
pub fn pg_time_to_unix_micros(t: i64) -> i64 {
    const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
    t + PG_EPOCH_UNIX_SECS * 1_000_000
}

/// A restore point created with `pg_create_restore_point(name)`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestorePoint {
    pub name: String,
    /// Unix microseconds.
    pub time: i64,
    pub lsn: String,
}

/// What one segment holds, as far as recovery targets are concerned.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SegmentSummary {
    pub system_id: u64,
    pub seg_size: u64,
    pub timeline: u32,
    /// Times (Unix microseconds) of the first and last commit or abort record that starts in
    /// this segment: the times a `recovery_target_time` is compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_xact_time: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_xact_time: Option<i64>,
    /// Transactions committed in this segment.
    #[serde(default)]
    pub commits: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restore_points: Vec<RestorePoint>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SegmentError {
    TooShort,
    BadMagic(u16),
    NotFirstPage,
}

impl fmt::Display for SegmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SegmentError::TooShort => f.write_str("file is too short to be a WAL segment"),
            SegmentError::BadMagic(m) => write!(
                f,
                "page header magic {m:#06x} is not a PostgreSQL WAL page (expected 0xd110 for PostgreSQL 15)"
            ),
            SegmentError::NotFirstPage => {
                f.write_str("the first page has no long header: not the start of a WAL segment")
            }
        }
    }
}

const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;
const SHORT_PHD: usize = 24;
const LONG_PHD: usize = 40;
const RECORD_HEADER: usize = 24;
const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
const XLOG_SWITCH: u8 = 0x40;
const XLOG_RESTORE_POINT: u8 = 0x70;
/// WAL page magic numbers this code understands (PostgreSQL 13–16).
const KNOWN_MAGIC: [u16; 4] = [0xD106, 0xD10D, 0xD110, 0xD113];

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn maxalign(x: usize) -> usize {
    (x + 7) & !7
}

/// Reads the logical record stream of one segment, stepping over page headers.
struct Pages<'a> {
    seg: &'a [u8],
    blcksz: usize,
    seg_start: u64,
    /// Physical position in `seg`.
    pos: usize,
}

impl Pages<'_> {
    fn page_header_len(&self, page_start: usize) -> usize {
        if page_start == 0 {
            LONG_PHD
        } else {
            SHORT_PHD
        }
    }

    /// A page is valid when its header names this segment's address; recycled segments keep
    /// stale pages after the end of the real WAL.
    fn page_valid(&self, page_start: usize) -> bool {
        if page_start + SHORT_PHD > self.seg.len() {
            return false;
        }
        let magic = u16_at(self.seg, page_start);
        KNOWN_MAGIC.contains(&magic)
            && u64_at(self.seg, page_start + 8) == self.seg_start + page_start as u64
    }

    /// Copy `n` logical bytes from the current position, crossing page headers.
    fn read(&mut self, n: usize, out: &mut Vec<u8>) -> bool {
        let mut left = n;
        while left > 0 {
            if self.pos.is_multiple_of(self.blcksz) {
                if !self.page_valid(self.pos) {
                    return false;
                }
                self.pos += self.page_header_len(self.pos);
            }
            let page_end = (self.pos / self.blcksz + 1) * self.blcksz;
            let take = left.min(page_end - self.pos);
            if self.pos + take > self.seg.len() {
                return false;
            }
            out.extend_from_slice(&self.seg[self.pos..self.pos + take]);
            self.pos += take;
            left -= take;
        }
        true
    }

    fn lsn(&self) -> Lsn {
        Lsn(self.seg_start + self.pos as u64)
    }
}

/// Read a segment's header and its commit/abort times and restore points. Records that
/// continue into the next segment are not read; a record cut short ends the scan.
pub fn scan_segment(seg: &[u8]) -> Result<SegmentSummary, SegmentError> {
    if seg.len() < LONG_PHD {
        return Err(SegmentError::TooShort);
    }
    let magic = u16_at(seg, 0);
    if !KNOWN_MAGIC.contains(&magic) {
        return Err(SegmentError::BadMagic(magic));
    }
    let info = u16_at(seg, 2);
    if info & XLP_LONG_HEADER == 0 {
        return Err(SegmentError::NotFirstPage);
    }
    let mut sum = SegmentSummary {
        timeline: u32_at(seg, 4),
        system_id: u64_at(seg, 24),
        seg_size: u32_at(seg, 32) as u64,
        ..Default::default()
    };
    let blcksz = u32_at(seg, 36) as usize;
    if blcksz < 1024 || !blcksz.is_power_of_two() || seg.len() < blcksz {
        return Err(SegmentError::TooShort);
    }
    let mut pages = Pages {
        seg,
        blcksz,
        seg_start: u64_at(seg, 8),
        pos: LONG_PHD,
    };
    if info & XLP_FIRST_IS_CONTRECORD != 0 {
        // The tail of a record that began in the previous segment.
        let rem = u32_at(seg, 16) as usize;
        let mut skip = Vec::with_capacity(rem);
        if !pages.read(rem, &mut skip) {
            return Ok(sum);
        }
    }
    let mut rec = Vec::new();
    loop {
        pages.pos = maxalign(pages.pos);
        if pages.pos >= seg.len() {
            break;
        }
        let at = pages.lsn();
        rec.clear();
        if !pages.read(4, &mut rec) {
            break;
        }
        let tot = u32_at(&rec, 0) as usize;
        if !(RECORD_HEADER..=1 << 30).contains(&tot) {
            break;
        }
        if !pages.read(tot - 4, &mut rec) {
            break;
        }
        let (info, rmid) = (rec[16], rec[17]);
        match rmid {
            RM_XLOG_ID if info & 0xF0 == XLOG_SWITCH => break,
            RM_XLOG_ID if info & 0xF0 == XLOG_RESTORE_POINT => {
                if let Some(d) = main_data(&rec) {
                    if d.len() >= 8 {
                        let name_bytes = &d[8..d.len().min(8 + 64)];
                        let end = name_bytes
                            .iter()
                            .position(|&b| b == 0)
                            .unwrap_or(name_bytes.len());
                        sum.restore_points.push(RestorePoint {
                            name: String::from_utf8_lossy(&name_bytes[..end]).into_owned(),
                            time: pg_time_to_unix_micros(u64_at(d, 0) as i64),
                            lsn: at.to_string(),
                        });
                    }
                }
            }
            RM_XACT_ID => {
                // XLOG_XACT_OPMASK: commit, abort, commit/abort prepared carry xact_time first.
                let op = info & 0x70;
                if matches!(op, 0x00 | 0x20 | 0x30 | 0x40) {
                    if let Some(d) = main_data(&rec) {
                        if d.len() >= 8 {
                            let t = pg_time_to_unix_micros(u64_at(d, 0) as i64);
                            sum.first_xact_time.get_or_insert(t);
                            sum.last_xact_time =
                                Some(sum.last_xact_time.map_or(t, |m: i64| m.max(t)));
                            if matches!(op, 0x00 | 0x30) {
                                sum.commits += 1;
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(sum)
}

/// The main data of a decoded record (`XLogRecordBlockHeader`s, then block data, then main
/// data), or `None` when the record has none or is malformed.
fn main_data(rec: &[u8]) -> Option<&[u8]> {
    let mut at = RECORD_HEADER;
    let mut block_data = 0usize;
    let mut main_len = 0usize;
    while at < rec.len() {
        let id = rec[at];
        at += 1;
        match id {
            255 => {
                main_len = *rec.get(at)? as usize;
                at += 1;
                break;
            }
            254 => {
                main_len = u32_at(rec.get(..at + 4)?, at) as usize;
                at += 4;
                break;
            }
            253 => at += 2,
            252 => at += 4,
            0..=32 => {
                let fork_flags = *rec.get(at)?;
                let data_len = u16_at(rec.get(..at + 3)?, at + 1) as usize;
                at += 3;
                block_data += data_len;
                if fork_flags & 0x10 != 0 {
                    // Full-page image: length, hole offset, info, and for a compressed image
                    // with a hole, the hole's length.
                    let img_len = u16_at(rec.get(..at + 2)?, at) as usize;
                    let img_info = *rec.get(at + 4)?;
                    at += 5;
                    if img_info & 0x01 != 0 && img_info & (0x04 | 0x08 | 0x10) != 0 {
                        at += 2;
                    }
                    block_data += img_len;
                }
                if fork_flags & 0x80 == 0 {
                    at += 12; // RelFileNode
                }
                at += 4; // block number
            }
            _ => return None,
        }
    }
    let start = at + block_data;
    rec.get(start..start + main_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert!("16-B3".parse::<Lsn>().is_err());
    }

    #[test]
    fn names() {
        let s = DEFAULT_SEGMENT_SIZE;
        assert_eq!(
            WalFile::parse("0000000200000001000000FE", s),
            Some(WalFile::Segment {
                timeline: 2,
                segno: 0x1FE
            })
        );
        assert_eq!(segment_name(2, 0x1FE, s), "0000000200000001000000FE");
        assert_eq!(segment_name(1, 0x100, s), "000000010000000100000000");
        assert_eq!(
            WalFile::parse("00000002.history", s),
            Some(WalFile::History { timeline: 2 })
        );
        assert_eq!(
            WalFile::parse("000000010000000000000003.00000028.backup", s),
            Some(WalFile::BackupLabel {
                timeline: 1,
                segno: 3,
                offset: 0x28
            })
        );
        assert!(matches!(
            WalFile::parse("000000010000000000000003.partial", s),
            Some(WalFile::Partial { .. })
        ));
        // Segment 0x100 does not exist with 16 MiB segments: the name would be 00000001 00000001 00000000.
        assert_eq!(WalFile::parse("000000010000000000000100", s), None);
        assert_eq!(WalFile::parse("RECOVERYXLOG", s), None);
        assert_eq!(WalFile::parse("../../etc/passwd", s), None);
        assert_eq!(segno_of("0/3000028".parse().unwrap(), s), 3);
    }

    /// A synthetic segment: long header, a commit record that crosses a page boundary, a
    /// restore point, then zeros.
    fn synthetic() -> Vec<u8> {
        let blck = 8192usize;
        let mut seg = vec![0u8; blck * 4];
        let seg_start: u64 = 3 * DEFAULT_SEGMENT_SIZE;
        for p in 0..4 {
            let at = p * blck;
            seg[at..at + 2].copy_from_slice(&0xD110u16.to_le_bytes());
            // Page 0 starts with the 100-byte tail of a record from the previous segment.
            let info: u16 = if p == 0 {
                XLP_LONG_HEADER | XLP_FIRST_IS_CONTRECORD
            } else {
                0
            };
            seg[at + 2..at + 4].copy_from_slice(&info.to_le_bytes());
            seg[at + 4..at + 8].copy_from_slice(&1u32.to_le_bytes());
            seg[at + 8..at + 16].copy_from_slice(&(seg_start + at as u64).to_le_bytes());
        }
        seg[16..20].copy_from_slice(&100u32.to_le_bytes());
        // The continuation looks like a commit record header: a scanner that does not skip it
        // would count a commit.
        seg[LONG_PHD..LONG_PHD + 100].fill(0);
        seg[LONG_PHD..LONG_PHD + 4].copy_from_slice(&42u32.to_le_bytes());
        seg[LONG_PHD + 17] = RM_XACT_ID;
        seg[24..32].copy_from_slice(&7_000_000_000_000_000_001u64.to_le_bytes());
        seg[32..36].copy_from_slice(&(DEFAULT_SEGMENT_SIZE as u32).to_le_bytes());
        seg[36..40].copy_from_slice(&(blck as u32).to_le_bytes());
        let record = |rmid: u8, info: u8, main: &[u8]| {
            let mut r = vec![0u8; RECORD_HEADER];
            r.push(255);
            r.push(main.len() as u8);
            r.extend_from_slice(main);
            let tot = r.len() as u32;
            r[0..4].copy_from_slice(&tot.to_le_bytes());
            r[16] = info;
            r[17] = rmid;
            r
        };
        // Write records into the logical stream.
        let mut logical = Vec::new();
        let mut padding = vec![0u8; 8150 - 144]; // a filler record body
        let filler_len = padding.len() as u32;
        padding[0..4].copy_from_slice(&filler_len.to_le_bytes());
        padding[17] = 9; // some other resource manager
        logical.push(padding);
        let t1: i64 = 100_000_000; // 100 s after 2000-01-01
        let mut main = t1.to_le_bytes().to_vec();
        main.extend_from_slice(&[0u8; 8]);
        logical.push(record(RM_XACT_ID, 0x00, &main));
        let mut rp = (t1 + 5_000_000).to_le_bytes().to_vec();
        let mut name = b"before-migration".to_vec();
        name.resize(64, 0);
        rp.extend_from_slice(&name);
        logical.push(record(RM_XLOG_ID, XLOG_RESTORE_POINT, &rp));
        // Lay the records out over pages, after the continuation.
        let mut pos = LONG_PHD + 100;
        for r in logical {
            pos = maxalign(pos);
            for &b in &r {
                if pos.is_multiple_of(blck) {
                    pos += SHORT_PHD;
                }
                seg[pos] = b;
                pos += 1;
            }
        }
        seg
    }

    #[test]
    fn scans_commit_times_across_pages_and_restore_points() {
        let seg = synthetic();
        let s = scan_segment(&seg).unwrap();
        assert_eq!(s.system_id, 7_000_000_000_000_000_001);
        assert_eq!(s.timeline, 1);
        assert_eq!(s.seg_size, DEFAULT_SEGMENT_SIZE);
        assert_eq!(s.commits, 1);
        let t = pg_time_to_unix_micros(100_000_000);
        assert_eq!(s.first_xact_time, Some(t));
        assert_eq!(s.last_xact_time, Some(t));
        assert_eq!(s.restore_points.len(), 1);
        assert_eq!(s.restore_points[0].name, "before-migration");
        assert_eq!(s.restore_points[0].time, t + 5_000_000);
    }

    #[test]
    fn stale_pages_end_the_scan() {
        let mut seg = synthetic();
        // Page 1 claims another address (a recycled segment): the commit crossing into it is
        // not read.
        seg[8192 + 8..8192 + 16].copy_from_slice(&0u64.to_le_bytes());
        let s = scan_segment(&seg).unwrap();
        assert_eq!(s.commits, 0);
    }

    #[test]
    fn rejects_non_wal() {
        assert_eq!(scan_segment(&[0u8; 10]), Err(SegmentError::TooShort));
        assert!(matches!(
            scan_segment(&[0xAB; 8192]),
            Err(SegmentError::BadMagic(_))
        ));
    }
}
