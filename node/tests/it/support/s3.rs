//! A real S3-compatible server (`s3s-fs`) on a free loopback port, serving a
//! temporary folder. Killed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub(crate) const ACCESS_KEY: &str = "natter-test-access";
pub(crate) const SECRET_KEY: &str = "natter-test-secret-key";
pub(crate) const BUCKET: &str = "media";

pub(crate) struct S3Server {
    child: Child,
    pub endpoint: String,
    root: tempfile::TempDir,
    bucket: String,
}

fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("s3s-fs"))
        .find(|p| p.is_file());
    let in_cargo = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/s3s-fs"));
    on_path
        .or(in_cargo.filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "s3s-fs is not installed; scripts/test installs it, or run \
                 `cargo install s3s-fs@0.14.1 --features binary --locked`"
            )
        })
}

impl S3Server {
    pub(crate) async fn start() -> Self {
        Self::start_with(BUCKET, ACCESS_KEY, SECRET_KEY).await
    }

    /// A server with one bucket, `bucket`, and these credentials.
    pub(crate) async fn start_with(bucket: &str, access_key: &str, secret_key: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(bucket)).unwrap();
        let port = {
            // Bound and released: s3s-fs cannot be told to pick a port itself.
            let probe = TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let child = Command::new(binary())
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(port.to_string())
            .arg("--access-key")
            .arg(access_key)
            .arg("--secret-key")
            .arg(secret_key)
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let endpoint = format!("http://127.0.0.1:{port}");
        let addr = format!("127.0.0.1:{port}");
        super::eventually("s3s-fs to listen", || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) }
        })
        .await;
        Self {
            child,
            endpoint,
            root,
            bucket: bucket.to_owned(),
        }
    }

    /// Where an object of the bucket lives on disk.
    pub(crate) fn object_path(&self, key: &str) -> PathBuf {
        self.root.path().join(&self.bucket).join(key)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
