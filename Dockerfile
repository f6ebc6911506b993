# siftrank search service: the lean runtime image (serving only: no test tools, no Ray, no OpenVINO/ONNX).
# Built and run by `make image-check` with podman/buildah (docs/deploy.md); docker works the same way.
#   CPU:  buildah bud -t siftrank .            (or docker build -t siftrank .)
#         podman run -p 8000:8000 -v $PWD/../shared/data:/data:ro -v siftrank-cache:/cache -v siftrank-state:/var/lib/siftrank siftrank
#   GPU:  --build-arg TORCH=2.13.0 --build-arg TORCH_INDEX= --build-arg EXTRAS=gpu
#         PyPI's torch 2.13.0 for Linux x86_64 is the CUDA 13.0 build (it pins cuda-toolkit 13.0.3) and faiss-gpu 1.15
#         brings its own CUDA 12 runtime (>= 12.6); the host needs an NVIDIA driver for CUDA 13 (580 or newer) and
#         `--gpus all` (docker) or `--device nvidia.com/gpu=all` (podman with the NVIDIA CDI spec).
#   Faster CPU encoding (OpenVINO int8 where it measures fastest): --build-arg EXTRAS=cpu,fast
ARG BASE=docker.io/library/python:3.11-slim
FROM ${BASE}

ARG TORCH=2.13.0+cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=cpu
# unset unless given: a local wheel folder and a proxy's certificate authority, for builds behind a proxy
ARG PIP_FIND_LINKS
ARG PIP_CERT
# Every path the service writes or reads is an env var every command honours (docs/cli.md)
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    SIFTRANK_DATA=/data SIFTRANK_CACHE=/cache SIFTRANK_EVENT_LOG=/var/lib/siftrank/events.db

# libgomp (faiss and torch's OpenMP) where the base is Debian-like; a base without apt-get must bring it
RUN if command -v apt-get >/dev/null; then apt-get update -qq \
        && apt-get install -y -qq --no-install-recommends libgomp1 >/dev/null && rm -rf /var/lib/apt/lists/*; fi \
    && useradd --create-home --uid 1000 siftrank && python3 -m venv /opt/venv

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY siftrank siftrank
COPY retrieval retrieval
COPY training training
COPY eval eval
COPY serving serving
COPY configs configs
# torch first (the CPU build unless told otherwise), then siftrank with one faiss build and nothing else
RUN if [ -n "$TORCH_INDEX" ]; then pip install -q "torch==$TORCH" --index-url "$TORCH_INDEX"; \
    else pip install -q "torch==$TORCH"; fi \
    && pip install -q ".[${EXTRAS}]" && rm -rf /root/.cache

RUN mkdir -p /cache /var/lib/siftrank /data && chown siftrank /cache /var/lib/siftrank
USER siftrank
VOLUME ["/cache", "/var/lib/siftrank"]
EXPOSE 8000
# /healthz: the process answers; /readyz: the variants are loaded (503 while the index builds)
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)" || exit 1
ENTRYPOINT ["siftrank"]
# the corpus: $SIFTRANK_DATA/msmarco-dl19 unless --dataset says otherwise
CMD ["serve", "--pipeline", "/app/configs/serve.toml", "--host", "0.0.0.0", "--port", "8000"]
