# Palisade controller image. Not built in this project's CI (no Docker daemon there);
# kept minimal and checked by reading. Build: docker build -t palisade .
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends pkg-config libssl-dev && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked -p palisade && strip target/release/palisade

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 openssh-client \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/palisade --create-home palisade
COPY --from=build /src/target/release/palisade /usr/local/bin/palisade
USER 10001
WORKDIR /var/lib/palisade
ENV PALISADE_LISTEN=0.0.0.0:8080 \
    PALISADE_DATA_DIR=/var/lib/palisade \
    PALISADE_LOG_FORMAT=json \
    PALISADE_LOG=info
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/palisade", "run"]
