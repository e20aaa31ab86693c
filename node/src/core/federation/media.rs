//! Attachments across nodes (docs/federation.md, "Remote media"). No bytes are
//! copied between nodes: an attachment stays on the node it was uploaded to
//! (its *holder*), and a device elsewhere gets a short-lived URL of the
//! holder's media store, asked for by its node through signed requests.
//!
//! - A user of this node sends uploads in a chat whose home is a peer: the
//!   uploads are checked here as for a local send, put into the forwarded
//!   action with this node as holder ([`attach_held`]), offered to the home
//!   before the send leaves (so the home may ask for URLs as soon as its
//!   users see the message), and marked sent once the home accepted it (and
//!   again, idempotently, when its event comes back: that one survives a
//!   crash).
//! - A peer's send carries attachments its node holds: the home takes them
//!   only as held by that node ([`held_by`]).
//! - A peer asks for a URL (`POST /federation/v1/attachment-url`): answered
//!   here when this node holds the attachment, relayed to the holder when this
//!   node is the home of a chat it was sent in and another node holds it.

use super::super::writer::Op;
use super::super::{Core, CoreError};
use crate::federation::events::{Action, ActionRequest, Attachment, AttachmentUrlRequest};
use crate::ids::{AttachmentId, ChatId, NodeName};
use crate::media::Presentation;
use crate::protocol::{self, CommandResult, ErrorCode};
use crate::store::AttachmentRef;

/// The attachments of a peer's send as the home stores them: held by the
/// requesting node, which checked the uploads; here only their shape.
pub(super) fn held_by(
    attachments: Vec<Attachment>,
    origin: &NodeName,
) -> Result<Vec<AttachmentRef>, CoreError> {
    let bad = |m: String| CoreError::reject(ErrorCode::BadRequest, m);
    if attachments.len() > protocol::MAX_ATTACHMENTS {
        return Err(bad(format!(
            "at most {} attachments",
            protocol::MAX_ATTACHMENTS
        )));
    }
    attachments
        .into_iter()
        .map(|a| {
            if a.holder.as_ref().is_some_and(|h| h != origin) {
                return Err(CoreError::reject(
                    ErrorCode::Forbidden,
                    "a node sends only attachments it holds",
                ));
            }
            let id = AttachmentId::parse(&a.attachment_id).ok_or_else(|| {
                CoreError::reject(
                    ErrorCode::UnknownAttachment,
                    format!("no such attachment {}", a.attachment_id),
                )
            })?;
            if a.size == 0 || !protocol::valid_attachment_meta(&a.content_type, a.name.as_deref()) {
                return Err(bad(format!(
                    "attachment {id} needs a size, a MIME type and a valid name"
                )));
            }
            Ok(AttachmentRef {
                id: id.to_string(),
                content_type: a.content_type,
                size: a.size,
                name: a.name,
                holder: Some(origin.clone()),
            })
        })
        .collect()
}

/// Puts a send's checked uploads into the action forwarded to the chat's
/// home, with this node as their holder.
pub(in crate::core) fn attach_held(
    request: &mut ActionRequest,
    held: &[AttachmentRef],
    node: &NodeName,
) {
    if let Action::SendMessage { attachments, .. } = &mut request.action {
        *attachments = held
            .iter()
            .map(|a| Attachment {
                attachment_id: a.id.clone(),
                content_type: a.content_type.clone(),
                size: a.size,
                name: a.name.clone(),
                holder: Some(node.clone()),
            })
            .collect();
    }
}

/// What this node does with a peer's request for a URL.
enum UrlAnswer {
    /// Held here: a URL of this node's media store (of its sealed copy when
    /// `sealed`), presenting it as its record says (the holder's record is
    /// the one a peer cannot have changed).
    Local {
        sealed: bool,
        presented: Presentation,
    },
    /// This node is the home of a chat it was sent in; the holder answers.
    Relay(NodeName),
    Forbidden,
    Unknown,
}

impl Core {
    /// A peer asks for a download URL of an attachment, for a user: one of its
    /// own users in a chat the attachment was sent in, or (when the peer is the
    /// home of such a chat, relaying for its participants) any of that chat's
    /// users. Answered with this node's media URL when it holds the
    /// attachment; relayed to the holder when this node is the chat's home and
    /// a participating node holds it.
    pub async fn attachment_url_for_peer(
        &self,
        origin: &NodeName,
        request: AttachmentUrlRequest,
    ) -> Result<CommandResult, CoreError> {
        let id = request.attachment_id;
        let own_user = request.user.node == *origin;
        let user = request.user.to_string();
        let (asker, who) = (origin.clone(), user.clone());
        let answer = self
            .read(move |view| {
                if let Some(record) = view.attachment(id)? {
                    let local = UrlAnswer::Local {
                        sealed: record.sealed,
                        presented: Presentation::of(&record.content_type, record.name.as_deref()),
                    };
                    // A chat's home is the authority on its participants; it
                    // may ask as soon as the upload is offered to it.
                    for chat in record.chats.iter().chain(&record.offered) {
                        let home = view.chat(*chat)?.and_then(|c| c.home);
                        if home.as_ref() == Some(&asker) {
                            return Ok(local);
                        }
                    }
                    for chat in &record.chats {
                        if own_user && view.is_member(*chat, &who)? {
                            return Ok(local);
                        }
                    }
                    return Ok(UrlAnswer::Forbidden);
                }
                let Some(remote) = view.remote_attachment(id)? else {
                    return Ok(UrlAnswer::Unknown);
                };
                // Relayed only by the home of a chat it was sent in (never
                // by a mirror: no request goes round in circles).
                for chat in &remote.chats {
                    let ours = view.chat(*chat)?.is_some_and(|c| c.home.is_none());
                    if own_user && ours && view.is_member(*chat, &who)? {
                        return Ok(UrlAnswer::Relay(remote.home));
                    }
                }
                Ok(UrlAnswer::Forbidden)
            })
            .await?;
        match answer {
            UrlAnswer::Local { sealed, presented } => {
                let (url, expires_at) = self
                    .inner
                    .media
                    .download_url(id, sealed, &presented)
                    .await?;
                Ok(CommandResult::AttachmentUrl { url, expires_at })
            }
            UrlAnswer::Relay(holder) => self.remote_attachment_url(holder, user, id).await,
            UrlAnswer::Forbidden => Err(CoreError::reject(
                ErrorCode::Forbidden,
                "only participants of a chat it was sent in may download it",
            )),
            UrlAnswer::Unknown => Err(CoreError::reject(
                ErrorCode::UnknownAttachment,
                "no such attachment",
            )),
        }
    }

    /// Uploads of `from` held here, in a send to the home of `chat`: offered
    /// to it (before the send is forwarded), or sent (the home accepted it).
    pub(in crate::core) async fn mark_held(
        &self,
        from: String,
        chat: ChatId,
        held: &[AttachmentRef],
        sent: bool,
    ) -> Result<(), CoreError> {
        let ids = held
            .iter()
            .filter_map(|a| AttachmentId::parse(&a.id))
            .collect();
        let op = Op::HeldAttachments {
            from,
            chat,
            ids,
            sent,
        };
        self.write(op).await.map(|_| ())
    }
}
