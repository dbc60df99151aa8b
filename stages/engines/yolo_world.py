"""YoloWorldDetector: ultralytics YOLO-World boxes for each image's own expressions, batched, offline.

YOLO-World's ``set_classes`` builds a CLIP text model from the internet; this engine never calls
it. Text features come from a local encoder (a Hugging Face CLIP text model folder with its
tokenizer, given as ``yolo-world:/w.pt#text=/path/to/clip``, ``?text_encoder=PATH`` or the
``text_encoder`` keyword), are cached per expression (LRU), and are set straight on the model:
``txt_feats`` of shape (batch, classes, dim), one row of classes per image, and the head's ``nc``.
An image with fewer expressions than the longest in its batch repeats its first expression's
feature as padding (repeats change neither the attention's max over classes nor any other class),
and its padded classes are cut off before NMS, so a batched result equals the one-image result.

Output per image: ``[((x1, y1, x2, y2) pixels of the original image, score, expression index)]``
after per-class NMS at ``min_conf``; :func:`stages.detect.select_regions` then applies the
paper's confidence >= 0.4, class-agnostic NMS across expressions and the region cap.
"""
from __future__ import annotations

import collections
import os
import tempfile
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from core.engines import Detector, EngineSpec
from core.record import SampleError
from stages.engines import engine_options

DETECTOR_OPTION_KEYS = frozenset({"text_encoder", "imgsz", "device", "half", "min_conf", "pre_nms_iou",
                                  "max_det", "text_cache_size", "fuse"})
NO_TEXT_ENCODER = ("YOLO-World needs a local CLIP text encoder for its class names (it would otherwise "
                   "download one): pass yolo-world:/path/weights.pt#text=/path/to/clip-vit-base-patch32 "
                   "(a Hugging Face CLIPTextModelWithProjection folder with its tokenizer files) "
                   "or --detector-text-encoder /path/to/clip")


def undo_pil_patch() -> None:
    """Put Pillow's own ``Image.open`` back after ultralytics is imported.

    ultralytics replaces ``PIL.Image.open`` with a wrapper that, the first time a file is not an
    image, tries to pip-install pi-heif (a download at run time) and then raises
    ``ModuleNotFoundError`` instead of ``UnidentifiedImageError``. The readers tell a file that is
    not an image by that error, and the worker must never install anything: in a process where the
    detector was loaded, a ``notes.txt`` would otherwise be taken for a broken image."""
    try:
        from ultralytics.utils import patches
    except ImportError:
        return
    original = getattr(patches, "_image_open", None)
    if original is not None:
        Image.open = original
    if hasattr(patches, "_pil_plugins_registered"):
        patches._pil_plugins_registered = True  # the wrapper, if someone kept it, then just opens


def prepare_ultralytics_env() -> None:
    """Offline ultralytics with a writable settings folder; call before importing ultralytics."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    if not os.environ.get("YOLO_CONFIG_DIR"):
        folder = os.path.join(tempfile.gettempdir(), f"finehard-yolo-config-{os.getuid()}")
        os.makedirs(folder, exist_ok=True)
        os.environ["YOLO_CONFIG_DIR"] = folder


def local_weights(path: str) -> str:
    """A local file for ``path``; fsspec URIs (gs://, s3://, memory://) are copied once to a temp folder."""
    if "://" not in path:
        return path
    if path.startswith("file://"):
        return path[len("file://"):]
    import hashlib

    import fsspec

    folder = os.path.join(tempfile.gettempdir(), "finehard-weights", hashlib.sha1(path.encode()).hexdigest()[:12])
    local = os.path.join(folder, os.path.basename(path.rstrip("/")) or "weights.pt")
    if not os.path.exists(local):
        os.makedirs(folder, exist_ok=True)
        partial = f"{local}.{os.getpid()}.part"
        with fsspec.open(path, "rb") as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 24):
                dst.write(chunk)
        os.replace(partial, local)  # atomic: a concurrent worker never loads half a file
    return local


