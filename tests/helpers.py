"""Small builders shared by the tests: a tiny 2-task net, a hand-made batch and a loss for it, an independent
MAC counter."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models import MultiTaskNet

TASKS = {"seg": 5, "sn": 3}


def tiny_net(seed: int = 0) -> MultiTaskNet:
    torch.manual_seed(seed)
    return MultiTaskNet(TASKS, width_mult=0.0625)


def make_batch(seed: int, b: int = 2, size: int = 32) -> dict:
    """Random image, seg labels in 0..4, unit normals (docs/CONVENTIONS.md batch keys)."""
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(b, 3, size, size, generator=g)
    return {"img": torch.randn(b, 3, size, size, generator=g),
            "seg": torch.randint(0, 5, (b, 1, size, size), generator=g),
            "normal": normal / normal.norm(dim=1, keepdim=True),
            "name": [f"img{seed}_{i}" for i in range(b)]}


def tiny_loss(task: str, preds: dict, batch: dict) -> torch.Tensor:
    """Cross-entropy on `make_batch`'s labels, squared error on its normals (predictions upsampled to the image)."""
    pred = F.interpolate(preds[task], size=batch["img"].shape[-2:], mode="bilinear", align_corners=False)
    if task == "seg":
        return F.cross_entropy(pred, batch["seg"][:, 0])
    return (pred - batch["normal"]).pow(2).mean()


def tiny_run_args(root, dest, *extra: str, batch_size: int = 4, test_batch_size: int = 4) -> list[str]:
    """CLI flags for a tiny CPU run of launch_training/eval on the generated synthetic set at `root`."""
    from dataloaders.synthetic import read_meta

    meta = read_meta(root)
    h, w = meta["size"]
    return ["--dataset", "synthetic", "--data-root", str(root), "--device", "cpu", "--dest", str(dest),
            "--progress", "off",
            "--set", "model.width_mult=0.0625", "--set", "data.crop_h=32", "--set", "data.crop_w=32",
            "--set", f"data.batch_size={batch_size}", "--set", f"data.test_batch_size={test_batch_size}",
            "--set", "data.num_workers=0",
            "--set", f"data.image_shape=[{h},{w}]", "--set", f"synthetic.n_train={meta['n_train']}",
            "--set", f"synthetic.n_test={meta['n_test']}", "--set", f"synthetic.size=[{h},{w}]",
            "--set", "train.log_every=1", *extra]


def counted_macs(model: nn.Module, size: tuple[int, int]) -> int:
    """Conv/Linear multiply-accumulates of one forward of a 1-image batch, from the layers' real output sizes:
    output elements x weights per output element (a meta-device net works too)."""
    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        total += output.numel() * module.weight[0].numel()
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, *size, device=next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    return total
