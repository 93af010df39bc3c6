# Multi-stage build: a static-enough wharf on a distroless base, running as non-root.
#   docker build -t wharf .
#   docker run -p 5000:5000 -v wharf-data:/var/lib/wharf wharf
# io_uring: Docker's default seccomp profile blocks the io_uring syscalls; wharf detects that and
# uses epoll (logged at start). To use io_uring, run with a seccomp profile that allows
# io_uring_setup/io_uring_enter/io_uring_register (e.g. --security-opt seccomp=<profile.json>).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin wharf && strip target/release/wharf

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/wharf /usr/local/bin/wharf
COPY dist/container.toml /etc/wharf/wharf.toml
# distroless "nonroot" is uid/gid 65532; the volume must be writable by it.
USER 65532:65532
VOLUME ["/var/lib/wharf"]
EXPOSE 5000
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/wharf"]
CMD ["serve", "-c", "/etc/wharf/wharf.toml"]
