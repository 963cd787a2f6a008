"""The GPU paths, each against its CPU (or float64, or single-process) counterpart: AMP training steps (bf16, and fp16
with the GradScaler), torch.compile of an encoder, a one-process NCCL group and the gathered contrastive loss,
predict and Grad-CAM, the fused Triton correlation kernel.

Marked ``cuda`` and skipped without a CUDA device (CI has none); ``make gpu-check`` runs them on a GPU machine.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from probmcl_med.config import load_config
from probmcl_med.core.classification import AsymmetricLoss
from probmcl_med.core.losses import ProbContrastiveLoss
from probmcl_med.core.mdn import MixtureDensityNetwork
from probmcl_med.core.mixture import GaussianMixture
from probmcl_med.core.similarities import correlation_similarity, log_correlation_similarity, resolve_backend
from probmcl_med.engine.amp import AmpSettings, amp_settings, backward, optimizer_step
from probmcl_med.engine.contrastive import ContrastiveModel, build_objective, stack_views
from probmcl_med.models.encoders import get_encoder
from probmcl_med.models.heads import Classifier, LinearHead

sys.path.insert(0, str(Path(__file__).parent))
from mixture_reference import dense_correlation, extreme_mixture

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DEVICE = "cuda"
CLASSES = 5


@pytest.fixture(autouse=True)
def exact_matmul() -> Iterator[None]:
    """Comparisons with the CPU in full float32: no TF32 in matmuls and convolutions during these tests."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def random_batch(images: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, 2, 3, size, size)`` views and ``(images, CLASSES)`` labels (every image has a label), on the GPU."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(images, 2, 3, size, size, generator=g)
    y = (torch.rand(images, CLASSES, generator=g) < 0.4).float()
    y[torch.arange(images), torch.randint(0, CLASSES, (images,), generator=g)] = 1.0
    return x.to(DEVICE), y.to(DEVICE)


def amp_cases() -> list[object]:
    cases: list[object] = [pytest.param("fp16", id="fp16+GradScaler")]
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cases.append(pytest.param("bf16", id="bf16", marks=pytest.mark.skipif(not bf16, reason="no bf16 on this GPU")))
    return cases


def settings_for(kind: str) -> AmpSettings:
    if kind == "bf16":
        settings = amp_settings(torch.device(DEVICE), True)
        assert settings.dtype == torch.bfloat16  # the project's choice on a bf16 GPU
        return settings
    return AmpSettings("cuda", torch.float16, torch.amp.GradScaler("cuda"))


# ------------------------------------------------------------------------------------ AMP
@pytest.mark.parametrize("kind", amp_cases())
def test_amp_stage1_and_asl_steps_stay_finite_and_learn(kind: str) -> None:
    settings = settings_for(kind)
    config = load_config(overrides=["mode=two-stage", "encoder.name=test_resnet", "contrastive.mdn_hidden=[32, 16]"])
    torch.manual_seed(0)
    encoder = get_encoder("test_resnet").to(DEVICE)
    mdn = MixtureDensityNetwork(encoder.num_features, CLASSES, hidden=(32, 16)).to(DEVICE)
    stage1 = ContrastiveModel(encoder, mdn).train()
    objective = build_objective(config)
    encoder2 = get_encoder("test_resnet").to(DEVICE)
    plain = Classifier(encoder2, LinearHead(encoder2.num_features, CLASSES).to(DEVICE), normalize_features=False)
    asl = AsymmetricLoss()
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (stage1, plain)]
    start = [[p.detach().clone() for p in m.parameters()] for m in (stage1, plain)]
    for step in range(4):
        x, y = random_batch(8, 64, seed=step)
        views, labels = stack_views(x, y)
        for model, opt in zip((stage1, plain), optimizers, strict=True):
            opt.zero_grad(set_to_none=True)
            with settings.autocast():
                if model is stage1:
                    h, mixture = model(views)
                    assert mixture.means.dtype == torch.float32  # the mixture math stays in float32
                    loss = objective(mixture, h, labels).total
                else:
                    loss = asl(model(views), labels)
            assert torch.isfinite(loss), f"{kind} step {step}: loss {loss}"
            backward(loss, settings)
            optimizer_step(opt, settings)
    for model, before in zip((stage1, plain), start, strict=True):
        after = list(model.parameters())
        assert all(torch.isfinite(p).all() for p in after)
        assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))  # the optimiser stepped
    if settings.scaler is not None:
        assert 0 < settings.scaler.get_scale() < float("inf")


