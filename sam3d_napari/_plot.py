"""A small live plot of training loss and validation Dice, painted with QPainter.

Painting two polylines costs well under a millisecond, so the plot can follow every
training step without ever stalling the viewer (matplotlib's Qt canvas takes tens of
milliseconds per redraw).
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["TrainingPlot"]

LOSS_COLOR = QColor(80, 160, 255)
EPOCH_COLOR = QColor(255, 170, 40)
DICE_COLOR = QColor(60, 220, 120)


class TrainingPlot(QWidget):
    """Left: training loss per step (line) and per epoch (dots). Right: validation Dice per
    epoch on 0..1."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.clear()

    def clear(self):
        self.step_loss: list[tuple[float, float]] = []  # (epoch as float, loss)
        self.epoch_loss: list[tuple[float, float]] = []
        self.val_dice: list[tuple[float, float]] = []
        self.note = ""
        self.update()

    def add_step(self, epoch_float: float, loss: float):
        if math.isfinite(loss):
            self.step_loss.append((epoch_float, loss))
            self.update()

    def add_epoch(self, record: dict):
        e = float(record["epoch"])
        if record.get("train_loss") is not None:
            self.epoch_loss.append((e, float(record["train_loss"])))
        if record.get("val_dice") is not None:
            self.val_dice.append((e, float(record["val_dice"])))
        self.update()

    # ---------------------------------------------------------------------------- painting

    def paintEvent(self, event):  # noqa: N802 - Qt's name
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        font = QFont(self.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        p.setFont(font)
        w, h = self.width(), self.height()
        half = w / 2
        xmax = max([x for x, _ in self.step_loss + self.epoch_loss + self.val_dice] + [1.0])
        losses = [y for _, y in self.step_loss + self.epoch_loss]
        ymax = max(losses) * 1.05 if losses else 1.0
        left = QRectF(40, 18, half - 50, h - 40)
        right = QRectF(half + 40, 18, half - 50, h - 40)
        self._axes(p, left, "training loss", xmax, 0.0, ymax)
        self._axes(p, right, "validation Dice", xmax, 0.0, 1.0)
        self._line(p, left, self.step_loss, xmax, 0.0, ymax, LOSS_COLOR, dots=False)
        self._line(p, left, self.epoch_loss, xmax, 0.0, ymax, EPOCH_COLOR, dots=True)
        self._line(p, right, self.val_dice, xmax, 0.0, 1.0, DICE_COLOR, dots=True)
        if self.val_dice:
            x, y = self.val_dice[-1]
            p.setPen(DICE_COLOR)
            p.drawText(right.adjusted(4, 2, 0, 0), Qt.AlignmentFlag.AlignLeft, f"{y:.3f}")
        if self.note:
            p.setPen(QColor(200, 200, 200))
            p.drawText(right, Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.note)
        p.end()

    def _axes(self, p, r: QRectF, title, xmax, ymin, ymax):
        p.setPen(QPen(QColor(150, 150, 150), 1))
        p.drawRect(r)
        p.setPen(QColor(220, 220, 220))
        p.drawText(QRectF(r.left(), 0, r.width(), 16), Qt.AlignmentFlag.AlignCenter, title)
        p.setPen(QColor(170, 170, 170))
        for v, y in ((ymax, r.top()), (ymin, r.bottom())):
            box = QRectF(r.left() - 38, y - 8, 34, 16)
            p.drawText(box, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, f"{v:.2g}")
        p.drawText(QRectF(r.left(), r.bottom() + 2, r.width(), 16),
                   Qt.AlignmentFlag.AlignCenter, f"epoch (0-{xmax:g})")  # fmt: skip

    @staticmethod
    def _line(p, r: QRectF, pts, xmax, ymin, ymax, color, *, dots):
        if not pts:
            return

        def to_px(x, y):
            fx = x / xmax if xmax else 0.0
            fy = (y - ymin) / (ymax - ymin) if ymax > ymin else 0.0
            return QPointF(r.left() + fx * r.width(), r.bottom() - min(max(fy, 0), 1) * r.height())

        p.setPen(QPen(color, 1.5))
        poly = QPolygonF([to_px(x, y) for x, y in pts])
        if len(pts) > 1:
            p.drawPolyline(poly)
        if dots or len(pts) == 1:
            p.setBrush(color)
            for q in poly:
                p.drawEllipse(q, 3, 3)
            p.setBrush(Qt.BrushStyle.NoBrush)
