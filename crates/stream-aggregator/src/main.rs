use std::process::ExitCode;

fn main() -> ExitCode {
    let settings: stream_aggregator::Settings = common::config::load();
    common::telemetry::init("stream-aggregator", &settings.telemetry);
    common::run_service("stream-aggregator", |shutdown| {
        stream_aggregator::run(settings, shutdown)
    })
}
