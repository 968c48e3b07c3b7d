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

/// Serve `app` on `listener` until `stop` turns true, over TLS when `tls` is given.
/// Connections under way are dropped with the listener (the daemon is stopping).
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            a = listener.accept() => {
                let Ok((sock, _)) = a else {
                    // Out of descriptors, most likely: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let (app, stop, tls) = (app.clone(), stop.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => connection(sock, app, stop).await,
                        Some(acceptor) => {
                            // The handshake is bounded like the headers: a client that stalls
                            // in it is cut off too.
                            if let Ok(Ok(s)) = tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(sock)).await {
                                connection(s, app, stop).await;
                            }
                        }
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

/// Serve `app` on `listener` (plain HTTP) until `stop` turns true.
pub async fn serve(listener: TcpListener, app: Router, stop: watch::Receiver<bool>) {
    serve_with(listener, app, None, stop).await
}

async fn connection<S>(io: S, app: Router, mut stop: watch::Receiver<bool>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    tokio::select! {
        _ = conn => {}
        _ = stop.wait_for(|s| *s) => {}
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

/// A TLS acceptor from the plan's PEM files (relative to `base`), requiring client
/// certificates from `client_ca` when it is given.
pub fn tls_acceptor(
    t: &lifeboat_core::plan::ApiTls,
    base: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, lifeboat_core::Error> {
    use lifeboat_core::{Error, Kind};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let path = |p: &str| base.join(p);
    let bad = |what: &str, p: &str, e: String| {
        Error::new(Kind::Input, format!("api.tls.{what}: {}: {e}", path(p).display()))
            .hint("a PEM file: `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem -out cert.pem -subj /CN=lifeboat` makes a self-signed pair")
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path(&t.cert))
        .map_err(|e| bad("cert", &t.cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("cert", &t.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("cert", &t.cert, "no certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_file(path(&t.key))
        .map_err(|e| bad("key", &t.key, e.to_string()))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(Kind::Internal, format!("TLS: {e}")))?;
    let builder = match &t.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(path(ca))
                .map_err(|e| bad("client_ca", ca, e.to_string()))?
            {
                let c = c.map_err(|e| bad("client_ca", ca, e.to_string()))?;
                roots
                    .add(c)
                    .map_err(|e| bad("client_ca", ca, e.to_string()))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| bad("client_ca", ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs, key).map_err(|e| {
        bad(
            "key",
            &t.key,
            format!("does not go with the certificate: {e}"),
        )
    })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg)))
}
