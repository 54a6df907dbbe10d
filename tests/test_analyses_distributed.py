"""Under real ``torchrun`` (2 processes, gloo) the per-image analyses split their batches between
the ranks and every rank gets the single-process numbers; each rank's model sees only its share
of the images (the control that the work is split), and an error on one rank ends both."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import numpy as np
from torchrun import two_ranks

SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    import torch
    import vitprobe
    from vitprobe import distributed

    def models():
        vit, resnet = vitprobe.load_model("demo:vit"), vitprobe.load_model("demo:resnet")
        data = {m.family: vitprobe.load_data("shapes", m, num_images=14, batch_size=4) for m in (vit, resnet)}
        return vit, resnet, data

    def counting(model):
        """How many images the model's forward has seen in this process."""
        seen = [0]
        model.module.register_forward_pre_hook(lambda module, args: seen.__setitem__(0, seen[0] + len(args[0])))
        return seen

    def measure():
        vit, resnet, data = models()
        seen = counting(vit)
        rollout = vitprobe.attention_rollout(vit, data["vit"])
        results = {
            "evaluate": vitprobe.evaluate(vit, data["vit"]).losses,
            "attention_maps": vitprobe.attention_maps(vit, data["vit"], layers=[0, 3]).weights,
            "rollout": rollout.maps,
            "gradient_rollout": vitprobe.gradient_rollout(vit, data["vit"]).maps,
            "distance": vitprobe.mean_attention_distance(vit, data["vit"]).raw,
            "gradcam": vitprobe.attributions(resnet, data["cnn"], method="gradcam").maps,
            "saliency": vitprobe.attributions(vit, data["vit"], method="saliency").maps,
            "map_quality": vitprobe.map_quality(vit, data["vit"], maps=rollout, steps=4).deletion,
            "similarity": vitprobe.layer_similarity(vit, data["vit"]).cka,
            "frequency": np.concatenate(vitprobe.feature_frequency(resnet, data["cnn"]).amplitudes),
            "corruptions": vitprobe.corruption_accuracy(resnet, data["cnn"], corruptions=["gaussian_noise"],
                                                        severities=[3]).accuracy,
            "erf": vitprobe.effective_receptive_field(resnet, data["cnn"]).raw,
        }
        return {**{k: np.asarray(v, dtype=np.float64).tolist() for k, v in results.items()},
                "seen": seen[0], "world": distributed.world_size()}

    def failing():
        """Only rank 1 takes batch 1, and only there does the work fail."""
        def work(batch, index, offset):
            if index == 1:
                raise vitprobe.UserError("batch 1 is unreadable")
            return index
        try:
            distributed.map_batches(work, [(torch.zeros(2),)] * 4)
        except vitprobe.UserError as error:
            return {"error": str(error)}
        return {"error": None}

    if __name__ == "__main__":
        torch.set_num_threads(1)
        distributed.init_from_env(torch.device("cpu"))
        result = measure() if sys.argv[2] == "measure" else failing()
        with open(f"{sys.argv[1]}.{distributed.rank()}.json", "w") as handle:
            json.dump(result, handle)
''')


def launch(tmp_path: Path, mode: str) -> list[dict]:
    script = tmp_path / "sharded_analyses.py"
    script.write_text(SCRIPT)
    two_ranks(script, str(tmp_path / mode), mode)
    return [json.loads((tmp_path / f"{mode}.{r}.json").read_text()) for r in (0, 1)]


def single_process(tmp_path: Path):
    spec = importlib.util.spec_from_file_location("sharded_analyses", tmp_path / "sharded_analyses.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_torchrun_processes_split_the_images_and_equal_one_process(tmp_path: Path):
    ranks = launch(tmp_path, "measure")
    single = single_process(tmp_path).measure()
    assert single["world"] == 1 and ranks[0]["world"] == ranks[1]["world"] == 2
    for key in single:
        if key in ("seen", "world"):
            continue
        assert ranks[0][key] == ranks[1][key], key  # every rank holds the same numbers
        np.testing.assert_allclose(ranks[0][key], single[key], rtol=1e-6, atol=1e-9, err_msg=key)
    # the control: each rank's ViT saw part of the images, and the two parts make the whole
    assert 0 < ranks[0]["seen"] < single["seen"] and 0 < ranks[1]["seen"] < single["seen"]
    assert ranks[0]["seen"] + ranks[1]["seen"] == single["seen"]


def test_an_error_on_one_rank_ends_every_rank(tmp_path: Path):
    ranks = launch(tmp_path, "failing")
    assert ranks[0]["error"] == ranks[1]["error"] == "batch 1 is unreadable"