# ------------------------------------------------------------------------------------ torch.compile
def test_compiled_encoder_matches_eager() -> None:
    torch.manual_seed(0)
    encoder = get_encoder("test_resnet").to(DEVICE).train()
    compiled = torch.compile(encoder)
    x = torch.randn(8, 3, 64, 64, device=DEVICE)
    weights = torch.randn(8, encoder.num_features, device=DEVICE)
    params = list(encoder.parameters())
    results = []
    for model in (encoder, compiled):
        out = model(x)
        results.append((out.detach(), torch.autograd.grad((out * weights).sum(), params)))
    (eager, eager_grads), (got, grads) = results
    torch.testing.assert_close(got, eager, rtol=1e-3, atol=1e-4)
    scale = max(float(g.abs().max()) for g in eager_grads)  # batch norm makes some gradients pure rounding noise
    for a, b in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * scale)


# ------------------------------------------------------------------------------------ NCCL
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not torch.distributed.is_nccl_available(), reason="torch built without NCCL")
def test_one_process_nccl_group_gathered_loss_equals_local(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        _, y = random_batch(12, 8, seed=1)
        g = torch.Generator().manual_seed(2)
        leaves = [torch.randn(24, CLASSES, generator=g).to(DEVICE).requires_grad_() for _ in range(3)]
        loss_fn = ProbContrastiveLoss("correlation", "jaccard", alpha=0.5, tau=0.2, gather=True)
        results = []
        # the gathered path itself (forward() takes it only for more than one process): all_gather of the mixtures
        # with a gradient, the local rows (b x G, the rectangle kernel) and an all_reduce of the anchor count
        for path in (loss_fn._gathered, loss_fn._local):
            logw = torch.log_softmax(leaves[0], 1)
            mixture = GaussianMixture(logw.exp(), leaves[1], 1 + leaves[2].exp(), 64, logw)
            loss, _ = path(mixture, torch.cat([y, y]))
            results.append((loss.detach(), torch.autograd.grad(loss, leaves)))
        (gathered, grads), (local, local_grads) = results
        assert torch.isfinite(gathered)
        torch.testing.assert_close(gathered, local, rtol=1e-6, atol=1e-7)
        for a, b in zip(grads, local_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------ predict and Grad-CAM
def test_predict_and_grad_cam_on_cuda_equal_cpu(tmp_path: Path) -> None:
    from test_inference import make_bundle, write_images

    from probmcl_med.bundle import load_model_bundle
    from probmcl_med.inference.explain import explain_image, find_target_layer, grad_cam_maps
    from probmcl_med.inference.predict import predict_images

    make_bundle(tmp_path / "run")
    paths = write_images(tmp_path / "imgs", 6)
    probs = {}
    for device in ("cpu", DEVICE):
        bundle = load_model_bundle(tmp_path / "run", device=torch.device(device))
        probs[device] = np.asarray(predict_images(bundle, paths, batch_size=4, device=device, workers=1).probs)
    np.testing.assert_allclose(probs[DEVICE], probs["cpu"], rtol=1e-4, atol=1e-5)
    assert probs["cpu"].std() > 0.05  # not a constant output

    x = torch.randn(1, 3, 32, 32)
    maps = {}
    for device in ("cpu", DEVICE):
        bundle = load_model_bundle(tmp_path / "run", device=torch.device(device))
        classifier = bundle.classifier()
        layer = find_target_layer(classifier, bundle.image_size)
        maps[device] = grad_cam_maps(classifier, x.to(device), [0, 2], layer)
    np.testing.assert_allclose(maps[DEVICE], maps["cpu"], atol=1e-4)
    bundle = load_model_bundle(tmp_path / "run", device=torch.device(DEVICE))
    written = explain_image(bundle, paths[0], tmp_path / "explain", device=DEVICE)
    assert written and all(e.path.is_file() for e in written)


# ------------------------------------------------------------------------------------ the Triton kernel
def mixture_leaves(rows: int, comps: int, seed: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(rows, comps, generator=g, dtype=torch.float64)
    means = 0.02 * torch.randn(rows, comps, generator=g, dtype=torch.float64)
    variances = 1 + torch.rand(rows, comps, generator=g, dtype=torch.float64)
    return [t.to(device=DEVICE, dtype=dtype).requires_grad_() for t in (logits, means, variances)]


def to_mixture(leaves: list[torch.Tensor], dim: int) -> GaussianMixture:
    logw = torch.log_softmax(leaves[0], 1)
    return GaussianMixture(logw.exp(), leaves[1], leaves[2], dim, logw)


def run_backend(backend: str, a_leaves, b_leaves, symmetric: bool, dim: int):  # type: ignore[no-untyped-def]
    a = to_mixture(a_leaves, dim)
    b = a if symmetric else to_mixture(b_leaves, dim)
    out = log_correlation_similarity(a, b, backend=backend)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out)
    params = a_leaves if symmetric else a_leaves + b_leaves
    return out.detach(), torch.autograd.grad((out * upstream).sum(), params)


def test_auto_backend_is_triton_on_cuda() -> None:
    assert resolve_backend("auto", torch.device(DEVICE)) == "triton"


@pytest.mark.parametrize("comps", [9, 80])
@pytest.mark.parametrize("shape", ["symmetric", "rectangle"])
def test_triton_kernel_equals_torch_backend(comps: int, shape: str) -> None:
    symmetric = shape == "symmetric"
    # 2N = 100 views (7 tiles of 16, the last partial); rectangle: one DDP rank's 40 views against 100
    a = mixture_leaves(100 if symmetric else 40, comps, seed=comps)
    b = mixture_leaves(100, comps, seed=comps + 1)
    got, grads = run_backend("triton", a, b, symmetric, 2048)
    ref, ref_grads = run_backend("torch", a, b, symmetric, 2048)
    assert got.min() < -0.1  # informative
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    for x, y in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-4 * float(y.abs().max()))


def test_triton_kernel_float64_equals_dense_reference() -> None:
    a = mixture_leaves(20, 9, seed=3, dtype=torch.float64)
    got = correlation_similarity(to_mixture(a, 64), to_mixture(a, 64), backend="triton")
    ref = dense_correlation(to_mixture(a, 64), to_mixture(a, 64))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-13)


