//! Time the stages of a WAL push on real segments: `walstages DIR...`
use std::time::Instant;
fn main() {
    let key = lifeboat_store::lock::RepoKey::from_hex(&"ab".repeat(64)).unwrap();
    let mut rows: Vec<[f64; 6]> = vec![];
    for p in std::env::args().skip(1) {
        let data = std::fs::read(&p).unwrap();
        let t = Instant::now();
        let c = zstd::bulk::compress(&data, 1).unwrap();
        let z = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let _m = key.mac("wal-content", &data);
        let h = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let _s = lifeboat_core::wal::scan_segment(&data).unwrap();
        let s = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let e = key.encrypt(&c);
        let en = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let o = lifeboat_store::objects::LocalObjects::new("/var/tmp/lifeboat-walpush/stages");
        use lifeboat_store::objects::ObjectStore;
        o.put(&format!("x/{}", p.rsplit('/').next().unwrap()), &e)
            .unwrap();
        let w = t.elapsed().as_secs_f64() * 1e3;
        rows.push([z, h, s, en, w, c.len() as f64 / 1e6]);
    }
    let names = ["zstd1", "hmac", "scan", "encrypt", "put+fsync", "MB out"];
    for (i, n) in names.iter().enumerate() {
        let mut v: Vec<f64> = rows.iter().map(|r| r[i]).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{n:10} p50 {:7.2} min {:7.2} max {:7.2}",
            v[v.len() / 2],
            v[0],
            v[v.len() - 1]
        );
    }
}
