"""The words the API, the settings and the engine share, each defined once."""

import re

# Output formats, in the order they are listed, and the MIME type each is served as.
OUTPUT_FORMATS: dict[str, str] = {
    "webp": "image/webp",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "avif": "image/avif",
}
# Other spellings a look-up accepts for an output format.
FORMAT_ALIASES: dict[str, str] = {"jpg": "jpeg"}
# "auto": the best output format the browser says it reads (its Accept header).
AUTO_FORMAT = "auto"
REQUEST_FORMATS: tuple[str, ...] = (*OUTPUT_FORMATS, AUTO_FORMAT)

# Where a watermark layer sits: the nine compass positions.
GRAVITIES: tuple[str, ...] = (
    "north_west", "north", "north_east",
    "west", "center", "east",
    "south_west", "south", "south_east",
)

# Output widths in pixels a caller may ask for (look-ups, image links, srcset).
MIN_WIDTH = 100
MAX_WIDTH = 2000
DEFAULT_WIDTH = 960

# Identifiers as they appear in our URLs and in upstream's answers.
PRODUCT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,50}\Z"
IMAGE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}\Z"
IMAGE_ID = re.compile(IMAGE_ID_PATTERN)

# The marketplaces upstream indexes (`storePlatform`), as upstream spells them.
PLATFORMS: tuple[str, ...] = ("WEIDIAN", "TAOBAO", "1688", "TMALL")
