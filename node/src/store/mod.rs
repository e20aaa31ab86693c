//! The fjall store: the node's source of truth.
//!
//! Owns: opening the database, its keyspaces (listed in [`keys`]), the record types as they are
//! stored, and typed reads ([`View`]) and writes ([`Tx`]) over them. This is the
//! only module that imports fjall; key layouts live in [`keys`].
//! Does not own: the rules of the chat (the core decides what to write) or when to
//! write (the core's writer thread is the only caller of [`Store::write`]).
//!
//! Invariant: every command's writes go into one transaction, committed as one
//! batch; the writer sets the durability of each commit explicitly.

mod dump;
mod federation;
pub(crate) mod format;
pub(crate) mod keys;

pub(crate) use dump::{FED, KEYSPACES, Loader, outbox_key};
pub(crate) use federation::{OutboxEntry, PeerKeyRecord, PeerRecord, RemoteAttachment};

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fjall::{
    KeyspaceCreateOptions, PersistMode, Readable, SingleWriterTxDatabase, SingleWriterTxKeyspace,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::ids::{AttachmentId, ChatId, DeviceId, MessageId, NodeName, Username};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage engine: {0}")]
    Engine(#[from] fjall::Error),
    #[error("corrupt record under {keyspace}: {detail}")]
    Corrupt {
        keyspace: &'static str,
        detail: String,
    },
    #[error(
        "the store in {path} has format {found}, written by a newer natterd; this natterd ({version}) \
         reads store format {supported}: run the newer natterd again, or restore the backup taken \
         before the upgrade",
        version = env!("CARGO_PKG_VERSION")
    )]
    TooNew {
        path: std::path::PathBuf,
        found: u32,
        supported: u32,
    },
    #[error(
        "the store in {path} has format {found}, which this natterd ({version}, store format \
         {supported}) cannot migrate: upgrade through an earlier natterd release first",
        version = env!("CARGO_PKG_VERSION")
    )]
    CannotMigrate {
        path: std::path::PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("backing the store up to {path} before migrating it: {source}")]
    Backup {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

pub(crate) type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How a commit reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Written to the OS; survives a process crash, not a power loss.
    Buffer,
    /// fsync'd: survives a power loss. Used before telling a sender "stored".
    Sync,
}

