//! argon2id password hashing, run on the blocking pool so it never stalls the
//! async workers, with a cap on hashes in flight and in line: a login storm
//! gets errno 10 instead of an unbounded queue.
//!
//! Registrations get at most half the hashing threads and a quarter of the
//! line, so a flood of REG cannot hold logins up.

use std::sync::Arc;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::config::HashCost;
use crate::error::ServiceError;

/// Hashes and verifies passwords.
#[derive(Clone)]
pub struct Passwords {
    argon: Arc<Argon2<'static>>,
    /// (hashing slots, queue places) as configured.
    sizes: (usize, usize),
    running: Arc<Semaphore>,
    waiting: Arc<Semaphore>,
    /// The registrations' share of `running` and `waiting`.
    reg_running: Arc<Semaphore>,
    reg_waiting: Arc<Semaphore>,
    /// Verified against when the user does not exist, so that a wrong id
    /// takes as long as a wrong password.
    dummy: Arc<str>,
}

impl Passwords {
    /// Builds a hasher with the given cost.
    pub fn new(cost: &HashCost) -> anyhow::Result<Self> {
        let params = Params::new(cost.m_kib, cost.t, cost.p, None)
            .map_err(|e| anyhow::anyhow!("argon2 params: {e}"))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::generate(&mut OsRng);
        let dummy = argon
            .hash_password(b"clusterchat-dummy", &salt)
            .map_err(|e| anyhow::anyhow!("argon2: {e}"))?
            .to_string();
        Ok(Passwords {
            sizes: (cost.concurrency.max(1), cost.queue.max(1)),
            argon: Arc::new(argon),
            running: Arc::new(Semaphore::new(cost.concurrency.max(1))),
            waiting: Arc::new(Semaphore::new(cost.queue.max(1))),
            reg_running: Arc::new(Semaphore::new((cost.concurrency / 2).max(1))),
            reg_waiting: Arc::new(Semaphore::new((cost.queue / 4).max(1))),
            dummy: dummy.into(),
        })
    }

    /// Hashes (running, waiting for a slot) now, for metrics.
    pub fn load(&self) -> (usize, usize) {
        let running = self.sizes.0 - self.running.available_permits();
        let admitted = self.sizes.1 - self.waiting.available_permits();
        (running, admitted.saturating_sub(running))
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T, ServiceError> {
        let _queued = self
            .waiting
            .try_acquire()
            .map_err(|_| ServiceError::busy("too many logins at once, retry later"))?;
        let _running = self
            .running
            .acquire()
            .await
            .map_err(|_| ServiceError::busy("server is shutting down"))?;
        let argon = self.argon.clone();
        tokio::task::spawn_blocking(move || f(&argon))
            .await
            .map_err(|_| ServiceError::busy("password hashing failed"))
    }

    /// Hashes a new password into a PHC string (for REG: in the
    /// registrations' share of the hashing capacity).
    pub async fn hash(&self, password: String) -> Result<String, ServiceError> {
        let _queued = self
            .reg_waiting
            .try_acquire()
            .map_err(|_| ServiceError::busy("too many registrations at once, retry later"))?;
        let _running = self
            .reg_running
            .acquire()
            .await
            .map_err(|_| ServiceError::busy("server is shutting down"))?;
        self.run(move |a| {
            let salt = SaltString::generate(&mut OsRng);
            a.hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
        })
        .await?
        .map_err(|_| ServiceError::busy("password hashing failed"))
    }

    /// Checks a password against a stored hash; `None` (no such user) checks
    /// against a dummy so the answer takes the same time, and is false.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, ServiceError> {
        let real = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy.to_string());
        let ok = self
            .run(move |a| {
                PasswordHash::new(&stored)
                    .map(|h| a.verify_password(password.as_bytes(), &h).is_ok())
                    .unwrap_or(false)
            })
            .await?;
        Ok(real && ok)
    }
}

/// A fresh login token: 32 random bytes, hex.
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    hex(&b)
}

/// How a token is stored: SHA-256, hex. A stolen database holds no usable token.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Lower-case hex of `b`.
pub(crate) fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}
