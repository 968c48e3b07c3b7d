//! Content-defined chunking with a gear hash (FastCDC's rolling hash, normalised chunking).
//!
//! The restic format does not fix the chunker: readers take blob boundaries from the index, so
//! any content-defined chunker writes repositories restic reads. Rabin fingerprints a byte at a
//! time through two table lookups and a polynomial reduction; the gear hash is one shift, one
//! add and one lookup per byte, and FastCDC reports about the same deduplication. The bounds are
//! restic's: no chunk below 512 KiB (except a file's last), none above 8 MiB, about 1 MiB on
//! average.
//!
//! The gear table is derived from the repository's key, as restic draws a random polynomial per
//! repository: chunk boundaries then depend on a secret, so the sizes of stored blobs do not
//! reveal which known file a repository holds. Two backups into one repository cut the same
//! content at the same places, which is what deduplication needs.

use std::io::Read;

use bytes::{Bytes, BytesMut};

pub const MIN_SIZE: usize = 512 * 1024;
pub const AVG_SIZE: usize = 1024 * 1024;
pub const MAX_SIZE: usize = 8 * 1024 * 1024;

/// How much is read from a file at a time.
const READ_SIZE: usize = 1024 * 1024;
/// A read past the size the metadata gave: usually it only finds the end of the file.
const PROBE: usize = 64 * 1024;
/// How much a read buffer grows by when it runs out (chunks handed on keep the old one alive
/// until they are stored, so this bounds what each of them holds on to).
const GROW: usize = 4 * 1024 * 1024;

#[derive(Clone)]
pub struct Chunker {
    gear: Box<[u64; 256]>,
    /// Harder to match before the average size, easier after it (normalised chunking): chunk
    /// sizes cluster around the average instead of spreading exponentially.
    mask_small: u64,
    mask_large: u64,
    min: usize,
    avg: usize,
    max: usize,
}

/// A mask of `bits` ones in the top of a u64: the top bits of a gear hash depend on the last 64
/// bytes, its low bits only on the last few.
fn top_bits(bits: u32) -> u64 {
    !0u64 << (64 - bits)
}

impl Chunker {
    /// A chunker whose gear table comes from `seed` (32 secret bytes derived from the key).
    pub fn new(seed: &[u8; 32]) -> Self {
        Self::with_sizes(seed, MIN_SIZE, AVG_SIZE, MAX_SIZE)
    }

    pub fn with_sizes(seed: &[u8; 32], min: usize, avg: usize, max: usize) -> Self {
        use sha2::Digest;
        assert!(min < avg && avg < max && avg.is_power_of_two());
        let mut gear = Box::new([0u64; 256]);
        for (i, g) in gear.iter_mut().enumerate() {
            let mut h = sha2::Sha256::new();
            h.update(seed);
            h.update((i as u32).to_le_bytes());
            let d = h.finalize();
            *g = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
        }
        // Zero bytes add nothing: after 64 of them the hash is 0 and matches, so a run of zeros
        // is cut at the minimum size (as restic's Rabin chunker does). Its all-zero chunks are
        // one blob, and a restore writes them as holes, so sparse files stay sparse.
        gear[0] = 0;
        let bits = avg.trailing_zeros();
        Self {
            gear,
            mask_small: top_bits(bits + 2),
            mask_large: top_bits(bits - 2),
            min,
            avg,
            max,
        }
    }

    /// Look for the end of the chunk that starts at `data[0]`, scanning on from where the last
    /// look stopped (`scan`: position and hash). `Some(len)` at a boundary or at the maximum
    /// size; `None` when `data` ends first (more is needed, or it is the file's last chunk).
    fn find(&self, data: &[u8], scan: &mut (usize, u64)) -> Option<usize> {
        let gear = &*self.gear;
        let end = data.len().min(self.max);
        let (mut i, mut fp) = *scan;
        while i < end.min(self.avg) {
            fp = (fp << 1).wrapping_add(gear[data[i] as usize]);
            if fp & self.mask_small == 0 {
                return Some(i + 1);
            }
            i += 1;
        }
        while i < end {
            fp = (fp << 1).wrapping_add(gear[data[i] as usize]);
            if fp & self.mask_large == 0 {
                return Some(i + 1);
            }
            i += 1;
        }
        *scan = (i.max(self.min), fp);
        (data.len() >= self.max).then_some(self.max)
    }

