//! HTTP: register, login, logout and WebSocket authentication.

use serde_json::json;

use crate::support::node::Topology;
use crate::support::ws::Closed;
use crate::support::{TestNode, WsClient};

async fn register_and_login_errors(t: Topology) {
    let node = TestNode::start(t).await;
    let (status, body) = node
        .post(
            "/v1/register",
            json!({"username":"alice","password":"password123"}),
        )
        .await;
    assert_eq!(
        (status, body["userId"].as_str()),
        (201, Some("alice@localhost"))
    );

    for (body, status, code) in [
        (
            json!({"username":"alice","password":"password123"}),
            409,
            "username_taken",
        ),
        (
            json!({"username":"Alice!","password":"password123"}),
            400,
            "invalid_username",
        ),
        (
            json!({"username":"","password":"password123"}),
            400,
            "invalid_username",
        ),
        (
            json!({"username":"bob","password":"short"}),
            400,
            "weak_password",
        ),
        (json!({"username":"bob"}), 400, "bad_request"),
    ] {
        let (s, b) = node.post("/v1/register", body.clone()).await;
        assert_eq!((s, b["code"].as_str()), (status, Some(code)), "{body}");
        assert!(b["message"].is_string());
    }
    let raw = node
        .http()
        .post(format!("{}/v1/register", node.url))
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);

    let (s, b) = node
        .post(
            "/v1/login",
            json!({"username":"alice","password":"wrong-password"}),
        )
        .await;
    assert_eq!((s, b["code"].as_str()), (401, Some("bad_credentials")));
    let (s, b) = node
        .post(
            "/v1/login",
            json!({"username":"nobody","password":"password123"}),
        )
        .await;
    assert_eq!((s, b["code"].as_str()), (401, Some("bad_credentials")));

    // Each login is a new device.
    let first = node
        .post(
            "/v1/login",
            json!({"username":"alice","password":"password123"}),
        )
        .await
        .1;
    let second = node
        .post(
            "/v1/login",
            json!({"username":"alice","password":"password123"}),
        )
        .await
        .1;
    assert_ne!(first["deviceId"], second["deviceId"]);
    assert_eq!(first["userId"], "alice@localhost");

    // Disabling a user closes its open connections too.
    let mut open = WsClient::connect(&node.ws_url_of(1), first["token"].as_str().unwrap()).await;
    let (s, _) = node
        .admin(reqwest::Method::POST, "/users/alice/disable", None)
        .await;
    assert_eq!(s, 204);
    assert_eq!(open.closed().await, Closed::Code(4401));
    let (s, b) = node
        .post(
            "/v1/login",
            json!({"username":"alice","password":"password123"}),
        )
        .await;
    assert_eq!((s, b["code"].as_str()), (403, Some("user_disabled")));
}

/// How many argon2 hashes the process that owns the store has done.
async fn password_hashes(node: &TestNode) -> u64 {
    node.metric(node.main_admin_url(), "natter_password_hashes_total")
        .await
        .expect("the password hash counter") as u64
}

async fn registration_modes(t: Topology) {
    let closed = TestNode::with_config(t, "registration = \"closed\"\n").await;
    let (s, b) = closed
        .post(
            "/v1/register",
            json!({"username":"alice","password":"password123"}),
        )
        .await;
    assert_eq!((s, b["code"].as_str()), (403, Some("registration_closed")));

    let invite_only = TestNode::with_config(t, "registration = \"invite\"\n").await;
    let (s, b) = invite_only
        .post(
            "/v1/register",
            json!({"username":"alice","password":"password123"}),
        )
        .await;
    assert_eq!((s, b["code"].as_str()), (403, Some("invalid_invite")));
    let hashes_before = password_hashes(&invite_only).await;
    let (s, b) = invite_only
        .post(
            "/v1/register",
            json!({"username":"alice","password":"password123","invite":"made-up"}),
        )
        .await;
    assert_eq!((s, b["code"].as_str()), (403, Some("invalid_invite")));
    assert_eq!(
        password_hashes(&invite_only).await,
        hashes_before,
        "a wrong invite costs no password hash"
    );
    let (s, invite) = invite_only
        .admin(reqwest::Method::POST, "/invites", Some(json!({"uses": 1})))
        .await;
    assert_eq!(s, 201);
    let code = invite["code"].as_str().unwrap();
    let (s, _) = invite_only
        .post(
            "/v1/register",
            json!({"username":"alice","password":"password123","invite":code}),
        )
        .await;
    assert_eq!(s, 201);
    // Used up.
    let (s, b) = invite_only
        .post(
            "/v1/register",
            json!({"username":"bob","password":"password123","invite":code}),
        )
        .await;
    assert_eq!((s, b["code"].as_str()), (403, Some("invalid_invite")));
}

