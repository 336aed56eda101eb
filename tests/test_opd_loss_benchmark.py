"""The OPD loss benchmark runs on CPU (small shapes) and its implementations agree."""

from __future__ import annotations

import json

import pytest

from benchmarks.opd_loss import main


def test_cpu_benchmark_runs_and_fused_agrees_with_naive(tmp_path):
    out = tmp_path / "opd.json"
    result = main(["--tokens", "96", "--hidden", "16", "--vocab", "700", "--impls", "fused,naive,fused:128",
                   "--repeats", "1", "--out", str(out)])  # fmt: skip
    assert json.loads(out.read_text()) == result
    rows = {r["impl"]: r for r in result["results"]}
    assert set(rows) == {"fused", "naive", "fused:128"}
    for row in rows.values():
        assert row["ms"] > 0 and max(row["rel_err_vs_fused"]) < 1e-4


def test_bad_implementation_name_is_an_error():
    with pytest.raises(SystemExit):
        main(["--impls", "fused,fast"])
    with pytest.raises(SystemExit):
        main(["--impls", "liger", "--device", "cpu"])
