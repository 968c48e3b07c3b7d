//! The drill's DNS client: one A or AAAA question over UDP to the daemon's responder, as a
//! client library would ask it, and the answer's TTL so a writer caches it as clients do.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A question for `name` (type 1 = A, 28 = AAAA) with the given id, recursion desired.
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len().min(63) as u8);
        q.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

/// Skip a (possibly compressed) name at `i`; the offset after it.
fn skip_name(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *b.get(i)? as usize;
        if len == 0 {
            return Some(i + 1);
        }
        if len & 0xC0 == 0xC0 {
            return Some(i + 2);
        }
        i += 1 + len;
    }
}

/// The first address in an answer to question `id`, and its TTL.
pub fn parse(b: &[u8], id: u16) -> Result<(IpAddr, u32), String> {
    if b.len() < 12 || u16::from_be_bytes([b[0], b[1]]) != id {
        return Err("a reply that does not answer the question".into());
    }
    match b[3] & 0x0F {
        0 => {}
        2 => return Err("SERVFAIL (no member may take writes)".into()),
        3 => return Err("NXDOMAIN (the name is not the service's)".into()),
        r => return Err(format!("rcode {r}")),
    }
    let qd = u16::from_be_bytes([b[4], b[5]]);
    let an = u16::from_be_bytes([b[6], b[7]]);
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(b, i).ok_or("a short reply")? + 4;
    }
    for _ in 0..an {
        i = skip_name(b, i).ok_or("a short reply")?;
        let h = b.get(i..i + 10).ok_or("a short reply")?;
        let rtype = u16::from_be_bytes([h[0], h[1]]);
        let ttl = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let len = u16::from_be_bytes([h[8], h[9]]) as usize;
        let data = b.get(i + 10..i + 10 + len).ok_or("a short reply")?;
        match (rtype, len) {
            (1, 4) => return Ok((IpAddr::from([data[0], data[1], data[2], data[3]]), ttl)),
            (28, 16) => {
                let mut a = [0u8; 16];
                a.copy_from_slice(data);
                return Ok((IpAddr::from(a), ttl));
            }
            _ => {}
        }
        i += 10 + len;
    }
    Err("no address in the answer (a CNAME is not followed)".into())
}

/// Ask `server` for `name`'s address (A, then AAAA), within `timeout`.
pub async fn resolve(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<(IpAddr, u32), String> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().unwrap_or(server)
    } else {
        "[::]:0".parse().unwrap_or(server)
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("dns: {e}"))?;
    let mut last = String::new();
    for qtype in [1u16, 28] {
        let mut idb = [0u8; 2];
        let _ = getrandom::fill(&mut idb);
        let id = u16::from_be_bytes(idb);
        sock.send_to(&query(id, name, qtype), server)
            .await
            .map_err(|e| format!("dns: {e}"))?;
        let mut buf = [0u8; 1500];
        let got = tokio::time::timeout(timeout, async {
            loop {
                let (n, from) = sock.recv_from(&mut buf).await?;
                if from == server && n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                    return Ok::<usize, std::io::Error>(n);
                }
            }
        })
        .await;
        match got {
            Ok(Ok(n)) => match parse(&buf[..n], id) {
                Ok(a) => return Ok(a),
                Err(e) => last = e,
            },
            Ok(Err(e)) => return Err(format!("dns: {e}")),
            Err(_) => return Err(format!("dns: no answer from {server} within {timeout:?}")),
        }
    }
    Err(format!("dns: {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_with_a_compressed_name_gives_its_address_and_ttl() {
        let q = query(0x1234, "db.lab.internal", 1);
        let mut r = q.clone();
        r[2] = 0x81;
        r[3] = 0x80;
        r[7] = 1; // one answer
        r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 213, 7, 3]);
        assert_eq!(parse(&r, 0x1234), Ok(("10.213.7.3".parse().unwrap(), 5)));
        assert!(parse(&r, 0x4321).is_err(), "another question's id");
        let mut fail = q.clone();
        fail[3] = 0x82;
        assert!(parse(&fail, 0x1234).unwrap_err().contains("SERVFAIL"));
        assert!(parse(&r[..r.len() - 2], 0x1234).is_err(), "a short reply");
    }
}
