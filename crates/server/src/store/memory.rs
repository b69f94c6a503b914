//! A store in process memory: the same behaviour as the SQL backends (the
//! conformance suite runs on it too), nothing durable. For fast service
//! unit tests that need no database file.
//!
//! One mutex guards all state, so every call, and every group commit, is
//! atomic. Group commits plan with [`batch`] exactly as the SQL backends do.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use super::batch::{self, Lookups, Step, TokenRow};
use super::{
    key_digest, AccountChange, AccountEvent, AdminStore, Conversation, DeletedUser, FriendStore,
    GroupId, GroupInfo, GroupStore, Member, MessageStore, Person, Role, StoreError, StoreResult,
    StoredMessage, TokenRequest, UserId, UserRecord, UserStore, UserSummary, WriteOp, WriteOutcome,
};

/// The in-memory store.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    /// With [`MemoryStore::hold_flushes`]: where each commit's "flush" goes
    /// for a test to finish.
    flushes: Mutex<Option<Flushes>>,
}

/// A staged commit's durability, for whoever finishes it to answer.
pub(crate) type Flush = tokio::sync::oneshot::Sender<StoreResult<()>>;

/// Where [`MemoryStore::hold_flushes`] sends each commit's [`Flush`].
type Flushes = tokio::sync::mpsc::UnboundedSender<Flush>;

/// A group's row.
#[derive(Debug)]
struct Group {
    name: String,
    key: String,
    desc: String,
    /// Member ids and roles, ascending.
    members: BTreeMap<UserId, Role>,
}

/// A user's delivery counters.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    last_seq: i64,
    acked_seq: i64,
}

/// Every table, as maps.
#[derive(Debug, Default)]
struct State {
    users: BTreeMap<UserId, UserRecord>,
    user_names: Names,
    /// Friendships, one entry per direction.
    friends: BTreeSet<(UserId, UserId)>,
    groups: BTreeMap<GroupId, Group>,
    group_names: Names,
    messages: BTreeMap<i64, StoredMessage>,
    /// Mids per conversation key, ascending.
    convs: HashMap<String, BTreeSet<i64>>,
    /// (sender, cmid) to mid.
    cmids: HashMap<(UserId, String), i64>,
    /// Per user: seq to mid.
    inbox: HashMap<UserId, BTreeMap<i64, i64>>,
    counters: HashMap<UserId, Counters>,
    /// Token hash to (owner, row).
    tokens: HashMap<String, (UserId, TokenRow)>,
    /// Per user: (registered, disabled at).
    accounts: HashMap<UserId, (i64, Option<i64>)>,
    /// Account changes, in order; an event's id is its index plus one.
    events: Vec<(UserId, AccountChange)>,
    /// The highest mid ever handed out, deleted messages included.
    mid_floor: i64,
}

/// The unique names and name keys (digests) of one table, and its last id:
/// SQL's UNIQUE columns and AUTOINCREMENT.
#[derive(Debug, Default)]
struct Names {
    names: HashMap<String, i64>,
    keys: HashMap<String, i64>,
    last_id: i64,
}

impl Names {
    /// A new row's id, its name and key taken; `Exists` if either was.
    fn claim(&mut self, name: &str, key: &str) -> StoreResult<i64> {
        if self.names.contains_key(name) || self.keys.contains_key(key) {
            return Err(StoreError::Exists);
        }
        self.last_id += 1;
        self.names.insert(name.to_owned(), self.last_id);
        self.keys.insert(key.to_owned(), self.last_id);
        Ok(self.last_id)
    }

    /// Frees a deleted row's name and key.
    fn release(&mut self, name: &str, key: &str) {
        self.names.remove(name);
        self.keys.remove(key);
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on a staged commit is durable only once the test answers
    /// the sender it receives here (`Ok`, or the error the flush "failed"
    /// with), as a disk that flushes when told: for tests of what waits for
    /// durability and what does not.
    #[cfg(test)]
    pub(crate) fn hold_flushes(&self) -> tokio::sync::mpsc::UnboundedReceiver<Flush> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *self.flushes.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
        rx
    }

    /// The state; a panic elsewhere leaves it usable (each call changes it
    /// only after its checks passed).
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// `NotFound` without the group; else the user's role, if a member.
    fn role_in(&self, group: GroupId, user: UserId) -> StoreResult<Option<Role>> {
        let g = self.groups.get(&group).ok_or(StoreError::NotFound)?;
        Ok(g.members.get(&user).copied())
    }

