//! Faults between a client and a real server: [`CuttingProxy`] forwards TCP connections to a
//! server on loopback and, after a number of bytes from the server, cuts each one (as a server
//! that goes away mid-download does) or holds it open sending nothing more (as a stalled one
//! does).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to a connection once its byte limit came back from the server.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Closes it.
    Cut,
    /// Keeps it open and forwards nothing more.
    Stall,
}

/// A TCP proxy that faults every connection once `limit` bytes came back from the server.
pub struct CuttingProxy {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    cuts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    /// Proxies to `upstream` (`host:port`) on a free loopback port.
    pub async fn start(upstream: &str, limit: usize, fault: Fault) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let cuts = Arc::new(AtomicUsize::new(0));
        let (counter, upstream) = (cuts.clone(), upstream.to_owned());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (counter, upstream) = (counter.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else { return };
                    if forward(client, server, limit, fault).await {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        Ok(Self { url, cuts, task })
    }

    /// Connections faulted so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::Relaxed)
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies both ways until either side closes, or `limit` bytes came from the server; whether
/// it faulted the connection.
async fn forward(client: TcpStream, server: TcpStream, limit: usize, fault: Fault) -> bool {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let mut sent = 0;
    let mut buffer = vec![0u8; 16 << 10];
    let cut = loop {
        let Ok(n) = server_read.read(&mut buffer).await else { break false };
        if n == 0 {
            break false;
        }
        let n = n.min(limit - sent);
        if client_write.write_all(&buffer[..n]).await.is_err() {
            break false;
        }
        sent += n;
        if sent >= limit {
            break true;
        }
    };
    if cut && matches!(fault, Fault::Stall) {
        // Held open, silent, until the client gives up and closes it.
        let _ = requests.await;
        drop(client_write);
        return true;
    }
    requests.abort();
    cut
}
