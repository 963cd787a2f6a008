"""What ``train`` prints: every epoch once (issue 23.12: each epoch appeared as a line, then again in a table at the
end of the stage), then one closing line per stage."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_train import TINY

from probmcl_med.cli.main import main


def test_each_epoch_is_printed_once_and_each_stage_closes_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROBMCL_MED_NO_PROGRESS", "1")
    args = ["train", *(a for s in TINY for a in ("--set", s)), "--output-dir", str(tmp_path / "run")]
    assert main(args) == 0
    err = capsys.readouterr().err
    epochs = re.findall(r"^(contrastive|classifier) epoch (\d+)/(\d+):", err, flags=re.M)
    assert epochs == [("contrastive", "1", "1"), ("classifier", "1", "2"), ("classifier", "2", "2")]
    closing = re.findall(r"^(contrastive|classifier) stage: (\d+) epochs? in [\d.]+ s", err, flags=re.M)
    assert closing == [("contrastive", "1"), ("classifier", "2")]
    assert "best validation mAP" in err.split("classifier stage:", 1)[1].splitlines()[0]
    for value in re.findall(r"^classifier epoch \d+/\d+: loss (\S+)", err, flags=re.M):
        lines = [line for line in err.splitlines() if value in line]
        assert len(lines) == 1, f"the epoch with loss {value} is printed more than once:\n{err}"
