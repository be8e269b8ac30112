"""Program a board with its tool: iceprog (iCEBreaker), openFPGALoader (ULX3S), dfu-util (OrangeCrab).

Each tool is taken from its environment variable (the same ones amaranth-boards reads:
``ICEPROG``, ``OPENFPGALOADER``, ``DFU_UTIL``) or from ``PATH``, and runs in a process group of its own,
stopped with everything it started on a timeout, an exception (Ctrl-C) or this process's death
(:func:`boards.process_group.group_stopped`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from .boards import Board
from .process_group import group_stopped

FLASH_TIMEOUT_S = 300.0     # `lcq flash --timeout`'s default

# programmer -> (environment variable, how to install it, what to check when it finds no board)
TOOLS = {
    "iceprog": ("ICEPROG", "apt install fpga-icestorm",
                "is the iCEBreaker plugged in, and may this user open FTDI 0403:6010 (udev rule)?"),
    "openFPGALoader": ("OPENFPGALOADER", "apt install openfpgaloader",
                       "is the ULX3S plugged in by its US1 port, and may this user open FTDI 0403:6015 (udev rule)?"),
    "dfu-util": ("DFU_UTIL", "apt install dfu-util",
                 "is the OrangeCrab in its DFU bootloader (hold the button while plugging it in)?"),
}


# The preamble each family's bitstream starts its commands with (after a comment block), as icepack and ecppack
# write it, and the IDCODE of each ECP5 part, which ecppack writes after the preamble in a VERIFY_ID command
# (0xE2, three zero bytes, the IDCODE): the part checks it before it takes the rest.
PREAMBLES = {"ice40": b"\x7e\xaa\x99\x7e", "ecp5": b"\xff\xff\xbd\xb3"}
FAMILY_NAMES = {"ice40": "iCE40", "ecp5": "ECP5"}
ECP5_IDCODES = {"LFE5U-12F": 0x21111043, "LFE5U-25F": 0x41111043, "LFE5U-45F": 0x41112043, "LFE5U-85F": 0x41113043}
_VERIFY_ID = re.compile(rb"\xe2\x00\x00\x00(.{4})", re.DOTALL)


class FlashError(RuntimeError):
    """The programmer is missing or failed; the message says which and what to do."""


class BitstreamRefused(FlashError, ValueError):
    """The bitstream given is missing or is no bitstream for the board's part: refused before the programmer runs
    (a ValueError, as any file a verb refuses: ``lcq flash`` exits 2, where a failed programmer exits 1)."""


def find_tool(board: Board) -> str:
    """Path of ``board``'s programmer; :class:`FlashError` naming how to install it when missing."""
    var, install, _ = TOOLS[board.programmer]
    tool = os.environ.get(var) or board.programmer
    path = shutil.which(tool)
    if path is None:
        raise FlashError(f"{board.programmer} ({tool!r}) not found, needed to flash {board.name}: "
                         f"`{install}`, or set {var}=/path/to/{board.programmer}")
    return path


def check_bitstream(board: Board, bitstream) -> None:
    """:class:`BitstreamRefused` unless the file ``bitstream`` holds a bitstream for ``board``'s part: not empty,
    with the preamble of the board's family first, and, on ECP5, the part's IDCODE where the bitstream names one."""
    data = Path(bitstream).read_bytes()
    build = f"`lcq build MODEL --board {board.name}`"
    if not data:
        raise BitstreamRefused(f"bitstream {bitstream} is empty (0 bytes): a build stopped as it began writing it; "
                               f"build it again with {build}")
    found = sorted((data.find(preamble), family) for family, preamble in PREAMBLES.items() if preamble in data)
    if not found:
        raise BitstreamRefused(f"{bitstream} is not an iCE40 or ECP5 bitstream (it has neither preamble): pass the "
                               f"{board.bitstream_suffix} file that {build} writes")
    at, family = found[0]
    if family != board.family:
        raise BitstreamRefused(f"{bitstream} is a bitstream for an {FAMILY_NAMES[family]} part, not for the "
                               f"{board.name}'s {board.device}: pass the --board it was built for, or build for "
                               f"this board with {build}")
    verify = _VERIFY_ID.search(data, at, at + 64) if family == "ecp5" else None
    if verify is not None and int.from_bytes(verify[1], "big") != ECP5_IDCODES[board.device]:
        idcode = int.from_bytes(verify[1], "big")
        part = next((p for p, code in ECP5_IDCODES.items() if code == idcode), f"part of IDCODE 0x{idcode:08x}")
        raise BitstreamRefused(f"{bitstream} is a bitstream for the {part}, not for the {board.name}'s "
                               f"{board.device}: pass the --board it was built for, or build for this board with "
                               f"{build}")


def flash_command(board: Board, bitstream, tool: str, sram: bool = False) -> list[str]:
    """The command that writes ``bitstream`` to the board's configuration flash (``sram``: to
    the FPGA only, lost at power-off; not on the OrangeCrab, whose bootloader writes flash)."""
    bitstream = str(bitstream)
    if board.programmer == "iceprog":
        return [tool, "-S", bitstream] if sram else [tool, bitstream]
    if board.programmer == "openFPGALoader":
        return [tool, "-b", "ulx3s", "-m" if sram else "-f", bitstream]
    if sram:
        raise ValueError(f"{board.name} is programmed through its DFU bootloader, which writes flash; drop sram")
    return [tool, "-a", "0", "-D", bitstream]


def flash(board: Board, bitstream, sram: bool = False, timeout: float = FLASH_TIMEOUT_S) -> str:
    """Program ``bitstream`` into ``board``; returns the tool's output. :class:`BitstreamRefused` when the
    bitstream is missing or not one for the board's part (:func:`check_bitstream`); :class:`FlashError` when the
    tool is missing, the tool fails (no board found, ...), with its exit status and output, or it runs past
    ``timeout`` seconds (then it is stopped with its process group)."""
    if Path(bitstream).is_dir():
        raise BitstreamRefused(f"bitstream {bitstream} is a directory, not a bitstream file: pass the "
                               f"{board.bitstream_suffix} file that `lcq build MODEL --board {board.name}` writes")
    if Path(bitstream).exists() and not Path(bitstream).is_file():   # (reading a named pipe waits for a writer)
        raise BitstreamRefused(f"bitstream {bitstream} is not a regular file (a named pipe or a device): pass the "
                               f"{board.bitstream_suffix} file that `lcq build MODEL --board {board.name}` writes")
    if not Path(bitstream).is_file():
        raise BitstreamRefused(f"bitstream {bitstream} not found; build it with `lcq build MODEL --board "
                               f"{board.name}`")
    check_bitstream(board, bitstream)
    command = flash_command(board, bitstream, find_tool(board), sram)
    # errors="replace": a byte that is not UTF-8 in the tool's output must not hide its exit status
    with group_stopped(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace") as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise FlashError(f"{' '.join(command)} did not finish in {timeout:g} s and was stopped; "
                             f"{TOOLS[board.programmer][2]} (a slow programmer: a longer --timeout)") from None
        finally:
            proc.stdout.close()
            proc.stderr.close()
    output = (stdout + stderr).strip()
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-15:])
        raise FlashError(f"{' '.join(command)} failed (exit status {proc.returncode}); "
                         f"{TOOLS[board.programmer][2]}\n{tail}")
    return output
