//! Media: where attachment bytes live, and the pre-signed URLs that move them.
//!
//! Owns: the object store (the only module that imports object_store), signing
//! upload and download URLs, checking what was uploaded, deleting objects, and —
//! in embedded mode — serving the PUT and GET that natter signs itself.
//! Does not own: who may upload or download (the core decides; attachment records
//! are in the store).
//!
//! Two backends, one behaviour for clients:
//! - **S3** (any S3-compatible store): object_store's SigV4 signer makes PUT URLs
//!   that bind the content type, and GET URLs that bind the response's
//!   `Content-Type` and `Content-Disposition` ([`Presentation`]). The bytes
//!   never pass through natter.
//!   A pre-signed PUT cannot cap the size, so [`Media::inspect`] checks the stored
//!   object before a message may reference it.
//! - **Local** (the default): object_store's local file system under the data
//!   folder; natter serves `/v1/media/{id}` and signs those URLs with HMAC-SHA256
//!   (same expiry and limits), enforcing size and type while it streams.
//!
//! Both backends freeze an attachment when it is first sent: [`Media::seal`]
//! copies the upload (`{prefix}/{id}`, the key upload URLs are signed for) to
//! `{prefix}/sent/{id}`, a key no URL ever lets anyone write, and a sealed
//! attachment is served from there. So a still-valid upload URL cannot change
//! what recipients download (docs/security.md, "Media").

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use hmac::{Hmac, Mac};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{Attribute, GetOptions, ObjectStore, ObjectStoreExt, PutPayload};
use sha2::Sha256;

use crate::clock::{Clock, millis, rfc3339};
use crate::ids::AttachmentId;

mod presentation;
pub(crate) use presentation::Presentation;

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("media configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Where media goes, as configured.
#[derive(Clone, Debug)]
pub enum MediaBackend {
    /// A folder on this machine, served by natter itself.
    Local {
        root: std::path::PathBuf,
    },
    S3(S3Config),
}

#[derive(Clone, Debug)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket (may be empty).
    pub prefix: String,
    /// e.g. `https://s3.eu-central-1.amazonaws.com` or `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// `bucket` in the path instead of the host name (MinIO, Garage, Ceph).
    pub path_style: bool,
    pub allow_http: bool,
}

#[derive(Clone, Debug)]
pub struct MediaConfig {
    pub backend: MediaBackend,
    pub max_size: u64,
    /// Allowed content types; empty means any. An entry ending in `/*` allows a family.
    pub allowed_types: Vec<String>,
    pub upload_expiry: Duration,
    pub download_expiry: Duration,
    /// Uploads never sent in a message are removed after this.
    pub orphan_ttl: Duration,
    /// Attachments are removed this long after upload.
    pub retention: Duration,
}

/// A signed upload target, as `getAttachmentTarget` returns it.
#[derive(Clone, Debug)]
pub struct UploadTarget {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub expires_at: String,
}

/// What the store holds under an attachment's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub size: u64,
    pub content_type: Option<String>,
}

enum Backend {
    Local {
        store: Arc<LocalFileSystem>,
        key: [u8; 32],
        public_url: String,
    },
    S3 {
        store: Arc<AmazonS3>,
        prefix: String,
    },
}

/// Cheap-clone handle.
#[derive(Clone)]
pub struct Media {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    config: MediaConfig,
    clock: Clock,
    /// [`Media::seal`] of one attachment runs alone (striped by id), so a
    /// copy, once made, is never replaced by a second one.
    sealing: Box<[tokio::sync::Mutex<()>]>,
}

/// Locks [`Inner::sealing`] is striped over.
const SEAL_STRIPES: usize = 64;

type HmacSha256 = Hmac<Sha256>;

