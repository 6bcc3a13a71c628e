use std::process::ExitCode;

fn main() -> ExitCode {
    let settings: producer::Settings = common::config::load();
    common::telemetry::init("producer", &settings.telemetry);
    common::run_service("producer", |shutdown| producer::run(settings, shutdown))
}
