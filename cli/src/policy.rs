//! `sidewall policy`: add, list and delete SidecarPolicy documents, and switch their mode.

use std::{
    fmt::Write as _,
    io::{self, Read as _, Write},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use sidewall_proto::v1::{
    AddPolicyRequest, DeletePolicyRequest, ListPoliciesRequest, ListPoliciesResponse, SetPolicyModeRequest,
    sensors_client::SensorsClient,
};
use tonic::{Code, transport::Channel};

use crate::errors;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Add or replace the SidecarPolicy documents (YAML or JSON) of each file; `-` reads stdin
    Add {
        /// Files; one may hold several documents separated by lines that are `---`
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// List the policies in force
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: ListFormat,
    },
    /// Delete a policy
    Delete {
        /// namespace/name, or name for the namespace "default"
        name: String,
    },
    /// Switch a policy between monitor (report what enforce would do) and enforce
    Mode {
        /// namespace/name, or name for the namespace "default"
        name: String,
        #[arg(value_enum)]
        mode: PolicyMode,
    },
    /// Suggest a policy per workload: the least that allows what its containers were seen doing
    Suggest(crate::advise::SuggestArgs),
    /// Replay a JSON-lines export against a policy file, offline: what would fire (exit 3 if
    /// anything would)
    Test {
        /// The policy file (one or more documents)
        policy: PathBuf,
        /// The recorded events (`--export-file`, or `sidewall getevents -o json`)
        #[arg(long, value_name = "FILE")]
        events: PathBuf,
        /// Judge as if the policies were in enforce mode (default: their own mode)
        #[arg(long)]
        enforce: bool,
    },
    /// Compare two policies (files, or namespace/name of policies loaded in the daemon)
    Diff {
        /// The old version
        a: String,
        /// The new version
        b: String,
    },
}

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum ListFormat {
    /// A table: NAME MODE SOURCE
    #[default]
    Text,
    /// The ListPoliciesResponse, with each policy's normalized document
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PolicyMode {
    /// Report violations, with the action enforce would take (would_block, would_kill)
    Monitor,
    /// Carry out each rule's action
    Enforce,
}

impl PolicyMode {
    fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Monitor => "monitor",
            PolicyMode::Enforce => "enforce",
        }
    }
}

pub async fn run(server: &crate::Server, command: PolicyCommand) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match command {
        PolicyCommand::Add { files } => {
            // Every file is read before anything is sent: a typo in the last file name adds
            // nothing.
            let mut documents = Vec::new();
            for file in &files {
                documents.extend(read_documents(file)?);
            }
            let mut client = crate::client(server).await?;
            add(&mut client, documents, &mut out).await
        }
        PolicyCommand::List { output } => {
            let mut client = crate::client(server).await?;
            let list = client.list_policies(ListPoliciesRequest {}).await?.into_inner();
            line(&mut out, render(&list, output)?.trim_end())
        }
        PolicyCommand::Delete { name } => {
            let mut client = crate::client(server).await?;
            delete(&mut client, &name, &mut out).await
        }
        PolicyCommand::Mode { name, mode } => {
            let mut client = crate::client(server).await?;
            set_mode(&mut client, &name, mode, &mut out).await
        }
        PolicyCommand::Suggest(args) => crate::advise::suggest(server, args, &mut out).await,
        PolicyCommand::Test { policy, events, enforce } => {
            crate::advise::test(&policy, &events, enforce, &mut out)
        }
        PolicyCommand::Diff { a, b } => crate::advise::diff(server, &a, &b, &mut out).await,
    }
}

/// Sends each document; prints `added namespace/name` as each is accepted, and stops at the
/// first refusal (the ones before it stay added).
async fn add(
    client: &mut SensorsClient<Channel>,
    documents: Vec<String>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    for document in documents {
        let added = client.add_policy(AddPolicyRequest { document }).await?.into_inner();
        line(out, &format!("added {}", added.name))?;
    }
    Ok(())
}

async fn delete(client: &mut SensorsClient<Channel>, name: &str, out: &mut impl Write) -> anyhow::Result<()> {
    client.delete_policy(DeletePolicyRequest { name: name.into() }).await.map_err(|s| not_found(s, name))?;
    line(out, &format!("deleted {name}"))
}

async fn set_mode(
    client: &mut SensorsClient<Channel>,
    name: &str,
    mode: PolicyMode,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let request = SetPolicyModeRequest { name: name.into(), mode: mode.as_str().into() };
    client.set_policy_mode(request).await.map_err(|s| not_found(s, name))?;
    line(out, &format!("{name}: {}", mode.as_str()))
}

