//! Waiting for events on a gRPC stream.

use std::time::Duration;

use sidewall_proto::v1::{GetEventsResponse, Process, get_events_response::Event};
use tonic::Streaming;

pub struct EventStream {
    inner: Streaming<GetEventsResponse>,
    /// Every event received so far, for failure messages.
    pub seen: Vec<GetEventsResponse>,
}

impl EventStream {
    pub fn new(inner: Streaming<GetEventsResponse>) -> Self {
        Self { inner, seen: Vec::new() }
    }

    /// The next event, or None after `timeout` or when the stream ends.
    pub async fn next(&mut self, timeout: Duration) -> Option<GetEventsResponse> {
        let ev = tokio::time::timeout(timeout, self.inner.message()).await.ok()?.ok()??;
        self.seen.push(ev.clone());
        Some(ev)
    }

    /// The first event for which `pred` holds; panics with `what` after `timeout`.
    pub async fn find(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&GetEventsResponse) -> bool,
    ) -> GetEventsResponse {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(ev) if pred(&ev) => return ev,
                Some(_) => {}
                None => panic!("timed out waiting for {what}; saw {} events", self.seen.len()),
            }
        }
    }
}

/// The exec event of `pid`, if `ev` is one.
pub fn exec_of(ev: &GetEventsResponse, pid: u32) -> Option<&Process> {
    match &ev.event {
        Some(Event::ProcessExec(e)) => e.process.as_ref().filter(|p| p.pid == pid),
        _ => None,
    }
}

pub fn exit_of(ev: &GetEventsResponse, pid: u32) -> Option<&sidewall_proto::v1::ProcessExit> {
    match &ev.event {
        Some(Event::ProcessExit(e)) if e.process.as_ref().is_some_and(|p| p.pid == pid) => Some(e),
        _ => None,
    }
}