def resolve_detector_options(spec: EngineSpec, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Weights path and options: keywords (from flags) overridden by ``?key=`` and ``#text=`` in the spec."""
    if spec.model.startswith("text="):  # '#text=/w/clip' names the text encoder, like '?text_encoder=' would
        options = {**options, "text_encoder": spec.model[len("text="):]}
    return engine_options(spec.target, options, DETECTOR_OPTION_KEYS)  # '/w.pt?imgsz=1280' -> '/w.pt'


def validate(spec: EngineSpec, **options: Any) -> None:
    """Check a spec at launch, loading nothing: a text encoder is given and local paths exist."""
    weights, opts = resolve_detector_options(spec, options)
    encoder = opts.get("text_encoder")
    if not encoder:
        raise ValueError(NO_TEXT_ENCODER)
    if "://" not in weights and not os.path.isfile(weights):
        raise ValueError(f"no YOLO-World weights file at {weights}")
    if isinstance(encoder, str) and not os.path.isdir(encoder):
        raise ValueError(f"no CLIP text model folder at {encoder} (a Hugging Face folder with config.json, "
                         "model weights and tokenizer files)")


class HFClipTextEncoder:
    """A local Hugging Face CLIP text tower with projection: ``encode(texts) -> (n, dim)`` unit vectors."""

    def __init__(self, path: str, device: str = "cpu"):
        import torch
        from transformers import AutoTokenizer, CLIPTextModelWithProjection

        self.torch = torch
        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = CLIPTextModelWithProjection.from_pretrained(path, local_files_only=True).eval().to(device)
        self.dim = int(self.model.config.projection_dim)
        self.max_length = int(getattr(self.model.config, "max_position_embeddings", 77))

    def encode(self, texts: list[str]) -> Any:
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.model.device)
        with self.torch.inference_mode():
            feats = self.model(**tokens).text_embeds.float()
        return feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class CachedTextFeatures:
    """Per-expression text features, computed once and kept in an LRU dict (expressions repeat)."""

    def __init__(self, encode: Callable[[list[str]], Any], max_size: int = 8192):
        self.encode = encode
        self.max_size = max_size
        self.cache: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self.encoded = 0  # texts actually sent to the encoder

    def __call__(self, texts: Sequence[str]) -> list[Any]:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            feats = self.encode(missing)
            self.encoded += len(missing)
            for t, f in zip(missing, feats):
                self.cache[t] = f.detach().float().cpu()
        out = []
        for t in texts:
            self.cache.move_to_end(t)
            out.append(self.cache[t])
        while len(self.cache) > self.max_size:
            self.cache.popitem(last=False)
        return out


def _refuse_set_classes(*_: Any, **__: Any) -> None:
    raise RuntimeError("set_classes would download a CLIP model; this engine sets txt_feats directly")


