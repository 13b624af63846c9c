//! Every member's state machine in one process, with a router between them: used for
//! rehearsals on one machine and by tests, which pass a `route` function that may drop or
//! alter messages on their way.

use std::collections::VecDeque;

use ed25519_dalek::SigningKey;
use protocol::consortium::Consortium;
use rand_chacha::ChaCha20Rng;

use crate::machine::{Abort, Incoming, Outcome, Participant, Step};
use crate::message::Message;

/// What each member ended with, and every message that was broadcast.
#[derive(Debug)]
pub struct LocalRun {
    pub outcomes: Vec<Option<Outcome>>,
    pub aborts: Vec<Option<Abort>>,
    pub sent: Vec<Message>,
}

/// Runs a ceremony among `keys.len()` members. `route(to, message)` delivers (returning true,
/// possibly after altering the message) or drops it. Members still waiting when no message is
/// left have timed out.
pub fn run_in_process(
    consortium: &Consortium,
    keys: &[SigningKey],
    rngs: &mut [ChaCha20Rng],
    route: &mut dyn FnMut(u8, &mut Incoming) -> bool,
) -> Result<LocalRun, Abort> {
    let n = keys.len();
    let mut queue = VecDeque::new();
    let mut participants = Vec::with_capacity(n);
    for (i, key) in keys.iter().enumerate() {
        let (participant, outgoing) =
            Participant::start(consortium.clone(), i as u8, key.clone(), &mut rngs[i])?;
        participants.push(participant);
        queue.push_back(outgoing);
    }
    let mut run = LocalRun {
        outcomes: (0..n).map(|_| None).collect(),
        aborts: (0..n).map(|_| None).collect(),
        sent: Vec::new(),
    };
    while let Some(outgoing) = queue.pop_front() {
        run.sent.push(outgoing.message.clone());
        for to in 0..n {
            if run.outcomes[to].is_some() || run.aborts[to].is_some() {
                continue;
            }
            let mut incoming = Incoming {
                message: outgoing.message.clone(),
                attachment: outgoing
                    .attachments
                    .iter()
                    .find(|(r, _)| usize::from(*r) == to)
                    .map(|(_, blob)| blob.clone()),
            };
            if !route(to as u8, &mut incoming) {
                continue;
            }
            match participants[to].receive(incoming, &mut rngs[to]) {
                Ok(Step::Send(messages)) => queue.extend(messages),
                Ok(Step::Done(outcome)) => run.outcomes[to] = Some(*outcome),
                Err(abort) => run.aborts[to] = Some(abort),
            }
        }
    }
    for (to, participant) in participants.iter().enumerate() {
        if run.outcomes[to].is_none() && run.aborts[to].is_none() {
            run.aborts[to] = Some(participant.timeout());
        }
    }
    Ok(run)
}
