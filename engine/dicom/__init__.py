"""DICOM understanding for the engine: how a Part 10 file splits into header, frames and trailer."""

from engine.dicom.segment import (
    DicomLayout,
    PixelLayout,
    Segment,
    SegmentKind,
    Sparse,
    segment,
)

__all__ = ["DicomLayout", "PixelLayout", "Segment", "SegmentKind", "Sparse", "segment"]
