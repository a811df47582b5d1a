"""Line charts as PNG in pure Python (zlib + struct): the bench's plot with no plotting
library to install. A raster, Bresenham lines, a 5x7 bitmap font, one panel per chart.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

Color = tuple[int, int, int]
WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
GREY: Color = (215, 215, 215)
PALETTE: list[Color] = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14),
                        (148, 103, 189), (23, 190, 207)]

# 5x7 glyphs: seven rows of five 0/1 each, top row first.
_GLYPHS = {
    "0": "01110100011001110101110011000101110", "1": "00100011000010000100001000010001110",
    "2": "01110100010000100010001000100011111", "3": "11110000010000101110000010000111110",
    "4": "00010001100101010010111110001000010", "5": "11111100001111000001000011000101110",
    "6": "00110010001000011110100011000101110", "7": "11111000010001000100010000100001000",
    "8": "01110100011000101110100011000101110", "9": "01110100011000101111000010001001100",
    "A": "01110100011000111111100011000110001", "B": "11110100011000111110100011000111110",
    "C": "01110100011000010000100001000101110", "D": "11100100101000110001100011001011100",
    "E": "11111100001000011110100001000011111", "F": "11111100001000011110100001000010000",
    "G": "01110100011000010111100011000101111", "H": "10001100011000111111100011000110001",
    "I": "01110001000010000100001000010001110", "J": "00111000100001000010000101001001100",
    "K": "10001100101010011000101001001010001", "L": "10000100001000010000100001000011111",
    "M": "10001110111010110101100011000110001", "N": "10001100011100110101100111000110001",
    "O": "01110100011000110001100011000101110", "P": "11110100011000111110100001000010000",
    "Q": "01110100011000110001101011001001101", "R": "11110100011000111110101001001010001",
    "S": "01111100001000001110000010000111110", "T": "11111001000010000100001000010000100",
    "U": "10001100011000110001100011000101110", "V": "10001100011000110001100010101000100",
    "W": "10001100011000110101101011010101010", "X": "10001100010101000100010101000110001",
    "Y": "10001100010101000100001000010000100", "Z": "11111000010001000100010001000011111",
    " ": "00000000000000000000000000000000000", ".": "00000000000000000000000000110001100",
    "-": "00000000000000011111000000000000000", "/": "00001000100001000100010000100010000",
    ":": "00000011000110000000011000110000000", "%": "11001110100001000100010000101110011",
    "(": "00010001000100001000010000010000010", ")": "01000001000001000010000100010001000",
    ",": "00000000000000000000011000010001000", "=": "00000000001111100000111110000000000",
    "+": "00000001000010011111001000010000000", "_": "00000000000000000000000000000011111",
    "<": "00010001000100010000010000010000010", ">": "01000001000001000001000100010001000",
}


class Canvas:
    def __init__(self, width: int, height: int, background: Color = WHITE) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(background) * (width * height))

    def dot(self, x: int, y: int, color: Color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = 3 * (y * self.width + x)
            self.pixels[i:i + 3] = bytes(color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: Color, width: int = 1) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            for ox in range(width):
                for oy in range(width):
                    self.dot(x0 + ox - width // 2, y0 + oy - width // 2, color)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, text: str, color: Color = BLACK, scale: int = 1) -> None:
        for ch in text.upper():
            bits = _GLYPHS.get(ch, _GLYPHS[" "])
            rows = [bits[i:i + 5] for i in range(0, 35, 5)]
            for ry, row in enumerate(rows):
                for rx, bit in enumerate(row):
                    if bit == "1":
                        for sx in range(scale):
                            for sy in range(scale):
                                self.dot(x + rx * scale + sx, y + ry * scale + sy, color)
            x += 6 * scale

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(self.pixels[3 * self.width * y:3 * self.width * (y + 1)])
                       for y in range(self.height))

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


@dataclass
class Series:
    label: str
    points: Sequence[tuple[float, float]]


@dataclass
class Panel:
    title: str
    series: list[Series] = field(default_factory=list)


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _label(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.0f}K"
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def chart(path: Path, title: str, panels: list[Panel], x_label: str = "seconds",
          width: int = 960, panel_height: int = 230) -> None:
    """Write the panels one under the other, sharing the x axis, as a PNG."""
    left, right, top, gap = 70, 20, 40, 50
    height = top + len(panels) * (panel_height + gap) + 10
    canvas = Canvas(width, height)
    canvas.text(left, 12, title, scale=2)
    xs = [x for p in panels for s in p.series for x, _ in s.points]
    x_max = max(xs) if xs else 1.0
    plot_w = width - left - right
    for n, panel in enumerate(panels):
        y0 = top + n * (panel_height + gap) + 20
        ys = [y for s in panel.series for _, y in s.points]
        y_max = _nice_max(max(ys) if ys else 1.0)
        canvas.text(left, y0 - 14, panel.title)
        for i in range(5):  # grid and y labels
            y = y0 + panel_height - panel_height * i // 4
            canvas.line(left, y, left + plot_w, y, GREY)
            canvas.text(4, y - 3, _label(y_max * i / 4))
        for i in range(7):  # x labels
            x = left + plot_w * i // 6
            canvas.line(x, y0, x, y0 + panel_height, GREY)
            canvas.text(x - 8, y0 + panel_height + 6, _label(x_max * i / 6))
        canvas.line(left, y0, left, y0 + panel_height, BLACK)
        canvas.line(left, y0 + panel_height, left + plot_w, y0 + panel_height, BLACK)
        legend_x = left + plot_w - 6 * max((len(s.label) for s in panel.series), default=0) - 30
        for k, series in enumerate(panel.series):
            color = PALETTE[k % len(PALETTE)]
            canvas.line(legend_x, y0 + 6 + 12 * k, legend_x + 18, y0 + 6 + 12 * k, color, 2)
            canvas.text(legend_x + 24, y0 + 3 + 12 * k, series.label, color)
            prev: tuple[int, int] | None = None
            for vx, vy in series.points:
                px = left + round(plot_w * vx / x_max)
                py = y0 + panel_height - round(panel_height * min(vy, y_max) / y_max)
                if prev is not None:
                    canvas.line(prev[0], prev[1], px, py, color, 2)
                prev = (px, py)
    canvas.text(left + plot_w // 2 - 3 * len(x_label), height - 12, x_label)
    path.write_bytes(canvas.png())
