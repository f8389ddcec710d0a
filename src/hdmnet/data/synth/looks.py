"""Class appearances and the painting of objects and backgrounds.

Two designs. ``make_grid_looks`` (the PASCAL-like set) makes every class one cell of a hue x
tone grid, arranged over the fold groups so that each fold's novel classes are new combinations
of the hues and tones its base classes all show. Hue and tone are the cues a small network at
the demo's input size resolves; with textures as the class-defining cue (an earlier grid of
hue x texture) it confused same-hue classes. ``make_looks`` (the COCO-like set, 80 classes)
gives every class a distinct (texture, hue) cell; classes sharing a hue bin also differ in tone
and shape.
Texture frequency, secondary colour, saturation and brightness vary on top. Instances jitter
size, aspect, rotation and colour around the class look.
Backgrounds are low-saturation gradients with blotches and fine noise: no class texture ever
appears there, so "object vs background" and "which class" are both learnable from appearance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

SHAPES = ("ellipse", "polygon", "star", "blob", "roundrect", "flower")
TEXTURES = ("stripes", "checker", "dots", "rings", "waves", "noise", "grid")
SECONDARY = ("dark", "light", "complement", "analog")
HUE_BINS = 12
#: Texture periods in pixels; a class uses one, instances jitter it by a few percent.
PERIODS = (9.0, 13.0, 18.0)
#: Texture families of the grid design's classes ("flat" is an untextured, shaded surface); a
#: texture decorates a class, it does not define it.
GRID_TEXTURES = ("flat", "stripes", "dots", "checker")
#: Grid texture periods in pixels: at least 1.5 feature cells (stride 8) at the model input.
GRID_PERIODS = (14.0, 18.0)
#: Radial samples per shape outline; enough for smooth curves at these image sizes.
OUTLINE_POINTS = 72


@dataclass(frozen=True)
class ClassLook:
    """The appearance of one class."""

    shape: str
    shape_order: int  # vertices / points / petals / harmonics, depending on the shape
    shape_depth: float  # star inner radius, flower petal depth, blob roughness, rect squareness
    aspect: float  # class-typical width/height ratio
    texture: str
    period: float  # texture period in pixels
    texture_angle: float  # radians, relative to the instance rotation
    hue: float  # degrees, 0..360
    saturation: float
    value: float
    secondary: str
    mix: float  # strength of the texture pattern (0 = flat primary colour)


def make_looks(rng: np.random.Generator, n_classes: int) -> list[ClassLook]:
    """Draw ``n_classes`` looks, spread so that classes are told apart at low resolution.

    Classes fill the hue bins round-robin (a random bin order), so the first ``HUE_BINS``
    classes all differ in hue. A class that shares its bin with earlier ones differs from each
    of them in texture family, in tone (alternating bright and dark bands of brightness) and,
    while families remain, in shape: colour, the cue a small network picks up first, never
    alone decides between two classes.
    """
    if n_classes > len(TEXTURES) * HUE_BINS:
        raise ValueError(
            f"at most {len(TEXTURES) * HUE_BINS} distinct class looks exist, asked for {n_classes}"
        )
    bin_order = rng.permutation(HUE_BINS)
    hue_offset = rng.uniform(0.0, 360.0 / HUE_BINS)  # one global shift: bins stay equally spaced
    textures_in_bin: dict[int, list[int]] = {int(b): [] for b in bin_order}
    shapes_in_bin: dict[int, list[int]] = {int(b): [] for b in bin_order}
    looks = []
    for index in range(n_classes):
        hue_bin = int(bin_order[index % HUE_BINS])
        occupants = index // HUE_BINS  # classes already in this bin
        free_textures = [t for t in range(len(TEXTURES)) if t not in textures_in_bin[hue_bin]]
        texture_index = free_textures[int(rng.integers(len(free_textures)))]
        free_shapes = [s for s in range(len(SHAPES)) if s not in shapes_in_bin[hue_bin]]
        shape_index = (free_shapes or list(range(len(SHAPES))))[
            int(rng.integers(len(free_shapes) or len(SHAPES)))
        ]
        textures_in_bin[hue_bin].append(texture_index)
        shapes_in_bin[hue_bin].append(shape_index)
        bright = occupants % 2 == 0
        looks.append(
            ClassLook(
                shape=SHAPES[shape_index],
                shape_order=int(rng.integers(3, 8)),
                shape_depth=float(rng.uniform(0.35, 0.75)),
                aspect=float(np.exp(rng.uniform(-0.45, 0.45))),
                texture=TEXTURES[texture_index],
                period=float(PERIODS[int(rng.integers(len(PERIODS)))]),
                texture_angle=float(rng.uniform(0.0, math.pi)),
                hue=float((hue_bin * 360.0 / HUE_BINS + hue_offset) % 360.0),
                saturation=float(rng.uniform(0.7, 0.95) if bright else rng.uniform(0.5, 0.7)),
                value=float(rng.uniform(0.78, 0.95) if bright else rng.uniform(0.45, 0.62)),
                secondary=SECONDARY[int(rng.integers(len(SECONDARY)))],
                mix=float(rng.uniform(0.6, 0.95)),
            )
        )
    return looks


def make_grid_looks(rng: np.random.Generator, groups: int, group_size: int) -> list[ClassLook]:
    """Looks of ``groups * group_size`` classes; class ``g * group_size + j + 1`` is the
    ``j``-th class of fold group ``g`` (the classes that are novel together).

    Hue and tone, the cues a small network resolves first, define the classes: with
    ``h = groups // 2``, class (g, j) has hue ``h * j + g % h`` of ``h * group_size`` equally
    spaced hues and tone ``g // h`` (bright, then dark). Each hue is one bright and one dark
    class in different groups, and a group's classes are ``h`` hue steps apart, so a novel class
    differs from every base class in tone or by at least one hue step, while every hue and both
    tones are seen in base training. The two tones' brightness bands stay apart under every
    instance jitter and the shading of ``paint_object``. Texture, shape and aspect vary per
    class on top (a class's texture is a mild, dark pattern that never reaches the other tone).
    """
    if groups < 2 or groups % 2:
        raise ValueError(f"the grid design needs an even number of groups, got {groups}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    half = groups // 2
    hues = half * group_size
    hue_offset = rng.uniform(0.0, 360.0)
    looks = []
    for g in range(groups):
        bright = g < half
        for j in range(group_size):
            looks.append(
                ClassLook(
                    shape=SHAPES[int(rng.integers(len(SHAPES)))],
                    shape_order=int(rng.integers(3, 8)),
                    shape_depth=float(rng.uniform(0.35, 0.75)),
                    aspect=float(np.exp(rng.uniform(-0.45, 0.45))),
                    texture=GRID_TEXTURES[int(rng.integers(len(GRID_TEXTURES)))],
                    period=float(GRID_PERIODS[int(rng.integers(len(GRID_PERIODS)))]),
                    texture_angle=float(rng.uniform(0.0, math.pi)),
                    hue=float((hue_offset + (half * j + g % half) * 360.0 / hues) % 360.0),
                    saturation=float(rng.uniform(0.75, 0.9) if bright else rng.uniform(0.8, 0.95)),
                    value=float(rng.uniform(0.85, 0.95) if bright else rng.uniform(0.35, 0.45)),
                    secondary="dark",
                    mix=float(rng.uniform(0.3, 0.45)),
                )
            )
    return looks


def hsv_to_rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    """One HSV colour (hue in degrees, s and v in 0..1) as float RGB in 0..255."""
    # Float HSV in OpenCV takes hue in degrees 0..360 and s, v in 0..1 and returns RGB in 0..1.
    sat, val = min(max(saturation, 0.0), 1.0), min(max(value, 0.0), 1.0)
    pixel = np.array([[[hue % 360.0, sat, val]]], np.float32)
    return cv2.cvtColor(pixel, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64) * 255.0


def instance_colours(look: ClassLook, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Primary and secondary RGB colours of one instance, jittered well inside the hue bin."""
    hue = look.hue + rng.uniform(-4.0, 4.0)
    sat = look.saturation * rng.uniform(0.9, 1.08)
    val = look.value * rng.uniform(0.85, 1.1)
    primary = hsv_to_rgb(hue, sat, val)
    if look.secondary == "dark":
        secondary = hsv_to_rgb(hue, sat, val * 0.4)
    elif look.secondary == "light":
        secondary = hsv_to_rgb(hue, sat * 0.3, min(1.0, val * 1.3 + 0.1))
    elif look.secondary == "complement":
        secondary = hsv_to_rgb(hue + 180.0, sat * 0.8, val * 0.8)
    else:
        secondary = hsv_to_rgb(hue + 45.0, sat, val * 0.9)
    return primary, secondary


def outline(
    look: ClassLook,
    rng: np.random.Generator,
    area: float,
    centre: tuple[float, float],
    angle: float,
    aspect: float,
) -> np.ndarray:
    """Outline polygon (N x 2 float, x then y) of one instance with roughly the given area."""
    theta = np.linspace(0.0, 2.0 * math.pi, OUTLINE_POINTS, endpoint=False)
    order, depth = look.shape_order, look.shape_depth
    if look.shape == "ellipse":
        radius = np.ones_like(theta)
    elif look.shape == "polygon":
        # Regular n-gon as a radial function: distance to the edge of the sector.
        sector = 2.0 * math.pi / order
        local = (theta + rng.uniform(0, sector)) % sector - sector / 2.0
        radius = math.cos(sector / 2.0) / np.cos(local)
    elif look.shape == "star":
        points = order + 2
        phase = (theta * points / (2.0 * math.pi)) % 1.0
        tri = np.abs(phase - 0.5) * 2.0  # 1 at the tips, 0 between them
        radius = depth * 0.8 + (1.0 - depth * 0.8) * tri
    elif look.shape == "blob":
        radius = np.ones_like(theta)
        for harmonic in range(2, 2 + order):
            amp = depth * 0.35 / harmonic * rng.uniform(0.5, 1.0)
            radius += amp * np.cos(harmonic * theta + rng.uniform(0, 2.0 * math.pi))
    elif look.shape == "roundrect":
        exponent = 2.5 + 6.0 * depth  # superellipse: 2 is an ellipse, large is a rectangle
        c, s = np.abs(np.cos(theta)), np.abs(np.sin(theta))
        radius = (c**exponent + s**exponent) ** (-1.0 / exponent)
    elif look.shape == "flower":
        petals = order + 1
        radius = 1.0 + depth * 0.45 * np.cos(petals * theta)
    else:
        raise ValueError(f"unknown shape family {look.shape!r}; expected one of {SHAPES}")
    radius = radius * rng.uniform(0.95, 1.05, size=radius.shape) ** 0.5  # slight irregularity
    xs, ys = radius * np.cos(theta), radius * np.sin(theta)
    unit_area = 0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))
    scale = math.sqrt(area / unit_area)
    stretch = math.sqrt(aspect)
    xs, ys = xs * scale * stretch, ys * scale / stretch
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    px = centre[0] + cos_a * xs - sin_a * ys
    py = centre[1] + sin_a * xs + cos_a * ys
    return np.stack([px, py], axis=1)


