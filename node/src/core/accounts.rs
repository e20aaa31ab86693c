//! Accounts: registration, logins (devices and their tokens), users, invites.
//!
//! Password hashing is slow on purpose (argon2), so it runs on the blocking
//! pool, at most one per CPU; failed logins are throttled per user name.

use super::writer::{Op, Outcome, WriteRequest};
use super::{Core, CoreError, DeviceCtx, Registration, unexpected};
use crate::auth;
use crate::clock::rfc3339;
use crate::ids::{DeviceId, UserRef, Username};
use crate::protocol::{self, ErrorCode, LoginResponse};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

impl Core {
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
        // A wrong invite is refused before any hashing, so a flood of them
        // cannot take the hashing slots from real logins. (The writer checks
        // it again, atomically with its use.)
        if let Some(code) = invite.clone() {
            let now = self.inner.clock.now_ms();
            let usable = self
                .read(move |view| {
                    Ok(view
                        .invite(&code)?
                        .is_some_and(|r| r.expires_at > now && r.uses_left > 0))
                })
                .await?;
            if !usable {
                return Err(CoreError::reject(
                    ErrorCode::InvalidInvite,
                    "that invite is unknown, used up or expired",
                ));
            }
        }
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

    /// Disables or enables a user. Disabling closes the user's open
    /// connections, wherever they are.
    pub async fn set_user_disabled(&self, username: &str, disabled: bool) -> Result<(), CoreError> {
        let name = Username::parse(username)
            .ok_or_else(|| CoreError::reject(ErrorCode::UnknownUser, "no such user"))?;
        self.write(Op::SetUserDisabled {
            name: name.clone(),
            disabled,
        })
        .await?;
        if disabled {
            for device in self.read(move |view| Ok(view.user_devices(&name)?)).await? {
                self.inner.presence.revoke(device).await;
            }
        }
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
            && (n.chars().count() > protocol::MAX_DEVICE_NAME_CHARS || !protocol::displayable(n))
        {
            return Err(CoreError::reject(
                ErrorCode::BadRequest,
                "deviceName is too long or has control characters or bidirectional overrides",
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

    pub(super) async fn new_device(
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
            Outcome::Device(ctx, evicted) => {
                for device in evicted {
                    tracing::info!(user = %ctx.user, %device, "device quota: the least recently active device is logged out");
                    self.inner.presence.revoke(device).await;
                }
                Ok(LoginResponse {
                    token,
                    device_id: ctx.device.to_string(),
                    user_id: ctx.user_id,
                })
            }
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
                user_id: UserRef {
                    name: record.user.clone(),
                    node,
                }
                .to_string(),
                user: record.user,
                device,
            })
        })
        .await
    }

    /// Ends a device: its token stops working, its inbox is dropped and its
    /// connection, wherever it is, closes.
    pub async fn logout(&self, ctx: &DeviceCtx) -> Result<(), CoreError> {
        self.write(Op::DeleteDevice { device: ctx.device }).await?;
        self.inner.presence.revoke(ctx.device).await;
        Ok(())
    }

    /// Records that a device was seen now (for the device TTL). Fire and forget.
    pub fn touch(&self, device: DeviceId) {
        let _ = self.inner.writer.try_send(WriteRequest {
            op: Op::Touch { device },
            reply: oneshot::channel().0,
        });
    }

    pub async fn list_users(&self) -> Result<Vec<UserInfo>, CoreError> {
        let node = self.inner.config.node.clone();
        self.read(move |view| {
            let mut out = Vec::new();
            for user in view.users()? {
                let devices = view.user_devices(&user.name)?.len();
                out.push(UserInfo {
                    user_id: UserRef {
                        name: user.name.clone(),
                        node: node.clone(),
                    }
                    .to_string(),
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
}

/// Failed logins per user name: after [`LoginFailures::LIMIT`] within
/// [`LoginFailures::WINDOW_MS`], further attempts are refused (`rate_limited`)
/// without checking the password, until the window has passed. Slows guessing
/// and keeps argon2 from being used to burn the node's CPU.
#[derive(Default)]
pub(super) struct LoginFailures {
    /// name → (failures, when the first of them happened)
    seen: std::sync::Mutex<std::collections::HashMap<String, (u32, i64)>>,
}

impl LoginFailures {
    const LIMIT: u32 = 10;
    const WINDOW_MS: i64 = 15 * 60 * 1000;
    /// Beyond this many names, expired entries are dropped.
    const MAX_NAMES: usize = 100_000;

    pub(super) fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (u32, i64)>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn blocked(&self, name: &str, now: i64) -> bool {
        self.lock()
            .get(name)
            .is_some_and(|(n, since)| *n >= Self::LIMIT && now - since < Self::WINDOW_MS)
    }

    pub(super) fn failed(&self, name: &str, now: i64) {
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

    pub(super) fn succeeded(&self, name: &str) {
        self.lock().remove(name);
    }
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
    crate::metrics::METRICS.password_hashes.inc();
    tokio::task::spawn_blocking(f).await
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
        .map_err(CoreError::Password)
}