// ------------------------------------------------------------------ records

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: Username,
    /// PHC string (argon2id).
    pub password_hash: String,
    pub created_at: i64,
    #[serde(default)]
    pub disabled: bool,
    /// Deleted by an admin: a tombstone that keeps the name taken (its
    /// messages still carry it), with no password, devices or chats.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub user: Username,
    pub name: Option<String>,
    pub created_at: i64,
    pub last_active: i64,
    /// Hex sha256 of the bearer token; the token itself is never stored.
    pub token_hash: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InviteRecord {
    pub created_at: i64,
    pub expires_at: i64,
    pub uses_left: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChatRecord {
    pub name: Option<String>,
    /// userId of the creator.
    pub creator: String,
    pub created_at: i64,
    pub last_seq: u64,
    pub last_message_at: Option<i64>,
    /// The node that orders this chat's messages and owns its membership, when
    /// it is not this node: the record is then a mirror of that node's chat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<NodeName>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberRecord {
    pub joined_at: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserChatRecord {
    pub joined_at: i64,
    /// The highest seq this user has read; `unread = last_seq - read_seq`.
    pub read_seq: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttachmentRef {
    pub id: String,
    pub content_type: String,
    pub size: u64,
    pub name: Option<String>,
    /// The node holding the bytes when it is not the chat's home (a
    /// participating node whose user sent it); `None`: the home.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<NodeName>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MessageRecord {
    pub id: MessageId,
    /// userId of the sender.
    pub from: String,
    pub sent_at: i64,
    pub text: String,
    #[serde(default)]
    pub attachments: Vec<AttachmentRef>,
}

/// Why a chat changed, as stored. Its own type, not the wire's
/// `protocol::UpdateReason`, so that the protocol can evolve without changing
/// what is on disk: the names below are the disk format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateReason {
    #[serde(rename = "created")]
    Created,
    #[serde(rename = "added")]
    Added,
    #[serde(rename = "removed")]
    Removed,
    #[serde(rename = "renamed")]
    Renamed,
    #[serde(rename = "deleted")]
    Deleted,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpdateRecord {
    pub chat: ChatId,
    pub name: Option<String>,
    pub participants: Vec<String>,
    pub reason: UpdateReason,
    pub at: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdemRecord {
    pub chat: ChatId,
    pub seq: u64,
    pub message_id: MessageId,
    pub sent_at: i64,
}

/// An uploaded (or announced) file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttachmentRecord {
    /// userId of the uploader; only they may send it.
    pub uploader: String,
    /// The declared size; the stored object must match it.
    pub size: u64,
    pub content_type: String,
    pub name: Option<String>,
    /// base64 SHA-256 the uploader declared (the store enforces it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub created_at: i64,
    /// Checked against the store and sent in at least one message.
    #[serde(default)]
    pub sent: bool,
    /// Chats it was sent in: their participants may download it.
    #[serde(default)]
    pub chats: Vec<ChatId>,
    /// Chats whose home (a peer) it was offered to in a forwarded send that
    /// the home's event has not confirmed yet: that home may ask for a URL
    /// (its users see the message before this node hears back). Not `sent`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offered: Vec<ChatId>,
    /// The first send's check copied the upload to the key it is served from
    /// (`Media::seal`), and that copy passed the check: no upload URL can
    /// change it. Records from before sealing existed lack it and keep being
    /// served from the upload's key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sealed: bool,
}

/// One pending event of one device: a small reference, not a copy (store-once
/// fan-out). Encoded in binary because there are many of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboxEntry {
    /// When the entry was queued (ms since the epoch); retention counts from here.
    pub queued_at: i64,
    pub kind: InboxKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboxKind {
    Message {
        chat: ChatId,
        seq: u64,
    },
    Update {
        id: u64,
    },
    /// *Extension* `chatRead`: the user's read position in `chat` moved to `seq`
    /// on another of their devices. Inline: there is no record to point at.
    Read {
        chat: ChatId,
        seq: u64,
    },
    /// Retention dropped `count` events queued between the two times.
    Expired {
        count: u64,
        oldest: i64,
        newest: i64,
    },
}

impl InboxEntry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 8 + 24);
        match self.kind {
            InboxKind::Message { chat, seq } => {
                out.push(1);
                out.extend_from_slice(&self.queued_at.to_be_bytes());
                out.extend_from_slice(&chat.to_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
            }
            InboxKind::Update { id } => {
                out.push(2);
                out.extend_from_slice(&self.queued_at.to_be_bytes());
                out.extend_from_slice(&id.to_be_bytes());
            }
            InboxKind::Expired {
                count,
                oldest,
                newest,
            } => {
                out.push(3);
                out.extend_from_slice(&self.queued_at.to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
                out.extend_from_slice(&oldest.to_be_bytes());
                out.extend_from_slice(&newest.to_be_bytes());
            }
            InboxKind::Read { chat, seq } => {
                out.push(4);
                out.extend_from_slice(&self.queued_at.to_be_bytes());
                out.extend_from_slice(&chat.to_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        let queued_at = u64_at(1)? as i64;
        let kind = match *bytes.first()? {
            1 => InboxKind::Message {
                chat: ChatId::from_slice(bytes.get(9..25)?)?,
                seq: u64_at(25)?,
            },
            2 => InboxKind::Update { id: u64_at(9)? },
            3 => InboxKind::Expired {
                count: u64_at(9)?,
                oldest: u64_at(17)? as i64,
                newest: u64_at(25)? as i64,
            },
            4 => InboxKind::Read {
                chat: ChatId::from_slice(bytes.get(9..25)?)?,
                seq: u64_at(25)?,
            },
            _ => return None,
        };
        Some(Self { queued_at, kind })
    }
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    // Records are plain structs of strings and numbers: serializing cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn parse<T: DeserializeOwned>(keyspace: &'static str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        keyspace,
        detail: e.to_string(),
    })
}

// ------------------------------------------------------------------ the store

#[derive(Clone)]
pub(crate) struct Keyspaces {
    meta: SingleWriterTxKeyspace,
    users: SingleWriterTxKeyspace,
    devices: SingleWriterTxKeyspace,
    chats: SingleWriterTxKeyspace,
    messages: SingleWriterTxKeyspace,
    inbox: SingleWriterTxKeyspace,
    media: SingleWriterTxKeyspace,
    fed: SingleWriterTxKeyspace,
}

/// A cheap-clone handle to the database.
#[derive(Clone)]
pub struct Store {
    db: SingleWriterTxDatabase,
    ks: Keyspaces,
    health: Arc<Health>,
}

/// Whether a commit has failed (fjall refuses every later write then: it is
/// "poisoned"), and a fault tests may inject (`testing.store_faults`).
#[derive(Default)]
struct Health {
    failed: AtomicBool,
    faults_allowed: AtomicBool,
    fail_next: AtomicBool,
}

#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// Block cache, bytes.
    pub cache_bytes: u64,
    /// Size at which a keyspace's memtable is flushed to disk, bytes.
    pub memtable_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_bytes: 32 << 20,
            memtable_bytes: 16 << 20,
        }
    }
}

impl Store {
    /// Opens (or creates) the store at `path`, checking its format version
    /// and migrating an older one ([`format`]).
    pub fn open(path: &Path, options: StoreOptions) -> Result<Self> {
        Self::open_as(path, options, format::Formats::THIS)
    }

    pub(crate) fn open_as(
        path: &Path,
        options: StoreOptions,
        formats: format::Formats,
    ) -> Result<Self> {
        let fresh = std::fs::read_dir(path).map_or(true, |mut d| d.next().is_none());
        let store = Self::open_raw(path, options)?;
        store.settle_format(path, fresh, formats, || Self::open_raw(path, options))
    }