async fn logout_ends_the_device(t: Topology) {
    let node = TestNode::start(t).await;
    let alice = node.user("alice").await;
    // Connected on the second gateway (split) while logout goes to the first:
    // the core closes the connection wherever it is.
    let mut open = WsClient::connect(&node.ws_url_of(1), &alice.token).await;
    let logout = |token: Option<String>| {
        let mut request = node.http().post(format!("{}/v1/logout", node.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let response = logout(None).await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized");
    assert_eq!(
        logout(Some("bogus".into()))
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    assert_eq!(
        logout(Some(alice.token.clone()))
            .await
            .unwrap()
            .status()
            .as_u16(),
        204
    );
    assert_eq!(open.closed().await, Closed::Code(4401));
    // The token is dead everywhere.
    assert_eq!(
        logout(Some(alice.token.clone()))
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    let refused = tokio_tungstenite::connect_async({
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut r = node.ws_url().into_client_request().unwrap();
        r.headers_mut().insert(
            "authorization",
            format!("Bearer {}", alice.token).parse().unwrap(),
        );
        r
    })
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401)
        }
        other => panic!("expected 401, got {other:?}"),
    }
}

async fn websocket_auth_by_first_frame(t: Topology) {
    let node = TestNode::with_config(
        t,
        &format!(
            "{}\n[websocket]\nauth_timeout = \"300ms\"\n",
            crate::support::node::BASE_CONFIG
        ),
    )
    .await;
    let alice = node.user("alice").await;
    let client = WsClient::connect_with_auth_frame(&node.ws_url(), &alice.token).await;
    assert_eq!(client.ready["userId"], "alice@localhost");
    assert_eq!(client.ready["node"], "localhost");

    let mut bad = WsClient::connect_raw(&node.ws_url()).await;
    use futures_util::SinkExt;
    bad.send(tokio_tungstenite::tungstenite::Message::text(
        json!({"type":"auth","token":"wrong"}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(close_code(&mut bad).await, Closed::Code(4401));

    // Silence past the auth timeout.
    let mut silent = WsClient::connect_raw(&node.ws_url()).await;
    assert_eq!(close_code(&mut silent).await, Closed::Code(4401));
}

async fn close_code(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Closed {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(crate::support::DEADLINE, socket.next())
            .await
            .expect("server did not close")
        {
            Some(Ok(Message::Close(Some(frame)))) => return Closed::Code(frame.code.into()),
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return Closed::Dropped,
            Some(Ok(_)) => continue,
        }
    }
}

async fn browsers_on_other_origins_may_call_the_client_api(t: Topology) {
    let node = TestNode::start(t).await;
    let preflight = node
        .http()
        .request(reqwest::Method::OPTIONS, format!("{}/v1/login", node.url))
        .header("origin", "https://app.example.org")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "*",
        "{:?}",
        preflight.headers()
    );
}

/// The admin API and `/metrics` answer only on the admin listener: on the
/// client listener (and, in split mode, the core's public one) they are 404s,
/// token or not.
async fn the_admin_api_is_not_on_the_client_listener(t: Topology) {
    let node = TestNode::start(t).await;
    let get = |url: String| {
        let request = node.http().get(url).bearer_auth(&node.admin_token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    for public in [node.url.clone(), node.main_url().to_owned()] {
        assert_eq!(get(format!("{public}/admin/v1/status")).await, 404);
        assert_eq!(get(format!("{public}/metrics")).await, 404);
        assert_eq!(get(format!("{public}/readyz")).await, 200);
    }
    assert_eq!(
        get(format!("{}/admin/v1/status", node.main_admin_url())).await,
        200
    );
    assert_eq!(get(format!("{}/metrics", node.admin_url_of(0))).await, 200);
    // The admin listener serves no client endpoints.
    let login = node
        .http()
        .post(format!("{}/v1/login", node.main_admin_url()))
        .json(&serde_json::json!({"username":"x","password":"y"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 404);
}

crate::in_every_topology!(browsers_on_other_origins_may_call_the_client_api);

crate::in_every_topology!(the_admin_api_is_not_on_the_client_listener);

crate::in_every_topology!(
    register_and_login_errors,
    registration_modes,
    logout_ends_the_device,
    websocket_auth_by_first_frame
);
