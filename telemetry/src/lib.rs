//! Logging and tracing for Drover's daemons: lines on stderr (`text` or `json`); when a log
//! directory is set, the same lines in `<dir>/<name>.YYYY-MM-DD`, rotated daily with the
//! newest `KEEP_FILES` kept; and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, spans exported over OTLP/gRPC. Without it
//! nothing is exported and nothing fails. Verbosity follows `RUST_LOG` (default `info`).
//!
//! Trace context crosses processes as a W3C `traceparent` string: [`traceparent`] reads the
//! current span's, [`set_parent`] continues one.

pub mod runtime;
pub mod sdnotify;

use std::path::Path;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{Builder, Rotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// Log files kept (one per day).
pub const KEEP_FILES: usize = 7;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("log_format must be text or json, got {0:?}")]
    Format(String),
    #[error("log directory {0}: {1}")]
    Dir(String, String),
    #[error("logging already initialised: {0}")]
    Init(String),
    #[error("OTLP exporter: {0}")]
    Otlp(String),
}

/// Keeps the file writer flushing and the span exporter running; call
/// [`Guard::shutdown`] before the process exits so buffered spans are sent.
pub struct Guard {
    _file: Option<WorkerGuard>,
    tracer: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Guard {
    pub async fn shutdown(self) {
        if let Some(p) = self.tracer {
            // The batch processor flushes with a blocking call: keep it off the runtime,
            // and do not let an unreachable collector hold up the exit for long.
            let flush = tokio::task::spawn_blocking(move || p.shutdown());
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), flush).await;
        }
    }
}

/// Whether spans should be exported (the standard OTLP environment variables).
pub fn otlp_enabled() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).map(|s| !s.is_empty()).unwrap_or(false))
}

/// The current span's W3C traceparent, if it belongs to a sampled trace.
pub fn traceparent() -> Option<String> {
    use opentelemetry::propagation::TextMapPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    opentelemetry_sdk::propagation::TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the remote span named by a W3C traceparent.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::propagation::TextMapPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if traceparent.is_empty() {
        return;
    }
    let carrier: std::collections::HashMap<String, String> =
        [("traceparent".to_string(), traceparent.to_string())].into();
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(cx);
}

pub fn init(name: &str, format: &str, log_dir: Option<&Path>) -> Result<Guard, TelemetryError> {
    let json = match format {
        "text" => false,
        "json" => true,
        other => return Err(TelemetryError::Format(other.to_string())),
    };
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let stderr = if json {
        fmt::layer().json().with_writer(std::io::stderr).boxed()
    } else {
        fmt::layer().with_writer(std::io::stderr).boxed()
    };
    let (file, guard) = match log_dir {
        None => (None, None),
        Some(dir) => {
            let appender = Builder::new()
                .rotation(Rotation::DAILY)
                .filename_prefix(name)
                .max_log_files(KEEP_FILES)
                .build(dir)
                .map_err(|e| TelemetryError::Dir(dir.display().to_string(), e.to_string()))?;
            // lossy(false): a full buffer slows logging down rather than dropping lines.
            let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .lossy(false)
                .finish(appender);
            let layer = if json {
                fmt::layer()
                    .json()
                    .with_ansi(false)
                    .with_writer(writer)
                    .boxed()
            } else {
                fmt::layer().with_ansi(false).with_writer(writer).boxed()
            };
            (Some(layer.with_filter(filter())), Some(guard))
        }
    };
    let (otel, tracer) = if otlp_enabled() {
        use opentelemetry::trace::TracerProvider;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(name.to_string())
                    .build(),
            )
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(name.to_string()))
            .with_filter(filter());
        (Some(layer), Some(provider))
    } else {
        (None, None)
    };
    tracing_subscriber::registry()
        .with(stderr.with_filter(filter()))
        .with(file)
        .with(otel)
        .try_init()
        .map_err(|e| TelemetryError::Init(e.to_string()))?;
    Ok(Guard {
        _file: guard,
        tracer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_to_a_dated_file_in_the_log_dir() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            init("x", "yaml", None),
            Err(TelemetryError::Format(_))
        ));
        let guard = init("drover-test", "text", Some(d.path())).unwrap();
        tracing::info!(marker = "written-to-file", "hello");
        drop(guard); // flushes
        let files: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().collect();
        assert_eq!(files.len(), 1);
        let name = files[0].file_name().to_string_lossy().to_string();
        assert!(name.starts_with("drover-test."), "{name}");
        let text = std::fs::read_to_string(files[0].path()).unwrap();
        assert!(text.contains("written-to-file"), "{text}");
        assert!(!text.contains('\x1b'), "no ANSI colours in files");
    }
}
