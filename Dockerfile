# spanserve on Debian 12: built with the repository's own scripts, then the server, its client,
# the default model and the example config copied into a slim runtime image (CPU backend).
#   docker build -t spanserve . && docker run -p 50051:50051 -p 9090:9090 spanserve
# The default model is models/arith-small/ when the build context has it, else a small model with
# random weights made at build time (see README.md). Mount another at /models/default to serve it.
FROM debian:bookworm AS build
WORKDIR /src
COPY scripts/install_deps.sh scripts/
RUN scripts/install_deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
# No fault-injection hook in the image (debug.fail_steps is refused there).
RUN BUILD_DIR=/build scripts/build.sh -DSPANSERVE_TESTS=OFF -DSPANSERVE_BENCH=OFF \
    -DSPANSERVE_FAULT_INJECTION=OFF
RUN if [ -f models/arith-small/config.json ]; then cp -r models/arith-small /model; \
    else /usr/bin/python3 training/tools/make_random_model.py /model; fi

FROM debian:bookworm-slim
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends libgrpc++1.51 libprotobuf32 libyaml-cpp0.7 \
      libspdlog1.10 libsentencepiece0 libopenblas0-pthread libgomp1 libcpp-httplib0.11 \
      libpcre2-8-0 libicu72 \
 && rm -rf /var/lib/apt/lists/*
# The SentencePiece module must sit beside the spanserve executable.
COPY --from=build /build/server/spanserve /build/server/spanserve-cli \
     /build/engine/libspanserve_sentencepiece.so /opt/spanserve/bin/
COPY --from=build /model /models/default
COPY deploy/spanserve.yaml /etc/spanserve/spanserve.yaml
ENV PATH=/opt/spanserve/bin:$PATH
USER nobody
EXPOSE 50051 9090
# SIGTERM drains (deploy/spanserve.yaml: server.drain_grace_seconds), then exits 0.
ENTRYPOINT ["spanserve", "--config", "/etc/spanserve/spanserve.yaml", "--model", "/models/default"]
