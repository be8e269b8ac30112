"""Board support: board table, PLL clocks, bitstream builds, reports and flashing (``lcq build``, ``lcq flash``)."""