    /// The chunks of a reader, each handed to `emit` without a copy (they share the read
    /// buffer). `size` is what the file's metadata says (reads are sized by it, so a small file
    /// costs a small buffer); the file may turn out longer or shorter. Returns the number of
    /// bytes read.
    ///
    /// A chunk is cut as soon as its boundary has been read, so the buffer holds one partial
    /// chunk and the last read, not a maximum-sized look-ahead.
    pub fn chunks(
        &self,
        mut r: impl Read,
        size: u64,
        mut emit: impl FnMut(Bytes) -> std::io::Result<()>,
    ) -> std::io::Result<u64> {
        let first = usize::try_from(size).unwrap_or(usize::MAX);
        let mut buf = BytesMut::with_capacity(first.saturating_add(PROBE).min(GROW));
        let mut total = 0u64;
        let mut scan = (self.min, 0u64);
        loop {
            if let Some(len) = self.find(&buf, &mut scan) {
                emit(buf.split_to(len).freeze())?;
                scan = (self.min, 0);
                continue;
            }
            // Up to the size the metadata gave, then small reads until the end shows.
            let want = match size.checked_sub(total) {
                Some(left) if left > 0 => READ_SIZE.min(usize::try_from(left).unwrap_or(READ_SIZE)),
                _ => PROBE,
            };
            if buf.capacity() - buf.len() < want {
                buf.reserve(want.max(GROW));
            }
            let n = read_more(&mut r, &mut buf, want)?;
            total += n as u64;
            if n == 0 {
                if !buf.is_empty() {
                    emit(buf.split().freeze())?;
                }
                return Ok(total);
            }
        }
    }
}