class YoloWorldDetector(Detector):
    """``detect(images, expressions_per_image)``: one forward pass per batch, per-image classes."""

    def __init__(self, spec: EngineSpec, text_encoder: Any = None, model: Any = None, **options: Any):
        weights, opts = resolve_detector_options(spec, options)
        if text_encoder is None or isinstance(text_encoder, str):
            text_encoder = opts.get("text_encoder") or text_encoder
        if not text_encoder:
            raise ValueError(NO_TEXT_ENCODER)  # before any loading: fail fast
        prepare_ultralytics_env()
        import torch
        from ultralytics import YOLOWorld

        undo_pil_patch()
        self.torch = torch
        self.device = str(opts.get("device") or ("cuda:0" if torch.cuda.is_available() else "cpu"))
        self.half = bool(opts.get("half", self.device.startswith("cuda")))
        self.imgsz = int(opts.get("imgsz", 640))
        self.min_conf = float(opts.get("min_conf", 0.1))
        self.pre_nms_iou = float(opts.get("pre_nms_iou", 0.7))
        self.max_det = int(opts.get("max_det", 100))
        wrapper = model if model is not None else YOLOWorld(local_weights(weights))
        self.model = wrapper.model if hasattr(wrapper, "predictor") else wrapper  # the WorldModel nn.Module
        self.model.set_classes = _refuse_set_classes  # never reach the CLIP download
        if hasattr(wrapper, "set_classes") and wrapper is not self.model:
            wrapper.set_classes = _refuse_set_classes
        self.model = self.model.to(self.device).eval()
        if opts.get("fuse", True) and hasattr(self.model, "fuse"):
            self.model = self.model.fuse(verbose=False)  # conv+BN folded: same boxes, faster
        if self.half:
            self.model = self.model.half()
        self.head = self.model.model[-1]
        self.stride = int(max(self.model.stride.max().item(), 32)) if hasattr(self.model, "stride") else 32
        self.embed_dim = int(self.model.txt_feats.shape[-1])
        if isinstance(text_encoder, str):
            encoder_name = text_encoder
            text_encoder = HFClipTextEncoder(text_encoder, device=self.device)
        else:
            encoder_name = getattr(text_encoder, "name", type(text_encoder).__name__)
        enc_dim = getattr(text_encoder, "dim", self.embed_dim)
        if enc_dim != self.embed_dim:
            raise ValueError(f"text encoder {encoder_name} gives {enc_dim}-d features; these YOLO-World weights "
                             f"need {self.embed_dim}-d (CLIP ViT-B/32 for the released v2 weights)")
        self.text_features = CachedTextFeatures(text_encoder.encode, int(opts.get("text_cache_size", 8192)))
        self.provenance = {"engine": "yolo-world", "model": weights or "in-memory", "text_encoder": encoder_name,
                           "imgsz": self.imgsz, "min_conf": self.min_conf, "stub": False}

    def set_text_features(self, expressions_per_image: Sequence[Sequence[str]]) -> int:
        """Put (batch, classes, dim) features on the model, padding each row with its first feature."""
        width = max(len(e) for e in expressions_per_image)
        rows = []
        for exprs in expressions_per_image:
            feats = self.text_features(list(exprs))
            feats += [feats[0]] * (width - len(feats))
            rows.append(self.torch.stack(feats))
        param = next(self.model.parameters())
        self.model.txt_feats = self.torch.stack(rows).to(param.device, param.dtype)
        self.head.nc = width
        self.model.names = {i: f"expr{i}" for i in range(width)}
        return width

    def _letterbox(self, images: Sequence[Image.Image]) -> Any:
        from ultralytics.data.augment import LetterBox

        box = LetterBox((self.imgsz, self.imgsz), auto=False, stride=self.stride)
        arrays = [box(image=np.asarray(im.convert("RGB"))) for im in images]
        batch = self.torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        param = next(self.model.parameters())
        return batch.to(param.device, param.dtype) / 255.0

    def _batch(self, images: Sequence[Image.Image], expressions: Sequence[Sequence[str]]) -> list[list[Any]]:
        from ultralytics.utils.nms import non_max_suppression
        from ultralytics.utils.ops import scale_boxes

        self.set_text_features(expressions)
        x = self._letterbox(images)
        with self.torch.inference_mode():
            out = self.model(x)
        preds = out[0] if isinstance(out, (tuple, list)) else out  # (B, 4 + classes, anchors)
        results: list[list[Any]] = []
        for i, (im, exprs) in enumerate(zip(images, expressions)):
            mine = preds[i:i + 1, :4 + len(exprs)].float()  # this image's classes only, padding cut off
            det = non_max_suppression(mine, conf_thres=self.min_conf, iou_thres=self.pre_nms_iou,
                                      max_det=self.max_det, nc=len(exprs))[0]
            w, h = im.size
            boxes = scale_boxes((self.imgsz, self.imgsz), det[:, :4].clone(), (h, w))
            results.append([(tuple(float(v) for v in b), float(s), int(c))
                            for b, s, c in zip(boxes.tolist(), det[:, 4].tolist(), det[:, 5].tolist())])
        return results

    def detect(self, images: list[Image.Image], expressions_per_image: list[list[str]]) -> list[list[Any] | Exception]:
        if len(images) != len(expressions_per_image):
            raise ValueError(f"{len(images)} images but {len(expressions_per_image)} expression lists")
        out: list[list[Any] | Exception] = [[] for _ in images]  # no expressions: nothing to look for
        todo = [i for i, e in enumerate(expressions_per_image) if e]
        if not todo:
            return out
        try:
            found = self._batch([images[i] for i in todo], [expressions_per_image[i] for i in todo])
            for i, dets in zip(todo, found):
                out[i] = dets
        except Exception:  # noqa: BLE001 - find which image fails, the rest still get boxes
            if len(todo) == 1:
                raise
            for i in todo:
                try:
                    out[i] = self._batch([images[i]], [expressions_per_image[i]])[0]
                except Exception as e:  # noqa: BLE001
                    out[i] = SampleError("engine_error", f"{type(e).__name__}: {e}")
        return out


def build(spec: EngineSpec, **options: Any) -> YoloWorldDetector:
    return YoloWorldDetector(spec, **options)
