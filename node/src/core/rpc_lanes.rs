//! One lane per device for the commands that reach the core over NATS.
//!
//! A command's in-order part (`Core::dispatch` up to queueing it on the writer)
//! may wait on the object store: a send's uploads are checked with a HEAD per
//! attachment. Done in the RPC loop, one slow object store would stall every
//! gateway's requests. Here each device's commands go to its own lane, a task
//! that carries them out one after another, so one device's commands keep
//! their order while every other device goes on.
//!
//! Bounds: at most `limits.rpc_lanes` devices have a lane at once (more answer
//! `unavailable`), and a lane holds at most `limits.rpc_lane_commands` commands
//! (more answer `rate_limited`). A lane ends as soon as it is empty, so idle
//! devices cost nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::rpc::{Answer, Request, Response, answered};
use super::{Core, CoreError};
use crate::ids::DeviceId;
use crate::metrics::METRICS;

/// The defaults of `limits.rpc_lanes` and `limits.rpc_lane_commands`.
pub const DEFAULT_LANES: usize = 10_000;
pub const DEFAULT_LANE_COMMANDS: usize = 256;

/// When a device whose lane is full may try again.
const FULL_RETRY_MS: u64 = 100;

/// A command waiting in a lane, and where its answer goes.
type Job = (Request, oneshot::Sender<Answer<Response>>);

#[derive(Clone)]
pub(crate) struct RpcLanes {
    inner: Arc<Inner>,
}

struct Inner {
    core: Core,
    /// Jobs are queued with this lock held, and a lane leaves the map with it
    /// held once it is empty: nothing is queued on a lane that has ended.
    lanes: Mutex<HashMap<DeviceId, mpsc::Sender<Job>>>,
    max_lanes: usize,
    depth: usize,
}

impl RpcLanes {
    pub(crate) fn new(core: Core) -> Self {
        let config = core.config();
        let (max_lanes, depth) = (config.rpc_lanes.max(1), config.rpc_lane_commands.max(1));
        Self {
            inner: Arc::new(Inner {
                core,
                lanes: Mutex::default(),
                max_lanes,
                depth,
            }),
        }
    }

    /// Queues `request` (a `Dispatch`) on its device's lane, behind that
    /// device's earlier commands. Returns at once; the answer comes later.
    pub(crate) fn submit(&self, device: DeviceId, request: Request) -> Answer<Response> {
        let (reply, answer) = oneshot::channel();
        if let Err(e) = self.queue(device, (request, reply)) {
            return answered(Err(e));
        }
        Box::pin(async move { answer.await.map_err(|_| CoreError::Stopped)?.await })
    }

    fn queue(&self, device: DeviceId, job: Job) -> Result<(), CoreError> {
        let mut lanes = self.inner.lanes.lock().unwrap_or_else(|e| e.into_inner());
        let lane = match lanes.get(&device) {
            Some(lane) => lane.clone(),
            None => {
                if lanes.len() >= self.inner.max_lanes {
                    return Err(CoreError::Unavailable(
                        "the node is busy; retry shortly".into(),
                    ));
                }
                let (tx, rx) = mpsc::channel(self.inner.depth);
                lanes.insert(device, tx.clone());
                METRICS.rpc_lanes.set(lanes.len() as i64);
                tokio::spawn(self.clone().run(device, rx));
                tx
            }
        };
        lane.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => CoreError::RateLimited {
                message: "too many commands of this device waiting; slow down".into(),
                retry_after_ms: FULL_RETRY_MS,
            },
            mpsc::error::TrySendError::Closed(_) => CoreError::Stopped,
        })
    }

    /// Carries out a lane's commands in order until it is empty.
    async fn run(self, device: DeviceId, mut rx: mpsc::Receiver<Job>) {
        loop {
            let (request, reply) = match rx.try_recv() {
                Ok(job) => job,
                Err(mpsc::error::TryRecvError::Empty) => {
                    let mut lanes = self.inner.lanes.lock().unwrap_or_else(|e| e.into_inner());
                    if rx.is_empty() {
                        lanes.remove(&device);
                        METRICS.rpc_lanes.set(lanes.len() as i64);
                        return;
                    }
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            };
            // The in-order part; the answer is awaited by the reply's task.
            let answer = self.inner.core.handle(request).await;
            let _ = reply.send(answer);
        }
    }
}
