//! Turning stored records into protocol views. Shared by the writer (live
//! deliveries) and the readers (backlog, resends, history), so both paths send
//! byte-identical events.

use crate::clock::rfc3339;
use crate::ids::ChatId;
use crate::protocol::{
    AttachmentView, ChatReadView, ChatUpdateView, Event, ExpiredView, MessageView,
    UpdateReason as WireReason,
};
use crate::store::{
    InboxEntry, InboxKind, MessageRecord, Source, StoreError, UpdateReason, UpdateRecord, View,
};

pub(super) fn message_view(chat: ChatId, seq: u64, m: &MessageRecord) -> MessageView {
    MessageView {
        chat_id: chat.to_string(),
        message_id: m.id.to_string(),
        seq,
        from: m.from.clone(),
        sent_at: rfc3339(m.sent_at),
        message: m.text.clone(),
        attachments: m
            .attachments
            .iter()
            .map(|a| AttachmentView {
                attachment_id: a.id.clone(),
                content_type: a.content_type.clone(),
                size: a.size,
                name: a.name.clone(),
            })
            .collect(),
    }
}

pub(super) fn update_view(u: &UpdateRecord) -> ChatUpdateView {
    ChatUpdateView {
        chat_id: u.chat.to_string(),
        name: u.name.clone(),
        participants: u.participants.clone(),
        reason: match u.reason {
            UpdateReason::Created => WireReason::Created,
            UpdateReason::Added => WireReason::Added,
            UpdateReason::Removed => WireReason::Removed,
            UpdateReason::Renamed => WireReason::Renamed,
            UpdateReason::Deleted => WireReason::Deleted,
        },
    }
}

fn expired(count: u64, oldest: i64, newest: i64) -> Event {
    Event::Expired(ExpiredView {
        count,
        oldest_at: rfc3339(oldest),
        newest_at: rfc3339(newest),
    })
}

/// The event an inbox entry stands for. A reference whose record is gone (removed
/// by retention in the meantime) becomes an `expired` event rather than vanishing.
pub(super) fn entry_event<R: Source>(
    view: &View<R>,
    entry: &InboxEntry,
) -> Result<Event, StoreError> {
    Ok(match entry.kind {
        InboxKind::Message { chat, seq } => match view.message(chat, seq)? {
            Some(m) => Event::NewMessage(message_view(chat, seq, &m)),
            None => expired(1, entry.queued_at, entry.queued_at),
        },
        InboxKind::Update { id } => match view.update(id)? {
            Some(u) => Event::ChatUpdate(update_view(&u)),
            None => expired(1, entry.queued_at, entry.queued_at),
        },
        InboxKind::Read { chat, seq } => read_event(chat, seq),
        InboxKind::Expired {
            count,
            oldest,
            newest,
        } => expired(count, oldest, newest),
    })
}

pub(super) fn expired_event(count: u64, oldest: i64, newest: i64) -> Event {
    expired(count, oldest, newest)
}

pub(super) fn read_event(chat: ChatId, seq: u64) -> Event {
    Event::ChatRead(ChatReadView {
        chat_id: chat.to_string(),
        seq,
    })
}
