//! The core: the rules of the chat, the write path and the read path.
//!
//! Owns: validating commands against the store, the single writer thread
//! ([`writer`]) that applies every write in group-committed batches, and the reads
//! that sessions and HTTP handlers need (auth, backlog, history, chat lists).
//! Does not own: sockets (the gateway), or how a delivery reaches a connection (the
//! [`Hub`](crate::delivery::Hub)).
//!
//! Boundary: [`Core`] is what a gateway talks to. Its inputs and outputs are
//! serializable protocol types and ids, so that a gateway in another process can
//! talk to it over NATS request/reply.

pub mod client;
mod render;
pub mod rpc;
mod writer;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::auth;
use crate::clock::{Clock, rfc3339};
use crate::delivery::{Presence, Publisher};
use crate::ids::{AttachmentId, ChatId, DeliveryId, DeviceId, NodeName, Username};
use crate::media::{Media, MediaError};
use crate::protocol::{self, ChatSummary, Command, CommandResult, ErrorCode, LoginResponse};
use crate::store::{AttachmentRecord, AttachmentRef, Store, StoreError};

pub use writer::SweepReport;
use writer::{Op, Outcome, WriteRequest, Writer};

/// Who is acting: one authenticated device of a local user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCtx {
    pub user: Username,
    /// `name@node`.
    pub user_id: String,
    pub device: DeviceId,
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The request was refused; the code goes to the client as is.
    #[error("{message}")]
    Rejected { code: ErrorCode, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A fault inside the node (logged, shown to clients as `internal`).
    #[error("{0}")]
    Internal(String),
    #[error("a blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("media store: {0}")]
    Media(#[from] MediaError),
    /// A part of the node this needs is unreachable (NATS, the core); retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The writer has stopped (the node is shutting down).
    #[error("the node is shutting down")]
    Stopped,
}

impl CoreError {
    pub fn reject(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Rejected {
            code,
            message: message.into(),
        }
    }

    /// The stable code a client sees. Internal causes are never shown; the caller
    /// logs them.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Rejected { code, .. } => *code,
            Self::Unavailable(_) | Self::Stopped => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }

    /// The message a client sees.
    pub fn public_message(&self) -> String {
        match self {
            Self::Rejected { message, .. } => message.clone(),
            Self::Unavailable(message) => message.clone(),
            Self::Stopped => "the node is shutting down".into(),
            _ => "internal error".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    Open,
    Invite,
    Closed,
}

impl std::str::FromStr for Registration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "open" => Ok(Self::Open),
            "invite" => Ok(Self::Invite),
            "closed" => Ok(Self::Closed),
            other => Err(format!(
                "registration must be open, invite or closed, not {other:?}"
            )),
        }
    }
}

#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub node: NodeName,
    pub registration: Registration,
    /// Undelivered inbox entries older than this are dropped (and the device told).
    pub retention_ms: i64,
    /// Devices not seen for this long are deactivated.
    pub device_ttl_ms: i64,
    /// How long an invite is valid unless the admin says otherwise.
    pub invite_ttl_ms: i64,
    /// Most commands applied in one commit.
    pub max_group: usize,
}

type Pending = Pin<Box<dyn Future<Output = Result<CommandResult, CoreError>> + Send>>;

/// Handle to the core. Cheap to clone.
#[derive(Clone)]
pub struct Core {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    writer: mpsc::Sender<WriteRequest>,
    clock: Clock,
    config: CoreConfig,
    media: Media,
    login_failures: LoginFailures,
}

/// Failed logins per user name: after [`LoginFailures::LIMIT`] within
/// [`LoginFailures::WINDOW_MS`], further attempts are refused (`rate_limited`)
/// without checking the password, until the window has passed. Slows guessing
/// and keeps argon2 from being used to burn the node's CPU.
#[derive(Default)]
struct LoginFailures {
    /// name → (failures, when the first of them happened)
    seen: std::sync::Mutex<std::collections::HashMap<String, (u32, i64)>>,
}

impl LoginFailures {
    const LIMIT: u32 = 10;
    const WINDOW_MS: i64 = 15 * 60 * 1000;
    /// Beyond this many names, expired entries are dropped.
    const MAX_NAMES: usize = 100_000;

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (u32, i64)>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn blocked(&self, name: &str, now: i64) -> bool {
        self.lock()
            .get(name)
            .is_some_and(|(n, since)| *n >= Self::LIMIT && now - since < Self::WINDOW_MS)
    }

