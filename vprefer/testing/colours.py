"""Named colour prototypes shared by the synthetic world and the stand-in judge (one definition)."""

PALETTE = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (240, 220, 40),
    "orange": (245, 140, 20), "purple": (130, 40, 170), "pink": (245, 150, 190), "white": (245, 245, 245),
    "black": (15, 15, 15), "gray": (128, 128, 128), "grey": (128, 128, 128), "brown": (120, 70, 30),
    "cyan": (40, 210, 220),
}
