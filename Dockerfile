# The agent image that `sysmirror trace --target` adds to pods as an ephemeral container (docs/kubernetes.md).
#   docker build -t ghcr.io/sysmirror/agent:0.1.0 .
ARG SWIFT_IMAGE=swift:6.3-bookworm

FROM ${SWIFT_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends libseccomp-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Package.swift ./
COPY Sources ./Sources
COPY Tests ./Tests
# The Swift runtime linked in: the image needs no Swift, only glibc and libseccomp.
RUN swift build -c release --static-swift-stdlib --product sysmirror \
    && install -D -m 0755 .build/release/sysmirror /out/sysmirror

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libseccomp2 nftables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/sysmirror /usr/local/bin/sysmirror
ENTRYPOINT ["/usr/local/bin/sysmirror"]
CMD ["agent", "--help"]
