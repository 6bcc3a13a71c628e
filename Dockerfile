# syntax=docker/dockerfile:1.7
# One image with the five coinstream binaries; docker-compose.yml picks the command per service.
# BuildKit cache mounts keep the registry and target/ between builds: a change to our code
# recompiles our crates only, not the dependencies or librdkafka.
FROM rust:1-bookworm AS build
WORKDIR /src
# librdkafka is built from source by rdkafka-sys (a C compiler, cmake, zlib; OpenSSL for TLS/SASL).
RUN apt-get update && apt-get install -y --no-install-recommends cmake zlib1g-dev libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      -p producer -p raw-consumer -p stream-aggregator -p update-counter -p compare --bins \
 && mkdir /out \
 && cp target/release/producer target/release/raw-consumer target/release/stream-aggregator \
       target/release/update-counter target/release/compare /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 coinstream
COPY --from=build /out/ /usr/local/bin/
USER coinstream
ENV LOG_FORMAT=pretty RUST_LOG=info
