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

/// (service name, span name, trace id in hex)
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

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
                    let hex: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                    seen.push((service.clone(), span.name.clone(), hex));
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
    let job = submit(&mut api, sh("echo \"$TRACEPARENT\"")).await?;
    wait_state(&mut api, &job.id, pb::JobState::Succeeded).await?;

    let (out, _, _) = logs(&mut api, &job.id, 1).await?;
    let tp = String::from_utf8(out)?.trim().to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "TRACEPARENT {tp:?}");
    let trace_id = parts[1].to_string();
    assert_eq!(trace_id.len(), 32);

    let want = [
        ("drover-coordinator", "submit_job"),
        ("drover-coordinator", "lease"),
        ("drover-worker", "run_attempt"),
    ];
    let start = Instant::now();
    loop {
        let missing: Vec<_> = {
            let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            want.iter()
                .filter(|(svc, name)| {
                    !seen
                        .iter()
                        .any(|(s, n, t)| s == svc && n == name && *t == trace_id)
                })
                .copied()
                .collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "spans {missing:?} of trace {trace_id} never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
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
