"""Under real ``torchrun`` (2 processes, gloo) every rank gets the single-process answer."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import numpy as np
from torchrun import two_ranks

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from timm.models.vision_transformer import VisionTransformer
    from vitprobe import distributed
    from vitprobe.sharpness import hessian_spectrum, hessian_trace, sam_sharpness

    def case():
        torch.manual_seed(0)
        model = VisionTransformer(img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2,
                                  mlp_ratio=1.0, num_classes=3).eval()
        generator = torch.Generator().manual_seed(1)
        data = [(torch.randn(n, 3, 8, 8, generator=generator), torch.randint(0, 3, (n,), generator=generator))
                for n in (5, 3, 4, 2, 6)]
        return model, data

    def measure():
        model, data = case()
        spectrum = hessian_spectrum(model, data, k=2, tol=1e-4)
        trace = hessian_trace(model, data, num_probes=9)
        sam = sam_sharpness(model, data, rho=[0.01, 0.05])
        micro = sam_sharpness(model, data, rho=0.05, m=4)
        return {"eigenvalues": spectrum.eigenvalues.tolist(), "hvps": spectrum.total_hvps,
                "loss": spectrum.loss, "trace": trace.trace, "sam": sam.sharpness.tolist(),
                "micro": micro.sharpness.tolist(), "world": distributed.world_size()}

    if __name__ == "__main__":
        torch.set_num_threads(1)
        distributed.init_from_env(torch.device("cpu"))
        with open(f"{sys.argv[1]}.{distributed.rank()}.json", "w") as handle:
            json.dump(measure(), handle)
''')


def test_two_torchrun_processes_equal_one_process(tmp_path: Path):
    script = tmp_path / "sharded_sharpness.py"
    script.write_text(SCRIPT)
    two_ranks(script, str(tmp_path / "sharded"), timeout=240)
    ranks = [json.loads((tmp_path / f"sharded.{r}.json").read_text()) for r in (0, 1)]
    spec = importlib.util.spec_from_file_location("sharded_sharpness", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    single = module.measure()  # this process: no process group
    assert single["world"] == 1 and ranks[0]["world"] == ranks[1]["world"] == 2
    assert ranks[0] == ranks[1]  # every rank holds the same numbers
    for key in ("eigenvalues", "loss", "trace", "sam", "micro"):
        np.testing.assert_allclose(ranks[0][key], single[key], rtol=2e-5, err_msg=key)
    assert ranks[0]["hvps"] == single["hvps"]
