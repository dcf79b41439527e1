"""Opening a file never runs code from it: checkpoints, backbones, CIFAR batches and store
arrays whose pickle would run code (a __reduce__ that creates a marker file) are refused in one
line, and the marker never appears. Checkpoints carry a SHA-256 of their content."""

import hashlib
import io
import pickle

import numpy as np
import pytest
import torch

from ldfa import cli
from ldfa.errors import ConfigError
from ldfa.figures.store import Store
from ldfa.sim import data as datasets
from ldfa.sim import train as training
from ldfa.sim.train import TrainConfig, train

SMALL = dict(model="mlp", hidden=(16,), data="linear-teacher", steps=12, batch_size=32, log_every=4,
             optimizer="adam", lr=1e-2, train_subset=256, test_subset=64)


class Payload:
    """Unpickling this object calls open(marker, "w"): code from the file would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_the_payload_does_run_code_with_an_unrestricted_loader(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker))).close()  # the control: plain pickle runs it
    assert marker.exists()
    marker.unlink()
    buf = io.BytesIO()
    torch.save({"model": Payload(marker)}, buf)
    torch.load(io.BytesIO(buf.getvalue()), weights_only=False)["model"].close()
    assert marker.exists()


def _checkpoint_with_valid_checksum(path, state):
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    path.write_bytes(training.CHECKPOINT_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"
                     + payload)


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    cfg = TrainConfig(**SMALL, rule="fa")
    marker, ckpt = tmp_path / "ran", tmp_path / "run.pt"
    train(cfg, progress=False, checkpoint=ckpt, checkpoint_every=4)
    state = training.read_checkpoint(ckpt)
    state["history"] = [Payload(marker)]  # a correct checksum, so only the content is at fault
    _checkpoint_with_valid_checksum(ckpt, state)
    with pytest.raises(ConfigError, match="is refused: .*could run code") as err:
        train(cfg, progress=False, checkpoint=ckpt, checkpoint_every=4)
    assert "\n" not in str(err.value) and str(ckpt) in str(err.value)
    assert not marker.exists()
    buf = io.BytesIO()  # a plain torch.save without the header is refused before unpickling
    torch.save({"model": Payload(marker)}, buf)
    ckpt.write_bytes(buf.getvalue())
    with pytest.raises(ConfigError, match="not an ldfa checkpoint"):
        training.read_checkpoint(ckpt)
    assert not marker.exists()


def test_checkpoint_refused_through_the_cli(tmp_path, capsys):
    marker, ckpt = tmp_path / "ran", tmp_path / "evil.pt"
    _checkpoint_with_valid_checksum(ckpt, {"model": Payload(marker)})
    code = cli.main(["train", "--data", "linear-teacher", "--hidden", "8", "--steps", "3", "--quiet",
                     "--out", str(tmp_path / "out"), "--checkpoint", str(ckpt)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(ckpt) in err[0] and "refused" in err[0]
    assert not marker.exists()
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("flip", [0, 5, 30, 81, 200, -1, -100, "middle"])
def test_checkpoint_with_a_flipped_byte_is_refused(tmp_path, flip):
    cfg = TrainConfig(**SMALL, rule="dfa")
    ckpt = tmp_path / "run.pt"
    train(cfg, progress=False, checkpoint=ckpt, checkpoint_every=4)
    raw = bytearray(ckpt.read_bytes())
    i = len(raw) // 2 if flip == "middle" else flip
    raw[i] ^= 0x01
    ckpt.write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match=f"checkpoint {ckpt}") as err:
        train(cfg, progress=False, checkpoint=ckpt, checkpoint_every=4)
    assert "\n" not in str(err.value)


def test_backbone_that_would_run_code_is_refused(tmp_path, capsys):
    marker, path = tmp_path / "ran", tmp_path / "vit.pt"
    torch.save({"head.weight": Payload(marker)}, path)
    with pytest.raises(ConfigError, match="is refused"):
        training.load_state(path)
    code = cli.main(["train", "--model", "vit", "--data", "cifar10", "--data-root", str(tmp_path),
                     "--transfer", "toast", "--backbone", str(path), "--quiet",
                     "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(path) in err[0] and "refused" in err[0]
    assert not marker.exists()


def test_backbone_with_non_tensor_values_is_refused(tmp_path):
    path = tmp_path / "b.pt"
    torch.save({"head.weight": [1, 2, 3]}, path)
    with pytest.raises(ConfigError, match="not a state dict of tensors"):
        training.load_state(path)


def test_cifar_batch_that_would_run_code_is_refused(tmp_path):
    marker, folder = tmp_path / "ran", tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {b"data": Payload(marker), b"labels": [0, 1]}
    for name in ["test_batch", *(f"data_batch_{i}" for i in range(1, 6))]:
        (folder / name).write_bytes(pickle.dumps(batch))
    with pytest.raises(datasets.DatasetError, match=r"global (io|builtins)\.open is not allowed") as err:
        datasets.cifar(tmp_path, "test")
    assert str(folder / "test_batch") in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_cifar_batch_with_real_arrays_still_loads(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.arange(4 * 3072, dtype=np.uint8).reshape(4, 3072)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [0, 3, 9, 1]}, protocol=2))
    images, labels = datasets.cifar(tmp_path, "test")
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == [0, 3, 9, 1]
    assert torch.equal(images.reshape(4, -1), torch.from_numpy(data))


def test_store_array_that_would_run_code_is_not_used(tmp_path):
    marker = tmp_path / "ran"
    store = Store(tmp_path / "store")
    key = store.key("demo", {"x": 1})
    store.put(key, "demo", {"x": 1}, {"ok": True}, arrays={"a": np.array([Payload(marker)], dtype=object)})
    fresh = Store(tmp_path / "store")
    assert fresh.get(key) is None and fresh.corrupt  # treated as absent: recomputed, never unpickled
    assert not marker.exists()


def test_garbage_is_corrupt_not_code_and_a_checkpoint_is_no_backbone(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="is corrupt or not a torch file"):
        training.load_state(tmp_path / "bad.pt")
    ckpt = tmp_path / "run.pt"
    train(TrainConfig(**SMALL, rule="bp"), progress=False, checkpoint=ckpt, checkpoint_every=4)
    with pytest.raises(ConfigError, match="is a training checkpoint"):
        training.load_state(ckpt)
