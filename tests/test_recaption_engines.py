"""Real captioner engines without a GPU: an OpenAI-compatible fake server, a fake ``vllm`` module, fake HF parts."""
from __future__ import annotations

import base64
import io
import sys
import types
from typing import Any

import pytest
from PIL import Image

from fake_openai_server import FakeOpenAIServer, completion, scripted, slow
from core.engines import EngineSpec
from prompts import load_prompt
from core.record import SampleError
from stages.engines.captioner_base import clean_caption, fit_max_side
from stages.engines.captioner_openai import OpenAICaptioner
from stages.engines.captioner_transformers import TransformersCaptioner
from stages.engines.captioner_vllm import VllmCaptioner
from stages.caption import CAPTIONERS, apply_captioner

PROMPT, PROMPT_HASH = load_prompt("recaption.txt")


def decode_data_uri(uri: str) -> Image.Image:
    head, _, data = uri.partition(",")
    assert head == "data:image/jpeg;base64"
    return Image.open(io.BytesIO(base64.b64decode(data)))


def image_of(request: dict[str, Any]) -> Image.Image:
    parts = request["messages"][0]["content"]
    return decode_data_uri(next(p["image_url"]["url"] for p in parts if p["type"] == "image_url"))


@pytest.mark.parametrize("raw, clean", [
    ("In this image, a red dog sleeps on a sofa.", "A red dog sleeps on a sofa."),
    ("The image shows two cats on a mat.", "Two cats on a mat."),
    ("Sure! Here is a detailed description of the image: **A** tall tree.", "A tall tree."),
    ("  A bus\n\nparked   on the left. ", "A bus parked on the left."),
    ("Three scenes in this image are unrelated.", "Three scenes in this image are unrelated."),
])
def test_clean_caption_strips_preambles_only_at_the_start(raw: str, clean: str) -> None:
    assert clean_caption(raw) == clean


def test_resizing_for_the_model_leaves_the_original_image_alone() -> None:
    original = Image.new("RGB", (3000, 1500), (10, 20, 30))
    small = fit_max_side(original, 768)
    assert small.size == (768, 384) and original.size == (3000, 1500)
    assert fit_max_side(Image.new("L", (100, 50)), 768).size == (100, 50)


def test_openai_captioner_sends_the_prompt_and_a_decodable_image_and_parses_the_answer() -> None:
    def reply(req: dict[str, Any]) -> tuple[int, Any]:
        w, h = image_of(req).size
        return 200, completion(f"In this image, a picture of {w} by {h} pixels.")
    with FakeOpenAIServer(reply) as server:
        spec = CAPTIONERS.resolve(f"openai:{server.url}?max_side=64&timeout=5#cogvlm2-llama3-chat-19B")
        cap = CAPTIONERS.build(spec)
        out = cap.caption([Image.new("RGB", (256, 128), "red"), Image.new("RGB", (40, 30), "blue")])
    assert out == ["A picture of 64 by 32 pixels.", "A picture of 40 by 30 pixels."]
    req = server.requests[0]
    assert req["model"] == "cogvlm2-llama3-chat-19B" and req["max_tokens"] == 512
    assert req["messages"][0]["content"][1] == {"type": "text", "text": PROMPT.strip()}
    assert cap.provenance == {"engine": "openai", "model": "cogvlm2-llama3-chat-19B", "prompt": "recaption.txt",
                              "prompt_hash": PROMPT_HASH, "max_side": 64, "stub": False, "base_url": server.url}


def test_openai_captioner_failures_become_named_reasons_per_image() -> None:
    answers = iter([(200, {"choices": []}), (200, completion(None)), (400, {"error": "bad image"}),
                    (200, completion("   "))])
    with FakeOpenAIServer(lambda _: next(answers)) as server:
        cap = OpenAICaptioner(EngineSpec("openai", server.url, "m"), concurrency=1, retries=0, timeout=5)
        out = cap.caption([Image.new("RGB", (8, 8))] * 4)
    assert [o.reason for o in out] == ["malformed_answer", "malformed_answer", "caption_request_failed",
                                       "empty_caption"]


def test_openai_captioner_retries_transient_errors_and_times_out_with_a_reason() -> None:
    with FakeOpenAIServer(scripted((503, {"error": "busy"}), (200, completion("A cat.")))) as server:
        cap = OpenAICaptioner(EngineSpec("openai", server.url, "m"), retries=2, timeout=5)
        cap.client.backoff = 0.01
        assert cap.caption([Image.new("RGB", (8, 8))]) == ["A cat."]
        assert len(server.requests) == 2
    with FakeOpenAIServer(slow(1.0)) as server:
        cap = OpenAICaptioner(EngineSpec("openai", server.url, "m"), retries=1, timeout=0.2)
        cap.client.backoff = 0.01
        [out] = cap.caption([Image.new("RGB", (8, 8))])
        assert isinstance(out, SampleError) and out.reason == "caption_timeout"
        assert len(server.requests) == 2


