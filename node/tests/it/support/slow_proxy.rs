//! A TCP proxy in front of a real server that can hold its answers: while held,
//! bytes coming back from the server wait in the proxy until it is released,
//! as behind a slow object store. Requests still go through at once. The test
//! sees how many answers are being held, so it waits for that, not for time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub(crate) struct SlowProxy {
    pub endpoint: String,
    held: watch::Sender<bool>,
    waiting: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub(crate) async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (held, watcher) = watch::channel(false);
        let waiting = Arc::new(AtomicUsize::new(0));
        let upstream = upstream.to_owned();
        let counter = waiting.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(pipe(client, server, watcher.clone(), counter.clone()));
            }
        });
        Self {
            endpoint,
            held,
            waiting,
            task,
        }
    }

    /// From now on, answers wait until [`Self::release`].
    pub(crate) fn hold(&self) {
        self.held.send_replace(true);
    }

    pub(crate) fn release(&self) {
        self.held.send_replace(false);
    }

    /// Answers (chunks of them) waiting in the proxy now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies both ways; the server's bytes wait while the proxy is held.
async fn pipe(
    client: TcpStream,
    server: TcpStream,
    mut held: watch::Receiver<bool>,
    waiting: Arc<AtomicUsize>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    });
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let n = match server_read.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if *held.borrow() {
            waiting.fetch_add(1, Ordering::AcqRel);
            let _ = held.wait_for(|held| !*held).await;
            waiting.fetch_sub(1, Ordering::AcqRel);
        }
        if client_write.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    requests.abort();
}
