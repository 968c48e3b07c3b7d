//! The daemon's HTTP servers — the API and dashboard, `/metrics`, each member's health
//! endpoints — on one stack (hyper through axum), with the same limits everywhere: request
//! headers must arrive within a few seconds (a client sending a byte a second is cut off),
//! a whole request within its timeout, bodies within their size.

use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long a client may take to send its request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serve `app` on `listener` until `stop` turns true. Connections under way are dropped with
/// the listener (the daemon is stopping).
pub async fn serve(listener: TcpListener, app: Router, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            a = listener.accept() => {
                let Ok((sock, _)) = a else {
                    // Out of descriptors, most likely: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let svc = hyper_util::service::TowerToHyperService::new(app.clone());
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                });
            }
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}

/// A request timeout for a router: the handler (and reading the body) must finish within
/// `limit`, or the client gets 408.
pub fn with_timeout(app: Router, limit: Duration) -> Router {
    app.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        limit,
    ))
}
