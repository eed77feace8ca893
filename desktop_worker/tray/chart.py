"""Two small charts drawn with QPainter (QtCharts is not in PySide6-Essentials).

- :class:`BarChart`: completed runs per hour over the last 7 days (168 bars).
- :class:`RateChart`: success rate per day over the last 7 days (a line with dots; days
  without any decided run are gaps, not zeros).
"""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QPainter, QPainterPath, QPalette, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

BAR = QColor("#1f6fd1")
LINE = QColor("#2e9d4f")
GRID = QColor(128, 128, 128, 60)


def nice_ceiling(value: float) -> float:
    if value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        top = step * 10**exponent
        if top >= value:
            return top
    return 10 ** (exponent + 1)


def count_ceiling(value: float) -> float:
    """A top for a count axis with four whole-number steps (4, 8, 12, 20, 40...)."""
    top = max(4.0, nice_ceiling(value))
    return float(math.ceil(top / 4) * 4)


class _Chart(QWidget):
    margins = (44, 28, 14, 34)  # left, top, right, bottom

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = title
        self.x_labels: list[tuple[int, str]] = []  # (index, text)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumHeight(110)

    def sizeHint(self) -> QSize:
        return QSize(640, 220)

    def plot_rect(self) -> QRectF:
        left, top, right, bottom = self.margins
        return QRectF(left, top, self.width() - left - right, self.height() - top - bottom)

    def _frame(self, painter: QPainter, top_value: float, fmt: str) -> QRectF:
        text = self.palette().color(QPalette.ColorRole.WindowText)
        painter.setPen(text)
        bold = QFont(self.font())
        bold.setBold(True)
        painter.setFont(bold)
        painter.drawText(QRectF(0, 4, self.width(), 20), Qt.AlignmentFlag.AlignHCenter, self.title)
        painter.setFont(self.font())
        plot = self.plot_rect()
        for step in range(5):
            value = top_value * step / 4
            y = plot.bottom() - plot.height() * step / 4
            painter.setPen(QPen(GRID, 1))
            painter.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
            painter.setPen(text)
            painter.drawText(
                QRectF(0, y - 8, plot.left() - 6, 16),
                Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                fmt.format(value),
            )
        return plot

    def _x_labels(self, painter: QPainter, plot: QRectF, count: int) -> None:
        painter.setPen(self.palette().color(QPalette.ColorRole.WindowText))
        slot = plot.width() / max(1, count)
        for index, label in self.x_labels:
            x = plot.left() + slot * index
            painter.drawText(
                QRectF(x - 40 + slot / 2, plot.bottom() + 4, 80, 18),
                Qt.AlignmentFlag.AlignHCenter,
                label,
            )


class BarChart(_Chart):
    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(title, parent)
        self.values: list[float] = []

    def set_data(self, values: list[float], x_labels: list[tuple[int, str]]) -> None:
        self.values = list(values)
        self.x_labels = list(x_labels)
        self.update()

    def paintEvent(self, _event: object) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        top = count_ceiling(max(self.values, default=0))
        plot = self._frame(painter, top, "{:.0f}")
        count = max(1, len(self.values))
        slot = plot.width() / count
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(BAR)
        for index, value in enumerate(self.values):
            if value <= 0:
                continue
            height = plot.height() * value / top
            width = max(1.0, slot * 0.8)
            painter.drawRect(
                QRectF(
                    plot.left() + slot * index + (slot - width) / 2,
                    plot.bottom() - height,
                    width,
                    height,
                )
            )
        # day boundaries
        painter.setPen(QPen(GRID, 1, Qt.PenStyle.DashLine))
        for index, _label in self.x_labels:
            if index:
                x = plot.left() + slot * index
                painter.drawLine(QPointF(x, plot.top()), QPointF(x, plot.bottom()))
        self._x_labels_between(painter, plot, count)
        painter.end()

    def _x_labels_between(self, painter: QPainter, plot: QRectF, count: int) -> None:
        """Day names centred under their 24 bars."""
        painter.setPen(self.palette().color(QPalette.ColorRole.WindowText))
        slot = plot.width() / max(1, count)
        starts = [index for index, _ in self.x_labels] + [count]
        metrics = painter.fontMetrics()
        for (index, label), end in zip(self.x_labels, starts[1:], strict=False):
            x1, x2 = plot.left() + slot * index, plot.left() + slot * end
            if metrics.horizontalAdvance(label) > x2 - x1:
                continue  # a partial day too narrow for its name
            painter.drawText(
                QRectF(x1, plot.bottom() + 4, x2 - x1, 18), Qt.AlignmentFlag.AlignHCenter, label
            )


class RateChart(_Chart):
    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(title, parent)
        self.values: list[float | None] = []  # 0..1 or None (no decided run that day)

    def set_data(self, values: list[float | None], x_labels: list[tuple[int, str]]) -> None:
        self.values = list(values)
        self.x_labels = list(x_labels)
        self.update()

    def paintEvent(self, _event: object) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        plot = self._frame(painter, 100, "{:.0f} %")
        count = max(1, len(self.values))
        slot = plot.width() / count
        points: list[QPointF | None] = []
        for index, value in enumerate(self.values):
            if value is None:
                points.append(None)
                continue
            x = plot.left() + slot * index + slot / 2
            points.append(QPointF(x, plot.bottom() - plot.height() * value))
        painter.setPen(QPen(LINE, 2.5))
        path = QPainterPath()
        pen_down = False
        for point in points:
            if point is None:
                pen_down = False
                continue
            if pen_down:
                path.lineTo(point)
            else:
                path.moveTo(point)
                pen_down = True
        painter.drawPath(path)
        text = self.palette().color(QPalette.ColorRole.WindowText)
        for point, value in zip(points, self.values, strict=False):
            if point is None or value is None:
                continue
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(LINE)
            painter.drawEllipse(point, 4, 4)
            painter.setPen(text)
            label_y = point.y() - 20 if point.y() - 20 > plot.top() else point.y() + 4
            painter.drawText(
                QRectF(point.x() - 30, label_y, 60, 16),
                Qt.AlignmentFlag.AlignHCenter,
                f"{value * 100:.0f} %",
            )
        self._x_labels(painter, plot, count)
        painter.end()
