"""Image preprocessing of CXR-LLaVA-v2, as the published code does it with transformers' CLIPImageProcessor.

1. ``convert('L')`` (8-bit grey);
2. resize so that the shortest edge is ``image_size`` (the long edge becomes ``int(size * long / short)``) with
   PIL's LANCZOS filter;
3. centre crop to ``image_size`` x ``image_size`` (offsets ``(H - size) // 2`` and ``(W - size) // 2``);
4. ``x * (1/255)`` computed in float64 and stored as float32, then ``(x - mean) / std`` in float32.

Pure numpy/PIL so that it runs in data-loader worker processes without the model.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def preprocess_image(image: Image.Image, image_size: int, mean: float, std: float) -> np.ndarray:
    """A PIL image -> float32 array [1, image_size, image_size]."""
    image = image.convert("L")
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(image_size * long / short)
    new_size = (image_size, new_long) if width <= height else (new_long, image_size)
    image = image.resize(new_size, resample=Image.LANCZOS)
    pixels = np.asarray(image)
    top = (pixels.shape[0] - image_size) // 2
    left = (pixels.shape[1] - image_size) // 2
    pixels = pixels[top:top + image_size, left:left + image_size]
    x = (pixels * (1 / 255)).astype(np.float32)
    x = (x - np.float32(mean)) / np.float32(std)
    return x[None].astype(np.float32, copy=False)
