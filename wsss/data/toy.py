"""The embedded synthetic dataset ("toy"), written in the PASCAL VOC on-disk format.

Each foreground class is a shape family with a large plain body and a small discriminative part
(a coloured, patterned "head" covering ``part_fraction`` of the object). The two classes of a pair
share their body (same shape, same colour), so only the part tells them apart: a classifier's
class activation map settles on the part, the problem weakly-supervised methods exist to solve.
Every class has a usual background texture (``context_prob``), objects occlude one another
(``occlusion``) and class-free distractor shapes litter the background (``clutter``).

Generation is deterministic: every image draws from its own random generator seeded by
(seed, split, index), and images are written with a fixed JPEG quality.
See docs/toy-dataset.md.
"""

from __future__ import annotations

import colorsys
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from wsss.data.palette import IGNORE, colorize, load_mask, save_mask
from wsss.errors import WsssError

JPEG_QUALITY = 90
OBJECT_SCALE = (0.25, 0.6)  # object size as a fraction of the shorter image side
SPLITS = ("train", "val", "test")  # test: images without masks, for the test-server archive (`wsss submit`)
TOY_KEYS = ("seed", "num_classes", "n_train", "n_val", "n_test", "min_size", "max_size", "max_objects",
            "part_contrast", "part_fraction", "context_prob", "occlusion", "clutter", "ignore_width")

# Canonical outlines in [-1, 1]^2; the part (head) sits at the +x end.
_SHAPES: dict[str, list[tuple[float, float]]] = {
    "disc": [(np.cos(t), 0.85 * np.sin(t)) for t in np.linspace(0, 2 * np.pi, 40, endpoint=False)],
    "box": [(1, -0.55), (1, 0.55), (-1, 0.55), (-1, -0.55)],
    "wedge": [(1, 0), (-0.8, 0.9), (-0.8, -0.9)],
    "star": [((1.0 if k % 2 == 0 else 0.45) * np.cos(k * np.pi / 5),
              (1.0 if k % 2 == 0 else 0.45) * np.sin(k * np.pi / 5)) for k in range(10)],
    "cross": [(1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1), (-0.3, 0.3), (-1, 0.3),
              (-1, -0.3), (-0.3, -0.3), (-0.3, -1), (0.3, -1), (0.3, -0.3)],
    "kite": [(1, 0), (0, 0.6), (-1, 0), (0, -0.6)],
    "arrow": [(1, 0), (0.3, 0.75), (0.3, 0.3), (-1, 0.3), (-1, -0.3), (0.3, -0.3), (0.3, -0.75)],
    "trapezoid": [(1, -0.4), (1, 0.4), (-1, 0.85), (-1, -0.85)],
    "ell": [(1, -1), (1, -0.35), (-0.35, -0.35), (-0.35, 1), (-1, 1), (-1, -1)],
    "bowtie": [(-1, -0.8), (0, -0.15), (1, -0.8), (1, 0.8), (0, 0.15), (-1, 0.8)],
}
_BODY_RGB = {
    "disc": (0.85, 0.35, 0.25), "box": (0.30, 0.45, 0.85), "wedge": (0.90, 0.80, 0.25),
    "star": (0.60, 0.35, 0.75), "cross": (0.35, 0.70, 0.45), "kite": (0.90, 0.55, 0.75),
    "arrow": (0.40, 0.75, 0.80), "trapezoid": (0.55, 0.40, 0.25), "ell": (0.72, 0.72, 0.72),
    "bowtie": (0.95, 0.60, 0.20),
}
# Part patterns of the two pair members, alternating between even and odd shape families.
_PATTERNS = (("stripes", "dots"), ("checker", "solid"))
TEXTURES = ("water", "grass", "sand", "sky", "tiles", "wood")
MAX_CLASSES = 2 * len(_SHAPES)


@dataclass(frozen=True)
class ToyClass:
    """How one foreground class looks, and where it usually appears."""

    name: str
    shape: str
    body: tuple[float, float, float]
    part_light: tuple[float, float, float]
    part_dark: tuple[float, float, float]
    pattern: str
    habitat: str


def _hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 1.0
    return min(d, 1.0 - d)


