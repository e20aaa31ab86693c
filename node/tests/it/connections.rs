//! HTTP connection limits (`[http]`): header-read, body and idle timeouts, and
//! the caps on open connections in total and per address, on real sockets.
//! Timeouts are set to 1 s here; waits are for the node to act, with deadlines.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::node::{BASE_CONFIG, Topology};
use crate::support::{DEADLINE, TestNode, WsClient, connect_from, eventually};

fn config(http: &str) -> String {
    format!("{BASE_CONFIG}\n[http]\n{http}\n")
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn addr(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

/// Reads until the node closes the connection; fails after [`DEADLINE`].
async fn read_until_closed(stream: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .expect("the node did not close the connection");
        match read {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Writes `bytes` one at a time, 100 ms apart, until the connection fails:
/// a client that is always making progress, too slowly.
fn trickle(
    mut to: tokio::net::tcp::OwnedWriteHalf,
    bytes: &'static [u8],
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        for byte in bytes.iter().cycle() {
            pace.tick().await;
            if to.write_all(&[*byte]).await.is_err() {
                return;
            }
        }
    })
}

/// A slowloris: a request line and headers that never end, sent a byte at a
/// time; the node hangs up after `header_read_timeout`, on every listener:
/// gateways, the core's public listener (split mode) and the admin one.
async fn slowloris_headers_are_cut_off_on_every_listener(t: Topology) {
    let node = TestNode::with_config(
        t,
        &config("header_read_timeout = \"1s\"\nidle_timeout = \"30s\""),
    )
    .await;
    let mut listeners = vec![node.url.clone(), node.main_admin_url().to_owned()];
    if t == Topology::Split {
        listeners.push(node.main_url().to_owned());
        listeners.push(node.admin_url_of(0).to_owned());
    }
    for url in &listeners {
        let start = Instant::now();
        let tcp = TcpStream::connect(addr(url)).await.unwrap();
        let (mut read, write) = tcp.into_split();
        let writer = trickle(
            write,
            b"GET /healthz HTTP/1.1\r\nHost: natter\r\nX-Slow: aaaaaaaaaaaa",
        );
        let answer = read_until_closed(&mut read).await;
        writer.abort();
        let waited = start.elapsed();
        assert!(
            answer.is_empty(),
            "{url}: {}",
            String::from_utf8_lossy(&answer)
        );
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
            "{url}: closed after {waited:?}"
        );
    }
    let timeouts = "natter_http_timeouts_total{listener=\"public\",reason=\"header\"}";
    assert_eq!(
        node.metric(node.main_admin_url(), timeouts).await,
        Some(1.0)
    );
    // Clients that send their request are served as before.
    let health = node
        .http()
        .get(format!("{}/healthz", node.url))
        .send()
        .await;
    assert_eq!(health.unwrap().status(), 200);
}

#[tokio::test]
async fn slowloris_headers_are_cut_off_embedded() {
    slowloris_headers_are_cut_off_on_every_listener(Topology::Embedded).await;
}

#[tokio::test]
async fn slowloris_headers_are_cut_off_split() {
    slowloris_headers_are_cut_off_on_every_listener(Topology::Split).await;
}

#[tokio::test]
async fn a_trickled_body_is_answered_408_and_the_connection_closed() {
    let node = TestNode::with_config(Topology::Embedded, &config("body_timeout = \"1s\"")).await;
    let start = Instant::now();
    let mut tcp = TcpStream::connect(addr(&node.url)).await.unwrap();
    tcp.write_all(
        b"POST /v1/login HTTP/1.1\r\nHost: natter\r\nContent-Type: application/json\r\n\
          Content-Length: 4000\r\n\r\n",
    )
    .await
    .unwrap();
    let (mut read, write) = tcp.into_split();
    let writer = trickle(write, b"{\"username\": \"alice\"                ");
    let answer = read_until_closed(&mut read).await;
    writer.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"bad_request\""), "{answer}");
    // 4000 bytes at 10 a second would have taken 400 s.
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "answered after {waited:?}"
    );
    let timeouts = "natter_http_timeouts_total{listener=\"public\",reason=\"body\"}";
    assert_eq!(
        node.metric(node.main_admin_url(), timeouts).await,
        Some(1.0)
    );
    // A body that arrives in time is read as before.
    let (status, body) = node
        .post(
            "/v1/register",
            serde_json::json!({"username":"alice","password":"password123"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let node = TestNode::with_config(
        Topology::Embedded,
        &config("idle_timeout = \"1s\"\nheader_read_timeout = \"20s\""),
    )
    .await;
    let mut tcp = TcpStream::connect(addr(&node.url)).await.unwrap();
    // Two requests on one connection: it is kept alive between them.
    for _ in 0..2 {
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: natter\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"ok") {
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(DEADLINE, tcp.read(&mut buf))
                .await
                .expect("an answer")
                .unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 200"));
    }
    let idle = Instant::now();
    let rest = read_until_closed(&mut tcp).await;
    let waited = idle.elapsed();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    // The idle timeout, not the (longer) header timeout.
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(15),
        "closed after {waited:?}"
    );
    let timeouts = "natter_http_timeouts_total{listener=\"public\",reason=\"idle\"}";
    assert!(node.metric(node.main_admin_url(), timeouts).await >= Some(1.0));
}

/// The node's count of open connections on its public listener.
async fn open_connections(node: &TestNode) -> Option<f64> {
    let name = "natter_http_connections{listener=\"public\"}";
    node.metric(node.main_admin_url(), name).await
}

/// Waits until a WebSocket from `from` is accepted (a cap freed up).
async fn accepted(node: &TestNode, from: &str, token: &str) -> WsClient {
    let url = node.ws_url();
    eventually("a connection to be accepted again", || {
        let url = url.clone();
        async move { WsClient::connect_from(ip(from), &url, token).await.ok() }
    })
    .await
}

/// Caps of 2 per address and 4 in all, held by WebSockets: connection N+1 is
/// closed at accept while N are open and accepted once one closes; the
/// WebSockets outlive the (1 s) header and idle timeouts. Each client address
/// is one of 127.0.0.0/8.
#[tokio::test]
async fn connection_caps_per_address_and_in_total_count_websockets() {
    let node = TestNode::with_config(
        Topology::Embedded,
        &config(
            "max_connections = 4\nmax_connections_per_address = 2\n\
             idle_timeout = \"1s\"\nheader_read_timeout = \"1s\"",
        ),
    )
    .await;
    // One device per connection (a device's new connection displaces its old).
    node.add_user("alice").await;
    let mut devices = Vec::new();
    for _ in 0..8 {
        devices.push(node.login("alice").await.token);
    }
    let mut device = devices.iter().map(String::as_str);
    let mut token = || device.next().unwrap();
    let url = node.ws_url();
    // The test's own HTTP client's connections time out first.
    eventually("no connection open", || async {
        (open_connections(&node).await == Some(0.0)).then_some(())
    })
    .await;

    let a1 = WsClient::connect_from(ip("127.0.0.2"), &url, token())
        .await
        .unwrap();
    let mut a2 = WsClient::connect_from(ip("127.0.0.2"), &url, token())
        .await
        .unwrap();
    let refused = WsClient::connect_from(ip("127.0.0.2"), &url, token()).await;
    assert!(refused.is_err(), "a third connection from one address");
    let per_address =
        "natter_http_connections_refused_total{listener=\"public\",reason=\"per_address\"}";
    assert_eq!(
        node.metric(node.main_admin_url(), per_address).await,
        Some(1.0)
    );

    // A plain HTTP connection beside them is closed by the idle timeout; the
    // WebSockets, older than it, still work.
    let mut plain = connect_from(ip("127.0.0.3"), addr(&node.url)).await;
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: natter\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut plain).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    a2.drain().await;

    // One closes: its address may connect again.
    a1.close().await;
    let mut a3 = accepted(&node, "127.0.0.2", token()).await;

    // Two more from another address fill the total; a fourth address is refused.
    let b1 = WsClient::connect_from(ip("127.0.0.3"), &url, token())
        .await
        .unwrap();
    let _b2 = WsClient::connect_from(ip("127.0.0.3"), &url, token())
        .await
        .unwrap();
    assert_eq!(open_connections(&node).await, Some(4.0));
    let refused = WsClient::connect_from(ip("127.0.0.4"), &url, token()).await;
    assert!(refused.is_err(), "a fifth connection");
    let total = "natter_http_connections_refused_total{listener=\"public\",reason=\"total\"}";
    assert_eq!(node.metric(node.main_admin_url(), total).await, Some(1.0));
    b1.close().await;
    let mut c1 = accepted(&node, "127.0.0.4", token()).await;
    c1.drain().await;
    a3.drain().await;
}

