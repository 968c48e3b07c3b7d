//! The traffic endpoint: a TCP proxy per service that forwards each client to the
//! current primary. A route change (a failover: new target, higher epoch) drops every
//! connection made under the old route and sends new ones to the new primary; with no route
//! (no primary may take writes) new connections are refused by closing them at once.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub epoch: u64,
    /// `host:port` of the member that takes writes, or none.
    pub target: Option<String>,
}

/// Serve until `shutdown` turns true.
pub async fn proxy(
    listener: TcpListener,
    route: watch::Receiver<Route>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let route = route.clone();
                tokio::spawn(forward(client, route));
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

async fn forward(mut client: TcpStream, mut route: watch::Receiver<Route>) {
    let current = route.borrow_and_update().clone();
    let Some(target) = current.target.clone() else {
        let _ = client.shutdown().await;
        return;
    };
    let upstream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&target)).await;
    let Ok(Ok(mut upstream)) = upstream else {
        let _ = client.shutdown().await;
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = async {
            // Any change of epoch or target ends this connection.
            while route.changed().await.is_ok() {
                if *route.borrow() != current {
                    return;
                }
            }
        } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A TCP server answering every read with `name:` + the bytes read.
    async fn echo(name: &'static str) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        let mut out = format!("{name}:").into_bytes();
                        out.extend_from_slice(&buf[..n]);
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn ask(s: &mut TcpStream, msg: &str) -> Option<String> {
        s.write_all(msg.as_bytes()).await.ok()?;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    #[test]
    fn failover_drops_old_connections_and_routes_new_ones() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let east = echo("east").await;
            let west = echo("west").await;
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let front = l.local_addr().unwrap();
            let (route_tx, route_rx) = watch::channel(Route {
                epoch: 1,
                target: Some(east.clone()),
            });
            let (stop_tx, stop_rx) = watch::channel(false);
            let server = tokio::spawn(proxy(l, route_rx, stop_rx));

            let mut c1 = TcpStream::connect(front).await.unwrap();
            assert_eq!(ask(&mut c1, "a").await.as_deref(), Some("east:a"));

            // Failover: the old connection is cut, new ones reach west.
            route_tx
                .send(Route {
                    epoch: 2,
                    target: Some(west.clone()),
                })
                .unwrap();
            let mut buf = [0u8; 8];
            let closed = tokio::time::timeout(Duration::from_secs(5), c1.read(&mut buf))
                .await
                .expect("the old connection stayed open");
            assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
            let mut c2 = TcpStream::connect(front).await.unwrap();
            assert_eq!(ask(&mut c2, "c").await.as_deref(), Some("west:c"));

            // No route: connections are refused (closed at once), never sent anywhere.
            route_tx
                .send(Route {
                    epoch: 3,
                    target: None,
                })
                .unwrap();
            let mut c3 = TcpStream::connect(front).await.unwrap();
            assert_eq!(ask(&mut c3, "d").await, None);

            stop_tx.send(true).unwrap();
            server.await.unwrap();
        });
    }
}
