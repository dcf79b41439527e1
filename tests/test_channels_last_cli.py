"""`ldfa train --channels-last`: the conv net trains in channels-last layout with the same
numbers as in plain layout, and the summary records the layout."""

import json

import pytest
from conftest import needs_fashion_mnist

from ldfa import cli


@needs_fashion_mnist
@pytest.mark.parametrize("rule", [["--rule", "ld", "--rank", "2", "--clip-rank"], ["--rule", "fa"]])
def test_train_channels_last_matches_plain_layout(tmp_path, rule):
    runs = {}
    for name, flag in (("plain", []), ("cl", ["--channels-last"])):
        code = cli.main(["train", "--model", "cnn", *rule, "--steps", "4", "--batch-size", "16",
                         "--optimizer", "sgd", "--lr", "0.05", "--log-every", "1", "--quiet",
                         "--out", str(tmp_path), "--name", name, *flag])
        assert code == 0
        losses = [json.loads(line)["loss"] for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        summary = json.loads((tmp_path / f"{name}.summary.json").read_text())
        runs[name] = (losses, summary)
    assert runs["cl"][1]["config"]["channels_last"] is True
    assert runs["plain"][1]["config"]["channels_last"] is False
    assert len(runs["cl"][0]) == 4
    assert runs["cl"][0] == pytest.approx(runs["plain"][0], rel=1e-4)
    assert runs["cl"][1]["test_loss"] == pytest.approx(runs["plain"][1]["test_loss"], rel=1e-4)
