//! The HTTP endpoints: `/metrics` (Prometheus text) on one address, `/healthz` and `/readyz` on
//! another. A minimal HTTP/1.1 responder: these endpoints answer GETs from kubelet and Prometheus
//! and need nothing more.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::metrics::Metrics;

pub async fn serve(
    metrics_addr: SocketAddr,
    health_addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let metrics_listener = TcpListener::bind(metrics_addr).await?;
    let health_listener = TcpListener::bind(health_addr).await?;
    tracing::info!(%metrics_addr, %health_addr, "serving metrics and health");
    let state = Arc::new((metrics, ready));
    tokio::try_join!(
        accept(metrics_listener, state.clone()),
        accept(health_listener, state)
    )?;
    Ok(())
}

async fn accept(
    listener: TcpListener,
    state: Arc<(Arc<Metrics>, Arc<AtomicBool>)>,
) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(error) = answer(stream, &state.0, &state.1).await {
                tracing::debug!(%error, "http connection");
            }
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    metrics: &Metrics,
    ready: &AtomicBool,
) -> std::io::Result<()> {
    let mut buffer = [0u8; 2048];
    let read = stream.read(&mut buffer).await?;
    let request = String::from_utf8_lossy(&buffer[..read]);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let (status, content_type, body) = match path {
        "/metrics" => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_owned()),
        "/readyz" if ready.load(Ordering::SeqCst) => ("200 OK", "text/plain", "ok\n".to_owned()),
        "/readyz" if crate::lease::standing_by() => (
            "200 OK",
            "text/plain",
            "standing by for leadership\n".to_owned(),
        ),
        "/readyz" => (
            "503 Service Unavailable",
            "text/plain",
            "caches not synced\n".to_owned(),
        ),
        _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