/// One read of up to `want` bytes appended to `buf`, retried when a signal interrupts it.
/// Returns how many were read (0 at the end of the file).
fn read_more(r: &mut impl Read, buf: &mut BytesMut, want: usize) -> std::io::Result<usize> {
    let start = buf.len();
    buf.resize(start + want, 0);
    let n = loop {
        match r.read(&mut buf[start..]) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    buf.truncate(start + *n.as_ref().unwrap_or(&0));
    n
}

/// Chunks of exactly `chunk` bytes (a file's last one shorter), each handed to `emit`: for
/// files that only change in place at fixed-size pages, such as PostgreSQL's relation files
/// (8 KiB pages, 1 GiB segments), where content-defined cuts buy nothing and cost a hash per
/// byte. A page changed in place changes one chunk; the rest keep their ids. `size` (the
/// metadata's) sizes the buffers; a file that turns out shorter or longer is read to its end.
/// Returns the bytes read.
pub fn fixed_chunks(
    mut r: impl Read,
    size: u64,
    chunk: usize,
    mut emit: impl FnMut(Bytes) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    let mut total = 0u64;
    loop {
        let left = usize::try_from(size.saturating_sub(total)).unwrap_or(chunk);
        let mut buf = BytesMut::with_capacity(left.max(PROBE).min(chunk));
        while buf.len() < chunk {
            let want = (buf.capacity() - buf.len())
                .max(PROBE)
                .min(chunk - buf.len());
            let n = read_more(&mut r, &mut buf, want)?;
            total += n as u64;
            if n == 0 {
                if !buf.is_empty() {
                    emit(buf.freeze())?;
                }
                return Ok(total);
            }
        }
        emit(buf.freeze())?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, mut x: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn cut_all(c: &Chunker, data: &[u8]) -> Vec<Bytes> {
        cut_with_size(c, data, data.len() as u64)
    }

    fn cut_with_size(c: &Chunker, data: &[u8], size: u64) -> Vec<Bytes> {
        let mut out = Vec::new();
        let n = c
            .chunks(data, size, |b| {
                out.push(b);
                Ok(())
            })
            .expect("chunks");
        assert_eq!(n as usize, data.len());
        out
    }

    #[test]
    fn chunks_respect_the_bounds_and_put_the_file_back_together() {
        let c = Chunker::new(&[7; 32]);
        let data = pseudo_random(40 << 20, 1);
        let chunks = cut_all(&c, &data);
        let (last, rest) = chunks.split_last().expect("chunks");
        for ch in rest {
            assert!(ch.len() >= MIN_SIZE && ch.len() <= MAX_SIZE, "{}", ch.len());
        }
        assert!(last.len() <= MAX_SIZE);
        assert_eq!(chunks.concat(), data);
        let avg = data.len() / chunks.len();
        assert!(
            (AVG_SIZE / 2..AVG_SIZE * 3).contains(&avg),
            "average chunk {avg} bytes"
        );
        // A run of zeros is cut at the minimum: its chunks are one blob, restored as holes.
        let mut zeros = vec![0u8; 20 << 20];
        zeros[..1000].copy_from_slice(&data[..1000]);
        let z = cut_all(&c, &zeros);
        assert!(z.len() >= 39, "{} chunks", z.len());
        assert!(
            z[1..z.len() - 1]
                .iter()
                .all(|c| c.len() <= MIN_SIZE + 64 && c.iter().all(|&b| b == 0)),
            "{:?}",
            z.iter().map(Bytes::len).collect::<Vec<_>>()
        );
        assert_eq!(z.concat(), zeros);
        assert!(cut_all(&c, &[]).is_empty());
        // A size from the metadata that is wrong (the file grew or shrank) cuts the same.
        for size in [0, 1000, data.len() as u64 * 2] {
            assert_eq!(cut_with_size(&c, &data, size), chunks, "size {size}");
        }
        assert_eq!(cut_all(&c, b"small").concat(), b"small");
    }

    #[test]
    fn an_insertion_moves_only_the_chunks_around_it_and_the_key_decides_the_cuts() {
        let c = Chunker::new(&[9; 32]);
        let data = pseudo_random(30 << 20, 2);
        let mut edited = data.clone();
        edited.splice(10 << 20..10 << 20, b"inserted bytes".iter().copied());
        let a = cut_all(&c, &data);
        let b = cut_all(&c, &edited);
        let same = b.iter().filter(|x| a.contains(x)).count();
        assert!(same + 3 >= a.len(), "{same} of {} chunks kept", a.len());
        let other = Chunker::new(&[10; 32]);
        let o = cut_all(&other, &data);
        assert_ne!(
            a.iter().map(Bytes::len).collect::<Vec<_>>(),
            o.iter().map(Bytes::len).collect::<Vec<_>>()
        );
    }

    #[test]
    fn fixed_chunks_cut_at_multiples_of_the_size_whatever_size_the_metadata_gave() {
        let data = pseudo_random((3 << 20) + 8192, 3);
        for size in [0, 8192, data.len() as u64, data.len() as u64 * 2] {
            let mut out = Vec::new();
            let n = fixed_chunks(&data[..], size, 1 << 20, |b| {
                out.push(b);
                Ok(())
            })
            .expect("chunks");
            assert_eq!(n as usize, data.len());
            let lens: Vec<usize> = out.iter().map(Bytes::len).collect();
            assert_eq!(lens, [1 << 20, 1 << 20, 1 << 20, 8192], "size {size}");
            assert_eq!(out.concat(), data);
        }
        let mut none = 0;
        fixed_chunks(&[][..], 100, 1 << 20, |_| {
            none += 1;
            Ok(())
        })
        .expect("empty");
        assert_eq!(none, 0);
    }
}
