//! The clusterchat wire protocol, shared by the server, the terminal client
//! and the benchmark tool.
//!
//! The contract lives in `docs/protocol.md`; this crate holds the pieces of it
//! that code needs: message ids, errno codes, default limits, the frame codec,
//! the UTC timestamp format that every pushed chat frame carries, and the
//! wire model: typed requests ([`request`]), the server's replies
//! ([`reply`]) and pushes ([`push`]), and a field scanner for hot paths
//! ([`scan`]). Every program that speaks the protocol builds its frames here,
//! so they cannot drift apart.

pub mod codec;
pub mod push;
pub mod reply;
pub mod request;
pub mod scan;
pub mod time;

pub use codec::{FrameCodec, FrameError};
pub use push::{ChatMessage, ChatPush, ChatTarget};
pub use reply::LoginAck;
pub use request::{Request, Secret};

/// Message ids (`msgid`), level 1 and level 2.
pub mod msgid {
    /// Log in with `id` and `password` (or `token` at level 2).
    pub const LOGIN: i64 = 1;
    /// Reply to LOGIN.
    pub const LOGIN_ACK: i64 = 2;
    /// End the session; the connection stays open.
    pub const LOGINOUT: i64 = 3;
    /// Register a new account.
    pub const REG: i64 = 4;
    /// Reply to REG.
    pub const REG_ACK: i64 = 5;
    /// One-to-one chat, request and push.
    pub const ONE_CHAT: i64 = 6;
    /// Befriend another user (mutual).
    pub const ADD_FRIEND: i64 = 7;
    /// Create a group; the creator becomes its first member.
    pub const CREATE_GROUP: i64 = 8;
    /// Join a group.
    pub const ADD_GROUP: i64 = 9;
    /// Group chat, request and push.
    pub const GROUP_CHAT: i64 = 10;
    /// A failed request (level 1 and 2).
    pub const ERROR: i64 = 11;
    /// A successful request (level 2).
    pub const ACK: i64 = 12;
    /// Remove a friendship, for both users.
    pub const DEL_FRIEND: i64 = 13;
    /// Leave a group (not its creator).
    pub const QUIT_GROUP: i64 = 14;
    /// Delete a group (creator only).
    pub const DISBAND_GROUP: i64 = 15;
    /// Cumulative delivery confirmation by `seq`.
    pub const DELIVERED: i64 = 16;
    /// Page back through a conversation.
    pub const HISTORY: i64 = 17;
    /// Liveness probe; the reply is PONG.
    pub const PING: i64 = 18;
    /// Reply to PING.
    pub const PONG: i64 = 19;
    /// A friend came online or went offline (level 2 only).
    pub const PRESENCE: i64 = 20;
    /// This session was replaced by a newer login and is being closed.
    pub const KICKED: i64 = 21;
    /// Look a user up by exact name (level 2 addition).
    pub const FIND_USER: i64 = 22;
    /// A change to the user's friends or groups, pushed (level 2 only).
    pub const ROSTER: i64 = 23;
}

/// The protocol's error numbers. Clients branch on these; `errmsg` is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i64)]
pub enum Errno {
    /// Success.
    Ok = 0,
    /// Wrong id or password (LOGIN); name taken or invalid (REG).
    BadCredentials = 1,
    /// Reserved: the classic server's "account already online".
    AlreadyOnline = 2,
    /// No such user or group.
    NotFound = 3,
    /// Not allowed: not a member, not the creator, another user's id.
    Forbidden = 4,
    /// Already exists: friend, member, group name.
    Exists = 5,
    /// Malformed request.
    Malformed = 6,
    /// Not logged in.
    NotLoggedIn = 7,
    /// Frame too large; the connection is closed.
    FrameTooLarge = 8,
    /// Too many requests.
    RateLimited = 9,
    /// Server busy or storage unavailable: retry later.
    Unavailable = 10,
}

impl Errno {
    /// The integer that goes on the wire.
    pub fn code(self) -> i64 {
        self as i64
    }

    /// A short snake_case name, for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Errno::Ok => "ok",
            Errno::BadCredentials => "bad_credentials",
            Errno::AlreadyOnline => "already_online",
            Errno::NotFound => "not_found",
            Errno::Forbidden => "forbidden",
            Errno::Exists => "exists",
            Errno::Malformed => "malformed",
            Errno::NotLoggedIn => "not_logged_in",
            Errno::FrameTooLarge => "frame_too_large",
            Errno::RateLimited => "rate_limited",
            Errno::Unavailable => "unavailable",
        }
    }

    /// Parses a wire errno; unknown numbers give `None`.
    pub fn from_code(code: i64) -> Option<Errno> {
        Some(match code {
            0 => Errno::Ok,
            1 => Errno::BadCredentials,
            2 => Errno::AlreadyOnline,
            3 => Errno::NotFound,
            4 => Errno::Forbidden,
            5 => Errno::Exists,
            6 => Errno::Malformed,
            7 => Errno::NotLoggedIn,
            8 => Errno::FrameTooLarge,
            9 => Errno::RateLimited,
            10 => Errno::Unavailable,
            _ => return None,
        })
    }
}

/// Default limits from the protocol. Servers make them configurable.
pub mod limits {
    /// Longest client frame in bytes, terminator excluded.
    pub const MAX_FRAME: usize = 64 * 1024;
    /// User names: 1 to this many Unicode scalar values.
    pub const MAX_NAME_CHARS: usize = 50;
    /// Passwords: 1 to this many bytes.
    pub const MAX_PASSWORD_BYTES: usize = 128;
    /// Group names: 1 to this many Unicode scalar values.
    pub const MAX_GROUP_NAME_CHARS: usize = 50;
    /// Group descriptions: up to this many Unicode scalar values.
    pub const MAX_GROUP_DESC_CHARS: usize = 200;
    /// Message text: 1 byte to this many bytes of UTF-8.
    pub const MAX_MSG_BYTES: usize = 16 * 1024;
    /// Client message ids (`cmid`) for idempotent sends.
    pub const MAX_CMID_BYTES: usize = 64;
    /// Login tokens.
    pub const MAX_TOKEN_BYTES: usize = 512;
    /// HISTORY page size when `limit` is absent.
    pub const HISTORY_DEFAULT: i64 = 50;
    /// HISTORY page size ceiling; larger requests are clamped.
    pub const HISTORY_MAX: i64 = 200;
}
