//! Decoding a client frame into a request: a JSON object with an integer
//! `msgid`, plus typed field accessors that turn every wrong or missing field
//! into errno 6 with a message naming the field.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::ServiceError;

/// A decoded request frame.
#[derive(Debug)]
pub struct Request {
    /// The request's msgid.
    pub msgid: i64,
    /// The client's `reqid`, echoed in the reply (string or integer).
    pub reqid: Option<Value>,
    body: Map<String, Value>,
}

/// A frame that is not a request: errno 6, with the reqid if one was readable.
#[derive(Debug)]
pub struct BadFrame {
    /// Why.
    pub error: ServiceError,
    /// The reqid, if the frame was an object that carried a valid one.
    pub reqid: Option<Value>,
}

impl Request {
    /// Parses one frame.
    pub fn parse(frame: &Bytes) -> Result<Request, BadFrame> {
        let bad = |msg: &'static str, reqid| BadFrame {
            error: ServiceError::malformed(msg),
            reqid,
        };
        let value: Value = match serde_json::from_slice(frame) {
            Ok(v) => v,
            Err(_) if std::str::from_utf8(frame).is_err() => {
                return Err(bad("frame is not valid UTF-8", None))
            }
            Err(_) => return Err(bad("frame is not valid JSON", None)),
        };
        let Value::Object(mut body) = value else {
            return Err(bad("frame is not a JSON object", None));
        };
        let reqid = match body.remove("reqid") {
            None | Some(Value::Null) => None,
            Some(v @ Value::String(_)) => Some(v),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(Value::Number(n)),
            Some(_) => return Err(bad("reqid must be a string or an integer", None)),
        };
        match body.get("msgid").and_then(Value::as_i64) {
            Some(msgid) => Ok(Request { msgid, reqid, body }),
            None => Err(bad("msgid must be an integer", reqid)),
        }
    }

    /// Whether the field is present (and not null).
    pub fn has(&self, key: &str) -> bool {
        !matches!(self.body.get(key), None | Some(Value::Null))
    }

    /// An optional integer field.
    pub fn opt_int(&self, key: &'static str) -> Result<Option<i64>, ServiceError> {
        match self.body.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| {
                ServiceError::malformed(format!("field `{key}` must be an integer"))
            }),
        }
    }

    /// A required integer field.
    pub fn int(&self, key: &'static str) -> Result<i64, ServiceError> {
        self.opt_int(key)?
            .ok_or_else(|| ServiceError::malformed(format!("field `{key}` is required")))
    }

    /// A required integer field that may also come under an alias (`to` for `toid`).
    pub fn int_or(&self, key: &'static str, alias: &'static str) -> Result<i64, ServiceError> {
        match self.opt_int(key)? {
            Some(v) => Ok(v),
            None => self
                .opt_int(alias)?
                .ok_or_else(|| ServiceError::malformed(format!("field `{key}` is required"))),
        }
    }

    /// An optional string field.
    pub fn opt_str(&self, key: &'static str) -> Result<Option<&str>, ServiceError> {
        match self.body.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ServiceError::malformed(format!(
                "field `{key}` must be a string"
            ))),
        }
    }

    /// A required string field.
    pub fn str(&self, key: &'static str) -> Result<&str, ServiceError> {
        self.opt_str(key)?
            .ok_or_else(|| ServiceError::malformed(format!("field `{key}` is required")))
    }

    /// A string field whose length in characters must be within `min..=max`.
    pub fn chars(&self, key: &'static str, min: usize, max: usize) -> Result<&str, ServiceError> {
        let s = self.str(key)?;
        check_chars(key, s, min, max)?;
        Ok(s)
    }

    /// The classic client repeats its own id in `id` or `userid`; accept it
    /// when it names `me`, refuse it (errno 4) when it names anyone else.
    pub fn check_self(&self, me: i64) -> Result<(), ServiceError> {
        for key in ["id", "userid"] {
            if let Some(v) = self.opt_int(key)? {
                if v != me {
                    return Err(ServiceError::new(
                        chat_protocol::Errno::Forbidden,
                        "the id in the request is not yours",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Length check in Unicode scalar values, errno 6 when out of range.
pub fn check_chars(key: &'static str, s: &str, min: usize, max: usize) -> Result<(), ServiceError> {
    let n = s.chars().count();
    if n < min || n > max {
        return Err(ServiceError::malformed(format!(
            "field `{key}` must be {min} to {max} characters"
        )));
    }
    Ok(())
}

/// Length check in bytes, errno 6 when out of range.
pub fn check_bytes(key: &'static str, s: &str, min: usize, max: usize) -> Result<(), ServiceError> {
    if s.len() < min || s.len() > max {
        return Err(ServiceError::malformed(format!(
            "field `{key}` must be {min} to {max} bytes"
        )));
    }
    Ok(())
}
