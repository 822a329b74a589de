"""The run folder's writer thread: images written in order, nothing certified lost on an error,
a write error raised in the caller (certframe.run.writer.RunWriter)."""
from __future__ import annotations

import numpy as np
import pytest

from certframe.run.folder import RunFolder

TAUS = (0.6, 0.75)


def rows(i: int) -> list[dict]:
    return [{"image_id": f"img-{i}", "index": i, "segmenter": "s", "denoiser": "none", "certifier": "segcertify",
             "sigma": 0.25, "tau": t, "radius": 0.1 * t, "certified_dice": 0.5 + i / 100, "clean_dice": 0.9,
             "abstain_rate": 0.01 * i, "seconds": 1.0} for t in TAUS]


def certificate(i: int) -> dict:
    labels = np.full((len(TAUS), 4, 5), i % 3 - 1)
    return {"labels": labels, "taus": list(TAUS), "mask": np.eye(4, 5, dtype=np.int64),
            "clean": np.ones((4, 5), dtype=np.int64), "image": np.full((1, 4, 5), i / 10, dtype=np.float32)}


def new_run(path) -> RunFolder:
    run = RunFolder(path)
    run.start({"config": {"taus": list(TAUS)}, "dataset": {"sha256": "x"}})
    return run


@pytest.mark.parametrize("threaded", [True, False], ids=["thread", "in-loop"])
def test_writer_writes_every_image_in_order(tmp_path, threaded):
    run = new_run(tmp_path / "run")
    with run.writer(depth=2, threaded=threaded) as writer:
        for i in range(12):
            writer.submit(i, rows(i), certificate(i))
    df = run.results(require_complete=False)
    assert df["index"].tolist() == [i for i in range(12) for _ in TAUS]
    for i in range(12):
        saved = run.certificate(i)
        np.testing.assert_array_equal(saved["labels"], certificate(i)["labels"])
    # the same bytes as appending image by image
    plain = new_run(tmp_path / "plain")
    for i in range(12):
        plain.save_certificate(i, **certificate(i))
        plain.append(rows(i))
    assert run.results_path.read_bytes() == plain.results_path.read_bytes()


def test_leaving_on_an_error_writes_what_was_certified(tmp_path):
    run = new_run(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        with run.writer() as writer:
            for i in range(6):
                writer.submit(i, rows(i), certificate(i))
            raise KeyboardInterrupt
    assert run.repair(len(TAUS)) == {i: f"img-{i}" for i in range(6)}
    assert all(run.certificate_path(i).exists() for i in range(6))


@pytest.mark.parametrize("threaded", [True, False], ids=["thread", "in-loop"])
def test_a_write_error_reaches_the_caller_and_nothing_after_it_is_written(tmp_path, monkeypatch, threaded):
    run = new_run(tmp_path / "run")
    save = RunFolder.save_certificate

    def failing(self, index, **kwargs):
        if index == 2:
            raise OSError(28, "No space left on device")
        return save(self, index, **kwargs)

    monkeypatch.setattr(RunFolder, "save_certificate", failing)
    with pytest.raises(OSError, match="No space left on device"):
        with run.writer(threaded=threaded) as writer:
            for i in range(6):
                writer.submit(i, rows(i), certificate(i))
    done = run.repair(len(TAUS)) if run.results_path.exists() else {}
    # a row is written only after its certificate: image 2 and later are missing (images 0 and 1
    # too when the thread took them in one group with image 2)
    assert set(done) <= {0, 1} and (threaded or set(done) == {0, 1})
    assert not any(run.certificate_path(i).exists() for i in range(2, 6))


def test_certificate_files_read_back_as_numpy_writes_them(tmp_path):
    """The run folder's npz (zlib level 1, faster) holds the members, dtypes and values numpy's would."""
    import io

    from certframe.run.folder import savez_compressed

    arrays = {"labels": certificate(4)["labels"].astype(np.int16), "taus": np.array(TAUS),
              "image": np.arange(60, dtype=np.uint8).reshape(3, 4, 5)}
    ours, numpys = io.BytesIO(), io.BytesIO()
    savez_compressed(ours, **arrays)
    np.savez_compressed(numpys, **arrays)
    a, b = np.load(io.BytesIO(ours.getvalue())), np.load(io.BytesIO(numpys.getvalue()))
    assert a.files == b.files == list(arrays)
    for key in arrays:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key])
