//! The database-independent half of a group commit: which rows a batch reads,
//! and, from what it read, which rows it writes and what each op returns.
//! Backends run the SQL; this module decides, so SQLite and MySQL cannot
//! disagree on mids, seqs, cmid dedupe, membership or token rules.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::{
    Appended, Fanout, GroupId, StoreError, StoredMessage, Target, TokenIssued, TokenRequest,
    UserId, WriteOp, WriteOutcome, MAX_LIVE_TOKENS, TOKEN_GRACE_SECS,
};

/// What a batch must read before it can be planned.
#[derive(Debug, Default)]
pub struct Needs {
    /// One-to-one recipients whose existence must be checked.
    pub users: Vec<UserId>,
    /// Groups whose member lists are needed.
    pub groups: Vec<GroupId>,
    /// (sender, cmid) pairs that may have been stored before.
    pub cmids: Vec<(UserId, String)>,
}

/// Collects the reads a batch needs.
pub fn needs(ops: &[WriteOp]) -> Needs {
    let mut users = BTreeSet::new();
    let mut groups = BTreeSet::new();
    let mut cmids = BTreeSet::new();
    for op in ops {
        if let WriteOp::Append(m) = op {
            match m.target {
                Target::User(u) => users.insert(u),
                Target::Group(g) => groups.insert(g),
            };
            if let Some(c) = &m.cmid {
                cmids.insert((m.sender, c.clone()));
            }
        }
    }
    Needs {
        users: users.into_iter().collect(),
        groups: groups.into_iter().collect(),
        cmids: cmids.into_iter().collect(),
    }
}

/// What the backend read for [`Needs`].
#[derive(Debug, Default)]
pub struct Lookups {
    /// The subset of `Needs::users` that exist.
    pub existing_users: BTreeSet<UserId>,
    /// Member ids per group; a group with no entry does not exist.
    pub members: HashMap<GroupId, Vec<UserId>>,
    /// Messages stored before under the (sender, cmid) pairs asked for.
    pub cmid_hits: HashMap<(UserId, String), Earlier>,
}

/// A message stored earlier under a (sender, cmid): a retry must match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Earlier {
    /// Its mid.
    pub mid: i64,
    /// Where it went.
    pub target: Target,
    /// Its text.
    pub body: Arc<str>,
}

