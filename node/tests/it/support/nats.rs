//! A real `nats-server` with JetStream on a free loopback port and its own store
//! folder. Killed on drop; [`NatsServer::restart`] keeps the port and the store.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use super::DEADLINE;

pub(crate) struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    /// Runs with examples/cluster/nats-accounts.conf (every client logs in).
    accounts: bool,
    /// A configuration file of the test's own.
    conf: Option<PathBuf>,
}

/// The node name the shipped accounts file is written for.
pub(crate) const ACCOUNTS_NODE: &str = "chat.example.org";

/// The password of a user of the shipped accounts file (`core`, `gw1`, `gw2`)
/// in these tests.
pub(crate) fn password(user: &str) -> String {
    format!("test-{user}-secret")
}

fn accounts_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/cluster/nats-accounts.conf")
}

/// `NATTER_TEST_NATS_SERVER` if set (scripts/test runs the NATS tests again with a
/// newer server that way), else Debian's package (the oldest server natter
/// supports), else whatever `nats-server` is on the PATH.
fn binary() -> PathBuf {
    let chosen = std::env::var_os("NATTER_TEST_NATS_SERVER").map(PathBuf::from);
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"));
    let candidates = chosen
        .into_iter()
        .chain([
            PathBuf::from("/usr/sbin/nats-server"),
            PathBuf::from("/usr/bin/nats-server"),
        ])
        .chain(on_path);
    for candidate in candidates {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "nats-server is not installed; scripts/test installs it, or run \
         `apt-get install -y nats-server` (Debian)"
    );
}

impl NatsServer {
    pub(crate) fn start() -> Self {
        Self::start_as(false)
    }

    /// With the shipped accounts and permissions
    /// (examples/cluster/nats-accounts.conf), passwords from [`password`].
    pub(crate) fn start_with_accounts() -> Self {
        Self::start_as(true)
    }

    /// With `conf` as its configuration file (JetStream, address, port and
    /// store still come from the command line).
    pub(crate) fn start_with_conf(conf: &str) -> Self {
        let store = tempfile::tempdir().unwrap();
        let path = store.path().join("server.conf");
        std::fs::write(&path, conf).unwrap();
        Self::start_in(store, false, Some(path))
    }

    fn start_as(accounts: bool) -> Self {
        let conf = accounts.then(accounts_file);
        Self::start_in(tempfile::tempdir().unwrap(), accounts, conf)
    }

    fn start_in(store: tempfile::TempDir, accounts: bool, conf: Option<PathBuf>) -> Self {
        let (child, port) = spawn(&store, None, accounts, conf.as_deref());
        Self {
            child: Some(child),
            port,
            store,
            accounts,
            conf,
        }
    }

    pub(crate) fn has_accounts(&self) -> bool {
        self.accounts
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port with the same store (streams survive).
    pub(crate) fn restart(&mut self) {
        self.stop();
        let (child, _) = spawn(
            &self.store,
            Some(self.port),
            self.accounts,
            self.conf.as_deref(),
        );
        self.child = Some(child);
    }
}

/// Starts nats-server and waits for the line that says where it listens.
fn spawn(
    store: &tempfile::TempDir,
    port: Option<u16>,
    accounts: bool,
    conf: Option<&std::path::Path>,
) -> (Child, u16) {
    let port_arg = port.map_or("-1".to_owned(), |p| p.to_string());
    let mut command = Command::new(binary());
    if let Some(conf) = conf {
        command.arg("-c").arg(conf);
    }
    if accounts {
        for user in ["core", "gw1", "gw2"] {
            let var = format!("NATTER_NATS_{}_PASSWORD", user.to_ascii_uppercase());
            command.env(var, password(user));
        }
    }
    let mut child = command
        .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd"])
        .arg(store.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nats-server");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        // Keep draining so the server never blocks on a full pipe.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent
                && line.contains("Listening for client connections on")
                && let Some(port) = line
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.trim().parse::<u16>().ok())
            {
                let _ = tx.send(port);
                sent = true;
            }
        }
    });
    let port = rx
        .recv_timeout(DEADLINE)
        .expect("nats-server did not start listening");
    (child, port)
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