def _pattern(
    look: ClassLook, rng: np.random.Generator, u: np.ndarray, v: np.ndarray, period: float
) -> np.ndarray:
    """Texture pattern in 0..1 on local (rotated) coordinates u, v."""
    freq = 2.0 * math.pi / period
    if look.texture == "flat":
        return np.zeros_like(u)
    if look.texture == "stripes":
        return 0.5 + 0.5 * np.tanh(3.0 * np.sin(freq * u))
    if look.texture == "checker":
        return 0.5 + 0.5 * np.tanh(3.0 * np.sin(freq * u) * np.sin(freq * v))
    if look.texture == "dots":
        du = (u / period) % 1.0 - 0.5
        dv = (v / period) % 1.0 - 0.5
        return (du * du + dv * dv < 0.09).astype(np.float32)
    if look.texture == "rings":
        return 0.5 + 0.5 * np.tanh(3.0 * np.sin(freq * np.sqrt(u * u + v * v)))
    if look.texture == "waves":
        return 0.5 + 0.5 * np.sin(freq * (u + 0.35 * period * np.sin(0.5 * freq * v)))
    if look.texture == "grid":
        du = np.abs((u / period) % 1.0 - 0.5)
        dv = np.abs((v / period) % 1.0 - 0.5)
        return (np.maximum(du, dv) > 0.36).astype(np.float32)
    if look.texture == "noise":
        # Instance-specific random field whose grain size is the class period.
        h, w = u.shape
        small = rng.standard_normal(
            (max(2, int(h / period * 2) + 2), max(2, int(w / period * 2) + 2))
        ).astype(np.float32)
        field = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        return 0.5 + 0.5 * np.tanh(1.5 * field)
    raise ValueError(
        f"unknown texture {look.texture!r}; expected one of {TEXTURES + GRID_TEXTURES[:1]}"
    )


