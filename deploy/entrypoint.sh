#!/usr/bin/env bash
# Container entrypoint: start the vLLM server (its own venv) when a model is configured, then
# hand over to Beam's SDK harness boot with the arguments Dataflow passed.
#   FINEHARD_VLLM_MODEL   local path of the model (baked into the image or copied at start); unset = no server
#   FINEHARD_VLLM_ARGS    extra `vllm serve` flags, e.g. "--max-model-len 8192 --gpu-memory-utilization 0.85"
#   FINEHARD_VLLM_PORT    port on 127.0.0.1 (default 8000); engine spec openai:http://127.0.0.1:PORT/v1#NAME
set -euo pipefail
if [ -n "${FINEHARD_VLLM_MODEL:-}" ]; then
  # shellcheck disable=SC2086
  /opt/vllm/bin/vllm serve "$FINEHARD_VLLM_MODEL" --host 127.0.0.1 --port "${FINEHARD_VLLM_PORT:-8000}" \
    ${FINEHARD_VLLM_ARGS:-} > /tmp/vllm-server.log 2>&1 &
  # Do not block the harness here: each worker waits for GET /v1/models before its first batch, up to
  # FINEHARD_SERVER_WARMUP_S seconds (or ?warmup=S in the engine spec), then requests retry with backoff.
fi
exec /opt/apache/beam/boot "$@"
