"""The words the API and the engine share, each defined once: formats, positions."""

# Output formats we can be asked for, and the MIME type each is served as.
OUTPUT_FORMATS: dict[str, str] = {
    "webp": "image/webp",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "avif": "image/avif",
}

# Where a watermark layer sits: the nine compass positions.
GRAVITIES: tuple[str, ...] = (
    "north_west", "north", "north_east",
    "west", "center", "east",
    "south_west", "south", "south_east",
)
