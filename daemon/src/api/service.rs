//! The `Sensors` service: event streams, status and version, policies. Every call has been
//! authorized by `access` before it gets here; policy changes are made on behalf of the
//! authorized caller, who the store names in the change's `policy_change` event.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sidewall_proto::v1::{self as pb, sensors_server::Sensors};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use super::access;
use crate::{
    export::{filter::EventFilter, hub::Hub},
    net::flows::FlowGraph,
    policy::{model::Mode, store::PolicyStore, suggest},
    runtime,
    stats::Stage,
    status::{NodeStatus, VERSION},
};

pub struct SensorsService {
    pub hub: Arc<Hub>,
    pub policies: Arc<PolicyStore>,
    pub status: Arc<NodeStatus>,
    pub flows: Arc<Mutex<FlowGraph>>,
    /// What each workload was seen doing, for SuggestPolicy.
    pub observed: Arc<Mutex<suggest::Observer>>,
    /// Queue length of each gRPC stream; past it the stream loses events (counted).
    pub queue: usize,
    /// The pipeline, for the runtime hook's requests.
    pub runtime: mpsc::Sender<runtime::Request>,
}

/// How long a prepare request may wait for names the Kubernetes API has not delivered yet,
/// when the hook gave no timeout; and how often it asks again.
const NAMES_WAIT: Duration = Duration::from_secs(2);
const NAMES_RETRY: Duration = Duration::from_millis(50);

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::GetEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Sensors for SensorsService {
    type GetEventsStream = EventStream;

    async fn get_events(&self, req: Request<pb::GetEventsRequest>) -> Result<Response<EventStream>, Status> {
        let filter =
            EventFilter::compile(req.get_ref()).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let peer = access::caller(&req).map_or_else(|_| "unknown".into(), |c| c.peer.to_string());
        let (_sub, rx) =
            self.hub.subscribe(format!("grpc:{peer}"), Stage::SubscriberQueue, filter, self.queue);
        // The subscriber's alert queue drains first.
        let stream = rx.map(|ev| Ok(pb::GetEventsResponse::clone(&ev)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        Ok(Response::new(self.status.snapshot()))
    }

    async fn get_flows(
        &self,
        req: Request<pb::GetFlowsRequest>,
    ) -> Result<Response<pb::GetFlowsResponse>, Status> {
        let req = req.into_inner();
        let pod_re = if req.pod_regex.is_empty() {
            None
        } else {
            Some(regex::Regex::new(&format!("^(?:{})$", req.pod_regex)).map_err(|e| {
                Status::invalid_argument(format!(
                    "pod_regex: invalid regular expression {:?}: {e}",
                    req.pod_regex
                ))
            })?)
        };
        let keep = |pod: Option<&pb::Pod>| {
            (req.namespace.is_empty() || pod.is_some_and(|p| p.namespace == req.namespace))
                && pod_re.as_ref().is_none_or(|re| pod.is_some_and(|p| re.is_match(&p.name)))
        };
        let pods = self.flows.lock().unwrap_or_else(|e| e.into_inner()).snapshot(keep);
        Ok(Response::new(pb::GetFlowsResponse { pods }))
    }

    async fn suggest_policy(
        &self,
        req: Request<pb::SuggestPolicyRequest>,
    ) -> Result<Response<pb::SuggestPolicyResponse>, Status> {
        let filter = suggest::Filter::from_request(req.get_ref()).map_err(Status::invalid_argument)?;
        let suggestions = self.observed.lock().unwrap_or_else(|e| e.into_inner()).suggest(&filter);
        let policies = suggestions.iter().map(suggest::Suggestion::to_proto).collect();
        Ok(Response::new(pb::SuggestPolicyResponse { policies }))
    }

    async fn add_policy(
        &self,
        req: Request<pb::AddPolicyRequest>,
    ) -> Result<Response<pb::AddPolicyResponse>, Status> {
        let actor = access::caller(&req)?.actor();
        let name = self
            .policies
            .add_document(&req.get_ref().document, &actor)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(pb::AddPolicyResponse { name }))
    }

    async fn delete_policy(
        &self,
        req: Request<pb::DeletePolicyRequest>,
    ) -> Result<Response<pb::DeletePolicyResponse>, Status> {
        let actor = access::caller(&req)?.actor();
        let name = &req.get_ref().name;
        if !self.policies.remove(name, &actor) {
            return Err(Status::not_found(format!("no policy {name}")));
        }
        Ok(Response::new(pb::DeletePolicyResponse {}))
    }

    async fn list_policies(
        &self,
        _: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        Ok(Response::new(pb::ListPoliciesResponse { policies: self.policies.list() }))
    }

    async fn set_policy_mode(
        &self,
        req: Request<pb::SetPolicyModeRequest>,
    ) -> Result<Response<pb::SetPolicyModeResponse>, Status> {
        let actor = access::caller(&req)?.actor();
        let r = req.get_ref();
        let mode = match r.mode.as_str() {
            "monitor" => Mode::Monitor,
            "enforce" => Mode::Enforce,
            m => return Err(Status::invalid_argument(format!("mode: {m:?} is not monitor or enforce"))),
        };
        if !self.policies.set_mode(&r.name, mode, &actor) {
            return Err(Status::not_found(format!("no policy {}", r.name)));
        }
        Ok(Response::new(pb::SetPolicyModeResponse {}))
    }

    async fn prepare_container(
        &self,
        req: Request<pb::PrepareContainerRequest>,
    ) -> Result<Response<pb::PrepareContainerResponse>, Status> {
        let req = req.into_inner();
        if req.container_id.is_empty() || req.cgroup_path.is_empty() {
            return Err(Status::invalid_argument("container_id and cgroup_path are required"));
        }
        // Within the hook's patience: names the API has not delivered yet are waited for.
        let budget = match req.timeout_ms {
            0 => NAMES_WAIT,
            ms => Duration::from_millis(u64::from(ms) / 2),
        };
        let start = Instant::now();
        loop {
            let (reply, answer) = oneshot::channel();
            self.runtime
                .send(runtime::Request::Prepare { req: req.clone(), reply })
                .await
                .map_err(|_| Status::unavailable("the pipeline is not running"))?;
            let answer =
                answer.await.map_err(|_| Status::unavailable("the pipeline stopped before answering"))?;
            let (resp, complete) = answer.map_err(Status::failed_precondition)?;
            if complete || start.elapsed() + NAMES_RETRY >= budget {
                return Ok(Response::new(resp));
            }
            tokio::time::sleep(NAMES_RETRY).await;
        }
    }

    async fn get_version(
        &self,
        _: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::GetVersionResponse>, Status> {
        Ok(Response::new(pb::GetVersionResponse { version: VERSION.into() }))
    }
}
