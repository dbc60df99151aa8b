"""Model pieces: 77->248 position extension, text/image paths vs HF CLIP, box -> grid -> RoIAlign, save/reload."""
import os

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPModel

from training.model import FGCLIP, extend_positions
from training.weights import load_fgclip, save_fgclip
from training_fixtures import tiny_model


def test_extend_positions_77_to_248_keeps_first_20_and_interpolates():
    torch.manual_seed(0)
    table = torch.randn(77, 8)
    new = extend_positions(table, keep_len=20)
    assert new.shape == (248, 8)
    assert torch.equal(new[:20], table[:20])
    for i in range(56):  # each original position 20+i is copied at 20+4i, then 3 interpolated rows
        a, b = table[20 + i], table[21 + i]
        assert torch.allclose(new[20 + 4 * i], a)
        assert torch.allclose(new[21 + 4 * i], 0.75 * a + 0.25 * b, atol=1e-6)
        assert torch.allclose(new[22 + 4 * i], 0.5 * a + 0.5 * b, atol=1e-6)
        assert torch.allclose(new[23 + 4 * i], 0.25 * a + 0.75 * b, atol=1e-6)
    step = table[76] - table[75]  # last original row, then linear extrapolation
    for k in range(4):
        assert torch.allclose(new[244 + k], table[76] + k / 4 * step, atol=1e-6)


def test_fgclip_long_path_initialised_from_short_path():
    m = tiny_model()
    base = m.clip.text_model.embeddings.position_embedding.weight
    assert m.long_position_embedding.shape == (248, base.shape[1])
    assert torch.equal(m.long_position_embedding.data, extend_positions(base.detach(), 20))
    assert torch.equal(m.long_text_projection.weight, m.clip.text_projection.weight)
    assert m.long_text_projection.weight.data_ptr() != m.clip.text_projection.weight.data_ptr()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_short_text_path_equals_hf_clip_text_features(attn):
    m = tiny_model(attn=attn).eval()
    eos = m.clip.config.text_config.eos_token_id
    ids = torch.tensor([[eos - 1, 5, 17, 99, eos, 0, 0], [eos - 1, 8, 9, 10, 11, 12, eos]])
    mask = (torch.arange(7)[None] <= (ids == eos).int().argmax(1)[:, None]).long()
    with torch.no_grad():
        ours = m.encode_text(ids, mask)
        ref = F.normalize(m.clip.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, dim=-1)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_long_path_uses_extended_table_for_long_texts():
    m = tiny_model().eval()
    ids = torch.randint(1, 4000, (2, 120))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        feats = m.encode_text(ids, mask, long=True)
    assert feats.shape == (2, 64)
    with pytest.raises(ValueError, match="exceeds"):
        m.encode_text(ids, mask, long=False)  # 120 > 77 short positions


def test_global_and_dense_image_features_follow_the_recipe():
    m = tiny_model().eval()
    torch.manual_seed(1)
    pix = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        glob, dense = m.encode_image(pix, dense=True)
        ref = F.normalize(m.clip.get_image_features(pixel_values=pix).pooler_output, dim=-1)
        hs = m.clip.vision_model(pixel_values=pix, output_hidden_states=True).hidden_states
        x = hs[-2]  # input of the last block
        last = m.clip.vision_model.encoder.layers[-1]
        d = x + last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(x)))  # value path, no q/k attention
        d = d + last.mlp(last.layer_norm2(d))
        d = m.clip.visual_projection(m.clip.vision_model.post_layernorm(d[:, 1:]))
        without_value = x + last.mlp(last.layer_norm2(x))  # the old recipe: must differ
        without_value = m.clip.visual_projection(m.clip.vision_model.post_layernorm(without_value[:, 1:]))
    assert torch.allclose(glob, ref, atol=1e-5)
    assert dense.shape == (2, 64, 4, 4)  # 64px / 16px patches
    assert torch.allclose(dense.flatten(2).transpose(1, 2), d, atol=1e-5)
    assert not torch.allclose(dense.flatten(2).transpose(1, 2), without_value, atol=1e-2)


def test_box_covering_one_patch_returns_that_patch_feature():
    torch.manual_seed(0)
    g = 4
    dense = torch.randn(2, 8, g, g)
    for b, i, j in [(0, 0, 0), (1, 2, 3), (0, 3, 1)]:
        box = torch.tensor([[b, j / g, i / g, (j + 1) / g, (i + 1) / g]])
        got = FGCLIP.region_features(dense, box)
        assert torch.allclose(got[0], F.normalize(dense[b, :, i, j], dim=0), atol=1e-6)


