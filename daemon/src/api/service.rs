//! The `Sensors` service: event streams, status and version.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
};

use sidewall_proto::v1::{self as pb, sensors_server::Sensors};
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use crate::{
    export::{filter::EventFilter, hub::Hub, jsonl, otlp},
    kernel::loader::{SensorReport, SensorState},
    net::flows::FlowGraph,
    policy::{model::Mode, store::PolicyStore},
    stats::{Stage, Stats},
};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything GetStatus reports.
pub struct StatusSource {
    pub node_name: String,
    pub kernel: String,
    pub sensors: Vec<SensorReport>,
    pub stats: Arc<Stats>,
    pub export_file: Option<(String, Arc<jsonl::Health>)>,
    pub otlp: Option<(String, Arc<otlp::Health>)>,
    /// The OTLP metrics exporter (same endpoint); its `events` count data points.
    pub otlp_metrics: Option<(String, Arc<otlp::Health>)>,
    pub metrics_address: Option<String>,
    pub identity_source: String,
}

pub struct SensorsService {
    pub hub: Arc<Hub>,
    pub policies: Arc<PolicyStore>,
    pub status: Arc<StatusSource>,
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
        let stream = ReceiverStream::new(rx).map(|ev| Ok(pb::GetEventsResponse::clone(&ev)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        Ok(Response::new(self.status.snapshot(self.hub.subscriber_count())))
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

impl StatusSource {
    pub fn snapshot(&self, subscribers: usize) -> pb::GetStatusResponse {
        let stats = &self.stats;
        pb::GetStatusResponse {
            version: VERSION.into(),
            kernel: self.kernel.clone(),
            node_name: self.node_name.clone(),
            uptime_seconds: stats.started.elapsed().as_secs(),
            sensors: self.sensors.iter().map(sensor_status).collect(),
            events_by_kind: stats.events_by_kind().into_iter().map(|(k, n)| (k.into(), n)).collect(),
            lost_by_stage: stats.lost_by_stage().into_iter().map(|(k, n)| (k.into(), n)).collect(),
            process_cache_size: stats.process_cache_size.load(std::sync::atomic::Ordering::Relaxed),
            subscribers: subscribers as u32,
            identity_source: self.identity_source.clone(),
            exporters: self.exporters(),
        }
    }

    fn exporters(&self) -> Vec<pb::ExporterStatus> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut out = Vec::new();
        let disabled = |name: &str| pb::ExporterStatus {
            name: name.into(),
            state: "disabled".into(),
            ..Default::default()
        };
        out.push(match &self.export_file {
            None => disabled("export_file"),
            Some((path, h)) => {
                let last_error = h.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
                pb::ExporterStatus {
                    name: "export_file".into(),
                    state: if last_error.is_some() { "failing" } else { "ok" }.into(),
                    detail: last_error.map_or_else(|| path.clone(), |e| format!("{path}: {e}")),
                    events: h.written.load(Relaxed),
                    lost: self.stats.lost(Stage::ExportFile) + h.failed.load(Relaxed),
                }
            }
        });
        let otlp_status =
            |name: &str, exporter: &Option<(String, Arc<otlp::Health>)>, lost: u64| match exporter {
                None => disabled(name),
                Some((endpoint, h)) => {
                    let last_error = h.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    pb::ExporterStatus {
                        name: name.into(),
                        state: if last_error.is_some() { "failing" } else { "ok" }.into(),
                        detail: last_error.map_or_else(|| endpoint.clone(), |e| format!("{endpoint}: {e}")),
                        events: h.sent.load(Relaxed),
                        lost,
                    }
                }
            };
        out.push(otlp_status("otlp", &self.otlp, self.stats.lost(Stage::Otlp)));
        // A refused metrics push loses nothing: the next one carries the same totals.
        out.push(otlp_status("otlp_metrics", &self.otlp_metrics, 0));
        out.push(match &self.metrics_address {
            None => disabled("prometheus"),
            Some(a) => pb::ExporterStatus {
                name: "prometheus".into(),
                state: "ok".into(),
                detail: format!("http://{a}/metrics"),
                ..Default::default()
            },
        });
        out
    }
}

fn sensor_status(s: &SensorReport) -> pb::SensorStatus {
    let (state, reason) = match &s.state {
        SensorState::Attached => ("attached", String::new()),
        SensorState::Skipped(why) => ("skipped", why.clone()),
        SensorState::Failed(why) => ("failed", why.clone()),
    };
    pb::SensorStatus { name: s.name.into(), state: state.into(), reason, hook: s.hook.into() }
}
