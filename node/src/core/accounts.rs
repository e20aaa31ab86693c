//! Accounts: registration, logins (devices and their tokens), users, invites.
//!
//! Password hashing is slow on purpose (argon2), so it runs on the blocking
//! pool, at most one per CPU. Logins and registrations are limited per client
//! address, and failed logins throttled per (address, user) and per address
//! ([`super::login_limits`]).

use std::net::IpAddr;

use super::login_limits::Wait;
use super::writer::{Op, Outcome, WriteRequest};
use super::{Core, CoreError, DeviceCtx, Registration, unexpected};
use crate::auth;
use crate::clock::rfc3339;
use crate::ids::{DeviceId, UserRef, Username};
use crate::protocol::{self, ErrorCode, LoginResponse};
use crate::store::Snapshot;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

impl Core {
    /// `client` is the client's address; `None` from a gateway of an older
    /// build, which the per-address limits cannot apply to.
    pub async fn register(
        &self,
        username: &str,
        password: &str,
        invite: Option<String>,
        client: Option<IpAddr>,
    ) -> Result<String, CoreError> {
        self.take_attempt(client)?;
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

    /// Logs in from `client` (see [`Core::register`]): a new device.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        device_name: Option<String>,
        client: Option<IpAddr>,
    ) -> Result<LoginResponse, CoreError> {
        self.take_attempt(client)?;
        if let Some(n) = &device_name
            && (n.chars().count() > protocol::MAX_DEVICE_NAME_CHARS || !protocol::displayable(n))
        {
            return Err(CoreError::reject(
                ErrorCode::BadRequest,
                "deviceName is too long or has control characters or bidirectional overrides",
            ));
        }
        // Without an address (an older gateway) the pair is keyed by the
        // unspecified address: a per-user throttle, as before addresses.
        let client = client.unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        let limits = &self.inner.login_limits;
        limits
            .check(client, username, self.inner.clock.now_ms())
            .map_err(throttled)?;
        let name = Username::parse(username);
        let record = match &name {
            Some(n) => {
                let n = n.clone();
                // A deleted user is a tombstone: no password to check.
                self.read(move |view| Ok(view.user(&n)?.filter(|u| !u.deleted)))
                    .await?
            }
            None => None,
        };
        let phc = record
            .as_ref()
            .map(|r| r.password_hash.clone())
            .unwrap_or_else(|| auth::dummy_hash().to_owned());
        let password = password.to_owned();
        // Checked again once a hashing slot is ours, and the guess holds its
        // place in the budget until decided: parallel guesses cannot all pass.
        let now = || self.inner.clock.now_ms();
        let (ok, guess) = password_work(
            || limits.begin(client, username, now()),
            move || auth::verify_password(&password, &phc),
        )
        .await?
        .map_err(throttled)?;
        let (Some(name), Some(record), true) = (name, record, ok) else {
            guess.failed(now());
            return Err(CoreError::reject(
                ErrorCode::BadCredentials,
                "wrong username or password",
            ));
        };
        guess.succeeded();
        if record.disabled {
            return Err(CoreError::reject(
                ErrorCode::UserDisabled,
                "this user is disabled",
            ));
        }
        self.new_device(name, device_name).await
    }

    /// Takes a login or registration attempt from the client address's bucket.
    fn take_attempt(&self, client: Option<IpAddr>) -> Result<(), CoreError> {
        match client {
            Some(client) => self
                .inner
                .login_limits
                .attempt(client, self.inner.clock.now_ms())
                .map_err(throttled),
            None => Ok(()),
        }
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

    /// Refuses a read from a session that has ended since it authenticated (a
    /// logout, an expired device, a disabled user), should the order to close
    /// its connection have been lost; the writer checks writes the same way.
    pub(super) async fn check_session(&self, ctx: &DeviceCtx) -> Result<(), CoreError> {
        let ctx = ctx.clone();
        self.read(move |view| session_ended(view, &ctx)).await
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
                    deleted: user.deleted,
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

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    pub user_id: String,
    pub created_at: String,
    pub disabled: bool,
    /// A deleted user (its name stays taken).
    #[serde(default)]
    pub deleted: bool,
    pub devices: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invite {
    pub code: String,
    pub uses: u32,
    pub expires_at: String,
}

/// `Err` (`unauthorized`, as for a bad token) when `ctx`'s device no longer
/// exists or its user is disabled.
pub(super) fn session_ended(view: &Snapshot, ctx: &DeviceCtx) -> Result<(), CoreError> {
    let user = view.device(ctx.device)?.map(|device| device.user);
    live(view, user.filter(|user| *user == ctx.user))
}

/// The same for a device alone (its inbox reads).
pub(super) fn device_ended(view: &Snapshot, device: DeviceId) -> Result<(), CoreError> {
    live(view, view.device(device)?.map(|device| device.user))
}

/// `Err` unless `user` (the device's, `None` without a device) is enabled.
fn live(view: &Snapshot, user: Option<Username>) -> Result<(), CoreError> {
    let Some(user) = user else {
        return Err(CoreError::reject(
            ErrorCode::Unauthorized,
            "this device is logged out",
        ));
    };
    if view.user(&user)?.is_none_or(|user| user.disabled) {
        return Err(CoreError::reject(
            ErrorCode::Unauthorized,
            "this user is disabled",
        ));
    }
    Ok(())
}

/// A refusal by the login limits, as the client sees it (and counted).
fn throttled(wait: Wait) -> CoreError {
    crate::metrics::METRICS.login_throttled(wait.limit);
    CoreError::RateLimited {
        message: wait.reason.to_owned(),
        retry_after_ms: wait.retry_after_ms,
    }
}

/// Runs password hashing or verification on the blocking pool, at most one per
/// CPU at a time. argon2 takes ~19 MiB and tens of milliseconds per call: without
/// a bound, a burst of logins would take every core and leave the allocator
/// holding hundreds of megabytes.
///
/// `admit` runs once the slot is held, before the work: what it refuses costs
/// no hashing (and what it admits is decided with the slot held, not before
/// the wait for it).
async fn password_work<A, E, T: Send + 'static>(
    admit: impl FnOnce() -> Result<A, E>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<Result<(T, A), E>, tokio::task::JoinError> {
    use std::sync::OnceLock;
    use tokio::sync::Semaphore;
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    let slots = SLOTS.get_or_init(|| {
        Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    });
    // The semaphore is never closed, so acquiring cannot fail.
    let _permit = slots.acquire().await.ok();
    let admitted = match admit() {
        Ok(admitted) => admitted,
        Err(e) => return Ok(Err(e)),
    };
    crate::metrics::METRICS.password_hashes.inc();
    Ok(Ok((tokio::task::spawn_blocking(f).await?, admitted)))
}

pub(super) fn check_password(password: &str) -> Result<(), CoreError> {
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

pub(super) async fn hash_password(password: String) -> Result<String, CoreError> {
    let admit = || Ok::<_, std::convert::Infallible>(());
    match password_work(admit, move || auth::hash_password(&password)).await? {
        Ok((hashed, ())) => hashed.map_err(CoreError::Password),
        Err(never) => match never {},
    }
}