    /// What a batch reads, as the SQL backends read it.
    fn lookups(&self, need: &batch::Needs) -> Lookups {
        let mut lk = Lookups::default();
        for &u in &need.users {
            if self.users.contains_key(&u) {
                lk.existing_users.insert(u);
            }
        }
        for &g in &need.groups {
            // No members means no group, as in SQL.
            if let Some(grp) = self.groups.get(&g).filter(|g| !g.members.is_empty()) {
                lk.members.insert(g, grp.members.keys().copied().collect());
            }
        }
        for key in &need.cmids {
            if let Some(row) = self.cmids.get(key).and_then(|m| self.messages.get(m)) {
                let e = batch::Earlier {
                    mid: row.mid,
                    target: row.target,
                    body: row.body.clone(),
                };
                lk.cmid_hits.insert(key.clone(), e);
            }
        }
        lk
    }

    /// The group commit, applied in place. Nothing here can fail halfway:
    /// every check happened in the plan.
    fn commit(&mut self, ops: &[WriteOp]) -> Vec<WriteOutcome> {
        let need = batch::needs(ops);
        let lk = self.lookups(&need);
        let last: HashMap<UserId, i64> = batch::recipients(ops, &lk)
            .into_iter()
            .filter_map(|u| self.counters.get(&u).map(|c| (u, c.last_seq)))
            .collect();
        let max_mid = self
            .messages
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(self.mid_floor);
        let plan = batch::plan(ops, &lk, max_mid, &last);
        for row in plan.messages {
            let m = (*row.message).clone();
            self.convs.entry(row.conv).or_default().insert(m.mid);
            if let Some(c) = &row.cmid {
                self.cmids.insert((m.sender, c.clone()), m.mid);
            }
            self.messages.insert(m.mid, m);
        }
        for (u, seq, mid) in plan.inbox {
            self.inbox.entry(u).or_default().insert(seq, mid);
        }
        for (u, s) in plan.seq_updates {
            self.counters.entry(u).or_default().last_seq = s;
        }
        for (u, s) in plan.acks {
            match self.counters.get_mut(&u) {
                Some(c) => c.acked_seq = c.acked_seq.max(s.min(c.last_seq)),
                // As the SQL upserts: a new row takes the seq as it is.
                None => {
                    self.counters.insert(
                        u,
                        Counters {
                            last_seq: 0,
                            acked_seq: s,
                        },
                    );
                }
            }
        }
        plan.steps
            .into_iter()
            .map(|step| match step {
                Step::Done(o) => o,
                Step::Token(t) => self.token(t),
                Step::Revoke(user) => {
                    self.tokens.retain(|_, (owner, _)| *owner != user);
                    WriteOutcome::Revoked
                }
            })
            .collect()
    }

    /// `NotFound` unless the user exists.
    fn account(&mut self, user: UserId) -> StoreResult<&mut (i64, Option<i64>)> {
        if !self.users.contains_key(&user) {
            return Err(StoreError::NotFound);
        }
        Ok(self.accounts.entry(user).or_default())
    }