/// NotFound, whatever the daemon's wording, reads `no policy <name>`.
fn not_found(status: tonic::Status, name: &str) -> tonic::Status {
    if status.code() == Code::NotFound {
        tonic::Status::not_found(format!("no policy {name}"))
    } else {
        status
    }
}

/// The documents of a file, or of stdin for `-`.
fn read_documents(file: &Path) -> anyhow::Result<Vec<String>> {
    let (name, text) = if file.as_os_str() == "-" {
        let mut text = String::new();
        io::stdin().read_to_string(&mut text).context("cannot read stdin")?;
        ("stdin".to_string(), text)
    } else {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {name}"))?;
        (name, text)
    };
    let documents = sidewall_proto::documents::documents(&text);
    anyhow::ensure!(!documents.is_empty(), "{name} holds no policy document");
    Ok(documents)
}

pub fn render(list: &ListPoliciesResponse, format: ListFormat) -> anyhow::Result<String> {
    match format {
        ListFormat::Json => Ok(serde_json::to_string_pretty(list)?),
        ListFormat::Text if list.policies.is_empty() => Ok("no policies".into()),
        ListFormat::Text => Ok(table(list)),
    }
}

/// NAME MODE HASH SOURCE, columns as wide as their widest cell, two spaces apart. The hash
/// is shortened as policy_change events show it ("sha256:" and 12 hex digits).
fn table(list: &ListPoliciesResponse) -> String {
    let short = |h: &str| h.chars().take(7 + 12).collect::<String>();
    let rows: Vec<[String; 4]> = std::iter::once(["NAME", "MODE", "HASH", "SOURCE"].map(String::from))
        .chain(
            list.policies.iter().map(|p| [p.name.clone(), p.mode.clone(), short(&p.hash), p.source.clone()]),
        )
        .collect();
    let width = |col: usize| rows.iter().map(|r| r[col].chars().count()).max().unwrap_or(0);
    let (name, mode, hash) = (width(0), width(1), width(2));
    let mut out = String::new();
    for [n, m, h, s] in rows {
        let _ = writeln!(out, "{n:<name$}  {m:<mode$}  {h:<hash$}  {s}");
    }
    out
}

