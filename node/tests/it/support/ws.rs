//! A WebSocket client that speaks protocol v1, for tests.

use std::collections::VecDeque;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::DEADLINE;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(crate) struct WsClient {
    socket: Socket,
    /// Events that arrived while waiting for an answer.
    events: VecDeque<Value>,
    /// Answers that arrived while waiting for another (answers may come in any order).
    answers: std::collections::HashMap<String, Value>,
    next_id: u64,
    pub ready: Value,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Closed {
    /// A close frame with this code.
    Code(u16),
    /// The connection dropped without a close frame.
    Dropped,
}

impl WsClient {
    /// Connects with `Authorization: Bearer` and waits for `ready`.
    pub(crate) async fn connect(url: &str, token: &str) -> Self {
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket connect");
        Self::after_connect(socket).await
    }

    /// Connects from the local address `from` (any of 127.0.0.0/8, to stand
    /// for another client address) with `Authorization: Bearer`; an error if
    /// the node closes the connection before the upgrade.
    pub(crate) async fn connect_from(
        from: std::net::IpAddr,
        url: &str,
        token: &str,
    ) -> Result<Self, String> {
        Self::connect_forwarded(from, url, token, None).await
    }

    /// [`Self::connect_from`], as a reverse proxy at `from` that forwards a
    /// client's connection (`X-Forwarded-For: client`).
    pub(crate) async fn connect_forwarded(
        from: std::net::IpAddr,
        url: &str,
        token: &str,
        client: Option<&str>,
    ) -> Result<Self, String> {
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        if let Some(client) = client {
            request
                .headers_mut()
                .insert("x-forwarded-for", client.parse().unwrap());
        }
        let to = request.uri().authority().unwrap().as_str().parse().unwrap();
        let tcp = super::connect_from(from, to).await;
        let handshake = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp));
        match tokio::time::timeout(DEADLINE, handshake).await {
            Ok(Ok((socket, _))) => Ok(Self::after_connect(socket).await),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => panic!("websocket handshake from {from} neither done nor refused"),
        }
    }

    /// Connects without a header and authenticates with an `auth` frame.
    pub(crate) async fn connect_with_auth_frame(url: &str, token: &str) -> Self {
        let mut socket = Self::connect_raw(url).await;
        socket
            .send(Message::text(
                json!({"type":"auth","token":token}).to_string(),
            ))
            .await
            .unwrap();
        Self::after_connect(socket).await
    }

    pub(crate) async fn connect_raw(url: &str) -> Socket {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connect");
        socket
    }

    async fn after_connect(socket: Socket) -> Self {
        let mut client = Self {
            socket,
            events: VecDeque::new(),
            answers: std::collections::HashMap::new(),
            next_id: 0,
            ready: Value::Null,
        };
        let ready = client.recv().await;
        assert_eq!(ready["type"], "ready", "first frame: {ready}");
        client.ready = ready;
        client
    }

    /// The next frame from the socket (not the buffer), within the deadline.
    pub(crate) async fn recv(&mut self) -> Value {
        match self.recv_or_close().await {
            Ok(value) => value,
            Err(closed) => panic!("connection closed ({closed:?}) while waiting for a frame"),
        }
    }

    /// The next text frame, or how the connection ended.
    pub(crate) async fn recv_or_close(&mut self) -> Result<Value, Closed> {
        loop {
            let next = tokio::time::timeout(DEADLINE, self.socket.next())
                .await
                .expect("timed out waiting for a frame");
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Ok(serde_json::from_str(&text).expect("server frames are JSON"));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(
                        frame.map_or(Closed::Dropped, |f: CloseFrame| Closed::Code(f.code.into()))
                    );
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(Closed::Dropped),
            }
        }
    }

    /// Reads until the connection ends; returns how.
    pub(crate) async fn closed(&mut self) -> Closed {
        loop {
            match self.recv_or_close().await {
                Ok(_) => continue,
                Err(closed) => return closed,
            }
        }
    }

    pub(crate) async fn send(&mut self, value: &Value) {
        self.send_text(value.to_string()).await;
    }

    pub(crate) async fn send_text(&mut self, text: String) {
        self.socket.send(Message::text(text)).await.expect("send");
    }

    pub(crate) async fn send_message(
        &mut self,
        message: Message,
    ) -> Result<(), tungstenite::Error> {
        self.socket.send(message).await
    }

    /// Sends a command with a fresh id and returns its answer (`result` or
    /// `error`); events that arrive meanwhile are kept for [`Self::event`].
    pub(crate) async fn request(&mut self, mut command: Value) -> Value {
        self.next_id += 1;
        let id = format!("r{}", self.next_id);
        command["id"] = json!(id);
        self.send(&command).await;
        self.answer(&id).await
    }

    /// Waits for the answer to request `id`, keeping events.
    pub(crate) async fn answer(&mut self, id: &str) -> Value {
        if let Some(answer) = self.answers.remove(id) {
            return answer;
        }
        loop {
            let frame = self.recv().await;
            let is_answer = frame["type"] == "result" || frame["type"] == "error";
            match frame["id"].as_str() {
                Some(got) if is_answer && got == id => return frame,
                Some(other) if is_answer => {
                    self.answers.insert(other.to_owned(), frame);
                }
                _ => {
                    assert!(
                        frame.get("deliveryId").is_some(),
                        "unexpected frame while waiting for {id}: {frame}"
                    );
                    self.events.push_back(frame);
                }
            }
        }
    }

    /// Like [`Self::request`], but fails unless the answer is a `result`.
    pub(crate) async fn ok(&mut self, command: Value) -> Value {
        let answer = self.request(command.clone()).await;
        assert_eq!(answer["type"], "result", "{command} → {answer}");
        answer
    }

    /// Like [`Self::request`], but expects an `error` and returns its code.
    pub(crate) async fn error_code(&mut self, command: Value) -> String {
        let answer = self.request(command.clone()).await;
        assert_eq!(answer["type"], "error", "{command} → {answer}");
        answer["code"].as_str().unwrap().to_owned()
    }

    /// The next event, buffered or from the socket.
    pub(crate) async fn event(&mut self) -> Value {
        if let Some(event) = self.events.pop_front() {
            return event;
        }
        let frame = self.recv().await;
        assert!(
            frame.get("deliveryId").is_some(),
            "expected an event, got {frame}"
        );
        frame
    }

    /// Every event pending for this device now, in order. `sync` is answered once
    /// everything pending when it was taken has been sent on this connection, so
    /// this is exact in every topology, not a guess based on time.
    pub(crate) async fn drain(&mut self) -> Vec<Value> {
        self.ok(json!({"type":"sync"})).await;
        self.events.drain(..).collect()
    }

    pub(crate) async fn ack(&mut self, ids: &[&Value]) {
        let ids: Vec<Value> = ids.iter().map(|v| (*v).clone()).collect();
        self.ok(json!({"type":"ack","deliveryIds": ids})).await;
    }

    /// Acknowledges events by their frames.
    pub(crate) async fn ack_events(&mut self, events: &[Value]) {
        let ids: Vec<&Value> = events.iter().map(|e| &e["deliveryId"]).collect();
        self.ack(&ids).await;
    }

    pub(crate) async fn close(mut self) {
        let _ = self.socket.close(None).await;
        // Read until the server's close answer so the server has seen it.
        let _ = tokio::time::timeout(DEADLINE, async {
            while let Some(Ok(_)) = self.socket.next().await {}
        })
        .await;
    }
}
