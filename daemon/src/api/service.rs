//! The `Sensors` service: event streams, status and version.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
};

use sidewall_proto::v1::{self as pb, sensors_server::Sensors};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use crate::{
    export::{filter::EventFilter, hub::Hub},
    net::flows::FlowGraph,
    policy::{model::Mode, store::PolicyStore},
    stats::Stage,
    status::{NodeStatus, VERSION},
};

pub struct SensorsService {
    pub hub: Arc<Hub>,
    pub policies: Arc<PolicyStore>,
    pub status: Arc<NodeStatus>,
    pub flows: Arc<Mutex<FlowGraph>>,
    /// Queue length of each gRPC stream; past it the stream loses events (counted).
    pub queue: usize,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::GetEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Sensors for SensorsService {
    type GetEventsStream = EventStream;

    async fn get_events(&self, req: Request<pb::GetEventsRequest>) -> Result<Response<EventStream>, Status> {
        let filter =
            EventFilter::compile(req.get_ref()).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_else(|| "unix".into());
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

    async fn add_policy(
        &self,
        req: Request<pb::AddPolicyRequest>,
    ) -> Result<Response<pb::AddPolicyResponse>, Status> {
        let name = self
            .policies
            .add_document(&req.get_ref().document)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::info!(policy = %name, "policy added over the API");
        Ok(Response::new(pb::AddPolicyResponse { name }))
    }

    async fn delete_policy(
        &self,
        req: Request<pb::DeletePolicyRequest>,
    ) -> Result<Response<pb::DeletePolicyResponse>, Status> {
        let name = &req.get_ref().name;
        if !self.policies.remove(name) {
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
        let r = req.get_ref();
        let mode = match r.mode.as_str() {
            "monitor" => Mode::Monitor,
            "enforce" => Mode::Enforce,
            m => return Err(Status::invalid_argument(format!("mode: {m:?} is not monitor or enforce"))),
        };
        if !self.policies.set_mode(&r.name, mode) {
            return Err(Status::not_found(format!("no policy {}", r.name)));
        }
        Ok(Response::new(pb::SetPolicyModeResponse {}))
    }

    async fn get_version(
        &self,
        _: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::GetVersionResponse>, Status> {
        Ok(Response::new(pb::GetVersionResponse { version: VERSION.into() }))
    }
}