@functools.lru_cache(maxsize=None)
def toy_classes(num_classes: int) -> tuple[ToyClass, ...]:
    """The class designs for ``num_classes`` foreground classes (fixed, independent of the seed)."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise WsssError(f"key 'data.toy.num_classes': {num_classes} is outside 1..{MAX_CLASSES}")
    shapes = list(_SHAPES)
    free_hues = [(0.05 + k / num_classes) % 1.0 for k in range(num_classes)]
    classes = []
    for c in range(num_classes):
        family, member = divmod(c, 2)
        shape = shapes[family]
        body = _BODY_RGB[shape]
        # Every class gets its own part hue: the free one nearest to a third of the hue circle away
        # from the body, on one side for the first member of a pair and on the other for the second.
        wanted = (colorsys.rgb_to_hsv(*body)[0] + (1 + member) / 3) % 1.0
        hue = min(free_hues, key=lambda h: _hue_distance(h, wanted))
        free_hues.remove(hue)
        light = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
        dark = colorsys.hsv_to_rgb(hue, 0.9, 0.3)
        pattern = _PATTERNS[family % 2][member]
        habitat = TEXTURES[(family + 3 * member) % len(TEXTURES)]
        classes.append(ToyClass(f"{shape}_{pattern}", shape, body, light, dark, pattern, habitat))
    return tuple(classes)


def class_names(num_classes: int) -> list[str]:
    """Names of the classes, index 0 = "background", then ``num_classes`` foreground classes."""
    return ["background"] + [c.name for c in toy_classes(num_classes)]


# --------------------------------------------------------------------------- textures

def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell_y: float, cell_x: float) -> np.ndarray:
    """Value noise in [0, 1]: a coarse random grid bilinearly upsampled (cells of ~cell px)."""
    gh, gw = int(h / cell_y) + 2, int(w / cell_x) + 2
    grid = rng.random((gh, gw), dtype=np.float32)
    big = Image.fromarray(grid, mode="F").resize((int(gw * cell_x), int(gh * cell_y)), Image.BILINEAR)
    return np.asarray(big, dtype=np.float32)[:h, :w]


def _jitter(rng: np.random.Generator, rgb, amount: float = 0.06) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32), 0, 1)


def _texture(kind: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An (h, w, 3) float32 background texture of the given kind."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "water":
        base = _jitter(rng, (0.15, 0.35, 0.6))
        lam = rng.uniform(6, 12)
        phase = rng.uniform(0, 2 * np.pi)
        wobble = 0.3 * np.sin(2 * np.pi * xx / rng.uniform(20, 40) + phase)
        shade = 0.08 * np.sin(2 * np.pi * (yy / lam + wobble)) + 0.08 * (_smooth_noise(rng, h, w, 12, 24) - 0.5)
        return base + shade[..., None] * np.float32([0.6, 0.9, 1.0])
    if kind == "grass":
        base = _jitter(rng, (0.25, 0.5, 0.2))
        blades = _smooth_noise(rng, h, w, 8, 1.5) - 0.5
        return base + (0.22 * blades + 0.05 * (_smooth_noise(rng, h, w, 20, 20) - 0.5))[..., None]
    if kind == "sand":
        base = _jitter(rng, (0.8, 0.7, 0.5))
        ripple = 0.04 * np.sin(2 * np.pi * (xx + 0.6 * yy) / rng.uniform(8, 14))
        grain = 0.07 * (rng.random((h, w), dtype=np.float32) - 0.5)
        return base + (ripple + grain)[..., None]
    if kind == "sky":
        top, bottom = _jitter(rng, (0.45, 0.65, 0.95)), _jitter(rng, (0.85, 0.9, 0.98), 0.03)
        t = (yy / max(h - 1, 1))[..., None]
        sky = top * (1 - t) + bottom * t
        clouds = np.clip((_smooth_noise(rng, h, w, 18, 28) - 0.55) * 3, 0, 1)[..., None]
        return sky * (1 - clouds) + np.float32(0.97) * clouds
    if kind == "tiles":
        base = _jitter(rng, (0.55, 0.52, 0.5), 0.1)
        period = rng.uniform(10, 20)
        ty, tx = np.floor(yy / period).astype(np.int64), np.floor(xx / period).astype(np.int64)
        tint = rng.uniform(-0.06, 0.06, (ty.max() + 1, tx.max() + 1)).astype(np.float32)[ty, tx]
        grout = ((yy % period) < 1.5) | ((xx % period) < 1.5)
        img = base + tint[..., None]
        img[grout] = base * 0.55
        return img
    if kind == "wood":
        base = _jitter(rng, (0.5, 0.32, 0.16))
        angle = rng.uniform(0, np.pi)
        along = xx * np.cos(angle) + yy * np.sin(angle)
        warp = 6 * _smooth_noise(rng, h, w, 16, 16)
        grain = 0.1 * np.sin(2 * np.pi * (along + warp) / rng.uniform(4, 8))
        return base + grain[..., None] * np.float32([1.0, 0.8, 0.6])
    raise ValueError(kind)


# --------------------------------------------------------------------------- objects

@functools.lru_cache(maxsize=None)
def _shape_geometry(shape: str, part_fraction: float) -> tuple[float, float]:
    """(area of the canonical outline, x threshold beyond which lies ``part_fraction`` of the area)."""
    n = 512
    points = [((x + 1) * (n - 1) / 2, (y + 1) * (n - 1) / 2) for x, y in _SHAPES[shape]]
    canvas = Image.new("L", (n, n), 0)
    ImageDraw.Draw(canvas).polygon(points, fill=1)
    inside = np.nonzero(np.asarray(canvas))
    xs = inside[1] * 2.0 / (n - 1) - 1
    area = len(xs) * (2.0 / (n - 1)) ** 2
    return area, float(np.quantile(xs, 1 - part_fraction))


@dataclass
class _Placed:
    cls: int
    cx: float
    cy: float
    radius: float
    body: np.ndarray
    part: np.ndarray
    area: float


def _place(spec: ToyClass, cls: int, cx: float, cy: float, size: float, part_fraction: float, rng: np.random.Generator,
           grid: tuple[np.ndarray, np.ndarray]) -> tuple[_Placed, np.ndarray, np.ndarray]:
    """Rasterise one object: body and part masks, plus local coordinates (u along the head, v across)."""
    yy, xx = grid
    h, w = yy.shape
    ax = size / 2 * rng.uniform(0.85, 1.15)
    ay = size / 2 * rng.uniform(0.85, 1.15)
    theta = rng.uniform(0, 2 * np.pi)
    cos, sin = np.cos(theta), np.sin(theta)
    outline = [(cx + ax * x * cos - ay * y * sin, cy + ax * x * sin + ay * y * cos) for x, y in _SHAPES[spec.shape]]
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon(outline, fill=1)
    body = np.asarray(canvas, dtype=bool)
    u = (xx - cx) * cos + (yy - cy) * sin
    v = -(xx - cx) * sin + (yy - cy) * cos
    area, threshold = _shape_geometry(spec.shape, part_fraction)
    part = body & (u >= threshold * ax)
    return _Placed(cls, cx, cy, size / 2, body, part, area * ax * ay), u, v


def _pattern(kind: str, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    half = period / 2
    if kind == "stripes":
        return (np.floor(v / half) % 2) == 0
    if kind == "checker":
        return ((np.floor(u / half) + np.floor(v / half)) % 2) == 0
    if kind == "dots":
        du, dv = (u % period) - half, (v % period) - half
        return du * du + dv * dv < (0.32 * period) ** 2
    return np.ones_like(u, dtype=bool)


def _paint(img: np.ndarray, spec: ToyClass, obj: _Placed, u: np.ndarray, v: np.ndarray,
           contrast: float, rng: np.random.Generator) -> None:
    body_rgb = _jitter(rng, spec.body, 0.04)
    shade = 1 + 0.12 * np.clip(v[obj.body] / max(obj.radius, 1), -1, 1)
    img[obj.body] = np.clip(body_rgb * shade[:, None], 0, 1)
    light = body_rgb + contrast * (np.float32(spec.part_light) - body_rgb)
    dark = body_rgb + contrast * (np.float32(spec.part_dark) - body_rgb)
    on = _pattern(spec.pattern, u[obj.part], v[obj.part], max(3.0, obj.radius / 3.5))
    img[obj.part] = np.where(on[:, None], light, dark)


def _draw_clutter(img: np.ndarray, count: int, classes: tuple[ToyClass, ...], rng: np.random.Generator) -> None:
    """Class-free distractor shapes: discs, bars and triangles, some in the colours of class parts."""
    h, w = img.shape[:2]
    side = min(h, w)
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for k in range(count):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = side * rng.uniform(0.02, 0.08)
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=k + 1)
        elif kind == 1:
            angle = rng.uniform(0, np.pi)
            dx, dy = 2.5 * r * np.cos(angle), 2.5 * r * np.sin(angle)
            draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=k + 1, width=max(1, int(r / 2)))
        else:
            angles = rng.uniform(0, 2 * np.pi, 3)
            draw.polygon([(cx + r * 1.5 * np.cos(a), cy + r * 1.5 * np.sin(a)) for a in angles], fill=k + 1)
    ids = np.asarray(canvas)
    for k in range(count):
        where = ids == k + 1
        if not where.any():
            continue
        if rng.random() < 0.5:
            colour = np.float32(classes[rng.integers(len(classes))].part_light)
        else:
            colour = rng.random(3, dtype=np.float32)
        img[where] = colour


def _ignore_band(label: np.ndarray, width: int) -> np.ndarray:
    """Set to IGNORE the pixels within a ``width``-pixel band along every label boundary."""
    if width <= 0:
        return label
    lo, hi = -(width // 2), width - width // 2
    pad = max(-lo, hi)
    padded = np.pad(label, pad, mode="edge")
    h, w = label.shape
    mn = label.copy()
    mx = label.copy()
    for dy in range(lo, hi + 1):
        for dx in range(lo, hi + 1):
            view = padded[pad + dy:pad + dy + h, pad + dx:pad + dx + w]
            np.minimum(mn, view, out=mn)
            np.maximum(mx, view, out=mx)
    out = label.copy()
    out[mn != mx] = IGNORE
    return out


def _visible_enough(placed: list[_Placed], owner: np.ndarray, part_fraction: float) -> bool:
    for j, obj in enumerate(placed):
        mine = owner == j
        if mine.sum() < 0.4 * obj.area:
            return False
        if (obj.part & mine).sum() < 0.5 * part_fraction * obj.area:
            return False
    return True


def render_image(cfg: dict, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (H, W, 3 uint8) and its mask (H, W uint8, 255 = ignore), from (seed, split, index)."""
    rng = np.random.default_rng([int(cfg["seed"]), SPLITS.index(split), int(index)])
    classes = toy_classes(int(cfg["num_classes"]))
    h = int(rng.integers(cfg["min_size"], cfg["max_size"] + 1))
    w = int(rng.integers(cfg["min_size"], cfg["max_size"] + 1))
    side = min(h, w)
    n_objects = int(rng.integers(1, cfg["max_objects"] + 1))
    picks = rng.integers(len(classes), size=n_objects)
    sizes = np.sort(rng.uniform(*OBJECT_SCALE, n_objects) * side)[::-1]

    main = classes[picks[0]]
    texture = main.habitat if rng.random() < cfg["context_prob"] else TEXTURES[rng.integers(len(TEXTURES))]
    img = _texture(texture, rng, h, w).astype(np.float32)
    _draw_clutter(img, int(rng.poisson(cfg["clutter"] * 8)), classes, rng)

    grid = np.mgrid[0:h, 0:w].astype(np.float32)
    grid = (grid[0], grid[1])
    owner = np.full((h, w), -1, dtype=np.int16)
    placed: list[_Placed] = []
    for cls, size in zip(picks, sizes):
        for attempt in range(7):
            if placed and rng.random() < cfg["occlusion"]:
                anchor = placed[rng.integers(len(placed))]
                angle = rng.uniform(0, 2 * np.pi)
                dist = (anchor.radius + size / 2) * rng.uniform(0.35, 0.9)
                cx, cy = anchor.cx + dist * np.cos(angle), anchor.cy + dist * np.sin(angle)
            elif not placed and attempt == 6:
                cx, cy = w / 2, h / 2
            else:
                cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
            obj, u, v = _place(classes[cls], int(cls), cx, cy, size, cfg["part_fraction"], rng, grid)
            trial = owner.copy()
            trial[obj.body] = len(placed)
            if _visible_enough(placed + [obj], trial, cfg["part_fraction"]) or (not placed and attempt == 6):
                owner = trial
                placed.append(obj)
                _paint(img, classes[cls], obj, u, v, cfg["part_contrast"], rng)
                break

    gain = rng.uniform(0.9, 1.1)
    img = img * gain + rng.normal(0, 0.015, img.shape).astype(np.float32)
    image = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    lut = np.array([0] + [p.cls + 1 for p in placed], dtype=np.uint8)
    label = lut[owner + 1]
    return image, _ignore_band(label, int(cfg["ignore_width"]))


