# syntax=docker/dockerfile:1
# Ferry's images: one runtime image with the three services and the CLI.
#
#   docker build -t ferry:dev .

FROM rust:1.95-bookworm AS builder
WORKDIR /build
# librdkafka is built from source by rdkafka (./configure + make): needs a C toolchain,
# OpenSSL and zlib headers, all present in the rust:bookworm image.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked \
        --bin ferry-exporter --bin ferry-importer --bin ferry-coordinator --bin ferry \
    && mkdir -p /out \
    && cp target/release/ferry-exporter target/release/ferry-importer \
          target/release/ferry-coordinator target/release/ferry /out/

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl3 ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 ferry \
    && useradd --system --uid 10001 --gid ferry --home-dir /home/ferry --create-home ferry
# Where the coordinator writes its API token (a compose volume; docker-compose.yml):
# owned by the user the services run as, so a fresh volume is too.
RUN install -d -o ferry -g ferry -m 0700 /run/ferry
COPY --from=builder /out/ /usr/local/bin/
USER ferry
WORKDIR /home/ferry
ENV FERRY_LOG=info
EXPOSE 8472
CMD ["ferry", "--help"]
