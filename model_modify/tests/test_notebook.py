"""infer.ipynb executes top to bottom (both tools on a small corpus) and shows the expansion's numbers."""
from pathlib import Path

FOLDER = Path(__file__).resolve().parents[1]


def test_notebook_executes(notebook_runner, tmp_path):
    nb = notebook_runner(FOLDER / "infer.ipynb", env={"ZERO_NLP_OUTPUT_DIR": str(tmp_path)})
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "params_ratio" in text and "tokens_per_char_after" in text
    assert (tmp_path / "pruned_bloom/prune_report.json").is_file() and (tmp_path / "expanded_llama/expand_report.json").is_file()
