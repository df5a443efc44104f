import logging
import os

# Nothing in the suite may wait on a model hub: a stray lookup fails at once instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

TINY_BACKBONES = ("tiny-clip", "tiny-hf-clip", "tiny-vit")

# open_clip warns for every randomly initialised (tiny) model; keep adaptvid's own warnings visible.
logging.getLogger().addFilter(lambda record: "No pretrained weights loaded" not in record.getMessage())


# Tiny models run faster on one thread than split across two busy cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_video(batch: int = 2, frames: int = 4, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(1))
