use std::process::ExitCode;

fn main() -> ExitCode {
    let settings: update_counter::Settings = common::config::load();
    common::telemetry::init("update-counter", &settings.telemetry);
    let observe = settings.observe.clone();
    common::run_service("update-counter", Some(&observe), |ctx| {
        update_counter::run(settings, ctx)
    })
}
