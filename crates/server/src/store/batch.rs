//! The database-independent half of a group commit: which rows a batch reads,
//! and, from what it read, which rows it writes and what each op returns.
//! Backends run the SQL; this module decides, so SQLite and MySQL cannot
//! disagree on mids, seqs, cmid dedupe or membership rules.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::{GroupId, OpError, StoredMessage, Target, UserId, WriteOp, WriteOutcome};

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
    pub body: String,
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

/// The rows a batch writes and the outcome of each op. Token ops are left as
/// `None` in `outcomes` for the backend to run itself.
#[derive(Debug, Default)]
pub struct Plan {
    /// New messages, in mid order.
    pub messages: Vec<MessageRow>,
    /// (user, seq, mid) inbox rows.
    pub inbox: Vec<(UserId, i64, i64)>,
    /// New `last_seq` per recipient.
    pub seq_updates: Vec<(UserId, i64)>,
    /// Highest confirmed seq per user.
    pub acks: Vec<(UserId, i64)>,
    /// One per op; `None` for the ops the backend runs itself.
    pub outcomes: Vec<Option<WriteOutcome>>,
}

/// Plans a batch. `max_mid` is the highest mid stored; `last_seq` holds the
/// current counter of every user [`recipients`] returned (missing means 0).
pub fn plan(ops: &[WriteOp], lk: &Lookups, max_mid: i64, last_seq: &HashMap<UserId, i64>) -> Plan {
    let mut plan = Plan::default();
    let mut next_mid = max_mid;
    let mut seqs: BTreeMap<UserId, i64> = BTreeMap::new();
    let mut acks: BTreeMap<UserId, i64> = BTreeMap::new();
    // cmids stored earlier in this same batch.
    let mut batch_cmids: HashMap<(UserId, String), Earlier> = HashMap::new();

    for op in ops {
        let outcome = match op {
            WriteOp::Append(m) => {
                let key = m.cmid.as_ref().map(|c| (m.sender, c.clone()));
                let earlier = key
                    .as_ref()
                    .and_then(|k| lk.cmid_hits.get(k).or_else(|| batch_cmids.get(k)));
                let to: Result<Vec<UserId>, OpError> = match m.target {
                    Target::User(u) if lk.existing_users.contains(&u) => Ok(vec![u]),
                    Target::User(_) => Err(OpError::NotFound),
                    Target::Group(g) => match lk.members.get(&g) {
                        None => Err(OpError::NotFound),
                        Some(ms) if !ms.contains(&m.sender) => Err(OpError::Forbidden),
                        Some(ms) => Ok(ms.iter().copied().filter(|&u| u != m.sender).collect()),
                    },
                };
                match (earlier, to) {
                    // A retry: the same message again. Anything else under
                    // that cmid is a client bug that must not pass silently.
                    (Some(e), _) if e.target == m.target && e.body == m.body => {
                        Some(WriteOutcome::Duplicate { mid: e.mid })
                    }
                    (Some(_), _) => Some(WriteOutcome::Failed(OpError::CmidReused)),
                    (None, Err(e)) => Some(WriteOutcome::Failed(e)),
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
                        Some(WriteOutcome::Appended {
                            message,
                            deliveries,
                        })
                    }
                }
            }
            WriteOp::Ack { user, seq } => {
                let e = acks.entry(*user).or_insert(*seq);
                *e = (*e).max(*seq);
                Some(WriteOutcome::Acked)
            }
            WriteOp::Token { .. } | WriteOp::RevokeTokens { .. } => None,
        };
        plan.outcomes.push(outcome);
    }
    plan.seq_updates = seqs.into_iter().collect();
    plan.acks = acks.into_iter().collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewMessage;

    fn msg(sender: UserId, target: Target, cmid: Option<&str>) -> WriteOp {
        WriteOp::Append(NewMessage {
            sender,
            sender_name: format!("u{sender}"),
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
            p.outcomes[3],
            Some(WriteOutcome::Duplicate { mid: 103 })
        ));
        assert!(matches!(
            p.outcomes[4],
            Some(WriteOutcome::Failed(OpError::Forbidden))
        ));
        assert!(matches!(
            p.outcomes[5],
            Some(WriteOutcome::Failed(OpError::NotFound))
        ));
        assert_eq!(recipients(&ops, &lk), vec![2, 3]);
    }
}
