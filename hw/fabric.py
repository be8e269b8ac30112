"""The FPGA family a design is elaborated for, where the hardware differs by family."""


def ecp5_part(device: str) -> bool:
    """Whether the FPGA part named ``device`` (``"LFE5U-85F"``; ``""`` in simulation) is a Lattice ECP5."""
    return device.startswith("LFE5")


def is_ecp5(platform) -> bool:
    """Whether ``platform`` (an Amaranth platform, or None in simulation) targets an ECP5 part."""
    return ecp5_part(str(getattr(platform, "device", "")))
