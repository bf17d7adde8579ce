//! Small accessors over the API's event type shared by filters, counters and exporters.

use sidewall_proto::v1::{self as pb, EventType, get_events_response::Event};

pub type Shared = std::sync::Arc<pb::GetEventsResponse>;

pub fn kind(ev: &pb::GetEventsResponse) -> EventType {
    match &ev.event {
        Some(Event::ProcessExec(_)) => EventType::ProcessExec,
        Some(Event::ProcessExit(_)) => EventType::ProcessExit,
        Some(Event::ProcessConnect(_)) => EventType::ProcessConnect,
        Some(Event::ProcessAccept(_)) => EventType::ProcessAccept,
        Some(Event::ProcessBind(_)) => EventType::ProcessBind,
        Some(Event::ProcessClose(_)) => EventType::ProcessClose,
        Some(Event::ProcessDatagram(_)) => EventType::ProcessDatagram,
        Some(Event::ProcessNamespace(_)) => EventType::ProcessNamespace,
        Some(Event::ProcessAccess(_)) => EventType::ProcessAccess,
        Some(Event::PolicyAlert(_)) => EventType::PolicyAlert,
        Some(Event::ProcessSysctl(_)) => EventType::ProcessSysctl,
        Some(Event::LostEvents(_)) => EventType::LostEvents,
        Some(Event::PolicyChange(_)) => EventType::PolicyChange,
        None => EventType::Unspecified,
    }
}

/// The process an event is about, if any.
pub fn subject(ev: &pb::GetEventsResponse) -> Option<&pb::Process> {
    match &ev.event {
        Some(Event::ProcessExec(e)) => e.process.as_ref(),
        Some(Event::ProcessExit(e)) => e.process.as_ref(),
        Some(Event::ProcessConnect(e)) => e.process.as_ref(),
        Some(Event::ProcessAccept(e)) => e.process.as_ref(),
        Some(Event::ProcessBind(e)) => e.process.as_ref(),
        Some(Event::ProcessClose(e)) => e.process.as_ref(),
        Some(Event::ProcessDatagram(e)) => e.process.as_ref(),
        Some(Event::ProcessNamespace(e)) => e.process.as_ref(),
        Some(Event::ProcessAccess(e)) => e.process.as_ref(),
        Some(Event::PolicyAlert(e)) => e.process.as_ref(),
        Some(Event::ProcessSysctl(e)) => e.process.as_ref(),
        Some(Event::LostEvents(_)) | Some(Event::PolicyChange(_)) | None => None,
    }
}

/// The snake_case name used in JSON, counters and metrics: "process_exec".
pub fn kind_name(k: EventType) -> &'static str {
    match k {
        EventType::Unspecified => "unspecified",
        EventType::ProcessExec => "process_exec",
        EventType::ProcessExit => "process_exit",
        EventType::ProcessConnect => "process_connect",
        EventType::ProcessAccept => "process_accept",
        EventType::ProcessBind => "process_bind",
        EventType::ProcessClose => "process_close",
        EventType::ProcessDatagram => "process_datagram",
        EventType::ProcessNamespace => "process_namespace",
        EventType::ProcessAccess => "process_access",
        EventType::PolicyAlert => "policy_alert",
        EventType::LostEvents => "lost_events",
        EventType::ProcessSysctl => "process_sysctl",
        EventType::PolicyChange => "policy_change",
    }
}
