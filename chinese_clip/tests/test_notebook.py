import json
from pathlib import Path

FOLDER = Path(__file__).resolve().parents[1]


def test_infer_notebook_runs_top_to_bottom(trained, clean, notebook_runner):
    out, metrics = trained
    nb = notebook_runner(FOLDER / "infer.ipynb", env={"ZERO_NLP_OUTPUT_DIR": str(out), "ZERO_NLP_DATA_DIR": str(clean[0])})
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    # the notebook re-embeds the test split from disk: the recall train.py measured in memory
    assert f"image->text R@1 {metrics['test_i2t_r1']:.4f}" in text and f"text->image R@1 {metrics['test_t2i_r1']:.4f}" in text
    assert f"zero-shot colour accuracy {metrics['test_zs_colour_acc']:.4f}" in text
    assert "白色背景上有两个红色的圆形 ->" in text
    grids = [o for c in nb.cells for o in c.get("outputs", [])
             if o.get("output_type") == "display_data" and "image/png" in o.get("data", {})]
    assert len(grids) == 2