def paint_object(
    image: np.ndarray,
    inst: np.ndarray,
    inst_id: int,
    look: ClassLook,
    rng: np.random.Generator,
    polygon: np.ndarray,
    angle: float,
) -> int:
    """Fill ``polygon`` on ``image`` (float32 RGB) and ``inst`` with one textured instance.

    Returns the number of pixels painted (0 if the polygon lies outside the image).
    """
    h, w = inst.shape
    x0 = max(0, math.floor(polygon[:, 0].min()))
    y0 = max(0, math.floor(polygon[:, 1].min()))
    x1 = min(w, math.ceil(polygon[:, 0].max()) + 1)
    y1 = min(h, math.ceil(polygon[:, 1].max()) + 1)
    if x1 <= x0 or y1 <= y0:
        return 0
    mask = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    # Fixed-point vertices (4 fractional bits) keep sub-pixel accuracy of the outline.
    pts = np.round((polygon - [x0, y0]) * 16.0).astype(np.int32)
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=4)
    sel = mask.astype(bool)
    count = int(sel.sum())
    if count == 0:
        return 0
    centre = polygon.mean(axis=0)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    xs -= centre[0]
    ys -= centre[1]
    tex_angle = angle + look.texture_angle
    cos_t, sin_t = math.cos(tex_angle), math.sin(tex_angle)
    u = cos_t * xs + sin_t * ys
    v = -sin_t * xs + cos_t * ys
    period = look.period * rng.uniform(0.93, 1.07)
    pattern = _pattern(look, rng, u, v, period) * look.mix
    primary, secondary = instance_colours(look, rng)
    primary, secondary = primary.astype(np.float32), secondary.astype(np.float32)
    colour = primary + pattern[..., None] * (secondary - primary)
    # Directional shading: light from a random side, like a curved lit surface.
    radius = max(1.0, math.sqrt(count / math.pi))
    light = rng.uniform(0, 2.0 * math.pi)
    shade = 1.0 + (0.18 / radius) * (math.cos(light) * xs + math.sin(light) * ys)
    colour *= np.clip(shade, 0.7, 1.3)[..., None]
    colour += (rng.random(colour.shape, dtype=np.float32) - 0.5) * 12.0
    np.copyto(image[y0:y1, x0:x1], colour, where=sel[..., None])
    np.copyto(inst[y0:y1, x0:x1], inst_id, where=sel)
    return count


