"""Synthetic street scenes: an embedded stand-in for CamVid that needs no files.

Each frame is drawn procedurally with numpy and ``PIL.ImageDraw``: a sky gradient, building
facades in perspective with window grids, a road converging to a vanishing point with dashed
lane marks, sidewalks with paving joints, fences, trees, poles carrying signs or traffic lights,
cars, pedestrians and cyclists, all labelled with the same 11 classes as CamVid, plus a thin void
border and a few void patches ("unlabelled clutter"). Colour distributions overlap on purpose
(grey road, grey buildings, grey poles, grey overcast sky), so a network has to use shape,
texture and context rather than one pixel's colour; per-image lighting, colour cast and sensor
noise vary on top.

Frame ``i`` of seed ``s`` is drawn from ``np.random.default_rng((s, i))`` alone, so it is the
same whatever order frames are asked for, in any process.

This is not real data: results on it show that code runs and learns, nothing about CamVid.

Example::

    >>> data = SyntheticStreets(num_images=8, size=(96, 128), seed=0)
    >>> image, label = data.raw(0)        # uint8 (96, 128, 3), uint8 (96, 128)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from jetseg.data.camvid import PairTransform, SegmentationDataset
from jetseg.data.classes import CAMVID_CLASSES, IGNORE_INDEX

(SKY, BUILDING, POLE, ROAD, SIDEWALK, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST) = range(
    len(CAMVID_CLASSES)
)
VOID = IGNORE_INDEX

# Texture amplitude (grey levels) per class for fine (1 px), medium (~4 px) and coarse
# (~16 px) noise: smooth car paint and signs, grainy asphalt, leafy trees, cloudy sky.
_TEXTURE = np.array(
    [
        (1.5, 3.0, 10.0),  # Sky
        (5.0, 5.0, 8.0),  # Building
        (3.0, 2.0, 3.0),  # Pole
        (9.0, 4.0, 7.0),  # Road
        (6.0, 5.0, 6.0),  # Sidewalk
        (10.0, 22.0, 14.0),  # Tree
        (2.0, 1.5, 2.0),  # SignSymbol
        (5.0, 4.0, 5.0),  # Fence
        (2.0, 2.0, 4.0),  # Car
        (4.0, 4.0, 4.0),  # Pedestrian
        (4.0, 4.0, 4.0),  # Bicyclist
        (12.0, 10.0, 10.0),  # Void
    ],
    dtype=np.float32,
)

# Base colours per kind of surface; each object jitters around one of them.
_BUILDING_COLOURS = (
    (160, 75, 60),
    (200, 180, 150),
    (140, 140, 140),
    (215, 210, 200),
    (125, 95, 75),
    (90, 90, 95),
    (180, 160, 120),
)
_CAR_COLOURS = (
    (225, 225, 225),
    (30, 30, 35),
    (150, 150, 155),
    (110, 110, 115),
    (160, 30, 30),
    (30, 50, 130),
    (30, 80, 50),
    (220, 180, 40),
    (90, 40, 30),
)
_CLOTHES_COLOURS = (
    (30, 30, 35),
    (60, 60, 80),
    (150, 40, 40),
    (40, 70, 140),
    (200, 200, 195),
    (110, 90, 60),
    (60, 110, 60),
    (200, 120, 40),
)
_SIGN_COLOURS = ((200, 30, 30), (30, 70, 180), (230, 200, 30), (235, 235, 235), (30, 130, 60))
_FENCE_COLOURS = ((120, 85, 55), (150, 150, 150), (50, 85, 55), (80, 80, 85))
_SKIN_COLOURS = ((230, 190, 160), (190, 140, 100), (120, 80, 55))

Colour = tuple[int, int, int]


def _jitter(rng: np.random.Generator, colour: Sequence[int], spread: float = 15.0) -> Colour:
    values = np.asarray(colour, np.float64) + rng.normal(0.0, spread, 3)
    red, green, blue = np.clip(values, 0, 255).astype(int).tolist()
    return red, green, blue


def _pick(rng: np.random.Generator, colours: Sequence[Colour], spread: float = 15.0) -> Colour:
    return _jitter(rng, colours[int(rng.integers(len(colours)))], spread)


def _box(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


class _Canvas:
    """Draws every shape on the image and on the label map at once."""

    def __init__(self, background: np.ndarray) -> None:
        height, width = background.shape[:2]
        self.image = Image.fromarray(background)
        self.label = Image.new("L", (width, height), SKY)
        self.draw_image = ImageDraw.Draw(self.image)
        self.draw_label = ImageDraw.Draw(self.label)

    def polygon(self, points: Sequence[tuple[float, float]], cls: int, colour: Colour) -> None:
        self.draw_image.polygon(points, fill=colour)
        self.draw_label.polygon(points, fill=cls)

    def rectangle(self, box: Sequence[float], cls: int, colour: Colour) -> None:
        box = _box(*box)
        self.draw_image.rectangle(box, fill=colour)
        self.draw_label.rectangle(box, fill=cls)

    def ellipse(self, box: Sequence[float], cls: int, colour: Colour) -> None:
        box = _box(*box)
        self.draw_image.ellipse(box, fill=colour)
        self.draw_label.ellipse(box, fill=cls)

    def ring(self, box: Sequence[float], cls: int, colour: Colour, width: int) -> None:
        box = _box(*box)
        self.draw_image.ellipse(box, outline=colour, width=width)
        self.draw_label.ellipse(box, outline=cls, width=width)

    def line(
        self, points: Sequence[tuple[float, float]], cls: int, colour: Colour, width: int
    ) -> None:
        self.draw_image.line(points, fill=colour, width=width)
        self.draw_label.line(points, fill=cls, width=width)


class _Street:
    """The perspective frame of one scene: horizon, vanishing point, road and sidewalk edges."""

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.height, self.width = height, width
        self.horizon = height * rng.uniform(0.36, 0.5)
        self.vanish_x = width * rng.uniform(0.35, 0.65)
        # x at the bottom row of: left sidewalk outer edge, left road edge, right road edge,
        # right sidewalk outer edge. Every edge runs from the vanishing point to there.
        road_left = width * rng.uniform(-0.25, 0.2)
        road_right = width * rng.uniform(0.8, 1.25)
        self.bottom_x = (
            road_left - width * rng.uniform(0.2, 0.5),
            road_left,
            road_right,
            road_right + width * rng.uniform(0.2, 0.5),
        )

    def row(self, depth: float) -> float:
        """The image row of ground at ``depth`` (0 = horizon, 1 = bottom edge)."""
        return self.horizon + depth * (self.height - self.horizon)

    def edge_x(self, edge: int, depth: float) -> float:
        return self.vanish_x + depth * (self.bottom_x[edge] - self.vanish_x)


def _background_sky(
    rng: np.random.Generator, height: int, width: int, horizon: float
) -> np.ndarray:
    if rng.random() < 0.5:  # overcast, as in most of CamVid
        grey = rng.uniform(150, 215)
        top = np.array([grey, grey + rng.uniform(0, 10), grey + rng.uniform(5, 20)])
        bottom = np.full(3, min(grey + rng.uniform(10, 35), 245.0))
    else:
        top = np.array([rng.uniform(60, 130), rng.uniform(110, 170), rng.uniform(190, 240)])
        bottom = np.array([rng.uniform(170, 215), rng.uniform(185, 225), rng.uniform(215, 250)])
    ramp = np.clip(np.arange(height, dtype=np.float32) / max(horizon, 1.0), 0.0, 1.0)
    sky = top[None, :] + ramp[:, None] * (bottom - top)[None, :]  # (H, 3)
    return np.broadcast_to(sky[:, None, :], (height, width, 3)).astype(np.uint8)


def _draw_buildings(rng: np.random.Generator, canvas: _Canvas, street: _Street) -> None:
    height, width, horizon, vx = street.height, street.width, street.horizon, street.vanish_x
    for side in (-1, 1):
        near_x = 0.0 if side < 0 else float(width)
        outer = 0 if side < 0 else 3
        # The facade's ground line is the sidewalk's outer edge: slope in rows per column.
        ground_slope = (height - horizon) / max(abs(street.bottom_x[outer] - vx), 1.0)
        end_x = vx + side * width * rng.uniform(0.02, 0.12)
        cuts = np.sort(rng.uniform(0, 1, int(rng.integers(1, 4))))
        edges = [near_x + (end_x - near_x) * c for c in (0.0, *cuts.tolist(), 1.0)]
        for x0, x1 in zip(edges[:-1], edges[1:], strict=True):
            if rng.random() < 0.12:  # a gap in the row of buildings
                continue
            top_slope = ground_slope * rng.uniform(0.6, 2.2)
            rise = height * rng.uniform(0.0, 0.04)

            def top(x: float, slope: float = top_slope, rise: float = rise) -> float:
                return horizon - rise - slope * abs(x - vx)

            def ground(x: float, slope: float = ground_slope) -> float:
                return horizon + slope * abs(x - vx)

            colour = _pick(rng, _BUILDING_COLOURS, 18)
            facade = [(x0, top(x0)), (x1, top(x1)), (x1, height), (x0, height)]
            canvas.polygon(facade, BUILDING, colour)
            _draw_windows(rng, canvas, x0, x1, top, ground, vx, width)


def _draw_windows(
    rng: np.random.Generator,
    canvas: _Canvas,
    x0: float,
    x1: float,
    top: Callable[[float], float],
    ground: Callable[[float], float],
    vx: float,
    width: int,
) -> None:
    floors = int(rng.integers(3, 9))
    column_width = width * rng.uniform(0.02, 0.05)
    columns = max(1, int(abs(x1 - x0) / column_width))
    dark = rng.random() < 0.7
    base = (45, 55, 70) if dark else (170, 195, 215)
    fill = rng.uniform(0.35, 0.6)
    for column in range(columns):
        left = x0 + (x1 - x0) * column / columns
        right = x0 + (x1 - x0) * (column + 1) / columns
        centre = 0.5 * (left + right)
        if abs(centre - vx) < 3:
            continue
        inset = abs(right - left) * (1 - fill) / 2
        floor_top, floor_bottom = top(centre), ground(centre)
        floor_height = (floor_bottom - floor_top) / (floors + 1)
        if floor_height < 2:
            continue
        colour = _jitter(rng, base, 12)
        for floor in range(floors):
            y0 = floor_top + floor_height * (floor + 0.3)
            box = _box(left + inset, y0, right - inset, y0 + floor_height * 0.5)
            canvas.draw_image.rectangle(box, fill=colour)


def _draw_ground(rng: np.random.Generator, canvas: _Canvas, street: _Street) -> None:
    height, horizon, vx = street.height, street.horizon, street.vanish_x
    bottom = street.bottom_x
    vanish = (vx, horizon)
    asphalt = rng.uniform(60, 125)
    road = _jitter(rng, (asphalt + 8, asphalt, asphalt + 10), 6)
    canvas.polygon([vanish, (bottom[1], height), (bottom[2], height)], ROAD, road)
    paving = _pick(rng, ((150, 150, 150), (175, 160, 140), (160, 110, 100), (120, 120, 125)), 12)
    joint = _jitter(rng, paving, 4)
    joint = (max(joint[0] - 35, 0), max(joint[1] - 35, 0), max(joint[2] - 35, 0))
    for outer, inner in ((0, 1), (3, 2)):
        canvas.polygon([vanish, (bottom[outer], height), (bottom[inner], height)], SIDEWALK, paving)
        # Paving joints across the sidewalk, spaced evenly in depth.
        for depth in np.linspace(0.05, 1.0, int(rng.integers(6, 14))):
            row = street.row(float(depth))
            points = [(street.edge_x(outer, float(depth)), row)]
            points.append((street.edge_x(inner, float(depth)), row))
            canvas.draw_image.line(points, fill=joint, width=1)
        curb = [vanish, (bottom[inner], height)]
        canvas.draw_image.line(curb, fill=_jitter(rng, (190, 190, 185), 10), width=2)
    # Dashed centre line and, sometimes, a solid edge line.
    mark = (235, 235, 230) if rng.random() < 0.7 else (225, 190, 40)
    centre_bottom = 0.5 * (bottom[1] + bottom[2]) + street.width * rng.uniform(-0.15, 0.15)
    dashes = int(rng.integers(5, 10))
    for dash in range(dashes):
        near, far = (dash + 1) / dashes, (dash + 0.5) / dashes
        half_near = max(0.4, street.width * 0.008 * near)
        half_far = max(0.4, street.width * 0.008 * far)
        x_near = vx + near * (centre_bottom - vx)
        x_far = vx + far * (centre_bottom - vx)
        dash_points = [
            (x_far - half_far, street.row(far)),
            (x_far + half_far, street.row(far)),
            (x_near + half_near, street.row(near)),
            (x_near - half_near, street.row(near)),
        ]
        canvas.draw_image.polygon(dash_points, fill=_jitter(rng, mark, 8))


def _draw_fences(rng: np.random.Generator, canvas: _Canvas, street: _Street) -> None:
    for outer in (0, 3):
        if rng.random() > 0.45:
            continue
        start = rng.uniform(0.05, 0.6)
        tall = street.height * rng.uniform(0.08, 0.2)
        depths = (start, 1.0)
        ground = [(street.edge_x(outer, d), street.row(d)) for d in depths]
        tops = [(x, y - tall * d) for (x, y), d in zip(ground, depths, strict=True)]
        colour = _pick(rng, _FENCE_COLOURS, 10)
        canvas.polygon([ground[0], ground[1], tops[1], tops[0]], FENCE, colour)
        # Vertical bars and a top rail, darker or lighter than the panel.
        bar = tuple(int(np.clip(c * rng.choice((0.6, 1.4)), 0, 255)) for c in colour)
        for depth in np.linspace(start, 1.0, int(rng.integers(8, 20))):
            depth = float(depth)
            x = street.edge_x(outer, depth)
            y = street.row(depth)
            canvas.draw_image.line([(x, y), (x, y - tall * depth)], fill=bar, width=1)
        canvas.draw_image.line([tops[0], tops[1]], fill=bar, width=2)


def _tree(rng: np.random.Generator, canvas: _Canvas, street: _Street, depth: float) -> None:
    side = (0, 1) if rng.random() < 0.5 else (3, 2)
    x = street.edge_x(side[0], depth) + rng.uniform(0.3, 0.8) * (
        street.edge_x(side[1], depth) - street.edge_x(side[0], depth)
    )
    ground = street.row(depth)
    radius = max(2.0, street.height * 0.2 * depth * rng.uniform(0.7, 1.3))
    trunk_height = radius * rng.uniform(0.8, 1.6)
    trunk_half = max(0.6, radius * 0.1)
    trunk = _jitter(rng, (80, 60, 45), 12)
    canvas.rectangle((x - trunk_half, ground - trunk_height, x + trunk_half, ground), TREE, trunk)
    centre_y = ground - trunk_height - radius * 0.6
    leaf = _pick(rng, ((50, 95, 40), (80, 120, 50), (40, 70, 35), (110, 125, 60)), 12)
    for _ in range(int(rng.integers(3, 7))):
        dx, dy = rng.normal(0, radius * 0.45, 2)
        r = radius * rng.uniform(0.5, 0.9)
        box = (x + dx - r, centre_y + dy - r * 0.9, x + dx + r, centre_y + dy + r * 0.9)
        canvas.ellipse(box, TREE, _jitter(rng, leaf, 10))


def _pole(rng: np.random.Generator, canvas: _Canvas, street: _Street, depth: float) -> None:
    road_edge, outer = (1, 0) if rng.random() < 0.5 else (2, 3)
    ground = street.row(depth)
    inside = rng.uniform(0.05, 0.3)
    x = street.edge_x(road_edge, depth) + inside * (
        street.edge_x(outer, depth) - street.edge_x(road_edge, depth)
    )
    tall = street.height * 0.55 * depth * rng.uniform(0.8, 1.2) + 4
    half = max(0.5, street.width * 0.006 * depth)
    colour = _pick(rng, ((120, 120, 125), (70, 70, 70), (50, 70, 55), (170, 170, 165)), 10)
    canvas.rectangle((x - half, ground - tall, x + half, ground), POLE, colour)
    if rng.random() > 0.75:
        return
    size = max(3.0, street.height * 0.09 * depth * rng.uniform(0.8, 1.3))
    top = ground - tall
    kind = int(rng.integers(4))
    if kind == 0:  # round sign with a white border
        box = (x - size / 2, top, x + size / 2, top + size)
        canvas.ellipse(box, SIGN, _jitter(rng, (235, 235, 235), 8))
        rim = size * 0.15
        inner = (box[0] + rim, box[1] + rim, box[2] - rim, box[3] - rim)
        canvas.draw_image.ellipse(_box(*inner), fill=_pick(rng, _SIGN_COLOURS, 10))
    elif kind == 1:  # rectangular plate
        box = (x - size * 0.7, top, x + size * 0.7, top + size * 0.8)
        canvas.rectangle(box, SIGN, _pick(rng, _SIGN_COLOURS, 10))
    elif kind == 2:  # warning triangle
        points = [(x, top), (x + size / 2, top + size * 0.9), (x - size / 2, top + size * 0.9)]
        canvas.polygon(points, SIGN, _pick(rng, _SIGN_COLOURS, 10))
    else:  # traffic light: dark housing, one lit lamp
        box = (x - size * 0.3, top, x + size * 0.3, top + size * 1.1)
        canvas.rectangle(box, SIGN, _jitter(rng, (35, 35, 35), 6))
        lamp = int(rng.integers(3))
        lamp_colour = ((230, 40, 30), (240, 180, 30), (40, 220, 90))[lamp]
        lamp_top = top + size * (0.05 + 0.35 * lamp)
        lamp_box = (x - size * 0.2, lamp_top, x + size * 0.2, lamp_top + size * 0.3)
        canvas.draw_image.ellipse(_box(*lamp_box), fill=lamp_colour)


def _car(rng: np.random.Generator, canvas: _Canvas, street: _Street, depth: float) -> None:
    bottom = street.row(depth)
    left, right = street.edge_x(1, depth), street.edge_x(2, depth)
    car_width = max(4.0, (right - left) * rng.uniform(0.22, 0.38))
    x0 = left + rng.uniform(0.0, 1.0) * max(right - left - car_width, 0.0)
    x1 = x0 + car_width
    car_height = car_width * rng.uniform(0.55, 0.8)
    shadow = _box(x0 - car_width * 0.05, bottom - car_height * 0.06, x1 + car_width * 0.05, bottom)
    canvas.draw_image.ellipse(shadow, fill=_jitter(rng, (30, 30, 35), 5))
    body = _pick(rng, _CAR_COLOURS, 12)
    body_top = bottom - car_height * 0.62
    canvas.rectangle((x0, body_top, x1, bottom - car_height * 0.1), CAR, body)
    inset = car_width * rng.uniform(0.1, 0.2)
    roof = bottom - car_height
    cabin = [(x0 + inset * 0.5, body_top), (x1 - inset * 0.5, body_top)]
    cabin += [(x1 - inset, roof), (x0 + inset, roof)]
    canvas.polygon(cabin, CAR, body)
    glass = _jitter(rng, (50, 60, 75), 10)
    window = [(x0 + inset * 0.8, body_top), (x1 - inset * 0.8, body_top)]
    window_top = roof + car_height * 0.06
    window += [(x1 - inset * 1.15, window_top), (x0 + inset * 1.15, window_top)]
    canvas.draw_image.polygon(window, fill=glass)
    wheel = car_width * 0.12
    for wheel_x in (x0 + car_width * 0.2, x1 - car_width * 0.2):
        box = (wheel_x - wheel, bottom - wheel * 1.6, wheel_x + wheel, bottom)
        canvas.ellipse(box, CAR, _jitter(rng, (20, 20, 20), 4))
    light = _jitter(rng, (230, 60, 40) if rng.random() < 0.5 else (240, 240, 210), 8)
    for lx in (x0 + car_width * 0.04, x1 - car_width * 0.12):
        box = (lx, body_top + car_height * 0.08, lx + car_width * 0.08, body_top + car_height * 0.2)
        canvas.draw_image.rectangle(_box(*box), fill=light)


def _person(
    rng: np.random.Generator, canvas: _Canvas, x: float, feet: float, tall: float, cls: int
) -> None:
    """A standing (or, for cyclists, seated) figure: legs, torso, arms, head."""
    half = max(0.7, tall * 0.12)
    clothes = _pick(rng, _CLOTHES_COLOURS, 15)
    trousers = _pick(rng, _CLOTHES_COLOURS, 15)
    hip = feet - tall * 0.47
    shoulder = feet - tall * 0.82
    stride = tall * rng.uniform(0.0, 0.12)
    leg_width = max(1, round(tall * 0.08))
    canvas.line([(x - half * 0.4, hip), (x - half * 0.4 - stride, feet)], cls, trousers, leg_width)
    canvas.line([(x + half * 0.4, hip), (x + half * 0.4 + stride, feet)], cls, trousers, leg_width)
    canvas.rectangle((x - half, shoulder, x + half, hip), cls, clothes)
    arm_width = max(1, round(tall * 0.05))
    for side in (-1, 1):
        arm = [(x + side * half, shoulder + 1), (x + side * (half + tall * 0.05), hip)]
        canvas.line(arm, cls, clothes, arm_width)
    head = tall * 0.09
    skin = _pick(rng, _SKIN_COLOURS, 10)
    box = (x - head, shoulder - head * 2.1, x + head, shoulder - head * 0.1)
    canvas.ellipse(box, cls, skin)


def _pedestrian(rng: np.random.Generator, canvas: _Canvas, street: _Street, depth: float) -> None:
    on_sidewalk = rng.random() < 0.8  # otherwise crossing the road
    edges = ((0, 1) if rng.random() < 0.5 else (3, 2)) if on_sidewalk else (1, 2)
    a, b = street.edge_x(edges[0], depth), street.edge_x(edges[1], depth)
    x = a + rng.uniform(0.1, 0.9) * (b - a)
    tall = max(5.0, street.height * 0.5 * depth * rng.uniform(0.85, 1.15))
    _person(rng, canvas, x, street.row(depth), tall, PEDESTRIAN)


def _cyclist(rng: np.random.Generator, canvas: _Canvas, street: _Street, depth: float) -> None:
    left, right = street.edge_x(1, depth), street.edge_x(2, depth)
    near_left = rng.random() < 0.5
    x = left + (right - left) * (rng.uniform(0.05, 0.25) if near_left else rng.uniform(0.75, 0.95))
    ground = street.row(depth)
    tall = max(6.0, street.height * 0.5 * depth * rng.uniform(0.9, 1.1))
    wheel = tall * 0.2
    frame = _pick(rng, ((20, 20, 20), (160, 30, 30), (30, 60, 150), (200, 200, 200)), 10)
    width = max(1, round(tall * 0.03))
    centres = (x - wheel * 1.3, x + wheel * 1.3)
    for cx in centres:
        box = (cx - wheel, ground - 2 * wheel, cx + wheel, ground)
        canvas.ring(box, BICYCLIST, _jitter(rng, (25, 25, 25), 4), width)
    hub_y = ground - wheel
    seat = (x - wheel * 0.3, ground - wheel * 2.4)
    handle = (x + wheel * 1.0, ground - wheel * 2.6)
    canvas.line(
        [(centres[0], hub_y), seat, (x + wheel * 0.2, hub_y), (centres[1], hub_y)],
        BICYCLIST,
        frame,
        width,
    )
    canvas.line([(x + wheel * 0.2, hub_y), handle, (centres[1], hub_y)], BICYCLIST, frame, width)
    _person(rng, canvas, x, ground - wheel * 0.9, tall * 0.85, BICYCLIST)


def _void_patches(rng: np.random.Generator, canvas: _Canvas, height: int, width: int) -> None:
    for _ in range(int(rng.integers(0, 3))):
        cx, cy = rng.uniform(0, width), rng.uniform(height * 0.3, height)
        radius = height * rng.uniform(0.02, 0.06)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 6))
        points = [
            (cx + radius * rng.uniform(0.5, 1.2) * np.cos(a), cy + radius * np.sin(a))
            for a in angles.tolist()
        ]
        canvas.polygon(points, VOID, _jitter(rng, rng.uniform(30, 220, 3), 20))


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Unit-variance-ish noise varying over about ``cell`` pixels, float32 (H, W)."""
    grid = rng.standard_normal((height // cell + 2, width // cell + 2), dtype=np.float32)
    resized = Image.fromarray(grid).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def render_street_scene(
    height: int, width: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene: ``(image uint8 (H, W, 3), label uint8 (H, W))``, labels 0..11."""
    if height < 8 or width < 8:
        raise ValueError(f"synthetic frames need at least 8x8 pixels, got {height}x{width}")
    street = _Street(rng, height, width)
    canvas = _Canvas(_background_sky(rng, height, width, street.horizon))
    _draw_buildings(rng, canvas, street)
    _draw_ground(rng, canvas, street)
    _draw_fences(rng, canvas, street)

    # Objects standing on the ground, drawn far to near so nearer ones occlude.
    objects = [(_tree, int(rng.integers(0, 5))), (_pole, int(rng.integers(1, 4)))]
    objects += [(_car, int(rng.integers(0, 5))), (_pedestrian, int(rng.integers(0, 5)))]
    objects += [(_cyclist, int(rng.random() < 0.6) + int(rng.random() < 0.2))]
    placed = [
        (float(rng.uniform(0.15, 1.0)), index, draw)
        for index, (draw, count) in enumerate(objects)
        for _ in range(count)
    ]
    for depth, _, draw in sorted(placed, key=lambda item: (item[0], item[1])):
        draw(rng, canvas, street, depth)
    _void_patches(rng, canvas, height, width)

    label = np.array(canvas.label, dtype=np.uint8)
    image = np.asarray(canvas.image, dtype=np.float32)

    # Class-dependent texture, then lighting, colour cast, shading across the frame and noise.
    texture = _TEXTURE[label]  # (H, W, 3): amplitude of each noise band at each pixel
    luminance = rng.standard_normal((height, width), dtype=np.float32) * texture[..., 0]
    luminance += _smooth_noise(rng, height, width, 4) * texture[..., 1]
    luminance += _smooth_noise(rng, height, width, 16) * texture[..., 2]
    gain = rng.uniform(0.65, 1.25) * rng.uniform(0.92, 1.08, 3).astype(np.float32)
    shading = 1.0 + rng.uniform(-0.15, 0.15) * np.linspace(-1.0, 1.0, width, dtype=np.float32)
    image = (image + luminance[..., None]) * gain * shading[None, :, None]
    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(1.5, 5.0)

    # A thin void border, darkened like lens vignetting.
    border = max(1, round(min(height, width) * 0.01))
    frame = np.zeros((height, width), dtype=bool)
    frame[:border], frame[-border:], frame[:, :border], frame[:, -border:] = True, True, True, True
    label[frame] = VOID
    image[frame] *= 0.5
    return np.clip(image, 0, 255).astype(np.uint8), label


class SyntheticStreets(SegmentationDataset):
    """Procedurally drawn street scenes with the 11 CamVid classes; deterministic, no files.

    Args:
        num_images: number of frames.
        size: frame size (H, W); frames are drawn at this size.
        seed: frame ``i`` is drawn from ``np.random.default_rng((seed, index_offset + i))``.
        transform: as for ``CamVid`` (uint8 pair in; ``None`` normalises only).
        index_offset: where in the seed's stream of frames this dataset starts; a validation
            set uses a large offset so that it never shares frames with the training set.

    Frames are drawn on first access and cached.
    """

    def __init__(
        self,
        num_images: int = 64,
        size: tuple[int, int] = (96, 128),
        seed: int = 0,
        transform: PairTransform | None = None,
        *,
        index_offset: int = 0,
    ) -> None:
        super().__init__(transform)
        if num_images < 1:
            raise ValueError(f"num_images must be at least 1, got {num_images}")
        if len(size) != 2 or min(size) < 8:
            raise ValueError(f"size must be (height, width), each at least 8, got {size!r}")
        if seed < 0 or index_offset < 0:
            raise ValueError(f"seed and index_offset must be >= 0, got {seed}, {index_offset}")
        self.num_images = int(num_images)
        self.size = (int(size[0]), int(size[1]))
        self.seed = int(seed)
        self.index_offset = int(index_offset)
        self._frames: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.num_images

    @property
    def description(self) -> str:
        height, width = self.size
        return (
            f"synthetic street scenes (procedurally generated, not real data): "
            f"{self.num_images} frames at {height}x{width}, seed {self.seed}"
        )

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._check_index(index)
        frame = self._frames.get(index)
        if frame is None:
            rng = np.random.default_rng((self.seed, self.index_offset + index))
            image, label = render_street_scene(*self.size, rng)
            image.setflags(write=False)
            label.setflags(write=False)
            frame = self._frames[index] = (image, label)
        return frame
