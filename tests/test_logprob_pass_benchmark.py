"""The log-prob pass benchmark's three ways compute the same log-probs; bad widths are refused."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from benchmarks.logprob_pass import WAYS, main, one_way


def test_the_three_ways_give_the_same_logprobs_and_report_peak_and_time(tmp_path: Path, monkeypatch) -> None:
    from rl.algorithms import objective

    monkeypatch.setattr(
        objective, "LOGITS_CHUNK_ELEMENTS", 2 * 4000 * 7
    )  # the chunked way: 7 positions a chunk
    values = []
    for way in range(len(WAYS)):
        args = argparse.Namespace(vocab=4000, hidden=64, layers=1, rows=2, batch_width=48, own_width=40,
                                  repeats=1, device="cpu", way=way, logprobs=tmp_path / f"{way}.pt")  # fmt: skip
        row = one_way(args)
        assert row["chunk_elements"] == (2 * 4000 * 7 if way == 2 else 0)
        assert row["way"] == WAYS[way] and float(row["median_s"]) > 0 and float(row["added_peak_gib"]) >= 0
        values.append(torch.load(args.logprobs))
    assert values[0].shape == (2, 40)
    for other in values[1:]:
        torch.testing.assert_close(other, values[0])


def test_a_micro_batch_wider_than_its_batch_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--batch-width", "16", "--own-width", "32"])
    assert (
        exit_info.value.code == 2 and "--own-width must be from 1 to --batch-width" in capsys.readouterr().err
    )
