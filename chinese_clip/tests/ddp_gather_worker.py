"""Run by test_ddp.py under torchrun (2 gloo processes): each rank takes its half of a fixed global batch of
features, computes clip_loss with gathered negatives and backpropagates; writes its loss and its gradients."""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
img, txt = torch.randn(16, 8), torch.randn(16, 8)  # the same global batch on every rank
n = 16 // world
mine_img = img[rank * n:(rank + 1) * n].clone().requires_grad_(True)
mine_txt = txt[rank * n:(rank + 1) * n].clone().requires_grad_(True)
scale = torch.tensor(3.0, requires_grad=True)
loss = train.clip_loss(torch.nn.functional.normalize(mine_img, dim=-1),
                       torch.nn.functional.normalize(mine_txt, dim=-1), scale)
loss.backward()
Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps({
    "loss": loss.item(), "img_grad": mine_img.grad.tolist(), "txt_grad": mine_txt.grad.tolist(),
    "scale_grad": scale.grad.item()}))
dist.barrier()
dist.destroy_process_group()
