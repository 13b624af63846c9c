//! A member's decisions, sans-IO: each entry of its checked log that a quorum-cosigned
//! checkpoint covers goes in, in order, and actions come out (contribute, release, send the
//! partial, try to combine, log an incident). The daemon carries the actions out and tells the
//! machine what it learned (a model it combined, an incident another member sent); the
//! machine holds no sockets, files or clocks, so every decision is a deterministic test.
//!
//! The rules it applies are the protocol's: [`check_contribution`] for contributing (only from
//! the model this member verified, never twice from a released model), and the release policy
//! the daemon runs on [`Action::Release`] with the same [`HeldModel`].

use std::collections::BTreeMap;

use protocol::audit::entry::{Body, Digest, IncidentCode, Membership, SignedEntry};
use protocol::round::RoundPlan;
use protocol::round::incidents::{HeardError, HeardIncidents, declining_evidence};
use protocol::round::policy::{HeldModel, Refusal, check_contribution};

/// How many rounds back a member that was away can still catch up: the members keep the
/// partial decryptions they released for the rounds some member has not combined, up to this
/// many (a member further behind sits rounds out until it is rebuilt).
pub const MAX_LAG_ROUNDS: u64 = 8;

/// A decryption the member follows: the quorum and the share digests its members logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decryption {
    pub quorum: Vec<u8>,
    pub ciphertext: Digest,
    pub round: u64,
    pub logged_shares: BTreeMap<u8, Digest>,
}

impl Decryption {
    /// Every quorum member logged its release. Nothing is combined before: a member outside
    /// the quorum takes the request's ciphertext on the word of these releases, each made on
    /// a recomputation of it (`protocol::round::Obtain::Fetch`), so all of them must be in.
    pub fn released_by_whole_quorum(&self) -> bool {
        self.quorum
            .iter()
            .all(|member| self.logged_shares.contains_key(member))
    }
}

/// What the daemon is to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A round opened: what requests before leaf `before` (the previous round's open) fetched
    /// or buffered can go.
    Forget { before: u64 },
    /// Train and contribute to `round` (every check passed).
    Contribute { round: u64 },
    /// Judge the request at leaf `request` under the release policy and, if it passes,
    /// release this member's partial decryption.
    Release { request: u64 },
    /// A request whose quorum this member is not in: fetch its ciphertext now, while the
    /// quorum releases, so that combining waits only for the partials.
    Prepare { request: u64 },
    /// This member's release for `request` is in a cosigned checkpoint: its partial (which
    /// must hash to `share`) may now go to the other members.
    SendPartial { request: u64, share: Digest },
    /// A quorum member's release for `request` is logged: combine once every partial is here.
    TryCombine { request: u64 },
    /// Log an incident (and send it to every other member).
    Incident {
        code: IncidentCode,
        evidence: Digest,
        description: String,
    },
}

/// One member's decision state.
#[derive(Clone, Debug)]
pub struct Member {
    me: u8,
    membership: Membership,
    plan: RoundPlan,
    held: HeldModel,
    decryptions: BTreeMap<u64, Decryption>,
    heard: HeardIncidents,
    /// Entries below this leaf were acted on before a restart.
    replay_until: u64,
    /// The leaf of the latest round open: what came before the one before it can be forgotten
    /// (the previous round's partial decryptions are kept, for members that ask again).
    last_open: u64,
    /// Every round open seen, by round: its leaf.
    opens: BTreeMap<u64, u64>,
    /// The round of each member's latest logged decryption result.
    last_results: BTreeMap<u8, u64>,
    /// A round open this member is expected in, waiting for it to finish combining the
    /// decryption of the round the open builds on (a coordinator restarted between the
    /// releases and the members' results opens the next round at once).
    waiting_open: Option<u64>,
}

impl Member {
    /// A member holding `held`, whose log's first `replay_until` entries it acted on before.
    pub fn new(
        me: u8,
        membership: Membership,
        plan: RoundPlan,
        held: HeldModel,
        replay_until: u64,
    ) -> Self {
        Self {
            me,
            membership,
            plan,
            held,
            decryptions: BTreeMap::new(),
            heard: HeardIncidents::new(),
            replay_until,
            last_open: 0,
            opens: BTreeMap::new(),
            last_results: BTreeMap::new(),
            waiting_open: None,
        }
    }

    pub fn held(&self) -> &HeldModel {
        &self.held
    }

