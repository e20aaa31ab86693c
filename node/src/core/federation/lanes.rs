//! Forwarding this node's users' commands to the home of their chat
//! (docs/federation.md, "Forwarded actions").
//!
//! One task per home node keeps the actions waiting for it in one lane per
//! sending device ([`Lanes`]), and sends them in signed requests, several at
//! once: up to `federation.max_actions_in_flight` actions are in flight to one
//! home, but a device's actions are in at most one request at a time, and in
//! that request in the order the device sent them. The home applies a
//! request's actions in order, so a device's actions get their seqs in the
//! order it sent them, while different devices' actions share the home's
//! commit groups instead of waiting for each other.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{PeerError, peer_unreachable, refusal_or_unavailable};
use crate::core::writer::{Actor, Op, Outcome};
use crate::core::{Core, CoreError};
use crate::federation::events::{
    ActionBatch, ActionError, ActionOutcome, ActionRequest, ActionResults,
};
use crate::ids::NodeName;
use crate::protocol::{CommandResult, ErrorCode};

/// Actions a node puts in one request to a home (each at most 16 KiB of text,
/// so a request stays far below a peer's 8 MiB body limit).
pub(super) const MAX_ACTIONS_PER_REQUEST: usize = 32;

/// Actions a home takes in one request (more than this node sends, so a
/// newer sender may send more).
pub(super) const MAX_ACTIONS_ACCEPTED: usize = 256;

/// Actions a home's lane task holds waiting; beyond it, forwarding waits
/// (and so does the sending connection), as a full writer queue does.
const MAX_WAITING: usize = 1024;

/// The answer a forwarded command's connection waits for.
pub(super) type Answer = oneshot::Sender<Result<CommandResult, CoreError>>;

/// A command of a local user, forwarded to its chat's home.
pub(super) struct Forward {
    /// The sending device: its actions are applied in the order it sent them.
    pub(super) sender: String,
    pub(super) request: ActionRequest,
    pub(super) answer: Answer,
}

/// Actions waiting for one home, one lane per sender, and which senders have
/// actions in flight. Pure bookkeeping: [`Core::run_lane`] does the sending.
pub(super) struct Lanes<K, T> {
    /// Per sender, its waiting actions in the order it sent them.
    queues: HashMap<K, VecDeque<T>>,
    /// Senders with waiting actions and none in flight, oldest first.
    ready: VecDeque<K>,
    /// Senders with actions in flight.
    busy: HashSet<K>,
    waiting: usize,
    in_flight: usize,
    max_in_flight: usize,
}

impl<K: Eq + Hash + Clone, T> Lanes<K, T> {
    pub(super) fn new(max_in_flight: usize) -> Self {
        Self {
            queues: HashMap::new(),
            ready: VecDeque::new(),
            busy: HashSet::new(),
            waiting: 0,
            in_flight: 0,
            max_in_flight: max_in_flight.max(1),
        }
    }

    /// Queues an action of `sender`, after its earlier ones.
    pub(super) fn push(&mut self, sender: K, item: T) {
        let queue = self.queues.entry(sender.clone()).or_default();
        if queue.is_empty() && !self.busy.contains(&sender) {
            self.ready.push_back(sender);
        }
        queue.push_back(item);
        self.waiting += 1;
    }

    pub(super) fn waiting(&self) -> usize {
        self.waiting
    }

    /// The actions of the next request, if any may go: from senders with
    /// nothing in flight (oldest first), each sender's in its order, at most
    /// `max` and what `max_in_flight` leaves room for. They are in flight
    /// until [`Lanes::done`].
    pub(super) fn next_request(&mut self, max: usize) -> Option<Vec<(K, T)>> {
        let room = self.max_in_flight.saturating_sub(self.in_flight).min(max);
        let mut taken = Vec::new();
        while taken.len() < room {
            let Some(sender) = self.ready.pop_front() else {
                break;
            };
            let Some(queue) = self.queues.get_mut(&sender) else {
                continue;
            };
            while taken.len() < room {
                match queue.pop_front() {
                    Some(item) => taken.push((sender.clone(), item)),
                    None => break,
                }
            }
            if queue.is_empty() {
                self.queues.remove(&sender);
            }
            self.busy.insert(sender);
        }
        if taken.is_empty() {
            return None;
        }
        self.waiting -= taken.len();
        self.in_flight += taken.len();
        Some(taken)
    }

