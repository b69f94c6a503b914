//! Service errors and the one place where failures become protocol errno.

use std::borrow::Cow;

use chat_protocol::Errno;

use crate::store::StoreError;

/// A request failed: the errno the client gets and a sentence for people.
#[derive(Debug, Clone, thiserror::Error)]
#[error("errno {}: {msg}", errno.code())]
pub struct ServiceError {
    /// Protocol errno.
    pub errno: Errno,
    /// Short English sentence.
    pub msg: Cow<'static, str>,
}

impl ServiceError {
    /// Any errno with a message.
    pub fn new(errno: Errno, msg: impl Into<Cow<'static, str>>) -> Self {
        ServiceError {
            errno,
            msg: msg.into(),
        }
    }

    /// errno 6.
    pub fn malformed(msg: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Errno::Malformed, msg)
    }

    /// errno 7.
    pub fn not_logged_in() -> Self {
        Self::new(Errno::NotLoggedIn, "log in first")
    }

    /// errno 10.
    pub fn busy(msg: impl Into<Cow<'static, str>>) -> Self {
        Self::new(Errno::Unavailable, msg)
    }

    /// Replaces the message when the errno is `errno`: lets a handler say
    /// "no such group" where the store only knows "not found".
    pub fn reworded(mut self, errno: Errno, msg: &'static str) -> Self {
        if self.errno == errno {
            self.msg = Cow::Borrowed(msg);
        }
        self
    }
}

/// What a request that storage failed is told (and how metrics tell it
/// from other errno 10s).
pub const STORE_UNAVAILABLE: &str = "storage unavailable, retry later";

impl ServiceError {
    /// Whether storage failed this request.
    pub fn is_store_failure(&self) -> bool {
        self.errno == Errno::Unavailable && self.msg == STORE_UNAVAILABLE
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::new(Errno::NotFound, "no such user or group"),
            StoreError::Exists => Self::new(Errno::Exists, "already exists"),
            StoreError::Forbidden => Self::new(Errno::Forbidden, "not allowed"),
            StoreError::NotMember => {
                Self::new(Errno::Forbidden, "you are not a member of this group")
            }
            StoreError::BadToken => Self::new(Errno::BadCredentials, "invalid or expired token"),
            StoreError::CmidReused => Self::new(
                Errno::Exists,
                "this cmid was used for a different message; use a new cmid",
            ),
            StoreError::Unavailable(e) => {
                tracing::warn!(error = %e, "storage error");
                Self::busy(STORE_UNAVAILABLE)
            }
            StoreError::Closed => Self::busy("server is shutting down"),
        }
    }
}