def test_openai_dead_letters_through_apply_captioner_and_keeps_the_alt_text() -> None:
    def reply(req: dict[str, Any]) -> tuple[int, Any]:
        return (200, completion("A blue square.")) if image_of(req).getpixel((0, 0))[2] > 200 else (200, "{}")

    def record(key: str, colour: str) -> dict[str, Any]:
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), colour).save(buf, format="PNG")
        return {"key": key, "image_bytes": buf.getvalue(), "short_caption": f"alt {key}"}
    with FakeOpenAIServer(reply) as server:
        cap = OpenAICaptioner(EngineSpec("openai", server.url, "m"), retries=0, timeout=5)
        ok, bad = apply_captioner(cap, [record("a", "blue"), record("b", "red")])
    assert ok["caption"] == "A blue square." and ok["short_caption"] == "alt a"
    assert ok["provenance"]["caption"]["prompt_hash"] == PROMPT_HASH
    assert bad["_dead"]["stage"] == "recaption" and bad["_dead"]["reason"] == "malformed_answer"


def test_openai_captioner_keeps_several_requests_in_flight_and_answers_in_input_order() -> None:
    import threading

    state = {"now": 0, "most": 0}
    lock, gate = threading.Lock(), threading.Barrier(3, timeout=5)

    def reply(req: dict[str, Any]) -> tuple[int, Any]:
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        gate.wait()  # returns only once three requests are open at the same time
        with lock:
            state["now"] -= 1
        return 200, completion(f"A {image_of(req).width}px picture.")
    with FakeOpenAIServer(reply) as server:
        cap = OpenAICaptioner(EngineSpec("openai", server.url, "m"), concurrency=3, retries=0, timeout=10)
        out = cap.caption([Image.new("RGB", (w, 8)) for w in (10, 20, 30)])
    assert out == ["A 10px picture.", "A 20px picture.", "A 30px picture."]
    assert state["most"] == 3


# ---------------------------------------------------------------- vLLM, with a fake module
class FakeCompletion:
    def __init__(self, text: str, finish_reason: str = "stop"):
        self.text, self.finish_reason = text, finish_reason


class FakeLLM:
    def __init__(self, model: str, **kwargs: Any):
        self.model, self.kwargs, self.calls = model, kwargs, []

    def chat(self, conversations: list, sampling_params: Any = None, use_tqdm: bool = True) -> list:
        self.calls.append((conversations, sampling_params))
        out = []
        for conv in conversations:
            im = decode_data_uri(conv[0]["content"][0]["image_url"]["url"])
            if im.size == (13, 13):
                raise RuntimeError("this image breaks the model")
            text = f"The image shows a {im.size[0]}x{im.size[1]} picture. It is plain. And then"
            out.append(types.SimpleNamespace(outputs=[FakeCompletion(text, "length" if im.size[0] == 7 else "stop")]))
        return out


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    mod = types.ModuleType("vllm")
    mod.__version__ = "0.0-fake"
    mod.LLM = FakeLLM
    mod.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    return mod


def test_vllm_captioner_batches_all_images_into_one_chat_call(fake_vllm: types.ModuleType) -> None:
    spec = CAPTIONERS.resolve("vllm:/models/Qwen2-VL-7B-Instruct?max_side=32&tensor_parallel_size=2&max_tokens=300")
    cap = CAPTIONERS.build(spec)
    out = cap.caption([Image.new("RGB", (64, 16)), Image.new("RGB", (20, 20)), Image.new("RGB", (7, 3))])
    assert cap.llm.model == "/models/Qwen2-VL-7B-Instruct"
    assert cap.llm.kwargs == {"tensor_parallel_size": 2, "limit_mm_per_prompt": {"image": 1}}
    [(conversations, params)] = cap.llm.calls
    assert len(conversations) == 3 and conversations[0][0]["content"][1]["text"] == PROMPT.strip()
    assert params.max_tokens == 300 and params.temperature == 0.0
    assert out[:2] == ["A 32x8 picture. It is plain. And then", "A 20x20 picture. It is plain. And then"]
    assert out[2] == "A 7x3 picture. It is plain."  # cut at max_tokens: whole sentences only
    assert cap.provenance["engine"] == "vllm" and cap.provenance["prompt_hash"] == PROMPT_HASH


def test_vllm_captioner_isolates_an_image_that_fails_the_batch(fake_vllm: types.ModuleType) -> None:
    cap = VllmCaptioner(EngineSpec("vllm", "/m"))
    out = cap.caption([Image.new("RGB", (20, 20)), Image.new("RGB", (13, 13)), Image.new("RGB", (30, 30))])
    assert out[0].startswith("A 20x20") and out[2].startswith("A 30x30")
    assert isinstance(out[1], SampleError) and "breaks the model" in out[1].detail


# ---------------------------------------------------------------- transformers, with fake HF parts
torch = pytest.importorskip("torch")