    /// A request with these senders' `n` actions is answered: their next
    /// actions may go.
    pub(super) fn done(&mut self, senders: impl IntoIterator<Item = K>, n: usize) {
        self.in_flight = self.in_flight.saturating_sub(n);
        for sender in senders {
            if self.busy.remove(&sender) && self.queues.contains_key(&sender) {
                self.ready.push_back(sender);
            }
        }
    }
}

/// One request's outcome: its senders and how many actions it had.
type Flown = (Vec<String>, usize);

impl Core {
    /// Sends forwarded commands to `home`, several requests at once, each
    /// device's in order (see the module's comment).
    pub(super) async fn run_lane(
        self,
        home: NodeName,
        mut rx: mpsc::Receiver<Forward>,
        cancel: CancellationToken,
    ) {
        let mut lanes = Lanes::new(self.fed().config.max_actions_in_flight);
        let mut flights = FuturesUnordered::new();
        let mut open = true;
        loop {
            while let Some(batch) = lanes.next_request(MAX_ACTIONS_PER_REQUEST) {
                flights.push(self.clone().fly(home.clone(), batch));
            }
            if !open && flights.is_empty() {
                return;
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                next = rx.recv(), if open && lanes.waiting() < MAX_WAITING => match next {
                    Some(f) => lanes.push(f.sender, (f.request, f.answer)),
                    None => open = false,
                },
                Some((senders, n)) = flights.next() => lanes.done(senders, n),
            }
        }
    }

    /// Sends one request's actions and answers each one's connection.
    async fn fly(self, home: NodeName, batch: Vec<(String, (ActionRequest, Answer))>) -> Flown {
        let n = batch.len();
        let mut senders = Vec::with_capacity(n);
        let mut requests = Vec::with_capacity(n);
        let mut answers = Vec::with_capacity(n);
        for (sender, (request, answer)) in batch {
            senders.push(sender);
            requests.push(request);
            answers.push(answer);
        }
        let results = self.send_actions(&home, requests).await;
        for (answer, result) in answers.into_iter().zip(results) {
            let _ = answer.send(result);
        }
        senders.dedup();
        (senders, n)
    }

    /// Sends actions to `home` in one request (the single form for one, a
    /// batch for more); one result per action, in order.
    async fn send_actions(
        &self,
        home: &NodeName,
        mut requests: Vec<ActionRequest>,
    ) -> Vec<Result<CommandResult, CoreError>> {
        let n = requests.len();
        let sent = if n == 1 {
            let request = requests.pop().expect("one action");
            self.post_to_home(home, &request).await.map(|r| vec![Ok(r)])
        } else {
            let batch = ActionBatch { actions: requests };
            self.post_to_home(home, &batch)
                .await
                .and_then(|r: ActionResults| outcomes(r, n))
        };
        sent.unwrap_or_else(|e| spread(&e, n))
    }

