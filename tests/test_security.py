"""Dataset files are data, never code: CIFAR batches go through a restricted unpickler, GTSRB's CSV stays in its folder.

CIFAR's python batches were pickled by Python 2 (strings as BINSTRING, numpy arrays through
``numpy.core.multiarray._reconstruct``); ``py2_pickle`` writes that format byte for byte so the tests read
what a real download holds, in both encodings a reader may use.
"""

from __future__ import annotations

import builtins
import csv
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from cartl_kit.data import CifarUnpickler, DatasetCorrupt, inside_folder, load_dataset
from test_data import write_cifar10, write_gtsrb


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2's cPickle wrote it: every string a raw BINSTRING, numpy under ``numpy.core``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_binstring(self, obj) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_binstring
    dispatch[bytes] = save_binstring

    def save_global(self, obj, name=None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def rewrite_batches(root: Path, dump) -> None:
    """Re-pickle every file of a tiny CIFAR-10 copy with ``dump``."""
    for path in (root / "cifar-10-batches-py").iterdir():
        path.write_bytes(dump(pickle.loads(path.read_bytes())))


def test_py2_pickle_writes_what_real_cifar_batches_hold():
    raw = py2_pickle({"data": np.zeros((1, 3072), np.uint8), "labels": [3]})
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw and b"U\x04data" in raw  # GLOBAL, SHORT_BINSTRING
    assert b"_codecs" not in raw and pickle.BINUNICODE not in raw


@pytest.mark.parametrize("dump", [py2_pickle, lambda obj: pickle.dumps(obj, protocol=2),
                                  lambda obj: pickle.dumps(obj, protocol=4), lambda obj: pickle.dumps(obj, protocol=5)],
                         ids=["python2", "protocol2", "protocol4", "protocol5"])
def test_cifar_batches_in_every_pickle_format_still_load(tmp_path, dump):
    written = write_cifar10(tmp_path)
    rewrite_batches(tmp_path, dump)
    test = load_dataset("cifar10", split="test", root=tmp_path, download=False)
    assert test.images.reshape(len(test), -1).numpy().tolist() == written["test_rows"].tolist()
    assert test.labels.tolist() == written["test_labels"].tolist() and test.classes[0] == "airplane"


def test_both_encodings_of_a_python2_batch(tmp_path):
    rows = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    raw = py2_pickle({"data": rows, "labels": [1, 2], "batch_label": "testing batch 1 of 1"})
    as_latin1 = CifarUnpickler(io.BytesIO(raw), encoding="latin1").load()
    as_bytes = CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    assert np.array_equal(as_latin1["data"], rows) and as_latin1["batch_label"] == "testing batch 1 of 1"
    assert np.array_equal(as_bytes[b"data"], rows) and as_bytes[b"labels"] == [1, 2]
    # a batch re-pickled after a read with encoding="bytes" keeps bytes keys; the kit reads it all the same
    written = write_cifar10(tmp_path)
    rewrite_batches(tmp_path, lambda obj: pickle.dumps({k.encode(): v for k, v in obj.items()}))
    assert load_dataset("cifar10", split="test", root=tmp_path, download=False).labels.tolist() == \
        written["test_labels"].tolist()


class _Payload:
    """Unpickles as ``function(argument)``: what a malicious batch file would run."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


def _payloads(marker: Path) -> dict[str, _Payload]:
    return {"os.system": _Payload(os.system, f"touch {marker}"),
            "builtins.exec": _Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
            "builtins.eval": _Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()")}


@pytest.mark.parametrize("name", ["os.system", "builtins.exec", "builtins.eval"])
@pytest.mark.parametrize("where", ["whole file", "inside 'data'"])
def test_a_malicious_batch_runs_nothing_and_is_refused_naming_the_file(tmp_path, name, where):
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[name]
    raw = pickle.dumps(payload if where == "whole file" else {"data": payload, "labels": [0]})
    pickle.loads(raw)  # the payload is real: plain pickle runs it
    assert marker.exists()
    marker.unlink()
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(raw)
    with pytest.raises(DatasetCorrupt) as err:
        load_dataset("cifar10", split="test", root=tmp_path, download=False)
    assert not marker.exists()
    message = str(err.value)
    assert str(path) in message and "refused" in message and len(message.splitlines()) == 1
    assert err.value.path == path


def test_a_batch_holding_any_other_class_is_refused(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0], "when": Path("x")}))
    with pytest.raises(DatasetCorrupt, match="pathlib"):
        load_dataset("cifar10", split="test", root=tmp_path, download=False)


def _add_test_row(root: Path, filename: str) -> Path:
    with open(root / "gtsrb" / "GT-final_test.csv", "a", newline="") as file:
        csv.writer(file, delimiter=";").writerow([filename, 40, 35, 5, 5, 30, 30, 3])
    return root / "gtsrb" / "GT-final_test.csv"


@pytest.mark.parametrize("entry", ["../../outside.ppm", "../Images/../../x/../outside.ppm", "ABSOLUTE"])
def test_a_gtsrb_entry_outside_the_dataset_folder_is_refused(tmp_path, entry):
    from PIL import Image
    write_gtsrb(tmp_path)
    outside = tmp_path / "gtsrb" / "GTSRB" / "outside.ppm"
    Image.new("RGB", (40, 35), (1, 2, 3)).save(outside)
    entry = str(outside) if entry == "ABSOLUTE" else entry
    assert (tmp_path / "gtsrb" / "GTSRB" / "Final_Test" / "Images" / entry).resolve() == outside.resolve()
    listing = _add_test_row(tmp_path, entry)
    with pytest.raises(DatasetCorrupt) as err:
        load_dataset("gtsrb", split="test", root=tmp_path, download=False)
    message = str(err.value)
    assert str(listing) in message and repr(entry) in message and len(message.splitlines()) == 1


def test_gtsrb_entries_in_subfolders_still_load(tmp_path):
    from PIL import Image
    written = write_gtsrb(tmp_path)
    images = tmp_path / "gtsrb" / "GTSRB" / "Final_Test" / "Images"
    (images / "more").mkdir()
    Image.new("RGB", (40, 35), (1, 2, 3)).save(images / "more" / "x.ppm")
    _add_test_row(tmp_path, "more/./x.ppm")
    test = load_dataset("gtsrb", split="test", root=tmp_path, download=False)
    assert test.labels.tolist() == written["test_labels"] + [3]


@pytest.mark.parametrize("name", ["", ".", "a/..", "/etc/passwd", "../x"])
def test_inside_folder_refuses_names_that_leave_or_are_the_folder(tmp_path, name):
    with pytest.raises(DatasetCorrupt, match="points outside"):
        inside_folder("gtsrb", tmp_path / "list.csv", tmp_path / "Images", name)
