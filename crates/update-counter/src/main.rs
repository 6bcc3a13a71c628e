use std::process::ExitCode;

fn main() -> ExitCode {
    let settings: update_counter::Settings = common::config::load();
    common::telemetry::init("update-counter", &settings.telemetry);
    common::run_service("update-counter", |shutdown| {
        update_counter::run(settings, shutdown)
    })
}
