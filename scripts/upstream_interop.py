"""Check checkpoint interchange against upstream FG-CLIP's own code (not part of `make test`).

Upstream (360CVGroup/FG-CLIP, branch v1.0) pins transformers 4.41, so its side runs in a second
environment: a checkout of FG-CLIP v1.0 on PYTHONPATH and transformers 4.41 (e.g. installed with
`pip install --target /tmp/up_site --no-deps transformers==4.41.0 tokenizers==0.19.1 huggingface_hub==0.23.4`
and put before site-packages on PYTHONPATH). Tiny random weights, no download.

    python scripts/upstream_interop.py ours-write /tmp/a      # this project: save_fgclip + its features
    PYTHONPATH=/tmp/up_site:FG-CLIP python scripts/upstream_interop.py upstream-check /tmp/a
    PYTHONPATH=/tmp/up_site:FG-CLIP python scripts/upstream_interop.py upstream-write /tmp/b
    python scripts/upstream_interop.py ours-check /tmp/b      # load_fgclip on upstream's own save

Each `*-check` prints the loading info and the largest difference per feature (long text, short
text, global image, dense grid, RoI regions, the three temperatures) against the other side's.

    finehard export-fgclip out --to /tmp/x
    PYTHONPATH=/tmp/up_site:FG-CLIP python scripts/upstream_interop.py upstream-data /tmp/x/jsonfiles

feeds an export to upstream's own stage-2 dataset and collator (``--image_folder /``, a byte-level
stand-in tokenizer, needs einops) and prints the batch shapes.
"""
from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOS, BOS = 49407, 49406  # upstream's FGCLIPModel forces these ids (a CLIP-sized vocabulary is needed)


def tiny_config() -> dict:
    text = dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS)
    vision = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, image_size=64,
                  patch_size=16)
    return {"text_config": text, "vision_config": vision, "projection_dim": 64}


def inputs() -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 40000, (3, 248), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate((5, 130, 248)):  # padded with EOS to 248, as upstream's tokenizer pads
        ids[i, 0], ids[i, n - 1:] = BOS, EOS
        mask[i, :n] = 1
    short, short_mask = ids[:, :77].clone(), mask[:, :77].clone()
    short[:, 76] = EOS
    return {"ids": ids, "mask": mask, "short": short, "short_mask": short_mask,
            "pix": torch.randn(2, 3, 64, 64, generator=g),
            "boxes": torch.tensor([[0, 0.1, 0.2, 0.6, 0.9], [1, 0.0, 0.0, 1.0, 1.0], [1, 0.3, 0.3, 0.4, 0.5]])}


def ours_features(path: str) -> dict:
    sys.path.insert(0, ROOT)
    from training.weights import load_fgclip

    m, x = load_fgclip(path).eval(), inputs()
    with torch.no_grad():
        _, dense = m.encode_image(x["pix"], dense=True)
        return {"long": m.encode_text(x["ids"] * x["mask"], x["mask"], long=True),
                "short": m.encode_text(x["short"] * x["short_mask"], x["short_mask"]),
                "global": m.encode_image(x["pix"])[0], "dense": dense, "regions": m.region_features(dense, x["boxes"]),
                "temperatures": torch.stack([m.clip.logit_scale, m.regional_logit_scale, m.hard_logit_scale]),
                "layout": m.source_layout}


def upstream_features(path: str) -> dict:
    from fgclip.model.clip_strc.fgclip import FGCLIPModel

    model, info = FGCLIPModel.from_pretrained(path, output_loading_info=True)
    model.eval()
    x = inputs()
    with torch.no_grad():
        dense = model.get_image_dense_features(x["pix"])
        b, n, p = dense.shape
        g = int(n ** 0.5)
        boxes = x["boxes"].clone()
        boxes[:, 1:] *= g  # upstream's eval passes boxes in grid units
        return {"long": F.normalize(model.get_text_features(x["ids"], walk_short_pos=False), dim=-1),
                "short": F.normalize(model.get_text_features(x["short"], walk_short_pos=True), dim=-1),
                "global": F.normalize(model.get_image_features(x["pix"]), dim=-1),
                "dense": dense.view(b, g, g, p).permute(0, 3, 1, 2),
                "regions": F.normalize(model.get_image_box_roi_features(x["pix"], box_info=boxes), dim=-1),
                "temperatures": torch.stack([model.logit_scale, model.logit_scale_finegraind,
                                             model.logit_scale_hardneg]),
                "loading_info": {k: sorted(v) if isinstance(v, (list, set)) else v for k, v in info.items()}}


