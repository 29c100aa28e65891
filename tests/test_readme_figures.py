"""The README's quoted outputs are what the commands print today (scenarios/readme_figures.py).

When this fails, a change moved a figure the README quotes: rerun ``python -m scenarios.readme_figures
--write`` and review the diff of README.md.
"""

from __future__ import annotations

import pytest

from scenarios import readme_figures as figures


@pytest.fixture(scope="module")
def generated():
    return figures.generate()


def test_readme_blocks_match_the_commands(generated):
    text = figures.README.read_text(encoding="utf-8")
    stale = figures.stale_blocks(text, generated)
    assert not stale, f"README.md blocks {stale} are stale: run python -m scenarios.readme_figures --write"


def test_generated_blocks_hold_the_commands_results(generated):
    """The blocks are real outputs: the ranked table, the no-fit explanation, the study's frontier."""
    assert "Top 5 plans by throughput" in generated["search"] and "Best plan:" in generated["search"]
    assert "No plan fits:" in generated["no-fit"] and "what would fit:" in generated["no-fit"]
    procurement = generated["procurement"]
    assert "On the frontier" in procurement
    for option in ("H100 x 4096", "H100 x 8192", "H200 x 4096", "B200 x 2048", "B200 x 4096", "GB200 NVL72 x 2016"):
        assert f"| {option} |" in procurement


def test_a_changed_figure_is_stale_but_a_changed_wall_clock_is_not():
    body = "```\n$ plan-search x\n95 layouts; searched in 0.11 s\nB200 x 4096: 96.9 days\n```"
    text = f"intro\n<!-- figures:demo -->\n{body}\n<!-- /figures:demo -->\noutro\n"
    assert figures.stale_blocks(text, {"demo": body.replace("0.11 s", "0.35 s")}) == []
    assert figures.stale_blocks(text, {"demo": body.replace("96.9", "81.6")}) == ["demo"]
    rewritten = figures.replace_block(text, "demo", "new body")
    assert rewritten == "intro\n<!-- figures:demo -->\nnew body\n<!-- /figures:demo -->\noutro\n"
    assert figures.current_block(rewritten, "demo") == "new body"


def test_missing_or_repeated_markers_are_errors():
    with pytest.raises(ValueError, match="exactly one"):
        figures.current_block("no markers here", "demo")
    twice = "<!-- figures:demo -->\na\n<!-- /figures:demo -->\n" * 2
    with pytest.raises(ValueError, match="exactly one"):
        figures.replace_block(twice, "demo", "b")


def test_a_command_with_an_unexpected_exit_status_is_an_error():
    with pytest.raises(ValueError, match="exited 1, not 0"):
        figures.command_output(["h100x8", "llama3-405b", "--seq-len", "8192", "--global-batch", "64"], 0)