    /// POSTs forwarded actions to `home`; answers `unavailable` at once when
    /// the home failed again and again within the last request timeout.
    async fn post_to_home<T: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        home: &NodeName,
        body: &T,
    ) -> Result<R, CoreError> {
        let name = home.clone();
        let peer = self.read(move |view| Ok(view.peer(&name)?)).await?;
        let Some(peer) = peer else {
            return Err(CoreError::Unavailable(format!(
                "this chat's home {home} is no longer a peer of this node"
            )));
        };
        let now = self.inner.clock.now_ms();
        // A home that failed again and again is not waited for: the client is
        // told at once and retries (its clientMsgId makes that safe).
        let probe = crate::clock::millis(self.fed().config.request_timeout);
        if let Some(h) = self.fed().health().get(home)
            && h.failures >= 3
            && h.failed_at.is_some_and(|at| now - at < probe)
        {
            return Err(CoreError::Unavailable(format!(
                "this chat's home {home} is unreachable; retry shortly"
            )));
        }
        if let Err(e) = self.announce_key(home, &peer.url).await {
            self.failed(home, &e);
            return Err(peer_unreachable(&e));
        }
        let key = self.fed().signing_key();
        let path = "/federation/v1/actions";
        match self
            .fed()
            .client
            .post(&key, home, &peer.url, path, body, now)
            .await
        {
            Ok(result) => {
                self.succeeded(home);
                Ok(result)
            }
            Err(e) => {
                if matches!(e, PeerError::Unreachable { .. }) {
                    self.failed(home, &e);
                }
                Err(refusal_or_unavailable(e))
            }
        }
    }

    /// A peer's user acts in a chat whose home is this node.
    pub async fn act(
        &self,
        origin: &NodeName,
        request: ActionRequest,
    ) -> Result<CommandResult, CoreError> {
        match self.write(remote_op(origin, request)?).await? {
            Outcome::Command(result) => Ok(result),
            other => Err(crate::core::unexpected(other)),
        }
    }

    /// A peer's users act, several actions in one request: all are queued for
    /// the writer in their order (so they may share commit groups) before the
    /// first is awaited; one outcome each, in order.
    pub async fn act_batch(
        &self,
        origin: &NodeName,
        batch: ActionBatch,
    ) -> Result<ActionResults, CoreError> {
        if batch.actions.len() > MAX_ACTIONS_ACCEPTED {
            return Err(CoreError::reject(
                ErrorCode::BadRequest,
                format!("at most {MAX_ACTIONS_ACCEPTED} actions in one request"),
            ));
        }
        let mut queued = Vec::with_capacity(batch.actions.len());
        for request in batch.actions {
            queued.push(match remote_op(origin, request) {
                Ok(op) => Ok(self.enqueue(op).await?),
                Err(e) => Err(e),
            });
        }
        let mut results = Vec::with_capacity(queued.len());
        for q in queued {
            let outcome = match q {
                Ok(rx) => match rx.await.map_err(|_| CoreError::Stopped) {
                    Ok(Ok(Outcome::Command(result))) => Ok(result),
                    Ok(Ok(other)) => Err(crate::core::unexpected(other)),
                    Ok(Err(e)) | Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            results.push(match outcome {
                Ok(result) => ActionOutcome::Result(result),
                Err(e) => {
                    if !matches!(e, CoreError::Rejected { .. }) {
                        tracing::error!(peer = %origin, error = %e, "a forwarded action failed");
                    }
                    ActionOutcome::Error(ActionError {
                        code: e.code().as_str().to_owned(),
                        message: e.public_message(),
                    })
                }
            });
        }
        Ok(ActionResults { results })
    }
}

/// The writer's operation for a peer's user's action, checked like a client's
/// frame.
fn remote_op(origin: &NodeName, request: ActionRequest) -> Result<Op, CoreError> {
    if &request.actor.node != origin {
        return Err(CoreError::reject(
            ErrorCode::Forbidden,
            "a node acts only for its own users",
        ));
    }
    let (command, device) = super::remote_command(request.action, origin)?;
    let actor = Actor::Remote {
        user: request.actor,
        device,
    };
    Ok(Op::Command { actor, command })
}

/// A batch's answer as one result per action.
fn outcomes(
    answer: ActionResults,
    n: usize,
) -> Result<Vec<Result<CommandResult, CoreError>>, CoreError> {
    if answer.results.len() != n {
        return Err(CoreError::Internal(format!(
            "the home answered {} results for {n} actions",
            answer.results.len()
        )));
    }
    Ok(answer
        .results
        .into_iter()
        .map(|outcome| match outcome {
            ActionOutcome::Result(result) => Ok(result),
            ActionOutcome::Error(e) => Err(coded(&e.code, e.message)),
        })
        .collect())
}

/// An error with a code as a peer spelled it (unknown codes: `internal`).
fn coded(code: &str, message: String) -> CoreError {
    let code = serde_json::from_value(serde_json::Value::String(code.to_owned()))
        .unwrap_or(ErrorCode::Internal);
    match code {
        ErrorCode::Unavailable => CoreError::Unavailable(message),
        code => CoreError::reject(code, message),
    }
}

/// One error for each of a request's `n` actions.
fn spread(e: &CoreError, n: usize) -> Vec<Result<CommandResult, CoreError>> {
    if !matches!(e, CoreError::Rejected { .. } | CoreError::Unavailable(_)) {
        tracing::warn!(error = %e, "forwarding actions failed");
    }
    let message = e.public_message();
    (0..n)
        .map(|_| Err(coded(e.code().as_str(), message.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Lanes;

    fn taken(lanes: &mut Lanes<&'static str, u32>, max: usize) -> Vec<(&'static str, u32)> {
        lanes.next_request(max).unwrap_or_default()
    }

    #[test]
    fn a_senders_actions_go_in_order_one_request_at_a_time() {
        let mut lanes = Lanes::new(64);
        lanes.push("a", 1);
        lanes.push("a", 2);
        lanes.push("b", 1);
        assert_eq!(taken(&mut lanes, 32), [("a", 1), ("a", 2), ("b", 1)]);
        // a and b are in flight: their next actions wait for that request.
        lanes.push("a", 3);
        lanes.push("b", 2);
        lanes.push("c", 1);
        assert_eq!(taken(&mut lanes, 32), [("c", 1)]);
        assert!(lanes.next_request(32).is_none());
        lanes.done(["a", "b"], 3);
        assert_eq!(taken(&mut lanes, 32), [("a", 3), ("b", 2)]);
        assert_eq!(lanes.waiting(), 0);
    }

    #[test]
    fn a_full_request_leaves_the_rest_of_a_lane_for_later() {
        let mut lanes = Lanes::new(64);
        for i in 1..=5 {
            lanes.push("a", i);
        }
        lanes.push("b", 1);
        assert_eq!(taken(&mut lanes, 3), [("a", 1), ("a", 2), ("a", 3)]);
        // a is in flight; b may go, a's rest may not.
        assert_eq!(taken(&mut lanes, 3), [("b", 1)]);
        assert!(lanes.next_request(3).is_none());
        lanes.done(["a"], 3);
        assert_eq!(taken(&mut lanes, 3), [("a", 4), ("a", 5)]);
    }

    #[test]
    fn at_most_max_in_flight_actions_are_in_flight() {
        let mut lanes = Lanes::new(2);
        for sender in ["a", "b", "c"] {
            lanes.push(sender, 1);
        }
        assert_eq!(taken(&mut lanes, 32), [("a", 1), ("b", 1)]);
        assert!(lanes.next_request(32).is_none(), "two in flight");
        lanes.done(["a"], 1);
        assert_eq!(taken(&mut lanes, 32), [("c", 1)]);
        lanes.done(["b"], 1);
        lanes.done(["c"], 1);
        assert!(lanes.next_request(32).is_none());
        assert_eq!(lanes.waiting(), 0);
    }

    #[test]
    fn one_in_flight_is_the_old_single_lane() {
        let mut lanes = Lanes::new(1);
        lanes.push("a", 1);
        lanes.push("b", 1);
        lanes.push("a", 2);
        let mut order = Vec::new();
        while let Some(batch) = lanes.next_request(32) {
            assert_eq!(batch.len(), 1);
            order.extend(batch.iter().copied());
            lanes.done(batch.into_iter().map(|(s, _)| s), 1);
        }
        assert_eq!(order, [("a", 1), ("b", 1), ("a", 2)]);
    }
}
