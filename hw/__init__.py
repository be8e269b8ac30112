"""Amaranth hardware of the LCQ accelerator."""
