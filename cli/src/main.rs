//! `sidewall`: the command-line client of sidewalld.

mod advise;
mod compact;
mod errors;
mod events;
mod filters;
mod flows;
mod policy;
mod status;

use std::{
    io::{self, Write},
    path::PathBuf,
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use sidewall_proto::client::{self, Address, DEFAULT_SERVER, TlsOptions};
use sidewall_proto::v1::{
    GetFlowsRequest, GetStatusRequest, GetVersionRequest, sensors_client::SensorsClient,
};
use tonic::transport::Channel;

use crate::{events::EventFormat, filters::FilterArgs, status::StatusFormat};

#[derive(Parser)]
#[command(name = "sidewall", version, about = "Watch what sidewalld sees on this node")]
struct Cli {
    #[command(flatten)]
    server: Server,

    #[command(subcommand)]
    command: Command,
}

/// Where sidewalld is, and the TLS to speak to it over TCP.
#[derive(clap::Args)]
pub struct Server {
    /// sidewalld's address: unix:///path, /path, tcp://host:port or host:port
    #[arg(
        long,
        global = true,
        env = "SIDEWALL_SERVER",
        value_name = "ADDR",
        default_value = DEFAULT_SERVER,
        value_parser = client::parse_address
    )]
    server: Address,
    /// CA certificate (PEM) that signed sidewalld's certificate: TCP then speaks TLS
    #[arg(long, global = true, env = "SIDEWALL_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// This client's certificate (PEM), whose name sidewalld maps to a role
    #[arg(long, global = true, env = "SIDEWALL_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert
    #[arg(long, global = true, env = "SIDEWALL_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// The name sidewalld's certificate must carry (default: the host of --server)
    #[arg(long, global = true, env = "SIDEWALL_TLS_SERVER_NAME", value_name = "NAME")]
    tls_server_name: Option<String>,
}

impl Server {
    fn tls(&self) -> TlsOptions {
        TlsOptions {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            server_name: self.tls_server_name.clone(),
        }
    }
}

// Parsed once per run, so the size of the filter flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Stream events as they happen, until interrupted
    #[command(name = "getevents", visible_alias = "events")]
    GetEvents {
        #[arg(short, long, value_enum, default_value_t)]
        output: EventFormat,
        #[command(flatten)]
        filters: FilterArgs,
    },
    /// Show the daemon's sensors, counters and exporters
    Status {
        #[arg(short, long, value_enum, default_value_t)]
        output: StatusFormat,
        /// Health probe: print "healthy", or each problem (a sensor the configuration asks
        /// for that is not attached), and exit 1 when there is one
        #[arg(long)]
        healthy: bool,
    },
    /// Show the loopback flow graph: per pod, which container reaches which sibling's port
    Flows {
        /// Only pods in this namespace
        #[arg(long)]
        namespace: Option<String>,
        /// Only pods whose name matches this regular expression
        #[arg(long)]
        pod: Option<String>,
        #[arg(short, long, value_enum, default_value_t)]
        output: flows::FlowFormat,
    },
    /// Add, list and delete SidecarPolicy documents; switch them between monitor and enforce
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Show the client's and the daemon's versions
    Version,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let tcp = matches!(cli.server.server, Address::Tcp(_)).then(|| cli.server.tls());
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let (line, code) = errors::report(&err);
            let line = line.map(|l| errors::with_tcp_hint(l, tcp.as_ref()));
            if let Some(line) = line {
                let _ = writeln!(io::stderr(), "sidewall: {line}");
            }
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::GetEvents { output, filters } => {
            let mut client = client(&cli.server).await?;
            events::stream(&mut client, filters.request(), output).await
        }
        Command::Status { output, healthy } => {
            let mut client = client(&cli.server).await?;
            let status = client.get_status(GetStatusRequest {}).await?.into_inner();
            if healthy {
                return status::health(&status);
            }
            print(status::render(&status, output)?.trim_end())
        }
        Command::Flows { namespace, pod, output } => {
            let mut client = client(&cli.server).await?;
            let req = GetFlowsRequest {
                namespace: namespace.unwrap_or_default(),
                pod_regex: pod.unwrap_or_default(),
            };
            let flows = client.get_flows(req).await?.into_inner();
            print(flows::render(&flows, output)?.trim_end())
        }
        Command::Policy { command } => policy::run(&cli.server, command).await,
        Command::Version => {
            // The client's version is worth showing even when the daemon is down.
            print(&format!("client: {}", env!("CARGO_PKG_VERSION")))?;
            let mut client = client(&cli.server).await?;
            let version = client.get_version(GetVersionRequest {}).await?.into_inner();
            print(&format!("server: {}", version.version))
        }
    }
}

async fn client(server: &Server) -> anyhow::Result<SensorsClient<Channel>> {
    Ok(SensorsClient::new(client::connect_tls(&server.server, &server.tls()).await?))
}

fn print(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    errors::stdout(writeln!(out, "{text}").and_then(|()| out.flush()))
}
