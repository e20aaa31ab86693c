//! Every key layout of the store, in one file.
//!
//! Keys are designed for the queries: a one-byte tag per record kind within a
//! keyspace, then big-endian ids and numbers so that prefix scans return rows in
//! order. User names cannot contain `0x00`, so it terminates them.
//!
//! | keyspace | key | value |
//! | --- | --- | --- |
//! | meta | `v` | u32 BE: the store's format version ([`format`](super::format)) |
//! | meta | `n` counter-name | u64 BE |
//! | meta | `i` invite-code | [`InviteRecord`](super::InviteRecord) |
//! | users | `u` name | [`UserRecord`](super::UserRecord) |
//! | users | `d` name 0 device(16) | empty: user → devices |
//! | users | `c` name 0 chat(16) | [`UserChatRecord`](super::UserChatRecord): user → chats, read position |
//! | users | `i` userId 0 chat(16) clientMsgId | [`IdemRecord`](super::IdemRecord) (rows of the older layout `i` name 0 clientMsgId are only swept) |
//! | devices | `d` device(16) | [`DeviceRecord`](super::DeviceRecord) |
//! | devices | `t` sha256(token) | device(16) |
//! | chats | `c` chat(16) | [`ChatRecord`](super::ChatRecord) |
//! | chats | `m` chat(16) userId | [`MemberRecord`](super::MemberRecord): chat → users |
//! | chats | `x` chat(16) | empty: a deleted chat whose messages are still being removed |
//! | messages | `m` chat(16) seq(8) | [`MessageRecord`](super::MessageRecord) |
//! | messages | `u` update(8) | [`UpdateRecord`](super::UpdateRecord) |
//! | inbox | device(16) delivery(8) | [`InboxEntry`](super::InboxEntry), binary |
//! | media | `a` attachment(16) | [`AttachmentRecord`](super::AttachmentRecord) |
//! | media | `p` userId 0 attachment(16) | u64 BE declared size: an upload not yet sent, by uploader (the pending-uploads quota) |
//! | fed | `p` node | [`PeerRecord`](super::PeerRecord) |
//! | fed | `o` node 0 seq(8) | [`OutboxEntry`](super::OutboxEntry): events queued for a peer |
//! | fed | `x` node 0 seq(8) | [`OutboxEntry`](super::OutboxEntry): dead letters |
//! | fed | `n` node | u64 BE: the last outbox seq given out for a peer |
//! | fed | `a` node | u64 BE: the last event seq applied from a peer |
//! | fed | `j` node 0 from(8) | u64 BE `to`: outbox seqs `from`+1 ..= `to` were never given out (a restore moved the counter) |
//! | fed | `m` attachment(16) | [`RemoteAttachment`](super::RemoteAttachment): an attachment a chat's home holds |

use crate::ids::{AttachmentId, ChatId, DeviceId, NodeName, Username};

/// The store's format version (one key, no tag beyond it).
pub(crate) const FORMAT: &[u8] = b"v";

pub(crate) const COUNTER_DELIVERY: &str = "delivery";
pub(crate) const COUNTER_UPDATE: &str = "update";

fn tagged(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut key = Vec::with_capacity(len);
    key.push(tag);
    for part in parts {
        key.extend_from_slice(part);
    }
    key
}

pub(crate) fn counter(name: &str) -> Vec<u8> {
    tagged(b'n', &[name.as_bytes()])
}

pub(crate) const INVITE_PREFIX: &[u8] = b"i";

pub(crate) fn invite(code: &str) -> Vec<u8> {
    tagged(b'i', &[code.as_bytes()])
}

pub(crate) fn user(name: &Username) -> Vec<u8> {
    tagged(b'u', &[name.as_str().as_bytes()])
}

pub(crate) const USER_PREFIX: &[u8] = b"u";

pub(crate) fn user_devices_prefix(name: &Username) -> Vec<u8> {
    tagged(b'd', &[name.as_str().as_bytes(), &[0]])
}

pub(crate) fn user_device(name: &Username, device: DeviceId) -> Vec<u8> {
    tagged(b'd', &[name.as_str().as_bytes(), &[0], &device.to_bytes()])
}

pub(crate) fn user_chats_prefix(name: &Username) -> Vec<u8> {
    tagged(b'c', &[name.as_str().as_bytes(), &[0]])
}

pub(crate) fn user_chat(name: &Username, chat: ChatId) -> Vec<u8> {
    tagged(b'c', &[name.as_str().as_bytes(), &[0], &chat.to_bytes()])
}

pub(crate) const IDEM_PREFIX: &[u8] = b"i";

/// A sender's `clientMsgId` in one chat; `user_id` is `name@node` (a remote
/// sender's sends are idempotent at the chat's home too).
pub(crate) fn idem(user_id: &str, chat: ChatId, client_msg_id: &str) -> Vec<u8> {
    tagged(
        b'i',
        &[
            user_id.as_bytes(),
            &[0],
            &chat.to_bytes(),
            client_msg_id.as_bytes(),
        ],
    )
}

pub(crate) const DEVICE_PREFIX: &[u8] = b"d";

pub(crate) fn device(device: DeviceId) -> Vec<u8> {
    tagged(b'd', &[&device.to_bytes()])
}

pub(crate) fn token(hash: &[u8; 32]) -> Vec<u8> {
    tagged(b't', &[hash])
}

pub(crate) const CHAT_PREFIX: &[u8] = b"c";

