"""`vitprobe demo`: its statements are read off the CSVs, and missing analyses are said so."""

from __future__ import annotations

from pathlib import Path

from vitprobe.studies.demo import findings
from vitprobe.studies.runner import Outcome

SHARPNESS = """\
model,metric,value,k
demo:vit,eigenvalue,40.0,1
demo:vit,eigenvalue,30.0,2
demo:resnet,eigenvalue,10.0,1
demo:vit-sam,eigenvalue,20.0,1
demo:resnet-sam,eigenvalue,12.5,1
"""
EVALUATE = """\
model,metric,value,ci_low,ci_high
demo:vit,top1,0.8,0.77,0.83
demo:vit,loss,0.5,0.45,0.55
"""
ATTENTION = """\
model,metric,source,layer,head,value
demo:vit,rollout_top10_mass,cls,,,0.42
demo:vit,rollout_map_entropy,cls,,,0.8
demo:vit,mean_attention_distance,,0,0,4.0
demo:vit,mean_attention_distance,,0,1,6.0
demo:vit,mean_attention_distance,,1,0,10.0
demo:vit,mean_attention_distance,,1,1,12.0
"""
TRACK = """\
model,metric,step,value,hvps,eos_threshold,warm_start
demo:vit,lambda_1,50,80.0,9,2000.0,True
demo:vit,lambda_1,100,120.0,4,1000.0,True
demo:resnet,lambda_1,50,20.0,9,2000.0,False
demo:resnet,lambda_1,100,30.0,5,1000.0,False
demo:vit-sam,lambda_1,50,70.0,9,2000.0,True
demo:vit-sam,lambda_1,100,60.0,3,1000.0,True
"""


def test_findings_state_the_measured_comparisons(tmp_path: Path) -> None:
    (tmp_path / "track.csv").write_text(TRACK)
    (tmp_path / "sharpness.csv").write_text(SHARPNESS)
    (tmp_path / "evaluate.csv").write_text(EVALUATE)
    (tmp_path / "attention.csv").write_text(ATTENTION)
    outcomes = [Outcome("sharpness", "ran"), Outcome("receptive-field", "failed", 1.0, 1)]
    text = "\n".join(findings(tmp_path, outcomes))
    assert "missing analyses: receptive-field" in text
    assert "demo:vit top-1 0.800 [0.770, 0.830]" in text
    assert "the demo ViT's leading eigenvalue is above the ResNet's (40 vs 10, ratio 4.00)" in text
    assert "SAM lowers it for vit: 40 -> 20" in text
    assert "SAM does not lower it for resnet: 10 -> 12.5" in text
    assert "demo:vit: rollout_top10_mass = 0.420" in text
    assert "mean attention distance by layer (px, mean over heads): 5.0, 11.0" in text
    assert "receptive fields: not measured (no receptive-field.csv)" in text
    # the literature beside the measurement, agreement as measured
    assert ("ViTs sit in sharper minima than ResNets (Chen, Hsieh & Gong 2021: lambda_max 738.8 for "
            "ViT-B/16 vs 179.8 for ResNet-152): this run agrees (lambda_1 40 vs 10)") in text
    assert "SAM finds flatter minima (vit) (Foret et al. 2020; Chen, Hsieh & Gong 2021): this run agrees" in text
    assert "SAM finds flatter minima (resnet) (Foret et al. 2020; Chen, Hsieh & Gong 2021): this run does NOT agree" in text
    assert "attention distance grows with depth (demo:vit) (Dosovitskiy et al. 2020, Fig. 7): this run agrees" in text
    assert "demo:vit: 80 -> 120 -> 120 over 100 steps (2/lr 1000); 13 HVPs in 2 warm-started checks" in text
    assert "demo:resnet: 20 -> 30 -> 30 over 100 steps (2/lr 1000); 14 HVPs in 2 cold-started checks" in text
    assert ("ViTs are sharper than ResNets, tracked while training (Chen, Hsieh & Gong 2021): this run agrees "
            "(lambda_1 at the last tracked step 120 vs 30)") in text
    assert ("SAM trains to a flatter point (vit, tracked) (Foret et al. 2020): this run agrees (lambda_1 at the "
            "last tracked step 120 (AdamW) vs 60 (SAM))") in text
    assert "SAM trains to a flatter point (resnet, tracked) (Foret et al. 2020): this run not measured" in text


def test_findings_with_nothing_measured(tmp_path: Path) -> None:
    text = "\n".join(findings(tmp_path, []))
    for name in ("accuracy", "sharpness", "sharpness while training", "attention", "receptive fields"):
        assert f"{name}: not measured" in text


def test_the_shipped_demo_runs_every_analysis(tmp_path, capsys) -> None:
    """The real demo study, small: every analysis of the shipped recipe runs on the real zoo (a
    recipe setting that a command refuses, such as an attention method on a CNN, fails here);
    its training tracker on 12 steps instead of 600."""
    import json

    from vitprobe.cli import main
    from vitprobe.studies.demo import DEMO_RECIPE

    shipped = DEMO_RECIPE.read_text()
    assert "steps = 300\nevery = 25\n" in shipped
    recipe = tmp_path / "demo.toml"
    recipe.write_text(shipped.replace("steps = 300\nevery = 25\n", "steps = 12\nevery = 6\n"))
    out = tmp_path / "demo"
    assert main(["demo", "--recipe", str(recipe), "--out", str(out), "--num-images", "8", "--quiet"]) == 0, \
        capsys.readouterr().err
    for analysis in ("evaluate", "throughput", "sharpness", "track", "attention", "receptive-field", "landscape",
                     "similarity", "frequency", "corruptions", "map-quality"):
        assert json.loads((out / f"{analysis}.json").read_text())["status"] == "complete", analysis
    said = capsys.readouterr().out
    assert "ViT" in said and "Park & Kim 2022" in said and "SAM trains to a flatter point (vit, tracked)" in said


def test_the_sharpness_claim_carries_the_subsets_interval(tmp_path: Path) -> None:
    """With --subsets the claim states both intervals and whether they overlap; without, nothing."""
    rows = ("model,metric,value,k,ci_low,ci_high\n"
            "demo:vit,eigenvalue,40.0,1,,\ndemo:resnet,eigenvalue,10.0,1,,\n"
            "demo:vit,eigenvalue_mean,42.0,1,{vit_low},{vit_high}\ndemo:resnet,eigenvalue_mean,11.0,1,5.0,17.0\n")
    for (low, high), verdict in [((30.0, 54.0), "do not overlap"), ((-5.0, 89.0), "overlap, so this run cannot")]:
        (tmp_path / "sharpness.csv").write_text(rows.format(vit_low=low, vit_high=high))
        text = "\n".join(findings(tmp_path, []))
        assert f"over the subsets 42 [{low:g}, {high:g}] vs 11 [5, 17]: the 95% intervals {verdict}" in text
