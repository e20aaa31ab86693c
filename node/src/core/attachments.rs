//! Attachments: upload targets, download URLs, checking uploads before a message
//! may reference them, and removing orphaned and expired uploads. Object I/O
//! happens here, never on the writer thread.

use super::DeviceCtx;
use super::writer::{Op, Outcome, SweepReport};
use super::{Core, CoreError};
use crate::clock::millis;
use crate::ids::{AttachmentId, NodeName};
use crate::media::Presentation;
use crate::protocol::{CommandResult, ErrorCode};
use crate::store::{AttachmentRecord, AttachmentRef};

/// Whether a user may download an attachment, and from where.
enum Access {
    /// Held here; served from its sealed copy when `sealed`, as its
    /// recorded type and name say.
    Here {
        sealed: bool,
        presented: Presentation,
    },
    /// Sent in a mirrored chat: that chat's home answers.
    AskHome(NodeName),
    Forbidden,
    Unknown,
}

/// What a client declares it will upload (`getAttachmentTarget`).
pub(super) struct Upload {
    pub size: u64,
    pub content_type: String,
    pub name: Option<String>,
    pub sha256: Option<String>,
}

impl Core {
    /// Uploads never sent after `orphan_ttl`, and every upload after the media
    /// retention: the record goes first (so no message can take it any more),
    /// then the object.
    pub(super) async fn sweep_media(&self, report: &mut SweepReport) -> Result<(), CoreError> {
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

    pub(super) async fn attachment_target(
        &self,
        ctx: &DeviceCtx,
        Upload {
            size,
            content_type,
            name,
            sha256,
        }: Upload,
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
            offered: Vec::new(),
            sealed: false,
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

    pub(super) async fn attachment_url(
        &self,
        user_id: String,
        id: AttachmentId,
    ) -> Result<CommandResult, CoreError> {
        let user = user_id.clone();
        let access = self
            .read(move |view| {
                let Some(record) = view.attachment(id)? else {
                    // Sent in a mirrored chat: its home holds it.
                    let Some(remote) = view.remote_attachment(id)? else {
                        return Ok(Access::Unknown);
                    };
                    for chat in &remote.chats {
                        if view.is_member(*chat, &user_id)? {
                            return Ok(Access::AskHome(remote.home));
                        }
                    }
                    return Ok(Access::Forbidden);
                };
                let here = Access::Here {
                    sealed: record.sealed,
                    presented: Presentation::of(&record.content_type, record.name.as_deref()),
                };
                if record.uploader == user_id {
                    return Ok(here);
                }
                for chat in &record.chats {
                    if view.is_member(*chat, &user_id)? {
                        return Ok(here);
                    }
                }
                Ok(Access::Forbidden)
            })
            .await?;
        match access {
            Access::Unknown => Err(CoreError::reject(
                ErrorCode::UnknownAttachment,
                "no such attachment",
            )),
            Access::Forbidden => Err(CoreError::reject(
                ErrorCode::Forbidden,
                "only participants of a chat it was sent in may download it",
            )),
            Access::AskHome(home) => self.remote_attachment_url(home, user, id).await,
            Access::Here { sealed, presented } => {
                let (url, expires_at) = self
                    .inner
                    .media
                    .download_url(id, sealed, &presented)
                    .await?;
                Ok(CommandResult::AttachmentUrl { url, expires_at })
            }
        }
    }

    /// Checks that each attachment is the sender's and, the first time it is
    /// sent, seals it ([`Core::seal_upload`]); a wrong upload is deleted (the
    /// client may upload again while its URL is valid).
    pub(super) async fn check_uploads(
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
        let mut checked = Vec::with_capacity(records.len());
        for (id, record) in records {
            let record = record
                .filter(|r| r.uploader == ctx.user_id)
                .ok_or_else(|| {
                    CoreError::reject(
                        ErrorCode::UnknownAttachment,
                        format!("no such attachment {id}"),
                    )
                })?;
            // A sent record without the flag was sent before sealing existed:
            // it stays served from its upload.
            if !record.sealed && !record.sent {
                self.seal_upload(id, &record).await?;
            }
            checked.push(AttachmentRef {
                id: id.to_string(),
                content_type: record.content_type,
                size: record.size,
                name: record.name,
                holder: None,
            });
        }
        Ok(checked)
    }

    /// Freezes an upload before a message may take it (docs/security.md,
    /// "Media"): copies it inside the store to a key no upload URL can write
    /// ([`crate::media::Media::seal`]), checks the copy against the
    /// declaration and the limit (so a PUT racing the check cannot slip past
    /// it), marks the record sealed (downloads read the copy from then on)
    /// and deletes the upload. A copy that does not match is deleted with the
    /// upload.
    async fn seal_upload(
        &self,
        id: AttachmentId,
        record: &AttachmentRecord,
    ) -> Result<(), CoreError> {
        let media = &self.inner.media;
        let Some(stored) = media.seal(id).await? else {
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
        let op = Op::SealAttachment {
            id,
            uploader: record.uploader.clone(),
        };
        if let Outcome::Sealed(false) = self.write(op).await? {
            // Swept since it was read: nothing may take it now.
            media.delete(id).await?;
            return Err(CoreError::reject(
                ErrorCode::UnknownAttachment,
                format!("no such attachment {id}"),
            ));
        }
        // Nothing reads the upload any more; the sweep removes it otherwise.
        if let Err(e) = media.delete_upload(id).await {
            tracing::warn!(%id, error = %e, "could not delete a sealed upload");
        }
        Ok(())
    }

    /// An attachment's record (for the embedded media endpoints).
    pub async fn attachment(
        &self,
        id: AttachmentId,
    ) -> Result<Option<AttachmentRecord>, CoreError> {
        self.read(move |view| Ok(view.attachment(id)?)).await
    }
}
