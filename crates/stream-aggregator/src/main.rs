use std::process::ExitCode;

fn main() -> ExitCode {
    let settings: stream_aggregator::Settings = common::config::load();
    common::telemetry::init("stream-aggregator", &settings.telemetry);
    let observe = settings.observe.clone();
    common::run_service("stream-aggregator", Some(&observe), |ctx| {
        stream_aggregator::run(settings, ctx)
    })
}
