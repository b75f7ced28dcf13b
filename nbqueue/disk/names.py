"""Task ids and readable task names, like ``"four-alpha-india-bacon"``.

A task's id is a version 4 uuid. The 16 bytes of the uuid are folded into 4 by xor and
each byte picks one of 256 words. Names are for people; like Django Q's they are not
guaranteed unique (2**32 of them), so the store maps a name to the newest task that
bears it.

A *batch* (many items of ``map`` or ``async_iter`` in one task) has a version 8 uuid
whose last 32 bits are zero; its item ``i`` has the same uuid with ``i + 1`` in those
bits, and the batch's name with ``.i`` after it. So an item's id is still a uuid, and
names its batch without a row of its own.
"""

from __future__ import annotations

import os
import uuid

WORDS = (
    "acorn",
    "alaska",
    "alpha",
    "amber",
    "anchor",
    "angel",
    "apple",
    "april",
    "arctic",
    "arrow",
    "aspen",
    "atlas",
    "august",
    "autumn",
    "avocado",
    "badger",
    "bacon",
    "balloon",
    "bamboo",
    "banana",
    "barley",
    "basil",
    "beacon",
    "beaver",
    "berry",
    "bison",
    "black",
    "blossom",
    "blue",
    "bravo",
    "breeze",
    "bridge",
    "bronze",
    "bubble",
    "buffalo",
    "butter",
    "cabin",
    "cactus",
    "camel",
    "candle",
    "canyon",
    "carbon",
    "cardinal",
    "carrot",
    "castle",
    "cedar",
    "charlie",
    "cherry",
    "chess",
    "cider",
    "cinnamon",
    "circle",
    "citrus",
    "cobalt",
    "cocoa",
    "coffee",
    "comet",
    "copper",
    "coral",
    "cotton",
    "cougar",
    "crane",
    "crystal",
    "cricket",
    "daisy",
    "delta",
    "desert",
    "diamond",
    "dolphin",
    "donut",
    "dragon",
    "dune",
    "eagle",
    "earth",
    "east",
    "echo",
    "eight",
    "eleven",
    "elm",
    "ember",
    "emerald",
    "falcon",
    "fennel",
    "fern",
    "fifteen",
    "finch",
    "fig",
    "five",
    "flint",
    "forest",
    "four",
    "fox",
    "foxtrot",
    "frost",
    "galaxy",
    "garden",
    "garlic",
    "gecko",
    "ginger",
    "glacier",
    "golf",
    "granite",
    "grape",
    "gravel",
    "green",
    "grey",
    "hammer",
    "harbor",
    "hawk",
    "hazel",
    "helium",
    "heron",
    "honey",
    "hotel",
    "hydrogen",
    "india",
    "indigo",
    "iris",
    "iron",
    "island",
    "ivory",
    "jade",
    "jasmine",
    "jelly",
    "juliet",
    "july",
    "jungle",
    "jupiter",
    "kayak",
    "kettle",
    "kilo",
    "kiwi",
    "koala",
    "lagoon",
    "lake",
    "lantern",
    "lava",
    "lemon",
    "leopard",
    "lima",
    "lilac",
    "lime",
    "lion",
    "lithium",
    "lotus",
    "lunar",
    "magnet",
    "mango",
    "maple",
    "marble",
    "mars",
    "meadow",
    "melon",
    "mercury",
    "mike",
    "mint",
    "mocha",
    "monkey",
    "moon",
    "moss",
    "mountain",
    "nectar",
    "neon",
    "neptune",
    "nickel",
    "nine",
    "north",
    "november",
    "oak",
    "oasis",
    "ocean",
    "october",
    "olive",
    "onyx",
    "opal",
    "orange",
    "orbit",
    "orchid",
    "oscar",
    "otter",
    "owl",
    "oyster",
    "panda",
    "papa",
    "parrot",
    "peach",
    "pearl",
    "pebble",
    "pepper",
    "pilot",
    "pine",
    "planet",
    "plum",
    "polar",
    "poppy",
    "prism",
    "puffin",
    "quartz",
    "quebec",
    "rabbit",
    "radar",
    "raven",
    "red",
    "river",
    "robin",
    "rocket",
    "romeo",
    "ruby",
    "saffron",
    "sage",
    "salmon",
    "sapphire",
    "saturn",
    "seven",
    "sierra",
    "silver",
    "six",
    "sky",
    "slate",
    "snow",
    "solar",
    "south",
    "sparrow",
    "spruce",
    "star",
    "stone",
    "sugar",
    "summer",
    "sun",
    "swan",
    "tango",
    "ten",
    "thunder",
    "tiger",
    "topaz",
    "tulip",
    "tundra",
    "two",
    "uniform",
    "valley",
    "vanilla",
    "velvet",
    "venus",
    "victor",
    "violet",
    "walnut",
    "west",
    "whiskey",
    "willow",
    "winter",
    "wolf",
    "xray",
    "yankee",
    "yellow",
    "zebra",
    "zulu",
)


def _words(raw: bytes | bytearray) -> str:
    """Four words: each is the xor of four bytes of the 16 (the common case, kept fast)."""
    return "-".join(WORDS[raw[i] ^ raw[i + 1] ^ raw[i + 2] ^ raw[i + 3]] for i in (0, 4, 8, 12))


def humanize(task_id: str, words: int = 4) -> str:
    """The name of the task with uuid ``task_id``, in ``words`` words."""
    raw = uuid.UUID(task_id).bytes
    if words == 4:
        return _words(raw)
    size = len(raw) // words
    picks = []
    for i in range(words):
        folded = 0
        for byte in raw[i * size : (i + 1) * size]:
            folded ^= byte
        picks.append(WORDS[folded])
    return "-".join(picks)


def new_task_id() -> tuple[str, str]:
    """A fresh ``(uuid, name)`` pair: a version 4 uuid, made without uuid.UUID, whose
    object and formatting cost several times these few byte operations."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}", _words(raw)


def new_batch_id() -> tuple[str, str]:
    """A fresh ``(uuid, name)`` pair for a batch: a version 8 uuid ending in 32 zero bits."""
    raw = bytearray(os.urandom(12)) + bytes(4)
    raw[6] = raw[6] & 0x0F | 0x80
    raw[8] = raw[8] & 0x3F | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}", _words(raw)


def item_id(batch_id: str, index: int) -> str:
    """The id of item ``index`` (from 0) of the batch ``batch_id``."""
    return f"{batch_id[:28]}{index + 1:08x}"


def item_name(batch_name: str, index: int) -> str:
    return f"{batch_name}.{index}"


def batch_of(task_id: str) -> tuple[str, int] | None:
    """``(batch id, item index)`` of an item's id; None for any other id."""
    if len(task_id) != 36 or task_id[14] != "8" or task_id[28:] == "00000000":
        return None
    try:
        index = int(task_id[28:], 16) - 1
    except ValueError:
        return None
    return f"{task_id[:28]}00000000", index


def task_of(task_id: str) -> str:
    """The id of the task that runs ``task_id``: its batch's for an item, else itself."""
    where = batch_of(task_id)
    return task_id if where is None else where[0]


def batch_of_name(name: str) -> tuple[str, int] | None:
    """``(batch name, item index)`` of an item's name (``"<batch name>.<index>"``)."""
    base, dot, index = name.rpartition(".")
    if not dot or not index.isdigit() or not base:
        return None
    return base, int(index)
