//! A built-in DNS responder: answers for a service's name with the record of the
//! member Lifeboat routes writes to — A for an IPv4 address, AAAA for IPv6, CNAME for a host
//! name — with a short TTL, like Route 53's failover routing policy. While no member may take
//! writes (a failover under way, or held) the name answers SERVFAIL, so resolvers retry instead
//! of caching a wrong answer. Other names: REFUSED (it is authoritative for its names only).
//! Over UDP and TCP (length-prefixed, for resolvers that retry or ask over TCP); no recursion.
//! Packets are read and written with `hickory-proto`; one that cannot be read gets FORMERR
//! (or nothing, when it is not a question at all).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{rdata, Name, RData, Record, RecordType};
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

/// Point the name `key` (see [`lifeboat_core::plan::DnsSpec::key`]) at `target` (None:
/// SERVFAIL); whether its answer changed.
pub fn point(names: &Names, key: &str, target: Option<String>) -> bool {
    let Ok(mut n) = names.lock() else {
        return false;
    };
    let mut changed = false;
    for a in n.iter_mut().filter(|a| a.name == key && a.target != target) {
        a.target = target.clone();
        changed = true;
    }
    changed
}

/// The response to one query packet, parsed and written with `hickory-proto` (None: not a
/// query — an answer, or noise without a DNS header — so nothing is sent back). A packet with
/// a header that does not parse gets FORMERR, as does one with other than one question.
pub fn respond(q: &[u8], names: &[Answer]) -> Option<Vec<u8>> {
    let req = match Message::from_vec(q) {
        Ok(m) => m,
        Err(_) => {
            // The QR bit clear: someone asked; say the question could not be read.
            if q.len() >= 12 && q[2] & 0x80 == 0 {
                let id = u16::from_be_bytes([q[0], q[1]]);
                return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                    .to_vec()
                    .ok();
            }
            return None;
        }
    };
    if req.message_type() != MessageType::Query {
        return None;
    }
    let mut resp = Message::new();
    resp.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_op_code(req.op_code())
        .set_authoritative(true)
        .set_recursion_desired(req.recursion_desired())
        .set_recursion_available(false);
    let [query] = req.queries() else {
        resp.set_response_code(ResponseCode::FormErr);
        return resp.to_vec().ok();
    };
    resp.add_query(query.clone());
    if req.op_code() != OpCode::Query {
        resp.set_response_code(ResponseCode::NotImp);
        return resp.to_vec().ok();
    }
    let asked = query.name().to_lowercase().to_ascii();
    let asked = asked.trim_end_matches('.');
    let rcode = match names.iter().find(|n| n.name == asked) {
        None => ResponseCode::Refused,
        Some(Answer { target: None, .. }) => ResponseCode::ServFail,
        Some(a) => {
            let t = a.target.as_deref().unwrap_or_default();
            let qtype = query.query_type();
            let data = match t.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) if qtype == RecordType::A || qtype == RecordType::ANY => {
                    Some(RData::A(rdata::A(v4)))
                }
                Ok(IpAddr::V6(v6)) if qtype == RecordType::AAAA || qtype == RecordType::ANY => {
                    Some(RData::AAAA(rdata::AAAA(v6)))
                }
                Ok(_) => None, // the name exists, not with this type: NODATA
                Err(_) => match Name::from_ascii(t) {
                    Ok(mut n) => {
                        n.set_fqdn(true);
                        Some(RData::CNAME(rdata::CNAME(n)))
                    }
                    Err(_) => None,
                },
            };
            if let Some(d) = data {
                let mut r = Record::from_rdata(query.name().clone(), a.ttl, d);
                r.set_dns_class(query.query_class());
                resp.add_answer(r);
            }
            ResponseCode::NoError
        }
    };
    resp.set_response_code(rcode);
    resp.to_vec().ok()
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
    use hickory_proto::op::Query;

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(0x1234).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m.to_vec().unwrap()
    }

    fn names(target: Option<&str>) -> Vec<Answer> {
        vec![Answer {
            name: "db.lifeboat.internal".into(),
            ttl: 5,
            target: target.map(str::to_string),
        }]
    }

    fn answer(q: &[u8], n: &[Answer]) -> Message {
        Message::from_vec(&respond(q, n).expect("an answer")).unwrap()
    }

    #[test]
    fn a_record_of_the_primary_with_its_ttl() {
        let r = answer(
            &query("DB.lifeboat.internal", RecordType::A),
            &names(Some("10.0.2.5")),
        );
        assert_eq!(r.id(), 0x1234);
        assert_eq!(r.response_code(), ResponseCode::NoError);
        assert!(r.authoritative() && r.recursion_desired() && !r.recursion_available());
        assert_eq!(r.answers().len(), 1);
        assert_eq!(r.answers()[0].ttl(), 5);
        assert_eq!(
            r.answers()[0].data(),
            &RData::A(rdata::A("10.0.2.5".parse().unwrap()))
        );
    }

    #[test]
    fn no_primary_is_servfail_other_names_refused_other_types_nodata() {
        let r = answer(&query("db.lifeboat.internal", RecordType::A), &names(None));
        assert_eq!(r.response_code(), ResponseCode::ServFail);
        let r = answer(
            &query("www.example.com", RecordType::A),
            &names(Some("10.0.2.5")),
        );
        assert_eq!(r.response_code(), ResponseCode::Refused);
        let r = answer(
            &query("db.lifeboat.internal", RecordType::AAAA),
            &names(Some("10.0.2.5")),
        );
        assert_eq!(r.response_code(), ResponseCode::NoError);
        assert!(r.answers().is_empty());
        let r = answer(
            &query("db.lifeboat.internal", RecordType::A),
            &names(Some("west.db.internal")),
        );
        assert_eq!(r.answers()[0].record_type(), RecordType::CNAME);
        let r = answer(
            &query("db.lifeboat.internal", RecordType::AAAA),
            &names(Some("fd00::5")),
        );
        assert_eq!(r.answers()[0].record_type(), RecordType::AAAA);
    }

    #[test]
    fn malformed_packets_get_formerr_or_nothing_and_never_panic() {
        let n = names(Some("10.0.2.5"));
        // Too short for a header: nothing.
        assert!(respond(&[1, 2, 3], &n).is_none());
        assert!(respond(&[], &n).is_none());
        // A header claiming a question that is not there: FORMERR with the id.
        let mut q = query("db.lifeboat.internal", RecordType::A);
        q.truncate(14);
        let r = answer(&q, &n);
        assert_eq!((r.id(), r.response_code()), (0x1234, ResponseCode::FormErr));
        // A name compressed into a loop.
        let mut q = vec![
            0xAB, 0xCD, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1,
        ];
        let r = answer(&q, &n);
        assert_eq!(r.response_code(), ResponseCode::FormErr);
        // A label longer than 63 bytes.
        q.truncate(12);
        q.push(64);
        q.extend([b'a'; 64]);
        q.extend([0, 0, 1, 0, 1]);
        assert_eq!(answer(&q, &n).response_code(), ResponseCode::FormErr);
        // Two questions.
        let mut m = Message::new();
        m.set_id(7);
        m.add_query(Query::query(
            Name::from_ascii("db.lifeboat.internal").unwrap(),
            RecordType::A,
        ));
        m.add_query(Query::query(
            Name::from_ascii("x.lifeboat.internal").unwrap(),
            RecordType::A,
        ));
        let r = answer(&m.to_vec().unwrap(), &n);
        assert_eq!(r.response_code(), ResponseCode::FormErr);
        // An answer is never answered (no reflection loops).
        let mut m = Message::new();
        m.set_id(8).set_message_type(MessageType::Response);
        m.add_query(Query::query(
            Name::from_ascii("db.lifeboat.internal").unwrap(),
            RecordType::A,
        ));
        assert!(respond(&m.to_vec().unwrap(), &n).is_none());
        // Another opcode: NOTIMP.
        let mut m = Message::new();
        m.set_id(9).set_op_code(OpCode::Status);
        m.add_query(Query::query(
            Name::from_ascii("db.lifeboat.internal").unwrap(),
            RecordType::A,
        ));
        assert_eq!(
            answer(&m.to_vec().unwrap(), &n).response_code(),
            ResponseCode::NotImp
        );
        // Noise: whatever it is, no panic, and anything sent back is a well-formed response.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for len in 0..2000usize {
            let mut p = query("db.lifeboat.internal", RecordType::A);
            for _ in 0..1 + len % 7 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = (seed as usize) % p.len();
                p[at] = (seed >> 32) as u8;
            }
            p.truncate(len % (p.len() + 1));
            if let Some(out) = respond(&p, &n) {
                let m = Message::from_vec(&out).expect("a response that parses");
                assert_eq!(m.message_type(), MessageType::Response);
            }
        }
    }
}