def render_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Cluttered, class-free background (float32 RGB): gradient, tinted blotches, fine noise."""
    hue = rng.uniform(0, 360)
    c0 = hsv_to_rgb(hue, rng.uniform(0.0, 0.22), rng.uniform(0.35, 0.85)).astype(np.float32)
    c1 = hsv_to_rgb(hue + rng.uniform(-60, 60), rng.uniform(0.0, 0.22), rng.uniform(0.3, 0.9))
    c2 = hsv_to_rgb(hue + rng.uniform(90, 270), rng.uniform(0.05, 0.25), rng.uniform(0.3, 0.8))
    angle = rng.uniform(0, 2.0 * math.pi)
    # Everything is built at a coarse grid and upsampled once: smooth content needs no detail.
    gh, gw = max(2, h // 4), max(2, w // 4)
    ys, xs = np.mgrid[0:gh, 0:gw].astype(np.float32)
    ramp = math.cos(angle) * xs / gw + math.sin(angle) * ys / gh
    ramp = (ramp - ramp.min()) / max(1e-6, float(ramp.max() - ramp.min()))
    lum_cells = (max(2, h // 40), max(2, w // 40))
    lum = cv2.resize(rng.standard_normal(lum_cells, dtype=np.float32), (gw, gh), cv2.INTER_CUBIC)
    blot_cells = (max(2, h // 24), max(2, w // 24))
    blot = cv2.resize(rng.standard_normal(blot_cells, dtype=np.float32), (gw, gh), cv2.INTER_CUBIC)
    weight = cv2.GaussianBlur(np.clip((blot - 0.6) * 1.5, 0.0, 0.45), (0, 0), 1.0)
    coarse = c0 + ramp[..., None] * (c1 - c0).astype(np.float32)
    coarse *= (1.0 + 0.08 * lum)[..., None]  # low-frequency luminance variation
    coarse += weight[..., None] * (c2.astype(np.float32) - coarse)  # soft muted blotches
    image = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    # Uniform noise is several times cheaper to draw than Gaussian and looks the same here.
    image += (rng.random((h, w, 3), dtype=np.float32) - 0.5) * 8.0
    return image
