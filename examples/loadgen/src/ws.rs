//! A minimal protocol v1 client: connect with a bearer token, read frames, batch
//! acks, and run one command to its answer.

use std::borrow::Cow;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Ack once this many deliveries are pending (well under the node's window of
/// 512 unacked events, so it never stops sending for want of acks).
pub(crate) const ACK_BATCH: usize = 64;
/// ...or this often, so a trickle of events is acked too.
pub(crate) const ACK_INTERVAL: Duration = Duration::from_millis(20);
/// The protocol's limit on ids per ack.
const MAX_ACK_IDS: usize = 1024;
/// How long to wait for `ready` or for a command's answer before giving up.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// The fields of a server frame the load generator looks at. Borrowed from the
/// frame's text where possible: the fan-out receivers parse every event.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// Of `result` and `error`.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub id: Option<Cow<'a, str>>,
    /// Of events.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub delivery_id: Option<Cow<'a, str>>,
    /// Of `error`.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub code: Option<Cow<'a, str>>,
    /// The text of `newMessage` (and the explanation of `error`).
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub message: Option<Cow<'a, str>>,
    /// Of `newMessage`: the message's position in its chat.
    #[serde(default)]
    pub seq: Option<u64>,
}

/// An optional string, borrowed unless it has escapes. serde borrows a plain
/// `Cow<str>` field, but inside an `Option` it would always copy.
fn borrowed<'de, D>(deserializer: D) -> Result<Option<Cow<'de, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed>::deserialize(deserializer)?.map(|b| b.0))
}

impl<'a> Frame<'a> {
    pub(crate) fn parse(text: &'a str) -> Result<Self> {
        serde_json::from_str(text).with_context(|| format!("unexpected frame: {text}"))
    }
}

/// One device's WebSocket, with the acks it owes.
pub(crate) struct Conn {
    socket: Socket,
    acks: Vec<String>,
}

impl Conn {
    /// Connects with `Authorization: Bearer` and waits for the `ready` frame.
    pub(crate) async fn connect(ws_url: &str, token: &str) -> Result<Self> {
        let mut conn = Self::open(ws_url, token).await?;
        conn.wait_ready().await?;
        Ok(conn)
    }

    /// Connects (the upgrade) without waiting for `ready`.
    async fn open(ws_url: &str, token: &str) -> Result<Self> {
        let mut request = ws_url
            .into_client_request()
            .with_context(|| format!("WebSocket URL {ws_url}"))?;
        let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the token is not a valid header value")?;
        request.headers_mut().insert("authorization", bearer);
        // No Nagle: small frames (acks, sends) must leave at once, or the client
        // would add delay to the latencies it measures.
        let (socket, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
            .await
            .with_context(|| format!("connect to {ws_url}"))?;
        Ok(Self {
            socket,
            acks: Vec::new(),
        })
    }

    /// Reads the first frame, which must be `ready`.
    async fn wait_ready(&mut self) -> Result<()> {
        let text = tokio::time::timeout(ANSWER_TIMEOUT, self.next_text())
            .await
            .context("no ready frame in time")??;
        let frame = Frame::parse(&text)?;
        if frame.kind != "ready" {
            bail!("expected a ready frame first, got {text}");
        }
        Ok(())
    }

    /// The next text frame. Pings are answered by tungstenite while reading; a
    /// close or a dropped connection is an error naming the close code.
    /// Cancel-safe: it holds nothing across its one await but the stream.
    pub(crate) async fn next_text(&mut self) -> Result<Utf8Bytes> {
        loop {
            match self.socket.next().await {
                Some(Ok(Message::Text(text))) => return Ok(text),
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| u16::from(f.code));
                    bail!("the node closed the connection (code {code:?})");
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(anyhow!(e).context("WebSocket read")),
                None => bail!("the connection ended"),
            }
        }
    }

    pub(crate) async fn send(&mut self, frame: &Value) -> Result<()> {
        self.send_text(frame.to_string()).await
    }

    pub(crate) async fn send_text(&mut self, text: String) -> Result<()> {
        self.socket
            .send(Message::text(text))
            .await
            .context("WebSocket write")
    }

    /// Remembers an event's delivery id and acks once a batch is full.
    pub(crate) async fn ack_later(&mut self, delivery_id: &str) -> Result<()> {
        self.acks.push(delivery_id.to_owned());
        if self.acks.len() >= ACK_BATCH {
            self.flush_acks().await?;
        }
        Ok(())
    }

    /// Acks every pending delivery (no-op when none is pending).
    pub(crate) async fn flush_acks(&mut self) -> Result<()> {
        while !self.acks.is_empty() {
            let n = self.acks.len().min(MAX_ACK_IDS);
            let ids: Vec<String> = self.acks.drain(..n).collect();
            self.send(&json!({ "type": "ack", "deliveryIds": ids }))
                .await?;
        }
        Ok(())
    }