pub(crate) fn chat(chat: ChatId) -> Vec<u8> {
    tagged(b'c', &[&chat.to_bytes()])
}

pub(crate) const DELETED_CHAT_PREFIX: &[u8] = b"x";

pub(crate) fn deleted_chat(chat: ChatId) -> Vec<u8> {
    tagged(b'x', &[&chat.to_bytes()])
}

pub(crate) fn members_prefix(chat: ChatId) -> Vec<u8> {
    tagged(b'm', &[&chat.to_bytes()])
}

pub(crate) fn member(chat: ChatId, user_id: &str) -> Vec<u8> {
    tagged(b'm', &[&chat.to_bytes(), user_id.as_bytes()])
}

pub(crate) fn message(chat: ChatId, seq: u64) -> Vec<u8> {
    tagged(b'm', &[&chat.to_bytes(), &seq.to_be_bytes()])
}

/// The seq of a key made by [`message`].
pub(crate) fn message_seq(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(17..25)?.try_into().ok()?))
}

pub(crate) const UPDATE_PREFIX: &[u8] = b"u";

pub(crate) fn update(id: u64) -> Vec<u8> {
    tagged(b'u', &[&id.to_be_bytes()])
}

pub(crate) fn update_id(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?))
}

pub(crate) fn inbox(device: DeviceId, delivery: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(&device.to_bytes());
    key[16..].copy_from_slice(&delivery.to_be_bytes());
    key
}

/// The delivery id of a key made by [`inbox`].
pub(crate) fn inbox_delivery(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(16..24)?.try_into().ok()?))
}

pub(crate) const ATTACHMENT_PREFIX: &[u8] = b"a";

pub(crate) fn attachment(id: AttachmentId) -> Vec<u8> {
    tagged(b'a', &[&id.to_bytes()])
}

pub(crate) fn pending_uploads_prefix(user_id: &str) -> Vec<u8> {
    tagged(b'p', &[user_id.as_bytes(), &[0]])
}

pub(crate) fn pending_upload(user_id: &str, id: AttachmentId) -> Vec<u8> {
    tagged(b'p', &[user_id.as_bytes(), &[0], &id.to_bytes()])
}

/// The last 16 bytes of a key (a device or chat id that ends a composite key).
pub(crate) fn trailing_id(key: &[u8]) -> Option<[u8; 16]> {
    let start = key.len().checked_sub(16)?;
    key[start..].try_into().ok()
}

// ------------------------------------------------------------------ federation

pub(crate) fn peer(node: &NodeName) -> Vec<u8> {
    tagged(b'p', &[node.as_str().as_bytes()])
}

pub(crate) const PEER_PREFIX: &[u8] = b"p";

/// The node name of a `peer` key.
pub(crate) fn peer_name(key: &[u8]) -> Option<NodeName> {
    NodeName::parse(std::str::from_utf8(key.strip_prefix(PEER_PREFIX)?).ok()?)
}

/// An outbox entry (`dead` = a dead letter) of one peer.
pub(crate) fn outbox(node: &NodeName, seq: u64, dead: bool) -> Vec<u8> {
    let tag = if dead { b'x' } else { b'o' };
    tagged(tag, &[node.as_str().as_bytes(), &[0], &seq.to_be_bytes()])
}

/// The seq of an outbox key.
pub(crate) fn outbox_seq(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// The last outbox seq given out for a peer.
pub(crate) fn outbox_counter(node: &NodeName) -> Vec<u8> {
    tagged(b'n', &[node.as_str().as_bytes()])
}

/// A jump of a peer's outbox counter (a restore): seqs after `from` up to
/// the value were never given out.
pub(crate) fn outbox_gap(node: &NodeName, from: u64) -> Vec<u8> {
    tagged(b'j', &[node.as_str().as_bytes(), &[0], &from.to_be_bytes()])
}

/// The prefix of a peer's outbox gaps.
pub(crate) fn outbox_gaps_prefix(node: &NodeName) -> Vec<u8> {
    tagged(b'j', &[node.as_str().as_bytes(), &[0]])
}

/// An attachment held by a peer (the home of the chats it was sent in).
pub(crate) fn remote_attachment(id: AttachmentId) -> Vec<u8> {
    tagged(b'm', &[&id.to_bytes()])
}

/// The last event seq applied from a peer.
pub(crate) fn applied(node: &NodeName) -> Vec<u8> {
    tagged(b'a', &[node.as_str().as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_sort_big_endian() {
        let chat = ChatId::generate();
        assert!(message(chat, 9) < message(chat, 10));
        assert!(message(chat, 255) < message(chat, 256));
        assert_eq!(message_seq(&message(chat, 77)), Some(77));
        let device = DeviceId::generate();
        assert!(inbox(device, 1) < inbox(device, 1 << 40));
        assert_eq!(inbox_delivery(&inbox(device, 99)), Some(99));

        assert_eq!(update_id(&update(5)), Some(5));
    }

    #[test]
    fn user_prefixes_do_not_overlap() {
        // "al" must not see "alice"'s rows: the 0 byte ends the name.
        let al = Username::parse("al").unwrap();
        let alice = Username::parse("alice").unwrap();
        let chat = ChatId::generate();
        assert!(!user_chat(&alice, chat).starts_with(&user_chats_prefix(&al)));
        assert!(user_chat(&al, chat).starts_with(&user_chats_prefix(&al)));
        assert_eq!(trailing_id(&user_chat(&al, chat)), Some(chat.to_bytes()));
    }
}
