//! The optional Prometheus scrape endpoint (`--metrics ADDR`).
//!
//! It has one route and one response, so it speaks just enough HTTP/1.1 by
//! hand: an HTTP stack such as hyper would be most of the dependency tree
//! for a fixed reply. Scrapes are answered one at a time, each with a
//! request size cap and a deadline, so a stuck or hostile scraper holds at
//! most one connection for a few seconds and never grows memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::state::Shared;

/// The request head may be at most this long.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A scrape must be read and answered within this time.
const DEADLINE: Duration = Duration::from_secs(5);

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                match tokio::time::timeout(DEADLINE, answer(stream, &shared)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => debug!(%peer, %err, "metrics scrape failed"),
                    Err(_) => debug!(%peer, "metrics scrape timed out"),
                }
            }
            Err(err) => {
                warn!(%err, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    while !request.windows(4).any(|window| window == b"\r\n\r\n") {
        if request.len() >= MAX_REQUEST_BYTES || stream.read_buf(&mut request).await? == 0 {
            break;
        }
    }
    let (status, body) = if request.starts_with(b"GET /metrics ") {
        ("200 OK", shared.render_metrics())
    } else {
        (
            "404 Not Found",
            "Only GET /metrics is served here.\n".to_owned(),
        )
    };
    let response = format!(
        "HTTP/1.1 {status}\r\n\
         Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
