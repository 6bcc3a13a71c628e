# One image with every coinstream binary; docker-compose.yml picks the command per service.
FROM rust:1-bookworm AS build
WORKDIR /src
# librdkafka is built from source by rdkafka-sys (needs make, a C compiler, zlib).
RUN apt-get update && apt-get install -y --no-install-recommends cmake zlib1g-dev && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked --workspace --bins \
 && mkdir /out \
 && cp target/release/producer target/release/raw-consumer target/release/stream-aggregator \
       target/release/update-counter target/release/compare /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 coinstream
COPY --from=build /out/ /usr/local/bin/
USER coinstream
ENV LOG_FORMAT=pretty RUST_LOG=info
