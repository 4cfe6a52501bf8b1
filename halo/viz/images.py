"""Images and animations: tiling renders into labelled grids, PNG files, GIF/MP4 animations.

Files are written atomically (:mod:`halo.utils.atomic`): an interrupted job never leaves
a truncated image behind.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from halo.utils.atomic import atomic_path

__all__ = ["render_grid", "save_png", "to_rgb_uint8", "write_animation"]


def to_rgb_uint8(image: Any, name: str = "image") -> np.ndarray:
    """(H, W), (H, W, 3) or (H, W, 4), uint8 or float in [0, 1] -> (H, W, 3) uint8 (alpha dropped)."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must have shape (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or inf values")
        return np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ValueError(f"{name} must be uint8 or float in [0, 1], got dtype {arr.dtype}")


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable font, Pillow >= 10.1
    except TypeError:  # older Pillow: fixed-size bitmap font
        return ImageFont.load_default()


def render_grid(
    images: Sequence[np.ndarray],
    ncols: int,
    labels: Sequence[str] | None = None,
    pad: int = 0,
    background: Sequence[int] = (255, 255, 255),
    label_color: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """Tile images into a grid, row-major, with optional text labels at each cell's top-left.

    Args:
        images: (H, W[, 3|4]) arrays, uint8 or floats in [0, 1]; cells take the largest size
            and smaller images sit at their cell's top-left.
        ncols: number of columns (>= 1); rows = ceil(len(images) / ncols).
        labels: optional, one string per image.
        pad: pixels between cells and around the border.
        background, label_color: RGB 0-255.

    Returns:
        (rows * Hc + (rows + 1) * pad, ncols * Wc + (ncols + 1) * pad, 3) uint8, where
        (Hc, Wc) is the largest image size.
    """
    if len(images) == 0:
        raise ValueError("render_grid needs at least one image")
    if int(ncols) != ncols or ncols < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(labels)} labels for {len(images)} images")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    ncols = int(ncols)
    tiles = [to_rgb_uint8(im, f"images[{i}]") for i, im in enumerate(images)]
    ch = max(t.shape[0] for t in tiles)
    cw = max(t.shape[1] for t in tiles)
    nrows = math.ceil(len(tiles) / ncols)
    out = np.empty((nrows * ch + (nrows + 1) * pad, ncols * cw + (ncols + 1) * pad, 3), dtype=np.uint8)
    out[:] = np.asarray(background, dtype=np.uint8)
    origins = []
    for k, tile in enumerate(tiles):
        r, c = divmod(k, ncols)
        y0, x0 = pad + r * (ch + pad), pad + c * (cw + pad)
        out[y0 : y0 + tile.shape[0], x0 : x0 + tile.shape[1]] = tile
        origins.append((x0, y0))
    if labels is not None:
        from PIL import Image, ImageDraw

        pil = Image.fromarray(out)
        draw = ImageDraw.Draw(pil)
        font = _font(max(10, ch // 28))
        for (x0, y0), text in zip(origins, labels, strict=True):
            if text:
                # A light box behind the text keeps it readable over dark renders.
                box = draw.textbbox((x0 + 4, y0 + 3), str(text), font=font)
                draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=tuple(background))
                draw.text((x0 + 4, y0 + 3), str(text), fill=tuple(label_color), font=font)
        out = np.asarray(pil)
    return out


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W[, 3|4]) uint8 or [0, 1]-float image as PNG (RGBA kept); creates parent folders."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 4:
        rgba = to_rgb_uint8(arr)  # validates; then put the alpha back
        alpha = arr[..., 3] if arr.dtype == np.uint8 else np.round(np.clip(arr[..., 3], 0, 1) * 255)
        pil = Image.fromarray(np.dstack([rgba, alpha.astype(np.uint8)]), mode="RGBA")
    else:
        pil = Image.fromarray(to_rgb_uint8(arr))
    out = Path(path)
    with atomic_path(out) as tmp:
        pil.save(tmp, format="PNG")
    return out


def _mp4_writer_available() -> str | None:
    """Name of an importable mp4 backend for imageio ("ffmpeg" or "pyav"), or None."""
    import importlib.util

    if importlib.util.find_spec("imageio_ffmpeg") is not None:
        return "ffmpeg"
    if importlib.util.find_spec("av") is not None:
        return "pyav"
    return None


def write_animation(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: float = 15) -> Path:
    """Write frames (each (H, W[, 3|4]), uint8 or [0, 1] floats, all the same size) as .gif or .mp4.

    GIF is written with Pillow (always available), looping forever.  MP4 needs
    ``imageio-ffmpeg`` or ``av`` installed; without one a RuntimeError says so and suggests .gif.
    """
    if len(frames) == 0:
        raise ValueError("write_animation needs at least one frame")
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be positive, got {fps}")
    rgb = [to_rgb_uint8(f, f"frames[{i}]") for i, f in enumerate(frames)]
    if any(f.shape != rgb[0].shape for f in rgb):
        raise ValueError(f"all frames must have the same size, got {sorted({f.shape for f in rgb})}")
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"animation path must end in .gif or .mp4, got {out.name!r}")
    if suffix == ".mp4":
        backend = _mp4_writer_available()
        if backend is None:
            raise RuntimeError(
                "writing .mp4 needs an mp4 encoder for imageio (`pip install imageio-ffmpeg` or "
                "`pip install av`); none is installed. Write a .gif instead."
            )
        # H.264 with yuv420p needs even sizes: pad with the edge colour instead of resizing.
        h, w = rgb[0].shape[:2]
        padded = [np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") for f in rgb]
        import imageio.v3 as iio

        with atomic_path(out) as tmp:
            if backend == "ffmpeg":
                iio.imwrite(
                    tmp, np.stack(padded), plugin="FFMPEG", fps=fps, macro_block_size=1, extension=".mp4"
                )
            else:
                iio.imwrite(tmp, np.stack(padded), plugin="pyav", codec="libx264", fps=fps, extension=".mp4")
        return out
    from PIL import Image

    pil = [Image.fromarray(f) for f in rgb]
    with atomic_path(out) as tmp:
        pil[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=pil[1:],
            duration=max(20, round(1000.0 / fps)),  # ms per frame; browsers clamp below 20 ms
            loop=0,
        )
    return out
