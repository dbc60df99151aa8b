"""Recaption through an OpenAI-compatible server: ``openai:http://HOST:PORT/v1#MODEL`` (LMDeploy serving CogVLM2, ``vllm serve``)."""
from __future__ import annotations

import json
from typing import Any, Optional

from PIL import Image

from core.engines import EngineSpec
from core.record import SampleError
from stages.engines.captioner_base import CaptionerBase, caption_messages, image_data_uri, resolve_options


class OpenAICaptioner(CaptionerBase):
    """An OpenAI-compatible server (LMDeploy serving CogVLM2, ``vllm serve``): concurrent requests."""

    engine = "openai"

    def __init__(self, spec: EngineSpec, client: Optional[Any] = None, **options: Any):
        from stages.engines.openai_client import OpenAIClient, default_warmup_s, optional_int

        base_url, opts = resolve_options(spec, options)
        super().__init__(spec.model or "default", opts)
        self.client = client or OpenAIClient(base_url, model=spec.model, timeout=float(opts.get("timeout", 120)),
                                             retries=int(opts.get("retries", 2)),
                                             concurrency=optional_int(opts.get("concurrency")))
        self.extras = {"max_tokens": self.max_tokens, "temperature": self.temperature}
        if "top_p" in opts:
            self.extras["top_p"] = float(opts["top_p"])
        if "seed" in opts:
            self.extras["seed"] = int(opts["seed"])
        self.provenance["base_url"] = base_url
        if client is None:  # a GPU container's server may still be loading: wait before the first batch
            self.client.wait_ready(float(opts.get("warmup", default_warmup_s())))

    def request(self, image: Image.Image) -> dict[str, Any]:
        """The chat-completion request body for one image."""
        body: dict[str, Any] = {"messages": caption_messages(self.prompt, image_data_uri(self.prepare(image),
                                                                                         self.jpeg_quality)),
                                **self.extras}
        if self.client.model:
            body["model"] = self.client.model
        return body

    def _one(self, image: Image.Image) -> str | Exception:
        return self.call(self.request(image))

    def call(self, body: dict[str, Any]) -> str | Exception:
        """Send one request body made by :meth:`request` (I/O only: the request window's threads run this)."""
        from stages.engines.openai_client import OpenAIError, OpenAITimeout

        try:
            answer = self.client.post_json("chat/completions", body)
        except OpenAITimeout as e:
            return SampleError("caption_timeout", str(e))
        except OpenAIError as e:
            if e.status == 200:
                return SampleError("malformed_answer", str(e))
            return SampleError("caption_request_failed", str(e))
        try:
            choice = answer["choices"][0]
            text = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return SampleError("malformed_answer", f"no choices[0].message.content in {json.dumps(answer)[:200]}")
        return self.finish(text, truncated=choice.get("finish_reason") == "length")

    def caption(self, images: list[Image.Image]) -> list[str | Exception]:
        return self.client.map(self._one, images)


def build(spec: EngineSpec, **options: Any) -> OpenAICaptioner:
    return OpenAICaptioner(spec, **options)
