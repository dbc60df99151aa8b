"""The transformers captioner running a real, tiny, random-init LLaVA on the CPU (built offline from configs).

Random weights write word soup, so the tests check what does not depend on the weights: one caption
per image, the same text batched or alone (left padding and new-token slicing are right), the
generation budget, provenance, and that the model folder loads through the registry like a real one.
"""
from __future__ import annotations

import pathlib

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from PIL import Image  # noqa: E402

from stages.caption import CAPTIONERS

WORDS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "USER:", "ASSISTANT:"] + [f"w{i}" for i in range(60)]
TEMPLATE = ("{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
            "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
            "{% if add_generation_prompt %}ASSISTANT:{% endif %}")


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A 2-layer LLaVA (CLIP vision + Llama text) with a word-level tokenizer, saved like a hub folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                                     pad_token="<pad>", unk_token="<unk>",
                                                     extra_special_tokens={"image_token": "<image>"})
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": 28},
                                                      crop_size={"height": 28, "width": 28})
    processor = transformers.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                                            vision_feature_select_strategy="default", chat_template=TEMPLATE,
                                            num_additional_image_tokens=1)
    config = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                    num_attention_heads=2, image_size=28, patch_size=14),
        text_config=transformers.LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                             max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
                                             eos_token_id=2),
        image_token_index=4, vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("tiny-llava")
    transformers.LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_a_tiny_local_llava_captions_a_batch_like_one_image_at_a_time(tiny_llava: pathlib.Path) -> None:
    cap = CAPTIONERS.build(CAPTIONERS.resolve(f"transformers:{tiny_llava}?max_tokens=6&max_side=64"))
    images = [Image.new("RGB", (120, 40), "red"), Image.new("RGB", (30, 90), "blue"), Image.new("RGB", (50, 50))]
    batched = cap.caption(images)
    alone = [cap.caption([im])[0] for im in images]
    assert batched == alone
    assert all(isinstance(c, str) and 1 <= len(c.split()) <= 6 for c in batched)
    assert cap.provenance["engine"] == "transformers" and cap.provenance["dtype"] == "float32"
    assert cap.provenance["stub"] is False and cap.provenance["trust_remote_code"] is False
