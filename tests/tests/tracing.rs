//! Tracing: with OTEL_EXPORTER_OTLP_ENDPOINT set, one trace runs from the submit through the
//! lease to the worker's run, and the job's process gets TRACEPARENT to join it. Checked
//! against a real OTLP/gRPC receiver started by the test.

use drover_tests::v1 as pb;
use drover_tests::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One exported span, ids in hex (the parent empty for a root span).
#[derive(Clone, Debug)]
struct SpanSeen {
    service: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
}

type Seen = Arc<Mutex<Vec<SpanSeen>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Receiver(Seen);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let mut seen = self
            .0
            .lock()
            .map_err(|_| tonic::Status::internal("poisoned"))?;
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    seen.push(SpanSeen {
                        service: service.clone(),
                        name: span.name.clone(),
                        trace: hex(&span.trace_id),
                        id: hex(&span.span_id),
                        parent: hex(&span.parent_span_id),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn start_receiver() -> anyhow::Result<(String, Seen)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", listener.local_addr()?);
    let seen: Seen = Arc::default();
    let svc = TraceServiceServer::new(Receiver(seen.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok((addr, seen))
}

#[tokio::test]
async fn one_trace_from_submit_to_the_jobs_process() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (otlp, seen) = start_receiver().await?;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let opts = CoordinatorOpts {
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let (_c, addr) = cl.coordinator("coord", &opts)?;
    let _w = cl.worker_with_env("w1", &addr, 1, &[], &env)?;
    let mut api = jobs(&addr).await?;
    // The caller's own trace: the submit must continue it, not start another.
    const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER_SPAN: &str = "00f067aa0ba902b7";
    let mut req = tonic::Request::new(pb::SubmitJobRequest {
        spec: Some(sh("echo \"$TRACEPARENT\"")),
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01").parse()?,
    );
    let job = api
        .submit_job(req)
        .await?
        .into_inner()
        .job
        .ok_or_else(|| anyhow::anyhow!("no job in the response"))?;
    wait_state(&mut api, &job.id, pb::JobState::Succeeded).await?;

    let (out, _, _) = logs(&mut api, &job.id, 1).await?;
    let tp = String::from_utf8(out)?.trim().to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "TRACEPARENT {tp:?}");
    assert_eq!(parts[1], CALLER_TRACE, "the job's TRACEPARENT {tp:?}");
    let job_parent = parts[2].to_string();

    let want = [
        ("drover-coordinator", "submit_job"),
        ("drover-coordinator", "lease"),
        ("drover-worker", "run_attempt"),
    ];
    let find = |seen: &[SpanSeen], svc: &str, name: &str| {
        seen.iter()
            .find(|s| s.service == svc && s.name == name && s.trace == CALLER_TRACE)
            .cloned()
    };
    let start = Instant::now();
    let seen = loop {
        let seen = seen
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone();
        let missing: Vec<_> = want
            .iter()
            .filter(|(svc, name)| find(&seen, svc, name).is_none())
            .collect();
        // The span the job's TRACEPARENT names must have arrived too.
        if missing.is_empty() && seen.iter().any(|s| s.id == job_parent) {
            break seen;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "spans {missing:?} (or the job's parent {job_parent}) of trace {CALLER_TRACE} \
             never arrived: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Parentage: caller → submit_job → lease → run_attempt → (spans within it) → the job.
    let get = |svc, name| find(&seen, svc, name).unwrap_or_else(|| unreachable!());
    let submit_span = get("drover-coordinator", "submit_job");
    let lease = get("drover-coordinator", "lease");
    let run = get("drover-worker", "run_attempt");
    assert_eq!(submit_span.parent, CALLER_SPAN, "{submit_span:?}");
    assert_eq!(lease.parent, submit_span.id, "{lease:?}");
    assert_eq!(run.parent, lease.id, "{run:?}");
    // The job's parent is run_attempt or a span nested in it.
    let mut at = job_parent.clone();
    let mut chain = Vec::new();
    while at != run.id {
        let span = seen
            .iter()
            .find(|s| s.id == at && s.trace == CALLER_TRACE)
            .unwrap_or_else(|| panic!("the job's parent chain {chain:?} leaves the trace"));
        chain.push(span.name.clone());
        assert!(chain.len() < 20, "{chain:?}");
        at = span.parent.clone();
    }
    Ok(())
}

#[tokio::test]
async fn without_an_otlp_endpoint_nothing_is_exported_and_jobs_run() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w1", &addr, 1, &[])?;
    let mut api = jobs(&addr).await?;
    let job = submit(&mut api, sh("echo \"[${TRACEPARENT:-none}]\"")).await?;
    wait_state(&mut api, &job.id, pb::JobState::Succeeded).await?;
    let (out, _, _) = logs(&mut api, &job.id, 1).await?;
    assert_eq!(out, b"[none]\n");
    Ok(())
}