    /// Opens the database without looking at its format version.
    fn open_raw(path: &Path, options: StoreOptions) -> Result<Self> {
        let db = SingleWriterTxDatabase::builder(path)
            .cache_size(options.cache_bytes)
            // The writer thread decides durability per commit.
            .manual_journal_persist(true)
            .open()?;
        let memtable = options.memtable_bytes;
        let open = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(memtable)
            })
        };
        let ks = Keyspaces {
            meta: open("meta")?,
            users: open("users")?,
            devices: open("devices")?,
            chats: open("chats")?,
            messages: open("messages")?,
            inbox: open("inbox")?,
            media: open("media")?,
            fed: open("fed")?,
        };
        Ok(Self {
            db,
            ks,
            health: Arc::default(),
        })
    }

    /// False once a commit has failed: the node cannot store anything more
    /// until it is restarted (`/readyz` answers 503).
    pub fn healthy(&self) -> bool {
        !self.health.failed.load(Ordering::Acquire)
    }

    /// Lets [`Self::fail_next_commit`] work (`testing.store_faults`).
    pub fn allow_faults(&self) {
        self.health.faults_allowed.store(true, Ordering::Release);
    }

    /// Makes the next commit fail as a failed disk write would. Only when
    /// faults are allowed (tests); false otherwise.
    pub fn fail_next_commit(&self) -> bool {
        let allowed = self.health.faults_allowed.load(Ordering::Acquire);
        if allowed {
            self.health.fail_next.store(true, Ordering::Release);
        }
        allowed
    }

    /// A consistent read-only view of what is committed now.
    pub fn snapshot(&self) -> View<fjall::Snapshot> {
        View {
            r: self.db.read_tx(),
            ks: self.ks.clone(),
        }
    }

    /// Runs `f` in a write transaction and commits it with `durability` if it
    /// returns `Ok`. Only the core's writer thread calls this.
    pub fn write<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<(T, Durability), E>,
    ) -> Result<T, E> {
        let mut tx = Tx {
            tx: self.db.write_tx(),
            ks: &self.ks,
        };
        let (value, durability) = f(&mut tx)?;
        let mode = match durability {
            Durability::Buffer => PersistMode::Buffer,
            Durability::Sync => PersistMode::SyncData,
        };
        let committed = if self.health.fail_next.swap(false, Ordering::AcqRel) {
            Err(fjall::Error::Io(std::io::Error::other(
                "injected store fault",
            )))
        } else {
            tx.tx.durability(Some(mode)).commit()
        };
        if let Err(e) = committed {
            self.health.failed.store(true, Ordering::Release);
            return Err(StoreError::from(e).into());
        }
        Ok(value)
    }

    /// Numbers for operators: memory held by memtables, journals, pending flushes.
    pub fn stats(&self) -> StoreStats {
        let inner = self.db.inner();
        let keyspaces = [
            ("meta", &self.ks.meta),
            ("users", &self.ks.users),
            ("devices", &self.ks.devices),
            ("chats", &self.ks.chats),
            ("messages", &self.ks.messages),
            ("inbox", &self.ks.inbox),
            ("media", &self.ks.media),
        ];
        StoreStats {
            write_buffer_bytes: self.db.write_buffer_size(),
            journals: self.db.journal_count(),
            outstanding_flushes: inner.outstanding_flushes(),
            disk_bytes: self.db.disk_space().unwrap_or(0),
            keyspaces: keyspaces
                .iter()
                .map(|(name, ks)| KeyspaceStats {
                    name: (*name).to_owned(),
                    sealed_memtables: ks.inner().sealed_memtable_count(),
                    l0_tables: ks.inner().l0_table_count(),
                    tables: ks.inner().table_count(),
                })
                .collect(),
        }
    }

    /// Flushes everything to disk (used at shutdown).
    pub fn persist(&self) -> Result<()> {
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }
}

/// Part of the admin API's `/status` answer (and the source of store metrics).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreStats {
    pub write_buffer_bytes: u64,
    pub journals: usize,
    pub outstanding_flushes: usize,
    pub disk_bytes: u64,
    pub keyspaces: Vec<KeyspaceStats>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyspaceStats {
    pub name: String,
    pub sealed_memtables: usize,
    pub l0_tables: usize,
    pub tables: usize,
}

/// Typed reads over a snapshot or a write transaction.
pub struct View<R> {
    r: R,
    ks: Keyspaces,
}

pub(crate) type Snapshot = View<fjall::Snapshot>;

/// What a [`View`] reads from: a snapshot, or a write transaction in progress.
pub trait Source {
    type R: Readable;
    fn readable(&self) -> &Self::R;
}

impl Source for fjall::Snapshot {
    type R = Self;
    fn readable(&self) -> &Self {
        self
    }
}

impl<'a> Source for &fjall::SingleWriterWriteTx<'a> {
    type R = fjall::SingleWriterWriteTx<'a>;
    fn readable(&self) -> &Self::R {
        self
    }
}

