"""Class lists of PASCAL VOC 2012 and COCO 2014, shared by the data stages and the generator.

Facts only: the VOC class order and colour palette, and the official 80 COCO categories with their
(non-contiguous) ids, names and supercategories.
"""

from __future__ import annotations

import numpy as np

#: The 20 PASCAL VOC classes in label order: label ``i + 1`` is ``VOC_CLASSES[i]``; 0 is background.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

VOC_IGNORE_LABEL = 255


def _voc_palette() -> np.ndarray:
    """The standard VOC palette: the bits of the label spread over R, G, B from the top bit down."""
    labels = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.uint8)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= (((labels >> (3 * bit + channel)) & 1) << (7 - bit)).astype(
                np.uint8
            )
    return palette


#: 256 x 3 uint8 colour table of the VOC SegmentationClass PNGs (255 -> (224, 224, 192)).
VOC_PALETTE: np.ndarray = _voc_palette()
VOC_PALETTE.setflags(write=False)

_COCO_TABLE = """
1 person person|2 bicycle vehicle|3 car vehicle|4 motorcycle vehicle|5 airplane vehicle
6 bus vehicle|7 train vehicle|8 truck vehicle|9 boat vehicle|10 traffic_light outdoor
11 fire_hydrant outdoor|13 stop_sign outdoor|14 parking_meter outdoor|15 bench outdoor
16 bird animal|17 cat animal|18 dog animal|19 horse animal|20 sheep animal|21 cow animal
22 elephant animal|23 bear animal|24 zebra animal|25 giraffe animal|27 backpack accessory
28 umbrella accessory|31 handbag accessory|32 tie accessory|33 suitcase accessory
34 frisbee sports|35 skis sports|36 snowboard sports|37 sports_ball sports|38 kite sports
39 baseball_bat sports|40 baseball_glove sports|41 skateboard sports|42 surfboard sports
43 tennis_racket sports|44 bottle kitchen|46 wine_glass kitchen|47 cup kitchen|48 fork kitchen
49 knife kitchen|50 spoon kitchen|51 bowl kitchen|52 banana food|53 apple food|54 sandwich food
55 orange food|56 broccoli food|57 carrot food|58 hot_dog food|59 pizza food|60 donut food
61 cake food|62 chair furniture|63 couch furniture|64 potted_plant furniture|65 bed furniture
67 dining_table furniture|70 toilet furniture|72 tv electronic|73 laptop electronic
74 mouse electronic|75 remote electronic|76 keyboard electronic|77 cell_phone electronic
78 microwave appliance|79 oven appliance|80 toaster appliance|81 sink appliance
82 refrigerator appliance|84 book indoor|85 clock indoor|86 vase indoor|87 scissors indoor
88 teddy_bear indoor|89 hair_drier indoor|90 toothbrush indoor
"""


def _coco_categories() -> list[dict]:
    entries = []
    for item in _COCO_TABLE.replace("\n", "|").split("|"):
        if not item.strip():
            continue
        cat_id, name, supercategory = item.split()
        # Names with spaces are written with "_" in the table above only to keep it splittable.
        entries.append(
            {"id": int(cat_id), "name": name.replace("_", " "), "supercategory": supercategory}
        )
    return entries


#: The 80 official COCO 2014 categories in official (ascending id) order.
COCO_CATEGORIES: list[dict] = _coco_categories()

#: Official COCO category ids in ascending order; the label of ``COCO_IDS[i]`` is ``i + 1``.
COCO_IDS: tuple[int, ...] = tuple(cat["id"] for cat in COCO_CATEGORIES)

assert len(VOC_CLASSES) == 20
assert len(COCO_CATEGORIES) == 80


def coco_label_of(category_id: int) -> int:
    """Contiguous label 1..80 of an official COCO category id (ascending id order)."""
    try:
        return COCO_IDS.index(category_id) + 1
    except ValueError:
        raise ValueError(f"{category_id} is not one of the 80 official COCO category ids") from None