def test_triton_kernel_accurate_in_float32_at_large_dim() -> None:
    # the GPU's own exp/log/division: nearly equal variances at n = 4096 need log1p exact to relative precision
    for lo, hi in ((1.0, 1.05), (9000.0, 10000.0), (1.0, 1e4)):
        g = torch.Generator().manual_seed(11)
        params = [
            torch.randn(12, 4, generator=g, dtype=torch.float64),
            0.005 * torch.randn(12, 4, generator=g, dtype=torch.float64),
            lo + (hi - lo) * torch.rand(12, 4, generator=g, dtype=torch.float64),
        ]
        a64 = to_mixture([p.to(DEVICE) for p in params], 4096)
        a32 = to_mixture([p.to(DEVICE).float() for p in params], 4096)
        ref = dense_correlation(a64, a64)
        got = correlation_similarity(a32, a32, backend="triton").double()
        assert (got - ref).abs().max().item() < 5e-6, (lo, hi)


@pytest.mark.parametrize("dim", [1, 4096])
def test_triton_kernel_no_nan_for_extreme_inputs(dim: int) -> None:
    params, a = extreme_mixture(40, 9, dim, torch.float32, seed=15)
    params = [p.detach().to(DEVICE).requires_grad_() for p in params]
    a = GaussianMixture(torch.softmax(params[0], 1), params[1], params[2], dim)
    s = correlation_similarity(a, a, backend="triton")
    assert torch.isfinite(s).all() and (s >= 0).all() and (s <= 1).all()
    grads = torch.autograd.grad((s * torch.randn_like(s)).sum(), params)
    assert all(torch.isfinite(x).all() for x in grads)
