//! Policy changes made outside the pipeline (API calls, the policy directory, the CRD watch)
//! reach consumers by the same path as every other event: dressed, counted, observed by the
//! metrics, handed to the hub.

use sidewall_proto::v1::get_events_response::Event;

use super::Pipeline;
use crate::policy::audit::Change;

impl Pipeline {
    /// Publishes a `policy_change` event, timed when the change was applied.
    pub fn policy_change(&mut self, change: Change) {
        let ev = self.publish.dress(Event::PolicyChange(change.event), change.boot_ns);
        self.publish.publish(&ev);
    }
}
