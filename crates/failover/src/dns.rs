//! A built-in DNS responder: answers for a service's name with the record of the
//! member Lifeboat routes writes to — A for an IPv4 address, AAAA for IPv6, CNAME for a host
//! name — with a short TTL, like Route 53's failover routing policy. While no member may take
//! writes (a failover under way, or held) the name answers SERVFAIL, so resolvers retry instead
//! of caching a wrong answer. Other names: REFUSED (it is authoritative for its names only).
//! Over UDP and TCP (length-prefixed, for resolvers that retry or ask over TCP); no recursion.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

/// What one service's name resolves to now.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    /// Lower-case, without the trailing dot.
    pub name: String,
    pub ttl: u32,
    /// The routed primary's record, or none.
    pub target: Option<String>,
}

pub type Names = Arc<Mutex<Vec<Answer>>>;

const A: u16 = 1;
const CNAME: u16 = 5;
const AAAA: u16 = 28;
const ANY: u16 = 255;

/// Parse a query: (id, flags, question name, qtype, qclass, end of the question).
fn parse(q: &[u8]) -> Option<(u16, u16, String, u16, u16, usize)> {
    if q.len() < 12 {
        return None;
    }
    let id = u16::from_be_bytes([q[0], q[1]]);
    let flags = u16::from_be_bytes([q[2], q[3]]);
    let qd = u16::from_be_bytes([q[4], q[5]]);
    if qd != 1 || flags & 0x8000 != 0 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression in a question: not from a sane client
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let qclass = u16::from_be_bytes([*q.get(i + 2)?, *q.get(i + 3)?]);
    Some((id, flags, labels.join("."), qtype, qclass, i + 4))
}

fn encode_name(name: &str, out: &mut Vec<u8>) {
    for l in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(l.len().min(63) as u8);
        out.extend_from_slice(&l.as_bytes()[..l.len().min(63)]);
    }
    out.push(0);
}

/// The response to one query packet (None: not a query worth answering).
pub fn respond(q: &[u8], names: &[Answer]) -> Option<Vec<u8>> {
    let (id, flags, name, qtype, qclass, qend) = parse(q)?;
    let rd = flags & 0x0100;
    let opcode = (flags >> 11) & 0xF;
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&id.to_be_bytes());
    let found = names.iter().find(|n| n.name == name);
    // rcode: 0 ok, 2 SERVFAIL, 4 NOTIMP, 5 REFUSED.
    let (rcode, answer) = match found {
        _ if opcode != 0 => (4, None),
        None => (5, None),
        Some(Answer { target: None, .. }) => (2, None),
        Some(a) => (0, Some(a)),
    };
    let mut records: Vec<(u16, Vec<u8>)> = Vec::new();
    if let Some(a) = answer {
        let t = a.target.as_deref().unwrap_or_default();
        match t.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) if qtype == A || qtype == ANY => {
                records.push((A, v4.octets().to_vec()))
            }
            Ok(IpAddr::V6(v6)) if qtype == AAAA || qtype == ANY => {
                records.push((AAAA, v6.octets().to_vec()))
            }
            Ok(_) => {} // the name exists, not with this type: NODATA
            Err(_) => {
                let mut n = Vec::new();
                encode_name(t, &mut n);
                records.push((CNAME, n));
            }
        }
    }
    // QR, AA, RD copied; RA clear.
    let rflags: u16 = 0x8000 | 0x0400 | rd | rcode;
    out.extend_from_slice(&rflags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes()); // questions
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&q[12..qend]);
    let ttl = answer.map(|a| a.ttl).unwrap_or(0);
    for (rtype, data) in records {
        out.extend_from_slice(&[0xC0, 0x0C]); // the question's name
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&qclass.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    Some(out)
}

/// The responder's sockets: UDP and TCP on the same address (resolvers retry over TCP when an
/// answer is truncated, and some ask over TCP only).
pub struct Sockets {
    udp: UdpSocket,
    tcp: TcpListener,
}

/// Answer queries on both sockets until `stop` turns true.
pub async fn serve(socks: Sockets, names: Names, mut stop: watch::Receiver<bool>) {
    let mut buf = [0u8; 1500];
    loop {
        tokio::select! {
            r = socks.udp.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let answer = names.lock().ok().and_then(|names| respond(&buf[..n], &names));
                if let Some(a) = answer {
                    let _ = socks.udp.send_to(&a, from).await;
                }
            }
            r = socks.tcp.accept() => {
                if let Ok((conn, _)) = r {
                    tokio::spawn(serve_tcp(conn, names.clone()));
                }
            }
            _ = stop.changed() => {
                if *stop.borrow() {
                    return;
                }
            }
        }
    }
}

/// One TCP connection: length-prefixed queries (RFC 1035 4.2.2), answered until the client
/// closes it or stays silent for 10 s.
async fn serve_tcp(mut conn: TcpStream, names: Names) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let idle = std::time::Duration::from_secs(10);
    loop {
        let mut len = [0u8; 2];
        if !matches!(
            tokio::time::timeout(idle, conn.read_exact(&mut len)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
        if !matches!(
            tokio::time::timeout(idle, conn.read_exact(&mut q)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Some(a) = names.lock().ok().and_then(|names| respond(&q, &names)) else {
            return;
        };
        let mut out = (a.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&a);
        if conn.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Bind the responder's sockets (UDP and TCP).
pub async fn bind(addr: &str) -> std::io::Result<Sockets> {
    let a: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    Ok(Sockets {
        udp: UdpSocket::bind(a).await?,
        tcp: TcpListener::bind(a).await?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        encode_name(name, &mut q);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    fn names(target: Option<&str>) -> Vec<Answer> {
        vec![Answer {
            name: "db.lifeboat.internal".into(),
            ttl: 5,
            target: target.map(str::to_string),
        }]
    }

    #[test]
    fn a_record_of_the_primary_with_its_ttl() {
        let r = respond(&query("DB.lifeboat.internal", A), &names(Some("10.0.2.5"))).unwrap();
        assert_eq!(&r[0..2], &[0x12, 0x34]);
        assert_eq!(r[3] & 0x0F, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1, "one answer");
        assert_eq!(&r[r.len() - 4..], &[10, 0, 2, 5]);
        let ttl = &r[r.len() - 10..r.len() - 6];
        assert_eq!(u32::from_be_bytes(ttl.try_into().unwrap()), 5);
    }

    #[test]
    fn no_primary_is_servfail_other_names_refused_other_types_nodata() {
        let r = respond(&query("db.lifeboat.internal", A), &names(None)).unwrap();
        assert_eq!(r[3] & 0x0F, 2);
        let r = respond(&query("www.example.com", A), &names(Some("10.0.2.5"))).unwrap();
        assert_eq!(r[3] & 0x0F, 5);
        let r = respond(
            &query("db.lifeboat.internal", AAAA),
            &names(Some("10.0.2.5")),
        )
        .unwrap();
        assert_eq!(r[3] & 0x0F, 0);
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 0);
        let q = query("db.lifeboat.internal", A);
        let r = respond(&q, &names(Some("west.db.internal"))).unwrap();
        let at = q.len() + 2;
        assert_eq!(u16::from_be_bytes([r[at], r[at + 1]]), CNAME);
        assert!(respond(&[1, 2, 3], &names(None)).is_none());
    }
}
