"""Solvers at the limit: precision on demand, and no float64 copies of parameter-sized matrices
(peak memory measured in a fresh process with the kernel's high-water mark)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import torch
from test_sharpness_hessian import batches_of, dense_hessian, small_vit

from vitprobe.sharpness import hessian_spectrum


def test_lanczos_at_tol_1e7_on_a_float32_model_matches_the_float64_reference():
    torch.manual_seed(0)
    model, data = small_vit(), batches_of((5, 5, 3))
    hessian = dense_hessian(model, data)
    values, vectors = np.linalg.eigh(hessian)
    result = hessian_spectrum(model, data, k=2, tol=1e-7, max_iter=300)
    assert result.converged and next(model.parameters()).dtype == torch.float32
    np.testing.assert_allclose(result.eigenvalues, values[::-1][:2], rtol=1e-6)
    y = torch.cat([t.reshape(-1) for t in result.eigenvectors[0]]).double().numpy()
    assert np.linalg.norm(hessian @ y - result.eigenvalues[0] * y) / abs(result.eigenvalues[0]) < 1e-5


PEAK = textwrap.dedent('''
    import json, sys
    import torch
    from vitprobe.sharpness.density import quadrature
    from vitprobe.sharpness.trace import hutch_plus_plus

    class Diagonal:
        """A synthetic float32 operator: H = diag(d)."""
        def __init__(self, size):
            self.shape, self.dtype, self.device = (size, size), torch.float32, torch.device("cpu")
            self.d = torch.linspace(-1.0, 100.0, size)
        def __matmul__(self, v):
            return self.d * v

    def high_water_mark():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024

    def resident():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024

    size, what = int(sys.argv[1]), sys.argv[2]
    op = Diagonal(size)
    generator = torch.Generator().manual_seed(0)
    open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark
    before = resident()
    if what == "hutch++":
        hutch_plus_plus(op, 30, generator)
    else:
        quadrature(op, 30, generator, True)
    print(json.dumps({"peak": high_water_mark() - before}))
''')


def _peak(tmp_path, size: int, what: str) -> int:
    script = tmp_path / "peak.py"
    script.write_text(PEAK)
    out = subprocess.run([sys.executable, str(script), str(size), what], capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak"]


def test_hutch_plus_plus_and_slq_keep_to_the_parameters_dtype(tmp_path):
    """n = 2M float32 parameters, 30 products. Hutch++: a 10-column sketch and its Q in float32
    are 160 MB; a float64 QR (the old code) added 320 MB more. SLQ: a 30-vector float32 basis
    (allocated 32 rows at a time: 256 MB) and a few vectors."""
    size, vector = 2_000_000, 2_000_000 * 4
    assert _peak(tmp_path, size, "hutch++") < 2 * 10 * vector + 12 * vector  # 240 MB
    assert _peak(tmp_path, size, "slq") < 32 * vector + 12 * vector  # 352 MB


def test_partial_reorthogonalisation_keeps_the_basis_semi_orthogonal():
    """Simon 1984: 120 float32 Lanczos steps on a known spectrum (a few large, well separated
    eigenvalues above a dense bulk, where plain Lanczos loses orthogonality and repeats them):
    the basis stays orthogonal to sqrt(eps), the top eigenvalues come out once each and exact,
    and only some of the steps were reorthogonalised."""
    from vitprobe.sharpness.lanczos import Lanczos

    generator = torch.Generator().manual_seed(0)
    top = torch.tensor([100.0, 90.0, 80.0])
    diagonal = torch.cat([top, torch.rand(3997, generator=generator)])
    run = Lanczos(lambda v: diagonal * v, torch.randn(4000, generator=generator), generator=generator)
    for _ in range(120):
        run.step()
    basis = torch.cat(list(run.basis._filled())).double()
    gram = basis @ basis.T - torch.eye(len(basis), dtype=torch.float64)
    assert gram.abs().max() < 10 * np.sqrt(np.finfo(np.float32).eps)
    theta, _ = run.ritz()
    for value in top.tolist():
        near = np.abs(theta - value) < 1e-2
        assert near.sum() == 1 and abs(theta[near][0] - value) / value < 1e-5
    assert 0 < run.reorthogonalised < 120
    plain = Lanczos(lambda v: diagonal * v, torch.randn(4000, generator=torch.Generator().manual_seed(0)),
                    reorthogonalise=False)
    for _ in range(120):
        plain.step()
    ghosts, _ = plain.ritz()
    assert (np.abs(ghosts - 100.0) < 1e-2).sum() > 1  # the control: without it, 100 repeats
