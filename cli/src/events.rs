//! `sidewall getevents`: print the event stream until interrupted or stdout closes.

use std::io::{self, Write};

use anyhow::Context as _;
use sidewall_proto::v1::{GetEventsRequest, GetEventsResponse, sensors_client::SensorsClient};
use tonic::transport::Channel;

use crate::{compact::compact, errors};

#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
pub enum EventFormat {
    /// One JSON object per line (the export file's format)
    Json,
    /// One readable line per event
    #[default]
    Compact,
}

pub async fn stream(
    client: &mut SensorsClient<Channel>,
    request: GetEventsRequest,
    format: EventFormat,
) -> anyhow::Result<()> {
    let mut events = client.get_events(request).await?.into_inner();
    // Rust's stdout is line buffered even into a pipe: each event goes out as it arrives.
    let mut out = io::stdout().lock();
    while let Some(event) = events.message().await? {
        let line = render(&event, format)?;
        errors::stdout(writeln!(out, "{line}"))?;
    }
    let _ = writeln!(io::stderr(), "sidewall: sidewalld ended the event stream");
    Ok(())
}

fn render(event: &GetEventsResponse, format: EventFormat) -> anyhow::Result<String> {
    match format {
        EventFormat::Json => serde_json::to_string(event).context("cannot encode event as JSON"),
        EventFormat::Compact => Ok(compact(event)),
    }
}