macro_rules! get_json {
    ($self:ident, $ks:ident, $key:expr) => {
        match $self.r.readable().get(&$self.ks.$ks, $key)? {
            Some(bytes) => Some(parse(stringify!($ks), &bytes)?),
            None => None,
        }
    };
}

impl<R: Source> View<R> {
    pub fn counter(&self, name: &str) -> Result<u64> {
        Ok(
            match self.r.readable().get(&self.ks.meta, keys::counter(name))? {
                Some(bytes) => u64::from_be_bytes(bytes.as_ref().try_into().map_err(|_| {
                    StoreError::Corrupt {
                        keyspace: "meta",
                        detail: format!("counter {name}"),
                    }
                })?),
                None => 0,
            },
        )
    }

    pub fn invite(&self, code: &str) -> Result<Option<InviteRecord>> {
        Ok(get_json!(self, meta, keys::invite(code)))
    }

    pub fn invites(&self) -> Result<Vec<(String, InviteRecord)>> {
        let mut out = Vec::new();
        for item in self.r.readable().prefix(&self.ks.meta, keys::INVITE_PREFIX) {
            let (key, value) = item.into_inner()?;
            let code = String::from_utf8_lossy(&key[1..]).into_owned();
            out.push((code, parse("meta", &value)?));
        }
        Ok(out)
    }

    pub fn user(&self, name: &Username) -> Result<Option<UserRecord>> {
        Ok(get_json!(self, users, keys::user(name)))
    }

    pub fn users(&self) -> Result<Vec<UserRecord>> {
        let mut out = Vec::new();
        for item in self.r.readable().prefix(&self.ks.users, keys::USER_PREFIX) {
            let (_, value) = item.into_inner()?;
            out.push(parse("users", &value)?);
        }
        Ok(out)
    }

    pub fn user_devices(&self, name: &Username) -> Result<Vec<DeviceId>> {
        let mut out = Vec::new();
        for item in self
            .r
            .readable()
            .prefix(&self.ks.users, keys::user_devices_prefix(name))
        {
            let key = item.key()?;
            if let Some(id) = keys::trailing_id(&key) {
                out.push(DeviceId::from_bytes(id));
            }
        }
        Ok(out)
    }

    /// The chats of a user with the user's read position in each.
    pub fn user_chats(&self, name: &Username) -> Result<Vec<(ChatId, UserChatRecord)>> {
        let mut out = Vec::new();
        for item in self
            .r
            .readable()
            .prefix(&self.ks.users, keys::user_chats_prefix(name))
        {
            let (key, value) = item.into_inner()?;
            if let Some(id) = keys::trailing_id(&key) {
                out.push((ChatId::from_bytes(id), parse("users", &value)?));
            }
        }
        Ok(out)
    }

    /// How many chats a user takes part in, counted up to `cap`.
    pub fn user_chat_count(&self, name: &Username, cap: usize) -> Result<usize> {
        let prefix = keys::user_chats_prefix(name);
        let mut count = 0;
        for item in self.r.readable().prefix(&self.ks.users, prefix).take(cap) {
            item.key()?;
            count += 1;
        }
        Ok(count)
    }

    pub fn user_chat(&self, name: &Username, chat: ChatId) -> Result<Option<UserChatRecord>> {
        Ok(get_json!(self, users, keys::user_chat(name, chat)))
    }

    pub fn idem(
        &self,
        user_id: &str,
        chat: ChatId,
        client_msg_id: &str,
    ) -> Result<Option<IdemRecord>> {
        Ok(get_json!(
            self,
            users,
            keys::idem(user_id, chat, client_msg_id)
        ))
    }

    pub fn device(&self, id: DeviceId) -> Result<Option<DeviceRecord>> {
        Ok(get_json!(self, devices, keys::device(id)))
    }

