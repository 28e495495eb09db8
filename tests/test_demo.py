"""The quick-start demo runs end to end (fast setting) on the learnable world and writes a complete report."""

import re

import pytest
from typer.testing import CliRunner

from vprefer.cli import app

pytestmark = pytest.mark.slow  # the whole demo


def test_demo_fast_writes_the_report_with_every_section(tmp_path):
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--fast"])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "demo" / "report.html").read_text()
    for section in ("What this is", "Annotation", "Position bias", "Reward model accuracy", "Judge vs truth",
                    "Fine-tuning", "Before / after", "Prompt optimisation (GRPO)", "Recaptioning"):
        assert f"<h2>{section}</h2>" in html, section
    assert "Stand-ins were used" in html and "stand-in world" in html and "vllm-qwen2-vl" in html
    cap = html[html.index("<h2>Recaptioning</h2>"):]  # a captioned set: six images, each with both captions
    assert cap.count("<tr>") == 1 + 6 and "shape on a" in cap
    ft = html[html.index("<h2>Fine-tuning</h2>"):html.index("<h2>Before / after</h2>")]
    for loop in ("ReFL", "DPO", "GRPO rewriter"):  # each loop's truth on held-out prompts next to its reward
        row = ft[ft.index(f"<td>{loop}</td>"):]
        assert row.count("→") >= 5, loop  # colour, shape, background, all right, VP-Score: before → after
        assert f"<h3>{loop}</h3>" in html
    assert "truth win rate" in ft and "against the pretrained rewriter it started from" in html
    for src in re.findall(r"<img src='([^']+)'", html):
        f = tmp_path / "demo" / src
        assert f.exists() and f.stat().st_size > 1000 and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
    assert len(re.findall(r"<img src=", html)) >= 8
    assert (tmp_path / "demo" / "refl" / "pytorch_lora_weights.safetensors").exists()
    assert (tmp_path / "demo" / "vp-score" / "heads.safetensors").exists()
    assert (tmp_path / "demo" / "grpo" / "adapter_model.safetensors").exists()
    assert "GRPO rewriter: all attributes right on held-out prompts" in res.output