    /// The member combined the decryption of `held.round` and holds its model now (`log` is
    /// its checked log): a round open that waited for this model is decided again.
    pub fn combined(&mut self, log: &[SignedEntry], held: HeldModel) -> Vec<Action> {
        self.held = held;
        match self.waiting_open.take() {
            Some(open) => self.decide_contribution(log, open),
            None => Vec::new(),
        }
    }

    pub fn decryption(&self, request: u64) -> Option<&Decryption> {
        self.decryptions.get(&request)
    }

    /// Whether this member expects to be in the quorum of the next request. The coordinator
    /// names the lowest-indexed `threshold` members that are connected and have not failed
    /// (`RoundMachine::choose_quorum`), so the latest request's quorum is likely named again,
    /// and before any request the lowest-indexed members are. A hint for work done ahead of
    /// the request (the daemon's `preload`), never a decision: whether this member releases
    /// is judged on the request itself.
    pub fn expects_to_release(&self) -> bool {
        match self.decryptions.values().next_back() {
            Some(latest) => latest.quorum.contains(&self.me),
            None => self.me < self.membership.threshold,
        }
    }

    /// Whether a decryption of `round` was requested already.
    pub fn requested(&self, round: u64) -> bool {
        self.decryptions.values().any(|d| d.round == round)
    }

    /// The requests of rounds after the one whose model the member holds: once it combines a
    /// decryption it missed, the next may become combinable.
    pub fn later_decryptions(&self) -> Vec<u64> {
        self.decryptions
            .iter()
            .filter(|(_, d)| d.round > self.held.round)
            .map(|(request, _)| *request)
            .collect()
    }

    fn author(&self, entry: &SignedEntry) -> Option<u8> {
        self.membership
            .members
            .iter()
            .position(|m| m.signing_key == entry.entry.author)
            .map(|i| i as u8)
    }

    /// Whether this member already did its part for the entry at `index`, judged on its log
    /// (after a restart): it contributed to the round (or the round closed, or a later one
    /// opened), released for the request, or logged the request's result.
    fn already_handled(&self, log: &[SignedEntry], index: u64, entry: &SignedEntry) -> bool {
        let mine = |e: &SignedEntry| self.author(e) == Some(self.me);
        match &entry.entry.body {
            Body::RoundOpen { round, .. } => log.iter().any(|e| match &e.entry.body {
                Body::Contribution { round: r, .. } => r == round && mine(e),
                Body::RoundClose { round: r, .. } => r == round,
                Body::RoundOpen { round: r, .. } => r > round,
                _ => false,
            }),
            Body::DecryptionRequest { .. } => log.iter().any(|e| match &e.entry.body {
                Body::DecryptionResult { request, .. } | Body::ShareReleased { request, .. } => {
                    *request == index && mine(e)
                }
                _ => false,
            }),
            // Under a server optimizer the member's part ends with its logged step.
            Body::ShareReleased { request, .. } => log.iter().any(|e| {
                let done = match &e.entry.body {
                    Body::DecryptionResult { request: r, .. } => {
                        r == request && self.plan.optimizer.is_fedavg()
                    }
                    Body::ServerStep { request: r, .. } => r == request,
                    _ => false,
                };
                done && mine(e)
            }),
            _ => false,
        }
    }