/// Every user who will receive a message from this batch.
pub fn recipients(ops: &[WriteOp], lk: &Lookups) -> Vec<UserId> {
    let mut out = BTreeSet::new();
    for op in ops {
        if let WriteOp::Append(m) = op {
            match m.target {
                Target::User(u) if lk.existing_users.contains(&u) => {
                    out.insert(u);
                }
                Target::Group(g) => {
                    if let Some(ms) = lk.members.get(&g) {
                        if ms.contains(&m.sender) {
                            out.extend(ms.iter().copied().filter(|&u| u != m.sender));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    out.into_iter().collect()
}

/// A `messages` row to insert.
#[derive(Debug, Clone)]
pub struct MessageRow {
    /// The message.
    pub message: Arc<StoredMessage>,
    /// HISTORY key.
    pub conv: String,
    /// Client message id, if any.
    pub cmid: Option<String>,
}

/// What a backend does for one op once the planned rows are written: the
/// outcome is known, or it runs a token op itself (token ops read their
/// user's rows, and for MySQL lock them, inside the transaction).
#[derive(Debug)]
pub enum Step<'a> {
    /// Planned already.
    Done(WriteOutcome),
    /// Run [`plan_token`] on the user's rows, then write what it says.
    Token(&'a TokenRequest),
    /// Delete every token of this user.
    Revoke(UserId),
}

/// The rows a batch writes and, per op, the [`Step`] that finishes it.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    /// New messages, in mid order.
    pub messages: Vec<MessageRow>,
    /// (user, seq, mid) inbox rows.
    pub inbox: Vec<(UserId, i64, i64)>,
    /// New `last_seq` per recipient.
    pub seq_updates: Vec<(UserId, i64)>,
    /// Highest confirmed seq per user.
    pub acks: Vec<(UserId, i64)>,
    /// One per op, in order.
    pub steps: Vec<Step<'a>>,
}

/// Plans a batch. `max_mid` is the highest mid stored; `last_seq` holds the
/// current counter of every user [`recipients`] returned (missing means 0).
pub fn plan<'a>(
    ops: &'a [WriteOp],
    lk: &Lookups,
    max_mid: i64,
    last_seq: &HashMap<UserId, i64>,
) -> Plan<'a> {
    let mut plan = Plan::default();
    let mut next_mid = max_mid;
    let mut seqs: BTreeMap<UserId, i64> = BTreeMap::new();
    let mut acks: BTreeMap<UserId, i64> = BTreeMap::new();
    // cmids stored earlier in this same batch, by the ops' own text (no
    // copies), sized up front (no rehashing as it fills).
    let with_cmid = ops
        .iter()
        .filter(|o| matches!(o, WriteOp::Append(m) if m.cmid.is_some()))
        .count();
    let mut batch_cmids: HashMap<(UserId, &'a str), Earlier> = HashMap::with_capacity(with_cmid);

    for op in ops {
        let step = match op {
            WriteOp::Append(m) => {
                let key = m.cmid.as_deref().map(|c| (m.sender, c));
                // A hit is rare: the owned key is only built to look one up.
                let earlier = key.and_then(|k| {
                    let hit = if lk.cmid_hits.is_empty() {
                        None
                    } else {
                        lk.cmid_hits.get(&(k.0, k.1.to_owned()))
                    };
                    hit.or_else(|| batch_cmids.get(&k))
                });
                let to: Result<Vec<UserId>, StoreError> = match m.target {
                    Target::User(u) if lk.existing_users.contains(&u) => Ok(vec![u]),
                    Target::User(_) => Err(StoreError::NotFound),
                    Target::Group(g) => match lk.members.get(&g) {
                        None => Err(StoreError::NotFound),
                        Some(ms) if !ms.contains(&m.sender) => Err(StoreError::NotMember),
                        Some(ms) => Ok(ms.iter().copied().filter(|&u| u != m.sender).collect()),
                    },
                };
                let appended = match (earlier, to) {
                    // A retry: the same message again. Anything else under
                    // that cmid is a client bug that must not pass silently.
                    (Some(e), _) if e.target == m.target && *e.body == *m.body => {
                        Ok(Appended::Duplicate { mid: e.mid })
                    }
                    (Some(_), _) => Err(StoreError::CmidReused),
                    (None, Err(e)) => Err(e),
                    (None, Ok(mut to)) => {
                        to.sort_unstable();
                        next_mid += 1;
                        let mid = next_mid;
                        let message = Arc::new(StoredMessage {
                            mid,
                            sender: m.sender,
                            sender_name: m.sender_name.clone(),
                            target: m.target,
                            body: m.body.clone(),
                            time: m.time,
                        });
                        let mut deliveries = Vec::with_capacity(to.len());
                        for u in to {
                            let s = seqs
                                .entry(u)
                                .or_insert_with(|| last_seq.get(&u).copied().unwrap_or(0));
                            *s += 1;
                            plan.inbox.push((u, *s, mid));
                            deliveries.push((u, *s));
                        }
                        if let Some(k) = key {
                            let e = Earlier {
                                mid,
                                target: m.target,
                                body: m.body.clone(),
                            };
                            batch_cmids.insert(k, e);
                        }
                        plan.messages.push(MessageRow {
                            conv: m.target.conv_key(m.sender),
                            cmid: m.cmid.clone(),
                            message: message.clone(),
                        });
                        Ok(Appended::New(Fanout {
                            message,
                            deliveries,
                        }))
                    }
                };
                Step::Done(WriteOutcome::Append(appended))
            }
            WriteOp::Ack { user, seq } => {
                let e = acks.entry(*user).or_insert(*seq);
                *e = (*e).max(*seq);
                Step::Done(WriteOutcome::Acked)
            }
            WriteOp::Token(t) => Step::Token(t),
            WriteOp::RevokeTokens { user } => Step::Revoke(*user),
        };
        plan.steps.push(step);
    }
    plan.seq_updates = seqs.into_iter().collect();
    plan.acks = acks.into_iter().collect();
    plan
}

/// One stored login token, as [`plan_token`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// SHA-256 (hex) of the token.
    pub hash: String,
    /// Issue order among its user's tokens: larger is newer.
    pub seq: i64,
    /// Unix seconds from which it is refused. The first use of a token cuts
    /// this to the end of its grace period.
    pub expires_at: i64,
}

/// What one token op writes, and its outcome.
#[derive(Debug)]
pub struct TokenPlan {
    /// The op's outcome.
    pub outcome: WriteOutcome,
    /// Hashes of the user's rows to delete: superseded, dead, or over the cap.
    pub delete: Vec<String>,
    /// The presented token's row gets this (shorter) `expires_at`: its grace.
    pub shorten: Option<(String, i64)>,
    /// The new token's row, for the op's user.
    pub insert: Option<TokenRow>,
}

/// Plans a [`WriteOp::Token`], given every token row of the op's `user`
/// (read, and for MySQL locked, in the same transaction). The rules are on
/// [`TokenRequest`].
pub fn plan_token(op: &TokenRequest, rows: &[TokenRow]) -> TokenPlan {
    let TokenRequest {
        consume,
        user,
        issue,
        expires_at,
        now,
    } = op;
    let now = *now;
    // Dead rows go whatever the outcome: nothing can use them any more.
    let mut delete: Vec<String> = rows
        .iter()
        .filter(|r| r.expires_at <= now)
        .map(|r| r.hash.clone())
        .collect();
    let live = rows.iter().filter(|r| r.expires_at > now);
    let new = TokenRow {
        hash: issue.clone(),
        seq: rows.iter().map(|r| r.seq).max().unwrap_or(0) + 1,
        expires_at: *expires_at,
    };
    let shorten = match consume {
        // A password login starts afresh: every earlier token dies.
        None => {
            delete.extend(live.map(|r| r.hash.clone()));
            None
        }
        Some(presented) => {
            // Not among the user's live tokens: unknown, dead, or someone
            // else's (which this op never touches).
            let Some(p) = rows
                .iter()
                .find(|r| &r.hash == presented && r.expires_at > now)
            else {
                return TokenPlan {
                    outcome: WriteOutcome::Token(Err(StoreError::BadToken)),
                    delete,
                    shorten: None,
                    insert: None,
                };
            };
            let mut newer = Vec::new();
            for r in live.filter(|r| r.hash != p.hash) {
                if r.seq > p.seq {
                    newer.push(r);
                } else {
                    delete.push(r.hash.clone()); // given before the one presented
                }
            }
            // Keep the presented token, the new one, and the newest of those
            // in between, MAX_LIVE_TOKENS in all.
            newer.sort_by_key(|r| r.seq);
            let excess = (newer.len() + 2).saturating_sub(MAX_LIVE_TOKENS);
            delete.extend(newer.iter().take(excess).map(|r| r.hash.clone()));
            let grace_end = p.expires_at.min(now + TOKEN_GRACE_SECS);
            (grace_end < p.expires_at).then(|| (p.hash.clone(), grace_end))
        }
    };
    TokenPlan {
        outcome: WriteOutcome::Token(Ok(TokenIssued { user: *user })),
        delete,
        shorten,
        insert: Some(new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewMessage;

    fn msg(sender: UserId, target: Target, cmid: Option<&str>) -> WriteOp {
        WriteOp::Append(NewMessage {
            sender,
            sender_name: format!("u{sender}").into(),
            target,
            body: "hi".into(),
            cmid: cmid.map(str::to_owned),
            time: 0,
        })
    }

    #[test]
    fn seqs_are_gap_free_per_recipient_and_mids_grow() {
        let ops = vec![
            msg(1, Target::User(2), None),
            msg(1, Target::Group(7), None),
            msg(3, Target::User(2), Some("a")),
            msg(3, Target::User(2), Some("a")),
            msg(9, Target::Group(7), None),
            msg(1, Target::User(404), None),
        ];
        let mut lk = Lookups::default();
        lk.existing_users.insert(2);
        lk.members.insert(7, vec![1, 2, 3]);
        let last: HashMap<_, _> = [(2, 10), (3, 0)].into_iter().collect();
        let p = plan(&ops, &lk, 100, &last);
        assert_eq!(
            p.inbox,
            vec![(2, 11, 101), (2, 12, 102), (3, 1, 102), (2, 13, 103)]
        );
        assert_eq!(p.seq_updates, vec![(2, 13), (3, 1)]);
        assert!(matches!(
            p.steps[3],
            Step::Done(WriteOutcome::Append(Ok(Appended::Duplicate { mid: 103 })))
        ));
        assert!(matches!(
            p.steps[4],
            Step::Done(WriteOutcome::Append(Err(StoreError::NotMember)))
        ));
        assert!(matches!(
            p.steps[5],
            Step::Done(WriteOutcome::Append(Err(StoreError::NotFound)))
        ));
        assert_eq!(recipients(&ops, &lk), vec![2, 3]);
    }

    fn row(hash: &str, seq: i64, expires_at: i64) -> TokenRow {
        TokenRow {
            hash: hash.into(),
            seq,
            expires_at,
        }
    }

    fn token(consume: Option<&str>, issue: &str, now: i64) -> TokenRequest {
        TokenRequest {
            consume: consume.map(str::to_owned),
            user: 1,
            issue: issue.into(),
            expires_at: now + 1000,
            now,
        }
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[test]
    fn presenting_a_token_kills_older_ones_and_starts_its_grace() {
        let rows = [
            row("old", 1, 900),
            row("dead", 2, 50),
            row("p", 3, 900),
            row("newer", 4, 900),
        ];
        let p = plan_token(&token(Some("p"), "new", 100), &rows);
        assert!(matches!(
            p.outcome,
            WriteOutcome::Token(Ok(TokenIssued { user: 1 }))
        ));
        assert_eq!(sorted(p.delete), ["dead", "old"]);
        assert_eq!(p.shorten, Some(("p".into(), 100 + TOKEN_GRACE_SECS)));
        assert_eq!(p.insert, Some(row("new", 5, 1100)));

        // Within its grace the token works again; the grace is not extended.
        let rows = [row("p", 3, 220), row("new", 5, 1100)];
        let p = plan_token(&token(Some("p"), "new2", 200), &rows);
        assert!(matches!(p.outcome, WriteOutcome::Token(Ok(_))));
        assert!(p.delete.is_empty());
        assert_eq!(p.shorten, None);
        assert_eq!(p.insert, Some(row("new2", 6, 1200)));
        // After it, the token is dead and pruned.
        let p = plan_token(&token(Some("p"), "new3", 220), &rows);
        assert!(matches!(
            p.outcome,
            WriteOutcome::Token(Err(StoreError::BadToken))
        ));
        assert_eq!(p.delete, ["p"]);
        assert_eq!(p.insert, None);
    }

    #[test]
    fn grace_never_outlives_the_token() {
        let p = plan_token(&token(Some("p"), "n", 100), &[row("p", 1, 130)]);
        assert_eq!(p.shorten, None, "expires at 130 anyway");
    }

    #[test]
    fn unknown_token_writes_nothing_live_and_password_login_kills_all() {
        let rows = [row("a", 1, 900), row("b", 2, 900), row("gone", 3, 10)];
        let p = plan_token(&token(Some("someone-elses"), "n", 100), &rows);
        assert!(matches!(
            p.outcome,
            WriteOutcome::Token(Err(StoreError::BadToken))
        ));
        assert_eq!(p.delete, ["gone"], "only dead rows are pruned");
        assert_eq!((p.shorten, p.insert), (None, None));

        let p = plan_token(&token(None, "n", 100), &rows);
        assert!(matches!(
            p.outcome,
            WriteOutcome::Token(Ok(TokenIssued { user: 1 }))
        ));
        assert_eq!(sorted(p.delete), ["a", "b", "gone"]);
        assert_eq!(p.insert, Some(row("n", 4, 1100)));
        let p = plan_token(&token(None, "n", 100), &[]);
        assert_eq!(p.insert, Some(row("n", 1, 1100)));
    }

    #[test]
    fn live_tokens_are_capped() {
        // The same token presented again and again, every ack lost.
        let mut rows = vec![row("p", 1, 10_000)];
        for i in 0..40 {
            let p = plan_token(&token(Some("p"), &format!("n{i}"), 100), &rows);
            rows.retain(|r| !p.delete.contains(&r.hash));
            rows.push(p.insert.unwrap());
        }
        assert_eq!(rows.len(), MAX_LIVE_TOKENS);
        assert_eq!(rows[0].hash, "p");
        assert_eq!(rows[1].hash, format!("n{}", 40 - (MAX_LIVE_TOKENS - 1)));
        assert_eq!(rows.last().unwrap().hash, "n39");
    }
}
