//! REG: validate, hash the password off the async threads, create the
//! account. Answered with REG_ACK at either level.

use std::net::IpAddr;
use std::sync::Arc;

use chat_protocol::Errno;

use super::{Ran, ReplyTo};
use crate::error::ServiceError;
use crate::frames;
use crate::names;
use crate::request::{check_bytes, Request};
use crate::service::Service;
use crate::store::StoreError;

/// A new account.
#[derive(Debug)]
pub struct Register {
    name: String,
    key: String,
    password: String,
}

impl Register {
    /// Parses `name` (the name rules) and `password`.
    pub fn parse(req: &Request, sh: &Service) -> Result<Register, ServiceError> {
        let lim = &sh.cfg.limits;
        let name = req.chars("name", 1, lim.name_chars)?.to_owned();
        let password = req.str("password")?.to_owned();
        check_bytes("password", &password, 1, lim.password_bytes)?;
        // Refused names share errno 1 with taken ones: "name taken or invalid".
        let key = names::key(&name)
            .map_err(|e| ServiceError::new(Errno::BadCredentials, e.to_string()))?;
        Ok(Register {
            name,
            key,
            password,
        })
    }

    /// Creates the account, within the per-address registration rate.
    pub fn run(self, sh: &Arc<Service>, ip: IpAddr, to: ReplyTo) -> Ran {
        if !sh.guards.reg.take(ip) {
            let e = ServiceError::new(
                Errno::RateLimited,
                "too many registrations from your address; try again later",
            );
            return Ran::Done(Some(to.error(&e)));
        }
        let sh = sh.clone();
        let work = async move {
            let hash = sh.passwords.hash(self.password).await?;
            match sh.store.create_user(&self.name, &self.key, &hash).await {
                Ok(id) => {
                    tracing::info!(user = id, name = %self.name, "registered");
                    Ok(id)
                }
                Err(StoreError::Exists) => Err(ServiceError::new(
                    Errno::BadCredentials,
                    "this name is taken",
                )),
                Err(e) => Err(e.into()),
            }
        };
        to.queue(work, |to, id| to.frame(frames::reg_ack(id)))
    }
}
