"""The README's "Python API" section runs as written: its python blocks are executed in order,
in one namespace, inside a temporary folder (SmolLM2 and a small generated set)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from tiny_models import few_threads

README = Path(__file__).resolve().parents[1] / "README.md"


def python_api_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_section_has_the_promised_examples():
    code = "\n".join(python_api_blocks())
    for needed in ("qkscore.Judge(", "part.pairs", "qkscore.load_run(", ".to_pandas()"):
        assert needed in code


def test_readme_python_api_runs(smollm2, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    with warnings.catch_warnings(), few_threads():
        warnings.simplefilter("ignore")  # small calibration split: warned about, on purpose
        for number, block in enumerate(python_api_blocks(), 1):
            exec(compile(block, f"README.md Python API block {number}", "exec"), namespace)
    assert namespace["scores"].shape == (1, smollm2.n_layers, smollm2.n_heads, 2)
    assert namespace["verdict"].verdict in ("valid", "invalid")
    p_valid = namespace["p_valid"]
    assert p_valid.shape == (2,) and ((p_valid > 0) & (p_valid < 1)).all()
    methods = namespace["methods"]
    assert methods.loc[namespace["report"]["reader"], "chosen"]
    assert len(namespace["per_item"]) == namespace["report"]["n_eval"] == 16
    assert np.isfinite(namespace["results"].heads["separation"]).all()
    assert (tmp_path / "runs" / "api" / "predictions.jsonl").exists()