fn line(out: &mut impl Write, text: &str) -> anyhow::Result<()> {
    errors::stdout(writeln!(out, "{text}").and_then(|()| out.flush()))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use sidewall_proto::client::Address;
    use sidewall_proto::v1::{self as pb, PolicyInfo, sensors_server};
    use tonic::{Request, Response, Status};

    use super::*;

    fn doc(name: &str) -> String {
        format!("apiVersion: sidewall.io/v1alpha1\nkind: SidecarPolicy\nmetadata:\n  name: {name}\n")
    }

    fn info(name: &str, mode: &str, source: &str) -> PolicyInfo {
        PolicyInfo {
            name: name.into(),
            mode: mode.into(),
            source: source.into(),
            document: "spec: {}\n".into(),
            hash: format!("sha256:{}", "0123456789abcdef".repeat(4)),
        }
    }

    #[test]
    fn table_is_aligned() {
        let list = ListPoliciesResponse {
            policies: vec![
                info("shop/web", "enforce", "file:/etc/sidewall/policies/web.yaml"),
                info("sidewall-system/sidecar-zero-trust", "monitor", "builtin"),
            ],
        };
        assert_eq!(
            render(&list, ListFormat::Text).expect("renders"),
            "NAME                                MODE     HASH                 SOURCE\n\
             shop/web                            enforce  sha256:0123456789ab  file:/etc/sidewall/policies/web.yaml\n\
             sidewall-system/sidecar-zero-trust  monitor  sha256:0123456789ab  builtin\n"
        );
        let empty = ListPoliciesResponse::default();
        assert_eq!(render(&empty, ListFormat::Text).expect("renders"), "no policies");
    }

    #[test]
    fn json_is_the_response() {
        let list = ListPoliciesResponse { policies: vec![info("default/p", "monitor", "api")] };
        let json: serde_json::Value =
            serde_json::from_str(&render(&list, ListFormat::Json).expect("renders")).expect("json");
        assert_eq!(json["policies"][0]["name"], "default/p");
        assert_eq!(json["policies"][0]["source"], "api");
    }

    /// A daemon that knows only the policy `default/p` and refuses documents saying `bad`.
    #[derive(Default)]
    struct Fake {
        added: Arc<Mutex<Vec<String>>>,
    }

    #[tonic::async_trait]
    impl sensors_server::Sensors for Fake {
        type GetEventsStream = tokio_stream::Pending<Result<pb::GetEventsResponse, Status>>;

        async fn get_events(
            &self,
            _: Request<pb::GetEventsRequest>,
        ) -> Result<Response<Self::GetEventsStream>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn get_status(
            &self,
            _: Request<pb::GetStatusRequest>,
        ) -> Result<Response<pb::GetStatusResponse>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn get_version(
            &self,
            _: Request<pb::GetVersionRequest>,
        ) -> Result<Response<pb::GetVersionResponse>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn get_flows(
            &self,
            _: Request<pb::GetFlowsRequest>,
        ) -> Result<Response<pb::GetFlowsResponse>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn add_policy(
            &self,
            req: Request<pb::AddPolicyRequest>,
        ) -> Result<Response<pb::AddPolicyResponse>, Status> {
            let doc = req.into_inner().document;
            if doc.contains("bad") {
                return Err(Status::invalid_argument(
                    "api: spec.containers[0].action (line 9, column 15): unknown variant `bad`",
                ));
            }
            let name = doc.lines().find_map(|l| l.trim().strip_prefix("name: ")).unwrap_or("?");
            let name = format!("default/{name}");
            self.added.lock().expect("lock").push(doc);
            Ok(Response::new(pb::AddPolicyResponse { name }))
        }
        async fn delete_policy(
            &self,
            req: Request<pb::DeletePolicyRequest>,
        ) -> Result<Response<pb::DeletePolicyResponse>, Status> {
            match req.into_inner().name.as_str() {
                "p" | "default/p" => Ok(Response::new(pb::DeletePolicyResponse {})),
                n => Err(Status::not_found(format!("{n:?} is not a policy"))),
            }
        }
        async fn suggest_policy(
            &self,
            _: Request<pb::SuggestPolicyRequest>,
        ) -> Result<Response<pb::SuggestPolicyResponse>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn list_policies(
            &self,
            _: Request<pb::ListPoliciesRequest>,
        ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
            Err(Status::unimplemented(""))
        }
        async fn set_policy_mode(
            &self,
            req: Request<pb::SetPolicyModeRequest>,
        ) -> Result<Response<pb::SetPolicyModeResponse>, Status> {
            let req = req.into_inner();
            match (req.name.as_str(), req.mode.as_str()) {
                ("p", "enforce" | "monitor") => Ok(Response::new(pb::SetPolicyModeResponse {})),
                ("p", _) => Err(Status::invalid_argument("bad mode")),
                (n, _) => Err(Status::not_found(format!("{n:?} is not a policy"))),
            }
        }
        async fn prepare_container(
            &self,
            _: Request<pb::PrepareContainerRequest>,
        ) -> Result<Response<pb::PrepareContainerResponse>, Status> {
            Err(Status::unimplemented(""))
        }
    }

    async fn fake() -> (SensorsClient<Channel>, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let fake = Fake::default();
        let added = fake.added.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(sensors_server::SensorsServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel =
            sidewall_proto::client::connect(&Address::Tcp(addr.to_string())).await.expect("connect");
        (SensorsClient::new(channel), added)
    }

    #[tokio::test]
    async fn add_sends_each_document_and_stops_at_a_refusal() {
        let (mut client, added) = fake().await;
        let mut out = Vec::new();
        let text = format!("{}---\n{}---\n{}", doc("one"), doc("two"), doc("bad"));
        let err = add(&mut client, sidewall_proto::documents::documents(&text), &mut out)
            .await
            .expect_err("refused");
        assert_eq!(String::from_utf8(out).expect("utf-8"), "added default/one\nadded default/two\n");
        assert_eq!(added.lock().expect("lock").len(), 2);
        assert_eq!(
            errors::report(&err),
            (
                Some(
                    "invalid request: api: spec.containers[0].action (line 9, column 15): \
                     unknown variant `bad`"
                        .into()
                ),
                2
            )
        );
    }

    #[tokio::test]
    async fn unknown_policies_are_named() {
        let (mut client, _) = fake().await;
        let mut out = Vec::new();
        delete(&mut client, "p", &mut out).await.expect("deleted");
        set_mode(&mut client, "p", PolicyMode::Enforce, &mut out).await.expect("set");
        assert_eq!(String::from_utf8(out).expect("utf-8"), "deleted p\np: enforce\n");
        let err = delete(&mut client, "shop/nope", &mut Vec::new()).await.expect_err("not found");
        assert_eq!(errors::report(&err), (Some("no policy shop/nope".into()), 1));
        let err =
            set_mode(&mut client, "nope", PolicyMode::Monitor, &mut Vec::new()).await.expect_err("not found");
        assert_eq!(errors::report(&err), (Some("no policy nope".into()), 1));
    }
}