    fn failed(&self, name: &str, now: i64) {
        let mut seen = self.lock();
        if seen.len() >= Self::MAX_NAMES {
            seen.retain(|_, (_, since)| now - *since < Self::WINDOW_MS);
        }
        let entry = seen.entry(name.to_owned()).or_insert((0, now));
        if now - entry.1 >= Self::WINDOW_MS {
            *entry = (0, now);
        }
        entry.0 += 1;
    }

    fn succeeded(&self, name: &str) {
        self.lock().remove(name);
    }
}

/// Joins the writer thread.
pub struct WriterThread(std::thread::JoinHandle<()>);

impl WriterThread {
    /// Waits (on the blocking pool) until the writer has drained and persisted.
    pub async fn join(self) {
        let _ = tokio::task::spawn_blocking(move || self.0.join()).await;
    }
}

impl Core {
    /// Starts the writer thread. The writer stops after [`Core::stop`], once every
    /// command queued before it is committed.
    pub fn start(
        store: Store,
        publisher: Publisher,
        presence: Presence,
        media: Media,
        clock: Clock,
        config: CoreConfig,
    ) -> Result<(Self, WriterThread), CoreError> {
        let (tx, rx) = mpsc::channel(4096);
        let writer = Writer::new(
            store.clone(),
            publisher,
            presence,
            clock.clone(),
            config.clone(),
        )?;
        let handle = std::thread::Builder::new()
            .name("natter-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| CoreError::Internal(format!("cannot start the writer thread: {e}")))?;
        let core = Self {
            inner: Arc::new(Inner {
                store,
                writer: tx,
                clock,
                config,
                media,
                login_failures: LoginFailures::default(),
            }),
        };
        Ok((core, WriterThread(handle)))
    }

    pub fn node(&self) -> &NodeName {
        &self.inner.config.node
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    pub fn config(&self) -> &CoreConfig {
        &self.inner.config
    }

    pub fn media(&self) -> &Media {
        &self.inner.media
    }

    /// Commands waiting for the writer.
    pub fn queue_depth(&self) -> usize {
        let writer = &self.inner.writer;
        writer.max_capacity() - writer.capacity()
    }

    pub fn store_stats(&self) -> crate::store::StoreStats {
        self.inner.store.stats()
    }

    /// Queues a write; the returned receiver answers after the commit.
    async fn enqueue(
        &self,
        op: Op,
    ) -> Result<oneshot::Receiver<Result<Outcome, CoreError>>, CoreError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .writer
            .send(WriteRequest { op, reply })
            .await
            .map_err(|_| CoreError::Stopped)?;
        Ok(rx)
    }

    async fn write(&self, op: Op) -> Result<Outcome, CoreError> {
        self.enqueue(op)
            .await?
            .await
            .map_err(|_| CoreError::Stopped)?
    }

    /// Runs a read on the blocking pool against a fresh snapshot.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&crate::store::Snapshot) -> Result<T, CoreError> + Send + 'static,
    ) -> Result<T, CoreError> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || f(&store.snapshot())).await?
    }

    /// Asks the writer to finish what is queued, persist, and stop.
    pub async fn stop(&self) {
        let _ = self.write(Op::Stop).await;
    }

    // ------------------------------------------------------------ accounts

    pub async fn register(
        &self,
        username: &str,
        password: &str,
        invite: Option<String>,
    ) -> Result<String, CoreError> {
        let registration = self.inner.config.registration;
        if registration == Registration::Closed {
            return Err(CoreError::reject(
                ErrorCode::RegistrationClosed,
                "this node does not accept registrations",
            ));
        }
        let name = Username::parse(username).ok_or_else(|| {
            CoreError::reject(
                ErrorCode::InvalidUsername,
                "usernames are 1-32 of a-z 0-9 . _ - and start with a letter or digit",
            )
        })?;
        check_password(password)?;
        let invite = match (registration, invite) {
            (Registration::Invite, None) => {
                return Err(CoreError::reject(
                    ErrorCode::InvalidInvite,
                    "this node needs an invite to register",
                ));
            }
            (Registration::Invite, Some(code)) => Some(code),
            (_, _) => None,
        };
        let password_hash = hash_password(password.to_owned()).await?;
        match self
            .write(Op::CreateUser {
                name,
                password_hash,
                invite,
            })
            .await?
        {
            Outcome::UserId(id) => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    /// Adds a user without an invite (admin).
    pub async fn add_user(&self, username: &str, password: &str) -> Result<String, CoreError> {
        let name = Username::parse(username)
            .ok_or_else(|| CoreError::reject(ErrorCode::InvalidUsername, "invalid username"))?;
        check_password(password)?;
        let password_hash = hash_password(password.to_owned()).await?;
        match self
            .write(Op::CreateUser {
                name,
                password_hash,
                invite: None,
            })
            .await?
        {
            Outcome::UserId(id) => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    pub async fn set_user_disabled(&self, username: &str, disabled: bool) -> Result<(), CoreError> {
        let name = Username::parse(username)
            .ok_or_else(|| CoreError::reject(ErrorCode::UnknownUser, "no such user"))?;
        self.write(Op::SetUserDisabled { name, disabled }).await?;
        Ok(())
    }

    pub async fn login(
        &self,
        username: &str,
        password: &str,
        device_name: Option<String>,
    ) -> Result<LoginResponse, CoreError> {
        let bad = || CoreError::reject(ErrorCode::BadCredentials, "wrong username or password");
        if let Some(n) = &device_name
            && n.chars().count() > protocol::MAX_DEVICE_NAME_CHARS
        {
            return Err(CoreError::reject(
                ErrorCode::BadRequest,
                "deviceName is too long",
            ));
        }
        let name = Username::parse(username);
        let now = self.inner.clock.now_ms();
        if self.inner.login_failures.blocked(username, now) {
            return Err(CoreError::reject(
                ErrorCode::RateLimited,
                "too many failed logins for this user; try again later",
            ));
        }
        let record = match &name {
            Some(n) => {
                let n = n.clone();
                self.read(move |view| Ok(view.user(&n)?)).await?
            }
            None => None,
        };
        let phc = record
            .as_ref()
            .map(|r| r.password_hash.clone())
            .unwrap_or_else(|| auth::dummy_hash().to_owned());
        let password = password.to_owned();
        let ok = password_work(move || auth::verify_password(&password, &phc)).await?;
        let (Some(name), Some(record), true) = (name, record, ok) else {
            self.inner.login_failures.failed(username, now);
            return Err(bad());
        };
        self.inner.login_failures.succeeded(username);
        if record.disabled {
            return Err(CoreError::reject(
                ErrorCode::UserDisabled,
                "this user is disabled",
            ));
        }
        self.new_device(name, device_name).await
    }

    /// Creates a device for a user without its password (admin).
    pub async fn add_device(
        &self,
        username: &str,
        device_name: Option<String>,
    ) -> Result<LoginResponse, CoreError> {
        let name = Username::parse(username)
            .ok_or_else(|| CoreError::reject(ErrorCode::UnknownUser, "no such user"))?;
        self.new_device(name, device_name).await
    }

    async fn new_device(
        &self,
        user: Username,
        device_name: Option<String>,
    ) -> Result<LoginResponse, CoreError> {
        let token = auth::new_token();
        let outcome = self
            .write(Op::CreateDevice {
                user,
                name: device_name,
                token_hash: auth::token_hash(&token),
            })
            .await?;
        match outcome {
            Outcome::Device(ctx) => Ok(LoginResponse {
                token,
                device_id: ctx.device.to_string(),
                user_id: ctx.user_id,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// The device a bearer token belongs to, if the token is valid.
    pub async fn authenticate(&self, token: &str) -> Result<DeviceCtx, CoreError> {
        let hash = auth::token_hash(token);
        let node = self.inner.config.node.clone();
        self.read(move |view| {
            let unauthorized = || CoreError::reject(ErrorCode::Unauthorized, "invalid token");
            let device = view.device_by_token(&hash)?.ok_or_else(unauthorized)?;
            let record = view.device(device)?.ok_or_else(unauthorized)?;
            let user = view.user(&record.user)?.ok_or_else(unauthorized)?;
            if user.disabled {
                return Err(CoreError::reject(
                    ErrorCode::Unauthorized,
                    "this user is disabled",
                ));
            }
            Ok(DeviceCtx {
                user_id: format!("{}@{}", record.user, node),
                user: record.user,
                device,
            })
        })
        .await
    }

    /// Ends a device: its token stops working and its inbox is dropped.
    pub async fn logout(&self, ctx: &DeviceCtx) -> Result<(), CoreError> {
        self.write(Op::DeleteDevice { device: ctx.device }).await?;
        Ok(())
    }

    /// Records that a device was seen now (for the device TTL). Fire and forget.
    pub fn touch(&self, device: DeviceId) {
        let _ = self.inner.writer.try_send(WriteRequest {
            op: Op::Touch { device },
            reply: oneshot::channel().0,
        });
    }

    /// The devices of a local user (empty for an unknown name).
    pub async fn user_devices(&self, username: &str) -> Result<Vec<DeviceId>, CoreError> {
        let Some(name) = Username::parse(username) else {
            return Ok(Vec::new());
        };
        self.read(move |view| Ok(view.user_devices(&name)?)).await
    }

    pub async fn list_users(&self) -> Result<Vec<UserInfo>, CoreError> {
        let node = self.inner.config.node.clone();
        self.read(move |view| {
            let mut out = Vec::new();
            for user in view.users()? {
                let devices = view.user_devices(&user.name)?.len();
                out.push(UserInfo {
                    user_id: format!("{}@{}", user.name, node),
                    created_at: rfc3339(user.created_at),
                    disabled: user.disabled,
                    devices,
                });
            }
            Ok(out)
        })
        .await
    }

    pub async fn create_invite(&self, uses: u32, ttl_ms: Option<i64>) -> Result<Invite, CoreError> {
        if uses == 0 {
            return Err(CoreError::reject(
                ErrorCode::BadRequest,
                "uses must be at least 1",
            ));
        }
        let ttl_ms = ttl_ms.unwrap_or(self.inner.config.invite_ttl_ms);
        match self.write(Op::CreateInvite { uses, ttl_ms }).await? {
            Outcome::Invite(invite) => Ok(invite),
            other => Err(unexpected(other)),
        }
    }

    /// Runs retention and device expiry over the whole store now, then removes
    /// orphaned and expired uploads.
    pub async fn sweep(&self) -> Result<SweepReport, CoreError> {
        let mut total = SweepReport::default();
        let mut after = None;
        loop {
            match self.write(Op::Sweep { after }).await? {
                Outcome::Swept { report, next } => {
                    total.add(&report);
                    match next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
        self.sweep_media(&mut total).await?;
        Ok(total)
    }

    /// Uploads never sent after `orphan_ttl`, and every upload after the media
    /// retention: the record goes first (so no message can take it any more),
    /// then the object.
    async fn sweep_media(&self, report: &mut SweepReport) -> Result<(), CoreError> {
        let config = self.inner.media.config();
        let now = self.inner.clock.now_ms();
        let unsent_before = now.saturating_sub(millis(config.orphan_ttl));
        let any_before = now.saturating_sub(millis(config.retention));
        let oldest_interesting = unsent_before.max(any_before);
        let mut after = None;
        loop {
            let batch = self
                .read(move |view| Ok(view.attachments_after(after, 512)?))
                .await?;
            let Some((last, _)) = batch.last() else {
                return Ok(());
            };
            after = Some(*last);
            let mut young = false;
            for (id, record) in batch {
                if record.created_at >= oldest_interesting {
                    // Ids are in upload order: everything after this is younger.
                    young = true;
                    break;
                }
                let expired = record.created_at < any_before;
                let outcome = self
                    .write(Op::DropAttachment {
                        id,
                        unsent_before,
                        any_before,
                    })
                    .await?;
                if let Outcome::Dropped(true) = outcome {
                    self.inner.media.delete(id).await?;
                    if expired {
                        report.attachments_expired += 1;
                    } else {
                        report.orphan_uploads_removed += 1;
                    }
                }
            }
            if young {
                return Ok(());
            }
        }
    }

    // ------------------------------------------------------------ commands

    /// Starts a command. The returned future resolves to its result. Writes are
    /// queued before this returns, so commands dispatched one after another by one
    /// connection are applied in that order.
    pub async fn dispatch(&self, ctx: &DeviceCtx, command: Command) -> Pending {
        match command {
            Command::ListChats => {
                let this = self.clone();
                let user = ctx.user.clone();
                Box::pin(async move { this.list_chats(user).await })
            }
            Command::GetHistory {
                chat_id,
                before_seq,
                after_seq,
                limit,
            } => {
                let this = self.clone();
                let user_id = ctx.user_id.clone();
                Box::pin(async move {
                    this.history(user_id, chat_id, before_seq, after_seq, limit)
                        .await
                })
            }
            Command::GetAttachmentTarget {
                size,
                content_type,
                name,
                sha256,
            } => {
                let this = self.clone();
                let ctx = ctx.clone();
                Box::pin(async move {
                    this.attachment_target(&ctx, size, content_type, name, sha256)
                        .await
                })
            }
            Command::GetAttachmentUrl { attachment_id } => {
                let this = self.clone();
                let user_id = ctx.user_id.clone();
                Box::pin(async move { this.attachment_url(user_id, attachment_id).await })
            }
            command => {
                // Uploads are checked against the media store here, off the writer,
                // before the send is queued (so still in frame order).
                let attachments = match &command {
                    Command::SendMessage { attachments, .. } if !attachments.is_empty() => {
                        match self.check_uploads(ctx, attachments).await {
                            Ok(checked) => checked,
                            Err(e) => return Box::pin(async move { Err(e) }),
                        }
                    }
                    _ => Vec::new(),
                };
                let queued = self
                    .enqueue(Op::Command {
                        ctx: ctx.clone(),
                        command,
                        attachments,
                    })
                    .await;
                Box::pin(async move {
                    match queued?.await.map_err(|_| CoreError::Stopped)?? {
                        Outcome::Command(result) => Ok(result),
                        other => Err(unexpected(other)),
                    }
                })
            }
        }
    }

    async fn attachment_target(
        &self,
        ctx: &DeviceCtx,
        size: u64,
        content_type: String,
        name: Option<String>,
        sha256: Option<String>,
    ) -> Result<CommandResult, CoreError> {
        let media = &self.inner.media;
        let max = media.config().max_size;
        if size > max {
            return Err(CoreError::reject(
                ErrorCode::AttachmentTooLarge,
                format!("attachments are at most {max} bytes on this node"),
            ));
        }
        if !media.allows_type(&content_type) {
            return Err(CoreError::reject(
                ErrorCode::BadRequest,
                format!("{content_type} is not an allowed content type on this node"),
            ));
        }
        let id = AttachmentId::generate();
        let record = AttachmentRecord {
            uploader: ctx.user_id.clone(),
            size,
            content_type: content_type.clone(),
            name,
            sha256: sha256.clone(),
            created_at: self.inner.clock.now_ms(),
            sent: false,
            chats: Vec::new(),
        };
        self.write(Op::CreateAttachment { id, record }).await?;
        let target = media
            .upload_target(id, size, &content_type, sha256.as_deref())
            .await?;
        Ok(CommandResult::AttachmentTarget {
            attachment_id: id.to_string(),
            upload_url: target.url,
            method: "PUT".to_owned(),
            headers: target.headers.into_iter().collect(),
            expires_at: target.expires_at,
        })
    }

    async fn attachment_url(
        &self,
        user_id: String,
        id: AttachmentId,
    ) -> Result<CommandResult, CoreError> {
        let allowed = self
            .read(move |view| {
                let Some(record) = view.attachment(id)? else {
                    return Ok(None);
                };
                if record.uploader == user_id {
                    return Ok(Some(true));
                }
                for chat in &record.chats {
                    if view.is_member(*chat, &user_id)? {
                        return Ok(Some(true));
                    }
                }
                Ok(Some(false))
            })
            .await?;
        match allowed {
            None => Err(CoreError::reject(
                ErrorCode::UnknownAttachment,
                "no such attachment",
            )),
            Some(false) => Err(CoreError::reject(
                ErrorCode::Forbidden,
                "only participants of a chat it was sent in may download it",
            )),
            Some(true) => {
                let (url, expires_at) = self.inner.media.download_url(id).await?;
                Ok(CommandResult::AttachmentUrl { url, expires_at })
            }
        }
    }

    /// Checks that each attachment is the sender's and that what the store holds
    /// is what was declared; a wrong upload is deleted (the client may upload
    /// again while its URL is valid).
    async fn check_uploads(
        &self,
        ctx: &DeviceCtx,
        ids: &[AttachmentId],
    ) -> Result<Vec<AttachmentRef>, CoreError> {
        let wanted = ids.to_vec();
        let records = self
            .read(move |view| {
                wanted
                    .iter()
                    .map(|id| Ok((*id, view.attachment(*id)?)))
                    .collect::<Result<Vec<_>, CoreError>>()
            })
            .await?;
        let media = &self.inner.media;
        let mut checked = Vec::with_capacity(records.len());
        for (id, record) in records {
            let unknown = || {
                CoreError::reject(
                    ErrorCode::UnknownAttachment,
                    format!("no such attachment {id}"),
                )
            };
            let record = record
                .filter(|r| r.uploader == ctx.user_id)
                .ok_or_else(unknown)?;
            if !record.sent {
                let Some(stored) = media.inspect(id).await? else {
                    return Err(CoreError::reject(
                        ErrorCode::UnknownAttachment,
                        format!("attachment {id} has not been uploaded"),
                    ));
                };
                let max = media.config().max_size;
                let wrong_type = stored
                    .content_type
                    .as_deref()
                    .is_some_and(|ct| !ct.eq_ignore_ascii_case(&record.content_type));
                if stored.size > max || stored.size != record.size || wrong_type {
                    media.delete(id).await?;
                    tracing::info!(%id, size = stored.size, declared = record.size, "deleted an upload that does not match its declaration");
                    return Err(if stored.size > max {
                        CoreError::reject(
                            ErrorCode::AttachmentTooLarge,
                            format!("attachment {id} is over {max} bytes"),
                        )
                    } else {
                        CoreError::reject(
                            ErrorCode::UnknownAttachment,
                            format!("attachment {id} does not match its declared size and type"),
                        )
                    });
                }
            }
            checked.push(AttachmentRef {
                id: id.to_string(),
                content_type: record.content_type,
                size: record.size,
                name: record.name,
            });
        }
        Ok(checked)
    }

    /// An attachment's record (for the embedded media endpoints).
    pub async fn attachment(
        &self,
        id: AttachmentId,
    ) -> Result<Option<AttachmentRecord>, CoreError> {
        self.read(move |view| Ok(view.attachment(id)?)).await
    }

    async fn list_chats(&self, user: Username) -> Result<CommandResult, CoreError> {
        self.read(move |view| {
            let mut chats: Vec<(i64, ChatSummary)> = Vec::new();
            for (chat_id, membership) in view.user_chats(&user)? {
                let Some(chat) = view.chat(chat_id)? else {
                    continue;
                };
                let participants = view.members(chat_id)?;
                let recent = chat.last_message_at.unwrap_or(chat.created_at);
                chats.push((
                    recent,
                    ChatSummary {
                        chat_id: chat_id.to_string(),
                        name: chat.name,
                        participants,
                        last_seq: chat.last_seq,
                        last_message_at: chat.last_message_at.map(rfc3339),
                        unread: chat.last_seq.saturating_sub(membership.read_seq),
                    },
                ));
            }
            chats.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.chat_id.cmp(&a.1.chat_id)));
            Ok(CommandResult::Chats {
                chats: chats.into_iter().map(|(_, c)| c).collect(),
            })
        })
        .await
    }

    async fn history(
        &self,
        user_id: String,
        chat_id: ChatId,
        before: Option<u64>,
        after: Option<u64>,
        limit: u32,
    ) -> Result<CommandResult, CoreError> {
        self.read(move |view| {
            if view.chat(chat_id)?.is_none() {
                return Err(CoreError::reject(ErrorCode::UnknownChat, "no such chat"));
            }
            if !view.is_member(chat_id, &user_id)? {
                return Err(CoreError::reject(
                    ErrorCode::NotParticipant,
                    "you are not a participant of this chat",
                ));
            }
            let from = after.map_or(1, |a| a.saturating_add(1));
            let to = before.unwrap_or(u64::MAX);
            // With only `beforeSeq` (or nothing) the client scrolls back: newest first.
            let newest = after.is_none();
            let rows = view.messages(chat_id, from, to, limit as usize, newest, FRAMES_BUDGET)?;
            Ok(CommandResult::History {
                messages: rows
                    .iter()
                    .map(|(seq, m)| render::message_view(chat_id, *seq, m))
                    .collect(),
            })
        })
        .await
    }

    // ------------------------------------------------------------ delivery

    /// A device's pending events with delivery id > `after`, oldest first, as
    /// frames: at most `limit` of them and about [`FRAMES_BUDGET`] bytes.
    pub async fn backlog(
        &self,
        device: DeviceId,
        after: DeliveryId,
        limit: usize,
    ) -> Result<Frames, CoreError> {
        self.read(move |view| {
            let entries = view.inbox_after(device, after.0, limit)?;
            let read = entries.len();
            let mut frames = Vec::with_capacity(read);
            let mut bytes = 0;
            for (id, entry) in entries {
                if bytes >= FRAMES_BUDGET {
                    break;
                }
                let event = render::entry_event(view, &entry)?;
                let frame = protocol::event_frame(DeliveryId(id), &event.encode());
                bytes += frame.len();
                frames.push((DeliveryId(id), frame));
            }
            // Fewer entries than asked for, all of them framed: nothing more now.
            let complete = read < limit && frames.len() == read;
            Ok(Frames { frames, complete })
        })
        .await
    }

    /// The frames of specific pending events (for resends); acked ones are skipped.
    pub async fn pending(
        &self,
        device: DeviceId,
        ids: Vec<DeliveryId>,
    ) -> Result<Frames, CoreError> {
        self.read(move |view| {
            let mut frames = Vec::with_capacity(ids.len());
            let mut bytes = 0;
            let mut complete = true;
            for id in ids {
                if bytes >= FRAMES_BUDGET {
                    complete = false;
                    break;
                }
                if let Some(entry) = view.inbox_entry(device, id.0)? {
                    let event = render::entry_event(view, &entry)?;
                    let frame = protocol::event_frame(id, &event.encode());
                    bytes += frame.len();
                    frames.push((id, frame));
                }
            }
            Ok(Frames { frames, complete })
        })
        .await
    }

    /// Acknowledges deliveries: they leave the device's inbox.
    pub async fn ack(&self, ctx: &DeviceCtx, ids: Vec<DeliveryId>) -> Pending {
        self.dispatch(ctx, Command::Ack { delivery_ids: ids }).await
    }
}

/// About this many bytes of frames go in one inbox read, so one answer fits in a
/// NATS message (1 MiB by default) with room to spare.
pub const FRAMES_BUDGET: usize = 512 * 1024;

/// Frames read from a device's inbox.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Frames {
    pub frames: Vec<(DeliveryId, String)>,
    /// Whether everything pending (after the cursor, or of the ids asked for) is here.
    pub complete: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    pub user_id: String,
    pub created_at: String,
    pub disabled: bool,
    pub devices: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invite {
    pub code: String,
    pub uses: u32,
    pub expires_at: String,
}

/// Runs password hashing or verification on the blocking pool, at most one per
/// CPU at a time. argon2 takes ~19 MiB and tens of milliseconds per call: without
/// a bound, a burst of logins would take every core and leave the allocator
/// holding hundreds of megabytes.
async fn password_work<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    use std::sync::OnceLock;
    use tokio::sync::Semaphore;
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    let slots = SLOTS.get_or_init(|| {
        Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    });
    // The semaphore is never closed, so acquiring cannot fail.
    let _permit = slots.acquire().await.ok();
    tokio::task::spawn_blocking(f).await
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn check_password(password: &str) -> Result<(), CoreError> {
    if password.chars().count() < protocol::MIN_PASSWORD_CHARS {
        return Err(CoreError::reject(
            ErrorCode::WeakPassword,
            format!(
                "passwords have at least {} characters",
                protocol::MIN_PASSWORD_CHARS
            ),
        ));
    }
    if password.len() > protocol::MAX_PASSWORD_BYTES {
        return Err(CoreError::reject(
            ErrorCode::BadRequest,
            "password is too long",
        ));
    }
    Ok(())
}

async fn hash_password(password: String) -> Result<String, CoreError> {
    password_work(move || auth::hash_password(&password))
        .await?
        .map_err(|e| CoreError::Internal(e.to_string()))
}

fn unexpected(outcome: Outcome) -> CoreError {
    CoreError::Internal(format!(
        "writer answered with an unexpected outcome: {outcome:?}"
    ))
}