    /// One page of `tag | id(16)` records of a keyspace, in key order, after the
    /// record of `after` (a whole key), at most `limit`.
    fn page<T: DeserializeOwned>(
        &self,
        keyspace: &SingleWriterTxKeyspace,
        name: &'static str,
        tag: &[u8],
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<([u8; 16], T)>> {
        let start = match after {
            // The smallest key above `after`.
            Some(mut key) => {
                key.push(0);
                key
            }
            None => tag.to_vec(),
        };
        let mut out = Vec::new();
        for item in self.r.readable().range(keyspace, start..) {
            let (key, value) = item.into_inner()?;
            if !key.starts_with(tag) || out.len() >= limit {
                break;
            }
            if let Some(id) = key.get(tag.len()..).and_then(|k| k.try_into().ok()) {
                out.push((id, parse(name, &value)?));
            }
        }
        Ok(out)
    }

    /// Devices in id order, starting after `after`, at most `limit`.
    pub fn devices_after(
        &self,
        after: Option<DeviceId>,
        limit: usize,
    ) -> Result<Vec<(DeviceId, DeviceRecord)>> {
        let page = self.page(
            &self.ks.devices,
            "devices",
            keys::DEVICE_PREFIX,
            after.map(keys::device),
            limit,
        )?;
        Ok(page
            .into_iter()
            .map(|(id, record)| (DeviceId::from_bytes(id), record))
            .collect())
    }

    pub fn device_by_token(&self, hash: &[u8; 32]) -> Result<Option<DeviceId>> {
        Ok(self
            .r
            .readable()
            .get(&self.ks.devices, keys::token(hash))?
            .and_then(|v| DeviceId::from_slice(&v)))
    }

    pub fn chat(&self, id: ChatId) -> Result<Option<ChatRecord>> {
        Ok(get_json!(self, chats, keys::chat(id)))
    }

    /// The userIds of a chat's participants, in key order.
    pub fn members(&self, chat: ChatId) -> Result<Vec<String>> {
        let prefix = keys::members_prefix(chat);
        let mut out = Vec::new();
        for item in self.r.readable().prefix(&self.ks.chats, &prefix) {
            let key = item.key()?;
            out.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
        }
        Ok(out)
    }

    pub fn is_member(&self, chat: ChatId, user_id: &str) -> Result<bool> {
        Ok(self
            .r
            .readable()
            .contains_key(&self.ks.chats, keys::member(chat, user_id))?)
    }

    pub fn message(&self, chat: ChatId, seq: u64) -> Result<Option<MessageRecord>> {
        Ok(get_json!(self, messages, keys::message(chat, seq)))
    }

    /// Messages of a chat with `from <= seq < to`, ascending; or the last `limit`
    /// of that range when `newest` is set. Stops early once the stored records
    /// add up to `max_bytes` (at least one message is returned).
    pub fn messages(
        &self,
        chat: ChatId,
        from: u64,
        to: u64,
        limit: usize,
        newest: bool,
        max_bytes: usize,
    ) -> Result<Vec<(u64, MessageRecord)>> {
        let range = keys::message(chat, from)..keys::message(chat, to);
        let mut out = Vec::new();
        let mut bytes = 0;
        let iter = self.r.readable().range(&self.ks.messages, range);
        let mut push = |item: fjall::Guard| -> Result<bool> {
            let (key, value) = item.into_inner()?;
            let seq = keys::message_seq(&key).unwrap_or_default();
            bytes += value.len();
            out.push((seq, parse("messages", &value)?));
            Ok(out.len() < limit && bytes < max_bytes)
        };
        if newest {
            for item in iter.rev() {
                if !push(item)? {
                    break;
                }
            }
            out.reverse();
        } else {
            for item in iter {
                if !push(item)? {
                    break;
                }
            }
        }
        Ok(out)
    }

    pub fn attachment(&self, id: AttachmentId) -> Result<Option<AttachmentRecord>> {
        Ok(get_json!(self, media, keys::attachment(id)))
    }

    /// A user's uploads not yet sent in a message, counted up to `cap`, and
    /// their declared bytes.
    pub fn pending_uploads(&self, user_id: &str, cap: usize) -> Result<(usize, u64)> {
        let prefix = keys::pending_uploads_prefix(user_id);
        let (mut count, mut bytes) = (0, 0u64);
        for item in self.r.readable().prefix(&self.ks.media, prefix).take(cap) {
            let value = item.value()?;
            let size = value.as_ref().try_into().map_or(0, u64::from_be_bytes);
            count += 1;
            bytes = bytes.saturating_add(size);
        }
        Ok((count, bytes))
    }

    /// Attachments in id (upload time) order, after `after`, at most `limit`.
    pub fn attachments_after(
        &self,
        after: Option<AttachmentId>,
        limit: usize,
    ) -> Result<Vec<(AttachmentId, AttachmentRecord)>> {
        let page = self.page(
            &self.ks.media,
            "media",
            keys::ATTACHMENT_PREFIX,
            after.map(keys::attachment),
            limit,
        )?;
        Ok(page
            .into_iter()
            .map(|(id, record)| (AttachmentId::from_bytes(id), record))
            .collect())
    }

    pub fn update(&self, id: u64) -> Result<Option<UpdateRecord>> {
        Ok(get_json!(self, messages, keys::update(id)))
    }

    /// Pending entries of a device with delivery id > `after`, oldest first.
    pub fn inbox_after(
        &self,
        device: DeviceId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, InboxEntry)>> {
        let start = keys::inbox(device, after.saturating_add(1));
        let end = keys::inbox(device, u64::MAX);
        let mut out = Vec::new();
        if after == u64::MAX {
            return Ok(out);
        }
        for item in self.r.readable().range(&self.ks.inbox, start..=end) {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item.into_inner()?;
            out.push(decode_inbox(&key, &value)?);
        }
        Ok(out)
    }

    /// The highest pending delivery id of a device.
    pub fn inbox_last(&self, device: DeviceId) -> Result<Option<u64>> {
        let range = keys::inbox(device, 0)..=keys::inbox(device, u64::MAX);
        match self.r.readable().range(&self.ks.inbox, range).next_back() {
            Some(item) => Ok(keys::inbox_delivery(&item.key()?)),
            None => Ok(None),
        }
    }

    pub fn inbox_entry(&self, device: DeviceId, delivery: u64) -> Result<Option<InboxEntry>> {
        match self
            .r
            .readable()
            .get(&self.ks.inbox, keys::inbox(device, delivery))?
        {
            Some(value) => Ok(Some(
                decode_inbox(&keys::inbox(device, delivery), &value)?.1,
            )),
            None => Ok(None),
        }
    }
}

impl<R: Source> View<R> {
    /// How many events a device has pending (counted up to `cap`), and when
    /// the oldest was queued.
    pub fn inbox_depth(&self, device: DeviceId, cap: usize) -> Result<(u64, Option<i64>)> {
        let range = keys::inbox(device, 0)..=keys::inbox(device, u64::MAX);
        let mut count = 0;
        let mut oldest = None;
        for item in self.r.readable().range(&self.ks.inbox, range).take(cap) {
            if oldest.is_none() {
                let (key, value) = item.into_inner()?;
                oldest = Some(decode_inbox(&key, &value)?.1.queued_at);
            } else {
                item.key()?;
            }
            count += 1;
        }
        Ok((count, oldest))
    }