def test_box_covering_two_by_two_patches_averages_them():
    torch.manual_seed(0)
    dense = torch.randn(1, 8, 4, 4)
    got = FGCLIP.region_features(dense, torch.tensor([[0, 0.25, 0.5, 0.75, 1.0]]))  # cols 1-2, rows 2-3
    expected = F.normalize(dense[0, :, 2:4, 1:3].mean(dim=(1, 2)), dim=0)
    assert torch.allclose(got[0], expected, atol=1e-6)


def test_no_boxes_gives_empty_features_connected_to_graph():
    dense = torch.randn(1, 8, 4, 4, requires_grad=True)
    got = FGCLIP.region_features(dense, torch.zeros(0, 5))
    assert got.shape == (0, 8)
    got.sum().backward()
    assert dense.grad is not None


@pytest.mark.parametrize("layout", ["upstream", "project"])
def test_save_and_reload_both_layouts(tmp_path, layout):
    m = tiny_model()
    with torch.no_grad():
        m.long_text_projection.weight.add_(1.0)
        m.long_position_embedding.add_(0.5)
        m.hard_logit_scale.fill_(3.0)
        m.regional_logit_scale.fill_(2.0)
    save_fgclip(m, str(tmp_path), layout=layout)
    assert os.path.isfile(tmp_path / "fgclip_extras.safetensors") == (layout == "project")
    clip, info = CLIPModel.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert bool(info["unexpected_keys"]) == (layout == "upstream")  # the five upstream FG-CLIP tensors
    assert torch.equal(clip.text_projection.weight, m.clip.text_projection.weight)
    again = load_fgclip(str(tmp_path))
    assert again.source_layout == layout
    assert torch.equal(again.long_text_projection.weight, m.long_text_projection.weight)
    assert torch.equal(again.long_position_embedding, m.long_position_embedding)
    assert again.hard_logit_scale.item() == 3.0 and again.regional_logit_scale.item() == 2.0


def test_plain_clip_folder_gets_the_long_path_built(tmp_path):
    torch.manual_seed(0)
    from training.model import tiny_clip_config

    clip = CLIPModel(tiny_clip_config())
    with torch.no_grad():
        clip.logit_scale.fill_(4.6052)  # OpenAI CLIP's value: exp = 100
    clip.save_pretrained(str(tmp_path))
    m = load_fgclip(str(tmp_path))
    assert m.source_layout == "clip"
    table = clip.text_model.embeddings.position_embedding.weight
    assert torch.allclose(m.long_position_embedding, extend_positions(table.detach(), 20))
    assert torch.equal(m.long_text_projection.weight, clip.text_projection.weight)
    # upstream train_fgclip.py: both extra temperatures start from the model's logit_scale
    assert m.regional_logit_scale.item() == m.hard_logit_scale.item() == pytest.approx(4.6052)


def test_deduplicated_region_texts_equal_encoding_each_copy(tmp_path):
    from training.synthetic_shards import write_synthetic_shards
    from training.tokenizer import SimpleWordTokenizer, tokenize
    from training_fixtures import fixed_batch

    write_synthetic_shards(str(tmp_path), 6, per_shard=6)
    batch = fixed_batch(str(tmp_path), 6)
    m = tiny_model().eval()
    with torch.no_grad():
        feats = m(batch, regional=True)
        h = 0
        texts = [batch["expr_texts"][int(i)] for i in batch["hard_text_index"][h]]
        ids, mask = tokenize(SimpleWordTokenizer(), texts, 77)
        direct = m.encode_text(ids, mask)
    assert texts[0] != texts[1] and len(texts) == 11
    assert torch.allclose(feats["hard_text"][h], direct, atol=1e-5)
    assert feats["region_text"].shape[0] == batch["region_boxes"].shape[0]


def test_bucketed_text_encoding_equals_plain_encoding():
    m = tiny_model().eval()
    torch.manual_seed(3)
    lengths = torch.tensor([3, 9, 5, 12, 4, 7, 12])
    ids = torch.randint(1, 4000, (7, 12))
    mask = (torch.arange(12)[None] < lengths[:, None]).long()
    ids = ids * mask
    with torch.no_grad():
        assert torch.allclose(m.encode_texts_bucketed(ids, mask, buckets=3), m.encode_text(ids, mask), atol=1e-5)


def test_uint8_images_are_normalised_like_clip():
    from training.model import CLIP_MEAN, CLIP_STD, normalize_pixels

    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    ref = (x.float() / 255 - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    assert torch.allclose(normalize_pixels(x), ref, atol=1e-6)
    m = tiny_model().eval()
    with torch.no_grad():
        assert torch.allclose(m.encode_image(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8))[0].norm(), torch.tensor(1.0))
        a = m.encode_image(x.repeat(1, 1, 8, 8))[0]
        b = m.encode_image(ref.repeat(1, 1, 8, 8))[0]
    assert torch.allclose(a, b, atol=1e-5)
