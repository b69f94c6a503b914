//! Commands: a request frame parsed once into a typed [`Command`], which
//! states how it orders against the other requests of its connection, runs,
//! and writes its own reply. One file per command group, with parse, run and
//! reply together (as mini-redis's `cmd/`).
//!
//! The layer knows nothing of the transport: a connection hands it a parsed
//! [`Request`] and a [`Link`] (its outbound queue, close signal, address and
//! session slot), and queues or sends what comes back. A TCP connection and
//! a WebSocket would differ only in their framing.

mod delivered;
mod find_user;
mod history;
mod login;
mod logout;
mod ping;
mod register;
mod send;
mod social;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use chat_protocol::msgid;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::error::ServiceError;
use crate::frames;
use crate::outbox::Outbox;
use crate::request::Request;
use crate::service::{Service, Session};

pub use delivered::Delivered;
pub use find_user::FindUser;
pub use history::History;
pub use login::Login;
pub use logout::Logout;
pub use ping::Ping;
pub use register::Register;
pub use send::Send;
pub use social::Social;

/// A request, parsed and checked: every field is typed and within its limits.
#[derive(Debug)]
pub enum Command {
    /// LOGIN.
    Login(Login),
    /// LOGINOUT.
    Logout(Logout),
    /// REG.
    Register(Register),
    /// PING.
    Ping(Ping),
    /// ONE_CHAT or GROUP_CHAT.
    Send(Send),
    /// DELIVERED.
    Delivered(Delivered),
    /// HISTORY.
    History(History),
    /// A friend or group change.
    Social(Social),
    /// FIND_USER.
    FindUser(FindUser),
}

/// How a command orders against the other requests of its connection.
/// Replies always go out in request order; this is about when the work runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Runs alongside the requests around it (chat, DELIVERED, PING): the
    /// connection reads on while it works.
    Pipelined,
    /// Waits for every earlier request to finish first, then runs alongside
    /// later ones: HISTORY must see the writes before it, and one password
    /// hash at a time keeps a pipelined REG flood from filling the queue.
    AfterPrevious,
    /// Waits for every earlier request and finishes before the next one is
    /// read: LOGIN and LOGINOUT change the session, and friend and group
    /// changes change what later requests may do (ADD_GROUP then
    /// GROUP_CHAT must not run the chat first).
    Exclusive,
}

/// What a command may use of the connection it came in on.
pub struct Link<'a> {
    /// The connection's outbound queue (the login ack and backlog go there).
    pub out: &'a Arc<Outbox>,
    /// Cancelled when the connection must close.
    pub close: &'a CancellationToken,
    /// The client's address, for per-address limits.
    pub ip: IpAddr,
    /// The connection's session: LOGIN fills it, LOGINOUT empties it.
    pub session: &'a mut Option<Session>,
}

/// The reply a pipelined command works out while its connection reads on:
/// the frame, or nothing (a level-1 ACK, DELIVERED).
pub type ReplyFuture = Pin<Box<dyn Future<Output = Option<Bytes>> + std::marker::Send>>;

/// What running a command gave the connection.
pub enum Ran {
    /// Work in flight; its reply goes out in request order once it is done.
    Queued(ReplyFuture),
    /// Finished; this frame (if any) goes out now.
    Done(Option<Bytes>),
}

/// A command's result before it is encoded: the reply frame, if any.
type Outcome = Result<Option<Bytes>, ServiceError>;