    /// Pending events per device over the whole inbox, counted up to `cap`
    /// entries in all (keys only).
    pub fn inbox_depths(&self, cap: usize) -> Result<(Vec<(DeviceId, u64)>, bool)> {
        let mut out: Vec<(DeviceId, u64)> = Vec::new();
        for (seen, item) in self.r.readable().iter(&self.ks.inbox).enumerate() {
            if seen >= cap {
                return Ok((out, false));
            }
            let key = item.key()?;
            let Some(device) = key.get(..16).and_then(DeviceId::from_slice) else {
                continue;
            };
            match out.last_mut() {
                Some((last, count)) if *last == device => *count += 1,
                _ => out.push((device, 1)),
            }
        }
        Ok((out, true))
    }

    /// Every chat (home here or mirrored), in id order, after `after`, at
    /// most `limit`.
    pub fn chats_after(
        &self,
        after: Option<ChatId>,
        limit: usize,
    ) -> Result<Vec<(ChatId, ChatRecord)>> {
        let page = self.page(
            &self.ks.chats,
            "chats",
            keys::CHAT_PREFIX,
            after.map(keys::chat),
            limit,
        )?;
        Ok(page
            .into_iter()
            .map(|(id, record)| (ChatId::from_bytes(id), record))
            .collect())
    }

    /// How many messages of a chat are stored here (a mirror holds those
    /// since this node joined).
    pub fn message_count(&self, chat: ChatId) -> Result<u64> {
        let range = keys::message(chat, 0)..=keys::message(chat, u64::MAX);
        let mut count = 0;
        for item in self.r.readable().range(&self.ks.messages, range) {
            item.key()?;
            count += 1;
        }
        Ok(count)
    }

    /// The seqs of up to `limit` stored messages of a chat, oldest first.
    pub fn message_seqs(&self, chat: ChatId, limit: usize) -> Result<Vec<u64>> {
        let range = keys::message(chat, 0)..=keys::message(chat, u64::MAX);
        let mut out = Vec::new();
        for item in self
            .r
            .readable()
            .range(&self.ks.messages, range)
            .take(limit)
        {
            out.push(keys::message_seq(&item.key()?).unwrap_or_default());
        }
        Ok(out)
    }

    /// Chats deleted whose messages are still being removed.
    pub fn deleted_chats(&self) -> Result<Vec<ChatId>> {
        let mut out = Vec::new();
        for item in self
            .r
            .readable()
            .prefix(&self.ks.chats, keys::DELETED_CHAT_PREFIX)
        {
            if let Some(id) = keys::trailing_id(&item.key()?) {
                out.push(ChatId::from_bytes(id));
            }
        }
        Ok(out)
    }
}

fn decode_inbox(key: &[u8], value: &[u8]) -> Result<(u64, InboxEntry)> {
    let corrupt = || StoreError::Corrupt {
        keyspace: "inbox",
        detail: "bad entry".into(),
    };
    let id = keys::inbox_delivery(key).ok_or_else(corrupt)?;
    let entry = InboxEntry::decode(value).ok_or_else(corrupt)?;
    Ok((id, entry))
}

/// A write transaction: typed writes, and reads that see this transaction's own
/// writes (through [`Tx::view`]).
pub struct Tx<'a> {
    tx: fjall::SingleWriterWriteTx<'a>,
    ks: &'a Keyspaces,
}

