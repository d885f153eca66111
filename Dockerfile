# hotconf: one static binary (operator, agent, CLI) on a distroless base.
# Build: docker build -t ghcr.io/hotconf/hotconf:0.1.0 .
FROM rust:1.89-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
# Dependencies first, so that source changes rebuild only hotconf itself.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir -p src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked --target x86_64-unknown-linux-musl \
    && rm -rf src
COPY src ./src
COPY crds ./crds
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --target x86_64-unknown-linux-musl \
    && cp target/x86_64-unknown-linux-musl/release/hotconf /hotconf

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /hotconf /usr/local/bin/hotconf
# Also a kubectl plugin when copied out as kubectl-hotconf.
USER 65532:65532
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/hotconf"]
CMD ["operator"]