/// Behind a trusted proxy every connection comes from the proxy: it is exempt
/// from the per-address cap at accept, and each request it forwards takes its
/// client's place instead (a WebSocket for as long as it is open); over the cap
/// the answer is `503` with `Retry-After`.
#[tokio::test]
async fn behind_a_trusted_proxy_the_cap_counts_forwarded_clients() {
    let node = TestNode::with_config(
        Topology::Embedded,
        &format!(
            "trusted_proxies = [\"127.0.0.1\"]\n{}",
            config("max_connections = 10\nmax_connections_per_address = 2")
        ),
    )
    .await;
    node.add_user("alice").await;
    let mut devices = Vec::new();
    for _ in 0..5 {
        devices.push(node.login("alice").await.token);
    }
    let url = node.ws_url();
    let proxy = ip("127.0.0.1");
    let via = |i: usize, client: &'static str| {
        WsClient::connect_forwarded(proxy, &url, &devices[i], Some(client))
    };
    let a1 = via(0, "203.0.113.7").await.unwrap();
    let _a2 = via(1, "203.0.113.7").await.unwrap();
    let refused = via(2, "203.0.113.7")
        .await
        .err()
        .expect("a third for one client");
    assert!(refused.contains("503"), "{refused}");
    // The proxy itself has more than two connections open.
    let mut b1 = via(3, "203.0.113.8").await.unwrap();
    assert!(open_connections(&node).await >= Some(3.0));
    let per_address =
        "natter_http_connections_refused_total{listener=\"public\",reason=\"per_address\"}";
    assert_eq!(
        node.metric(node.main_admin_url(), per_address).await,
        Some(1.0)
    );
    a1.close().await;
    let url = url.clone();
    let token = devices[4].clone();
    eventually("the client's place to be free again", || {
        let (url, token) = (url.clone(), token.clone());
        async move {
            WsClient::connect_forwarded(proxy, &url, &token, Some("203.0.113.7"))
                .await
                .ok()
        }
    })
    .await;
    b1.drain().await;
}