impl<'a> Tx<'a> {
    /// Reads that see what this transaction wrote so far.
    pub fn view(&self) -> View<&fjall::SingleWriterWriteTx<'a>> {
        View {
            r: &self.tx,
            ks: self.ks.clone(),
        }
    }

    pub fn set_counter(&mut self, name: &str, value: u64) {
        self.tx
            .insert(&self.ks.meta, keys::counter(name), value.to_be_bytes());
    }

    pub fn put_invite(&mut self, code: &str, record: &InviteRecord) {
        self.tx
            .insert(&self.ks.meta, keys::invite(code), json(record));
    }

    pub fn delete_invite(&mut self, code: &str) {
        self.tx.remove(&self.ks.meta, keys::invite(code));
    }

    pub fn put_user(&mut self, record: &UserRecord) {
        self.tx
            .insert(&self.ks.users, keys::user(&record.name), json(record));
    }

    pub fn put_device(&mut self, id: DeviceId, record: &DeviceRecord, token_hash: &[u8; 32]) {
        self.tx
            .insert(&self.ks.devices, keys::device(id), json(record));
        self.tx
            .insert(&self.ks.devices, keys::token(token_hash), id.to_bytes());
        self.tx
            .insert(&self.ks.users, keys::user_device(&record.user, id), []);
    }

    pub fn update_device(&mut self, id: DeviceId, record: &DeviceRecord) {
        self.tx
            .insert(&self.ks.devices, keys::device(id), json(record));
    }

    /// Removes a device, its token and its whole inbox.
    pub fn delete_device(&mut self, id: DeviceId, record: &DeviceRecord) -> Result<u64> {
        self.tx.remove(&self.ks.devices, keys::device(id));
        if let Some(hash) = decode_hex32(&record.token_hash) {
            self.tx.remove(&self.ks.devices, keys::token(&hash));
        }
        self.tx
            .remove(&self.ks.users, keys::user_device(&record.user, id));
        let pending = self.view().inbox_after(id, 0, usize::MAX)?;
        for (delivery, _) in &pending {
            self.tx
                .remove_weak(&self.ks.inbox, keys::inbox(id, *delivery));
        }
        Ok(pending.len() as u64)
    }

    pub fn put_user_chat(&mut self, name: &Username, chat: ChatId, record: &UserChatRecord) {
        self.tx
            .insert(&self.ks.users, keys::user_chat(name, chat), json(record));
    }

    pub fn delete_user_chat(&mut self, name: &Username, chat: ChatId) {
        self.tx.remove(&self.ks.users, keys::user_chat(name, chat));
    }

    pub fn put_idem(&mut self, user_id: &str, client_msg_id: &str, record: &IdemRecord) {
        let key = keys::idem(user_id, record.chat, client_msg_id);
        self.tx.insert(&self.ks.users, key, json(record));
    }

    pub fn put_chat(&mut self, id: ChatId, record: &ChatRecord) {
        self.tx.insert(&self.ks.chats, keys::chat(id), json(record));
    }

    pub fn put_member(&mut self, chat: ChatId, user_id: &str, record: &MemberRecord) {
        self.tx
            .insert(&self.ks.chats, keys::member(chat, user_id), json(record));
    }

    pub fn delete_member(&mut self, chat: ChatId, user_id: &str) {
        self.tx.remove(&self.ks.chats, keys::member(chat, user_id));
    }

    /// Removes a chat's record and marks it deleted; its messages are
    /// removed in later steps ([`Tx::delete_message`], then
    /// [`Tx::chat_purged`]).
    pub fn delete_chat(&mut self, chat: ChatId) {
        self.tx.remove(&self.ks.chats, keys::chat(chat));
        self.tx.insert(&self.ks.chats, keys::deleted_chat(chat), []);
    }

    /// The last message of a deleted chat is gone.
    pub fn chat_purged(&mut self, chat: ChatId) {
        self.tx.remove(&self.ks.chats, keys::deleted_chat(chat));
    }

    pub fn delete_message(&mut self, chat: ChatId, seq: u64) {
        self.tx.remove(&self.ks.messages, keys::message(chat, seq));
    }

    pub fn put_message(&mut self, chat: ChatId, seq: u64, record: &MessageRecord) {
        self.tx
            .insert(&self.ks.messages, keys::message(chat, seq), json(record));
    }

    pub fn put_update(&mut self, id: u64, record: &UpdateRecord) {
        self.tx
            .insert(&self.ks.messages, keys::update(id), json(record));
    }

    pub fn delete_update(&mut self, id: u64) {
        self.tx.remove(&self.ks.messages, keys::update(id));
    }

    /// Update records, oldest first, at most `limit`.
    pub fn updates_oldest(&self, limit: usize) -> Result<Vec<(u64, i64)>> {
        let mut out = Vec::new();
        for item in self.tx.prefix(&self.ks.messages, keys::UPDATE_PREFIX) {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item.into_inner()?;
            let record: UpdateRecord = parse("messages", &value)?;
            out.push((keys::update_id(&key).unwrap_or_default(), record.at));
        }
        Ok(out)
    }

    /// Idempotency rows, with their keys, oldest key first, at most `limit`.
    pub fn idem_rows_after(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, IdemRecord, i64)>> {
        let start = match after {
            Some(k) => {
                let mut k = k.to_vec();
                k.push(0);
                k
            }
            None => keys::IDEM_PREFIX.to_vec(),
        };
        let mut out = Vec::new();
        for item in self.tx.range(&self.ks.users, start..) {
            let (key, value) = item.into_inner()?;
            if !key.starts_with(keys::IDEM_PREFIX) || out.len() >= limit {
                break;
            }
            let record: IdemRecord = parse("users", &value)?;
            let at = record.sent_at;
            out.push((key.to_vec(), record, at));
        }
        Ok(out)
    }

    pub fn delete_raw_user_key(&mut self, key: &[u8]) {
        self.tx.remove(&self.ks.users, key);
    }

    /// Stores an attachment record; an unsent one is also indexed under its
    /// uploader (pending uploads), a sent one leaves that index.
    pub fn put_attachment(&mut self, id: AttachmentId, record: &AttachmentRecord) {
        self.tx
            .insert(&self.ks.media, keys::attachment(id), json(record));
        let pending = keys::pending_upload(&record.uploader, id);
        match record.sent {
            false => self
                .tx
                .insert(&self.ks.media, pending, record.size.to_be_bytes()),
            true => self.tx.remove(&self.ks.media, pending),
        }
    }

    pub fn delete_attachment(&mut self, id: AttachmentId, record: &AttachmentRecord) {
        self.tx.remove(&self.ks.media, keys::attachment(id));
        self.tx
            .remove(&self.ks.media, keys::pending_upload(&record.uploader, id));
    }

    pub fn put_inbox(&mut self, device: DeviceId, delivery: u64, entry: &InboxEntry) {
        self.tx.insert(
            &self.ks.inbox,
            keys::inbox(device, delivery),
            entry.encode(),
        );
    }

    /// Removes one inbox entry. Inbox keys are written once, so a weak tombstone
    /// is enough, and it disappears at compaction instead of piling up.
    pub fn delete_inbox(&mut self, device: DeviceId, delivery: u64) {
        self.tx
            .remove_weak(&self.ks.inbox, keys::inbox(device, delivery));
    }
}