class FakeTokenizer:
    pad_token_id = 0
    padding_side = "right"

    def batch_decode(self, rows: Any, skip_special_tokens: bool = True) -> list[str]:
        return [" ".join(f"w{int(t)}" for t in row if int(t) != 0) + "." for row in rows]


class FakeProcessor:
    def __init__(self) -> None:
        self.tokenizer = FakeTokenizer()
        self.seen: list = []

    def apply_chat_template(self, conversations: list, add_generation_prompt: bool = False, tokenize: bool = False,
                            return_dict: bool = False, return_tensors: Any = None,
                            processor_kwargs: Any = None) -> dict[str, Any]:
        self.seen.append((conversations, dict(add_generation_prompt=add_generation_prompt, tokenize=tokenize,
                                              return_dict=return_dict, return_tensors=return_tensors,
                                              **(processor_kwargs or {}))))
        ids = torch.tensor([[0] * (len(conversations) - i) + [5] * (i + 1) for i in range(len(conversations))])
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}

    def batch_decode(self, rows: Any, skip_special_tokens: bool = True) -> list[str]:
        return self.tokenizer.batch_decode(rows, skip_special_tokens)


class FakeVLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.generation_config = types.SimpleNamespace(eos_token_id=2)
        self.calls: list = []

    def generate(self, input_ids: Any, max_new_tokens: int, do_sample: bool, **kw: Any) -> Any:
        self.calls.append(dict(input_ids=input_ids, max_new_tokens=max_new_tokens, do_sample=do_sample, **kw))
        new = torch.arange(input_ids.shape[0]).unsqueeze(1) + torch.tensor([[7, 8, 2]])
        return torch.cat([input_ids, new], 1)


def test_transformers_captioner_builds_one_left_padded_chat_batch_and_decodes_only_new_tokens() -> None:
    proc, model = FakeProcessor(), FakeVLM()
    cap = TransformersCaptioner(EngineSpec("transformers", "/models/vlm?max_side=50"), model=model, processor=proc)
    out = cap.caption([Image.new("RGB", (100, 40)), Image.new("RGB", (10, 10))])
    assert out == ["W7 w8 w2.", "W8 w9 w3."]
    assert proc.tokenizer.padding_side == "left"
    [(conversations, kwargs)] = proc.seen
    assert [c[0]["content"][0]["image"].size for c in conversations] == [(50, 20), (10, 10)]
    assert conversations[0][0]["content"][1]["text"] == PROMPT.strip()
    assert kwargs["add_generation_prompt"] and kwargs["return_tensors"] == "pt"
    assert kwargs["padding"] is True and kwargs["padding_side"] == "left"
    [call] = model.calls
    assert call["max_new_tokens"] == 512 and call["do_sample"] is False and call["input_ids"].shape == (2, 3)
    assert cap.provenance["trust_remote_code"] is False and cap.provenance["family"] == "hf-image-text-to-text"


class FakeCogVLM(FakeVLM):
    def build_conversation_input_ids(self, tokenizer: Any, query: str, history: list, images: list,
                                     template_version: str) -> dict[str, Any]:
        n = images[0].size[0] // 10
        return {"input_ids": torch.full((n,), 9), "token_type_ids": torch.ones(n, dtype=torch.long),
                "attention_mask": torch.ones(n, dtype=torch.long), "images": [torch.zeros(3, 4, 4)]}


def test_cogvlm2_inputs_are_collated_with_left_padding() -> None:
    model = FakeCogVLM()
    cap = TransformersCaptioner(EngineSpec("transformers", "/models/cogvlm2"), model=model, tokenizer=FakeTokenizer())
    out = cap.caption([Image.new("RGB", (30, 10)), Image.new("RGB", (10, 10))])
    assert len(out) == 2 and all(isinstance(o, str) for o in out)
    [call] = model.calls
    assert call["input_ids"].tolist() == [[9, 9, 9], [0, 0, 9]]
    assert call["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert call["token_type_ids"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert len(call["images"]) == 2 and call["pad_token_id"] == 0
    assert cap.provenance["family"] == "cogvlm2"


def test_trust_remote_code_is_off_unless_the_user_opts_in(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    seen: list[dict[str, Any]] = []

    def fake_config(path: str, **kwargs: Any) -> Any:
        seen.append(kwargs)
        raise ValueError("requires you to execute the configuration file; set trust_remote_code=True")
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake_config)
    with pytest.raises(ValueError, match="trust_remote_code=true"):
        TransformersCaptioner(EngineSpec("transformers", "/models/cogvlm2"))
    with pytest.raises(ValueError, match="execute the configuration"):
        TransformersCaptioner(EngineSpec("transformers", "/models/cogvlm2?trust_remote_code=true"))
    assert [k["trust_remote_code"] for k in seen] == [False, True]
    assert all(k["local_files_only"] for k in seen)
