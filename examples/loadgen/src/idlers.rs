//! Idle connections: opened, then each read by its own task until closed. They
//! get no events; reading is what answers the node's pings, so they stay
//! connected as a real idle app would. `idle` measures what they cost, and
//! `fanout --idle-devices` keeps them connected beside the chat.

use anyhow::Result;
use futures_util::{StreamExt, stream};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::node::Node;
use crate::report;
use crate::ws::Conn;

/// The open idle connections, one task each.
pub(crate) struct Idlers {
    tasks: JoinSet<Result<()>>,
}

impl Idlers {
    /// Opens one connection per token, `concurrency` at a time, spread over the
    /// node's client processes, and hands each, once ready, to a task that keeps
    /// reading it. Also returns how long each took, from the TCP connect to
    /// `ready`.
    pub(crate) async fn open(
        node: &Node,
        tokens: &[String],
        concurrency: usize,
    ) -> Result<(Self, Histogram<u64>)> {
        let mut connecting = stream::iter(tokens.iter().enumerate())
            .map(|(k, token)| async move {
                let started = Instant::now();
                let conn = Conn::connect(node.ws_url(k), token).await?;
                anyhow::Ok((conn, started.elapsed()))
            })
            .buffer_unordered(concurrency);
        let mut tasks = JoinSet::new();
        let mut connect_us = report::latency_histogram();
        while let Some(connected) = connecting.next().await {
            let (conn, took) = connected?;
            connect_us.saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
            tasks.spawn(hold(conn));
        }
        Ok((Self { tasks }, connect_us))
    }

    /// Connections that ended so far (each is reported). A task ends only if
    /// its connection does.
    pub(crate) fn lost(&mut self) -> usize {
        let mut lost = 0;
        while let Some(ended) = self.tasks.try_join_next() {
            lost += 1;
            match ended {
                Ok(Err(e)) => eprintln!("an idle connection ended early: {e:#}"),
                Ok(Ok(())) => eprintln!("an idle connection ended early"),
                Err(e) => eprintln!("an idle connection's task failed: {e}"),
            }
        }
        lost
    }

    /// Closes every connection.
    pub(crate) async fn close(mut self) {
        self.tasks.shutdown().await;
    }
}

async fn hold(mut conn: Conn) -> Result<()> {
    loop {
        // Idle devices get no events; anything that arrives is just drained.
        conn.next_text().await?;
    }
}
