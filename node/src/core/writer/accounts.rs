//! The writer's account operations: users, devices, invites, device activity.

use super::{Batch, Outcome, Writer};
use crate::auth;
use crate::clock::rfc3339;
use crate::core::{CoreError, DeviceCtx, Invite};
use crate::ids::{DeviceId, Username};
use crate::protocol::ErrorCode;
use crate::store::{DeviceRecord, InviteRecord, Tx, UserRecord, encode_hex};

impl Writer {
    pub(super) fn create_user(
        &mut self,
        b: &mut Batch<'_, '_>,
        name: Username,
        password_hash: String,
        invite: Option<String>,
    ) -> Result<Outcome, CoreError> {
        let view = b.tx.view();
        if view.user(&name)?.is_some() {
            return Err(CoreError::reject(
                ErrorCode::UsernameTaken,
                "that username is taken",
            ));
        }
        let invite = match invite {
            Some(code) => match view.invite(&code)? {
                Some(record) if record.expires_at > b.now && record.uses_left > 0 => {
                    Some((code, record))
                }
                _ => {
                    return Err(CoreError::reject(
                        ErrorCode::InvalidInvite,
                        "that invite is unknown, used up or expired",
                    ));
                }
            },
            None => None,
        };
        if let Some((code, mut record)) = invite {
            record.uses_left -= 1;
            if record.uses_left == 0 {
                b.tx.delete_invite(&code);
            } else {
                b.tx.put_invite(&code, &record);
            }
        }
        b.tx.put_user(&UserRecord {
            name: name.clone(),
            password_hash,
            created_at: b.now,
            disabled: false,
            deleted: false,
        });
        b.sync();
        Ok(Outcome::UserId(self.user_id(&name)))
    }

    pub(super) fn set_user_disabled(
        &mut self,
        b: &mut Batch<'_, '_>,
        name: &Username,
        disabled: bool,
    ) -> Result<Outcome, CoreError> {
        let Some(mut record) = b.tx.view().user(name)?.filter(|u| !u.deleted) else {
            return Err(CoreError::reject(ErrorCode::UnknownUser, "no such user"));
        };
        record.disabled = disabled;
        b.tx.put_user(&record);
        self.disabled.insert(name.clone(), disabled);
        b.sync();
        Ok(Outcome::Done)
    }

    /// Refuses (`unauthorized`, as a bad token is) a command from a device that
    /// no longer exists (logged out, expired) or of a disabled user: the close
    /// order to its connection may have been lost, this check cannot be. Cheap:
    /// both answers come from the writer's caches.
    pub(super) fn check_session(&mut self, tx: &Tx<'_>, ctx: &DeviceCtx) -> Result<(), CoreError> {
        if !self.devices_of(tx, &ctx.user)?.contains(&ctx.device) {
            return Err(CoreError::reject(
                ErrorCode::Unauthorized,
                "this device is logged out",
            ));
        }
        if self.user_disabled(tx, &ctx.user)? {
            return Err(CoreError::reject(
                ErrorCode::Unauthorized,
                "this user is disabled",
            ));
        }
        Ok(())
    }

    /// Whether `name` is disabled (or unknown), cached.
    fn user_disabled(&mut self, tx: &Tx<'_>, name: &Username) -> Result<bool, CoreError> {
        if let Some(disabled) = self.disabled.get(name) {
            return Ok(*disabled);
        }
        let Some(record) = tx.view().user(name)? else {
            return Ok(true);
        };
        if self.disabled.len() >= 100_000 {
            self.disabled.clear();
        }
        self.disabled.insert(name.clone(), record.disabled);
        Ok(record.disabled)
    }

    pub(super) fn create_device(
        &mut self,
        b: &mut Batch<'_, '_>,
        user: Username,
        name: Option<String>,
        token_hash: [u8; 32],
    ) -> Result<Outcome, CoreError> {
        let Some(record) = b.tx.view().user(&user)?.filter(|u| !u.deleted) else {
            return Err(CoreError::reject(
                ErrorCode::BadCredentials,
                "wrong username or password",
            ));
        };
        if record.disabled {
            return Err(CoreError::reject(
                ErrorCode::UserDisabled,
                "this user is disabled",
            ));
        }
        let evicted = self.make_room_for_a_device(b, &user)?;
        let device = DeviceId::generate();
        b.tx.put_device(
            device,
            &DeviceRecord {
                user: user.clone(),
                name,
                created_at: b.now,
                last_active: b.now,
                token_hash: encode_hex(&token_hash),
            },
            &token_hash,
        );
        if let Some(devices) = self.devices.get_mut(&user) {
            devices.push(device);
        }
        b.sync();
        let ctx = DeviceCtx {
            user_id: self.user_id(&user),
            user,
            device,
        };
        Ok(Outcome::Device(ctx, evicted))
    }

    /// The devices quota: when the user has as many devices as allowed, removes
    /// the least recently active ones (as a logout would) to make room for one
    /// more, and returns them so their sessions can be closed after the commit.
    fn make_room_for_a_device(
        &mut self,
        b: &mut Batch<'_, '_>,
        user: &Username,
    ) -> Result<Vec<DeviceId>, CoreError> {
        let quota = self.config.quotas.devices;
        let view = b.tx.view();
        let devices = view.user_devices(user)?;
        if devices.len() < quota {
            return Ok(Vec::new());
        }
        let mut records = Vec::with_capacity(devices.len());
        for device in devices {
            if let Some(record) = view.device(device)? {
                records.push((record.last_active, device, record));
            }
        }
        records.sort_by_key(|(last_active, device, _)| (*last_active, *device));
        let excess = records.len() + 1 - quota;
        let mut evicted = Vec::with_capacity(excess);
        for (_, device, record) in records.into_iter().take(excess) {
            b.tx.delete_device(device, &record)?;
            evicted.push(device);
        }
        if let Some(devices) = self.devices.get_mut(user) {
            devices.retain(|d| !evicted.contains(d));
        }
        Ok(evicted)
    }

    pub(super) fn delete_device(
        &mut self,
        b: &mut Batch<'_, '_>,
        device: DeviceId,
    ) -> Result<Outcome, CoreError> {
        if let Some(record) = b.tx.view().device(device)? {
            b.tx.delete_device(device, &record)?;
            if let Some(devices) = self.devices.get_mut(&record.user) {
                devices.retain(|d| *d != device);
            }
            b.sync();
        }
        Ok(Outcome::Done)
    }

    pub(super) fn create_invite(
        &mut self,
        b: &mut Batch<'_, '_>,
        uses: u32,
        ttl_ms: i64,
    ) -> Outcome {
        let code = auth::new_invite_code();
        let expires_at = b.now.saturating_add(ttl_ms);
        b.tx.put_invite(
            &code,
            &InviteRecord {
                created_at: b.now,
                expires_at,
                uses_left: uses,
            },
        );
        b.sync();
        Outcome::Invite(Invite {
            code,
            uses,
            expires_at: rfc3339(expires_at),
        })
    }

    /// Records that a device was seen (buffered: losing it to a crash is harmless).
    pub(super) fn touch(
        &mut self,
        b: &mut Batch<'_, '_>,
        device: DeviceId,
    ) -> Result<Outcome, CoreError> {
        if let Some(mut record) = b.tx.view().device(device)? {
            record.last_active = b.now;
            b.tx.update_device(device, &record);
        }
        Ok(Outcome::Done)
    }
}
