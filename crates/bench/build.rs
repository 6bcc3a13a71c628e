//! Compiles `csrc/mock_retention.c` against the librdkafka source that rdkafka-sys built (its
//! `links = "rdkafka"` exports the build directory as `DEP_RDKAFKA_ROOT`).

fn main() {
    let root = std::env::var("DEP_RDKAFKA_ROOT")
        .expect("rdkafka-sys exports DEP_RDKAFKA_ROOT (librdkafka built from its vendored source)");
    println!("cargo:rerun-if-changed=csrc/mock_retention.c");
    cc::Build::new()
        .file("csrc/mock_retention.c")
        .include(format!("{root}/src"))
        .include(&root)
        .warnings(false)
        .compile("mock_retention");
}