    /// Sends a command (it must carry `"id"`) and returns its `result`, acking
    /// the events that arrive meanwhile. An `error` answer is an error.
    pub(crate) async fn request(&mut self, command: Value) -> Result<Value> {
        let id = command["id"]
            .as_str()
            .context("a command needs a string id")?
            .to_owned();
        self.send(&command).await?;
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, self.answer_to(&id))
            .await
            .with_context(|| format!("no answer to {command} in time"))??;
        self.flush_acks().await?;
        Ok(answer)
    }

    /// Reads until an event of `kind` arrives (acking it and any before it);
    /// within [`ANSWER_TIMEOUT`].
    pub(crate) async fn wait_for(&mut self, kind: &str) -> Result<()> {
        let wait = async {
            loop {
                let text = self.next_text().await?;
                let frame = Frame::parse(&text)?;
                if let Some(delivery_id) = &frame.delivery_id {
                    self.ack_later(delivery_id).await?;
                }
                if frame.kind == kind {
                    return Ok::<_, anyhow::Error>(());
                }
            }
        };
        tokio::time::timeout(ANSWER_TIMEOUT, wait)
            .await
            .with_context(|| format!("no {kind} event in {ANSWER_TIMEOUT:?}"))??;
        self.flush_acks().await
    }

    /// Creates a chat of this device's user and `participants`; returns its id.
    pub(crate) async fn create_chat(&mut self, participants: &[String]) -> Result<String> {
        let answer = self
            .request(json!({
                "type": "createChat",
                "id": "create-chat",
                "participants": participants,
                "name": "loadgen",
            }))
            .await?;
        let chat_id = answer["chatId"]
            .as_str()
            .with_context(|| format!("createChat answer without chatId: {answer}"))?;
        Ok(chat_id.to_owned())
    }

    async fn answer_to(&mut self, id: &str) -> Result<Value> {
        loop {
            let text = self.next_text().await?;
            let frame = Frame::parse(&text)?;
            if let Some(delivery_id) = &frame.delivery_id {
                self.ack_later(delivery_id).await?;
                continue;
            }
            if frame.id.as_deref() != Some(id) {
                continue;
            }
            if frame.kind == "error" {
                bail!("command {id} failed: {text}");
            }
            return serde_json::from_str(&text).with_context(|| format!("answer {text}"));
        }
    }
}

/// Opens one connection per `(ws_url, token)`, `concurrency` at a time, each
/// waiting for `ready`; in the order given.
pub(crate) async fn connect_all<'a>(
    targets: impl IntoIterator<Item = (&'a str, &'a str)>,
    concurrency: usize,
) -> Result<Vec<Conn>> {
    futures_util::stream::iter(targets)
        .map(|(ws_url, token)| Conn::connect(ws_url, token))
        .buffered(concurrency)
        .try_collect()
        .await
}

/// A `sendMessage` frame. Serialized from borrowed fields: the fan-out senders
/// build one per send.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SendMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    chat_id: &'a str,
    message: &'a str,
}

pub(crate) fn send_message_frame(id: &str, chat_id: &str, message: &str) -> String {
    let frame = SendMessage {
        kind: "sendMessage",
        id,
        chat_id,
        message,
    };
    // A struct of strings always serializes.
    serde_json::to_string(&frame).unwrap_or_default()
}

/// `head`, then a space and `x`s up to `bytes` (never shorter than `head`).
pub(crate) fn message_text(head: &str, bytes: usize) -> String {
    let mut text = String::with_capacity(bytes.max(head.len()));
    text.push_str(head);
    if bytes > head.len() {
        text.push(' ');
        text.extend(std::iter::repeat_n('x', bytes - head.len() - 1));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_messages_to_the_requested_size() {
        assert_eq!(message_text("123", 8), "123 xxxx");
        assert_eq!(message_text("123", 4), "123 ");
        assert_eq!(message_text("12345", 3), "12345");
    }

    #[test]
    fn parses_events_without_copying() {
        let text = r#"{"deliveryId":"17","type":"newMessage","chatId":"c","messageId":"m","seq":3,"from":"a@n","sentAt":"t","message":"hi","attachments":[]}"#;
        let frame = Frame::parse(text).unwrap();
        assert_eq!(frame.kind, "newMessage");
        assert_eq!(frame.delivery_id.as_deref(), Some("17"));
        assert_eq!(frame.seq, Some(3));
        assert!(matches!(frame.message, Some(Cow::Borrowed("hi"))));
        let escaped =
            Frame::parse(r#"{"type":"error","id":"s1","code":"bad_request","message":"a \"b\""}"#)
                .unwrap();
        assert_eq!(escaped.message.as_deref(), Some(r#"a "b""#));
        assert_eq!(escaped.code.as_deref(), Some("bad_request"));
    }

    #[test]
    fn builds_send_frames() {
        let frame: Value = serde_json::from_str(&send_message_frame("s1", "c1", "a\"b")).unwrap();
        assert_eq!(
            frame,
            json!({"type":"sendMessage","id":"s1","chatId":"c1","message":"a\"b"})
        );
    }
}