impl Media {
    /// `key` signs embedded-mode URLs; `public_url` is where clients reach this
    /// node (embedded mode only).
    pub fn open(
        config: MediaConfig,
        key: [u8; 32],
        public_url: String,
        clock: Clock,
    ) -> Result<Self, MediaError> {
        let backend = match &config.backend {
            MediaBackend::Local { root } => {
                std::fs::create_dir_all(root)?;
                Backend::Local {
                    store: Arc::new(LocalFileSystem::new_with_prefix(root)?),
                    key,
                    public_url: public_url.trim_end_matches('/').to_owned(),
                }
            }
            MediaBackend::S3(s3) => {
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region)
                    .with_virtual_hosted_style_request(!s3.path_style)
                    .with_allow_http(s3.allow_http);
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if let Some(id) = &s3.access_key_id {
                    builder = builder.with_access_key_id(id);
                }
                if let Some(secret) = &s3.secret_access_key {
                    builder = builder.with_secret_access_key(secret);
                }
                Backend::S3 {
                    store: Arc::new(builder.build()?),
                    prefix: s3.prefix.trim_matches('/').to_owned(),
                }
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                backend,
                config,
                clock,
                sealing: (0..SEAL_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
            }),
        })
    }

    pub fn config(&self) -> &MediaConfig {
        &self.inner.config
    }

    /// Whether `content_type` may be uploaded.
    pub fn allows_type(&self, content_type: &str) -> bool {
        let allowed = &self.inner.config.allowed_types;
        allowed.is_empty()
            || allowed.iter().any(|a| match a.strip_suffix("/*") {
                Some(family) => content_type
                    .split_once('/')
                    .is_some_and(|(f, _)| f.eq_ignore_ascii_case(family)),
                None => a.eq_ignore_ascii_case(content_type),
            })
    }

    /// Where uploads go: the key upload URLs are signed for.
    fn path(&self, id: AttachmentId) -> ObjectPath {
        match &self.inner.backend {
            Backend::S3 { prefix, .. } if !prefix.is_empty() => {
                ObjectPath::from(format!("{prefix}/{id}"))
            }
            _ => ObjectPath::from(id.to_string()),
        }
    }

    /// Where a sealed attachment lives ([`Media::seal`]). No URL is ever
    /// signed for a write here (an id is a ULID: no upload key has a `/`).
    fn sent_path(&self, id: AttachmentId) -> ObjectPath {
        match &self.inner.backend {
            Backend::S3 { prefix, .. } if !prefix.is_empty() => {
                ObjectPath::from(format!("{prefix}/sent/{id}"))
            }
            _ => ObjectPath::from(format!("sent/{id}")),
        }
    }

    /// The object downloads read: the sealed copy, or (an attachment sent
    /// before sealing existed, or not sent yet) the upload.
    fn served_path(&self, id: AttachmentId, sealed: bool) -> ObjectPath {
        match sealed {
            true => self.sent_path(id),
            false => self.path(id),
        }
    }

    fn store(&self) -> &dyn ObjectStore {
        match &self.inner.backend {
            Backend::Local { store, .. } => store.as_ref(),
            Backend::S3 { store, .. } => store.as_ref(),
        }
    }

    /// A URL the client PUTs exactly `size` bytes of `content_type` to.
    pub async fn upload_target(
        &self,
        id: AttachmentId,
        size: u64,
        content_type: &str,
        sha256: Option<&str>,
    ) -> Result<UploadTarget, MediaError> {
        let expiry = self.inner.config.upload_expiry;
        let expires_at = self.inner.clock.now_ms() + millis(expiry);
        let mut headers = vec![("content-type".to_owned(), content_type.to_owned())];
        if let Some(sum) = sha256 {
            headers.push((CHECKSUM_HEADER.to_owned(), sum.to_owned()));
        }
        let url = match &self.inner.backend {
            Backend::S3 { store, .. } => {
                let mut options = SignedUrlOptions::default();
                for (name, value) in &headers {
                    let value = value
                        .parse()
                        .map_err(|_| MediaError::Config(format!("{name} is not a header value")))?;
                    let name =
                        object_store::signer::HeaderName::from_static(if name == "content-type" {
                            "content-type"
                        } else {
                            CHECKSUM_HEADER
                        });
                    options = options.with_signed_header(name, value);
                }
                store
                    .signed_url_opts(
                        object_store::signer::Method::PUT,
                        &self.path(id),
                        expiry,
                        &options,
                    )
                    .await?
                    .to_string()
            }
            Backend::Local {
                key, public_url, ..
            } => {
                let sig = local_signature(local_mac(
                    key,
                    "PUT",
                    id,
                    expires_at,
                    Some((content_type, size, sha256)),
                ));
                format!("{public_url}/v1/media/{id}?exp={expires_at}&size={size}&sig={sig}")
            }
        };
        Ok(UploadTarget {
            url,
            headers,
            expires_at: rfc3339(expires_at),
        })
    }

    /// A URL to GET the attachment from: its sealed copy when `sealed`
    /// (`AttachmentRecord::sealed`), else the upload. Whoever opens it gets
    /// the attachment as `presented` ([`Presentation::of`] its recorded type
    /// and name): the embedded store sends those headers itself; an S3 URL
    /// signs them in as `response-content-type` and
    /// `response-content-disposition`, so the bucket answers with them instead
    /// of the type the uploader declared, and a changed one breaks the
    /// signature. (An embedded URL does not carry them: the GET computes the
    /// same [`Presentation`] from the record when it serves.)
    pub(crate) async fn download_url(
        &self,
        id: AttachmentId,
        sealed: bool,
        presented: &Presentation,
    ) -> Result<(String, String), MediaError> {
        let expiry = self.inner.config.download_expiry;
        let expires_at = self.inner.clock.now_ms() + millis(expiry);
        let url = match &self.inner.backend {
            Backend::S3 { store, .. } => {
                let options = SignedUrlOptions::default().with_query([
                    ("response-content-type", presented.content_type.as_str()),
                    (
                        "response-content-disposition",
                        presented.disposition.as_str(),
                    ),
                ]);
                store
                    .signed_url_opts(
                        object_store::signer::Method::GET,
                        &self.served_path(id, sealed),
                        expiry,
                        &options,
                    )
                    .await?
                    .to_string()
            }
            Backend::Local {
                key, public_url, ..
            } => {
                let sig = local_signature(local_mac(key, "GET", id, expires_at, None));
                format!("{public_url}/v1/media/{id}?exp={expires_at}&sig={sig}")
            }
        };
        Ok((url, rfc3339(expires_at)))
    }

    /// What is uploaded for `id`, if anything.
    pub async fn inspect(&self, id: AttachmentId) -> Result<Option<Stored>, MediaError> {
        self.head(&self.path(id)).await
    }

    /// Freezes what is uploaded for `id`: copies it, inside the store, to the
    /// key a sealed attachment is served from, and answers what that copy holds
    /// (`None`: nothing was uploaded). A copy that exists already is kept and
    /// answered: a copy is never replaced, so once one passed the send check
    /// and a message took it, its bytes cannot change. Checking the copy (not
    /// the upload) means a PUT racing the check cannot slip past it. Callers
    /// delete a copy that fails their check with [`Media::delete`].
    pub async fn seal(&self, id: AttachmentId) -> Result<Option<Stored>, MediaError> {
        let stripe = usize::from(id.to_bytes()[15]) % SEAL_STRIPES;
        let _alone = self.inner.sealing[stripe].lock().await;
        let sent = self.sent_path(id);
        if let Some(stored) = self.head(&sent).await? {
            return Ok(Some(stored));
        }
        match self.store().copy(&self.path(id), &sent).await {
            Ok(()) => self.head(&sent).await,
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn head(&self, path: &ObjectPath) -> Result<Option<Stored>, MediaError> {
        let options = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        match self.store().get_opts(path, options).await {
            Ok(result) => Ok(Some(Stored {
                size: result.meta.size,
                content_type: result
                    .attributes
                    .get(&Attribute::ContentType)
                    .map(|v| v.to_string()),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the attachment's objects (upload and sealed copy); a missing
    /// object is not an error.
    pub async fn delete(&self, id: AttachmentId) -> Result<(), MediaError> {
        self.delete_path(&self.sent_path(id)).await?;
        self.delete_upload(id).await
    }

    /// Removes only the upload (once sealed, nothing reads it any more).
    pub async fn delete_upload(&self, id: AttachmentId) -> Result<(), MediaError> {
        self.delete_path(&self.path(id)).await
    }

    async fn delete_path(&self, path: &ObjectPath) -> Result<(), MediaError> {
        match self.store().delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    // -------------------------------------------------------- embedded mode

    /// Checks an embedded-mode URL: signature, expiry, method.
    pub fn verify_local(
        &self,
        method: &str,
        id: AttachmentId,
        query: &LocalQuery,
        content_type: Option<&str>,
        checksum: Option<&str>,
    ) -> Result<(), LocalDenied> {
        let Backend::Local { key, .. } = &self.inner.backend else {
            return Err(LocalDenied::NotServed);
        };
        let signed = match (method, query.size, content_type) {
            ("PUT", Some(size), Some(ct)) => Some((ct, size, checksum)),
            ("PUT", _, _) => return Err(LocalDenied::BadSignature),
            _ => None,
        };
        let given = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(query.sig.as_bytes())
            .map_err(|_| LocalDenied::BadSignature)?;
        // Constant-time comparison through the MAC's verify.
        local_mac(key, method, id, query.exp, signed)
            .verify_slice(&given)
            .map_err(|_| LocalDenied::BadSignature)?;
        if query.exp <= self.inner.clock.now_ms() {
            return Err(LocalDenied::Expired);
        }
        Ok(())
    }

    /// Streams an upload into the local store, refusing more than `size` bytes
    /// (without buffering the file). The upload must be exactly `size` bytes (and
    /// match `sha256` when given); otherwise nothing is stored.
    pub async fn put_local<S, E>(
        &self,
        id: AttachmentId,
        size: u64,
        sha256: Option<&str>,
        mut body: S,
    ) -> Result<(), LocalPutError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        // Parts are flushed at this size, so memory stays bounded whatever the file.
        const PART: usize = 256 * 1024;
        let mut upload = self
            .store()
            .put_multipart(&self.path(id))
            .await
            .map_err(|e| LocalPutError::Store(e.into()))?;
        let mut written = 0u64;
        let mut pending: Vec<u8> = Vec::with_capacity(PART);
        let mut digest = sha2::Sha256::default();
        let result: Result<(), LocalPutError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| LocalPutError::Body(e.to_string()))?;
                written += chunk.len() as u64;
                if written > size {
                    return Err(LocalPutError::TooLarge);
                }
                if sha256.is_some() {
                    sha2::Digest::update(&mut digest, &chunk);
                }
                pending.extend_from_slice(&chunk);
                if pending.len() >= PART {
                    let part = PutPayload::from(std::mem::take(&mut pending));
                    upload
                        .put_part(part)
                        .await
                        .map_err(|e| LocalPutError::Store(e.into()))?;
                }
            }
            if written != size {
                return Err(LocalPutError::WrongSize { written });
            }
            if let Some(want) = sha256 {
                let got = base64::engine::general_purpose::STANDARD
                    .encode(sha2::Digest::finalize(std::mem::take(&mut digest)));
                if got != want {
                    return Err(LocalPutError::WrongChecksum);
                }
            }
            if !pending.is_empty() {
                upload
                    .put_part(PutPayload::from(std::mem::take(&mut pending)))
                    .await
                    .map_err(|e| LocalPutError::Store(e.into()))?;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                upload
                    .complete()
                    .await
                    .map_err(|e| LocalPutError::Store(e.into()))?;
                Ok(())
            }
            Err(e) => {
                let _ = upload.abort().await;
                Err(e)
            }
        }
    }

    /// The bytes of a stored attachment (its sealed copy when `sealed`), as a
    /// stream.
    pub async fn get_local(
        &self,
        id: AttachmentId,
        sealed: bool,
    ) -> Result<Option<impl Stream<Item = Result<Bytes, object_store::Error>> + use<>>, MediaError>
    {
        match self.store().get(&self.served_path(id, sealed)).await {
            Ok(result) => Ok(Some(result.into_stream())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// The query of an embedded-mode media URL.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct LocalQuery {
    pub exp: i64,
    pub size: Option<u64>,
    pub sig: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum LocalDenied {
    /// This node stores media in S3: its URLs point there.
    NotServed,
    BadSignature,
    Expired,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalPutError {
    #[error("the upload is larger than declared")]
    TooLarge,
    #[error("the upload has {written} bytes, not the declared size")]
    WrongSize { written: u64 },
    #[error("the upload does not match its declared SHA-256")]
    WrongChecksum,
    #[error("reading the upload: {0}")]
    Body(String),
    #[error(transparent)]
    Store(#[from] MediaError),
}

/// The header S3 checks a body's SHA-256 against (base64); the embedded store
/// checks it too.
pub(crate) const CHECKSUM_HEADER: &str = "x-amz-checksum-sha256";

/// The `sig` of an embedded-mode URL: its [`local_mac`], base64url.
fn local_signature(mac: HmacSha256) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// HMAC over everything the URL grants: method, object, expiry, and for uploads
/// the content type, exact size and checksum.
fn local_mac(
    key: &[u8; 32],
    method: &str,
    id: AttachmentId,
    exp: i64,
    upload: Option<(&str, u64, Option<&str>)>,
) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(method.as_bytes());
    mac.update(b"\n");
    mac.update(id.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(exp.to_string().as_bytes());
    if let Some((content_type, size, sha256)) = upload {
        mac.update(b"\n");
        mac.update(content_type.to_ascii_lowercase().as_bytes());
        mac.update(b"\n");
        mac.update(size.to_string().as_bytes());
        if let Some(sum) = sha256 {
            mac.update(b"\n");
            mac.update(sum.as_bytes());
        }
    }
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(dir: &std::path::Path, clock: Clock) -> Media {
        Media::open(
            MediaConfig {
                backend: MediaBackend::Local {
                    root: dir.to_owned(),
                },
                max_size: 1 << 20,
                allowed_types: vec!["image/*".into(), "application/pdf".into()],
                upload_expiry: Duration::from_secs(900),
                download_expiry: Duration::from_secs(3600),
                orphan_ttl: Duration::from_secs(86400),
                retention: Duration::from_secs(30 * 86400),
            },
            [7; 32],
            "http://node.example".into(),
            clock,
        )
        .unwrap()
    }

    fn query_of(url: &str) -> LocalQuery {
        let query = url.split_once('?').unwrap().1;
        let mut exp = 0;
        let mut size = None;
        let mut sig = String::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap();
            match k {
                "exp" => exp = v.parse().unwrap(),
                "size" => size = Some(v.parse().unwrap()),
                "sig" => sig = v.to_owned(),
                _ => {}
            }
        }
        LocalQuery { exp, size, sig }
    }

    #[test]
    fn content_type_allow_list() {
        let dir = tempfile::tempdir().unwrap();
        let media = local(dir.path(), Clock::system());
        assert!(media.allows_type("image/png"));
        assert!(media.allows_type("IMAGE/JPEG"));
        assert!(media.allows_type("application/pdf"));
        assert!(!media.allows_type("application/x-msdownload"));
        assert!(!media.allows_type("imagex/png"));
    }

    #[tokio::test]
    async fn local_urls_bind_method_object_type_size_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::adjustable();
        let media = local(dir.path(), clock.clone());
        let id = AttachmentId::generate();
        let target = media.upload_target(id, 5, "image/png", None).await.unwrap();
        let q = query_of(&target.url);
        assert_eq!(
            media.verify_local("PUT", id, &q, Some("image/png"), None),
            Ok(())
        );
        assert_eq!(
            media.verify_local("PUT", id, &q, Some("image/gif"), None),
            Err(LocalDenied::BadSignature)
        );
        assert_eq!(
            media.verify_local("PUT", AttachmentId::generate(), &q, Some("image/png"), None),
            Err(LocalDenied::BadSignature)
        );
        assert_eq!(
            media.verify_local("GET", id, &q, None, None),
            Err(LocalDenied::BadSignature)
        );
        let bigger = LocalQuery {
            size: Some(6),
            ..q.clone()
        };
        assert_eq!(
            media.verify_local("PUT", id, &bigger, Some("image/png"), None),
            Err(LocalDenied::BadSignature)
        );
        clock.advance(16 * 60 * 1000);
        assert_eq!(
            media.verify_local("PUT", id, &q, Some("image/png"), None),
            Err(LocalDenied::Expired)
        );
    }

    #[tokio::test]
    async fn local_uploads_are_size_checked_while_streaming() {
        let dir = tempfile::tempdir().unwrap();
        let media = local(dir.path(), Clock::system());
        let chunks = |parts: Vec<&'static [u8]>| {
            futures_util::stream::iter(
                parts
                    .into_iter()
                    .map(|p| Ok::<_, std::io::Error>(Bytes::from_static(p))),
            )
        };
        let id = AttachmentId::generate();
        media
            .put_local(id, 6, None, chunks(vec![b"abc", b"def"]))
            .await
            .unwrap();
        assert_eq!(media.inspect(id).await.unwrap().map(|s| s.size), Some(6));
        let too_big = AttachmentId::generate();
        assert!(matches!(
            media
                .put_local(too_big, 4, None, chunks(vec![b"abc", b"def"]))
                .await,
            Err(LocalPutError::TooLarge)
        ));
        assert_eq!(media.inspect(too_big).await.unwrap(), None);
        let short = AttachmentId::generate();
        assert!(matches!(
            media.put_local(short, 10, None, chunks(vec![b"abc"])).await,
            Err(LocalPutError::WrongSize { written: 3 })
        ));
        assert_eq!(media.inspect(short).await.unwrap(), None);
        media.delete(id).await.unwrap();
        assert_eq!(media.inspect(id).await.unwrap(), None);
        media.delete(id).await.unwrap();
    }

    #[tokio::test]
    async fn a_sealed_copy_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let media = local(dir.path(), Clock::system());
        let body = |b: &'static [u8]| {
            futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b))])
        };
        let read = |id| {
            let media = media.clone();
            async move {
                let stream = media.get_local(id, true).await.unwrap().unwrap();
                let parts: Vec<_> = stream.map(|p| p.unwrap()).collect().await;
                parts.concat()
            }
        };
        let id = AttachmentId::generate();
        assert_eq!(media.seal(id).await.unwrap(), None, "nothing uploaded");
        media.put_local(id, 3, None, body(b"abc")).await.unwrap();
        assert_eq!(media.seal(id).await.unwrap().map(|s| s.size), Some(3));
        assert_eq!(read(id).await, b"abc");
        // A later upload does not reach the copy, nor does sealing again.
        media.put_local(id, 3, None, body(b"xyz")).await.unwrap();
        assert_eq!(media.seal(id).await.unwrap().map(|s| s.size), Some(3));
        assert_eq!(read(id).await, b"abc");
        media.delete(id).await.unwrap();
        assert!(media.get_local(id, true).await.unwrap().is_none());
        assert_eq!(media.inspect(id).await.unwrap(), None);
    }
}