pub(crate) fn encode_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
    out
}

pub(crate) fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Store {
        Store::open(dir, StoreOptions::default()).unwrap()
    }

    #[test]
    fn update_reasons_keep_their_disk_names() {
        let names = [
            (UpdateReason::Created, "\"created\""),
            (UpdateReason::Added, "\"added\""),
            (UpdateReason::Removed, "\"removed\""),
            (UpdateReason::Renamed, "\"renamed\""),
            (UpdateReason::Deleted, "\"deleted\""),
        ];
        for (reason, name) in names {
            assert_eq!(serde_json::to_string(&reason).unwrap(), name);
            assert_eq!(serde_json::from_str::<UpdateReason>(name).unwrap(), reason);
        }
    }

    #[test]
    fn inbox_entries_round_trip() {
        let chat = ChatId::generate();
        for kind in [
            InboxKind::Message { chat, seq: 7 },
            InboxKind::Update { id: 9 },
            InboxKind::Read { chat, seq: 5 },
            InboxKind::Expired {
                count: 3,
                oldest: 10,
                newest: 20,
            },
        ] {
            let entry = InboxEntry {
                queued_at: 1_700_000_000_000,
                kind,
            };
            assert_eq!(InboxEntry::decode(&entry.encode()), Some(entry));
        }
        assert_eq!(InboxEntry::decode(&[9, 0]), None);
    }

    #[test]
    fn committed_writes_survive_reopen_and_rollback_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let device = DeviceId::generate();
        let chat = ChatId::generate();
        {
            let store = open(dir.path());
            store
                .write(|tx| {
                    for d in 1..=3 {
                        tx.put_inbox(
                            device,
                            d,
                            &InboxEntry {
                                queued_at: d as i64,
                                kind: InboxKind::Message { chat, seq: d },
                            },
                        );
                    }
                    tx.set_counter(keys::COUNTER_DELIVERY, 3);
                    Ok::<_, StoreError>(((), Durability::Sync))
                })
                .unwrap();
            // A failing closure commits nothing.
            let err = store.write(|tx| {
                tx.put_inbox(
                    device,
                    4,
                    &InboxEntry {
                        queued_at: 4,
                        kind: InboxKind::Update { id: 1 },
                    },
                );
                Err::<((), Durability), _>(StoreError::Corrupt {
                    keyspace: "test",
                    detail: "abort".into(),
                })
            });
            assert!(err.is_err());
        }
        let store = open(dir.path());
        let view = store.snapshot();
        let pending = view.inbox_after(device, 0, 100).unwrap();
        assert_eq!(pending.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(view.inbox_after(device, 2, 100).unwrap().len(), 1);
        assert_eq!(view.counter(keys::COUNTER_DELIVERY).unwrap(), 3);
        store
            .write(|tx| {
                tx.delete_inbox(device, 2);
                // The transaction sees its own delete.
                assert_eq!(tx.view().inbox_after(device, 0, 100).unwrap().len(), 2);
                Ok::<_, StoreError>(((), Durability::Buffer))
            })
            .unwrap();
        let left = store.snapshot().inbox_after(device, 0, 100).unwrap();
        assert_eq!(left.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 3]);
    }

    #[test]
    fn hex_round_trip() {
        let bytes = [0xabu8; 32];
        assert_eq!(decode_hex32(&encode_hex(&bytes)), Some(bytes));
        assert_eq!(decode_hex32("zz"), None);
    }
}
