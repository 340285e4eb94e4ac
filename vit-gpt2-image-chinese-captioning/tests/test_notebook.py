from pathlib import Path

FOLDER = Path(__file__).resolve().parents[1]


def test_infer_notebook_runs_top_to_bottom(trained, notebook_runner):
    out, metrics = trained
    nb = notebook_runner(FOLDER / "infer.ipynb", env={"ZERO_NLP_OUTPUT_DIR": str(out)})
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "greedy captions equal to test_predictions.jsonl: 16/16" in text  # reloaded from disk, same captions
    assert f"test: BLEU-4 {metrics['test_bleu4']:.2f}" in text and "beam4=" in text and "sample=" in text
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb.cells for o in c.get("outputs", []))