def _check_cfg(cfg: dict) -> None:
    missing = [k for k in TOY_KEYS if k not in cfg]
    if missing:
        raise WsssError(f"data.toy: missing key '{missing[0]}'")
    if cfg["min_size"] > cfg["max_size"]:
        raise WsssError("key 'data.toy.min_size' must not exceed 'data.toy.max_size'")
    if cfg["min_size"] < 32:
        raise WsssError(f"key 'data.toy.min_size': {cfg['min_size']} is below 32")
    toy_classes(int(cfg["num_classes"]))


def image_name(split: str, index: int) -> str:
    return f"{split}_{index:05d}"


def generate(toy_cfg: dict, out_dir: Path, progress: bool = True) -> dict:
    """Write the toy dataset in VOC layout under ``out_dir``; return its classes and split sizes."""
    _check_cfg(toy_cfg)
    out_dir = Path(out_dir)
    images, masks, sets = out_dir / "JPEGImages", out_dir / "SegmentationClass", out_dir / "ImageSets" / "Segmentation"
    for folder in (images, masks, sets):
        folder.mkdir(parents=True, exist_ok=True)
    counts = {"train": int(toy_cfg["n_train"]), "val": int(toy_cfg["n_val"]), "test": int(toy_cfg["n_test"])}
    bar = tqdm(total=sum(counts.values()), desc="toy dataset", unit="img", disable=not progress)
    lists: dict[str, list[str]] = {}
    for split, count in counts.items():
        names = []
        for index in range(count):
            name = image_name(split, index)
            image, mask = render_image(toy_cfg, split, index)
            Image.fromarray(image).save(images / f"{name}.jpg", format="JPEG", quality=JPEG_QUALITY)
            if split != "test":  # as VOC's test images, the test split comes without masks
                save_mask(mask, masks / f"{name}.png")
            names.append(name)
            bar.update()
        lists[split] = names
    bar.close()
    lists["train_aug"] = lists["train"]
    splits = ("train", "train_aug", "val", "test") if lists["test"] else ("train", "train_aug", "val")
    for split in splits:
        (sets / f"{split}.txt").write_text("".join(f"{n}\n" for n in lists[split]))
    n = int(toy_cfg["num_classes"])
    return {
        "num_classes": n + 1,
        "class_names": class_names(n),
        "splits": {split: len(lists[split]) for split in splits},
    }