    /// [`AdminStore::delete_user`].
    fn delete_user(&mut self, user: UserId) -> StoreResult<DeletedUser> {
        self.account(user)?;
        let mut out = DeletedUser::default();
        let created: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, g)| g.members.get(&user) == Some(&Role::Creator))
            .map(|(&id, _)| id)
            .collect();
        for id in created {
            if let Some(g) = self.groups.remove(&id) {
                self.group_names.release(&g.name, &g.key);
            }
            out.groups.push(id);
        }
        for g in self.groups.values_mut() {
            g.members.remove(&user);
        }
        self.friends.retain(|&(a, b)| a != user && b != user);
        // Unconfirmed copies of the user's messages in other inboxes.
        let mut pending = BTreeSet::new();
        for (&u, inbox) in &self.inbox {
            let acked = self.counters.get(&u).map_or(0, |c| c.acked_seq);
            if u == user {
                continue;
            }
            for (_, mid) in inbox.range(acked.saturating_add(1)..) {
                if self.messages.get(mid).is_some_and(|m| m.sender == user) {
                    pending.insert(*mid);
                }
            }
        }
        let doomed: Vec<i64> = self
            .messages
            .values()
            // Every one-to-one message to the user, delivered and pruned
            // from the inbox or not.
            .filter(|m| m.sender == user || m.target == super::Target::User(user))
            .map(|m| m.mid)
            .collect();
        self.mid_floor = self
            .mid_floor
            .max(self.messages.keys().next_back().copied().unwrap_or(0));
        for mid in doomed {
            let Some(m) = self.messages.get(&mid) else {
                continue;
            };
            let conv = m.target.conv_key(m.sender);
            if let Some(c) = self.convs.get_mut(&conv) {
                c.remove(&mid);
            }
            // A pending copy leaves history (as the SQL backends move it to
            // a conversation no one can name) and stays for delivery.
            if pending.contains(&mid) {
                out.pending += 1;
            } else {
                self.messages.remove(&mid);
                out.messages += 1;
            }
        }
        let messages = &self.messages;
        self.cmids.retain(|_, m| messages.contains_key(m));
        self.inbox.remove(&user);
        self.counters.remove(&user);
        self.tokens.retain(|_, (owner, _)| *owner != user);
        if let Some(u) = self.users.remove(&user) {
            let key = self
                .user_names
                .keys
                .iter()
                .find(|(_, &id)| id == user)
                .map(|(k, _)| k.clone())
                .unwrap_or_default();
            self.user_names.release(&u.name, &key);
        }
        self.accounts.remove(&user);
        self.events.push((user, AccountChange::Deleted));
        Ok(out)
    }

    /// A token op, planned by [`batch::plan_token`].
    fn token(&mut self, op: &TokenRequest) -> WriteOutcome {
        let rows: Vec<TokenRow> = self
            .tokens
            .values()
            .filter(|(owner, _)| *owner == op.user)
            .map(|(_, row)| row.clone())
            .collect();
        let plan = batch::plan_token(op, &rows);
        for h in &plan.delete {
            self.tokens.remove(h);
        }
        if let Some((hash, expires_at)) = &plan.shorten {
            if let Some((_, row)) = self.tokens.get_mut(hash) {
                row.expires_at = *expires_at;
            }
        }
        if let Some(t) = plan.insert {
            self.tokens.insert(t.hash.clone(), (op.user, t));
        }
        plan.outcome
    }
}

#[async_trait]
impl UserStore for MemoryStore {
    async fn create_user(&self, name: &str, key: &str, password_hash: &str) -> StoreResult<UserId> {
        let mut st = self.state();
        let id = st.user_names.claim(name, &key_digest(key))?;
        st.users.insert(
            id,
            UserRecord {
                id,
                name: name.to_owned(),
                password_hash: password_hash.to_owned(),
                disabled: false,
            },
        );
        st.counters.insert(id, Counters::default());
        st.accounts
            .insert(id, (chat_protocol::time::unix_now(), None));
        Ok(id)
    }

    async fn find_user(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        Ok(self.state().users.get(&id).cloned())
    }

    async fn find_user_by_name(&self, name: &str) -> StoreResult<Option<Person>> {
        let st = self.state();
        Ok(st.user_names.names.get(name).and_then(|id| {
            st.users.get(id).map(|u| Person {
                id: u.id,
                name: u.name.clone(),
            })
        }))
    }
}

#[async_trait]
impl FriendStore for MemoryStore {
    async fn add_friend(&self, user: UserId, friend: UserId) -> StoreResult<()> {
        let mut st = self.state();
        if !st.users.contains_key(&friend) {
            return Err(StoreError::NotFound);
        }
        let added = st.friends.insert((user, friend)) | st.friends.insert((friend, user));
        if !added {
            return Err(StoreError::Exists);
        }
        Ok(())
    }