    /// Decides what to do about the entry at `index` of `log` (the member's checked log; the
    /// entry and everything before it are covered by a quorum-cosigned checkpoint).
    pub fn on_entry(&mut self, log: &[SignedEntry], index: u64) -> Vec<Action> {
        let Some(entry) = log.get(index as usize) else {
            return Vec::new();
        };
        // A round open retires what no member can still need: the decryptions before the
        // previous round's, and before the oldest round some member has not combined yet
        // (at most MAX_LAG_ROUNDS back), stay for members that missed them and ask again.
        let forget_before = match entry.entry.body {
            Body::RoundOpen { round, .. } => {
                self.opens.insert(round, index);
                let previous = std::mem::replace(&mut self.last_open, index);
                Some(self.forget_before(round, previous))
            }
            _ => None,
        };
        if let Body::DecryptionResult { request, .. } = &entry.entry.body
            && let (Some(member), Some(d)) = (self.author(entry), self.decryptions.get(request))
        {
            let latest = self.last_results.entry(member).or_default();
            *latest = (*latest).max(d.round);
        }
        let handled = index < self.replay_until && self.already_handled(log, index, entry);
        // A request is followed even when replayed, so that the member can still combine it.
        if handled && !matches!(entry.entry.body, Body::DecryptionRequest { .. }) {
            return Vec::new();
        }
        let mut actions = Vec::new();
        match &entry.entry.body {
            Body::RoundOpen {
                round, expected, ..
            } => {
                if let Some(before) = forget_before {
                    actions.push(Action::Forget { before });
                }
                if entry.entry.payload != Some(self.plan.digest()) {
                    actions.push(Action::Incident {
                        code: IncidentCode::RoundUnderOtherPlan,
                        evidence: [0; 32],
                        description: format!(
                            "round {round} opened under another round plan; not contributing"
                        ),
                    });
                    return actions;
                }
                // A round that waited for a decryption this member never finished: it sat
                // that round out, and says so.
                if let Some(open) = self.waiting_open.take() {
                    actions.extend(self.refuse_contribution(log, open));
                }
                if expected & (1 << self.me) == 0 {
                    return actions;
                }
                actions.extend(self.decide_contribution(log, index));
            }
            Body::DecryptionRequest {
                round,
                ciphertext,
                quorum,
                ..
            } => {
                let members = (0..self.membership.members.len() as u8)
                    .filter(|m| quorum & (1 << m) != 0)
                    .collect();
                self.decryptions.insert(
                    index,
                    Decryption {
                        quorum: members,
                        ciphertext: *ciphertext,
                        round: *round,
                        logged_shares: BTreeMap::new(),
                    },
                );
                if !handled {
                    actions.push(if quorum & (1 << self.me) != 0 {
                        Action::Release { request: index }
                    } else {
                        Action::Prepare { request: index }
                    });
                }
            }
            Body::ShareReleased { request, share, .. } => {
                let Some(member) = self.author(entry) else {
                    return actions;
                };
                if let Some(d) = self.decryptions.get_mut(request) {
                    d.logged_shares.insert(member, *share);
                }
                // This member's own release, now covered by a cosigned checkpoint: only now
                // does its partial leave, so a coordinator that acknowledges a release without
                // logging it gets nothing sent (after a restart, the same bytes again).
                if member == self.me {
                    actions.push(Action::SendPartial {
                        request: *request,
                        share: *share,
                    });
                }
                actions.push(Action::TryCombine { request: *request });
            }
            Body::ServerStep { request, base, .. } => {
                // Members that stepped one decryption differently: every honest member computes
                // the same bits, so someone is lying or broken, and everyone should know.
                let step = |body: &Body| match body {
                    Body::ServerStep {
                        request: r,
                        model,
                        base,
                        ..
                    } if r == request => Some((*model, *base)),
                    _ => None,
                };
                actions.extend(self.disagreement(
                    log,
                    index,
                    step,
                    IncidentCode::OtherStep,
                    *base,
                    format!("logged another server step than this member for request {request}"),
                ));
            }
            Body::DecryptionResult { request, model, .. } => {
                // Members that decoded different models for one request: someone is lying or
                // broken, and everyone should know.
                let result = |body: &Body| match body {
                    Body::DecryptionResult {
                        request: r, model, ..
                    } if r == request => Some(*model),
                    _ => None,
                };
                actions.extend(self.disagreement(
                    log,
                    index,
                    result,
                    IncidentCode::OtherModel,
                    *model,
                    format!("decoded another model than this member for request {request}"),
                ));
            }
            _ => {}
        }
        actions
    }

    /// The incident naming the author of the entry at `index` when what it logged (`of`, for
    /// its body) differs from what this member logged itself for the same request: a result
    /// or a server step, which every honest member computes alike. `what` says how.
    fn disagreement<T: PartialEq>(
        &self,
        log: &[SignedEntry],
        index: u64,
        of: impl Fn(&Body) -> Option<T>,
        code: IncidentCode,
        evidence: Digest,
        what: String,
    ) -> Option<Action> {
        let entry = log.get(index as usize)?;
        let theirs = of(&entry.entry.body)?;
        let author = self.author(entry)?;
        let mine = log
            .iter()
            .filter(|e| self.author(e) == Some(self.me))
            .find_map(|e| of(&e.entry.body))?;
        (author != self.me && mine != theirs && index >= self.replay_until).then(|| {
            Action::Incident {
                code,
                evidence,
                description: format!("member {author} {what}"),
            }
        })
    }