def render_examples(root: str | Path, out_png: str | Path, n: int = 8, split: str = "val") -> Path:
    """Save a grid of the first ``n`` images of ``split`` with their coloured masks (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from wsss.utils.atomic import atomic_path

    root = Path(root)
    names = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()[:n]
    info_path = root / "prepared.json"
    names_of = json.loads(info_path.read_text())["class_names"] if info_path.is_file() else None
    cols = min(4, len(names))
    rows = 2 * -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.4 * rows + 1.2), squeeze=False)
    seen: set[int] = set()
    for k, name in enumerate(names):
        r, c = 2 * (k // cols), k % cols
        image = np.asarray(Image.open(root / "JPEGImages" / f"{name}.jpg").convert("RGB"))
        mask = load_mask(root / "SegmentationClass" / f"{name}.png")
        seen.update(int(v) for v in np.unique(mask) if v not in (0, IGNORE))
        axes[r, c].imshow(image)
        axes[r, c].set_title(name, fontsize=8)
        axes[r + 1, c].imshow(colorize(mask))
    for ax in axes.flat:
        ax.axis("off")
    if names_of is None:
        names_of = class_names(max(seen, default=1))
    handles = [Patch(color=colorize(np.uint8([[v]]))[0, 0] / 255, label=names_of[v]) for v in [0, *sorted(seen)]]
    handles.append(Patch(color=colorize(np.uint8([[IGNORE]]))[0, 0] / 255, label="ignore (255)"))
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out_png
