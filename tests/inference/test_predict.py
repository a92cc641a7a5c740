"""`imgpipe predict`'s helpers without a model (components/inference/predict.py): a
warning when the inputs look nothing like the training images, and predictions written
atomically (a full disk keeps the earlier file; a non-UTF-8 file name keeps its bytes)."""

from __future__ import annotations

import json
import os

import pytest


def test_predict_warns_when_inputs_look_nothing_like_the_training_images(tmp_path):
    import numpy as np
    from PIL import Image

    from components.inference import predict

    photo, glyph = str(tmp_path / "photo.jpg"), str(tmp_path / "glyph.png")
    Image.fromarray(np.zeros((480, 640, 3), np.uint8)).save(photo)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(glyph)
    warning = predict.shape_warning([photo, glyph], [8, 8, 1])
    assert warning.startswith("1 of 2 images checked (e.g. 640x480 RGB) differ from the "
                              "model's 8x8 grayscale input")
    assert predict.shape_warning([glyph], [8, 8, 1]) is None       # 2x: fine
    assert predict.shape_warning([glyph], None) is None


def test_an_interrupted_prediction_write_keeps_the_earlier_file(tmp_path, monkeypatch):
    """Fault injection mid-write (disk full at sync): out.csv keeps its earlier content
    and no temporary file is left; a non-UTF-8 file name keeps its bytes."""
    import errno

    from components.inference import predict

    out = tmp_path / "out.csv"
    out.write_text("earlier predictions\n")
    odd = os.fsdecode(b"/data/caf\xe9.png")
    rows = [{"path": odd, "class": "cat", "probability": 0.9, "top_k": [["cat", 0.9]]}]

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        predict.write_rows(rows, str(out))
    assert out.read_text() == "earlier predictions\n"
    assert os.listdir(tmp_path) == ["out.csv"]
    monkeypatch.undo()
    predict.write_rows(rows, str(out))
    assert b"/data/caf\xe9.png,cat,0.900000" in out.read_bytes()
    predict.write_rows(rows, str(tmp_path / "out.jsonl"))
    assert json.loads((tmp_path / "out.jsonl").read_text())["path"] == odd