def upstream_data(data_path: str) -> int:
    """Every item of ``data_path`` through upstream's LazySupervisedBboxDataset, then its collator."""
    import tempfile

    from fgclip.train.train_fgclip import DataArguments, DataCollatorForSupervisedDataset, LazySupervisedBboxDataset
    from transformers import CLIPImageProcessor, CLIPTokenizer

    bs = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):  # GPT-2's byte -> unicode table: a byte-level vocabulary with no merges
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "vocab.json"), "w") as f:
            json.dump(vocab, f)
        with open(os.path.join(d, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n")
        tok = CLIPTokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"))
    args = DataArguments(data_path=data_path, image_folder="/", add_box_loss=True, use_hard_neg=True)
    ds = LazySupervisedBboxDataset(data_path=data_path, data_args=args, img_preprocess=CLIPImageProcessor(), tokenizer=tok)
    batch = DataCollatorForSupervisedDataset()([ds[i] for i in range(len(ds))])
    print(f"{len(ds)} items:", {k: tuple(v.shape) for k, v in batch.items() if hasattr(v, "shape")})
    return 0


def compare(mine: dict, other: dict) -> int:
    worst = 0.0
    for k in ("long", "short", "global", "dense", "regions", "temperatures"):
        d = float((mine[k].float() - other[k].float()).abs().max())
        worst = max(worst, d)
        print(f"{k:>13}: max |diff| {d:.2e}")
    return 0 if worst < 1e-4 else 1


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("ours-write", "upstream-check", "upstream-write", "ours-check", "upstream-data"):
        print(__doc__, file=sys.stderr)
        return 2
    mode, path = argv
    if mode == "upstream-data":
        return upstream_data(path)
    if mode == "ours-write":
        sys.path.insert(0, ROOT)
        from transformers import CLIPConfig, CLIPModel

        from training.model import FGCLIP
        from training.weights import save_fgclip

        torch.manual_seed(0)
        m = FGCLIP(CLIPModel(CLIPConfig(**tiny_config())))
        with torch.no_grad():  # a long path and temperatures unlike a fresh build
            m.long_position_embedding.add_(torch.randn_like(m.long_position_embedding) * 0.01)
            m.long_text_projection.weight.add_(0.01)
            m.regional_logit_scale.fill_(3.1)
            m.hard_logit_scale.fill_(3.3)
        save_fgclip(m, path)
        torch.save(ours_features(path), os.path.join(path, "features_ours.pt"))
        print(f"wrote {path}")
        return 0
    if mode == "upstream-write":
        from fgclip.model.clip_strc.configuration_clip import CLIPConfig
        from fgclip.model.clip_strc.fgclip import FGCLIPModel

        torch.manual_seed(1)
        model = FGCLIPModel(CLIPConfig(**tiny_config()))
        model.resize_postion_embeding()  # what upstream's --from_openai True does
        model.copy_weight()
        with torch.no_grad():  # then make ori, res, the long projection and temperatures distinct
            e = model.text_model.embeddings
            e.position_embedding_ori.weight.add_(torch.randn_like(e.position_embedding_ori.weight) * 0.01)
            e.position_embedding_res.weight.add_(torch.randn_like(e.position_embedding_res.weight) * 0.01)
            model.text_filip_projection.weight.add_(0.02)
            model.logit_scale_finegraind.fill_(2.9)
            model.logit_scale_hardneg.fill_(3.4)
        model.save_pretrained(path, safe_serialization=True)
        torch.save(upstream_features(path), os.path.join(path, "features_upstream.pt"))
        print(f"wrote {path}")
        return 0
    if mode == "upstream-check":
        mine = upstream_features(path)
        print("FGCLIPModel.from_pretrained:", json.dumps(mine["loading_info"]))
        other = torch.load(os.path.join(path, "features_ours.pt"), weights_only=False)
    else:
        mine = ours_features(path)
        print("load_fgclip layout:", mine["layout"])
        other = torch.load(os.path.join(path, "features_upstream.pt"), weights_only=False)
    return compare(mine, other)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
