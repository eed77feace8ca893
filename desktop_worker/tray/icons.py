"""The tray's state icons, drawn with QPainter at run time (nothing is downloaded or shipped).

One icon per :class:`TrayState`; each is a coloured disc with a white glyph, so the states
differ in colour and in shape (for colour-blind users):

idle: green, check mark · working: blue, circular arrow · paused: amber, two bars ·
snoozed: violet, clock face · offline: grey, broken link · error: red, exclamation mark.
"""

from __future__ import annotations

import math
from enum import StrEnum

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPainterPath, QPen, QPixmap


class TrayState(StrEnum):
    IDLE = "idle"
    WORKING = "working"
    PAUSED = "paused"
    SNOOZED = "snoozed"
    OFFLINE = "offline"
    ERROR = "error"


COLOURS = {
    TrayState.IDLE: "#2e9d4f",
    TrayState.WORKING: "#1f6fd1",
    TrayState.PAUSED: "#e0900e",
    TrayState.SNOOZED: "#7a4fc9",
    TrayState.OFFLINE: "#6f7780",
    TrayState.ERROR: "#d3302f",
}

LABELS = {
    TrayState.IDLE: "Idle",
    TrayState.WORKING: "Working",
    TrayState.PAUSED: "Paused",
    TrayState.SNOOZED: "Snoozed",
    TrayState.OFFLINE: "Offline",
    TrayState.ERROR: "Error",
}

SIZES = (16, 22, 24, 32, 48, 64, 128)


def draw(state: TrayState, size: int) -> QPixmap:
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.scale(size / 64.0, size / 64.0)  # draw on a 64x64 canvas
    painter.setPen(QPen(QColor("#ffffff"), 2))
    painter.setBrush(QColor(COLOURS[state]))
    painter.drawEllipse(QRectF(2, 2, 60, 60))
    white = QColor("#ffffff")
    pen = QPen(white, 7, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap, Qt.PenJoinStyle.RoundJoin)
    painter.setPen(pen)
    painter.setBrush(Qt.BrushStyle.NoBrush)
    if state is TrayState.IDLE:
        path = QPainterPath(QPointF(18, 33))
        path.lineTo(28, 43)
        path.lineTo(46, 22)
        painter.drawPath(path)
    elif state is TrayState.WORKING:
        painter.drawArc(QRectF(17, 17, 30, 30), 90 * 16, -270 * 16)
        # arrow head at the arc's start (top), pointing right
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(white)
        head = QPainterPath(QPointF(30, 8))
        head.lineTo(42, 17)
        head.lineTo(30, 26)
        head.closeSubpath()
        painter.drawPath(head)
    elif state is TrayState.PAUSED:
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(white)
        painter.drawRoundedRect(QRectF(20, 17, 9, 30), 2, 2)
        painter.drawRoundedRect(QRectF(35, 17, 9, 30), 2, 2)
    elif state is TrayState.SNOOZED:
        painter.setPen(QPen(white, 5))
        painter.drawEllipse(QRectF(14, 14, 36, 36))
        painter.setPen(pen)
        painter.drawLine(QPointF(32, 32), QPointF(32, 20))
        painter.drawLine(QPointF(32, 32), QPointF(41, 37))
    elif state is TrayState.OFFLINE:
        painter.setPen(QPen(white, 6, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
        painter.drawArc(QRectF(10, 20, 22, 22), 100 * 16, 170 * 16)
        painter.drawArc(QRectF(32, 20, 22, 22), -80 * 16, 170 * 16)
        painter.drawLine(QPointF(21, 43), QPointF(43, 21))
    elif state is TrayState.ERROR:
        painter.drawLine(QPointF(32, 15), QPointF(32, 36))
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(white)
        painter.drawEllipse(QPointF(32, 47), 4.5, 4.5)
    painter.end()
    return pixmap


_cache: dict[TrayState, QIcon] = {}


def icon(state: TrayState) -> QIcon:
    """The icon for a state (all sizes), drawn once per process."""
    found = _cache.get(state)
    if found is None:
        found = QIcon()
        for size in SIZES:
            found.addPixmap(draw(state, size))
        _cache[state] = found
    return found


def progress_ring(fraction: float, size: int = 64) -> QPixmap:
    """A small ring filled to ``fraction`` (0..1), for menus."""
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setPen(QPen(QColor("#c8ccd2"), size / 8))
    rect = QRectF(size / 8, size / 8, size * 3 / 4, size * 3 / 4)
    painter.drawEllipse(rect)
    painter.setPen(QPen(QColor(COLOURS[TrayState.WORKING]), size / 8))
    span = -int(360 * 16 * max(0.0, min(1.0, fraction if math.isfinite(fraction) else 0.0)))
    painter.drawArc(rect, 90 * 16, span)
    painter.end()
    return pixmap