/// Whom a reply answers, and at which protocol level: everything a command
/// needs to encode its reply (and its errors) without the connection.
#[derive(Debug, Clone)]
pub struct ReplyTo {
    /// The request's msgid, echoed as `re` in ACKs and errors.
    pub msgid: i64,
    /// The client's `reqid`, echoed in the reply.
    pub reqid: Option<Value>,
    /// The session's protocol level when the request came (1 before login).
    pub level: u8,
    /// Where errors are counted.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl ReplyTo {
    /// An ACK at either level: the request is useless without its result
    /// (HISTORY, LOGINOUT at level 2).
    pub fn ack(&self, fields: Vec<(&'static str, Value)>) -> Option<Bytes> {
        Some(frames::ack(self.msgid, self.reqid.as_ref(), fields))
    }

    /// An ACK at level 2 only: level 1 (the classic protocol) has none.
    pub fn ack_at_level2(&self, fields: Vec<(&'static str, Value)>) -> Option<Bytes> {
        (self.level >= 2).then(|| frames::ack(self.msgid, self.reqid.as_ref(), fields))
    }

    /// At level 2, the ACK of a stored message (its mid).
    pub fn ack_mid_at_level2(&self, mid: i64) -> Option<Bytes> {
        (self.level >= 2)
            .then(|| chat_protocol::reply::ack_mid(self.msgid, self.reqid.as_ref(), mid))
    }

    /// A frame of its own kind (REG_ACK, PONG), with the reqid added.
    pub fn frame(&self, v: Value) -> Option<Bytes> {
        Some(frames::with_reqid(v, self.reqid.as_ref()))
    }

    /// The error reply.
    pub fn error(&self, e: &ServiceError) -> Bytes {
        self.metrics.error(Some(self.msgid), e);
        tracing::debug!(
            msgid = self.msgid,
            errno = e.errno.code(),
            "request refused: {}",
            e.msg
        );
        frames::failure(Some(self.msgid), self.reqid.as_ref(), e)
    }

    /// The frame for an outcome: its reply, or its error.
    fn answer(&self, r: Outcome) -> Option<Bytes> {
        r.unwrap_or_else(|e| Some(self.error(&e)))
    }

    /// Pipelined work: once it is done, `reply` turns its result into the
    /// frame (or its error does).
    fn queue<T: 'static>(
        self,
        work: impl Future<Output = Result<T, ServiceError>> + std::marker::Send + 'static,
        reply: fn(&ReplyTo, T) -> Option<Bytes>,
    ) -> Ran {
        Ran::Queued(Box::pin(async move {
            match work.await {
                Ok(v) => reply(&self, v),
                Err(e) => Some(self.error(&e)),
            }
        }))
    }
}

impl Command {
    /// Parses a request for a connection whose session is `me` (`None`
    /// before login). The checks run in the order clients have always seen:
    /// the login state, then the claimed id (`id`/`userid` must be `me`),
    /// then the fields.
    pub fn parse(
        req: &Request,
        me: Option<&Session>,
        sh: &Service,
    ) -> Result<Command, ServiceError> {
        let logged_in = || me.ok_or_else(ServiceError::not_logged_in);
        Ok(match req.msgid {
            msgid::LOGIN => Command::Login(Login::parse(req, me, sh)?),
            msgid::LOGINOUT => Command::Logout(Logout::parse(req, logged_in()?)?),
            msgid::REG => Command::Register(Register::parse(req, sh)?),
            msgid::PING => Command::Ping(Ping),
            msgid::ONE_CHAT | msgid::GROUP_CHAT => {
                Command::Send(Send::parse(req, logged_in()?, sh)?)
            }
            msgid::DELIVERED => Command::Delivered(Delivered::parse(req, logged_in()?)?),
            msgid::HISTORY => Command::History(History::parse(req, logged_in()?)?),
            msgid::FIND_USER => Command::FindUser(FindUser::parse(req, logged_in()?, sh)?),
            msgid::ADD_FRIEND
            | msgid::DEL_FRIEND
            | msgid::CREATE_GROUP
            | msgid::ADD_GROUP
            | msgid::QUIT_GROUP
            | msgid::DISBAND_GROUP => Command::Social(Social::parse(req, logged_in()?, sh)?),
            other => return Err(ServiceError::malformed(format!("unknown msgid {other}"))),
        })
    }

    /// How this command orders against its neighbours.
    pub fn order(&self) -> Order {
        match self {
            Command::Ping(_) | Command::Send(_) | Command::Delivered(_) | Command::FindUser(_) => {
                Order::Pipelined
            }
            Command::Register(_) | Command::History(_) => Order::AfterPrevious,
            Command::Login(_) | Command::Logout(_) | Command::Social(_) => Order::Exclusive,
        }
    }

    /// Runs the command. Pipelined work comes back [`Ran::Queued`]; an
    /// exclusive command has finished when this returns.
    pub async fn run(self, sh: &Arc<Service>, link: &mut Link<'_>, to: ReplyTo) -> Ran {
        match self {
            Command::Login(c) => Ran::Done(c.run(sh, link, &to).await.err().map(|e| to.error(&e))),
            Command::Logout(c) => Ran::Done(to.answer(c.run(sh, link, &to).await)),
            Command::Register(c) => c.run(sh, link.ip, to),
            Command::Ping(c) => Ran::Done(to.answer(c.run(&to))),
            Command::Send(c) => c.run(sh, to),
            Command::Delivered(c) => c.run(sh, to),
            Command::History(c) => c.run(sh, to),
            Command::FindUser(c) => c.run(sh, to),
            Command::Social(c) => Ran::Done(to.answer(c.run(sh, &to).await)),
        }
    }
}