    /// What a round open at `round` retires: everything before the previous round's open
    /// (`previous`) and before the round after the oldest model a member holds, but never
    /// what is newer than [`MAX_LAG_ROUNDS`] rounds back.
    fn forget_before(&self, round: u64, previous: u64) -> u64 {
        let members = self.membership.members.len() as u8;
        let oldest_held = (0..members)
            .map(|m| self.last_results.get(&m).copied().unwrap_or(0))
            .min()
            .unwrap_or(0);
        let keep_from = (oldest_held + 1).max(round.saturating_sub(MAX_LAG_ROUNDS));
        self.opens
            .range(keep_from..)
            .next()
            .map_or(previous, |(_, &open)| open.min(previous))
    }

    /// Whether to contribute to the round opened at `open`: only from the model this member
    /// verified itself, and never a second time from a model whose round was released (a
    /// stale-model replay). A round built on the aggregate of a round whose decryption this
    /// member follows but has not combined yet waits for it.
    fn decide_contribution(&mut self, log: &[SignedEntry], open: u64) -> Vec<Action> {
        let Some(Body::RoundOpen { round, base, .. }) =
            log.get(open as usize).map(|e| &e.entry.body)
        else {
            return Vec::new();
        };
        match check_contribution(
            &log[..=open as usize],
            &self.membership,
            &self.plan,
            self.me,
            open,
            &self.held,
        ) {
            Ok(()) => vec![Action::Contribute { round: *round }],
            Err(Refusal::UnverifiedBase { .. }) if self.combining(log, base) => {
                self.waiting_open = Some(open);
                Vec::new()
            }
            Err(refusal) => vec![Self::refusal_incident(*round, open, refusal)],
        }
    }

    /// The incident for not contributing to the round opened at `open`, with the reason.
    fn refuse_contribution(&self, log: &[SignedEntry], open: u64) -> Vec<Action> {
        let Some(Body::RoundOpen { round, .. }) = log.get(open as usize).map(|e| &e.entry.body)
        else {
            return Vec::new();
        };
        match check_contribution(
            &log[..=open as usize],
            &self.membership,
            &self.plan,
            self.me,
            open,
            &self.held,
        ) {
            Ok(()) => Vec::new(),
            Err(refusal) => vec![Self::refusal_incident(*round, open, refusal)],
        }
    }

    /// The incident saying this member does not contribute to `round` (opened at `open`).
    fn refusal_incident(round: u64, open: u64, refusal: Refusal) -> Action {
        Action::Incident {
            code: refusal.code(),
            evidence: declining_evidence(open),
            description: format!("not contributing to round {round}: {refusal}"),
        }
    }

    /// Whether `aggregate` is the aggregate of a logged round (or, under a server optimizer,
    /// a step logged for its decryption) whose decryption this member follows and has not
    /// combined.
    fn combining(&self, log: &[SignedEntry], aggregate: &Digest) -> bool {
        // Every entry naming it counts (a colluder may log a step naming it for another
        // request first).
        log.iter()
            .filter_map(|e| match &e.entry.body {
                Body::RoundClose {
                    round,
                    aggregate: a,
                    ..
                } if a == aggregate => Some(*round),
                Body::ServerStep { request, base, .. } if base == aggregate => {
                    self.decryptions.get(request).map(|d| d.round)
                }
                _ => None,
            })
            .any(|round| {
                round > self.held.round && self.decryptions.values().any(|d| d.round == round)
            })
    }

    /// Keeps an incident member `sender` sent directly, until the log accounts for it; `next`
    /// is the sequence number the member's log expects from the sender.
    pub fn hear_incident(
        &mut self,
        sender: u8,
        entry: SignedEntry,
        next: u64,
    ) -> Result<(), HeardError> {
        self.heard.hear(&self.membership, sender, entry, next)
    }

    /// After acting on a checkpoint over `log`: an incident heard directly whose author's
    /// sequence number went to another entry was dropped by the coordinator.
    pub fn after_checkpoint(&mut self, log: &[SignedEntry]) -> Vec<Action> {
        self.heard
            .reconcile(&self.membership, log)
            .into_iter()
            .map(|d| {
                let quoted: String = d.description.chars().take(200).collect();
                Action::Incident {
                    code: IncidentCode::DroppedIncident,
                    evidence: d.evidence,
                    description: format!(
                        "member {}'s incident {} (sequence {}: {quoted:?}) is not in the log, \
                         which gave that sequence to another of its entries: the coordinator \
                         dropped it, or the member signed two entries with one number",
                        d.member, d.code, d.sequence
                    ),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