    async fn remove_friend(&self, user: UserId, friend: UserId) -> StoreResult<()> {
        let mut st = self.state();
        let removed = st.friends.remove(&(user, friend)) | st.friends.remove(&(friend, user));
        if !removed {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn friends(&self, user: UserId) -> StoreResult<Vec<Person>> {
        let st = self.state();
        Ok(st
            .friends
            .range((user, UserId::MIN)..=(user, UserId::MAX))
            .filter_map(|&(_, f)| st.users.get(&f))
            .map(|u| Person {
                id: u.id,
                name: u.name.clone(),
            })
            .collect())
    }
}

#[async_trait]
impl GroupStore for MemoryStore {
    async fn create_group(
        &self,
        creator: UserId,
        name: &str,
        key: &str,
        desc: &str,
    ) -> StoreResult<GroupId> {
        let key = key_digest(key);
        let mut st = self.state();
        let id = st.group_names.claim(name, &key)?;
        st.groups.insert(
            id,
            Group {
                name: name.to_owned(),
                key,
                desc: desc.to_owned(),
                members: BTreeMap::from([(creator, Role::Creator)]),
            },
        );
        Ok(id)
    }

    async fn join_group(&self, group: GroupId, user: UserId) -> StoreResult<()> {
        let mut st = self.state();
        let g = st.groups.get_mut(&group).ok_or(StoreError::NotFound)?;
        if g.members.contains_key(&user) {
            return Err(StoreError::Exists);
        }
        g.members.insert(user, Role::Normal);
        Ok(())
    }

    async fn quit_group(&self, group: GroupId, user: UserId) -> StoreResult<()> {
        let mut st = self.state();
        if st.role_in(group, user)? != Some(Role::Normal) {
            return Err(StoreError::Forbidden);
        }
        if let Some(g) = st.groups.get_mut(&group) {
            g.members.remove(&user);
        }
        Ok(())
    }

    async fn disband_group(&self, group: GroupId, user: UserId) -> StoreResult<Vec<UserId>> {
        let mut st = self.state();
        if st.role_in(group, user)? != Some(Role::Creator) {
            return Err(StoreError::Forbidden);
        }
        let Some(g) = st.groups.remove(&group) else {
            return Err(StoreError::NotFound);
        };
        st.group_names.release(&g.name, &g.key);
        Ok(g.members.into_keys().collect())
    }

    async fn membership(&self, group: GroupId, user: UserId) -> StoreResult<Option<Role>> {
        self.state().role_in(group, user)
    }

    async fn groups_of(&self, user: UserId) -> StoreResult<Vec<GroupInfo>> {
        let st = self.state();
        Ok(st
            .groups
            .iter()
            .filter(|(_, g)| g.members.contains_key(&user))
            .map(|(&id, g)| GroupInfo {
                id,
                name: g.name.clone(),
                desc: g.desc.clone(),
                // As the SQL join with `users`: members without an account
                // are left out.
                members: g
                    .members
                    .iter()
                    .filter_map(|(m, &role)| {
                        st.users.get(m).map(|u| Member {
                            id: u.id,
                            name: u.name.clone(),
                            role,
                        })
                    })
                    .collect(),
            })
            .collect())
    }

    async fn created_count(&self, user: UserId) -> StoreResult<i64> {
        let st = self.state();
        let n = st
            .groups
            .values()
            .filter(|g| g.members.get(&user) == Some(&Role::Creator))
            .count();
        Ok(n as i64)
    }

    async fn member_count(&self, group: GroupId) -> StoreResult<i64> {
        let st = self.state();
        Ok(st.groups.get(&group).map_or(0, |g| g.members.len() as i64))
    }
}

#[async_trait]
impl AdminStore for MemoryStore {
    async fn list_users(&self, after: UserId, limit: i64) -> StoreResult<Vec<UserSummary>> {
        let st = self.state();
        Ok(st
            .users
            .range(after.saturating_add(1)..)
            .take(usize::try_from(limit).unwrap_or(0))
            .map(|(&id, u)| {
                let (created_at, disabled_at) = st.accounts.get(&id).copied().unwrap_or_default();
                UserSummary {
                    id,
                    name: u.name.clone(),
                    created_at,
                    disabled_at,
                }
            })
            .collect())
    }

    async fn set_password(&self, user: UserId, password_hash: &str) -> StoreResult<()> {
        let mut st = self.state();
        st.account(user)?;
        if let Some(u) = st.users.get_mut(&user) {
            u.password_hash = password_hash.to_owned();
        }
        st.tokens.retain(|_, (owner, _)| *owner != user);
        st.events.push((user, AccountChange::PasswordReset));
        Ok(())
    }

    async fn set_disabled(&self, user: UserId, disabled: bool, now: i64) -> StoreResult<bool> {
        let mut st = self.state();
        let account = st.account(user)?;
        if account.1.is_some() == disabled {
            return Ok(false);
        }
        account.1 = disabled.then_some(now);
        if let Some(u) = st.users.get_mut(&user) {
            u.disabled = disabled;
        }
        if disabled {
            st.tokens.retain(|_, (owner, _)| *owner != user);
            st.events.push((user, AccountChange::Disabled));
        }
        Ok(true)
    }

    async fn delete_user(&self, user: UserId) -> StoreResult<DeletedUser> {
        self.state().delete_user(user)
    }

    async fn account_events(&self, after: i64, limit: i64) -> StoreResult<Vec<AccountEvent>> {
        let st = self.state();
        let from = usize::try_from(after.max(0)).unwrap_or(usize::MAX);
        Ok(st
            .events
            .iter()
            .enumerate()
            .skip(from)
            .take(usize::try_from(limit).unwrap_or(0))
            .map(|(i, &(user, change))| AccountEvent {
                id: i as i64 + 1,
                user,
                change: Some(change),
            })
            .collect())
    }

    async fn last_account_event(&self) -> StoreResult<i64> {
        Ok(self.state().events.len() as i64)
    }
}

#[async_trait]
impl MessageStore for MemoryStore {
    async fn commit(&self, ops: Vec<WriteOp>) -> StoreResult<Vec<WriteOutcome>> {
        Ok(self.state().commit(&ops))
    }

    async fn commit_staged(
        &self,
        ops: Vec<WriteOp>,
    ) -> StoreResult<(Vec<WriteOutcome>, super::Durable)> {
        let out = self.state().commit(&ops);
        let held = self.flushes.lock().unwrap_or_else(PoisonError::into_inner);
        let durable = match held.as_ref() {
            Some(flushes) => {
                let (done, rx) = tokio::sync::oneshot::channel();
                let _ = flushes.send(done);
                super::Durable::pending(rx)
            }
            None => super::Durable::ready(),
        };
        Ok((out, durable))
    }

    async fn acked_seq(&self, user: UserId) -> StoreResult<i64> {
        Ok(self.state().counters.get(&user).map_or(0, |c| c.acked_seq))
    }

    async fn undelivered(
        &self,
        user: UserId,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, StoredMessage)>> {
        let st = self.state();
        let acked = st.counters.get(&user).map_or(0, |c| c.acked_seq);
        let Some(inbox) = st.inbox.get(&user) else {
            return Ok(Vec::new());
        };
        Ok(inbox
            .range(after.max(acked).saturating_add(1)..)
            .filter_map(|(&seq, mid)| st.messages.get(mid).map(|m| (seq, m.clone())))
            .take(usize::try_from(limit).unwrap_or(0))
            .collect())
    }

    async fn history(
        &self,
        conv: Conversation,
        before: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<StoredMessage>> {
        let st = self.state();
        let Some(mids) = st.convs.get(&conv.key()) else {
            return Ok(Vec::new());
        };
        Ok(mids
            .range(..before.unwrap_or(i64::MAX))
            .rev()
            .filter_map(|mid| st.messages.get(mid).cloned())
            .take(usize::try_from(limit).unwrap_or(0))
            .collect())
    }

    async fn prune_delivered(
        &self,
        after_user: UserId,
        users: i64,
        per_user: i64,
    ) -> StoreResult<(u64, Option<UserId>)> {
        let mut st = self.state();
        let st = &mut *st;
        let mut batch: Vec<(UserId, i64)> = st
            .counters
            .iter()
            .filter(|(u, _)| **u > after_user)
            .map(|(u, c)| (*u, c.acked_seq))
            .collect();
        batch.sort_unstable();
        batch.truncate(usize::try_from(users.max(1)).unwrap_or(1));
        let mut deleted = 0u64;
        for &(user, acked) in &batch {
            if let Some(inbox) = st.inbox.get_mut(&user) {
                let dead: Vec<i64> = inbox
                    .range(..=acked)
                    .take(usize::try_from(per_user.max(1)).unwrap_or(1))
                    .map(|(s, _)| *s)
                    .collect();
                for s in dead {
                    inbox.remove(&s);
                    deleted += 1;
                }
            }
        }
        Ok((deleted, super::next_user(&batch, users)))
    }

    async fn prune_messages(&self, before: i64, limit: i64) -> StoreResult<u64> {
        let mut st = self.state();
        let pending = st.inbox.values().flat_map(|i| i.values().copied()).min();
        let oldest: Vec<(i64, i64)> = st
            .messages
            .values()
            .take(usize::try_from(limit.max(0)).unwrap_or(0))
            .map(|m| (m.mid, m.time))
            .collect();
        let Some(upto) = super::retention_cut(&oldest, before, pending) else {
            return Ok(0);
        };
        // They may be all of them: new mids still grow from the highest.
        st.mid_floor = st
            .mid_floor
            .max(st.messages.keys().next_back().copied().unwrap_or(0));
        let gone: Vec<i64> = st.messages.range(..=upto).map(|(m, _)| *m).collect();
        for m in &gone {
            st.messages.remove(m);
        }
        Ok(gone.len() as u64)
    }

    async fn prune_tokens(&self, now: i64, limit: i64) -> StoreResult<u64> {
        let mut st = self.state();
        let mut dead: Vec<(i64, String)> = st
            .tokens
            .values()
            .filter(|(_, r)| r.expires_at <= now)
            .map(|(_, r)| (r.expires_at, r.hash.clone()))
            .collect();
        dead.sort_unstable();
        dead.truncate(usize::try_from(limit).unwrap_or(0));
        for (_, h) in &dead {
            st.tokens.remove(h);
        }
        Ok(dead.len() as u64)
    }
}
