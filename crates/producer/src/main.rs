use std::process::ExitCode;

fn main() -> ExitCode {
    let settings: producer::Settings = common::config::load();
    common::telemetry::init("producer", &settings.telemetry);
    let observe = settings.observe.clone();
    common::run_service("producer", Some(&observe), |ctx| {
        producer::run(settings, ctx)
    })
}
